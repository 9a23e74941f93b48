//! Every human-readable reply text, in every language (RFC 6856 `LANG`).
//!
//! The texts are data: one TOML file per language under `i18n/` (embedded in the binary), plus
//! optional files in the `i18n_dir` the config names, which change texts of a built-in
//! language or add a new one. `en` is the reference: every language has exactly its keys, the
//! same `{placeholders}` in each text, and the same `[CODE]` response code at the start
//! (response codes and protocol tokens are never translated). A [`Key`] names a text; a
//! session looks texts up through [`Texts`], the view of its current language.
//!
//! A leaf module: it names no other module of the crate, so every layer may use it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};

/// The built-in languages, in `LANG` listing order: `(tag, file contents)`. `en` comes first.
const BUILTIN: &[(&str, &str)] = &[
    ("en", include_str!("../i18n/en.toml")),
    ("ja", include_str!("../i18n/ja.toml")),
    ("zh-Hans", include_str!("../i18n/zh-Hans.toml")),
    ("uk", include_str!("../i18n/uk.toml")),
];

/// The tag RFC 2277 reserves for the default language; `LANG i-default` selects English.
pub const I_DEFAULT: &str = "i-default";

macro_rules! keys {
    ($($variant:ident = $name:literal,)*) => {
        /// The name of one reply text; its file key is [`Key::name`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Key { $(#[doc = concat!("The `", $name, "` text (see i18n/en.toml).")] $variant,)* }

        impl Key {
            /// Every key, in file order.
            pub const ALL: &'static [Key] = &[$(Key::$variant,)*];

            /// The key as written in the language files.
            pub fn name(self) -> &'static str {
                match self { $(Key::$variant => $name,)* }
            }
        }
    };
}

keys! {
    LanguageName = "language_name",
    PluralRule = "plural_rule",
    MessagesOne = "messages_one",
    MessagesFew = "messages_few",
    MessagesMany = "messages_many",
    Greeting = "greeting",
    Autologout = "autologout",
    ShuttingDown = "shutting_down",
    LineTooLong = "line_too_long",
    Bye = "bye",
    TooManyErrors = "too_many_errors",
    CapaFollows = "capa_follows",
    TooManyConnections = "too_many_connections",
    TooManyConnectionsIp = "too_many_connections_ip",
    UnknownCommand = "unknown_command",
    EmptyCommand = "empty_command",
    NoArguments = "no_arguments",
    PassNeedsPassword = "pass_needs_password",
    UserNeedsName = "user_needs_name",
    ApopArguments = "apop_arguments",
    BadMechanism = "bad_mechanism",
    BadInitialResponse = "bad_initial_response",
    AuthArguments = "auth_arguments",
    NeedsMessageNumber = "needs_message_number",
    InvalidMessageNumber = "invalid_message_number",
    InvalidLineCount = "invalid_line_count",
    TopArguments = "top_arguments",
    TooManyArguments = "too_many_arguments",
    ArgumentTooLong = "argument_too_long",
    LangArguments = "lang_arguments",
    SendPass = "send_pass",
    GiveUserFirst = "give_user_first",
    ApopDisabled = "apop_disabled",
    AlreadyTls = "already_tls",
    StlsBegin = "stls_begin",
    StlsUnavailable = "stls_unavailable",
    StlsAfterUtf8 = "stls_after_utf8",
    SaslList = "sasl_list",
    SigningOff = "signing_off",
    NotLoggedIn = "not_logged_in",
    PlaintextRefused = "plaintext_refused",
    PlaintextRefusedUse = "plaintext_refused_use",
    Or = "or",
    SaslUnsupported = "sasl_unsupported",
    SaslBadInitial = "sasl_bad_initial",
    SaslCancelled = "sasl_cancelled",
    SaslBadBase64 = "sasl_bad_base64",
    SaslNotRunning = "sasl_not_running",
    Throttled = "throttled",
    AuthFailed = "auth_failed",
    LoginDelay = "login_delay",
    LoginOk = "login_ok",
    InUse = "in_use",
    UnsafeMailbox = "unsafe_mailbox",
    CannotOpen = "cannot_open",
    CredentialsUnavailable = "credentials_unavailable",
    Utf8Names = "utf8_names",
    SaslNotText = "sasl_not_text",
    CramArguments = "cram_arguments",
    SaslInternal = "sasl_internal",
    ScramNotUtf8 = "scram_not_utf8",
    ScramExpectedEmpty = "scram_expected_empty",
    SaslFinished = "sasl_finished",
    ScramBadFirst = "scram_bad_first",
    ScramChannelBinding = "scram_channel_binding",
    ScramFirstFields = "scram_first_fields",
    ScramBadName = "scram_bad_name",
    ScramBadNonce = "scram_bad_nonce",
    ScramFinalProof = "scram_final_proof",
    ScramFinalFields = "scram_final_fields",
    ScramBadCbind = "scram_bad_cbind",
    ScramBadProof = "scram_bad_proof",
    CramNoInitial = "cram_no_initial",
    SaslBadName = "sasl_bad_name",
    PlainFormat = "plain_format",
    SaslNameNotUtf8 = "sasl_name_not_utf8",
    PlainEmpty = "plain_empty",
    MessageDeleted = "message_deleted",
    NoSuchMessage = "no_such_message",
    AlreadyLoggedIn = "already_logged_in",
    ListOk = "list_ok",
    UidlFollows = "uidl_follows",
    DeleOk = "dele_ok",
    RsetOk = "rset_ok",
    RetrOk = "retr_ok",
    TopOk = "top_ok",
    CannotReadN = "cannot_read_n",
    CannotRead = "cannot_read",
    SigningOffDeleted = "signing_off_deleted",
    DeleteFailedSome = "delete_failed_some",
    DeleteFailed = "delete_failed",
    LangListing = "lang_listing",
    LangDefault = "lang_default",
    LangChanged = "lang_changed",
    LangUnknown = "lang_unknown",
    Utf8Ok = "utf8_ok",
    Utf8AfterLogin = "utf8_after_login",
    HintUnknownCommand = "hint_unknown_command",
    HintNoArguments = "hint_no_arguments",
    HintNeedsMessageNumber = "hint_needs_message_number",
    HintInvalidMessageNumber = "hint_invalid_message_number",
    HintTop = "hint_top",
    HintApopArguments = "hint_apop_arguments",
    HintPassAfterUser = "hint_pass_after_user",
    HintNotLoggedIn = "hint_not_logged_in",
    HintLoggedIn = "hint_logged_in",
    HintDeleted = "hint_deleted",
    HintNoSuchMessage = "hint_no_such_message",
    HintApopDigest = "hint_apop_digest",
}

/// How a language puts a count with its noun (the `plural_rule` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plural {
    /// `one` for 1, `many` otherwise (English).
    OneOther,
    /// `one` for 1, 21, 31…; `few` for 2–4, 22–24…; `many` otherwise (Ukrainian, Russian).
    EastSlavic,
    /// Always `many` (Japanese, Chinese).
    None,
}

impl Plural {
    fn parse(rule: &str) -> Option<Plural> {
        match rule {
            "one_other" => Some(Plural::OneOther),
            "east_slavic" => Some(Plural::EastSlavic),
            "none" => Some(Plural::None),
            _ => None,
        }
    }

    /// The `messages_*` key for a count of `n`.
    fn key(self, n: u64) -> Key {
        match self {
            Plural::OneOther if n == 1 => Key::MessagesOne,
            Plural::EastSlavic if n % 10 == 1 && n % 100 != 11 => Key::MessagesOne,
            Plural::EastSlavic if (2..=4).contains(&(n % 10)) && !(12..=14).contains(&(n % 100)) => Key::MessagesFew,
            _ => Key::MessagesMany,
        }
    }
}

/// One language: its tag and every text, indexed by [`Key`].
#[derive(Debug, Clone)]
pub struct Language {
    tag: String,
    texts: Vec<Box<str>>,
    plural: Plural,
}

impl Language {
    /// The language tag (RFC 5646), e.g. `zh-Hans`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The text for `key`.
    pub fn text(&self, key: Key) -> &str {
        &self.texts[key as usize]
    }
}

/// A language file or directory that cannot be used; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The directory or a file in it cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A file is not a TOML table of strings.
    #[error("{file}: not a table of text strings: {source}")]
    Syntax {
        /// The file.
        file: String,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A file breaks a rule (missing or unknown key, placeholders, response code, tag).
    #[error("{file}: {problem}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong, naming the key.
        problem: String,
    },
}

/// Every language the server speaks; `en` is index 0.
#[derive(Debug, Clone)]
pub struct Catalog {
    languages: Vec<Language>,
}

impl Catalog {
    /// The built-in languages only.
    pub fn builtin() -> Result<Catalog, CatalogError> {
        Catalog::load(None)
    }

    /// The built-in languages, changed and extended by the `<tag>.toml` files in `dir`.
    pub fn load(dir: Option<&Path>) -> Result<Catalog, CatalogError> {
        let mut tables = Vec::new();
        for (tag, text) in BUILTIN {
            let file = format!("i18n/{tag}.toml (built in)");
            tables.push((tag.to_string(), parse_table(&file, text)?, file));
        }
        if let Some(dir) = dir {
            for (tag, path) in language_files(dir)? {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| CatalogError::Read { path: path.clone(), source })?;
                let file = path.display().to_string();
                let table = parse_table(&file, &text)?;
                match tables.iter_mut().find(|(t, _, _)| *t == tag) {
                    // A built-in language: the file's texts replace the built-in ones.
                    Some((_, builtin, name)) => {
                        builtin.extend(table);
                        *name = file;
                    }
                    None => tables.push((tag, table, file)),
                }
            }
        }
        let reference = tables[0].1.clone();
        let languages = tables
            .into_iter()
            .map(|(tag, table, file)| {
                check(&tag, table, &reference).map_err(|problem| CatalogError::Invalid { file, problem })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Catalog { languages })
    }

    /// Every language, in listing order.
    pub fn languages(&self) -> &[Language] {
        &self.languages
    }

    /// The index of the language with exactly this tag (ASCII case ignored).
    pub fn index_of(&self, tag: &str) -> Option<usize> {
        self.languages.iter().position(|l| l.tag.eq_ignore_ascii_case(tag))
    }

    /// The language a `LANG` range selects, with the tag to answer, or `None`.
    ///
    /// A basic language range (RFC 4647) selects the language whose tag equals it, else the
    /// first whose tag starts with it and a `-` (`zh` selects `zh-Hans`); a range that
    /// matches nothing is shortened by its last subtag and tried again (`ja-JP` selects
    /// `ja`). `i-default` selects English. `*` is the session's business (the configured
    /// default), not handled here.
    pub fn select(&self, range: &str) -> Option<(usize, &str)> {
        if range.eq_ignore_ascii_case(I_DEFAULT) {
            return Some((0, I_DEFAULT));
        }
        let mut range = range;
        loop {
            let exact = self.index_of(range);
            let prefix = || {
                self.languages.iter().position(|l| {
                    l.tag.len() > range.len()
                        && l.tag.as_bytes()[range.len()] == b'-'
                        && l.tag.get(..range.len()).is_some_and(|p| p.eq_ignore_ascii_case(range))
                })
            };
            if let Some(i) = exact.or_else(prefix) {
                return Some((i, &self.languages[i].tag));
            }
            range = &range[..range.rfind('-')?];
        }
    }

    /// The texts of language `index` (0, English, if out of range), with or without hints.
    pub fn texts(&self, index: usize, hints: bool) -> Texts<'_> {
        Texts { language: self.languages.get(index).unwrap_or(&self.languages[0]), hints }
    }
}

/// `(tag, path)` of every `*.toml` file in `dir`, sorted by tag.
fn language_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, CatalogError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CatalogError::Read { path: dir.to_owned(), source })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| CatalogError::Read { path: dir.to_owned(), source })?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let tag = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            if !is_tag(&tag) {
                let problem = format!("{tag:?} is not a language tag (letters, digits and '-', like pt-BR)");
                return Err(CatalogError::Invalid { file: path.display().to_string(), problem });
            }
            files.push((tag, path));
        }
    }
    files.sort();
    Ok(files)
}

/// A plausible RFC 5646 tag: subtags of 1 to 8 letters or digits joined by `-`, not `i-default`.
fn is_tag(tag: &str) -> bool {
    !tag.eq_ignore_ascii_case(I_DEFAULT)
        && tag.split('-').all(|sub| (1..=8).contains(&sub.len()) && sub.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn parse_table(file: &str, text: &str) -> Result<BTreeMap<String, String>, CatalogError> {
    toml::from_str(text).map_err(|source| CatalogError::Syntax { file: file.to_owned(), source })
}

/// Check one language's table against the reference (`en`) and build it.
fn check(
    tag: &str,
    mut table: BTreeMap<String, String>,
    reference: &BTreeMap<String, String>,
) -> Result<Language, String> {
    if let Some(unknown) = table.keys().find(|k| !Key::ALL.iter().any(|key| key.name() == k.as_str())) {
        return Err(format!("unknown key {unknown:?}"));
    }
    let mut texts = Vec::with_capacity(Key::ALL.len());
    for key in Key::ALL {
        let name = key.name();
        let text = table.remove(name).ok_or_else(|| format!("missing key {name:?}"))?;
        let english = reference.get(name).map(String::as_str).unwrap_or_default();
        if placeholders(&text) != placeholders(english) {
            return Err(format!(
                "key {name:?} must use the placeholders {:?}, as en does (found {:?})",
                placeholders(english),
                placeholders(&text)
            ));
        }
        if response_code(&text) != response_code(english) {
            return Err(format!("key {name:?} must start with {:?}, as en does", response_code(english).unwrap_or("")));
        }
        if text.contains(['\r', '\n']) {
            return Err(format!("key {name:?} must be one line"));
        }
        texts.push(text.into_boxed_str());
    }
    let rule = &texts[Key::PluralRule as usize];
    let plural =
        Plural::parse(rule).ok_or_else(|| format!("plural_rule {rule:?} is not one_other, east_slavic or none"))?;
    Ok(Language { tag: tag.to_owned(), texts, plural })
}

/// The `[CODE]` a text starts with, if any.
fn response_code(text: &str) -> Option<&str> {
    let end = text.strip_prefix('[')?.find(']')?;
    Some(&text[..end + 2])
}

/// The `{name}` placeholders in a text.
fn placeholders(text: &str) -> BTreeSet<&str> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        if let Some(close) = rest.find('}')
            && is_name(&rest[..close])
        {
            found.insert(&rest[..close]);
            rest = &rest[close + 1..];
        }
    }
    found
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// `template` with each `{name}` replaced by its value in `args`.
pub fn fill(template: &str, args: &[(&str, &dyn fmt::Display)]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').filter(|&close| is_name(&after[..close])) {
            Some(close) => {
                let name = &after[..close];
                match args.iter().find(|(n, _)| *n == name) {
                    Some((_, value)) => {
                        let _ = write!(out, "{value}");
                    }
                    None => out.push_str(&rest[open..open + close + 2]),
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One session's view of the catalog: its current language, and whether hints are on.
#[derive(Debug, Clone, Copy)]
pub struct Texts<'a> {
    language: &'a Language,
    hints: bool,
}

impl<'a> Texts<'a> {
    /// The current language's tag.
    pub fn tag(self) -> &'a str {
        &self.language.tag
    }

    /// The text for `key`, as written.
    pub fn get(self, key: Key) -> &'a str {
        self.language.text(key)
    }

    /// The text for `key` with its placeholders filled.
    pub fn fill(self, key: Key, args: &[(&str, &dyn fmt::Display)]) -> String {
        fill(self.get(key), args)
    }

    /// The text for `key`, followed by the `hint` text when hints are on (same placeholders).
    pub fn hinted(self, key: Key, hint: Key, args: &[(&str, &dyn fmt::Display)]) -> String {
        let mut text = self.fill(key, args);
        if self.hints {
            text.push(' ');
            text.push_str(&self.fill(hint, args));
        }
        text
    }

    /// `n` with the noun "message" in the right form, e.g. `1 message`, `5 messages`.
    pub fn messages(self, n: u64) -> String {
        self.fill(self.language.plural.key(n), &[("n", &n)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_language_has_every_text_with_the_same_placeholders() {
        // Catalog::builtin checks each file against en: keys, placeholders, response codes.
        let catalog = Catalog::builtin().unwrap_or_else(|e| panic!("{e}"));
        let tags: Vec<&str> = catalog.languages().iter().map(Language::tag).collect();
        assert_eq!(tags, ["en", "ja", "zh-Hans", "uk"]);
        for language in catalog.languages() {
            for key in Key::ALL {
                assert!(!language.text(*key).trim().is_empty(), "{} {}", language.tag(), key.name());
            }
            // Clients such as fetchmail read the size from the start of RETR's +OK line.
            assert!(language.text(Key::RetrOk).starts_with("{size} "), "{}", language.tag());
        }
    }

    #[test]
    fn every_key_is_in_the_reference_file_once() {
        let table: BTreeMap<String, String> = toml::from_str(BUILTIN[0].1).unwrap();
        assert_eq!(table.len(), Key::ALL.len());
        for key in Key::ALL {
            assert!(table.contains_key(key.name()), "{}", key.name());
        }
    }

    #[test]
    fn a_missing_text_or_a_wrong_placeholder_is_refused() {
        let en: BTreeMap<String, String> = toml::from_str(BUILTIN[0].1).unwrap();
        let mut missing = en.clone();
        missing.remove("retr_ok");
        assert!(check("xx", missing, &en).unwrap_err().contains("retr_ok"));
        let mut renamed = en.clone();
        renamed.insert("retr_ok".into(), "{octets} octets".into());
        assert!(check("xx", renamed, &en).unwrap_err().contains("placeholders"));
        let mut uncoded = en.clone();
        uncoded.insert("in_use".into(), "busy".into());
        assert!(check("xx", uncoded, &en).unwrap_err().contains("[IN-USE]"));
        let mut unknown = en.clone();
        unknown.insert("retr_okk".into(), "x".into());
        assert!(check("xx", unknown, &en).unwrap_err().contains("retr_okk"));
    }

    #[test]
    fn files_in_the_directory_change_and_add_languages() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ja.toml"), "bye = \"またね\"\n").unwrap();
        let catalog = Catalog::load(Some(dir.path())).unwrap();
        let ja = catalog.index_of("ja").unwrap();
        assert_eq!(catalog.texts(ja, false).get(Key::Bye), "またね");
        // A new language must be complete.
        std::fs::write(dir.path().join("de.toml"), "bye = \"tschüss\"\n").unwrap();
        let e = Catalog::load(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("de.toml") && e.contains("missing key"), "{e}");
        let mut full = BUILTIN[0].1.replace("\"bye\"", "\"tschüss\"");
        full.push_str("# Deutsch\n");
        std::fs::write(dir.path().join("de.toml"), full).unwrap();
        let catalog = Catalog::load(Some(dir.path())).unwrap();
        assert_eq!(catalog.languages().last().unwrap().tag(), "de");
        std::fs::write(dir.path().join("not a tag.toml"), "").unwrap();
        assert!(Catalog::load(Some(dir.path())).is_err());
    }

    #[test]
    fn ranges_select_languages() {
        let c = Catalog::builtin().unwrap();
        let tag = |range: &str| c.select(range).map(|(_, t)| t.to_owned());
        assert_eq!(tag("ja").as_deref(), Some("ja"));
        assert_eq!(tag("JA").as_deref(), Some("ja"));
        assert_eq!(tag("ja-JP").as_deref(), Some("ja"));
        assert_eq!(tag("zh").as_deref(), Some("zh-Hans"));
        assert_eq!(tag("zh-hans-CN").as_deref(), Some("zh-Hans"));
        assert_eq!(tag("en-GB").as_deref(), Some("en"));
        assert_eq!(tag("i-default").as_deref(), Some("i-default"));
        assert_eq!(tag("uk-UA").as_deref(), Some("uk"));
        assert_eq!(tag("de"), None);
        assert_eq!(tag("z"), None);
    }

    #[test]
    fn fill_and_plurals() {
        assert_eq!(fill("{a} and {b} {c} {not a name} {", &[("a", &1), ("b", &"x")]), "1 and x {c} {not a name} {");
        let c = Catalog::builtin().unwrap();
        let en = c.texts(0, false);
        assert_eq!([en.messages(0), en.messages(1), en.messages(2)], ["0 messages", "1 message", "2 messages"]);
        let uk = c.texts(c.index_of("uk").unwrap(), false);
        let forms: Vec<String> = [1, 2, 5, 11, 21, 22, 25, 112].iter().map(|&n| uk.messages(n)).collect();
        assert_eq!(
            forms,
            ["1 лист", "2 листи", "5 листів", "11 листів", "21 лист", "22 листи", "25 листів", "112 листів"]
        );
    }

    #[test]
    fn hints_only_when_on() {
        let c = Catalog::builtin().unwrap();
        let args: &[(&str, &dyn fmt::Display)] = &[("n", &3)];
        assert_eq!(c.texts(0, false).hinted(Key::MessageDeleted, Key::HintDeleted, args), "message 3 is deleted");
        assert!(c.texts(0, true).hinted(Key::MessageDeleted, Key::HintDeleted, args).contains("RSET"));
    }
}
