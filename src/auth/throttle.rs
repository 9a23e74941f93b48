//! Brute-force throttling: failed logins are remembered per IP and per user for a window.
//!
//! Each failure doubles the delay before the `-ERR` (from `auth_failure_delay_ms` up to
//! `auth_failure_delay_max_ms`), counting the larger of the IP's and the user's recent
//! failures. An IP with `max_auth_failures_per_ip` failures in the window is refused before
//! any password work until the window ends. Users are only slowed, never locked out, so
//! nobody can lock another person out of their mailbox. IPv6 clients count per /64, the
//! smallest block an attacker usually has. Addresses in `exempt` (`lab_networks`: a
//! classroom behind one NAT address) are never counted or refused per IP; their users are
//! still slowed per user.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// The most records kept; past it, expired ones are dropped, and if that is not enough, all.
const MAX_RECORDS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    since: Instant,
}

/// The throttle's settings.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Delay after a first failure.
    pub base_delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
    /// Failures from one IP within `window` that get it refused.
    pub max_failures_per_ip: u32,
    /// How long failures count.
    pub window: Duration,
    /// Networks whose addresses are neither counted nor refused per IP.
    pub exempt: Vec<IpNet>,
}

/// Failed-login memory shared by all sessions.
#[derive(Debug)]
pub struct Throttle {
    policy: Policy,
    /// Shared with the throttle a config reload makes, so failures are not forgotten.
    records: Arc<Mutex<HashMap<Key, Record>>>,
}

/// IPv4 as is; IPv6 reduced to its /64.
fn ip_key(ip: IpAddr) -> Key {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            Key::Ip(IpAddr::V6(bits.into()))
        }
        v4 => Key::Ip(v4),
    }
}

impl Throttle {
    /// An empty throttle.
    pub fn new(policy: Policy) -> Self {
        Throttle { policy, records: Arc::default() }
    }

    /// A throttle with a new policy that remembers the same failures (a config reload).
    pub fn with_policy(&self, policy: Policy) -> Self {
        Throttle { policy, records: self.records.clone() }
    }

    /// Whether `ip` is in `exempt` (never counted or refused per IP).
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.policy.exempt.iter().any(|net| net.contains(&ip))
    }

    fn live(&self, record: Option<&Record>, now: Instant) -> Option<Record> {
        record.copied().filter(|r| now.duration_since(r.since) < self.policy.window)
    }

    /// How long `ip` stays refused, if it is.
    pub fn blocked_for(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.is_exempt(ip) {
            return None;
        }
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let record = self.live(records.get(&ip_key(ip)), now)?;
        (record.failures >= self.policy.max_failures_per_ip)
            .then(|| self.policy.window.saturating_sub(now.duration_since(record.since)))
    }

    /// Count a failure by `ip` for `user`; returns how long to wait before answering.
    pub fn failed(&self, ip: IpAddr, user: &str, now: Instant) -> Duration {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() >= MAX_RECORDS {
            let window = self.policy.window;
            records.retain(|_, r| now.duration_since(r.since) < window);
            if records.len() >= MAX_RECORDS {
                records.clear();
            }
        }
        let mut worst = 0;
        let ip_key = (!self.is_exempt(ip)).then(|| ip_key(ip));
        for key in ip_key.into_iter().chain([Key::User(user.to_owned())]) {
            let record = match self.live(records.get(&key), now) {
                Some(r) => Record { failures: r.failures.saturating_add(1), since: r.since },
                None => Record { failures: 1, since: now },
            };
            worst = worst.max(record.failures);
            records.insert(key, record);
        }
        let factor = 1u32.checked_shl(worst.saturating_sub(1)).unwrap_or(u32::MAX);
        self.policy.base_delay.saturating_mul(factor).min(self.policy.max_delay)
    }

    /// Forget `user`'s failures after a successful login (the IP's stay).
    pub fn succeeded(&self, user: &str) {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).remove(&Key::User(user.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(Policy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            max_failures_per_ip: 3,
            window: Duration::from_secs(60),
            exempt: vec!["192.0.2.0/24".parse().unwrap()],
        })
    }

    #[test]
    fn a_lab_network_is_never_refused_but_its_users_are_slowed() {
        let t = throttle();
        let now = Instant::now();
        let lab: IpAddr = "192.0.2.9".parse().unwrap();
        for i in 0..30 {
            let delay = t.failed(lab, "g01a", now);
            assert_eq!(delay, Duration::from_secs(1 << i.min(3)).min(Duration::from_secs(5)));
            assert_eq!(t.blocked_for(lab, now), None);
        }
        assert_eq!(t.failed(lab, "g02a", now), Duration::from_secs(1), "another user from the room is not slowed");
        let outside: IpAddr = "198.51.100.9".parse().unwrap();
        for _ in 0..3 {
            t.failed(outside, "x", now);
        }
        assert!(t.blocked_for(outside, now).is_some());
    }

    #[test]
    fn delays_double_up_to_the_cap_and_ips_get_blocked() {
        let t = throttle();
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let now = Instant::now();
        assert_eq!(t.blocked_for(ip, now), None);
        assert_eq!(t.failed(ip, "alice", now), Duration::from_secs(1));
        assert_eq!(t.failed(ip, "bob", now), Duration::from_secs(2));
        assert_eq!(t.blocked_for(ip, now), None);
        assert_eq!(t.failed(ip, "carol", now), Duration::from_secs(4));
        assert_eq!(t.blocked_for(ip, now + Duration::from_secs(10)), Some(Duration::from_secs(50)));
        assert_eq!(t.failed(ip, "dave", now), Duration::from_secs(5), "capped");
        assert_eq!(t.blocked_for(ip, now + Duration::from_secs(61)), None, "the window ends");
    }

    #[test]
    fn a_user_attacked_from_many_ips_is_slowed_not_locked() {
        let t = throttle();
        let now = Instant::now();
        for i in 1..=10u8 {
            let ip = IpAddr::from([198, 51, 100, i]);
            let delay = t.failed(ip, "alice", now);
            assert_eq!(delay, Duration::from_secs(1 << (i - 1)).min(Duration::from_secs(5)));
            assert_eq!(t.blocked_for(ip, now), None);
        }
        t.succeeded("alice");
        assert_eq!(t.failed(IpAddr::from([203, 0, 113, 1]), "alice", now), Duration::from_secs(1));
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = throttle();
        let now = Instant::now();
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"] {
            t.failed(host.parse().unwrap(), "x", now);
        }
        assert!(t.blocked_for("2001:db8:1:2::99".parse().unwrap(), now).is_some());
        assert!(t.blocked_for("2001:db8:1:3::1".parse().unwrap(), now).is_none());
    }
}
