//! The command line's shape (clap): every subcommand, argument and flag, with its help text.
//!
//! It lives in the library, not the binary, so that `xtask` can generate the man page and the
//! shell completions from the same definitions (`cargo run -p xtask -- dist`). What each
//! subcommand does is the binary's business (`src/cli.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;

use clap::{Parser, Subcommand};
use ipnet::IpNet;

/// The config file used when no --config is given.
pub const DEFAULT_CONFIG: &str = "/etc/apopd/apopd.toml";

/// What `apopd --version` prints after the name: the version and the TLS provider.
static VERSION: LazyLock<String> =
    LazyLock::new(|| format!("{} (TLS: {})", env!("CARGO_PKG_VERSION"), crate::tls::PROVIDER));

/// The parsed command line of `apopd`.
#[derive(Parser, Debug)]
#[command(name = "apopd", version = VERSION.as_str(), about = "A POP3/APOP server for maildir mailboxes")]
pub struct Args {
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of `apopd`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve POP3. Without --config, serves a copy of the bundled demo on 127.0.0.1:1110.
    Serve {
        /// The config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// The config file (default: /etc/apopd/apopd.toml if it exists, else a copy of the bundled demo).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the APOP digest of TIMESTAMP and SECRET (SECRET read from stdin when omitted).
    ApopDigest {
        /// The greeting's timestamp, angle brackets included, e.g. '<1896.697170952@dbc.mtview.ca.us>'.
        timestamp: String,
        /// The shared secret.
        secret: Option<String>,
    },
    /// Deliver the message on stdin into USER's maildir (tmp/, fsync, rename into new/).
    Deliver {
        /// The recipient.
        user: String,
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Manage the users file and APOP secrets.
    User {
        /// What to do with the users.
        #[command(subcommand)]
        action: UserAction,
    },
    /// Set up a POP3 classroom lab and review what the students did.
    Lab {
        /// What to do with the lab.
        #[command(subcommand)]
        action: LabAction,
    },
    /// Prepare a switch from another POP3 server (Dovecot, Courier, qpopper).
    Migrate {
        /// What to check.
        #[command(subcommand)]
        action: MigrateAction,
    },
}

/// The subcommands of `apopd lab`.
#[derive(Subcommand, Debug)]
pub enum LabAction {
    /// Create a lab server in DIR: config, accounts, maildirs with a welcome message, and the
    /// handout (handout.md, handout.html). Then run it with `apopd serve --config DIR/apopd.toml`.
    Init {
        /// The lab directory (must not exist or be empty, unless --add-groups).
        dir: PathBuf,
        /// How many groups (with --add-groups: how many to add).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=99))]
        groups: u32,
        /// Accounts per group (g01a, g01b, …).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=26), conflicts_with = "add_groups")]
        members: u32,
        /// Where the lab server listens (default: all addresses, port 1110).
        #[arg(long, value_name = "ADDR:PORT", conflicts_with = "add_groups")]
        listen: Option<SocketAddr>,
        /// The classroom network: USER/PASS allowed without TLS, no per-IP throttling (default: 127.0.0.0/8 only).
        #[arg(long, value_name = "CIDR", conflicts_with = "add_groups")]
        network: Option<IpNet>,
        /// The handout's language: en, ja, zh-Hans or uk.
        #[arg(long, default_value = "en", value_name = "LANG", conflicts_with = "add_groups")]
        language: String,
        /// The lab accounts' mail domain (default: lab.test).
        #[arg(long, conflicts_with = "add_groups")]
        domain: Option<String>,
        /// The server's name or address as printed on the handout (default: this machine's address in --network).
        #[arg(long, value_name = "HOST", conflicts_with = "add_groups")]
        server: Option<String>,
        /// DIR holds a lab already: add --groups more groups to it and rewrite the handout.
        #[arg(long)]
        add_groups: bool,
    },
    /// Print what each account did (from the transcripts and maildirs) and write DIR/report.html.
    Report {
        /// The lab directory.
        dir: PathBuf,
    },
}

/// The subcommands of `apopd migrate`.
#[derive(Subcommand, Debug)]
pub enum MigrateAction {
    /// Report, read-only, per maildir: how many messages keep the UIDL the old server gave
    /// (Dovecot's, Courier's, qpopper's X-UIDL) and how many get a new one, and why.
    Check {
        /// Maildirs, or mail roots whose subdirectories are maildirs.
        #[arg(required_unless_present = "passwd")]
        dirs: Vec<PathBuf>,
        /// The uidl_format to report for (as in the config file).
        #[arg(long, default_value = "auto")]
        uidl_format: String,
        /// Also report on a password file: which schemes it holds and whether each verifies.
        #[arg(long, value_name = "FILE")]
        passwd: Option<PathBuf>,
        /// The password file is /etc/shadow-style (default: Dovecot passwd-file).
        #[arg(long, requires = "passwd")]
        shadow: bool,
    },
}

/// The subcommands of `apopd user`.
#[derive(Subcommand, Debug)]
pub enum UserAction {
    /// Add a user: password from stdin's first line (prompted on a terminal).
    Add {
        /// The login name.
        name: String,
        /// Also set an APOP secret (stdin's second line).
        #[arg(long)]
        apop: bool,
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Change a user's password (and, with --apop, APOP secret).
    Passwd {
        /// The login name.
        name: String,
        /// Also set the APOP secret (stdin's second line).
        #[arg(long)]
        apop: bool,
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Remove a user's password and APOP secret (the maildir is left alone).
    Del {
        /// The login name.
        name: String,
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Import users with their existing password hashes from a Dovecot passwd-file or
    /// /etc/shadow: all lines or none. See docs/migration-passwords.md.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["dovecot_passwd", "shadow"])))]
    Import {
        /// A Dovecot passwd-file: `user:{SCHEME}hash:uid:gid:gecos:home:shell:extra` lines.
        #[arg(long, value_name = "FILE")]
        dovecot_passwd: Option<PathBuf>,
        /// An /etc/shadow-style file: `user:hash:lastchg:…` lines (locked accounts and root are skipped).
        #[arg(long, value_name = "FILE")]
        shadow: Option<PathBuf>,
        /// Also store each {PLAIN} password as the user's APOP secret (needs apop_secrets_file).
        #[arg(long, conflicts_with = "shadow")]
        apop_from_plain: bool,
        /// Overwrite users (and APOP secrets) that already exist instead of refusing.
        #[arg(long)]
        replace: bool,
        /// Print what the file holds and what an import would do; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// List users and which login methods each has.
    List {
        /// The config file.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_definitions_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn the_version_names_the_tls_provider() {
        let version = Args::command().render_version();
        assert_eq!(
            version.trim_end(),
            format!("apopd {} (TLS: rustls 0.23, ring provider)", env!("CARGO_PKG_VERSION"))
        );
    }

    /// `tls::PROVIDER` is written by hand: keep it true to the rustls in Cargo.lock.
    #[test]
    fn the_named_rustls_version_is_the_locked_one() {
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).expect("Cargo.lock");
        assert!(lock.contains("name = \"rustls\"\nversion = \"0.23."), "Cargo.lock has no rustls 0.23.x");
    }
}
