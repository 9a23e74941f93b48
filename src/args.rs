//! The command line's shape (clap): every subcommand, argument and flag, with its help text.
//!
//! It lives in the library, not the binary, so that `xtask` can generate the man page and the
//! shell completions from the same definitions (`cargo run -p xtask -- dist`). What each
//! subcommand does is the binary's business (`src/cli.rs`).

use std::path::PathBuf;
use std::sync::LazyLock;

use clap::{Parser, Subcommand};

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
