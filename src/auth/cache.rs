//! The auth cache: remembers successful password verifications so that a client polling with
//! the same password every few minutes costs one HMAC, not one argon2 run.
//!
//! Per user name one entry: HMAC-SHA256, under a random key made at start and never written
//! anywhere, over (user, password, the stored hash the password was verified against), and the
//! time it was made. The password itself is never kept. Because the stored hash is in the MAC,
//! a password changed by any route (users file, `apopd user passwd`, a database row) can never
//! match an old entry; a users-file reload and a failed login for the user drop entries too.
//!
//! Timing: an entry matches only the right password, so a client without it always takes the
//! full verification, exactly as an unknown user takes the dummy one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::SystemRandom;

use crate::metrics::Metrics;

/// One remembered verification.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// HMAC-SHA256 of (user, password, stored hash).
    mac: [u8; 32],
    /// When it was made; it expires `ttl` later.
    made: Instant,
}

/// The entries, and the order they were made in (for expiry and eviction).
#[derive(Debug, Default)]
struct Entries {
    by_user: HashMap<String, Entry>,
    /// `(user, made)` oldest first; a record whose user has a different `made` (replaced or
    /// dropped since) is stale and skipped.
    order: VecDeque<(String, Instant)>,
}

/// Successful verifications, remembered for `ttl`, at most `max_entries` of them.
pub struct AuthCache {
    /// `None` when the cache is off (`auth_cache_ttl_secs = 0`).
    key: Option<hmac::Key>,
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<Entries>,
    /// Where hits and misses are counted, once the server has wired it in.
    metrics: OnceLock<Arc<Metrics>>,
}

impl std::fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the MACs.
        f.debug_struct("AuthCache")
            .field("on", &self.key.is_some())
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .finish_non_exhaustive()
    }
}

/// The message the MAC covers: each part length-prefixed, so no two triples give the same bytes.
fn message(user: &str, password: &[u8], stored: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(24 + user.len() + password.len() + stored.len());
    for part in [user.as_bytes(), password, stored.as_bytes()] {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part);
    }
    bytes
}

impl AuthCache {
    /// A cache keeping entries for `ttl` (zero: off), at most `max_entries` (zero: off), with a
    /// fresh random key. Fails only when the system's random source does.
    pub fn new(ttl: Duration, max_entries: usize) -> Result<Self, String> {
        let key = if ttl.is_zero() || max_entries == 0 {
            None
        } else {
            Some(
                hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
                    .map_err(|_| "no random key for the auth cache: the system's random source failed".to_owned())?,
            )
        };
        Ok(AuthCache { key, ttl, max_entries, entries: Mutex::default(), metrics: OnceLock::new() })
    }

    /// A cache that remembers nothing.
    pub fn off() -> Self {
        AuthCache {
            key: None,
            ttl: Duration::ZERO,
            max_entries: 0,
            entries: Mutex::default(),
            metrics: OnceLock::new(),
        }
    }

    /// Count hits and misses in `metrics` from now on (set once).
    pub fn count_in(&self, metrics: Arc<Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True when `password` was verified for `user` against `stored` less than `ttl` ago.
    /// Counted as a hit or a miss (when the cache is on).
    pub fn hit(&self, user: &str, password: &[u8], stored: &str) -> bool {
        let hit = self.hit_at(user, password, stored, Instant::now());
        if let (Some(metrics), Some(_)) = (self.metrics.get(), &self.key) {
            metrics.auth_cache(hit);
        }
        if hit {
            tracing::debug!(user = ?user, "auth cache hit");
        }
        hit
    }

    fn hit_at(&self, user: &str, password: &[u8], stored: &str, now: Instant) -> bool {
        let Some(key) = &self.key else { return false };
        let entry = self.lock().by_user.get(user).copied();
        // The MAC is always computed, entry or not: a lookup costs the same for every user.
        let message = message(user, password, stored);
        // No entry: a MAC of zeros, which nothing matches.
        let matched = hmac::verify(key, &message, &entry.map_or([0; 32], |e| e.mac)).is_ok();
        matched && entry.is_some_and(|e| now.saturating_duration_since(e.made) < self.ttl)
    }

    /// Remember that `password` is `user`'s, as verified against `stored`.
    pub fn insert(&self, user: &str, password: &[u8], stored: &str) {
        self.insert_at(user, password, stored, Instant::now());
    }

    fn insert_at(&self, user: &str, password: &[u8], stored: &str, now: Instant) {
        let Some(key) = &self.key else { return };
        let tag = hmac::sign(key, &message(user, password, stored));
        let mut mac = [0; 32];
        mac.copy_from_slice(tag.as_ref());
        let mut entries = self.lock();
        entries.expire(now, self.ttl);
        if !entries.by_user.contains_key(user) {
            while entries.by_user.len() >= self.max_entries && entries.evict_oldest() {}
        }
        entries.by_user.insert(user.to_owned(), Entry { mac, made: now });
        entries.order.push_back((user.to_owned(), now));
        // Replaced entries leave stale records behind: sweep them when they outnumber the live
        // ones, which keeps `order` within twice the entries at O(1) amortised per insert.
        if entries.order.len() > 2 * entries.by_user.len() + 16 {
            let Entries { by_user, order } = &mut *entries;
            order.retain(|(user, made)| by_user.get(user).is_some_and(|e| e.made == *made));
        }
    }

    /// Forget `user` (a failed login).
    pub fn forget(&self, user: &str) {
        if self.key.is_some() {
            self.lock().by_user.remove(user);
        }
    }

    /// Forget everyone (the users files changed).
    pub fn clear(&self) {
        if self.key.is_some() {
            let mut entries = self.lock();
            if !entries.by_user.is_empty() {
                tracing::debug!(entries = entries.by_user.len(), "auth cache cleared");
            }
            *entries = Entries::default();
        }
    }

    /// How many entries are held (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.lock().by_user.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Entries {
    /// Drop the entries made `ttl` or longer before `now` (they are at the front of `order`).
    fn expire(&mut self, now: Instant, ttl: Duration) {
        while let Some((_, made)) = self.order.front() {
            if now.saturating_duration_since(*made) < ttl {
                break;
            }
            self.evict_oldest();
        }
    }

    /// Drop the oldest live entry; false when there was none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((user, made)) = self.order.pop_front() {
            if self.by_user.get(&user).is_some_and(|e| e.made == made) {
                self.by_user.remove(&user);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

    fn cache(ttl_secs: u64, max: usize) -> AuthCache {
        AuthCache::new(Duration::from_secs(ttl_secs), max).unwrap()
    }

    #[test]
    fn only_the_same_user_password_and_hash_hit() {
        let cache = cache(60, 10);
        let now = Instant::now();
        assert!(!cache.hit_at("alice", b"pw", STORED, now));
        cache.insert_at("alice", b"pw", STORED, now);
        assert!(cache.hit_at("alice", b"pw", STORED, now));
        assert!(!cache.hit_at("alice", b"pw2", STORED, now), "another password");
        assert!(!cache.hit_at("alice", b"pw", "{PLAIN}pw", now), "the stored hash changed");
        assert!(!cache.hit_at("bob", b"pw", STORED, now), "another user");
        // Length prefixes: shifting bytes between the parts is another message.
        assert_ne!(message("ab", b"c", "d"), message("a", b"bc", "d"));
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = cache(60, 10);
        let now = Instant::now();
        cache.insert_at("alice", b"pw", STORED, now);
        assert!(cache.hit_at("alice", b"pw", STORED, now + Duration::from_secs(59)));
        assert!(!cache.hit_at("alice", b"pw", STORED, now + Duration::from_secs(60)));
        // The next insert sweeps the expired entry.
        cache.insert_at("bob", b"pw", STORED, now + Duration::from_secs(61));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn forget_and_clear_drop_entries() {
        let cache = cache(60, 10);
        let now = Instant::now();
        cache.insert_at("alice", b"pw", STORED, now);
        cache.insert_at("bob", b"pw", STORED, now);
        cache.forget("alice");
        assert!(!cache.hit_at("alice", b"pw", STORED, now));
        assert!(cache.hit_at("bob", b"pw", STORED, now));
        cache.clear();
        assert!(!cache.hit_at("bob", b"pw", STORED, now));
        assert!(cache.is_empty());
    }

    #[test]
    fn the_bound_evicts_the_oldest() {
        let cache = cache(60, 2);
        let now = Instant::now();
        for (i, user) in ["a", "b", "c"].iter().enumerate() {
            cache.insert_at(user, b"pw", STORED, now + Duration::from_secs(i as u64));
        }
        assert_eq!(cache.len(), 2);
        let later = now + Duration::from_secs(3);
        assert!(!cache.hit_at("a", b"pw", STORED, later));
        assert!(cache.hit_at("b", b"pw", STORED, later) && cache.hit_at("c", b"pw", STORED, later));
        // Replacing an entry does not evict anyone.
        cache.insert_at("b", b"pw", STORED, later);
        assert!(cache.hit_at("c", b"pw", STORED, later));
    }

    #[test]
    fn repeated_logins_keep_the_order_bounded() {
        let cache = cache(60, 4);
        let now = Instant::now();
        for i in 0..10_000u64 {
            let user = ["a", "b"][(i % 2) as usize];
            cache.insert_at(user, b"pw", STORED, now + Duration::from_micros(i));
            if i % 3 == 0 {
                cache.forget(user);
            }
        }
        let entries = cache.lock();
        assert!(entries.by_user.len() <= 2);
        assert!(entries.order.len() <= 2 * entries.by_user.len() + 17, "{}", entries.order.len());
    }

    #[test]
    fn zero_turns_it_off() {
        for cache in [cache(0, 10), cache(60, 0), AuthCache::off()] {
            let now = Instant::now();
            cache.insert_at("alice", b"pw", STORED, now);
            assert!(!cache.hit_at("alice", b"pw", STORED, now));
            assert!(cache.is_empty());
        }
    }
}
