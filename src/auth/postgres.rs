//! The PostgreSQL backend: a pool, two lookups per the `[users]` queries, a bounded wait.
//!
//! A lookup that fails or takes longer than `users.timeout_ms` is [`Unavailable`]: the session
//! answers `-ERR [SYS/TEMP]`, never "wrong password", and no password is verified against
//! nothing. No row is an unknown user, checked against the dummy hash like the file backend.
//! The account management of `apopd user` (the `pop3_users` schema) is at the end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::cache::AuthCache;
use super::{Checked, Unavailable, Verifier, schemes};
use crate::config::Users;

/// The CA bundle used with `sslmode=require` when `users.ca_file` is not set (Debian's).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Accounts in a PostgreSQL database.
pub struct Postgres {
    pool: Pool,
    password_query: String,
    apop_secret_query: Option<String>,
    timeout: Duration,
    verifier: Verifier,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("password_query", &self.password_query).finish_non_exhaustive()
    }
}

/// How the driver connects: in plain text, or through rustls.
#[derive(Clone)]
pub enum Connector {
    /// No TLS (the URL does not say `sslmode=require`).
    Plain,
    /// TLS, verifying the server's certificate and host name against the CA file.
    Tls(MakeRustlsConnect),
}

impl Connector {
    /// The connector for `config`: rustls with the CAs from `ca_file` (default
    /// [`SYSTEM_CA_FILE`]) when the URL asks for `sslmode=require`, else plain.
    ///
    /// `prefer` (the driver's default) is taken as plain: rustls cannot fall back on a
    /// certificate it cannot verify, and "maybe encrypted" is no promise to build on.
    pub fn for_config(config: &tokio_postgres::Config, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        if config.get_ssl_mode() != SslMode::Require {
            return Ok(Connector::Plain);
        }
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_FILE));
        Ok(Connector::Tls(MakeRustlsConnect::new(client_tls(path)?)))
    }

    /// True for the rustls connector.
    pub fn is_tls(&self) -> bool {
        matches!(self, Connector::Tls(_))
    }
}

/// A rustls client config (ring only) trusting the PEM certificates in `path`.
fn client_tls(path: &Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path).with_context(|| format!("users.ca_file {}", path.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("users.ca_file {}", path.display()))?;
        roots.add(cert).with_context(|| format!("users.ca_file {}: unusable certificate", path.display()))?;
    }
    anyhow::ensure!(!roots.is_empty(), "users.ca_file {}: no certificate in it", path.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The driver's config from `users.url`, with the connect timeout bounded by `timeout_ms`.
fn driver_config(users: &Users) -> anyhow::Result<tokio_postgres::Config> {
    let url = users.url.as_deref().context("users.url: not set")?;
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| anyhow::anyhow!("users.url: {e}"))?;
    if config.get_application_name().is_none() {
        config.application_name("apopd");
    }
    config.connect_timeout(Duration::from_millis(users.timeout_ms));
    Ok(config)
}

/// The error and its causes on one line, for the log.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

impl Postgres {
    /// Set up the pool; no connection is made until the first login.
    pub fn new(users: &Users) -> anyhow::Result<Self> {
        let config = driver_config(users)?;
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match Connector::for_config(&config, users.ca_file.as_deref())? {
            Connector::Plain => Manager::from_config(config, NoTls, manager_config),
            Connector::Tls(tls) => Manager::from_config(config, tls, manager_config),
        };
        let timeout = Duration::from_millis(users.timeout_ms);
        let pool = Pool::builder(manager)
            .max_size(users.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .context("users: cannot set up the database pool")?;
        let apop_secret_query = Some(users.apop_secret_query.clone()).filter(|q| !q.trim().is_empty());
        Ok(Postgres {
            pool,
            password_query: users.password_query.clone(),
            apop_secret_query,
            timeout,
            verifier: Verifier::new().map_err(|e| anyhow::anyhow!("cannot make the dummy hash: {e}"))?,
        })
    }

    /// Remember successful verifications in `cache`: the stored hash is part of each entry, so
    /// a row changed in the database never matches an old one.
    pub fn with_cache(mut self, cache: AuthCache) -> Self {
        self.verifier = self.verifier.with_cache(cache);
        self
    }

    /// The password verifier (with its cache).
    pub(super) fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Reads the pool's `[open, idle, waiting]` (connections, and logins waiting for one), for
    /// the metrics.
    pub fn pool_reader(&self) -> Box<dyn Fn() -> [i64; 3] + Send + Sync> {
        let pool = self.pool.clone();
        Box::new(move || {
            let status = pool.status();
            let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
            [count(status.size), count(status.available), count(status.waiting)]
        })
    }

    /// The first column of the row `query` returns for `user` (`None`: no row, or NULL).
    async fn lookup(&self, query: &str, user: &str) -> Result<Option<String>, Unavailable> {
        let work = async {
            let client = self.pool.get().await.map_err(|e| causes(&e))?;
            let statement = client.prepare_cached(query).await.map_err(|e| causes(&e))?;
            let row = client.query_opt(&statement, &[&user]).await.map_err(|e| causes(&e))?;
            row.map(|row| row.try_get::<_, Option<String>>(0)).transpose().map(Option::flatten).map_err(|e| causes(&e))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(cause)) => Err(Unavailable(cause)),
            Err(_) => Err(Unavailable(format!("no answer within {} ms", self.timeout.as_millis()))),
        }
    }

    /// Run both queries once (for the empty user name), for `check-config`: proves the URL,
    /// credentials, TLS and queries work.
    pub async fn probe(&self) -> Result<(), Unavailable> {
        self.lookup(&self.password_query, "").await?;
        if let Some(query) = &self.apop_secret_query {
            self.lookup(query, "").await?;
        }
        Ok(())
    }

    /// The stored password of `user` as the password query returns it (`None`: no such user).
    pub async fn lookup_password(&self, user: &str) -> Result<Option<String>, Unavailable> {
        self.lookup(&self.password_query, user).await
    }

    /// Whether `password` is `user`'s. A missing row or an unusable hash costs the dummy
    /// argon2id run; a database error costs nothing and is [`Unavailable`].
    pub async fn check_password(&self, user: &str, password: Vec<u8>) -> Checked {
        let stored = self.lookup_password(user).await?.filter(|value| match schemes::parse(value) {
            Ok(_) => true,
            Err(why) => {
                tracing::error!(user = ?user, "unusable password hash in the database: {why}");
                false
            }
        });
        // No rehash: the database is the administrator's, apopd only reads it.
        Ok(self.verifier.verify(user, stored, password, false).await.is_some_and(|v| v.matched))
    }

    /// The APOP secret of `user` (`None`: no row, NULL, or APOP turned off), for SASL.
    pub async fn apop_secret(&self, user: &str) -> Result<Option<String>, Unavailable> {
        match &self.apop_secret_query {
            Some(query) => self.lookup(query, user).await,
            None => Ok(None),
        }
    }

    /// Whether `digest` is right for `user`'s APOP secret (an unknown user costs the same).
    pub async fn check_apop(&self, user: &str, timestamp: &str, digest: &str) -> Checked {
        let Some(query) = &self.apop_secret_query else { return Ok(false) };
        let secret = self.lookup(query, user).await?;
        Ok(super::verify_apop(secret.as_deref(), timestamp, digest))
    }
}

/// One account as `apopd user list` shows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Account {
    /// The user name.
    pub name: String,
    /// A password is stored.
    pub password: bool,
    /// An APOP secret is stored.
    pub apop: bool,
}

/// A single connection for `apopd user` (account management on the documented schema,
/// table `pop3_users`; the `[users]` queries are for logins only).
pub struct Accounts {
    client: Client,
    _connection: tokio::task::JoinHandle<()>,
}

impl Accounts {
    /// Connect with the `[users]` URL and TLS settings.
    pub async fn connect(users: &Users) -> anyhow::Result<Self> {
        let config = driver_config(users)?;
        let connected = match Connector::for_config(&config, users.ca_file.as_deref())? {
            Connector::Plain => config.connect(NoTls).await.map(|(c, conn)| (c, tokio::spawn(drive(conn)))),
            Connector::Tls(tls) => config.connect(tls).await.map(|(c, conn)| (c, tokio::spawn(drive(conn)))),
        };
        let (client, connection) =
            connected.map_err(|e| anyhow::anyhow!("cannot connect to the accounts database: {}", causes(&e)))?;
        Ok(Accounts { client, _connection: connection })
    }

    /// Insert a user; false when the name is taken.
    pub async fn add(&self, name: &str, hash: &str, apop_secret: Option<&str>) -> anyhow::Result<bool> {
        let sql =
            "INSERT INTO pop3_users (name, password, apop_secret) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";
        Ok(self.execute(sql, &[&name, &hash, &apop_secret]).await? == 1)
    }

    /// Replace a user's password (and the APOP secret when given); false when there is no such user.
    pub async fn set(&self, name: &str, hash: &str, apop_secret: Option<&str>) -> anyhow::Result<bool> {
        let updated = match apop_secret {
            Some(secret) => {
                let sql = "UPDATE pop3_users SET password = $2, apop_secret = $3 WHERE name = $1";
                self.execute(sql, &[&name, &hash, &secret]).await?
            }
            None => self.execute("UPDATE pop3_users SET password = $2 WHERE name = $1", &[&name, &hash]).await?,
        };
        Ok(updated == 1)
    }

    /// Delete a user; false when there was none.
    pub async fn delete(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self.execute("DELETE FROM pop3_users WHERE name = $1", &[&name]).await? == 1)
    }

    /// Every user, by name.
    pub async fn list(&self) -> anyhow::Result<Vec<Account>> {
        let sql = "SELECT name, password IS NOT NULL AND password <> '', apop_secret IS NOT NULL AND apop_secret <> '' \
                   FROM pop3_users ORDER BY name";
        let rows = self.client.query(sql, &[]).await.map_err(|e| anyhow::anyhow!("{}", causes(&e)))?;
        rows.iter()
            .map(|row| Ok(Account { name: row.try_get(0)?, password: row.try_get(1)?, apop: row.try_get(2)? }))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| anyhow::anyhow!("{}", causes(&e)))
    }

    async fn execute(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> anyhow::Result<u64> {
        self.client.execute(sql, params).await.map_err(|e| anyhow::anyhow!("{}", causes(&e)))
    }
}

/// Run a connection until it ends, logging why it did.
async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::warn!("accounts database connection: {}", causes(&e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    fn users(url: &str, ca_file: Option<PathBuf>) -> Users {
        let text = format!("backend = \"postgres\"\nurl = {url:?}\n");
        let mut users: Users = toml::from_str(&text).unwrap();
        users.ca_file = ca_file;
        users
    }

    #[test]
    fn sslmode_require_builds_a_rustls_connector_and_plain_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["db.example".to_owned()]).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.cert.pem()).unwrap();
        let connector = |url: &str, ca: Option<&Path>| {
            Connector::for_config(&driver_config(&users(url, None)).unwrap(), ca).map(|c| c.is_tls())
        };
        assert!(connector("postgres://a@db.example/mail?sslmode=require", Some(&ca_file)).unwrap());
        assert!(connector("host=db.example sslmode=require", Some(&ca_file)).unwrap());
        assert!(!connector("postgres://a@db.example/mail", Some(&ca_file)).unwrap());
        assert!(!connector("postgres://a@db.example/mail?sslmode=disable", None).unwrap());
        let missing = dir.path().join("missing.pem");
        let err = connector("postgres://db.example/?sslmode=require", Some(&missing)).unwrap_err();
        assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
        std::fs::write(&missing, "not a certificate\n").unwrap();
        let err = connector("postgres://db.example/?sslmode=require", Some(&missing)).unwrap_err();
        assert!(format!("{err:#}").contains("no certificate"), "{err:#}");
    }

    #[test]
    fn pool_needs_no_database_until_used() {
        let pg = Postgres::new(&users("postgres://apopd@127.0.0.1:1/mail", None)).unwrap();
        assert_eq!(pg.timeout, Duration::from_millis(2000));
        assert!(pg.apop_secret_query.is_some());
    }

    #[tokio::test]
    async fn unreachable_database_is_unavailable_not_wrong() {
        let pg = Postgres::new(&users("postgres://apopd@127.0.0.1:1/mail", None)).unwrap();
        let started = std::time::Instant::now();
        let checked = pg.check_password("alice", b"pw".to_vec()).await;
        assert!(matches!(checked, Err(Unavailable(_))), "{checked:?}");
        assert!(matches!(pg.check_apop("alice", "<1@x>", "00").await, Err(Unavailable(_))));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
