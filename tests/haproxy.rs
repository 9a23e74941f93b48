//! PROXY protocol behind a real HAProxy (Debian `haproxy`, a throw-away instance on loopback
//! ports started by the test): the client's address reaches apopd's logs and throttle; untrusted
//! senders, garbage and silence are closed without a greeting; and docs/scaling.md's reference
//! deployment in miniature (HAProxy balancing two nodes on one mail root).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback port nobody listens on right now (for HAProxy's frontends).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A running `haproxy -db`, killed (by PID) on drop.
struct Haproxy {
    child: Child,
    /// Frontend → apopd's plain PROXY listener with `send-proxy` (v1).
    v1: SocketAddr,
    /// Frontend → the same listener with `send-proxy-v2`, health-checked with a POP3 greeting.
    v2: SocketAddr,
    /// Frontend → apopd's POP3S PROXY listener with `send-proxy-v2` (TLS passes through).
    v2_tls: Option<SocketAddr>,
}

impl Haproxy {
    fn start(dir: &Path, backend: SocketAddr, tls_backend: Option<SocketAddr>) -> Haproxy {
        let (v1, v2) = (free_port(), free_port());
        let mut config = format!(
            "global\n  pidfile {pid}\n  maxconn 512\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend v1\n  bind 127.0.0.1:{v1}\n  default_backend v1\n\
             backend v1\n  server apopd {backend} send-proxy\n\
             frontend v2\n  bind 127.0.0.1:{v2}\n  default_backend v2\n\
             backend v2\n  option tcp-check\n  tcp-check expect rstring ^\\+OK\n  tcp-check send QUIT\\r\\n\n\
             \x20 server apopd {backend} send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 1\n",
            pid = dir.join("haproxy.pid").display(),
        );
        let tls = tls_backend.map(|tls_backend| {
            let port = free_port();
            config.push_str(&format!(
                "frontend v2tls\n  bind 127.0.0.1:{port}\n  default_backend v2tls\n\
                 backend v2tls\n  server apopd {tls_backend} send-proxy-v2\n"
            ));
            port
        });
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let proxy = Haproxy { child, v1: addr(v1), v2: addr(v2), v2_tls: tls.map(addr) };
        for port in [v1, v2].into_iter().chain(tls) {
            let up = (0..500).any(|_| {
                std::thread::sleep(Duration::from_millis(10));
                std::net::TcpStream::connect(addr(port)).is_ok()
            });
            assert!(up, "haproxy does not listen on {port}");
        }
        proxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start HAProxy balancing (round robin, `send-proxy-v2`, POP3 health checks) over `nodes`,
/// with the configuration docs/scaling.md shows; returns it and the frontend address.
fn balance(dir: &Path, nodes: &[SocketAddr]) -> (Child, SocketAddr) {
    let front = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut config = format!(
        "global\n  pidfile {pid}\n  maxconn 512\n\
         defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         frontend pop3\n  bind {front}\n  default_backend apopd\n\
         backend apopd\n  balance roundrobin\n  option tcp-check\n  tcp-check expect rstring ^\\+OK\n\
         \x20 tcp-check send QUIT\\r\\n\n\
         \x20 default-server send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 1\n",
        pid = dir.join("haproxy.pid").display(),
    );
    for (i, node) in nodes.iter().enumerate() {
        config.push_str(&format!("  server node{i} {node}\n"));
    }
    let path = dir.join("balance.cfg");
    std::fs::write(&path, config).expect("write balance.cfg");
    let child = Command::new("haproxy").arg("-f").arg(&path).arg("-db").stdin(Stdio::null()).spawn().expect("haproxy");
    let up = (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::net::TcpStream::connect(front).is_ok()
    });
    assert!(up, "haproxy does not listen on {front}");
    (child, front)
}

/// The shipped fail2ban filter, run by fail2ban-regex over `log` (as written and as the journal
/// shows it), finds `count` failures per form, all from `client`.
fn fail2ban_bans_only(fixture: &Fixture, log: &[String], client: &str, count: usize) {
    if !have_program("fail2ban-regex", "fail2ban") {
        return;
    }
    let ips = fail2ban_matches(fixture.dir.path(), "apopd.conf", log);
    assert_eq!(ips, vec![client; 2 * count], "proxied failures, client address only");
}

/// A fixture with a plain listener, a PROXY listener and (with `tls`) a POP3S PROXY listener.
fn fixture(trusted: &str, extra: &str) -> Fixture {
    Fixture::new(&format!(
        "listen = [\"127.0.0.1:0\", {{ addr = \"127.0.0.1:0\", proxy_protocol = true }}]\n\
         proxy_trusted_networks = [\"{trusted}\"]\n{extra}"
    ))
}

/// Read what the server sends until it closes (bounded by 10 s): "" means closed without a word.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "still open after 10 s; got {got:?}");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn clients_behind_haproxy_keep_their_address_in_logs_and_throttle() {
    if !have_program("haproxy", "haproxy") {
        return;
    }
    let fixture = fixture("127.0.0.1/32", "max_auth_failures_per_ip = 2\nmax_connections_per_ip = 3");
    let server = ServerProcess::spawn(&fixture.config_path);
    let haproxy = Haproxy::start(fixture.dir.path(), server.proxy_addr.expect("proxy listener"), None);

    // v1 and v2 each carry 127.0.0.9 through; two failures block 127.0.0.9 …
    for front in [haproxy.v1, haproxy.v2] {
        let mut client = Client::start(connect_from(front, "127.0.0.9").await).await;
        assert!(client.login("alice", "wrong").await.starts_with("-ERR [AUTH]"));
    }
    let failures = server.wait_for_log("authentication failed", 2);
    assert!(failures.iter().all(|l| l.contains("peer=127.0.0.9") && l.contains("via=127.0.0.1:")), "{failures:?}");
    fail2ban_bans_only(&fixture, &server.log_lines(), "127.0.0.9", 2);
    let mut blocked = Client::start(connect_from(haproxy.v2, "127.0.0.9").await).await;
    let reply = blocked.login("alice", ALICE_PASSWORD).await;
    assert!(reply.starts_with("-ERR [LOGIN-DELAY]"), "127.0.0.9 is throttled: {reply}");
    server.wait_for_log("login refused: too many failed logins", 1);
    assert!(server.log_lines().iter().any(|l| l.contains("too many failed logins") && l.contains("peer=127.0.0.9")));

    // … but neither another client behind the same proxy nor the proxy's own address.
    for (front, from) in [(haproxy.v1, "127.0.0.10"), (haproxy.v2, "127.0.0.11")] {
        let mut client = Client::start(connect_from(front, from).await).await;
        assert!(client.login("bob", BOB_PASSWORD).await.starts_with("+OK"), "{from}");
        assert!(client.cmd("QUIT").await.starts_with("+OK"));
    }
    let mut direct = Client::start(connect_from(server.addr, "127.0.0.1").await).await;
    assert!(direct.login("bob", BOB_PASSWORD).await.starts_with("+OK"), "the proxy's own address is not throttled");
    assert!(direct.cmd("QUIT").await.starts_with("+OK"));

    // The per-IP limit counts the client, not the proxy: 3 for 127.0.0.12, the 4th refused,
    // while 127.0.0.13 behind the same proxy still gets in.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Client::start(connect_from(haproxy.v1, "127.0.0.12").await).await);
    }
    let mut fourth = connect_from(haproxy.v1, "127.0.0.12").await;
    let refused = read_until_closed(&mut fourth).await;
    assert!(refused.starts_with("-ERR [SYS/TEMP] too many connections from your address"), "{refused:?}");
    let other = Client::start(connect_from(haproxy.v1, "127.0.0.13").await).await;
    drop((held, other));

    // The health check (v2 LOCAL header, expects the greeting) keeps the v2 backend up: after
    // several check intervals it still serves, and apopd logged no header trouble.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut client = Client::start(connect_from(haproxy.v2, "127.0.0.14").await).await;
    assert!(client.cmd("QUIT").await.starts_with("+OK"));
    assert!(!server.log_lines().iter().any(|l| l.contains("PROXY header")), "{:#?}", server.log_lines());
}

#[tokio::test]
async fn pop3s_behind_haproxy_sees_the_client() {
    if !have_program("haproxy", "haproxy") {
        return;
    }
    let fixture = fixture(
        "127.0.0.0/8",
        "tls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\n\
         listen_tls = [{ addr = \"127.0.0.1:0\", proxy_protocol = true }]",
    );
    let server = ServerProcess::spawn(&fixture.config_path);
    let backend = server.proxy_addr.expect("proxy listener");
    let haproxy = Haproxy::start(fixture.dir.path(), backend, server.proxy_tls_addr);
    let tcp = connect_from(haproxy.v2_tls.expect("tls frontend"), "127.0.0.9").await;
    let mut client = Client::start(tls_handshake(tcp).await).await;
    assert!(client.login("alice", "wrong").await.starts_with("-ERR [AUTH]"));
    let failures = server.wait_for_log("authentication failed", 1);
    assert!(failures[0].contains("peer=127.0.0.9") && failures[0].contains("via=127.0.0.1:"), "{failures:?}");
}

#[tokio::test]
async fn untrusted_garbage_and_silent_senders_get_no_greeting() {
    let fixture = fixture("127.0.0.1/32", "");
    let server = ServerProcess::spawn(&fixture.config_path);
    let proxy_addr = server.proxy_addr.expect("proxy listener");

    // A well-formed header from an address outside proxy_trusted_networks.
    let mut untrusted = connect_from(proxy_addr, "127.0.0.9").await;
    untrusted.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 110\r\n").await.expect("write");
    assert_eq!(read_until_closed(&mut untrusted).await, "");
    server.wait_for_log("outside proxy_trusted_networks", 1);

    // Garbage, and an over-long v1 line, from the trusted address.
    for junk in [b"USER alice\r\nPASS wonderland\r\n".to_vec(), [b"PROXY TCP4 ".as_slice(), &[b'9'; 300]].concat()] {
        let mut trusted = connect_from(proxy_addr, "127.0.0.1").await;
        let _ = trusted.write_all(&junk).await;
        assert_eq!(read_until_closed(&mut trusted).await, "");
    }
    server.wait_for_log("does not start with a PROXY header", 1);
    server.wait_for_log("PROXY header too long", 1);

    // A header that never completes: closed after the 3 s header timeout.
    let mut silent = connect_from(proxy_addr, "127.0.0.1").await;
    silent.write_all(b"PROXY TCP4 127.0.0.9").await.expect("write");
    let started = std::time::Instant::now();
    assert_eq!(read_until_closed(&mut silent).await, "");
    assert!(started.elapsed() >= Duration::from_secs(2), "closed before the timeout");
    server.wait_for_log("no complete PROXY header within 3 s", 1);

    // The plain listener next to it is unaffected: a PROXY line there is just a bad command.
    let mut plain = Client::connect(server.addr).await;
    assert!(plain.cmd("PROXY TCP4 192.0.2.1 127.0.0.1 1234 110").await.starts_with("-ERR"));
}

#[tokio::test]
async fn reference_deployment_in_miniature() {
    if !have_program("haproxy", "haproxy") {
        return;
    }
    let Some(bin) = postgres::postgres_bin() else { return };
    // Two nodes on one mail root behind one HAProxy, accounts in one PostgreSQL: the
    // reference deployment of docs/scaling.md, in miniature.
    let cluster = postgres::Cluster::start(bin);
    let rows =
        format!("INSERT INTO pop3_users (name, password) VALUES ('alice', '{}');", postgres::argon2(ALICE_PASSWORD));
    cluster.sql(&format!("{}\n{rows}", postgres::documented_schema())).await;
    let users = format!("[users]\nbackend = \"postgres\"\nurl = \"{}\"\ntimeout_ms = 1500", cluster.url());
    let fixture = fixture("127.0.0.1/32", &users);
    let nodes = [ServerProcess::spawn(&fixture.config_path), ServerProcess::spawn(&fixture.config_path)];
    let backends: Vec<SocketAddr> = nodes.iter().map(|n| n.proxy_addr.expect("proxy listener")).collect();
    let (haproxy, front) = balance(fixture.dir.path(), &backends);
    let _haproxy = Haproxy { child: haproxy, v1: front, v2: front, v2_tls: None };

    // Round robin (once the health checks have seen both nodes): failed logins from 127.0.0.9
    // land on both nodes, and both see the client.
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..6 {
        let mut c = Client::start(connect_from(front, "127.0.0.9").await).await;
        assert!(c.login("alice", "wrong").await.starts_with("-ERR [AUTH]"));
    }
    for node in &nodes {
        let seen = node.wait_for_log("authentication failed", 1);
        assert!(seen[0].contains("peer=127.0.0.9"), "{seen:?}");
    }
    // One session per mailbox: while one node holds alice, the next connection (on either
    // node; tests/two_nodes.rs pins the cross-node case) gets [IN-USE].
    let mut first = Client::start(connect_from(front, "127.0.0.10").await).await;
    assert!(first.login("alice", ALICE_PASSWORD).await.starts_with("+OK alice's maildrop has 5 messages"));
    let mut second = Client::start(connect_from(front, "127.0.0.11").await).await;
    assert!(second.login("alice", ALICE_PASSWORD).await.starts_with("-ERR [IN-USE]"));
    // Delete on one node, the other serves what is left.
    assert!(first.cmd("DELE 1").await.starts_with("+OK"));
    assert!(first.cmd("QUIT").await.starts_with("+OK"));
    let mut third = Client::start(connect_from(front, "127.0.0.12").await).await;
    assert!(third.login("alice", ALICE_PASSWORD).await.starts_with("+OK alice's maildrop has 4 messages"));
    assert!(third.cmd("QUIT").await.starts_with("+OK"));
    assert!(!nodes.iter().flat_map(|n| n.log_lines()).any(|l| l.contains("PROXY header")));
    // The accounts really are the database's: a user only the users file knows is unknown.
    let mut bob = Client::start(connect_from(front, "127.0.0.13").await).await;
    assert!(bob.login("bob", BOB_PASSWORD).await.starts_with("-ERR [AUTH]"));
}
