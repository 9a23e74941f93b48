//! Connection limits: `max_connections` and `max_connections_per_ip`. A connection over a
//! limit gets one `-ERR [SYS/TEMP]` line instead of the greeting and is closed, before any
//! session work; closing a connection frees its place (and only its place). At
//! `max_connections` the oldest connection that has not logged in is evicted to make room;
//! only when every place is a logged-in session is the newcomer refused.

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOO_MANY: &[u8] = b"-ERR [SYS/TEMP] too many connections; try again later\r\n";
const TOO_MANY_FROM_YOU: &[u8] = b"-ERR [SYS/TEMP] too many connections from your address; try again later\r\n";
const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";
const BOB_OK: &str = "+OK bob's maildrop has 2 messages (584 octets)";

/// Everything the server sends on a new connection from `from` until it closes (bounded: 10 s).
async fn everything_until_eof(addr: SocketAddr, from: Option<&str>) -> Vec<u8> {
    let mut stream = connect_maybe_from(addr, from).await;
    // A refused client may talk; it must still get nothing but the refusal.
    let _ = stream.write_all(b"CAPA\r\nUSER alice\r\n").await;
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .expect("the server closed the refused connection")
        .expect("read");
    all
}

async fn connect_maybe_from(addr: SocketAddr, from: Option<&str>) -> TcpStream {
    match from {
        None => TcpStream::connect(addr).await.expect("connect"),
        Some(ip) => connect_from(addr, ip).await,
    }
}

/// Reconnect (bounded: 500 tries, 10 ms apart) until the server greets instead of refusing
/// with `refusal`; a freed place may take the server a moment to notice.
async fn connect_when_admitted(addr: SocketAddr, refusal: &[u8]) -> Client {
    for _ in 0..500 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut first = [0u8; 4];
        let mut seen = 0;
        for _ in 0..100 {
            seen = stream.peek(&mut first).await.expect("peek");
            if seen == first.len() || seen == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        if seen == first.len() && &first == b"+OK " {
            return Client::start(stream).await;
        }
        let mut stream = stream;
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.expect("read refusal");
        assert_eq!(all, refusal, "while waiting for a free place: {:?}", String::from_utf8_lossy(&all));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a closed connection never freed its place");
}

#[tokio::test]
async fn with_only_logged_in_sessions_the_connection_over_max_connections_gets_one_err_line_and_eof() {
    let server = TestServer::start_with("max_connections = 2").await;
    let mut alice = server.connect().await;
    let mut bob = server.connect().await;
    assert_eq!(alice.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    assert_eq!(bob.login("bob", BOB_PASSWORD).await, BOB_OK);
    // No greeting, no timestamp, no session: just the refusal, whatever the client says.
    for _ in 0..5 {
        assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY);
    }
    // The logged-in sessions are untouched by the refusals.
    assert_eq!(alice.cmd("STAT").await, "+OK 5 3038");
    assert_eq!(bob.cmd("STAT").await, "+OK 2 584");
}

#[tokio::test]
async fn a_closed_connection_frees_exactly_one_place() {
    let server = TestServer::start_with("max_connections = 2").await;
    let mut alice = server.connect().await;
    let mut bob = server.connect().await;
    assert_eq!(alice.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    assert_eq!(bob.login("bob", BOB_PASSWORD).await, BOB_OK);
    assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY);

    assert_eq!(alice.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(alice.closed().await);
    let mut newcomer = connect_when_admitted(server.addr, TOO_MANY).await;
    assert_eq!(newcomer.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    // Full again: the refusals in between did not leak places either way.
    assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY);

    // A client that just drops the connection (no QUIT) frees its place too.
    drop(bob);
    let mut another = connect_when_admitted(server.addr, TOO_MANY).await;
    assert_eq!(another.login("bob", BOB_PASSWORD).await, BOB_OK);
    assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY);
}

/// The evicted client's last words from the server: the refusal line, then EOF.
async fn assert_evicted(client: &mut Client) {
    assert_eq!(client.line().await.as_bytes(), &TOO_MANY[..TOO_MANY.len() - 2], "the eviction notice");
    assert!(client.closed().await, "an evicted connection is closed");
}

#[tokio::test]
async fn at_max_connections_the_oldest_connection_not_logged_in_makes_room_and_logged_in_ones_never_do() {
    let server = TestServer::start_with("max_connections = 3").await;
    let mut waiting1 = server.connect().await;
    let mut alice = server.connect().await;
    assert_eq!(alice.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    let mut waiting2 = server.connect().await;
    // Talking does not make a connection younger: only logging in protects it.
    assert_eq!(waiting1.cmd("NOOP").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");

    // Full. A newcomer is greeted; the oldest connection that has not logged in is closed.
    let mut newcomer1 = server.connect().await;
    assert_evicted(&mut waiting1).await;
    assert_eq!(waiting2.multi("CAPA").await.0, "+OK capability list follows", "the younger one stays");
    assert_eq!(alice.cmd("STAT").await, "+OK 5 3038", "a logged-in session is never evicted");

    // Next: waiting2, then newcomer1 (alice, oldest of all, is never chosen).
    let mut newcomer2 = server.connect().await;
    assert_evicted(&mut waiting2).await;
    assert_eq!(newcomer2.login("bob", BOB_PASSWORD).await, BOB_OK);
    let mut newcomer3 = server.connect().await;
    assert_evicted(&mut newcomer1).await;
    assert_eq!(alice.cmd("STAT").await, "+OK 5 3038");
    assert_eq!(newcomer2.cmd("STAT").await, "+OK 2 584");
    assert_eq!(newcomer3.multi("CAPA").await.0, "+OK capability list follows");

    // A connection in the middle of a USER/PASS login has not logged in yet either.
    assert_eq!(newcomer3.cmd("USER alice").await, "+OK send PASS");
    let _newcomer4 = server.connect().await;
    assert_evicted(&mut newcomer3).await;
}

#[tokio::test]
async fn the_per_ip_limit_applies_before_eviction() {
    let server = TestServer::start_with("max_connections = 3\nmax_connections_per_ip = 2").await;
    let mut first = Client::start(connect_from(server.addr, "127.0.0.1").await).await;
    let _second = Client::start(connect_from(server.addr, "127.0.0.1").await).await;
    let _other = Client::start(connect_from(server.addr, "127.0.0.2").await).await;
    // Full, and 127.0.0.1 is at its own limit: refused, and nobody is evicted for it.
    assert_eq!(everything_until_eof(server.addr, Some("127.0.0.1")).await, TOO_MANY_FROM_YOU);
    assert_eq!(first.cmd("NOOP").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");
    // Another address within its own limit gets the oldest place.
    let _third = Client::start(connect_from(server.addr, "127.0.0.3").await).await;
    assert_evicted(&mut first).await;
}

#[tokio::test]
async fn a_pop3s_connection_still_in_its_handshake_can_be_evicted() {
    let server = TestServer::start_with(&format!("max_connections = 1\n{TLS_CONFIG}")).await;
    // Connected to POP3S but never starts the handshake: it holds the only place.
    let mut silent = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut newcomer = server.connect().await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest)).await;
    // Nothing can be said before TLS: the connection is just closed.
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "evicted: {read:?} {rest:?}");
    assert_eq!(newcomer.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
}

#[tokio::test]
async fn the_connection_over_max_connections_per_ip_is_refused_and_other_addresses_are_served() {
    let server = TestServer::start_with("max_connections_per_ip = 2").await;
    let mut first = server.connect().await;
    let second = server.connect().await;
    for _ in 0..5 {
        assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY_FROM_YOU);
    }
    // Another client address has its own count.
    let other = Client::start(connect_from(server.addr, "127.0.0.2").await).await;
    let mut other2 = Client::start(connect_from(server.addr, "127.0.0.2").await).await;
    assert_eq!(everything_until_eof(server.addr, Some("127.0.0.2")).await, TOO_MANY_FROM_YOU);
    assert_eq!(other2.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);

    // Closing one of 127.0.0.1's connections lets exactly one more in from there.
    drop(second);
    let mut third = connect_when_admitted(server.addr, TOO_MANY_FROM_YOU).await;
    assert_eq!(third.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");
    assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY_FROM_YOU);
    assert_eq!(first.cmd("CAPA").await, "+OK capability list follows");
    drop(other);
}

#[tokio::test]
async fn a_pop3s_connection_over_the_limit_gets_the_refusal_over_tls() {
    let server = TestServer::start_with(&format!("max_connections = 1\n{TLS_CONFIG}")).await;
    let mut held = server.connect_tls().await;
    assert_eq!(held.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    let tcp = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    let mut tls = tls_handshake(tcp).await;
    let mut all = Vec::new();
    // The server closes with close_notify or a bare FIN; either way the line came first.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut all)).await.expect("closed");
    assert_eq!(all, TOO_MANY);
}
