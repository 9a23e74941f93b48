//! What the scenarios that hold many connections share: source addresses spread over
//! 127.0.0.0/8, this process's open-files limit, and the fresh-login probe.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::sync::watch;

use crate::client::{Auth, Conn};
use crate::report::{Latencies, Report};

/// The first source address handed out: 127.0.0.1 stays free for the probe and for others.
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);

/// `count` distinct loopback addresses from 127.0.1.1 upwards, skipping the .0 and .255 of
/// every /24 (some stacks treat them as network and broadcast addresses).
pub fn source_addrs(count: usize) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::with_capacity(count);
    let mut next = u32::from(FIRST_SOURCE);
    while out.len() < count {
        let ip = Ipv4Addr::from(next);
        if ip.octets()[0] != 127 || ip == Ipv4Addr::new(127, 255, 255, 255) {
            bail!("--source-addrs {count}: more than 127.0.0.0/8 holds");
        }
        if !matches!(ip.octets()[3], 0 | 255) {
            out.push(IpAddr::V4(ip));
        }
        next += 1;
    }
    Ok(out)
}

/// The source address of connection `i` when connections take turns over `addrs`
/// (None: let the kernel pick, i.e. 127.0.0.1 for a 127.0.0.1 target).
pub fn source_of(addrs: &[IpAddr], i: usize) -> Option<IpAddr> {
    (!addrs.is_empty()).then(|| addrs[i % addrs.len()])
}

/// Raise this process's RLIMIT_NOFILE so that `needed` descriptors fit: the soft limit up
/// to the hard one, and (as root) the hard one too, up to the kernel's `fs.nr_open`.
/// Returns the soft limit in force afterwards.
pub fn raise_nofile(needed: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur >= needed {
        return Ok(lim.rlim_cur);
    }
    let nr_open: u64 =
        std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1 << 20);
    let want = needed.min(nr_open);
    let raised = libc::rlimit { rlim_cur: want.max(lim.rlim_cur), rlim_max: want.max(lim.rlim_max) };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(raised.rlim_cur);
    }
    // Not root: the soft limit can still go up to the hard one.
    let soft = libc::rlimit { rlim_cur: lim.rlim_max.min(want), rlim_max: lim.rlim_max };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        return Ok(soft.rlim_cur);
    }
    Ok(lim.rlim_cur)
}

/// The fresh-login probe: while connections are held, a new client connects, logs in,
/// RETRs a message and QUITs, again and again.
#[derive(Args, Debug, Clone)]
pub struct ProbeOpts {
    /// The probe's user (must not be one of the held sessions: its mailbox would be locked).
    #[arg(long)]
    pub probe_user: Option<String>,
    /// How many probes to make while the connections are held (0: no probe).
    #[arg(long, default_value_t = 0)]
    pub probes: usize,
    /// Pause between two probes, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub probe_interval_ms: u64,
    /// The message the probe retrieves.
    #[arg(long, default_value_t = 1)]
    pub probe_message: u64,
}

/// What the probe saw.
#[derive(Debug, Default)]
pub struct ProbeResult {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Connect → greeting → login → RETR complete (the QUIT is not timed).
    pub latencies: Latencies,
}

impl ProbeResult {
    /// Add the probe's fields to a report.
    pub fn add_to(&mut self, r: &mut Report) {
        let (p50, p99) = (self.latencies.percentile_ms(50.0), self.latencies.percentile_ms(99.0));
        r.int("probe_ok", self.ok)
            .int("probe_errors", self.errors)
            .opt_num("probe_p50_ms", p50)
            .opt_num("probe_p99_ms", p99)
            .opt_num("probe_max_ms", self.latencies.percentile_ms(100.0))
            .str("probe_first_error", self.first_error.clone().unwrap_or_default());
    }

    /// One line for the summary.
    pub fn summary(&mut self) -> String {
        format!(
            "probe (connect+login+RETR): {} ok, {} errors, p50 {:.1} ms, p99 {:.1} ms{}",
            self.ok,
            self.errors,
            self.latencies.percentile_ms(50.0).unwrap_or(f64::NAN),
            self.latencies.percentile_ms(99.0).unwrap_or(f64::NAN),
            self.first_error.as_ref().map(|e| format!(" (first error: {e})")).unwrap_or_default()
        )
    }
}

/// Run `o.probes` probes one after another, or until `stop` turns true.
pub async fn probe(
    addr: SocketAddr,
    user: String,
    auth: Auth,
    o: ProbeOpts,
    op_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) -> ProbeResult {
    let mut result = ProbeResult::default();
    for _ in 0..o.probes {
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        let attempt = async {
            let mut conn = Conn::connect(addr, op_timeout).await?;
            conn.login(&user, &auth).await.with_context(|| format!("login as {user}"))?;
            conn.retr(o.probe_message).await?;
            let took = started.elapsed();
            conn.quit().await?;
            anyhow::Ok(took)
        };
        match attempt.await {
            Ok(took) => {
                result.ok += 1;
                result.latencies.push(took);
            }
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert(format!("{e:#}"));
            }
        }
        let pause = tokio::time::sleep(Duration::from_millis(o.probe_interval_ms));
        tokio::select! {
            _ = pause => {}
            _ = stop.changed() => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_rotate_over_distinct_loopback_addresses() {
        let addrs = source_addrs(600).unwrap();
        assert_eq!(addrs[0], IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)));
        assert_eq!(addrs[253], IpAddr::V4(Ipv4Addr::new(127, 0, 1, 254)));
        // .255 and .0 are skipped
        assert_eq!(addrs[254], IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1)));
        let unique: std::collections::HashSet<_> = addrs.iter().collect();
        assert_eq!(unique.len(), 600);
        assert!(addrs.iter().all(|a| a.is_loopback() && *a != IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(source_of(&addrs[..16], 0), Some(addrs[0]));
        assert_eq!(source_of(&addrs[..16], 17), Some(addrs[1]));
        assert_eq!(source_of(&[], 5), None);
        assert!(source_addrs(20_000_000).is_err());
    }

    #[test]
    fn nofile_limit_is_kept_when_high_enough() {
        let now = raise_nofile(1).unwrap();
        assert!(now >= 1);
        assert_eq!(raise_nofile(now).unwrap(), now);
    }

    #[tokio::test]
    async fn connections_come_from_the_chosen_source() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sources = source_addrs(3).unwrap();
        let server = tokio::spawn(async move {
            let mut peers = Vec::new();
            for i in 0..3 {
                let (mut s, peer) = listener.accept().await.unwrap();
                // The last one is greeted and told off in one write, as an eviction may do.
                let said: &[u8] = if i == 2 { b"+OK hi\r\n-ERR [SYS/TEMP] go\r\n" } else { b"+OK hi\r\n" };
                tokio::io::AsyncWriteExt::write_all(&mut s, said).await.unwrap();
                peers.push((peer.ip(), s));
            }
            peers
        });
        let mut conns = Vec::new();
        for i in 0..3 {
            let mut conn = Conn::connect_from(addr, source_of(&sources, i + 1), Duration::from_secs(5)).await.unwrap();
            assert_eq!(conn.greeting, "+OK hi");
            conn.compact();
            conns.push(conn);
        }
        let (peers, streams): (Vec<IpAddr>, Vec<_>) = server.await.unwrap().into_iter().unzip();
        assert_eq!(peers, vec![sources[1], sources[2], sources[0]]);
        assert_eq!(conns[0].server_spoke(), None);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(conns[2].server_spoke().as_deref(), Some("-ERR [SYS/TEMP] go"));
        // The server's sockets are gone now: every held connection sees the close.
        drop(streams);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(conns[0].server_spoke().as_deref(), Some(""));
        assert_eq!(conns[1].server_spoke().as_deref(), Some(""));
    }
}
