//! Real POP3 clients — curl, python3's poplib, mpop and fetchmail — fetch the demo mailboxes
//! from a real `apopd serve` child process on an ephemeral port, and what they got is compared
//! byte for byte with the maildir files.
//!
//! Clients store line endings differently: curl and poplib hand over the CRLF lines POP3 sends,
//! mpop and fetchmail write LF. The CRLF clients are compared with `crlf(file)` exactly; the LF
//! clients with `expected_lf(file)`: CRLF turned into LF on both sides and nothing else changed.
//! A missing client program makes its test print `skipped: … not installed — apt-get install …`
//! and pass; under `APOPD_REQUIRE_EXTERNAL=1` (set by .ci/run, which installs them all) it is a
//! FAILURE, so CI never skips one.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Every external command runs under `timeout` with this limit (seconds).
const TIMEOUT_SECS: &str = "60";

/// `timeout 60 program`, with HOME pointing at a private directory and stdin closed.
fn bounded(program: &str, home: &Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "5", TIMEOUT_SECS, program])
        .env("HOME", home)
        .env("FETCHMAILHOME", home)
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run to completion; panics when the command timed out.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert_ne!(
        out.status.code(),
        Some(124),
        "timed out after {TIMEOUT_SECS} s: {cmd:?}\nstdout: {}\nstderr: {}",
        show(&out.stdout),
        show(&out.stderr)
    );
    out
}

/// Run and insist on exit status 0.
fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        show(&out.stdout),
        show(&out.stderr)
    );
    out
}

/// Write a client's config file with mode 0600 (mpop and fetchmail refuse anything wider).
fn write_private(path: &Path, text: &str) {
    fs::write(path, text).expect("write file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// CRLF → LF; every other byte unchanged.
fn to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            continue;
        }
        out.push(b);
    }
    out
}

/// What a client storing LF line endings must have written for this maildir file: the file with
/// CRLF turned into LF, plus — explicitly — a final LF where the file has no final line break,
/// because POP3 always ends a message with CRLF before the terminating "." (bob's second demo
/// message is such a file).
fn expected_lf(file: &[u8]) -> Vec<u8> {
    let mut out = to_lf(file);
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out
}

/// The message files of `user`, in the server's numbering order, as bytes.
fn files_of(fixture: &Fixture, user: &str) -> Vec<Vec<u8>> {
    fixture.message_files(user).iter().map(|p| fs::read(p).expect("read message file")).collect()
}

/// The Message-ID header value (every demo message has a distinct one).
fn message_id(message: &[u8]) -> String {
    for line in message.split(|&b| b == b'\n') {
        if line.is_empty() || line == b"\r" {
            break; // end of the header
        }
        let text = String::from_utf8_lossy(line);
        if text.to_ascii_lowercase().starts_with("message-id:") {
            return text["message-id:".len()..].trim().to_owned();
        }
    }
    panic!("no Message-ID header in {:?}", show(message));
}

/// `got` (what a client stored, in any order) must be exactly `expected`, message by message.
fn assert_same_messages(what: &str, got: &[Vec<u8>], expected: &[Vec<u8>]) {
    let by_id = |messages: &[Vec<u8>]| -> BTreeMap<String, Vec<u8>> {
        messages.iter().map(|m| (message_id(m), m.clone())).collect()
    };
    let (got_map, expected_map) = (by_id(got), by_id(expected));
    assert_eq!(got.len(), expected.len(), "{what}: number of messages");
    assert_eq!(got_map.keys().collect::<Vec<_>>(), expected_map.keys().collect::<Vec<_>>(), "{what}: Message-IDs");
    for (id, want) in &expected_map {
        let have = &got_map[id];
        assert!(
            have == want,
            "{what}: message {id} differs\n--- expected:\n{:?}\n--- got:\n{:?}",
            show(want),
            show(have)
        );
    }
}

/// Every file (not hidden) in `dir`, as bytes.
fn read_all_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    paths.sort();
    paths.iter().map(|p| fs::read(p).expect("read file")).collect()
}

/// The server's own LIST and UIDL lines for `user`, over the raw test client.
fn server_listing(addr: SocketAddr, user: &str, password: &str) -> (Vec<String>, Vec<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut c = Client::connect(addr).await;
        let reply = c.login(user, password).await;
        assert!(reply.starts_with("+OK"), "login {user}: {reply}");
        let (_, list) = c.multi("LIST").await;
        let (_, uidl) = c.multi("UIDL").await;
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
        (list, uidl)
    })
}

/// The UIDL apopd derives from a maildir file name: the part before ":2,".
fn base_name(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    name.split(':').next().unwrap().to_owned()
}

/// Lines of a client's text output, CR and empty lines dropped.
fn text_lines(bytes: &[u8]) -> Vec<String> {
    show(bytes).lines().map(|l| l.trim_end_matches('\r').to_owned()).filter(|l| !l.is_empty()).collect()
}

#[test]
fn demo_exercises_the_tricky_cases() {
    // The comparisons below only prove something if the demo has these cases.
    let fixture = Fixture::new("");
    let alice = files_of(&fixture, "alice");
    let bob = files_of(&fixture, "bob");
    assert_eq!((alice.len(), bob.len()), (5, 2));
    let lines = |m: &Vec<u8>| m.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect::<Vec<_>>();
    assert!(alice.iter().flat_map(lines).any(|l| l == b"."), "a lone dot line");
    assert!(alice.iter().flat_map(lines).any(|l| l.starts_with(b"..")), "a line starting with two dots");
    assert!(alice.iter().any(|m| !m.contains(&b'\r')), "an LF-only message");
    assert!(alice.iter().any(|m| m.windows(2).any(|w| w == b"\r\n")), "a CRLF message");
    assert!(alice.iter().any(|m| m.iter().any(|&b| b >= 0x80) && std::str::from_utf8(m).is_ok()), "8-bit UTF-8");
    assert!(bob.iter().any(|m| !m.ends_with(b"\n")), "a message without a final newline");
}

// ---------------------------------------------------------------------------------------------
// curl

fn curl(home: &Path, url: &str, credentials: &str, extra: &[&str]) -> Output {
    let mut cmd = bounded("curl", home);
    cmd.args(["-s", "-S", "--max-time", "50", "-u", credentials]).args(extra).arg(url);
    run(&mut cmd)
}

#[test]
fn curl_apop_retrieves_every_message_exactly() {
    if !have_program("curl", "curl") {
        return;
    }
    let fixture = Fixture::new("");
    // curl logs in with APOP whenever the greeting carries a timestamp (see the USER/PASS test
    // below), so bob gets an APOP secret equal to his password to let curl fetch his mailbox too.
    let mut secrets = fs::OpenOptions::new().append(true).open(fixture.dir.path().join("apop-secrets")).unwrap();
    secrets.write_all(b"bob:builder\n").unwrap();
    drop(secrets);
    let server = ServerProcess::spawn(&fixture.config_path);
    let home = tempfile::tempdir().unwrap();

    for (user, secret) in [("alice", ALICE_APOP_SECRET), ("bob", BOB_PASSWORD)] {
        for (i, file) in files_of(&fixture, user).iter().enumerate() {
            let url = format!("pop3://{}/{}", server.addr, i + 1);
            let out = curl(home.path(), &url, &format!("{user}:{secret}"), &["--login-options", "AUTH=+APOP"]);
            assert!(out.status.success(), "curl RETR {} for {user}: {}\n{}", i + 1, out.status, show(&out.stderr));
            assert!(
                out.stdout == crlf(file),
                "curl RETR {} for {user}\n--- expected:\n{:?}\n--- got:\n{:?}",
                i + 1,
                show(&crlf(file)),
                show(&out.stdout)
            );
            assert_eq!(to_lf(&out.stdout), expected_lf(file));
        }
    }

    // The message without a final newline arrives with exactly one CRLF added.
    let bob_last = files_of(&fixture, "bob").pop().unwrap();
    assert!(!bob_last.ends_with(b"\n"));
    let out = curl(home.path(), &format!("pop3://{}/2", server.addr), "bob:builder", &[]);
    assert!(out.status.success(), "{}", show(&out.stderr));
    assert!(out.stdout.ends_with(b"adds the final CRLF.\r\n"), "{:?}", show(&out.stdout));
    assert_eq!(out.stdout.len(), bob_last.len() + bob_last.iter().filter(|&&b| b == b'\n').count() + 2);

    // Without login options curl picks SASL PLAIN (offered in CAPA) with the password.
    let out = curl(home.path(), &format!("pop3://{}/4", server.addr), &format!("alice:{ALICE_PASSWORD}"), &[]);
    assert!(out.status.success(), "{}", show(&out.stderr));
    assert_eq!(out.stdout, crlf(&files_of(&fixture, "alice")[3]), "the UTF-8 message");
    let out = curl(
        home.path(),
        &format!("pop3://{}/1", server.addr),
        "alice:wrong-secret",
        &["--login-options", "AUTH=+APOP"],
    );
    assert_eq!(out.status.code(), Some(67), "curl: login denied; stderr: {}", show(&out.stderr));
    assert!(out.stdout.is_empty());
}

#[test]
fn curl_listing_and_uidl_match_the_server() {
    if !have_program("curl", "curl") {
        return;
    }
    let fixture = Fixture::new("");
    let server = ServerProcess::spawn(&fixture.config_path);
    let home = tempfile::tempdir().unwrap();
    let (server_list, server_uidl) = server_listing(server.addr, "alice", ALICE_PASSWORD);
    let url = format!("pop3://{}/", server.addr);
    let credentials = format!("alice:{ALICE_PASSWORD}");

    let out = curl(home.path(), &url, &credentials, &["-X", "UIDL"]);
    assert!(out.status.success(), "{}", show(&out.stderr));
    let uidl = text_lines(&out.stdout);
    assert_eq!(uidl, server_uidl);
    let expected: Vec<String> =
        fixture.message_files("alice").iter().enumerate().map(|(i, p)| format!("{} {}", i + 1, base_name(p))).collect();
    assert_eq!(uidl, expected, "UIDLs are the maildir base names");

    let out = curl(home.path(), &url, &credentials, &[]);
    assert!(out.status.success(), "{}", show(&out.stderr));
    let list = text_lines(&out.stdout);
    assert_eq!(list, server_list);
    let sizes: Vec<String> =
        files_of(&fixture, "alice").iter().enumerate().map(|(i, f)| format!("{} {}", i + 1, crlf(f).len())).collect();
    assert_eq!(list, sizes, "LIST sizes are the CRLF sizes");

    // A second session sees the same UIDLs.
    let again = curl(home.path(), &url, &credentials, &["-X", "UIDL"]);
    assert_eq!(text_lines(&again.stdout), uidl);
}

/// Without APOP configured the greeting has no timestamp, so curl cannot pick APOP; and with
/// no SASL offered it must fall back to USER/PASS.
#[test]
fn curl_user_pass_when_apop_is_not_configured() {
    if !have_program("curl", "curl") {
        return;
    }
    let fixture = Fixture::new("");
    // A config without apop_secrets_file: APOP cannot succeed for anyone, only USER/PASS can.
    fs::write(
        &fixture.config_path,
        "listen = [\"127.0.0.1:0\"]\nmail_root = \"mail/{user}\"\nusers_file = \"users\"\nauth_failure_delay_ms = 0\n\
         sasl_mechanisms = []\n",
    )
    .unwrap();
    let server = ServerProcess::spawn(&fixture.config_path);
    let home = tempfile::tempdir().unwrap();
    for (i, file) in files_of(&fixture, "bob").iter().enumerate() {
        let url = format!("pop3://{}/{}", server.addr, i + 1);
        let out = curl(home.path(), &url, &format!("bob:{BOB_PASSWORD}"), &[]);
        assert!(out.status.success(), "curl USER/PASS as bob: {}\n{}", out.status, show(&out.stderr));
        assert_eq!(out.stdout, crlf(file));
    }
}

// ---------------------------------------------------------------------------------------------
// python3 poplib

const POPLIB_SCRIPT: &str = r#"
import os, poplib, sys
host, port, user, secret, mode, out = sys.argv[1:7]
p = poplib.POP3(host, int(port), timeout=30)
if mode == "apop":
    p.apop(user, secret)
else:
    p.user(user)
    p.pass_(secret)
resp, listing, _ = p.list()
resp, uidl, _ = p.uidl()
with open(os.path.join(out, "uidl"), "wb") as f:
    f.write(b"".join(line + b"\n" for line in uidl))
for entry in listing:
    number, size = entry.split()
    resp, lines, octets = p.retr(int(number))
    # poplib strips CRLF and un-stuffs dots; put the CRLFs back.
    with open(os.path.join(out, number.decode()), "wb") as f:
        f.write(b"".join(line + b"\r\n" for line in lines))
    with open(os.path.join(out, number.decode() + ".size"), "w") as f:
        f.write("%s %d" % (size.decode(), octets))
print(p.quit().decode())
"#;

fn poplib_fetch(addr: SocketAddr, user: &str, secret: &str, mode: &str, fixture: &Fixture) {
    let work = tempfile::tempdir().unwrap();
    let script = work.path().join("fetch.py");
    fs::write(&script, POPLIB_SCRIPT).unwrap();
    let out_dir = work.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let mut cmd = bounded("python3", work.path());
    cmd.arg(&script).args([&addr.ip().to_string(), &addr.port().to_string(), user, secret, mode]).arg(&out_dir);
    let out = run_ok(&mut cmd);
    assert!(show(&out.stdout).starts_with("+OK"), "QUIT: {}", show(&out.stdout));

    let files = files_of(fixture, user);
    for (i, file) in files.iter().enumerate() {
        let got = fs::read(out_dir.join((i + 1).to_string())).expect("poplib wrote the message");
        assert!(
            got == crlf(file),
            "poplib {mode} RETR {} for {user}\n--- expected:\n{:?}\n--- got:\n{:?}",
            i + 1,
            show(&crlf(file)),
            show(&got)
        );
        assert_eq!(to_lf(&got), expected_lf(file));
        // LIST's size and the octets poplib counted while reading agree with the CRLF size.
        let sizes = fs::read_to_string(out_dir.join(format!("{}.size", i + 1))).unwrap();
        let n = crlf(file).len();
        assert_eq!(sizes, format!("{n} {n}"), "LIST size and received octets of message {}", i + 1);
    }
    let uidl = text_lines(&fs::read(out_dir.join("uidl")).unwrap());
    let expected: Vec<String> =
        fixture.message_files(user).iter().enumerate().map(|(i, p)| format!("{} {}", i + 1, base_name(p))).collect();
    assert_eq!(uidl, expected, "poplib UIDL for {user}");
}

#[test]
fn python_poplib_user_pass() {
    if !have_program("python3", "python3") {
        return;
    }
    let fixture = Fixture::new("");
    let server = ServerProcess::spawn(&fixture.config_path);
    poplib_fetch(server.addr, "alice", ALICE_PASSWORD, "user", &fixture);
    poplib_fetch(server.addr, "bob", BOB_PASSWORD, "user", &fixture);
    let (list, _) = server_listing(server.addr, "alice", ALICE_PASSWORD);
    assert_eq!(list.len(), 5, "poplib deleted nothing");
}

#[test]
fn python_poplib_apop() {
    if !have_program("python3", "python3") {
        return;
    }
    let fixture = Fixture::new("");
    let server = ServerProcess::spawn(&fixture.config_path);
    poplib_fetch(server.addr, "alice", ALICE_APOP_SECRET, "apop", &fixture);

    // A wrong secret is an error_proto from poplib, i.e. a non-zero exit.
    let work = tempfile::tempdir().unwrap();
    let mut cmd = bounded("python3", work.path());
    cmd.args([
        "-c",
        "import poplib,sys; p=poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=30); p.apop('alice','nope')",
    ])
    .args([server.addr.ip().to_string(), server.addr.port().to_string()]);
    let out = run(&mut cmd);
    assert!(!out.status.success());
    assert!(show(&out.stderr).contains("-ERR [AUTH]"), "{}", show(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// mpop

/// One mpop account, named after `user`, delivering into `maildir`.
fn mpop_account(
    addr: SocketAddr,
    user: &str,
    auth: &str,
    password: &str,
    maildir: &Path,
    uidls: &Path,
    keep: bool,
) -> String {
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    format!(
        "account {user}\nhost {}\nport {}\nuser {user}\nauth {auth}\npassword {password}\n\
         delivery maildir {}\nuidls_file {}\nkeep {}\n\n",
        addr.ip(),
        addr.port(),
        maildir.display(),
        uidls.display(),
        if keep { "on" } else { "off" }
    )
}

/// `tls off` (no TLS here), no Received header (so the stored bytes are the message), a timeout.
const MPOP_DEFAULTS: &str = "defaults\ntls off\nreceived_header off\ntimeout 30\n\n";

fn run_mpop(home: &Path, rc: &Path) -> Output {
    let mut cmd = bounded("mpop", home);
    cmd.arg("-C").arg(rc).arg("-a");
    run_ok(&mut cmd)
}

/// The UIDs mpop recorded in its uidls file.
fn mpop_uidls(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .expect("mpop wrote its uidls file")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(' '))
        .map(str::to_owned)
        .collect()
}

#[test]
fn mpop_user_auth_keep_on_fetches_everything_once() {
    if !have_program("mpop", "mpop") {
        return;
    }
    let fixture = Fixture::new("");
    let server = ServerProcess::spawn(&fixture.config_path);
    let home = tempfile::tempdir().unwrap();
    let (alice_md, bob_md) = (home.path().join("alice-md"), home.path().join("bob-md"));
    let (alice_uidls, bob_uidls) = (home.path().join("uidls-alice"), home.path().join("uidls-bob"));
    let rc = home.path().join("mpoprc");
    let text = [
        MPOP_DEFAULTS.to_owned(),
        mpop_account(server.addr, "alice", "user", ALICE_PASSWORD, &alice_md, &alice_uidls, true),
        mpop_account(server.addr, "bob", "user", BOB_PASSWORD, &bob_md, &bob_uidls, true),
    ]
    .concat();
    write_private(&rc, &text);

    run_mpop(home.path(), &rc);
    for (user, maildir) in [("alice", &alice_md), ("bob", &bob_md)] {
        let got: Vec<Vec<u8>> = read_all_files(&maildir.join("new")).iter().map(|m| to_lf(m)).collect();
        let expected: Vec<Vec<u8>> = files_of(&fixture, user).iter().map(|f| expected_lf(f)).collect();
        assert_same_messages(&format!("mpop (auth user) for {user}"), &got, &expected);
    }
    let (_, server_uidl) = server_listing(server.addr, "alice", ALICE_PASSWORD);
    let server_uids: Vec<String> = server_uidl.iter().map(|l| l.split_once(' ').unwrap().1.to_owned()).collect();
    let mut recorded = mpop_uidls(&alice_uidls);
    recorded.sort();
    let mut sorted = server_uids.clone();
    sorted.sort();
    assert_eq!(recorded, sorted, "mpop recorded the server's UIDLs");

    // keep on: the server still has everything, and a second run finds nothing new (stable UIDLs).
    assert_eq!(fixture.message_files("alice").len(), 5);
    assert_eq!(fixture.message_files("bob").len(), 2);
    run_mpop(home.path(), &rc);
    assert_eq!(read_all_files(&alice_md.join("new")).len(), 5, "second mpop run fetched alice's mail again");
    assert_eq!(read_all_files(&bob_md.join("new")).len(), 2, "second mpop run fetched bob's mail again");
    assert_eq!(fixture.message_files("alice").len(), 5);
}

#[test]
fn mpop_apop_keep_off_empties_the_server() {
    if !have_program("mpop", "mpop") {
        return;
    }
    let fixture = Fixture::new("");
    let server = ServerProcess::spawn(&fixture.config_path);
    let home = tempfile::tempdir().unwrap();
    let maildir = home.path().join("md");
    let rc = home.path().join("mpoprc");
    let account =
        mpop_account(server.addr, "alice", "apop", ALICE_APOP_SECRET, &maildir, &home.path().join("uidls"), false);
    write_private(&rc, &format!("{MPOP_DEFAULTS}{account}"));
    let expected: Vec<Vec<u8>> = files_of(&fixture, "alice").iter().map(|f| expected_lf(f)).collect();

    run_mpop(home.path(), &rc);
    let got: Vec<Vec<u8>> = read_all_files(&maildir.join("new")).iter().map(|m| to_lf(m)).collect();
    assert_same_messages("mpop (auth apop)", &got, &expected);
    assert!(fixture.message_files("alice").is_empty(), "keep off: the server's maildir must be empty afterwards");
    let (list, _) = server_listing(server.addr, "alice", ALICE_PASSWORD);
    assert!(list.is_empty(), "LIST after mpop deleted everything: {list:?}");
}

// ---------------------------------------------------------------------------------------------
// fetchmail

/// An MDA that stores each message it gets on stdin as a new file in the directory `$1`.
const MDA_SCRIPT: &str = "#!/bin/sh\nexec cat > \"$(mktemp \"$1/msg.XXXXXX\")\"\n";

/// One fetchmail `user` clause delivering through the MDA into `out`.
fn fetchmail_user(user: &str, password: &str, mda: &Path, out: &Path, keep: bool) -> String {
    fs::create_dir_all(out).unwrap();
    format!(
        "  user \"{user}\" there with password \"{password}\"\n    {} fetchall no rewrite sslproto \"\"\n    mda \"{} {}\"\n",
        if keep { "keep" } else { "no keep" },
        mda.display(),
        out.display()
    )
}

fn run_fetchmail(home: &Path, poll: &str, users: &[String]) -> Output {
    let rc = home.join("fetchmailrc");
    // invisible: no Received header, so the MDA gets the message as the server sent it.
    write_private(&rc, &format!("set no bouncemail\nset no syslog\nset invisible\n{poll}\n{}", users.concat()));
    let mut cmd = bounded("fetchmail", home);
    cmd.arg("-f")
        .arg(&rc)
        .args(["-N", "--nosyslog", "-v"])
        .arg("--pidfile")
        .arg(home.join("fetchmail.pid"))
        .arg("--idfile")
        .arg(home.join("fetchids"));
    run_ok(&mut cmd)
}

fn mda(home: &Path) -> std::path::PathBuf {
    let path = home.join("mda.sh");
    fs::write(&path, MDA_SCRIPT).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
    path
}

#[test]
fn fetchmail_user_pass_keep() {
    if !have_program("fetchmail", "fetchmail") {
        return;
    }
    let fixture = Fixture::new("");
    let server = ServerProcess::spawn(&fixture.config_path);
    let home = tempfile::tempdir().unwrap();
    let mda = mda(home.path());
    let (alice_out, bob_out) = (home.path().join("alice"), home.path().join("bob"));
    let poll =
        format!("poll {} service {} protocol POP3 auth password timeout 60", server.addr.ip(), server.addr.port());
    let out = run_fetchmail(
        home.path(),
        &poll,
        &[
            fetchmail_user("alice", ALICE_PASSWORD, &mda, &alice_out, true),
            fetchmail_user("bob", BOB_PASSWORD, &mda, &bob_out, true),
        ],
    );
    let log = show(&out.stderr) + &show(&out.stdout);
    assert!(log.contains("POP3> USER alice") && log.contains("POP3> USER bob"), "fetchmail used USER/PASS:\n{log}");

    for (user, dir) in [("alice", &alice_out), ("bob", &bob_out)] {
        let got: Vec<Vec<u8>> = read_all_files(dir).iter().map(|m| to_lf(m)).collect();
        let expected: Vec<Vec<u8>> = files_of(&fixture, user).iter().map(|f| expected_lf(f)).collect();
        assert_same_messages(&format!("fetchmail (USER/PASS) for {user}"), &got, &expected);
    }
    assert_eq!(fixture.message_files("alice").len(), 5, "keep: nothing deleted");
    assert_eq!(fixture.message_files("bob").len(), 2, "keep: nothing deleted");
}

#[test]
fn fetchmail_apop_without_keep_deletes() {
    if !have_program("fetchmail", "fetchmail") {
        return;
    }
    let fixture = Fixture::new("");
    let server = ServerProcess::spawn(&fixture.config_path);
    let home = tempfile::tempdir().unwrap();
    let mda = mda(home.path());
    let alice_out = home.path().join("alice");
    let expected: Vec<Vec<u8>> = files_of(&fixture, "alice").iter().map(|f| expected_lf(f)).collect();
    let poll = format!("poll {} service {} protocol APOP timeout 60", server.addr.ip(), server.addr.port());
    let out = run_fetchmail(home.path(), &poll, &[fetchmail_user("alice", ALICE_APOP_SECRET, &mda, &alice_out, false)]);
    let log = show(&out.stderr) + &show(&out.stdout);
    assert!(log.contains("POP3> APOP alice "), "fetchmail used APOP:\n{log}");

    let got: Vec<Vec<u8>> = read_all_files(&alice_out).iter().map(|m| to_lf(m)).collect();
    assert_same_messages("fetchmail (APOP)", &got, &expected);
    assert!(fixture.message_files("alice").is_empty(), "no keep: fetchmail deleted every message");
}

// ---------------------------------------------------------------------------------------------
// TLS: openssl s_client, curl pop3s:// and --ssl-reqd, mpop and fetchmail with the demo CA

fn demo_ca() -> std::path::PathBuf {
    Path::new(FIXTURES).join("tls/ca.pem")
}

/// A server child with STLS on its plain port and POP3S on another.
fn tls_server() -> (Fixture, ServerProcess) {
    let fixture = Fixture::new(TLS_CONFIG);
    let server = ServerProcess::spawn(&fixture.config_path);
    assert!(server.tls_addr.is_some());
    (fixture, server)
}

#[test]
fn openssl_s_client_starttls_session() {
    if !have_program("openssl", "openssl") {
        return;
    }
    let (_fixture, server) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let mut cmd = bounded("openssl", home.path());
    cmd.args(["s_client", "-quiet", "-crlf", "-verify_return_error", "-starttls", "pop3", "-connect"])
        .arg(server.addr.to_string())
        .arg("-CAfile")
        .arg(demo_ca())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"CAPA\nUSER alice\nPASS wonderland\nSTAT\nQUIT\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (show(&out.stdout), show(&out.stderr));
    assert!(stdout.contains("\nSASL PLAIN LOGIN\r\n"), "{stdout}");
    assert!(!stdout.contains("\nSTLS\r\n"), "STLS is not offered again after the handshake: {stdout}");
    assert!(stdout.contains("+OK alice's maildrop has 5 messages (3038 octets)"), "{stdout}");
    assert!(stdout.contains("+OK 5 3038"), "{stdout}");
    assert!(stdout.contains("+OK apopd signing off (0 messages deleted)"), "{stdout}");
    // OpenSSL 3 complains about a close without close_notify.
    assert!(!stderr.to_lowercase().contains("unexpected eof"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn curl_pop3s_and_ssl_reqd_retrieve_every_message() {
    if !have_program("curl", "curl") {
        return;
    }
    let (fixture, server) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let ca = demo_ca();
    let ca = ca.to_str().unwrap();
    let tls_port = server.tls_addr.unwrap().port();
    for (i, file) in files_of(&fixture, "alice").iter().enumerate() {
        // The certificate is for "localhost": name it so, or verification fails.
        let pop3s = format!("pop3s://localhost:{tls_port}/{}", i + 1);
        let out = curl(home.path(), &pop3s, &format!("alice:{ALICE_PASSWORD}"), &["--cacert", ca]);
        assert!(out.status.success(), "{}", show(&out.stderr));
        assert_eq!(out.stdout, crlf(file), "pop3s RETR {}", i + 1);
        let stls = format!("pop3://localhost:{}/{}", server.addr.port(), i + 1);
        let out = curl(home.path(), &stls, &format!("alice:{ALICE_PASSWORD}"), &["--ssl-reqd", "--cacert", ca]);
        assert!(out.status.success(), "{}", show(&out.stderr));
        assert_eq!(out.stdout, crlf(file), "STLS RETR {}", i + 1);
    }
    // Without the demo CA, verification fails: the TLS is real.
    let out = curl(home.path(), &format!("pop3s://localhost:{tls_port}/1"), "alice:wonderland", &[]);
    assert!(!out.status.success());
}

#[test]
fn mpop_over_stls_and_pop3s_with_the_demo_ca() {
    if !have_program("mpop", "mpop") {
        return;
    }
    let (fixture, server) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let expected: Vec<Vec<u8>> = files_of(&fixture, "bob").iter().map(|f| expected_lf(f)).collect();
    let ca = demo_ca();
    for (name, addr, starttls) in [("stls", server.addr, "on"), ("pop3s", server.tls_addr.unwrap(), "off")] {
        let maildir = home.path().join(format!("md-{name}"));
        let account =
            mpop_account(addr, "bob", "user", BOB_PASSWORD, &maildir, &home.path().join(format!("uidls-{name}")), true)
                .replace(&format!("host {}", addr.ip()), "host localhost");
        let rc = home.path().join(format!("mpoprc-{name}"));
        let defaults = format!(
            "defaults\ntls on\ntls_starttls {starttls}\ntls_trust_file {}\nreceived_header off\ntimeout 30\n\n",
            ca.display()
        );
        write_private(&rc, &format!("{defaults}{account}"));
        run_mpop(home.path(), &rc);
        let got: Vec<Vec<u8>> = read_all_files(&maildir.join("new")).iter().map(|m| to_lf(m)).collect();
        assert_same_messages(&format!("mpop over {name}"), &got, &expected);
    }
}

#[test]
fn fetchmail_over_pop3s_with_certificate_check() {
    if !have_program("fetchmail", "fetchmail") {
        return;
    }
    let (fixture, server) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let out_dir = home.path().join("out");
    let mda = mda(home.path());
    let poll = format!("poll localhost protocol pop3 port {} auth password", server.tls_addr.unwrap().port());
    let user = fetchmail_user("alice", ALICE_PASSWORD, &mda, &out_dir, true)
        .replace("sslproto \"\"", &format!("ssl sslcertck sslcertfile \"{}\"", demo_ca().display()));
    let out = run_fetchmail(home.path(), &poll, &[user]);
    let log = show(&out.stderr) + &show(&out.stdout);
    assert!(log.contains("SSL") || log.contains("TLS"), "{log}");
    let got: Vec<Vec<u8>> = read_all_files(&out_dir).iter().map(|m| to_lf(m)).collect();
    let expected: Vec<Vec<u8>> = files_of(&fixture, "alice").iter().map(|f| expected_lf(f)).collect();
    assert_same_messages("fetchmail over pop3s", &got, &expected);
}

#[test]
fn only_tls_1_2_and_1_3_are_spoken() {
    if !have_program("openssl", "openssl") {
        return;
    }
    let (_fixture, server) = tls_server();
    let home = tempfile::tempdir().unwrap();
    let handshake = |version: &str| {
        let mut cmd = bounded("openssl", home.path());
        // SECLEVEL=0 so that OpenSSL itself is willing to offer the old version.
        cmd.args(["s_client", version, "-cipher", "DEFAULT@SECLEVEL=0", "-connect"])
            .arg(server.tls_addr.unwrap().to_string())
            .arg("-CAfile")
            .arg(demo_ca());
        let out = run(&mut cmd);
        show(&out.stdout) + &show(&out.stderr)
    };
    assert!(handshake("-tls1_2").contains("New, TLSv1.2, Cipher is"));
    assert!(handshake("-tls1_3").contains("New, TLSv1.3, Cipher is"));
    let old = handshake("-tls1_1");
    assert!(old.contains("New, (NONE), Cipher is (NONE)"), "TLS 1.1 must not be negotiated: {old}");
    assert!(old.contains("alert"), "the server refuses it with an alert: {old}");
}

/// The rule for missing clients, as a bare machine and CI see it: this test binary runs two of
/// its own tests again with a PATH that holds no program at all, once as on a fresh machine
/// (a one-line skip, and a pass) and once under `APOPD_REQUIRE_EXTERNAL=1` (a failure).
#[test]
fn a_missing_client_is_a_skip_on_a_bare_machine_and_a_failure_under_ci() {
    let empty = tempfile::tempdir().unwrap();
    let tests = [("mpop_user_auth_keep_on_fetches_everything_once", "mpop"), ("fetchmail_user_pass_keep", "fetchmail")];
    for (test, tool) in tests {
        let rerun = |require: Option<&str>| {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
                .env("PATH", empty.path())
                .env_remove(REQUIRE_EXTERNAL)
                .stdin(Stdio::null());
            if let Some(value) = require {
                cmd.env(REQUIRE_EXTERNAL, value);
            }
            let out = cmd.output().unwrap();
            (out.status.success(), show(&out.stdout), show(&out.stderr))
        };

        let (passed, stdout, stderr) = rerun(None);
        assert!(passed && stdout.contains("1 passed"), "bare machine: {test} must pass:\n{stdout}\n{stderr}");
        let skip_line = format!("skipped: {tool} not installed — apt-get install {tool}");
        assert_eq!(stderr.matches(&skip_line).count(), 1, "one skip line expected:\n{stderr}");

        let (passed, stdout, stderr) = rerun(Some("1"));
        assert!(!passed && stdout.contains("1 failed"), "under CI: {test} must fail:\n{stdout}\n{stderr}");
        assert!(stderr.contains(&format!("{tool} not installed, and {REQUIRE_EXTERNAL} is set")), "{stderr}");

        let (passed, _, stderr) = rerun(Some("0"));
        assert!(passed && stderr.contains(&skip_line), "APOPD_REQUIRE_EXTERNAL=0 means not required:\n{stderr}");
    }
}
