//! SIGHUP re-reads apopd.toml: limits, timeouts, throttle settings, networks, SASL mechanisms,
//! LOGIN-DELAY, language, host name, transcripts, listeners and the metrics endpoint take
//! effect for new connections; sessions already open keep the settings they started with; a
//! config that does not load, or a listener that cannot be bound, is rejected whole with a
//! log line and the old configuration stays. Each test drives a real `apopd serve` process.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOO_MANY: &str = "-ERR [SYS/TEMP] too many connections; try again later";
const TOO_MANY_FROM_YOU: &str = "-ERR [SYS/TEMP] too many connections from your address; try again later";
const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";
const RELOADED: &str = "SIGHUP: configuration reloaded";
const REJECTED: &str = "SIGHUP: keeping the old configuration";

/// A server process whose config file the test rewrites before each SIGHUP.
struct Reloadable {
    fixture: Fixture,
    server: ServerProcess,
    /// The config as the fixture wrote it (every key `with` may add is absent from it).
    base: String,
    reloads: usize,
    rejections: usize,
}

impl Reloadable {
    fn start(base_extra: &str) -> Self {
        let fixture = Fixture::new(base_extra);
        let base = std::fs::read_to_string(&fixture.config_path).unwrap();
        let server = ServerProcess::spawn_logging(&fixture.config_path, "info");
        Reloadable { fixture, server, base, reloads: 0, rejections: 0 }
    }

    /// The base config with `replace` (whole `key = value` lines) put in place of the base's
    /// lines for the same keys, and `extra` added.
    fn config(&self, replace: &[&str], extra: &str) -> String {
        let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_owned();
        let replaced: Vec<String> = replace.iter().map(|l| key(l)).collect();
        let mut text: String =
            self.base.lines().filter(|l| !replaced.contains(&key(l))).map(|l| format!("{l}\n")).collect();
        // Top-level keys must come before any table the base ends with; the base has none.
        for line in replace {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(extra);
        text.push('\n');
        text
    }

    fn signal_with(&mut self, text: &str) {
        std::fs::write(&self.fixture.config_path, text).unwrap();
        self.server.signal("HUP");
    }

    /// Rewrite the config and SIGHUP; wait until the reload is logged.
    fn reload(&mut self, replace: &[&str], extra: &str) {
        let text = self.config(replace, extra);
        self.signal_with(&text);
        self.reloads += 1;
        self.server.wait_for_log(RELOADED, self.reloads);
    }

    /// Rewrite the config with `text` and SIGHUP; wait until the rejection is logged; return its line.
    fn reject(&mut self, text: &str) -> String {
        self.signal_with(text);
        self.rejections += 1;
        self.server.wait_for_log(REJECTED, self.rejections).pop().unwrap()
    }

    async fn connect(&self) -> Client {
        Client::connect(self.server.addr).await
    }
}

/// The addresses in log lines that contain `needle`, from their `addr=` field, in order.
fn logged_addrs(server: &ServerProcess, needle: &str) -> Vec<SocketAddr> {
    server
        .log_lines()
        .iter()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.split("addr=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

fn capa_login_delay(lines: &[String]) -> Vec<String> {
    lines.iter().filter(|l| l.starts_with("LOGIN-DELAY")).cloned().collect()
}

/// Everything the server sends on a fresh connection until it closes (bounded: 10 s).
async fn everything_until_eof(addr: SocketAddr, from: &str) -> String {
    let mut stream = connect_from(addr, from).await;
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all)).await.expect("closed");
    String::from_utf8_lossy(&all).trim_end().to_owned()
}

#[tokio::test]
async fn limits_timeouts_and_the_throttle_apply_to_new_connections_and_open_sessions_keep_theirs() {
    let mut r = Reloadable::start("");
    // Opened under the old timeouts: it keeps them.
    let mut before = r.connect().await;

    // (idle_timeout_secs is read the same way, but RFC 1939 puts it at 600 s or more.)
    r.reload(&["auth_timeout_secs = 1"], "");
    let mut after = r.connect().await;
    assert_eq!(after.line().await, "-ERR autologout: idle too long", "the new auth_timeout_secs");
    assert!(after.closed().await);
    assert_eq!(before.cmd("NOOP").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");
    assert_eq!(before.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK, "the old session kept its timeouts");
    assert!(before.cmd("QUIT").await.starts_with("+OK"));
    assert!(before.closed().await);
    // Its place is given back just after the close the client saw.
    tokio::time::sleep(Duration::from_millis(200)).await;

    r.reload(&["max_connections = 1"], "");
    let mut alice = r.connect().await;
    assert_eq!(alice.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    assert_eq!(everything_until_eof(r.server.addr, "127.0.0.1").await, TOO_MANY, "the new max_connections");

    r.reload(&["max_connections_per_ip = 1"], "");
    assert_eq!(everything_until_eof(r.server.addr, "127.0.0.1").await, TOO_MANY_FROM_YOU);
    let mut other = Client::start(connect_from(r.server.addr, "127.0.0.2").await).await;
    assert_eq!(other.cmd("NOOP").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");
    drop((alice, other));

    r.reload(&["max_auth_failures_per_ip = 1", "auth_failure_delay_ms = 400"], "");
    let mut c = Client::start(connect_from(r.server.addr, "127.0.0.3").await).await;
    let started = Instant::now();
    assert_eq!(c.login("alice", "wrong").await, "-ERR [AUTH] invalid user name or password");
    assert!(started.elapsed() >= Duration::from_millis(350), "the new auth_failure_delay_ms");
    let refused = c.login("alice", ALICE_PASSWORD).await;
    assert!(
        refused.starts_with("-ERR [LOGIN-DELAY] too many failed logins"),
        "the new max_auth_failures_per_ip: {refused}"
    );

    // The failures are remembered across a reload that keeps the throttle on.
    r.reload(&["max_auth_failures_per_ip = 1"], "");
    let mut again = Client::start(connect_from(r.server.addr, "127.0.0.3").await).await;
    assert!(again.login("alice", ALICE_PASSWORD).await.starts_with("-ERR [LOGIN-DELAY]"));
}

#[tokio::test]
async fn networks_sasl_login_delay_language_host_name_and_transcripts_apply_to_new_connections() {
    let mut r = Reloadable::start("");
    let mut c = r.connect().await;
    let (_, caps) = c.multi("CAPA").await;
    assert!(caps.contains(&"SASL PLAIN LOGIN".to_owned()), "{caps:?}");
    assert_eq!(capa_login_delay(&caps), ["LOGIN-DELAY 0"]);

    r.reload(&["lab_networks = [\"127.0.0.0/8\"]", "sasl_mechanisms = [\"PLAIN\"]"], "");
    let (_, caps) = r.connect().await.multi("CAPA").await;
    assert!(caps.contains(&"SASL PLAIN".to_owned()), "the new sasl_mechanisms: {caps:?}");
    assert_eq!(capa_login_delay(&caps), Vec::<String>::new(), "the new lab_networks: no throttle here");
    // The session from before still offers what it offered.
    let (_, caps) = c.multi("CAPA").await;
    assert!(caps.contains(&"SASL PLAIN LOGIN".to_owned()), "{caps:?}");

    let transcripts = r.fixture.dir.path().join("transcripts");
    r.reload(
        &[
            "login_delay_secs = 30",
            "language = \"ja\"",
            "hostname = \"reloaded.example\"",
            "transcript_dir = \"transcripts\"",
        ],
        "",
    );
    let mut c = r.connect().await;
    assert!(c.greeting.starts_with("+OK apopd POP3 サーバー準備完了 <"), "the new language: {}", c.greeting);
    assert!(c.greeting.ends_with("@reloaded.example>"), "the new hostname: {}", c.greeting);
    let (_, caps) = c.multi("CAPA").await;
    assert_eq!(capa_login_delay(&caps), ["LOGIN-DELAY 30"], "the new login_delay_secs");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert!(c.closed().await);
    // The transcript writer is a thread behind a queue: wait (bounded) for the file.
    let mut files = Vec::new();
    for _ in 0..200 {
        files = std::fs::read_dir(&transcripts).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        if !files.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(files.len(), 1, "the new transcript_dir gets the new session's transcript");
}

/// Send a PROXY v1 header for a client at 192.0.2.7 and return what the server says first.
async fn through_proxy(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 110\r\n").await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.expect("answer or close");
    String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).into_owned()
}

fn http_status(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut all = String::new();
    stream.read_to_string(&mut all)?;
    Ok(all)
}

#[tokio::test]
async fn listeners_and_the_metrics_endpoint_are_added_and_removed_and_a_bad_config_changes_nothing() {
    let mut r = Reloadable::start("");
    let plain = r.server.addr;

    r.reload(
        &[
            "listen = [\"127.0.0.1:0\", { addr = \"127.0.0.1:0\", proxy_protocol = true }]",
            "proxy_trusted_networks = [\"127.0.0.1/32\"]",
            "metrics_listen = \"127.0.0.1:0\"",
        ],
        "",
    );
    let proxied = *logged_addrs(&r.server, "kind=ProxyPlain").last().expect("the new PROXY listener is logged");
    let metrics = *logged_addrs(&r.server, "metrics listening").last().expect("the metrics listener is logged");
    assert!(through_proxy(proxied).await.starts_with("+OK apopd POP3 server ready"));
    assert!(
        http_status(metrics).unwrap().starts_with("HTTP/1.0 200")
            || http_status(metrics).unwrap().starts_with("HTTP/1.1 200")
    );
    // The listener that stayed kept its socket (and its port).
    assert!(r.connect().await.greeting.starts_with("+OK"));
    assert_eq!(plain, r.server.addr);

    // The auth cache settings: on by default (a repeat login is a hit), then off.
    let hits = |text: &str| {
        let line = text.lines().find(|l| l.starts_with("apopd_auth_cache_lookups_total{result=\"hit\"}"));
        line.and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok()).unwrap_or_else(|| panic!("{text}"))
    };
    let addr = r.server.addr;
    let login_twice = async || {
        for _ in 0..2 {
            let mut c = Client::connect(addr).await;
            assert_eq!(c.login("alice", ALICE_PASSWORD).await, ALICE_OK);
            assert!(c.cmd("QUIT").await.starts_with("+OK"));
            assert!(c.closed().await);
        }
    };
    let before = hits(&http_status(metrics).unwrap());
    login_twice().await;
    assert_eq!(hits(&http_status(metrics).unwrap()), before + 1.0);
    let listeners = [
        "listen = [\"127.0.0.1:0\", { addr = \"127.0.0.1:0\", proxy_protocol = true }]",
        "proxy_trusted_networks = [\"127.0.0.1/32\"]",
        "metrics_listen = \"127.0.0.1:0\"",
    ];
    r.reload(&[listeners[0], listeners[1], listeners[2], "auth_cache_ttl_secs = 0"], "");
    login_twice().await;
    assert_eq!(hits(&http_status(metrics).unwrap()), before + 1.0, "the new auth_cache_ttl_secs = 0: no hit");

    r.reload(
        &[
            "listen = [\"127.0.0.1:0\", { addr = \"127.0.0.1:0\", proxy_protocol = true }]",
            "proxy_trusted_networks = [\"10.0.0.0/8\"]",
            "metrics_listen = \"127.0.0.1:0\"",
        ],
        "",
    );
    assert_eq!(through_proxy(proxied).await, "", "the new proxy_trusted_networks: closed without a greeting");

    // A config that does not validate, one that is not TOML, and one whose new listener cannot
    // be bound: each is rejected whole, and the server goes on as it was.
    let bad = r.config(&["max_connections = 0"], "");
    assert!(r.reject(&bad).contains("max_connections: must be at least 1"));
    assert!(r.reject("listen = [").contains(REJECTED));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let clash = r.config(&[&format!("listen = [\"127.0.0.1:0\", \"{taken_addr}\"]"), "login_delay_secs = 7"], "");
    let line = r.reject(&clash);
    assert!(line.contains(&format!("cannot listen on {taken_addr}")), "{line}");
    let (_, caps) = r.connect().await.multi("CAPA").await;
    assert_eq!(capa_login_delay(&caps), ["LOGIN-DELAY 0"], "nothing of the rejected config applied");
    assert!(http_status(metrics).is_ok(), "the metrics endpoint is still there");
    drop(taken);

    // Back to the start: the PROXY listener and the metrics endpoint are gone.
    r.reload(&[], "");
    assert!(TcpStream::connect(proxied).await.is_err(), "the removed listener no longer accepts");
    assert!(http_status(metrics).is_err(), "the removed metrics endpoint no longer accepts");
    assert!(r.connect().await.greeting.starts_with("+OK"));

    // Keys read only at start are named, and the rest still applies.
    r.reload(&["log_format = \"json\"", "login_delay_secs = 9"], "");
    r.server.wait_for_log("SIGHUP: log_format changed; it takes effect at the next restart", 1);
    let (_, caps) = r.connect().await.multi("CAPA").await;
    assert_eq!(capa_login_delay(&caps), ["LOGIN-DELAY 9"]);
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Make the fixture readable by `nobody` (the config is re-read after the privilege drop).
fn open_to_nobody(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("test.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test]
async fn a_privileged_port_the_process_can_no_longer_bind_is_refused_clearly() {
    let unprivileged_from: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if unprivileged_from <= 1 {
        eprintln!(
            "skipped: every port is unprivileged here (net.ipv4.ip_unprivileged_port_start = {unprivileged_from})"
        );
        return;
    }
    // As root, serve drops to nobody after binding; otherwise the process never had the right.
    let mut r = Reloadable::start(if is_root() { "run_as_user = \"nobody\"" } else { "" });
    open_to_nobody(r.fixture.dir.path());
    let text = r.config(&["listen = [\"127.0.0.1:0\", \"127.0.0.1:1\"]"], "");
    let line = r.reject(&text);
    assert!(line.contains("cannot listen on 127.0.0.1:1: port 1 is privileged"), "{line}");
    assert!(line.contains("restart it to listen there"), "{line}");
    assert!(r.connect().await.greeting.starts_with("+OK"), "still serving the old listeners");
}

#[tokio::test]
async fn every_key_changed_in_the_file_is_reloaded_and_named() {
    let mut r = Reloadable::start("");
    // Every key here differs from the base (default) config; the reload must pick up each one
    // into the configuration new connections get, and say which changed.
    let changed = [
        "idle_timeout_secs = 700",
        "write_timeout_secs = 33",
        "auth_failure_window_secs = 99",
        "auth_failure_delay_max_ms = 4321",
        "plaintext_auth_networks = [\"10.0.0.0/8\"]",
        "transcript_max_bytes = 4096",
        "transcript_max_files = 7",
        "pop3_no_flag_updates = false",
        "max_message_size = 100",
        "lab_hints = true",
        "shutdown_grace_secs = 5",
        "auth_cache_max_entries = 10",
        "uidl_format = \"basename\"",
    ];
    r.reload(&changed, "");
    let line = r.server.wait_for_log(RELOADED, 1).pop().unwrap();
    let mut expected: Vec<&str> = changed.iter().map(|l| l.split(' ').next().unwrap()).collect();
    expected.sort_unstable();
    assert!(line.contains(&format!("(changed: {})", expected.join(", "))), "{line}");

    // Two of them seen from a new session: every demo message is over 100 octets now, and
    // errors carry the lab hints.
    let mut c = r.connect().await;
    assert!(c.cmd("FROB").await.starts_with("-ERR unknown command Hint: the POP3 commands are"));
    assert_eq!(c.apop("alice", ALICE_APOP_SECRET).await, "+OK alice's maildrop has 0 messages (0 octets)");
}
