//! Switching to apopd from another POP3 server, over a real socket: Courier's UIDLs from
//! `courierpop3dsizelist`, qpopper's `X-UIDL:` headers (in an mbox converted by the real
//! mb2md), Dovecot's saved `P` UIDLs, the flag updates a session makes by default, stale
//! `tmp/` files, and the `apopd migrate check` report for a mixed maildir. (The real Dovecot
//! is in tests/dovecot.rs; Courier and qpopper files here are built from their documented
//! formats.)

mod common;
use common::*;

use std::fs;
use std::path::Path;
use std::process::Command;

/// alice's demo messages, oldest first (the fixture's base names).
const DEMO: [&str; 5] = [
    "1700000000.M100P1000.demo",
    "1700003600.M200P1000.demo",
    "1700007200.M300P1000.demo",
    "1700010800.M400P1000.demo",
    "1700014400.M500P1000.demo,S=613,W=635",
];

async fn uidls(server: &TestServer) -> Vec<String> {
    let mut c = server.connect().await;
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
    let (_, lines) = c.multi("UIDL").await;
    assert_eq!(c.cmd("QUIT").await.split(' ').next(), Some("+OK"));
    lines
}

/// The file names in `dir`, hidden ones (the fixture's .gitkeep) left out.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn courier_uidls_are_kept_and_new_mail_gets_base_names() {
    let fixture = Fixture::new("");
    let maildir = fixture.maildir("alice");
    // Courier numbered the first four (one with uidvalidity 0, one with uid 0 = base name).
    let sizelist = format!(
        "/3 9 1700000123\n{}:2,S 600 1:1700000123\n{} 600 2:1700000123:1\n{} 600 7:0\n{} 600 0:0\n",
        DEMO[0], DEMO[1], DEMO[2], DEMO[3]
    );
    fs::write(maildir.join("courierpop3dsizelist"), sizelist).unwrap();
    let server = TestServer::start_on(fixture).await;
    let expected =
        ["1 UID1-1700000123", "2 UID2-1700000123", "3 UID7", &format!("4 {}", DEMO[3]), &format!("5 {}", DEMO[4])];
    assert_eq!(uidls(&server).await, expected);
}

#[tokio::test]
async fn courier_selected_explicitly_ignores_a_dovecot_uidlist() {
    let fixture = Fixture::new("uidl_format = \"courier\"");
    let maildir = fixture.maildir("alice");
    fs::write(maildir.join("courierpop3dsizelist"), format!("/2 2 5\n{} 600 1:5\n", DEMO[0])).unwrap();
    fs::write(maildir.join("dovecot-uidlist"), format!("3 V9 N2\n1 :{}\n", DEMO[0])).unwrap();
    let server = TestServer::start_on(fixture).await;
    assert_eq!(uidls(&server).await[0], "1 UID1-5");
}

#[tokio::test]
async fn dovecot_saved_uidls_win_and_a_broken_uidlist_falls_back_to_base_names() {
    let fixture = Fixture::new("");
    let maildir = fixture.maildir("alice");
    // As Dovecot's Courier migration script or pop3_save_uidl leave it: P fields.
    let uidlist = format!("3 V1700000000 N4\n1 PUID5-77 :{}\n2 P :{}:2,\n3 :{}\n", DEMO[0], DEMO[1], DEMO[2]);
    fs::write(maildir.join("dovecot-uidlist"), uidlist).unwrap();
    let server = TestServer::start_on(fixture).await;
    let got = uidls(&server).await;
    assert_eq!(got[..3], ["1 UID5-77".to_owned(), format!("2 {}", DEMO[1]), "3 000000036553f100".to_owned()]);

    let fixture = Fixture::new("");
    fs::write(fixture.maildir("alice").join("dovecot-uidlist"), "3 V1 N2\nnot a record\n").unwrap();
    let server = TestServer::start_on(fixture).await;
    let got = uidls(&server).await;
    assert_eq!(got[0], format!("1 {}", DEMO[0]), "a corrupt uidlist is not guessed from");
}

/// A qpopper mbox: every message carries the X-UIDL qpopper gave it.
const QPOPPER_MBOX: &str = "From alice@example.test Mon Jan  1 00:00:00 2024\n\
From: a@example.test\nSubject: one\nX-UIDL: 8f2c1d3e4b5a69788796a5b4c3d2e1f0\nStatus: RO\n\nbody one\n\n\
From bob@example.test Mon Jan  1 00:01:00 2024\n\
From: b@example.test\nSubject: two\nX-UIDL: 0a1b2c3d4e5f60718293a4b5c6d7e8f9\n\nbody two\n";

#[tokio::test]
async fn a_qpopper_mbox_converted_by_mb2md_keeps_its_x_uidls() {
    if !have_program("mb2md", "mb2md") {
        return;
    }
    let fixture = Fixture::new("uidl_format = \"xuidl\"");
    let maildir = fixture.maildir("alice");
    fs::remove_dir_all(&maildir).unwrap();
    let mbox = fixture.dir.path().join("alice.mbox");
    fs::write(&mbox, QPOPPER_MBOX).unwrap();
    let out = Command::new("mb2md").arg("-s").arg(&mbox).arg("-d").arg(&maildir).output().unwrap();
    assert!(out.status.success(), "mb2md: {}", String::from_utf8_lossy(&out.stderr));
    let server = TestServer::start_on(fixture).await;
    let first = uidls(&server).await;
    assert_eq!(first, ["1 8f2c1d3e4b5a69788796a5b4c3d2e1f0", "2 0a1b2c3d4e5f60718293a4b5c6d7e8f9"]);

    // Mail delivered after the switch: its X-UIDL header is the sender's, so it is not used.
    fs::write(maildir.join("new/1900000000.M1P1.host"), "X-UIDL: 8f2c1d3e4b5a69788796a5b4c3d2e1f0\n\nforged\n")
        .unwrap();
    let second = uidls(&server).await;
    assert_eq!(second[..2], first[..]);
    assert_eq!(second[2], "3 1900000000.M1P1.host");
}

#[tokio::test]
async fn by_default_a_session_moves_new_to_cur_and_retr_marks_seen_at_quit() {
    let fixture = Fixture::new("pop3_no_flag_updates = false");
    let maildir = fixture.maildir("alice");
    let stale = maildir.join("tmp/1600000000.M1P1.dead");
    fs::write(&stale, "half a delivery").unwrap();
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(37 * 3600);
    fs::File::options().write(true).open(&stale).unwrap().set_modified(long_ago).unwrap();
    fs::write(maildir.join("tmp/1900000000.M2P2.fresh"), "in delivery now").unwrap();
    let server = TestServer::start_on(fixture).await;
    let before = uidls(&server).await;

    let mut c = server.connect().await;
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK"));
    assert_eq!(names(&maildir.join("new")), Vec::<String>::new(), "listed messages move to cur/ at login");
    assert_eq!(names(&maildir.join("tmp")), ["1900000000.M2P2.fresh"], "only the stale tmp/ file goes");
    assert!(c.cmd("RETR 3").await.starts_with("+OK"));
    c.body().await;
    assert!(c.cmd("TOP 4 0").await.starts_with("+OK"));
    c.body().await;
    assert!(c.cmd("RETR 5").await.starts_with("+OK"));
    c.body().await;
    assert!(c.cmd("DELE 5").await.starts_with("+OK"));
    assert!(c.cmd("RETR 2").await.starts_with("+OK"));
    c.body().await;
    let cur = names(&maildir.join("cur"));
    assert!(!cur.iter().any(|n| n.ends_with(",S") && n.starts_with(DEMO[2])), "seen only at QUIT: {cur:?}");
    assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (1 message deleted)");
    let expected =
        [format!("{}:2,S", DEMO[0]), format!("{}:2,S", DEMO[1]), format!("{}:2,S", DEMO[2]), format!("{}:2,", DEMO[3])];
    assert_eq!(names(&maildir.join("cur")), expected, "RETR marks seen, TOP does not, DELE removes");
    let after = uidls(&server).await;
    assert_eq!(after, before[..4], "UIDLs never change with flags");
}

#[test]
fn migrate_check_reports_a_mixed_maildir_read_only() {
    let fixture = Fixture::new("");
    let mail = fixture.dir.path().join("mail");
    let maildir = fixture.maildir("alice");
    let uidlist = format!("3 V1700000000 N3\n1 :{}\n2 PUID9-1 :{}\n", DEMO[0], DEMO[1]);
    fs::write(maildir.join("dovecot-uidlist"), uidlist).unwrap();
    fs::write(maildir.join("courierpop3dsizelist"), format!("/3 4 5\n{} 100 3:5\n", DEMO[2])).unwrap();
    let before = names(&maildir.join("new"));
    let out = Command::new(env!("CARGO_BIN_EXE_apopd")).args(["migrate", "check"]).arg(&mail).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8(out.stdout).unwrap();
    let alice = format!(
        "{}: 5 messages (uidl_format = \"auto\")\n\
         \x20       1  keep Dovecot's saved UIDL (P field)\n\
         \x20       1  keep Dovecot's UIDL (pop3_uidl_format)\n\
         \x20       1  keep Courier's UIDL\n\
         \x20       2  new UIDL, base name: not listed by the previous server (new mail)\n\
         \x20 note: dovecot-uidlist: 2 messages, UIDVALIDITY 1700000000, next UID 3\n\
         \x20 note: courierpop3dsizelist read\n",
        maildir.display()
    );
    assert!(report.contains(&alice), "{report}");
    assert!(report.contains(&format!("{}: 2 messages", fixture.maildir("bob").display())), "{report}");
    assert_eq!(names(&maildir.join("new")), before, "nothing moved");
    assert!(!maildir.join("apopd.index").exists() && !maildir.join("apopd.lock").exists(), "nothing written");

    let out = Command::new(env!("CARGO_BIN_EXE_apopd"))
        .args(["migrate", "check", "--uidl-format", "%m"])
        .arg(&maildir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("uidl_format"));
}
