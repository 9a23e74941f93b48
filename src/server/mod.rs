//! Listeners, the connection limits, graceful shutdown and the SIGHUP reload; the state
//! sessions share lives in [`crate::shared`]; PROXY protocol headers in [`proxy`].

pub mod proxy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::config::{Config, Listen};
use crate::i18n::Key;
use crate::metrics::{self, Handshake, HandshakeResult, Refusal};
use crate::protocol::response;
use crate::session;
use crate::shared::{IpSlot, Shared};
use crate::tls::Tls;

/// Whether a listener speaks TLS from the first byte (POP3S), and whether a PROXY header
/// comes before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Plain POP3, with STLS when a certificate is configured.
    Plain,
    /// Implicit TLS (RFC 8314).
    Tls,
    /// Plain POP3 behind a proxy: a PROXY header first.
    ProxyPlain,
    /// Implicit TLS behind a proxy: a PROXY header, then the TLS handshake.
    ProxyTls,
}

impl Kind {
    /// The kind of a configured listener.
    fn of(listen: &Listen, tls: bool) -> Kind {
        match (tls, listen.proxy_protocol()) {
            (false, false) => Kind::Plain,
            (true, false) => Kind::Tls,
            (false, true) => Kind::ProxyPlain,
            (true, true) => Kind::ProxyTls,
        }
    }

    /// Whether the connection starts with a TLS handshake (after any PROXY header).
    pub fn tls(self) -> bool {
        matches!(self, Kind::Tls | Kind::ProxyTls)
    }

    /// Whether the connection starts with a PROXY header.
    pub fn proxy(self) -> bool {
        matches!(self, Kind::ProxyPlain | Kind::ProxyTls)
    }
}

/// Bound listeners, ready to serve.
pub struct Server {
    listeners: Vec<(std::net::TcpListener, Kind)>,
    /// The `/metrics` listener, when `metrics_listen` is set.
    metrics: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Load users and certificates, then bind every `listen` and `listen_tls` address.
    ///
    /// Synchronous and runtime-free, so privileges can be dropped between this and [`Server::run`].
    pub fn bind(config: Config) -> anyhow::Result<Server> {
        let shared = Arc::new(Shared::new(config)?);
        let config = &shared.config;
        let wanted = config.listen.iter().map(|l| (l, false)).chain(config.listen_tls.iter().map(|l| (l, true)));
        let mut listeners = Vec::new();
        for (listen, tls) in wanted {
            let (addr, kind) = (listen.addr(), Kind::of(listen, tls));
            let listener = bind_socket(addr).with_context(|| format!("cannot listen on {addr}"))?;
            listeners.push((listener, kind));
        }
        let metrics = bind_metrics(config)?;
        Ok(Server { listeners, metrics, shared })
    }

    /// Serve on sockets bound by someone else (systemd socket activation) instead of the config's.
    pub fn with_listeners(config: Config, listeners: Vec<(std::net::TcpListener, Kind)>) -> anyhow::Result<Server> {
        let shared = Arc::new(Shared::new(config)?);
        if shared.tls.is_none() && listeners.iter().any(|(_, kind)| kind.tls()) {
            anyhow::bail!("a pop3s socket was passed in but tls_cert/tls_key are not configured");
        }
        let metrics = bind_metrics(&shared.config)?;
        Ok(Server { listeners, metrics, shared })
    }

    /// The addresses actually bound (useful with port 0), with their kind.
    pub fn local_addrs(&self) -> Vec<(SocketAddr, Kind)> {
        self.listeners.iter().filter_map(|(l, kind)| Some((l.local_addr().ok()?, *kind))).collect()
    }

    /// The address the `/metrics` endpoint is bound to, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref()?.local_addr().ok()
    }

    /// What every session shares (for reloads).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accept and serve connections until `shutdown` completes; then stop accepting, tell
    /// sessions to close (those in UPDATE finish first) and wait up to `shutdown_grace_secs`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let max = self.shared.config.max_connections;
        let limit = Arc::new(Semaphore::new(max));
        let mut accepting = tokio::task::JoinSet::new();
        for (listener, kind) in self.listeners {
            let listener = match TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!("cannot use listening socket: {e}");
                    continue;
                }
            };
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, ?kind, "listening");
            }
            accepting.spawn(accept_loop(listener, kind, self.shared.clone(), limit.clone()));
        }
        if let Some(listener) = self.metrics {
            match TcpListener::from_std(listener) {
                Ok(listener) => drop(accepting.spawn(metrics::http::serve(listener, self.shared.metrics.clone()))),
                Err(e) => tracing::error!("cannot use the metrics socket: {e}"),
            }
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections");
        accepting.shutdown().await;
        self.shared.shutdown.send_replace(true);
        let grace = Duration::from_secs(self.shared.config.shutdown_grace_secs);
        // Every session holds a permit: having them all back means every session ended.
        let all_done = limit.acquire_many(u32::try_from(max).unwrap_or(u32::MAX));
        match tokio::time::timeout(grace, all_done).await {
            Ok(_) => tracing::info!("all sessions closed"),
            Err(_) => tracing::warn!("shutdown grace period over; dropping the remaining sessions"),
        }
    }
}

/// The `metrics_listen` socket, bound with the others (before privileges are dropped).
fn bind_metrics(config: &Config) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = config.metrics_listen else { return Ok(None) };
    bind_socket(addr).map(Some).with_context(|| format!("cannot listen on metrics_listen {addr}"))
}

/// A listening socket; IPv6 ones are IPv6-only, so `0.0.0.0:110` and `[::]:110` can coexist.
fn bind_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Re-read the TLS certificate and key on every SIGHUP; sessions already open keep theirs.
/// Without TLS the signal is only acknowledged (the users files reload by themselves), so a
/// `systemctl reload` never kills the server.
pub async fn reload_tls_on_hangup(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => return tracing::error!("cannot watch SIGHUP: {e}"),
    };
    while hangups.recv().await.is_some() {
        match shared.tls.as_ref().map(Tls::reload) {
            None => tracing::info!("SIGHUP: no TLS configured; users files reload when they change"),
            Some(Ok(())) => tracing::info!("SIGHUP: TLS certificate reloaded"),
            Some(Err(e)) => tracing::error!("SIGHUP: keeping the old TLS certificate: {e:#}"),
        }
    }
}

/// Refusals answered at once; past this, over-limit connections are just closed, so a flood
/// cannot make the refusals themselves (a TLS handshake each on POP3S) the unbounded work.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

async fn accept_loop(listener: TcpListener, kind: Kind, shared: Arc<Shared>, limit: Arc<Semaphore>) {
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
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
        if kind.proxy() && !shared.config.proxy_trusted(peer.ip()) {
            // Not a proxy we trust: no greeting, nothing read (its header would be a lie).
            tracing::warn!(%peer, "PROXY listener: connection from outside proxy_trusted_networks; closing");
            shared.metrics.refused(Refusal::UntrustedProxy);
            continue;
        }
        let (why, key, reason) = match limit.clone().try_acquire_owned() {
            Err(_) => ("too many connections", Key::TooManyConnections, Refusal::MaxConnections),
            // Behind a proxy the per-IP slot is the client's: taken once the header is read.
            Ok(permit) if kind.proxy() => {
                tokio::spawn(serve_proxied(stream, peer, kind, shared.clone(), permit));
                continue;
            }
            Ok(permit) => match shared.admit(peer.ip()) {
                None => ("too many connections from your address", Key::TooManyConnectionsIp, Refusal::PerIp),
                Some(slot) => {
                    shared.metrics.accepted(kind.tls());
                    tokio::spawn(serve_connection(stream, peer, kind, shared.clone(), permit, slot));
                    continue;
                }
            },
        };
        tracing::warn!(%peer, "{why}; refusing");
        shared.metrics.refused(reason);
        if let Ok(refusal) = refusals.clone().try_acquire_owned() {
            let shared = shared.clone();
            tokio::spawn(async move {
                if kind.proxy() {
                    // The answer goes after the header, or the proxy's client sees garbage.
                    let mut stream = stream;
                    if proxy::read_header(&mut stream).await.is_ok() {
                        refuse(stream, kind, shared, key).await;
                    }
                } else {
                    refuse(stream, kind, shared, key).await;
                }
                drop(refusal);
            });
        }
    }
}

/// A connection on a PROXY listener: the header first (bounded in size and time), then the
/// client's address is the peer for everything (per-IP limit, throttle, plaintext policy, logs);
/// the proxy's own address is logged as `via`.
async fn serve_proxied(
    mut stream: TcpStream,
    proxy_addr: SocketAddr,
    kind: Kind,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let client = match proxy::read_header(&mut stream).await {
        Ok(proxy::Origin::Client(client)) => client,
        Ok(proxy::Origin::Local) => proxy_addr,
        Err(e) => {
            tracing::warn!(peer = %proxy_addr, "{e}; closing");
            shared.metrics.refused(Refusal::BadProxyHeader);
            return;
        }
    };
    // At WARN level so the proxy's address prefixes even the warnings a `RUST_LOG=warn` server
    // prints (the session's own span is INFO).
    let span = tracing::warn_span!("proxy", via = %proxy_addr);
    match shared.admit(client.ip()) {
        Some(slot) => {
            shared.metrics.accepted(kind.tls());
            serve_connection(stream, client, kind, shared, permit, slot).instrument(span).await
        }
        None => {
            tracing::warn!(parent: &span, peer = %client, "too many connections from your address; refusing");
            shared.metrics.refused(Refusal::PerIp);
            refuse(stream, kind, shared, Key::TooManyConnectionsIp).instrument(span).await;
        }
    }
}

/// One accepted connection: TLS handshake first on a POP3S listener, then the session.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shared: Arc<Shared>,
    permit: tokio::sync::OwnedSemaphorePermit,
    slot: IpSlot,
) {
    match (kind.tls(), shared.tls.as_ref()) {
        // Boxed: a TLS stream is large, and every plain session's task would carry room for it.
        (true, Some(tls)) => {
            Box::pin(async {
                let handshake = tokio::time::timeout(session::HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
                let handshake = handshake.await;
                shared.metrics.handshake(Handshake::Implicit, HandshakeResult::of(&handshake));
                match handshake {
                    Ok(Ok(stream)) => session::serve(stream, peer, shared.clone(), true).await,
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            })
            .await
        }
        _ => session::serve(stream, peer, shared.clone(), false).await,
    }
    // The connection's place in both limits is given back only now.
    drop((slot, permit));
}

/// Answer `-ERR [SYS/TEMP]` and close (over TLS on a POP3S listener, or the client sees garbage).
async fn refuse(stream: TcpStream, kind: Kind, shared: Arc<Shared>, why: Key) {
    let reply = response::err(shared.default_texts().get(why));
    let work = async {
        match (kind.tls(), shared.tls.as_ref()) {
            (true, Some(tls)) => {
                let mut stream = tls.acceptor().accept(stream).await?;
                stream.write_all(&reply).await?;
                stream.shutdown().await
            }
            _ => {
                let mut stream = stream;
                stream.write_all(&reply).await?;
                stream.shutdown().await
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), work).await;
}
