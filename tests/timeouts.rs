//! The inactivity autologout (RFC 1939: at least 10 minutes), tested in-process on a paused
//! tokio clock: the session runs over a duplex pipe and the runtime jumps to the next timer
//! as soon as everything is idle, so ten virtual minutes pass instantly and exactly.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use apopd::shared::Shared;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";
const AUTOLOGOUT: &str = "-ERR autologout: idle too long";

impl Pipe {
    async fn apop_alice(&mut self) {
        let digest = self.digest(ALICE_APOP_SECRET);
        assert_eq!(self.cmd(&format!("APOP alice {digest}")).await, ALICE_OK);
    }

    async fn apop_alice_with(&mut self, count: usize) {
        let digest = self.digest(ALICE_APOP_SECRET);
        let reply = self.cmd(&format!("APOP alice {digest}")).await;
        assert!(reply.starts_with(&format!("+OK alice's maildrop has {count} messages")), "{reply}");
    }

    /// Wait for the autologout line, then EOF, then the session task's end.
    async fn expect_autologout(mut self) {
        assert_eq!(self.line().await, AUTOLOGOUT);
        let mut rest = Vec::new();
        assert_eq!(self.io.read_to_end(&mut rest).await.unwrap(), 0, "data after autologout: {rest:?}");
        self.session.await.unwrap();
    }
}

fn shared(fixture: &Fixture) -> Arc<Shared> {
    Arc::new(Shared::new(fixture.config()).unwrap())
}

/// Before login the short `auth_timeout_secs` applies (slow-loris clients go early); the
/// RFC 1939 ten-minute autologout is for TRANSACTION.
#[tokio::test(start_paused = true)]
async fn idle_in_authorization_is_dropped_after_auth_timeout() {
    for (extra, secs) in [("", 120), ("auth_timeout_secs = 30", 30)] {
        let fixture = Fixture::new(extra);
        let shared = shared(&fixture);
        let start = Instant::now();
        let pipe = Pipe::open(&shared, "127.0.0.1:40000", 64 * 1024).await;
        pipe.expect_autologout().await;
        let idle = start.elapsed();
        assert!(idle >= Duration::from_secs(secs), "dropped after {idle:?}, before {secs}s");
        assert!(idle < Duration::from_secs(secs + 1), "dropped after {idle:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn idle_in_transaction_is_logged_out_after_ten_minutes() {
    let fixture = Fixture::new("");
    let shared = shared(&fixture);
    let mut pipe = Pipe::open(&shared, "127.0.0.1:40000", 64 * 1024).await;
    pipe.apop_alice().await;
    let start = Instant::now();
    pipe.expect_autologout().await;
    let idle = start.elapsed();
    assert!(idle >= Duration::from_secs(600), "logged out after {idle:?}, before RFC 1939's 10 minutes");
    assert!(idle < Duration::from_secs(601), "logged out after {idle:?}");
}

#[tokio::test(start_paused = true)]
async fn idle_in_transaction_is_logged_out_without_update() {
    let fixture = Fixture::new("");
    let before = fixture.message_files("alice");
    let shared = shared(&fixture);
    let mut pipe = Pipe::open(&shared, "127.0.0.1:40000", 64 * 1024).await;
    pipe.apop_alice().await;
    assert_eq!(pipe.cmd("DELE 1").await, "+OK message 1 marked for deletion");
    assert_eq!(pipe.cmd("DELE 4").await, "+OK message 4 marked for deletion");
    pipe.expect_autologout().await;

    assert_eq!(fixture.message_files("alice"), before, "autologout must not delete");
    // The lock went with the session.
    let mut next = Pipe::open(&shared, "127.0.0.1:40000", 64 * 1024).await;
    next.apop_alice().await;
    assert_eq!(next.cmd("STAT").await, "+OK 5 3038");
}

#[tokio::test(start_paused = true)]
async fn user_pass_login_works_on_a_paused_clock_then_times_out() {
    let fixture = Fixture::new("");
    let shared = shared(&fixture);
    let mut pipe = Pipe::open(&shared, "127.0.0.1:40000", 64 * 1024).await;
    assert_eq!(pipe.cmd("USER alice").await, "+OK send PASS");
    // argon2 runs on a blocking thread; the paused clock must not jump past it.
    assert_eq!(pipe.cmd(&format!("PASS {ALICE_PASSWORD}")).await, ALICE_OK);
    assert_eq!(pipe.cmd("DELE 2").await, "+OK message 2 marked for deletion");
    pipe.expect_autologout().await;
    assert_eq!(fixture.message_files("alice").len(), 5);
}

#[tokio::test(start_paused = true)]
async fn activity_restarts_the_configured_timer() {
    let fixture = Fixture::new("idle_timeout_secs = 900");
    let shared = shared(&fixture);
    let start = Instant::now();
    let mut pipe = Pipe::open(&shared, "127.0.0.1:40000", 64 * 1024).await;
    pipe.apop_alice().await;
    for _ in 0..3 {
        // Just under the timeout, then a command: the session must still be there.
        tokio::time::sleep(Duration::from_secs(899)).await;
        assert_eq!(pipe.cmd("NOOP").await, "+OK");
    }
    let active = start.elapsed();
    pipe.expect_autologout().await;
    let idle = start.elapsed() - active;
    assert!(idle >= Duration::from_secs(900), "configured 900 s, logged out after {idle:?} idle");
    assert!(idle < Duration::from_secs(901), "configured 900 s, logged out after {idle:?} idle");
}

#[tokio::test(start_paused = true)]
async fn a_partial_line_then_silence_times_out() {
    let fixture = Fixture::new("");
    let shared = shared(&fixture);
    let mut pipe = Pipe::open(&shared, "127.0.0.1:40000", 64 * 1024).await;
    pipe.apop_alice().await;
    assert_eq!(pipe.cmd("DELE 3").await, "+OK message 3 marked for deletion");
    pipe.io.write_all(b"QUI").await.unwrap();
    pipe.expect_autologout().await;
    assert_eq!(fixture.message_files("alice").len(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_does_not_pin_the_session() {
    let fixture = Fixture::new("");
    // A message far larger than the pipe, so RETR blocks on writing.
    let big = fixture.maildir("alice").join("new/1800000000.M1P1.big");
    let mut message = b"Subject: big\n\n".to_vec();
    message.extend(b"0123456789abcdef\n".repeat(64 * 1024));
    std::fs::write(&big, &message).unwrap();
    let before = fixture.message_files("alice");

    let shared = shared(&fixture);
    let mut pipe = Pipe::open(&shared, "127.0.0.1:40000", 4096).await;
    pipe.apop_alice_with(6).await;
    assert_eq!(pipe.cmd("DELE 1").await, "+OK message 1 marked for deletion");
    pipe.io.write_all(b"RETR 6\r\n").await.unwrap();
    // Never read again: the session must still end (write_timeout_secs, 120 by default), without UPDATE.
    let start = Instant::now();
    (&mut pipe.session).await.unwrap();
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(120), "gave up on a slow reader after {waited:?}");
    assert!(waited < Duration::from_secs(121), "held a slow reader for {waited:?}");
    assert_eq!(fixture.message_files("alice"), before);
    let mut next = Pipe::open(&shared, "127.0.0.1:40000", 64 * 1024).await;
    next.apop_alice_with(6).await;
}
