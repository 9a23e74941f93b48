//! pop3-load: a bounded load generator and verifier for POP3 servers on loopback.
//!
//! Every scenario prints one JSON line on stdout and a short summary on stderr; the exit
//! status is non-zero when a scenario saw wrong data or could not run.

mod big_mailbox;
mod client;
mod content;
mod delete_churn;
mod hold;
mod idle;
mod login_churn;
mod populate;
mod preauth_flood;
mod procfs;
mod report;
mod retr;
mod verify;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use client::Auth;
use procfs::ServerProcs;

#[derive(Parser, Debug)]
#[command(name = "pop3-load", version, about = "Load generator and verifier for POP3 servers (loopback only)")]
struct Cli {
    /// Worker threads of the client's runtime.
    #[arg(long, global = true, default_value_t = 2)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build maildirs ROOT/<prefix><k>/{cur,new,tmp} with deterministic messages.
    Populate(populate::Opts),
    /// Clients loop connect → login → STAT → QUIT.
    LoginChurn(login_churn::Opts),
    /// Clients RETR every message of their mailboxes and verify each byte.
    Retr(retr::Opts),
    /// First login+STAT, then STAT, LIST and UIDL timings on one huge mailbox.
    BigMailbox(big_mailbox::Opts),
    /// Hold many logged-in sessions and measure server memory per session.
    Idle(idle::Opts),
    /// RETR+DELE+QUIT while new mail keeps arriving; count lost and duplicated messages.
    DeleteChurn(delete_churn::Opts),
    /// Hold many connections that never log in, from many addresses, while a fresh client logs in.
    PreauthFlood(preauth_flood::Opts),
}

/// Where the server is and which processes are it.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The server's POP3 address; must be loopback.
    #[arg(long)]
    pub addr: SocketAddr,
    /// A server process whose CPU (and memory) to account (repeatable).
    #[arg(long = "server-pid")]
    pub server_pid: Vec<u32>,
    /// Also account every descendant of the --server-pid processes.
    #[arg(long)]
    pub server_tree: bool,
    /// Deadline for each read, write or connect, in seconds.
    #[arg(long, default_value_t = 30)]
    pub op_timeout_secs: u64,
}

impl Target {
    pub fn procs(&self) -> ServerProcs {
        ServerProcs { pids: self.server_pid.clone(), tree: self.server_tree }
    }

    pub fn op_timeout(&self) -> Duration {
        Duration::from_secs(self.op_timeout_secs.max(1))
    }
}

/// Which users: `<prefix><first>` … `<prefix><first+count-1>`.
#[derive(Args, Debug, Clone)]
pub struct UserSet {
    /// User name prefix.
    #[arg(long, default_value = "user")]
    pub user_prefix: String,
    /// How many users.
    #[arg(long, default_value_t = 1)]
    pub users: usize,
    /// Number of the first user.
    #[arg(long, default_value_t = 1)]
    pub first_user: usize,
}

impl UserSet {
    pub fn names(&self) -> Vec<String> {
        (0..self.users).map(|i| format!("{}{}", self.user_prefix, self.first_user + i)).collect()
    }
}

/// How to log in: exactly one of --password and --apop-secret.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct Credentials {
    /// Log in with USER/PASS.
    #[arg(long)]
    pub password: Option<String>,
    /// Log in with APOP.
    #[arg(long)]
    pub apop_secret: Option<String>,
}

impl Credentials {
    pub fn auth(&self) -> Auth {
        match (&self.password, &self.apop_secret) {
            (_, Some(secret)) => Auth::Apop(secret.clone()),
            (Some(password), None) => Auth::Pass(password.clone()),
            (None, None) => Auth::Pass(String::new()), // clap's group makes this unreachable
        }
    }

    pub fn method(&self) -> &'static str {
        if self.apop_secret.is_some() { "apop" } else { "pass" }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads.max(1)).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("pop3-load: cannot start the runtime: {e}");
                return ExitCode::from(2);
            }
        };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Populate(o) => populate::run(o).await,
            Command::LoginChurn(o) => login_churn::run(o).await,
            Command::Retr(o) => retr::run(o).await,
            Command::BigMailbox(o) => big_mailbox::run(o).await,
            Command::Idle(o) => idle::run(o).await,
            Command::DeleteChurn(o) => delete_churn::run(o).await,
            Command::PreauthFlood(o) => preauth_flood::run(o).await,
        }
    });
    // Don't wait for tasks stuck on a dead server: the scenario is over.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("pop3-load: {e:#}");
            ExitCode::from(2)
        }
    }
}
