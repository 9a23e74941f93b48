//! Turning a user name into a maildir path without ever leaving the mail root.

use std::path::PathBuf;

/// The placeholder in `mail_root` that stands for the user name.
pub const USER_PLACEHOLDER: &str = "{user}";

/// True for names made only of `[A-Za-z0-9._@+-]`, 1 to 64 long, not starting with `.` and
/// without `..`: such a name is a single, ordinary path component.
pub fn is_valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.contains("..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
}

/// The `mail_root` template, e.g. `/srv/mail/{user}` or `/home/{user}/Maildir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailRoot {
    template: String,
}

/// The template has no `{user}`, so every user would share one mailbox.
#[derive(Debug, thiserror::Error)]
#[error("mail_root must contain {USER_PLACEHOLDER} (got {0:?})")]
pub struct NoPlaceholder(String);

impl MailRoot {
    /// Check and wrap a template.
    pub fn new(template: &str) -> Result<Self, NoPlaceholder> {
        if template.contains(USER_PLACEHOLDER) {
            Ok(MailRoot { template: template.to_owned() })
        } else {
            Err(NoPlaceholder(template.to_owned()))
        }
    }

    /// The template text.
    pub fn template(&self) -> &str {
        &self.template
    }

    /// The maildir of `user`, or `None` when the name could address anything but its own directory.
    pub fn maildir_of(&self, user: &str) -> Option<PathBuf> {
        is_valid_user_name(user).then(|| PathBuf::from(self.template.replace(USER_PLACEHOLDER, user)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_names_are_refused() {
        let root = MailRoot::new("/srv/mail/{user}").unwrap();
        for bad in ["", "..", "../../etc", "a/b", ".hidden", "a..b", "a b", "a\0b", "ä", &"x".repeat(65)] {
            assert_eq!(root.maildir_of(bad), None, "{bad:?}");
        }
        assert_eq!(root.maildir_of("alice"), Some(PathBuf::from("/srv/mail/alice")));
        assert_eq!(root.maildir_of("a.b+c@example.org"), Some(PathBuf::from("/srv/mail/a.b+c@example.org")));
    }

    #[test]
    fn template_needs_placeholder() {
        assert!(MailRoot::new("/srv/mail").is_err());
        let home = MailRoot::new("/home/{user}/Maildir").unwrap();
        assert_eq!(home.maildir_of("bob"), Some(PathBuf::from("/home/bob/Maildir")));
    }
}
