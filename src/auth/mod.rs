//! Who may log in: the users and APOP secrets files, password and APOP checks, password import.

pub mod apop;
pub mod import;
pub mod password;
pub mod sasl;
pub mod schemes;
pub mod throttle;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::Semaphore;

use schemes::Scheme;
use users::{Entries, FileError};

/// The users and secrets as last read, with the file times they were read at.
#[derive(Debug, Default)]
struct Table {
    hashes: Entries,
    secrets: Entries,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

/// Checks credentials; re-reads its files when they change, so `apopd user add` needs no restart.
#[derive(Debug)]
pub struct Authenticator {
    users_file: PathBuf,
    secrets_file: Option<PathBuf>,
    table: RwLock<Arc<Table>>,
    /// Bounds concurrent argon2 runs to the core count: each takes ~19 MiB and a core.
    hashing: Semaphore,
    /// Verified for unknown users, so they cost what a wrong password costs.
    dummy_hash: String,
    /// Replace an older scheme's hash by argon2id after a successful login.
    rehash_on_login: bool,
    /// Serialises this process's rewrites of the users file (beside the file lock).
    rewriting: Arc<Mutex<()>>,
}

fn modified(path: Option<&Path>) -> Option<SystemTime> {
    path.and_then(|p| std::fs::metadata(p).ok()).and_then(|m| m.modified().ok())
}

impl Authenticator {
    /// Read both files; errors name the file and line.
    pub fn load(users_file: &Path, secrets_file: Option<&Path>) -> Result<Self, FileError> {
        let auth = Authenticator {
            users_file: users_file.to_owned(),
            secrets_file: secrets_file.map(Path::to_owned),
            table: RwLock::new(Arc::new(Table::default())),
            hashing: Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
            dummy_hash: password::hash(b"apopd dummy password")
                .map_err(|e| FileError::Io { path: "(dummy hash)".into(), cause: std::io::Error::other(e) })?,
            rehash_on_login: true,
            rewriting: Arc::new(Mutex::new(())),
        };
        let table = auth.read_table()?;
        *auth.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        Ok(auth)
    }

    fn read_table(&self) -> Result<Table, FileError> {
        let stamp = (modified(Some(&self.users_file)), modified(self.secrets_file.as_deref()));
        let mut hashes = users::read_entries(&self.users_file, false)?;
        hashes.retain(|name, value| match schemes::parse(value) {
            Ok(_) => true,
            Err(why) => {
                tracing::error!(user = ?name, file = %self.users_file.display(), "unusable password hash: {why}");
                false
            }
        });
        let secrets = match &self.secrets_file {
            Some(path) => users::read_entries(path, true)?,
            None => Entries::new(),
        };
        Ok(Table { hashes, secrets, stamp })
    }

    /// The current table, re-read first if a file changed since (a bad edit keeps the old one).
    fn table(&self) -> Arc<Table> {
        let current = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        let stamp = (modified(Some(&self.users_file)), modified(self.secrets_file.as_deref()));
        if stamp == current.stamp {
            return current;
        }
        match self.read_table() {
            Ok(table) => {
                tracing::info!("users files changed: reloaded");
                let table = Arc::new(table);
                *self.table.write().unwrap_or_else(|e| e.into_inner()) = table.clone();
                table
            }
            Err(e) => {
                tracing::error!("cannot reload users, keeping the previous ones: {e}");
                current
            }
        }
    }

    /// Whether a successful login with an older scheme replaces the hash by argon2id (default on).
    pub fn with_rehash_on_login(mut self, on: bool) -> Self {
        self.rehash_on_login = on;
        self
    }

    /// True when `user` exists and `password` is theirs. Unknown users cost the same time.
    ///
    /// After a successful login with a scheme other than argon2id, and with `rehash_on_login`,
    /// the user's line in the users file is replaced by a fresh argon2id hash.
    pub async fn check_password(&self, user: &str, password: Vec<u8>) -> bool {
        let table = self.table();
        let (value, known) = match table.hashes.get(user) {
            Some(value) => (value.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let Ok(_permit) = self.hashing.acquire().await else { return false };
        let dummy = self.dummy_hash.clone();
        let rehash = self.rehash_on_login && known;
        let checked = tokio::task::spawn_blocking(move || {
            let stored = schemes::parse(&value).ok()?;
            let matched = stored.verify(&password);
            if !stored.scheme().is_argon2() {
                // An imported scheme (SHA-crypt takes ~1 ms, SSHA and PLAIN nothing) must not
                // answer faster than an unknown user, who costs one argon2id run.
                let _ = password::verify(&password, &dummy);
            }
            let upgrade = (matched && rehash && stored.scheme() != Scheme::Argon2id)
                .then(|| password::hash(&password).ok().map(|new| (stored.scheme(), value, new)))
                .flatten();
            Some((matched, upgrade))
        })
        .await;
        let Ok(Some((matched, upgrade))) = checked else { return false };
        if let (true, Some((scheme, old, new))) = (matched && known, upgrade) {
            self.rehash(user, scheme, old, new).await;
        }
        matched && known
    }

    /// Replace `user`'s `old` hash (of `scheme`) by `new` in the users file and in memory.
    /// A failure is logged and costs nothing else: the login has succeeded either way.
    async fn rehash(&self, user: &str, scheme: Scheme, old: String, new: String) {
        let path = self.users_file.clone();
        let rewriting = self.rewriting.clone();
        let name = user.to_owned();
        let written = tokio::task::spawn_blocking(move || {
            let _serial = rewriting.lock().unwrap_or_else(|e| e.into_inner());
            let _lock = users::lock(&path, &[])?;
            users::replace_value(&path, &name, &old, &new)
        })
        .await;
        match written {
            Ok(Ok(true)) => {
                tracing::info!(user = ?user, from = %scheme, "password rehashed to argon2id");
                // Read the whole file again rather than patch the table: it may hold other
                // changes (an `apopd user add`) this process has not loaded yet.
                match self.read_table() {
                    Ok(table) => *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table),
                    Err(e) => tracing::error!("cannot reload users after a rehash: {e}"),
                }
            }
            Ok(Ok(false)) => tracing::info!(user = ?user, "password changed meanwhile: not rehashed"),
            Ok(Err(e)) => tracing::warn!(user = ?user, from = %scheme, "cannot rehash the password to argon2id: {e}"),
            Err(e) => tracing::warn!(user = ?user, "rehash task failed: {e}"),
        }
    }

    /// True when `user` has an APOP secret and `digest` is right for `timestamp`.
    pub fn check_apop(&self, user: &str, timestamp: &str, digest: &str) -> bool {
        let table = self.table();
        match table.secrets.get(user) {
            Some(secret) => apop::verify(timestamp, secret.as_bytes(), digest),
            None => {
                // Same work as a known user, so timing tells nothing.
                let _ = apop::verify(timestamp, b"apopd dummy secret", digest);
                false
            }
        }
    }
}

impl sasl::Secrets for Authenticator {
    fn secret_of(&self, user: &str) -> Option<String> {
        self.table().secrets.get(user).cloned()
    }
}
