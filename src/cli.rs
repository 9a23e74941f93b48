//! Subcommands: the little glue each one needs (their clap definitions are `apopd::args`).

mod lab;
mod users_db;

use std::collections::BTreeMap;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use apopd::args::{Args, Command, DEFAULT_CONFIG, MigrateAction, UserAction};
use apopd::auth::users::{self, Entries};
use apopd::auth::{apop, import, password};
use apopd::config::{Config, LogFormat};
use apopd::server::{Kind, Server};
use apopd::store::deliver::DeliverError;
use apopd::{demo, privileges, store, systemd};
use nix::sys::signal::{SigHandler, Signal, signal};

/// sysexits.h codes an MTA understands.
const EX_NOUSER: u8 = 67;
const EX_TEMPFAIL: u8 = 75;
/// sysexits.h: the maildir is not safe to write to (a symlink where a directory must be).
const EX_NOPERM: u8 = 77;

/// Run the parsed command.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !matches!(args.command, Command::Serve { .. }) {
        crate::init_logging(LogFormat::Text);
    }
    if only_prints(&args.command) {
        // `apopd migrate check … | head`: a closed pipe ends the command quietly, as it does
        // `cat`, instead of a panic in println!. Rust ignores SIGPIPE by default, which a
        // server needs; these commands write nothing but their output.
        // SAFETY: SIG_DFL installs no handler code; no thread has started yet.
        let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    }
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
        Command::Lab { action } => lab::run(action),
        Command::Migrate { action: MigrateAction::Check { dirs, uidl_format, passwd, shadow } } => {
            migrate_check(&dirs, uidl_format, passwd.as_deref(), shadow)
        }
    }
}

/// `apopd migrate check`: print each maildir's UIDL report; fails when one cannot be read.
/// Commands whose only effect is their output (nothing half-written if a closed pipe ends them).
fn only_prints(command: &Command) -> bool {
    matches!(
        command,
        Command::ApopDigest { .. } | Command::Migrate { .. } | Command::User { action: UserAction::List { .. } }
    )
}

/// `apopd migrate check`: read-only reports on maildirs and, with `--passwd`, a password file.
fn migrate_check(
    dirs: &[PathBuf],
    uidl_format: String,
    passwd: Option<&Path>,
    shadow: bool,
) -> anyhow::Result<ExitCode> {
    let scheme = store::uidl::Scheme::try_from(uidl_format).map_err(anyhow::Error::msg)?;
    let mut failed = false;
    if let Some(file) = passwd {
        let source = if shadow { import::Source::Shadow } else { import::Source::DovecotPasswd };
        print!("{}", import::check_report(file, source)?);
    }
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
    let path = std::path::absolute(&path).unwrap_or(path);
    crate::init_logging(config.log_format);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let (run_as_user, run_as_group) = (config.run_as_user.clone(), config.run_as_group.clone());
    size_connections(&config);
    // Bind and read keys as root, then drop root before the runtime starts any thread.
    let inherited = systemd::inherited_listeners()?;
    let server = if inherited.is_empty() {
        Server::bind(config)?
    } else {
        tracing::info!(sockets = inherited.len(), "using sockets passed by systemd");
        Server::with_listeners(config, inherited)?
    };
    privileges::drop_to(run_as_user.as_deref(), run_as_group.as_deref())?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    // Signal handlers before "ready": a SIGHUP or SIGTERM right after it must not find the
    // default action (which ends the process).
    let (server, shutdown) = {
        let _runtime = runtime.enter();
        (server.reload_on_hangup(path)?, shutdown_signal()?)
    };
    for (addr, kind) in server.local_addrs() {
        match kind {
            Kind::Plain => eprintln!("apopd: POP3 on {addr}"),
            Kind::Tls => eprintln!("apopd: POP3S on {addr}"),
            Kind::ProxyPlain => eprintln!("apopd: POP3 (PROXY protocol) on {addr}"),
            Kind::ProxyTls => eprintln!("apopd: POP3S (PROXY protocol) on {addr}"),
        }
    }
    if let Some(addr) = server.metrics_addr() {
        eprintln!("apopd: metrics on http://{addr}/metrics");
    }
    eprintln!("apopd: ready");
    runtime.block_on(async {
        systemd::ready();
        server.run(shutdown).await;
    });
    // Blocking tasks (an UPDATE's unlinks) get a moment; each unlink is atomic either way.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    if let Some(dir) = demo_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// Raise the open-file limit and log how many connections it and memory allow.
fn size_connections(config: &Config) {
    use apopd::capacity::{Sizing, raise_open_files_limit};
    match raise_open_files_limit() {
        Ok((before, after)) if before < after => tracing::info!("open-file limit raised from {before} to {after}"),
        Ok((_, limit)) => tracing::info!("open-file limit {limit}"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let sizing = Sizing::of_this_machine();
    match config.max_connections {
        None => tracing::info!(
            "max_connections {} (not set: sized from the open-file limit {} and {} MiB of memory)",
            sizing.max_connections,
            sizing.open_files,
            sizing.memory >> 20
        ),
        Some(max) if max as u64 > Sizing::connections_for_files(sizing.open_files) => tracing::warn!(
            "max_connections {max} is more than the open-file limit {} can serve (about {}); \
             raise LimitNOFILE or lower max_connections",
            sizing.open_files,
            Sizing::connections_for_files(sizing.open_files)
        ),
        Some(_) => {}
    }
}

/// Load, print and fully check a config: also the users files and the certificate, as
/// `serve` would read them.
fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // A closed pipe (`| head`) must not stop the checks or leave the demo copy behind.
    let _ = writeln!(std::io::stdout(), "{}", config.to_toml().trim_end());
    for warning in config.warnings() {
        eprintln!("apopd check-config: warning: {warning}");
    }
    if config.max_connections.is_none() {
        let sizing = apopd::capacity::Sizing::of_this_machine();
        eprintln!(
            "apopd check-config: max_connections not set: {} here (open-file limit {}, {} MiB of memory)",
            sizing.max_connections,
            sizing.open_files,
            sizing.memory >> 20
        );
    }
    let db = config.postgres().cloned();
    apopd::shared::Shared::new(config)?;
    if let Some(users) = db {
        users_db::probe(&users)?;
    }
    Ok(())
}

/// Completes on SIGINT or SIGTERM; both are watched from the call on (inside the runtime).
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        systemd::stopping();
    })
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
    // `deliver` as another user may not be allowed to read) or the accounts database.
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
        let known = match config.postgres() {
            Some(db) => users_db::exists(db, user),
            None => {
                users::read_entries(&config.users_file, false).map(|users| users.contains_key(user)).map_err(Into::into)
            }
        };
        match known {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("apopd deliver: no such user {user:?}");
                return ExitCode::from(EX_NOUSER);
            }
            Err(e) => {
                eprintln!("apopd deliver: {e:#}");
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
    let config = match &action {
        UserAction::Add { config, .. }
        | UserAction::Passwd { config, .. }
        | UserAction::Del { config, .. }
        | UserAction::Import { config, .. }
        | UserAction::List { config } => config,
    };
    let loaded = Config::load(config)?;
    if let Some(users) = loaded.postgres() {
        return users_db::run(action, users);
    }
    match action {
        UserAction::Add { name, apop, config } => set_credentials(&name, apop, &config, true),
        UserAction::Passwd { name, apop, config } => set_credentials(&name, apop, &config, false),
        UserAction::Import { dovecot_passwd, shadow, apop_from_plain, replace, dry_run, config } => {
            let source = match (dovecot_passwd, shadow) {
                (Some(path), _) => (path, import::Source::DovecotPasswd),
                (None, Some(path)) => (path, import::Source::Shadow),
                (None, None) => bail!("give --dovecot-passwd FILE or --shadow FILE"),
            };
            import_users(&source.0, source.1, apop_from_plain, replace, dry_run, &config)
        }
        UserAction::Del { name, config } => {
            let config = Config::load(&config)?;
            let mut found = false;
            for path in files(&config) {
                let _lock = users::lock(&path, &owned_like(&config))?;
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
        "invalid user name {name:?}: use 1-64 bytes of A-Z a-z 0-9 . _ @ + - and non-ASCII letters and digits \
         (not starting with a dot)"
    );
    let config = Config::load(config)?;
    let exists_as_expected = |hashes: &Entries| match (adding, hashes.contains_key(name)) {
        (true, true) => bail!("user {name:?} exists; use `apopd user passwd`"),
        (false, false) => bail!("no such user {name:?}; use `apopd user add`"),
        _ => Ok(()),
    };
    exists_as_expected(&users::read_entries(&config.users_file, true)?)?;
    let secrets_path = match (with_apop, &config.apop_secrets_file) {
        (true, None) => bail!("--apop needs apop_secrets_file in the config"),
        (true, path) => path.clone(),
        (false, _) => None,
    };
    let mut input = Secrets::from_stdin();
    let password = input.next_confirmed("Password: ")?;
    anyhow::ensure!(!password.is_empty(), "empty password");
    let secret = if with_apop { Some(input.next_confirmed("APOP secret: ")?) } else { None };
    anyhow::ensure!(secret.as_ref().is_none_or(|s| !s.is_empty()), "empty APOP secret");
    // Read again and write under the writers' locks (the server takes the users file's to
    // rehash a password on login); everything is checked before anything is written.
    let owners = owned_like(&config);
    let _locks = (
        users::lock(&config.users_file, &owners)?,
        secrets_path.as_deref().map(|p| users::lock(p, &owners)).transpose()?,
    );
    let mut hashes = users::read_entries(&config.users_file, true)?;
    exists_as_expected(&hashes)?;
    let secrets = match (secret, secrets_path) {
        (Some(secret), Some(path)) => {
            let mut secrets = users::read_entries(&path, true)?;
            secrets.insert(name.to_owned(), secret);
            Some((path, secrets))
        }
        _ => None,
    };
    hashes.insert(name.to_owned(), password::hash(password.as_bytes()).map_err(anyhow::Error::msg)?);
    users::write_entries(&config.users_file, &hashes, &owners)?;
    if let Some((path, secrets)) = secrets {
        users::write_entries(&path, &secrets, &owners)?;
    }
    println!("{} {name}", if adding { "added" } else { "updated" });
    Ok(ExitCode::SUCCESS)
}

/// `user import`: read and check every line of `source`, then write the users file (and the
/// APOP secrets) once, under their locks; or, with `dry_run`, print the report and write nothing.
fn import_users(
    source: &Path,
    kind: import::Source,
    apop_from_plain: bool,
    replace: bool,
    dry_run: bool,
    config: &Path,
) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let parsed = import::read(source, kind)?;
    if dry_run {
        print!("{}", import::report(source, kind, &parsed));
        let users = users::read_entries(&config.users_file, true)?;
        let present: Vec<&str> =
            parsed.entries.iter().map(|e| e.user.as_str()).filter(|u| users.contains_key(*u)).collect();
        if !present.is_empty() {
            println!(
                "  already in {} (refused without --replace): {}",
                config.users_file.display(),
                present.join(", ")
            );
        }
        return Ok(if parsed.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let secrets_path = match (apop_from_plain, &config.apop_secrets_file) {
        (true, None) => bail!("--apop-from-plain needs apop_secrets_file in the config"),
        (true, Some(path)) => Some(path.clone()),
        (false, _) => None,
    };
    let owners = owned_like(&config);
    let _locks = (
        users::lock(&config.users_file, &owners)?,
        secrets_path.as_deref().map(|p| users::lock(p, &owners)).transpose()?,
    );
    let hashes = users::read_entries(&config.users_file, true)?;
    let secrets = secrets_path.as_deref().map(|p| users::read_entries(p, true)).transpose()?;
    let (hashes, secrets) =
        import::merge(&parsed, hashes, secrets, replace, apop_from_plain).map_err(anyhow::Error::msg)?;
    users::write_entries(&config.users_file, &hashes, &owners)?;
    if let (Some(path), Some(secrets)) = (&secrets_path, &secrets) {
        users::write_entries(path, secrets, &owners)?;
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for entry in &parsed.entries {
        *counts.entry(entry.stored.scheme().name()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(name, n)| format!("{name} {n}")).collect();
    println!("imported {} user(s) from {}: {}", parsed.entries.len(), source.display(), counts.join(", "));
    let apop = parsed.entries.iter().filter(|e| apop_from_plain && e.stored.plain().is_some()).count();
    if apop > 0 {
        println!("  {apop} APOP secret(s) from PLAIN passwords");
    }
    for notice in &parsed.skipped {
        println!("  skipped {notice}");
    }
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
