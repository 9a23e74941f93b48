//! Accounts in PostgreSQL, against a real server: a throw-away cluster (`initdb`, `pg_ctl`)
//! in a temp dir on a loopback port, with the schema SQL taken from docs/scaling-postgres.md.
//! USER/PASS, APOP and AUTH PLAIN against rows; the database stopped mid-test (`[SYS/TEMP]`,
//! not "wrong password") and started again; `apopd user add/passwd/del/list` on the table.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::net::TcpListener;
use std::process::Output;
use std::time::{Duration, Instant};

use common::postgres::{Cluster, FAILURE_DELAY_MS, argon2, documented_schema, postgres_bin};
use common::{ALICE_APOP_SECRET, ALICE_PASSWORD, Fixture, TestServer, run_apopd};

/// The one answer to a wrong password or an unknown user.
const AUTH_FAILED: &str = "-ERR [AUTH] invalid user name or password";
/// `doveadm pw -s SHA512-CRYPT -p 'Correct horse 1'` (as in tests/password_import.rs).
const SHA512_CRYPT: &str = "{SHA512-CRYPT}$6$Y4fV12nju8nptiQx$P94N3wz.7edef5QKapCzYinPWWRyQelALSzfO6YQ7qbVbUlaj9t9JtI3OCw49B7Uzj5qctsDX9KFc0XeJmZJX1";
const SHA512_PASSWORD: &str = "Correct horse 1";
/// Every mechanism, so that CRAM-MD5 and SCRAM look the APOP secret up in the database too.
const ALL_SASL: &str = "sasl_mechanisms = [\"SCRAM-SHA-256\", \"CRAM-MD5\", \"PLAIN\", \"LOGIN\"]";
/// The `apopd user …` command with `stdin`.
fn apopd(args: &[&str], stdin: &str) -> Output {
    run_apopd(args, stdin.as_bytes())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The decoded challenge of a `+ …` continuation line.
fn challenge(line: &str) -> Vec<u8> {
    let encoded = line.strip_prefix("+ ").unwrap_or_else(|| panic!("not a continuation: {line}"));
    B64.decode(encoded).expect("challenge is base64")
}

/// AUTH CRAM-MD5 as `user` with `secret` (as in tests/sasl.rs); the final reply.
async fn cram_md5(c: &mut common::Client, user: &str, secret: &str) -> String {
    let reply = c.cmd("AUTH CRAM-MD5").await;
    if !reply.starts_with("+ ") {
        return reply;
    }
    let mut mac = <Hmac<md5::Md5> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&challenge(&reply));
    let digest = base16ct::lower::encode_string(&mac.finalize().into_bytes());
    c.cmd(&B64.encode(format!("{user} {digest}"))).await
}

/// AUTH SCRAM-SHA-256 with the client-first as initial response (RFC 5802, as in
/// tests/sasl.rs); the final reply.
async fn scram(c: &mut common::Client, user: &str, secret: &str) -> String {
    let client_nonce = "fyko+d2lbbFgONRv9qkxdawL";
    let bare = format!("n={user},r={client_nonce}");
    let reply = c.cmd(&format!("AUTH SCRAM-SHA-256 {}", B64.encode(format!("n,,{bare}")))).await;
    if !reply.starts_with("+ ") {
        return reply;
    }
    let server_first = String::from_utf8(challenge(&reply)).unwrap();
    let mut fields = server_first.split(',');
    let nonce = fields.next().unwrap().strip_prefix("r=").unwrap().to_owned();
    let salt = B64.decode(fields.next().unwrap().strip_prefix("s=").unwrap()).unwrap();
    let rounds: u32 = fields.next().unwrap().strip_prefix("i=").unwrap().parse().unwrap();
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(secret.as_bytes(), &salt, rounds, &mut salted);
    let hmac = |key: &[u8], data: &[u8]| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    };
    let client_key = hmac(&salted, b"Client Key");
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac(&Sha256::digest(&client_key), auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
    let reply = c.cmd(&B64.encode(format!("{without_proof},p={}", B64.encode(&proof)))).await;
    if !reply.starts_with("+ ") {
        return reply;
    }
    c.cmd("").await
}

async fn login_time(server: &TestServer, user: &str, password: &str) -> (String, Duration) {
    let mut client = server.connect().await;
    let started = Instant::now();
    let reply = client.login(user, password).await;
    let took = started.elapsed();
    if reply.starts_with("+OK") {
        // Release the mailbox lock before the next login of the same user.
        let bye = client.cmd("QUIT").await;
        assert!(bye.starts_with("+OK"), "{bye}");
    }
    (reply, took)
}

/// QUIT a logged-in session, so its mailbox lock is gone before the next login.
async fn quit(client: &mut common::Client) {
    let bye = client.cmd("QUIT").await;
    assert!(bye.starts_with("+OK"), "{bye}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_against_rows_survive_a_database_outage() {
    let Some(bin) = postgres_bin() else { return };
    let cluster = Cluster::start(bin);
    let schema = documented_schema();
    let rows = format!(
        "INSERT INTO pop3_users (name, password, apop_secret) VALUES ('alice', '{}', '{ALICE_APOP_SECRET}');
         INSERT INTO pop3_users (name, password) VALUES ('bob', '{SHA512_CRYPT}');",
        argon2(ALICE_PASSWORD)
    );
    cluster.sql(&format!("{schema}\n{rows}")).await;
    let server = TestServer::start_on(cluster.fixture(&format!("{ALL_SASL}\nmetrics_listen = \"127.0.0.1:0\""))).await;
    assert_eq!(pool_gauges(&server).await, [0, 0, 0], "no connection before the first login");

    // USER/PASS (bare argon2id), APOP, CRAM-MD5 and SCRAM-SHA-256 (the secret column) and
    // AUTH PLAIN ({SHA512-CRYPT} row).
    let (reply, _) = login_time(&server, "alice", ALICE_PASSWORD).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    let mut client = server.connect().await;
    let reply = client.apop("alice", ALICE_APOP_SECRET).await;
    assert!(reply.starts_with("+OK"), "APOP: {reply}");
    quit(&mut client).await;
    let [open, idle, waiting] = pool_gauges(&server).await;
    assert!(
        open >= 1 && idle == open && waiting == 0,
        "the pool in /metrics: open {open}, idle {idle}, waiting {waiting}"
    );
    let mut client = server.connect().await;
    let plain = B64.encode(format!("\0bob\0{SHA512_PASSWORD}"));
    let reply = client.cmd(&format!("AUTH PLAIN {plain}")).await;
    assert!(reply.starts_with("+OK"), "AUTH PLAIN: {reply}");
    quit(&mut client).await;
    let mut client = server.connect().await;
    let reply = cram_md5(&mut client, "alice", ALICE_APOP_SECRET).await;
    assert!(reply.starts_with("+OK"), "CRAM-MD5: {reply}");
    quit(&mut client).await;
    let mut client = server.connect().await;
    let reply = scram(&mut client, "alice", ALICE_APOP_SECRET).await;
    assert!(reply.starts_with("+OK"), "SCRAM-SHA-256: {reply}");
    quit(&mut client).await;
    let mut client = server.connect().await;
    assert_eq!(cram_md5(&mut client, "alice", "wrong").await, AUTH_FAILED);
    assert_eq!(cram_md5(&mut client, "nobody-here", ALICE_APOP_SECRET).await, AUTH_FAILED);
    assert_eq!(scram(&mut client, "bob", ALICE_APOP_SECRET).await, AUTH_FAILED, "bob has no APOP secret");

    // Wrong password and unknown user: one answer, after the failure delay.
    for (user, password) in [("alice", "wrong"), ("nobody-here", ALICE_PASSWORD), ("bob", "wrong")] {
        let (reply, took) = login_time(&server, user, password).await;
        assert_eq!(reply, AUTH_FAILED, "{user}");
        assert!(took >= Duration::from_millis(FAILURE_DELAY_MS), "{user}: {took:?}");
    }
    let mut client = server.connect().await;
    assert_eq!(client.apop("nobody-here", ALICE_APOP_SECRET).await, AUTH_FAILED);

    // Database down: a temporary error, quickly, with no failure delay; never "wrong password".
    cluster.pg_stop();
    for _ in 0..2 {
        let (reply, took) = login_time(&server, "alice", ALICE_PASSWORD).await;
        assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
        assert!(took < Duration::from_millis(FAILURE_DELAY_MS), "{took:?}");
    }
    let mut client = server.connect().await;
    let reply = client.apop("alice", ALICE_APOP_SECRET).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "APOP: {reply}");
    let reply = cram_md5(&mut client, "alice", ALICE_APOP_SECRET).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "CRAM-MD5: {reply}");
    let reply = scram(&mut client, "alice", ALICE_APOP_SECRET).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "SCRAM: {reply}");
    let plain = B64.encode(format!("\0alice\0{ALICE_PASSWORD}"));
    let reply = client.cmd(&format!("AUTH PLAIN {plain}")).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "AUTH PLAIN: {reply}");

    // Back up: the pool reconnects, the very next login works.
    cluster.pg_start();
    let (reply, _) = login_time(&server, "alice", ALICE_PASSWORD).await;
    assert!(reply.starts_with("+OK"), "after restart: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_database_times_out_with_sys_temp() {
    // A "database" that accepts connections and never answers: the bounded timeout must end it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || listener.incoming().take(4).flatten().collect::<Vec<_>>());
    let extra = format!(
        "auth_failure_delay_ms = {FAILURE_DELAY_MS}\nauth_failure_delay_max_ms = {FAILURE_DELAY_MS}\n[users]\nbackend = \"postgres\"\nurl = \"postgres://apopd@127.0.0.1:{port}/mail\"\ntimeout_ms = 300\n"
    );
    let server = TestServer::start_on(Fixture::new(&extra)).await;
    let (reply, took) = login_time(&server, "alice", ALICE_PASSWORD).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_millis(FAILURE_DELAY_MS), "{took:?}");
    drop(server);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_manage_rows() {
    let Some(bin) = postgres_bin() else { return };
    let cluster = Cluster::start(bin);
    cluster.sql(&documented_schema()).await;
    let fixture = cluster.fixture("");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(fixture.maildir("carol").join(sub)).expect("carol's maildir");
    }
    let config = fixture.config_path.display().to_string();
    let ok = |out: Output, what: &str| {
        assert!(out.status.success(), "{what}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };

    assert_eq!(
        ok(apopd(&["user", "add", "carol", "--apop", "-c", &config], "first\nsesame\n"), "add"),
        "added carol\n"
    );
    let again = apopd(&["user", "add", "carol", "-c", &config], "x\n");
    assert!(!again.status.success() && text(&again.stderr).contains("exists"), "{}", text(&again.stderr));
    assert_eq!(ok(apopd(&["user", "add", "dave", "-c", &config], "pw\n"), "add dave"), "added dave\n");
    assert_eq!(ok(apopd(&["user", "list", "-c", &config], ""), "list"), "carol password,apop\ndave password\n");

    let server = TestServer::start_on(fixture).await;
    let (reply, _) = login_time(&server, "carol", "first").await;
    assert!(reply.starts_with("+OK"), "the password written by user add: {reply}");

    assert_eq!(ok(apopd(&["user", "passwd", "carol", "-c", &config], "second\n"), "passwd"), "updated carol\n");
    assert_eq!(login_time(&server, "carol", "first").await.0, AUTH_FAILED);
    let (reply, _) = login_time(&server, "carol", "second").await;
    assert!(reply.starts_with("+OK"), "after passwd: {reply}");
    let missing = apopd(&["user", "passwd", "erin", "-c", &config], "x\n");
    assert!(!missing.status.success() && text(&missing.stderr).contains("no such user"), "{}", text(&missing.stderr));

    assert!(ok(apopd(&["user", "del", "carol", "-c", &config], ""), "del").starts_with("removed carol"));
    assert_eq!(ok(apopd(&["user", "list", "-c", &config], ""), "list"), "dave password\n");
    assert_eq!(login_time(&server, "carol", "second").await.0, AUTH_FAILED);
    let gone = apopd(&["user", "del", "carol", "-c", &config], "");
    assert!(!gone.status.success() && text(&gone.stderr).contains("no such user"), "{}", text(&gone.stderr));

    // deliver knows a user without a maildir by their row.
    let deliver = |user: &str| {
        let out = apopd(&["deliver", user, "-c", &config], "Subject: hi\n\nhello\n");
        (out.status.code(), text(&out.stderr))
    };
    assert_eq!(deliver("dave").0, Some(0), "{}", deliver("dave").1);
    assert!(server.fixture.maildir("dave").join("new").read_dir().unwrap().next().is_some());
    assert_eq!(deliver("zed").0, Some(67));

    // check-config connects and runs both queries.
    ok(apopd(&["check-config", "-c", &config], ""), "check-config");

    // The database down: the CLI says so and fails, it does not pretend.
    cluster.pg_stop();
    let down = apopd(&["user", "list", "-c", &config], "");
    assert!(!down.status.success() && text(&down.stderr).contains("cannot connect"), "{}", text(&down.stderr));
    assert_eq!(deliver("zed").0, Some(75), "database down: try later");
    let down = apopd(&["check-config", "-c", &config], "");
    assert!(!down.status.success() && text(&down.stderr).contains("unavailable"), "{}", text(&down.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_logs_in_over_verified_tls() {
    let Some(bin) = postgres_bin() else { return };
    let (cluster, ca_pem) = Cluster::start_tls(bin);
    let rows = format!(
        "{}\nINSERT INTO pop3_users (name, password) VALUES ('alice', '{}');",
        documented_schema(),
        argon2(ALICE_PASSWORD)
    );
    cluster.sql(&rows).await;
    let tls = |ca: &str| {
        let fixture = Fixture::new(&format!(
            "auth_failure_delay_ms = {FAILURE_DELAY_MS}\nauth_failure_delay_max_ms = {FAILURE_DELAY_MS}\n[users]\nbackend = \"postgres\"\nca_file = \"db-ca.pem\"\n\
             url = \"postgres://postgres@127.0.0.1:{}/postgres?sslmode=require\"\n",
            cluster.port
        ));
        std::fs::write(fixture.dir.path().join("db-ca.pem"), ca).unwrap();
        fixture
    };

    // pg_hba.conf allows TCP only with TLS: this login proves apopd used it.
    let server = TestServer::start_on(tls(&ca_pem)).await;
    let (reply, _) = login_time(&server, "alice", ALICE_PASSWORD).await;
    if !reply.starts_with("+OK") {
        let why = apopd(&["check-config", "-c", &server.fixture.config_path.display().to_string()], "");
        panic!("over TLS: {reply}\ncheck-config says: {}", text(&why.stderr));
    }
    drop(server);

    // Without sslmode=require the same server refuses us; and a CA that did not sign the
    // database's certificate fails verification: both are [SYS/TEMP], not a wrong password.
    let plain = TestServer::start_on(cluster.fixture("")).await;
    assert!(login_time(&plain, "alice", ALICE_PASSWORD).await.0.starts_with("-ERR [SYS/TEMP]"));
    drop(plain);
    let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap().cert.pem();
    let wrong_ca = TestServer::start_on(tls(&other_ca)).await;
    assert!(login_time(&wrong_ca, "alice", ALICE_PASSWORD).await.0.starts_with("-ERR [SYS/TEMP]"));
}

/// `apopd_users_db_pool{state="open|idle|waiting"}` from the server's `/metrics`.
async fn pool_gauges(server: &TestServer) -> [i64; 3] {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.metrics_addr.expect("metrics_listen")).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    ["open", "idle", "waiting"].map(|state| {
        let series = format!("apopd_users_db_pool{{state=\"{state}\"}} ");
        let line = text.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line[series.len()..].trim().parse().unwrap()
    })
}
