//! `populate`: build maildirs fast, with deterministic content and optional credentials.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::UserSet;
use crate::content::{self, MessageKey};
use crate::report::Report;

/// How message files are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Names {
    /// `1700000001.M1P7.pop3load`: the server must read the file to learn its size.
    Plain,
    /// Dovecot-style `…,S=<size>,W=<crlf size>`: sizes come from the name.
    Sized,
}

/// The line endings of message files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LineEnds {
    /// LF, with lines starting with '.': the server converts and byte-stuffs.
    Lf,
    /// CRLF and no line starting with '.': already in wire form (a server may `sendfile` it).
    Crlf,
}

/// The maildir subdirectory messages are written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Subdir {
    New,
    Cur,
}

#[derive(Args, Debug)]
pub struct Opts {
    /// The mail root: maildirs go to ROOT/<user>.
    #[arg(long)]
    root: PathBuf,
    #[command(flatten)]
    users: UserSet,
    /// Messages per user.
    #[arg(long, default_value_t = 10)]
    messages: u64,
    /// Bytes per message file (at least the ~200 bytes of headers).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// `lf`: LF line endings and dot lines (the usual maildir); `crlf`: files already in wire
    /// form. `retr` tells them apart by the Message-ID.
    #[arg(long, value_enum, default_value_t = LineEnds::Lf)]
    line_ends: LineEnds,
    #[arg(long, value_enum, default_value_t = Names::Plain)]
    names: Names,
    /// Where the messages go: `new` (just delivered) or `cur` (seen by a client before;
    /// names get the `:2,` info suffix, and no server needs to rename them).
    #[arg(long, value_enum, default_value_t = Subdir::New)]
    subdir: Subdir,
    /// The content seed; `retr` needs the same one to verify.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also add the users to credential files in this directory: `users` (apopd's argon2
    /// hashes), `apop-secrets` (apopd) and `dovecot-passwd` ({PLAIN}, for Dovecot's
    /// passwd-file; its password doubles as the APOP secret there). Existing entries stay.
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// The password written to the credential files.
    #[arg(long, default_value = "secret")]
    password: String,
    /// The APOP secret for apopd (Dovecot's APOP uses the password).
    #[arg(long)]
    apop_secret: Option<String>,
    /// uid:gid written into dovecot-passwd.
    #[arg(long, default_value = "65534:65534")]
    dovecot_uid_gid: String,
    /// Writer threads.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
}

/// The file name of message `k` (1-based) of a populated maildir.
pub fn file_name(k: u64, seed: u64, names: Names, file: &[u8]) -> String {
    let base = format!("{}.M{k}P{seed}.pop3load", 1_700_000_000 + k);
    match names {
        Names::Plain => base,
        Names::Sized => format!("{base},S={},W={}", file.len(), content::crlf_size(file)),
    }
}

pub async fn run(o: Opts) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || populate(&o)).await.context("populate task")?
}

fn populate(o: &Opts) -> anyhow::Result<bool> {
    let started = Instant::now();
    let users = o.users.names();
    if users.is_empty() {
        bail!("--users must be at least 1");
    }
    for user in &users {
        if !apopd::store::is_valid_user_name(user) {
            bail!("invalid user name {user:?}");
        }
        for sub in ["cur", "new", "tmp"] {
            let dir = o.root.join(user).join(sub);
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    let total = users.len() as u64 * o.messages;
    let next = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let failure: std::sync::Mutex<Option<anyhow::Error>> = std::sync::Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..o.jobs.clamp(1, 64) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let user = &users[(i / o.messages) as usize];
                    let k = i % o.messages + 1;
                    match write_message(&o.root, user, k, o) {
                        Ok(n) => {
                            bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            next.store(total, Ordering::Relaxed);
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    if let Some(dir) = &o.credentials {
        write_credentials(dir, &users, o)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = bytes.load(Ordering::Relaxed);
    let mut r = Report::new("populate");
    r.str("root", o.root.display().to_string())
        .int("users", users.len())
        .int("messages_per_user", o.messages)
        .int("messages", total)
        .int("size", o.size)
        .str("names", format!("{:?}", o.names).to_lowercase())
        .str("subdir", format!("{:?}", o.subdir).to_lowercase())
        .str("line_ends", format!("{:?}", o.line_ends).to_lowercase())
        .int("seed", o.seed)
        .int("bytes", bytes)
        .num("seconds", secs)
        .say(format!(
            "populate: {total} messages ({:.1} MB) for {} users in {}: {secs:.1} s",
            bytes as f64 / 1e6,
            users.len(),
            o.root.display()
        ));
    r.print();
    Ok(true)
}

fn write_message(root: &Path, user: &str, k: u64, o: &Opts) -> anyhow::Result<u64> {
    let key = MessageKey { user: user.to_owned(), index: k, size: o.size, crlf: o.line_ends == LineEnds::Crlf };
    let file = content::message(o.seed, &key);
    let name = file_name(k, o.seed, o.names, &file);
    let path = match o.subdir {
        Subdir::New => root.join(user).join("new").join(name),
        Subdir::Cur => root.join(user).join("cur").join(name + ":2,"),
    };
    fs::write(&path, &file).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(file.len() as u64)
}

fn write_credentials(dir: &Path, users: &[String], o: &Opts) -> anyhow::Result<()> {
    use apopd::auth::{password, users as files};
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // One argon2 hash serves every user: same password, and hashing thousands would take minutes.
    let hash = password::hash(o.password.as_bytes()).map_err(anyhow::Error::msg)?;
    let path = dir.join("users");
    let mut entries = files::read_entries(&path, true)?;
    for user in users {
        entries.insert(user.clone(), hash.clone());
    }
    files::write_entries(&path, &entries, &[])?;
    if let Some(secret) = &o.apop_secret {
        let path = dir.join("apop-secrets");
        let mut entries = files::read_entries(&path, true)?;
        for user in users {
            entries.insert(user.clone(), secret.clone());
        }
        files::write_entries(&path, &entries, &[])?;
    }
    let path = dir.join("dovecot-passwd");
    let mut out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    for user in users {
        text.push_str(&format!("{user}:{{PLAIN}}{}:{}::\n", o.password, o.dovecot_uid_gid));
    }
    out.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_sizes_when_asked() {
        let file = b"a\nb\n";
        assert_eq!(file_name(3, 9, Names::Plain, file), "1700000003.M3P9.pop3load");
        assert_eq!(file_name(3, 9, Names::Sized, file), "1700000003.M3P9.pop3load,S=4,W=6");
    }
}
