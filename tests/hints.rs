//! `lab_hints = true` over TCP: each kind of mistake gets its hint, in the session's language;
//! hints are off by default; and a failed login looks the same, in text and in time, whether
//! the user exists or not, in every language.

mod common;
use common::*;

use std::time::{Duration, Instant};

use apopd::i18n::{Catalog, Key, Texts};

fn catalog() -> Catalog {
    Catalog::builtin().expect("built-in languages")
}

fn err(text: impl AsRef<str>) -> String {
    format!("-ERR {}", text.as_ref())
}

/// `-ERR <text> <hint>`, as the server sends it with hints on.
fn hinted(t: Texts<'_>, key: Key, hint: Key, args: &[(&str, &dyn std::fmt::Display)]) -> String {
    err(format!("{} {}", t.fill(key, args), t.fill(hint, args)))
}

/// Every hint case in one session of language `t`.
async fn hint_cases(c: &mut Client, t: Texts<'_>) {
    assert_eq!(
        c.cmd("STAT").await,
        hinted(t, Key::NotLoggedIn, Key::HintNotLoggedIn, &[("command", &"STAT")]),
        "a command in the wrong state (before login)"
    );
    assert_eq!(c.cmd("PASS x").await, hinted(t, Key::GiveUserFirst, Key::HintPassAfterUser, &[]), "PASS without USER");
    let unknown = hinted(t, Key::UnknownCommand, Key::HintUnknownCommand, &[]);
    assert_eq!(c.cmd("HELO").await, unknown, "unknown command");
    assert!(t.get(Key::HintUnknownCommand).contains("retr = RETR"), "case does not matter");
    assert_eq!(
        c.cmd("APOP alice").await,
        hinted(t, Key::ApopArguments, Key::HintApopArguments, &[]),
        "APOP without its digest"
    );
    // A malformed digest: the hint explains the digest's form, the same for every user.
    let malformed = hinted(t, Key::AuthFailed, Key::HintApopDigest, &[]);
    assert_eq!(c.cmd("APOP alice c4c9334bac560ecc979e58001b3e22f").await, malformed, "31 digits");
    assert_eq!(c.cmd("APOP nobody c4c9334bac560ecc979e58001b3e22fg").await, malformed, "not hex");
    assert!(t.get(Key::HintApopDigest).contains("printf '%s%s' '<timestamp>' secret | md5sum"));

    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK "));
    assert_eq!(
        c.cmd("user alice").await,
        hinted(t, Key::AlreadyLoggedIn, Key::HintLoggedIn, &[("command", &"USER")]),
        "a command in the wrong state (after login)"
    );
    assert_eq!(
        c.cmd("RETR").await,
        hinted(t, Key::NeedsMessageNumber, Key::HintNeedsMessageNumber, &[("command", &"RETR")]),
        "missing argument"
    );
    assert_eq!(
        c.cmd("RETR one").await,
        hinted(t, Key::InvalidMessageNumber, Key::HintInvalidMessageNumber, &[]),
        "bad number"
    );
    assert_eq!(c.cmd("TOP 1").await, hinted(t, Key::TopArguments, Key::HintTop, &[]), "TOP without a line count");
    assert_eq!(
        c.cmd("LIST 99").await,
        hinted(t, Key::NoSuchMessage, Key::HintNoSuchMessage, &[("count", &5)]),
        "no such message"
    );
    assert_eq!(
        c.cmd("NOOP 1").await,
        hinted(t, Key::NoArguments, Key::HintNoArguments, &[("command", &"NOOP")]),
        "arguments where there are none"
    );
    assert!(c.cmd("DELE 2").await.starts_with("+OK "));
    for command in ["RETR 2", "TOP 2 0", "LIST 2", "UIDL 2", "DELE 2"] {
        assert_eq!(
            c.cmd(command).await,
            hinted(t, Key::MessageDeleted, Key::HintDeleted, &[("n", &2)]),
            "{command} of a message marked deleted"
        );
    }
    assert!(t.get(Key::HintDeleted).contains("RSET"));
    assert!(c.cmd("RSET").await.starts_with("+OK "));
    assert!(c.cmd("QUIT").await.starts_with("+OK "));
}

#[tokio::test]
async fn each_mistake_gets_its_hint_in_every_language() {
    let catalog = catalog();
    let server = TestServer::start_with("lab_hints = true").await;
    for (i, language) in catalog.languages().iter().enumerate() {
        let mut c = server.connect().await;
        assert!(c.cmd(&format!("LANG {}", language.tag())).await.starts_with("+OK "));
        hint_cases(&mut c, catalog.texts(i, true)).await;
    }
}

#[tokio::test]
async fn hints_are_off_by_default() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.cmd("STAT").await, "-ERR not logged in yet: use USER/PASS, APOP or AUTH first");
    assert_eq!(c.cmd("HELO").await, "-ERR unknown command");
    assert_eq!(c.cmd("APOP alice 123").await, "-ERR [AUTH] invalid user name or password");
    assert!(c.apop("alice", ALICE_APOP_SECRET).await.starts_with("+OK "));
    assert_eq!(c.cmd("RETR").await, "-ERR RETR needs a message number");
    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 marked for deletion");
    assert_eq!(c.cmd("RETR 1").await, "-ERR message 1 is deleted");
}

/// The reply to a failed login and how long it took.
async fn timed(c: &mut Client, lines: &[String]) -> (String, Duration) {
    let start = Instant::now();
    let mut reply = String::new();
    for line in lines {
        reply = c.cmd(line).await;
    }
    (reply, start.elapsed())
}

#[tokio::test]
async fn unknown_user_and_wrong_password_look_alike_in_every_language() {
    // A fixed delay (no doubling), so every failure should take the same time.
    let server =
        TestServer::start_with("lab_hints = true\nauth_failure_delay_ms = 200\nauth_failure_delay_max_ms = 200").await;
    let catalog = catalog();
    for language in catalog.languages() {
        let tag = language.tag();
        let mut c = server.connect().await;
        assert!(c.cmd(&format!("LANG {tag}")).await.starts_with("+OK "));
        let wrong_digest = "0123456789abcdef0123456789abcdef";
        let attempts = |user: &str| {
            [
                vec![format!("USER {user}"), "PASS not-the-password".to_owned()],
                vec![format!("APOP {user} {wrong_digest}")],
                vec![format!("APOP {user} short")],
            ]
        };
        for (known, unknown) in attempts("alice").into_iter().zip(attempts("nobody")) {
            let mut times = (Vec::new(), Vec::new());
            for _ in 0..2 {
                let (a, ta) = timed(&mut c, &known).await;
                let (b, tb) = timed(&mut c, &unknown).await;
                assert_eq!(a, b, "{tag}: {known:?} and {unknown:?} must get the same reply");
                assert!(a.starts_with("-ERR [AUTH] "), "{tag}: {a}");
                times.0.push(ta);
                times.1.push(tb);
            }
            let (ta, tb) = (*times.0.iter().min().unwrap(), *times.1.iter().min().unwrap());
            assert!(ta >= Duration::from_millis(200) && tb >= Duration::from_millis(200), "{tag}: {ta:?} {tb:?}");
            let gap = ta.abs_diff(tb);
            assert!(gap < Duration::from_millis(150), "{tag} {known:?}: {ta:?} vs {tb:?}");
        }
    }
}
