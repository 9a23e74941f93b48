//! TRANSACTION state over TCP: STAT, LIST, RETR, TOP, UIDL, DELE, RSET, NOOP, and how bad
//! message numbers and out-of-state commands are refused.

mod common;
use common::*;

use std::collections::BTreeSet;

const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";

async fn alice(server: &TestServer) -> Client {
    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    c
}

/// The files of `user` in message-number order, with their wire form (CRLF, no stuffing).
fn wire_messages(server: &TestServer, user: &str) -> Vec<Vec<u8>> {
    server.fixture.message_files(user).iter().map(|p| crlf(&std::fs::read(p).unwrap())).collect()
}

/// Expected UIDLs: the maildir base names (before `:2,`), in message order.
fn base_names(server: &TestServer, user: &str) -> Vec<String> {
    server
        .fixture
        .message_files(user)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().split(':').next().unwrap().to_owned())
        .collect()
}

/// What `TOP n k` must send (unstuffed): headers, the blank line, then `k` body lines.
fn top_of(wire: &[u8], k: usize) -> Vec<u8> {
    let head_end = wire.windows(4).position(|w| w == b"\r\n\r\n").map_or(wire.len(), |i| i + 4);
    let (head, body) = wire.split_at(head_end);
    let mut out = head.to_vec();
    for line in body.split_inclusive(|&b| b == b'\n').take(k) {
        out.extend_from_slice(line);
    }
    out
}

#[tokio::test]
async fn stat_and_list_totals() {
    let server = TestServer::start().await;
    let wire = wire_messages(&server, "alice");
    let total: usize = wire.iter().map(Vec::len).sum();
    assert_eq!(total, 3038);
    let mut c = alice(&server).await;
    assert_eq!(c.cmd("STAT").await, format!("+OK 5 {total}"));
    let (status, lines) = c.multi("LIST").await;
    assert_eq!(status, format!("+OK 5 messages ({total} octets)"));
    let expected: Vec<String> = wire.iter().enumerate().map(|(i, m)| format!("{} {}", i + 1, m.len())).collect();
    assert_eq!(lines, expected);
    for (i, m) in wire.iter().enumerate() {
        assert_eq!(c.cmd(&format!("LIST {}", i + 1)).await, format!("+OK {} {}", i + 1, m.len()));
    }
}

#[tokio::test]
async fn retr_sends_every_message_exactly_with_its_listed_size() {
    let server = TestServer::start().await;
    for (user, secret_login) in [("alice", true), ("bob", false)] {
        let wire = wire_messages(&server, user);
        let mut c = server.connect().await;
        let reply =
            if secret_login { c.apop(user, ALICE_APOP_SECRET).await } else { c.login(user, BOB_PASSWORD).await };
        assert!(reply.starts_with("+OK"), "{reply}");
        for (i, expected) in wire.iter().enumerate() {
            let n = i + 1;
            let listed = c.cmd(&format!("LIST {n}")).await;
            let size: usize = listed.rsplit(' ').next().unwrap().parse().unwrap();
            assert_eq!(c.cmd(&format!("RETR {n}")).await, format!("+OK {size} octets"), "{user} {n}");
            let body = c.body().await;
            assert_eq!(body.len(), size, "{user} message {n}: RETR length vs LIST size");
            assert_eq!(&body, expected, "{user} message {n}");
        }
    }
}

#[tokio::test]
async fn top_zero_sends_headers_and_blank_line_only() {
    let server = TestServer::start().await;
    let wire = wire_messages(&server, "alice");
    let mut c = alice(&server).await;
    for (i, message) in wire.iter().enumerate() {
        assert_eq!(c.cmd(&format!("TOP {} 0", i + 1)).await, "+OK top of message follows");
        let top = c.body().await;
        assert_eq!(top, top_of(message, 0), "message {}", i + 1);
        assert!(top.ends_with(b"\r\n\r\n"), "message {}: no blank line at the end", i + 1);
        assert_eq!(top.windows(4).filter(|w| w == b"\r\n\r\n").count(), 1, "message {}: body leaked", i + 1);
    }
}

#[tokio::test]
async fn top_sends_exactly_k_body_lines() {
    let server = TestServer::start().await;
    let wire = wire_messages(&server, "alice");
    let mut c = alice(&server).await;
    for (i, message) in wire.iter().enumerate() {
        let head_len = top_of(message, 0).len();
        for k in [1usize, 2, 3, 7] {
            assert_eq!(c.cmd(&format!("TOP {} {k}", i + 1)).await, "+OK top of message follows");
            let top = c.body().await;
            assert_eq!(top, top_of(message, k), "TOP {} {k}", i + 1);
            assert_eq!(top[head_len..].split_inclusive(|&b| b == b'\n').count(), k, "TOP {} {k}", i + 1);
        }
    }
    // The LF-only message, as its own text suggests: "TOP 3 2".
    assert_eq!(c.cmd("TOP 3 2").await, "+OK top of message follows");
    let top = String::from_utf8(c.body().await).unwrap();
    assert!(top.ends_with(
        "\r\n\r\nThis file uses bare LF line endings, as most Unix maildirs do.\r\n\
         apopd sends every line with CRLF, and LIST counts the CRLF size.\r\n"
    ));
}

#[tokio::test]
async fn top_with_more_lines_than_the_body_sends_the_whole_message() {
    let server = TestServer::start().await;
    let mut c = alice(&server).await;
    let mut bob_wire = wire_messages(&server, "bob");
    for (i, message) in wire_messages(&server, "alice").iter().enumerate() {
        for k in [1000u64, u64::MAX] {
            assert_eq!(c.cmd(&format!("TOP {} {k}", i + 1)).await, "+OK top of message follows");
            assert_eq!(&c.body().await, message, "TOP {} {k}", i + 1);
        }
    }
    // Bob's second message has no final newline: TOP still terminates its last line.
    let mut b = server.connect().await;
    assert!(b.login("bob", BOB_PASSWORD).await.starts_with("+OK"));
    assert_eq!(b.cmd("TOP 2 50").await, "+OK top of message follows");
    assert_eq!(b.body().await, bob_wire.pop().unwrap());
}

#[tokio::test]
async fn lines_starting_with_a_dot_are_stuffed_on_the_wire() {
    let server = TestServer::start().await;
    let wire = wire_messages(&server, "alice");
    let text = String::from_utf8(wire[1].clone()).unwrap();
    assert!(text.contains("\r\n.hidden-file\r\n"), "fixture changed?");
    let expected: Vec<String> = text
        .strip_suffix("\r\n")
        .unwrap()
        .split("\r\n")
        .map(|l| if l.starts_with('.') { format!(".{l}") } else { l.to_owned() })
        .collect();

    let mut c = alice(&server).await;
    assert_eq!(c.cmd("RETR 2").await, format!("+OK {} octets", wire[1].len()));
    let mut raw = Vec::new();
    loop {
        let line = c.line().await;
        if line == "." {
            break;
        }
        raw.push(line);
    }
    assert_eq!(raw, expected);
    for stuffed in ["..", "..hidden-file", "...two dots", "...."] {
        assert!(raw.iter().any(|l| l == stuffed), "{stuffed:?} not on the wire");
    }
    assert!(!raw.iter().any(|l| l == "."), "an unstuffed lone dot would end the response early");
    // The connection is still in step.
    assert_eq!(c.cmd("NOOP").await, "+OK");
}

#[tokio::test]
async fn uidl_lists_base_names_that_are_valid_and_unique() {
    let server = TestServer::start().await;
    let expected = base_names(&server, "alice");
    let mut c = alice(&server).await;
    let (status, lines) = c.multi("UIDL").await;
    assert_eq!(status, "+OK unique-id listing follows");
    let listed: Vec<String> = expected.iter().enumerate().map(|(i, u)| format!("{} {u}", i + 1)).collect();
    assert_eq!(lines, listed);
    let mut unique = BTreeSet::new();
    for (i, uidl) in expected.iter().enumerate() {
        assert!((1..=70).contains(&uidl.len()), "{uidl}");
        assert!(uidl.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{uidl}");
        assert!(unique.insert(uidl.clone()), "duplicate {uidl}");
        assert_eq!(c.cmd(&format!("UIDL {}", i + 1)).await, format!("+OK {} {uidl}", i + 1));
    }
    assert!(unique.contains("1700014400.M500P1000.demo,S=613,W=635"));
    assert!(unique.contains("1700000000.M100P1000.demo"), "flags must not be part of the UIDL");
}

async fn uidl_list(server: &TestServer) -> Vec<String> {
    let mut c = alice(server).await;
    let (_, lines) = c.multi("UIDL").await;
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(c.closed().await);
    lines
}

#[tokio::test]
async fn uidl_is_stable_across_sessions_and_flag_changes() {
    let server = TestServer::start().await;
    let first = uidl_list(&server).await;
    assert_eq!(uidl_list(&server).await, first, "second session");

    // A MUA (or another server) marks message 3 seen: new/x -> cur/x:2,S.
    let maildir = server.fixture.maildir("alice");
    let name = "1700007200.M300P1000.demo";
    std::fs::rename(maildir.join("new").join(name), maildir.join("cur").join(format!("{name}:2,S"))).unwrap();
    assert_eq!(uidl_list(&server).await, first, "after new/ -> cur/:2,S");

    // And then changes the flags again.
    std::fs::rename(maildir.join("cur").join(format!("{name}:2,S")), maildir.join("cur").join(format!("{name}:2,RS")))
        .unwrap();
    assert_eq!(uidl_list(&server).await, first, "after :2,S -> :2,RS");
}

#[tokio::test]
async fn overlong_maildir_names_get_a_short_stable_uidl() {
    let server = TestServer::start().await;
    let maildir = server.fixture.maildir("alice");
    let long = format!("1800000000.M1P1.{}", "h".repeat(80));
    std::fs::write(maildir.join("tmp").join(&long), b"Subject: long\n\nbody\n").unwrap();
    std::fs::rename(maildir.join("tmp").join(&long), maildir.join("new").join(&long)).unwrap();

    let mut c = server.connect().await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, "+OK alice's maildrop has 6 messages (3061 octets)");
    let first = c.cmd("UIDL 6").await;
    let uidl = first.strip_prefix("+OK 6 ").unwrap().to_owned();
    assert!((1..=70).contains(&uidl.len()), "{uidl}");
    assert!(uidl.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{uidl}");
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(c.closed().await);

    std::fs::rename(maildir.join("new").join(&long), maildir.join("cur").join(format!("{long}:2,S"))).unwrap();
    let mut c = alice_with(&server, 6).await;
    assert_eq!(c.cmd("UIDL 6").await, first);
}

async fn alice_with(server: &TestServer, count: usize) -> Client {
    let mut c = server.connect().await;
    let reply = c.apop("alice", ALICE_APOP_SECRET).await;
    assert!(reply.starts_with(&format!("+OK alice's maildrop has {count} messages")), "{reply}");
    c
}

#[tokio::test]
async fn dele_marks_a_message_and_hides_it() {
    let server = TestServer::start().await;
    let wire = wire_messages(&server, "alice");
    let uidls = base_names(&server, "alice");
    let mut c = alice(&server).await;
    assert_eq!(c.cmd("DELE 2").await, "+OK message 2 marked for deletion");
    for cmd in ["RETR 2", "TOP 2 0", "LIST 2", "UIDL 2", "DELE 2"] {
        assert_eq!(c.cmd(cmd).await, "-ERR message 2 is deleted", "{cmd}");
        assert_eq!(c.cmd("NOOP").await, "+OK", "session alive after {cmd}");
    }
    let left = 3038 - wire[1].len();
    assert_eq!(c.cmd("STAT").await, format!("+OK 4 {left}"));
    let (status, lines) = c.multi("LIST").await;
    assert_eq!(status, format!("+OK 4 messages ({left} octets)"));
    let expected: Vec<String> = [1, 3, 4, 5].iter().map(|&n| format!("{n} {}", wire[n - 1].len())).collect();
    assert_eq!(lines, expected, "numbers never change, the deleted one is left out");
    let (_, lines) = c.multi("UIDL").await;
    let expected: Vec<String> = [1, 3, 4, 5].iter().map(|&n| format!("{n} {}", uidls[n - 1])).collect();
    assert_eq!(lines, expected);
    // Other messages are unaffected.
    assert_eq!(c.cmd("RETR 3").await, format!("+OK {} octets", wire[2].len()));
    assert_eq!(c.body().await, wire[2]);
    assert_eq!(c.cmd("DELE 5").await, "+OK message 5 marked for deletion");
    assert_eq!(c.cmd("STAT").await, format!("+OK 3 {}", left - wire[4].len()));
}

#[tokio::test]
async fn rset_unmarks_everything() {
    let server = TestServer::start().await;
    let wire = wire_messages(&server, "alice");
    let mut c = alice(&server).await;
    for n in 1..=5 {
        assert_eq!(c.cmd(&format!("DELE {n}")).await, format!("+OK message {n} marked for deletion"));
    }
    assert_eq!(c.cmd("STAT").await, "+OK 0 0");
    assert_eq!(c.multi("LIST").await, ("+OK 0 messages (0 octets)".to_owned(), vec![]));
    assert_eq!(c.cmd("RSET").await, "+OK maildrop has 5 messages (3038 octets)");
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
    assert_eq!(c.cmd("RETR 2").await, format!("+OK {} octets", wire[1].len()));
    assert_eq!(c.body().await, wire[1]);
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(c.closed().await);
    assert_eq!(server.fixture.message_files("alice").len(), 5);
}

#[tokio::test]
async fn invalid_message_numbers_are_refused_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut c = alice(&server).await;
    let no_such = "-ERR no such message; the maildrop has messages 1 to 5";
    let cases: Vec<(String, &str)> = ["RETR", "DELE", "LIST", "UIDL"]
        .iter()
        .flat_map(|cmd| {
            [
                (format!("{cmd} 0"), no_such),
                (format!("{cmd} 6"), no_such),
                (format!("{cmd} 99999999999999999999"), no_such),
                (format!("{cmd} -1"), "-ERR invalid message number"),
                (format!("{cmd} abc"), "-ERR invalid message number"),
                (format!("{cmd} 1x"), "-ERR invalid message number"),
                (format!("{cmd} +1"), "-ERR invalid message number"),
            ]
        })
        .chain([
            ("RETR".to_owned(), "-ERR RETR needs a message number"),
            ("DELE".to_owned(), "-ERR DELE needs a message number"),
            ("RETR 1 2".to_owned(), "-ERR RETR needs a message number"),
            ("LIST 1 2".to_owned(), "-ERR too many arguments"),
            ("TOP 0 0".to_owned(), no_such),
            ("TOP 6 0".to_owned(), no_such),
            ("TOP 99999999999999999999 1".to_owned(), no_such),
            ("TOP -1 0".to_owned(), "-ERR invalid message number"),
            ("TOP abc 0".to_owned(), "-ERR invalid message number"),
            ("TOP 1 -1".to_owned(), "-ERR invalid line count"),
            ("TOP 1 x".to_owned(), "-ERR invalid line count"),
            ("TOP 1".to_owned(), "-ERR TOP needs a message number and a line count"),
            ("TOP".to_owned(), "-ERR TOP needs a message number and a line count"),
        ])
        .collect();
    for (cmd, expected) in &cases {
        assert_eq!(c.cmd(cmd).await, *expected, "{cmd}");
        assert_eq!(c.cmd("STAT").await, "+OK 5 3038", "after {cmd}: nothing marked, session alive");
    }
}

#[tokio::test]
async fn login_commands_are_refused_in_transaction() {
    let server = TestServer::start().await;
    let mut c = alice(&server).await;
    let digest = apopd::auth::apop::digest(&c.timestamp(), ALICE_APOP_SECRET.as_bytes());
    for cmd in ["USER alice".to_owned(), format!("PASS {ALICE_PASSWORD}"), format!("APOP alice {digest}")] {
        assert_eq!(c.cmd(&cmd).await, "-ERR already logged in", "{cmd}");
    }
    // Switching to another user is impossible too.
    assert_eq!(c.cmd("USER bob").await, "-ERR already logged in");
    assert_eq!(c.cmd(&format!("PASS {BOB_PASSWORD}")).await, "-ERR already logged in");
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
}

#[tokio::test]
async fn noop_answers_ok() {
    let server = TestServer::start().await;
    let mut c = alice(&server).await;
    assert_eq!(c.cmd("NOOP").await, "+OK");
    assert_eq!(c.cmd("NOOP x").await, "-ERR NOOP takes no arguments");
}
