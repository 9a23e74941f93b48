//! RETR's two paths over real sockets: files already in wire form (CRLF lines, none starting
//! with `.`) go to a plain TCP socket with `sendfile`; everything else, TOP, and every TLS
//! session take the buffered path that converts line endings and byte-stuffs. Both must give
//! byte-exact RFC 1939 responses, also for files that grow or shrink after LIST, and the
//! `apopd_retr_zero_copy_bytes_total` counter shows which path was taken.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A clean file bigger than a socket buffer, so `sendfile` has to wait for the client.
fn big_clean() -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nSubject: big\r\n\r\n".to_vec();
    let mut i = 0u32;
    while m.len() < 600_000 {
        m.extend_from_slice(format!("line {i} of a message already in wire form, no dots here\r\n").as_bytes());
        i += 1;
    }
    m
}

/// A clean file whose name gives its size (`,S=`, `,W=`), so the scan never reads it.
const SIZED: &[u8] = b"Subject: sized name\r\n\r\nthe scan does not read me\r\n";

/// The messages of the test mailbox, in order: `(file name, content)`.
fn messages() -> Vec<(String, Vec<u8>)> {
    let sized = format!("1700000008.M8P1.test,S={0},W={0}", SIZED.len());
    [
        ("1700000001.M1P1.test".to_owned(), big_clean()),
        ("1700000002.M2P1.test".to_owned(), b"Subject: lf\n\n.dot line\n..two\nplain\n.\n".to_vec()),
        ("1700000003.M3P1.test".to_owned(), Vec::new()),
        ("1700000004.M4P1.test".to_owned(), b"Subject: grows\r\n\r\nfirst\r\n".to_vec()),
        ("1700000005.M5P1.test".to_owned(), b"Subject: shrinks\r\n\r\nkept\r\ncut off later\r\n".to_vec()),
        ("1700000006.M6P1.test".to_owned(), b"Subject: no final line end\r\n\r\nlast".to_vec()),
        ("1700000007.M7P1.test".to_owned(), b"Subject: small clean\r\n\r\nhello\r\n".to_vec()),
        (sized, SIZED.to_vec()),
    ]
    .into()
}

/// What RETR must send after its status line: CRLF lines, byte-stuffed, terminated.
fn wire(file: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in crlf(file).split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A server whose user alice has exactly [`messages`], with metrics and TLS on.
async fn server() -> TestServer {
    let fixture = Fixture::new(&format!("metrics_listen = \"127.0.0.1:0\"\n{TLS_CONFIG}"));
    let maildir = fixture.maildir("alice");
    for sub in ["cur", "new"] {
        for entry in std::fs::read_dir(maildir.join(sub)).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
    let _ = std::fs::remove_file(maildir.join("apopd.index"));
    for (name, content) in messages() {
        std::fs::write(maildir.join("new").join(name), content).unwrap();
    }
    TestServer::start_on(fixture).await
}

fn message_path(server: &TestServer, n: usize) -> std::path::PathBuf {
    server.fixture.maildir("alice").join("new").join(&messages()[n - 1].0)
}

/// `apopd_retr_zero_copy_bytes_total` from `/metrics`.
async fn zero_copy_bytes(metrics: SocketAddr) -> u64 {
    let mut stream = TcpStream::connect(metrics).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let line = text.lines().find(|l| l.starts_with("apopd_retr_zero_copy_bytes_total ")).expect("the counter");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// A raw POP3 client that keeps every byte the server sends.
struct Raw<S> {
    io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn line(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        let read = self.io.read_until(b'\n', &mut buf);
        tokio::time::timeout(std::time::Duration::from_secs(30), read).await.unwrap().unwrap();
        buf
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.io.get_mut().write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        String::from_utf8(self.line().await).unwrap()
    }

    /// Everything after a multi-line status line, terminator included, as sent.
    async fn multi_raw(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await;
            assert!(line.ends_with(b"\r\n"), "not a CRLF line: {line:?}");
            out.extend_from_slice(&line);
            if line == b".\r\n" {
                return out;
            }
        }
    }

    /// Log in as alice with APOP; `greeting` is the greeting line already read.
    async fn login(&mut self, greeting: &str) {
        let ts = &greeting[greeting.find('<').unwrap()..=greeting.rfind('>').unwrap()];
        let digest = apopd::auth::apop::digest(ts, ALICE_APOP_SECRET.as_bytes());
        let reply = self.cmd(&format!("APOP alice {digest}")).await;
        assert!(reply.starts_with("+OK"), "{reply}");
    }

    /// RETR n: the status line must announce `size`; returns the rest as sent.
    async fn retr(&mut self, n: usize, size: usize) -> Vec<u8> {
        let status = self.cmd(&format!("RETR {n}")).await;
        assert_eq!(status, format!("+OK {size} octets\r\n"), "RETR {n}");
        self.multi_raw().await
    }
}

async fn plain(server: &TestServer) -> Raw<TcpStream> {
    let mut c = Raw { io: BufReader::new(TcpStream::connect(server.addr).await.unwrap()) };
    let greeting = String::from_utf8(c.line().await).unwrap();
    c.login(&greeting).await;
    c
}

/// Every message's RETR is byte-exact on `c`.
async fn retrieves_every_message_exactly<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Raw<S>) {
    for (i, (_, content)) in messages().iter().enumerate() {
        let expected = wire(content);
        let got = c.retr(i + 1, crlf(content).len()).await;
        assert!(got == expected, "RETR {} differs: {} bytes, expected {}", i + 1, got.len(), expected.len());
    }
}

#[tokio::test]
async fn plain_retr_is_byte_exact_and_clean_files_go_by_sendfile() {
    let server = server().await;
    let metrics = server.metrics_addr.unwrap();
    let mut c = plain(&server).await;
    assert_eq!(zero_copy_bytes(metrics).await, 0);

    retrieves_every_message_exactly(&mut c).await;
    // Exactly the clean files went by sendfile (3 is empty), and all of them: not 2 (LF and
    // dot lines) nor 6 (no line end at the end), nor 8 (clean, but the scan did not read it).
    let clean: u64 = [1, 3, 4, 5, 7].iter().map(|&n| messages()[n - 1].1.len() as u64).sum();
    assert_eq!(zero_copy_bytes(metrics).await, clean);

    // TOP is always buffered.
    let status = c.cmd("TOP 1 2").await;
    assert!(status.starts_with("+OK"), "{status}");
    let top = c.multi_raw().await;
    assert!(
        top.starts_with(b"From: a@example.org\r\nSubject: big\r\n\r\nline 0 of")
            && top.ends_with(b"dots here\r\n.\r\n")
    );
    assert_eq!(zero_copy_bytes(metrics).await, clean);

    // Pipelined RETRs of clean files: each response complete and in order.
    c.io.get_mut().write_all(b"RETR 7\r\nRETR 1\r\nRETR 7\r\nNOOP\r\n").await.unwrap();
    for n in [7, 1, 7] {
        let content = &messages()[n - 1].1;
        assert_eq!(String::from_utf8(c.line().await).unwrap(), format!("+OK {} octets\r\n", content.len()));
        assert!(c.multi_raw().await == wire(content), "pipelined RETR {n}");
    }
    assert_eq!(c.line().await, b"+OK\r\n");
    let pipelined = big_clean().len() as u64 + 2 * messages()[6].1.len() as u64;
    assert_eq!(zero_copy_bytes(metrics).await, clean + pipelined);
    assert_eq!(c.cmd("QUIT").await.get(..3), Some("+OK"));

    // The next session knows the clean files from the index.
    let mut c = plain(&server).await;
    let before = zero_copy_bytes(metrics).await;
    assert!(c.retr(7, messages()[6].1.len()).await == wire(&messages()[6].1));
    assert_eq!(zero_copy_bytes(metrics).await, before + messages()[6].1.len() as u64);
}

#[tokio::test]
async fn retr_learns_that_a_file_is_in_wire_form_and_the_index_remembers_it() {
    let server = server().await;
    let metrics = server.metrics_addr.unwrap();
    let size = SIZED.len() as u64;
    let mut c = plain(&server).await;
    assert!(c.retr(8, SIZED.len()).await == wire(SIZED));
    assert_eq!(zero_copy_bytes(metrics).await, 0, "not read by the scan: the first RETR is buffered");
    assert!(c.retr(8, SIZED.len()).await == wire(SIZED));
    assert_eq!(zero_copy_bytes(metrics).await, size, "learnt by the first RETR");
    // An LF file is never learnt.
    let lf = &messages()[1].1;
    for _ in 0..2 {
        assert!(c.retr(2, crlf(lf).len()).await == wire(lf));
    }
    assert_eq!(zero_copy_bytes(metrics).await, size);
    assert!(c.cmd("QUIT").await.starts_with("+OK"));

    let index = std::fs::read_to_string(server.fixture.maildir("alice").join("apopd.index")).unwrap();
    assert!(index.lines().any(|l| l.contains(" N ") && l.ends_with(&messages()[7].0)), "{index}");
    let mut c = plain(&server).await;
    assert!(c.retr(8, SIZED.len()).await == wire(SIZED));
    assert_eq!(zero_copy_bytes(metrics).await, 2 * size, "remembered in apopd.index");
}

#[tokio::test]
async fn files_that_grow_or_shrink_after_list_still_give_well_formed_responses() {
    let server = server().await;
    let metrics = server.metrics_addr.unwrap();
    let mut c = plain(&server).await;
    let grows = messages()[3].1.clone();
    let shrinks = messages()[4].1.clone();
    let small = messages()[6].1.clone();

    // Appended after LIST: cut at the announced size (the buffered path).
    let mut file = std::fs::OpenOptions::new().append(true).open(message_path(&server, 4)).unwrap();
    std::io::Write::write_all(&mut file, b"appended\r\n.evil\r\n").unwrap();
    assert!(c.retr(4, grows.len()).await == wire(&grows));

    // Cut at a line end after LIST: what is left, terminated.
    let kept = b"Subject: shrinks\r\n\r\nkept\r\n";
    std::fs::write(message_path(&server, 5), kept).unwrap();
    assert!(c.retr(5, shrinks.len()).await == wire(kept));

    // Cut inside a line: the line is ended, then the terminator.
    std::fs::write(message_path(&server, 7), &small[..small.len() - 4]).unwrap();
    assert_eq!(c.retr(7, small.len()).await, b"Subject: small clean\r\n\r\nhel\r\n.\r\n");

    // None of these went by sendfile: the length no longer matched.
    assert_eq!(zero_copy_bytes(metrics).await, 0);
    assert_eq!(c.cmd("NOOP").await, "+OK\r\n");
}

#[tokio::test]
async fn retr_over_tls_is_byte_exact_and_never_zero_copy() {
    let server = server().await;
    let metrics = server.metrics_addr.unwrap();

    // POP3S.
    let tcp = TcpStream::connect(server.tls_addr.unwrap()).await.unwrap();
    let mut c = Raw { io: BufReader::new(tls_handshake(tcp).await) };
    let greeting = String::from_utf8(c.line().await).unwrap();
    c.login(&greeting).await;
    retrieves_every_message_exactly(&mut c).await;
    assert_eq!(c.cmd("QUIT").await.get(..3), Some("+OK"));

    // STLS.
    let mut tcp = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    let mut greeting = String::new();
    tcp.read_line(&mut greeting).await.unwrap();
    tcp.get_mut().write_all(b"STLS\r\n").await.unwrap();
    let mut reply = String::new();
    tcp.read_line(&mut reply).await.unwrap();
    assert!(reply.starts_with("+OK"), "{reply}");
    let mut c = Raw { io: BufReader::new(tls_handshake(tcp.into_inner()).await) };
    c.login(&greeting).await;
    retrieves_every_message_exactly(&mut c).await;

    assert_eq!(zero_copy_bytes(metrics).await, 0, "TLS sessions take the buffered path");
    assert!(Path::new(&message_path(&server, 1)).exists());
}
