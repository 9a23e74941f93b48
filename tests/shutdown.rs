//! Graceful shutdown of a real `apopd serve` process on SIGTERM/SIGINT: sessions waiting for a
//! command are told `-ERR [SYS/TEMP] server shutting down; nothing was deleted` and closed
//! without UPDATE, a QUIT already being processed completes its UPDATE, the listener closes,
//! and the process exits 0 (after at most `shutdown_grace_secs` for stuck sessions).

mod common;
use common::*;

use std::io::ErrorKind;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpStream;

const SHUTDOWN: &str = "-ERR [SYS/TEMP] server shutting down; nothing was deleted";
const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";
const BOB_OK: &str = "+OK bob's maildrop has 2 messages (584 octets)";
const GRACE_SECS: u64 = 2;
/// How much longer than the grace period the process may take to exit (a bound, not a measurement).
const MARGIN: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Wait for the process to exit; it must, with status 0.
fn assert_exits_cleanly(server: &mut ServerProcess) {
    let status = server
        .wait_exit(Duration::from_secs(GRACE_SECS) + MARGIN)
        .unwrap_or_else(|| panic!("apopd still running {MARGIN:?} after its grace period"));
    assert!(status.success(), "apopd exited with {status}; log:\n{}", server.log_lines().join("\n"));
}

/// The listener is gone: a new connection is refused outright.
async fn assert_refuses_connections(server: &ServerProcess) {
    match TcpStream::connect(server.addr).await {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a connection was accepted after SIGTERM"),
    }
}

#[test]
fn sigterm_tells_every_waiting_session_and_deletes_nothing() {
    let fixture = Fixture::new(&format!("shutdown_grace_secs = {GRACE_SECS}"));
    let alice_before = fixture.message_files("alice");
    let bob_before = fixture.message_files("bob");
    let mut server = ServerProcess::spawn(&fixture.config_path);
    runtime().block_on(async {
        // One session idle in AUTHORIZATION (half-way through USER/PASS), one just greeted,
        // two in TRANSACTION with deletion marks.
        let mut authorizing = Client::connect(server.addr).await;
        assert_eq!(authorizing.cmd("USER alice").await, "+OK send PASS");
        let mut greeted = Client::connect(server.addr).await;
        let mut alice = Client::connect(server.addr).await;
        assert_eq!(alice.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
        assert_eq!(alice.cmd("DELE 1").await, "+OK message 1 marked for deletion");
        assert_eq!(alice.cmd("DELE 3").await, "+OK message 3 marked for deletion");
        let mut bob = Client::connect(server.addr).await;
        assert_eq!(bob.login("bob", BOB_PASSWORD).await, BOB_OK);
        assert_eq!(bob.cmd("DELE 2").await, "+OK message 2 marked for deletion");

        server.signal("TERM");

        for (name, client) in
            [("authorizing", &mut authorizing), ("greeted", &mut greeted), ("alice", &mut alice), ("bob", &mut bob)]
        {
            assert_eq!(client.line().await, SHUTDOWN, "{name}");
            assert!(client.closed().await, "{name}: not closed after the shutdown message");
        }
        // The sessions are told only after the listener is closed.
        assert_refuses_connections(&server).await;
    });
    assert_exits_cleanly(&mut server);
    assert_eq!(fixture.message_files("alice"), alice_before, "nothing deleted for alice");
    assert_eq!(fixture.message_files("bob"), bob_before, "nothing deleted for bob");
    let log = server.log_lines().join("\n");
    assert!(!log.contains("grace period over"), "every session ended in time, yet:\n{log}");
    // The locks died with the sessions: a new server serves alice's whole mailbox.
    let next = ServerProcess::spawn(&fixture.config_path);
    runtime().block_on(async {
        let mut alice = Client::connect(next.addr).await;
        assert_eq!(alice.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    });
}

#[test]
fn sigint_shuts_down_the_same_way() {
    let fixture = Fixture::new(&format!("shutdown_grace_secs = {GRACE_SECS}"));
    let before = fixture.message_files("alice");
    let mut server = ServerProcess::spawn(&fixture.config_path);
    runtime().block_on(async {
        let mut alice = Client::connect(server.addr).await;
        assert_eq!(alice.login("alice", ALICE_PASSWORD).await, ALICE_OK);
        assert_eq!(alice.cmd("DELE 2").await, "+OK message 2 marked for deletion");
        server.signal("INT");
        assert_eq!(alice.line().await, SHUTDOWN);
        assert!(alice.closed().await);
        assert_refuses_connections(&server).await;
    });
    assert_exits_cleanly(&mut server);
    assert_eq!(fixture.message_files("alice"), before);
}

/// Adds `count` small messages to alice's new/; returns their paths.
fn add_messages(fixture: &Fixture, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let path = fixture.maildir("alice").join(format!("new/{}.M{i}P9.shutdown", 1_800_000_000 + i));
            std::fs::write(&path, format!("Subject: {i}\n\nbody {i}\n")).unwrap();
            path
        })
        .collect()
}

/// QUIT is sent and its UPDATE has begun (the first file is gone) when SIGTERM arrives: the
/// UPDATE completes, the client gets its +OK, every marked file is gone; a session that was
/// waiting for a command still gets the shutdown message and keeps its files.
#[test]
fn a_quit_being_processed_when_sigterm_arrives_completes_its_update() {
    const EXTRA: usize = 1500;
    let fixture = Fixture::new(&format!("shutdown_grace_secs = {}", GRACE_SECS + 8));
    add_messages(&fixture, EXTRA);
    let total = 5 + EXTRA;
    let bob_before = fixture.message_files("bob");
    let mut server = ServerProcess::spawn(&fixture.config_path);
    runtime().block_on(async {
        let mut bob = Client::connect(server.addr).await;
        assert_eq!(bob.login("bob", BOB_PASSWORD).await, BOB_OK);
        assert_eq!(bob.cmd("DELE 1").await, "+OK message 1 marked for deletion");

        let mut alice = Client::connect(server.addr).await;
        let reply = alice.apop("alice", ALICE_APOP_SECRET).await;
        assert!(reply.starts_with(&format!("+OK alice's maildrop has {total} messages")), "{reply}");
        let deles: String = (1..=total).map(|n| format!("DELE {n}\r\n")).collect();
        alice.send_raw(deles.as_bytes()).await;
        for n in 1..=total {
            assert_eq!(alice.line().await, format!("+OK message {n} marked for deletion"));
        }
        alice.send("QUIT").await;
        // Bounded: 10 s of 1 ms polls for UPDATE's first unlink.
        let mut started = false;
        for _ in 0..10_000 {
            if fixture.message_files("alice").len() < total {
                started = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(started, "UPDATE never started");
        server.signal("TERM");

        assert_eq!(alice.line().await, format!("+OK apopd signing off ({total} messages deleted)"));
        assert!(alice.closed().await);
        assert_eq!(bob.line().await, SHUTDOWN);
        assert!(bob.closed().await);
    });
    assert_exits_cleanly(&mut server);
    assert_eq!(fixture.message_files("alice"), Vec::<PathBuf>::new(), "the UPDATE was completed");
    assert_eq!(fixture.message_files("bob"), bob_before, "bob's session was not in UPDATE");
}

/// A session stuck writing to a client that stopped reading never sees the shutdown signal;
/// the process still exits, after the grace period, and the stuck session deletes nothing.
#[test]
fn a_session_stuck_on_a_slow_client_does_not_hold_up_exit_past_the_grace_period() {
    let fixture = Fixture::new(&format!("shutdown_grace_secs = {GRACE_SECS}"));
    // Far larger than what the socket buffers hold (the client's is pinned small below).
    let big = fixture.maildir("alice").join("new/1800000000.M1P1.big");
    std::fs::write(&big, b"0123456789abcdefghijklmnopqrstu\n".repeat(1 << 18)).unwrap();
    let before = fixture.message_files("alice");
    let mut server = ServerProcess::spawn(&fixture.config_path);
    let runtime = runtime();
    let stuck = runtime.block_on(async {
        let mut idle = Client::connect(server.addr).await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap(); // no receive-buffer autotuning
        let mut stuck = Client::start(socket.connect(server.addr).await.unwrap()).await;
        let reply = stuck.apop("alice", ALICE_APOP_SECRET).await;
        assert!(reply.starts_with("+OK alice's maildrop has 6 messages"), "{reply}");
        assert_eq!(stuck.cmd("DELE 1").await, "+OK message 1 marked for deletion");
        assert_eq!(stuck.cmd("RETR 6").await, format!("+OK {} octets", 33 << 18));
        // ...and never read again (the connection stays open until the process is gone).
        server.signal("TERM");
        assert_eq!(idle.line().await, SHUTDOWN);
        assert!(idle.closed().await);
        assert_refuses_connections(&server).await;
        stuck
    });
    assert_exits_cleanly(&mut server);
    drop(stuck);
    server.wait_for_log("shutdown grace period over; dropping the remaining sessions", 1);
    assert_eq!(fixture.message_files("alice"), before);
}
