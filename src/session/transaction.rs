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
    /// The whole file, instead of `head` and `rest`, when it goes on the wire as it is and is
    /// exactly `size` long: sent with `sendfile`.
    pub verbatim: Option<std::fs::File>,
    /// The message's 0-based index in the mailbox.
    pub index: usize,
}

impl Body {
    /// Open message `i` and read up to [`READ_AT_OPEN`] bytes, or nothing when `verbatim`
    /// (the file is known to be in wire form and may go by `sendfile`) and the file is still
    /// `size` long. Blocking.
    fn open(mailbox: &Mailbox, i: usize, verbatim: bool) -> std::io::Result<Body> {
        let mut file = mailbox.open_message(i)?;
        let size = mailbox.messages()[i].size;
        // A file that grew or shrank since the scan takes the buffered path, which cuts it at
        // `size` or ends it where it ends.
        if verbatim && file.metadata()?.len() == size {
            // `sendfile` runs on the session's thread: start reading a cold file from the disk
            // here, in the blocking pool (a hint; nothing breaks if it is ignored).
            let ahead = i64::try_from(size).unwrap_or(i64::MAX);
            let _ = nix::fcntl::posix_fadvise(&file, 0, ahead, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED);
            return Ok(Body { head: Vec::new(), rest: None, size, verbatim: Some(file), index: i });
        }
        // The POP3 size bounds the file size, so this is usually the exact capacity.
        let mut head = Vec::with_capacity(size.min(READ_AT_OPEN) as usize + 1);
        (&mut file).take(READ_AT_OPEN).read_to_end(&mut head)?;
        let rest = (head.len() as u64 == READ_AT_OPEN).then(|| tokio::fs::File::from_std(file));
        Ok(Body { head, rest, size, verbatim: None, index: i })
    }

    /// [`Body::open`] on the runtime's thread, when it needs no disk I/O: the name and (unless
    /// `verbatim`) the first bytes are in the kernel's caches, as for mail just delivered or
    /// listed. Saves a round trip through the blocking pool per RETR; `None` when anything
    /// would block or is unusual, and then [`Body::open`] gives the full answer.
    fn open_cached(mailbox: &Mailbox, i: usize, verbatim: bool) -> Option<Body> {
        let (file, len) = mailbox.open_message_cached(i)?;
        let size = mailbox.messages()[i].size;
        if verbatim && len == size {
            // sendfile reads it on this thread: start a big cold file's read-ahead now (a hint;
            // the kernel's own read-ahead covers one sendfile step).
            if size > super::transport::SENDFILE_CHUNK as u64 {
                let ahead = i64::try_from(size).unwrap_or(i64::MAX);
                let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED;
                let _ = nix::fcntl::posix_fadvise(&file, 0, ahead, advice);
            }
            return Some(Body { head: Vec::new(), rest: None, size, verbatim: Some(file), index: i });
        }
        let head = read_cached(&file, size.min(READ_AT_OPEN) as usize + 1, READ_AT_OPEN as usize)?;
        let rest = (head.len() as u64 == READ_AT_OPEN).then(|| tokio::fs::File::from_std(file));
        Some(Body { head, rest, size, verbatim: None, index: i })
    }
}

/// Up to `limit` bytes from the start of `file` if they are all in the page cache
/// (`preadv2` with `RWF_NOWAIT`), into a buffer of `expected` bytes to begin with (the size
/// LIST announced: a buffer of `limit` would be a fresh mapping per RETR for most
/// allocators); `None` when a read would wait for the disk or fails.
fn read_cached(file: &std::fs::File, expected: usize, limit: usize) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf = Vec::with_capacity(expected.min(limit));
    loop {
        if buf.len() == limit {
            return Some(buf);
        }
        if buf.len() == buf.capacity() {
            buf.reserve(limit - buf.len());
        }
        let room = limit - buf.len();
        let spare = buf.spare_capacity_mut();
        let room = room.min(spare.len());
        let spare = &mut spare[..room];
        let iov = nix::libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
        // SAFETY: one iovec over `buf`'s spare capacity, which outlives the call; the kernel
        // writes at most `iov_len` bytes there and returns how many. Offset -1: read at the
        // file position and advance it, so the rest of the file is read from where this stops.
        let n = unsafe { nix::libc::preadv2(file.as_raw_fd(), &iov, 1, -1, nix::libc::RWF_NOWAIT) };
        match usize::try_from(n) {
            Ok(0) => return Some(buf),
            // SAFETY: the kernel initialised these `n` bytes.
            Ok(n) => unsafe { buf.set_len(buf.len() + n) },
            Err(_) => return None, // EAGAIN (not cached), EOPNOTSUPP, or an error the blocking path reports
        }
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
    /// Messages RETR found already in wire form this session (the scan did not know it), to
    /// be remembered in the index at UPDATE.
    learned: Vec<bool>,
}

impl Transaction {
    /// Start TRANSACTION on a locked, scanned mailbox.
    pub fn new(user: String, mailbox: Mailbox) -> Self {
        let deleted = vec![false; mailbox.messages().len()];
        let (retrieved, learned) = (deleted.clone(), deleted.clone());
        Transaction { user, mailbox: Arc::new(mailbox), deleted, retrieved, learned }
    }

    /// RETR sent message `i` (0-based) whole and found it in wire form.
    pub fn learned_verbatim(&mut self, i: usize) {
        if let Some(learned) = self.learned.get_mut(i)
            && !self.mailbox.messages()[i].verbatim
        {
            *learned = true;
        }
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

    /// Handle one command in TRANSACTION, answering in `t`'s language; `zero_copy`: RETR may
    /// hand a verbatim file to the kernel (a plain TCP connection).
    pub async fn handle(&mut self, command: Command, t: Texts<'_>, zero_copy: bool) -> Outcome {
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
            Command::Retr(n) => return self.message(n, None, t, zero_copy).await,
            Command::Top { msg, lines } => return self.message(msg, Some(lines), t, false).await,
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
    async fn message(&mut self, number: u64, top: Option<u64>, t: Texts<'_>, zero_copy: bool) -> Outcome {
        let i = match self.index(number, t) {
            Ok(i) => i,
            Err(e) => return Outcome::Reply(e),
        };
        let mailbox = self.mailbox.clone();
        let verbatim = top.is_none() && zero_copy && (mailbox.messages()[i].verbatim || self.learned[i]);
        let opened = match Body::open_cached(&mailbox, i, verbatim) {
            Some(body) => Ok(Ok(body)),
            None => tokio::task::spawn_blocking(move || Body::open(&mailbox, i, verbatim)).await,
        };
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
        let learned: Vec<usize> = (0..self.deleted.len()).filter(|&i| self.learned[i] && !self.deleted[i]).collect();
        let total = marked.len();
        let mailbox = self.mailbox;
        let started = std::time::Instant::now();
        let removal = tokio::task::spawn_blocking(move || mailbox.update(&learned, &seen, &marked)).await;
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
