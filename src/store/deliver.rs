//! Safe delivery into a maildir: write into `tmp/`, fsync, rename into `new/`.
//!
//! The name carries Dovecot-style `,S=<file size>,W=<POP3 size>` fields, so a scan knows
//! every delivered message's size without reading it. (The maildir crate does the same dance
//! but chooses names without `,W=`, and adding it by a second rename would change the UIDL
//! of a message a session may already have seen.) A failure at any point removes the
//! temporary file: a message is either wholly in `new/` or not there at all.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::safe_fs::{Location, Maildir, Policy, WalkError};
use crate::protocol::response::WireSize;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The maildir is not safe to write to (a symlinked `tmp/` or `new/`, …): a permanent refusal.
    #[error("{0}")]
    Unsafe(String),
    /// Anything else: worth retrying.
    #[error("{0}")]
    Io(String),
}

/// Removes the temporary file unless delivery completed.
struct TmpFile<'a>(&'a Maildir, Option<String>);

impl Drop for TmpFile<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.1.take() {
            let _ = self.0.unlink_tmp(&name);
        }
    }
}

/// A host name safe inside a maildir name (`/` and `:` escaped as the maildir spec says).
fn name_safe(host: &str) -> String {
    host.replace('/', "\\057").replace(':', "\\072")
}

/// Store the message read from `input` in the maildir at `location`; returns its file name in
/// `new/`. No symlink is followed inside the maildir, nor (unless `policy` allows it) on the
/// way to it, and the file is created afresh (`O_EXCL`), never through an existing name.
pub fn deliver(
    location: &Location,
    policy: &Policy,
    host: &str,
    input: &mut impl Read,
) -> Result<String, DeliverError> {
    let maildir = Maildir::open(location, policy, false).map_err(|e| match e {
        WalkError::Unsafe(why) => DeliverError::Unsafe(why),
        WalkError::Io(why) => DeliverError::Io(why),
    })?;
    write_into(&maildir, host, input).map_err(|e| DeliverError::Io(format!("{}: {e}", maildir.path().display())))
}

fn write_into(maildir: &Maildir, host: &str, input: &mut impl Read) -> io::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let unique = format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        name_safe(host)
    );
    let mut file = maildir.create_in_tmp(&unique)?;
    let mut tmp = TmpFile(maildir, Some(unique.clone()));

    let (mut size, mut wire) = (0u64, WireSize::default());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        file.write_all(&buf[..n])?;
        size += n as u64;
        wire.push(&buf[..n]);
    }
    file.sync_all()?;
    drop(file);

    let name = format!("{unique},S={size},W={}", wire.finish());
    maildir.move_tmp_to_new(&unique, &name)?;
    tmp.1 = None;
    // Make the rename itself durable before telling the MTA the mail is safe.
    maildir.sync(super::index::Sub::New)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn deliver(dir: &Path, host: &str, input: &mut impl Read) -> Result<String, DeliverError> {
        super::deliver(&Location::at(dir, "x"), &Policy::default(), host, input)
    }

    #[test]
    fn delivered_mail_lands_whole_in_new_with_sizes_in_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let message = b"Subject: hi\n\nthere\n";
        let name = deliver(dir.path(), "mail.example", &mut &message[..]).unwrap();
        assert!(name.ends_with(".mail.example,S=19,W=22"), "{name}");
        assert_eq!(fs::read(dir.path().join("new").join(&name)).unwrap(), message);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn names_are_unique_and_safe() {
        let dir = tempfile::tempdir().unwrap();
        let a = deliver(dir.path(), "odd/host:name", &mut &b"a"[..]).unwrap();
        let b = deliver(dir.path(), "odd/host:name", &mut &b"a"[..]).unwrap();
        assert_ne!(a, b);
        assert!(!a.contains('/') && !a.contains(':'), "{a}");
    }

    #[test]
    fn a_failed_read_leaves_nothing_behind() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("input broke"));
                }
                self.0 -= 1;
                buf[0] = b'x';
                Ok(1)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(deliver(dir.path(), "h", &mut Failing(3)).is_err());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("new")).unwrap().count(), 0);
    }

    #[test]
    fn a_symlinked_tmp_or_new_is_refused_and_nothing_is_written_through_it() {
        for sub in ["tmp", "new"] {
            let root = tempfile::tempdir().unwrap();
            let (maildir, elsewhere) = (root.path().join("box"), root.path().join("elsewhere"));
            fs::create_dir_all(&elsewhere).unwrap();
            fs::create_dir_all(&maildir).unwrap();
            std::os::unix::fs::symlink(&elsewhere, maildir.join(sub)).unwrap();
            let refused = deliver(&maildir, "h", &mut &b"x"[..]).unwrap_err();
            assert!(matches!(refused, DeliverError::Unsafe(_)), "{sub}: {refused}");
            assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "{sub}");
        }
    }
}
