//! CAPA (RFC 2449) in both states, USER only where plaintext login is allowed, and
//! LOGIN-DELAY.

mod common;
use common::*;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

const IMPLEMENTATION: &str = concat!("IMPLEMENTATION apopd-", env!("CARGO_PKG_VERSION"));

fn caps(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn capa_in_authorization_and_transaction() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let (status, lines) = c.multi("CAPA").await;
    assert_eq!(status, "+OK capability list follows");
    assert_eq!(
        lines,
        caps(&[
            "TOP",
            "UIDL",
            "USER",
            "SASL PLAIN LOGIN",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "EXPIRE NEVER",
            "LOGIN-DELAY 0",
            "UTF8 USER",
            "LANG",
            IMPLEMENTATION
        ])
    );
    // CAPA does not disturb a USER in progress.
    assert_eq!(c.cmd("USER alice").await, "+OK send PASS");
    assert_eq!(c.multi("CAPA").await.1.len(), 12);
    assert_eq!(c.cmd(&format!("PASS {ALICE_PASSWORD}")).await, "+OK alice's maildrop has 5 messages (3038 octets)");

    // In TRANSACTION, USER is gone (it no longer works).
    let (status, lines) = c.multi("CAPA").await;
    assert_eq!(status, "+OK capability list follows");
    assert_eq!(
        lines,
        caps(&[
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "EXPIRE NEVER",
            "LOGIN-DELAY 0",
            "UTF8 USER",
            "LANG",
            IMPLEMENTATION
        ])
    );
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
    assert_eq!(c.cmd("CAPA now").await, "-ERR CAPA takes no arguments");
}

#[tokio::test]
async fn capa_lists_login_delay_when_configured() {
    let server = TestServer::start_with("login_delay_secs = 5").await;
    let mut c = server.connect().await;
    let (_, lines) = c.multi("CAPA").await;
    assert_eq!(
        lines,
        caps(&[
            "TOP",
            "UIDL",
            "USER",
            "SASL PLAIN LOGIN",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "EXPIRE NEVER",
            "LOGIN-DELAY 5",
            "UTF8 USER",
            "LANG",
            IMPLEMENTATION
        ])
    );
    // Without the setting, LOGIN-DELAY 0: no wait between good logins, but the failed-login
    // throttle may still answer [LOGIN-DELAY] (RFC 2449 §8.1.1), so the code is announced.
}

#[tokio::test]
async fn login_delay_is_advertised_wherever_the_throttle_can_answer_it() {
    let server = TestServer::start_with("max_auth_failures_per_ip = 2\nauth_failure_delay_ms = 0").await;
    let mut c = server.connect().await;
    let login_delay =
        |lines: &[String]| lines.iter().filter(|l| l.starts_with("LOGIN-DELAY")).cloned().collect::<Vec<_>>();
    assert_eq!(login_delay(&c.multi("CAPA").await.1), ["LOGIN-DELAY 0"]);
    // The throttle really answers with the code it announced.
    for _ in 0..2 {
        assert_eq!(c.login("alice", "wrong").await, "-ERR [AUTH] invalid user name or password");
    }
    let refused = c.login("alice", ALICE_PASSWORD).await;
    assert!(refused.starts_with("-ERR [LOGIN-DELAY] too many failed logins"), "{refused}");

    // A lab network is never refused per address: nothing to announce there.
    let server = TestServer::start_with("lab_networks = [\"127.0.0.0/8\"]").await;
    let mut c = server.connect().await;
    assert_eq!(login_delay(&c.multi("CAPA").await.1), Vec::<String>::new());
    // ... unless login_delay_secs applies to everyone.
    let server = TestServer::start_with("lab_networks = [\"127.0.0.0/8\"]\nlogin_delay_secs = 30").await;
    let mut c = server.connect().await;
    assert_eq!(login_delay(&c.multi("CAPA").await.1), ["LOGIN-DELAY 30"]);
}

#[tokio::test]
async fn a_second_login_within_login_delay_is_refused() {
    let server = TestServer::start_with("login_delay_secs = 5").await;
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, "+OK alice's maildrop has 5 messages (3038 octets)");
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(c.closed().await);

    let mut again = server.connect().await;
    let reply = again.apop("alice", ALICE_APOP_SECRET).await;
    let seconds = reply
        .strip_prefix("-ERR [LOGIN-DELAY] wait ")
        .and_then(|r| r.strip_suffix(" more seconds before logging in again"))
        .unwrap_or_else(|| panic!("{reply}"));
    let seconds: u64 = seconds.parse().unwrap();
    assert!((1..=5).contains(&seconds), "{reply}");
    // USER/PASS is held to the same delay.
    let reply = again.login("alice", ALICE_PASSWORD).await;
    assert!(reply.starts_with("-ERR [LOGIN-DELAY] wait "), "{reply}");
    // The session stays in AUTHORIZATION.
    assert_eq!(again.cmd("STAT").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");

    // The delay is per user: bob is not affected.
    let mut bob = server.connect().await;
    assert_eq!(bob.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");
}

#[tokio::test]
async fn a_failed_login_does_not_start_login_delay() {
    let server = TestServer::start_with("login_delay_secs = 5").await;
    let mut c = server.connect().await;
    assert_eq!(c.login("alice", "wrong").await, "-ERR [AUTH] invalid user name or password");
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, "+OK alice's maildrop has 5 messages (3038 octets)");
}

/// A session served in-process over a duplex pipe, as if the client were at `peer`.
async fn session_from(peer: &str, extra: &str) -> (Fixture, BufReader<DuplexStream>) {
    let fixture = Fixture::new(extra);
    let shared = Arc::new(apopd::shared::Shared::new(fixture.config()).unwrap());
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = peer.parse().unwrap();
    tokio::spawn(apopd::session::serve(server, peer, shared, false));
    (fixture, BufReader::new(client))
}

async fn read_line(io: &mut BufReader<DuplexStream>) -> String {
    let mut buf = Vec::new();
    io.read_until(b'\n', &mut buf).await.unwrap();
    assert!(buf.ends_with(b"\r\n"), "{buf:?}");
    String::from_utf8(buf[..buf.len() - 2].to_vec()).unwrap()
}

async fn command(io: &mut BufReader<DuplexStream>, line: &str) -> String {
    io.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    read_line(io).await
}

async fn capa(io: &mut BufReader<DuplexStream>) -> Vec<String> {
    assert_eq!(command(io, "CAPA").await, "+OK capability list follows");
    let mut lines = Vec::new();
    loop {
        let line = read_line(io).await;
        if line == "." {
            return lines;
        }
        lines.push(line);
    }
}

fn timestamp_of(greeting: &str) -> String {
    greeting[greeting.find('<').unwrap()..=greeting.rfind('>').unwrap()].to_owned()
}

#[tokio::test]
async fn no_user_capability_or_plaintext_login_from_a_remote_network() {
    let (_fixture, mut io) = session_from("198.51.100.7:40000", "").await;
    let greeting = read_line(&mut io).await;
    assert!(greeting.starts_with("+OK "), "{greeting}");
    assert!(!capa(&mut io).await.contains(&"USER".to_owned()));
    let refused = "-ERR [AUTH] plaintext passwords are not accepted on this unencrypted connection; use APOP";
    assert_eq!(command(&mut io, "USER alice").await, refused);
    assert_eq!(command(&mut io, &format!("PASS {ALICE_PASSWORD}")).await, "-ERR give USER first");
    // APOP is still offered.
    let digest = apopd::auth::apop::digest(&timestamp_of(&greeting), ALICE_APOP_SECRET.as_bytes());
    assert_eq!(
        command(&mut io, &format!("APOP alice {digest}")).await,
        "+OK alice's maildrop has 5 messages (3038 octets)"
    );
    assert!(!capa(&mut io).await.contains(&"USER".to_owned()));
}

#[tokio::test]
async fn user_capability_from_a_configured_plaintext_network() {
    let (_fixture, mut io) =
        session_from("198.51.100.7:40000", "plaintext_auth_networks = [\"198.51.100.0/24\"]").await;
    read_line(&mut io).await;
    assert!(capa(&mut io).await.contains(&"USER".to_owned()));
    assert_eq!(command(&mut io, "USER bob").await, "+OK send PASS");
    assert_eq!(
        command(&mut io, &format!("PASS {BOB_PASSWORD}")).await,
        "+OK bob's maildrop has 2 messages (584 octets)"
    );
}

#[tokio::test]
async fn loopback_v6_peer_may_use_user() {
    let (_fixture, mut io) = session_from("[::1]:40000", "").await;
    read_line(&mut io).await;
    assert!(capa(&mut io).await.contains(&"USER".to_owned()));
}
