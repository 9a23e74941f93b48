//! The global connection limit, with room made by eviction: when `max_connections` are open,
//! the oldest connection that has not logged in is told to close so a newcomer gets its place
//! (what Dovecot's login processes do). A logged-in session is never evicted, so a flood of
//! idle pre-auth connections can slow honest users down but never lock them out.
//!
//! Its own module, below both `server` (which admits connections) and `session` (which says
//! when it logged in and listens for eviction).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Every open connection, and the not-yet-logged-in ones in the order they came.
#[derive(Debug)]
pub struct Capacity {
    inner: Mutex<Inner>,
    /// Woken when the last connection closes (for a graceful shutdown).
    all_closed: Notify,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    open: usize,
    next_id: u64,
    /// Pre-auth connections by arrival: the first is the oldest.
    waiting: BTreeMap<u64, Arc<Eviction>>,
}

/// How one connection learns it was evicted.
#[derive(Debug, Default)]
struct Eviction {
    evicted: AtomicBool,
    notify: Notify,
}

/// What [`Capacity::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// There was room.
    Admitted(Ticket),
    /// There was room once the oldest pre-auth connection was told to close.
    Evicted(Ticket),
    /// Full of logged-in sessions (or of connections already being evicted): refuse.
    Full,
}

impl Capacity {
    /// A limit of `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        let inner = Inner { max, open: 0, next_id: 0, waiting: BTreeMap::new() };
        Arc::new(Capacity { inner: Mutex::new(inner), all_closed: Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the limit (a config reload); connections over a lowered limit stay open.
    pub fn set_max(&self, max: usize) {
        self.lock().max = max;
    }

    /// Open connections, evicted ones that have not closed yet included.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Take a place for a new connection, evicting the oldest pre-auth one when full.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut inner = self.lock();
        let evicted = if inner.open < inner.max {
            false
        } else {
            // Evicted connections leave the queue at once but close a moment later; the
            // newcomer is admitted now, so `open` may briefly exceed `max` by those.
            match inner.waiting.pop_first() {
                Some((_, oldest)) => {
                    oldest.evicted.store(true, Ordering::Release);
                    oldest.notify.notify_one();
                    true
                }
                None => return Admission::Full,
            }
        };
        inner.open += 1;
        let id = inner.next_id;
        inner.next_id += 1;
        let eviction = Arc::new(Eviction::default());
        inner.waiting.insert(id, eviction.clone());
        let ticket = Ticket { capacity: Some(self.clone()), id, eviction };
        if evicted { Admission::Evicted(ticket) } else { Admission::Admitted(ticket) }
    }

    /// Wait until every admitted connection has closed.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            // Registered before the check, so a close between the two is not missed.
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One admitted connection's place; dropping it gives the place back.
#[derive(Debug)]
pub struct Ticket {
    /// `None` for a connection outside any limit (tests driving a session directly).
    capacity: Option<Arc<Capacity>>,
    id: u64,
    eviction: Arc<Eviction>,
}

impl Ticket {
    /// A ticket that counts nowhere and is never evicted.
    pub fn unlimited() -> Self {
        Ticket { capacity: None, id: 0, eviction: Arc::default() }
    }

    /// The connection logged in: from now on it is never evicted.
    pub fn logged_in(&self) {
        if let Some(capacity) = &self.capacity {
            capacity.lock().waiting.remove(&self.id);
        }
    }

    /// Whether this connection has been told to make room.
    pub fn is_evicted(&self) -> bool {
        self.eviction.evicted.load(Ordering::Acquire)
    }

    /// Completes when this connection is evicted (never, once it logged in).
    pub async fn evicted(&self) {
        loop {
            let notified = self.eviction.notify.notified();
            if self.is_evicted() {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(capacity) = &self.capacity else { return };
        let mut inner = capacity.lock();
        inner.waiting.remove(&self.id);
        inner.open -= 1;
        if inner.open == 0 {
            capacity.all_closed.notify_waiters();
        }
    }
}

/// Memory budgeted per connection when sizing the default `max_connections`: an idle
/// logged-in session measures about 5 KiB; one in RETR or a mailbox scan holds far more
/// for a while (transfer buffers, its message list).
pub const MEMORY_PER_CONNECTION: u64 = 64 * 1024;
/// Open files budgeted per connection: a logged-in session holds its socket, the maildir,
/// `cur/`, `new/`, `tmp/` and `apopd.lock` (opened once, checked against symlinks), and a
/// message file or the index while busy.
pub const FILES_PER_CONNECTION: u64 = 7;
/// Open files kept for everything else (listeners, log, users files, the metrics socket).
const RESERVED_FILES: u64 = 64;

/// What the default `max_connections` was sized from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizing {
    /// The open-file limit `serve` runs with (the hard limit: it raises the soft one to it).
    pub open_files: u64,
    /// Memory available to the process: RAM, or the cgroup's `memory.max` when lower.
    pub memory: u64,
    /// The resulting default.
    pub max_connections: usize,
}

impl Sizing {
    /// Size for this machine and process: the smaller of what the open-file limit and half
    /// of the memory allow.
    pub fn of_this_machine() -> Sizing {
        let open_files = open_files_limit().map_or(1024, |(_, hard)| hard);
        Sizing::from(open_files, available_memory().unwrap_or(1 << 30))
    }

    /// The rule itself.
    pub fn from(open_files: u64, memory: u64) -> Sizing {
        let by_files = Sizing::connections_for_files(open_files);
        let by_memory = memory / 2 / MEMORY_PER_CONNECTION;
        let max = by_files.min(by_memory).max(1);
        Sizing { open_files, memory, max_connections: usize::try_from(max).unwrap_or(usize::MAX) }
    }

    /// The most connections `open_files` descriptors can serve.
    pub fn connections_for_files(open_files: u64) -> u64 {
        open_files.saturating_sub(RESERVED_FILES) / FILES_PER_CONNECTION
    }
}

/// The `(soft, hard)` open-file limit.
pub fn open_files_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)
}

/// Raise the soft open-file limit to the hard one (systemd and most shells start services
/// at a soft 1024 that a server with thousands of connections outgrows); `(before, after)`.
pub fn raise_open_files_limit() -> std::io::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, setrlimit};
    let (soft, hard) = open_files_limit()?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok((soft, open_files_limit()?.0))
}

/// RAM, or this process's cgroup v2 `memory.max` when that is lower.
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let ram = kib * 1024;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|groups| {
        let path = groups.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
        let max = std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim_end_matches('/'))).ok()?;
        max.trim().parse::<u64>().ok()
    });
    Some(cgroup.map_or(ram, |limit| limit.min(ram)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(admission: Admission) -> Ticket {
        match admission {
            Admission::Admitted(t) | Admission::Evicted(t) => t,
            Admission::Full => panic!("refused"),
        }
    }

    #[test]
    fn the_oldest_waiting_connection_is_evicted_and_logged_in_ones_never() {
        let capacity = Capacity::new(3);
        let a = ticket(capacity.admit());
        let b = ticket(capacity.admit());
        let c = ticket(capacity.admit());
        a.logged_in();
        // Full: b is the oldest not logged in.
        let d = capacity.admit();
        assert!(matches!(d, Admission::Evicted(_)));
        assert!(!a.is_evicted() && b.is_evicted() && !c.is_evicted());
        let e = capacity.admit();
        assert!(matches!(e, Admission::Evicted(_)));
        assert!(c.is_evicted());
        assert_eq!(capacity.open(), 5);
        drop((b, c));
        assert_eq!(capacity.open(), 3);
        let (d, e) = (ticket(d), ticket(e));
        d.logged_in();
        e.logged_in();
        // Only logged-in sessions left: refused.
        assert!(matches!(capacity.admit(), Admission::Full));
        drop(a);
        assert!(matches!(capacity.admit(), Admission::Admitted(_)));
    }

    #[tokio::test]
    async fn eviction_wakes_the_waiting_connection_and_closing_all_is_seen() {
        let capacity = Capacity::new(1);
        let a = ticket(capacity.admit());
        let waiter = tokio::spawn(async move {
            a.evicted().await;
            drop(a);
        });
        let b = ticket(capacity.admit());
        waiter.await.unwrap();
        assert_eq!(capacity.open(), 1);
        let closing = tokio::spawn({
            let capacity = capacity.clone();
            async move { capacity.all_closed().await }
        });
        drop(b);
        closing.await.unwrap();
        assert_eq!(capacity.open(), 0);
    }

    #[test]
    fn the_default_is_the_smaller_of_what_files_and_memory_allow() {
        // systemd's default hard limit, 24 GiB: files decide ((524288 - 64) / 7).
        assert_eq!(Sizing::from(524_288, 24 << 30).max_connections, 74_889);
        // A big hard limit and 8 GiB: memory decides (4 GiB / 64 KiB).
        assert_eq!(Sizing::from(1 << 20, 8 << 30).max_connections, 65_536);
        // A 512 MiB container.
        assert_eq!(Sizing::from(1 << 20, 512 << 20).max_connections, 4_096);
        assert_eq!(Sizing::from(10, 0).max_connections, 1, "never zero");
        let here = Sizing::of_this_machine();
        assert!(here.max_connections >= 1 && here.memory > 0, "{here:?}");
    }

    #[test]
    fn a_lowered_limit_keeps_open_connections() {
        let capacity = Capacity::new(2);
        let a = ticket(capacity.admit());
        a.logged_in();
        let b = ticket(capacity.admit());
        b.logged_in();
        capacity.set_max(1);
        assert!(matches!(capacity.admit(), Admission::Full));
        assert!(!a.is_evicted() && !b.is_evicted());
    }
}
