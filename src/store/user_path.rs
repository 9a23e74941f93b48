//! Turning a user name into a maildir path without ever leaving the mail root.

use std::ffi::OsString;
use std::path::PathBuf;

use super::safe_fs::{Location, Policy};

/// The placeholder in `mail_root` that stands for the user name.
pub const USER_PLACEHOLDER: &str = "{user}";

/// True for names of 1 to 64 bytes made only of `[A-Za-z0-9._@+-]` and non-ASCII letters and
/// digits (UTF-8 names, RFC 6856), not starting with `.` and without `..`: such a name is a
/// single, ordinary path component. Non-ASCII spaces, punctuation (a fullwidth `／` or `．`),
/// symbols, control and format characters (bidi overrides) are refused, so a name cannot
/// look like a path or hide what it is.
pub fn is_valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.contains("..")
        && name.chars().all(|c| match c.is_ascii() {
            true => c.is_ascii_alphanumeric() || "._@+-".contains(c),
            false => c.is_alphanumeric(),
        })
}

/// The `mail_root` template, e.g. `/srv/mail/{user}` or `/home/{user}/Maildir`, and the
/// rules for opening what it points at.
///
/// The directory before the component with `{user}` is the operator's and is opened as it is;
/// from that component on, the walk to the maildir follows no symlink (see `safe_fs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailRoot {
    template: String,
    policy: Policy,
}

/// The template cannot name one directory per user.
#[derive(Debug, thiserror::Error)]
pub enum BadTemplate {
    /// Without `{user}`, every user would share one mailbox.
    #[error("mail_root must contain {USER_PLACEHOLDER} (got {0:?})")]
    NoPlaceholder(String),
    /// `.` or `..` after the operator's directory would make the walk leave it.
    #[error("mail_root must not contain . or .. components after its directory (got {0:?})")]
    DotComponent(String),
}

impl MailRoot {
    /// Check and wrap a template, with the default [`Policy`].
    pub fn new(template: &str) -> Result<Self, BadTemplate> {
        if !template.contains(USER_PLACEHOLDER) {
            return Err(BadTemplate::NoPlaceholder(template.to_owned()));
        }
        let root = MailRoot { template: template.to_owned(), policy: Policy::default() };
        if root.split().1.split('/').any(|part| part == "." || part == "..") {
            return Err(BadTemplate::DotComponent(template.to_owned()));
        }
        Ok(root)
    }

    /// The same template with another policy.
    pub fn with_policy(self, policy: Policy) -> Self {
        MailRoot { policy, ..self }
    }

    /// How maildirs are opened.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// `(operator's directory, the rest)`: the template split at the last `/` before `{user}`.
    fn split(&self) -> (&str, &str) {
        let at = self.template.find(USER_PLACEHOLDER).unwrap_or(0);
        match self.template[..at].rfind('/') {
            Some(0) => ("/", &self.template[1..]),
            Some(slash) => (&self.template[..slash], &self.template[slash + 1..]),
            None => (".", &self.template),
        }
    }

    /// Where the maildir of `user` is, for the safe walk; `None` for names that are not a
    /// single ordinary path component.
    pub fn locate(&self, user: &str) -> Option<Location> {
        if !is_valid_user_name(user) {
            return None;
        }
        let (trusted, rest) = self.split();
        let rest = rest.replace(USER_PLACEHOLDER, user);
        let parts = rest.split('/').filter(|p| !p.is_empty()).map(OsString::from).collect();
        Some(Location { user: user.to_owned(), trusted: PathBuf::from(trusted), parts })
    }

    /// True when the maildirs are inside users' home directories (`/home/…` or under a
    /// directory named after the user), where users can write to them.
    pub fn is_home_layout(&self) -> bool {
        let rest = self.split().1;
        self.template.starts_with("/home/") || rest.trim_end_matches('/').contains(&format!("{USER_PLACEHOLDER}/"))
    }

    /// The template text.
    pub fn template(&self) -> &str {
        &self.template
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_names_are_refused() {
        let root = MailRoot::new("/srv/mail/{user}").unwrap();
        for bad in ["", "..", "../../etc", "a/b", ".hidden", "a..b", "a b", "a\0b", &"x".repeat(65)] {
            assert_eq!(root.locate(bad).map(|l| l.path()), None, "{bad:?}");
        }
        assert_eq!(root.locate("alice").map(|l| l.path()), Some(PathBuf::from("/srv/mail/alice")));
        assert_eq!(
            root.locate("a.b+c@example.org").map(|l| l.path()),
            Some(PathBuf::from("/srv/mail/a.b+c@example.org"))
        );
    }

    #[test]
    fn utf8_names_are_one_plain_component() {
        let root = MailRoot::new("/srv/mail/{user}").unwrap();
        for good in ["ä", "ユーザー", "用户", "користувач", "josé.garcía@例え.jp", &"語".repeat(21)]
        {
            assert_eq!(root.locate(good).map(|l| l.path()), Some(PathBuf::from(format!("/srv/mail/{good}"))), "{good}");
        }
        let bad = [
            "a\u{2215}b",       // division slash
            "a\u{ff0f}b",       // fullwidth solidus
            "\u{ff0e}\u{ff0e}", // fullwidth full stops
            "a\u{3000}b",       // ideographic space
            "a\u{a0}b",         // no-break space
            "\u{202e}gpj",      // right-to-left override
            "a\u{200b}b",       // zero-width space
            "a\u{85}b",         // next line (C1 control)
            "e\u{301}",         // a combining accent (NFD): not a letter of its own
        ];
        for bad in bad.iter().copied().chain([&*"語".repeat(22)]) {
            assert_eq!(root.locate(bad).map(|l| l.path()), None, "{bad:?}");
        }
    }

    #[test]
    fn template_needs_placeholder_and_no_dot_components() {
        assert!(MailRoot::new("/srv/mail").is_err());
        assert!(MailRoot::new("/srv/mail/{user}/../x").is_err());
        let home = MailRoot::new("/home/{user}/Maildir").unwrap();
        assert_eq!(home.locate("bob").map(|l| l.path()), Some(PathBuf::from("/home/bob/Maildir")));
        assert!(home.is_home_layout());
        assert!(!MailRoot::new("/srv/mail/{user}").unwrap().is_home_layout());
    }

    #[test]
    fn the_walk_starts_at_the_component_with_the_user() {
        let cases = [
            ("/srv/mail/{user}", "/srv/mail", vec!["alice"]),
            ("/home/{user}/Maildir", "/home", vec!["alice", "Maildir"]),
            ("/{user}", "/", vec!["alice"]),
            ("/srv/mail/x-{user}.d//Maildir/", "/srv/mail", vec!["x-alice.d", "Maildir"]),
        ];
        for (template, trusted, parts) in cases {
            let location = MailRoot::new(template).unwrap().locate("alice").unwrap();
            assert_eq!(location.trusted, PathBuf::from(trusted), "{template}");
            assert_eq!(location.parts, parts.iter().map(OsString::from).collect::<Vec<_>>(), "{template}");
        }
        assert!(MailRoot::new("/srv/{user}").unwrap().locate("../etc").is_none());
    }
}
