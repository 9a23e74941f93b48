//! Interoperability with other delivery agents and mail readers sharing the maildir.
//!
//! Messages are written the way other programs write them, with the `maildir` crate (a
//! dev-dependency used only here): its own unique names (`<secs>.#<n>M<ns>P<pid>V<dev>I<ino>.
//! <host>,S=<size>`), `tmp/` → `new/` delivery, `new/` → `cur/` moves and `:2,` flag changes.
//! apopd must serve them byte-exact (CRLF line endings, dot-stuffing undone by the client),
//! with LIST sizes equal to the bytes RETR sends, and with UIDLs equal to the crate's message
//! ids that stay the same across sessions, renames between sessions and renames during one.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::Write;

use maildir::Maildir;

/// What a UIDL for a maildir message id must be: the id itself when RFC 1939 allows it
/// (1–70 characters in 0x21–0x7E), else its hex MD5 (a long hostname makes long ids).
fn expected_uidl(id: &str) -> String {
    if id.len() <= 70 && id.bytes().all(|b| b.is_ascii_graphic()) {
        id.to_owned()
    } else {
        use md5::Digest;
        md5::Md5::digest(id.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The alice maildir of a fresh fixture, emptied and recreated by the `maildir` crate.
fn empty_alice(fixture: &Fixture) -> Maildir {
    let dir = fixture.maildir("alice");
    std::fs::remove_dir_all(&dir).unwrap();
    let maildir = Maildir::from(dir);
    maildir.create_dirs().unwrap();
    maildir
}

/// Test messages: CRLF, bare LF, dot-leading lines, no final newline, UTF-8, binary, and one
/// big enough to cross the server's 64 KiB read chunks with a dot at many line starts.
fn messages() -> Vec<Vec<u8>> {
    let mut binary = b"From: f@example.org\nContent-Type: application/octet-stream\n\n".to_vec();
    binary.extend_from_slice(b"\x00\x01\x02\xff\xfe\x80 high bytes\n.\x00dot then NUL\r\n\xc3\x28 bad utf-8\n");
    let mut big = b"From: g@example.org\nSubject: big\n\n".to_vec();
    for i in 0..20_000 {
        big.extend_from_slice(format!(".line {i} starts with a dot\n").as_bytes());
    }
    vec![
        b"From: a@example.org\r\nSubject: crlf\r\n\r\nLine one\r\nLine two\r\n".to_vec(),
        b"From: b@example.org\nSubject: bare lf\n\nLine one\nLine two\n".to_vec(),
        b"From: c@example.org\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nend\n".to_vec(),
        b"From: d@example.org\nSubject: no final newline\n\nlast line without newline".to_vec(),
        "From: e@example.org\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\nContent-Type: text/plain; charset=utf-8\n\nGrüße, 日本語, ÿ\n.ünïcode after a dot\n"
            .as_bytes()
            .to_vec(),
        binary,
        big,
    ]
}

/// Log in as alice over TCP.
async fn alice(server: &TestServer) -> Client {
    let mut c = server.connect().await;
    let reply = c.apop("alice", ALICE_APOP_SECRET).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    c
}

/// UIDL of every message, by message number (1-based, in order).
async fn uidls(c: &mut Client) -> Vec<String> {
    let (_, lines) = c.multi("UIDL").await;
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let (n, uidl) = line.split_once(' ').unwrap();
            assert_eq!(n, (i + 1).to_string(), "UIDL listing out of order: {line}");
            uidl.to_owned()
        })
        .collect()
}

/// RETR message `n`: its body, after checking the status line and LIST agree on its size.
async fn retr(c: &mut Client, n: usize) -> Vec<u8> {
    let listed = c.cmd(&format!("LIST {n}")).await;
    let size: usize = listed.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(c.cmd(&format!("RETR {n}")).await, format!("+OK {size} octets"));
    let body = c.body().await;
    assert_eq!(body.len(), size, "message {n}: RETR sent {} bytes, LIST said {size}", body.len());
    body
}

/// One whole session: every message's UIDL is the expected one for a stored id, every body is
/// byte-exact, STAT agrees with the sum. Returns the UIDL → message number map.
async fn check_session(server: &TestServer, stored: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, usize> {
    let mut c = alice(server).await;
    let by_uidl: BTreeMap<String, &Vec<u8>> = stored.iter().map(|(id, data)| (expected_uidl(id), data)).collect();
    let uidls = uidls(&mut c).await;
    assert_eq!(uidls.len(), stored.len(), "listed {uidls:?}, stored {:?}", stored.keys());
    let mut total = 0;
    let mut numbers = BTreeMap::new();
    for (i, uidl) in uidls.iter().enumerate() {
        let n = i + 1;
        let data = by_uidl.get(uidl).unwrap_or_else(|| panic!("UIDL {uidl} is not a maildir id: {stored:?}"));
        let body = retr(&mut c, n).await;
        assert!(body == crlf(data), "message {n} ({uidl}) is not served byte-exact");
        total += body.len();
        assert!(numbers.insert(uidl.clone(), n).is_none(), "UIDL {uidl} twice");
    }
    assert_eq!(c.cmd("STAT").await, format!("+OK {} {total}", stored.len()));
    assert_eq!(c.cmd("QUIT").await.get(..3), Some("+OK"));
    numbers
}

#[tokio::test]
async fn messages_written_by_the_maildir_crate_are_served_exactly_with_stable_uidls() {
    let fixture = Fixture::new("");
    let maildir = empty_alice(&fixture);
    let messages = messages();
    let mut stored = BTreeMap::new();

    // Delivered as an MDA does (tmp/ → new/), left in new/.
    let in_new = maildir.store_new(&messages[0]).unwrap();
    stored.insert(in_new.clone(), messages[0].clone());
    // Delivered to new/, then seen by a mail reader: moved to cur/ with an empty `:2,`.
    let moved = maildir.store_new(&messages[1]).unwrap();
    maildir.move_new_to_cur(&moved).unwrap();
    stored.insert(moved.clone(), messages[1].clone());
    // Stored straight into cur/ with flags.
    let seen = maildir.store_cur_with_flags(&messages[2], "S").unwrap();
    stored.insert(seen.clone(), messages[2].clone());
    // new/ with an info suffix (out of spec, but some agents do it).
    let flagged_new = maildir.store_new_with_flags(&messages[3], "F").unwrap();
    stored.insert(flagged_new, messages[3].clone());
    let utf8 = maildir.store_new(&messages[4]).unwrap();
    maildir.move_new_to_cur_with_flags(&utf8, "RS").unwrap();
    stored.insert(utf8.clone(), messages[4].clone());
    let binary = maildir.store_new(&messages[5]).unwrap();
    stored.insert(binary.clone(), messages[5].clone());
    // Mid-delivery: written to tmp/ but not yet renamed into new/. Not a message yet.
    let mut pending = maildir.open_file_in_tmp().unwrap();
    pending.write_all(&messages[6]).unwrap();

    let server = TestServer::start_on(fixture).await;
    let first = check_session(&server, &stored).await;
    for id in stored.keys() {
        assert!(first.contains_key(&expected_uidl(id)), "{id} not listed");
    }

    // Between sessions: the delivery completes, and a mail reader moves and flags messages.
    let big = maildir.move_tmp_to_new(pending).unwrap();
    stored.insert(big.clone(), messages[6].clone());
    maildir.move_new_to_cur(&in_new).unwrap();
    maildir.move_new_to_cur(&binary).unwrap();
    maildir.set_flags(&moved, "S").unwrap();
    maildir.add_flags(&seen, "RF").unwrap();
    maildir.remove_flags(&utf8, "S").unwrap();
    assert!(maildir.find(&in_new).unwrap().path().starts_with(maildir.path().join("cur")));

    let second = check_session(&server, &stored).await;
    for uidl in first.keys() {
        assert!(second.contains_key(uidl), "UIDL {uidl} lost after renames");
    }
    assert!(second.contains_key(&expected_uidl(&big)), "the completed delivery is listed");
    assert_eq!(second.len(), first.len() + 1);
}

#[tokio::test]
async fn renames_by_the_maildir_crate_during_a_session_are_followed() {
    let fixture = Fixture::new("");
    let maildir = empty_alice(&fixture);
    let messages = messages();
    let ids: Vec<String> = messages.iter().map(|m| maildir.store_new(m).unwrap()).collect();
    let server = TestServer::start_on(fixture).await;

    let mut c = alice(&server).await;
    let listed = uidls(&mut c).await;
    let number_of = |id: &str| listed.iter().position(|u| *u == expected_uidl(id)).unwrap() + 1;

    // After login, before RETR: a mail reader moves every message to cur/, flagging some, and
    // then flags one of them again.
    for (i, id) in ids.iter().enumerate() {
        let flags = if i % 2 == 0 { "S" } else { "" };
        maildir.move_new_to_cur_with_flags(id, flags).unwrap();
    }
    maildir.add_flags(&ids[1], "RS").unwrap();

    for (id, data) in ids.iter().zip(&messages) {
        let n = number_of(id);
        assert_eq!(c.cmd(&format!("UIDL {n}")).await, format!("+OK {n} {}", expected_uidl(id)));
        let body = retr(&mut c, n).await;
        assert!(body == crlf(data), "message {n} ({id}) not served byte-exact after a rename");
    }
    assert_eq!(listed, uidls(&mut c).await, "UIDLs changed within the session");

    // DELE a renamed message: UPDATE removes it where it now is, and only it.
    let gone = &ids[1];
    assert!(c.cmd(&format!("DELE {}", number_of(gone))).await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert!(maildir.find(gone).is_none(), "the deleted message is still in the maildir");
    for id in ids.iter().filter(|id| *id != gone) {
        assert!(maildir.find(id).is_some(), "{id} was removed too");
    }
    assert_eq!(maildir.count_new() + maildir.count_cur(), ids.len() - 1);
}
