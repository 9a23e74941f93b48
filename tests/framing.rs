//! Command framing over TCP: case-insensitive keywords, bare LF, pipelining, and the
//! 255-octet line limit.

mod common;
use common::*;

use std::time::Duration;

const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";

#[tokio::test]
async fn keywords_are_case_insensitive() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.cmd("user alice").await, "+OK send PASS");
    assert_eq!(c.cmd(&format!("pAsS {ALICE_PASSWORD}")).await, ALICE_OK);
    assert_eq!(c.cmd("stat").await, "+OK 5 3038");
    assert_eq!(c.cmd("LiSt 1").await, "+OK 1 508");
    assert_eq!(c.cmd("uidl 1").await, "+OK 1 1700000000.M100P1000.demo");
    assert_eq!(c.cmd("Noop").await, "+OK");
    assert_eq!(c.cmd("dele 1").await, "+OK message 1 marked for deletion");
    assert_eq!(c.cmd("rset").await, "+OK maildrop has 5 messages (3038 octets)");
    assert_eq!(c.cmd("top 1 0").await, "+OK top of message follows");
    c.body().await;
    assert_eq!(c.cmd("capa").await, "+OK capability list follows");
    c.body().await;
    assert_eq!(c.cmd("quit").await, "+OK apopd signing off (0 messages deleted)");
    assert!(c.closed().await);

    let mut c = server.connect().await;
    let digest = apopd::auth::apop::digest(&c.timestamp(), ALICE_APOP_SECRET.as_bytes());
    assert_eq!(c.cmd(&format!("aPoP alice {digest}")).await, ALICE_OK);
}

#[tokio::test]
async fn bare_lf_line_endings_are_accepted() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send_raw(b"USER alice\n").await;
    assert_eq!(c.line().await, "+OK send PASS");
    // The password must not keep a stray CR or lose a character.
    c.send_raw(format!("PASS {ALICE_PASSWORD}\n").as_bytes()).await;
    assert_eq!(c.line().await, ALICE_OK);
    c.send_raw(b"STAT\n").await;
    assert_eq!(c.line().await, "+OK 5 3038");
    c.send_raw(b"LIST 2\n").await;
    assert_eq!(c.line().await, "+OK 2 526");
    // Mixed with CRLF in one write.
    c.send_raw(b"NOOP\nNOOP\r\nUIDL 5\n").await;
    assert_eq!(c.line().await, "+OK");
    assert_eq!(c.line().await, "+OK");
    assert_eq!(c.line().await, "+OK 5 1700014400.M500P1000.demo,S=613,W=635");
    c.send_raw(b"QUIT\n").await;
    assert_eq!(c.line().await, "+OK apopd signing off (0 messages deleted)");
    assert!(c.closed().await);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let server = TestServer::start().await;
    let files = server.fixture.message_files("alice");
    let first = crlf(&std::fs::read(&files[0]).unwrap());
    let mut c = server.connect().await;
    // Login and transaction commands in one write.
    c.send_raw(
        format!(
            "CAPA\r\nUSER alice\r\nPASS {ALICE_PASSWORD}\r\nSTAT\r\nLIST 1\r\nRETR 1\r\nUIDL 1\r\nDELE 1\r\n\
             STAT\r\nBOGUS\r\nRSET\r\nTOP 1 0\r\nNOOP\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.line().await, "+OK capability list follows");
    assert!(c.lines().await.contains(&"USER".to_owned()));
    assert_eq!(c.line().await, "+OK send PASS");
    assert_eq!(c.line().await, ALICE_OK);
    assert_eq!(c.line().await, "+OK 5 3038");
    assert_eq!(c.line().await, format!("+OK 1 {}", first.len()));
    assert_eq!(c.line().await, format!("+OK {} octets", first.len()));
    assert_eq!(c.body().await, first);
    assert_eq!(c.line().await, "+OK 1 1700000000.M100P1000.demo");
    assert_eq!(c.line().await, "+OK message 1 marked for deletion");
    assert_eq!(c.line().await, format!("+OK 4 {}", 3038 - first.len()));
    assert_eq!(c.line().await, "-ERR unknown command");
    assert_eq!(c.line().await, "+OK maildrop has 5 messages (3038 octets)");
    assert_eq!(c.line().await, "+OK top of message follows");
    let top = c.body().await;
    assert!(first.starts_with(&top) && top.ends_with(b"\r\n\r\n"));
    assert_eq!(c.line().await, "+OK");
}

#[tokio::test]
async fn many_pipelined_retrs_arrive_whole_and_in_order() {
    let server = TestServer::start().await;
    let files = server.fixture.message_files("alice");
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    let mut batch = String::new();
    for round in 0..20 {
        batch.push_str(&format!("RETR {}\r\n", round % 5 + 1));
    }
    c.send_raw(batch.as_bytes()).await;
    for round in 0..20 {
        let expected = crlf(&std::fs::read(&files[round % 5]).unwrap());
        assert_eq!(c.line().await, format!("+OK {} octets", expected.len()), "round {round}");
        assert_eq!(c.body().await, expected, "round {round}");
    }
}

#[tokio::test]
async fn line_limit_is_255_octets_including_crlf() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    // "NOOP" + spaces: the arguments are empty, so it is a valid NOOP of any length that fits.
    let fits = format!("NOOP{}\r\n", " ".repeat(249));
    assert_eq!(fits.len(), 255);
    c.send_raw(fits.as_bytes()).await;
    assert_eq!(c.line().await, "+OK");
    let over = format!("NOOP{}\r\n", " ".repeat(250));
    c.send_raw(over.as_bytes()).await;
    assert_eq!(c.line().await, "-ERR line too long (limit: 255 octets)");
    // An overlong DELE is not executed.
    c.send_raw(format!("DELE 1{}\r\n", " ".repeat(300)).as_bytes()).await;
    assert_eq!(c.line().await, "-ERR line too long (limit: 255 octets)");
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
}

/// Reading with a guard, so a reply the server holds back fails the test instead of hanging it.
async fn line_within(c: &mut Client, secs: u64) -> String {
    tokio::time::timeout(Duration::from_secs(secs), c.line()).await.expect("the server held back its reply")
}

#[tokio::test]
async fn reply_is_sent_even_when_a_partial_command_follows() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    // One write: a whole command and the start of the next one.
    c.send_raw(b"STAT\r\nNO").await;
    assert_eq!(line_within(&mut c, 10).await, "+OK 5 3038");
    c.send_raw(b"OP\r\n").await;
    assert_eq!(c.line().await, "+OK");
}

#[tokio::test]
async fn quit_reply_is_sent_when_more_input_follows() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    c.send_raw(b"DELE 1\r\nQUIT\r\nNOOP\r\n").await;
    assert_eq!(c.line().await, "+OK message 1 marked for deletion");
    assert_eq!(c.line().await, "+OK apopd signing off (1 message deleted)");
    assert!(c.closed().await);
    assert_eq!(server.fixture.message_files("alice").len(), 4);
}

#[tokio::test]
async fn quit_pipelined_last_is_answered() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    c.send_raw(b"STAT\r\nDELE 1\r\nQUIT\r\n").await;
    assert_eq!(c.line().await, "+OK 5 3038");
    assert_eq!(c.line().await, "+OK message 1 marked for deletion");
    assert_eq!(c.line().await, "+OK apopd signing off (1 message deleted)");
    assert!(c.closed().await);
    assert_eq!(server.fixture.message_files("alice").len(), 4);
}
