//! The `apopd` binary's subcommands: --version, apop-digest, user add/passwd/del/list (against a running
//! server, which must pick up the changes without a restart), serve's refusals, check-config,
//! deliver (with sysexits codes) and the no-argument demo.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const APOPD: &str = env!("CARGO_BIN_EXE_apopd");

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn apopd(args: &[&str], stdin: &[u8]) -> Output {
    run_apopd(args, stdin)
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        show(&out.stdout),
        show(&out.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

/// A fresh current-thread runtime for the raw POP3 client.
fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(future)
}

/// USER/PASS on a new connection; true when accepted (the session is then QUIT).
fn pass_login(addr: SocketAddr, user: &str, password: &str) -> bool {
    block_on(async {
        let mut c = Client::connect(addr).await;
        let reply = c.login(user, password).await;
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
        reply.starts_with("+OK")
    })
}

/// APOP on a new connection; true when accepted.
fn apop_login(addr: SocketAddr, user: &str, secret: &str) -> bool {
    block_on(async {
        let mut c = Client::connect(addr).await;
        let reply = c.apop(user, secret).await;
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
        reply.starts_with("+OK")
    })
}

/// Run `apopd serve --config CONFIG`, expecting it to refuse to start; returns (exit code, stderr).
fn serve_refuses(config: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(APOPD)
        .args(["serve", "--config", path_str(config)])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apopd");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("apopd serve --config {} kept running; it should have refused to start", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "apopd serve exited 0; stderr: {stderr}");
    (status.code(), stderr)
}

/// Write a config file next to the fixture's, with the given text.
fn write_config(fixture: &Fixture, name: &str, text: &str) -> PathBuf {
    let path = fixture.dir.path().join(name);
    fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// apop-digest

/// `-V` and `--version` print the version and the TLS provider, and nothing else.
#[test]
fn version_names_the_tls_provider() {
    for flag in ["-V", "--version"] {
        let out = apopd(&[flag], b"");
        assert_success(&out, flag);
        assert_eq!(
            show(&out.stdout),
            format!("apopd {} (TLS: rustls 0.23, ring provider)\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
        assert_eq!(show(&out.stderr), "", "{flag}");
    }
}

#[test]
fn apop_digest_rfc1939_example() {
    let out = apopd(&["apop-digest", "<1896.697170952@dbc.mtview.ca.us>", "tanstaaf"], b"");
    assert_success(&out, "apop-digest");
    assert_eq!(show(&out.stdout), "c4c9334bac560ecc979e58001b3e22fb\n");

    // The secret from stdin instead of the command line.
    let out = apopd(&["apop-digest", "<1896.697170952@dbc.mtview.ca.us>"], b"tanstaaf\n");
    assert_success(&out, "apop-digest with the secret on stdin");
    assert_eq!(show(&out.stdout), "c4c9334bac560ecc979e58001b3e22fb\n");
}

#[test]
fn apop_digest_equals_md5sum() {
    let random = || RandomState::new().build_hasher().finish();
    let cases = [
        (format!("<{}.{}@host.example>", random() % 100_000, random()), "tanstaaf".to_owned()),
        (format!("<{}.{}.{}@mail.example.org>", random() % 100_000, random(), random()), format!("s{}", random())),
        (format!("<{}@x>", random()), "p\u{e4}ss w\u{f6}rd".to_owned()),
    ];
    for (timestamp, secret) in cases {
        let out = apopd(&["apop-digest", &timestamp, &secret], b"");
        assert_success(&out, "apop-digest");
        let md5sum = Command::new("sh")
            .args(["-c", "printf '%s%s' \"$1\" \"$2\" | md5sum", "sh", &timestamp, &secret])
            .output()
            .expect("run md5sum");
        assert!(md5sum.status.success());
        let expected = show(&md5sum.stdout).split_whitespace().next().unwrap().to_owned();
        assert_eq!(expected.len(), 32);
        assert_eq!(show(&out.stdout).trim_end(), expected, "digest of {timestamp} {secret:?}");
        let piped = apopd(&["apop-digest", &timestamp], format!("{secret}\n").as_bytes());
        assert_eq!(show(&piped.stdout).trim_end(), expected, "secret on stdin");
    }
}

// ---------------------------------------------------------------------------------------------
// user add / passwd / del / list

#[test]
fn user_lifecycle_on_a_running_server() {
    let fixture = Fixture::new("");
    let config = path_str(&fixture.config_path).to_owned();
    let server = ServerProcess::spawn(&fixture.config_path);
    let addr = server.addr;
    assert!(!pass_login(addr, "carol", "first-pw"), "carol does not exist yet");

    // add with a password and an APOP secret: both work at once on the running server.
    let out = apopd(&["user", "add", "carol", "--apop", "--config", &config], b"first-pw\nfirst-secret\n");
    assert_success(&out, "user add carol --apop");
    assert_eq!(show(&out.stdout), "added carol\n");
    assert!(pass_login(addr, "carol", "first-pw"), "USER/PASS right after `user add`, no restart");
    assert!(apop_login(addr, "carol", "first-secret"), "APOP right after `user add --apop`, no restart");
    assert!(!pass_login(addr, "carol", "first-secret"), "the APOP secret is not the password");
    for file in ["users", "apop-secrets"] {
        assert_eq!(mode_of(&fixture.dir.path().join(file)), 0o600, "{file} is written with mode 0600");
    }
    let secrets = fs::read_to_string(fixture.dir.path().join("apop-secrets")).unwrap();
    assert!(secrets.lines().any(|l| l == "carol:first-secret"), "{secrets}");
    let users = fs::read_to_string(fixture.dir.path().join("users")).unwrap();
    let carol = users.lines().find(|l| l.starts_with("carol:")).expect("carol in users");
    assert!(carol.starts_with("carol:$argon2"), "stored as a hash: {carol}");
    assert!(!users.contains("first-pw"));

    // add without --apop: a password only.
    let out = apopd(&["user", "add", "dave", "--config", &config], b"dave-pw\n");
    assert_success(&out, "user add dave");
    assert!(pass_login(addr, "dave", "dave-pw"));
    assert!(!apop_login(addr, "dave", "dave-pw"), "dave has no APOP secret");

    let out = apopd(&["user", "list", "--config", &config], b"");
    assert_success(&out, "user list");
    assert_eq!(
        show(&out.stdout),
        "alice password,apop\nbob password\ncarol password,apop\ndave password\n",
        "user list"
    );

    // passwd: the old password stops working, the new one works; the APOP secret is kept.
    let out = apopd(&["user", "passwd", "carol", "--config", &config], b"second-pw\n");
    assert_success(&out, "user passwd carol");
    assert_eq!(show(&out.stdout), "updated carol\n");
    assert!(!pass_login(addr, "carol", "first-pw"), "old password after passwd");
    assert!(pass_login(addr, "carol", "second-pw"), "new password after passwd");
    assert!(apop_login(addr, "carol", "first-secret"), "passwd without --apop keeps the APOP secret");

    // passwd --apop replaces the secret too.
    let out = apopd(&["user", "passwd", "carol", "--apop", "--config", &config], b"third-pw\nsecond-secret\n");
    assert_success(&out, "user passwd carol --apop");
    assert!(!apop_login(addr, "carol", "first-secret"), "old APOP secret after passwd --apop");
    assert!(apop_login(addr, "carol", "second-secret"), "new APOP secret after passwd --apop");
    assert!(pass_login(addr, "carol", "third-pw"));

    // del: both login methods fail, and the user is gone from the list; the maildir stays.
    let out = apopd(&["user", "del", "carol", "--config", &config], b"");
    assert_success(&out, "user del carol");
    assert!(show(&out.stdout).starts_with("removed carol"), "{}", show(&out.stdout));
    assert!(!pass_login(addr, "carol", "third-pw"), "USER/PASS after del");
    assert!(!apop_login(addr, "carol", "second-secret"), "APOP after del");
    assert!(fixture.maildir("carol").is_dir(), "the maildir is left in place");
    let out = apopd(&["user", "list", "--config", &config], b"");
    assert_eq!(show(&out.stdout), "alice password,apop\nbob password\ndave password\n");
    for file in ["users", "apop-secrets"] {
        assert_eq!(mode_of(&fixture.dir.path().join(file)), 0o600, "{file} after del");
    }

    // The demo users were never disturbed.
    assert!(pass_login(addr, "alice", ALICE_PASSWORD));
    assert!(apop_login(addr, "alice", ALICE_APOP_SECRET));
    assert!(pass_login(addr, "bob", BOB_PASSWORD));
}

#[test]
fn user_commands_refuse_bad_requests() {
    let fixture = Fixture::new("");
    let config = path_str(&fixture.config_path).to_owned();
    let users = fixture.dir.path().join("users");
    let secrets = fixture.dir.path().join("apop-secrets");
    let before = (fs::read_to_string(&users).unwrap(), fs::read_to_string(&secrets).unwrap());

    let out = apopd(&["user", "add", "alice", "--config", &config], b"another\n");
    assert!(!out.status.success(), "adding an existing user must fail");
    assert!(show(&out.stderr).contains("exists"), "{}", show(&out.stderr));

    for bad in ["../x", "a/b", ".hidden", "x..y", "with space", ""] {
        let out = apopd(&["user", "add", bad, "--apop", "--config", &config], b"pw\nsecret\n");
        assert!(!out.status.success(), "user add {bad:?} must fail");
        assert!(show(&out.stderr).contains("invalid user name"), "{bad:?}: {}", show(&out.stderr));
    }
    assert!(!fixture.dir.path().join("x").exists());

    let out = apopd(&["user", "passwd", "nobody", "--config", &config], b"pw\n");
    assert!(!out.status.success(), "passwd of an unknown user");
    assert!(show(&out.stderr).contains("no such user"), "{}", show(&out.stderr));
    let out = apopd(&["user", "del", "nobody", "--config", &config], b"");
    assert!(!out.status.success(), "del of an unknown user");
    assert!(show(&out.stderr).contains("no such user"), "{}", show(&out.stderr));
    let out = apopd(&["user", "add", "erin", "--config", &config], b"\n");
    assert!(!out.status.success(), "an empty password is refused");

    assert_eq!(
        (fs::read_to_string(&users).unwrap(), fs::read_to_string(&secrets).unwrap()),
        before,
        "failed commands changed nothing"
    );
}

#[test]
fn user_add_with_an_empty_apop_secret_changes_nothing() {
    let fixture = Fixture::new("");
    let config = path_str(&fixture.config_path).to_owned();
    let users = fixture.dir.path().join("users");
    let before = fs::read_to_string(&users).unwrap();

    let out = apopd(&["user", "add", "erin", "--apop", "--config", &config], b"erin-pw\n\n");
    assert!(!out.status.success(), "an empty APOP secret is refused");
    assert!(show(&out.stderr).contains("empty APOP secret"), "{}", show(&out.stderr));
    let out = apopd(&["user", "passwd", "alice", "--apop", "--config", &config], b"new-pw\n\n");
    assert!(!out.status.success(), "an empty APOP secret is refused");

    // A refused command must not have half-applied: no erin, alice's hash untouched.
    assert_eq!(fs::read_to_string(&users).unwrap(), before, "the users file was changed by a command that failed");
}

#[test]
fn user_add_creates_missing_files_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("apopd.toml");
    fs::write(
        &config,
        "mail_root = \"mail/{user}\"\nusers_file = \"etc/users\"\napop_secrets_file = \"etc/apop-secrets\"\n",
    )
    .unwrap();
    let out = apopd(&["user", "add", "frank", "--apop", "--config", path_str(&config)], b"pw\nsecret\n");
    assert_success(&out, "user add into missing files");
    for file in ["etc/users", "etc/apop-secrets"] {
        assert_eq!(mode_of(&dir.path().join(file)), 0o600, "{file}");
    }
    assert_eq!(fs::read_to_string(dir.path().join("etc/apop-secrets")).unwrap(), "frank:secret\n");
}

// ---------------------------------------------------------------------------------------------
// serve refusing bad setups

#[test]
fn serve_refuses_group_readable_secrets() {
    let fixture = Fixture::new("");
    let secrets = fixture.dir.path().join("apop-secrets");
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o640)).unwrap();
    let (_, stderr) = serve_refuses(&fixture.config_path);
    assert!(stderr.contains(path_str(&secrets)), "names the file: {stderr}");
    assert!(stderr.contains("640"), "says what is wrong: {stderr}");

    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o604)).unwrap();
    let (_, stderr) = serve_refuses(&fixture.config_path);
    assert!(stderr.contains(path_str(&secrets)), "world-readable: {stderr}");

    // The users file gets the same rule.
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o600)).unwrap();
    let users = fixture.dir.path().join("users");
    fs::set_permissions(&users, fs::Permissions::from_mode(0o644)).unwrap();
    let (_, stderr) = serve_refuses(&fixture.config_path);
    assert!(stderr.contains(path_str(&users)), "names the users file: {stderr}");
}

#[test]
fn serve_refuses_bad_configs_naming_the_key() {
    let fixture = Fixture::new("");
    let base = "listen = [\"127.0.0.1:0\"]\nusers_file = \"users\"\napop_secrets_file = \"apop-secrets\"\n";
    let unknown =
        write_config(&fixture, "unknown.toml", &format!("{base}mail_root = \"mail/{{user}}\"\nlisten_port = 110\n"));
    let (_, stderr) = serve_refuses(&unknown);
    assert!(stderr.contains("listen_port"), "names the unknown key: {stderr}");
    assert!(stderr.contains("unknown.toml"), "names the file: {stderr}");

    let shared = write_config(&fixture, "shared.toml", &format!("{base}mail_root = \"mail/shared\"\n"));
    let (_, stderr) = serve_refuses(&shared);
    assert!(stderr.contains("mail_root") && stderr.contains("{user}"), "names mail_root and {{user}}: {stderr}");

    let missing = fixture.dir.path().join("no-such.toml");
    let (_, stderr) = serve_refuses(&missing);
    assert!(stderr.contains("no-such.toml"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// check-config

#[test]
fn check_config_prints_the_effective_config() {
    let fixture = Fixture::new("");
    let out = apopd(&["check-config", "--config", path_str(&fixture.config_path)], b"");
    assert_success(&out, "check-config");
    assert!(show(&out.stderr).contains(&format!("{}: OK", fixture.config_path.display())), "{}", show(&out.stderr));
    let printed: toml::Table = toml::from_str(&show(&out.stdout)).expect("check-config prints TOML");
    let dir = fixture.dir.path().display().to_string();
    let s = |key: &str| printed.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let i = |key: &str| printed.get(key).and_then(|v| v.as_integer());
    assert_eq!(s("mail_root"), Some(format!("{dir}/mail/{{user}}")), "relative paths resolved");
    assert_eq!(s("users_file"), Some(format!("{dir}/users")));
    assert_eq!(s("apop_secrets_file"), Some(format!("{dir}/apop-secrets")));
    assert_eq!(printed.get("listen").and_then(|v| v.as_array()).map(|a| a.len()), Some(1));
    assert_eq!(printed["listen"][0].as_str(), Some("127.0.0.1:0"));
    assert_eq!(i("auth_failure_delay_ms"), Some(0), "the file's value");
    assert_eq!(i("idle_timeout_secs"), Some(600), "defaults are shown");
    assert_eq!(i("max_connections"), None, "not set: sized when serve starts");
    assert!(show(&out.stderr).contains("max_connections not set: "), "{}", show(&out.stderr));

    // The printed config is itself a valid config with the same effect.
    let again = write_config(&fixture, "printed.toml", &show(&out.stdout));
    let out2 = apopd(&["check-config", "--config", path_str(&again)], b"");
    assert_success(&out2, "check-config of its own output");
    assert_eq!(out2.stdout, out.stdout);
}

/// deploy/apopd.toml is the Debian package's /etc/apopd/apopd.toml: it must pass check-config
/// with nothing but what the package's postinst creates (empty 0600 users and APOP secrets
/// files), and keep TLS and plaintext passwords off until the admin turns them on.
#[test]
fn the_shipped_config_passes_check_config_as_installed() {
    let shipped =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/apopd.toml")).expect("deploy/apopd.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().display().to_string();
    // The same file with /etc/apopd and /srv/mail moved into the temp dir.
    let config =
        shipped.replace("\"/etc/apopd/", &format!("\"{root}/")).replace("\"/srv/mail/", &format!("\"{root}/mail/"));
    let moved = config.lines().filter(|line| !line.starts_with('#') && line.contains(&root)).count();
    assert_eq!(moved, 3, "users_file, apop_secrets_file and mail_root moved:\n{config}");
    for name in ["users", "apop-secrets"] {
        fs::write(dir.path().join(name), "").expect("write");
        fs::set_permissions(dir.path().join(name), fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let path = dir.path().join("apopd.toml");
    fs::write(&path, config).expect("write config");
    let out = apopd(&["check-config", "--config", path_str(&path)], b"");
    assert_success(&out, "check-config of deploy/apopd.toml");
    let printed: toml::Table = toml::from_str(&show(&out.stdout)).expect("check-config prints TOML");
    assert_eq!(printed.get("tls_cert"), None, "TLS is the admin's to turn on");
    assert_eq!(printed["listen_tls"].as_array().map(Vec::len), Some(0));
    assert_eq!(printed["plaintext_auth_networks"].as_array().map(Vec::len), Some(0));
    assert_eq!(printed["mail_root"].as_str(), Some(format!("{root}/mail/{{user}}").as_str()));
}

#[test]
fn check_config_without_arguments_checks_the_demo() {
    let out = apopd(&["check-config"], b"");
    assert_success(&out, "check-config (demo)");
    let printed: toml::Table = toml::from_str(&show(&out.stdout)).expect("TOML");
    assert_eq!(printed["listen"][0].as_str(), Some("127.0.0.1:1110"));
    assert!(show(&out.stderr).contains("fixtures/demo/apopd.toml: OK"), "{}", show(&out.stderr));
}

#[test]
fn check_config_rejects_bad_configs_naming_the_key() {
    let fixture = Fixture::new("");
    let cases = [
        ("mail_root = \"/srv/mail/{user}\"\nmax_conections = 5\n", "max_conections"),
        ("mail_root = \"/srv/mail\"\n", "mail_root"),
        ("users_file = \"users\"\n", "mail_root"),
        ("mail_root = \"/m/{user}\"\nidle_timeout_secs = 30\n", "idle_timeout_secs"),
        ("mail_root = \"/m/{user}\"\nlisten = [\"not an address\"]\n", "listen"),
        ("mail_root = \"/m/{user}\"\nmax_connections = 0\n", "max_connections"),
    ];
    for (n, (text, key)) in cases.iter().enumerate() {
        let path = write_config(&fixture, &format!("bad{n}.toml"), text);
        let out = apopd(&["check-config", "--config", path_str(&path)], b"");
        assert!(!out.status.success(), "check-config accepted {text:?}");
        assert!(show(&out.stderr).contains(key), "{text:?}: error should name {key}: {}", show(&out.stderr));
        assert!(out.stdout.is_empty(), "nothing printed for a bad config");
    }
}

// ---------------------------------------------------------------------------------------------
// deliver

/// A message with every awkward feature: CRLF and bare LF, dot lines, 8-bit UTF-8, no final newline.
const AWKWARD: &[u8] = b"From: Mallory <m@example.org>\r\nTo: alice@example.org\nSubject: delivered\r\n\
Message-ID: <deliver.1@example.org>\n\n.\n..two\r\n.hidden\nGr\xc3\xbc\xc3\x9fe \xe2\x80\x94 caf\xc3\xa9\nno newline at the end";

/// The non-hidden entries of `dir` (the fixtures keep `.gitkeep` files in empty maildir folders).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
}

#[test]
fn deliver_stores_the_message_whole_and_pop3_sees_it() {
    let fixture = Fixture::new("");
    let maildir = fixture.maildir("alice");
    let before = files_in(&maildir.join("new"));
    let out = apopd(&["deliver", "alice", "--config", path_str(&fixture.config_path)], AWKWARD);
    assert_success(&out, "deliver alice");

    let after = files_in(&maildir.join("new"));
    let added: Vec<&PathBuf> = after.iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(added.len(), 1, "exactly one new file in new/: {after:?}");
    assert_eq!(fs::read(added[0]).unwrap(), AWKWARD, "byte-identical");
    assert!(files_in(&maildir.join("tmp")).is_empty(), "nothing left in tmp/");

    // A POP3 session sees it as the newest message.
    let server = ServerProcess::spawn(&fixture.config_path);
    block_on(async {
        let mut c = Client::connect(server.addr).await;
        assert!(c.login("alice", ALICE_PASSWORD).await.starts_with("+OK alice's maildrop has 6 messages"));
        assert_eq!(c.cmd("LIST 6").await, format!("+OK 6 {}", crlf(AWKWARD).len()));
        assert!(c.cmd("RETR 6").await.starts_with("+OK"));
        assert_eq!(c.body().await, crlf(AWKWARD));
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
    });
}

#[test]
fn deliver_creates_a_missing_new_directory() {
    let fixture = Fixture::new("");
    let maildir = fixture.maildir("bob");
    fs::remove_dir_all(maildir.join("new")).unwrap();
    let out = apopd(&["deliver", "bob", "--config", path_str(&fixture.config_path)], b"Subject: x\n\nbody\n");
    assert_success(&out, "deliver into a maildir without new/");
    let new = files_in(&maildir.join("new"));
    assert_eq!(new.len(), 1);
    assert_eq!(fs::read(&new[0]).unwrap(), b"Subject: x\n\nbody\n");
    assert!(files_in(&maildir.join("tmp")).is_empty());

    // A user whose maildir does not exist at all gets one.
    fs::remove_dir_all(&maildir).unwrap();
    let out = apopd(&["deliver", "bob", "--config", path_str(&fixture.config_path)], b"Subject: y\n\n");
    assert_success(&out, "deliver into a missing maildir");
    assert_eq!(files_in(&maildir.join("new")).len(), 1);
    assert!(maildir.join("cur").is_dir() && maildir.join("tmp").is_dir());
}

#[test]
fn deliver_exit_codes_follow_sysexits() {
    let fixture = Fixture::new("");
    let config = path_str(&fixture.config_path).to_owned();
    let snapshot = || snapshot(&fixture.dir.path().join("mail"));
    let before = snapshot();

    let out = apopd(&["deliver", "nobody", "--config", &config], b"Subject: x\n\n");
    assert_eq!(out.status.code(), Some(67), "unknown user is EX_NOUSER; stderr: {}", show(&out.stderr));
    assert!(show(&out.stderr).contains("nobody"));
    let out = apopd(&["deliver", "../alice", "--config", &config], b"Subject: x\n\n");
    assert_eq!(out.status.code(), Some(67), "an invalid name is EX_NOUSER; stderr: {}", show(&out.stderr));

    let missing = fixture.dir.path().join("missing.toml");
    let out = apopd(&["deliver", "alice", "--config", path_str(&missing)], b"Subject: x\n\n");
    assert_eq!(out.status.code(), Some(75), "missing config is EX_TEMPFAIL; stderr: {}", show(&out.stderr));
    let bad = write_config(&fixture, "bad.toml", "mail_root = \"mail/{user}\"\nusers_file = \"users\"\ntypo = 1\n");
    let out = apopd(&["deliver", "alice", "--config", path_str(&bad)], b"Subject: x\n\n");
    assert_eq!(out.status.code(), Some(75), "bad config is EX_TEMPFAIL; stderr: {}", show(&out.stderr));
    assert!(show(&out.stderr).contains("typo"), "{}", show(&out.stderr));
    // A config that is a directory cannot be read at all (as root, chmod 000 would not stop a read).
    let out = apopd(&["deliver", "alice", "--config", path_str(fixture.dir.path())], b"Subject: x\n\n");
    assert_eq!(out.status.code(), Some(75), "unreadable config is EX_TEMPFAIL; stderr: {}", show(&out.stderr));
    // A user without a maildir is looked up in the users file; if that cannot be used, it is
    // a temporary failure, not "no such user".
    fs::set_permissions(fixture.dir.path().join("users"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = apopd(&["deliver", "carol", "--config", &config], b"Subject: x\n\n");
    assert_eq!(out.status.code(), Some(75), "unusable users file is EX_TEMPFAIL; stderr: {}", show(&out.stderr));

    assert_eq!(snapshot(), before, "failed deliveries wrote nothing");

    // An existing maildir is enough: an MTA running deliver as another user may not be able
    // to read the (0600) users file.
    let out = apopd(&["deliver", "alice", "--config", &config], b"Subject: x\n\n");
    assert_eq!(out.status.code(), Some(0), "existing maildir; stderr: {}", show(&out.stderr));
}

// ---------------------------------------------------------------------------------------------
// serve with no arguments: the demo

/// Every path under `root` with its mode and, for files, its content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                stack.push(path.clone());
                out.insert(rel, (meta.permissions().mode(), None));
            } else {
                out.insert(rel, (meta.permissions().mode(), Some(fs::read(&path).unwrap())));
            }
        }
    }
    out
}

/// Kills and reaps the child on drop, and removes the demo copy it made.
struct DemoServer {
    child: Child,
    copy: Option<PathBuf>,
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(copy) = self.copy.take() {
            let _ = fs::remove_dir_all(copy);
        }
    }
}

#[test]
fn serve_without_arguments_serves_a_copy_of_the_demo() {
    let fixtures = Path::new(FIXTURES);
    let before = snapshot(fixtures);

    let mut child = Command::new(APOPD)
        .arg("serve")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn apopd serve");
    let stderr = child.stderr.take().unwrap();
    let mut server = DemoServer { child, copy: None };

    // Read stderr on a thread until the listener is announced or the process exits.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let addr: SocketAddr = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix("apopd: serving the demo from ") {
                    let dir = rest.split(" (a fresh copy of ").next().unwrap();
                    server.copy = Some(PathBuf::from(dir));
                }
                if let Some(addr) = line.strip_prefix("apopd: POP3 on ") {
                    break addr.parse().expect("address");
                }
                seen.push(line);
            }
            Err(e) => {
                let log = seen.join("\n");
                if log.contains("cannot listen on 127.0.0.1:1110") {
                    panic!(
                        "port 1110 is already in use on this machine (another `apopd serve` demo?), so the demo \
                         cannot be tested; stop whatever listens on 127.0.0.1:1110 and rerun.\n{log}"
                    );
                }
                panic!("apopd serve did not announce its listener ({e}):\n{log}");
            }
        }
    };
    assert_eq!(addr, "127.0.0.1:1110".parse::<SocketAddr>().unwrap(), "the demo listens on 127.0.0.1:1110");
    let copy = server.copy.clone().expect("apopd serve says where it copied the demo");
    assert!(copy.join("apopd.toml").is_file(), "the copy at {} has the config", copy.display());
    assert_ne!(copy.canonicalize().unwrap(), fixtures.canonicalize().unwrap());
    assert_eq!(mode_of(&copy.join("apop-secrets")), 0o600, "the copy's secrets are private");

    let demo_files: Vec<Vec<u8>> = {
        let mut files: Vec<PathBuf> =
            ["cur", "new"].iter().flat_map(|sub| files_in(&fixtures.join("mail/alice").join(sub))).collect();
        files.sort_by_key(|p| p.file_name().unwrap().to_owned());
        files.iter().map(|p| fs::read(p).unwrap()).collect()
    };
    assert_eq!(demo_files.len(), 5);

    block_on(async {
        let mut c = Client::connect(addr).await;
        assert!(c.greeting.contains("apopd"), "it is apopd answering on 1110: {}", c.greeting);
        let reply = c.login("alice", ALICE_PASSWORD).await;
        assert!(reply.starts_with("+OK alice's maildrop has 5 messages"), "{reply}");
        for (i, file) in demo_files.iter().enumerate() {
            assert!(c.cmd(&format!("RETR {}", i + 1)).await.starts_with("+OK"));
            assert_eq!(c.body().await, crlf(file), "RETR {}", i + 1);
        }
        for n in 1..=5 {
            assert!(c.cmd(&format!("DELE {n}")).await.starts_with("+OK"));
        }
        assert_eq!(c.cmd("QUIT").await, "+OK apopd signing off (5 messages deleted)");
        assert!(c.closed().await);
    });

    let left: Vec<PathBuf> =
        ["cur", "new"].iter().flat_map(|sub| files_in(&copy.join("mail/alice").join(sub))).collect();
    assert!(left.is_empty(), "the deletions happened in the copy: {left:?}");
    assert_eq!(snapshot(fixtures), before, "fixtures/demo must be unchanged after DELE and QUIT on the demo");
    drop(server);
    assert!(!copy.exists(), "the test removed the demo copy");
}

/// Maildirs in home directories served by root without `run_as_user`: check-config and the
/// start-up log name the risk; the other risky maildir settings are named too.
#[test]
fn home_directory_maildirs_served_as_root_are_warned_about() {
    let root = nix::unistd::geteuid().is_root();
    const ROOT_RISK: &str = "apopd runs as root without run_as_user";
    let fixture = Fixture::new("mail_root = \"/home/{user}/Maildir\"");
    let out = apopd(&["check-config", "--config", path_str(&fixture.config_path)], b"");
    assert_success(&out, "check-config");
    assert_eq!(show(&out.stderr).contains(ROOT_RISK), root, "{}", show(&out.stderr));
    if root {
        let server = ServerProcess::spawn(&fixture.config_path);
        assert!(server.log_lines().iter().any(|line| line.contains(ROOT_RISK)), "{:?}", server.log_lines());
    }

    let safe = Fixture::new("mail_root = \"/home/{user}/Maildir\"\nrun_as_user = \"nobody\"");
    let out = apopd(&["check-config", "--config", path_str(&safe.config_path)], b"");
    assert!(!show(&out.stderr).contains("warning"), "{}", show(&out.stderr));

    let risky = Fixture::new(
        "mail_root = \"/home/{user}/Maildir\"\nrun_as_user = \"nobody\"\nmaildir_owner = \"any\"\nallow_symlinked_maildir = true",
    );
    let out = apopd(&["check-config", "--config", path_str(&risky.config_path)], b"");
    let stderr = show(&out.stderr);
    assert!(
        stderr.contains("maildir_owner = \"any\"") && stderr.contains("allow_symlinked_maildir = true"),
        "{stderr}"
    );

    let virtual_users = Fixture::new("maildir_owner = \"any\"");
    let out = apopd(&["check-config", "--config", path_str(&virtual_users.config_path)], b"");
    assert!(!show(&out.stderr).contains("warning"), "not a home layout: {}", show(&out.stderr));
}

/// A printing command whose reader has gone (`| head`): no panic about a closed pipe, and
/// check-config still checks and reports. The pipe is closed before the child starts writing.
#[test]
fn printing_commands_end_quietly_on_a_closed_pipe() {
    let fixture = Fixture::new("");
    let mail = fixture.dir.path().join("mail");
    let commands: [&[&str]; 3] = [
        &["check-config", "--config", path_str(&fixture.config_path)],
        &["migrate", "check", path_str(&mail)],
        &["apop-digest", "<1.2@x>", "secret"],
    ];
    for args in commands {
        let mut child = Command::new(APOPD)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn apopd");
        drop(child.stdout.take()); // the reader is gone before a byte is written
        let out = child.wait_with_output().expect("wait");
        let stderr = show(&out.stderr);
        assert!(!stderr.contains("panicked") && !stderr.contains("failed printing"), "{args:?}: {stderr}");
        if args[0] == "check-config" {
            assert!(out.status.success() && stderr.contains(": OK"), "check-config still checks: {stderr}");
        }
    }
}
