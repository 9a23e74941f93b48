//! The exclusive mailbox lock: a second session gets `-ERR [IN-USE]`, within one server and
//! across two server processes, and the lock goes away with its session.

mod common;
use common::*;

const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";
const IN_USE: &str = "-ERR [IN-USE] mailbox is already in use by another session";

#[tokio::test]
async fn a_second_login_gets_in_use_and_the_first_session_goes_on() {
    let server = TestServer::start().await;
    let mut first = server.connect().await;
    assert_eq!(first.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    assert_eq!(first.cmd("DELE 1").await, "+OK message 1 marked for deletion");

    let mut second = server.connect().await;
    assert_eq!(second.apop("alice", ALICE_APOP_SECRET).await, IN_USE);
    assert_eq!(second.login("alice", ALICE_PASSWORD).await, IN_USE);
    // The refused session stays in AUTHORIZATION...
    assert_eq!(second.cmd("STAT").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");
    // ...and its failed attempts did not release the first session's lock.
    let mut third = server.connect().await;
    assert_eq!(third.apop("alice", ALICE_APOP_SECRET).await, IN_USE);

    // The first session is unaffected, its mark included.
    assert_eq!(first.cmd("STAT").await, format!("+OK 4 {}", 3038 - 508));
    assert_eq!(first.cmd("RETR 2").await, "+OK 526 octets");
    assert_eq!(first.body().await.len(), 526);
    // Another user's mailbox is not locked.
    let mut bob = server.connect().await;
    assert_eq!(bob.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");

    assert_eq!(first.cmd("QUIT").await, "+OK apopd signing off (1 message deleted)");
    assert!(first.closed().await);
    // Now the waiting session gets in, and sees the UPDATE's result.
    assert_eq!(second.apop("alice", ALICE_APOP_SECRET).await, "+OK alice's maildrop has 4 messages (2530 octets)");
}

#[tokio::test]
async fn the_lock_goes_with_a_session_that_ends_without_quit() {
    let server = TestServer::start().await;
    let mut first = server.connect().await;
    assert_eq!(first.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    // 20 errors in a row make the server close the session (no UPDATE).
    for _ in 0..20 {
        assert_eq!(first.cmd("XXXX").await, "-ERR unknown command");
    }
    assert_eq!(first.line().await, "-ERR too many errors, closing connection");
    assert!(first.closed().await);
    let mut second = server.connect().await;
    assert_eq!(second.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
}

#[test]
fn two_server_processes_share_the_lock() {
    let fixture = Fixture::new("");
    let one = ServerProcess::spawn(&fixture.config_path);
    let two = ServerProcess::spawn(&fixture.config_path);
    assert_ne!(one.addr, two.addr);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut first = Client::connect(one.addr).await;
        assert_eq!(first.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
        let mut second = Client::connect(two.addr).await;
        assert_eq!(second.apop("alice", ALICE_APOP_SECRET).await, IN_USE);
        assert_eq!(second.login("alice", ALICE_PASSWORD).await, IN_USE);
        assert_eq!(first.cmd("STAT").await, "+OK 5 3038");

        assert_eq!(first.cmd("DELE 5").await, "+OK message 5 marked for deletion");
        assert_eq!(first.cmd("QUIT").await, "+OK apopd signing off (1 message deleted)");
        assert!(first.closed().await);
        assert_eq!(second.apop("alice", ALICE_APOP_SECRET).await, "+OK alice's maildrop has 4 messages (2403 octets)");
        // And now the first process is the one refused.
        let mut third = Client::connect(one.addr).await;
        assert_eq!(third.apop("alice", ALICE_APOP_SECRET).await, IN_USE);
    });
}

#[test]
fn a_killed_server_process_releases_its_lock_and_deletes_nothing() {
    let fixture = Fixture::new("");
    let before = fixture.message_files("alice");
    let one = ServerProcess::spawn(&fixture.config_path);
    let two = ServerProcess::spawn(&fixture.config_path);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut first = Client::connect(one.addr).await;
        assert_eq!(first.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
        assert_eq!(first.cmd("DELE 1").await, "+OK message 1 marked for deletion");
        let mut second = Client::connect(two.addr).await;
        assert_eq!(second.apop("alice", ALICE_APOP_SECRET).await, IN_USE);

        drop(one); // SIGKILL and reap: the kernel drops the flock.
        assert_eq!(second.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    });
    assert_eq!(fixture.message_files("alice"), before);
}
