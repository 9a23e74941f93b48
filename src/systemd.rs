//! systemd integration: socket activation (`LISTEN_FDS`) and readiness (`sd_notify`).

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

use anyhow::Context;

use crate::server::Kind;

/// The `FileDescriptorName=` that marks an inherited socket as implicit TLS.
pub const TLS_FD_NAME: &str = "pop3s";

/// The `FileDescriptorName=` of a plain socket whose connections start with a PROXY header.
pub const PROXY_FD_NAME: &str = "pop3-proxy";

/// The `FileDescriptorName=` of an implicit-TLS socket whose connections start with a PROXY header.
pub const PROXY_TLS_FD_NAME: &str = "pop3s-proxy";

/// Listening sockets passed by systemd, if any, with their kind (by name: `pop3s` → TLS,
/// `pop3-proxy` / `pop3s-proxy` → the same behind a PROXY header; anything else → plain).
pub fn inherited_listeners() -> anyhow::Result<Vec<(TcpListener, Kind)>> {
    let fds: Vec<(RawFd, String)> =
        sd_notify::listen_fds_with_names().context("cannot read LISTEN_FDS from systemd")?.collect();
    let mut listeners = Vec::with_capacity(fds.len());
    for (fd, name) in fds {
        // SAFETY: systemd passed these descriptors to this process (LISTEN_PID checked by
        // sd_notify); nothing else in the process owns them.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true).context("inherited socket")?;
        let kind = match name.as_str() {
            TLS_FD_NAME => Kind::Tls,
            PROXY_FD_NAME => Kind::ProxyPlain,
            PROXY_TLS_FD_NAME => Kind::ProxyTls,
            _ => Kind::Plain,
        };
        listeners.push((listener, kind));
    }
    Ok(listeners)
}

/// Tell systemd we are ready (no-op outside systemd).
pub fn ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("sd_notify READY failed: {e}");
    }
}

/// Tell systemd we are stopping (no-op outside systemd).
pub fn stopping() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::warn!("sd_notify STOPPING failed: {e}");
    }
}
