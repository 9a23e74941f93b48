//! One POP3 session: the AUTHORIZATION → TRANSACTION → UPDATE state machine over any stream.
//!
//! Handlers in [`authorization`] and [`transaction`] return an [`Outcome`]; [`Session::run`]
//! performs it, and its one `match` is where every state transition happens. STLS ends a
//! run with [`End::StartTls`]; [`serve`] then does the handshake and runs the same session
//! state again over TLS.

mod authorization;
pub mod buffers;
mod language;
pub mod lines;
mod syntax;
mod transaction;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use crate::auth::sasl::{self, Mechanism};
use crate::capacity::Ticket;
use crate::i18n::{Key, Texts};
use crate::metrics::{Handshake, HandshakeResult, SessionGauge, State as Counted};
use crate::protocol::response::{self, BodyEncoder, TERMINATOR};
use crate::protocol::{Command, command};
use crate::shared::Shared;
use crate::transcript::Transcript;
use buffers::{LeanReader, LeanWriter};
use lines::Line;
use transaction::{Body, Transaction};
use transport::Transport;

/// Consecutive errors after which we stop talking to a client.
const MAX_ERRORS_IN_A_ROW: u32 = 20;
/// RETR/TOP read and write unit.
const STREAM_CHUNK: usize = 64 * 1024;
/// Most bytes read at once (into the stack; only unconsumed input stays on the heap, so an
/// idle session holds no read buffer). Longer lines are still assembled by the framing.
const READ_BUFFER: usize = 1024;
/// Most bytes buffered between flushes: big enough for most multi-line replies in one write;
/// RETR bodies bypass it in 64 KiB chunks. Allocated by a write, freed by the flush.
const WRITE_BUFFER: usize = 4096;
/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest we wait to deliver the last reply and close_notify.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a command handler asks the session loop to do.
enum Outcome {
    /// Send this and stay in the current state.
    Reply(Vec<u8>),
    /// Send this status line, then the message body (all of it, or TOP's part).
    Message { status: Vec<u8>, body: Body, top: Option<u64> },
    /// Authenticated: send this and enter TRANSACTION.
    Enter(Box<Transaction>, Vec<u8>),
    /// Send this and close without touching the mailbox.
    Close(Vec<u8>),
    /// Send this, then start the TLS handshake (STLS).
    StartTls(Vec<u8>),
    /// QUIT in TRANSACTION: enter UPDATE.
    Update,
}

/// How a run over one stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The session is over.
    Closed,
    /// STLS accepted: hand the stream to TLS and go on.
    StartTls,
    /// Evicted to make room: drop the connection without a graceful close, so its place
    /// is free at once even if the client reads nothing.
    Evicted,
}

enum State {
    Authorization(authorization::Authorization),
    Transaction(Box<Transaction>),
}

/// The per-connection facts handlers need.
struct Context {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The APOP timestamp sent in the greeting; empty when APOP is not configured.
    timestamp: String,
    /// The connection is encrypted.
    secure: bool,
    /// The reply language: an index into `shared.i18n` (LANG changes it).
    lang: usize,
    /// UTF8 was given (RFC 6856): UTF-8 user names are accepted.
    utf8: bool,
}

impl Context {
    /// The reply texts in this session's language.
    fn texts(&self) -> Texts<'_> {
        self.shared.i18n.texts(self.lang, self.shared.config.lab_hints)
    }

    /// USER/PASS, AUTH PLAIN and AUTH LOGIN may be used on this connection.
    fn plaintext_allowed(&self) -> bool {
        self.secure || self.shared.config.plaintext_allowed_from(self.peer.ip())
    }

    /// STLS is possible: TLS is configured and not in use yet.
    fn stls_available(&self) -> bool {
        !self.secure && self.shared.tls.is_some()
    }

    /// The configured SASL mechanisms usable on this connection, in CAPA order.
    fn mechanisms(&self) -> Vec<Mechanism> {
        let configured = &self.shared.config.sasl_mechanisms;
        Mechanism::ALL
            .into_iter()
            .filter(|m| configured.contains(m) && (!m.sends_password() || self.plaintext_allowed()))
            .collect()
    }
}

/// Everything about a session except its stream, so it survives the STLS upgrade.
struct Core {
    context: Context,
    state: State,
    errors_in_a_row: u32,
    /// This session's transcript, when `transcript_dir` is set.
    transcript: Option<Transcript>,
    /// This session in the sessions-by-state gauge.
    gauge: SessionGauge,
    /// Its place under `max_connections`.
    ticket: Ticket,
}

/// Serve one POP3 client on `stream` (already TLS when `secure`) until it quits, drops or times out.
pub async fn serve<S: Transport>(stream: S, peer: SocketAddr, shared: Arc<Shared>, secure: bool) {
    serve_admitted(stream, peer, shared, secure, Ticket::unlimited()).await
}

/// [`serve`] a connection admitted under `max_connections`: it may be evicted until it logs in.
pub async fn serve_admitted<S: Transport>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    secure: bool,
    ticket: Ticket,
) {
    let span = tracing::info_span!("session", %peer, tls = secure, user = tracing::field::Empty);
    async move {
        // RFC 1939 §7: a timestamp in the greeting announces APOP; without secrets there is none,
        // and clients such as curl would otherwise try APOP and never fall back.
        let timestamp = if shared.config.apop_enabled() { shared.timestamps.next() } else { String::new() };
        let lang = shared.default_language;
        let transcript = shared.transcripts.as_ref().map(|t| t.open(peer));
        let context = Context { timestamp, shared, peer, secure, lang, utf8: false };
        let gauge = context.shared.metrics.session();
        let state = State::Authorization(Default::default());
        let core = Core { context, state, errors_in_a_row: 0, transcript, gauge, ticket };
        let (result, core, stream) = run_on(core, stream, true).await;
        match result {
            // Boxed: the TLS session is large and rare; a plain session's task stays small.
            Ok(End::StartTls) => Box::pin(start_tls(core, stream)).await,
            Ok(End::Evicted) => drop(stream),
            result => finish(result, stream).await,
        }
    }
    .instrument(span)
    .await
}

/// STLS: handshake, then carry on in AUTHORIZATION over TLS (RFC 2595 §4).
async fn start_tls<S: Transport>(mut core: Core, stream: S) {
    let Some(tls) = core.context.shared.tls.as_ref() else { return };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
    let handshake = tokio::select! {
        handshake = handshake => handshake,
        _ = core.ticket.evicted() => return tracing::info!("server full: evicted during the STLS handshake"),
    };
    core.context.shared.metrics.handshake(Handshake::Stls, HandshakeResult::of(&handshake));
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return tracing::info!(error = %e, "STLS handshake failed"),
        Err(_) => return tracing::info!("STLS handshake timed out"),
    };
    tracing::info!("STLS: now encrypted");
    tracing::Span::current().record("tls", true);
    core.context.secure = true;
    if let Some(transcript) = &mut core.transcript {
        transcript.note("STLS: now encrypted");
    }
    // Nothing said before the handshake counts afterwards (a USER given before STLS is forgotten).
    core.state = State::Authorization(Default::default());
    let (result, _core, stream) = run_on(core, stream, false).await;
    match result {
        Ok(End::Evicted) => drop(stream),
        result => finish(result, stream).await,
    }
}

/// Log how the session ended and shut the stream down: for TLS this sends close_notify
/// before the TCP FIN (OpenSSL 3 clients report an error otherwise).
async fn finish<S: AsyncWrite + Unpin>(result: std::io::Result<End>, mut stream: S) {
    match result {
        Ok(_) => tracing::info!("session closed"),
        Err(e) => tracing::info!(error = %e, "session ended"),
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.shutdown()).await;
}

/// Run the session over `stream` until it ends or asks for STLS; give the stream back.
///
/// The stream comes back without the read buffer: input pipelined after STLS is dropped
/// here, so a command injected before the handshake never runs after it.
async fn run_on<S: Transport>(core: Core, stream: S, greet: bool) -> (std::io::Result<End>, Core, S) {
    // Not split: RETR reaches the socket under both buffers (`io.get_ref().get_ref()`).
    let mut session = Session { core, io: LeanReader::new(LeanWriter::new(WRITE_BUFFER, stream)) };
    let mut result = session.run(greet).await;
    if matches!(result, Ok(End::Closed | End::StartTls)) {
        result = within(CLOSE_TIMEOUT, session.io.flush()).await.and(result);
    }
    let Session { core, io } = session;
    (result, core, io.into_inner().into_inner())
}

struct Session<S> {
    core: Core,
    /// Reads go through the read buffer; writes pass it to the write buffer.
    io: LeanReader<LeanWriter<S>, READ_BUFFER>,
}

impl<S: Transport> Session<S> {
    async fn run(&mut self, greet: bool) -> std::io::Result<End> {
        if greet {
            let context = &self.core.context;
            let greeting = format!("{} {}", context.texts().get(Key::Greeting), context.timestamp);
            self.send(&response::ok(greeting.trim_end())).await?;
        }
        let mut shutdown = self.core.context.shared.shutdown.subscribe();
        loop {
            let config = &self.core.context.shared.config;
            let timeout = match self.core.state {
                State::Authorization(_) => config.auth_timeout(),
                State::Transaction(_) => config.idle_timeout(),
            };
            let max = if self.in_sasl() { sasl::MAX_RESPONSE_LINE } else { lines::MAX_COMMAND_LINE };
            let read = tokio::time::timeout(timeout, lines::next_line(&mut self.io, max));
            let logged_in = matches!(self.core.state, State::Transaction(_));
            let line = tokio::select! {
                line = read => match line {
                    Ok(line) => line?,
                    Err(_) => {
                        self.note("idle timeout");
                        tracing::info!("idle timeout; nothing deleted");
                        let reply = response::err(self.core.context.texts().get(Key::Autologout));
                        self.send(&reply).await?;
                        return Ok(End::Closed);
                    }
                },
                // Only a connection that has not logged in is ever evicted.
                _ = self.core.ticket.evicted(), if !logged_in => {
                    self.note("evicted: the server is full and this connection had not logged in");
                    tracing::info!("server full: closing this connection, which has not logged in, to admit a newer one");
                    let reply = response::err(self.core.context.texts().get(Key::TooManyConnections));
                    // Only if the socket takes it at once: an evicted client gets no more time.
                    let say = async {
                        self.io.write_all(&reply).await?;
                        self.io.flush().await
                    };
                    let _ = tokio::time::timeout(Duration::ZERO, say).await;
                    return Ok(End::Evicted);
                }
                // The watch::Ref is dropped inside: it must not live across an await.
                _ = async { shutdown.wait_for(|down| *down).await.is_ok() } => {
                    tracing::info!("server shutting down; nothing deleted");
                    let reply = response::err(self.core.context.texts().get(Key::ShuttingDown));
                    self.send(&reply).await?;
                    return Ok(End::Closed);
                }
            };
            let outcome = match line {
                Line::Eof => {
                    self.note("connection closed by the client");
                    if matches!(self.core.state, State::Transaction(_)) {
                        tracing::info!("connection dropped in TRANSACTION; nothing deleted");
                    }
                    return Ok(End::Closed);
                }
                Line::TooLong => {
                    self.note("line too long");
                    self.abandon_sasl();
                    Outcome::Reply(response::err(&self.core.context.texts().fill(Key::LineTooLong, &[("max", &max)])))
                }
                Line::Complete(line) => {
                    let in_sasl = self.in_sasl();
                    if let Some(transcript) = &mut self.core.transcript {
                        transcript.client(&line, in_sasl);
                    }
                    // Boxed: the handlers' futures (login, mailbox scan) are large and short-lived;
                    // inline they would be part of every idle session's task.
                    Box::pin(self.handle(&line)).await
                }
            };
            match outcome {
                Outcome::Reply(reply) => self.reply(reply).await?,
                Outcome::Message { status, body, top } => {
                    self.core.errors_in_a_row = 0;
                    Box::pin(self.stream_message(status, body, top)).await?;
                }
                Outcome::Enter(transaction, reply) => {
                    if let Some(transcript) = &mut self.core.transcript {
                        transcript.login(transaction.user());
                    }
                    self.core.ticket.logged_in();
                    self.core.state = State::Transaction(transaction);
                    self.core.gauge.set(Counted::Transaction);
                    self.reply(reply).await?;
                }
                Outcome::Close(reply) => {
                    self.send(&reply).await?;
                    return Ok(End::Closed);
                }
                Outcome::StartTls(reply) => {
                    self.send(&reply).await?;
                    within(CLOSE_TIMEOUT, self.io.flush()).await?;
                    return Ok(End::StartTls);
                }
                Outcome::Update => {
                    self.core.gauge.set(Counted::Update);
                    let state = std::mem::replace(&mut self.core.state, State::Authorization(Default::default()));
                    let texts = self.core.context.texts();
                    let reply = match state {
                        State::Transaction(transaction) => {
                            Box::pin(transaction.update(texts, &self.core.context.shared.metrics)).await
                        }
                        State::Authorization(_) => response::ok(texts.get(Key::Bye)),
                    };
                    self.send(&reply).await?;
                    return Ok(End::Closed);
                }
            }
            if self.core.errors_in_a_row >= MAX_ERRORS_IN_A_ROW {
                tracing::warn!("too many errors in a row; closing");
                let reply = response::err(self.core.context.texts().get(Key::TooManyErrors));
                self.send(&reply).await?;
                return Ok(End::Closed);
            }
        }
    }

    /// Note an event in the transcript, if there is one.
    fn note(&mut self, text: &str) {
        if let Some(transcript) = &mut self.core.transcript {
            transcript.note(text);
        }
    }

    fn in_sasl(&self) -> bool {
        matches!(&self.core.state, State::Authorization(auth) if auth.in_sasl())
    }

    fn abandon_sasl(&mut self) {
        if let State::Authorization(auth) = &mut self.core.state {
            auth.abandon_sasl();
        }
    }

    async fn handle(&mut self, line: &[u8]) -> Outcome {
        let context = &self.core.context;
        let zero_copy = self.io.get_ref().get_ref().plain_socket().is_some();
        if let State::Authorization(auth) = &mut self.core.state
            && auth.in_sasl()
        {
            return auth.continue_sasl(line, context).await;
        }
        let command = match command::parse(line) {
            Ok(command) => command,
            Err(e) => {
                // Only the first word: a password typed on a line of its own must not be logged.
                let word = line.split(|&b| b == b' ').next().unwrap_or_default();
                tracing::debug!(keyword = ?String::from_utf8_lossy(&word[..word.len().min(8)]), "bad command: {e:?}");
                return Outcome::Reply(response::err(&syntax::error_text(e, context.texts())));
            }
        };
        tracing::debug!(?command);
        match command {
            Command::Capa => return Outcome::Reply(self.capabilities()),
            Command::Lang(None) => return Outcome::Reply(language::listing(context)),
            Command::Lang(Some(range)) => return Outcome::Reply(language::select(&mut self.core.context, &range)),
            Command::Utf8 => {
                let logged_in = matches!(self.core.state, State::Transaction(_));
                return Outcome::Reply(language::utf8(&mut self.core.context, logged_in));
            }
            _ => {}
        }
        match &mut self.core.state {
            State::Authorization(auth) => auth.handle(command, context).await,
            State::Transaction(transaction) => transaction.handle(command, context.texts(), zero_copy).await,
        }
    }

    /// CAPA: only what works on this connection in this state.
    fn capabilities(&self) -> Vec<u8> {
        let context = &self.core.context;
        let authorization = matches!(self.core.state, State::Authorization(_));
        let mut caps = vec!["TOP".to_owned(), "UIDL".to_owned()];
        if authorization {
            if context.plaintext_allowed() {
                caps.push("USER".to_owned());
            }
            let mechanisms: Vec<&str> = context.mechanisms().into_iter().map(Mechanism::name).collect();
            if !mechanisms.is_empty() {
                caps.push(format!("SASL {}", mechanisms.join(" ")));
            }
            if context.stls_available() {
                caps.push("STLS".to_owned());
            }
        }
        caps.extend(["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"].map(String::from));
        if let Some(delay) = context.shared.login_delay_capability(context.peer.ip()) {
            caps.push(format!("LOGIN-DELAY {delay}"));
        }
        // RFC 6856: UTF-8 user names and passwords after UTF8; LANG in both states.
        caps.extend(["UTF8 USER", "LANG"].map(String::from));
        caps.push(concat!("IMPLEMENTATION apopd-", env!("CARGO_PKG_VERSION")).to_owned());
        response::multi_line(context.texts().get(Key::CapaFollows), caps)
    }

    async fn reply(&mut self, reply: Vec<u8>) -> std::io::Result<()> {
        if reply.starts_with(b"-ERR") {
            self.core.errors_in_a_row += 1;
        } else {
            self.core.errors_in_a_row = 0;
        }
        self.send(&reply).await
    }

    /// Send a reply (recorded in the transcript).
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(transcript) = &mut self.core.transcript {
            transcript.server(bytes);
        }
        self.write_out(bytes).await
    }

    /// Queue `bytes`; flush unless another complete pipelined command is already waiting.
    async fn write_out(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let timeout = self.core.context.shared.config.write_timeout();
        let write = async {
            self.io.write_all(bytes).await?;
            if memchr::memchr(b'\n', self.io.buffer()).is_none() {
                self.io.flush().await?;
            }
            Ok(())
        };
        within(timeout, write).await
    }

    /// Send `status` and the encoded body; a small message goes out in a single write.
    async fn stream_message(&mut self, status: Vec<u8>, mut body: Body, top: Option<u64>) -> std::io::Result<()> {
        if let Some(file) = body.verbatim.take() {
            return self.send_verbatim(status, file, body.size).await;
        }
        let mut encoder = BodyEncoder::new(top);
        // Only the status line and the size go into a transcript, never the mail.
        let status_line = self.core.transcript.is_some().then(|| status.clone());
        let (status_len, index) = (status.len() as u64, body.index);
        // File bytes encoded, and whether the whole file was (not cut at the LIST size).
        let (mut consumed, mut whole) = (0u64, true);
        let mut written = 0u64;
        let mut out = status;
        out.reserve(body.head.len() + body.head.len() / 16 + TERMINATOR.len() + 2);
        // Never more than LIST announced, even if the file grew since the scan.
        let fits = encoder.push_within(&body.head, body.size, &mut out);
        consumed += fits as u64;
        whole &= fits == body.head.len();
        if let (Some(mut file), true) = (body.rest, fits == body.head.len()) {
            let timeout = self.core.context.shared.config.write_timeout();
            let mut chunk = vec![0u8; STREAM_CHUNK];
            while !encoder.is_done() {
                within(timeout, self.io.write_all(&out)).await?;
                written += out.len() as u64;
                out.clear();
                // A read error here cannot become -ERR (the +OK is out): the connection is dropped.
                let n = file.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                let fits = encoder.push_within(&chunk[..n], body.size, &mut out);
                consumed += fits as u64;
                if fits < n {
                    whole = false;
                    break;
                }
            }
        }
        encoder.finish(&mut out);
        // Nothing added (no CR, no stuffed dot, no final line end): the file is in wire form,
        // and the next RETR of it can use sendfile.
        let body_octets = (written + out.len() as u64).saturating_sub(status_len + TERMINATOR.len() as u64);
        if top.is_none()
            && whole
            && consumed == body.size
            && body_octets == consumed
            && let State::Transaction(transaction) = &mut self.core.state
        {
            transaction.learned_verbatim(index);
        }
        self.core.context.shared.metrics.retrieved(top.is_some(), written + out.len() as u64);
        if let (Some(transcript), Some(status)) = (&mut self.core.transcript, status_line) {
            let text = (written + out.len() as u64).saturating_sub((status.len() + TERMINATOR.len()) as u64);
            transcript.message(&status, text);
        }
        self.write_out(&out).await
    }

    /// RETR of a file already in wire form on plain TCP: the status line, the file by
    /// `sendfile` (no user-space copy), the terminator. `size` is the file's length (checked
    /// at open) and what LIST announced, so no more is sent even if it grows meanwhile; if it
    /// shrinks meanwhile, a line break before the terminator keeps the response well-formed.
    async fn send_verbatim(&mut self, status: Vec<u8>, file: std::fs::File, size: u64) -> std::io::Result<()> {
        let timeout = self.core.context.shared.config.write_timeout();
        let (sent, end) = self.send_status_file_end(&status, &file, size, timeout).await?;
        let metrics = &self.core.context.shared.metrics;
        metrics.retrieved(false, (status.len() + end) as u64 + sent);
        metrics.zero_copy(sent);
        if let Some(transcript) = &mut self.core.transcript {
            transcript.message(&status, sent + (end - TERMINATOR.len()) as u64);
        }
        Ok(())
    }

    /// [`Session::send_verbatim`]'s writes; returns the file octets sent and the octets after them.
    async fn send_status_file_end(
        &mut self,
        status: &[u8],
        file: &std::fs::File,
        size: u64,
        timeout: Duration,
    ) -> std::io::Result<(u64, usize)> {
        // Anything still buffered goes first; then the socket is written directly.
        within(timeout, self.io.flush()).await?;
        let Some(socket) = self.io.get_ref().get_ref().plain_socket() else {
            return Err(std::io::Error::other("zero-copy RETR without a plain socket"));
        };
        transport::send_more(socket, status, timeout).await?;
        let sent = transport::send_file(socket, file, size, timeout).await?;
        let mut end = Vec::with_capacity(2 + TERMINATOR.len());
        if sent < size {
            tracing::warn!(sent, size, "message file shrank while it was sent; ending the response early");
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(TERMINATOR);
        within(timeout, self.io.write_all(&end)).await?;
        within(timeout, self.io.flush()).await?;
        Ok((sent, end.len()))
    }
}

/// Run a write with a deadline, so a client that stops reading cannot pin the task.
async fn within<T>(limit: Duration, io: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(limit, io)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")))
}
