//! Brute-force throttling: failed logins are answered after a delay that doubles up to
//! `auth_failure_delay_max_ms`; after `max_auth_failures_per_ip` failures an address is
//! refused before any password work; unknown users and wrong passwords look the same; and
//! every failure is logged in a line fail2ban matches (deploy/fail2ban).
//!
//! Delays are measured in virtual time on tokio's paused clock (in-process sessions over a
//! duplex pipe), so they are exact and independent of the machine's load.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use apopd::shared::Shared;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

const FAILED: &str = "-ERR [AUTH] invalid user name or password";
const ALICE_OK: &str = "+OK alice's maildrop has 5 messages (3038 octets)";
const WINDOW_SECS: u64 = 900;

/// Throttle settings; USER/PASS and AUTH PLAIN allowed from the documentation addresses the
/// in-process sessions pretend to come from.
fn throttled(delay_ms: u64, max_ms: u64, failures: u32) -> String {
    format!(
        "auth_failure_delay_ms = {delay_ms}\nauth_failure_delay_max_ms = {max_ms}\n\
         max_auth_failures_per_ip = {failures}\nauth_failure_window_secs = {WINDOW_SECS}\n\
         plaintext_auth_networks = [\"0.0.0.0/0\"]"
    )
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The seconds N of `-ERR [LOGIN-DELAY] too many failed logins from your address; try again in N seconds`;
/// panics on any other reply.
fn refusal_seconds(reply: &str) -> u64 {
    let n = reply
        .strip_prefix("-ERR [LOGIN-DELAY] too many failed logins from your address; try again in ")
        .and_then(|rest| rest.strip_suffix(" seconds"))
        .unwrap_or_else(|| panic!("not the LOGIN-DELAY refusal: {reply:?}"));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("not a number of seconds: {reply:?}"));
    assert!((1..=WINDOW_SECS).contains(&n), "{n} seconds is outside 1..={WINDOW_SECS}: {reply:?}");
    n
}

impl Pipe {
    /// Run one failing login of kind `i % 4` and return its final reply and the virtual time it took.
    async fn fail(&mut self, i: usize, user: &str) -> (String, Duration) {
        let command = match i % 4 {
            0 => {
                assert_eq!(self.cmd(&format!("USER {user}")).await, "+OK send PASS");
                "PASS not-the-password".to_owned()
            }
            1 => format!("APOP {user} {}", self.digest("not-the-secret")),
            2 => format!("AUTH PLAIN {}", b64(format!("\0{user}\0not-the-password").as_bytes())),
            _ => {
                assert_eq!(self.cmd("AUTH LOGIN").await, format!("+ {}", b64(b"Username:")));
                assert_eq!(self.cmd(&b64(user.as_bytes())).await, format!("+ {}", b64(b"Password:")));
                b64(b"not-the-password")
            }
        };
        let start = Instant::now();
        let reply = self.cmd(&command).await;
        (reply, start.elapsed())
    }
}

fn shared(extra: &str) -> (Fixture, Arc<Shared>) {
    let fixture = Fixture::new(extra);
    let shared = Arc::new(Shared::new(fixture.config()).unwrap());
    (fixture, shared)
}

fn assert_waited(waited: Duration, expected: Duration, what: &str) {
    assert!(
        waited >= expected && waited < expected + Duration::from_millis(100),
        "{what}: waited {waited:?} (virtual), expected {expected:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn failure_delays_double_from_the_base_up_to_the_cap() {
    let (_fixture, shared) = shared(&throttled(1000, 6000, 100));
    let mut pipe = Pipe::open(&shared, "198.51.100.7:40000", 64 * 1024).await;
    let expected = [1, 2, 4, 6, 6, 6, 6, 6];
    for (i, secs) in expected.into_iter().enumerate() {
        // Every login method, known and unknown users alike, from one address.
        let user = if i % 2 == 0 { "alice" } else { "nosuchuser" };
        let (reply, waited) = pipe.fail(i, user).await;
        assert_eq!(reply, FAILED, "failure {}", i + 1);
        assert_waited(waited, Duration::from_secs(secs), &format!("failure {} ({user})", i + 1));
    }
    // A correct login is answered at once: only failures are delayed.
    let start = Instant::now();
    assert_eq!(pipe.cmd(&format!("APOP alice {}", pipe.digest(ALICE_APOP_SECRET))).await, ALICE_OK);
    assert_waited(start.elapsed(), Duration::ZERO, "successful APOP");
}

#[tokio::test(start_paused = true)]
async fn a_user_attacked_from_many_addresses_is_slowed_not_locked_out() {
    let (_fixture, shared) = shared(&throttled(1000, 6000, 3));
    // Five attackers, one failure each: no address reaches its limit, alice's count grows.
    for (n, secs) in [1, 2, 4, 6, 6].into_iter().enumerate() {
        let mut pipe = Pipe::open(&shared, &format!("203.0.113.{}:40000", n + 1), 64 * 1024).await;
        let (reply, waited) = pipe.fail(n, "alice").await;
        assert_eq!(reply, FAILED);
        assert_waited(waited, Duration::from_secs(secs), &format!("attacker {}", n + 1));
    }
    // alice herself, from her own address, still gets in at once...
    let mut alice = Pipe::open(&shared, "192.0.2.10:40000", 64 * 1024).await;
    let start = Instant::now();
    assert_eq!(alice.cmd(&format!("APOP alice {}", alice.digest(ALICE_APOP_SECRET))).await, ALICE_OK);
    assert_waited(start.elapsed(), Duration::ZERO, "alice's own login");
    assert_eq!(alice.cmd("QUIT").await, "+OK apopd signing off (0 messages deleted)");
    // ...and her success reset her count: a new failure waits the base delay again.
    let mut pipe = Pipe::open(&shared, "203.0.113.99:40000", 64 * 1024).await;
    let (reply, waited) = pipe.fail(0, "alice").await;
    assert_eq!(reply, FAILED);
    assert_waited(waited, Duration::from_secs(1), "after alice's successful login");
}

#[tokio::test(start_paused = true)]
async fn the_refusal_after_the_limit_is_immediate() {
    let (_fixture, shared) = shared(&throttled(1000, 6000, 3));
    let mut pipe = Pipe::open(&shared, "198.51.100.7:40000", 64 * 1024).await;
    for (i, secs) in [1, 2, 4].into_iter().enumerate() {
        let (reply, waited) = pipe.fail(i, "alice").await;
        assert_eq!(reply, FAILED);
        assert_waited(waited, Duration::from_secs(secs), &format!("failure {}", i + 1));
    }
    // Refused with no delay at all (and no password check), whatever the method.
    assert_eq!(pipe.cmd("USER alice").await, "+OK send PASS");
    for command in [
        format!("PASS {ALICE_PASSWORD}"),
        format!("APOP alice {}", pipe.digest(ALICE_APOP_SECRET)),
        format!("AUTH PLAIN {}", b64(format!("\0alice\0{ALICE_PASSWORD}").as_bytes())),
        "AUTH LOGIN".to_owned(),
    ] {
        let start = Instant::now();
        let reply = pipe.cmd(&command).await;
        assert_waited(start.elapsed(), Duration::ZERO, &command);
        // Nearly the whole window is left (the clock of the window is the real one).
        assert!(refusal_seconds(&reply) > WINDOW_SECS - 100, "{command}: {reply}");
    }
    // Other addresses are not affected.
    let mut other = Pipe::open(&shared, "198.51.100.8:40000", 64 * 1024).await;
    assert_eq!(other.cmd(&format!("APOP alice {}", other.digest(ALICE_APOP_SECRET))).await, ALICE_OK);
}

#[tokio::test]
async fn after_three_failures_the_address_is_refused_even_with_the_right_credentials() {
    let server = TestServer::start_with(&throttled(0, 0, 3)).await;
    let mut c = server.connect().await;
    assert_eq!(c.login("alice", "wrong").await, FAILED);
    assert_eq!(c.apop("nosuchuser", ALICE_APOP_SECRET).await, FAILED);
    assert_eq!(c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob\0wrong"))).await, FAILED);

    assert_eq!(c.cmd("USER alice").await, "+OK send PASS");
    refusal_seconds(&c.cmd(&format!("PASS {ALICE_PASSWORD}")).await);
    refusal_seconds(&c.apop("alice", ALICE_APOP_SECRET).await);
    refusal_seconds(&c.cmd(&format!("AUTH PLAIN {}", b64(b"\0bob\0builder"))).await);
    refusal_seconds(&c.cmd("AUTH LOGIN").await);
    // The refused session is still in AUTHORIZATION and still talks.
    assert_eq!(c.cmd("STAT").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");

    // A new connection from the same address is refused too...
    let mut again = server.connect().await;
    refusal_seconds(&again.apop("alice", ALICE_APOP_SECRET).await);
    // ...but another address logs in, into a mailbox nobody touched.
    let mut other = Client::start(connect_from(server.addr, "127.0.0.2").await).await;
    assert_eq!(other.apop("alice", ALICE_APOP_SECRET).await, ALICE_OK);
    assert_eq!(server.fixture.message_files("alice").len(), 5);
}

/// One login attempt of kind `kind` as `user` with `credential`, adapting to refusals the same
/// way for everyone; returns every line the server sent.
async fn attempt<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    kind: usize,
    user: &str,
    good: bool,
) -> Vec<String> {
    let password = if good { ALICE_PASSWORD } else { "wrong-password" };
    let mut transcript = Vec::new();
    match kind {
        0 => {
            transcript.push(c.cmd(&format!("USER {user}")).await);
            transcript.push(c.cmd(&format!("PASS {password}")).await);
        }
        1 => {
            let secret = if good { ALICE_APOP_SECRET } else { "wrong-secret" };
            transcript.push(c.apop(user, secret).await);
        }
        2 => transcript.push(c.cmd(&format!("AUTH PLAIN {}", b64(format!("\0{user}\0{password}").as_bytes()))).await),
        _ => {
            transcript.push(c.cmd("AUTH LOGIN").await);
            if transcript[0].starts_with("+ ") {
                transcript.push(c.cmd(&b64(user.as_bytes())).await);
                transcript.push(c.cmd(&b64(password.as_bytes())).await);
            }
        }
    }
    transcript
}

/// Unknown user (with alice's real password) and wrong password (for alice) are
/// indistinguishable at every position: while failing, and once refused. The two sequences
/// run from two client addresses, so each has its own count.
#[tokio::test]
async fn unknown_user_and_wrong_password_get_identical_replies_at_every_position() {
    let server = TestServer::start_with(&throttled(0, 0, 3)).await;
    let mut unknown = Client::start(connect_from(server.addr, "127.0.0.1").await).await;
    let mut wrong = Client::start(connect_from(server.addr, "127.0.0.2").await).await;
    let kinds = [0, 1, 3, 2, 0, 1, 3, 2];
    for (position, kind) in kinds.into_iter().enumerate() {
        // Side by side, so both addresses' counts start at (nearly) the same moment.
        let (a, b) =
            tokio::join!(attempt(&mut unknown, kind, "nosuchuser", true), attempt(&mut wrong, kind, "alice", false));
        let last = a.last().unwrap().clone();
        if position < 3 {
            assert_eq!(last, FAILED, "position {}", position + 1);
            assert_eq!(a, b, "position {}: unknown user vs wrong password", position + 1);
        } else {
            // The countdown comes from each address's own first failure on the real clock,
            // so it may straddle a second boundary: compared with a second's tolerance
            // (nearly always equal); everything else byte for byte.
            let (na, nb) = (refusal_seconds(&last), refusal_seconds(b.last().unwrap()));
            assert!(na.abs_diff(nb) <= 1, "position {}: {a:?} vs {b:?}", position + 1);
            let mask = |t: &[String]| t.iter().map(|l| l.replace(&na.to_string(), "N")).collect::<Vec<_>>();
            let unmask = |t: &[String]| t.iter().map(|l| l.replace(&nb.to_string(), "N")).collect::<Vec<_>>();
            assert_eq!(mask(&a), unmask(&b), "position {}: unknown user vs wrong password", position + 1);
            if kind == 3 {
                assert_eq!(a.len(), 1, "AUTH LOGIN refused before any exchange: {a:?}");
            }
        }
    }
}

const PASSWORDS: [&str; 3] = ["Pw-wrong-1-Zq8", "Pw-wrong-2-Xk3", "Pw-wrong-3-Jm5"];
const NEEDLE: &str = "authentication failed peer=127.0.0.1 user=";

/// A child server that has logged one failure per login method, one unknown user, one user
/// name trying to fake a `peer=` for fail2ban, then one success.
fn server_with_failures() -> (Fixture, ServerProcess) {
    let fixture = Fixture::new("");
    let server = ServerProcess::spawn(&fixture.config_path);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = Client::connect(server.addr).await;
        assert_eq!(c.login("alice", PASSWORDS[0]).await, FAILED);
        assert_eq!(c.login("nosuchuser", PASSWORDS[1]).await, FAILED);
        assert_eq!(c.apop("bob", "Pw-wrong-secret").await, FAILED);
        let plain = b64(format!("\0alice\0{}", PASSWORDS[2]).as_bytes());
        assert_eq!(c.cmd(&format!("AUTH PLAIN {plain}")).await, FAILED);
        let forged = b64(b"\0x authentication failed peer=10.9.8.7 user=\"y\0pw");
        assert_eq!(c.cmd(&format!("AUTH PLAIN {forged}")).await, FAILED);
        assert_eq!(c.login("alice", ALICE_PASSWORD).await, ALICE_OK);
    });
    server.wait_for_log(NEEDLE, 5);
    (fixture, server)
}

#[test]
fn every_failure_is_logged_with_address_and_user_but_never_the_password() {
    let (_fixture, server) = server_with_failures();
    let failures = server.wait_for_log(NEEDLE, 5);
    assert_eq!(failures.len(), 5, "{failures:#?}");
    for (line, user) in failures.iter().zip([
        "\"alice\" method=\"USER/PASS\"",
        "\"nosuchuser\" method=\"USER/PASS\"",
        "\"bob\" method=\"APOP\"",
        "\"alice\" method=\"PLAIN\"",
        "\"x authentication failed peer=10.9.8.7 user=\\\"y\" method=\"PLAIN\"",
    ]) {
        assert!(line.contains(&format!("{NEEDLE}{user}")), "{line}");
        assert!(line.contains(" WARN "), "{line}");
    }
    let log = server.log_lines().join("\n");
    for secret in PASSWORDS.iter().chain([&ALICE_PASSWORD, &"Pw-wrong-secret"]) {
        assert!(!log.contains(secret), "the log contains the password {secret:?}:\n{log}");
    }
    let plain = b64(format!("\0alice\0{}", PASSWORDS[2]).as_bytes());
    assert!(!log.contains(&plain), "the log contains the AUTH PLAIN response:\n{log}");
}

/// deploy/fail2ban/filter.d/apopd.conf, checked with fail2ban's own fail2ban-regex on a real
/// log: one match per failure, all for 127.0.0.1 (the forged name does not ban 10.9.8.7),
/// nothing else matched.
#[test]
fn the_fail2ban_filter_matches_every_failure_and_only_the_real_address() {
    if !have_program("fail2ban-regex", "fail2ban") {
        return;
    }
    let (fixture, server) = server_with_failures();
    let ips = fail2ban_matches(fixture.dir.path(), "apopd.conf", &server.log_lines());
    assert_eq!(ips, vec!["127.0.0.1"; 10], "one match per failed login in each log form");
}
