//! AUTHORIZATION state over TCP: greeting, USER/PASS, APOP, QUIT, refused commands, and
//! user names that try to leave the mail root.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The one answer to every failed login (src/session/authorization.rs `AUTH_FAILED`).
const AUTH_FAILED: &str = "-ERR [AUTH] invalid user name or password";
const NOT_LOGGED_IN: &str = "-ERR not logged in yet: use USER/PASS, APOP or AUTH first";
const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";

/// Every path under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            out.insert(path.strip_prefix(root).unwrap().to_path_buf());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn assert_clean_timestamp(ts: &str) {
    let inner = ts.strip_prefix('<').and_then(|t| t.strip_suffix('>')).unwrap_or_else(|| panic!("not <...>: {ts}"));
    assert!(inner.contains('@'), "no @ in {ts}");
    assert!(
        !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || "._@+/-".contains(c)),
        "timestamp has characters outside [A-Za-z0-9.@_+/-]: {ts}"
    );
}

#[tokio::test]
async fn greeting_has_a_clean_unique_msg_id_timestamp() {
    let server = TestServer::start_with("hostname = \"pop.example.org\"").await;
    let mut seen = BTreeSet::new();
    let mut open = Vec::new();
    for _ in 0..5 {
        let c = server.connect().await;
        let ts = c.timestamp();
        assert_eq!(c.greeting, format!("+OK apopd POP3 server ready {ts}"));
        assert!(ts.ends_with("@pop.example.org>"), "{ts}");
        assert_clean_timestamp(&ts);
        assert!(seen.insert(ts.clone()), "timestamp {ts} reused");
        open.push(c); // concurrent connections, too
    }
}

#[tokio::test]
async fn greeting_timestamp_stays_clean_with_an_odd_hostname() {
    let server = TestServer::start_with("hostname = \"mail host=1.example/x\"").await;
    let c = server.connect().await;
    let ts = c.timestamp();
    assert_clean_timestamp(&ts);
    assert_eq!(c.greeting.matches('<').count(), 1, "{}", c.greeting);
}

#[tokio::test]
async fn user_pass_logs_in() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.cmd("USER alice").await, "+OK send PASS");
    assert_eq!(c.cmd(&format!("PASS {ALICE_PASSWORD}")).await, ALICE_OK);
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");

    let mut b = server.connect().await;
    assert_eq!(b.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");
}

/// Add `name` with `password` to the users file of `fixture`, with an mtime the server cannot
/// have seen, so the running server reloads it.
fn add_user(fixture: &Fixture, name: &str, password: &[u8]) {
    use apopd::auth::{password, users};
    let path = fixture.dir.path().join("users");
    let mut entries = users::read_entries(&path, false).unwrap();
    entries.insert(name.to_owned(), password::hash(password).unwrap());
    users::write_entries(&path, &entries, &[]).unwrap();
    let stamp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(stamp).unwrap();
}

#[tokio::test]
async fn pass_keeps_spaces_and_users_file_is_reloaded() {
    let server = TestServer::start().await;
    let password = " correct  horse battery ";
    let mut c = server.connect().await;
    // Not in the users file yet.
    assert_eq!(c.login("carol", password).await, AUTH_FAILED);

    add_user(&server.fixture, "carol", password.as_bytes());

    // Variants with the spaces trimmed or collapsed are different passwords.
    for wrong in ["correct  horse battery", " correct horse battery ", "correct horse battery"] {
        assert_eq!(c.login("carol", wrong).await, AUTH_FAILED, "{wrong:?}");
    }
    assert_eq!(c.cmd("USER carol").await, "+OK send PASS");
    c.send_raw(format!("PASS {password}\r\n").as_bytes()).await;
    assert_eq!(c.line().await, "+OK carol's maildrop has 0 messages (0 octets)");
    assert_eq!(c.cmd("STAT").await, "+OK 0 0");
    // The maildir was created on first login.
    for sub in ["cur", "new", "tmp"] {
        assert!(server.fixture.maildir("carol").join(sub).is_dir(), "{sub}");
    }
}

#[tokio::test]
async fn pass_without_user_is_refused() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.cmd(&format!("PASS {ALICE_PASSWORD}")).await, "-ERR give USER first");
    // A failed PASS consumes the USER: the next PASS needs a new USER.
    assert_eq!(c.login("alice", "nope").await, AUTH_FAILED);
    assert_eq!(c.cmd(&format!("PASS {ALICE_PASSWORD}")).await, "-ERR give USER first");
    assert_eq!(c.login("alice", ALICE_PASSWORD).await, ALICE_OK);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let wrong_password = c.login("alice", "wonderlanD").await;
    let unknown_user = c.login("mallory", ALICE_PASSWORD).await;
    let other_users_password = c.login("alice", BOB_PASSWORD).await;
    assert_eq!(wrong_password, AUTH_FAILED);
    assert_eq!(unknown_user.as_bytes(), wrong_password.as_bytes());
    assert_eq!(other_users_password.as_bytes(), wrong_password.as_bytes());
    // APOP failures look the same as well.
    let digest = apopd::auth::apop::digest(&c.timestamp(), ALICE_APOP_SECRET.as_bytes());
    assert_eq!(c.cmd(&format!("APOP mallory {digest}")).await, AUTH_FAILED);
    // The session goes on.
    assert_eq!(c.login("alice", ALICE_PASSWORD).await, ALICE_OK);
}

#[tokio::test]
async fn apop_accepts_lowercase_and_uppercase_digests() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");

    let mut c = server.connect().await;
    let digest = apopd::auth::apop::digest(&c.timestamp(), ALICE_APOP_SECRET.as_bytes());
    assert_eq!(digest, digest.to_lowercase());
    assert_eq!(c.cmd(&format!("APOP alice {}", digest.to_uppercase())).await, ALICE_OK);
}

#[tokio::test]
async fn apop_with_a_wrong_digest_fails() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let ts = c.timestamp();
    let wrong_secret = apopd::auth::apop::digest(&ts, b"tanstaaF");
    let right = apopd::auth::apop::digest(&ts, ALICE_APOP_SECRET.as_bytes());
    let truncated = &right[..31];
    let not_hex = format!("zz{}", &right[2..]);
    let password_instead = apopd::auth::apop::digest(&ts, ALICE_PASSWORD.as_bytes());
    for digest in [wrong_secret.as_str(), truncated, &not_hex, &password_instead, "x"] {
        assert_eq!(c.cmd(&format!("APOP alice {digest}")).await, AUTH_FAILED, "{digest}");
    }
    // Still in AUTHORIZATION, and the right digest still works on this connection.
    assert_eq!(c.cmd(&format!("APOP alice {right}")).await, ALICE_OK);
}

#[tokio::test]
async fn apop_for_a_user_without_secret_fails() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let ts = c.timestamp();
    for secret in [BOB_PASSWORD, ALICE_APOP_SECRET, ""] {
        let digest = apopd::auth::apop::digest(&ts, secret.as_bytes());
        assert_eq!(c.cmd(&format!("APOP bob {digest}")).await, AUTH_FAILED, "secret {secret:?}");
    }
    assert_eq!(c.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");
}

#[tokio::test]
async fn apop_digest_of_another_connection_is_refused() {
    let server = TestServer::start().await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    assert_ne!(first.timestamp(), second.timestamp());
    let first_digest = apopd::auth::apop::digest(&first.timestamp(), ALICE_APOP_SECRET.as_bytes());

    assert_eq!(second.cmd(&format!("APOP alice {first_digest}")).await, AUTH_FAILED);
    // The digest was right for the connection it was made for.
    assert_eq!(first.cmd(&format!("APOP alice {first_digest}")).await, ALICE_OK);
    assert_eq!(first.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(first.closed().await);

    // Replaying the used digest later on a new connection fails too.
    let mut third = server.connect().await;
    assert_eq!(third.cmd(&format!("APOP alice {first_digest}")).await, AUTH_FAILED);
}

#[tokio::test]
async fn quit_in_authorization_closes_without_touching_the_mailbox() {
    let server = TestServer::start().await;
    let before = tree(server.fixture.dir.path());
    let mut c = server.connect().await;
    assert_eq!(c.cmd("USER alice").await, "+OK send PASS");
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off");
    assert!(c.closed().await);

    let mut c = server.connect().await;
    assert_eq!(c.login("alice", "wrong").await, AUTH_FAILED);
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off");
    assert!(c.closed().await);

    // No file added (not even the lock file), none removed.
    assert_eq!(tree(server.fixture.dir.path()), before);
    assert!(!server.fixture.maildir("alice").join("apopd.lock").exists());
}

#[tokio::test]
async fn transaction_commands_are_refused_in_authorization() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let commands = ["STAT", "LIST", "LIST 1", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 0", "UIDL", "UIDL 1"];
    for cmd in commands {
        assert_eq!(c.cmd(cmd).await, NOT_LOGGED_IN, "{cmd}");
    }
    // Same after USER (the name is given but nobody is logged in yet).
    assert_eq!(c.cmd("USER alice").await, "+OK send PASS");
    for cmd in commands {
        assert_eq!(c.cmd(cmd).await, NOT_LOGGED_IN, "{cmd} after USER");
    }
    // The session goes on and nothing was deleted.
    assert_eq!(c.login("alice", ALICE_PASSWORD).await, ALICE_OK);
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert_eq!(server.fixture.message_files("alice").len(), 5);
}

#[tokio::test]
async fn path_escaping_user_names_fail_like_a_wrong_password() {
    // Put the maildirs two levels deeper, so every escape attempt lands inside the temp dir.
    let fixture = Fixture::new("");
    let root = fixture.dir.path();
    std::fs::create_dir_all(root.join("x/y")).unwrap();
    std::fs::rename(root.join("mail"), root.join("x/y/mail")).unwrap();
    let config = std::fs::read_to_string(&fixture.config_path).unwrap();
    let config = config.replace("mail_root = \"mail/{user}\"", "mail_root = \"x/y/mail/{user}\"");
    std::fs::write(&fixture.config_path, config).unwrap();
    let server = TestServer::start_on(fixture).await;
    let before = tree(server.fixture.dir.path());

    let mut c = server.connect().await;
    let names = ["../../etc", "../../../etc", "a/b", "..", ".hidden", "../bob", "alice/../bob", "./alice", "/etc"];
    for name in names {
        assert_eq!(c.login(name, ALICE_PASSWORD).await, AUTH_FAILED, "USER/PASS {name}");
        assert_eq!(c.login(name, BOB_PASSWORD).await, AUTH_FAILED, "USER/PASS {name}");
        let digest = apopd::auth::apop::digest(&c.timestamp(), ALICE_APOP_SECRET.as_bytes());
        assert_eq!(c.cmd(&format!("APOP {name} {digest}")).await, AUTH_FAILED, "APOP {name}");
        assert_eq!(c.cmd("CAPA").await, "+OK capability list follows", "session alive after {name}");
        c.body().await;
    }
    assert_eq!(tree(server.fixture.dir.path()), before, "something was created or removed");
    // The real user still works with the moved mail root.
    assert_eq!(c.login("alice", ALICE_PASSWORD).await, ALICE_OK);
}
