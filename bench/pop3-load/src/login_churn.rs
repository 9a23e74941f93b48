//! `login-churn`: N clients loop connect → login → STAT → QUIT for D seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::client::{self, Auth};
use crate::procfs;
use crate::report::{Latencies, Report};
use crate::{Credentials, Target, UserSet};

#[derive(Args, Debug)]
pub struct Opts {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    users: UserSet,
    #[command(flatten)]
    credentials: Credentials,
    /// Concurrent clients (client i logs in as user i mod --users).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop each client after this many sessions even if time remains.
    #[arg(long, default_value_t = 1_000_000)]
    max_sessions_per_client: u64,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies: Latencies,
}

pub async fn run(o: Opts) -> anyhow::Result<bool> {
    client::check_loopback(&o.target.addr)?;
    let users = o.users.names();
    let auth = Arc::new(o.credentials.auth());
    let procs = o.target.procs();
    let duration = Duration::from_secs_f64(o.seconds.clamp(0.1, 3600.0));
    let cpu_before = procs.cpu();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for i in 0..o.clients.max(1) {
        let user = users[i % users.len()].clone();
        let auth = Arc::clone(&auth);
        let target = o.target.clone();
        let max = o.max_sessions_per_client;
        tasks.push(tokio::spawn(async move { client_loop(&target, &user, &auth, deadline, max).await }));
    }
    let mut total = Tally::default();
    for task in tasks {
        // A task that panicked counts as one error; the others' results stand.
        match task.await {
            Ok(t) => {
                total.ok += t.ok;
                total.errors += t.errors;
                if total.first_error.is_none() {
                    total.first_error = t.first_error;
                }
                total.latencies.extend(t.latencies);
            }
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert(e.to_string());
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_ms = procfs::cpu_ms_per_op(cpu_before, procs.cpu(), total.ok);
    let rate = total.ok as f64 / elapsed;
    let p50 = total.latencies.percentile_ms(50.0);
    let p99 = total.latencies.percentile_ms(99.0);
    let mut r = Report::new("login-churn");
    r.str("addr", o.target.addr.to_string())
        .str("auth", o.credentials.method())
        .int("clients", o.clients)
        .num("seconds", elapsed)
        .int("sessions", total.ok)
        .int("errors", total.errors)
        .num("sessions_per_sec", rate)
        .opt_num("p50_ms", p50)
        .opt_num("p99_ms", p99)
        .opt_num("server_cpu_ms_per_session", cpu_ms)
        .str("first_error", total.first_error.clone().unwrap_or_default())
        .say(format!(
            "login-churn ({}, {} clients): {} sessions in {elapsed:.1} s = {rate:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors{}",
            o.credentials.method(),
            o.clients,
            total.ok,
            p50.unwrap_or(f64::NAN),
            p99.unwrap_or(f64::NAN),
            total.errors,
            total.first_error.map(|e| format!(" (first: {e})")).unwrap_or_default()
        ));
    r.print();
    Ok(total.errors == 0 && total.ok > 0)
}

async fn client_loop(target: &Target, user: &str, auth: &Auth, deadline: Instant, max: u64) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..max {
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        match one_session(target, user, auth).await {
            Ok(()) => {
                tally.ok += 1;
                tally.latencies.push(t0.elapsed());
            }
            Err(e) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(format!("{e:#}"));
                // Don't spin on a refusing server.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    tally
}

async fn one_session(target: &Target, user: &str, auth: &Auth) -> anyhow::Result<()> {
    let mut conn = client::session(target.addr, user, auth, target.op_timeout()).await?;
    conn.stat().await?;
    conn.quit().await
}
