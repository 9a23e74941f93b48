//! Connection limits: `max_connections` and `max_connections_per_ip`. A connection over a
//! limit gets one `-ERR [SYS/TEMP]` line instead of the greeting and is closed, before any
//! session work; closing a connection frees its place (and only its place).

mod common;
use common::*;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOO_MANY: &[u8] = b"-ERR [SYS/TEMP] too many connections; try again later\r\n";
const TOO_MANY_FROM_YOU: &[u8] = b"-ERR [SYS/TEMP] too many connections from your address; try again later\r\n";
const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";

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
async fn the_connection_over_max_connections_gets_one_err_line_and_eof() {
    let server = TestServer::start_with("max_connections = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(server.connect().await);
    }
    // No greeting, no timestamp, no session: just the refusal, whatever the client says.
    for _ in 0..5 {
        assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY);
    }
    // The admitted sessions are untouched by the refusals.
    assert_eq!(held[0].apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    assert_eq!(held[2].login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");
    assert_eq!(held[1].cmd("STAT").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");
}

#[tokio::test]
async fn a_closed_connection_frees_exactly_one_place() {
    let server = TestServer::start_with("max_connections = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(server.connect().await);
    }
    assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY);

    let mut leaving = held.remove(1);
    assert_eq!(leaving.cmd("QUIT").await, "+OK apopd signing off");
    assert!(leaving.closed().await);
    let mut newcomer = connect_when_admitted(server.addr, TOO_MANY).await;
    assert_eq!(newcomer.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    // Full again: the refusals in between did not leak places either way.
    assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY);

    // A client that just drops the connection (no QUIT) frees its place too.
    drop(held.pop());
    let mut another = connect_when_admitted(server.addr, TOO_MANY).await;
    assert_eq!(another.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");
    assert_eq!(everything_until_eof(server.addr, None).await, TOO_MANY);
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
    let _held = server.connect_tls().await;
    let tcp = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    let mut tls = tls_handshake(tcp).await;
    let mut all = Vec::new();
    // The server closes with close_notify or a bare FIN; either way the line came first.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut all)).await.expect("closed");
    assert_eq!(all, TOO_MANY);
}
