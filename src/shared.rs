//! What every session of one server shares: configuration, credentials, TLS, the failed-login
//! throttle, the shutdown signal, the LOGIN-DELAY memory and the per-IP connection counts.
//!
//! Its own module so that both `server` (which builds it and counts connections) and
//! `session` (which reads it) import it, and `session` never imports `server`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::auth::Authenticator;
use crate::auth::apop::TimestampMaker;
use crate::auth::throttle::{Policy, Throttle};
use crate::config::Config;
use crate::i18n::{Catalog, Texts};
use crate::metrics::{Metrics, PoolSource};
use crate::store::MailRoot;
use crate::tls::Tls;
use crate::transcript::Transcripts;

/// State shared by all sessions of one server.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Credential checks (kept across a config reload that leaves the accounts settings alone).
    pub auth: Arc<Authenticator>,
    /// Greeting timestamps.
    pub timestamps: TimestampMaker,
    /// Where mailboxes are.
    pub mail_root: MailRoot,
    /// Every reply text in every language.
    pub i18n: Catalog,
    /// The index in `i18n` of the configured `language`, where sessions start.
    pub default_language: usize,
    /// Certificate and key, when TLS is configured.
    pub tls: Option<Tls>,
    /// Failed-login memory.
    pub throttle: Throttle,
    /// Session transcripts, when `transcript_dir` is set.
    pub transcripts: Option<Arc<Transcripts>>,
    /// Becomes true when the server shuts down; sessions watch it.
    pub shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    /// Every exported metric.
    pub metrics: Arc<Metrics>,
    /// When each user last logged in, for LOGIN-DELAY.
    last_login: Arc<Mutex<HashMap<String, Instant>>>,
    /// Open connections per client IP.
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Shared {
    /// Build from a validated config: loads the users files or sets up the accounts database pool.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let auth = Arc::new(Authenticator::from_config(&config)?);
        let transcripts = match &config.transcript_dir {
            Some(dir) => {
                Some(Arc::new(Transcripts::start(dir, config.transcript_max_bytes, config.transcript_max_files)?))
            }
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        metrics.watch_pool(auth.pool_reader().map(PoolSource));
        auth.count_in(metrics.clone());
        let throttle = Throttle::new(throttle_policy(&config));
        let carried = Carried {
            auth,
            transcripts,
            throttle,
            metrics,
            shutdown: Arc::new(tokio::sync::watch::Sender::new(false)),
            last_login: Arc::default(),
            per_ip: Arc::default(),
        };
        Self::build(config, carried)
    }

    /// The state for `config` (a SIGHUP reload), keeping what must outlive one configuration:
    /// failed-login and last-login memory, connection counts, metrics, the shutdown signal,
    /// and the accounts backend and transcript writer when their settings did not change.
    /// Sessions already open keep the `Shared` they started with.
    pub fn reload(&self, config: Config) -> anyhow::Result<Self> {
        let auth = match same_accounts(&self.config, &config) {
            true => self.auth.clone(),
            false => {
                let auth = Arc::new(Authenticator::from_config(&config)?);
                auth.count_in(self.metrics.clone());
                self.metrics.watch_pool(auth.pool_reader().map(PoolSource));
                auth
            }
        };
        let same_transcripts =
            (&self.config.transcript_dir, self.config.transcript_max_bytes, self.config.transcript_max_files)
                == (&config.transcript_dir, config.transcript_max_bytes, config.transcript_max_files);
        let transcripts = match (&config.transcript_dir, same_transcripts) {
            (_, true) => self.transcripts.clone(),
            (Some(dir), false) => {
                Some(Arc::new(Transcripts::start(dir, config.transcript_max_bytes, config.transcript_max_files)?))
            }
            (None, false) => None,
        };
        let carried = Carried {
            auth,
            transcripts,
            throttle: self.throttle.with_policy(throttle_policy(&config)),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            last_login: self.last_login.clone(),
            per_ip: self.per_ip.clone(),
        };
        Self::build(config, carried)
    }

    fn build(config: Config, carried: Carried) -> anyhow::Result<Self> {
        let Carried { auth, transcripts, throttle, metrics, shutdown, last_login, per_ip } = carried;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Tls::load(cert, key)?),
            _ => None,
        };
        let i18n = config.catalog()?;
        let default_language = i18n.index_of(&config.language).unwrap_or(0);
        Ok(Shared {
            i18n,
            default_language,
            transcripts,
            throttle,
            shutdown,
            metrics,
            per_ip,
            tls,
            timestamps: TimestampMaker::new(&config.hostname),
            mail_root: config.mail_root()?,
            auth,
            config,
            last_login,
        })
    }

    /// The texts of the configured language (for replies outside a session).
    pub fn default_texts(&self) -> Texts<'_> {
        self.i18n.texts(self.default_language, self.config.lab_hints)
    }

    /// The LOGIN-DELAY capability's seconds for a client at `ip`, when it has one (RFC 2449
    /// §6.5): `login_delay_secs`, or 0 where only the failed-login throttle can answer
    /// `[LOGIN-DELAY]` (no wait between good logins; the code may still come after failures).
    pub fn login_delay_capability(&self, ip: IpAddr) -> Option<u64> {
        self.config.login_delay_secs.or_else(|| (!self.throttle.is_exempt(ip)).then_some(0))
    }

    /// How long `user` must still wait under LOGIN-DELAY, if at all.
    pub fn login_delay_left(&self, user: &str, now: Instant) -> Option<Duration> {
        let delay = Duration::from_secs(self.config.login_delay_secs?);
        let last = *self.last_login.lock().unwrap_or_else(|e| e.into_inner()).get(user)?;
        delay.checked_sub(now.duration_since(last)).filter(|left| !left.is_zero())
    }

    /// Count a connection from `ip`, unless it already has `max_connections_per_ip`.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        // A classroom behind one NAT address has more students than a home has clients.
        if *count >= self.config.max_connections_per_ip && !self.config.is_lab_address(ip) {
            return None;
        }
        *count += 1;
        Some(IpSlot { shared: self.clone(), ip })
    }

    /// Remember a successful login, for LOGIN-DELAY.
    pub fn record_login(&self, user: &str, now: Instant) {
        if self.config.login_delay_secs.is_some() {
            self.last_login.lock().unwrap_or_else(|e| e.into_inner()).insert(user.to_owned(), now);
        }
    }
}

/// What a reload carries from one `Shared` to the next.
struct Carried {
    auth: Arc<Authenticator>,
    transcripts: Option<Arc<Transcripts>>,
    throttle: Throttle,
    metrics: Arc<Metrics>,
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    last_login: Arc<Mutex<HashMap<String, Instant>>>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

fn throttle_policy(config: &Config) -> Policy {
    Policy {
        base_delay: Duration::from_millis(config.auth_failure_delay_ms),
        max_delay: Duration::from_millis(config.auth_failure_delay_max_ms),
        max_failures_per_ip: config.max_auth_failures_per_ip,
        window: Duration::from_secs(config.auth_failure_window_secs),
        exempt: config.lab_networks.clone(),
    }
}

/// Whether two configs set up the same accounts backend (then a reload keeps the one open:
/// its pool, and the users files it re-reads by itself when they change).
fn same_accounts(old: &Config, new: &Config) -> bool {
    const ACCOUNTS: [&str; 6] = [
        "users",
        "users_file",
        "apop_secrets_file",
        "rehash_on_login",
        "auth_cache_ttl_secs",
        "auth_cache_max_entries",
    ];
    !old.changed_keys(new).iter().any(|key| ACCOUNTS.contains(&key.as_str()))
}

/// One counted connection from an IP; dropping it uncounts it.
pub(crate) struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}
