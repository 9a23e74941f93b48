//! A minimal HTTP/1.1 responder for `GET /metrics`: one request per connection, bounded.
//!
//! Enough for Prometheus and curl, and small enough not to need an HTTP stack: the request
//! head is read (at most [`MAX_HEAD`] bytes, within [`READ_TIMEOUT`]), answered, and the
//! connection closed. At most [`MAX_SCRAPES`] requests are served at once; more are closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Metrics;

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client gets to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client gets to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once.
const MAX_SCRAPES: usize = 8;

/// The OpenMetrics content type, sent when the scraper's `Accept` asks for it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serve `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::error!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "metrics: too many scrapes at once; closing");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics).await {
                tracing::debug!(%peer, error = %e, "metrics: request not answered");
            }
            drop(slot);
        });
    }
}

/// Read one request head and answer it.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timed out"))??;
    let reply = match head {
        Some(head) => respond(&head, metrics),
        None => plain("431 Request Header Fields Too Large", "request head too large\n"),
    };
    let write = async {
        stream.write_all(&reply).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "reply timed out"))?
}

/// The request head up to its blank line; `None` if it exceeds [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() >= MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before the request head ended"));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// Where the head ends: the first empty line (CRLF CRLF, or bare LF LF).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

/// The full HTTP response to a request head.
fn respond(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return plain("404 Not Found", "only /metrics is here\n");
    }
    if method != "GET" && method != "HEAD" {
        return plain("405 Method Not Allowed", "use GET\n");
    }
    let openmetrics = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept") && value.contains("application/openmetrics-text")
        })
    });
    let body = metrics.encode(openmetrics);
    let content_type =
        if openmetrics { OPENMETRICS } else { prometheus_client::encoding::prometheus_text::CONTENT_TYPE };
    let mut reply = response("200 OK", content_type, body.len());
    if method == "GET" {
        reply.extend_from_slice(body.as_bytes());
    }
    reply
}

/// A short plain-text answer.
fn plain(status: &str, body: &str) -> Vec<u8> {
    let mut reply = response(status, "text/plain; charset=utf-8", body.len());
    reply.extend_from_slice(body.as_bytes());
    reply
}

/// A response head announcing `length` body bytes.
fn response(status: &str, content_type: &str, length: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn the_head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(23));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
