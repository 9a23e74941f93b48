//! Listeners, the connection limits, graceful shutdown and the SIGHUP reload ([`reload`]);
//! the state sessions share lives in [`crate::shared`]; PROXY protocol headers in [`proxy`].

pub mod proxy;
mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::capacity::{Admission, Capacity, Ticket};
use crate::config::{Config, Listen};
use crate::i18n::Key;
use crate::metrics::{self, Handshake, HandshakeResult, Refusal};
use crate::protocol::response;
use crate::session;
use crate::shared::{IpSlot, Shared};

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
    listeners: Vec<Bound>,
    /// The `/metrics` listener, when `metrics_listen` is set.
    metrics: Option<std::net::TcpListener>,
    shared: Arc<Shared>,
    /// Where SIGHUP re-reads the configuration from, and the signal (`None`: not watched).
    hangup: Option<(PathBuf, tokio::signal::unix::Signal)>,
    /// The listeners came from systemd: `listen` and `listen_tls` changes cannot apply.
    socket_activated: bool,
}

/// A listening socket and what it serves.
struct Bound {
    listener: std::net::TcpListener,
    kind: Kind,
    /// The configured address (port 0 included) it was bound for; `None` from systemd.
    configured: Option<SocketAddr>,
}

impl Server {
    /// Load users and certificates, then bind every `listen` and `listen_tls` address.
    ///
    /// Synchronous and runtime-free, so privileges can be dropped between this and [`Server::run`].
    pub fn bind(config: Config) -> anyhow::Result<Server> {
        let shared = Arc::new(Shared::new(config)?);
        let mut listeners = Vec::new();
        for (addr, kind) in endpoints(&shared.config) {
            let listener = bind_socket(addr).map_err(|e| bind_error(addr, e))?;
            listeners.push(Bound { listener, kind, configured: Some(addr) });
        }
        let metrics = bind_metrics(&shared.config)?;
        Ok(Server { listeners, metrics, shared, hangup: None, socket_activated: false })
    }

    /// Serve on sockets bound by someone else (systemd socket activation) instead of the config's.
    pub fn with_listeners(config: Config, listeners: Vec<(std::net::TcpListener, Kind)>) -> anyhow::Result<Server> {
        let shared = Arc::new(Shared::new(config)?);
        if shared.tls.is_none() && listeners.iter().any(|(_, kind)| kind.tls()) {
            anyhow::bail!("a pop3s socket was passed in but tls_cert/tls_key are not configured");
        }
        let metrics = bind_metrics(&shared.config)?;
        let listeners =
            listeners.into_iter().map(|(listener, kind)| Bound { listener, kind, configured: None }).collect();
        Ok(Server { listeners, metrics, shared, hangup: None, socket_activated: true })
    }

    /// Re-read the configuration from `path` on every SIGHUP (see [`reload`]). Call it
    /// inside the runtime, before telling anyone the server is ready: the signal is watched
    /// from here on.
    pub fn reload_on_hangup(mut self, path: PathBuf) -> anyhow::Result<Server> {
        use tokio::signal::unix::{SignalKind, signal};
        let hangups = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        self.hangup = Some((path, hangups));
        Ok(self)
    }

    /// The addresses actually bound (useful with port 0), with their kind.
    pub fn local_addrs(&self) -> Vec<(SocketAddr, Kind)> {
        self.listeners.iter().filter_map(|b| Some((b.listener.local_addr().ok()?, b.kind))).collect()
    }

    /// The address the `/metrics` endpoint is bound to, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref()?.local_addr().ok()
    }

    /// What every session shares.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Accept and serve connections until `shutdown` completes, reloading the configuration
    /// on SIGHUP; then stop accepting, tell sessions to close (those in UPDATE finish first)
    /// and wait up to `shutdown_grace_secs`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let current = Arc::new(ArcSwap::new(self.shared.clone()));
        let mut running = Running {
            current: current.clone(),
            capacity: Capacity::new(self.shared.config.max_connections()),
            tasks: tokio::task::JoinSet::new(),
            listeners: Vec::new(),
            metrics: None,
            socket_activated: self.socket_activated,
        };
        for Bound { listener, kind, configured } in self.listeners {
            running.start_listener(listener, kind, configured);
        }
        if let Some(listener) = self.metrics {
            running.start_metrics(listener);
        }
        let mut hangup = self.hangup;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(path) = async { let (path, hangups) = hangup.as_mut()?; hangups.recv().await.map(|()| path.clone()) } => {
                    reload::on_hangup(&path, &mut running);
                }
            }
        }
        tracing::info!("shutting down: no new connections");
        running.tasks.shutdown().await;
        // The duplicate descriptors too, or the ports would still take connections.
        running.listeners.clear();
        let shared = current.load_full();
        shared.shutdown.send_replace(true);
        let grace = Duration::from_secs(shared.config.shutdown_grace_secs);
        match tokio::time::timeout(grace, running.capacity.all_closed()).await {
            Ok(()) => tracing::info!("all sessions closed"),
            Err(_) => tracing::warn!("shutdown grace period over; dropping the remaining sessions"),
        }
    }
}

/// The listeners and limits of a running server, as a reload finds and changes them.
struct Running {
    /// The configuration new connections get.
    current: Arc<ArcSwap<Shared>>,
    capacity: Arc<Capacity>,
    tasks: tokio::task::JoinSet<()>,
    listeners: Vec<Listening>,
    /// The `/metrics` listener: its address and accept task.
    metrics: Option<(SocketAddr, tokio::task::AbortHandle)>,
    socket_activated: bool,
}

/// One accept loop.
struct Listening {
    kind: Kind,
    /// The configured address it serves (`None` for a socket from systemd).
    configured: Option<SocketAddr>,
    /// The same socket (a duplicate descriptor), so a reload that only changes
    /// `proxy_protocol` can restart the loop on it instead of binding the address twice.
    socket: Option<std::net::TcpListener>,
    task: tokio::task::AbortHandle,
}

impl Running {
    fn start_listener(&mut self, listener: std::net::TcpListener, kind: Kind, configured: Option<SocketAddr>) {
        let socket = listener.try_clone().ok();
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => return tracing::error!("cannot use listening socket: {e}"),
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, ?kind, "listening");
        }
        let task = self.tasks.spawn(accept_loop(listener, kind, self.current.clone(), self.capacity.clone()));
        self.listeners.push(Listening { kind, configured, socket, task });
    }

    fn start_metrics(&mut self, listener: std::net::TcpListener) {
        let Ok(addr) = listener.local_addr() else { return };
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                let metrics = self.current.load().metrics.clone();
                tracing::info!(%addr, "metrics listening");
                self.metrics = Some((addr, self.tasks.spawn(metrics::http::serve(listener, metrics))));
            }
            Err(e) => tracing::error!("cannot use the metrics socket: {e}"),
        }
    }
}

/// Every `listen` and `listen_tls` address with the kind of listener it is.
fn endpoints(config: &Config) -> Vec<(SocketAddr, Kind)> {
    let wanted = config.listen.iter().map(|l| (l, false)).chain(config.listen_tls.iter().map(|l| (l, true)));
    wanted.map(|(listen, tls)| (listen.addr(), Kind::of(listen, tls))).collect()
}

/// A bind failure, with what to do about a privileged port the process can no longer bind.
fn bind_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    let unprivileged_from: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if e.kind() == std::io::ErrorKind::PermissionDenied && addr.port() < unprivileged_from {
        anyhow::anyhow!(
            "cannot listen on {addr}: port {} is privileged and this process (uid {}) has neither root nor \
             CAP_NET_BIND_SERVICE; a running apopd cannot get them back: restart it to listen there ({e})",
            addr.port(),
            nix::unistd::geteuid()
        )
    } else {
        anyhow::anyhow!("cannot listen on {addr}: {e}")
    }
}

/// The `metrics_listen` socket, bound with the others (before privileges are dropped).
fn bind_metrics(config: &Config) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = config.metrics_listen else { return Ok(None) };
    bind_socket(addr).map(Some).map_err(|e| bind_error(addr, e)).context("metrics_listen")
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

/// Refusals answered at once; past this, over-limit connections are just closed, so a flood
/// cannot make the refusals themselves (a TLS handshake each on POP3S) the unbounded work.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

async fn accept_loop(listener: TcpListener, kind: Kind, current: Arc<ArcSwap<Shared>>, capacity: Arc<Capacity>) {
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
        // Each connection gets the configuration current when it arrived, for its whole life.
        let shared = current.load_full();
        let _ = stream.set_nodelay(true);
        if kind.proxy() && !shared.config.proxy_trusted(peer.ip()) {
            // Not a proxy we trust: no greeting, nothing read (its header would be a lie).
            tracing::warn!(%peer, "PROXY listener: connection from outside proxy_trusted_networks; closing");
            shared.metrics.refused(Refusal::UntrustedProxy);
            continue;
        }
        // The per-IP limit first, so one address cannot evict everybody else's connections.
        // Behind a proxy the per-IP slot is the client's: taken once the header is read.
        let slot = match kind.proxy() {
            true => None,
            false => match shared.admit(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    refuse_later(stream, peer, kind, &shared, &refusals, Refusal::PerIp);
                    continue;
                }
            },
        };
        let ticket = match capacity.admit() {
            Admission::Admitted(ticket) => ticket,
            Admission::Evicted(ticket) => {
                shared.metrics.evicted();
                ticket
            }
            Admission::Full => {
                drop(slot);
                refuse_later(stream, peer, kind, &shared, &refusals, Refusal::MaxConnections);
                continue;
            }
        };
        match slot {
            None => drop(tokio::spawn(serve_proxied(stream, peer, kind, shared.clone(), ticket))),
            Some(slot) => {
                shared.metrics.accepted(kind.tls());
                tokio::spawn(serve_connection(stream, peer, kind, shared.clone(), ticket, slot));
            }
        }
    }
}

/// Count and log a refusal, and answer it in the background (if not too many are in flight).
fn refuse_later(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shared: &Arc<Shared>,
    refusals: &Arc<Semaphore>,
    reason: Refusal,
) {
    let (why, key) = match reason {
        Refusal::PerIp => ("too many connections from your address", Key::TooManyConnectionsIp),
        _ => ("too many connections", Key::TooManyConnections),
    };
    tracing::warn!(%peer, "{why}; refusing");
    shared.metrics.refused(reason);
    let Ok(refusal) = refusals.clone().try_acquire_owned() else { return };
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

/// A connection on a PROXY listener: the header first (bounded in size and time), then the
/// client's address is the peer for everything (per-IP limit, throttle, plaintext policy, logs);
/// the proxy's own address is logged as `via`.
async fn serve_proxied(mut stream: TcpStream, proxy_addr: SocketAddr, kind: Kind, shared: Arc<Shared>, ticket: Ticket) {
    let header = tokio::select! {
        header = proxy::read_header(&mut stream) => header,
        _ = ticket.evicted() => return tracing::info!(peer = %proxy_addr, "server full: evicted before the PROXY header"),
    };
    let client = match header {
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
            serve_connection(stream, client, kind, shared, ticket, slot).instrument(span).await
        }
        None => {
            tracing::warn!(parent: &span, peer = %client, "too many connections from your address; refusing");
            shared.metrics.refused(Refusal::PerIp);
            drop(ticket);
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
    ticket: Ticket,
    slot: IpSlot,
) {
    match (kind.tls(), shared.tls.as_ref()) {
        // Boxed: a TLS stream is large, and every plain session's task would carry room for it.
        (true, Some(tls)) => {
            // Boxed: the TLS session is large and rare; a plain session's task stays small.
            Box::pin(async {
                let handshake = tokio::time::timeout(session::HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
                let handshake = tokio::select! {
                    handshake = handshake => handshake,
                    _ = ticket.evicted() => return tracing::info!(%peer, "server full: evicted during the TLS handshake"),
                };
                shared.metrics.handshake(Handshake::Implicit, HandshakeResult::of(&handshake));
                match handshake {
                    Ok(Ok(stream)) => session::serve_admitted(stream, peer, shared.clone(), true, ticket).await,
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            })
            .await
        }
        _ => session::serve_admitted(stream, peer, shared.clone(), false, ticket).await,
    }
    // The connection's per-IP count is given back only now (its ticket went with the session).
    drop(slot);
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
