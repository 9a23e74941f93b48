//! UPDATE and the maildir: what QUIT removes, what a dropped session leaves, mail that
//! arrives mid-session, removals that fail, and files that change under a session.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";

async fn alice(server: &TestServer) -> Client {
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    c
}

fn names(files: &[PathBuf]) -> BTreeSet<String> {
    files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

/// A client on a plain socket, so it can half-close and wait for the server to finish.
struct Raw {
    io: BufReader<TcpStream>,
    timestamp: String,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Self {
        let mut io = BufReader::new(TcpStream::connect(addr).await.unwrap());
        let mut greeting = String::new();
        io.read_line(&mut greeting).await.unwrap();
        let timestamp = greeting[greeting.find('<').unwrap()..=greeting.rfind('>').unwrap()].to_owned();
        Raw { io, timestamp }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.io.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        let mut reply = String::new();
        self.io.read_line(&mut reply).await.unwrap();
        reply.trim_end_matches("\r\n").to_owned()
    }

    async fn apop_alice(&mut self) {
        let digest = apopd::auth::apop::digest(&self.timestamp, ALICE_APOP_SECRET.as_bytes());
        assert_eq!(self.cmd(&format!("APOP alice {digest}")).await, ALICE_OK);
    }

    /// Stop sending (the server reads EOF), then wait until the server has closed its side;
    /// returns whatever it still sent.
    async fn vanish(mut self, unfinished: &[u8]) -> Vec<u8> {
        self.io.write_all(unfinished).await.unwrap();
        self.io.get_mut().shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), self.io.read_to_end(&mut rest))
            .await
            .expect("server did not close")
            .unwrap();
        rest
    }
}

#[tokio::test]
async fn dele_and_quit_remove_exactly_the_marked_files() {
    let server = TestServer::start().await;
    let before = server.fixture.message_files("alice");
    let bob_before = server.fixture.message_files("bob");
    let mut c = alice(&server).await;
    let (_, uidls) = c.multi("UIDL").await;
    assert_eq!(c.cmd("DELE 2").await, "+OK message 2 marked for deletion");
    assert_eq!(c.cmd("DELE 5").await, "+OK message 5 marked for deletion");
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (2 messages deleted)");
    assert!(c.closed().await);

    let after = server.fixture.message_files("alice");
    let expected: Vec<PathBuf> = [0, 2, 3].iter().map(|&i| before[i].clone()).collect();
    assert_eq!(after, expected);
    assert_eq!(server.fixture.message_files("bob"), bob_before);

    // The next session numbers the rest 1..3 and keeps their UIDLs.
    let mut c = server.connect().await;
    let size: usize = expected.iter().map(|p| crlf(&std::fs::read(p).unwrap()).len()).sum();
    assert_eq!(
        c.apop("alice", ALICE_APOP_SECRET).await,
        format!("+OK alice's maildrop has 3 messages ({size} octets)")
    );
    let (_, now) = c.multi("UIDL").await;
    let kept: Vec<String> = [0, 2, 3]
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("{} {}", n + 1, uidls[i].split_once(' ').unwrap().1))
        .collect();
    assert_eq!(now, kept);
}

#[tokio::test]
async fn dele_all_and_quit_empties_the_maildrop_but_not_tmp() {
    let server = TestServer::start().await;
    let maildir = server.fixture.maildir("alice");
    // A message still being delivered.
    std::fs::write(maildir.join("tmp/1800000000.M1P1.mta"), b"Subject: in flight\n\n").unwrap();
    let mut c = alice(&server).await;
    for n in 1..=5 {
        assert_eq!(c.cmd(&format!("DELE {n}")).await, format!("+OK message {n} marked for deletion"));
    }
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (5 messages deleted)");
    assert!(c.closed().await);
    assert!(server.fixture.message_files("alice").is_empty());
    assert_eq!(std::fs::read(maildir.join("tmp/1800000000.M1P1.mta")).unwrap(), b"Subject: in flight\n\n");

    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, "+OK alice's maildrop has 0 messages (0 octets)");
    assert_eq!(c.cmd("STAT").await, "+OK 0 0");
}

#[tokio::test]
async fn dele_then_dropped_connection_removes_nothing() {
    let server = TestServer::start().await;
    let before = server.fixture.message_files("alice");
    let mut raw = Raw::connect(server.addr).await;
    raw.apop_alice().await;
    for n in 1..=5 {
        assert_eq!(raw.cmd(&format!("DELE {n}")).await, format!("+OK message {n} marked for deletion"));
    }
    // The client goes away without QUIT; the server closes without a word.
    assert_eq!(raw.vanish(b"").await, b"");
    assert_eq!(server.fixture.message_files("alice"), before);
    // And the lock is gone: the next session sees everything.
    let mut c = alice(&server).await;
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
}

#[tokio::test]
async fn dele_then_abrupt_close_mid_command_removes_nothing() {
    let server = TestServer::start().await;
    let before = server.fixture.message_files("alice");
    let mut raw = Raw::connect(server.addr).await;
    raw.apop_alice().await;
    assert_eq!(raw.cmd("DELE 1").await, "+OK message 1 marked for deletion");
    // Half a QUIT is not a QUIT.
    assert_eq!(raw.vanish(b"QUI").await, b"");
    assert_eq!(server.fixture.message_files("alice"), before);
}

#[tokio::test]
async fn mail_delivered_during_a_session_shows_up_in_the_next() {
    let server = TestServer::start().await;
    let maildir = server.fixture.maildir("alice");
    let mut c = alice(&server).await;
    let (_, uidls_before) = c.multi("UIDL").await;

    // The MTA delivers: write into tmp/, then rename into new/.
    let name = "1800000000.M900P4242.mta";
    let message = b"From: late@example.org\nSubject: late\n\nJust arrived.\n";
    std::fs::write(maildir.join("tmp").join(name), message).unwrap();
    std::fs::rename(maildir.join("tmp").join(name), maildir.join("new").join(name)).unwrap();

    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
    assert_eq!(c.multi("LIST").await.1.len(), 5);
    assert_eq!(c.multi("UIDL").await.1, uidls_before);
    assert_eq!(c.cmd("RETR 6").await, "-ERR no such message; the maildrop has messages 1 to 5");
    assert_eq!(c.cmd("DELE 6").await, "-ERR no such message; the maildrop has messages 1 to 5");
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(c.closed().await);

    let wire = crlf(message);
    let mut c = server.connect().await;
    assert_eq!(
        c.apop("alice", ALICE_APOP_SECRET).await,
        format!("+OK alice's maildrop has 6 messages ({} octets)", 3038 + wire.len())
    );
    assert_eq!(c.cmd("UIDL 6").await, format!("+OK 6 {name}"));
    assert_eq!(c.cmd("RETR 6").await, format!("+OK {} octets", wire.len()));
    assert_eq!(c.body().await, wire);
}

#[tokio::test]
async fn a_message_removed_by_another_process_gives_err_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let files = server.fixture.message_files("alice");
    let mut c = alice(&server).await;
    std::fs::remove_file(&files[1]).unwrap();

    assert_eq!(c.cmd("RETR 2").await, "-ERR [SYS/TEMP] cannot read message 2");
    assert_eq!(c.cmd("TOP 2 0").await, "-ERR [SYS/TEMP] cannot read message 2");
    // The listing is the one taken at login.
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
    let first = crlf(&std::fs::read(&files[0]).unwrap());
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {} octets", first.len()));
    assert_eq!(c.body().await, first);
    // Deleting the vanished message is no failure: the goal is reached.
    assert_eq!(c.cmd("DELE 2").await, "+OK message 2 marked for deletion");
    assert_eq!(c.cmd("DELE 3").await, "+OK message 3 marked for deletion");
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (2 messages deleted)");
    assert!(c.closed().await);
    let expected: Vec<PathBuf> = [0, 3, 4].iter().map(|&i| files[i].clone()).collect();
    assert_eq!(server.fixture.message_files("alice"), expected);
}

#[tokio::test]
async fn a_message_renamed_by_another_process_is_still_served_and_deleted() {
    let server = TestServer::start().await;
    let maildir = server.fixture.maildir("alice");
    let files = server.fixture.message_files("alice");
    let third = crlf(&std::fs::read(&files[2]).unwrap());
    let mut c = alice(&server).await;
    // Another client marks message 3 seen.
    let seen = maildir.join("cur/1700007200.M300P1000.demo:2,S");
    std::fs::rename(maildir.join("new/1700007200.M300P1000.demo"), &seen).unwrap();

    assert_eq!(c.cmd("RETR 3").await, format!("+OK {} octets", third.len()));
    assert_eq!(c.body().await, third);
    assert_eq!(c.cmd("UIDL 3").await, "+OK 3 1700007200.M300P1000.demo");
    assert_eq!(c.cmd("DELE 3").await, "+OK message 3 marked for deletion");
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (1 message deleted)");
    assert!(c.closed().await);
    assert!(!seen.exists());
    assert_eq!(server.fixture.message_files("alice").len(), 4);
}

/// Replace a message file with a non-empty directory of the same name: unlink fails with
/// EISDIR even for root, which chmod cannot promise.
fn make_unremovable(path: &Path) {
    std::fs::remove_file(path).unwrap();
    std::fs::create_dir(path).unwrap();
    std::fs::write(path.join("keep"), b"x").unwrap();
}

#[tokio::test]
async fn a_failed_removal_makes_quit_answer_err_and_keeps_the_rest() {
    let server = TestServer::start().await;
    let files = server.fixture.message_files("alice");
    let contents: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut c = alice(&server).await;
    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 marked for deletion");
    assert_eq!(c.cmd("DELE 3").await, "+OK message 3 marked for deletion");
    make_unremovable(&files[2]);
    assert_eq!(
        c.cmd("QUIT").await,
        "-ERR [SYS/TEMP] 1 of 2 marked messages could not be deleted; they are still in the maildrop"
    );
    assert!(c.closed().await);

    assert!(!files[0].exists(), "the removable marked message is removed");
    assert!(files[2].join("keep").exists(), "the unremovable one is still there");
    for i in [1, 3, 4] {
        assert_eq!(std::fs::read(&files[i]).unwrap(), contents[i], "unmarked {} intact", files[i].display());
    }
    // The lock was released despite the failure.
    let mut c = server.connect().await;
    let reply = c.apop("alice", ALICE_APOP_SECRET).await;
    assert!(reply.starts_with("+OK alice's maildrop has 3 messages"), "{reply}");
}

/// True when a 0555 directory really stops unlink for this process (not root, no CAP_DAC_OVERRIDE).
fn chmod_stops_unlink(scratch: &Path) -> bool {
    let dir = scratch.join("chmod-probe");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), b"x").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let stopped = std::fs::remove_file(dir.join("f")).is_err();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    stopped
}

#[tokio::test]
async fn a_read_only_cur_makes_quit_answer_err() {
    let server = TestServer::start().await;
    if !chmod_stops_unlink(server.fixture.dir.path()) {
        eprintln!(
            "skipped: this process may unlink in a 0555 directory (root or CAP_DAC_OVERRIDE); \
             a_failed_removal_makes_quit_answer_err_and_keeps_the_rest covers the -ERR path"
        );
        return;
    }
    let cur = server.fixture.maildir("alice").join("cur");
    let before = names(&server.fixture.message_files("alice"));
    let mut c = alice(&server).await;
    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 marked for deletion"); // cur/
    assert_eq!(c.cmd("DELE 3").await, "+OK message 3 marked for deletion"); // new/
    std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o555)).unwrap();
    let reply = c.cmd("QUIT").await;
    std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(reply, "-ERR [SYS/TEMP] 1 of 2 marked messages could not be deleted; they are still in the maildrop");
    let mut expected = before;
    expected.remove("1700007200.M300P1000.demo");
    assert_eq!(names(&server.fixture.message_files("alice")), expected);
}
