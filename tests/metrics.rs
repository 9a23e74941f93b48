//! `metrics_listen` and `log_format = "json"` on a real `apopd serve` process: `/metrics` is
//! scraped over HTTP before and after a scripted set of sessions, every counter must have
//! moved by exactly what the script did, and the whole output must parse (a strict parser
//! here, and Prometheus' own `promtool check metrics` where Debian's `prometheus` is
//! installed). JSON logs: every log line is one JSON object with the session's fields.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Series name with labels, exactly as printed → value.
type Samples = BTreeMap<String, f64>;

/// One HTTP/1.1 GET over a fresh connection: `(status line, headers, body)`.
fn http_get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to metrics");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the whole reply (the server closes)");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let length = headers
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("Content-Length")
        .parse::<usize>()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// Scrape `/metrics` (Prometheus text format) and parse it strictly.
fn scrape(addr: SocketAddr) -> Samples {
    let (status, headers, body) = http_get(addr, "/metrics", None);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"), "{headers}");
    parse_exposition(&body, false).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

/// A metric or label name.
fn is_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

/// A sample value: a float, `+Inf`, `-Inf` or `NaN`.
fn value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// `{a="x",b="y"}` → `[(a, x), (b, y)]`, unescaping `\\`, `\"` and `\n`.
fn labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let inner = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')).ok_or(format!("bad label set {s:?}"))?;
    let mut out = Vec::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or(format!("bad label in {s:?}"))?;
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().ok_or(format!("unterminated label value in {s:?}"))? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().map(|(_, c)| c) {
                    Some('\\') => value.push('\\'),
                    Some('"') => value.push('"'),
                    Some('n') => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                (_, '\n') => return Err(format!("newline in label value {s:?}")),
                (_, c) => value.push(c),
            }
        };
        out.push((name.to_owned(), value));
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(more) if !more.is_empty() => more,
            Some(_) => return Err(format!("trailing comma in {s:?}")),
            None if rest.is_empty() => rest,
            None => return Err(format!("expected , in {s:?}")),
        };
    }
    let mut names: Vec<&String> = out.iter().map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    if names.len() != out.len() {
        return Err(format!("repeated label name in {s:?}"));
    }
    Ok(out)
}

/// Which sample names a family of `kind` may have.
fn sample_belongs(sample: &str, family: &str, kind: &str) -> bool {
    let suffix = sample.strip_prefix(family);
    matches!(
        (kind, suffix),
        (_, Some(""))
            | ("counter", Some("_total" | "_created"))
            | ("histogram", Some("_bucket" | "_sum" | "_count" | "_created"))
            | ("summary", Some("_sum" | "_count" | "_created"))
    )
}

/// Parse the Prometheus text format (0.0.4), or OpenMetrics 1.0 when `openmetrics` (which
/// must end in `# EOF`). Checks names, label syntax, values, that every sample follows its
/// family's `# TYPE`, that no series repeats, and that histogram buckets are cumulative and
/// end in `+Inf` = `_count`.
fn parse_exposition(text: &str, openmetrics: bool) -> Result<Samples, String> {
    let body = text.strip_suffix('\n').ok_or("the exposition must end in a newline")?;
    let mut lines: Vec<&str> = body.split('\n').collect();
    if openmetrics {
        if lines.pop() != Some("# EOF") {
            return Err("OpenMetrics must end in # EOF".into());
        }
    } else if lines.contains(&"# EOF") {
        return Err("# EOF in the Prometheus text format".into());
    }
    let mut samples = Samples::new();
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in lines {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name, rest) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !is_name(name, true) {
                return Err(format!("bad name in {line:?}"));
            }
            match keyword {
                Some("TYPE") => {
                    let kinds = ["counter", "gauge", "histogram", "summary", "untyped", "unknown", "info", "stateset"];
                    if !kinds.contains(&rest) {
                        return Err(format!("unknown type in {line:?}"));
                    }
                    if families.insert(name.to_owned(), rest.to_owned()).is_some() {
                        return Err(format!("second TYPE for {name}"));
                    }
                    current = Some((name.to_owned(), rest.to_owned()));
                }
                Some("HELP") if !rest.is_empty() => {}
                Some("UNIT") if openmetrics && name.ends_with(&format!("_{rest}")) => {}
                _ => return Err(format!("bad comment line {line:?}")),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(format!("bad line {line:?}"));
        }
        let name_end = line.find(['{', ' ']).ok_or(format!("no value in {line:?}"))?;
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(format!("bad metric name in {line:?}"));
        }
        let (label_set, rest) = if line[name_end..].starts_with('{') {
            let close = line.rfind('}').ok_or(format!("unclosed labels in {line:?}"))?;
            (labels(&line[name_end..=close])?, &line[close + 1..])
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest.strip_prefix(' ').ok_or(format!("no space before the value in {line:?}"))?.split(' ');
        let v = value(fields.next().unwrap_or(""))?;
        if let Some(timestamp) = fields.next() {
            timestamp.parse::<f64>().map_err(|_| format!("bad timestamp in {line:?}"))?;
        }
        if fields.next().is_some() {
            return Err(format!("trailing fields in {line:?}"));
        }
        let (family, kind) = current.as_ref().ok_or(format!("sample before any TYPE: {line:?}"))?;
        if !sample_belongs(name, family, kind) {
            return Err(format!("{name} does not belong to the {kind} {family}"));
        }
        if kind == "histogram" && name.ends_with("_bucket") {
            let le = label_set.iter().find(|(n, _)| n == "le").ok_or(format!("bucket without le: {line:?}"))?;
            let others: Vec<String> =
                label_set.iter().filter(|(n, _)| n != "le").map(|(n, v)| format!("{n}={v}")).collect();
            buckets.entry(format!("{family}{{{}}}", others.join(","))).or_default().push((value(&le.1)?, v));
        }
        let key = line[..line.len() - rest.len()].to_owned();
        if samples.insert(key, v).is_some() {
            return Err(format!("series repeated: {line:?}"));
        }
    }
    for (series, list) in &buckets {
        if !list.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!("buckets of {series} not increasing and cumulative: {list:?}"));
        }
        let (last_le, last_count) = *list.last().unwrap();
        let family = &series[..series.find('{').unwrap()];
        let labels = &series[series.find('{').unwrap()..];
        let count = samples.get(&format!("{family}_count{}", if labels == "{}" { "" } else { labels }));
        if last_le != f64::INFINITY || count != Some(&last_count) {
            return Err(format!("{series}: the +Inf bucket must equal _count ({count:?})"));
        }
    }
    Ok(samples)
}

/// How much each series moved between two scrapes (series that did not move are left out).
fn deltas(before: &Samples, after: &Samples) -> BTreeMap<String, f64> {
    assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>(), "the same series in both");
    after.iter().map(|(k, v)| (k.clone(), v - before[k])).filter(|(_, d)| *d != 0.0).collect()
}

/// Scrape until no session is open (sessions end just after their last reply).
fn settled(addr: SocketAddr) -> Samples {
    for _ in 0..500 {
        let samples = scrape(addr);
        if samples.iter().filter(|(k, _)| k.starts_with("apopd_sessions{")).all(|(_, v)| *v == 0.0) {
            return samples;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("sessions still open after 5 s");
}

/// The octets a multi-line reply took on the wire: status line and body as read by
/// [`Client::body`] (unstuffed), plus the stuffed dots and the terminator.
fn wire_octets(status: &str, body: &[u8]) -> u64 {
    let stuffed = body.split(|&b| b == b'\n').filter(|line| line.starts_with(b".")).count();
    (status.len() + 2 + body.len() + stuffed + 3) as u64
}

const CONFIG: &str = "metrics_listen = \"127.0.0.1:0\"\nmax_connections_per_ip = 2\n\
    auth_failure_delay_ms = 10\nauth_failure_delay_max_ms = 20\nmax_auth_failures_per_ip = 3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counter_moves_by_exactly_what_the_sessions_did() {
    let fixture = Fixture::new(&format!("{CONFIG}\n{TLS_CONFIG}"));
    let server = ServerProcess::spawn(&fixture.config_path);
    let metrics = server.metrics_addr.expect("apopd: metrics on … printed");
    let before = tokio::task::spawn_blocking(move || settled(metrics)).await.unwrap();
    let mut expected: BTreeMap<&str, f64> = BTreeMap::new();
    let mut add = |key: &'static str, n: f64| *expected.entry(key).or_default() += n;

    // Two open sessions (one logged in, one not), then a third from the same address: refused.
    // First, while no earlier connection can still hold one of the address's two places.
    let mut held = Client::connect(server.addr).await;
    assert!(held.login("bob", BOB_PASSWORD).await.starts_with("+OK"));
    let idle = Client::connect(server.addr).await;
    let mut refused = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut reply = String::new();
    refused.read_to_string(&mut reply).await.unwrap();
    assert_eq!(reply, "-ERR [SYS/TEMP] too many connections from your address; try again later\r\n");
    let during = tokio::task::spawn_blocking(move || scrape(metrics)).await.unwrap();
    assert_eq!(during["apopd_sessions{state=\"transaction\"}"], 1.0);
    assert_eq!(during["apopd_sessions{state=\"authorization\"}"], 1.0);
    assert_eq!(during["apopd_sessions{state=\"update\"}"], 0.0);
    assert!(held.cmd("QUIT").await.starts_with("+OK"));
    drop(idle);
    add("apopd_logins_total{method=\"user_pass\",result=\"success\"}", 1.0);
    add("apopd_update_duration_seconds_count", 1.0);
    add("apopd_connections_refused_total{reason=\"per_ip\"}", 1.0);

    tokio::task::spawn_blocking(move || settled(metrics)).await.unwrap();

    // Two APOP sessions of alice: the first retrieves every message and peeks at one, the
    // second deletes two; both QUIT (two UPDATEs).
    let mut c = Client::connect(server.addr).await;
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
    let (_, list) = c.multi("LIST").await;
    let mut retr_octets = 0;
    for entry in &list {
        let (n, size) = entry.split_once(' ').unwrap();
        let status = c.cmd(&format!("RETR {n}")).await;
        let body = c.body().await;
        assert_eq!(body.len().to_string(), size, "RETR {n} sends the LIST size");
        retr_octets += wire_octets(&status, &body);
    }
    let status = c.cmd("TOP 1 0").await;
    let top_octets = wire_octets(&status, &c.body().await);
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let mut c = Client::connect(server.addr).await;
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
    assert!(c.cmd("DELE 1").await.starts_with("+OK"));
    assert!(c.cmd("DELE 3").await.starts_with("+OK"));
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (2 messages deleted)");
    add("apopd_logins_total{method=\"apop\",result=\"success\"}", 2.0);
    add("apopd_messages_retrieved_total{command=\"retr\"}", list.len() as f64);
    add("apopd_retrieved_bytes_total{command=\"retr\"}", retr_octets as f64);
    add("apopd_messages_retrieved_total{command=\"top\"}", 1.0);
    add("apopd_retrieved_bytes_total{command=\"top\"}", top_octets as f64);
    add("apopd_messages_deleted_total", 2.0);
    // alice's first message is stored in wire form (CRLF, no dot lines): RETR sent it with
    // sendfile; the others need rewriting.
    let first_size: f64 = list[0].split_once(' ').unwrap().1.parse().unwrap();
    add("apopd_retr_zero_copy_bytes_total", first_size);
    add("apopd_update_duration_seconds_count", 2.0);

    // STLS, then AUTH PLAIN as bob; and POP3S with USER/PASS as bob.
    let mut c = Client::connect(server.addr).await.starttls().await;
    let plain = B64.encode(format!("\0bob\0{BOB_PASSWORD}"));
    assert!(c.cmd(&format!("AUTH PLAIN {plain}")).await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    let tcp = tokio::net::TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    let mut c = Client::start(tls_handshake(tcp).await).await;
    assert!(c.login("bob", BOB_PASSWORD).await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    add("apopd_tls_handshakes_total{kind=\"stls\",result=\"success\"}", 1.0);
    add("apopd_tls_handshakes_total{kind=\"implicit\",result=\"success\"}", 1.0);
    add("apopd_logins_total{method=\"plain\",result=\"success\"}", 1.0);
    add("apopd_logins_total{method=\"user_pass\",result=\"success\"}", 1.0);
    add("apopd_update_duration_seconds_count", 2.0);

    // A client that speaks plain text to the POP3S port: a failed handshake.
    let mut raw = tokio::net::TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    raw.write_all(b"USER bob\r\n").await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut rest)).await;
    add("apopd_tls_handshakes_total{kind=\"implicit\",result=\"failure\"}", 1.0);

    // Three wrong passwords (each delayed), then a fourth attempt refused by the throttle.
    let mut c = Client::connect(server.addr).await;
    for _ in 0..3 {
        assert_eq!(c.login("bob", "wrong").await, "-ERR [AUTH] invalid user name or password");
    }
    assert!(c.login("bob", BOB_PASSWORD).await.starts_with("-ERR [LOGIN-DELAY]"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    add("apopd_logins_total{method=\"user_pass\",result=\"failure\"}", 3.0);
    add("apopd_throttle_delay_seconds_count", 3.0);
    add("apopd_throttle_delay_seconds_bucket{le=\"+Inf\"}", 3.0);
    add("apopd_throttle_refusals_total", 1.0);

    // Connections: 2 APOP + STLS + 3 (held, idle, failures) plain; POP3S and the bad handshake.
    add("apopd_connections_accepted_total{listener=\"plain\"}", 6.0);
    add("apopd_connections_accepted_total{listener=\"tls\"}", 2.0);
    let logins = 2.0 + 1.0 + 1.0 + 1.0 + 3.0;
    // bob's passwords: the first USER/PASS verified in full, then AUTH PLAIN and POP3S USER/PASS
    // from the auth cache; the three wrong ones are misses (APOP never looks).
    add("apopd_auth_cache_lookups_total{result=\"miss\"}", 1.0 + 3.0);
    add("apopd_auth_cache_lookups_total{result=\"hit\"}", 2.0);
    add("apopd_login_duration_seconds_count", logins);

    let after = tokio::task::spawn_blocking(move || settled(metrics)).await.unwrap();
    let mut moved = deltas(&before, &after);
    // Sums and the finite buckets of the histograms depend on timing: checked for
    // plausibility only; the +Inf bucket and the count are exact.
    let throttle_sum = moved.remove("apopd_throttle_delay_seconds_sum").unwrap_or(0.0);
    assert!((0.05 - 1e-9..0.051).contains(&throttle_sum), "delays 10+20+20 ms: {throttle_sum}");
    let timing = |k: &str| {
        (k.ends_with("_sum") || (k.contains("_bucket{") && !k.contains("+Inf")))
            && (k.contains("duration_seconds") || k.contains("throttle_delay"))
    };
    moved.retain(|k, _| !timing(k));
    add("apopd_login_duration_seconds_bucket{le=\"+Inf\"}", logins);
    add("apopd_update_duration_seconds_bucket{le=\"+Inf\"}", 5.0);
    let expected: BTreeMap<String, f64> = expected.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    assert_eq!(moved, expected, "every counter moved by exactly what the script did");
}

#[test]
fn the_endpoint_answers_only_get_metrics_and_speaks_openmetrics_on_request() {
    let fixture = Fixture::new(CONFIG);
    let server = ServerProcess::spawn(&fixture.config_path);
    let metrics = server.metrics_addr.unwrap();
    let (status, _, _) = http_get(metrics, "/", None);
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, headers, body) = http_get(metrics, "/metrics?x=1", Some("application/openmetrics-text;version=1.0.0"));
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"), "{headers}");
    let samples = parse_exposition(&body, true).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert_eq!(samples["apopd_connections_refused_total{reason=\"max_connections\"}"], 0.0);
    // A request head that never ends is cut off at 8 KiB.
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(format!("GET /metrics HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000)).as_bytes());
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
    // And no user name or address ever becomes a label.
    assert!(!body.contains("alice") && !body.contains("127.0.0.1"), "{body}");
}

#[test]
fn promtool_accepts_the_output() {
    if !have_program("promtool", "prometheus") {
        return;
    }
    let fixture = Fixture::new(CONFIG);
    let server = ServerProcess::spawn(&fixture.config_path);
    let (_, _, body) = http_get(server.metrics_addr.unwrap(), "/metrics", None);
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{body}");
}

#[test]
fn the_strict_parser_rejects_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 3\n";
    assert_eq!(parse_exposition(good, false).unwrap()["a_total{x=\"1\\\"\"}"], 3.0);
    for bad in [
        "a_total 3\n",                                                                    // no TYPE
        "# TYPE a counter\nb_total 1\n",                                                  // another family
        "# TYPE a counter\na_total{x=\"1} 3\n",                                           // unterminated label
        "# TYPE a counter\na_total 3 4 5\n",                                              // trailing field
        "# TYPE a counter\na_total 3\na_total 3\n",                                       // repeated series
        "# TYPE a counter\na_total three\n",                                              // bad value
        "# TYPE a counter\na_total 3",                                                    // no final newline
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // not cumulative
    ] {
        assert!(parse_exposition(bad, false).is_err(), "accepted {bad:?}");
    }
    assert!(parse_exposition("# TYPE a counter\na_total 3\n", true).is_err(), "OpenMetrics without # EOF");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_session_fields() {
    let fixture = Fixture::new("log_format = \"json\"");
    let server = ServerProcess::spawn_logging(&fixture.config_path, "info");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = Client::connect(server.addr).await;
        assert!(c.login("bob", "not-Bobs-password").await.starts_with("-ERR"));
        assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
    });
    server.wait_for_log("session closed", 1);
    let mut events = Vec::new();
    for line in server.log_lines() {
        // The start-up banner (`apopd: POP3 on …`, `apopd: ready`) is the CLI's, not the log's.
        if line.starts_with("apopd: ") {
            continue;
        }
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(event.is_object() && event["level"].is_string() && event["timestamp"].is_string(), "{line}");
        assert!(!line.contains("not-Bobs-password") && !line.contains(BOB_PASSWORD), "a password in the log: {line}");
        events.push(event);
    }
    let find = |message: &str| {
        events.iter().find(|e| e["message"] == message).unwrap_or_else(|| panic!("no {message:?} in {events:?}"))
    };
    let failed = find("authentication failed");
    assert_eq!(failed["peer"], "127.0.0.1");
    assert_eq!(failed["method"], "USER/PASS");
    assert_eq!(failed["span"]["name"], "session");
    let logged_in = find("logged in");
    assert_eq!(logged_in["method"], "APOP");
    assert_eq!(logged_in["count"], 5);
    let span = &logged_in["span"];
    assert!(span["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{span}");
    assert_eq!(span["tls"], false);
    assert_eq!(span["user"], "\"alice\"", "the user name is recorded escaped (Debug), as in the text format");
}

/// deploy/fail2ban/filter.d/apopd-json.conf, checked with fail2ban-regex on a real JSON log
/// (raw and behind a journal-style prefix): one match per failed login, all for 127.0.0.1;
/// a user name forging the fields does not ban 10.9.8.7.
#[test]
fn the_json_fail2ban_filter_matches_every_failure_and_only_the_real_address() {
    if !have_program("fail2ban-regex", "fail2ban") {
        return;
    }
    let fixture = Fixture::new("log_format = \"json\"");
    let server = ServerProcess::spawn(&fixture.config_path);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut c = Client::connect(server.addr).await;
        assert!(c.login("alice", "wrong").await.starts_with("-ERR [AUTH]"));
        assert!(c.apop("bob", "wrong").await.starts_with("-ERR [AUTH]"));
        let forged =
            B64.encode("\0x\",\"level\":\"WARN\",\"message\":\"authentication failed\",\"peer\":\"10.9.8.7\",\0pw");
        assert!(c.cmd(&format!("AUTH PLAIN {forged}")).await.starts_with("-ERR [AUTH]"));
        assert!(c.login("alice", ALICE_PASSWORD).await.starts_with("+OK"));
    });
    server.wait_for_log("authentication failed", 3);
    let lines: Vec<String> = server.log_lines().into_iter().filter(|l| l.starts_with('{')).collect();
    let ips = fail2ban_matches(fixture.dir.path(), "apopd-json.conf", &lines);
    assert_eq!(ips, vec!["127.0.0.1"; 6], "one match per failed login in each log form:\n{}", lines.join("\n"));
}
