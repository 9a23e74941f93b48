//! `preauth-flood`: hold M connections that never log in (they read the greeting and sit),
//! K per source address so that per-IP limits don't help, while a fresh client logs in and
//! RETRs a message again and again. Reports how many flood connections were greeted,
//! refused, or closed by the server later (evicted to admit someone), and what the probe saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::Conn;
use crate::hold::{self, ProbeOpts};
use crate::report::Report;
use crate::{Credentials, Target};

#[derive(Args, Debug)]
pub struct Opts {
    #[command(flatten)]
    target: Target,
    /// The probe's credentials.
    #[command(flatten)]
    credentials: Credentials,
    /// Flood connections to hold.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Flood connections per source address (127.0.1.1 upwards; the probe uses 127.0.0.1).
    #[arg(long, default_value_t = 10)]
    per_addr: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// How long to wait for each flood connection's first line, in seconds.
    #[arg(long, default_value_t = 5.0)]
    greeting_secs: f64,
    #[command(flatten)]
    probe: ProbeOpts,
}

/// How one flood connection was answered.
enum Opened {
    /// `+OK` greeting: held from now on.
    Greeted(Conn),
    /// `-ERR` instead of a greeting (e.g. too many connections).
    Refused(String),
    /// Closed, reset or silent before any line.
    Failed(String),
}

pub async fn run(o: Opts) -> anyhow::Result<bool> {
    crate::client::check_loopback(&o.target.addr)?;
    let Some(probe_user) = o.probe.probe_user.clone() else { bail!("preauth-flood needs --probe-user") };
    let per_addr = o.per_addr.max(1);
    let limit = hold::raise_nofile(o.connections as u64 + 256)?;
    if limit < o.connections as u64 + 64 {
        bail!("RLIMIT_NOFILE is {limit} and cannot be raised: too low for {} connections", o.connections);
    }
    let sources = hold::source_addrs(o.connections.div_ceil(per_addr))?;
    let gate = Arc::new(Semaphore::new(o.connect_concurrency.max(1)));
    let greeting_wait = Duration::from_secs_f64(o.greeting_secs.clamp(0.1, 120.0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..o.connections {
        let (gate, addr, timeout) = (Arc::clone(&gate), o.target.addr, o.target.op_timeout());
        let source = sources[i / per_addr];
        set.spawn(async move {
            let _permit = gate.acquire_owned().await.context("gate")?;
            let mut conn = match Conn::open(addr, Some(source), timeout).await {
                Ok(conn) => conn,
                Err(e) => return anyhow::Ok(Opened::Failed(format!("{e:#}"))),
            };
            Ok(match tokio::time::timeout(greeting_wait, conn.line()).await {
                Ok(Ok(line)) if line.starts_with("+OK") => {
                    conn.compact();
                    Opened::Greeted(conn)
                }
                Ok(Ok(line)) => Opened::Refused(line),
                Ok(Err(e)) => Opened::Failed(format!("{e:#}")),
                Err(_) => Opened::Failed("no greeting in time".to_owned()),
            })
        });
    }
    let (mut held, mut refused, mut failed) = (Vec::new(), 0u64, 0u64);
    let (mut first_refusal, mut first_failure) = (None, None);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(Opened::Greeted(conn))) => held.push(conn),
            Ok(Ok(Opened::Refused(line))) => {
                refused += 1;
                first_refusal.get_or_insert(line);
            }
            Ok(Ok(Opened::Failed(e))) => {
                failed += 1;
                first_failure.get_or_insert(e);
            }
            Ok(Err(e)) => {
                failed += 1;
                first_failure.get_or_insert(format!("{e:#}"));
            }
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert(e.to_string());
            }
        }
    }
    let greeted = held.len();
    let open_secs = started.elapsed().as_secs_f64();
    // Closed by the server while the flood was still being opened (eviction by later flood
    // connections) is counted with those closed during the probe.
    let (_stop, stop) = watch::channel(false);
    let auth = o.credentials.auth();
    let timeout = o.target.op_timeout();
    let mut probe = hold::probe(o.target.addr, probe_user, auth, o.probe.clone(), timeout, stop).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut evicted, mut evicted_told, mut first_eviction) = (0u64, 0u64, None);
    for conn in &mut held {
        if let Some(text) = conn.server_spoke() {
            evicted += 1;
            if text.starts_with("-ERR") {
                evicted_told += 1;
            }
            first_eviction.get_or_insert(text);
        }
    }
    let still_open = greeted as u64 - evicted;
    drop(held);
    let ok = probe.errors == 0 && probe.ok > 0;
    let mut r = Report::new("preauth-flood");
    r.str("addr", o.target.addr.to_string())
        .int("connections_wanted", o.connections)
        .int("per_addr", per_addr)
        .int("source_addrs", sources.len())
        .num("open_seconds", open_secs)
        .int("greeted", greeted)
        .int("refused", refused)
        .int("failed", failed)
        .int("evicted", evicted)
        .int("evicted_with_err", evicted_told)
        .int("still_open", still_open)
        .str("first_refusal", first_refusal.clone().unwrap_or_default())
        .str("first_failure", first_failure.clone().unwrap_or_default())
        .str("first_eviction", first_eviction.clone().unwrap_or_default());
    probe.add_to(&mut r);
    r.bool("ok", ok)
        .say(format!(
            "preauth-flood: {} connections from {} addresses in {open_secs:.1} s: {greeted} greeted, {refused} refused{}, \
             {failed} failed{}; of the greeted, {evicted} later closed by the server ({evicted_told} with -ERR{}), \
             {still_open} still open",
            o.connections,
            sources.len(),
            first_refusal.map(|l| format!(" ({l})")).unwrap_or_default(),
            first_failure.map(|l| format!(" ({l})")).unwrap_or_default(),
            first_eviction.map(|l| format!(": {l:?}")).unwrap_or_default(),
        ))
        .say(probe.summary());
    r.print();
    Ok(ok)
}
