//! The POP3 classroom: `apopd lab init` → `apopd serve` → scripted students → `apopd lab
//! report`, transcripts that hold no secret, and `lab_networks` over real sockets.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{Client, ServerProcess, TestServer, connect_from, run_apopd};

const APOPD: &str = env!("CARGO_BIN_EXE_apopd");

fn apopd(args: &[&str]) -> Output {
    run_apopd(args, b"")
}

fn lab_init(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["lab", "init", dir.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    apopd(&args)
}

/// `name → (password, secret)` from the lab's accounts file.
fn accounts(dir: &Path) -> std::collections::BTreeMap<String, (String, String)> {
    std::fs::read_to_string(dir.join("accounts"))
        .expect("accounts file")
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let name = parts.next().unwrap().to_owned();
            (name, (parts.next().unwrap().to_owned(), parts.next().unwrap().to_owned()))
        })
        .collect()
}

/// The digest as a student computes it: `printf '%s%s' '<ts>' secret | md5sum`.
fn md5sum_digest(timestamp: &str, secret: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", "printf '%s%s' \"$1\" \"$2\" | md5sum", "sh", timestamp, secret])
        .output()
        .expect("run md5sum");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// The digest from `apopd apop-digest`, the other way the handout shows.
fn apopd_digest(timestamp: &str, secret: &str) -> String {
    let out = apopd(&["apop-digest", timestamp, secret]);
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn deliver(dir: &Path, user: &str, message: &str) {
    use std::io::Write;
    let mut child = Command::new(APOPD)
        .args(["deliver", user, "--config"])
        .arg(dir.join("apopd.toml"))
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run deliver");
    child.stdin.take().unwrap().write_all(message.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

fn transcripts(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir.join("transcripts")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

/// Wait until every session's transcript has its last line (the writer is asynchronous).
fn wait_for_transcripts(dir: &Path, sessions: usize) {
    for _ in 0..500 {
        let files = transcripts(dir);
        let ended = files.iter().filter(|f| std::fs::read_to_string(f).unwrap().ends_with(": end\n")).count();
        if files.len() == sessions && ended == sessions {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("transcripts did not complete: {:?}", transcripts(dir));
}

#[tokio::test(flavor = "multi_thread")]
async fn lab_init_serve_students_and_report_what_they_did() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let out =
        lab_init(&dir, &["--groups", "2", "--members", "2", "--listen", "127.0.0.1:0", "--network", "127.0.0.0/8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("g01a g01b g02a g02b"));
    for file in ["users", "apop-secrets", "accounts", "handout.md", "handout.html"] {
        let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let accounts = accounts(&dir);
    assert_eq!(accounts.keys().collect::<Vec<_>>(), ["g01a", "g01b", "g02a", "g02b"]);
    let handout = std::fs::read_to_string(dir.join("handout.md")).unwrap();
    for (name, (password, secret)) in &accounts {
        assert!(handout.contains(&format!("| `{name}` | `{password}` | `{secret}` |")), "{name} on the handout");
    }
    // Keep the failed logins quick; everything else is as `lab init` wrote it.
    let config = dir.join("apopd.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("auth_failure_delay_ms = 50\nauth_failure_delay_max_ms = 50\n");
    std::fs::write(&config, text).unwrap();
    let server = ServerProcess::spawn(&config);
    let pass = |name: &str| accounts[name].0.clone();
    let secret = |name: &str| accounts[name].1.clone();

    // g01a: a typo, then USER/PASS, looks around, deletes the welcome message, undoes, deletes, QUIT.
    let mut c = Client::connect(server.addr).await;
    assert!(c.login("g01a", "not-my-password").await.starts_with("-ERR [AUTH]"));
    assert!(c.login("g01a", &pass("g01a")).await.starts_with("+OK"));
    assert!(c.cmd("STAT").await.starts_with("+OK 1 "));
    assert_eq!(c.multi("LIST").await.1.len(), 1);
    assert_eq!(c.multi("UIDL").await.1.len(), 1);
    assert!(c.multi("TOP 1 0").await.0.starts_with("+OK"));
    let (status, body) = c.multi("RETR 1").await;
    assert!(status.starts_with("+OK") && body.iter().any(|l| l.contains("Welcome to the POP3 lab, g01a")));
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert!(c.cmd("RSET").await.starts_with("+OK"));
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));

    // g01b: a wrong digest, then APOP with the md5sum digest; RETR, QUIT without DELE.
    let mut c = Client::connect(server.addr).await;
    let wrong = md5sum_digest(&c.timestamp(), "not-the-secret");
    assert!(c.cmd(&format!("APOP g01b {wrong}")).await.starts_with("-ERR [AUTH]"));
    let digest = md5sum_digest(&c.timestamp(), &secret("g01b"));
    assert_eq!(digest, apopd::auth::apop::digest(&c.timestamp(), secret("g01b").as_bytes()));
    assert!(c.cmd(&format!("APOP g01b {digest}")).await.starts_with("+OK"));
    assert!(c.multi("RETR 1").await.0.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));

    // g02a: APOP with `apopd apop-digest`, LIST, then the connection drops (no QUIT).
    let mut c = Client::connect(server.addr).await;
    let digest = apopd_digest(&c.timestamp(), &secret("g02a"));
    assert!(c.cmd(&format!("APOP g02a {digest}")).await.starts_with("+OK"));
    assert!(c.multi("LIST").await.0.starts_with("+OK"));
    drop(c);

    // g02b: USER/PASS, DELE, QUIT; no RETR.
    let mut c = Client::connect(server.addr).await;
    assert!(c.login("g02b", &pass("g02b")).await.starts_with("+OK"));
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));

    // Mail between groups (the SMTP half is tests/lab_postfix.rs): one each way, one within a group.
    deliver(&dir, "g01a", "From: g02b@lab.test\r\nTo: g01a@lab.test\r\nSubject: hi\r\n\r\nfrom group 2\r\n");
    deliver(&dir, "g02b", "Return-Path: <g01b@lab.test>\r\nFrom: Student <g01b@lab.test>\r\n\r\nhello\r\n");
    deliver(&dir, "g01b", "From: g01a@lab.test\r\nSubject: same group\r\n\r\nnot counted\r\n");

    wait_for_transcripts(&dir, 4);
    let out = apopd(&["lab", "report", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8(out.stdout).unwrap();
    let expected = "\
account  USER/PASS  APOP  failed PASS  failed APOP  RETR  DELE  QUIT  mail from
g01a     yes        -     1            0            yes   yes   yes   g02b
g01b     -          yes   0            1            yes   -     yes   -

g02a     -          yes   0            0            -     -     -     -
g02b     yes        -     0            0            -     yes   yes   g01b
";
    assert_eq!(report, expected);
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert_eq!(html.matches("<tr").count(), 5);

    // No password, secret, digest or mail text in any transcript; all private.
    let mut secrets: Vec<String> = accounts.values().flat_map(|(p, s)| [p.clone(), s.clone()]).collect();
    secrets.extend(["not-my-password".to_owned(), wrong]);
    for file in transcripts(&dir) {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{} holds {secret}", file.display());
        }
        for body in ["Welcome to the POP3 lab", "waiting in your mailbox", "Subject:", "From:"] {
            assert!(!text.contains(body), "{} holds mail text {body:?}:\n{text}", file.display());
        }
        assert!(!text.lines().any(|l| l.contains("C: APOP") && !l.ends_with("***")), "a digest in {text}");
    }
    let all: String = transcripts(&dir).iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    assert!(all.contains("C: PASS ***") && all.contains("C: RETR 1") && all.contains("*: login g01b APOP"));
    assert!(all.contains("octets sent, message text not recorded]"));
}

#[test]
fn lab_init_refuses_an_existing_lab_and_adds_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    assert!(lab_init(&dir, &["--groups", "1", "--language", "uk"]).status.success());
    let before = accounts(&dir);
    let again = lab_init(&dir, &["--groups", "1"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--add-groups"));
    assert_eq!(accounts(&dir), before, "a refused init changes nothing");
    // Options that describe the lab as a whole are the lab's own: refused with --add-groups.
    assert!(!lab_init(&dir, &["--groups", "1", "--add-groups", "--members", "3"]).status.success());
    let added = lab_init(&dir, &["--groups", "2", "--add-groups"]);
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    let after = accounts(&dir);
    assert_eq!(after.keys().collect::<Vec<_>>(), ["g01a", "g01b", "g02a", "g02b", "g03a", "g03b"]);
    for (name, credentials) in &before {
        assert_eq!(&after[name], credentials, "{name} keeps its password and secret");
    }
    let html = std::fs::read_to_string(dir.join("handout.html")).unwrap();
    assert_eq!(html.matches("<section").count(), 3);
    assert!(html.contains("Під&#39;єднайтеся"), "the handout stays in the lab's language");
    let secrets = std::fs::read_to_string(dir.join("apop-secrets")).unwrap();
    assert_eq!(secrets.lines().count(), 6);
    for name in ["g01a", "g03b"] {
        assert_eq!(std::fs::read_dir(dir.join("mail").join(name).join("new")).unwrap().count(), 1, "{name}");
    }
    assert!(!lab_init(&tmp.path().join("other"), &["--groups", "1", "--language", "fr"]).status.success());
}

/// AUTH exchanges (initial responses and continuation lines) never reach a transcript.
#[tokio::test]
async fn sasl_responses_are_not_transcribed() {
    use base64::Engine;
    let server = TestServer::start_with("transcript_dir = \"transcripts\"").await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let plain = b64(&format!("\0alice\0{}", common::ALICE_PASSWORD));
    let mut c = Client::connect(server.addr).await;
    assert!(c.cmd(&format!("AUTH PLAIN {plain}")).await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let mut c = Client::connect(server.addr).await;
    assert!(c.cmd("AUTH LOGIN").await.starts_with("+ "));
    assert!(c.cmd(&b64("bob")).await.starts_with("+ "));
    assert!(c.cmd(&b64(common::BOB_PASSWORD)).await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let dir = server.fixture.dir.path().to_owned();
    wait_for_transcripts(&dir, 2);
    let all: String = transcripts(&dir).iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    for secret in [plain, b64("bob"), b64(common::BOB_PASSWORD), common::BOB_PASSWORD.to_owned()] {
        assert!(!all.contains(&secret), "{secret} in\n{all}");
    }
    assert!(all.contains("C: AUTH PLAIN ***") && all.contains("*: login bob AUTH"), "{all}");
}

/// 30 failed logins from a classroom address refuse nobody; from elsewhere they do.
#[tokio::test]
async fn lab_networks_are_not_refused_per_ip() {
    let server = TestServer::start_with(
        "lab_networks = [\"127.0.0.0/24\"]\nmax_auth_failures_per_ip = 20\nauth_failure_delay_ms = 0\nauth_failure_delay_max_ms = 0",
    )
    .await;
    for (ip, refused) in [("127.0.0.2", false), ("127.0.1.2", true)] {
        for i in 0..30 {
            let mut c = Client::start(connect_from(server.addr, ip).await).await;
            let reply = c.login(&format!("student{i}"), "typo").await;
            assert!(reply.starts_with("-ERR"), "{reply}");
        }
        let mut c = Client::start(connect_from(server.addr, ip).await).await;
        let reply = c.login("alice", common::ALICE_PASSWORD).await;
        if refused {
            assert!(reply.starts_with("-ERR [LOGIN-DELAY]"), "{ip}: {reply}");
        } else {
            assert!(reply.starts_with("+OK"), "{ip}: {reply}");
        }
    }
}

/// A lab made for Japanese students answers in Japanese, with teaching hints on, and still
/// gives the same reply for an unknown user as for a wrong password.
#[tokio::test]
async fn a_lab_speaks_its_language_and_explains_mistakes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("lab");
    let out = lab_init(&dir, &["--groups", "1", "--listen", "127.0.0.1:0", "--language", "ja"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = ServerProcess::spawn(&dir.join("apopd.toml"));
    let mut c = Client::connect(server.addr).await;
    let stat = c.cmd("STAT").await;
    assert!(stat.starts_with("-ERR まだログインしていません") && stat.contains("ヒント"), "{stat}");
    let (password, _) = accounts(&dir).remove("g01a").unwrap();
    let wrong = c.login("g01a", "not-the-password").await;
    assert_eq!(c.login("nobody-here", &password).await, wrong, "no hint tells users apart");
    assert!(c.login("g01a", &password).await.starts_with("+OK"));
}
