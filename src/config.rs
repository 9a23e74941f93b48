//! The configuration file (TOML): keys, defaults and validation.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::auth::sasl::Mechanism;
use crate::i18n::Catalog;
use crate::store::uidl::Scheme;
use crate::store::{MailRoot, OwnerRule, Policy};

/// RFC 1939 §3: an inactivity autologout timer must be at least 10 minutes.
pub const MIN_IDLE_TIMEOUT_SECS: u64 = 600;

/// Everything `apopd serve` needs; docs/configuration.md describes each key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Plain POP3 listeners.
    #[serde(default = "default_listen")]
    pub listen: Vec<Listen>,
    /// Implicit-TLS (POP3S, RFC 8314) listeners; need `tls_cert` and `tls_key`.
    #[serde(default)]
    pub listen_tls: Vec<Listen>,
    /// Who may send a PROXY header to a `proxy_protocol` listener (empty: nobody).
    #[serde(default)]
    pub proxy_trusted_networks: Vec<IpNet>,
    /// PEM certificate chain (leaf first) for STLS and POP3S.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Each user's maildir, `{user}` standing for the user name.
    pub mail_root: String,
    /// `name:stored-password` lines: argon2id PHC strings, or imported `{SCHEME}…` / crypt(3) ones.
    #[serde(default = "default_users_file")]
    pub users_file: PathBuf,
    /// After a successful login with an imported (non-argon2id) hash, replace it by argon2id.
    #[serde(default = "default_true")]
    pub rehash_on_login: bool,
    /// Remember a successful password verification this long, so a repeat login skips argon2 (0: off).
    #[serde(default = "default_auth_cache_ttl")]
    pub auth_cache_ttl_secs: u64,
    /// At most this many users in the auth cache; the oldest entry makes room (0: off).
    #[serde(default = "default_auth_cache_max_entries")]
    pub auth_cache_max_entries: usize,
    /// `name:secret` lines for APOP; must be mode 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apop_secrets_file: Option<PathBuf>,
    /// Where accounts live (`[users]`); absent means the files above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Users>,
    /// The host name in the greeting's APOP timestamp.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Close a session silent for this long (no UPDATE).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// Wait this long before answering a failed login.
    #[serde(default = "default_auth_failure_delay")]
    pub auth_failure_delay_ms: u64,
    /// Networks where USER/PASS is allowed without TLS (loopback always is).
    #[serde(default)]
    pub plaintext_auth_networks: Vec<IpNet>,
    /// SASL mechanisms offered by AUTH. CRAM-MD5 and SCRAM-SHA-256 check the APOP secret, and
    /// clients such as curl and fetchmail pick them over PLAIN when offered, so they are opt-in.
    #[serde(default = "default_sasl_mechanisms")]
    pub sasl_mechanisms: Vec<Mechanism>,
    /// Minimum seconds between two logins of one user; advertised as LOGIN-DELAY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_delay_secs: Option<u64>,
    /// Most simultaneous connections. At the limit the oldest connection that has not logged
    /// in makes room for a new one; with only logged-in sessions, new ones get `-ERR [SYS/TEMP]`.
    /// Unset: sized from the open-file limit and memory ([`crate::capacity::Sizing`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Most simultaneous connections from one IP address.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Close a connection that has not logged in after this long between commands.
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout_secs: u64,
    /// Drop a client that does not take our output for this long.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_secs: u64,
    /// Failed-login delays double per recent failure (per IP and per user) up to this.
    #[serde(default = "default_auth_failure_delay_max")]
    pub auth_failure_delay_max_ms: u64,
    /// After this many failed logins from one IP within the window, refuse it until the window ends.
    #[serde(default = "default_max_auth_failures_per_ip")]
    pub max_auth_failures_per_ip: u32,
    /// How long failed logins are remembered.
    #[serde(default = "default_auth_failure_window")]
    pub auth_failure_window_secs: u64,
    /// On SIGTERM/SIGINT, how long sessions in UPDATE get to finish before the process exits.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Who must own each maildir and message: `auto`, `user`, `mail_user` or `any`.
    #[serde(default)]
    pub maildir_owner: OwnerRule,
    /// Follow symlinks from the `{user}` component of `mail_root` down to the maildir.
    #[serde(default)]
    pub allow_symlinked_maildir: bool,
    /// Messages larger than this many bytes are skipped, never read or served.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Where UIDLs come from: `auto`, `basename`, `courier`, `xuidl` or a Dovecot `pop3_uidl_format`.
    #[serde(default)]
    pub uidl_format: Scheme,
    /// Never move messages from `new/` to `cur/` nor mark retrieved messages seen.
    #[serde(default)]
    pub pop3_no_flag_updates: bool,
    /// When started as root: the user to run as after binding ports and reading keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_user: Option<String>,
    /// When started as root: the group to run as (default: `run_as_user`'s primary group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<String>,
    /// The language of replies until a client sends `LANG` (RFC 6856), e.g. `"ja"`.
    #[serde(default = "default_language")]
    pub language: String,
    /// A directory of `<tag>.toml` reply-text files that change or add languages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i18n_dir: Option<PathBuf>,
    /// Classroom mode: `-ERR` replies explain the mistake (never anything about credentials).
    #[serde(default)]
    pub lab_hints: bool,
    /// Classroom networks: exempt from per-IP throttling and refusal (per-user delays stay).
    #[serde(default)]
    pub lab_networks: Vec<IpNet>,
    /// Write one transcript file per session here (passwords and bodies left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_dir: Option<PathBuf>,
    /// Largest transcript file; past it, one `[truncated]` line and nothing more.
    #[serde(default = "default_transcript_max_bytes")]
    pub transcript_max_bytes: u64,
    /// Most transcript files kept; the oldest are removed when a session starts beyond it.
    #[serde(default = "default_transcript_max_files")]
    pub transcript_max_files: usize,
    /// Serve Prometheus metrics over HTTP at `/metrics` on this address (off when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines as `text` (default) or `json` (one object per line, for log shippers).
    #[serde(default)]
    pub log_format: LogFormat,
}

/// Which store holds the accounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `users_file` and `apop_secrets_file`.
    #[default]
    File,
    /// A PostgreSQL database, queried per login.
    Postgres,
}

/// The `[users]` table: the accounts backend and, for PostgreSQL, how to reach and query it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    /// `file` (default) or `postgres`.
    #[serde(default)]
    pub backend: Backend,
    /// libpq-style connection URL or key=value string; `sslmode=require` turns on TLS.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "redacted_url")]
    pub url: Option<String>,
    /// PEM CA certificates that sign the database server's certificate (with `sslmode=require`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// SQL returning the stored password (first column) of the user `$1`.
    #[serde(default = "default_password_query")]
    pub password_query: String,
    /// SQL returning the APOP secret (first column) of the user `$1`; empty turns APOP off.
    #[serde(default = "default_apop_secret_query")]
    pub apop_secret_query: String,
    /// Most database connections the server keeps open.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest wait for a connection and a query; past it the login gets `-ERR [SYS/TEMP]`.
    #[serde(default = "default_db_timeout")]
    pub timeout_ms: u64,
}

fn default_password_query() -> String {
    "SELECT password FROM pop3_users WHERE name = $1".to_owned()
}
fn default_apop_secret_query() -> String {
    "SELECT apop_secret FROM pop3_users WHERE name = $1".to_owned()
}
fn default_pool_size() -> usize {
    8
}
fn default_db_timeout() -> u64 {
    2000
}

/// `check-config` prints the config: never the database password in the URL.
fn redacted_url<S: serde::Serializer>(url: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_str(&redact_url(url)),
        None => serializer.serialize_none(),
    }
}

/// The URL with any password replaced by `***` (URL userinfo or a `password=` key).
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out.replace_range(scheme_end + 3 + colon + 1..scheme_end + 3 + at, "***");
        }
    }
    let lower = out.to_ascii_lowercase();
    if let Some(start) = lower.find("password=") {
        let value = start + "password=".len();
        let end = if out[value..].starts_with('\'') {
            // key=value strings may quote: password='a b'
            out[value + 1..].find('\'').map_or(out.len(), |e| value + e + 2)
        } else {
            out[value..].find(['&', ' ']).map_or(out.len(), |e| value + e)
        };
        out.replace_range(value..end, "***");
    }
    out
}

/// How `apopd serve` writes its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (what the shipped fail2ban filter matches).
    #[default]
    Text,
    /// One JSON object per line, with the session's span fields.
    Json,
}

fn default_transcript_max_bytes() -> u64 {
    1 << 20
}
fn default_transcript_max_files() -> usize {
    10_000
}

fn default_listen() -> Vec<Listen> {
    vec![Listen::from(SocketAddr::from(([127, 0, 0, 1], 110)))]
}

/// One listener: `"ADDR:PORT"`, or `{ addr = "ADDR:PORT", proxy_protocol = true }` for one that
/// requires a PROXY header (v1 or v2) from a `proxy_trusted_networks` address before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Listen {
    /// The plain form, `"ADDR:PORT"`.
    Addr(SocketAddr),
    /// The table form.
    Table(ListenTable),
}

/// The table form of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTable {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Whether every connection must start with a PROXY protocol header.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl Listen {
    /// Where to listen.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Listen::Addr(addr) | Listen::Table(ListenTable { addr, .. }) => *addr,
        }
    }

    /// Whether connections start with a PROXY header.
    pub fn proxy_protocol(&self) -> bool {
        matches!(self, Listen::Table(ListenTable { proxy_protocol: true, .. }))
    }
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Listen {
        Listen::Addr(addr)
    }
}

impl<'de> Deserialize<'de> for Listen {
    /// A string or a table, each with its own precise error (serde's untagged errors are vague).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Listen, D::Error> {
        struct ListenVisitor;
        impl<'de> serde::de::Visitor<'de> for ListenVisitor {
            type Value = Listen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"ADDR:PORT\" or { addr = \"ADDR:PORT\", proxy_protocol = true }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Listen, E> {
                v.parse().map(Listen::Addr).map_err(|e| E::custom(format!("{v:?}: {e}")))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Listen, A::Error> {
                ListenTable::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Listen::Table)
            }
        }
        deserializer.deserialize_any(ListenVisitor)
    }
}
fn default_users_file() -> PathBuf {
    PathBuf::from("/etc/apopd/users")
}
fn default_true() -> bool {
    true
}
fn default_sasl_mechanisms() -> Vec<Mechanism> {
    vec![Mechanism::Plain, Mechanism::Login]
}
/// This machine's host name (the kernel's), else `localhost`: the default `hostname`.
pub fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
fn default_language() -> String {
    "en".to_owned()
}
fn default_max_message_size() -> u64 {
    Policy::default().max_message_size
}
fn default_idle_timeout() -> u64 {
    MIN_IDLE_TIMEOUT_SECS
}
fn default_auth_cache_ttl() -> u64 {
    3600
}
fn default_auth_cache_max_entries() -> usize {
    100_000
}
fn default_auth_failure_delay() -> u64 {
    2000
}
fn default_max_connections_per_ip() -> usize {
    20
}
fn default_auth_timeout() -> u64 {
    120
}
fn default_write_timeout() -> u64 {
    120
}
fn default_auth_failure_delay_max() -> u64 {
    15_000
}
fn default_max_auth_failures_per_ip() -> u32 {
    20
}
fn default_auth_failure_window() -> u64 {
    900
}
fn default_shutdown_grace() -> u64 {
    10
}

impl Config {
    /// Read, resolve relative paths against the file's directory, and validate.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.validate().with_context(|| format!("invalid config {}", path.display()))?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        // `join` keeps an absolute path as it is.
        self.users_file = base.join(&self.users_file);
        let optional = [
            &mut self.apop_secrets_file,
            &mut self.tls_cert,
            &mut self.tls_key,
            &mut self.i18n_dir,
            &mut self.transcript_dir,
        ];
        for path in optional {
            *path = path.as_deref().map(|p| base.join(p));
        }
        if let Some(users) = &mut self.users {
            users.ca_file = users.ca_file.as_deref().map(|p| base.join(p));
        }
        if Path::new(&self.mail_root).is_relative() {
            self.mail_root = base.join(&self.mail_root).to_string_lossy().into_owned();
        }
    }

    /// Check every key; the error names the key and the problem.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.listen.is_empty() && self.listen_tls.is_empty() {
            bail!("listen: give at least one ADDR:PORT (in listen or listen_tls)");
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => bail!("tls_key: tls_cert is set, so tls_key must be too"),
            (None, Some(_)) => bail!("tls_cert: tls_key is set, so tls_cert must be too"),
            (None, None) if !self.listen_tls.is_empty() => bail!("listen_tls: needs tls_cert and tls_key"),
            _ => {}
        }
        MailRoot::new(&self.mail_root).context("mail_root")?;
        if self.idle_timeout_secs < MIN_IDLE_TIMEOUT_SECS {
            bail!(
                "idle_timeout_secs: {} is below RFC 1939's minimum of {MIN_IDLE_TIMEOUT_SECS}",
                self.idle_timeout_secs
            );
        }
        self.validate_users()?;
        if let Some(m) = self.sasl_mechanisms.iter().find(|m| m.needs_secret())
            && !self.apop_enabled()
        {
            match self.postgres() {
                Some(_) => {
                    bail!("sasl_mechanisms: {} needs users.apop_secret_query (it checks the APOP secret)", m.name())
                }
                None => bail!("sasl_mechanisms: {} needs apop_secrets_file (it checks the APOP secret)", m.name()),
            }
        }
        if self.max_message_size == 0 {
            bail!("max_message_size: must be at least 1");
        }
        if self.max_connections == Some(0) {
            bail!("max_connections: must be at least 1");
        }
        if self.max_connections_per_ip == 0 {
            bail!("max_connections_per_ip: must be at least 1");
        }
        for (key, value) in [
            ("auth_timeout_secs", self.auth_timeout_secs),
            ("write_timeout_secs", self.write_timeout_secs),
            ("auth_failure_window_secs", self.auth_failure_window_secs),
        ] {
            if value == 0 {
                bail!("{key}: must be at least 1");
            }
        }
        if self.auth_failure_delay_max_ms < self.auth_failure_delay_ms {
            bail!("auth_failure_delay_max_ms: must not be below auth_failure_delay_ms");
        }
        if self.max_auth_failures_per_ip == 0 {
            bail!("max_auth_failures_per_ip: must be at least 1");
        }
        if self.transcript_max_bytes < 1024 {
            bail!("transcript_max_bytes: must be at least 1024");
        }
        if self.transcript_max_files == 0 {
            bail!("transcript_max_files: must be at least 1");
        }
        if self.run_as_group.is_some() && self.run_as_user.is_none() {
            bail!("run_as_group: needs run_as_user");
        }
        if self.auth_failure_delay_ms > 60_000 {
            bail!("auth_failure_delay_ms: {} is over a minute; clients would time out", self.auth_failure_delay_ms);
        }
        let catalog = self.catalog()?;
        if catalog.index_of(&self.language).is_none() {
            let tags: Vec<&str> = catalog.languages().iter().map(|l| l.tag()).collect();
            bail!("language: {:?} is not one of {}", self.language, tags.join(", "));
        }
        Ok(())
    }

    /// The reply texts: the built-in languages and those in `i18n_dir`.
    pub fn catalog(&self) -> anyhow::Result<Catalog> {
        Catalog::load(self.i18n_dir.as_deref()).context("i18n_dir")
    }

    fn validate_users(&self) -> anyhow::Result<()> {
        let Some(users) = &self.users else { return Ok(()) };
        if users.backend == Backend::File {
            if users.url.is_some() || users.ca_file.is_some() {
                bail!("users.url: only used with users.backend = \"postgres\"");
            }
            return Ok(());
        }
        let Some(url) = &users.url else { bail!("users.url: users.backend = \"postgres\" needs a connection URL") };
        url.parse::<tokio_postgres::Config>().map_err(|e| anyhow::anyhow!("users.url: {e}"))?;
        if users.password_query.trim().is_empty() {
            bail!("users.password_query: must not be empty");
        }
        if users.pool_size == 0 {
            bail!("users.pool_size: must be at least 1");
        }
        if !(1..=60_000).contains(&users.timeout_ms) {
            bail!("users.timeout_ms: {} is not between 1 and 60000", users.timeout_ms);
        }
        Ok(())
    }

    /// The `[users]` table when the accounts are in PostgreSQL.
    pub fn postgres(&self) -> Option<&Users> {
        self.users.as_ref().filter(|u| u.backend == Backend::Postgres)
    }

    /// True when APOP is on: an APOP secrets file, or a PostgreSQL APOP secret query.
    pub fn apop_enabled(&self) -> bool {
        match self.postgres() {
            Some(users) => !users.apop_secret_query.trim().is_empty(),
            None => self.apop_secrets_file.is_some(),
        }
    }

    /// The validated mail root.
    pub fn mail_root(&self) -> anyhow::Result<MailRoot> {
        let policy = Policy {
            owner: self.maildir_owner,
            allow_symlinked_maildir: self.allow_symlinked_maildir,
            max_message_size: self.max_message_size,
            uidl: self.uidl_format.clone(),
            no_flag_updates: self.pop3_no_flag_updates,
        };
        Ok(MailRoot::new(&self.mail_root).context("mail_root")?.with_policy(policy))
    }

    /// Settings that work but put mail at risk, for `check-config` and the start-up log.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(addr) = self.metrics_listen.filter(|a| !a.ip().is_loopback()) {
            warnings.push(format!(
                "metrics_listen = \"{addr}\" is not a loopback address: whoever reaches it reads the server's counters (firewall it or use a management network)"
            ));
        }
        let proxied = self.listen.iter().chain(&self.listen_tls).any(Listen::proxy_protocol);
        if proxied && self.proxy_trusted_networks.is_empty() {
            warnings.push(
                "a listener has proxy_protocol = true but proxy_trusted_networks is empty: \
                 every connection to it will be refused"
                    .to_owned(),
            );
        }
        let home = self.mail_root().is_ok_and(|root| root.is_home_layout());
        if home && nix::unistd::geteuid().is_root() && self.run_as_user.is_none() {
            warnings.push(format!(
                "mail_root {:?} is in users' home directories and apopd runs as root without run_as_user: \
                 a user who can write to their maildir is confined only by apopd's checks (no symlinks, \
                 maildir_owner); set run_as_user to an account that cannot read other users' files",
                self.mail_root
            ));
        }
        if home && self.maildir_owner == OwnerRule::Any {
            warnings.push(
                "maildir_owner = \"any\" with maildirs in users' home directories: a hard link \
                 a user makes to another account's file would be served"
                    .to_owned(),
            );
        }
        if home && self.allow_symlinked_maildir {
            warnings.push(
                "allow_symlinked_maildir = true with maildirs in users' home directories: \
                 a user can point their maildir elsewhere; only maildir_owner stands in the way"
                    .to_owned(),
            );
        }
        warnings
    }

    /// `max_connections`, or the default sized for this machine when it is not set.
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or_else(|| crate::capacity::Sizing::of_this_machine().max_connections)
    }

    /// The inactivity timeout (TRANSACTION state).
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The inactivity timeout before login.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_secs)
    }

    /// How long one write may take.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_secs)
    }

    /// True when USER/PASS may be used without TLS by a client at `peer`.
    pub fn plaintext_allowed_from(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        peer.is_loopback() || self.plaintext_auth_networks.iter().any(|net| net.contains(&peer))
    }

    /// True when `peer` is in `lab_networks`: no per-IP throttling or refusal.
    pub fn is_lab_address(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.lab_networks.iter().any(|net| net.contains(&peer))
    }

    /// True when `peer` may send a PROXY header (it is in `proxy_trusted_networks`).
    pub fn proxy_trusted(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.proxy_trusted_networks.iter().any(|net| net.contains(&peer))
    }

    /// The effective configuration as TOML, for `apopd check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// The top-level keys whose effective values differ from `other`'s, sorted (tables such
    /// as `[users]` count as one key).
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let table = |config: &Config| match toml::Value::try_from(config) {
            Ok(toml::Value::Table(table)) => table,
            _ => toml::Table::new(),
        };
        let (old, new) = (table(self), table(other));
        let mut keys: Vec<String> =
            old.keys().chain(new.keys()).filter(|k| old.get(*k) != new.get(*k)).cloned().collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("apopd.toml");
        std::fs::write(&path, text)?;
        Config::load(&path)
    }

    #[test]
    fn changed_keys_names_top_level_keys_and_tables() {
        let a = parse("mail_root = \"/m/{user}\"\nmax_connections = 5").unwrap();
        let b = parse("mail_root = \"/m/{user}\"\nmax_connections = 6\nlogin_delay_secs = 3").unwrap();
        assert_eq!(a.changed_keys(&b), ["login_delay_secs", "max_connections"]);
        assert!(a.changed_keys(&a.clone()).is_empty());
        let c = parse("mail_root = \"/m/{user}\"\nmax_connections = 5\n[users]\nbackend = \"file\"").unwrap();
        assert_eq!(a.changed_keys(&c), ["users"]);
    }

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let c = parse("mail_root = \"mail/{user}\"\nusers_file = \"users\"\n").unwrap();
        assert_eq!(c.listen, default_listen());
        assert!(c.proxy_trusted_networks.is_empty());
        assert!(Path::new(&c.mail_root).is_absolute());
        assert!(c.users_file.is_absolute());
        assert_eq!(c.idle_timeout_secs, 600);
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(err("mail_root = \"/srv/mail\"").contains("mail_root"));
        assert!(err("mail_root = \"/m/{user}\"\nidle_timeout_secs = 5").contains("idle_timeout_secs"));
        assert!(err("mail_root = \"/m/{user}\"\nlisten = [\"nonsense\"]").contains("listen"));
        assert!(err("mail_root = \"/m/{user}\"\nlisten_typo = []").contains("listen_typo"));
        assert!(err("users_file = \"x\"").contains("mail_root"));
    }

    #[test]
    fn tls_keys_go_together() {
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(err("mail_root = \"/m/{user}\"\ntls_cert = \"c.pem\"").contains("tls_key"));
        assert!(err("mail_root = \"/m/{user}\"\nlisten_tls = [\"127.0.0.1:995\"]").contains("listen_tls"));
        let c = parse("mail_root = \"/m/{user}\"\ntls_cert = \"c.pem\"\ntls_key = \"/k.pem\"").unwrap();
        assert!(c.tls_cert.unwrap().is_absolute());
        assert_eq!(c.tls_key.unwrap(), PathBuf::from("/k.pem"));
    }

    #[test]
    fn sasl_mechanisms_are_checked() {
        let c = parse("mail_root = \"/m/{user}\"").unwrap();
        assert_eq!(c.sasl_mechanisms, vec![Mechanism::Plain, Mechanism::Login]);
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(err("mail_root = \"/m/{user}\"\nsasl_mechanisms = [\"CRAM-MD5\"]").contains("apop_secrets_file"));
        assert!(err("mail_root = \"/m/{user}\"\nsasl_mechanisms = [\"GSSAPI\"]").contains("sasl_mechanisms"));
        let c = parse("mail_root = \"/m/{user}\"\napop_secrets_file = \"s\"\nsasl_mechanisms = [\"SCRAM-SHA-256\"]");
        assert_eq!(c.unwrap().sasl_mechanisms, vec![Mechanism::ScramSha256]);
    }

    #[test]
    fn language_must_exist() {
        assert_eq!(parse("mail_root = \"/m/{user}\"").unwrap().language, "en");
        assert!(!parse("mail_root = \"/m/{user}\"").unwrap().lab_hints);
        assert_eq!(parse("mail_root = \"/m/{user}\"\nlanguage = \"zh-Hans\"").unwrap().language, "zh-Hans");
        let err = format!("{:#}", parse("mail_root = \"/m/{user}\"\nlanguage = \"de\"").unwrap_err());
        assert!(err.contains("language") && err.contains("ja"), "{err}");
        let err = format!("{:#}", parse("mail_root = \"/m/{user}\"\ni18n_dir = \"nowhere\"").unwrap_err());
        assert!(err.contains("i18n_dir") && err.contains("nowhere"), "{err}");
    }

    #[test]
    fn users_table() {
        let c = parse("mail_root = \"/m/{user}\"").unwrap();
        assert!(c.users.is_none() && c.postgres().is_none() && !c.apop_enabled());
        let c = parse("mail_root = \"/m/{user}\"\n[users]\nbackend = \"file\"").unwrap();
        assert!(c.postgres().is_none());
        let pg = "mail_root = \"/m/{user}\"\n[users]\nbackend = \"postgres\"\n";
        let c = parse(&format!("{pg}url = \"postgres://apopd:pw@db/mail\"\nca_file = \"ca.pem\"")).unwrap();
        let users = c.postgres().unwrap();
        assert_eq!(users.password_query, "SELECT password FROM pop3_users WHERE name = $1");
        assert_eq!((users.pool_size, users.timeout_ms), (8, 2000));
        assert!(users.ca_file.as_ref().unwrap().is_absolute());
        assert!(c.apop_enabled());
        assert!(!c.to_toml().contains("pw@"), "{}", c.to_toml());
        let c = parse(&format!("{pg}url = \"host=db user=apopd\"\napop_secret_query = \"\"")).unwrap();
        assert!(!c.apop_enabled());
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(err(pg).contains("users.url"));
        assert!(err(&format!("{pg}url = \"postgres://db/?sslmode=sometimes\"")).contains("users.url"));
        assert!(err(&format!("{pg}url = \"postgres://db\"\ntimeout_ms = 0")).contains("users.timeout_ms"));
        assert!(err(&format!("{pg}url = \"postgres://db\"\npool_size = 0")).contains("users.pool_size"));
        let cram = "sasl_mechanisms = [\"CRAM-MD5\"]";
        assert!(parse(&format!("{cram}\n{pg}url = \"postgres://db\"")).is_ok());
        let no_apop = format!("{cram}\n{pg}url = \"postgres://db\"\napop_secret_query = \"\"");
        assert!(err(&no_apop).contains("users.apop_secret_query"));
        assert!(err("mail_root = \"/m/{user}\"\n[users]\nurl = \"postgres://db\"").contains("users.url"));
        assert!(err("mail_root = \"/m/{user}\"\n[users]\nbackend = \"ldap\"").contains("backend"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(
            redact_url("postgres://u@db/x?password=s3&sslmode=require"),
            "postgres://u@db/x?password=***&sslmode=require"
        );
        assert_eq!(redact_url("host=db password=s3 user=u"), "host=db password=*** user=u");
        assert_eq!(redact_url("host=db password='a b' user=u"), "host=db password=*** user=u");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn plaintext_policy() {
        let c = parse("mail_root = \"/m/{user}\"\nplaintext_auth_networks = [\"192.0.2.0/24\"]").unwrap();
        assert!(c.plaintext_allowed_from("127.0.0.1".parse().unwrap()));
        assert!(c.plaintext_allowed_from("::1".parse().unwrap()));
        assert!(c.plaintext_allowed_from("::ffff:192.0.2.7".parse().unwrap()));
        assert!(!c.plaintext_allowed_from("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn listeners_take_both_shapes() {
        let text = "mail_root = \"/m/{user}\"\nproxy_trusted_networks = [\"10.0.0.0/8\"]\n\
                    listen = [\"127.0.0.1:110\", { addr = \"0.0.0.0:10110\", proxy_protocol = true }]";
        let c = parse(text).unwrap();
        assert_eq!(c.listen[0], Listen::Addr("127.0.0.1:110".parse().unwrap()));
        assert!(!c.listen[0].proxy_protocol());
        assert_eq!(c.listen[1].addr(), "0.0.0.0:10110".parse().unwrap());
        assert!(c.listen[1].proxy_protocol());
        assert!(c.warnings().is_empty());
        // The printed config reads back the same.
        assert_eq!(parse(&c.to_toml()).unwrap().listen, c.listen);
        let err = |text: &str| format!("{:#}", parse(text).unwrap_err());
        assert!(
            err("mail_root = \"/m/{user}\"\nlisten = [{ addr = \"127.0.0.1:1\", proxy = true }]").contains("proxy")
        );
        let lonely = parse("mail_root = \"/m/{user}\"\nlisten = [{ addr = \"127.0.0.1:1\", proxy_protocol = true }]");
        assert!(lonely.unwrap().warnings().iter().any(|w| w.contains("proxy_trusted_networks")));
    }
}
