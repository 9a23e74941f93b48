//! Rewriting an index the last login could not trust, once the directories have settled.
//!
//! A listing taken within [`SETTLE`](super::index::SETTLE) of a change to `cur/` or `new/` is
//! never trusted (a change in the same timestamp tick could hide), so the next login would list
//! the directories again. After such a login (or one that moved mail from `new/` to `cur/`)
//! the server calls [`settle`] once the window has passed: under the mailbox lock it scans
//! again, which writes an index the next login — or the first after a restart — takes as is.
//! A login that finds the lock held by this process's settler waits for it (a scan is short)
//! instead of answering `[IN-USE]`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::lock::{LockError, MailboxLock};
use super::mailbox::{OpenError, scan};
use super::safe_fs::{Location, Maildir, Policy};

/// Maildirs this process is settling now.
static SETTLING: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

/// Maildirs with a settler scheduled: one at a time per maildir, however often it is logged into.
static SCHEDULED: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

/// Claim the one settler of the maildir at `dir`: false when one is already scheduled.
/// The settler calls [`unschedule`] when it is done.
pub fn schedule(dir: &Path) -> bool {
    SCHEDULED.lock().is_ok_and(|mut set| set.insert(dir.to_owned()))
}

/// The settler of `dir` is done.
pub fn unschedule(dir: &Path) {
    if let Ok(mut set) = SCHEDULED.lock() {
        set.remove(dir);
    }
}

/// The longest a login waits for a settler before it answers `[IN-USE]`.
const WAIT_AT_MOST: Duration = Duration::from_secs(5);

fn settling(path: &Path) -> bool {
    SETTLING.lock().is_ok_and(|set| set.contains(path))
}

/// Rescan the maildir at `location` unless a session has it. `Ok(true)` when the index it
/// wrote is settled; `Ok(false)` when the directories changed again too recently (try later);
/// `Err(OpenError::InUse)` when a session holds the mailbox (its end changes nothing that the
/// next login would not list anyway; try later).
///
/// Blocking: call it from a blocking task.
pub fn settle(location: &Location, policy: &Policy) -> Result<bool, OpenError> {
    let maildir = Maildir::open(location, policy, true)?;
    let path = maildir.path().to_owned();
    if let Ok(mut set) = SETTLING.lock() {
        set.insert(path.clone());
    }
    let result = (|| {
        let _lock = MailboxLock::try_acquire(&maildir)?;
        let (_, settled) = scan(&maildir, policy).map_err(OpenError::Io)?;
        Ok(settled)
    })();
    // After the lock is released: a login that saw the lock held and then finds the maildir
    // gone from the set can take the lock.
    if let Ok(mut set) = SETTLING.lock() {
        set.remove(&path);
    }
    result
}

/// Take the lock of `maildir` for a session: at once, or after this process's settler is done.
pub fn lock_for_session(maildir: &Maildir) -> Result<MailboxLock, LockError> {
    let started = Instant::now();
    let mut last_try = false;
    loop {
        match MailboxLock::try_acquire(maildir) {
            Err(LockError::InUse) if !last_try => {
                if settling(maildir.path()) && started.elapsed() < WAIT_AT_MOST {
                    std::thread::sleep(Duration::from_millis(5));
                } else {
                    // Not (or no longer) our settler: one more try, as it may have let go
                    // between the attempt and the look.
                    last_try = true;
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Mailbox;
    use std::fs;
    use std::time::SystemTime;

    fn set_mtimes(dir: &Path, when: SystemTime) {
        for sub in ["cur", "new"] {
            fs::File::open(dir.join(sub)).unwrap().set_modified(when).unwrap();
        }
    }

    #[test]
    fn an_index_listed_too_soon_is_rewritten_once_settled_and_never_trusted_before() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::at(dir.path(), "x");
        let policy = Policy { no_flag_updates: true, ..Policy::default() };
        let count = || Mailbox::open(&location, &policy).unwrap().messages().len();
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        fs::write(dir.path().join("cur/1.a.host:2,S"), b"a\n").unwrap();
        // Directories whose last change is not 2 s before a listing (here: stamped in the
        // future, so however slow the machine): a change in the same tick could hide.
        let soon = SystemTime::now() + Duration::from_secs(60);
        set_mtimes(dir.path(), soon);
        let mailbox = Mailbox::open(&location, &policy).unwrap();
        assert!(!mailbox.settled());
        drop(mailbox);
        // Such a change (a file added, the mtimes as they were) is seen: the index is not trusted.
        fs::write(dir.path().join("new/2.b.host"), b"b\n").unwrap();
        set_mtimes(dir.path(), soon);
        assert_eq!(count(), 2, "an unsettled index is never trusted");
        // The settler cannot run while a session has the mailbox.
        let session = Mailbox::open(&location, &policy).unwrap();
        assert!(matches!(settle(&location, &policy), Err(OpenError::InUse)));
        drop(session);
        assert!(!settle(&location, &policy).unwrap(), "still inside the window: not settled");
        // The last change 3 s ago: the settler's listing is settled.
        let past = SystemTime::now() - Duration::from_secs(3);
        set_mtimes(dir.path(), past);
        assert!(settle(&location, &policy).unwrap());
        assert!(Mailbox::open(&location, &policy).unwrap().settled());
        // From now on the index is the mailbox: a file slipped in behind its back with the
        // mtimes restored (which no maildir writer can do) is not listed, proving no readdir.
        fs::write(dir.path().join("new/3.c.host"), b"c\n").unwrap();
        set_mtimes(dir.path(), past);
        assert_eq!(count(), 2);
        // Any real change moves an mtime and is seen.
        fs::rename(dir.path().join("new/3.c.host"), dir.path().join("new/4.d.host")).unwrap();
        assert_eq!(count(), 3);
    }

    #[test]
    fn one_settler_per_maildir() {
        let dir = Path::new("/nonexistent/one_settler_per_maildir");
        assert!(schedule(dir));
        assert!(!schedule(dir), "already scheduled");
        unschedule(dir);
        assert!(schedule(dir));
        unschedule(dir);
    }

    #[test]
    fn a_login_waits_for_this_processs_settler_but_not_for_a_session() {
        let dir = tempfile::tempdir().unwrap();
        let location = Location::at(dir.path(), "x");
        let policy = Policy::default();
        let maildir = Maildir::open(&location, &policy, true).unwrap();
        let held = MailboxLock::try_acquire(&maildir).unwrap();
        assert!(matches!(lock_for_session(&maildir), Err(LockError::InUse)), "a session: refused at once");
        // The same lock, held by a settler of this process for 100 ms.
        SETTLING.lock().unwrap().insert(maildir.path().to_owned());
        let path = maildir.path().to_owned();
        let settler = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
            SETTLING.lock().unwrap().remove(&path);
        });
        assert!(lock_for_session(&maildir).is_ok(), "waited for the settler");
        settler.join().unwrap();
    }
}
