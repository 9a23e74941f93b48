//! The exclusive per-mailbox lock held for the whole TRANSACTION state.
//!
//! It is an `flock` on `<maildir>/apopd.lock`: exclusive between sessions of one process and
//! between processes, and released by the kernel when the holder dies, so no lock outlives
//! its session.

use std::fs::{File, TryLockError};
use std::io;

use super::safe_fs::Maildir;

/// The lock file's name inside the maildir.
pub const LOCK_FILE: &str = "apopd.lock";

/// A held mailbox lock; dropping it releases the lock.
#[derive(Debug)]
pub struct MailboxLock {
    _file: File,
}

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another session (in this or another process) has the mailbox.
    #[error("mailbox is locked by another session")]
    InUse,
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io { path: String, source: io::Error },
}

impl MailboxLock {
    /// Take the lock of `maildir` without waiting.
    pub fn try_acquire(maildir: &Maildir) -> Result<Self, LockError> {
        let path = maildir.path().join(LOCK_FILE);
        let io_err = |source| LockError::Io { path: path.display().to_string(), source };
        let file = maildir.lock_file(LOCK_FILE).map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => Ok(MailboxLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(LockError::InUse),
            Err(TryLockError::Error(e)) => Err(io_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::safe_fs::{Location, Policy};

    #[test]
    fn second_lock_is_refused_until_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Maildir::open(&Location::at(dir.path(), "x"), &Policy::default(), true).unwrap();
        let (a, b) = (open(), open());
        let first = MailboxLock::try_acquire(&a).unwrap();
        assert!(matches!(MailboxLock::try_acquire(&b), Err(LockError::InUse)));
        drop(first);
        assert!(MailboxLock::try_acquire(&b).is_ok());
    }
}
