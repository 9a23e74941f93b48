//! Languages over TCP (RFC 6856): every language answers every kind of reply in the text its
//! data file gives; `LANG` lists and selects languages; `UTF8` only before login, and UTF-8
//! user names only after it.

mod common;
use common::*;

use apopd::i18n::{Catalog, Key, Texts};

fn catalog() -> Catalog {
    Catalog::builtin().expect("built-in languages")
}

fn ok(text: impl AsRef<str>) -> String {
    format!("+OK {}", text.as_ref())
}

fn err(text: impl AsRef<str>) -> String {
    format!("-ERR {}", text.as_ref())
}

/// The scripted session of one language: every kind of reply, compared with the data file.
async fn script(c: &mut Client, t: Texts<'_>) {
    // AUTHORIZATION.
    assert_eq!(c.multi("CAPA").await.0, ok(t.get(Key::CapaFollows)));
    assert_eq!(c.cmd("STAT").await, err(t.get(Key::NotLoggedIn)));
    assert_eq!(c.cmd("PASS x").await, err(t.get(Key::GiveUserFirst)));
    assert_eq!(c.cmd("HELO").await, err(t.get(Key::UnknownCommand)));
    assert_eq!(c.cmd("").await, err(t.get(Key::EmptyCommand)));
    assert_eq!(c.cmd("USER").await, err(t.get(Key::UserNeedsName)));
    assert_eq!(c.multi("AUTH").await.0, ok(t.get(Key::SaslList)));
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ ");
    assert_eq!(c.cmd("*").await, err(t.get(Key::SaslCancelled)));
    assert_eq!(c.cmd("AUTH GSSAPI").await, err(t.get(Key::SaslUnsupported)));
    assert_eq!(c.cmd("AUTH PLAIN !!!").await, err(t.get(Key::SaslBadInitial)));
    assert_eq!(c.cmd("AUTH PLAIN AGFsaWNl").await, err(t.get(Key::PlainFormat)), "a SASL format error");
    assert_eq!(c.cmd(&"X".repeat(300)).await, err(t.fill(Key::LineTooLong, &[("max", &255)])));
    assert_eq!(c.cmd("USER nobody").await, ok(t.get(Key::SendPass)));
    assert_eq!(c.cmd("PASS wrong").await, err(t.get(Key::AuthFailed)));
    assert_eq!(c.cmd("USER alice").await, ok(t.get(Key::SendPass)));
    let login = c.cmd(&format!("PASS {ALICE_PASSWORD}")).await;
    let messages = t.messages(5);
    assert_eq!(login, ok(t.fill(Key::LoginOk, &[("user", &"alice"), ("messages", &messages), ("octets", &3038)])));

    // TRANSACTION.
    assert_eq!(c.cmd("STAT").await, "+OK 5 3038");
    let (status, lines) = c.multi("LIST").await;
    assert_eq!(status, ok(t.fill(Key::ListOk, &[("messages", &messages), ("octets", &3038)])));
    let size: u64 = lines[0].split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(c.multi("UIDL").await.0, ok(t.get(Key::UidlFollows)));
    assert_eq!(c.cmd("LIST 9").await, err(t.fill(Key::NoSuchMessage, &[("count", &5)])));
    assert_eq!(c.multi("RETR 1").await.0, ok(t.fill(Key::RetrOk, &[("size", &size)])));
    assert_eq!(c.multi("TOP 1 0").await.0, ok(t.get(Key::TopOk)));
    assert_eq!(c.cmd("DELE 1").await, ok(t.fill(Key::DeleOk, &[("n", &1)])));
    assert_eq!(c.cmd("RETR 1").await, err(t.fill(Key::MessageDeleted, &[("n", &1)])));
    assert_eq!(c.cmd("RETR").await, err(t.fill(Key::NeedsMessageNumber, &[("command", &"RETR")])));
    assert_eq!(c.cmd("RETR x").await, err(t.get(Key::InvalidMessageNumber)));
    assert_eq!(c.cmd("TOP 1").await, err(t.get(Key::TopArguments)));
    assert_eq!(c.cmd("NOOP now").await, err(t.fill(Key::NoArguments, &[("command", &"NOOP")])));
    assert_eq!(c.cmd("USER bob").await, err(t.get(Key::AlreadyLoggedIn)));
    assert_eq!(c.cmd("UTF8").await, err(t.get(Key::Utf8AfterLogin)));
    assert_eq!(c.cmd("DELE 2").await, ok(t.fill(Key::DeleOk, &[("n", &2)])));
    assert_eq!(c.cmd("RSET").await, ok(t.fill(Key::RsetOk, &[("messages", &messages), ("octets", &3038)])));
    assert_eq!(c.cmd("NOOP").await, "+OK");
    assert_eq!(c.cmd("QUIT").await, ok(t.fill(Key::SigningOffDeleted, &[("messages", &t.messages(0))])));
}

#[tokio::test]
async fn every_language_answers_every_reply_in_its_own_text() {
    let catalog = catalog();
    let english = catalog.texts(0, false);
    for (i, language) in catalog.languages().iter().enumerate() {
        let tag = language.tag();
        let server = TestServer::start_with(&format!("language = \"{tag}\"")).await;
        let t = catalog.texts(i, false);
        let mut c = server.connect().await;
        // The greeting is in the configured language, the APOP timestamp after it.
        assert!(c.greeting.starts_with(&format!("+OK {} <", t.get(Key::Greeting))), "{tag}: {}", c.greeting);
        script(&mut c, t).await;

        let mut c = server.connect().await;
        assert_eq!(c.cmd("QUIT").await, ok(t.get(Key::SigningOff)), "{tag}");
        if tag != "en" {
            // Really translated, not English under another tag.
            for key in [Key::Greeting, Key::AuthFailed, Key::NotLoggedIn, Key::RetrOk, Key::LangChanged] {
                assert_ne!(t.get(key), english.get(key), "{tag}: {}", key.name());
            }
        }
    }
}

#[tokio::test]
async fn lang_lists_selects_and_resets() {
    let catalog = catalog();
    let server = TestServer::start_with("language = \"uk\"").await;
    let uk = catalog.texts(catalog.index_of("uk").unwrap(), false);
    let ja = catalog.texts(catalog.index_of("ja").unwrap(), false);
    let zh = catalog.texts(catalog.index_of("zh-Hans").unwrap(), false);
    let en = catalog.texts(0, false);
    let mut c = server.connect().await;

    // RFC 6856 §3: LANG alone is a multi-line list of `tag SP description`, in the current language.
    let (status, lines) = c.multi("LANG").await;
    assert_eq!(status, ok(uk.get(Key::LangListing)));
    let default = format!("i-default {}", uk.get(Key::LangDefault));
    assert_eq!(lines, ["en English", "ja 日本語", "zh-Hans 简体中文", "uk Українська", default.as_str()]);

    // `+OK <exact tag selected> <text in the new language>`; the next replies follow it.
    assert_eq!(c.cmd("LANG ja").await, ok(format!("ja {}", ja.get(Key::LangChanged))));
    assert_eq!(c.cmd("STAT").await, err(ja.get(Key::NotLoggedIn)));
    assert_eq!(c.cmd("lang JA-jp").await, ok(format!("ja {}", ja.get(Key::LangChanged))));
    assert_eq!(c.cmd("LANG zh").await, ok(format!("zh-Hans {}", zh.get(Key::LangChanged))));
    assert_eq!(c.cmd("LANG zh-Hans-CN").await, ok(format!("zh-Hans {}", zh.get(Key::LangChanged))));
    // An unknown language is refused in the current language, which stays.
    assert_eq!(c.cmd("LANG de").await, err(zh.get(Key::LangUnknown)));
    assert_eq!(c.cmd("LANG de_DE").await, err(zh.get(Key::LangArguments)));
    assert_eq!(c.cmd("STAT").await, err(zh.get(Key::NotLoggedIn)));
    assert_eq!(c.cmd("LANG i-default").await, ok(format!("i-default {}", en.get(Key::LangChanged))));
    assert_eq!(c.cmd("STAT").await, err(en.get(Key::NotLoggedIn)));
    // `*` is the server's default: the configured language.
    assert_eq!(c.cmd("LANG *").await, ok(format!("uk {}", uk.get(Key::LangChanged))));
    assert_eq!(c.cmd("STAT").await, err(uk.get(Key::NotLoggedIn)));

    // LANG works in TRANSACTION too, and response codes stay as they are.
    assert_eq!(c.cmd("LANG en").await, ok(format!("en {}", en.get(Key::LangChanged))));
    assert!(c.login("alice", ALICE_PASSWORD).await.starts_with("+OK alice's maildrop has 5 messages"));
    assert_eq!(c.cmd("LANG ja").await, ok(format!("ja {}", ja.get(Key::LangChanged))));
    assert_eq!(c.multi("LANG").await.0, ok(ja.get(Key::LangListing)));
    assert_eq!(c.cmd("DELE 1").await, ok(ja.fill(Key::DeleOk, &[("n", &1)])));
    let mut other = server.connect().await;
    assert_eq!(other.login("alice", ALICE_PASSWORD).await, err(uk.get(Key::InUse)));
    assert!(other.cmd("QUIT").await.starts_with("+OK "));
    assert_eq!(c.cmd("QUIT").await, ok(ja.fill(Key::SigningOffDeleted, &[("messages", &ja.messages(1))])));
}

#[tokio::test]
async fn utf8_only_in_authorization_and_never_before_stls() {
    let server = TestServer::start_with(TLS_CONFIG).await;
    let catalog = catalog();
    let en = catalog.texts(0, false);
    let mut c = server.connect().await;
    assert_eq!(c.cmd("UTF8 now").await, err(en.fill(Key::NoArguments, &[("command", &"UTF8")])));
    assert_eq!(c.cmd("UTF8").await, ok(en.get(Key::Utf8Ok)));
    assert_eq!(c.cmd("STLS").await, err(en.get(Key::StlsAfterUtf8)));
    assert_eq!(c.cmd("UTF8").await, ok(en.get(Key::Utf8Ok)), "UTF8 again is harmless");

    // STLS first, then UTF8 over TLS: fine.
    let c = server.connect().await;
    let mut c = c.starttls().await;
    assert_eq!(c.cmd("UTF8").await, ok(en.get(Key::Utf8Ok)));
    assert!(c.login("alice", ALICE_PASSWORD).await.starts_with("+OK "));
    assert_eq!(c.cmd("UTF8").await, err(en.get(Key::Utf8AfterLogin)));
    let (_, caps) = c.multi("CAPA").await;
    assert!(caps.iter().any(|l| l == "UTF8 USER") && caps.iter().any(|l| l == "LANG"), "{caps:?}");
}

/// A UTF-8 user name with APOP secret `himitsu` and one message, in a demo copy.
const UTF8_USER: &str = "ユーザー";
const UTF8_MESSAGE: &str = "Subject: =?UTF-8?B?5pel5pys?=\r\n\r\nこんにちは\r\n";

fn fixture_with_utf8_user(extra: &str) -> Fixture {
    let fixture = Fixture::new(extra);
    let secrets = fixture.dir.path().join("apop-secrets");
    let mut text = std::fs::read_to_string(&secrets).unwrap();
    text.push_str(&format!("{UTF8_USER}:himitsu\n"));
    std::fs::write(&secrets, text).unwrap();
    let maildir = fixture.maildir(UTF8_USER);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(maildir.join("new/1700000000.M1P1.host"), UTF8_MESSAGE).unwrap();
    fixture
}

#[tokio::test]
async fn utf8_user_names_are_accepted_only_after_utf8() {
    let (name, message) = (UTF8_USER, UTF8_MESSAGE);
    let server = TestServer::start_on(fixture_with_utf8_user("")).await;
    let catalog = catalog();
    let en = catalog.texts(0, false);

    let mut c = server.connect().await;
    assert_eq!(c.cmd(&format!("USER {name}")).await, err(en.get(Key::Utf8Names)));
    assert_eq!(c.apop(name, "himitsu").await, err(en.get(Key::Utf8Names)));
    assert_eq!(c.cmd("UTF8").await, ok(en.get(Key::Utf8Ok)));
    assert_eq!(c.cmd(&format!("USER {name}")).await, ok(en.get(Key::SendPass)));
    assert_eq!(c.apop(name, "wrong").await, err(en.get(Key::AuthFailed)));
    assert_eq!(
        c.apop(name, "himitsu").await,
        format!("+OK {name}'s maildrop has 1 message ({} octets)", message.len())
    );
    let (_, body) = c.multi("RETR 1").await;
    assert_eq!(body, ["Subject: =?UTF-8?B?5pel5pys?=", "こんにちは"]);

    // A UTF-8 name that could be a path is refused like any unknown user.
    let mut c = server.connect().await;
    assert_eq!(c.cmd("UTF8").await, ok(en.get(Key::Utf8Ok)));
    assert_eq!(c.apop("．．／alice", "tanstaaf").await, err(en.get(Key::AuthFailed)));
}

#[tokio::test]
async fn i18n_dir_changes_and_adds_languages() {
    let fixture = Fixture::new("language = \"eo\"\ni18n_dir = \"texts\"");
    let dir = fixture.dir.path().join("texts");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("ja.toml"), "greeting = \"ようこそ、POP3 の教室へ\"\n").unwrap();
    // A new language: a complete file (here English texts with an Esperanto greeting).
    let en = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/i18n/en.toml")).unwrap();
    let eo = en
        .replace("language_name = \"English\"", "language_name = \"Esperanto\"")
        .replace("greeting = \"apopd POP3 server ready\"", "greeting = \"apopd POP3-servilo pretas\"");
    std::fs::write(dir.join("eo.toml"), eo).unwrap();
    let server = TestServer::start_on(fixture).await;
    let mut c = server.connect().await;
    assert!(c.greeting.starts_with("+OK apopd POP3-servilo pretas <"), "{}", c.greeting);
    let (_, lines) = c.multi("LANG").await;
    assert!(lines.contains(&"eo Esperanto".to_owned()), "{lines:?}");
    assert_eq!(c.cmd("LANG ja").await, ok(format!("ja {}", catalog().texts(1, false).get(Key::LangChanged))));
}

#[tokio::test]
async fn python_poplib_sends_utf8_and_lang() {
    if !have_program("python3", "python3") {
        return;
    }
    let server = TestServer::start_on(fixture_with_utf8_user("")).await;
    // poplib implements RFC 6856's UTF8 (POP3.utf8) and sends commands as UTF-8.
    let script = r#"
import poplib, sys
p = poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=30)
caps = p.capa()
assert caps.get('UTF8') == ['USER'] and caps.get('LANG') == [], caps
print(p.utf8().decode())
print(p._shortcmd('LANG ja').decode())
print(p.apop(sys.argv[3], 'himitsu').decode())
print(p.retr(1)[1][2].decode())
print(p.quit().decode())
"#;
    let addr = server.addr;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script, &addr.ip().to_string(), &addr.port().to_string(), UTF8_USER])
            .env("PYTHONIOENCODING", "utf-8")
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let catalog = catalog();
    let ja = catalog.texts(catalog.index_of("ja").unwrap(), false);
    let expected = [
        ok(catalog.texts(0, false).get(Key::Utf8Ok)),
        ok(format!("ja {}", ja.get(Key::LangChanged))),
        ok(ja.fill(
            Key::LoginOk,
            &[("user", &UTF8_USER), ("messages", &ja.messages(1)), ("octets", &UTF8_MESSAGE.len())],
        )),
        "こんにちは".to_owned(),
        ok(ja.fill(Key::SigningOffDeleted, &[("messages", &ja.messages(0))])),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);
}
