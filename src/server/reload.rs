//! SIGHUP: re-read `apopd.toml` and apply it to new connections.
//!
//! All or nothing: the file is parsed and validated, the new shared state is built (users
//! files, accounts pool, certificate, reply texts), and every newly wanted listener is bound
//! before anything changes. Any failure is logged and the old configuration stays in force.
//! Then listeners are added and removed, `max_connections` changes, and every later
//! connection sees the new settings; sessions already open keep the ones they started with.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::{Kind, Running, bind_error, bind_metrics, bind_socket, endpoints};
use crate::config::Config;
use crate::shared::Shared;

/// Keys read once at start: a reload that changes them says so and leaves them alone.
const RESTART_ONLY: [&str; 3] = ["run_as_user", "run_as_group", "log_format"];

/// Reload from `path` into `running`, or log why not and change nothing.
pub(super) fn on_hangup(path: &Path, running: &mut Running) {
    match prepare(path, running) {
        Ok(plan) => apply(plan, running),
        Err(e) => tracing::error!("SIGHUP: keeping the old configuration: {e:#}"),
    }
}

/// Everything a reload will change, made ready without changing anything yet.
struct Plan {
    shared: Arc<Shared>,
    changed: Vec<String>,
    /// Listeners to start: a new socket, or an open one with a new kind.
    start: Vec<(std::net::TcpListener, Kind, SocketAddr)>,
    /// Indexes into `running.listeners` to stop.
    stop: Vec<usize>,
    /// `Some(new)` when `metrics_listen` changed (`new` is `None` when it was removed).
    metrics: Option<Option<std::net::TcpListener>>,
}

fn prepare(path: &Path, running: &Running) -> anyhow::Result<Plan> {
    let config = Config::load(path)?;
    let old = running.current.load_full();
    let changed = old.config.changed_keys(&config);
    let shared = Arc::new(old.reload(config)?);
    let mut plan = Plan { shared, changed, start: Vec::new(), stop: Vec::new(), metrics: None };
    if running.socket_activated {
        if plan.changed.iter().any(|k| k == "listen" || k == "listen_tls") {
            tracing::warn!(
                "SIGHUP: listen/listen_tls changed but the sockets come from systemd; change the .socket units"
            );
        }
    } else {
        plan_listeners(&mut plan, running)?;
    }
    let metrics_listen = plan.shared.config.metrics_listen;
    if metrics_listen != old.config.metrics_listen {
        plan.metrics = Some(bind_metrics(&plan.shared.config)?);
    } else if metrics_listen.is_some() && running.metrics.is_none() {
        // It failed to start before: try again.
        plan.metrics = Some(bind_metrics(&plan.shared.config)?);
    }
    Ok(plan)
}

/// Listeners are matched by configured address and TLS-ness: one that stays keeps its socket
/// (and its port, even a port-0 one); one whose `proxy_protocol` changed restarts on the same
/// socket; new addresses are bound now, so a failure rejects the whole reload.
fn plan_listeners(plan: &mut Plan, running: &Running) -> anyhow::Result<()> {
    let wanted = endpoints(&plan.shared.config);
    let mut kept = vec![false; running.listeners.len()];
    for (addr, kind) in wanted {
        let same = running
            .listeners
            .iter()
            .enumerate()
            .find(|(i, l)| !kept[*i] && l.configured == Some(addr) && l.kind.tls() == kind.tls());
        match same {
            Some((i, listening)) if listening.kind == kind => kept[i] = true,
            Some((_, listening)) => {
                let socket = listening.socket.as_ref().map(std::net::TcpListener::try_clone);
                let Some(Ok(socket)) = socket else { anyhow::bail!("cannot reuse the socket of {addr}") };
                plan.start.push((socket, kind, addr));
            }
            None => {
                let socket = bind_socket(addr).map_err(|e| bind_error(addr, e))?;
                plan.start.push((socket, kind, addr));
            }
        }
    }
    plan.stop = kept.iter().enumerate().filter(|(_, kept)| !**kept).map(|(i, _)| i).collect();
    Ok(())
}

fn apply(plan: Plan, running: &mut Running) {
    let Plan { shared, changed, start, stop, metrics } = plan;
    for key in changed.iter().filter(|k| RESTART_ONLY.contains(&k.as_str())) {
        tracing::warn!("SIGHUP: {key} changed; it takes effect at the next restart");
    }
    running.capacity.set_max(shared.config.max_connections());
    running.current.store(shared);
    // Stop first (highest index first, so the others keep their places), then start.
    for i in stop.into_iter().rev() {
        let listening = running.listeners.remove(i);
        listening.task.abort();
        if let Some(Ok(addr)) = listening.socket.as_ref().map(std::net::TcpListener::local_addr) {
            tracing::info!(%addr, kind = ?listening.kind, "SIGHUP: no longer listening");
        }
    }
    for (socket, kind, configured) in start {
        running.start_listener(socket, kind, Some(configured));
    }
    if let Some(metrics) = metrics {
        if let Some((addr, task)) = running.metrics.take() {
            task.abort();
            tracing::info!(%addr, "SIGHUP: metrics no longer listening");
        }
        if let Some(listener) = metrics {
            running.start_metrics(listener);
        }
    }
    let changed = if changed.is_empty() { "nothing".to_owned() } else { changed.join(", ") };
    tracing::info!("SIGHUP: configuration reloaded (changed: {changed}); open sessions keep theirs");
}
