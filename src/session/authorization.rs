//! The AUTHORIZATION state: USER/PASS, APOP, AUTH (SASL), STLS and QUIT.

use std::time::Instant;

use super::transaction::Transaction;
use super::{Context, Outcome};
use crate::auth::Checked;
use crate::auth::sasl::{self, Exchange, Mechanism, Step};
use crate::protocol::Command;
use crate::protocol::response::{count as count_of, err, multi_line, ok};
use crate::store::{Mailbox, OpenError};

/// The one answer to every failed login: unknown user and wrong password look the same.
const AUTH_FAILED: &str = "[AUTH] invalid user name or password";

/// Refusal of USER/PASS, AUTH PLAIN and AUTH LOGIN without TLS from an untrusted network,
/// naming what this connection does offer.
fn plaintext_refused(cx: &Context) -> Outcome {
    let mut alternatives: Vec<&str> = Vec::new();
    if cx.stls_available() {
        alternatives.push("STLS");
    }
    if !cx.timestamp.is_empty() {
        alternatives.push("APOP");
    }
    alternatives.extend(cx.mechanisms().into_iter().map(|m| m.name()));
    let hint = match alternatives.as_slice() {
        [] => String::new(),
        names => format!("; use {}", names.join(" or ")),
    };
    Outcome::Reply(err(&format!("[AUTH] plaintext passwords are not accepted on this unencrypted connection{hint}")))
}

/// AUTHORIZATION state: the name given by USER, or a SASL exchange in progress.
#[derive(Debug, Default)]
pub struct Authorization {
    user: Option<String>,
    sasl: Option<(Mechanism, Exchange)>,
}

impl Authorization {
    /// True while an AUTH exchange waits for the client's next response.
    pub fn in_sasl(&self) -> bool {
        self.sasl.is_some()
    }

    /// Forget an AUTH exchange (its response line was unreadable).
    pub fn abandon_sasl(&mut self) {
        self.sasl = None;
    }

    /// Handle one command in AUTHORIZATION.
    pub async fn handle(&mut self, command: Command, cx: &Context) -> Outcome {
        match command {
            Command::User(name) => {
                if !cx.plaintext_allowed() {
                    return plaintext_refused(cx);
                }
                self.user = Some(name);
                Outcome::Reply(ok("send PASS"))
            }
            Command::Pass(password) => {
                let Some(user) = self.user.take() else {
                    return Outcome::Reply(err("give USER first"));
                };
                if let Some(refusal) = throttled(cx) {
                    return refusal;
                }
                let accepted = cx.shared.auth.check_password(&user, password).await;
                login(cx, user, accepted, "USER/PASS").await
            }
            Command::Apop { .. } if cx.timestamp.is_empty() => {
                Outcome::Reply(err("APOP is not enabled on this server"))
            }
            Command::Apop { name, digest } => {
                self.user = None;
                if let Some(refusal) = throttled(cx) {
                    return refusal;
                }
                let accepted = cx.shared.auth.check_apop(&name, &cx.timestamp, &digest).await;
                login(cx, name, accepted, "APOP").await
            }
            Command::Stls if cx.secure => Outcome::Reply(err("already using TLS")),
            Command::Stls if cx.stls_available() => {
                self.user = None;
                Outcome::StartTls(ok("begin TLS negotiation"))
            }
            Command::Stls => Outcome::Reply(err("STLS is not available: no certificate is configured")),
            Command::Auth { mechanism: None, .. } => {
                let names = cx.mechanisms().into_iter().map(Mechanism::name);
                Outcome::Reply(multi_line("SASL mechanisms follow", names))
            }
            Command::Auth { mechanism: Some(name), initial } => self.start_sasl(&name, initial, cx).await,
            Command::Quit => Outcome::Close(ok("apopd signing off")),
            _ => Outcome::Reply(err("not logged in yet: use USER/PASS, APOP or AUTH first")),
        }
    }

    async fn start_sasl(&mut self, name: &str, initial: Option<String>, cx: &Context) -> Outcome {
        self.user = None;
        if let Some(refusal) = throttled(cx) {
            return refusal;
        }
        let Some(mechanism) = Mechanism::from_name(name).filter(|m| cx.mechanisms().contains(m)) else {
            if Mechanism::from_name(name)
                .is_some_and(|m| m.sends_password() && cx.shared.config.sasl_mechanisms.contains(&m))
            {
                return plaintext_refused(cx);
            }
            return Outcome::Reply(err("unsupported SASL mechanism; AUTH alone lists them"));
        };
        let initial = match initial.as_deref().map(|i| sasl::decode_response(i.as_bytes())) {
            None => None,
            Some(Some(decoded)) => Some(decoded),
            Some(None) => return Outcome::Reply(err("initial response is not valid base64")),
        };
        let started = cx.shared.auth.sasl_start(mechanism, initial, cx.shared.timestamps.next()).await;
        let (exchange, step) = match started {
            Ok(started) => started,
            Err(e) => return login(cx, String::new(), Err(e), mechanism.name()).await,
        };
        self.sasl = Some((mechanism, exchange));
        self.after_step(step, cx).await
    }

    /// Feed one client line to the running AUTH exchange.
    pub async fn continue_sasl(&mut self, line: &[u8], cx: &Context) -> Outcome {
        if line == b"*" {
            self.sasl = None;
            return Outcome::Reply(err("authentication cancelled"));
        }
        let Some(response) = sasl::decode_response(line) else {
            self.sasl = None;
            return Outcome::Reply(err("response is not valid base64; authentication aborted"));
        };
        let Some((_, exchange)) = self.sasl.as_mut() else {
            return Outcome::Reply(err("no authentication in progress"));
        };
        let step = match cx.shared.auth.sasl_step(exchange, &response).await {
            Ok(step) => step,
            Err(e) => {
                let method = self.sasl.take().map_or("AUTH", |(m, _)| m.name());
                return login(cx, String::new(), Err(e), method).await;
            }
        };
        self.after_step(step, cx).await
    }

    async fn after_step(&mut self, step: Step, cx: &Context) -> Outcome {
        let method = self.sasl.as_ref().map_or("AUTH", |(m, _)| m.name());
        if !matches!(step, Step::Challenge(_)) {
            self.sasl = None; // the exchange is over, whatever its result
        }
        match step {
            Step::Challenge(challenge) => {
                Outcome::Reply(format!("+ {}\r\n", sasl::encode_challenge(&challenge)).into_bytes())
            }
            Step::CheckPassword { user, password } => {
                let accepted = cx.shared.auth.check_password(&user, password).await;
                login(cx, user, accepted, method).await
            }
            Step::Authenticated { user } => login(cx, user, Ok(true), method).await,
            Step::Failed { user } => login(cx, user.unwrap_or_default(), Ok(false), method).await,
            Step::Malformed(why) => Outcome::Reply(err(why)),
        }
    }
}

/// The refusal for a client IP with too many recent failures, checked before any password work.
fn throttled(cx: &Context) -> Option<Outcome> {
    let left = cx.shared.throttle.blocked_for(cx.peer.ip(), Instant::now())?;
    tracing::warn!(peer = %cx.peer.ip(), "login refused: too many failed logins");
    Some(Outcome::Reply(err(&format!(
        "[LOGIN-DELAY] too many failed logins from your address; try again in {} seconds",
        left.as_secs().max(1)
    ))))
}

/// Finish a login attempt: delay failures, enforce LOGIN-DELAY, lock and open the mailbox.
/// A backend that could not answer is a temporary error, not a failed login.
async fn login(cx: &Context, user: String, accepted: Checked, method: &str) -> Outcome {
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::error!(peer = %cx.peer.ip(), user = ?user, method, "cannot check credentials: {e}");
            return Outcome::Reply(err("[SYS/TEMP] cannot check credentials now; try again later"));
        }
    };
    if !accepted {
        // fail2ban matches this line: keep "authentication failed peer=<ip>" stable.
        tracing::warn!(peer = %cx.peer.ip(), user = ?user, method, "authentication failed");
        let delay = cx.shared.throttle.failed(cx.peer.ip(), &user, Instant::now());
        tokio::time::sleep(delay).await;
        return Outcome::Reply(err(AUTH_FAILED));
    }
    cx.shared.throttle.succeeded(&user);
    if let Some(wait) = cx.shared.login_delay_left(&user, Instant::now()) {
        return Outcome::Reply(err(&format!(
            "[LOGIN-DELAY] wait {} more seconds before logging in again",
            wait.as_secs().max(1)
        )));
    }
    let Some(location) = cx.shared.mail_root.locate(&user) else {
        return Outcome::Reply(err(AUTH_FAILED));
    };
    let policy = cx.shared.mail_root.policy().clone();
    let opened = tokio::task::spawn_blocking(move || Mailbox::open(&location, &policy)).await;
    match opened {
        Ok(Ok(mailbox)) => {
            tracing::Span::current().record("user", tracing::field::debug(&user));
            cx.shared.record_login(&user, Instant::now());
            let transaction = Transaction::new(mailbox);
            let (count, octets) = transaction.totals();
            tracing::info!(method, count, octets, "logged in");
            let reply = ok(&format!("{user}'s maildrop has {} ({octets} octets)", count_of(count, "message")));
            Outcome::Enter(Box::new(transaction), reply)
        }
        Ok(Err(OpenError::InUse)) => {
            tracing::info!(user = ?user, "mailbox in use");
            Outcome::Reply(err("[IN-USE] mailbox is already in use by another session"))
        }
        Ok(Err(OpenError::Unsafe(e))) => {
            tracing::error!(user = ?user, "refusing to serve an unsafe maildir: {e}");
            Outcome::Reply(err("[SYS/PERM] the mailbox cannot be served safely; ask the administrator"))
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
