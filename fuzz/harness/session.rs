//! The `session` fuzz target's harness, shared with `tests/fuzz_regressions.rs` so the
//! committed corpus is replayed exactly as the fuzzer ran it.
//!
//! One [`SessionHarness`] serves every input: a private copy of `fixtures/demo`, one
//! `Shared` (users loaded, dummy argon2 hash made, TLS loaded: all once) and one
//! current-thread tokio runtime. Per input, a whole session runs over `tokio::io::duplex`.
//!
//! Input layout: byte 0 is the mode, the rest is what the client sends.
//! - bit 0 set: log in first with `APOP alice <digest of the greeting's timestamp>`, so the
//!   input runs in TRANSACTION (APOP costs one MD5; USER/PASS would cost an argon2 run);
//! - bits 1-7: 0 writes the input at once, n > 0 writes it in n-byte pieces, yielding to
//!   the server between pieces (other line framings).
//!
//! Isolation between inputs: QUIT in TRANSACTION legitimately deletes DELE'd messages, so
//! after every run the harness checks each original message file and writes back the
//! missing ones (a few `stat` calls per run; copying the maildir or building a `Shared` per
//! run would cost far more: `Shared::new` alone hashes the dummy password with argon2).
//! The count of missing files must equal the count the server announced in
//! `+OK apopd signing off (N message(s) deleted)`, and be 0 when there was no such line: a
//! dropped connection, an autologout or a too-many-errors close never deletes anything.
//! Each run comes from a fresh loopback address (127.x.y.z), so the failed-login throttle,
//! which counts per IP, starts clean every run and a run never depends on the ones before;
//! its per-IP limit is kept small so an input full of `USER`/`PASS` pairs costs at most a
//! few argon2 verifications.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use apopd::config::Config;
use apopd::shared::Shared;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// alice's APOP secret in the demo fixtures.
const ALICE_APOP_SECRET: &str = "tanstaaf";
/// A session fed a finite input and closed must end well within this.
const SESSION_LIMIT: Duration = Duration::from_secs(30);
/// The longest status line (RFC 2449).
const MAX_STATUS_LINE: usize = 512;

/// The config of the harness' private demo copy.
const CONFIG: &str = r#"
listen = ["127.0.0.1:0"]
mail_root = "mail/{user}"
users_file = "users"
apop_secrets_file = "apop-secrets"
tls_cert = "tls/cert.pem"
tls_key = "tls/key.pem"
hostname = "fuzz.invalid"
auth_failure_delay_ms = 0
max_auth_failures_per_ip = 8
sasl_mechanisms = ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]
# Deletions are counted by path: keep files where they are (no new/ to cur/ moves).
pop3_no_flag_updates = true
"#;

/// Everything the session runs share; see the module docs.
pub struct SessionHarness {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    /// Every message file of the copy, with its bytes, for restoring after a QUIT.
    messages: Vec<(PathBuf, Vec<u8>)>,
    /// The next client address.
    next_peer: AtomicU32,
}

impl SessionHarness {
    /// Copy the demo at `fixtures` into `workdir` (which must not exist or be empty) and load it.
    pub fn new(fixtures: &Path, workdir: &Path) -> Self {
        apopd::demo::copy_private(fixtures, workdir).expect("copy the demo fixtures");
        let config_path = workdir.join("fuzz.toml");
        std::fs::write(&config_path, CONFIG).expect("write the config");
        let config = Config::load(&config_path).expect("load the config");
        let shared = Arc::new(Shared::new(config).expect("build Shared"));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let mut messages = Vec::new();
        for user in ["alice", "bob"] {
            for sub in ["cur", "new"] {
                let dir = workdir.join("mail").join(user).join(sub);
                for entry in std::fs::read_dir(&dir).expect("read maildir") {
                    let path = entry.expect("maildir entry").path();
                    let bytes = std::fs::read(&path).expect("read message");
                    messages.push((path, bytes));
                }
            }
        }
        assert!(messages.len() >= 7, "the demo has 7 messages, found {}", messages.len());
        SessionHarness { shared, runtime, messages, next_peer: AtomicU32::new(1) }
    }

    /// Run one session on `data` (mode byte, then client bytes); panics when a check fails.
    /// Returns how many messages the session deleted (and the harness restored).
    pub fn run(&self, data: &[u8]) -> usize {
        let Some((&mode, input)) = data.split_first() else { return 0 };
        let login = mode & 1 == 1;
        let piece = usize::from(mode >> 1);
        let n = self.next_peer.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x7f00_0000 | n)), 40000);

        let output = self
            .runtime
            .block_on(async { tokio::time::timeout(SESSION_LIMIT, self.converse(peer, login, piece, input)).await })
            .unwrap_or_else(|_| panic!("the session did not end within {SESSION_LIMIT:?} after the client closed"));

        let announced = check_transcript(&output);
        let missing = self.restore();
        assert_eq!(
            missing,
            announced,
            "{missing} message files are gone but the server announced {announced} deletions; transcript:\n{}",
            String::from_utf8_lossy(&output)
        );
        missing
    }

    /// Serve one session; the client sends the optional login then `input`, closes its
    /// sending side and reads everything until the server closes. Returns what it read.
    async fn converse(&self, peer: SocketAddr, login: bool, piece: usize, input: &[u8]) -> Vec<u8> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let serve = apopd::session::serve(server, peer, self.shared.clone(), false);
        let client = async move {
            let (reader, mut writer) = tokio::io::split(client);
            let mut reader = BufReader::new(reader);
            let mut output = Vec::new();
            reader.read_until(b'\n', &mut output).await.expect("read the greeting");
            let prefix = if login { apop_alice(&output) } else { Vec::new() };
            let write = async move {
                // A write fails once the server has closed (QUIT, too many errors): that is fine.
                if writer.write_all(&prefix).await.is_ok() && send(&mut writer, input, piece).await.is_ok() {
                    let _ = writer.shutdown().await;
                }
            };
            let read = reader.read_to_end(&mut output);
            let ((), read) = tokio::join!(write, read);
            read.expect("read the server's output");
            output
        };
        let ((), output) = tokio::join!(serve, client);
        output
    }

    /// Write back every message file a QUIT removed; returns how many there were.
    fn restore(&self) -> usize {
        let mut missing = 0;
        for (path, bytes) in &self.messages {
            if !path.exists() {
                std::fs::write(path, bytes).expect("restore a message file");
                missing += 1;
            }
        }
        missing
    }
}

/// Write `input` at once (`piece` 0) or in `piece`-byte writes, letting the server run between them.
async fn send<W: AsyncWrite + Unpin>(writer: &mut W, input: &[u8], piece: usize) -> std::io::Result<()> {
    if piece == 0 {
        return writer.write_all(input).await;
    }
    for chunk in input.chunks(piece) {
        writer.write_all(chunk).await?;
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// `APOP alice <digest>` for the timestamp in `greeting`.
fn apop_alice(greeting: &[u8]) -> Vec<u8> {
    let greeting = String::from_utf8_lossy(greeting);
    let (Some(start), Some(end)) = (greeting.find('<'), greeting.rfind('>')) else {
        panic!("no APOP timestamp in the greeting {greeting:?}");
    };
    let digest = apopd::auth::apop::digest(&greeting[start..=end], ALICE_APOP_SECRET.as_bytes());
    format!("APOP alice {digest}\r\n").into_bytes()
}

/// A multi-line response being read.
struct Body {
    /// RETR's announced octet count, checked against the un-stuffed body.
    expected_octets: Option<u64>,
    octets: u64,
}

/// Check the server's whole output; returns the deletions announced by `signing off (N messages deleted)`.
///
/// Every line ends in CRLF; outside a multi-line body every line is a status line (`+OK`,
/// `-ERR` or a `+ ` SASL continuation) of at most 512 octets; a multi-line body ends with
/// `.` CRLF before the output ends, and RETR's body has the octet count its status line gave;
/// the `signing off` line is the last one. After `+OK begin TLS negotiation` the stream
/// carries TLS, so checking stops there.
fn check_transcript(output: &[u8]) -> usize {
    let show = || String::from_utf8_lossy(output).into_owned();
    assert!(output.starts_with(b"+OK apopd POP3 server ready <"), "bad greeting in:\n{}", show());
    let mut body: Option<Body> = None;
    let mut lines = output.split_inclusive(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if body.is_none() && line == b"+OK begin TLS negotiation\r\n" {
            return 0; // STLS is refused after login, so nothing can have been deleted
        }
        assert!(line.ends_with(b"\r\n"), "line {:?} does not end in CRLF in:\n{}", lossy(line), show());
        let text = &line[..line.len() - 2];
        if let Some(open) = body.as_mut() {
            if text == b"." {
                if let Some(expected) = open.expected_octets {
                    assert_eq!(open.octets, expected, "RETR sent a size other than announced in:\n{}", show());
                }
                body = None;
            } else {
                open.octets += (line.len() - usize::from(text.starts_with(b"."))) as u64;
            }
            continue;
        }
        assert!(line.len() <= MAX_STATUS_LINE, "status line over 512 octets in:\n{}", show());
        let ok = text == b"+OK" || text.starts_with(b"+OK ");
        let error = text == b"-ERR" || text.starts_with(b"-ERR ");
        let continuation = text.starts_with(b"+ ");
        assert!(ok || error || continuation, "not a status line: {:?} in:\n{}", lossy(line), show());
        if !ok {
            continue;
        }
        let rest = lossy(text.get(4..).unwrap_or_default());
        if let Some(deleted) = signing_off(&rest) {
            assert!(lines.peek().is_none(), "output after signing off in:\n{}", show());
            return deleted;
        }
        body = multi_line(&rest);
    }
    assert!(body.is_none(), "the output ended inside a multi-line response:\n{}", show());
    0
}

/// The deletions a `signing off` line announces (0 for a QUIT before login).
fn signing_off(text: &str) -> Option<usize> {
    if text == "apopd signing off" {
        return Some(0);
    }
    let rest = text.strip_prefix("apopd signing off (")?;
    let count = rest.strip_suffix(" messages deleted)").or_else(|| rest.strip_suffix(" message deleted)"))?;
    Some(count.parse().expect("deleted count"))
}

/// Whether a `+OK` text opens a multi-line response, and what its body must hold.
fn multi_line(text: &str) -> Option<Body> {
    let open = |expected_octets| Some(Body { expected_octets, octets: 0 });
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match text {
        "capability list follows" | "SASL mechanisms follow" | "unique-id listing follows" => open(None),
        "top of message follows" => open(None),
        _ => {
            // RETR: "N octets"
            if let Some(n) = text.strip_suffix(" octets").filter(|n| digits(n)) {
                return open(Some(n.parse().expect("octets")));
            }
            // LIST: "N messages (M octets)"
            let (count, rest) = text.split_once(" messages (")?;
            let octets = rest.strip_suffix(" octets)")?;
            (digits(count) && digits(octets)).then_some(Body { expected_octets: None, octets: 0 })
        }
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
