//! Every Prometheus metric apopd exports, and the only place that names them.
//!
//! Call sites go through [`Metrics`]' methods with closed enums, never with metric or label
//! strings. Every label combination is created at start, so a series exists (at 0) before
//! its first event and the hot path is an atomic add on a pre-resolved handle: no lock, no
//! hash, no allocation. No label ever holds a user name or an address (unbounded cardinality).
//! docs/metrics.md describes each metric; [`http`] serves them.

pub mod http;

use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::auth::sasl::Mechanism;

/// A label set of `N` fixed `(name, value)` pairs.
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// How a login was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// USER then PASS.
    UserPass,
    /// APOP.
    Apop,
    /// AUTH with a SASL mechanism.
    Sasl(Mechanism),
}

impl Method {
    const ALL: [Method; 6] = [
        Method::UserPass,
        Method::Apop,
        Method::Sasl(Mechanism::Plain),
        Method::Sasl(Mechanism::Login),
        Method::Sasl(Mechanism::CramMd5),
        Method::Sasl(Mechanism::ScramSha256),
    ];

    /// The name in log lines (`USER/PASS`, `APOP`, or the SASL mechanism's).
    pub fn log_name(self) -> &'static str {
        match self {
            Method::UserPass => "USER/PASS",
            Method::Apop => "APOP",
            Method::Sasl(m) => m.name(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Method::UserPass => "user_pass",
            Method::Apop => "apop",
            Method::Sasl(Mechanism::Plain) => "plain",
            Method::Sasl(Mechanism::Login) => "login",
            Method::Sasl(Mechanism::CramMd5) => "cram_md5",
            Method::Sasl(Mechanism::ScramSha256) => "scram_sha_256",
        }
    }

    /// Its place in [`Method::ALL`].
    fn index(self) -> usize {
        match self {
            Method::UserPass => 0,
            Method::Apop => 1,
            Method::Sasl(Mechanism::Plain) => 2,
            Method::Sasl(Mechanism::Login) => 3,
            Method::Sasl(Mechanism::CramMd5) => 4,
            Method::Sasl(Mechanism::ScramSha256) => 5,
        }
    }
}

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginResult {
    /// Credentials accepted and the mailbox opened: the session is in TRANSACTION.
    Success,
    /// Wrong user name or credentials.
    Failure,
    /// Right credentials, but LOGIN-DELAY has not passed yet.
    LoginDelay,
    /// Right credentials, but another session holds the mailbox.
    InUse,
    /// Right credentials, but the mailbox could not be opened (disk error, unsafe maildir).
    Error,
}

impl LoginResult {
    const ALL: [LoginResult; 5] =
        [LoginResult::Success, LoginResult::Failure, LoginResult::LoginDelay, LoginResult::InUse, LoginResult::Error];

    fn label(self) -> &'static str {
        match self {
            LoginResult::Success => "success",
            LoginResult::Failure => "failure",
            LoginResult::LoginDelay => "login_delay",
            LoginResult::InUse => "in_use",
            LoginResult::Error => "error",
        }
    }
}

/// Why a connection was refused before its session began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    MaxConnections,
    /// `max_connections_per_ip` reached for the client's address.
    PerIp,
    /// A PROXY listener was reached from outside `proxy_trusted_networks`.
    UntrustedProxy,
    /// A PROXY header was malformed, too long or late.
    BadProxyHeader,
}

impl Refusal {
    const ALL: [Refusal; 4] =
        [Refusal::MaxConnections, Refusal::PerIp, Refusal::UntrustedProxy, Refusal::BadProxyHeader];

    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerIp => "per_ip",
            Refusal::UntrustedProxy => "untrusted_proxy",
            Refusal::BadProxyHeader => "bad_proxy_header",
        }
    }
}

/// Where a TLS handshake happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// On a POP3S listener (implicit TLS).
    Implicit,
    /// After STLS.
    Stls,
}

/// How a TLS handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Encrypted.
    Success,
    /// The handshake failed (protocol error, no common cipher, the client gave up…).
    Failure,
    /// The client did not finish in time.
    Timeout,
}

impl HandshakeResult {
    /// The result of a handshake run under `tokio::time::timeout`.
    pub fn of<T, E>(handshake: &Result<Result<T, E>, tokio::time::error::Elapsed>) -> Self {
        match handshake {
            Ok(Ok(_)) => HandshakeResult::Success,
            Ok(Err(_)) => HandshakeResult::Failure,
            Err(_) => HandshakeResult::Timeout,
        }
    }
}

/// A session's state, for the sessions gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not logged in yet.
    Authorization,
    /// Logged in.
    Transaction,
    /// Deleting the marked messages after QUIT.
    Update,
}

impl State {
    const ALL: [State; 3] = [State::Authorization, State::Transaction, State::Update];

    fn label(self) -> &'static str {
        match self {
            State::Authorization => "authorization",
            State::Transaction => "transaction",
            State::Update => "update",
        }
    }
}

/// The registry and a handle for every series; one per server, in `Shared`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sessions: [Gauge; 3],
    accepted: [Counter; 2],
    refused: [Counter; 4],
    evicted: Counter,
    logins: [[Counter; 5]; 6],
    login_seconds: Histogram,
    throttle_delay_seconds: Histogram,
    throttle_refusals: Counter,
    /// `[RETR, TOP]`.
    retrieved_messages: [Counter; 2],
    /// `[RETR, TOP]`.
    retrieved_bytes: [Counter; 2],
    /// Message octets RETR handed to the kernel with `sendfile`.
    zero_copy_bytes: Counter,
    deleted: Counter,
    update_seconds: Histogram,
    /// `[implicit, stls][success, failure, timeout]`.
    handshakes: [[Counter; 3]; 2],
    /// The accounts database pool: `[open, idle, waiting]`.
    users_db_pool: [Gauge; 3],
    /// Auth cache lookups: `[miss, hit]`.
    auth_cache: [Counter; 2],
    /// Reads the pool's state at each scrape, when accounts are in a database.
    pool_source: std::sync::Mutex<Option<PoolSource>>,
}

/// A pool's `[open connections, idle connections, logins waiting for one]`.
pub type PoolState = [i64; 3];

/// Reads a [`PoolState`] (the accounts backend's pool, wired in by `Shared`).
pub struct PoolSource(pub Box<dyn Fn() -> PoolState + Send + Sync>);

impl std::fmt::Debug for PoolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolSource")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency buckets from 1 ms to about 33 s (argon2 takes ~15 ms; a big maildir scan, seconds).
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Register a family whose series are the `label` values of `all`, and return their handles.
fn family<M, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &'static str,
    values: [&'static str; N],
) -> [M; N]
where
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Clone
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let family = Family::<Labels<1>, M>::default();
    let handles = values.map(|value| family.get_or_create_owned(&[(label, value)]));
    registry.register(name, help, family);
    handles
}

impl Metrics {
    /// Register every metric, each series at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("apopd");
        let sessions =
            family(&mut registry, "sessions", "Open POP3 sessions by state", "state", State::ALL.map(State::label));
        let accepted = family(
            &mut registry,
            "connections_accepted",
            "Connections accepted, by listener",
            "listener",
            ["plain", "tls"],
        );
        let refused = family(
            &mut registry,
            "connections_refused",
            "Connections refused before a session began, by reason",
            "reason",
            Refusal::ALL.map(Refusal::label),
        );
        let evicted = Counter::default();
        registry.register(
            "connections_evicted",
            "Connections that had not logged in, closed at max_connections to admit a newer one",
            evicted.clone(),
        );
        let login_family = Family::<Labels<2>, Counter>::default();
        let logins = Method::ALL.map(|method| {
            LoginResult::ALL.map(|result| {
                login_family.get_or_create_owned(&[("method", method.label()), ("result", result.label())])
            })
        });
        registry.register("logins", "Login attempts, by method and result", login_family);
        let login_seconds = latency_buckets();
        registry.register_with_unit(
            "login_duration",
            "Time from a login's credential check to its reply (argon2 and the mailbox scan; not the failure delay)",
            Unit::Seconds,
            login_seconds.clone(),
        );
        let throttle_delay_seconds = Histogram::new(exponential_buckets(0.25, 2.0, 10));
        registry.register_with_unit(
            "throttle_delay",
            "Delays applied before answering a failed login",
            Unit::Seconds,
            throttle_delay_seconds.clone(),
        );
        let throttle_refusals = Counter::default();
        registry.register(
            "throttle_refusals",
            "Logins refused without a check: too many recent failures from the address",
            throttle_refusals.clone(),
        );
        let retrieved_messages =
            family(&mut registry, "messages_retrieved", "Messages sent by RETR or TOP", "command", ["retr", "top"]);
        let retrieved_bytes: [Counter; 2] = {
            let family = Family::<Labels<1>, Counter>::default();
            let handles = ["retr", "top"].map(|c| family.get_or_create_owned(&[("command", c)]));
            registry.register_with_unit(
                "retrieved",
                "Octets sent in RETR and TOP replies: status line, byte-stuffed message, terminator",
                Unit::Bytes,
                family,
            );
            handles
        };
        let zero_copy_bytes = Counter::default();
        registry.register_with_unit(
            "retr_zero_copy",
            "Message octets RETR sent with sendfile (files already in wire form, plain TCP)",
            Unit::Bytes,
            zero_copy_bytes.clone(),
        );
        let deleted = Counter::default();
        registry.register("messages_deleted", "Messages removed at UPDATE", deleted.clone());
        let update_seconds = latency_buckets();
        registry.register_with_unit(
            "update_duration",
            "Time UPDATE took to remove the marked messages",
            Unit::Seconds,
            update_seconds.clone(),
        );
        let handshake_family = Family::<Labels<2>, Counter>::default();
        let handshakes = ["implicit", "stls"].map(|kind| {
            ["success", "failure", "timeout"]
                .map(|result| handshake_family.get_or_create_owned(&[("kind", kind), ("result", result)]))
        });
        registry.register("tls_handshakes", "TLS handshakes, by kind and result", handshake_family);
        let users_db_pool = family(
            &mut registry,
            "users_db_pool",
            "The accounts database pool: open and idle connections, logins waiting for one (0 with the users file)",
            "state",
            ["open", "idle", "waiting"],
        );
        let auth_cache = family(
            &mut registry,
            "auth_cache_lookups",
            "Password verifications looked up in the auth cache: hit (argon2 skipped) or miss",
            "result",
            ["miss", "hit"],
        );
        Metrics {
            registry,
            sessions,
            accepted,
            refused,
            evicted,
            logins,
            login_seconds,
            throttle_delay_seconds,
            throttle_refusals,
            retrieved_messages,
            retrieved_bytes,
            zero_copy_bytes,
            deleted,
            update_seconds,
            handshakes,
            users_db_pool,
            auth_cache,
            pool_source: std::sync::Mutex::new(None),
        }
    }

    /// Report `source`'s pool state at every scrape from now on (`None`: zeros; a config
    /// reload may switch the accounts backend).
    pub fn watch_pool(&self, source: Option<PoolSource>) {
        let mut current = self.pool_source.lock().unwrap_or_else(|e| e.into_inner());
        *current = source;
        if current.is_none() {
            for gauge in &self.users_db_pool {
                gauge.set(0);
            }
        }
    }

    /// A connection was accepted on a plain (`tls` false) or POP3S listener.
    pub fn accepted(&self, tls: bool) {
        self.accepted[usize::from(tls)].inc();
    }

    /// A connection that had not logged in was closed to admit a newer one.
    pub fn evicted(&self) {
        self.evicted.inc();
    }

    /// A connection was refused before its session began.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }

    /// A session begins in AUTHORIZATION; the guard follows its state and uncounts it when dropped.
    pub fn session(&self) -> SessionGauge {
        self.sessions[State::Authorization as usize].inc();
        SessionGauge { gauges: self.sessions.clone(), state: State::Authorization }
    }

    /// A login attempt ended; `took` is from the credential check to the reply.
    pub fn login(&self, method: Method, result: LoginResult, took: Duration) {
        self.logins[method.index()][result as usize].inc();
        self.login_seconds.observe(took.as_secs_f64());
    }

    /// A failed login is answered after `delay` (a zero delay is not counted).
    pub fn throttle_delay(&self, delay: Duration) {
        if !delay.is_zero() {
            self.throttle_delay_seconds.observe(delay.as_secs_f64());
        }
    }

    /// A login was refused because its address failed too often.
    pub fn throttle_refusal(&self) {
        self.throttle_refusals.inc();
    }

    /// A RETR (`top` false) or TOP reply of `octets` was sent.
    pub fn retrieved(&self, top: bool, octets: u64) {
        self.retrieved_messages[usize::from(top)].inc();
        self.retrieved_bytes[usize::from(top)].inc_by(octets);
    }

    /// RETR sent `octets` of a message file with `sendfile`.
    pub fn zero_copy(&self, octets: u64) {
        self.zero_copy_bytes.inc_by(octets);
    }

    /// UPDATE removed `deleted` messages in `took`.
    pub fn update(&self, deleted: usize, took: Duration) {
        self.deleted.inc_by(deleted as u64);
        self.update_seconds.observe(took.as_secs_f64());
    }

    /// A password verification was looked up in the auth cache (`hit`: found, argon2 skipped).
    pub fn auth_cache(&self, hit: bool) {
        self.auth_cache[usize::from(hit)].inc();
    }

    /// A TLS handshake ended.
    pub fn handshake(&self, kind: Handshake, result: HandshakeResult) {
        self.handshakes[kind as usize][result as usize].inc();
    }

    /// The Prometheus text format (0.0.4), or OpenMetrics 1.0 when `openmetrics`.
    pub fn encode(&self, openmetrics: bool) -> String {
        if let Some(PoolSource(read)) = &*self.pool_source.lock().unwrap_or_else(|e| e.into_inner()) {
            for (gauge, value) in self.users_db_pool.iter().zip(read()) {
                gauge.set(value);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = if openmetrics {
            text::encode(&mut out, &self.registry)
        } else {
            prometheus_text::encode(&mut out, &self.registry)
        };
        out
    }
}

/// Counts one session in the sessions gauge under its current state.
#[derive(Debug)]
pub struct SessionGauge {
    /// The sessions gauge's series, by [`State`].
    gauges: [Gauge; 3],
    state: State,
}

impl SessionGauge {
    /// The session moved to `state`.
    pub fn set(&mut self, state: State) {
        self.gauges[self.state as usize].dec();
        self.gauges[state as usize].inc();
        self.state = state;
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.gauges[self.state as usize].dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_exists_at_zero() {
        let text = Metrics::new().encode(false);
        assert!(text.contains("apopd_logins_total{method=\"scram_sha_256\",result=\"in_use\"} 0\n"), "{text}");
        assert!(text.contains("apopd_sessions{state=\"update\"} 0\n"), "{text}");
        assert!(text.contains("apopd_tls_handshakes_total{kind=\"stls\",result=\"timeout\"} 0\n"), "{text}");
        assert!(text.contains("apopd_auth_cache_lookups_total{result=\"hit\"} 0\n"), "{text}");
        assert!(Metrics::new().encode(true).ends_with("# EOF\n"));
    }

    #[test]
    fn the_handle_arrays_follow_the_label_lists() {
        assert!(Method::ALL.iter().enumerate().all(|(i, m)| m.index() == i));
        assert!(LoginResult::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
        assert!(Refusal::ALL.iter().enumerate().all(|(i, r)| *r as usize == i));
        assert!(State::ALL.iter().enumerate().all(|(i, s)| *s as usize == i));
        assert_eq!([Handshake::Implicit as usize, Handshake::Stls as usize], [0, 1]);
        let results = [HandshakeResult::Success, HandshakeResult::Failure, HandshakeResult::Timeout];
        assert!(results.iter().enumerate().all(|(i, r)| *r as usize == i));
    }

    #[test]
    fn handles_move_their_own_series() {
        let metrics = Metrics::new();
        metrics.login(Method::Sasl(Mechanism::CramMd5), LoginResult::Failure, Duration::from_millis(3));
        metrics.retrieved(true, 42);
        metrics.refused(Refusal::PerIp);
        metrics.auth_cache(true);
        {
            let mut gauge = metrics.session();
            gauge.set(State::Transaction);
            assert!(metrics.encode(false).contains("apopd_sessions{state=\"transaction\"} 1\n"));
        }
        let text = metrics.encode(false);
        assert!(text.contains("apopd_logins_total{method=\"cram_md5\",result=\"failure\"} 1\n"), "{text}");
        assert!(text.contains("apopd_logins_total{method=\"cram_md5\",result=\"success\"} 0\n"), "{text}");
        assert!(text.contains("apopd_retrieved_bytes_total{command=\"top\"} 42\n"), "{text}");
        assert!(text.contains("apopd_messages_retrieved_total{command=\"top\"} 1\n"), "{text}");
        assert!(text.contains("apopd_connections_refused_total{reason=\"per_ip\"} 1\n"), "{text}");
        assert!(text.contains("apopd_sessions{state=\"transaction\"} 0\n"), "{text}");
        assert!(text.contains("apopd_login_duration_seconds_count 1\n"), "{text}");
        assert!(text.contains("apopd_auth_cache_lookups_total{result=\"hit\"} 1\n"), "{text}");
        assert!(text.contains("apopd_auth_cache_lookups_total{result=\"miss\"} 0\n"), "{text}");
    }
}
