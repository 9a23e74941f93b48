//! The auth cache over real sockets: a repeat USER/PASS (or AUTH PLAIN/LOGIN) login with the
//! same password is a hit (counted in `apopd_auth_cache_lookups_total`, argon2 skipped);
//! expiry, `auth_cache_ttl_secs = 0`, a failed login, a users-file change (by hand and by the
//! real `apopd user passwd/del` against a running `apopd serve`), the entry bound, a database
//! row changed behind apopd's back; and a wrong password for a cached user costing what an
//! unknown user costs.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{ALICE_APOP_SECRET, ALICE_PASSWORD, BOB_PASSWORD, Client, Fixture, ServerProcess, TestServer, run_apopd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const METRICS: &str = "metrics_listen = \"127.0.0.1:0\"";

/// `(hits, misses)` from `/metrics`.
async fn lookups(metrics: SocketAddr) -> (u64, u64) {
    let mut stream = tokio::net::TcpStream::connect(metrics).await.expect("connect to metrics");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply))
        .await
        .expect("metrics answered within 10 s")
        .expect("read metrics");
    let count = |result: &str| {
        let prefix = format!("apopd_auth_cache_lookups_total{{result=\"{result}\"}} ");
        reply
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix}in:\n{reply}"))
            .parse()
            .expect("a count")
    };
    (count("hit"), count("miss"))
}

/// USER/PASS on a new connection, QUIT after a success; true when accepted.
async fn login(addr: SocketAddr, user: &str, password: &str) -> bool {
    login_timed(addr, user, password).await.0
}

/// Like [`login`], with the time from USER to PASS's reply.
async fn login_timed(addr: SocketAddr, user: &str, password: &str) -> (bool, Duration) {
    let mut client = Client::connect(addr).await;
    let started = Instant::now();
    let reply = client.login(user, password).await;
    let took = started.elapsed();
    let ok = reply.starts_with("+OK");
    if ok {
        let bye = client.cmd("QUIT").await;
        assert!(bye.starts_with("+OK"), "{bye}");
    }
    (ok, took)
}

/// An in-process server with metrics and `extra` config.
async fn server(extra: &str) -> (TestServer, SocketAddr) {
    let server = TestServer::start_with(&format!("{METRICS}\n{extra}")).await;
    let metrics = server.metrics_addr.expect("metrics_listen");
    (server, metrics)
}

#[tokio::test]
async fn a_repeat_login_with_the_same_password_is_a_hit_for_user_pass_plain_and_login() {
    let (server, metrics) = server("").await;
    assert_eq!(lookups(metrics).await, (0, 0));
    assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (0, 1), "the first login verifies in full");
    assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (1, 1), "the second one is a hit");

    // AUTH PLAIN and AUTH LOGIN check the same password: hits too.
    let mut c = server.connect().await;
    let plain = c.cmd(&format!("AUTH PLAIN {}", B64.encode(format!("\0alice\0{ALICE_PASSWORD}")))).await;
    assert!(plain.starts_with("+OK"), "{plain}");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let mut c = server.connect().await;
    assert!(c.cmd("AUTH LOGIN").await.starts_with("+ "));
    assert!(c.cmd(&B64.encode("alice")).await.starts_with("+ "));
    let reply = c.cmd(&B64.encode(ALICE_PASSWORD)).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert_eq!(lookups(metrics).await, (3, 1));

    // APOP costs no argon2 and does not use the cache.
    let mut c = server.connect().await;
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    assert_eq!(lookups(metrics).await, (3, 1));

    // Another user has an entry of their own.
    assert!(login(server.addr, "bob", BOB_PASSWORD).await);
    assert!(login(server.addr, "bob", BOB_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (4, 2));
}

#[tokio::test]
async fn an_entry_expires_after_the_ttl() {
    let (server, metrics) = server("auth_cache_ttl_secs = 1").await;
    assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (1, 1), "a hit within the second");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (1, 2), "expired: verified in full again");
}

#[tokio::test]
async fn a_ttl_of_zero_turns_the_cache_off() {
    let (server, metrics) = server("auth_cache_ttl_secs = 0").await;
    for _ in 0..3 {
        assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    }
    assert_eq!(lookups(metrics).await, (0, 0), "no lookups at all");
}

#[tokio::test]
async fn a_failed_login_drops_that_users_entry_only() {
    let (server, metrics) = server("").await;
    for (user, password) in [("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)] {
        assert!(login(server.addr, user, password).await);
    }
    assert!(!login(server.addr, "alice", "not her password").await);
    assert_eq!(lookups(metrics).await, (0, 3), "a wrong password is never a hit");
    assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (0, 4), "alice's entry went with the failure");
    assert!(login(server.addr, "bob", BOB_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (1, 4), "bob's stayed");
}

#[tokio::test]
async fn a_users_file_change_drops_every_entry() {
    let (server, metrics) = server("").await;
    for (user, password) in [("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)] {
        assert!(login(server.addr, user, password).await);
    }
    // The same content written again: nothing changed but the file's time, and still every
    // entry is dropped (the reload cannot know what an editor changed).
    let users = server.fixture.dir.path().join("users");
    let content = std::fs::read(&users).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(&users, content).unwrap();
    assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    assert!(login(server.addr, "bob", BOB_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (0, 4));
    assert!(login(server.addr, "bob", BOB_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (1, 4), "cached again after the reload");
}

/// Run the real `apopd ARGS` with `stdin`; panics unless it succeeds.
fn apopd(args: &[&str], stdin: &str) {
    let out = run_apopd(args, stdin.as_bytes());
    assert!(out.status.success(), "apopd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn apopd_user_passwd_and_del_on_a_running_server_drop_the_entries() {
    let fixture = Fixture::new(METRICS);
    let config = fixture.config_path.to_str().expect("UTF-8 path").to_owned();
    let server = ServerProcess::spawn(&fixture.config_path);
    let metrics = server.metrics_addr.expect("metrics_listen");
    for (user, password) in [("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)] {
        assert!(login(server.addr, user, password).await);
        assert!(login(server.addr, user, password).await);
    }
    assert_eq!(lookups(metrics).await, (2, 2), "both cached");

    apopd(&["user", "passwd", "alice", "--config", &config], "new-wonderland\n");
    assert!(!login(server.addr, "alice", ALICE_PASSWORD).await, "the old password after passwd");
    assert!(login(server.addr, "alice", "new-wonderland").await, "the new password after passwd");
    assert!(login(server.addr, "bob", BOB_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (2, 5), "the rewrite emptied the cache: bob verified in full");
    assert!(login(server.addr, "bob", BOB_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (3, 5));

    apopd(&["user", "del", "bob", "--config", &config], "");
    assert!(!login(server.addr, "bob", BOB_PASSWORD).await, "a deleted user, cached a moment ago");
    assert_eq!(lookups(metrics).await, (3, 6));
}

#[tokio::test]
async fn the_cache_holds_at_most_max_entries_users() {
    let fixture = Fixture::new(&format!("{METRICS}\nauth_cache_max_entries = 2"));
    let dir = fixture.dir.path();
    let hash = apopd::auth::password::hash(b"carol-pw").unwrap();
    let mut users = std::fs::read_to_string(dir.join("users")).unwrap();
    users.push_str(&format!("carol:{hash}\n"));
    std::fs::write(dir.join("users"), users).unwrap();
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(dir.join("mail/carol").join(sub)).unwrap();
    }
    let server = TestServer::start_on(fixture).await;
    let metrics = server.metrics_addr.unwrap();
    let alice = ("alice", ALICE_PASSWORD);
    let (bob, carol) = (("bob", BOB_PASSWORD), ("carol", "carol-pw"));
    for (user, password) in [alice, bob, carol] {
        assert!(login(server.addr, user, password).await, "{user}");
    }
    assert_eq!(lookups(metrics).await, (0, 3));
    for (user, password) in [carol, bob] {
        assert!(login(server.addr, user, password).await, "{user}");
    }
    assert_eq!(lookups(metrics).await, (2, 3), "the two newest are held");
    assert!(login(server.addr, alice.0, alice.1).await);
    assert_eq!(lookups(metrics).await, (2, 4), "the oldest made room");
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_for_a_cached_user_costs_what_an_unknown_user_costs() {
    let (server, metrics) = server("").await;
    let addr = server.addr;
    let (mut cached_wrong, mut unknown, mut hits) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..7 {
        // alice is cached (a failure dropped her entry last round: log in twice).
        assert!(login(addr, "alice", ALICE_PASSWORD).await);
        let (ok, hit) = login_timed(addr, "alice", ALICE_PASSWORD).await;
        assert!(ok);
        hits.push(hit);
        // Interleaved, so load on the machine hits both kinds alike.
        let (pair_a, pair_b) = if round % 2 == 0 { ("alice", "mallory") } else { ("mallory", "alice") };
        for user in [pair_a, pair_b] {
            let (ok, took) = login_timed(addr, user, "a guess").await;
            assert!(!ok);
            if user == "alice" {
                cached_wrong.push(took)
            } else {
                unknown.push(took)
            }
            if user == "alice" {
                // From here on alice is no longer cached: log her in again for the other one.
                assert!(login(addr, "alice", ALICE_PASSWORD).await);
            }
        }
    }
    // Round 0 has one hit (the timed login), every later round two (the previous round's last
    // login made an entry): alice was cached before each of her guesses.
    assert_eq!(lookups(metrics).await.0, 13);
    let (wrong, unknown, hit) = (median(cached_wrong), median(unknown), median(hits));
    eprintln!("median: cached user, wrong password {wrong:?}; unknown user {unknown:?}; cache hit {hit:?}");
    // Generous bounds: both take one argon2 run; a shortcut would answer in the hit's time.
    assert!(
        wrong * 2 > unknown && wrong < unknown * 2,
        "a wrong password for a cached user ({wrong:?}) must cost what an unknown user costs ({unknown:?})"
    );
    assert!(hit * 2 < unknown, "the hit ({hit:?}) skips argon2 ({unknown:?}): the test can tell the paths apart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_row_changed_behind_apopds_back_never_hits_a_stale_entry() {
    use common::postgres::{Cluster, argon2, documented_schema, postgres_bin};
    let Some(bin) = postgres_bin() else { return };
    let cluster = Cluster::start(bin);
    let row = format!("INSERT INTO pop3_users (name, password) VALUES ('alice', '{}');", argon2(ALICE_PASSWORD));
    cluster.sql(&format!("{}\n{row}", documented_schema())).await;
    let server = TestServer::start_on(cluster.fixture(METRICS)).await;
    let metrics = server.metrics_addr.unwrap();
    assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    assert!(login(server.addr, "alice", ALICE_PASSWORD).await);
    assert_eq!(lookups(metrics).await, (1, 1), "the database backend caches too");

    cluster.sql(&format!("UPDATE pop3_users SET password = '{}' WHERE name = 'alice';", argon2("changed"))).await;
    assert!(!login(server.addr, "alice", ALICE_PASSWORD).await, "the old password after the row changed");
    assert!(login(server.addr, "alice", "changed").await);
    assert!(login(server.addr, "alice", "changed").await);
    assert_eq!(lookups(metrics).await, (2, 3));
}
