//! Listeners, the connection limit, and what every session shares.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::auth::Authenticator;
use crate::auth::apop::TimestampMaker;
use crate::config::Config;
use crate::protocol::response;
use crate::session;
use crate::store::MailRoot;

/// State shared by all sessions of one server.
#[derive(Debug)]
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Credential checks.
    pub auth: Authenticator,
    /// Greeting timestamps.
    pub timestamps: TimestampMaker,
    /// Where mailboxes are.
    pub mail_root: MailRoot,
    /// When each user last logged in, for LOGIN-DELAY.
    last_login: Mutex<HashMap<String, Instant>>,
}

impl Shared {
    /// Build from a validated config: loads the users files.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let auth = Authenticator::load(&config.users_file, config.apop_secrets_file.as_deref())?;
        Ok(Shared {
            timestamps: TimestampMaker::new(&config.hostname),
            mail_root: config.mail_root()?,
            auth,
            config,
            last_login: Mutex::new(HashMap::new()),
        })
    }

    /// How long `user` must still wait under LOGIN-DELAY, if at all.
    pub fn login_delay_left(&self, user: &str, now: Instant) -> Option<Duration> {
        let delay = Duration::from_secs(self.config.login_delay_secs?);
        let last = *self.last_login.lock().unwrap_or_else(|e| e.into_inner()).get(user)?;
        delay.checked_sub(now.duration_since(last)).filter(|left| !left.is_zero())
    }

    /// Remember a successful login, for LOGIN-DELAY.
    pub fn record_login(&self, user: &str, now: Instant) {
        if self.config.login_delay_secs.is_some() {
            self.last_login.lock().unwrap_or_else(|e| e.into_inner()).insert(user.to_owned(), now);
        }
    }
}

/// Bound listeners, ready to serve.
pub struct Server {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Load the users and bind every `listen` address.
    pub async fn bind(config: Config) -> anyhow::Result<Server> {
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            listeners.push(listener);
        }
        let shared = Arc::new(Shared::new(config)?);
        Ok(Server { listeners, shared })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
    }

    /// Accept and serve connections until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limit = Arc::new(Semaphore::new(self.shared.config.max_connections));
        let mut accepting = tokio::task::JoinSet::new();
        for listener in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "listening");
            }
            accepting.spawn(accept_loop(listener, self.shared.clone(), limit.clone()));
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections");
        accepting.shutdown().await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, limit: Arc<Semaphore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match limit.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    session::serve(stream, peer, shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, "connection limit reached; refusing");
                tokio::spawn(refuse(stream));
            }
        }
    }
}

async fn refuse(mut stream: TcpStream) {
    let reply = response::err("[SYS/TEMP] too many connections; try again later");
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&reply)).await;
}
