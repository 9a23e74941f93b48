//! `idle`: hold C logged-in sessions (one user each: mailboxes are locked per session) and
//! measure server memory before and during; report bytes per session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{self, Conn};
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
    /// Logins in flight at once while opening the sessions.
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
    /// Wait this long with all sessions open before reading memory.
    #[arg(long, default_value_t = 2.0)]
    settle_secs: f64,
    /// Give up opening sessions after this long.
    #[arg(long, default_value_t = 180.0)]
    seconds: f64,
}

/// The soft RLIMIT_NOFILE of this process, from /proc/self/limits.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_ascii_whitespace().next()?.parse().ok()
}

pub async fn run(o: Opts) -> anyhow::Result<bool> {
    client::check_loopback(&o.target.addr)?;
    let users = o.users.names();
    if users.len() < o.sessions {
        bail!("--users ({}) must be at least --sessions ({}): each session locks its mailbox", users.len(), o.sessions);
    }
    if let Some(limit) = open_files_limit()
        && limit < o.sessions as u64 + 64
    {
        bail!(
            "RLIMIT_NOFILE is {limit}: raise it (ulimit -n {}) before holding {} sessions",
            o.sessions + 1024,
            o.sessions
        );
    }
    let procs = o.target.procs();
    let before = procs.sample();
    let auth = Arc::new(o.credentials.auth());
    let gate = Arc::new(Semaphore::new(o.connect_concurrency.max(1)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(o.seconds.clamp(1.0, 3600.0));
    let mut set = JoinSet::new();
    for user in users.into_iter().take(o.sessions) {
        let (gate, auth, target) = (Arc::clone(&gate), Arc::clone(&auth), o.target.clone());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            if Instant::now() >= deadline {
                bail!("out of time");
            }
            client::session(target.addr, &user, &auth, target.op_timeout()).await
        });
    }
    let mut conns: Vec<Conn> = Vec::with_capacity(o.sessions);
    let mut errors = 0u64;
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(conn)) => conns.push(conn),
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(o.settle_secs.clamp(0.0, 60.0))).await;
    let during = procs.sample();
    // Every session must still be alive and logged in.
    let mut alive = 0u64;
    for conn in &mut conns {
        if conn.ok("NOOP").await.is_ok() {
            alive += 1;
        }
    }
    let held = conns.len();
    let mut quits = JoinSet::new();
    for conn in conns {
        quits.spawn(async move { conn.quit().await });
    }
    while quits.join_next().await.is_some() {}

    let per = |b: u64, d: u64| -> Option<f64> {
        (!procs.is_empty() && held > 0).then(|| (d as f64 - b as f64) / held as f64)
    };
    let rss_per = per(before.rss, during.rss);
    let pss_per = per(before.pss, during.pss);
    let ok = held == o.sessions && alive == held as u64;
    let mut r = Report::new("idle");
    r.str("addr", o.target.addr.to_string())
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
        .bool("ok", ok)
        .str("first_error", first_error.clone().unwrap_or_default())
        .say(format!(
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
    r.print();
    Ok(ok)
}
