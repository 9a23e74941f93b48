//! Load, not timing: 2,000 idle connections to a real `apopd serve` process, while a normal
//! client logs in and reads a message; and what each idle connection costs in memory.

mod common;
use common::*;

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

const IDLE: usize = 2000;
/// Both ends of every connection live on this machine, plus some slack.
const FDS_NEEDED: u64 = 4500;
/// A generous bound, so load on the machine cannot make it flake; the real figure is printed.
const MAX_BYTES_PER_CONNECTION: u64 = 256 * 1024;

/// The soft limit on open files, from /proc/self/limits.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    let soft = line["Max open files".len()..].split_whitespace().next().unwrap();
    soft.parse().unwrap_or(u64::MAX) // "unlimited"
}

/// VmRSS of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// How many descriptors process `pid` has open.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Open a connection and wait for its greeting, so the server-side session surely exists.
async fn idle_connection(server: &ServerProcess) -> BufReader<TcpStream> {
    let mut io = BufReader::new(TcpStream::connect(server.addr).await.expect("connect"));
    let mut greeting = String::new();
    tokio::time::timeout(Duration::from_secs(30), io.read_line(&mut greeting))
        .await
        .expect("greeting within 30 s")
        .expect("read greeting");
    assert!(greeting.starts_with("+OK apopd POP3 server ready"), "{greeting:?}");
    io
}

async fn retrieve_a_message(server: &ServerProcess, fixture: &Fixture) {
    let mut c = Client::connect(server.addr).await;
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, "+OK alice's maildrop has 5 messages (3038 octets)");
    let file = std::fs::read(&fixture.message_files("alice")[2]).unwrap();
    assert_eq!(c.cmd("RETR 3").await, format!("+OK {} octets", crlf(&file).len()));
    assert_eq!(c.body().await, crlf(&file));
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    assert!(c.closed().await);
}

#[test]
fn two_thousand_idle_connections_do_not_stop_a_real_client() {
    let limit = open_files_limit();
    if limit < FDS_NEEDED {
        println!("SKIPPED: the open-files soft limit is {limit}, below the {FDS_NEEDED} this test needs");
        return;
    }
    let fixture = Fixture::new("max_connections = 2100\nmax_connections_per_ip = 2100");
    let server = ServerProcess::spawn(&fixture.config_path);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        // Warm up (first login, allocator arenas, the blocking pool) before the baseline.
        retrieve_a_message(&server, &fixture).await;
        let before = rss(server.pid());
        let fds_before = fds(server.pid());

        let mut idle = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            idle.push(idle_connection(&server).await);
        }
        let after = rss(server.pid());
        // (A descriptor or two of the warm-up session may still have been open at the baseline.)
        let held = fds(server.pid());
        assert!(held + 10 >= fds_before + IDLE, "{held} descriptors: the server does not hold {IDLE} connections");
        let per_connection = after.saturating_sub(before) / IDLE as u64;
        println!(
            "apopd VmRSS: {} KiB before, {} KiB with {IDLE} idle connections: {per_connection} bytes ({:.1} KiB) each",
            before / 1024,
            after / 1024,
            per_connection as f64 / 1024.0
        );
        assert!(
            per_connection < MAX_BYTES_PER_CONNECTION,
            "{per_connection} bytes per idle connection (bound: {MAX_BYTES_PER_CONNECTION})"
        );

        // Every idle connection counts: all 2,000 plus this one fit under max_connections = 2100.
        retrieve_a_message(&server, &fixture).await;

        drop(idle);
        // Every session ends and closes its socket (bounded: 500 × 20 ms).
        let mut open = fds(server.pid());
        for _ in 0..500 {
            if open <= fds_before + 5 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            open = fds(server.pid());
        }
        assert!(open <= fds_before + 5, "{open} descriptors still open after closing (before: {fds_before})");
        retrieve_a_message(&server, &fixture).await;
    });
}
