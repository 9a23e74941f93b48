//! Line framing: split the client's byte stream into command lines, with a hard length cap.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest command line, CRLF included (RFC 2449 §4).
pub const MAX_COMMAND_LINE: usize = 255;

/// What the next read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, its CRLF or LF removed.
    Complete(Vec<u8>),
    /// A line longer than the limit; it was read to its end and discarded.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

/// Read the next line from `reader`, never buffering more than `max` bytes (CRLF included).
pub async fn next_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, complete) = match memchr::memchr(b'\n', available) {
            Some(i) => (&available[..i + 1], true),
            None => (available, false),
        };
        if !too_long && line.len() + chunk.len() > max {
            too_long = true;
            line = Vec::new();
        }
        if !too_long {
            line.extend_from_slice(chunk);
        }
        let used = chunk.len();
        reader.consume(used);
        if complete {
            break;
        }
    }
    if too_long {
        return Ok(Line::TooLong);
    }
    line.pop(); // the LF
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Line::Complete(line))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn lines_of(input: &[u8], chunk: usize) -> Vec<Line> {
        // A reader whose buffer holds at most `chunk` bytes, as if the bytes arrived that way.
        let mut reader = BufReader::with_capacity(chunk, input);
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

    #[tokio::test]
    async fn same_lines_whatever_the_chunking() {
        let long = [b"X".repeat(300), b"\r\n".to_vec()].concat();
        let input = [&b"USER a\r\nstat\nPASS x y \r\n"[..], &long, b"NOOP\r\npartial"].concat();
        let expected = vec![
            Line::Complete(b"USER a".to_vec()),
            Line::Complete(b"stat".to_vec()),
            Line::Complete(b"PASS x y ".to_vec()),
            Line::TooLong,
            Line::Complete(b"NOOP".to_vec()),
            Line::Eof,
        ];
        for chunk in 1..=512 {
            assert_eq!(lines_of(&input, chunk).await, expected, "chunk size {chunk}");
        }
    }

    #[tokio::test]
    async fn limit_counts_the_crlf() {
        let fits = [b"A".repeat(253), b"\r\n".to_vec()].concat();
        let over = [b"A".repeat(254), b"\r\n".to_vec()].concat();
        assert_eq!(lines_of(&fits, 64).await[0], Line::Complete(b"A".repeat(253)));
        assert_eq!(lines_of(&over, 64).await[0], Line::TooLong);
    }
}
