//! Subcommands: the little glue each one needs (their clap definitions are `apopd::args`).

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use apopd::args::{Args, Command, DEFAULT_CONFIG, MigrateAction, UserAction};
use apopd::auth::users::{self, Entries};
use apopd::auth::{apop, password};
use apopd::config::Config;
use apopd::server::{Kind, Server, reload_tls_on_hangup};
use apopd::store::deliver::DeliverError;
use apopd::{demo, privileges, store, systemd};

/// sysexits.h codes an MTA understands.
const EX_NOUSER: u8 = 67;
const EX_TEMPFAIL: u8 = 75;
/// sysexits.h: the maildir is not safe to write to (a symlink where a directory must be).
const EX_NOPERM: u8 = 77;

/// Run the parsed command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Serve { config } => serve(config),
        Command::CheckConfig { config } => {
            let (path, demo_dir) = match config {
                Some(path) => (path, None),
                None => default_config()?,
            };
            let checked = check_config(&path);
            if let Some(dir) = &demo_dir {
                let _ = std::fs::remove_dir_all(dir);
            }
            checked?;
            let shown = if demo_dir.is_some() { Path::new(demo::DEMO_SOURCE).join(demo::DEMO_CONFIG) } else { path };
            eprintln!("{}: OK", shown.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::ApopDigest { timestamp, secret } => {
            let secret = match secret {
                Some(secret) => secret,
                None => Secrets::from_stdin().next("APOP secret: ")?,
            };
            println!("{}", apop::digest(&timestamp, secret.as_bytes()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliver { user, config } => Ok(deliver(&user, &config)),
        Command::User { action } => user(action),
        Command::Migrate { action: MigrateAction::Check { dirs, uidl_format } } => migrate_check(&dirs, uidl_format),
    }
}

/// `apopd migrate check`: print each maildir's UIDL report; fails when one cannot be read.
fn migrate_check(dirs: &[PathBuf], uidl_format: String) -> anyhow::Result<ExitCode> {
    let scheme = store::uidl::Scheme::try_from(uidl_format).map_err(anyhow::Error::msg)?;
    let mut failed = false;
    for dir in dirs {
        let maildirs = store::survey::maildirs(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if maildirs.is_empty() {
            eprintln!("apopd migrate check: {}: no maildir (no cur/ or new/) here or one level down", dir.display());
            failed = true;
        }
        for maildir in maildirs {
            match store::survey::survey(&maildir, &scheme) {
                Ok(survey) => print!("{survey}"),
                Err(e) => {
                    eprintln!("apopd migrate check: {}: {e}", maildir.display());
                    failed = true;
                }
            }
        }
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The config `serve` and `check-config` use without --config: /etc/apopd/apopd.toml when it
/// exists, else a fresh private copy of the bundled demo (returned too, for removal): git
/// cannot record the 0600 mode the users files need, so the copy is what can be served.
fn default_config() -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    if Path::new(DEFAULT_CONFIG).exists() {
        return Ok((PathBuf::from(DEFAULT_CONFIG), None));
    }
    let dir = demo::prepare()?;
    Ok((dir.join(demo::DEMO_CONFIG), Some(dir)))
}

fn serve(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (path, demo_dir) = match config {
        Some(path) => (path, None),
        None => default_config()?,
    };
    if let Some(dir) = &demo_dir {
        eprintln!("apopd: serving the demo from {} (a fresh copy of {})", dir.display(), demo::DEMO_SOURCE);
    }
    let config = Config::load(&path)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let (run_as_user, run_as_group) = (config.run_as_user.clone(), config.run_as_group.clone());
    // Bind and read keys as root, then drop root before the runtime starts any thread.
    let inherited = systemd::inherited_listeners()?;
    let server = if inherited.is_empty() {
        Server::bind(config)?
    } else {
        tracing::info!(sockets = inherited.len(), "using sockets passed by systemd");
        Server::with_listeners(config, inherited)?
    };
    privileges::drop_to(run_as_user.as_deref(), run_as_group.as_deref())?;
    for (addr, kind) in server.local_addrs() {
        match kind {
            Kind::Plain => eprintln!("apopd: POP3 on {addr}"),
            Kind::Tls => eprintln!("apopd: POP3S on {addr}"),
        }
    }
    eprintln!("apopd: ready");
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        tokio::spawn(reload_tls_on_hangup(server.shared()));
        systemd::ready();
        server.run(shutdown_signal()).await;
    });
    // Blocking tasks (an UPDATE's unlinks) get a moment; each unlink is atomic either way.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Some(dir) = demo_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// Load, print and fully check a config: also the users files and the certificate, as
/// `serve` would read them.
fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!("{}", config.to_toml().trim_end());
    for warning in config.warnings() {
        eprintln!("apopd check-config: warning: {warning}");
    }
    apopd::shared::Shared::new(config)?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    systemd::stopping();
}

/// `apopd deliver`: exit codes follow sysexits.h so an MTA retries or bounces correctly.
fn deliver(user: &str, config: &Path) -> ExitCode {
    // Over a file-size limit, a write should fail (EFBIG: clean up, exit 75), not kill us
    // mid-message with SIGXFSZ and leave a partial file in tmp/.
    // SAFETY: SIG_IGN installs no handler code; nothing else here uses SIGXFSZ.
    if let Err(e) =
        unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGXFSZ, nix::sys::signal::SigHandler::SigIgn) }
    {
        eprintln!("apopd deliver: cannot ignore SIGXFSZ: {e}");
    }
    let config = match Config::load(config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("apopd deliver: {e:#}");
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    // A user is known by their maildir, or else by the users file (which an MTA running
    // `deliver` as another user may not be allowed to read).
    let (location, policy) = match config.mail_root().map(|root| (root.locate(user), root.policy().clone())) {
        Ok((Some(location), policy)) => (location, policy),
        Ok((None, _)) => {
            eprintln!("apopd deliver: invalid user name {user:?}");
            return ExitCode::from(EX_NOUSER);
        }
        Err(e) => {
            eprintln!("apopd deliver: {e:#}");
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    if !location.path().is_dir() {
        match users::read_entries(&config.users_file, false) {
            Ok(users) if users.contains_key(user) => {}
            Ok(_) => {
                eprintln!("apopd deliver: no such user {user:?}");
                return ExitCode::from(EX_NOUSER);
            }
            Err(e) => {
                eprintln!("apopd deliver: {e}");
                return ExitCode::from(EX_TEMPFAIL);
            }
        }
    }
    match store::deliver::deliver(&location, &policy, &config.hostname, &mut std::io::stdin().lock()) {
        Ok(id) => {
            tracing::info!(user = ?user, id, "delivered");
            ExitCode::SUCCESS
        }
        Err(DeliverError::Unsafe(e)) => {
            eprintln!("apopd deliver: refusing an unsafe maildir: {e}");
            ExitCode::from(EX_NOPERM)
        }
        Err(DeliverError::Io(e)) => {
            eprintln!("apopd deliver: cannot deliver to {e}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

fn user(action: UserAction) -> anyhow::Result<ExitCode> {
    match action {
        UserAction::Add { name, apop, config } => set_credentials(&name, apop, &config, true),
        UserAction::Passwd { name, apop, config } => set_credentials(&name, apop, &config, false),
        UserAction::Del { name, config } => {
            let config = Config::load(&config)?;
            let mut found = false;
            for path in files(&config) {
                let mut entries = users::read_entries(&path, true)?;
                if entries.remove(&name).is_some() {
                    users::write_entries(&path, &entries, &owned_like(&config))?;
                    found = true;
                }
            }
            if !found {
                bail!("no such user {name:?}");
            }
            println!("removed {name} (the maildir is left in place)");
            Ok(ExitCode::SUCCESS)
        }
        UserAction::List { config } => {
            let config = Config::load(&config)?;
            let hashes = users::read_entries(&config.users_file, true)?;
            let secrets = match &config.apop_secrets_file {
                Some(path) => users::read_entries(path, true)?,
                None => Entries::new(),
            };
            let mut names: Vec<&String> = hashes.keys().chain(secrets.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let mut methods = Vec::new();
                if hashes.contains_key(name) {
                    methods.push("password");
                }
                if secrets.contains_key(name) {
                    methods.push("apop");
                }
                println!("{name} {}", methods.join(","));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whose ownership a newly created users or secrets file takes: the other file's.
fn owned_like(config: &Config) -> Vec<&Path> {
    std::iter::once(config.users_file.as_path()).chain(config.apop_secrets_file.as_deref()).collect()
}

/// The users file and, when configured, the APOP secrets file.
fn files(config: &Config) -> Vec<PathBuf> {
    std::iter::once(config.users_file.clone()).chain(config.apop_secrets_file.clone()).collect()
}

/// `user add` (`adding`) or `user passwd`: hash the password, store the APOP secret.
fn set_credentials(name: &str, with_apop: bool, config: &Path, adding: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        store::is_valid_user_name(name),
        "invalid user name {name:?}: use 1-64 of A-Z a-z 0-9 . _ @ + - (not starting with a dot)"
    );
    let config = Config::load(config)?;
    let mut hashes = users::read_entries(&config.users_file, true)?;
    match (adding, hashes.contains_key(name)) {
        (true, true) => bail!("user {name:?} exists; use `apopd user passwd`"),
        (false, false) => bail!("no such user {name:?}; use `apopd user add`"),
        _ => {}
    }
    let secrets_path = match (with_apop, &config.apop_secrets_file) {
        (true, None) => bail!("--apop needs apop_secrets_file in the config"),
        (_, path) => path.clone(),
    };
    let mut input = Secrets::from_stdin();
    let password = input.next_confirmed("Password: ")?;
    anyhow::ensure!(!password.is_empty(), "empty password");
    let secret = if with_apop { Some(input.next_confirmed("APOP secret: ")?) } else { None };
    anyhow::ensure!(secret.as_ref().is_none_or(|s| !s.is_empty()), "empty APOP secret");
    // Everything is read and checked before anything is written.
    let secrets = match (secret, secrets_path) {
        (Some(secret), Some(path)) => {
            let mut secrets = users::read_entries(&path, true)?;
            secrets.insert(name.to_owned(), secret);
            Some((path, secrets))
        }
        _ => None,
    };
    hashes.insert(name.to_owned(), password::hash(password.as_bytes()).map_err(anyhow::Error::msg)?);
    users::write_entries(&config.users_file, &hashes, &owned_like(&config))?;
    if let Some((path, secrets)) = secrets {
        users::write_entries(&path, &secrets, &owned_like(&config))?;
    }
    println!("{} {name}", if adding { "added" } else { "updated" });
    Ok(ExitCode::SUCCESS)
}

/// Secrets typed at a no-echo prompt on a terminal, or read line by line from a pipe.
struct Secrets {
    lines: Option<std::io::Lines<std::io::StdinLock<'static>>>,
}

impl Secrets {
    fn from_stdin() -> Self {
        let stdin = std::io::stdin();
        let lines = (!stdin.is_terminal()).then(|| stdin.lock().lines());
        Secrets { lines }
    }

    fn next(&mut self, prompt: &str) -> anyhow::Result<String> {
        match &mut self.lines {
            Some(lines) => {
                let line = lines.next().context("stdin ended before the secret")??;
                Ok(line.trim_end_matches('\r').to_owned())
            }
            None => rpassword::prompt_password(prompt).context("cannot read from the terminal"),
        }
    }

    /// On a terminal, ask twice and insist on a match.
    fn next_confirmed(&mut self, prompt: &str) -> anyhow::Result<String> {
        let first = self.next(prompt)?;
        if self.lines.is_none() && self.next("Again: ")? != first {
            bail!("the two entries differ");
        }
        Ok(first)
    }
}
