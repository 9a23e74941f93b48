//! RFC 6856 in a session: `LANG` lists and selects the reply language (both states), and
//! `UTF8` turns on UTF-8 user names (AUTHORIZATION only). See docs/languages.md.

use super::Context;
use crate::i18n::{I_DEFAULT, Key};
use crate::protocol::response;

/// `LANG` alone: a multi-line `+OK`, one `tag description` line per language (each described
/// in its own language), then `i-default`.
pub(super) fn listing(cx: &Context) -> Vec<u8> {
    let t = cx.texts();
    let languages = cx.shared.i18n.languages().iter();
    let lines = languages.map(|l| format!("{} {}", l.tag(), l.text(Key::LanguageName)));
    let default = std::iter::once(format!("{I_DEFAULT} {}", t.get(Key::LangDefault)));
    response::multi_line(t.get(Key::LangListing), lines.chain(default))
}

/// `LANG range`: switch and answer `+OK <tag> <text>` in the new language; `*` is the
/// configured `language`. An unknown range keeps the language and answers `-ERR`.
pub(super) fn select(cx: &mut Context, range: &str) -> Vec<u8> {
    let shared = cx.shared.clone();
    let chosen = match range {
        "*" => Some((shared.default_language, shared.i18n.languages()[shared.default_language].tag())),
        _ => shared.i18n.select(range),
    };
    let Some((index, tag)) = chosen else {
        return response::err(cx.texts().get(Key::LangUnknown));
    };
    cx.lang = index;
    tracing::debug!(language = tag, "LANG");
    response::ok(&format!("{tag} {}", cx.texts().get(Key::LangChanged)))
}

/// `UTF8`: accepted before login, refused after it.
pub(super) fn utf8(cx: &mut Context, logged_in: bool) -> Vec<u8> {
    if logged_in {
        let args: &[(&str, &dyn std::fmt::Display)] = &[("command", &"UTF8")];
        return response::err(&cx.texts().hinted(Key::Utf8AfterLogin, Key::HintLoggedIn, args));
    }
    cx.utf8 = true;
    response::ok(cx.texts().get(Key::Utf8Ok))
}
