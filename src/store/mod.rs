//! Maildir storage: where a user's mailbox is, opening it for a session, delivery.

pub mod deliver;
pub mod flags;
pub mod index;
pub mod lock;
pub mod mailbox;
pub mod safe_fs;
pub mod settle;
pub mod survey;
pub mod uidl;
pub mod user_path;

pub use mailbox::{Mailbox, Message, OpenError, Removal};
pub use safe_fs::{Location, OwnerRule, Policy};
pub use user_path::{MailRoot, is_valid_user_name};
