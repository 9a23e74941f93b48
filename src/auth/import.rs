//! Reading users and their password hashes from a Dovecot passwd-file or /etc/shadow, for
//! `apopd user import` and the read-only report an administrator reads before the switch.
//!
//! Every line is checked before anything is written: one line that cannot be imported stops
//! the whole import, and the error names every such line. Lines for users who have no usable
//! password (locked, empty, `nopassword`) and, in /etc/shadow, `root` are skipped with a notice:
//! they could not log in before either.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::path::Path;

use anyhow::Context;

use super::schemes::{self, SchemeError, Stored};
use crate::store::is_valid_user_name;

/// The shape of the file being imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Dovecot's passwd-file: `user:password:uid:gid:gecos:home:shell:extra`, the password
    /// with a `{SCHEME}` prefix or else a crypt(3) string (Dovecot's default scheme CRYPT).
    DovecotPasswd,
    /// /etc/shadow: `user:hash:lastchg:…`, the hash a crypt(3) string.
    Shadow,
}

impl Source {
    /// How reports name it.
    pub fn describe(self) -> &'static str {
        match self {
            Source::DovecotPasswd => "Dovecot passwd-file",
            Source::Shadow => "shadow file",
        }
    }
}

/// One user to import.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The 1-based line number.
    pub line: usize,
    /// The login name.
    pub user: String,
    /// What goes into the users file: the password field exactly as the source has it.
    pub value: String,
    /// The parsed password.
    pub stored: Stored,
}

/// A line that is not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The 1-based line number.
    pub line: usize,
    /// The user, when the line names a valid one.
    pub user: Option<String>,
    /// Why.
    pub why: String,
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(user) => write!(f, "line {} ({user}): {}", self.line, self.why),
            None => write!(f, "line {}: {}", self.line, self.why),
        }
    }
}

/// Everything a source file holds, line by line.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Users that can be imported.
    pub entries: Vec<Entry>,
    /// Lines left out on purpose (no usable password, root).
    pub skipped: Vec<Notice>,
    /// Lines that stop an import: unknown scheme, malformed, duplicate user…
    pub refused: Vec<Notice>,
    /// What each scheme name found stands for, for the report.
    pub schemes: BTreeMap<String, Found>,
}

/// The lines of one scheme in a source file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Found {
    /// Lines that can be imported.
    pub usable: usize,
    /// Lines refused (malformed, or the scheme is unknown).
    pub refused: usize,
    /// What verifies this scheme; `None` for an unknown one.
    pub verifier: Option<&'static str>,
}

impl Parsed {
    /// The refusals as one error message, every bad line on a line of its own.
    pub fn refusal(&self) -> Option<String> {
        (!self.refused.is_empty()).then(|| {
            let lines: Vec<String> = self.refused.iter().map(Notice::to_string).collect();
            format!("{} (nothing was imported)", lines.join("\n"))
        })
    }
}

/// Why a password field is skipped rather than imported, if it is.
fn unusable(source: Source, password: &str, extra: &[&str]) -> Option<&'static str> {
    if password.is_empty() {
        return Some("no password");
    }
    if source == Source::DovecotPasswd
        && extra.iter().any(|f| f.split_whitespace().any(|kv| kv.starts_with("nopassword")))
    {
        return Some("nopassword (any password logged in): apopd has no such thing");
    }
    match (source, password.chars().next()) {
        (Source::Shadow, Some('!')) => Some("locked account (!)"),
        (Source::Shadow, Some('*')) => Some("no login (*)"),
        (Source::Shadow, _) if password == "x" => Some("no password here (x)"),
        _ => None,
    }
}

/// Parse `text` (the whole file) line by line.
pub fn parse(text: &str, source: Source) -> Parsed {
    let mut parsed = Parsed::default();
    let mut seen = BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim_end_matches('\r');
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = raw.split(':').collect();
        let (user, password) = (fields[0], fields.get(1).copied());
        let notice = |user: Option<&str>, why: String| Notice { line, user: user.map(str::to_owned), why };
        if !is_valid_user_name(user) {
            parsed.refused.push(notice(None, format!("invalid user name {user:?}")));
            continue;
        }
        let Some(password) = password else {
            parsed.refused.push(notice(Some(user), "expected user:password[:…]".into()));
            continue;
        };
        if let Some(why) = unusable(source, password, fields.get(7..).unwrap_or_default()) {
            parsed.skipped.push(notice(Some(user), why.into()));
            continue;
        }
        if source == Source::Shadow && user == "root" {
            parsed.skipped.push(notice(Some(user), "root is never imported".into()));
            continue;
        }
        if !seen.insert(user.to_owned()) {
            parsed.refused.push(notice(Some(user), "the user appears twice".into()));
            continue;
        }
        match schemes::parse(password) {
            Ok(stored) => {
                let found = parsed.schemes.entry(stored.scheme().name().to_owned()).or_default();
                found.usable += 1;
                found.verifier = Some(stored.scheme().verifier());
                parsed.entries.push(Entry { line, user: user.to_owned(), value: password.to_owned(), stored });
            }
            Err(e) => {
                let (name, verifier) = match &e {
                    SchemeError::Unknown { name } => (name.clone(), None),
                    SchemeError::Invalid { scheme, .. } => (scheme.name().to_owned(), Some(scheme.verifier())),
                };
                let found = parsed.schemes.entry(name).or_default();
                found.refused += 1;
                found.verifier = verifier;
                parsed.refused.push(notice(Some(user), e.to_string()));
            }
        }
    }
    parsed
}

/// The users file (and, with `apop_from_plain`, the APOP secrets) after importing `parsed`
/// into `users` and `secrets`; an error names every reason the import cannot be done.
///
/// Users already present are refused unless `replace`. With `apop_from_plain`, each `{PLAIN}`
/// password also becomes the user's APOP secret (as Dovecot and qpopper do APOP).
pub fn merge(
    parsed: &Parsed,
    mut users: super::users::Entries,
    mut secrets: Option<super::users::Entries>,
    replace: bool,
    apop_from_plain: bool,
) -> Result<(super::users::Entries, Option<super::users::Entries>), String> {
    if let Some(refusal) = parsed.refusal() {
        return Err(refusal);
    }
    let mut problems = Vec::new();
    let present: Vec<&str> = parsed
        .entries
        .iter()
        .filter(|e| {
            users.contains_key(&e.user)
                || secrets
                    .as_ref()
                    .is_some_and(|s| apop_from_plain && s.contains_key(&e.user) && e.stored.plain().is_some())
        })
        .map(|e| e.user.as_str())
        .collect();
    if !replace && !present.is_empty() {
        problems.push(format!("already in the users or secrets file (use --replace): {}", present.join(", ")));
    }
    for entry in &parsed.entries {
        users.insert(entry.user.clone(), entry.value.clone());
        let (Some(secrets), true, Some(plain)) = (secrets.as_mut(), apop_from_plain, entry.stored.plain()) else {
            continue;
        };
        match std::str::from_utf8(plain) {
            Ok(secret) if !secret.contains(['\n', '\r']) => {
                secrets.insert(entry.user.clone(), secret.to_owned());
            }
            _ => problems.push(format!(
                "line {} ({}): the PLAIN password is not one line of UTF-8, so it cannot be an APOP secret",
                entry.line, entry.user
            )),
        }
    }
    if problems.is_empty() {
        Ok((users, secrets))
    } else {
        Err(format!("{} (nothing was imported)", problems.join("\n")))
    }
}

/// Read the file at `path` (any mode: it is only read).
pub fn read(path: &Path, source: Source) -> anyhow::Result<Parsed> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse(&text, source))
}

/// The read-only report for an administrator before the switch: which schemes the file at
/// `path` holds, how many lines each, whether apopd verifies them, and which lines an import
/// would skip or refuse. Writes nothing.
pub fn check_report(path: &Path, source: Source) -> anyhow::Result<String> {
    let parsed = read(path, source)?;
    Ok(report(path, source, &parsed))
}

/// [`check_report`]'s text for an already parsed file.
pub fn report(path: &Path, source: Source, parsed: &Parsed) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} ({}):", path.display(), source.describe());
    let _ = writeln!(out, "  schemes found:");
    if parsed.schemes.is_empty() {
        let _ = writeln!(out, "    (none)");
    }
    for (name, found) in &parsed.schemes {
        let how = match (found.verifier, found.refused) {
            (Some(verifier), 0) => format!("verifiable ({verifier})"),
            (Some(verifier), bad) => format!("verifiable ({verifier}); {bad} malformed"),
            (None, _) => "NOT verifiable: unknown scheme".to_owned(),
        };
        let _ = writeln!(out, "    {name:<14} {:>5} line(s)  {how}", found.usable + found.refused);
    }
    for (title, notices) in [("skipped (not imported)", &parsed.skipped), ("refused", &parsed.refused)] {
        if !notices.is_empty() {
            let _ = writeln!(out, "  {title}:");
            for notice in notices.iter() {
                let _ = writeln!(out, "    {notice}");
            }
        }
    }
    let plain = parsed.entries.iter().filter(|e| e.stored.plain().is_some()).count();
    if plain > 0 {
        let _ = writeln!(out, "  {plain} user(s) with PLAIN passwords: `--apop-from-plain` can make them APOP secrets");
    }
    let verdict = match parsed.refused.len() {
        0 => format!("an import would add {} user(s)", parsed.entries.len()),
        n => format!("an import would be refused: {n} line(s) cannot be imported; nothing would be written"),
    };
    let _ = writeln!(out, "  {verdict}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::schemes::Scheme;

    const PASSWD: &str = "\
# Dovecot users
alice:{SHA512-CRYPT}$6$Y4fV12nju8nptiQx$P94N3wz.7edef5QKapCzYinPWWRyQelALSzfO6YQ7qbVbUlaj9t9JtI3OCw49B7Uzj5qctsDX9KFc0XeJmZJX1:1000:1000::/home/alice::
bob:{PLAIN}Correct horse 1:1001:1001::/home/bob
carol:$2y$05$U3suOdRdNpcW.DntlaoCmu30IsfSXAUU7GW3HLF8cS3dWt29lf8Ge
dave::1003:1003
erin:{PLAIN}x:1004:1004::::nopassword=y
";

    #[test]
    fn a_dovecot_passwd_file_is_read_line_by_line() {
        let parsed = parse(PASSWD, Source::DovecotPasswd);
        assert!(parsed.refused.is_empty(), "{:?}", parsed.refused);
        let users: Vec<(&str, usize, Scheme)> =
            parsed.entries.iter().map(|e| (e.user.as_str(), e.line, e.stored.scheme())).collect();
        assert_eq!(
            users,
            [("alice", 2, Scheme::Sha512Crypt), ("bob", 3, Scheme::Plain), ("carol", 4, Scheme::BlfCrypt)]
        );
        assert_eq!(parsed.entries[1].value, "{PLAIN}Correct horse 1");
        assert!(parsed.entries.iter().all(|e| e.stored.verify(b"Correct horse 1")));
        let skipped: Vec<String> = parsed.skipped.iter().map(Notice::to_string).collect();
        assert_eq!(skipped[0], "line 5 (dave): no password");
        assert!(skipped[1].starts_with("line 6 (erin): nopassword"), "{skipped:?}");
    }

    #[test]
    fn bad_lines_are_all_named_with_their_number() {
        let text = format!(
            "{PASSWD}frank:{{FOO}}bar\n../x:{{PLAIN}}y\nalice:{{PLAIN}}z\ngina:$1$ZVgh5TjB$.UKyYGSXPtRm9yu1FTDlg/\n"
        );
        let parsed = parse(&text, Source::DovecotPasswd);
        let refused: Vec<String> = parsed.refused.iter().map(Notice::to_string).collect();
        assert_eq!(
            refused,
            [
                "line 7 (frank): unknown scheme {FOO}",
                "line 8: invalid user name \"../x\"",
                "line 9 (alice): the user appears twice",
                "line 10 (gina): unknown scheme $1$ (MD5-CRYPT)",
            ]
        );
        assert!(parsed.refusal().unwrap().ends_with("(nothing was imported)"));
        let report = report(Path::new("passwd"), Source::DovecotPasswd, &parsed);
        assert!(report.contains("{FOO}"), "{report}");
        assert!(report.contains("NOT verifiable"), "{report}");
        assert!(report.contains("would be refused"), "{report}");
    }

    #[test]
    fn merge_refuses_existing_users_unless_replacing_and_makes_apop_secrets() {
        let parsed = parse(PASSWD, Source::DovecotPasswd);
        let mut users = crate::auth::users::Entries::new();
        users.insert("alice".into(), "$argon2id$old".into());
        let err = merge(&parsed, users.clone(), None, false, false).unwrap_err();
        assert_eq!(err, "already in the users or secrets file (use --replace): alice (nothing was imported)");
        let (merged, secrets) = merge(&parsed, users.clone(), Some(Default::default()), true, true).unwrap();
        assert_eq!(merged.len(), 3);
        assert!(merged["alice"].starts_with("{SHA512-CRYPT}$6$"));
        let secrets = secrets.unwrap();
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets["bob"], "Correct horse 1");
        let bad = parse(&format!("{PASSWD}frank:{{FOO}}x\n"), Source::DovecotPasswd);
        assert!(merge(&bad, users, None, true, false).unwrap_err().starts_with("line 7 (frank): unknown scheme {FOO}"));
    }

    #[test]
    fn shadow_lines_skip_locked_accounts_and_root() {
        let shadow = "\
root:$6$s0l7/5HoN0SXWHkN$M.FwTysjJjP/kugaurc0mwYVxAz6dK1Vmr0Cgv0qMKAdV0egL621u7ecvLpySlQud5WHwkrSh3u7J5Ga4cdQl/:19000:0:99999:7:::
daemon:*:19000:0:99999:7:::
alice:$y$j9T$1vijlcCOKEhKDQ3ktRbq4/$jHb66DkOUQMfJ5I3GpjbJ8JT1bc5/AQZaDx73bFv69C:19000:0:99999:7:::
bob:!$6$s0l7/5HoN0SXWHkN$M.FwTysjJjP/kugaurc0mwYVxAz6dK1Vmr0Cgv0qMKAdV0egL621u7ecvLpySlQud5WHwkrSh3u7J5Ga4cdQl/:19000::::::
carol::19000::::::
";
        let parsed = parse(shadow, Source::Shadow);
        assert!(parsed.refused.is_empty());
        assert_eq!(parsed.entries.len(), 1);
        assert_eq!(parsed.entries[0].stored.scheme(), Scheme::Yescrypt);
        let skipped: Vec<String> = parsed.skipped.iter().map(Notice::to_string).collect();
        assert_eq!(
            skipped,
            [
                "line 1 (root): root is never imported",
                "line 2 (daemon): no login (*)",
                "line 4 (bob): locked account (!)",
                "line 5 (carol): no password",
            ]
        );
        let report = report(Path::new("/etc/shadow"), Source::Shadow, &parsed);
        assert!(report.contains("YESCRYPT"), "{report}");
        assert!(report.contains("would add 1 user"), "{report}");
    }
}
