//! The POP3 classroom: `apopd lab init` builds a self-contained lab server in a directory,
//! `apopd lab report` reviews what the students did. A user of the server, not part of it: it
//! writes the config, users files and maildirs that `apopd serve` then reads, and reads the
//! transcripts the server wrote.

pub mod handout;
pub mod init;
pub mod report;
mod words;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::auth::users;

/// The languages of the handout and the welcome message.
pub const LANGUAGES: [&str; 4] = ["en", "ja", "zh-Hans", "uk"];
/// The server's config in a lab directory.
pub const CONFIG_FILE: &str = "apopd.toml";
/// The lab's own settings (groups, members, language, addresses) in a lab directory.
pub const LAB_FILE: &str = "lab.toml";
/// `name:password:secret` per account (mode 0600): what the handout prints.
pub const ACCOUNTS_FILE: &str = "accounts";
/// The header that marks the welcome message, so the report does not count it as mail received.
pub const WELCOME_HEADER: &str = "X-Apopd-Lab: welcome";
/// Most groups (account names have two digits).
pub const MAX_GROUPS: u32 = 99;
/// Most members per group (one letter each).
pub const MAX_MEMBERS: u32 = 26;

/// What `lab.toml` holds: how the lab was made, for `--add-groups` and the handout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lab {
    /// Groups so far.
    pub groups: u32,
    /// Accounts per group.
    pub members: u32,
    /// The handout's language.
    pub language: String,
    /// The host name or address students connect to.
    pub server: String,
    /// The POP3 port.
    pub port: u16,
    /// The mail domain of the lab accounts.
    pub domain: String,
    /// The classroom network.
    pub network: IpNet,
}

impl Lab {
    /// Read `DIR/lab.toml`.
    pub fn load(dir: &Path) -> anyhow::Result<Lab> {
        let path = dir.join(LAB_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))
    }
}

/// One lab account and the credentials the handout gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The login name, e.g. `g01a`.
    pub name: String,
    /// The USER/PASS password.
    pub password: String,
    /// The APOP secret.
    pub secret: String,
}

/// The name of member `member` (0-based) of group `group` (1-based): `g01a`, `g01b` …
pub fn account_name(group: u32, member: u32) -> String {
    let letter = char::from(b'a' + u8::try_from(member % MAX_MEMBERS).unwrap_or(0));
    format!("g{group:02}{letter}")
}

/// The group of a lab account name (`g07b` → 7).
pub fn group_of(name: &str) -> Option<u32> {
    let digits = name.strip_prefix('g')?.strip_suffix(|c: char| c.is_ascii_lowercase())?;
    (digits.len() == 2 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Read `DIR/accounts`, sorted by name.
pub fn read_accounts(dir: &Path) -> anyhow::Result<Vec<Account>> {
    let entries = users::read_entries(&dir.join(ACCOUNTS_FILE), false)?;
    entries
        .into_iter()
        .map(|(name, value)| {
            let (password, secret) =
                value.split_once(':').with_context(|| format!("{ACCOUNTS_FILE}: {name}: expected password:secret"))?;
            Ok(Account { name, password: password.to_owned(), secret: secret.to_owned() })
        })
        .collect()
}

/// Write a file only its owner may read (the handout holds passwords).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Escape text for HTML.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        assert_eq!(account_name(1, 0), "g01a");
        assert_eq!(account_name(12, 2), "g12c");
        assert_eq!(group_of("g12c"), Some(12));
        assert_eq!(group_of("g1a"), None);
        assert_eq!(group_of("alice"), None);
        assert!(crate::store::is_valid_user_name(&account_name(99, 25)));
    }

    #[test]
    fn escaping() {
        assert_eq!(html_escape("<a href='x'>&\"</a>"), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;");
    }
}
