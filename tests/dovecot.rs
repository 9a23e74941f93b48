//! Against the real Dovecot (Debian's dovecot-core, dovecot-pop3d, dovecot-imapd): a private
//! instance on loopback ports, configured in a temp dir, serves a generated maildir; then apopd
//! serves the same maildir and must list exactly Dovecot's UIDLs (and sizes), byte for byte,
//! under Dovecot's default `pop3_uidl_format` and under `%v.%u`. Then apopd takes a new
//! delivery, RETRs, DELEs and QUITs, and Dovecot's imap must still read the mailbox, with
//! `\Seen` on what apopd's RETR read, the other flags and keywords kept, and no complaint in
//! its log; apopd never writes `dovecot-uidlist`. Finally Dovecot's imap numbers the new
//! message, and apopd's next session still gives it the UIDL it gave first.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Messages in the generated maildir.
const COUNT: usize = 220;
const DEFAULT_FORMAT: &str = "%08Xu%08Xv";
const CYRUS_FORMAT: &str = "%v.%u";

/// A blocking line client for POP3 and IMAP.
struct Lines {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Lines {
    /// Connect, waiting up to 10 s for the server to listen.
    fn connect(port: u16) -> Result<Lines, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => return Err(format!("cannot connect to port {port}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let writer = stream.try_clone().unwrap();
        Ok(Lines { reader: BufReader::new(stream), writer })
    }

    fn line(&mut self) -> String {
        let mut buf = Vec::new();
        self.reader.read_until(b'\n', &mut buf).unwrap();
        assert!(buf.ends_with(b"\r\n"), "not a CRLF line: {:?}", String::from_utf8_lossy(&buf));
        buf.truncate(buf.len() - 2);
        String::from_utf8(buf).unwrap()
    }

    fn cmd(&mut self, line: &str) -> String {
        self.writer.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.line()
    }

    /// A POP3 multi-line answer: every line up to the terminator, as sent.
    fn multi(&mut self, line: &str) -> Vec<String> {
        let status = self.cmd(line);
        assert!(status.starts_with("+OK"), "{line}: {status}");
        std::iter::from_fn(|| Some(self.line())).take_while(|l| l != ".").collect()
    }

    /// An IMAP command tagged `tag`: the untagged lines, after checking the tagged OK.
    fn imap(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.writer.write_all(format!("{tag} {command}\r\n").as_bytes()).unwrap();
        let mut lines = Vec::new();
        loop {
            let line = self.line();
            if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                assert!(rest.starts_with("OK"), "{command}: {line}");
                return lines;
            }
            lines.push(line);
        }
    }
}

/// A free loopback port (released before the server binds it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The uid and gid Dovecot's mail processes and the maildir get, and the user and group names
/// an unprivileged Dovecot runs everything as: as root, nobody (Dovecot refuses uid 0 for mail)
/// and Dovecot's own accounts; otherwise the user running the test.
fn mail_account() -> (u32, u32, Option<(String, String)>) {
    let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
    if uid == 0 {
        return (65534, 65534, None);
    }
    let user = nix::unistd::User::from_uid(uid.into()).unwrap().unwrap().name;
    let group = nix::unistd::Group::from_gid(gid.into()).unwrap().unwrap().name;
    (uid, gid, Some((user, group)))
}

/// A private Dovecot: master in the foreground, killed on drop.
struct Dovecot {
    child: Child,
    dir: PathBuf,
    pop3: u16,
    imap: u16,
}

impl Dovecot {
    fn start(dir: &Path, mail: &Path, format: &str) -> Dovecot {
        let (pop3, imap) = (free_port(), free_port());
        let (uid, gid, name) = mail_account();
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir.join("run")).unwrap();
        fs::create_dir_all(dir.join("state")).unwrap();
        fs::write(dir.join("passwd"), format!("alice:{{PLAIN}}{ALICE_PASSWORD}:{uid}:{gid}::::\n")).unwrap();
        let users = match name {
            None => "default_internal_user = dovecot\ndefault_login_user = dovenull\n".to_owned(),
            Some((user, group)) => {
                format!(
                    "default_internal_user = {user}\ndefault_login_user = {user}\ndefault_internal_group = {group}\n"
                )
            }
        };
        let d = dir.display();
        // No chroot: an unprivileged master cannot chroot its login and anvil processes.
        let conf = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = pop3 imap\nlisten = 127.0.0.1\nssl = no\ndisable_plaintext_auth = no\n\
             auth_mechanisms = plain\nmail_location = maildir:{mail}/%u\nfirst_valid_uid = 1\n\
             pop3_uidl_format = {format}\n{users}\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {d}/passwd\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
             service anvil {{\n  chroot =\n}}\n\
             service pop3-login {{\n  chroot =\n  inet_listener pop3 {{\n    port = {pop3}\n  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n\
             service imap-login {{\n  chroot =\n  inet_listener imap {{\n    port = {imap}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n",
            mail = mail.display(),
        );
        fs::write(dir.join("dovecot.conf"), conf).unwrap();
        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(dir.join("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .expect("start dovecot");
        Dovecot { child, dir: dir.to_owned(), pop3, imap }
    }

    /// Dovecot's log (errors and warnings about the mailbox would be here), and what the
    /// master wrote to stderr before its log was open.
    fn log(&self) -> String {
        let read = |name: &str| fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        read("stderr.log") + &read("dovecot.log")
    }

    fn pop3_login(&self) -> Lines {
        let mut c = Lines::connect(self.pop3).unwrap_or_else(|e| panic!("Dovecot's pop3: {e}\n{}", self.log()));
        assert!(c.line().starts_with("+OK"));
        assert!(c.cmd("USER alice").starts_with("+OK"));
        let reply = c.cmd(&format!("PASS {ALICE_PASSWORD}"));
        assert!(reply.starts_with("+OK"), "Dovecot's pop3: {reply}\n{}", self.log());
        c
    }

    /// `(UID, flags)` of every message, by Dovecot's imap.
    fn imap_flags(&self) -> BTreeMap<u32, String> {
        let mut c = Lines::connect(self.imap).unwrap_or_else(|e| panic!("Dovecot's imap: {e}\n{}", self.log()));
        assert!(c.line().starts_with("* OK"));
        c.imap("a", &format!("LOGIN alice {ALICE_PASSWORD}"));
        c.imap("b", "SELECT INBOX");
        let mut flags = BTreeMap::new();
        for line in c.imap("c", "FETCH 1:* (FLAGS UID)") {
            let Some(at) = line.find(" FETCH (") else { continue };
            let body = &line[at + 8..];
            let flag_list = &body[body.find("FLAGS (").unwrap() + 7..];
            let flag_list = &flag_list[..flag_list.find(')').unwrap()];
            let uid = &body[body.find("UID ").unwrap() + 4..];
            let uid: u32 = uid.trim_end_matches(')').split([' ', ')']).next().unwrap().parse().unwrap();
            flags.insert(uid, flag_list.to_owned());
        }
        c.imap("d", "LOGOUT");
        flags
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // The master (our child) stops its own processes on SIGTERM.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The generated maildir: LF and CRLF files, `,S=`/`,W=` names on every third, a quarter in
/// new/, the rest in cur/ with assorted flags and the keyword letter `a` ($Label1).
fn generate(maildir: &Path) -> Vec<String> {
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    fs::write(maildir.join("dovecot-keywords"), "0 $Label1\n").unwrap();
    let mut bases = Vec::new();
    for i in 0..COUNT {
        let eol = if i % 2 == 0 { "\n" } else { "\r\n" };
        let text = format!(
            "From: gen@example.test{eol}Subject: message {i}{eol}Message-ID: <{i}@gen.test>{eol}{eol}body {i}{eol}.dot line{eol}{}{eol}",
            "y".repeat(i * 7 % 300)
        );
        let mut base = format!("{}.M{i}P42.gen", 1_700_000_000 + i * 10);
        if i % 3 == 0 {
            base = format!("{base},S={},W={}", text.len(), crlf(text.as_bytes()).len());
        }
        let path = match i % 4 {
            0 => maildir.join("new").join(&base),
            1 => maildir.join("cur").join(format!("{base}:2,")),
            2 => maildir.join("cur").join(format!("{base}:2,S")),
            _ => maildir.join("cur").join(format!("{base}:2,F{}", if i % 8 == 3 { "a" } else { "R" })),
        };
        fs::write(path, text).unwrap();
        bases.push(base);
    }
    bases
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let status = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(path).status().unwrap();
    assert!(status.success());
}

/// apopd's UIDL and LIST listings, after logging in as alice.
fn apopd_listings(server: &ServerProcess) -> (Vec<String>, Vec<String>, Lines) {
    let mut c = Lines::connect(server.addr.port()).unwrap();
    assert!(c.line().starts_with("+OK"));
    assert!(c.cmd("USER alice").starts_with("+OK"));
    let reply = c.cmd(&format!("PASS {ALICE_PASSWORD}"));
    assert!(reply.starts_with("+OK"), "apopd: {reply}\n{}", server.log_lines().join("\n"));
    let uidl = c.multi("UIDL");
    let list = c.multi("LIST");
    (uidl, list, c)
}

/// Dovecot's pop3 and imap come in their own packages: the master alone is not enough.
fn have_protocols() -> bool {
    let missing: Vec<&str> =
        ["pop3", "imap"].into_iter().filter(|p| !Path::new("/usr/lib/dovecot").join(p).exists()).collect();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var_os(REQUIRE_EXTERNAL).is_some_and(|v| !v.is_empty() && v != "0");
    assert!(!required, "Dovecot's {missing:?} missing: apt-get install dovecot-pop3d dovecot-imapd");
    let line = format!("skipped: Dovecot's {missing:?} not installed — apt-get install dovecot-pop3d dovecot-imapd\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    false
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn apopd_serves_dovecots_uidls_and_leaves_dovecot_a_consistent_mailbox() {
    if !have_program("dovecot", "dovecot-core dovecot-pop3d dovecot-imapd") || !have_protocols() {
        return;
    }
    let started = Instant::now();
    let work = tempfile::tempdir().unwrap();
    // Dovecot's unprivileged processes must get through to the maildir.
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mail = work.path().join("mail");
    let maildir = mail.join("alice");
    let bases = generate(&maildir);
    let (uid, gid, _) = mail_account();
    chown_tree(&mail, uid, gid);

    // Dovecot's pop3, under two formats (its first login numbers the messages and moves new/).
    let (dovecot_uidls, dovecot_list, cyrus_uidls) = {
        let dovecot = Dovecot::start(&work.path().join("dovecot"), &mail, DEFAULT_FORMAT);
        let mut c = dovecot.pop3_login();
        let (uidls, list) = (c.multi("UIDL"), c.multi("LIST"));
        assert_eq!(c.cmd("QUIT").split(' ').next(), Some("+OK"));
        drop(dovecot);
        let dovecot = Dovecot::start(&work.path().join("dovecot"), &mail, CYRUS_FORMAT);
        let mut c = dovecot.pop3_login();
        let cyrus = c.multi("UIDL");
        c.cmd("QUIT");
        (uidls, list, cyrus)
    };
    assert_eq!(dovecot_uidls.len(), COUNT);
    assert!(dovecot_uidls[0].len() == 2 + 16, "{}", dovecot_uidls[0]);
    assert!(cyrus_uidls[0].contains('.'), "{}", cyrus_uidls[0]);
    assert!(names_in(&maildir.join("new")).is_empty(), "Dovecot's pop3 moves new/ to cur/");
    let uidlist_before = fs::read(maildir.join("dovecot-uidlist")).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_apopd")).args(["migrate", "check"]).arg(&mail).output().unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(report.contains(&format!("{COUNT} messages")), "{report}");
    assert!(report.contains(&format!("    {COUNT}  keep Dovecot's UIDL (pop3_uidl_format)\n")), "{report}");

    // apopd, uidl_format = auto: exactly Dovecot's listing and sizes.
    let fixture = Fixture::new(&format!(
        "mail_root = \"{}/{{user}}\"\npop3_no_flag_updates = false\nuidl_format = \"auto\"",
        mail.display()
    ));
    let cyrus_config = fixture.dir.path().join("cyrus.toml");
    let config = fs::read_to_string(&fixture.config_path).unwrap();
    fs::write(&cyrus_config, config.replace("uidl_format = \"auto\"", &format!("uidl_format = \"{CYRUS_FORMAT}\"")))
        .unwrap();
    {
        let server = ServerProcess::spawn(&cyrus_config);
        let (uidls, _, mut c) = apopd_listings(&server);
        assert_eq!(uidls, cyrus_uidls, "uidl_format = \"{CYRUS_FORMAT}\"");
        c.cmd("QUIT");
    }
    let server = ServerProcess::spawn(&fixture.config_path);
    let (uidls, list, mut c) = apopd_listings(&server);
    assert_eq!(uidls, dovecot_uidls, "uidl_format = \"auto\" gives Dovecot's default UIDLs");
    assert_eq!(list, dovecot_list, "apopd's sizes are Dovecot's");
    c.cmd("QUIT");

    // A new delivery, then a session with RETRs (one of them the new message), TOP, DELE, QUIT.
    let new_base = format!("{}.M999P42.gen", 1_700_000_000 + COUNT * 10);
    fs::write(maildir.join("tmp").join(&new_base), "Subject: after the switch\n\nnew\n").unwrap();
    fs::rename(maildir.join("tmp").join(&new_base), maildir.join("new").join(&new_base)).unwrap();
    chown_tree(&maildir, uid, gid);
    let (uidls, _, mut c) = apopd_listings(&server);
    assert_eq!(uidls[..COUNT], dovecot_uidls[..], "old messages keep Dovecot's UIDLs");
    assert_eq!(uidls[COUNT], format!("{} {new_base}", COUNT + 1), "the new message gets its base name");
    // Messages 1 (new/ at first, so no flags), 2 (`:2,`) and the new one; TOP on 5; DELE 6.
    let retrieved = [1, 2, COUNT + 1];
    for n in retrieved {
        assert!(c.cmd(&format!("RETR {n}")).starts_with("+OK"));
        std::iter::from_fn(|| Some(c.line())).take_while(|l| l != ".").for_each(drop);
    }
    assert!(c.cmd("TOP 5 0").starts_with("+OK"));
    std::iter::from_fn(|| Some(c.line())).take_while(|l| l != ".").for_each(drop);
    assert!(c.cmd("DELE 6").starts_with("+OK"));
    assert_eq!(c.cmd("QUIT"), "+OK apopd signing off (1 message deleted)");
    drop(server);
    assert_eq!(fs::read(maildir.join("dovecot-uidlist")).unwrap(), uidlist_before, "apopd never writes it");
    assert!(names_in(&maildir.join("new")).is_empty(), "apopd moved the new message to cur/");
    let cur = names_in(&maildir.join("cur"));
    assert!(cur.contains(&format!("{new_base}:2,S")), "{cur:?}");
    assert!(cur.contains(&format!("{}:2,S", bases[0])) && cur.contains(&format!("{}:2,S", bases[1])));
    assert!(cur.contains(&format!("{}:2,", bases[4])), "TOP does not mark seen");

    // Dovecot's imap reads the mailbox apopd left: every message, \Seen where RETR read.
    let uid_of = |n: usize| u32::from_str_radix(&dovecot_uidls[n - 1].split(' ').nth(1).unwrap()[..8], 16).unwrap();
    let dovecot = Dovecot::start(&work.path().join("dovecot"), &mail, DEFAULT_FORMAT);
    let flags = dovecot.imap_flags();
    assert_eq!(flags.len(), COUNT, "{COUNT} old messages - 1 deleted + 1 new: {flags:?}");
    assert!(!flags.contains_key(&uid_of(6)), "the deleted message is gone");
    let new_uid = *flags.keys().max().unwrap();
    assert!(new_uid > uid_of(COUNT), "the new message got a new UID");
    for uid in [uid_of(1), uid_of(2), new_uid] {
        assert!(flags[&uid].contains("\\Seen"), "UID {uid}: {}", flags[&uid]);
    }
    assert!(!flags[&uid_of(5)].contains("\\Seen"), "TOP: {}", flags[&uid_of(5)]);
    assert_eq!(flags[&uid_of(3)], "\\Seen", "flags kept");
    assert!(flags[&uid_of(4)].contains("\\Flagged") && flags[&uid_of(4)].contains("$Label1"), "{}", flags[&uid_of(4)]);
    let log = dovecot.log();
    assert!(!log.contains("Error") && !log.contains("Warning") && !log.contains("orrupt"), "Dovecot's log:\n{log}");
    drop(dovecot);

    // Dovecot's imap has now numbered the new message; apopd's UIDL for it stays the same.
    let numbered = fs::read_to_string(maildir.join("dovecot-uidlist")).unwrap();
    assert!(numbered.contains(&new_base), "Dovecot listed the new message:\n{numbered}");
    let server = ServerProcess::spawn(&fixture.config_path);
    let (again, _, mut c) = apopd_listings(&server);
    let expected: Vec<String> =
        uidls.iter().filter(|l| !l.starts_with("6 ")).map(|l| l.split(' ').nth(1).unwrap().to_owned()).collect();
    let got: Vec<String> = again.iter().map(|l| l.split(' ').nth(1).unwrap().to_owned()).collect();
    assert_eq!(got, expected, "every UIDL, including the new message's, is unchanged");
    c.cmd("QUIT");
    println!("real Dovecot test: {:?}", started.elapsed());
}
