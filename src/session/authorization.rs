//! The AUTHORIZATION state: USER/PASS, APOP, AUTH (SASL), STLS and QUIT.

use std::time::Instant;

use super::transaction::Transaction;
use super::{Context, Outcome};
use crate::auth::Checked;
use crate::auth::sasl::{self, Exchange, Mechanism, Step};
use crate::i18n::Key;
use crate::metrics::{LoginResult, Method};
use crate::protocol::Command;
use crate::protocol::response::{err, multi_line, ok};
use crate::store::index::SETTLE;
use crate::store::{Location, Mailbox, OpenError, Policy, settle};

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
    let t = cx.texts();
    let text = match alternatives.as_slice() {
        [] => t.get(Key::PlaintextRefused).to_owned(),
        names => t.fill(Key::PlaintextRefusedUse, &[("alternatives", &names.join(t.get(Key::Or)))]),
    };
    Outcome::Reply(err(&text))
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
        let t = cx.texts();
        let keyword = command.keyword();
        match command {
            Command::User(name) => {
                if !cx.plaintext_allowed() {
                    return plaintext_refused(cx);
                }
                if !name.is_ascii() && !cx.utf8 {
                    return Outcome::Reply(err(t.get(Key::Utf8Names)));
                }
                self.user = Some(name);
                Outcome::Reply(ok(t.get(Key::SendPass)))
            }
            Command::Pass(password) => {
                let Some(user) = self.user.take() else {
                    return Outcome::Reply(err(&t.hinted(Key::GiveUserFirst, Key::HintPassAfterUser, &[])));
                };
                if let Some(refusal) = throttled(cx) {
                    return refusal;
                }
                let started = Instant::now();
                let accepted = cx.shared.auth.check_password(&user, password).await;
                login(cx, user, accepted, Method::UserPass, started, None).await
            }
            Command::Apop { .. } if cx.timestamp.is_empty() => Outcome::Reply(err(t.get(Key::ApopDisabled))),
            Command::Apop { name, .. } if !name.is_ascii() && !cx.utf8 => Outcome::Reply(err(t.get(Key::Utf8Names))),
            Command::Apop { name, digest } => {
                self.user = None;
                if let Some(refusal) = throttled(cx) {
                    return refusal;
                }
                let started = Instant::now();
                let accepted = cx.shared.auth.check_apop(&name, &cx.timestamp, &digest).await;
                // A hint may explain the digest's syntax: that says nothing about the user.
                let malformed = digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit());
                login(cx, name, accepted, Method::Apop, started, malformed.then_some(Key::HintApopDigest)).await
            }
            Command::Stls if cx.secure => Outcome::Reply(err(t.get(Key::AlreadyTls))),
            // RFC 6856 §2.1: no STLS after UTF8.
            Command::Stls if cx.utf8 => Outcome::Reply(err(t.get(Key::StlsAfterUtf8))),
            Command::Stls if cx.stls_available() => {
                self.user = None;
                Outcome::StartTls(ok(t.get(Key::StlsBegin)))
            }
            Command::Stls => Outcome::Reply(err(t.get(Key::StlsUnavailable))),
            Command::Auth { mechanism: None, .. } => {
                let names = cx.mechanisms().into_iter().map(Mechanism::name);
                Outcome::Reply(multi_line(t.get(Key::SaslList), names))
            }
            Command::Auth { mechanism: Some(name), initial } => self.start_sasl(&name, initial, cx).await,
            Command::Quit => Outcome::Close(ok(t.get(Key::SigningOff))),
            _ => Outcome::Reply(err(&t.hinted(Key::NotLoggedIn, Key::HintNotLoggedIn, &[("command", &keyword)]))),
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
            return Outcome::Reply(err(cx.texts().get(Key::SaslUnsupported)));
        };
        let initial = match initial.as_deref().map(|i| sasl::decode_response(i.as_bytes())) {
            None => None,
            Some(Some(decoded)) => Some(decoded),
            Some(None) => return Outcome::Reply(err(cx.texts().get(Key::SaslBadInitial))),
        };
        let started = Instant::now();
        let start = cx.shared.auth.sasl_start(mechanism, initial, cx.shared.timestamps.next()).await;
        let (exchange, step) = match start {
            Ok(start) => start,
            Err(e) => return login(cx, String::new(), Err(e), Method::Sasl(mechanism), started, None).await,
        };
        self.sasl = Some((mechanism, exchange));
        self.after_step(mechanism, step, started, cx).await
    }

    /// Feed one client line to the running AUTH exchange.
    pub async fn continue_sasl(&mut self, line: &[u8], cx: &Context) -> Outcome {
        if line == b"*" {
            self.sasl = None;
            return Outcome::Reply(err(cx.texts().get(Key::SaslCancelled)));
        }
        let Some(response) = sasl::decode_response(line) else {
            self.sasl = None;
            return Outcome::Reply(err(cx.texts().get(Key::SaslBadBase64)));
        };
        let Some((mechanism, exchange)) = self.sasl.as_mut() else {
            return Outcome::Reply(err(cx.texts().get(Key::SaslNotRunning)));
        };
        let (mechanism, started) = (*mechanism, Instant::now());
        let step = match cx.shared.auth.sasl_step(exchange, &response).await {
            Ok(step) => step,
            Err(e) => {
                self.sasl = None;
                return login(cx, String::new(), Err(e), Method::Sasl(mechanism), started, None).await;
            }
        };
        self.after_step(mechanism, step, started, cx).await
    }

    /// Act on an exchange's step; `started` is when this step's credential work began.
    async fn after_step(&mut self, mechanism: Mechanism, step: Step, started: Instant, cx: &Context) -> Outcome {
        let method = Method::Sasl(mechanism);
        if !matches!(step, Step::Challenge(_)) {
            self.sasl = None; // the exchange is over, whatever its result
        }
        match step {
            Step::Challenge(challenge) => {
                Outcome::Reply(format!("+ {}\r\n", sasl::encode_challenge(&challenge)).into_bytes())
            }
            Step::CheckPassword { user, password } => {
                let accepted = cx.shared.auth.check_password(&user, password).await;
                login(cx, user, accepted, method, started, None).await
            }
            Step::Authenticated { user } => login(cx, user, Ok(true), method, started, None).await,
            Step::Failed { user } => login(cx, user.unwrap_or_default(), Ok(false), method, started, None).await,
            Step::Malformed(why) => Outcome::Reply(err(cx.texts().get(why))),
        }
    }
}

/// The refusal for a client IP with too many recent failures, checked before any password work.
fn throttled(cx: &Context) -> Option<Outcome> {
    let left = cx.shared.throttle.blocked_for(cx.peer.ip(), Instant::now())?;
    tracing::warn!(peer = %cx.peer.ip(), "login refused: too many failed logins");
    cx.shared.metrics.throttle_refusal();
    Some(Outcome::Reply(err(&cx.texts().fill(Key::Throttled, &[("seconds", &left.as_secs().max(1))]))))
}

/// Finish a login attempt: delay failures, enforce LOGIN-DELAY, lock and open the mailbox;
/// count it with the time since `started` (the failure delay left out: it has its own metric).
///
/// Every failure gets one answer, whether the user exists or not, after the same delay;
/// `syntax_hint` (shown only with `lab_hints`) may explain the form of what the client sent.
/// A backend that could not answer is a temporary error, not a failed login.
async fn login(
    cx: &Context,
    user: String,
    accepted: Checked,
    method: Method,
    started: Instant,
    syntax_hint: Option<Key>,
) -> Outcome {
    let t = cx.texts();
    let counted = |result: LoginResult, outcome: Outcome| {
        cx.shared.metrics.login(method, result, started.elapsed());
        outcome
    };
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(e) => {
            let method = method.log_name();
            tracing::error!(peer = %cx.peer.ip(), user = ?user, method, "cannot check credentials: {e}");
            return counted(LoginResult::Error, Outcome::Reply(err(t.get(Key::CredentialsUnavailable))));
        }
    };
    let auth_failed = || match syntax_hint {
        Some(hint) => t.hinted(Key::AuthFailed, hint, &[]),
        None => t.get(Key::AuthFailed).to_owned(),
    };
    if !accepted {
        // fail2ban matches this line: keep "authentication failed peer=<ip>" stable.
        tracing::warn!(peer = %cx.peer.ip(), user = ?user, method = method.log_name(), "authentication failed");
        let outcome = counted(LoginResult::Failure, Outcome::Reply(err(&auth_failed())));
        let delay = cx.shared.throttle.failed(cx.peer.ip(), &user, Instant::now());
        cx.shared.metrics.throttle_delay(delay);
        tokio::time::sleep(delay).await;
        return outcome;
    }
    cx.shared.throttle.succeeded(&user);
    if let Some(wait) = cx.shared.login_delay_left(&user, Instant::now()) {
        let reply = err(&t.fill(Key::LoginDelay, &[("seconds", &wait.as_secs().max(1))]));
        return counted(LoginResult::LoginDelay, Outcome::Reply(reply));
    }
    let Some(location) = cx.shared.mail_root.locate(&user) else {
        return counted(LoginResult::Failure, Outcome::Reply(err(&auth_failed())));
    };
    let policy = cx.shared.mail_root.policy().clone();
    let opened = tokio::task::spawn_blocking(move || (Mailbox::open(&location, &policy), location, policy)).await;
    let opened = opened.map(|(opened, location, policy)| {
        if let Ok(mailbox) = &opened
            && !mailbox.settled()
            && settle::schedule(mailbox.dir())
        {
            settle_later(location, policy, mailbox.dir().to_owned());
        }
        opened
    });
    match opened {
        Ok(Ok(mailbox)) => {
            tracing::Span::current().record("user", tracing::field::debug(&user));
            cx.shared.record_login(&user, Instant::now());
            let transaction = Transaction::new(user.clone(), mailbox);
            let (count, octets) = transaction.totals();
            tracing::info!(method = method.log_name(), count, octets, "logged in");
            let messages = t.messages(count as u64);
            let reply = ok(&t.fill(Key::LoginOk, &[("user", &user), ("messages", &messages), ("octets", &octets)]));
            counted(LoginResult::Success, Outcome::Enter(Box::new(transaction), reply))
        }
        Ok(Err(OpenError::InUse)) => {
            tracing::info!(user = ?user, "mailbox in use");
            counted(LoginResult::InUse, Outcome::Reply(err(t.get(Key::InUse))))
        }
        Ok(Err(OpenError::Unsafe(e))) => {
            tracing::error!(user = ?user, "refusing to serve an unsafe maildir: {e}");
            counted(LoginResult::Error, Outcome::Reply(err(t.get(Key::UnsafeMailbox))))
        }
        Ok(Err(OpenError::Io(e))) => {
            tracing::error!(user = ?user, "cannot open mailbox: {e}");
            counted(LoginResult::Error, Outcome::Reply(err(t.get(Key::CannotOpen))))
        }
        Err(e) => {
            tracing::error!(user = ?user, "mailbox open task failed: {e}");
            counted(LoginResult::Error, Outcome::Reply(err(t.get(Key::CannotOpen))))
        }
    }
}

/// Once [`SETTLE`] has passed, rescan the mailbox a login could not leave a trusted index for,
/// so the next login (or the first after a restart) reads the index instead of the directories.
/// While a session holds the mailbox or the directories keep changing, try again later, with
/// growing waits (about 4 minutes in all).
/// `dir` is the maildir [`settle::schedule`]d for it.
fn settle_later(location: Location, policy: Policy, dir: std::path::PathBuf) {
    tokio::spawn(async move {
        let mut wait = SETTLE + std::time::Duration::from_millis(100);
        for _ in 0..7 {
            tokio::time::sleep(wait).await;
            let (location, policy) = (location.clone(), policy.clone());
            match tokio::task::spawn_blocking(move || settle::settle(&location, &policy)).await {
                Ok(Ok(false) | Err(OpenError::InUse)) => wait *= 2,
                Ok(Ok(true)) => break,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot settle the mailbox index");
                    break;
                }
                Err(_) => break,
            }
        }
        settle::unschedule(&dir);
    });
}
