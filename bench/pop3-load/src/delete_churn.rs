//! `delete-churn`: sessions RETR+DELE+QUIT while a generator keeps delivering new mail. At
//! the end every delivered message must have been retrieved exactly once.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;

use crate::client::{self, Auth};
use crate::content::{self, MessageKey};
use crate::report::Report;
use crate::verify;
use crate::{Credentials, Target, UserSet, procfs};

#[derive(Args, Debug)]
#[group(id = "delivery", required = true, multiple = false, args = ["deliver_cmd", "maildir_root"])]
pub struct Opts {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    users: UserSet,
    #[command(flatten)]
    credentials: Credentials,
    /// Deliver by running this command with the message on stdin; `{user}` is replaced by the
    /// recipient; split on whitespace, no shell. E.g. 'apopd deliver {user} --config F'.
    #[arg(long)]
    deliver_cmd: Option<String>,
    /// Deliver by writing ROOT/<user>/tmp/<name> and renaming it into new/.
    #[arg(long)]
    maildir_root: Option<PathBuf>,
    /// Messages to deliver in all.
    #[arg(long, default_value_t = 2000)]
    messages: u64,
    /// Bytes per message.
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Content seed (also tags the Message-IDs).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Deliveries in flight at once.
    #[arg(long, default_value_t = 2)]
    deliver_jobs: usize,
    /// Retrieving clients; client i owns the users i, i+C, i+2C, …
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Hard limit for the whole run.
    #[arg(long, default_value_t = 120.0)]
    seconds: f64,
    /// Another node serving the same mailboxes (repeatable): each client's sessions go to
    /// --addr and these in turn, so consecutive sessions on a mailbox hit different nodes.
    #[arg(long = "also-addr")]
    also_addr: Vec<std::net::SocketAddr>,
}

#[derive(Clone)]
enum Delivery {
    Cmd(Vec<String>),
    Rename(PathBuf),
}

struct Shared {
    seed: u64,
    users: Vec<String>,
    /// Per delivery sequence number: delivered?
    delivered: Vec<AtomicBool>,
    /// Per delivery sequence number: times retrieved in a committed (QUIT +OK) session.
    retrieved: Vec<AtomicU64>,
    delivery_failures: AtomicU64,
    unexpected: AtomicU64,
    mismatches: AtomicU64,
    session_errors: AtomicU64,
    generator_done: AtomicBool,
    notes: Mutex<Vec<String>>,
}

impl Shared {
    fn note(&self, s: String) {
        if let Ok(mut n) = self.notes.lock()
            && n.len() < 5
        {
            n.push(s);
        }
    }
}

pub async fn run(o: Opts) -> anyhow::Result<bool> {
    client::check_loopback(&o.target.addr)?;
    for addr in &o.also_addr {
        client::check_loopback(addr)?;
    }
    let addrs: Arc<Vec<std::net::SocketAddr>> =
        Arc::new(std::iter::once(o.target.addr).chain(o.also_addr.iter().copied()).collect());
    let delivery = match (&o.deliver_cmd, &o.maildir_root) {
        (Some(cmd), _) => {
            let argv: Vec<String> = cmd.split_ascii_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                bail!("--deliver-cmd is empty");
            }
            Delivery::Cmd(argv)
        }
        (None, Some(root)) => Delivery::Rename(root.clone()),
        (None, None) => bail!("give --deliver-cmd or --maildir-root"),
    };
    let users = o.users.names();
    let total = o.messages;
    let shared = Arc::new(Shared {
        seed: o.seed,
        users: users.clone(),
        delivered: (0..total).map(|_| AtomicBool::new(false)).collect(),
        retrieved: (0..total).map(|_| AtomicU64::new(0)).collect(),
        delivery_failures: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
        session_errors: AtomicU64::new(0),
        generator_done: AtomicBool::new(false),
        notes: Mutex::new(Vec::new()),
    });
    let procs = o.target.procs();
    let cpu_before = procs.cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(o.seconds.clamp(1.0, 3600.0));

    // The generator: a few blocking workers taking sequence numbers in turn.
    let next = Arc::new(AtomicU64::new(0));
    let mut generators = Vec::new();
    for _ in 0..o.deliver_jobs.clamp(1, 32) {
        let (shared, next, delivery, size, op_timeout) =
            (Arc::clone(&shared), Arc::clone(&next), delivery.clone(), o.size, o.target.op_timeout());
        generators.push(tokio::task::spawn_blocking(move || {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total || Instant::now() >= deadline {
                    break;
                }
                let user = shared.users[(seq % shared.users.len() as u64) as usize].clone();
                let message =
                    content::message(shared.seed, &MessageKey { user: user.clone(), index: seq, size, crlf: false });
                match deliver(&delivery, &user, seq, &message, op_timeout) {
                    Ok(()) => shared.delivered[seq as usize].store(true, Ordering::Release),
                    Err(e) => {
                        shared.delivery_failures.fetch_add(1, Ordering::Relaxed);
                        shared.note(format!("delivery {seq} to {user}: {e:#}"));
                    }
                }
            }
        }));
    }
    let generator_clock = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            for g in generators {
                let _ = g.await;
            }
            shared.generator_done.store(true, Ordering::Release);
            started.elapsed()
        })
    };

    let clients = o.clients.clamp(1, users.len());
    let auth = Arc::new(o.credentials.auth());
    let mut consumers = Vec::new();
    for i in 0..clients {
        let owned: Vec<String> = users.iter().skip(i).step_by(clients).cloned().collect();
        let (shared, auth, target, addrs) = (Arc::clone(&shared), Arc::clone(&auth), o.target.clone(), addrs.clone());
        consumers
            .push(tokio::spawn(async move { consume(&target, &addrs, i, &owned, &auth, &shared, deadline).await }));
    }
    let mut sessions = 0u64;
    for c in consumers {
        sessions += c.await.unwrap_or(0);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let generator_secs = generator_clock.await.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN);

    let mut delivered = 0u64;
    let (mut lost, mut duplicated, mut retrieved) = (0u64, 0u64, 0u64);
    for seq in 0..total as usize {
        let times = shared.retrieved[seq].load(Ordering::Acquire);
        if shared.delivered[seq].load(Ordering::Acquire) {
            delivered += 1;
            if times == 0 {
                lost += 1;
            }
        }
        if times > 0 {
            retrieved += 1;
        }
        if times > 1 {
            duplicated += 1;
        }
    }
    let failures = shared.delivery_failures.load(Ordering::Relaxed);
    let unexpected = shared.unexpected.load(Ordering::Relaxed);
    let mismatches = shared.mismatches.load(Ordering::Relaxed);
    let session_errors = shared.session_errors.load(Ordering::Relaxed);
    let cpu_ms = procfs::cpu_ms_per_op(cpu_before, procs.cpu(), retrieved);
    let rate = retrieved as f64 / elapsed;
    let notes = shared.notes.lock().map(|n| n.clone()).unwrap_or_default();
    let ok = lost == 0 && duplicated == 0 && unexpected == 0 && mismatches == 0 && failures == 0 && delivered == total;
    let mut r = Report::new("delete-churn");
    r.str("addr", addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
        .str("delivery", if o.deliver_cmd.is_some() { "command" } else { "rename" })
        .int("users", users.len())
        .int("clients", clients)
        .int("messages_planned", total)
        .int("delivered", delivered)
        .int("delivery_failures", failures)
        .int("retrieved_unique", retrieved)
        .int("lost", lost)
        .int("duplicated", duplicated)
        .int("unexpected", unexpected)
        .int("mismatches", mismatches)
        .int("sessions", sessions)
        .int("session_errors", session_errors)
        .num("seconds", elapsed)
        .num("generator_seconds", generator_secs)
        .num("messages_per_sec", rate)
        .opt_num("server_cpu_ms_per_message", cpu_ms)
        .bool("ok", ok)
        .str("notes", notes.join("; "))
        .say(format!(
            "delete-churn ({} delivery, {clients} clients): delivered {delivered}/{total} in {generator_secs:.1} s, \
             retrieved {retrieved} in {elapsed:.1} s = {rate:.0} msg/s; lost {lost}, duplicated {duplicated}, \
             unexpected {unexpected}, mismatches {mismatches}, session errors {session_errors}",
            if o.deliver_cmd.is_some() { "command" } else { "rename" }
        ));
    for n in notes {
        r.say(format!("  {n}"));
    }
    r.print();
    Ok(ok)
}

fn deliver(delivery: &Delivery, user: &str, seq: u64, message: &[u8], limit: Duration) -> anyhow::Result<()> {
    match delivery {
        Delivery::Cmd(argv) => {
            let argv: Vec<String> = argv.iter().map(|a| a.replace("{user}", user)).collect();
            let mut child = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot run {}", argv[0]))?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(message).context("writing to the delivery command")?;
            }
            let start = Instant::now();
            loop {
                if let Some(status) = child.try_wait()? {
                    if status.success() {
                        return Ok(());
                    }
                    bail!("delivery command failed: {status}");
                }
                if start.elapsed() > limit {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("delivery command took over {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Delivery::Rename(root) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let name = format!("{now}.M{seq}P{}.pop3load", std::process::id());
            let dir = root.join(user);
            let tmp = dir.join("tmp").join(&name);
            std::fs::write(&tmp, message).with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, dir.join("new").join(&name)).context("rename into new/")?;
            Ok(())
        }
    }
}

/// One consumer: passes over its users until the generator is done and a whole pass that
/// began after that found nothing, or the deadline. Returns the committed sessions.
async fn consume(
    target: &Target,
    addrs: &[std::net::SocketAddr],
    client: usize,
    owned: &[String],
    auth: &Auth,
    shared: &Shared,
    deadline: Instant,
) -> u64 {
    let mut sessions = 0u64;
    let mut turn = client;
    // A pass per iteration; bounded by the deadline and by this count.
    for _ in 0..10_000_000u64 {
        if Instant::now() >= deadline {
            break;
        }
        let done_before_pass = shared.generator_done.load(Ordering::Acquire);
        let mut found = 0u64;
        for user in owned {
            if Instant::now() >= deadline {
                found += 1;
                break;
            }
            let addr = addrs[turn % addrs.len()];
            turn += 1;
            match drain_once(target, addr, user, auth, shared).await {
                Ok(n) => {
                    found += n;
                    sessions += 1;
                }
                Err(e) => {
                    found += 1; // not known to be empty
                    shared.session_errors.fetch_add(1, Ordering::Relaxed);
                    shared.note(format!("{user}: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        if found == 0 {
            if done_before_pass {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    sessions
}

/// One session: RETR and DELE everything, QUIT. Retrievals count only once QUIT says +OK.
async fn drain_once(
    target: &Target,
    addr: std::net::SocketAddr,
    user: &str,
    auth: &Auth,
    shared: &Shared,
) -> anyhow::Result<u64> {
    let mut conn = client::session(addr, user, auth, target.op_timeout()).await?;
    let list = conn.list().await?;
    let mut got = Vec::with_capacity(list.len());
    for (n, size) in &list {
        conn.ok(&format!("RETR {n}")).await?;
        let raw = conn.multiline_raw().await?;
        match verify::check_retr(&raw, *size, shared.seed) {
            Ok(key) if key.user == user && key.index < shared.retrieved.len() as u64 => got.push(key.index),
            Ok(key) => {
                shared.unexpected.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("{user}: RETR {n} returned {}#{}", key.user, key.index));
            }
            Err(m) => {
                shared.mismatches.fetch_add(1, Ordering::Relaxed);
                shared.note(format!("{user}: RETR {n}: {m}"));
            }
        }
        conn.ok(&format!("DELE {n}")).await?;
    }
    conn.quit().await?;
    for seq in got {
        shared.retrieved[seq as usize].fetch_add(1, Ordering::AcqRel);
    }
    Ok(list.len() as u64)
}
