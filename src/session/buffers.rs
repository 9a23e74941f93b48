//! Session I/O buffers that hold no memory while the session waits for its client.
//!
//! A logged-in session spends nearly all its life idle, and servers hold tens of thousands
//! of them: a fixed read and write buffer each (tokio's `BufReader`/`BufWriter`) would be
//! most of an idle session's memory. [`LeanReader`] reads into the stack and keeps on the
//! heap only bytes not consumed yet; [`LeanWriter`] allocates its buffer on the first write
//! and frees it once flushed. Both behave as `BufReader`/`BufWriter` otherwise.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// A buffered reader whose heap buffer exists only while it holds unconsumed input.
#[derive(Debug)]
pub struct LeanReader<R, const N: usize> {
    inner: R,
    /// Read but not consumed yet (empty, with no capacity, when everything is consumed).
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
}

impl<R, const N: usize> LeanReader<R, N> {
    /// Wrap `inner`; each read asks it for at most `N` bytes.
    pub fn new(inner: R) -> Self {
        LeanReader { inner, buf: Vec::new(), pos: 0 }
    }

    /// Input read but not consumed yet.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// The reader, dropping any unconsumed input.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The reader underneath.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes held on the heap (for tests: zero when idle).
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

impl<R: AsyncRead + Unpin, const N: usize> AsyncRead for LeanReader<R, N> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(out.remaining());
        out.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin, const N: usize> AsyncBufRead for LeanReader<R, N> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.pos == this.buf.len() {
            // Read into the stack: a read that is not ready costs no heap at all.
            let mut stack = [0u8; N];
            let mut read = ReadBuf::new(&mut stack);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            this.buf = read.filled().to_vec();
            this.pos = 0;
        }
        Poll::Ready(Ok(&this.buf[this.pos..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.pos = (this.pos + amt).min(this.buf.len());
        if this.pos == this.buf.len() {
            this.buf = Vec::new();
            this.pos = 0;
        }
    }
}

/// A buffered writer whose buffer is allocated by the first write and freed by a flush.
#[derive(Debug)]
pub struct LeanWriter<W> {
    inner: W,
    /// Written but not sent yet.
    buf: Vec<u8>,
    /// Sent bytes at the front of `buf` (a flush in progress).
    sent: usize,
    /// Buffer at most this much before writing through.
    capacity: usize,
}

impl<W> LeanWriter<W> {
    /// Wrap `inner`, buffering up to `capacity` bytes between flushes.
    pub fn new(capacity: usize, inner: W) -> Self {
        LeanWriter { inner, buf: Vec::new(), sent: 0, capacity }
    }

    /// The writer; anything not flushed is lost.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// The writer underneath (bypassing it loses order unless the buffer was flushed).
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Bytes held on the heap (for tests: zero after a flush).
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

impl<W: AsyncWrite + Unpin> LeanWriter<W> {
    /// Send everything buffered, then free the buffer.
    fn poll_send_buffer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LeanWriter<W> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() + data.len() > this.capacity {
            ready!(this.poll_send_buffer(cx))?;
        }
        if data.len() >= this.capacity {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        if this.buf.capacity() == 0 {
            // Most replies are one line: start small and let the Vec grow to the cap.
            this.buf.reserve(data.len().max(256).min(this.capacity));
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffer(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_buffer(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Writes pass through the reader (one stream both ways, as tokio's `BufReader`).
impl<R: AsyncWrite + Unpin, const N: usize> AsyncWrite for LeanReader<R, N> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Reads pass through the writer.
impl<W: AsyncRead + Unpin> AsyncRead for LeanWriter<W> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reader_frees_its_buffer_once_consumed() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader: LeanReader<_, 8> = LeanReader::new(server);
        assert_eq!(reader.heap_bytes(), 0);
        client.write_all(b"NOOP\r\nSTAT\r\n").await.unwrap();
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).await.unwrap();
        assert_eq!(line, b"NOOP\r\n");
        // Eight bytes were read at once (the stack buffer's size): "ST" is waiting.
        assert_eq!(reader.buffer(), b"ST");
        line.clear();
        reader.read_until(b'\n', &mut line).await.unwrap();
        assert_eq!(line, b"STAT\r\n");
        assert_eq!(reader.buffer(), b"");
        assert_eq!(reader.heap_bytes(), 0);
        drop(client);
        let mut rest = Vec::new();
        assert_eq!(reader.read_to_end(&mut rest).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn writer_buffers_until_flush_then_frees() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut writer = LeanWriter::new(64, server);
        assert_eq!(writer.heap_bytes(), 0);
        writer.write_all(b"+OK one\r\n").await.unwrap();
        writer.write_all(b"+OK two\r\n").await.unwrap();
        assert!(writer.heap_bytes() > 0);
        writer.flush().await.unwrap();
        assert_eq!(writer.heap_bytes(), 0);
        // Larger than the cap: written through, in order after what was buffered.
        writer.write_all(b"+OK three\r\n").await.unwrap();
        let big = vec![b'x'; 1000];
        writer.write_all(&big).await.unwrap();
        writer.write_all(b"\r\n.\r\n").await.unwrap();
        writer.shutdown().await.unwrap();
        assert_eq!(writer.heap_bytes(), 0);
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        let expected = [&b"+OK one\r\n+OK two\r\n+OK three\r\n"[..], &big, b"\r\n.\r\n"].concat();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn lines_are_the_same_whatever_the_read_size() {
        use super::super::lines::{Line, MAX_COMMAND_LINE, next_line};
        let long = [b"X".repeat(300), b"\r\n".to_vec()].concat();
        let input = [&b"USER a\r\nstat\nPASS x y \r\n"[..], &long, b"NOOP\r\npartial"].concat();
        async fn all<const N: usize>(input: &[u8]) -> Vec<Line> {
            let mut reader: LeanReader<_, N> = LeanReader::new(input);
            let mut out = Vec::new();
            loop {
                let line = next_line(&mut reader, MAX_COMMAND_LINE).await.unwrap();
                let eof = line == Line::Eof;
                out.push(line);
                if eof {
                    return out;
                }
            }
        }
        let expected = all::<1>(&input).await;
        assert_eq!(expected.len(), 6);
        assert_eq!(expected[3], Line::TooLong);
        assert_eq!(all::<2>(&input).await, expected);
        assert_eq!(all::<7>(&input).await, expected);
        assert_eq!(all::<256>(&input).await, expected);
        assert_eq!(all::<1024>(&input).await, expected);
    }
}
