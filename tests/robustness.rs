//! Hostile and broken input over TCP: unknown commands, empty and overlong lines, binary
//! garbage, clients that vanish mid-command, the error limit, and isolation between sessions.

mod common;
use common::*;

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";
const TOO_LONG: &str = "-ERR line too long (limit: 255 octets)";

/// Deterministic "random" bytes (xorshift), with NUL and 0xFF forced in and no line feed.
fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = vec![0x00, 0xff, 0xfe, 0x00];
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = (x >> 24) as u8;
        if b != b'\n' {
            out.push(b);
        }
    }
    out
}

/// CAPA works in every state: proof that the session is alive and in step.
async fn assert_alive(c: &mut Client) {
    assert_eq!(c.cmd("CAPA").await, "+OK capability list follows");
    assert!(c.lines().await.contains(&"UIDL".to_owned()));
}

#[tokio::test]
async fn unknown_commands_are_refused_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    for cmd in ["HELO", "STATUS", "EHLO example.org", "AUTHX PLAIN", "STLSX", "X", "RETRIEVE 1", "LIST1"] {
        assert_eq!(c.cmd(cmd).await, "-ERR unknown command", "{cmd}");
    }
    assert_alive(&mut c).await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    for cmd in ["HELO", "STATUS", "XTND XMIT", "LAST"] {
        assert_eq!(c.cmd(cmd).await, "-ERR unknown command", "{cmd}");
    }
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
}

#[tokio::test]
async fn empty_lines_are_refused() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    for raw in [&b"\r\n"[..], b"\n", b"   \r\n", b" STAT\r\n"] {
        c.send_raw(raw).await;
        assert_eq!(c.line().await, "-ERR empty command", "{raw:?}");
    }
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    c.send_raw(b"\r\n").await;
    assert_eq!(c.line().await, "-ERR empty command");
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
}

#[tokio::test]
async fn overlong_lines_are_refused_and_the_next_command_works() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send_raw(&[b"X".repeat(300), b"\r\n".to_vec()].concat()).await;
    assert_eq!(c.line().await, TOO_LONG);
    // A long USER is refused as a line, not taken as a name.
    c.send_raw(format!("USER {}\r\n", "a".repeat(400)).as_bytes()).await;
    assert_eq!(c.line().await, TOO_LONG);
    assert_eq!(c.cmd(&format!("PASS {ALICE_PASSWORD}")).await, "-ERR give USER first");
    // A huge line (far more than any buffer) followed by a command in the same write.
    let mut huge = b"USER ".to_vec();
    huge.extend(std::iter::repeat_n(b'y', 200_000));
    huge.extend_from_slice(b"\r\nUSER alice\r\n");
    c.send_raw(&huge).await;
    assert_eq!(c.line().await, TOO_LONG);
    assert_eq!(c.line().await, "+OK send PASS");
    assert_eq!(c.cmd(&format!("PASS {ALICE_PASSWORD}")).await, ALICE_OK);
    c.send_raw(&[b"RETR 1 ".repeat(50), b"\r\n".to_vec()].concat()).await;
    assert_eq!(c.line().await, TOO_LONG);
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
}

#[tokio::test]
async fn binary_garbage_gets_err_and_the_session_survives() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    // With a line end.
    for (seed, len) in [(1u64, 10usize), (2, 100), (3, 250)] {
        c.send_raw(&[garbage(len, seed), b"\r\n".to_vec()].concat()).await;
        assert_eq!(c.line().await, "-ERR unknown command", "seed {seed}");
        assert_alive(&mut c).await;
    }
    // Without a line end: the garbage is the start of a line that a later write finishes.
    c.send_raw(&garbage(50, 4)).await;
    c.send_raw(b"\r\n").await;
    assert_eq!(c.line().await, "-ERR unknown command");
    assert_alive(&mut c).await;
    // Garbage glued in front of a valid keyword spoils only that one line.
    c.send_raw(&[garbage(20, 5), b"CAPA\r\nUSER alice\r\n".to_vec()].concat()).await;
    assert_eq!(c.line().await, "-ERR unknown command");
    assert_eq!(c.line().await, "+OK send PASS");
    assert_eq!(c.cmd(&format!("PASS {ALICE_PASSWORD}")).await, ALICE_OK);
    // In TRANSACTION too, including garbage as arguments.
    c.send_raw(&[garbage(64, 6), b"\r\n".to_vec()].concat()).await;
    assert_eq!(c.line().await, "-ERR unknown command");
    c.send_raw(&[b"RETR ".to_vec(), garbage(16, 7), b"\r\n".to_vec()].concat()).await;
    assert!(c.line().await.starts_with("-ERR "));
    c.send_raw(&[b"USER ".to_vec(), garbage(16, 8), b"\r\n".to_vec()].concat()).await;
    assert!(c.line().await.starts_with("-ERR "));
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
}

#[tokio::test]
async fn garbage_with_line_feeds_gets_one_err_per_line() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let mut input = Vec::new();
    for seed in 10..15 {
        input.extend(garbage(30, seed));
        input.push(b'\n');
    }
    c.send_raw(&input).await;
    for i in 0..5 {
        assert_eq!(c.line().await, "-ERR unknown command", "line {i}");
    }
    assert_alive(&mut c).await;
}

/// Connect, optionally log in as alice, write `partial` and close the socket at once.
async fn vanish(addr: SocketAddr, login: bool, partial: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut greeting = [0u8; 512];
    let n = stream.read(&mut greeting).await.unwrap();
    let greeting = String::from_utf8_lossy(&greeting[..n]).into_owned();
    if login {
        let ts = &greeting[greeting.find('<').unwrap()..=greeting.rfind('>').unwrap()];
        let digest = apopd::auth::apop::digest(ts, ALICE_APOP_SECRET.as_bytes());
        stream.write_all(format!("APOP alice {digest}\r\n").as_bytes()).await.unwrap();
        let mut reply = [0u8; 512];
        let n = stream.read(&mut reply).await.unwrap();
        assert!(reply[..n].starts_with(b"+OK"), "{:?}", String::from_utf8_lossy(&reply[..n]));
    }
    stream.write_all(partial).await.unwrap();
    drop(stream);
}

#[tokio::test]
async fn clients_vanishing_mid_command_do_not_disturb_the_server() {
    let server = TestServer::start().await;
    // A session that is already running.
    let mut bystander = server.connect().await;
    assert_eq!(bystander.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");

    vanish(server.addr, true, b"RETR").await;
    vanish(server.addr, false, b"USER al").await;
    vanish(server.addr, false, b"").await;
    vanish(server.addr, false, &garbage(100, 9)).await;

    assert_eq!(bystander.cmd("STAT").await, "+OK 2 584");
    assert_eq!(bystander.cmd("RETR 1").await, "+OK 351 octets");
    assert_eq!(bystander.body().await.len(), 351);
    let mut fresh = server.connect().await;
    assert_eq!(fresh.login("bob", BOB_PASSWORD).await, "-ERR [IN-USE] mailbox is already in use by another session");
    assert_alive(&mut fresh).await;
    // The session that vanished in TRANSACTION lets go of alice's mailbox (as soon as the
    // server has read its EOF, which this loop cannot know: it retries on IN-USE).
    let mut logged_in = false;
    for _ in 0..100 {
        let mut c = server.connect().await;
        let reply = c.apop("alice", ALICE_APOP_SECRET).await;
        if reply == ALICE_OK {
            logged_in = true;
            break;
        }
        assert_eq!(reply, "-ERR [IN-USE] mailbox is already in use by another session");
    }
    assert!(logged_in, "alice's mailbox stayed locked after its client vanished");
    assert_eq!(server.fixture.message_files("alice").len(), 5);
}

#[tokio::test]
async fn twenty_errors_in_a_row_close_the_connection() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    for i in 1..=20 {
        assert_eq!(c.cmd("BOGUS").await, "-ERR unknown command", "error {i}");
    }
    assert_eq!(c.line().await, "-ERR too many errors, closing connection");
    assert!(c.closed().await);
    // The server itself is fine.
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
}

#[tokio::test]
async fn every_kind_of_error_counts_and_a_success_resets_the_count() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 marked for deletion");
    for _ in 0..19 {
        assert!(c.cmd("RETR 0").await.starts_with("-ERR"));
    }
    assert_eq!(c.cmd("NOOP").await, "+OK");
    // 19 again: still alive, because NOOP reset the count.
    let mixed = ["BOGUS", "", "RETR 99", "DELE 1", "TOP 1", "USER x", "LIST abc"];
    for i in 0..19 {
        assert!(c.cmd(mixed[i % mixed.len()]).await.starts_with("-ERR"), "{}", mixed[i % mixed.len()]);
    }
    assert_eq!(c.cmd("STAT").await, format!("+OK 4 {}", 3038 - 508));
    // The 20th in a row ends the session, without UPDATE.
    for _ in 0..19 {
        assert!(c.cmd("XXXX").await.starts_with("-ERR"));
    }
    c.send_raw(&[b"A".repeat(300), b"\r\n".to_vec()].concat()).await;
    assert_eq!(c.line().await, TOO_LONG);
    assert_eq!(c.line().await, "-ERR too many errors, closing connection");
    assert!(c.closed().await);
    assert_eq!(server.fixture.message_files("alice").len(), 5, "the DELE mark must not be applied");
}

#[tokio::test]
async fn failed_logins_count_as_errors() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    for _ in 0..19 {
        assert_eq!(
            c.cmd("APOP alice 00000000000000000000000000000000").await,
            "-ERR [AUTH] invalid user name or password"
        );
    }
    assert_eq!(c.cmd("APOP alice 00000000000000000000000000000000").await, "-ERR [AUTH] invalid user name or password");
    assert_eq!(c.line().await, "-ERR too many errors, closing connection");
    assert!(c.closed().await);
}

#[tokio::test]
async fn twenty_pipelined_errors_are_all_answered_before_closing() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send_raw(&b"BOGUS\r\n".repeat(25)).await;
    for i in 1..=20 {
        assert_eq!(c.line().await, "-ERR unknown command", "error {i}");
    }
    assert_eq!(c.line().await, "-ERR too many errors, closing connection");
    assert!(c.closed().await);
}

#[tokio::test]
async fn one_sessions_garbage_never_affects_another() {
    let server = TestServer::start().await;
    let files = server.fixture.message_files("alice");
    let mut good = server.connect().await;
    assert_eq!(good.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    let mut bad = server.connect().await;
    assert_eq!(bad.login("bob", BOB_PASSWORD).await, "+OK bob's maildrop has 2 messages (584 octets)");

    for round in 0..5u64 {
        // The bad session sends garbage, an overlong line and half a command...
        bad.send_raw(&[garbage(40, 100 + round), b"\r\n".to_vec()].concat()).await;
        bad.send_raw(&[b"Z".repeat(1000), b"\r\n".to_vec()].concat()).await;
        bad.send_raw(b"DELE 1\r\nQU").await;
        // ...while the good one works normally.
        let n = (round % 5) as usize + 1;
        let expected = crlf(&std::fs::read(&files[n - 1]).unwrap());
        assert_eq!(good.cmd(&format!("RETR {n}")).await, format!("+OK {} octets", expected.len()));
        assert_eq!(good.body().await, expected);
        assert_eq!(good.cmd("STAT").await, "+OK 5 3038");
        // The bad session's half command is finished later and is its own business.
        bad.send_raw(b"IT?\r\nRSET\r\n").await;
        assert_eq!(bad.line().await, "-ERR unknown command");
        assert_eq!(bad.line().await, TOO_LONG);
        assert_eq!(bad.line().await, "+OK message 1 marked for deletion");
        assert_eq!(bad.line().await, "-ERR unknown command");
        assert_eq!(bad.line().await, "+OK maildrop has 2 messages (584 octets)");
    }
    assert_eq!(good.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert_eq!(bad.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert_eq!(server.fixture.message_files("alice").len(), 5);
    assert_eq!(server.fixture.message_files("bob").len(), 2);
}
