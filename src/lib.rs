//! apopd: a POP3/APOP server for maildir mailboxes.
//!
//! Data flows one way: socket → [`session::lines`] → [`protocol::command`] → [`session`]
//! → [`store`] → [`protocol::response`] → socket.

pub mod args;
pub mod auth;
pub mod capacity;
pub mod config;
pub mod demo;
pub mod i18n;
pub mod lab;
pub mod metrics;
pub mod privileges;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shared;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod transcript;
