//! Crash safety of UPDATE: the server process is SIGKILLed while it removes 1,500 messages
//! (and once before QUIT). Whatever the moment, every file left is byte-identical to what
//! was delivered, nothing new appears in cur/, new/ or tmp/, and a new server process (the
//! flock died with the old one) serves exactly the files that are left.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

const COUNT: usize = 1500;
/// A file in tmp/ (a delivery in progress, as far as the server knows): it must stay put.
const TMP_SENTINEL: &str = "1699999999.M0P0.in-delivery";

/// alice's maildir holds exactly `COUNT` generated messages in new/ (the demo ones removed)
/// and the tmp/ sentinel; returns file name → content.
fn populate(fixture: &Fixture) -> BTreeMap<String, Vec<u8>> {
    let dir = fixture.maildir("alice");
    for sub in ["cur", "new", "tmp"] {
        fs::remove_dir_all(dir.join(sub)).unwrap();
        fs::create_dir(dir.join(sub)).unwrap();
    }
    fs::write(dir.join("tmp").join(TMP_SENTINEL), b"half a mess").unwrap();
    let messages: BTreeMap<String, Vec<u8>> = (0..COUNT)
        .map(|i| {
            let name = format!("{}.M{i}P7.crash", 1_700_000_000 + i);
            let body =
                format!("Subject: crash test {i}\nMessage-ID: <{i}@crash.test>\n\nbody {i}\n{}\n", "x".repeat(i % 97));
            (name, body.into_bytes())
        })
        .collect();
    for (name, body) in &messages {
        fs::write(dir.join("new").join(name), body).unwrap();
    }
    messages
}

/// Put back every message the last round removed.
fn refill(fixture: &Fixture, messages: &BTreeMap<String, Vec<u8>>) {
    let new = fixture.maildir("alice").join("new");
    for (name, body) in messages {
        if !new.join(name).exists() {
            fs::write(new.join(name), body).unwrap();
        }
    }
}

/// Check the maildir after a crash; returns how many messages are left and their POP3 octets.
fn check_after_crash(fixture: &Fixture, messages: &BTreeMap<String, Vec<u8>>, what: &str) -> (usize, u64) {
    let dir = fixture.maildir("alice");
    assert_eq!(fs::read_dir(dir.join("cur")).unwrap().count(), 0, "{what}: cur/ must stay empty");
    let tmp: Vec<String> =
        fs::read_dir(dir.join("tmp")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(tmp, [TMP_SENTINEL], "{what}: tmp/");
    assert_eq!(fs::read(dir.join("tmp").join(TMP_SENTINEL)).unwrap(), b"half a mess", "{what}: tmp/ sentinel");
    let (mut left, mut octets) = (0, 0);
    for entry in fs::read_dir(dir.join("new")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(original) = messages.get(&name) else { panic!("{what}: unexpected file new/{name}") };
        assert_eq!(&fs::read(entry.path()).unwrap(), original, "{what}: new/{name} changed");
        left += 1;
        octets += crlf(original).len() as u64;
    }
    assert!(left <= COUNT);
    (left, octets)
}

#[test]
fn sigkill_during_update_never_damages_a_message() {
    // This test watches removals; the new/ to cur/ moves (each one atomic rename) are off so
    // that every surviving file is where it was delivered.
    let fixture = Fixture::new("pop3_no_flag_updates = true");
    let messages = populate(&fixture);
    let full_octets: u64 = messages.values().map(|m| crlf(m).len() as u64).sum();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // None: killed after the DELEs, before QUIT. Some(ms): killed that long after QUIT.
    let kill_points = [None, Some(0), Some(1), Some(2), Some(5), Some(10), Some(20), Some(50)];
    let mut report = Vec::new();
    for kill_point in kill_points {
        let what = match kill_point {
            None => "killed before QUIT".to_owned(),
            Some(ms) => format!("killed {ms} ms after QUIT"),
        };
        refill(&fixture, &messages);
        let mut server = ServerProcess::spawn(&fixture.config_path);
        let client = runtime.block_on(async {
            let mut c = Client::connect(server.addr).await;
            let reply = c.apop("alice", ALICE_APOP_SECRET).await;
            assert_eq!(reply, format!("+OK alice's maildrop has {COUNT} messages ({full_octets} octets)"));
            let deles: String = (1..=COUNT).map(|n| format!("DELE {n}\r\n")).collect();
            c.send_raw(deles.as_bytes()).await;
            for n in 1..=COUNT {
                assert_eq!(c.line().await, format!("+OK message {n} marked for deletion"));
            }
            if kill_point.is_some() {
                c.send("QUIT").await;
            }
            c
        });
        if let Some(ms) = kill_point {
            std::thread::sleep(Duration::from_millis(ms));
        }
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        drop(client);

        let (left, octets) = check_after_crash(&fixture, &messages, &what);
        if kill_point.is_none() {
            assert_eq!(left, COUNT, "{what}: nothing may be deleted without QUIT");
        }
        report.push(format!("{what}: {left} left"));

        // The lock died with the process: a new server opens the mailbox and sees what is left.
        let next = ServerProcess::spawn(&fixture.config_path);
        runtime.block_on(async {
            let mut c = Client::connect(next.addr).await;
            let reply = c.apop("alice", ALICE_APOP_SECRET).await;
            assert_eq!(reply, format!("+OK alice's maildrop has {left} messages ({octets} octets)"), "{what}");
            assert_eq!(c.cmd("STAT").await, format!("+OK {left} {octets}"), "{what}");
            assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
            assert!(c.closed().await);
        });
        check_after_crash(&fixture, &messages, &what);
    }
    println!("messages left of {COUNT}: {}", report.join("; "));
}
