//! `idle`: hold C logged-in sessions (one user each: mailboxes are locked per session) and
//! measure server memory before and during; report bytes per session. With `--probes`, a
//! fresh client logs in and RETRs a message again and again while the sessions are held.
//!
//! Sessions can be spread over several server addresses (`--also-addr`: several server
//! processes) and several client processes (`--client-processes`), for when one process's
//! RLIMIT_NOFILE cannot hold them all: the children (this same command with a hidden
//! `--shard`) open their share, report it on stdout, and wait for the parent's word on stdin.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::{self, Conn};
use crate::hold::{self, ProbeOpts};
use crate::report::Report;
use crate::{Credentials, Target, UserSet};

#[derive(Args, Debug)]
pub struct Opts {
    #[command(flatten)]
    target: Target,
    /// The users; there must be at least --sessions of them.
    #[command(flatten)]
    users: UserSet,
    #[command(flatten)]
    credentials: Credentials,
    /// Sessions to hold at once.
    #[arg(long, default_value_t = 2000)]
    sessions: usize,
    /// Logins in flight at once while opening the sessions (over all client processes).
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
    /// Wait this long with all sessions open before reading memory.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// Give up opening sessions after this long.
    #[arg(long, default_value_t = 180.0)]
    seconds: f64,
    /// Spread the sessions over this many source addresses (127.0.1.1 upwards), in turn; 0
    /// connects from the kernel's choice. One source/destination pair has only ~28,000 ports.
    #[arg(long, default_value_t = 0)]
    source_addrs: usize,
    /// More server addresses (repeatable): session i goes to address i mod (1 + these), so
    /// several server processes share the sessions. The probe uses --addr.
    #[arg(long = "also-addr")]
    also_addr: Vec<SocketAddr>,
    /// Hold the sessions in this many client processes (each needs a descriptor per session).
    #[arg(long, default_value_t = 1)]
    client_processes: usize,
    /// Internal: this process is child K of --client-processes.
    #[arg(long, hide = true)]
    shard: Option<usize>,
    #[command(flatten)]
    probe: ProbeOpts,
}

/// Sessions opened by one process.
#[derive(Default)]
struct Opened {
    conns: Vec<Conn>,
    errors: u64,
    first_error: Option<String>,
}

/// Open sessions `i` (from 0) with `i % processes == shard`, `connect_concurrency / processes` at a time.
async fn open(o: &Opts, users: Vec<String>, shard: usize, processes: usize) -> anyhow::Result<Opened> {
    let sources = hold::source_addrs(o.source_addrs)?;
    let addrs: Vec<SocketAddr> = std::iter::once(o.target.addr).chain(o.also_addr.iter().copied()).collect();
    let auth = Arc::new(o.credentials.auth());
    let gate = Arc::new(Semaphore::new((o.connect_concurrency / processes).max(1)));
    let deadline = Instant::now() + Duration::from_secs_f64(o.seconds.clamp(1.0, 3600.0));
    let mut set = JoinSet::new();
    for (i, user) in users.into_iter().take(o.sessions).enumerate().filter(|(i, _)| i % processes == shard) {
        let (gate, auth, timeout) = (Arc::clone(&gate), Arc::clone(&auth), o.target.op_timeout());
        let (addr, source) = (addrs[i % addrs.len()], hold::source_of(&sources, i));
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            if Instant::now() >= deadline {
                bail!("out of time");
            }
            let mut conn = client::session_from(addr, source, &user, &auth, timeout).await?;
            conn.compact();
            Ok(conn)
        });
    }
    let mut opened = Opened::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(conn)) => opened.conns.push(conn),
            Ok(Err(e)) => {
                opened.errors += 1;
                opened.first_error.get_or_insert(format!("{e:#}"));
            }
            Err(e) => {
                opened.errors += 1;
                opened.first_error.get_or_insert(e.to_string());
            }
        }
    }
    Ok(opened)
}

/// NOOP every session (each must still be logged in), then QUIT them all; returns how many answered.
async fn check_and_quit(conns: Vec<Conn>) -> u64 {
    let mut alive = 0u64;
    let mut quits = JoinSet::new();
    for mut conn in conns {
        if conn.ok("NOOP").await.is_ok() {
            alive += 1;
        }
        conn.compact();
        quits.spawn(async move { conn.quit().await });
    }
    while quits.join_next().await.is_some() {}
    alive
}

/// A child: open this shard's sessions, say `held N ERRORS first-error`, wait for a line on
/// stdin, say `alive N`, quit.
async fn run_shard(o: Opts, users: Vec<String>, shard: usize, processes: usize) -> anyhow::Result<bool> {
    let opened = open(&o, users, shard, processes).await?;
    let first = opened.first_error.unwrap_or_default().replace('\n', " ");
    println!("held {} {} {first}", opened.conns.len(), opened.errors);
    let mut line = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut line).await.context("waiting for the parent")?;
    println!("alive {}", check_and_quit(opened.conns).await);
    Ok(true)
}

/// One child process holding its share of the sessions.
struct Child {
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    fn spawn(shard: usize) -> anyhow::Result<Child> {
        let exe = std::env::current_exe().context("finding pop3-load itself")?;
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        args.extend(["--shard".to_owned(), shard.to_string()]);
        let mut process = tokio::process::Command::new(exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting a client process")?;
        let stdin = process.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(process.stdout.take().context("child stdout")?).lines();
        Ok(Child { process, stdin, stdout })
    }

    /// The next line the child prints that starts with `word`, split after it.
    async fn said(&mut self, word: &str) -> anyhow::Result<Vec<String>> {
        while let Some(line) = self.stdout.next_line().await? {
            if let Some(rest) = line.strip_prefix(word) {
                return Ok(rest.trim().splitn(3, ' ').map(str::to_owned).collect());
            }
        }
        bail!("a client process ended before saying {word:?}")
    }
}

pub async fn run(o: Opts) -> anyhow::Result<bool> {
    client::check_loopback(&o.target.addr)?;
    for addr in &o.also_addr {
        client::check_loopback(addr)?;
    }
    let users = o.users.names();
    if users.len() < o.sessions {
        bail!("--users ({}) must be at least --sessions ({}): each session locks its mailbox", users.len(), o.sessions);
    }
    let processes = o.client_processes.max(1);
    let per_process = o.sessions.div_ceil(processes) as u64;
    let limit = hold::raise_nofile(per_process + 256)?;
    if limit < per_process + 64 {
        bail!(
            "RLIMIT_NOFILE is {limit} and cannot be raised: raise it (ulimit -n {}) or use more \
             --client-processes to hold {} sessions",
            per_process + 1024,
            o.sessions
        );
    }
    if let Some(shard) = o.shard {
        return run_shard(o, users, shard, processes).await;
    }
    let probe_user = match (&o.probe.probe_user, o.probe.probes) {
        (_, 0) => None,
        (Some(user), _) => Some(user.clone()),
        (None, _) if users.len() > o.sessions => Some(users[o.sessions].clone()),
        (None, _) => bail!("--probes needs --probe-user, or one more --users than --sessions"),
    };
    let probe_auth = o.credentials.auth();
    let procs = o.target.procs();
    let before = procs.sample();
    let started = Instant::now();
    // Held here (one process) or by children that wait for our word.
    let (mut held, mut errors, mut first_error) = (0usize, 0u64, None);
    let mut local = Vec::new();
    let mut children = Vec::new();
    if processes == 1 {
        let opened = open(&o, users, 0, 1).await?;
        (held, errors, first_error) = (opened.conns.len(), opened.errors, opened.first_error);
        local = opened.conns;
    } else {
        for shard in 0..processes {
            children.push(Child::spawn(shard)?);
        }
        for child in &mut children {
            let said = child.said("held").await?;
            held += said.first().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
            errors += said.get(1).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            if let Some(e) = said.get(2).filter(|e| !e.is_empty()) {
                first_error.get_or_insert(e.clone());
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(o.settle_secs.clamp(0.0, 60.0))).await;
    let during = procs.sample();
    // The probe runs while every session is held (and before the NOOP round wakes them).
    let mut probe = match probe_user {
        Some(user) => {
            let (_stop, stop) = watch::channel(false);
            let (addr, timeout) = (o.target.addr, o.target.op_timeout());
            Some(hold::probe(addr, user, probe_auth, o.probe.clone(), timeout, stop).await)
        }
        None => None,
    };
    let after_probe = procs.sample();
    // Every session must still be alive and logged in.
    let mut alive = check_and_quit(local).await;
    for child in &mut children {
        child.stdin.write_all(b"check\n").await.context("telling a client process")?;
    }
    for mut child in children {
        alive += child.said("alive").await?.first().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        let _ = child.process.wait().await;
    }

    let per = |b: u64, d: u64| -> Option<f64> {
        (!procs.is_empty() && held > 0).then(|| (d as f64 - b as f64) / held as f64)
    };
    let rss_per = per(before.rss, during.rss);
    let pss_per = per(before.pss, during.pss);
    let probe_ok = probe.as_ref().is_none_or(|p| p.errors == 0);
    let ok = held == o.sessions && alive == held as u64 && probe_ok;
    let mut r = Report::new("idle");
    r.str("addr", o.target.addr.to_string())
        .int("server_addrs", 1 + o.also_addr.len())
        .int("client_processes", processes)
        .int("sessions_wanted", o.sessions)
        .int("sessions_held", held)
        .int("sessions_alive", alive)
        .int("errors", errors)
        .num("open_seconds", open_secs)
        .int("server_processes_before", before.processes)
        .int("server_processes_during", during.processes)
        .int("rss_before", before.rss)
        .int("rss_during", during.rss)
        .int("pss_before", before.pss)
        .int("pss_during", during.pss)
        .opt_num("rss_bytes_per_session", rss_per)
        .opt_num("pss_bytes_per_session", pss_per)
        .int("rss_after_probe", after_probe.rss)
        .int("source_addrs", o.source_addrs);
    if let Some(p) = &mut probe {
        p.add_to(&mut r);
    }
    r.bool("ok", ok).str("first_error", first_error.clone().unwrap_or_default()).say(format!(
        "idle: {held}/{} sessions held ({alive} answered NOOP) in {open_secs:.1} s; server RSS {:.1} → {:.1} MiB, \
             PSS {:.1} → {:.1} MiB; per session: RSS {:.1} KiB, PSS {:.1} KiB{}",
        o.sessions,
        before.rss as f64 / 1048576.0,
        during.rss as f64 / 1048576.0,
        before.pss as f64 / 1048576.0,
        during.pss as f64 / 1048576.0,
        rss_per.unwrap_or(f64::NAN) / 1024.0,
        pss_per.unwrap_or(f64::NAN) / 1024.0,
        first_error.map(|e| format!(" (first error: {e})")).unwrap_or_default()
    ));
    if let Some(p) = &mut probe {
        r.say(p.summary());
    }
    r.print();
    Ok(ok)
}
