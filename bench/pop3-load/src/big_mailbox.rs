//! `big-mailbox`: one huge mailbox. Session 1 times connect+login+STAT (run it right after
//! the server starts: that is the cold scan); session 2 times STAT, LIST and UIDL alone (each
//! until its last byte has arrived, decoded after).

use std::time::Instant;

use clap::Args;

use crate::client;
use crate::report::Report;
use crate::{Credentials, Target, procfs};

#[derive(Args, Debug)]
pub struct Opts {
    #[command(flatten)]
    target: Target,
    /// The mailbox owner.
    #[arg(long)]
    user: String,
    #[command(flatten)]
    credentials: Credentials,
    /// Messages the mailbox must hold (checked when given).
    #[arg(long)]
    messages: Option<u64>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

pub async fn run(o: Opts) -> anyhow::Result<bool> {
    client::check_loopback(&o.target.addr)?;
    let auth = o.credentials.auth();
    let procs = o.target.procs();
    let cpu0 = procs.cpu();

    let t = Instant::now();
    let mut conn = client::session(o.target.addr, &o.user, &auth, o.target.op_timeout()).await?;
    let (count1, _) = conn.stat().await?;
    let first_ms = ms(t);
    conn.quit().await?;
    let cpu1 = procs.cpu();

    let t = Instant::now();
    let mut conn = client::session(o.target.addr, &o.user, &auth, o.target.op_timeout()).await?;
    let login2_ms = ms(t);
    let t = Instant::now();
    let (count2, octets) = conn.stat().await?;
    let stat_ms = ms(t);
    // LIST and UIDL are timed until their last byte has arrived; decoding them is the
    // client's work and comes after (100,000 lines cost the client as much as a fast server).
    let t = Instant::now();
    let list = conn.multi_raw("LIST").await?;
    let list_ms = ms(t);
    let t = Instant::now();
    let uidl = conn.multi_raw("UIDL").await?;
    let uidl_ms = ms(t);
    conn.quit().await?;
    let (list, uidl) = (client::parse_list(&list)?, client::parse_uidl(&uidl)?);
    let cpu2 = procs.cpu();

    let listed: u64 = list.iter().map(|(_, s)| s).sum();
    let mut problems = Vec::new();
    if count1 != count2 || list.len() as u64 != count2 || uidl.len() as u64 != count2 {
        problems.push(format!("counts differ: STAT {count1}/{count2}, LIST {}, UIDL {}", list.len(), uidl.len()));
    }
    if listed != octets {
        problems.push(format!("STAT says {octets} octets, LIST sums to {listed}"));
    }
    if let Some(m) = o.messages
        && m != count2
    {
        problems.push(format!("expected {m} messages, STAT says {count2}"));
    }
    let mut r = Report::new("big-mailbox");
    r.str("addr", o.target.addr.to_string())
        .str("user", o.user.clone())
        .int("messages", count2)
        .int("octets", octets)
        .num("first_login_stat_ms", first_ms)
        .num("second_login_ms", login2_ms)
        .num("stat_ms", stat_ms)
        .num("list_ms", list_ms)
        .num("uidl_ms", uidl_ms)
        .opt_num("server_cpu_ms_first_session", procfs::cpu_ms_per_op(cpu0, cpu1, 1))
        .opt_num("server_cpu_ms_second_session", procfs::cpu_ms_per_op(cpu1, cpu2, 1))
        .bool("ok", problems.is_empty())
        .str("problems", problems.join("; "))
        .say(format!(
            "big-mailbox ({count2} messages): first login+STAT {first_ms:.1} ms; second session: login {login2_ms:.1} ms, \
             STAT {stat_ms:.1} ms, LIST {list_ms:.1} ms, UIDL {uidl_ms:.1} ms"
        ));
    for p in &problems {
        r.say(format!("  problem: {p}"));
    }
    r.print();
    Ok(problems.is_empty())
}
