//! The TRANSACTION state and UPDATE: the commands on an open mailbox.

use std::sync::Arc;

use super::Outcome;
use crate::protocol::Command;
use std::io::Read;

use crate::i18n::{Key, Texts};
use crate::metrics::Metrics;
use crate::protocol::response::{TERMINATOR, err, ok, push_number};
use crate::store::{Mailbox, Message};

/// Messages up to this size are read whole in the task that opens them: one trip to the
/// blocking pool per RETR instead of one per read.
const READ_AT_OPEN: u64 = 128 * 1024;

/// A message ready to send: its first bytes, and the open file when there is more.
#[derive(Debug)]
pub struct Body {
    /// The first (for most messages: all) bytes of the file.
    pub head: Vec<u8>,
    /// The rest of the file, for messages larger than [`READ_AT_OPEN`].
    pub rest: Option<tokio::fs::File>,
    /// The size LIST announced: a file that grew since is cut there.
    pub size: u64,
}

impl Body {
    /// Open message `i` and read up to [`READ_AT_OPEN`] bytes. Blocking.
    fn open(mailbox: &Mailbox, i: usize) -> std::io::Result<Body> {
        let mut file = mailbox.open_message(i)?;
        let size = mailbox.messages()[i].size;
        // The POP3 size bounds the file size, so this is usually the exact capacity.
        let mut head = Vec::with_capacity(size.min(READ_AT_OPEN) as usize + 1);
        (&mut file).take(READ_AT_OPEN).read_to_end(&mut head)?;
        let rest = (head.len() as u64 == READ_AT_OPEN).then(|| tokio::fs::File::from_std(file));
        Ok(Body { head, rest, size })
    }
}

/// An open mailbox and the DELE marks on it.
#[derive(Debug)]
pub struct Transaction {
    user: String,
    mailbox: Arc<Mailbox>,
    deleted: Vec<bool>,
    /// Messages RETR sent, to be marked seen at UPDATE (TOP does not count, as in Dovecot).
    retrieved: Vec<bool>,
}

impl Transaction {
    /// Start TRANSACTION on a locked, scanned mailbox.
    pub fn new(user: String, mailbox: Mailbox) -> Self {
        let deleted = vec![false; mailbox.messages().len()];
        let retrieved = deleted.clone();
        Transaction { user, mailbox: Arc::new(mailbox), deleted, retrieved }
    }

    /// Who logged in.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Messages not marked deleted, and their octets.
    pub fn totals(&self) -> (usize, u64) {
        self.live().fold((0, 0), |(n, size), (_, m)| (n + 1, size + m.size))
    }

    /// `(number, message)` for every message not marked deleted.
    fn live(&self) -> impl Iterator<Item = (usize, &Message)> {
        self.mailbox.messages().iter().enumerate().filter(|(i, _)| !self.deleted[*i]).map(|(i, m)| (i + 1, m))
    }

    /// A LIST or UIDL listing: `n <what>` per live message, built in one buffer. The lines
    /// start with a digit, so none needs byte-stuffing.
    fn listing(&self, status: &str, per_line: usize, what: impl Fn(&mut Vec<u8>, &Message)) -> Vec<u8> {
        let mut out = ok(status);
        // `n ` (up to 7 bytes for 1,000,000 messages), the value, CRLF: one allocation.
        out.reserve(self.deleted.len() * (per_line + 9) + TERMINATOR.len());
        for (n, message) in self.live() {
            push_number(&mut out, n as u64);
            out.push(b' ');
            what(&mut out, message);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(TERMINATOR);
        out
    }

    /// The 0-based index of message `number`, or the `-ERR` to answer.
    fn index(&self, number: u64, t: Texts<'_>) -> Result<usize, Vec<u8>> {
        let count = self.deleted.len();
        match usize::try_from(number) {
            Ok(n) if (1..=count).contains(&n) => {
                if self.deleted[n - 1] {
                    Err(err(&t.hinted(Key::MessageDeleted, Key::HintDeleted, &[("n", &n)])))
                } else {
                    Ok(n - 1)
                }
            }
            _ => Err(err(&t.hinted(Key::NoSuchMessage, Key::HintNoSuchMessage, &[("count", &count)]))),
        }
    }

    /// Handle one command in TRANSACTION, answering in `t`'s language.
    pub async fn handle(&mut self, command: Command, t: Texts<'_>) -> Outcome {
        let reply = match command {
            Command::Stat => {
                let (count, octets) = self.totals();
                ok(&format!("{count} {octets}"))
            }
            Command::List(None) => {
                let (count, octets) = self.totals();
                let status = t.fill(Key::ListOk, &[("messages", &t.messages(count as u64)), ("octets", &octets)]);
                self.listing(&status, 8, |out, m| push_number(out, m.size))
            }
            Command::List(Some(n)) => match self.index(n, t) {
                Ok(i) => ok(&format!("{} {}", i + 1, self.mailbox.messages()[i].size)),
                Err(e) => e,
            },
            Command::Uidl(None) => {
                let mailbox = &self.mailbox;
                let typical = mailbox.messages().first().map_or(0, |m| mailbox.uidl(m).len());
                self.listing(t.get(Key::UidlFollows), typical, |out, m| out.extend_from_slice(mailbox.uidl(m)))
            }
            Command::Uidl(Some(n)) => match self.index(n, t) {
                Ok(i) => {
                    let uidl = self.mailbox.uidl(&self.mailbox.messages()[i]);
                    ok(&format!("{} {}", i + 1, String::from_utf8_lossy(uidl)))
                }
                Err(e) => e,
            },
            Command::Retr(n) => return self.message(n, None, t).await,
            Command::Top { msg, lines } => return self.message(msg, Some(lines), t).await,
            Command::Dele(n) => match self.index(n, t) {
                Ok(i) => {
                    self.deleted[i] = true;
                    ok(&t.fill(Key::DeleOk, &[("n", &(i + 1))]))
                }
                Err(e) => e,
            },
            Command::Rset => {
                self.deleted.fill(false);
                let (count, octets) = self.totals();
                ok(&t.fill(Key::RsetOk, &[("messages", &t.messages(count as u64)), ("octets", &octets)]))
            }
            Command::Noop => ok(""),
            Command::Quit => return Outcome::Update,
            // USER, PASS, APOP, AUTH, STLS (CAPA, LANG and UTF8 never get here: the session answers them).
            other => err(&t.hinted(Key::AlreadyLoggedIn, Key::HintLoggedIn, &[("command", &other.keyword())])),
        };
        Outcome::Reply(reply)
    }

    /// RETR (`top` = None) or TOP: open the file before saying +OK, so a missing file is an -ERR.
    async fn message(&mut self, number: u64, top: Option<u64>, t: Texts<'_>) -> Outcome {
        let i = match self.index(number, t) {
            Ok(i) => i,
            Err(e) => return Outcome::Reply(e),
        };
        let mailbox = self.mailbox.clone();
        let opened = tokio::task::spawn_blocking(move || Body::open(&mailbox, i)).await;
        match opened {
            Ok(Ok(body)) => {
                if top.is_none() {
                    self.retrieved[i] = true;
                }
                let size = self.mailbox.messages()[i].size;
                let status = match top {
                    None => ok(&t.fill(Key::RetrOk, &[("size", &size)])),
                    Some(_) => ok(t.get(Key::TopOk)),
                };
                Outcome::Message { status, body, top }
            }
            Ok(Err(e)) => {
                let path = self.mailbox.dir().join(self.mailbox.relative_path(&self.mailbox.messages()[i]));
                tracing::error!(path = %path.display(), error = %e, "cannot read message");
                Outcome::Reply(err(&t.fill(Key::CannotReadN, &[("n", &(i + 1))])))
            }
            Err(e) => {
                tracing::error!("message open task failed: {e}");
                Outcome::Reply(err(t.get(Key::CannotRead)))
            }
        }
    }

    /// UPDATE: mark the retrieved messages seen, remove the marked ones, then release the
    /// lock (by dropping the mailbox).
    pub async fn update(self, t: Texts<'_>, metrics: &Metrics) -> Vec<u8> {
        let marked: Vec<usize> = (0..self.deleted.len()).filter(|&i| self.deleted[i]).collect();
        let seen: Vec<usize> = (0..self.deleted.len()).filter(|&i| self.retrieved[i] && !self.deleted[i]).collect();
        let total = marked.len();
        let mailbox = self.mailbox;
        let started = std::time::Instant::now();
        let removal = tokio::task::spawn_blocking(move || mailbox.update(&seen, &marked)).await;
        if let Ok(removal) = &removal {
            metrics.update(removal.removed, started.elapsed());
        }
        match removal {
            Ok(removal) if removal.failed.is_empty() => {
                tracing::info!(deleted = removal.removed, "UPDATE done");
                ok(&t.fill(Key::SigningOffDeleted, &[("messages", &t.messages(removal.removed as u64))]))
            }
            Ok(removal) => {
                for failure in &removal.failed {
                    tracing::error!("cannot delete message: {failure}");
                }
                err(&t.fill(Key::DeleteFailedSome, &[("failed", &removal.failed.len()), ("total", &total)]))
            }
            Err(e) => {
                tracing::error!("UPDATE task failed: {e}");
                err(t.get(Key::DeleteFailed))
            }
        }
    }
}
