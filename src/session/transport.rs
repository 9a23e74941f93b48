//! What a session runs over, and RETR's zero-copy path on plain TCP.
//!
//! A message file already in wire form (see [`crate::store::Message::verbatim`]) needs no
//! user-space work: on a plain TCP connection RETR hands it to the kernel with `sendfile(2)`.
//! Over TLS the bytes must be encrypted in user space, so [`Transport::plain_socket`] is `None`
//! there and RETR takes the buffered path.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;

/// A stream a session can run over.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// The TCP socket under this stream when what is written to it reaches the client as it
    /// is (plain TCP, no TLS); `None` otherwise.
    fn plain_socket(&self) -> Option<&TcpStream> {
        None
    }
}

impl Transport for TcpStream {
    fn plain_socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for tokio_rustls::server::TlsStream<S> {}

impl Transport for tokio::io::DuplexStream {}

/// Send all of `bytes` with `MSG_MORE`: the kernel holds them back until the next send without
/// it (the end of a `sendfile`), so the status line and the file leave in full segments,
/// without the two `TCP_CORK` system calls per message.
pub async fn send_more(socket: &TcpStream, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    let mut sent = 0;
    while sent < bytes.len() {
        let step = socket.async_io(Interest::WRITABLE, || {
            socket2::SockRef::from(socket).send_with_flags(&bytes[sent..], nix::libc::MSG_MORE)
        });
        sent += super::within(timeout, step).await?;
    }
    Ok(())
}

/// At most this much per `sendfile` call, so the write timeout applies to progress, not to
/// the whole message, and a file not in the page cache holds the session's thread for at
/// most one chunk's disk read at a time (RETR asked the kernel to read ahead when it opened
/// the file, in the blocking pool).
pub const SENDFILE_CHUNK: usize = 256 << 10;

/// Send the first `len` bytes of `file` to `socket` with `sendfile(2)` (no user-space copy),
/// waiting for the socket to take them; each step must make progress within `timeout`.
/// Returns the bytes sent: fewer than `len` only when the file shrank meanwhile.
pub async fn send_file(socket: &TcpStream, file: &File, len: u64, timeout: Duration) -> io::Result<u64> {
    let mut offset: nix::libc::off_t = 0;
    let mut sent = 0u64;
    while sent < len {
        let count = usize::try_from(len - sent).unwrap_or(usize::MAX).min(SENDFILE_CHUNK);
        let step = socket.async_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile(socket.as_fd(), file.as_fd(), Some(&mut offset), count)
                .map_err(io::Error::from)
        });
        let n = super::within(timeout, step).await?;
        if n == 0 {
            break; // end of file: it shrank
        }
        sent += n as u64;
    }
    Ok(sent)
}
