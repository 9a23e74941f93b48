//! A user who can write to their own maildir tries to make apopd read what is not theirs:
//! symlinks in `cur/` and `new/`, a symlinked `cur/` or maildir, FIFOs, a 64 GiB sparse file,
//! files of another owner, a forged index, a message that grows after LIST, and a symlinked
//! `tmp/` under `deliver`. Every case runs against a real `apopd serve` over a socket, and a
//! property test builds random hostile trees and checks that no byte from outside the
//! maildir ever reaches a reply.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::stat::Mode;
use nix::unistd::{Uid, chown, mkfifo};
use proptest::prelude::*;

/// What the private file outside the mail root says; it must never appear in a reply.
const SECRET: &str = "TOP-SECRET-0600-MARKER";
/// alice's demo mailbox, untouched: what STAT says when every trap is left out.
const ALICE_STAT: &str = "+OK 5 3038";
/// A uid no file here belongs to, for the ownership rules (root only).
const STRANGER: u32 = 4242;
/// The uid that plays alice's own account, owning her maildir (root only).
const ALICE_UID: u32 = 4243;

/// Make alice's maildir one she can write to herself, as in a home directory: hers (as
/// root), else group- and world-writable. Either way apopd's listing must then check every file.
fn hand_to_alice(maildir: &Path) {
    for sub in ["", "cur", "new", "tmp"] {
        let dir = maildir.join(sub);
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_file() {
                alices(&path);
            }
        }
        alices(&dir);
        if !Uid::effective().is_root() {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        }
    }
}

/// Give one file (never through a link) to alice's uid, when running as root.
fn alices(path: &Path) {
    if Uid::effective().is_root() {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            path,
            Some(Uid::from_raw(ALICE_UID)),
            None,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

/// A server process on a fresh demo copy, with a 0600 secret beside (not under) the mail root.
fn start(extra: &str) -> (Fixture, ServerProcess, PathBuf) {
    let fixture = Fixture::new(extra);
    let secret = fixture.dir.path().join("secret.txt");
    fs::write(&secret, format!("Subject: {SECRET}\n\n{SECRET}\n")).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    hand_to_alice(&fixture.maildir("alice"));
    let server = ServerProcess::spawn(&fixture.config_path);
    (fixture, server, secret)
}

/// Every reply a client can get from the logged-in session: STAT, LIST, UIDL, and each
/// message by RETR and TOP; all of it, raw.
async fn everything(c: &mut Client) -> String {
    let mut seen = c.cmd("STAT").await;
    let (status, list) = c.multi("LIST").await;
    seen.push_str(&status);
    let (status, uidl) = c.multi("UIDL").await;
    seen.push_str(&status);
    seen.push_str(&uidl.join("\n"));
    for line in &list {
        seen.push_str(line);
        let n = line.split(' ').next().unwrap();
        for command in [format!("RETR {n}"), format!("TOP {n} 1000")] {
            let status = c.cmd(&command).await;
            if status.starts_with("+OK") {
                seen.push_str(&String::from_utf8_lossy(&c.body().await));
            }
            seen.push_str(&status);
        }
    }
    seen
}

async fn login_alice(server: &ServerProcess) -> Client {
    let mut c = Client::connect(server.addr).await;
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
    c
}

#[tokio::test]
async fn a_symlink_in_cur_or_new_to_a_private_file_is_never_listed_or_served() {
    let (fixture, server, secret) = start("");
    let alice = fixture.maildir("alice");
    symlink(&secret, alice.join("cur/1800000000.evil.host:2,S")).unwrap();
    // A name with ,W= would spare the scan from opening it: the link is still seen for what it is.
    symlink(&secret, alice.join("new/1800000001.evil.host,S=60,W=62")).unwrap();
    let mut c = login_alice(&server).await;
    let seen = everything(&mut c).await;
    assert!(seen.starts_with(ALICE_STAT), "{seen}");
    assert!(!seen.contains(SECRET), "the secret reached a reply:\n{seen}");
    for name in ["1800000000.evil.host", "1800000001.evil.host"] {
        let logged = server.wait_for_log(name, 1);
        assert!(logged[0].contains("not a regular file"), "{logged:?}");
    }
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(fs::read_to_string(&secret).unwrap().contains(SECRET), "the target was left alone");
}

#[tokio::test]
async fn a_symlinked_cur_or_maildir_is_refused_with_sys_perm() {
    let (fixture, server, _) = start("");
    let (alice, bob) = (fixture.maildir("alice"), fixture.maildir("bob"));
    const REFUSED: &str = "-ERR [SYS/PERM] the mailbox cannot be served safely; ask the administrator";

    fs::remove_dir_all(bob.join("cur")).unwrap();
    symlink(alice.join("cur"), bob.join("cur")).unwrap();
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.login("bob", BOB_PASSWORD).await, REFUSED);
    server.wait_for_log("is a symbolic link", 1);
    // Still in AUTHORIZATION, and another user can log in on the same connection.
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, "+OK alice's maildrop has 5 messages (3038 octets)");
    drop(c);

    fs::remove_dir_all(&bob).unwrap();
    symlink(&alice, &bob).unwrap();
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.login("bob", BOB_PASSWORD).await, REFUSED);
    assert_eq!(server.wait_for_log("is a symbolic link", 2).len(), 2);
    assert_eq!(fixture.message_files("alice").len(), 5, "nothing of alice's was touched");
}

#[tokio::test]
async fn an_operator_may_allow_a_symlinked_maildir_but_never_a_symlinked_cur() {
    let (fixture, server, _) = start("allow_symlinked_maildir = true");
    let volume = fixture.dir.path().join("other-volume");
    fs::rename(fixture.maildir("bob"), &volume).unwrap();
    symlink(&volume, fixture.maildir("bob")).unwrap();
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");

    fs::remove_dir_all(volume.join("cur")).unwrap();
    symlink(fixture.maildir("alice").join("cur"), volume.join("cur")).unwrap();
    let mut c = Client::connect(server.addr).await;
    assert!(c.login("bob", BOB_PASSWORD).await.starts_with("-ERR [SYS/PERM]"));
}

#[tokio::test]
async fn a_fifo_in_cur_or_new_does_not_hang_the_login() {
    let (fixture, server, _) = start("");
    let alice = fixture.maildir("alice");
    mkfifo(&alice.join("cur/1800000000.fifo.host:2,"), Mode::from_bits_truncate(0o600)).unwrap();
    mkfifo(&alice.join("new/1800000001.fifo.host"), Mode::from_bits_truncate(0o600)).unwrap();
    let session = async {
        let mut c = login_alice(&server).await;
        everything(&mut c).await
    };
    let seen = tokio::time::timeout(Duration::from_secs(20), session).await.expect("a FIFO blocked the session");
    assert!(seen.starts_with(ALICE_STAT), "{seen}");
    server.wait_for_log("1800000000.fifo.host", 1);
    server.wait_for_log("1800000001.fifo.host", 1);
}

/// The bytes the server process has read through read(2) and friends so far.
fn bytes_read_by(pid: u32) -> u64 {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let line = io.lines().find(|l| l.starts_with("rchar:")).unwrap();
    line["rchar:".len()..].trim().parse().unwrap()
}

#[tokio::test]
async fn a_64_gib_sparse_file_is_skipped_without_being_read() {
    let (fixture, server, _) = start("");
    let alice = fixture.maildir("alice");
    let huge = 64 << 30;
    for name in
        ["cur/1800000000.huge.host:2,", "new/1800000001.huge.host,W=10", "new/1800000002.huge.host,S=1,W=68719476736"]
    {
        let file = fs::File::create(alice.join(name)).unwrap();
        file.set_len(if name.contains("S=1,") { 1 } else { huge }).unwrap();
        alices(&alice.join(name));
    }
    let before = bytes_read_by(server.pid());
    let mut c = login_alice(&server).await;
    assert_eq!(c.cmd("STAT").await, ALICE_STAT);
    let read = bytes_read_by(server.pid()) - before;
    assert!(read < 1 << 20, "the login read {read} bytes");
    for name in ["1800000000.huge.host", "1800000001.huge.host", "1800000002.huge.host"] {
        let logged = server.wait_for_log(name, 1);
        assert!(logged[0].contains("max_message_size"), "{logged:?}");
    }
}

#[tokio::test]
async fn a_message_that_grows_after_list_is_cut_at_the_announced_size() {
    let (fixture, server, _) = start("");
    let alice = fixture.maildir("alice");
    // One small message (read whole at RETR) and one past the 128 KiB read-at-open size (streamed).
    let big: Vec<u8> = (0..4000).flat_map(|i| format!("line {i} of a long message\n").into_bytes()).collect();
    fs::write(alice.join("new/1800000000.big.host"), &big).unwrap();
    alices(&alice.join("new/1800000000.big.host"));
    let mut c = login_alice(&server).await;
    let files = fixture.message_files("alice");
    for (n, path) in [(1, &files[0]), (6, &alice.join("new/1800000000.big.host"))] {
        let original = fs::read(path).unwrap();
        let size: usize = c.cmd(&format!("LIST {n}")).await.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(size, crlf(&original).len());
        let mut file = fs::OpenOptions::new().append(true).open(path).unwrap();
        std::io::Write::write_all(&mut file, &b"appended after the scan\n".repeat(10_000)).unwrap();
        assert_eq!(c.cmd(&format!("RETR {n}")).await, format!("+OK {size} octets"));
        assert_eq!(c.body().await, crlf(&original), "message {n}: exactly what LIST announced");
        assert!(c.cmd(&format!("TOP {n} 100000")).await.starts_with("+OK"));
        assert_eq!(c.body().await, crlf(&original), "message {n}: TOP is cut there too");
    }
}

fn is_root() -> bool {
    if Uid::effective().is_root() {
        return true;
    }
    let line = "skipped: the ownership tests need root (chown to another uid) — run cargo test as root\n";
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    false
}

#[tokio::test]
async fn files_of_another_owner_and_a_hard_link_to_a_stranger_file_are_skipped() {
    if !is_root() {
        return;
    }
    let (fixture, server, secret) = start("");
    let alice = fixture.maildir("alice");
    chown(&secret, Some(Uid::from_raw(STRANGER)), None).unwrap();
    fs::hard_link(&secret, alice.join("cur/1800000000.hardlink.host:2,S")).unwrap();
    let foreign = alice.join("new/1800000001.foreign.host,S=5,W=7");
    // (written by root here: that is another owner too)
    fs::write(&foreign, "x\ny\n").unwrap();
    chown(&foreign, Some(Uid::from_raw(STRANGER)), None).unwrap();
    let mut c = login_alice(&server).await;
    let seen = everything(&mut c).await;
    assert!(seen.starts_with(ALICE_STAT), "{seen}");
    assert!(!seen.contains(SECRET), "{seen}");
    for name in ["1800000000.hardlink.host", "1800000001.foreign.host"] {
        let logged = server.wait_for_log(name, 1);
        assert!(logged[0].contains(&format!("owned by uid {STRANGER}")), "{logged:?}");
    }
}

#[tokio::test]
async fn a_maildir_of_the_wrong_owner_is_refused_under_mail_user() {
    if !is_root() {
        return;
    }
    // alice's maildir belongs to her own uid; bob's to the user apopd runs as (root here).
    let (_fixture, server, _) = start("maildir_owner = \"mail_user\"");
    let mut c = Client::connect(server.addr).await;
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("-ERR [SYS/PERM]"));
    server.wait_for_log(&format!("owned by uid {ALICE_UID}"), 1);
    assert!(c.login("bob", BOB_PASSWORD).await.starts_with("+OK bob's maildrop has 2"));
}

/// Nanoseconds since the epoch of a directory's mtime.
fn mtime_nanos(path: &Path) -> u128 {
    fs::metadata(path).unwrap().modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// An index a user wrote: it lists a symlink to the secret, with the directories' real mtimes
/// and a write time past the settle window, so it would be trusted if its author were.
fn forge_index(maildir: &Path) -> PathBuf {
    let (cur, new) = (mtime_nanos(&maildir.join("cur")), mtime_nanos(&maildir.join("new")));
    let written = cur.max(new) + 60_000_000_000;
    let index = maildir.join("apopd.index");
    fs::write(
        &index,
        format!("apopd-index 2\ndirs {cur} {new} {written}\nuidl auto\n60 62 c evil 1800000000.evil.host:2,S\n"),
    )
    .unwrap();
    index
}

#[tokio::test]
async fn a_forged_index_is_ignored_and_even_a_trusted_one_cannot_serve_a_link() {
    if !is_root() {
        return;
    }
    let (fixture, server, secret) = start("");
    let alice = fixture.maildir("alice");
    symlink(&secret, alice.join("cur/1800000000.evil.host:2,S")).unwrap();
    let index = forge_index(&alice);
    chown(&index, Some(Uid::from_raw(STRANGER)), None).unwrap();
    let mut c = login_alice(&server).await;
    let seen = everything(&mut c).await;
    assert!(seen.starts_with(ALICE_STAT), "the user's index was not used: {seen}");
    assert!(!seen.contains(SECRET));
    server.wait_for_log("ignoring a file apopd did not write", 1);
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");

    // Worst case: an index apopd would trust names the link. It is listed, but never served.
    forge_index(&alice);
    let mut c = login_alice(&server).await;
    assert_eq!(c.cmd("STAT").await, "+OK 1 62");
    assert!(c.cmd("RETR 1").await.starts_with("-ERR [SYS/TEMP]"));
    assert!(c.cmd("TOP 1 0").await.starts_with("-ERR [SYS/TEMP]"));
}

fn deliver(fixture: &Fixture) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apopd"))
        .args(["deliver", "alice", "--config"])
        .arg(&fixture.config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal may come before the message is read: the write may then meet a closed pipe.
    let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"Subject: hi\n\nhello\n");
    child.wait_with_output().unwrap()
}

#[test]
fn deliver_refuses_a_symlinked_tmp_or_new_with_exit_77_and_writes_nothing_outside() {
    for sub in ["tmp", "new"] {
        let fixture = Fixture::new("");
        let alice = fixture.maildir("alice");
        let outside = fixture.dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::rename(alice.join(sub), outside.join("moved")).unwrap();
        symlink(&outside, alice.join(sub)).unwrap();
        let out = deliver(&fixture);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(77), "{sub}: {stderr}");
        assert!(stderr.contains("refusing an unsafe maildir") && stderr.contains("is a symbolic link"), "{stderr}");
        let names: Vec<_> = fs::read_dir(&outside).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("moved")], "{sub}: nothing written outside");
    }
    // The same maildir, repaired, takes the message.
    let fixture = Fixture::new("");
    let out = deliver(&fixture);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// One entry a hostile user can put in `cur/` or `new/`.
#[derive(Debug, Clone)]
enum Trap {
    /// An ordinary message: served.
    Message(String),
    /// A symlink to the secret outside the mail root.
    LinkToSecret,
    /// A symlink to bob's maildir.
    LinkToOtherMaildir,
    /// A named pipe.
    Fifo,
    /// A directory with a link to the secret inside.
    Directory,
    /// A hard link to the secret, which belongs to another uid (root only).
    HardLinkToSecret,
}

fn trap() -> impl Strategy<Value = Trap> {
    prop_oneof![
        3 => "[a-z .]{0,40}(\n[a-z .]{0,30}){0,5}\n?".prop_map(Trap::Message),
        1 => Just(Trap::LinkToSecret),
        1 => Just(Trap::LinkToOtherMaildir),
        1 => Just(Trap::Fifo),
        1 => Just(Trap::Directory),
        1 => Just(Trap::HardLinkToSecret),
    ]
}

/// `(in new/?, has a ,S=,W= name?, flags, what)` for each entry.
fn tree() -> impl Strategy<Value = Vec<(bool, bool, bool, Trap)>> {
    prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), trap()), 0..10)
}

/// Build the tree in alice's maildir; returns the messages a client must get, in order.
fn build(fixture: &Fixture, secret: &Path, tree: &[(bool, bool, bool, Trap)], root: bool) -> Vec<Vec<u8>> {
    let alice = fixture.maildir("alice");
    for sub in ["cur", "new"] {
        fs::remove_dir_all(alice.join(sub)).unwrap();
        fs::create_dir(alice.join(sub)).unwrap();
    }
    hand_to_alice(&alice);
    // Unique names, as maildir writers make them: the index may reuse the size it recorded
    // for a name whose file has the same length.
    static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut served = Vec::new();
    for (i, (in_new, sized, flags, trap)) in tree.iter().enumerate() {
        let mut name = format!("{}.M{i}C{case}.trap", 1_800_000_000 + i);
        if *sized {
            name.push_str(",S=40,W=42"); // deliberately wrong for most: sizes of links must not matter
        }
        if *flags && !in_new {
            name.push_str(":2,S");
        }
        let path = alice.join(if *in_new { "new" } else { "cur" }).join(&name);
        match trap {
            Trap::Message(text) => {
                let name = name.replace(",S=40,W=42", "");
                fs::write(path.with_file_name(&name), text).unwrap();
                alices(&path.with_file_name(name));
                served.push(crlf(text.as_bytes()));
            }
            Trap::LinkToSecret => symlink(secret, &path).unwrap(),
            Trap::LinkToOtherMaildir => symlink(fixture.maildir("bob"), &path).unwrap(),
            Trap::Fifo => mkfifo(&path, Mode::from_bits_truncate(0o600)).unwrap(),
            Trap::Directory => {
                fs::create_dir(&path).unwrap();
                symlink(secret, path.join("inner")).unwrap();
            }
            Trap::HardLinkToSecret if root => fs::hard_link(secret, &path).unwrap(),
            Trap::HardLinkToSecret => {}
        }
    }
    served
}

#[test]
fn random_hostile_maildirs_never_leak_a_byte_from_outside() {
    let root = Uid::effective().is_root();
    let (fixture, server, secret) = start("");
    if root {
        chown(&secret, Some(Uid::from_raw(STRANGER)), None).unwrap();
    }
    // bob's mail is someone else's too: mark it.
    fs::write(fixture.maildir("bob").join("new/1700000000.bob.host"), "Subject: BOB-PRIVATE\n\nBOB-PRIVATE\n").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(tree in tree())| {
        let expected = build(&fixture, &secret, &tree, root);
        let session = async {
            let mut c = login_alice(&server).await;
            let stat = c.cmd("STAT").await;
            let seen = everything(&mut c).await;
            let mut bodies = Vec::new();
            for n in 1..=expected.len() {
                assert!(c.cmd(&format!("RETR {n}")).await.starts_with("+OK"));
                bodies.push(c.body().await);
            }
            assert!(c.cmd("QUIT").await.starts_with("+OK"));
            (stat, seen, bodies)
        };
        let bounded = async { tokio::time::timeout(Duration::from_secs(30), session).await };
        let (stat, seen, bodies) = runtime.block_on(bounded).expect("the session hung");
        prop_assert!(!seen.contains(SECRET) && !seen.contains("BOB-PRIVATE"), "leak:\n{}", seen);
        let octets: usize = expected.iter().map(Vec::len).sum();
        prop_assert_eq!(stat, format!("+OK {} {octets}", expected.len()));
        prop_assert_eq!(bodies, expected);
    });
}
