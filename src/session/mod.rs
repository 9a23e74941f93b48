//! One POP3 session: the AUTHORIZATION → TRANSACTION → UPDATE state machine over any stream.
//!
//! Handlers in [`authorization`] and [`transaction`] return an [`Outcome`]; [`Session::run`]
//! performs it, and its one `match` is where every state transition happens.

mod authorization;
pub mod lines;
mod transaction;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tracing::Instrument;

use crate::protocol::response::{self, BodyEncoder};
use crate::protocol::{Command, command};
use crate::server::Shared;
use lines::Line;
use transaction::Transaction;

/// Consecutive errors after which we stop talking to a client.
const MAX_ERRORS_IN_A_ROW: u32 = 20;
/// RETR/TOP read and write unit.
const STREAM_CHUNK: usize = 64 * 1024;

/// What a command handler asks the session loop to do.
enum Outcome {
    /// Send this and stay in the current state.
    Reply(Vec<u8>),
    /// Send this status line, then the message body read from `file`.
    Message { status: Vec<u8>, file: tokio::fs::File, top: Option<u64> },
    /// Authenticated: send this and enter TRANSACTION.
    Enter(Box<Transaction>, Vec<u8>),
    /// Send this and close without touching the mailbox.
    Close(Vec<u8>),
    /// QUIT in TRANSACTION: enter UPDATE.
    Update,
}

enum State {
    Authorization(authorization::Authorization),
    Transaction(Box<Transaction>),
}

/// The per-connection facts handlers need.
struct Context {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The APOP timestamp sent in the greeting.
    timestamp: String,
    /// USER/PASS may be used on this connection.
    plaintext_allowed: bool,
}

/// Serve one POP3 client on `stream` until it quits, drops or times out.
pub async fn serve<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let span = tracing::info_span!("session", %peer, user = tracing::field::Empty);
    async move {
        let context = Context {
            plaintext_allowed: shared.config.plaintext_allowed_from(peer.ip()),
            timestamp: shared.timestamps.next(),
            shared,
            peer,
        };
        let (reader, writer) = tokio::io::split(stream);
        let mut session = Session {
            context,
            state: State::Authorization(authorization::Authorization::default()),
            reader: BufReader::new(reader),
            writer: BufWriter::new(writer),
            errors_in_a_row: 0,
        };
        match session.run().await {
            Ok(()) => tracing::info!("session closed"),
            Err(e) => tracing::info!(error = %e, "session ended"),
        }
    }
    .instrument(span)
    .await
}

struct Session<R, W> {
    context: Context,
    state: State,
    reader: BufReader<R>,
    writer: BufWriter<W>,
    errors_in_a_row: u32,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    async fn run(&mut self) -> std::io::Result<()> {
        let greeting = format!("apopd POP3 server ready {}", self.context.timestamp);
        self.send(&response::ok(&greeting)).await?;
        loop {
            let timeout = self.context.shared.config.idle_timeout();
            let line = match tokio::time::timeout(timeout, lines::next_line(&mut self.reader)).await {
                Ok(line) => line?,
                Err(_) => {
                    tracing::info!("idle timeout; nothing deleted");
                    let _ = self.send(&response::err("autologout: idle too long")).await;
                    return Ok(());
                }
            };
            let outcome = match line {
                Line::Eof => {
                    if matches!(self.state, State::Transaction(_)) {
                        tracing::info!("connection dropped in TRANSACTION; nothing deleted");
                    }
                    return Ok(());
                }
                Line::TooLong => Outcome::Reply(response::err("line too long (RFC 2449 limit: 255 octets)")),
                Line::Complete(line) => self.handle(&line).await,
            };
            match outcome {
                Outcome::Reply(reply) => self.reply(reply).await?,
                Outcome::Message { status, file, top } => {
                    self.errors_in_a_row = 0;
                    self.writer.write_all(&status).await?;
                    self.stream_message(file, top).await?;
                }
                Outcome::Enter(transaction, reply) => {
                    self.state = State::Transaction(transaction);
                    self.reply(reply).await?;
                }
                Outcome::Close(reply) => return self.send(&reply).await,
                Outcome::Update => {
                    let reply = match std::mem::replace(&mut self.state, State::Authorization(Default::default())) {
                        State::Transaction(transaction) => transaction.update().await,
                        State::Authorization(_) => response::ok("bye"),
                    };
                    return self.send(&reply).await;
                }
            }
            if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW {
                tracing::warn!("too many errors in a row; closing");
                return self.send(&response::err("too many errors, closing connection")).await;
            }
        }
    }

    async fn handle(&mut self, line: &[u8]) -> Outcome {
        let command = match command::parse(line) {
            Ok(command) => command,
            Err(e) => {
                tracing::debug!(line = ?String::from_utf8_lossy(line), "bad command: {e}");
                return Outcome::Reply(response::err(&e.to_string()));
            }
        };
        tracing::debug!(?command);
        if command == Command::Capa {
            return Outcome::Reply(self.capabilities());
        }
        match &mut self.state {
            State::Authorization(auth) => auth.handle(command, &self.context).await,
            State::Transaction(transaction) => transaction.handle(command).await,
        }
    }

    /// CAPA: only what works on this connection in this state.
    fn capabilities(&self) -> Vec<u8> {
        let config = &self.context.shared.config;
        let mut caps = vec!["TOP".to_owned(), "UIDL".to_owned()];
        if self.context.plaintext_allowed && matches!(self.state, State::Authorization(_)) {
            caps.push("USER".to_owned());
        }
        caps.extend(["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER"].map(String::from));
        if let Some(delay) = config.login_delay_secs {
            caps.push(format!("LOGIN-DELAY {delay}"));
        }
        caps.push(concat!("IMPLEMENTATION apopd-", env!("CARGO_PKG_VERSION")).to_owned());
        response::multi_line("capability list follows", caps)
    }

    async fn reply(&mut self, reply: Vec<u8>) -> std::io::Result<()> {
        if reply.starts_with(b"-ERR") {
            self.errors_in_a_row += 1;
        } else {
            self.errors_in_a_row = 0;
        }
        self.send(&reply).await
    }

    /// Queue `bytes`; flush unless more pipelined commands are already waiting.
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let timeout = self.context.shared.config.idle_timeout();
        let write = async {
            self.writer.write_all(bytes).await?;
            if self.reader.buffer().is_empty() {
                self.writer.flush().await?;
            }
            Ok(())
        };
        within(timeout, write).await
    }

    async fn stream_message(&mut self, mut file: tokio::fs::File, top: Option<u64>) -> std::io::Result<()> {
        let mut encoder = BodyEncoder::new(top);
        let mut chunk = vec![0u8; STREAM_CHUNK];
        let mut out = Vec::with_capacity(STREAM_CHUNK + STREAM_CHUNK / 8);
        let timeout = self.context.shared.config.idle_timeout();
        while !encoder.is_done() {
            // A read error here cannot become -ERR (the +OK is out): the connection is dropped.
            let n = file.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            out.clear();
            encoder.push(&chunk[..n], &mut out);
            within(timeout, self.writer.write_all(&out)).await?;
        }
        out.clear();
        encoder.finish(&mut out);
        self.send(&out).await
    }
}

/// Run a write with a deadline, so a client that stops reading cannot pin the task.
async fn within<T>(limit: Duration, io: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(limit, io)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")))
}
