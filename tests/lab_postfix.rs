//! The SMTP half of the lab with the real Postfix: a throw-away instance (its own config,
//! queue and data directories in a temp dir, smtpd on a loopback port) delivers through
//! `apopd deliver` into a lab made by `apopd lab init`; an SMTP dialogue typed over a raw
//! socket arrives, and an APOP session retrieves it byte-exact apart from the headers
//! Postfix adds. Postfix must be started as root; it runs the pipe as `nobody`, who owns
//! the lab (as the teacher's account would).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, REQUIRE_EXTERNAL, ServerProcess, have_program};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The headers Postfix puts in front of a message it delivers through pipe(8) with
/// `flags=DRhu` and adds when the client left them out.
const POSTFIX_HEADERS: [&str; 5] = ["return-path:", "delivered-to:", "received:", "message-id:", "date:"];

/// What a student types after DATA (SMTP dot-stuffing included: `..` stands for `.`).
const TYPED: &str = "From: g01a@lab.test\r\nTo: g02a@lab.test\r\nSubject: Hello from group 01\r\n\r\n\
                     Hello from group 01!\r\n..a line that starts with a dot\r\n\r\nbye\r\n";

/// A Postfix instance that is stopped however the test ends.
struct Postfix {
    conf: PathBuf,
    queue: PathBuf,
}

impl Postfix {
    fn postfix(&self, verb: &str) -> std::process::Output {
        Command::new("postfix").arg("-c").arg(&self.conf).arg(verb).stdin(Stdio::null()).output().expect("run postfix")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.conf.parent().unwrap().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.postfix("stop").status.success() {
            return;
        }
        // `stop` failed: kill the master named in the pid file, if it is still that master
        // (the file outlives the process, and a pid can be reused).
        let Ok(pid) = std::fs::read_to_string(self.queue.join("pid/master.pid")) else { return };
        let Ok(pid) = pid.trim().parse::<i32>() else { return };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "master" {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(command: &mut Command) {
    let out = command.output().expect("run a command");
    assert!(out.status.success(), "{command:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn main_cf(base: &Path) -> String {
    let base = base.display();
    format!(
        "compatibility_level = 3.6\n\
         queue_directory = {base}/queue\n\
         data_directory = {base}/data\n\
         mail_owner = postfix\n\
         inet_interfaces = 127.0.0.1\n\
         inet_protocols = ipv4\n\
         myhostname = mail.lab.test\n\
         mydestination =\n\
         mynetworks = 127.0.0.0/8\n\
         alias_maps =\n\
         alias_database =\n\
         maillog_file = {base}/maillog\n\
         maillog_file_prefixes = {base}\n\
         smtputf8_enable = no\n\
         biff = no\n\
         {}",
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/postfix-lab/main.cf")).unwrap()
    )
}

fn master_cf(port: u16, apopd: &Path, config: &Path) -> String {
    let snippet =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/postfix-lab/master.cf")).unwrap();
    let snippet = snippet
        .replace("user=teacher", "user=nobody")
        .replace("/usr/bin/apopd", &apopd.display().to_string())
        .replace("/home/teacher/lab/apopd.toml", &config.display().to_string());
    assert!(snippet.contains("user=nobody") && snippet.contains(&config.display().to_string()), "{snippet}");
    // Only the services this test needs, none chrooted.
    format!(
        "127.0.0.1:{port} inet n - n - - smtpd\n\
         pickup    unix  n - n 60 1 pickup\n\
         cleanup   unix  n - n - 0 cleanup\n\
         qmgr      unix  n - n 300 1 qmgr\n\
         rewrite   unix  - - n - - trivial-rewrite\n\
         bounce    unix  - - n - 0 bounce\n\
         defer     unix  - - n - 0 bounce\n\
         trace     unix  - - n - 0 bounce\n\
         verify    unix  - - n - 1 verify\n\
         proxymap  unix  - - n - - proxymap\n\
         error     unix  - - n - - error\n\
         retry     unix  - - n - - error\n\
         discard   unix  - - n - - discard\n\
         anvil     unix  - - n - 1 anvil\n\
         scache    unix  - - n - 1 scache\n\
         postlog   unix-dgram n - n - 1 postlogd\n\
         {snippet}"
    )
}

/// One SMTP reply (multi-line replies are `250-…` lines then `250 …`).
async fn smtp_reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, transcript: &mut String) -> String {
    loop {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
            .await
            .expect("SMTP reply in time")
            .expect("read SMTP");
        transcript.push_str(&format!("S: {}", line.replace('\r', "")));
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return line;
        }
    }
}

/// The message as a mailbox holds it after SMTP: dot-stuffing undone.
fn unstuffed(typed: &str) -> String {
    typed.split("\r\n").map(|l| l.strip_prefix('.').unwrap_or(l)).collect::<Vec<_>>().join("\r\n")
}

/// The message without the header fields Postfix added (and their continuation lines).
fn without_postfix_headers(message: &str) -> String {
    let (head, body) = message.split_once("\r\n\r\n").expect("a header/body separator");
    let mut kept = Vec::new();
    let mut dropping = false;
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if !dropping {
                kept.push(line);
            }
            continue;
        }
        dropping = POSTFIX_HEADERS.iter().any(|h| line.to_ascii_lowercase().starts_with(h));
        if !dropping {
            kept.push(line);
        }
    }
    format!("{}\r\n\r\n{body}", kept.join("\r\n"))
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_typed_to_postfix_arrives_in_an_apop_session() {
    if !have_program("postfix", "postfix") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        let required = std::env::var_os(REQUIRE_EXTERNAL).is_some_and(|v| !v.is_empty() && v != "0");
        assert!(!required, "Postfix must be started as root, and {REQUIRE_EXTERNAL} is set");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"skipped: Postfix needs root to start\n");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_owned();
    chmod(&base, 0o755);
    // Postfix's pipe runs apopd as nobody, who may not reach the build directory.
    let apopd = base.join("apopd");
    std::fs::copy(env!("CARGO_BIN_EXE_apopd"), &apopd).unwrap();
    chmod(&apopd, 0o755);
    let lab = base.join("lab");
    run(Command::new(&apopd).args(["lab", "init"]).arg(&lab).args([
        "--groups",
        "2",
        "--members",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--network",
        "127.0.0.0/8",
        "--domain",
        "lab.test",
    ]));
    // The lab belongs to the account deliveries run as (a teacher's account in class).
    run(Command::new("chown").args(["-R", "nobody:"]).arg(&lab));
    chmod(&lab, 0o711);
    chmod(&lab.join("apopd.toml"), 0o644);
    let config = lab.join("apopd.toml");

    let conf = base.join("conf");
    std::fs::create_dir(&conf).unwrap();
    std::fs::create_dir(base.join("queue")).unwrap();
    chmod(&base.join("queue"), 0o755);
    std::fs::create_dir(base.join("data")).unwrap();
    run(Command::new("chown").arg("postfix").arg(base.join("data")));
    let port = free_port();
    write(&conf.join("main.cf"), &main_cf(&base));
    write(&conf.join("master.cf"), &master_cf(port, &apopd, &config));
    let postfix = Postfix { conf, queue: base.join("queue") };
    let started = postfix.postfix("start");
    assert!(started.status.success(), "postfix start: {}{}", String::from_utf8_lossy(&started.stderr), postfix.log());

    let server = ServerProcess::spawn(&config);
    let secret = std::fs::read_to_string(lab.join("apop-secrets"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("g02a:").map(str::to_owned))
        .expect("g02a's secret");

    // The SMTP dialogue, typed line by line as in the handout.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match TcpStream::connect(("127.0.0.1", port)).await {
            Ok(stream) => break stream,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("smtpd on port {port}: {e}\n{}", postfix.log()),
        }
    };
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut dialogue = String::new();
    assert!(smtp_reply(&mut reader, &mut dialogue).await.starts_with("220"));
    for (line, code) in [
        ("HELO group01", "250"),
        ("MAIL FROM:<g01a@lab.test>", "250"),
        ("RCPT TO:<g02a@lab.test>", "250"),
        ("DATA", "354"),
    ] {
        dialogue.push_str(&format!("C: {line}\n"));
        writer.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        let reply = smtp_reply(&mut reader, &mut dialogue).await;
        assert!(reply.starts_with(code), "{line}: {reply}\n{}", postfix.log());
    }
    writer.write_all(format!("{TYPED}.\r\n").as_bytes()).await.unwrap();
    let queued = smtp_reply(&mut reader, &mut dialogue).await;
    assert!(queued.starts_with("250"), "{queued}");
    writer.write_all(b"QUIT\r\n").await.unwrap();
    assert!(smtp_reply(&mut reader, &mut dialogue).await.starts_with("221"));

    // Postfix → pipe → apopd deliver → g02a's maildir (welcome message + this one).
    let new = lab.join("mail/g02a/new");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0) < 2 {
        assert!(Instant::now() < deadline, "not delivered:\n{}", postfix.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(postfix.log().contains("relay=apopd"), "{}", postfix.log());

    // g02a fetches it with APOP, the digest computed as on the handout.
    let mut pop = Client::connect(server.addr).await;
    let digest = apopd::auth::apop::digest(&pop.timestamp(), secret.as_bytes());
    assert!(pop.cmd(&format!("APOP g02a {digest}")).await.starts_with("+OK g02a's maildrop has 2 messages"));
    let status = pop.cmd("RETR 2").await;
    assert!(status.starts_with("+OK"), "{status}");
    // Byte-stuffing undone, as a client does.
    let received = String::from_utf8(pop.body().await).expect("UTF-8");
    assert!(pop.cmd("QUIT").await.starts_with("+OK"));
    assert!(received.starts_with("Return-Path: <g01a@lab.test>\r\nDelivered-To: g02a@lab.test\r\n"), "{received}");
    assert_eq!(without_postfix_headers(&received), unstuffed(TYPED), "the typed message, byte for byte");

    // And the report sees mail from another group.
    let report = Command::new(&apopd).args(["lab", "report"]).arg(&lab).output().unwrap();
    let report = String::from_utf8_lossy(&report.stdout).into_owned();
    let row = report.lines().find(|l| l.starts_with("g02a")).expect("g02a's row");
    assert!(row.ends_with("g01a"), "{report}");
    eprintln!("SMTP dialogue:\n{dialogue}");
}
