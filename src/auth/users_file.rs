//! The file backend: `users_file` and `apop_secrets_file`, re-read when they change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::Verifier;
use super::cache::AuthCache;
use super::schemes::{self, Scheme};
use super::users::{self, Entries, FileError};

/// The users and secrets as last read, with the file times they were read at.
#[derive(Debug, Default)]
struct Table {
    hashes: Entries,
    secrets: Entries,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

/// Checks credentials; re-reads its files when they change, so `apopd user add` needs no restart.
#[derive(Debug)]
pub struct UsersFile {
    users_file: PathBuf,
    secrets_file: Option<PathBuf>,
    table: RwLock<Arc<Table>>,
    /// The argon2 runs, bounded, and the dummy hash for unknown users.
    verifier: Verifier,
    /// Replace an older scheme's hash by argon2id after a successful login.
    rehash_on_login: bool,
    /// Serialises this process's rewrites of the users file (beside the file lock).
    rewriting: Arc<Mutex<()>>,
}

fn modified(path: Option<&Path>) -> Option<SystemTime> {
    path.and_then(|p| std::fs::metadata(p).ok()).and_then(|m| m.modified().ok())
}

impl UsersFile {
    /// Read both files; errors name the file and line.
    pub fn load(users_file: &Path, secrets_file: Option<&Path>) -> Result<Self, FileError> {
        let auth = UsersFile {
            users_file: users_file.to_owned(),
            secrets_file: secrets_file.map(Path::to_owned),
            table: RwLock::new(Arc::new(Table::default())),
            verifier: Verifier::new()
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
                // Passwords may have changed or users gone: verify everyone afresh.
                self.verifier.forget_all();
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

    /// Remember successful verifications in `cache` (forgotten whenever the files change).
    pub fn with_cache(mut self, cache: AuthCache) -> Self {
        self.verifier = self.verifier.with_cache(cache);
        self
    }

    /// The password verifier (with its cache).
    pub(super) fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// True when `user` exists and `password` is theirs. Unknown users cost the same time.
    ///
    /// After a successful login with a scheme other than argon2id, and with `rehash_on_login`,
    /// the user's line in the users file is replaced by a fresh argon2id hash.
    pub async fn check_password(&self, user: &str, password: Vec<u8>) -> bool {
        let table = self.table();
        let stored = table.hashes.get(user).cloned();
        let known = stored.is_some();
        let Some(verified) = self.verifier.verify(user, stored, password, self.rehash_on_login).await else {
            return false;
        };
        if let (true, Some((scheme, old, new))) = (verified.matched, verified.upgrade) {
            self.rehash(user, scheme, old, new).await;
        }
        verified.matched && known
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
        super::verify_apop(table.secrets.get(user).map(String::as_str), timestamp, digest)
    }
}

impl super::sasl::Secrets for UsersFile {
    fn secret_of(&self, user: &str) -> Option<String> {
        self.table().secrets.get(user).cloned()
    }
}
