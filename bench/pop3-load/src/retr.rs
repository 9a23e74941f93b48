//! `retr`: clients RETR every message of their mailboxes; every message is checked byte for
//! byte against the regenerated original and against the size LIST announced.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::client::{self, Auth};
use crate::report::Report;
use crate::verify;
use crate::{Credentials, Target, UserSet, procfs};

#[derive(Args, Debug)]
pub struct Opts {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    users: UserSet,
    #[command(flatten)]
    credentials: Credentials,
    /// Concurrent clients; each takes the next mailbox from a shared queue.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// The seed `populate` used.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Messages each mailbox must hold (checked when given).
    #[arg(long)]
    messages: Option<u64>,
    /// Passes over all mailboxes.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Stop taking new mailboxes after this long.
    #[arg(long, default_value_t = 120.0)]
    seconds: f64,
}

/// Mailboxes still to read, and those being read now (a mailbox is locked per session, so
/// two clients must never take the same one at once).
struct Queue {
    waiting: VecDeque<String>,
    busy: HashSet<String>,
}

enum Take {
    User(String),
    Wait,
    Done,
}

impl Queue {
    fn take(&mut self) -> Take {
        if self.waiting.is_empty() {
            return Take::Done;
        }
        let Some(i) = self.waiting.iter().position(|u| !self.busy.contains(u)) else { return Take::Wait };
        match self.waiting.remove(i) {
            Some(user) => {
                self.busy.insert(user.clone());
                Take::User(user)
            }
            None => Take::Wait,
        }
    }
}

#[derive(Default)]
struct Tally {
    mailboxes: u64,
    messages: u64,
    octets: u64,
    mismatches: u64,
    wrong_sets: u64,
    errors: u64,
    notes: Vec<String>,
}

impl Tally {
    fn note(&mut self, s: String) {
        if self.notes.len() < 5 {
            self.notes.push(s);
        }
    }
}

pub async fn run(o: Opts) -> anyhow::Result<bool> {
    client::check_loopback(&o.target.addr)?;
    let users = o.users.names();
    let queue: VecDeque<String> = (0..o.rounds.max(1)).flat_map(|_| users.iter().cloned()).collect();
    let queue = Arc::new(Mutex::new(Queue { waiting: queue, busy: HashSet::new() }));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let auth = Arc::new(o.credentials.auth());
    let procs = o.target.procs();
    let cpu_before = procs.cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(o.seconds.clamp(0.1, 3600.0));
    let mut tasks = Vec::new();
    for _ in 0..o.clients.max(1) {
        let (queue, tally, auth, target) =
            (Arc::clone(&queue), Arc::clone(&tally), Arc::clone(&auth), o.target.clone());
        let (seed, expect) = (o.seed, o.messages);
        tasks.push(tokio::spawn(async move {
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let next = queue.lock().map(|mut q| q.take()).unwrap_or(Take::Done);
                let user = match next {
                    Take::User(user) => user,
                    Take::Wait => {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    Take::Done => break,
                };
                let result = one_mailbox(&target, &user, &auth, seed, expect, &tally).await;
                if let Ok(mut q) = queue.lock() {
                    q.busy.remove(&user);
                }
                if let (Err(e), Ok(mut t)) = (result, tally.lock()) {
                    t.errors += 1;
                    t.note(format!("{user}: {e:#}"));
                }
            }
        }));
    }
    for task in tasks {
        if let Err(e) = task.await
            && let Ok(mut t) = tally.lock()
        {
            t.errors += 1;
            t.note(format!("client task: {e}"));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let left = queue.lock().map(|q| q.waiting.len()).unwrap_or(0);
    let t = tally.lock().map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    let mb_s = t.octets as f64 / 1e6 / elapsed;
    let cpu_ms = procfs::cpu_ms_per_op(cpu_before, procs.cpu(), t.messages);
    let ok = t.mismatches == 0 && t.wrong_sets == 0 && t.errors == 0 && left == 0 && t.messages > 0;
    let mut r = Report::new("retr");
    r.str("addr", o.target.addr.to_string())
        .int("clients", o.clients)
        .int("mailboxes", t.mailboxes)
        .int("messages", t.messages)
        .int("octets", t.octets)
        .num("seconds", elapsed)
        .num("mb_per_sec", mb_s)
        .num("messages_per_sec", t.messages as f64 / elapsed)
        .int("mismatches", t.mismatches)
        .int("wrong_message_sets", t.wrong_sets)
        .int("errors", t.errors)
        .int("mailboxes_not_done", left)
        .opt_num("server_cpu_ms_per_message", cpu_ms)
        .bool("ok", ok)
        .str("notes", t.notes.join("; "))
        .say(format!(
            "retr ({} clients): {} messages, {:.1} MB in {elapsed:.2} s = {mb_s:.1} MB/s; {} mismatches, {} wrong sets, {} errors{}",
            o.clients,
            t.messages,
            t.octets as f64 / 1e6,
            t.mismatches,
            t.wrong_sets,
            t.errors,
            if left > 0 { format!(", {left} mailboxes not reached") } else { String::new() }
        ));
    for n in &t.notes {
        r.say(format!("  {n}"));
    }
    r.print();
    Ok(ok)
}

async fn one_mailbox(
    target: &Target,
    user: &str,
    auth: &Auth,
    seed: u64,
    expect: Option<u64>,
    tally: &Mutex<Tally>,
) -> anyhow::Result<()> {
    let mut conn = client::session(target.addr, user, auth, target.op_timeout()).await?;
    let list = conn.list().await?;
    let mut seen = BTreeSet::new();
    let (mut messages, mut octets, mut bad) = (0u64, 0u64, Vec::new());
    for (n, size) in &list {
        conn.ok(&format!("RETR {n}")).await?;
        let raw = conn.multiline_raw().await.with_context(|| format!("RETR {n}"))?;
        messages += 1;
        octets += size;
        match verify::check_retr(&raw, *size, seed) {
            Ok(key) if key.user == user => {
                if !seen.insert(key.index) {
                    bad.push(format!("{user}: message {} served twice", key.index));
                }
            }
            Ok(key) => bad.push(format!("{user}: RETR {n} returned {}'s message {}", key.user, key.index)),
            Err(m) => bad.push(format!("{user}: RETR {n}: {m}")),
        }
    }
    conn.quit().await?;
    let wrong_set = expect.is_some_and(|m| seen.len() as u64 != m || seen.iter().copied().ne(1..=m));
    let mut t = tally.lock().map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    t.mailboxes += 1;
    t.messages += messages;
    t.octets += octets;
    t.mismatches += bad.len() as u64;
    for b in bad {
        t.note(b);
    }
    if wrong_set {
        t.wrong_sets += 1;
        let m = expect.unwrap_or(0);
        t.note(format!("{user}: {} of the expected {m} messages retrieved", seen.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_mailbox_is_not_handed_out_twice() {
        let mut q = Queue { waiting: ["a", "a", "b"].map(String::from).into(), busy: HashSet::new() };
        assert!(matches!(q.take(), Take::User(u) if u == "a"));
        assert!(matches!(q.take(), Take::User(u) if u == "b"));
        assert!(matches!(q.take(), Take::Wait));
        q.busy.remove("a");
        assert!(matches!(q.take(), Take::User(u) if u == "a"));
        assert!(matches!(q.take(), Take::Done));
    }
}
