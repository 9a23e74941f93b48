//! Shared test harness: a real apopd on an ephemeral loopback port, serving a private copy
//! of the demo fixtures, and a small line-oriented POP3 client.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod postgres;

use std::io::{BufRead, BufReader as StdBufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use apopd::config::Config;
use apopd::server::{Kind, Server};
use apopd::shared::Shared;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Set (to anything but `0`) by `.ci/run`: a missing external program is then a failure.
pub const REQUIRE_EXTERNAL: &str = "APOPD_REQUIRE_EXTERNAL";

/// Whether the external program `tool` (from the Debian package `package`) is on PATH.
///
/// When it is missing, a test returns early after this prints one line past the test
/// harness's capture, so a bare machine shows what it skipped; under `APOPD_REQUIRE_EXTERNAL`
/// (CI) a missing program panics instead, so CI can never skip silently.
pub fn have_program(tool: &str, package: &str) -> bool {
    let found =
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    if found {
        return true;
    }
    let required = std::env::var_os(REQUIRE_EXTERNAL).is_some_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "{tool} not installed, and {REQUIRE_EXTERNAL} is set: apt-get install {package} (.ci/run installs it)"
    );
    // Straight to the process's stderr: libtest captures only the print macros.
    let line = format!("skipped: {tool} not installed — apt-get install {package}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    false
}

/// Where the demo fixtures are.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/demo");

/// Demo credentials.
pub const ALICE_PASSWORD: &str = "wonderland";
pub const ALICE_APOP_SECRET: &str = "tanstaaf";
pub const BOB_PASSWORD: &str = "builder";

/// A copy of the demo in a temp dir, with a config listening on 127.0.0.1:0.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Fixture {
    /// Copy the demo; `extra` is appended to the generated config (keys not set below).
    pub fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        apopd::demo::copy_private(Path::new(FIXTURES), dir.path()).expect("copy fixtures");
        let config_path = dir.path().join("test.toml");
        // Test defaults; a key that `extra` sets itself is left out here.
        let defaults = [
            ("listen", "[\"127.0.0.1:0\"]"),
            ("mail_root", "\"mail/{user}\""),
            ("users_file", "\"users\""),
            ("apop_secrets_file", "\"apop-secrets\""),
            ("auth_failure_delay_ms", "0"),
            // Tests fail logins on purpose, all from 127.0.0.1.
            ("max_auth_failures_per_ip", "1000000"),
            // Most tests watch files where they were put; tests/flags.rs and tests/dovecot.rs
            // run with the default (moves to cur/, seen flags) and say so.
            ("pop3_no_flag_updates", "true"),
        ];
        let mut config = String::new();
        for (key, value) in defaults {
            if !extra.lines().any(|line| line.trim_start().starts_with(&format!("{key} "))) {
                config.push_str(&format!("{key} = {value}\n"));
            }
        }
        config.push_str(extra);
        config.push('\n');
        std::fs::write(&config_path, config).expect("write config");
        Fixture { dir, config_path }
    }

    /// The maildir of `user` in this copy.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }

    /// Every message file of `user` (cur/ and new/), sorted by file name.
    pub fn message_files(&self, user: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = ["cur", "new"]
            .iter()
            .flat_map(|sub| std::fs::read_dir(self.maildir(user).join(sub)).expect("read maildir"))
            .map(|e| e.expect("entry").path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        files.sort_by_key(|p| p.file_name().unwrap().to_owned());
        files
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).expect("load config")
    }
}

/// Config lines that turn on STLS and a POP3S listener with the demo certificate.
pub const TLS_CONFIG: &str = "tls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\nlisten_tls = [\"127.0.0.1:0\"]";

/// An in-process server; dropped, it stops accepting.
pub struct TestServer {
    pub fixture: Fixture,
    /// The plain POP3 listener.
    pub addr: SocketAddr,
    /// The POP3S listener, when `listen_tls` is configured.
    pub tls_addr: Option<SocketAddr>,
    /// The `/metrics` endpoint, when `metrics_listen` is configured.
    pub metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// Start on the demo copy with default test settings.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// Start with `extra` config lines.
    pub async fn start_with(extra: &str) -> Self {
        Self::start_on(Fixture::new(extra)).await
    }

    pub async fn start_on(fixture: Fixture) -> Self {
        let server = Server::bind(fixture.config()).expect("bind");
        let addrs = server.local_addrs();
        let addr = addrs.iter().find(|(_, k)| *k == Kind::Plain).expect("plain listener").0;
        let tls_addr = addrs.iter().find(|(_, k)| *k == Kind::Tls).map(|(a, _)| *a);
        let metrics_addr = server.metrics_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        TestServer { fixture, addr, tls_addr, metrics_addr, stop: Some(stop) }
    }

    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Connect to the POP3S listener.
    pub async fn connect_tls(&self) -> Client<TlsStream> {
        let tcp = TcpStream::connect(self.tls_addr.expect("listen_tls configured")).await.expect("connect");
        Client::start(tls_handshake(tcp).await).await
    }
}

/// The client side of TLS over TCP.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS client config trusting only the demo CA.
pub fn tls_client_config() -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(Path::new(FIXTURES).join("tls/ca.pem")).expect("ca.pem") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Handshake as a client verifying the demo certificate for "localhost".
pub async fn tls_handshake(tcp: TcpStream) -> TlsStream {
    let connector = tokio_rustls::TlsConnector::from(tls_client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

/// The client end of an in-process session over `tokio::io::duplex`, with no timeouts of its
/// own, so it works on a paused clock (`#[tokio::test(start_paused = true)]`).
pub struct Pipe {
    pub io: tokio::io::BufReader<tokio::io::DuplexStream>,
    pub greeting: String,
    pub session: tokio::task::JoinHandle<()>,
}

impl Pipe {
    /// Serve a session to a client at `peer`; `buffer` is the pipe's capacity each way.
    pub async fn open(shared: &Arc<Shared>, peer: &str, buffer: usize) -> Pipe {
        let (client, server) = tokio::io::duplex(buffer);
        let peer: SocketAddr = peer.parse().expect("peer address");
        let session = tokio::spawn(apopd::session::serve(server, peer, shared.clone(), false));
        let mut pipe = Pipe { io: tokio::io::BufReader::new(client), greeting: String::new(), session };
        pipe.greeting = pipe.line().await;
        assert!(pipe.greeting.starts_with("+OK "), "{}", pipe.greeting);
        pipe
    }

    /// One line, CRLF removed.
    pub async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        self.io.read_until(b'\n', &mut buf).await.expect("read");
        assert!(buf.ends_with(b"\r\n"), "not a CRLF line: {buf:?}");
        String::from_utf8_lossy(&buf[..buf.len() - 2]).into_owned()
    }

    /// Send a command, return the status line.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.io.write_all(format!("{line}\r\n").as_bytes()).await.expect("write");
        self.line().await
    }

    /// The APOP digest of this greeting's timestamp and `secret`.
    pub fn digest(&self, secret: &str) -> String {
        let ts =
            &self.greeting[self.greeting.find('<').expect("timestamp")..=self.greeting.rfind('>').expect("timestamp")];
        apopd::auth::apop::digest(ts, secret.as_bytes())
    }
}

/// A session served in-process over an in-memory pipe, as if the client were at `peer`:
/// how tests reach non-loopback policy without a non-loopback address.
pub fn session_from(fixture: &Fixture, peer: &str) -> tokio::io::DuplexStream {
    let shared = Arc::new(Shared::new(fixture.config()).expect("shared"));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = peer.parse().expect("peer address");
    tokio::spawn(apopd::session::serve(server, peer, shared, false));
    client
}

/// A TCP connection to `addr` from the local loopback address `local_ip` (any 127.x.y.z works
/// on Linux): how tests get a second client address.
pub async fn connect_from(addr: SocketAddr, local_ip: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(local_ip.parse().expect("local ip"), 0)).expect("bind a loopback address");
    socket.connect(addr).await.expect("connect")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A POP3 client speaking raw lines, for asserting exact server behaviour.
pub struct Client<S = TcpStream> {
    reader: BufReader<ReadHalf<S>>,
    writer: WriteHalf<S>,
    /// The greeting line, CRLF removed.
    pub greeting: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Client::start(stream).await
    }

    /// STLS: send it, expect +OK, handshake; the greeting is kept.
    pub async fn starttls(mut self) -> Client<TlsStream> {
        let reply = self.cmd("STLS").await;
        assert!(reply.starts_with("+OK"), "STLS: {reply}");
        let greeting = self.greeting.clone();
        let tcp = self.into_inner();
        Client::from_parts(tls_handshake(tcp).await, greeting)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Wrap a connected stream and read the greeting.
    pub async fn start(stream: S) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        let mut client = Client { reader: BufReader::new(reader), writer, greeting: String::new() };
        client.greeting = client.line().await;
        assert!(client.greeting.starts_with("+OK "), "greeting: {}", client.greeting);
        client
    }

    /// A client on an already-greeted stream (after a handshake done by the test).
    pub fn from_parts(stream: S, greeting: String) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Client { reader: BufReader::new(reader), writer, greeting }
    }

    /// Give the stream back (any buffered input is dropped).
    pub fn into_inner(self) -> S {
        self.reader.into_inner().unsplit(self.writer)
    }

    /// The `<…>` timestamp of the greeting.
    pub fn timestamp(&self) -> String {
        let start = self.greeting.find('<').expect("timestamp");
        let end = self.greeting.rfind('>').expect("timestamp");
        self.greeting[start..=end].to_owned()
    }

    /// Send raw bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Send `line` with CRLF.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Read one line; panics on EOF. CRLF removed; the line must have ended in CRLF.
    pub async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), self.reader.read_until(b'\n', &mut buf))
            .await
            .expect("reply within 30 s")
            .expect("read");
        assert!(n > 0, "connection closed while waiting for a line");
        assert!(buf.ends_with(b"\r\n"), "line not ending in CRLF: {buf:?}");
        buf.truncate(buf.len() - 2);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Send a command, return the status line.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.line().await
    }

    /// Read the rest of a multi-line response as raw bytes (dot-unstuffed, terminator removed).
    pub async fn body(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = self.reader.read_until(b'\n', &mut buf).await.expect("read");
            assert!(n > 0, "connection closed inside a multi-line response");
            assert!(buf.ends_with(b"\r\n"), "line not ending in CRLF: {buf:?}");
            if buf == b".\r\n" {
                return out;
            }
            out.extend_from_slice(buf.strip_prefix(b".").unwrap_or(&buf));
        }
    }

    /// Read the rest of a multi-line response as text lines.
    pub async fn lines(&mut self) -> Vec<String> {
        let body = self.body().await;
        String::from_utf8_lossy(&body).split("\r\n").filter(|l| !l.is_empty()).map(str::to_owned).collect()
    }

    /// Send a multi-line command; assert +OK; return the status line and the lines.
    pub async fn multi(&mut self, line: &str) -> (String, Vec<String>) {
        let status = self.cmd(line).await;
        assert!(status.starts_with("+OK"), "{line}: {status}");
        (status, self.lines().await)
    }

    /// USER/PASS; returns PASS's status line.
    pub async fn login(&mut self, user: &str, password: &str) -> String {
        let reply = self.cmd(&format!("USER {user}")).await;
        if !reply.starts_with("+OK") {
            return reply;
        }
        self.cmd(&format!("PASS {password}")).await
    }

    /// APOP with the digest of this greeting's timestamp; returns the status line.
    pub async fn apop(&mut self, user: &str, secret: &str) -> String {
        let digest = apopd::auth::apop::digest(&self.timestamp(), secret.as_bytes());
        self.cmd(&format!("APOP {user} {digest}")).await
    }

    /// True when the server has closed the connection (reads EOF within 10 s).
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(10), self.reader.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }
}

/// A message file as POP3 must deliver it: bare LF → CRLF, a final line ending added.
pub fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Run the real `apopd ARGS` under `timeout 60` with `stdin` piped in; a command that hung
/// fails the test instead of hanging it.
#[allow(dead_code)] // not every test binary runs CLI commands
pub fn run_apopd(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new("timeout")
        .args(["-k", "5", "60", env!("CARGO_BIN_EXE_apopd")])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apopd");
    // The command may exit before reading all of it (e.g. on a bad name): ignore EPIPE.
    let _ = std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), stdin);
    let out = child.wait_with_output().expect("wait for apopd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(124), "apopd {args:?} timed out; stderr: {stderr}");
    out
}

/// A separate `apopd serve` process on `config`; killed on drop.
pub struct ServerProcess {
    pub child: Child,
    /// The first plain POP3 listener.
    pub addr: SocketAddr,
    /// The first POP3S listener, if any.
    pub tls_addr: Option<SocketAddr>,
    /// The `/metrics` endpoint, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The first plain listener with `proxy_protocol = true`, if any.
    pub proxy_addr: Option<SocketAddr>,
    /// The first POP3S listener with `proxy_protocol = true`, if any.
    pub proxy_tls_addr: Option<SocketAddr>,
    /// Every line the process wrote to stderr so far (its log, `RUST_LOG=warn`).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn spawn(config: &Path) -> Self {
        Self::spawn_logging(config, "warn")
    }

    /// Like [`ServerProcess::spawn`], with `RUST_LOG` set to `filter`.
    pub fn spawn_logging(config: &Path, filter: &str) -> Self {
        Self::spawn_with(config, filter, |_| {})
    }

    /// Like [`ServerProcess::spawn_logging`], with the command adjusted by `adjust` first.
    pub fn spawn_with(config: &Path, filter: &str, adjust: impl FnOnce(&mut Command)) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_apopd"));
        command.args(["serve", "--config"]).arg(config).env("RUST_LOG", filter);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        adjust(&mut command);
        let mut child = command.spawn().expect("spawn apopd");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = StdBufReader::new(stderr).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (mut addr, mut tls_addr, mut metrics_addr) = (None, None, None);
        let (mut proxy_addr, mut proxy_tls_addr) = (None, None);
        loop {
            let line = lines.next().expect("apopd exited before listening").expect("read stderr");
            log.lock().unwrap().push(line.clone());
            if let Some(a) = line.strip_prefix("apopd: POP3 on ") {
                addr = addr.or(Some(a.parse().expect("address")));
            } else if let Some(a) = line.strip_prefix("apopd: POP3S on ") {
                tls_addr = tls_addr.or(Some(a.parse().expect("address")));
            } else if let Some(a) = line.strip_prefix("apopd: metrics on http://") {
                metrics_addr = Some(a.trim_end_matches("/metrics").parse().expect("address"));
            } else if let Some(a) = line.strip_prefix("apopd: POP3 (PROXY protocol) on ") {
                proxy_addr = proxy_addr.or(Some(a.parse().expect("address")));
            } else if let Some(a) = line.strip_prefix("apopd: POP3S (PROXY protocol) on ") {
                proxy_tls_addr = proxy_tls_addr.or(Some(a.parse().expect("address")));
            } else if line == "apopd: ready" {
                break;
            }
        }
        // Keep draining stderr so the child never blocks on a full pipe; keep what it says.
        let kept = log.clone();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|line| kept.lock().unwrap().push(line)));
        let addr = addr.expect("a plain listener");
        ServerProcess { child, addr, tls_addr, metrics_addr, proxy_addr, proxy_tls_addr, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by name (`TERM`, `INT`, `KILL`…) with kill(1).
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Wait (polling `try_wait`) up to `limit` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Wait (bounded, 10 s) until at least `count` log lines contain `needle`; returns those lines.
    pub fn wait_for_log(&self, needle: &str, count: usize) -> Vec<String> {
        for _ in 0..1000 {
            let found: Vec<String> = self.log_lines().into_iter().filter(|l| l.contains(needle)).collect();
            if found.len() >= count {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("fewer than {count} log lines containing {needle:?}; log:\n{}", self.log_lines().join("\n"));
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The addresses the shipped fail2ban filter `filter.d/<filter>` finds in `log`, which is
/// given to the real fail2ban-regex twice: as apopd writes it and behind the syslog-style
/// prefix the journal adds. The caller checks `have_program("fail2ban-regex", …)` first.
pub fn fail2ban_matches(dir: &Path, filter: &str, log: &[String]) -> Vec<String> {
    let journal = log.iter().map(|l| format!("Nov 23 15:01:13 mailhost apopd[4242]: {l}"));
    let text: Vec<String> = log.iter().cloned().chain(journal).collect();
    let path = dir.join(format!("{filter}.log"));
    std::fs::write(&path, text.join("\n") + "\n").expect("write log");
    let filter = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/fail2ban/filter.d").join(filter);
    let out = Command::new("timeout")
        .args(["-k", "5", "60", "fail2ban-regex", "--raw", "-o", "ip"])
        .arg(&path)
        .arg(filter)
        .env("LC_ALL", "C")
        .output()
        .expect("run fail2ban-regex");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fail2ban-regex failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned).collect()
}
