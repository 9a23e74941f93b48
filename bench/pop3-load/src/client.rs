//! A minimal POP3 client over TCP: every read and write has a deadline, nothing the server
//! sends can panic it, and multi-line responses are read as raw bytes for `verify`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

/// The longest status line accepted.
const MAX_LINE: usize = 8 * 1024;
/// The largest multi-line response accepted (a guard against a runaway server).
pub const MAX_MULTILINE: usize = 256 * 1024 * 1024;

/// Refuse anything but loopback: this tool generates load and must never aim it elsewhere.
pub fn check_loopback(addr: &SocketAddr) -> anyhow::Result<()> {
    if addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        bail!("refusing non-loopback target {addr}: pop3-load only talks to 127.0.0.0/8 or ::1")
    }
}

/// How to log in.
#[derive(Debug, Clone)]
pub enum Auth {
    /// USER/PASS.
    Pass(String),
    /// APOP with this shared secret.
    Apop(String),
}

/// One POP3 connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of unread data in `buf`.
    pos: usize,
    op_timeout: Duration,
    /// The greeting line, CRLF removed.
    pub greeting: String,
}

impl Conn {
    /// Connect and read the greeting (which must be +OK).
    pub async fn connect(addr: SocketAddr, op_timeout: Duration) -> anyhow::Result<Conn> {
        Self::connect_from(addr, None, op_timeout).await
    }

    /// Connect from `source` (any port; the kernel's choice when None) and read the greeting,
    /// which must be +OK.
    pub async fn connect_from(addr: SocketAddr, source: Option<IpAddr>, op_timeout: Duration) -> anyhow::Result<Conn> {
        let mut conn = Self::open(addr, source, op_timeout).await?;
        let greeting = conn.line().await.context("greeting")?;
        if !greeting.starts_with("+OK") {
            bail!("greeting: {greeting}");
        }
        conn.greeting = greeting;
        Ok(conn)
    }

    /// Connect from `source` without reading anything.
    pub async fn open(addr: SocketAddr, source: Option<IpAddr>, op_timeout: Duration) -> anyhow::Result<Conn> {
        let connect = async {
            match source {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let socket = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(addr).await
                }
            }
        };
        let stream = timeout(op_timeout, connect).await.map_err(|_| anyhow!("connect timed out"))?.with_context(
            || match source {
                Some(ip) => format!("connect from {ip}"),
                None => "connect".to_owned(),
            },
        )?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(Conn { stream, buf: Vec::new(), pos: 0, op_timeout, greeting: String::new() })
    }

    /// Give the read buffer back when nothing unread is in it: a connection held idle then
    /// costs the client only its socket.
    pub fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// Without waiting: has the server closed this connection, or sent something unasked
    /// (such as an eviction's `-ERR`)? Some(text) when so (the text may be empty).
    pub fn server_spoke(&mut self) -> Option<String> {
        if self.pos < self.buf.len() {
            // Read along with an earlier reply (e.g. the greeting) but not consumed yet.
            let text = String::from_utf8_lossy(&self.buf[self.pos..]).trim_end().to_owned();
            self.buf = Vec::new();
            self.pos = 0;
            return Some(text);
        }
        let mut byte = [0u8; 512];
        match self.stream.try_read(&mut byte) {
            Ok(0) => Some(String::new()),
            Ok(n) => Some(String::from_utf8_lossy(&byte[..n]).trim_end().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// The `<…>` APOP timestamp of the greeting, when there is one.
    pub fn timestamp(&self) -> Option<&str> {
        let start = self.greeting.find('<')?;
        let end = self.greeting[start..].find('>')? + start;
        Some(&self.greeting[start..=end])
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.buf.len();
        // 64 KiB, or more while a big answer is arriving (fewer reads for a 5 MB UIDL).
        let chunk = (len - self.pos).clamp(64 * 1024, 512 * 1024);
        self.buf.resize(len + chunk, 0);
        let read = timeout(self.op_timeout, self.stream.read(&mut self.buf[len..])).await;
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                self.buf.truncate(len);
                return Err(e).context("read");
            }
            Err(_) => {
                self.buf.truncate(len);
                bail!("no data from the server within {:?}", self.op_timeout);
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            bail!("connection closed by the server");
        }
        Ok(())
    }

    /// Read one CRLF-terminated line; returned without the CRLF.
    pub async fn line(&mut self) -> anyhow::Result<String> {
        let mut scanned = 0usize; // bytes after self.pos known to hold no LF
        loop {
            let data = &self.buf[self.pos..];
            if let Some(i) = memchr::memchr(b'\n', &data[scanned..]) {
                let end = scanned + i;
                let line = &data[..end];
                let text = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned();
                self.pos += end + 1;
                return Ok(text);
            }
            scanned = data.len();
            if scanned > MAX_LINE {
                bail!("status line longer than {MAX_LINE} bytes");
            }
            self.fill().await?;
        }
    }

    /// Read the body of a multi-line response up to and including the ".\r\n" terminator,
    /// raw (still dot-stuffed); `verify::unstuff` decodes it.
    pub async fn multiline_raw(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut scanned = 0usize; // bytes after self.pos already known to hold no terminator
        loop {
            let data = &self.buf[self.pos..];
            if data.starts_with(b".\r\n") {
                let body = data[..3].to_vec();
                self.pos += 3;
                return Ok(body);
            }
            let from = scanned.saturating_sub(4);
            if let Some(i) = memchr::memmem::find(&data[from..], b"\r\n.\r\n") {
                let end = from + i + 5;
                let body = data[..end].to_vec();
                self.pos += end;
                return Ok(body);
            }
            scanned = data.len();
            if scanned > MAX_MULTILINE {
                bail!("multi-line response larger than {MAX_MULTILINE} bytes");
            }
            self.fill().await?;
        }
    }

    /// Send one command line.
    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        timeout(self.op_timeout, self.stream.write_all(&bytes))
            .await
            .map_err(|_| anyhow!("write timed out"))?
            .context("write")
    }

    /// Send a command and return its status line, which must be +OK.
    pub async fn ok(&mut self, line: &str) -> anyhow::Result<String> {
        self.send(line).await?;
        let reply = self.line().await?;
        if !reply.starts_with("+OK") {
            let shown = line.split(' ').next().unwrap_or(line);
            bail!("{shown}: {reply}");
        }
        Ok(reply)
    }

    /// Log in as `user`.
    pub async fn login(&mut self, user: &str, auth: &Auth) -> anyhow::Result<()> {
        match auth {
            Auth::Pass(password) => {
                self.ok(&format!("USER {user}")).await?;
                self.ok(&format!("PASS {password}")).await.map(drop)
            }
            Auth::Apop(secret) => {
                let ts = self.timestamp().context("the greeting has no APOP timestamp")?.to_owned();
                let digest = apopd::auth::apop::digest(&ts, secret.as_bytes());
                self.ok(&format!("APOP {user} {digest}")).await.map(drop)
            }
        }
    }

    /// RETR `n` → the raw (still dot-stuffed) body.
    pub async fn retr(&mut self, n: u64) -> anyhow::Result<Vec<u8>> {
        self.ok(&format!("RETR {n}")).await?;
        self.multiline_raw().await
    }

    /// STAT → (count, octets).
    pub async fn stat(&mut self) -> anyhow::Result<(u64, u64)> {
        let reply = self.ok("STAT").await?;
        let mut words = reply.split_ascii_whitespace().skip(1);
        let count = words.next().and_then(|w| w.parse().ok()).context("STAT: no count")?;
        let octets = words.next().and_then(|w| w.parse().ok()).context("STAT: no size")?;
        Ok((count, octets))
    }

    /// LIST → (number, size) pairs.
    pub async fn list(&mut self) -> anyhow::Result<Vec<(u64, u64)>> {
        let raw = self.multi_raw("LIST").await?;
        parse_list(&raw)
    }

    /// Send a command whose answer is multi-line and return the raw body once it has all
    /// arrived (to time a server's answer apart from the client's decoding of it).
    pub async fn multi_raw(&mut self, command: &str) -> anyhow::Result<Vec<u8>> {
        self.ok(command).await?;
        self.multiline_raw().await
    }

    /// QUIT and wait for the server to close (the +OK means UPDATE succeeded).
    pub async fn quit(mut self) -> anyhow::Result<()> {
        self.ok("QUIT").await?;
        // Let the server close first so TIME_WAIT lands on its side; don't insist.
        let mut byte = [0u8; 1];
        let _ = timeout(Duration::from_millis(200), self.stream.read(&mut byte)).await;
        Ok(())
    }
}

/// A raw LIST body → (number, size) pairs.
pub fn parse_list(raw: &[u8]) -> anyhow::Result<Vec<(u64, u64)>> {
    let body = crate::verify::unstuff(raw).map_err(|e| anyhow!("LIST: {e}"))?;
    parse_pairs(&body, |w| w.parse().ok()).context("LIST: malformed line")
}

/// A raw UIDL body → (number, unique-id) pairs.
pub fn parse_uidl(raw: &[u8]) -> anyhow::Result<Vec<(u64, String)>> {
    let body = crate::verify::unstuff(raw).map_err(|e| anyhow!("UIDL: {e}"))?;
    parse_pairs(&body, |w| Some(w.to_owned())).context("UIDL: malformed line")
}

/// `n value` per CRLF line. Byte-level with one pass per line: a 100,000-line UIDL listing
/// must cost the client little next to the server it measures.
fn parse_pairs<T>(body: &[u8], value: impl Fn(&str) -> Option<T>) -> Option<Vec<(u64, T)>> {
    let mut out = Vec::with_capacity(body.len() / 16);
    let mut rest = body;
    while !rest.is_empty() {
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let space = memchr::memchr(b' ', line)?;
        let (number, word) = (&line[..space], &line[space + 1..]);
        let word = word.split(|&b| b == b' ').next().filter(|w| !w.is_empty())?;
        if number.is_empty() || number.len() > 19 || !number.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = number.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        out.push((n, value(std::str::from_utf8(word).ok()?)?));
    }
    Some(out)
}

/// Connect and log in, in one step.
pub async fn session(addr: SocketAddr, user: &str, auth: &Auth, op_timeout: Duration) -> anyhow::Result<Conn> {
    session_from(addr, None, user, auth, op_timeout).await
}

/// Connect from `source` and log in, in one step.
pub async fn session_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
    user: &str,
    auth: &Auth,
    op_timeout: Duration,
) -> anyhow::Result<Conn> {
    let mut conn = Conn::connect_from(addr, source, op_timeout).await?;
    conn.login(user, auth).await.with_context(|| format!("login as {user}"))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        for ok in ["127.0.0.1:110", "127.8.9.10:1", "[::1]:110", "[::ffff:127.0.0.1]:110"] {
            assert!(check_loopback(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["10.0.0.1:110", "0.0.0.0:110", "[::]:110", "192.0.2.1:110", "[2001:db8::1]:110"] {
            assert!(check_loopback(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs_parse() {
        assert_eq!(parse_pairs(b"1 10\r\n2 20\r\n", |w| w.parse::<u64>().ok()), Some(vec![(1, 10), (2, 20)]));
        assert_eq!(parse_pairs(b"1 x\r\n", |w| w.parse::<u64>().ok()), None);
        assert_eq!(parse_pairs(b"x 1\r\n", |w| w.parse::<u64>().ok()), None);
        assert_eq!(parse_pairs(b"1\r\n", |w| w.parse::<u64>().ok()), None);
        assert_eq!(parse_pairs(b"7 u-1.a\r\n", |w| Some(w.to_owned())), Some(vec![(7, "u-1.a".to_owned())]));
    }
}
