//! The AUTHORIZATION state: USER/PASS, APOP and QUIT.

use std::time::{Duration, Instant};

use super::transaction::Transaction;
use super::{Context, Outcome};
use crate::protocol::Command;
use crate::protocol::response::{err, ok};
use crate::store::{Mailbox, OpenError};

/// The one answer to every failed login: unknown user and wrong password look the same.
const AUTH_FAILED: &str = "[AUTH] invalid user name or password";

/// AUTHORIZATION state: the name given by USER, if any.
#[derive(Debug, Default)]
pub struct Authorization {
    user: Option<String>,
}

impl Authorization {
    /// Handle one command in AUTHORIZATION.
    pub async fn handle(&mut self, command: Command, cx: &Context) -> Outcome {
        match command {
            Command::User(name) => {
                if !cx.plaintext_allowed {
                    return Outcome::Reply(err(
                        "[AUTH] plaintext login is not allowed on this unencrypted connection; use APOP",
                    ));
                }
                self.user = Some(name);
                Outcome::Reply(ok("send PASS"))
            }
            Command::Pass(password) => {
                let Some(user) = self.user.take() else {
                    return Outcome::Reply(err("give USER first"));
                };
                let accepted = cx.shared.auth.check_password(&user, password).await;
                login(cx, user, accepted, "USER/PASS").await
            }
            Command::Apop { name, digest } => {
                self.user = None;
                let accepted = cx.shared.auth.check_apop(&name, &cx.timestamp, &digest);
                login(cx, name, accepted, "APOP").await
            }
            Command::Quit => Outcome::Close(ok("apopd signing off")),
            _ => Outcome::Reply(err("not logged in yet: use USER/PASS or APOP first")),
        }
    }
}

/// Finish a login attempt: delay failures, enforce LOGIN-DELAY, lock and open the mailbox.
async fn login(cx: &Context, user: String, accepted: bool, method: &str) -> Outcome {
    if !accepted {
        tracing::warn!(peer = %cx.peer.ip(), user = ?user, method, "authentication failed");
        tokio::time::sleep(Duration::from_millis(cx.shared.config.auth_failure_delay_ms)).await;
        return Outcome::Reply(err(AUTH_FAILED));
    }
    if let Some(wait) = cx.shared.login_delay_left(&user, Instant::now()) {
        return Outcome::Reply(err(&format!(
            "[LOGIN-DELAY] wait {} more seconds before logging in again",
            wait.as_secs().max(1)
        )));
    }
    let Some(dir) = cx.shared.mail_root.maildir_of(&user) else {
        return Outcome::Reply(err(AUTH_FAILED));
    };
    let opened = tokio::task::spawn_blocking(move || Mailbox::open(&dir)).await;
    match opened {
        Ok(Ok(mailbox)) => {
            tracing::Span::current().record("user", tracing::field::debug(&user));
            cx.shared.record_login(&user, Instant::now());
            let transaction = Transaction::new(mailbox);
            let (count, octets) = transaction.totals();
            tracing::info!(method, count, octets, "logged in");
            let reply = ok(&format!("{user}'s maildrop has {count} messages ({octets} octets)"));
            Outcome::Enter(Box::new(transaction), reply)
        }
        Ok(Err(OpenError::InUse)) => {
            tracing::info!(user = ?user, "mailbox in use");
            Outcome::Reply(err("[IN-USE] mailbox is already in use by another session"))
        }
        Ok(Err(OpenError::Io(e))) => {
            tracing::error!(user = ?user, "cannot open mailbox: {e}");
            Outcome::Reply(err("[SYS/TEMP] cannot open mailbox; try again later"))
        }
        Err(e) => {
            tracing::error!(user = ?user, "mailbox open task failed: {e}");
            Outcome::Reply(err("[SYS/TEMP] cannot open mailbox; try again later"))
        }
    }
}
