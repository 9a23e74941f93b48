//! Who may log in: one entry point ([`Authenticator`]) over the accounts backends (the users
//! files, PostgreSQL), password schemes, APOP and SASL checks, password import.

pub mod apop;
pub mod cache;
pub mod import;
pub mod password;
pub mod postgres;
pub mod sasl;
pub mod schemes;
pub mod throttle;
pub mod users;
pub mod users_file;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::metrics::Metrics;
use cache::AuthCache;
use postgres::Postgres;
use sasl::{Exchange, Mechanism, Step};
use schemes::Scheme;
use users_file::UsersFile;

/// The accounts backend could not answer (database down or slow): neither yes nor no.
#[derive(Debug, thiserror::Error)]
#[error("accounts database unavailable: {0}")]
pub struct Unavailable(pub String);

/// The outcome of a credential check: accepted, refused, or no answer from the backend.
pub type Checked = Result<bool, Unavailable>;

/// Checks credentials against the configured accounts backend.
#[derive(Debug)]
pub enum Authenticator {
    /// `users_file` and `apop_secrets_file` (the default).
    File(UsersFile),
    /// `[users] backend = "postgres"`.
    Postgres(Postgres),
}

impl Authenticator {
    /// The backend `config` names: reads the users files, or sets up the (lazy) database pool.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let cache = AuthCache::new(Duration::from_secs(config.auth_cache_ttl_secs), config.auth_cache_max_entries)
            .map_err(anyhow::Error::msg)?;
        Ok(match config.postgres() {
            Some(users) => Authenticator::Postgres(Postgres::new(users)?.with_cache(cache)),
            None => Authenticator::File(
                UsersFile::load(&config.users_file, config.apop_secrets_file.as_deref())?
                    .with_rehash_on_login(config.rehash_on_login)
                    .with_cache(cache),
            ),
        })
    }

    /// Count the auth cache's hits and misses in `metrics` from now on.
    pub fn count_in(&self, metrics: Arc<Metrics>) {
        let verifier = match self {
            Authenticator::File(file) => file.verifier(),
            Authenticator::Postgres(db) => db.verifier(),
        };
        verifier.cache.count_in(metrics);
    }

    /// Reads the database pool's `[open, idle, waiting]`, when there is a database.
    pub fn pool_reader(&self) -> Option<Box<dyn Fn() -> [i64; 3] + Send + Sync>> {
        match self {
            Authenticator::File(_) => None,
            Authenticator::Postgres(db) => Some(db.pool_reader()),
        }
    }

    /// Whether `password` is `user`'s; unknown users cost the same time as a wrong password.
    pub async fn check_password(&self, user: &str, password: Vec<u8>) -> Checked {
        match self {
            Authenticator::File(file) => Ok(file.check_password(user, password).await),
            Authenticator::Postgres(db) => db.check_password(user, password).await,
        }
    }

    /// Whether `user` has an APOP secret and `digest` is right for `timestamp`.
    pub async fn check_apop(&self, user: &str, timestamp: &str, digest: &str) -> Checked {
        match self {
            Authenticator::File(file) => Ok(file.check_apop(user, timestamp, digest)),
            Authenticator::Postgres(db) => db.check_apop(user, timestamp, digest).await,
        }
    }
}

impl Authenticator {
    /// Begin an AUTH exchange ([`Exchange::start`]), feeding `initial` through [`Self::sasl_step`].
    pub async fn sasl_start(
        &self,
        mechanism: Mechanism,
        initial: Option<Vec<u8>>,
        challenge_id: String,
    ) -> Result<(Exchange, Step), Unavailable> {
        match initial {
            // CRAM-MD5 refuses an initial response in `start` itself.
            Some(response) if mechanism != Mechanism::CramMd5 => {
                let (mut exchange, _) = Exchange::start(mechanism, None, challenge_id, self);
                let step = self.sasl_step(&mut exchange, &response).await?;
                Ok((exchange, step))
            }
            initial => Ok(Exchange::start(mechanism, initial, challenge_id, self)),
        }
    }

    /// Feed one decoded client response to `exchange`. The SASL state machines look secrets
    /// up synchronously: for the database, a dry run on a copy learns whose secret the step
    /// needs, the secret is fetched (bounded, may be [`Unavailable`]), then the step runs.
    pub async fn sasl_step(&self, exchange: &mut Exchange, response: &[u8]) -> Result<Step, Unavailable> {
        let Authenticator::Postgres(db) = self else { return Ok(exchange.step(response, self)) };
        let asked = Asked::default();
        let _ = exchange.clone().step(response, &asked);
        let Some(user) = asked.0.into_inner() else { return Ok(exchange.step(response, self)) };
        let secret = db.apop_secret(&user).await?;
        Ok(exchange.step(response, &Fetched { user, secret }))
    }
}

impl sasl::Secrets for Authenticator {
    fn secret_of(&self, user: &str) -> Option<String> {
        match self {
            Authenticator::File(file) => file.secret_of(user),
            // Reached only when a step asked for no secret in its dry run (see `sasl_step`).
            Authenticator::Postgres(_) => None,
        }
    }
}

/// Records which user's secret a dry-run SASL step asked for.
#[derive(Default)]
struct Asked(std::cell::RefCell<Option<String>>);

impl sasl::Secrets for Asked {
    fn secret_of(&self, user: &str) -> Option<String> {
        *self.0.borrow_mut() = Some(user.to_owned());
        None
    }
}

/// The one secret fetched for a SASL step.
struct Fetched {
    user: String,
    secret: Option<String>,
}

impl sasl::Secrets for Fetched {
    fn secret_of(&self, user: &str) -> Option<String> {
        (user == self.user).then(|| self.secret.clone()).flatten()
    }
}

/// Check an APOP digest against `secret`; an unknown user (`None`) costs the same work.
fn verify_apop(secret: Option<&str>, timestamp: &str, digest: &str) -> bool {
    match secret {
        Some(secret) => apop::verify(timestamp, secret.as_bytes(), digest),
        None => {
            let _ = apop::verify(timestamp, b"apopd dummy secret", digest);
            false
        }
    }
}

/// The result of one password verification.
#[derive(Debug)]
struct Verified {
    /// The password matched a real user's stored hash.
    matched: bool,
    /// For a rehash: the old scheme, the old stored value and a fresh argon2id hash.
    upgrade: Option<(Scheme, String, String)>,
}

/// Password verification shared by the backends: argon2 bounded to the core count, and the
/// dummy hash that makes an unknown user cost what a wrong password costs.
#[derive(Debug)]
pub struct Verifier {
    /// Bounds concurrent argon2 runs to the core count: each takes ~19 MiB and a core.
    hashing: Semaphore,
    /// Verified for unknown users, so they cost what a wrong password costs.
    dummy_hash: String,
    /// Recent successful verifications (off unless [`Verifier::with_cache`]).
    cache: AuthCache,
}

impl Verifier {
    /// A verifier with a fresh dummy hash.
    pub fn new() -> Result<Self, String> {
        Ok(Verifier {
            hashing: Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
            dummy_hash: password::hash(b"apopd dummy password")?,
            cache: AuthCache::off(),
        })
    }

    /// Remember successful verifications in `cache`.
    pub fn with_cache(mut self, cache: AuthCache) -> Self {
        self.cache = cache;
        self
    }

    /// Forget every remembered verification (the accounts changed).
    pub fn forget_all(&self) {
        self.cache.clear();
    }

    /// Verify `user`'s `password` against `stored` (`None`: an unknown user, checked against
    /// the dummy hash). With `rehash`, a match with a scheme other than argon2id also yields a
    /// new hash. `None` when the blocking task failed.
    ///
    /// A verification remembered by the cache answers at once (no rehash then); only the right
    /// password can match one, so a wrong one always takes the full path, for real and unknown
    /// users alike. A failure drops the user's entry; a success makes one.
    async fn verify(&self, user: &str, stored: Option<String>, password: Vec<u8>, rehash: bool) -> Option<Verified> {
        let known = stored.is_some();
        let value = stored.unwrap_or_else(|| self.dummy_hash.clone());
        if self.cache.hit(user, &password, &value) && known {
            return Some(Verified { matched: true, upgrade: None });
        }
        let verified = self.verify_fully(known, value.clone(), password.clone(), rehash).await?;
        if verified.matched {
            self.cache.insert(user, &password, &value);
        } else {
            self.cache.forget(user);
        }
        Some(verified)
    }

    /// The argon2 (or imported scheme) run, on a blocking thread, bounded by `hashing`.
    async fn verify_fully(&self, known: bool, value: String, password: Vec<u8>, rehash: bool) -> Option<Verified> {
        let _permit = self.hashing.acquire().await.ok()?;
        let dummy = self.dummy_hash.clone();
        let rehash = rehash && known;
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
            Some(Verified { matched: matched && known, upgrade })
        })
        .await;
        checked.ok().flatten()
    }
}
