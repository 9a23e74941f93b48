//! The configuration file (TOML): keys, defaults and validation.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::auth::sasl::Mechanism;
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
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS (POP3S, RFC 8314) listeners; need `tls_cert` and `tls_key`.
    #[serde(default)]
    pub listen_tls: Vec<SocketAddr>,
    /// PEM certificate chain (leaf first) for STLS and POP3S.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Each user's maildir, `{user}` standing for the user name.
    pub mail_root: String,
    /// `name:argon2-PHC-string` lines.
    #[serde(default = "default_users_file")]
    pub users_file: PathBuf,
    /// `name:secret` lines for APOP; must be mode 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apop_secrets_file: Option<PathBuf>,
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
    /// Most simultaneous connections; more are answered `-ERR [SYS/TEMP]` and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
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
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 110))]
}
fn default_users_file() -> PathBuf {
    PathBuf::from("/etc/apopd/users")
}
fn default_sasl_mechanisms() -> Vec<Mechanism> {
    vec![Mechanism::Plain, Mechanism::Login]
}
fn default_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
fn default_max_message_size() -> u64 {
    Policy::default().max_message_size
}
fn default_idle_timeout() -> u64 {
    MIN_IDLE_TIMEOUT_SECS
}
fn default_auth_failure_delay() -> u64 {
    2000
}
fn default_max_connections() -> usize {
    1024
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
        for path in [&mut self.apop_secrets_file, &mut self.tls_cert, &mut self.tls_key] {
            *path = path.as_deref().map(|p| base.join(p));
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
        if let Some(m) = self.sasl_mechanisms.iter().find(|m| m.needs_secret())
            && self.apop_secrets_file.is_none()
        {
            bail!("sasl_mechanisms: {} needs apop_secrets_file (it checks the APOP secret)", m.name());
        }
        if self.max_message_size == 0 {
            bail!("max_message_size: must be at least 1");
        }
        if self.max_connections == 0 {
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
        if self.run_as_group.is_some() && self.run_as_user.is_none() {
            bail!("run_as_group: needs run_as_user");
        }
        if self.auth_failure_delay_ms > 60_000 {
            bail!("auth_failure_delay_ms: {} is over a minute; clients would time out", self.auth_failure_delay_ms);
        }
        Ok(())
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

    /// The effective configuration as TOML, for `apopd check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
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
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let c = parse("mail_root = \"mail/{user}\"\nusers_file = \"users\"\n").unwrap();
        assert_eq!(c.listen, default_listen());
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
    fn plaintext_policy() {
        let c = parse("mail_root = \"/m/{user}\"\nplaintext_auth_networks = [\"192.0.2.0/24\"]").unwrap();
        assert!(c.plaintext_allowed_from("127.0.0.1".parse().unwrap()));
        assert!(c.plaintext_allowed_from("::1".parse().unwrap()));
        assert!(c.plaintext_allowed_from("::ffff:192.0.2.7".parse().unwrap()));
        assert!(!c.plaintext_allowed_from("198.51.100.1".parse().unwrap()));
    }
}
