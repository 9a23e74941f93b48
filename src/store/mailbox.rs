//! A maildir opened for one POP3 session: locked, scanned once, numbered 1..n.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::protocol::response::WireSize;

use super::flags;
use super::index::{self, Index, Listing, Previous, Sub};
use super::lock::{LockError, MailboxLock};
use super::safe_fs::{Location, Maildir, Policy, WalkError};
use super::uidl::{self, base_name};

/// Files in `tmp/` untouched this long are removed at login (the maildir spec's 36 hours).
pub const TMP_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(36 * 3600);

/// One message as the session sees it: its POP3 size and subdirectory; its name and UIDL are
/// read through [`Mailbox::name`] and [`Mailbox::uidl`] (they stay in the index's bytes).
pub use super::index::Slot as Message;

/// Why a mailbox could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Someone else holds the lock.
    #[error("mailbox in use")]
    InUse,
    /// The maildir is not safe to serve (a symlink on the way, the wrong owner).
    #[error("{0}")]
    Unsafe(String),
    /// The disk said no.
    #[error("{0}")]
    Io(String),
}

impl From<LockError> for OpenError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::InUse => OpenError::InUse,
            e @ LockError::Io { .. } => OpenError::Io(e.to_string()),
        }
    }
}

impl From<WalkError> for OpenError {
    fn from(e: WalkError) -> Self {
        match e {
            WalkError::Unsafe(why) => OpenError::Unsafe(why),
            WalkError::Io(why) => OpenError::Io(why),
        }
    }
}

/// What UPDATE did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// Messages removed (or already gone).
    pub removed: usize,
    /// Messages that could not be removed, with the cause.
    pub failed: Vec<String>,
}

/// A locked, scanned maildir.
#[derive(Debug)]
pub struct Mailbox {
    maildir: Maildir,
    listing: Listing,
    flag_updates: bool,
    /// The index on disk is one the next login will trust, if nothing changes meanwhile.
    settled: bool,
    _lock: MailboxLock,
}

impl Mailbox {
    /// Walk safely to the maildir at `location`, creating `cur/`, `new/` and `tmp/` where
    /// missing, lock it and scan it.
    ///
    /// Blocking: call it from a blocking task.
    pub fn open(location: &Location, policy: &Policy) -> Result<Self, OpenError> {
        let maildir = Maildir::open(location, policy, true)?;
        let lock = super::settle::lock_for_session(&maildir)?;
        match maildir.clean_tmp(TMP_MAX_AGE) {
            Ok(0) => {}
            Ok(n) => tracing::info!(maildir = %maildir.path().display(), removed = n, "removed stale files from tmp/"),
            Err(e) => tracing::warn!(maildir = %maildir.path().display(), error = %e, "cannot clean tmp/"),
        }
        let (listing, settled) = scan(&maildir, policy).map_err(OpenError::Io)?;
        let mut mailbox = Mailbox { maildir, listing, flag_updates: !policy.no_flag_updates, settled, _lock: lock };
        if mailbox.flag_updates {
            mailbox.move_new_to_cur();
        }
        Ok(mailbox)
    }

    /// Move every listed message from `new/` to `cur/` with an empty `:2,` info part, as
    /// Dovecot's pop3 does, so an IMAP server on the same maildir no longer calls it recent.
    /// A message that cannot be moved stays where it is (logged); its UIDL never changes.
    fn move_new_to_cur(&mut self) {
        let mut moved = 0;
        for i in 0..self.listing.slots().len() {
            let message = self.listing.slots()[i];
            if message.sub != Sub::New {
                continue;
            }
            let name = self.listing.name(&message);
            let to = flags::cur_name(name);
            match self.maildir.rename(Sub::New, name, Sub::Cur, &to) {
                Ok(()) => {
                    self.listing.rename(i, Sub::Cur, &to);
                    moved += 1;
                }
                Err(e) => {
                    let file = self.relative_path(&message);
                    tracing::warn!(maildir = %self.maildir.path().display(), file = ?file, error = %e, "cannot move a message to cur/");
                }
            }
        }
        if moved > 0 {
            self.settled = false;
            for sub in Sub::BOTH {
                if let Err(e) = self.maildir.sync(sub) {
                    tracing::warn!(dir = %self.dir().display(), error = %e, "cannot sync maildir directory");
                }
            }
        }
    }

    /// The messages, numbered from 1 in this order.
    pub fn messages(&self) -> &[Message] {
        self.listing.slots()
    }

    /// The UIDL of `message` (1 to 70 characters in 0x21–0x7E).
    pub fn uidl(&self, message: &Message) -> &[u8] {
        self.listing.uidl(message)
    }

    /// The file name of `message` (as of the scan, or apopd's own move to `cur/`).
    pub fn name(&self, message: &Message) -> &[u8] {
        self.listing.name(message)
    }

    /// Where `message` was at scan time, relative to the maildir (`cur/…` or `new/…`).
    pub fn relative_path(&self, message: &Message) -> PathBuf {
        Path::new(message.sub.dir()).join(OsStr::from_bytes(self.name(message)))
    }

    /// True when the index on disk is one the next login will trust (as long as nothing
    /// changes): the directories were not listed within [`index::SETTLE`] of their last
    /// change, and this session moved nothing.
    pub fn settled(&self) -> bool {
        self.settled
    }

    /// The maildir's directory, for logs.
    pub fn dir(&self) -> &Path {
        self.maildir.path()
    }

    /// Open message `i` (0-based) for reading, following it if another program renamed it
    /// since the scan; every rule of [`Maildir::open_message`] holds.
    ///
    /// Blocking: call it from a blocking task.
    pub fn open_message(&self, i: usize) -> io::Result<File> {
        let message = self.messages().get(i).ok_or_else(|| io::Error::other("no such message"))?;
        match self.maildir.open_message(message.sub, self.name(message)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.locate(message)? {
                Some((sub, name)) => self.maildir.open_message(sub, name.as_bytes()),
                None => Err(e),
            },
            other => other,
        }
    }

    /// [`Mailbox::open_message`] when it needs no disk I/O (see
    /// [`Maildir::open_message_cached`]); `None` otherwise: then call that from a blocking thread.
    pub fn open_message_cached(&self, i: usize) -> Option<(File, u64)> {
        let message = self.messages().get(i)?;
        self.maildir.open_message_cached(message.sub, self.name(message))
    }

    /// UPDATE: remember the messages at `verbatim` as sent verbatim (RETR found them in wire
    /// form), mark the messages at `seen` (0-based; those RETR sent) with the seen flag
    /// unless `pop3_no_flag_updates`, then remove the ones at `deleted`.
    ///
    /// Blocking: call it from a blocking task.
    pub fn update(&self, verbatim: &[usize], seen: &[usize], deleted: &[usize]) -> Removal {
        let learned = verbatim.iter().filter_map(|&i| self.messages().get(i)).map(|m| (self.name(m), m.size)).collect();
        index::remember_verbatim(&self.maildir, &learned);
        if self.flag_updates {
            self.mark_seen(seen);
        }
        self.remove(deleted)
    }

    /// Add `S` to the named messages' info part (one rename each; every other flag is kept).
    /// A failure loses nothing, so it is logged, not reported to the client.
    fn mark_seen(&self, indexes: &[usize]) {
        let mut renamed = false;
        for message in indexes.iter().filter_map(|&i| self.messages().get(i)) {
            let result = match self.set_seen(message.sub, self.name(message)) {
                // Renamed since the scan (another program changed its flags): follow it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => match self.locate(message) {
                    Ok(Some((sub, name))) => self.set_seen(sub, name.as_bytes()),
                    Ok(None) => Ok(false),
                    Err(e) => Err(e),
                },
                other => other,
            };
            match result {
                Ok(done) => renamed |= done,
                Err(e) => {
                    let file = self.relative_path(message);
                    tracing::warn!(maildir = %self.dir().display(), file = ?file, error = %e, "cannot mark a message seen");
                }
            }
        }
        if renamed && let Err(e) = self.maildir.sync(Sub::Cur) {
            tracing::warn!(dir = %self.dir().display(), error = %e, "cannot sync maildir directory");
        }
    }

    /// Rename `name` in `sub` to its seen name; false when it already is seen.
    fn set_seen(&self, sub: Sub, name: &[u8]) -> io::Result<bool> {
        let Some(seen) = flags::seen_name(name) else { return Ok(false) };
        self.maildir.rename(sub, name, sub, &seen)?;
        Ok(true)
    }

    /// Remove the messages at the given indexes (0-based). Each removal is one atomic unlink;
    /// a message another program renamed (a flag change) is found again by its base name.
    ///
    /// Blocking: call it from a blocking task.
    pub fn remove(&self, indexes: &[usize]) -> Removal {
        let mut result = Removal::default();
        if indexes.is_empty() {
            return result; // most QUITs delete nothing: no directory syncs for them
        }
        for &i in indexes {
            let Some(message) = self.messages().get(i) else { continue };
            match self.remove_one(message) {
                Ok(()) => result.removed += 1,
                Err(e) => result.failed.push(format!("{}: {e}", self.relative_path(message).display())),
            }
        }
        for sub in Sub::BOTH {
            // Make the unlinks durable; a failure here loses nothing, so it is only logged.
            if let Err(e) = self.maildir.sync(sub) {
                tracing::warn!(dir = %self.dir().display(), error = %e, "cannot sync maildir directory");
            }
        }
        result
    }

    fn remove_one(&self, message: &Message) -> io::Result<()> {
        match self.maildir.unlink(message.sub, self.name(message)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.locate(message)? {
                Some((sub, name)) => self.maildir.unlink(sub, name.as_bytes()),
                None => Ok(()), // already gone: the goal is reached
            },
            other => other,
        }
    }

    /// Find the current name of `message` by its base name in `cur/` and `new/`.
    fn locate(&self, message: &Message) -> io::Result<Option<(Sub, OsString)>> {
        let wanted = base_name(self.name(message));
        for sub in Sub::BOTH {
            for listed in self.maildir.list(sub)? {
                if base_name(listed.name.as_bytes()) == wanted {
                    return Ok(Some((sub, listed.name)));
                }
            }
        }
        Ok(None)
    }
}

/// The mailbox's messages in session order: from the index when the directories have not
/// changed since it was written, else by listing `cur/` and `new/` (every regular, non-hidden
/// file that passes the maildir's rules is a message) and refreshing the index. A message the
/// index remembers keeps its UIDL; any other gets one from [`uidl::assign_all`]. Also says
/// whether the index now on disk is [`index::settled`] (the next login will trust it).
pub(super) fn scan(maildir: &Maildir, policy: &Policy) -> Result<(Listing, bool), String> {
    let path = maildir.path();
    let scheme = policy.uidl.to_string();
    // The clock, then the mtimes, then the listing: a change after the mtimes were read
    // moves one of them once the listing is settled (see `index::settled`).
    let as_of = index::now();
    let times = index::dir_times(maildir).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut index = Index::load(maildir);
    if let Some(listing) = index.take_if_current(times, &scheme) {
        return Ok((listing, true));
    }
    let previous = index.previous(&scheme);
    let found = list(maildir, policy.max_message_size, &previous)?;
    let names: Vec<(Sub, &[u8])> = found.iter().map(|(sub, name, ..)| (*sub, &name[..])).collect();
    let uidls = uidl::assign_all(maildir, &policy.uidl, &previous, !index.existed, &names);
    let bytes = found.iter().zip(&uidls).map(|((_, name, ..), (uidl, _))| name.len() + uidl.len() + 32).sum();
    let mut listing = Listing::with_capacity(found.len(), bytes);
    for ((sub, name, len, size, verbatim), (uidl, _)) in found.iter().zip(&uidls) {
        if !listing.push(*sub, name, *len, *size, *verbatim, uidl.as_bytes()) {
            let file = Path::new(sub.dir()).join(OsStr::from_bytes(name));
            tracing::warn!(maildir = %path.display(), file = ?file, "skipping a message whose name is too long to index");
        }
    }
    index::save(maildir, times, as_of, &scheme, &listing);
    Ok((listing, index::settled(times, as_of)))
}

/// A listed message: `(sub, name, length, POP3 size, verbatim)`.
pub(crate) type Found = (Sub, Vec<u8>, u64, u64, bool);

/// Every servable message, oldest first.
pub(crate) fn list(maildir: &Maildir, max_size: u64, previous: &Previous) -> Result<Vec<Found>, String> {
    let path = maildir.path();
    let mut found: Vec<(u64, OsString, Option<u64>, Sub)> = Vec::new();
    for sub in Sub::BOTH {
        let listed = maildir.list(sub).map_err(|e| format!("cannot read {}: {e}", path.join(sub.dir()).display()))?;
        found.extend(listed.into_iter().map(|l| (delivery_time(l.name.as_bytes()), l.name, l.len, sub)));
    }
    // Oldest first: maildir names start with the delivery time in seconds. Unstable but total
    // (a name is in one subdirectory at a time; `sub` breaks a tie anyway), so as
    // deterministic as a stable sort, without its buffer.
    found.sort_unstable_by(|a, b| (a.0, &a.1, a.3).cmp(&(b.0, &b.1, b.3)));

    // A mailbox listed cold may have to read every file (names without `,S=`): spread big
    // ones over the cores, in order-keeping chunks (opening and reading 100,000 small files
    // is system-call bound, so two threads take about half the time).
    let to_read = found.iter().filter(|(_, name, ..)| size_from_name(name.as_bytes()).is_none()).count();
    let workers = match to_read {
        n if n >= PARALLEL_LISTING_FROM => std::thread::available_parallelism().map_or(1, |n| n.get()).min(4),
        _ => 1,
    };
    let chunk = found.len().div_ceil(workers).max(1);
    let mut chunks: Vec<Vec<_>> = Vec::with_capacity(workers);
    let mut rest = found;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    let listed: Vec<Vec<Found>> = match chunks.len() {
        1 => chunks.into_iter().map(|c| measure(maildir, max_size, previous, c)).collect(),
        _ => std::thread::scope(|scope| {
            let running: Vec<_> =
                chunks.into_iter().map(|c| scope.spawn(move || measure(maildir, max_size, previous, c))).collect();
            // A worker's panic is this login's, as it would be on one thread (never a listing
            // with a part missing).
            running.into_iter().map(|worker| worker.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        }),
    };
    Ok(listed.concat())
}

/// Listings with at least this many files to read (no size in the name) are measured on
/// several threads.
const PARALLEL_LISTING_FROM: usize = 4096;

/// Size up `found` (sorted names from [`list`]), skipping what cannot be served.
fn measure(
    maildir: &Maildir,
    max_size: u64,
    previous: &Previous,
    found: Vec<(u64, OsString, Option<u64>, Sub)>,
) -> Vec<Found> {
    let path = maildir.path();
    let mut buf = vec![0u8; 64 * 1024]; // one read buffer for every file measured
    let mut entries = Vec::with_capacity(found.len());
    for (_, name, len, sub) in found {
        let name = name.into_vec();
        let (len, size, verbatim) = match size_from_name(&name) {
            Some(size) if size > max_size => {
                let file = Path::new(sub.dir()).join(OsStr::from_bytes(&name));
                tracing::warn!(maildir = %path.display(), file = ?file, "not serving a message larger than max_message_size");
                continue;
            }
            // The length is not needed when the name gives the size. A verbatim file's
            // length is its size; RETR may have learnt it (see `index::remember_verbatim`).
            Some(size) => match len.is_none_or(|len| len == size) && previous.is_verbatim(base_name(&name), size) {
                true => (size, size, true),
                false => (len.unwrap_or(0), size, false),
            },
            None => match indexed_or_measured(maildir, sub, &name, len, previous, &mut buf, max_size) {
                Ok(found) => found,
                Err(e) => {
                    // One unreadable file must not hide the rest of the mailbox.
                    let file = Path::new(sub.dir()).join(OsStr::from_bytes(&name));
                    tracing::warn!(maildir = %path.display(), file = ?file, error = %e, "skipping unreadable message");
                    continue;
                }
            },
        };
        entries.push((sub, name, len, size, verbatim));
    }
    entries
}

/// `(length, POP3 size, verbatim)` of a message: from the index when the length (from the
/// listing, else from a `stat`) still matches, else counted by reading at most `max_size`
/// bytes of the file once.
fn indexed_or_measured(
    maildir: &Maildir,
    sub: Sub,
    name: &[u8],
    listed_len: Option<u64>,
    sizes: &Previous,
    buf: &mut [u8],
    max_size: u64,
) -> io::Result<(u64, u64, bool)> {
    let len = match listed_len {
        Some(len) => len,
        None => maildir.length(sub, name)?,
    };
    if let Some(size) = sizes.size_of(base_name(name), len) {
        return Ok((len, size, sizes.is_verbatim(base_name(name), len)));
    }
    let mut file = maildir.open_message(sub, name)?.take(max_size.saturating_add(1));
    let mut size = WireSize::default();
    let mut len = 0u64;
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            break;
        }
        len += n as u64;
        size.push(&buf[..n]);
    }
    if len > max_size {
        return Err(io::Error::other("grew past max_message_size while it was measured"));
    }
    Ok((len, size.finish(), size.is_verbatim()))
}

/// The leading decimal number of a maildir name (its delivery time), for ordering.
fn delivery_time(name: &[u8]) -> u64 {
    name.iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0')))
}

/// The CRLF size a Dovecot-style `,W=<size>` field in the base name announces.
fn size_from_name(name: &[u8]) -> Option<u64> {
    let base = base_name(name);
    let at = memchr::memmem::find(base, b",W=")?;
    let digits = &base[at + 3..];
    let digits = &digits[..digits.iter().take_while(|b| b.is_ascii_digit()).count()];
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const SUBDIRS: [&str; 3] = ["cur", "new", "tmp"];

    /// Open without flag updates: these tests watch the index, not the moves.
    fn open(dir: &Path) -> Result<Mailbox, OpenError> {
        Mailbox::open(&Location::at(dir, "x"), &Policy { no_flag_updates: true, ..Policy::default() })
    }

    fn uidls(mailbox: &Mailbox) -> Vec<String> {
        mailbox.messages().iter().map(|m| String::from_utf8(mailbox.uidl(m).to_vec()).unwrap()).collect()
    }

    fn names(dir: &Path, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_session_moves_new_to_cur_and_marks_retrieved_messages_seen() {
        let dir = maildir_with(&[
            ("new/1.a.host", b"a\n"),
            ("new/2.b.host", b"b\n"),
            ("cur/3.c.host:2,Fa", b"c\n"),
            ("cur/4.d.host:2,T", b"d\n"),
        ]);
        let mailbox = Mailbox::open(&Location::at(dir.path(), "x"), &Policy::default()).unwrap();
        assert!(names(dir.path(), "new").is_empty());
        assert_eq!(names(dir.path(), "cur"), vec!["1.a.host:2,", "2.b.host:2,", "3.c.host:2,Fa", "4.d.host:2,T"]);
        assert_eq!(uidls(&mailbox), vec!["1.a.host", "2.b.host", "3.c.host", "4.d.host"]);
        let mut text = String::new();
        mailbox.open_message(0).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "a\n", "the message is followed to cur/");
        // Another program renames message 3 meanwhile: it is found by its base name.
        fs::rename(dir.path().join("cur/3.c.host:2,Fa"), dir.path().join("cur/3.c.host:2,FRa")).unwrap();
        let removal = mailbox.update(&[], &[0, 2], &[3]);
        assert_eq!(removal, Removal { removed: 1, failed: vec![] });
        assert_eq!(names(dir.path(), "cur"), vec!["1.a.host:2,S", "2.b.host:2,", "3.c.host:2,FRSa"]);
        drop(mailbox);
        let again = open(dir.path()).unwrap();
        assert_eq!(uidls(&again), vec!["1.a.host", "2.b.host", "3.c.host"], "flags never change a UIDL");
    }

    #[test]
    fn no_flag_updates_leaves_names_alone() {
        let dir = maildir_with(&[("new/1.a.host", b"a\n")]);
        let mailbox = open(dir.path()).unwrap();
        mailbox.update(&[], &[0], &[]);
        assert_eq!(names(dir.path(), "new"), vec!["1.a.host"]);
    }

    #[test]
    fn dovecot_uidlist_uidls_are_remembered_after_dovecot_numbers_new_mail() {
        let dir = maildir_with(&[("cur/1.a.host:2,S", b"a\n"), ("new/2.b.host", b"b\n")]);
        fs::write(dir.path().join("dovecot-uidlist"), b"3 V1700000000 N2\n1 :1.a.host:2,S\n").unwrap();
        let first = uidls(&open(dir.path()).unwrap());
        assert_eq!(first, vec!["000000016553f100", "2.b.host"]);
        // Dovecot's imap numbers the new message and a third arrives.
        fs::write(dir.path().join("dovecot-uidlist"), b"3 V1700000000 N3\n1 :1.a.host:2,S\n2 :2.b.host\n").unwrap();
        fs::write(dir.path().join("new/3.c.host"), b"c\n").unwrap();
        let second = uidls(&open(dir.path()).unwrap());
        assert_eq!(second, vec!["000000016553f100", "2.b.host", "3.c.host"], "a UIDL once given never changes");
        // Without apopd's memory (index removed), the rules alone give Dovecot's UIDL.
        fs::remove_file(dir.path().join(index::INDEX_FILE)).unwrap();
        assert_eq!(uidls(&open(dir.path()).unwrap())[1], "000000026553f100");
    }

    #[test]
    fn a_big_mailbox_listed_on_several_threads_keeps_its_order_and_sizes() {
        let count = PARALLEL_LISTING_FROM + 123;
        let bodies: Vec<(String, Vec<u8>)> = (0..count)
            .map(|i| {
                (
                    format!("{}/{}.m{i}.host", if i % 3 == 0 { "new" } else { "cur" }, 1_000_000 + i),
                    b"ab\n".repeat(i % 5),
                )
            })
            .collect();
        let files: Vec<(&str, &[u8])> = bodies.iter().map(|(n, b)| (n.as_str(), &b[..])).collect();
        let dir = maildir_with(&files);
        let mailbox = open(dir.path()).unwrap();
        let listed: Vec<(String, u64)> =
            mailbox.messages().iter().map(|m| (String::from_utf8(mailbox.name(m).to_vec()).unwrap(), m.size)).collect();
        let expected: Vec<(String, u64)> =
            (0..count).map(|i| (format!("{}.m{i}.host", 1_000_000 + i), 4 * (i % 5) as u64)).collect();
        assert_eq!(listed, expected, "oldest first, every size right");
    }

    fn maildir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for sub in SUBDIRS {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        for (name, body) in files {
            fs::write(dir.path().join(name), body).unwrap();
        }
        dir
    }

    #[test]
    fn scans_new_and_cur_oldest_first_with_crlf_sizes() {
        let dir = maildir_with(&[
            ("new/300.a.host", b"Subject: b\n\nbody\n"),
            ("cur/100.b.host:2,S", b"Subject: a\r\n\r\nbody\r\n"),
            ("cur/.hidden", b"x"),
            ("tmp/200.c.host", b"in delivery"),
        ]);
        let mailbox = open(dir.path()).unwrap();
        let m = mailbox.messages();
        assert_eq!(m.len(), 2);
        assert_eq!(uidls(&mailbox), vec!["100.b.host", "300.a.host"]);
        assert_eq!(m[0].size, 20);
        assert_eq!(m[1].size, 20, "bare LFs count as CRLF");
    }

    #[test]
    fn size_field_in_name_is_used() {
        assert_eq!(size_from_name(b"1.M2P3.host,S=100,W=104:2,S"), Some(104));
        assert_eq!(size_from_name(b"1.M2P3.host,S=100:2,W=5"), None);
        let dir = maildir_with(&[("new/1.x,S=3,W=7", b"abc")]);
        assert_eq!(open(dir.path()).unwrap().messages()[0].size, 7);
    }

    /// Set both served directories' mtimes to `when`, as if nothing had changed since.
    fn settle(dir: &Path, when: std::time::SystemTime) {
        for sub in Sub::BOTH {
            File::open(dir.join(sub.dir())).unwrap().set_modified(when).unwrap();
        }
    }

    #[test]
    fn measured_sizes_are_indexed_and_revalidated() {
        let dir = maildir_with(&[("new/1.a.host", b"a\nb\n"), ("cur/2.b.host:2,S", b"c\n")]);
        let first: Vec<u64> = open(dir.path()).unwrap().messages().iter().map(|m| m.size).collect();
        assert_eq!(first, vec![6, 3], "new/1.a comes before cur/2.b: delivery time 1 < 2");
        // Directories changed just now: the next login lists them again, and a size is
        // taken from the index only while the file keeps its length.
        fs::write(dir.path().join("new/1.a.host"), b"a\nbc\n").unwrap();
        let again: Vec<u64> = open(dir.path()).unwrap().messages().iter().map(|m| m.size).collect();
        assert_eq!(again, vec![7, 3], "length changed: measured again");
    }

    #[test]
    fn a_settled_maildir_is_served_from_the_index_until_it_changes() {
        let dir = maildir_with(&[("new/1.a.host", b"a\n"), ("cur/2.b.host:2,S", b"bb\n")]);
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        settle(dir.path(), past);
        assert_eq!(open(dir.path()).unwrap().messages().len(), 2);
        // Proof that no directory is read now: a file rewritten in place (which maildir
        // writers never do) keeps its indexed size, and a file added behind our back with the
        // mtimes restored is not seen.
        fs::write(dir.path().join("new/1.a.host"), b"longer\n").unwrap();
        fs::write(dir.path().join("new/3.c.host"), b"c\n").unwrap();
        settle(dir.path(), past);
        let mailbox = open(dir.path()).unwrap();
        let sizes: Vec<u64> = mailbox.messages().iter().map(|m| m.size).collect();
        assert_eq!((uidls(&mailbox), sizes), (vec!["1.a.host".to_owned(), "2.b.host".to_owned()], vec![3, 4]));
        drop(mailbox);
        // Any real change (here a delivery) moves new/'s mtime: the directories are read again.
        fs::rename(dir.path().join("new/3.c.host"), dir.path().join("new/4.d.host")).unwrap();
        assert_eq!(uidls(&open(dir.path()).unwrap()), vec!["1.a.host", "2.b.host", "4.d.host"]);
    }

    #[test]
    fn missing_subdirectories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = open(dir.path()).unwrap();
        assert!(mailbox.messages().is_empty());
        assert!(dir.path().join("tmp").is_dir());
    }

    #[test]
    fn remove_follows_renamed_files_and_reports_counts() {
        let dir = maildir_with(&[("new/1.a", b"a\n"), ("new/2.b", b"b\n"), ("cur/3.c:2,", b"c\n")]);
        let mailbox = open(dir.path()).unwrap();
        // Another program marks message 1 seen and deletes message 3 itself.
        fs::rename(dir.path().join("new/1.a"), dir.path().join("cur/1.a:2,S")).unwrap();
        fs::remove_file(dir.path().join("cur/3.c:2,")).unwrap();
        let removal = mailbox.remove(&[0, 2]);
        assert_eq!(removal, Removal { removed: 2, failed: vec![] });
        assert!(!dir.path().join("cur/1.a:2,S").exists());
        assert!(dir.path().join("new/2.b").exists());
    }

    #[test]
    fn open_message_follows_a_rename() {
        let dir = maildir_with(&[("new/1.a", b"hello\n")]);
        let mailbox = open(dir.path()).unwrap();
        fs::rename(dir.path().join("new/1.a"), dir.path().join("cur/1.a:2,S")).unwrap();
        let mut text = String::new();
        mailbox.open_message(0).unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello\n");
    }
}
