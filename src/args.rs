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
    /// Prepare a switch from another POP3 server (Dovecot, Courier, qpopper).
    Migrate {
        /// What to check.
        #[command(subcommand)]
        action: MigrateAction,
    },
}

/// The subcommands of `apopd migrate`.
#[derive(Subcommand, Debug)]
pub enum MigrateAction {
    /// Report, read-only, per maildir: how many messages keep the UIDL the old server gave
    /// (Dovecot's, Courier's, qpopper's X-UIDL) and how many get a new one, and why.
    Check {
        /// Maildirs, or mail roots whose subdirectories are maildirs.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The uidl_format to report for (as in the config file).
        #[arg(long, default_value = "auto")]
        uidl_format: String,
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
