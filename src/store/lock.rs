//! The exclusive per-mailbox lock held for the whole TRANSACTION state.
//!
//! It is an `flock` on `<maildir>/apopd.lock`: exclusive between sessions of one process and
//! between processes, and released by the kernel when the holder dies, so no lock outlives
//! its session.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

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
    /// Take the lock of the maildir at `dir` without waiting.
    pub fn try_acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join(LOCK_FILE);
        let io_err = |source| LockError::Io { path: path.display().to_string(), source };
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_err)?;
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

    #[test]
    fn second_lock_is_refused_until_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = MailboxLock::try_acquire(dir.path()).unwrap();
        assert!(matches!(MailboxLock::try_acquire(dir.path()), Err(LockError::InUse)));
        drop(first);
        assert!(MailboxLock::try_acquire(dir.path()).is_ok());
    }
}
