//! Session transcripts (`transcript_dir`): one file per session, every command and reply as
//! typed, for a teacher to read and for `apopd lab report`.
//!
//! A line is `HH:MM:SS.mmm C: …` (client), `… S: …` (server) or `… *: …` (a note such as
//! `login g01a APOP`). Nothing secret is written: PASS arguments, APOP digests, AUTH
//! initial responses and SASL exchanges become `***`, lines that are no POP3 command (a
//! password typed on a line of its own) are reduced to their length, and RETR/TOP bodies to
//! their status line and size.
//!
//! Writing never stalls a session: lines go through a bounded channel to one writer thread,
//! and when the channel is full or the disk fails they are dropped (logged once). Files are
//! mode 0600, each at most `transcript_max_bytes`, and at most `transcript_max_files` are
//! kept (the oldest, by name, go first).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer thread; beyond this they are dropped.
const QUEUE: usize = 8192;
/// The longest client line recorded (a command line is at most 255 octets anyway).
const MAX_LINE: usize = 512;
/// Commands recorded as typed (their arguments are message numbers, names or tags).
const PLAIN_COMMANDS: [&str; 14] =
    ["STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT", "CAPA", "STLS", "UTF8", "LANG", "AUTH"];
/// The suffix of transcript file names.
pub const SUFFIX: &str = ".transcript";

enum Msg {
    Open { id: u64, name: String, header: String },
    Line { id: u64, text: String },
    Close { id: u64 },
}

/// The server's side: hands out one [`Transcript`] per session and owns the writer thread.
#[derive(Debug)]
pub struct Transcripts {
    tx: SyncSender<Msg>,
    next: AtomicU64,
}

impl Transcripts {
    /// Create `dir` (mode 0700) if needed and start the writer thread.
    pub fn start(dir: &Path, max_bytes: u64, max_files: usize) -> anyhow::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("transcript_dir {}: {e}", dir.display()))?;
        let (tx, rx) = sync_channel(QUEUE);
        let writer = Writer { dir: dir.to_owned(), max_bytes, max_files, files: HashMap::new(), warned: false };
        std::thread::Builder::new()
            .name("transcripts".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| anyhow::anyhow!("cannot start the transcript writer: {e}"))?;
        Ok(Transcripts { tx, next: AtomicU64::new(0) })
    }

    /// A transcript for a new session from `peer`.
    pub fn open(&self, peer: SocketAddr) -> Transcript {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let (date, time) = utc(now.as_secs());
        let compact = format!("{date}T{time}Z").replace([':', '-'], "");
        let ip = peer.ip().to_canonical().to_string().replace(':', "_");
        let name = format!("{compact}-{ip}-{}-{}-{id}{SUFFIX}", peer.port(), std::process::id());
        let header = format!("# apopd transcript\n# start {date}T{time}Z\n# peer {peer}\n");
        let transcript = Transcript { id, tx: self.tx.clone(), after_auth_command: None };
        transcript.send(Msg::Open { id, name, header });
        transcript
    }
}

/// One session's transcript; the session owns it and calls it where it reads and sends lines.
#[derive(Debug)]
pub struct Transcript {
    id: u64,
    tx: SyncSender<Msg>,
    /// The login command just seen (`USER/PASS`, `APOP`, `AUTH`), for the login note.
    after_auth_command: Option<&'static str>,
}

impl Transcript {
    fn send(&self, msg: Msg) {
        // Full or writer gone: the line is lost, the session goes on.
        if let Err(TrySendError::Full(_)) = self.tx.try_send(msg) {
            tracing::debug!("transcript queue full; line dropped");
        }
    }

    fn line(&self, tag: char, text: &str) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let (_, time) = utc(now.as_secs());
        let text = format!("{time}.{:03} {tag}: {text}\n", now.subsec_millis());
        self.send(Msg::Line { id: self.id, text });
    }

    /// A line the client sent; `in_sasl` when it answers an AUTH challenge.
    pub fn client(&mut self, line: &[u8], in_sasl: bool) {
        let (text, method) = redact(line, in_sasl);
        if method.is_some() {
            self.after_auth_command = method;
        }
        self.line('C', &text);
    }

    /// Bytes the server sent (one or more CRLF lines); continuation challenges become `+ ***`.
    pub fn server(&mut self, bytes: &[u8]) {
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.starts_with(b"+ ") || line == b"+" {
                self.line('S', "+ ***");
            } else {
                self.line('S', &printable(line));
            }
        }
    }

    /// A RETR/TOP reply: the status line, then only how many octets followed it (byte-stuffed,
    /// without the final `.` line).
    pub fn message(&mut self, status: &[u8], octets: u64) {
        self.server(status);
        self.line('S', &format!("[{octets} octets sent, message text not recorded]"));
    }

    /// Logged in as `user`.
    pub fn login(&mut self, user: &str) {
        let method = self.after_auth_command.unwrap_or("AUTH");
        self.line('*', &format!("login {} {method}", printable(user.as_bytes())));
    }

    /// Something that is neither a command nor a reply (a timeout, STLS, a line too long).
    pub fn note(&mut self, text: &str) {
        self.line('*', text);
    }
}

impl Drop for Transcript {
    fn drop(&mut self) {
        self.line('*', "end");
        self.send(Msg::Close { id: self.id });
    }
}

/// The line as recorded, and the login method it starts, if any.
fn redact(line: &[u8], in_sasl: bool) -> (String, Option<&'static str>) {
    if in_sasl {
        return ("***".to_owned(), Some("AUTH"));
    }
    let line = &line[..line.len().min(MAX_LINE)];
    let text = printable(line);
    let mut words = text.split(' ');
    let keyword = words.next().unwrap_or_default();
    let upper = keyword.to_ascii_uppercase();
    let rest: Vec<&str> = words.collect();
    match upper.as_str() {
        "PASS" if rest.is_empty() => (keyword.to_owned(), None),
        "PASS" => (format!("{keyword} ***"), Some("USER/PASS")),
        "APOP" => match rest.as_slice() {
            [] => (keyword.to_owned(), Some("APOP")),
            [name] => (format!("{keyword} {name}"), Some("APOP")),
            [name, ..] => (format!("{keyword} {name} ***"), Some("APOP")),
        },
        "USER" => match rest.as_slice() {
            [] => (keyword.to_owned(), None),
            [name] => (format!("{keyword} {name}"), None),
            [name, ..] => (format!("{keyword} {name} ***"), None),
        },
        "AUTH" => match rest.as_slice() {
            [] => (keyword.to_owned(), None),
            [mech] => (format!("{keyword} {mech}"), Some("AUTH")),
            [mech, ..] => (format!("{keyword} {mech} ***"), Some("AUTH")),
        },
        _ if PLAIN_COMMANDS.contains(&upper.as_str()) => (text.clone(), None),
        _ => (format!("[{} octets, not a POP3 command]", line.len()), None),
    }
}

/// Text with control characters and non-UTF-8 bytes escaped, so a transcript stays one line each.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] })
        .collect()
}

/// `(YYYY-MM-DD, HH:MM:SS)` in UTC for seconds since the epoch.
pub fn utc(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days_from_civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60))
}

struct Open {
    file: File,
    written: u64,
    /// Past the size limit or failed: nothing more is written.
    done: bool,
}

struct Writer {
    dir: PathBuf,
    max_bytes: u64,
    max_files: usize,
    files: HashMap<u64, Open>,
    /// A write failed and that was logged; reset by the next success.
    warned: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Open { id, name, header } => {
                    self.rotate();
                    let opened = OpenOptions::new().write(true).create_new(true).mode(0o600).open(self.dir.join(&name));
                    match opened {
                        Ok(file) => {
                            self.files.insert(id, Open { file, written: 0, done: false });
                            self.write(id, &header);
                        }
                        Err(e) => self.failed(&name, &e),
                    }
                }
                Msg::Line { id, text } => self.write(id, &text),
                Msg::Close { id } => {
                    self.files.remove(&id);
                }
            }
        }
    }

    fn write(&mut self, id: u64, text: &str) {
        let Some(open) = self.files.get_mut(&id) else { return };
        if open.done {
            return;
        }
        let result = if open.written + text.len() as u64 > self.max_bytes {
            open.done = true;
            open.file.write_all(b"[truncated]\n")
        } else {
            open.written += text.len() as u64;
            open.file.write_all(text.as_bytes())
        };
        match result {
            Ok(()) => self.warned = false,
            Err(e) => {
                open.done = true;
                self.failed("a transcript", &e);
            }
        }
    }

    fn failed(&mut self, what: &str, e: &std::io::Error) {
        if !self.warned {
            tracing::warn!("cannot write {what} in {}: {e}; transcript lines are dropped", self.dir.display());
            self.warned = true;
        }
    }

    /// Remove the oldest transcripts so that a new one keeps the count within `max_files`.
    fn rotate(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(SUFFIX))
            .collect();
        if names.len() < self.max_files {
            return;
        }
        names.sort();
        for name in &names[..=names.len() - self.max_files] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(line: &str) -> String {
        redact(line.as_bytes(), false).0
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(recorded("PASS my secret pw"), "PASS ***");
        assert_eq!(recorded("pass x"), "pass ***");
        assert_eq!(recorded("APOP g01a c4c9334bac560ecc979e58001b3e22fb"), "APOP g01a ***");
        assert_eq!(recorded("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ="), "AUTH PLAIN ***");
        assert_eq!(recorded("USER g01a mypassword"), "USER g01a ***");
        assert_eq!(recorded("hunter-lamp-42"), "[14 octets, not a POP3 command]");
        assert_eq!(redact(b"AGFsaWNlAHdvbmRlcmxhbmQ=", true).0, "***");
    }

    #[test]
    fn commands_are_kept_as_typed() {
        for line in ["USER g01a", "retr 1", "TOP 1 0", "LIST", "QUIT", "AUTH", "AUTH PLAIN"] {
            assert_eq!(recorded(line), line);
        }
        assert_eq!(recorded("LIST 1\u{1b}[2J"), "LIST 1\\u{1b}[2J");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), ("1970-01-01".into(), "00:00:00".into()));
        assert_eq!(utc(951_782_400 + 3661), ("2000-02-29".into(), "01:01:01".into()));
        assert_eq!(utc(1_796_083_200), ("2026-12-01".into(), "00:00:00".into()));
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    }

    fn wait_for(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("timed out");
    }

    #[test]
    fn files_are_private_bounded_and_rotated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let transcripts = Transcripts::start(dir.path(), 1024, 3).unwrap();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut first = transcripts.open(peer);
        for _ in 0..100 {
            first.client(b"NOOP", false);
        }
        drop(first);
        wait_for(|| {
            files(dir.path()).first().is_some_and(|f| std::fs::read_to_string(f).unwrap().contains("[truncated]"))
        });
        let path = &files(dir.path())[0];
        assert_eq!(std::fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.len() <= 1024 + 12, "{}", text.len());
        assert!(text.ends_with("[truncated]\n"));
        for _ in 0..5 {
            drop(transcripts.open(peer));
        }
        wait_for(|| files(dir.path()).len() == 3 && !files(dir.path()).contains(path));
    }

    #[test]
    fn a_failing_disk_never_stops_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let transcripts = Transcripts::start(dir.path(), 1 << 20, 10).unwrap();
        // The directory disappears: every open fails; the session's calls return at once.
        std::fs::remove_dir(dir.path()).unwrap();
        let mut t = transcripts.open("127.0.0.1:1".parse().unwrap());
        let start = std::time::Instant::now();
        for _ in 0..(QUEUE * 2) {
            t.client(b"STAT", false);
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
