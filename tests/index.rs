//! The scan index (`apopd.index`) over TCP: an index whose listing was taken within the settle
//! window of a change is never trusted (a change in the same timestamp tick is seen), and the
//! server lists once more in the background when the window has passed, so later logins — and
//! the first after a restart — are served from the index alone.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// Log in as alice, return STAT's message count, QUIT.
async fn count(addr: SocketAddr) -> u64 {
    let mut c = Client::connect(addr).await;
    assert!(c.login("alice", ALICE_PASSWORD).await.starts_with("+OK"));
    let stat = c.cmd("STAT").await;
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    stat.split(' ').nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("STAT: {stat}"))
}

/// Set both directories' mtimes to `times`, whatever changed in them (no maildir writer can do
/// this: it stands for a change within the same timestamp tick, or proves no directory is read).
fn restore(maildir: &Path, times: [SystemTime; 2]) {
    for (sub, time) in ["cur", "new"].into_iter().zip(times) {
        fs::File::open(maildir.join(sub)).unwrap().set_modified(time).unwrap();
    }
}

/// The index's `dirs <cur> <new> <listed-as-of>` line says its listing is settled.
fn index_settled(maildir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(maildir.join("apopd.index")) else { return false };
    let Some(dirs) = text.lines().nth(1).and_then(|l| l.strip_prefix("dirs ")) else { return false };
    let n: Vec<u128> = dirs.split(' ').filter_map(|w| w.parse().ok()).collect();
    n.len() == 3 && n[0].max(n[1]) + 2_000_000_000 <= n[2]
}

fn sneak(maildir: &Path, name: &str) {
    fs::write(maildir.join("cur").join(name), "Subject: sneaked\r\n\r\nin\r\n").unwrap();
}

#[tokio::test]
async fn an_index_listed_too_soon_is_never_trusted_and_is_settled_in_the_background() {
    let fixture = Fixture::new("");
    let maildir = fixture.maildir("alice");
    let server = ServerProcess::spawn(&fixture.config_path);
    // The directories' last change is not 2 s before any listing of this part (stamped a
    // minute ahead, so however slow the machine).
    let soon = SystemTime::now() + Duration::from_secs(60);
    restore(&maildir, [soon; 2]);
    assert_eq!(count(server.addr).await, 5);

    // A message added in the same timestamp tick as that listing is seen: the index is not
    // trusted.
    sneak(&maildir, "1900000001.sneak.host:2,");
    restore(&maildir, [soon; 2]);
    assert_eq!(count(server.addr).await, 6, "an unsettled index must never be trusted");

    // Once the window has passed (here: the last change 3 s ago), the server lists again on
    // its own and writes a settled index.
    let past = SystemTime::now() - Duration::from_secs(3);
    restore(&maildir, [past; 2]);
    let started = Instant::now();
    while !index_settled(&maildir) {
        assert!(started.elapsed() < Duration::from_secs(30), "the server never settled the index");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // From now on the index is the mailbox (proof: a file slipped in with the mtimes put back
    // is not listed), also for the first login after a restart.
    sneak(&maildir, "1900000002.sneak.host:2,");
    restore(&maildir, [past; 2]);
    assert_eq!(count(server.addr).await, 6, "a settled index is served without listing");
    drop(server);
    let server = ServerProcess::spawn(&fixture.config_path);
    assert_eq!(count(server.addr).await, 6, "the first login after a restart reads the index");

    // Any real change moves an mtime and is seen at once.
    fs::rename(maildir.join("cur/1900000002.sneak.host:2,"), maildir.join("cur/1900000002.sneak.host:2,S")).unwrap();
    assert_eq!(count(server.addr).await, 7);
}
