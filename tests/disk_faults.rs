//! Disk faults: each gives a clear `-ERR` (the session goes on) or, for `apopd deliver`, exit
//! code 75 (EX_TEMPFAIL) with nothing half-written; never a panic or a dropped connection.
//! Tests run as root, so "unreadable" is made with file types, not permissions.

mod common;
use common::*;

use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";
/// A file where a directory must be needs the administrator: not a temporary failure.
const UNSAFE: &str = "-ERR [SYS/PERM] the mailbox cannot be served safely; ask the administrator";
/// alice's message 2.
const MESSAGE_2: &str = "cur/1700003600.M200P1000.demo:2,";
const EX_TEMPFAIL: i32 = 75;

async fn alice(server: &TestServer) -> Client {
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    c
}

/// RETR and TOP of message 2 fail cleanly; everything else in the session still works.
async fn assert_message_2_unreadable_and_session_fine(c: &mut Client, server: &TestServer) {
    assert_eq!(c.cmd("RETR 2").await, "-ERR [SYS/TEMP] cannot read message 2");
    assert_eq!(c.cmd("TOP 2 0").await, "-ERR [SYS/TEMP] cannot read message 2");
    let (_, list) = c.multi("LIST").await;
    assert_eq!(list, ["1 508", "2 526", "3 767", "4 602", "5 635"]);
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
    let first = fs::read(&server.fixture.message_files("alice")[0]).unwrap();
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {} octets", crlf(&first).len()));
    assert_eq!(c.body().await, crlf(&first));
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_message_replaced_by_a_dangling_symlink_gives_err_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut c = alice(&server).await;
    let path = server.fixture.maildir("alice").join(MESSAGE_2);
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/nonexistent/apopd-test", &path).unwrap();
    assert_message_2_unreadable_and_session_fine(&mut c, &server).await;
}

#[tokio::test]
async fn a_message_replaced_by_a_directory_gives_err_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut c = alice(&server).await;
    let path = server.fixture.maildir("alice").join(MESSAGE_2);
    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    assert_message_2_unreadable_and_session_fine(&mut c, &server).await;
}

#[tokio::test]
async fn missing_maildir_subdirectories_are_created_at_login() {
    let server = TestServer::start().await;
    let bob = server.fixture.maildir("bob");
    // bob's cur/ and tmp/ are empty; new/ has his two messages.
    fs::remove_dir_all(bob.join("cur")).unwrap();
    fs::remove_dir_all(bob.join("tmp")).unwrap();
    let mut c = server.connect().await;
    assert_eq!(c.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");
    assert!(bob.join("cur").is_dir() && bob.join("tmp").is_dir());
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");

    // A user without any maildir yet gets an empty one.
    fs::remove_dir_all(&bob).unwrap();
    let mut c = server.connect().await;
    assert_eq!(c.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 0 messages (0 octets)");
    for sub in ["cur", "new", "tmp"] {
        assert!(bob.join(sub).is_dir(), "{sub}/ not created");
    }
    assert_eq!(c.cmd("STAT").await, "+OK 0 0");
}

#[tokio::test]
async fn a_maildir_that_is_a_regular_file_gives_err_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let bob = server.fixture.maildir("bob");
    fs::remove_dir_all(&bob).unwrap();
    fs::write(&bob, b"not a maildir").unwrap();
    let mut c = server.connect().await;
    assert_eq!(c.login("bob", BOB_PASSWORD).await, UNSAFE);
    // The mailbox could not be opened, so the session is still in AUTHORIZATION...
    assert_eq!(c.cmd("STAT").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");
    assert_eq!(c.apop("bob", "whatever").await, "-ERR [AUTH] invalid user name or password");
    // ...and another login on the same connection works.
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    assert_eq!(fs::read(&bob).unwrap(), b"not a maildir", "the file was left alone");

    // A maildir whose cur/ is a regular file: the same clean refusal.
    fs::remove_file(&bob).unwrap();
    for sub in ["new", "tmp"] {
        fs::create_dir_all(bob.join(sub)).unwrap();
    }
    fs::write(bob.join("cur"), b"not a directory").unwrap();
    let mut c2 = server.connect().await;
    assert_eq!(c2.login("bob", BOB_PASSWORD).await, UNSAFE);
    assert_eq!(c2.cmd("CAPA").await, "+OK capability list follows");
    assert_eq!(c2.lines().await.first().map(String::as_str), Some("TOP"));
    assert_eq!(fs::read(bob.join("cur")).unwrap(), b"not a directory");
}

/// The files under a maildir's new/ and tmp/, as `sub/name`.
fn snapshot(maildir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for sub in ["new", "tmp", "cur"] {
        if let Ok(entries) = fs::read_dir(maildir.join(sub)) {
            files.extend(entries.map(|e| format!("{sub}/{}", e.unwrap().file_name().to_string_lossy())));
        }
    }
    files.sort();
    files
}

fn deliver(fixture: &Fixture, stdin: Stdio) -> Output {
    Command::new(env!("CARGO_BIN_EXE_apopd"))
        .args(["deliver", "alice", "--config"])
        .arg(&fixture.config_path)
        .stdin(stdin)
        .output()
        .expect("run apopd deliver")
}

#[test]
fn deliver_with_unreadable_input_exits_75_and_leaves_nothing() {
    let fixture = Fixture::new("");
    let before = snapshot(&fixture.maildir("alice"));
    // A directory as stdin: open succeeds, every read fails (EISDIR).
    let out = deliver(&fixture, Stdio::from(File::open(fixture.dir.path()).unwrap()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EX_TEMPFAIL), "{stderr}");
    assert!(stderr.contains("apopd deliver: cannot deliver to"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(snapshot(&fixture.maildir("alice")), before, "nothing in new/ or tmp/");
}

/// Root and a mount namespace are needed for a private tmpfs; without them the test says so
/// and passes vacuously.
fn private_mounts_work() -> bool {
    let probe = Command::new("unshare").args(["--mount", "true"]).status();
    match probe {
        Ok(status) if status.success() => true,
        other => {
            println!("SKIPPED: `unshare --mount` is unavailable here ({other:?}); cannot fake a full disk");
            false
        }
    }
}

/// In a private mount namespace, a 64 KiB tmpfs over alice's maildir; deliver `small` then
/// `big`; prints `rc=<small> <big>` and every file with its size.
fn deliver_on_tiny_tmpfs(fixture: &Fixture, small: &Path, big: &Path) -> String {
    let script = r#"
        set -u
        mount -t tmpfs -o size=64k,mode=0700 apopd-test "$MAILDIR" || exit 99
        "$APOPD" deliver alice --config "$CONFIG" < "$SMALL"; small=$?
        "$APOPD" deliver alice --config "$CONFIG" < "$BIG"; big=$?
        echo "rc=$small $big"
        cd "$MAILDIR" && find . -type f -printf '%P %s\n' | sort
    "#;
    let out = Command::new("timeout")
        .args(["-k", "5", "60", "unshare", "--mount", "--propagation", "private", "sh", "-c", script])
        .env("MAILDIR", fixture.maildir("alice"))
        .env("APOPD", env!("CARGO_BIN_EXE_apopd"))
        .env("CONFIG", &fixture.config_path)
        .env("SMALL", small)
        .env("BIG", big)
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tmpfs script failed ({}): {stdout}\n{stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    stdout
}

#[test]
fn deliver_onto_a_full_disk_exits_75_and_leaves_no_partial_file() {
    if !private_mounts_work() {
        return;
    }
    let fixture = Fixture::new("");
    let small = fixture.dir.path().join("small.eml");
    let big = fixture.dir.path().join("big.eml");
    fs::write(&small, b"Subject: fits\n\nsmall\n").unwrap();
    let mut body = b"Subject: too big\n\n".to_vec();
    body.extend(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(4096)); // 256 KiB
    fs::write(&big, &body).unwrap();
    let before = snapshot(&fixture.maildir("alice"));

    let out = deliver_on_tiny_tmpfs(&fixture, &small, &big);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(format!("rc=0 {EX_TEMPFAIL}").as_str()), "{out}");
    let files: Vec<&str> = lines.collect();
    // The small message is whole in new/ (proving the tmpfs works); of the big one, nothing.
    assert_eq!(files.len(), 1, "only the small message may be on the full disk: {out}");
    let (name, size) = files[0].rsplit_once(' ').unwrap();
    assert!(name.starts_with("new/"), "{out}");
    assert_eq!(size, "21", "{out}");
    // The real maildir under the mount was never touched.
    assert_eq!(snapshot(&fixture.maildir("alice")), before);
}

/// A file-size limit (RLIMIT_FSIZE, `ulimit -f`) is another way a write fails mid-message.
/// The default action of SIGXFSZ kills the process: an MTA sees a signal, not 75, and the
/// partial file stays in tmp/.
#[test]
fn deliver_over_the_file_size_limit_exits_75_and_leaves_no_partial_file() {
    let fixture = Fixture::new("");
    let before = snapshot(&fixture.maildir("alice"));
    let input = fixture.dir.path().join("big.eml");
    let mut body = b"Subject: over the limit\n\n".to_vec();
    body.extend(b"0123456789abcdef\n".repeat(1024)); // 17 KiB, the limit is 4 KiB
    fs::write(&input, &body).unwrap();
    let out = Command::new("prlimit")
        .arg("--fsize=4096")
        .arg(env!("CARGO_BIN_EXE_apopd"))
        .args(["deliver", "alice", "--config"])
        .arg(&fixture.config_path)
        .stdin(File::open(&input).unwrap())
        .output()
        .expect("run prlimit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed by a signal: {}", out.status);
    assert_eq!(out.status.code(), Some(EX_TEMPFAIL), "{stderr}");
    assert_eq!(snapshot(&fixture.maildir("alice")), before, "nothing in new/ or tmp/");
}
