//! PROXY protocol (HAProxy's spec, v1 text and v2 binary): read exactly the header a trusted
//! proxy sends before anything else, and find the client's address in it.
//!
//! The bytes are framed here (exact reads, so nothing after the header is consumed: a POP3S
//! ClientHello or a pipelining client's first command stays in the socket) and parsed by `ppp`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a proxy gets to send the whole header (Dovecot's `haproxy_timeout` default).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// The 12 bytes every v2 header starts with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 header the spec allows, CRLF included.
const V1_MAX: usize = 107;

/// The longest v2 header accepted: 16 fixed bytes, the addresses (at most 216) and TLVs.
pub const V2_MAX: usize = 16 + 1024;

/// The shortest header of either version (`PROXY UNKNOWN\r\n`; v2 has at least 16 bytes), so
/// reading this much first never waits for bytes a proxy will not send.
const MIN_HEADER: usize = 15;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The socket failed or closed mid-header.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The header did not arrive in time.
    #[error("no complete PROXY header within {} s", HEADER_TIMEOUT.as_secs())]
    Timeout,
    /// The first bytes are neither a v1 nor a v2 header.
    #[error("the connection does not start with a PROXY header")]
    Missing,
    /// Longer than the bound.
    #[error("PROXY header too long")]
    TooLong,
    /// The header's own fields are wrong.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
}

/// Who the header says is connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A proxied client at this address.
    Client(SocketAddr),
    /// No client address (v2 LOCAL, e.g. HAProxy's health checks; v1 UNKNOWN; v2 UNSPEC or
    /// UNIX): the spec says to use the connection's own endpoints.
    Local,
}

/// Read and parse the header, allowing [`HEADER_TIMEOUT`] for all of it.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Origin, ProxyError> {
    let header = tokio::time::timeout(HEADER_TIMEOUT, read_raw(stream)).await.map_err(|_| ProxyError::Timeout)??;
    parse(&header)
}

/// The header's bytes, exactly: never a byte past its end.
async fn read_raw<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, ProxyError> {
    let mut buf = vec![0; MIN_HEADER];
    stream.read_exact(&mut buf).await?;
    if buf.starts_with(V2_SIGNATURE) {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[MIN_HEADER..]).await?;
        let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if total > V2_MAX {
            return Err(ProxyError::TooLong);
        }
        buf.resize(total, 0);
        stream.read_exact(&mut buf[16..]).await?;
    } else if buf.starts_with(b"PROXY ") {
        // One byte at a time up to the CRLF: at most 92 small reads, once per connection.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyError::TooLong);
            }
            buf.push(stream.read_u8().await?);
        }
    } else {
        return Err(ProxyError::Missing);
    }
    Ok(buf)
}

/// Parse one complete header (v1 or v2).
pub fn parse(header: &[u8]) -> Result<Origin, ProxyError> {
    let malformed = |e: &dyn std::fmt::Display| ProxyError::Malformed(e.to_string());
    if header.starts_with(V2_SIGNATURE) {
        use ppp::v2::{Addresses, Command, Header};
        let header = Header::try_from(header).map_err(|e| malformed(&e))?;
        if header.command == Command::Local {
            return Ok(Origin::Local);
        }
        Ok(match header.addresses {
            Addresses::IPv4(a) => Origin::Client(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::IPv6(a) => Origin::Client(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Unspecified | Addresses::Unix(_) => Origin::Local,
        })
    } else {
        use ppp::v1::{Addresses, Header};
        let header = Header::try_from(header).map_err(|e| malformed(&e))?;
        Ok(match header.addresses {
            Addresses::Tcp4(a) => Origin::Client(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Tcp6(a) => Origin::Client(SocketAddr::from((a.source_address, a.source_port))),
            Addresses::Unknown => Origin::Local,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn ipv4_body() -> Vec<u8> {
        let mut b = vec![127, 0, 0, 9, 127, 0, 0, 1];
        b.extend_from_slice(&4242u16.to_be_bytes());
        b.extend_from_slice(&110u16.to_be_bytes());
        b
    }

    async fn read(input: &[u8]) -> (Result<Origin, ProxyError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(input.to_vec());
        let result = read_header(&mut cursor).await;
        let mut rest = Vec::new();
        cursor.read_to_end(&mut rest).await.unwrap();
        (result, rest)
    }

    #[tokio::test]
    async fn v1_and_v2_give_the_client_and_leave_what_follows() {
        let client = Origin::Client("127.0.0.9:4242".parse().unwrap());
        let (r, rest) = read(b"PROXY TCP4 127.0.0.9 127.0.0.1 4242 110\r\nCAPA\r\n").await;
        assert_eq!(r.unwrap(), client);
        assert_eq!(rest, b"CAPA\r\n");
        let (r, rest) = read(&[v2(1, 0x11, &ipv4_body()), b"\x16\x03\x01".to_vec()].concat()).await;
        assert_eq!(r.unwrap(), client);
        assert_eq!(rest, b"\x16\x03\x01");
        let (r, _) = read(b"PROXY TCP6 ::1 ::2 1 2\r\n").await;
        assert_eq!(r.unwrap(), Origin::Client("[::1]:1".parse().unwrap()));
    }

    #[tokio::test]
    async fn local_and_unknown_mean_the_real_endpoints() {
        assert_eq!(read(&v2(0, 0x00, &[])).await.0.unwrap(), Origin::Local);
        assert_eq!(read(b"PROXY UNKNOWN\r\n").await.0.unwrap(), Origin::Local);
        // v2 with TLVs after the addresses is accepted.
        let mut body = ipv4_body();
        body.extend_from_slice(&[0x04, 0, 2, b'h', b'i']);
        assert!(matches!(read(&v2(1, 0x11, &body)).await.0.unwrap(), Origin::Client(_)));
    }

    #[tokio::test]
    async fn bad_headers_are_refused() {
        let refused = |r: Result<Origin, ProxyError>| r.unwrap_err().to_string();
        assert!(refused(read(b"USER alice\r\nPASS x\r\n").await.0).contains("does not start"));
        assert!(refused(read(b"PROXY TCP4 127.0.0.9 127.0.0.1 4242\r\n").await.0).contains("malformed"));
        assert!(refused(read(b"PROXY TCP4 999.0.0.9 127.0.0.1 1 2\r\n").await.0).contains("malformed"));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(refused(read(&long).await.0).contains("too long"));
        assert!(refused(read(&v2(1, 0x11, &vec![0; 2000])).await.0).contains("too long"));
        assert!(refused(read(&v2(1, 0x11, &[1, 2, 3])).await.0).contains("malformed"));
        // Wrong version nibble.
        let mut bad = v2(1, 0x11, &ipv4_body());
        bad[12] = 0x11;
        assert!(refused(read(&bad).await.0).contains("malformed"));
        // Cut short: the socket closes mid-header.
        assert!(refused(read(b"PROXY TCP4 127.0.0.9").await.0).contains("reading"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_proxy_times_out() {
        let (_keep, mut server) = tokio::io::duplex(64);
        let r = read_header(&mut server).await;
        assert!(matches!(r, Err(ProxyError::Timeout)), "{r:?}");
    }
}
