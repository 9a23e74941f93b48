//! `apopd user import`: users imported from a Dovecot passwd-file or /etc/shadow log in over a
//! real socket with their old passwords (hashes made by the real `doveadm pw`, and fixed
//! vectors for a machine without Dovecot), are rehashed to argon2id on their first login, and
//! an import with one bad line writes nothing.

mod common;
use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const APOPD: &str = env!("CARGO_BIN_EXE_apopd");
const PASSWORD: &str = "Correct horse 1";

/// `doveadm pw -s SHA512-CRYPT -p 'Correct horse 1'` (Dovecot 2.3, made once).
const SHA512_CRYPT: &str = "{SHA512-CRYPT}$6$Y4fV12nju8nptiQx$P94N3wz.7edef5QKapCzYinPWWRyQelALSzfO6YQ7qbVbUlaj9t9JtI3OCw49B7Uzj5qctsDX9KFc0XeJmZJX1";
/// `mkpasswd -m yescrypt 'Correct horse 1'` (libxcrypt, made once): Debian's /etc/shadow default.
const YESCRYPT: &str = "$y$j9T$1vijlcCOKEhKDQ3ktRbq4/$jHb66DkOUQMfJ5I3GpjbJ8JT1bc5/AQZaDx73bFv69C";

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run `apopd user import FLAG FILE ARGS… --config CONFIG`.
fn import(fixture: &Fixture, flag: &str, file: &Path, args: &[&str]) -> Output {
    Command::new(APOPD)
        .args(["user", "import", flag])
        .arg(file)
        .args(args)
        .arg("--config")
        .arg(&fixture.config_path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run apopd user import")
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "import failed:\nstdout: {}\nstderr: {}", show(&out.stdout), show(&out.stderr));
}

/// Write `text` as `name` in the fixture's directory.
fn source(fixture: &Fixture, name: &str, text: &str) -> PathBuf {
    let path = fixture.dir.path().join(name);
    fs::write(&path, text).expect("write source file");
    path
}

fn users_file(fixture: &Fixture) -> PathBuf {
    fixture.dir.path().join("users")
}

/// `user`'s value in the users file.
fn stored(fixture: &Fixture, user: &str) -> String {
    let text = fs::read_to_string(users_file(fixture)).expect("read users");
    let prefix = format!("{user}:");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{user} not in users:\n{text}"))
        .to_owned()
}

/// USER/PASS over a new connection; QUIT after a success. True when accepted.
async fn logs_in(server: &TestServer, user: &str, password: &str) -> bool {
    let mut client = server.connect().await;
    let reply = client.login(user, password).await;
    if reply.starts_with("+OK") {
        assert!(client.cmd("QUIT").await.starts_with("+OK"));
        return true;
    }
    assert!(reply.starts_with("-ERR [AUTH]"), "{user}: {reply}");
    false
}

#[tokio::test]
async fn hashes_made_by_doveadm_verify_at_login_and_are_rehashed() {
    if !have_program("doveadm", "dovecot-core") {
        return;
    }
    let schemes = [
        "ARGON2ID",
        "ARGON2I",
        "BLF-CRYPT",
        "SHA512-CRYPT",
        "SHA256-CRYPT",
        "SSHA512",
        "SSHA256",
        "PLAIN",
        "CLEAR",
        "CLEARTEXT",
        "SHA512-CRYPT.B64",
        "SSHA256.HEX",
    ];
    let mut passwd = String::from("# made by doveadm pw\n");
    for scheme in schemes {
        let out = Command::new("doveadm").args(["pw", "-s", scheme, "-p", PASSWORD]).output().expect("run doveadm");
        assert!(out.status.success(), "doveadm pw -s {scheme}: {}", show(&out.stderr));
        let hash = show(&out.stdout).trim().to_owned();
        assert!(hash.starts_with('{'), "doveadm pw -s {scheme}: {hash}");
        let user = scheme.to_ascii_lowercase();
        passwd.push_str(&format!("{user}:{hash}:1000:1000::/home/{user}::\n"));
    }
    let fixture = Fixture::new("");
    let file = source(&fixture, "dovecot-passwd", &passwd);
    let out = import(&fixture, "--dovecot-passwd", &file, &[]);
    assert_ok(&out);
    assert!(show(&out.stdout).starts_with(&format!("imported {} user(s)", schemes.len())), "{}", show(&out.stdout));
    let server = TestServer::start_on(fixture).await;
    for scheme in schemes {
        let user = scheme.to_ascii_lowercase();
        let before = stored(&server.fixture, &user);
        assert!(!logs_in(&server, &user, "Correct horse 2").await, "{scheme}: a wrong password logged in");
        assert_eq!(stored(&server.fixture, &user), before, "{scheme}: a failed login changed the hash");
        assert!(logs_in(&server, &user, PASSWORD).await, "{scheme}: doveadm's hash does not verify");
        let after = stored(&server.fixture, &user);
        if scheme == "ARGON2ID" {
            assert_eq!(after, before, "an argon2id hash is kept as it is");
        } else {
            assert!(after.starts_with("$argon2id$"), "{scheme}: not rehashed: {after}");
        }
        assert!(logs_in(&server, &user, PASSWORD).await, "{scheme}: no login after the rehash");
        assert!(!logs_in(&server, &user, "Correct horse 2").await, "{scheme}: wrong password after the rehash");
        assert_eq!(stored(&server.fixture, &user), after, "{scheme}: rehashed twice");
    }
}

#[tokio::test]
async fn rehash_on_login_replaces_that_line_only_and_the_next_login_uses_argon2id() {
    let fixture = Fixture::new("");
    let file = source(&fixture, "passwd", &format!("carol:{SHA512_CRYPT}:1000:1000::/home/carol::\n"));
    assert_ok(&import(&fixture, "--dovecot-passwd", &file, &[]));
    // A comment and a line order `apopd user` would not write: the rehash must keep both.
    let mut text = fs::read_to_string(users_file(&fixture)).unwrap();
    text = format!("# imported from Dovecot\n{}", text.lines().rev().map(|l| format!("{l}\n")).collect::<String>());
    fs::write(users_file(&fixture), &text).unwrap();
    let server = TestServer::start_on(fixture).await;

    assert!(!logs_in(&server, "carol", "wrong").await);
    assert_eq!(fs::read_to_string(users_file(&server.fixture)).unwrap(), text);
    assert!(logs_in(&server, "carol", PASSWORD).await, "the SHA512-CRYPT hash does not verify");

    let after = fs::read_to_string(users_file(&server.fixture)).unwrap();
    let (old_lines, new_lines): (Vec<&str>, Vec<&str>) = (text.lines().collect(), after.lines().collect());
    assert_eq!(old_lines.len(), new_lines.len());
    for (old, new) in old_lines.iter().zip(&new_lines) {
        if old.starts_with("carol:") {
            assert!(new.starts_with("carol:$argon2id$v=19$m=19456,t=2,p=1$"), "{new}");
        } else {
            assert_eq!(old, new, "another line changed");
        }
    }
    assert_eq!(fs::metadata(users_file(&server.fixture)).unwrap().permissions().mode() & 0o777, 0o600);

    assert!(!logs_in(&server, "carol", "wrong").await);
    assert!(logs_in(&server, "carol", PASSWORD).await, "no login with the argon2id hash");
    assert_eq!(fs::read_to_string(users_file(&server.fixture)).unwrap(), after, "the argon2id hash was replaced again");
    assert!(logs_in(&server, "alice", ALICE_PASSWORD).await, "the other users still log in");
}

#[tokio::test]
async fn rehash_on_login_false_keeps_the_imported_hash() {
    let fixture = Fixture::new("rehash_on_login = false");
    let file = source(&fixture, "passwd", &format!("carol:{SHA512_CRYPT}\n"));
    assert_ok(&import(&fixture, "--dovecot-passwd", &file, &[]));
    let server = TestServer::start_on(fixture).await;
    assert!(logs_in(&server, "carol", PASSWORD).await);
    assert!(logs_in(&server, "carol", PASSWORD).await);
    assert_eq!(stored(&server.fixture, "carol"), SHA512_CRYPT);
}

#[test]
fn an_import_with_one_bad_line_writes_nothing() {
    let fixture = Fixture::new("");
    let users_before = fs::read(users_file(&fixture)).unwrap();
    let secrets_before = fs::read(fixture.dir.path().join("apop-secrets")).unwrap();
    let file = source(
        &fixture,
        "passwd",
        &format!(
            "carol:{SHA512_CRYPT}\ndave:{{PLAIN}}x\nerin:{{FOO}}bar:1000:1000\nfrank:$1$ZVgh5TjB$.UKyYGSXPtRm9yu1FTDlg/\n"
        ),
    );
    let out = import(&fixture, "--dovecot-passwd", &file, &["--apop-from-plain"]);
    assert!(!out.status.success());
    let stderr = show(&out.stderr);
    assert!(stderr.contains("line 3 (erin): unknown scheme {FOO}"), "{stderr}");
    assert!(stderr.contains("line 4 (frank): unknown scheme $1$ (MD5-CRYPT)"), "{stderr}");
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert_eq!(fs::read(users_file(&fixture)).unwrap(), users_before);
    assert_eq!(fs::read(fixture.dir.path().join("apop-secrets")).unwrap(), secrets_before);

    // A user who exists already stops the import too, unless --replace.
    let file = source(&fixture, "passwd2", &format!("carol:{SHA512_CRYPT}\nalice:{{PLAIN}}new\n"));
    let out = import(&fixture, "--dovecot-passwd", &file, &[]);
    assert!(!out.status.success());
    assert!(show(&out.stderr).contains("(use --replace): alice"), "{}", show(&out.stderr));
    assert_eq!(fs::read(users_file(&fixture)).unwrap(), users_before);
    assert_ok(&import(&fixture, "--dovecot-passwd", &file, &["--replace"]));
    assert_eq!(stored(&fixture, "alice"), "{PLAIN}new");
    assert_eq!(stored(&fixture, "carol"), SHA512_CRYPT);
}

#[test]
fn dry_run_reports_and_writes_nothing() {
    let fixture = Fixture::new("");
    let users_before = fs::read(users_file(&fixture)).unwrap();
    let file = source(&fixture, "passwd", &format!("carol:{SHA512_CRYPT}\nalice:{{PLAIN}}x\nerin:{{FOO}}bar\n"));
    let out = import(&fixture, "--dovecot-passwd", &file, &["--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "a file that cannot be imported: exit 1");
    let report = show(&out.stdout);
    for needle in [
        "SHA512-CRYPT",
        "verifiable (sha-crypt crate)",
        "{FOO}",
        "NOT verifiable: unknown scheme",
        "line 3 (erin): unknown scheme {FOO}",
        "would be refused",
        "refused without --replace): alice",
    ] {
        assert!(report.contains(needle), "{needle:?} missing from:\n{report}");
    }
    assert_eq!(fs::read(users_file(&fixture)).unwrap(), users_before);
    let file = source(&fixture, "passwd2", &format!("carol:{SHA512_CRYPT}\n"));
    let out = import(&fixture, "--dovecot-passwd", &file, &["--dry-run"]);
    assert_ok(&out);
    assert!(show(&out.stdout).contains("would add 1 user(s)"), "{}", show(&out.stdout));
    assert_eq!(fs::read(users_file(&fixture)).unwrap(), users_before);
}

#[tokio::test]
async fn plain_passwords_can_become_apop_secrets() {
    let fixture = Fixture::new("");
    let file = source(
        &fixture,
        "passwd",
        "carol:{PLAIN}tanstaaf too\ndave:{SSHA256}9V5BcfIr5VAvAe4BOQ8tuvObcOwrMttOiNozs9HXT7hbzAtF\n",
    );
    let out = import(&fixture, "--dovecot-passwd", &file, &["--apop-from-plain"]);
    assert_ok(&out);
    assert!(show(&out.stdout).contains("1 APOP secret(s) from PLAIN passwords"), "{}", show(&out.stdout));
    let secrets = fixture.dir.path().join("apop-secrets");
    assert_eq!(fs::metadata(&secrets).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(fs::read_to_string(&secrets).unwrap().lines().any(|l| l == "carol:tanstaaf too"));
    let server = TestServer::start_on(fixture).await;
    let mut client = server.connect().await;
    assert!(client.apop("carol", "tanstaaf too").await.starts_with("+OK"));
    assert!(client.cmd("QUIT").await.starts_with("+OK"));
    let mut client = server.connect().await;
    assert!(client.apop("dave", PASSWORD).await.starts_with("-ERR"), "only PLAIN passwords become APOP secrets");
    assert!(logs_in(&server, "dave", PASSWORD).await);
    assert!(logs_in(&server, "carol", "tanstaaf too").await);
}

#[tokio::test]
async fn shadow_users_log_in_and_locked_accounts_are_skipped() {
    let fixture = Fixture::new("");
    let shadow = format!(
        "root:{YESCRYPT}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\ncarol:{YESCRYPT}:19000:0:99999:7:::\n\
         dave:!{YESCRYPT}:19000:0:99999:7:::\n"
    );
    let file = source(&fixture, "shadow", &shadow);
    let out = import(&fixture, "--shadow", &file, &[]);
    assert_ok(&out);
    let stdout = show(&out.stdout);
    assert!(stdout.starts_with("imported 1 user(s)"), "{stdout}");
    for needle in [
        "YESCRYPT 1",
        "line 1 (root): root is never imported",
        "line 2 (daemon): no login (*)",
        "line 4 (dave): locked",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from:\n{stdout}");
    }
    let server = TestServer::start_on(fixture).await;
    assert!(!logs_in(&server, "carol", "wrong").await);
    assert!(logs_in(&server, "carol", PASSWORD).await, "the yescrypt hash does not verify");
    assert!(stored(&server.fixture, "carol").starts_with("$argon2id$"));
    assert!(!logs_in(&server, "dave", PASSWORD).await);
    assert!(!logs_in(&server, "root", PASSWORD).await);
}

#[tokio::test]
async fn a_rehash_that_cannot_be_written_leaves_the_login_and_the_hash_alone() {
    let fixture = Fixture::new("");
    let file = source(&fixture, "passwd", &format!("carol:{SHA512_CRYPT}\n"));
    assert_ok(&import(&fixture, "--dovecot-passwd", &file, &[]));
    // The users file's lock cannot be taken (as under a read-only /etc): the rewrite fails.
    let lock = fixture.dir.path().join(".users.lock");
    fs::remove_file(&lock).expect("the import left its lock file");
    fs::create_dir(&lock).unwrap();
    let server = TestServer::start_on(fixture).await;
    assert!(logs_in(&server, "carol", PASSWORD).await, "a failed rehash must not fail the login");
    assert_eq!(stored(&server.fixture, "carol"), SHA512_CRYPT);
    assert!(logs_in(&server, "carol", PASSWORD).await);
    assert!(!logs_in(&server, "carol", "wrong").await);
}

/// `apopd user` and `user import` wait for the lock the server's rehash takes, so neither
/// can overwrite the other's change.
#[test]
fn user_commands_wait_for_the_users_file_lock() {
    let fixture = Fixture::new("");
    let lock = fs::File::create(fixture.dir.path().join(".users.lock")).unwrap();
    lock.lock().unwrap();
    let before = fs::read(users_file(&fixture)).unwrap();
    let file = source(&fixture, "passwd", &format!("carol:{SHA512_CRYPT}\n"));
    let mut child = Command::new(APOPD)
        .args(["user", "import", "--dovecot-passwd"])
        .arg(&file)
        .arg("--config")
        .arg(&fixture.config_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn apopd user import");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "the import did not wait for the lock");
    assert_eq!(fs::read(users_file(&fixture)).unwrap(), before);
    drop(lock);
    assert!(child.wait().unwrap().success());
    assert_eq!(stored(&fixture, "carol"), SHA512_CRYPT);
}

/// `apopd migrate check --passwd` gives the same read-only report before a switch, with or
/// without maildirs beside it, and needs no config.
#[test]
fn migrate_check_reports_on_a_password_file() {
    let fixture = Fixture::new("");
    let file = source(&fixture, "passwd", &format!("carol:{SHA512_CRYPT}\nerin:{{FOO}}bar\n"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apopd"))
        .args(["migrate", "check", "--passwd"])
        .arg(&file)
        .arg(fixture.maildir("alice"))
        .output()
        .unwrap();
    let report = show(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", show(&out.stderr));
    for needle in ["SHA512-CRYPT", "verifiable (sha-crypt crate)", "line 2 (erin): unknown scheme {FOO}", "messages"] {
        assert!(report.contains(needle), "{needle:?} missing from:\n{report}");
    }
}
