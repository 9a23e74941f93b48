//! Two `apopd serve` processes on one mail root, as two nodes behind a load balancer share
//! one maildir store: one session per mailbox across them, no stale index, and delete churn
//! across both with every delivered message retrieved exactly once.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;

fn two_nodes(fixture: &Fixture) -> (ServerProcess, ServerProcess) {
    (ServerProcess::spawn(&fixture.config_path), ServerProcess::spawn(&fixture.config_path))
}

#[tokio::test]
async fn a_mailbox_open_on_one_node_is_in_use_on_the_other() {
    let fixture = Fixture::new("");
    let (a, b) = two_nodes(&fixture);
    let mut on_a = Client::connect(a.addr).await;
    assert!(on_a.login("alice", ALICE_PASSWORD).await.starts_with("+OK"));
    let mut on_b = Client::connect(b.addr).await;
    let reply = on_b.login("alice", ALICE_PASSWORD).await;
    assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
    // Another mailbox is free on node B meanwhile.
    let mut bob = Client::connect(b.addr).await;
    assert!(bob.login("bob", BOB_PASSWORD).await.starts_with("+OK"));
    assert!(on_a.cmd("QUIT").await.starts_with("+OK"));
    let mut again = Client::connect(b.addr).await;
    assert!(again.login("alice", ALICE_PASSWORD).await.starts_with("+OK"), "free once node A let go");

    // A node that dies holding the lock releases it (the kernel drops the flock): bob's
    // session on node B stays open, node B is killed under it, and bob logs in on node A.
    drop(again);
    let mut b = b;
    let mut on_a = Client::connect(a.addr).await;
    assert!(on_a.login("bob", BOB_PASSWORD).await.starts_with("-ERR [IN-USE]"), "bob is held on node B");
    b.signal("KILL");
    assert!(b.wait_exit(Duration::from_secs(10)).is_some(), "node B is gone");
    let mut on_a = Client::connect(a.addr).await;
    assert!(on_a.login("bob", BOB_PASSWORD).await.starts_with("+OK"), "the dead node's lock is gone");
    drop(bob);
}

/// Set a directory's mtime an hour back, so an index written now is trusted without listing it.
fn age(dir: &std::path::Path) {
    let file = std::fs::File::open(dir).expect("open dir");
    file.set_modified(SystemTime::now() - Duration::from_secs(3600)).expect("set mtime");
}

#[tokio::test]
async fn a_node_never_serves_an_index_the_other_node_outdated() {
    let fixture = Fixture::new("");
    let (a, b) = two_nodes(&fixture);
    let maildir = fixture.maildir("alice");
    let uidls = |lines: Vec<String>| lines.into_iter().map(|l| l.split(' ').nth(1).unwrap().to_owned()).collect();
    let session = |addr: SocketAddr| async move {
        let mut c = Client::connect(addr).await;
        assert!(c.login("alice", ALICE_PASSWORD).await.starts_with("+OK"));
        c
    };
    for sub in ["cur", "new"] {
        age(&maildir.join(sub));
    }
    // Node A scans and writes a trusted index; a second login on A is served from it.
    for _ in 0..2 {
        let mut c = session(a.addr).await;
        assert_eq!(c.multi("UIDL").await.1.len(), 5);
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
    }
    assert!(maildir.join("apopd.index").is_file(), "node A wrote its index");

    // Node B deletes the first message …
    let mut c = session(b.addr).await;
    let before: Vec<String> = uidls(c.multi("UIDL").await.1);
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    // … and a message is delivered: node A sees both changes at once.
    let mut deliver = Command::new(env!("CARGO_BIN_EXE_apopd"))
        .args(["deliver", "alice", "--config"])
        .arg(&fixture.config_path)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("apopd deliver");
    deliver.stdin.take().unwrap().write_all(b"Subject: fresh\r\n\r\nnew\r\n").unwrap();
    assert!(deliver.wait().unwrap().success());
    let mut c = session(a.addr).await;
    let after: Vec<String> = uidls(c.multi("UIDL").await.1);
    assert_eq!(after.len(), 5, "{after:?}");
    assert!(!after.contains(&before[0]), "node A must not list what node B deleted: {after:?}");
    assert_eq!(after[..4], before[1..], "the others keep their UIDLs");
    let (status, _) = c.multi("RETR 5").await;
    assert!(status.starts_with("+OK"), "the new message is served: {status}");
}

/// A message with a sequence number the churn can recognise.
fn message(seq: u64) -> Vec<u8> {
    format!(
        "From: churn@example.org\r\nSubject: churn {seq}\r\nX-Churn-Seq: {seq}\r\n\r\n{}\r\n",
        format!("line of message {seq} ").repeat(20)
    )
    .into_bytes()
}

fn seq_of(body: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(body);
    text.lines().find_map(|l| l.strip_prefix("X-Churn-Seq: ")).and_then(|s| s.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_churn_across_two_nodes_loses_and_repeats_nothing() {
    const MESSAGES: u64 = 120;
    const CLIENTS: usize = 4;
    let fixture = Fixture::new("");
    let (a, b) = two_nodes(&fixture);
    let nodes = [a.addr, b.addr];
    let users = [("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)];

    // The generator: `apopd deliver` processes, as an MTA would run them, alternating users.
    let delivered_all = Arc::new(AtomicBool::new(false));
    let generator = {
        let (config, done) = (fixture.config_path.clone(), delivered_all.clone());
        std::thread::spawn(move || {
            for seq in 0..MESSAGES {
                let user = users[(seq % 2) as usize].0;
                let mut child = Command::new(env!("CARGO_BIN_EXE_apopd"))
                    .args(["deliver", user, "--config"])
                    .arg(&config)
                    .stdin(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("apopd deliver");
                child.stdin.take().unwrap().write_all(&message(seq)).unwrap();
                assert!(child.wait().unwrap().success(), "delivery {seq}");
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    // Clients: two per mailbox, each alternating nodes, so they also meet [IN-USE] across nodes.
    let retrieved: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let in_use = Arc::new(Mutex::new(0u32));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (retrieved, in_use, done) = (retrieved.clone(), in_use.clone(), delivered_all.clone());
        let (user, password) = users[client % 2];
        tasks.push(tokio::spawn(async move {
            let mut sessions = 0usize;
            loop {
                assert!(Instant::now() < deadline, "churn did not finish in time");
                // Read before the session: if delivery was over then and the mailbox is empty
                // now, nothing more will come.
                let finished = done.load(Ordering::SeqCst);
                let mut c = Client::connect(nodes[(client + sessions) % 2]).await;
                sessions += 1;
                let reply = c.login(user, password).await;
                if reply.starts_with("-ERR [IN-USE]") {
                    *in_use.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                assert!(reply.starts_with("+OK"), "{reply}");
                let (_, list) = c.multi("LIST").await;
                let mut got = Vec::new();
                for line in &list {
                    let n = line.split(' ').next().unwrap();
                    assert!(c.cmd(&format!("RETR {n}")).await.starts_with("+OK"));
                    let body = c.body().await;
                    if let Some(seq) = seq_of(&body) {
                        assert_eq!(body, message(seq), "message {seq} arrived changed");
                        got.push(seq);
                    }
                    assert!(c.cmd(&format!("DELE {n}")).await.starts_with("+OK"));
                }
                assert!(c.cmd("QUIT").await.starts_with("+OK"), "UPDATE failed");
                {
                    let mut retrieved = retrieved.lock().unwrap();
                    for seq in got {
                        *retrieved.entry(seq).or_default() += 1;
                    }
                }
                if finished && list.is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    generator.join().expect("generator");
    let retrieved = retrieved.lock().unwrap();
    let lost: Vec<u64> = (0..MESSAGES).filter(|s| !retrieved.contains_key(s)).collect();
    let repeated: Vec<(&u64, &u32)> = retrieved.iter().filter(|(_, n)| **n != 1).collect();
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(repeated.is_empty(), "retrieved more than once: {repeated:?}");
    assert_eq!(retrieved.len() as u64, MESSAGES);
    for user in ["alice", "bob"] {
        assert!(fixture.message_files(user).is_empty(), "{user}'s maildir is empty at the end");
    }
    eprintln!("two-node churn: {MESSAGES} messages, {} [IN-USE] answers", in_use.lock().unwrap());
}
