//! Who may log in: the users and APOP secrets files, password and APOP checks.

pub mod apop;
pub mod password;
pub mod sasl;
pub mod throttle;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio::sync::Semaphore;

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
        };
        let table = auth.read_table()?;
        *auth.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        Ok(auth)
    }

    fn read_table(&self) -> Result<Table, FileError> {
        let stamp = (modified(Some(&self.users_file)), modified(self.secrets_file.as_deref()));
        let mut hashes = users::read_entries(&self.users_file, false)?;
        hashes.retain(|name, phc| match password::check_stored(phc) {
            Ok(()) => true,
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

    /// True when `user` exists and `password` is theirs. Unknown users cost the same time.
    pub async fn check_password(&self, user: &str, password: Vec<u8>) -> bool {
        let table = self.table();
        let (phc, known) = match table.hashes.get(user) {
            Some(phc) => (phc.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let Ok(_permit) = self.hashing.acquire().await else { return false };
        let matched = tokio::task::spawn_blocking(move || password::verify(&password, &phc)).await.unwrap_or(false);
        matched && known
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
