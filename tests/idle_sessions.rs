//! Idle sessions are cheap: the session's buffers are released while it waits, and its
//! task stays small; replies, pipelining and the line limit are unchanged by that.

mod common;
use common::*;

use std::sync::Arc;

const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";

/// Bytes of a plain session's future: the part of a session's memory that does not depend on
/// what it does. Handlers, RETR and the STLS session are boxed while they run, so this stays
/// small (it was ~21 KiB before they were).
const MAX_SESSION_FUTURE: usize = 3 * 1024;

#[tokio::test]
async fn a_plain_session_future_is_small() {
    let fixture = Fixture::new("");
    let shared = Arc::new(apopd::shared::Shared::new(fixture.config()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let session = apopd::session::serve(stream, peer, shared, false);
    let size = std::mem::size_of_val(&session);
    eprintln!("a plain session's future: {size} bytes");
    assert!(size <= MAX_SESSION_FUTURE, "a plain session's future takes {size} bytes");
    drop((session, client));
}

#[tokio::test]
async fn a_burst_larger_than_every_buffer_is_answered_exactly() {
    let server = TestServer::start().await;
    let files = server.fixture.message_files("alice");
    let messages: Vec<Vec<u8>> = files.iter().map(|f| crlf(&std::fs::read(f).unwrap())).collect();
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    // One write of well over the 1 KiB read size whose replies are well over the 4 KiB write
    // buffer: every RETR, an overlong line in the middle, LIST and UIDL, then more commands.
    let mut burst = String::new();
    for round in 0..3 {
        for n in 1..=5 {
            burst.push_str(&format!("RETR {n}\r\n"));
        }
        if round == 1 {
            burst.push_str(&format!("DELE 1{}\r\n", " ".repeat(400)));
        }
        // A NOOP padded to the 255-octet limit (its arguments are empty).
        burst.push_str(&format!("LIST\r\nUIDL\r\nNOOP{}\r\n", " ".repeat(249)));
    }
    assert!(burst.len() > 1024);
    c.send_raw(burst.as_bytes()).await;
    for round in 0..3 {
        for (i, expected) in messages.iter().enumerate() {
            assert_eq!(c.line().await, format!("+OK {} octets", expected.len()), "round {round}, RETR {}", i + 1);
            assert_eq!(&c.body().await, expected, "round {round}, RETR {}", i + 1);
        }
        if round == 1 {
            assert_eq!(c.line().await, "-ERR line too long (limit: 255 octets)");
        }
        let status = c.line().await;
        assert!(status.starts_with("+OK"), "{status}");
        let list = c.lines().await;
        assert_eq!(list.len(), 5, "{list:?}");
        assert_eq!(list[0], format!("1 {}", messages[0].len()));
        let status = c.line().await;
        assert!(status.starts_with("+OK"), "{status}");
        let uidl = c.lines().await;
        assert_eq!(uidl[0], "1 1700000000.M100P1000.demo");
        assert_eq!(c.line().await, "+OK");
    }
    // The overlong DELE was not executed; a command sent a byte at a time still works.
    for byte in b"STAT\r\n" {
        c.send_raw(&[*byte]).await;
    }
    assert_eq!(c.line().await, "+OK 5 3038");
}
