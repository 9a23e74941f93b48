//! Building POP3 responses: status lines and the multi-line body encoder.
//!
//! [`BodyEncoder`] turns message bytes, fed in arbitrary chunks, into what goes on the wire:
//! every line ending becomes CRLF, a line starting with `.` gets one more `.` in front
//! (byte-stuffing), an unterminated last line is terminated, and `TOP` stops after the
//! headers plus n body lines. [`WireSize`] counts the same octets without producing them,
//! so the size LIST reports is the size RETR sends (a property test holds them together).

use memchr::memchr;

/// The longest status line we send, CRLF included (RFC 2449).
pub const MAX_RESPONSE_LINE: usize = 512;

/// The multi-line terminator.
pub const TERMINATOR: &[u8] = b".\r\n";

/// A `+OK` line with `text`, cut to the 512-octet limit.
pub fn ok(text: &str) -> Vec<u8> {
    status("+OK", text)
}

/// A `-ERR` line with `text`, cut to the 512-octet limit.
pub fn err(text: &str) -> Vec<u8> {
    status("-ERR", text)
}

fn status(indicator: &str, text: &str) -> Vec<u8> {
    let mut line = Vec::with_capacity(indicator.len() + text.len() + 3);
    line.extend_from_slice(indicator.as_bytes());
    if !text.is_empty() {
        line.push(b' ');
        // Never let a line ending inside `text` split the response.
        line.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
    }
    // Cut at a character boundary: a translated text must stay valid UTF-8.
    let mut end = line.len().min(MAX_RESPONSE_LINE - 2);
    while end > indicator.len() && end < line.len() && line[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    line.truncate(end);
    line.extend_from_slice(b"\r\n");
    line
}

/// Append `n` in decimal (the hot path of LIST and UIDL on big mailboxes).
pub fn push_number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A complete multi-line response: status line, `lines` (each ending CRLF, stuffed), terminator.
pub fn multi_line<I, S>(first: &str, lines: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = ok(first);
    let mut encoder = BodyEncoder::new(None);
    for line in lines {
        encoder.push(line.as_ref().as_bytes(), &mut out);
        encoder.push(b"\r\n", &mut out);
    }
    encoder.finish(&mut out);
    out
}

/// Encodes a message body for the wire, chunk by chunk; see the module docs.
#[derive(Debug, Clone)]
pub struct BodyEncoder {
    /// For TOP: how many body lines may still be sent; `None` sends everything.
    body_lines_left: Option<u64>,
    in_headers: bool,
    at_line_start: bool,
    prev_cr: bool,
    /// Bytes of the current line so far, for spotting the empty line that ends the headers.
    line_len: u64,
    done: bool,
    /// Octets emitted so far, not counting the stuffed dots: what LIST counts.
    wire: u64,
}

impl BodyEncoder {
    /// An encoder that byte-stuffs; `top` limits the body to that many lines (TOP).
    pub fn new(top: Option<u64>) -> Self {
        BodyEncoder {
            body_lines_left: top,
            in_headers: true,
            at_line_start: true,
            prev_cr: false,
            line_len: 0,
            done: false,
            wire: 0,
        }
    }

    /// True once TOP's line budget is spent: further input would be ignored.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Encode the longest prefix of `input` that keeps the message within `limit` octets as
    /// LIST counts them (the final line ending included), and return its length: a file that
    /// grew after LIST is cut at the size LIST announced. Input ignored because TOP's line
    /// budget is spent counts as taken.
    pub fn push_within(&mut self, input: &[u8], limit: u64, out: &mut Vec<u8>) -> usize {
        self.encode(input, out, limit)
    }

    /// Encode `input` onto `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.encode(input, out, u64::MAX);
    }

    /// What has been encoded so far, as a [`WireSize`] would have counted it.
    fn counted(&self) -> WireSize {
        let last = if self.at_line_start {
            (self.wire > 0).then_some(b'\n')
        } else if self.prev_cr {
            Some(b'\r')
        } else {
            Some(b'x')
        };
        // Only counting matters here, not whether anything was rewritten.
        WireSize { total: self.wire, last, rewritten: false }
    }

    /// Encode `input` onto `out` while the octets stay within `limit`; returns the bytes taken.
    /// The limit costs one comparison per line; only the line that crosses it is counted.
    fn encode(&mut self, whole: &[u8], out: &mut Vec<u8>, limit: u64) -> usize {
        // RETR (no line budget): encode the whole chunk without per-line bookkeeping, and only
        // if that went past the limit (a file that grew after LIST) undo it and cut line by line.
        if self.body_lines_left.is_none() {
            let (before, mark) = (self.clone(), out.len());
            self.encode_all(whole, out);
            if self.counted().finish() <= limit {
                return whole.len();
            }
            *self = before;
            out.truncate(mark);
        }
        let mut input = whole;
        while !input.is_empty() && !self.done {
            match memchr(b'\n', input) {
                None => {
                    let ends_cr = input[input.len() - 1] == b'\r';
                    // finish() will end this partial line: count that too.
                    if self.wire + input.len() as u64 + 2 - u64::from(ends_cr) > limit {
                        return self.cut(whole, input, out, limit);
                    }
                    if self.at_line_start && input[0] == b'.' {
                        out.push(b'.');
                    }
                    out.extend_from_slice(input);
                    self.wire += input.len() as u64;
                    self.line_len += input.len() as u64;
                    self.prev_cr = ends_cr;
                    self.at_line_start = false;
                    return whole.len();
                }
                Some(i) => {
                    let line = &input[..i];
                    let ends_cr = if line.is_empty() { self.prev_cr } else { line[i - 1] == b'\r' };
                    let octets = i as u64 + 2 - u64::from(ends_cr);
                    if self.wire + octets > limit {
                        return self.cut(whole, input, out, limit);
                    }
                    if self.at_line_start && input[0] == b'.' {
                        out.push(b'.');
                    }
                    out.extend_from_slice(line);
                    out.extend_from_slice(if ends_cr { b"\n" } else { b"\r\n" });
                    self.wire += octets;
                    let content_len = self.line_len + line.len() as u64 - u64::from(ends_cr);
                    self.end_line(content_len == 0);
                    input = &input[i + 1..];
                }
            }
        }
        whole.len()
    }

    /// Encode all of `input`, copying runs of lines that need no change in one piece: only
    /// a bare LF (a CR goes before it) and a `.` at a line start (stuffed) break a run.
    fn encode_all(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = input.last() else { return };
        out.reserve(input.len() + input.len() / 32 + 8);
        if self.at_line_start && input[0] == b'.' {
            out.push(b'.');
        }
        let (mut start, mut added) = (0, 0u64);
        for i in memchr::memchr_iter(b'\n', input) {
            let cr_before = if i == 0 { self.prev_cr } else { input[i - 1] == b'\r' };
            if !cr_before {
                out.extend_from_slice(&input[start..i]);
                out.push(b'\r');
                start = i; // the LF goes out with the next run
                added += 1;
            }
            if input.get(i + 1) == Some(&b'.') {
                out.extend_from_slice(&input[start..=i]);
                out.push(b'.');
                start = i + 1;
            }
        }
        out.extend_from_slice(&input[start..]);
        self.wire += input.len() as u64 + added;
        self.line_len = match memchr::memrchr(b'\n', input) {
            Some(i) => (input.len() - i - 1) as u64,
            None => self.line_len + input.len() as u64,
        };
        self.at_line_start = last == b'\n';
        self.prev_cr = last == b'\r';
    }

    /// The file grew past `limit` within `rest` (the unencoded end of `whole`): count exactly
    /// where to stop and encode up to there; returns the bytes of `whole` taken.
    #[cold]
    fn cut(&mut self, whole: &[u8], rest: &[u8], out: &mut Vec<u8>, limit: u64) -> usize {
        let fits = self.counted().push_within(rest, limit);
        whole.len() - rest.len() + self.encode(&rest[..fits], out, u64::MAX)
    }

    fn end_line(&mut self, empty: bool) {
        self.at_line_start = true;
        self.prev_cr = false;
        self.line_len = 0;
        if self.in_headers {
            if empty {
                self.in_headers = false;
                self.done = self.body_lines_left == Some(0);
            }
        } else if let Some(left) = self.body_lines_left.as_mut() {
            *left -= 1;
            self.done = *left == 0;
        }
    }

    /// Terminate an unfinished last line and append the `.` CRLF terminator.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.at_line_start && !self.done {
            out.extend_from_slice(if self.prev_cr { b"\n" } else { b"\r\n" });
        }
        out.extend_from_slice(TERMINATOR);
    }
}

/// Counts a message's POP3 octets (CRLF line endings, final line terminated, no stuffing)
/// chunk by chunk, without producing output: what LIST and STAT report.
#[derive(Debug, Default, Clone)]
pub struct WireSize {
    total: u64,
    last: Option<u8>,
    /// A bare LF or a line starting with `.` was seen: the encoder changes something.
    rewritten: bool,
}

impl WireSize {
    /// Count `chunk`.
    pub fn push(&mut self, chunk: &[u8]) {
        let Some(&last) = chunk.last() else { return };
        if chunk[0] == b'.' && matches!(self.last, None | Some(b'\n')) {
            self.rewritten = true;
        }
        self.total += chunk.len() as u64;
        for i in memchr::memchr_iter(b'\n', chunk) {
            let before = if i == 0 { self.last } else { Some(chunk[i - 1]) };
            if before != Some(b'\r') {
                self.total += 1; // a bare LF goes out as CRLF
                self.rewritten = true;
            }
            if chunk.get(i + 1) == Some(&b'.') {
                self.rewritten = true;
            }
        }
        self.last = Some(last);
    }

    /// True when the bytes counted go on the wire unchanged (the `.` CRLF terminator aside):
    /// every line ends in CRLF, the last one too, and none starts with `.`. Such a file can
    /// be sent as it is (`sendfile`).
    pub fn is_verbatim(&self) -> bool {
        !self.rewritten && matches!(self.last, None | Some(b'\n'))
    }

    /// Count the longest prefix of `chunk` that keeps [`WireSize::finish`] within `limit`, and
    /// return its length: how a message that grew after LIST is cut at the announced size.
    pub fn push_within(&mut self, chunk: &[u8], limit: u64) -> usize {
        let mut all = self.clone();
        all.push(chunk);
        if all.finish() <= limit {
            *self = all;
            return chunk.len();
        }
        // finish() never shrinks as a prefix grows, so the longest fitting prefix is found
        // by bisection (this runs once, on the last chunk of a file that grew).
        let (mut fits, mut too_long) = (0, chunk.len());
        while too_long - fits > 1 {
            let mid = fits + (too_long - fits) / 2;
            let mut probe = self.clone();
            probe.push(&chunk[..mid]);
            if probe.finish() <= limit { fits = mid } else { too_long = mid }
        }
        self.push(&chunk[..fits]);
        fits
    }

    /// The total, counting the line ending added to an unterminated last line.
    pub fn finish(&self) -> u64 {
        self.total
            + match self.last {
                None | Some(b'\n') => 0,
                Some(b'\r') => 1,
                Some(_) => 2,
            }
    }
}

/// The POP3 octet count of a whole message held in memory.
pub fn wire_size(message: &[u8]) -> u64 {
    let mut size = WireSize::default();
    size.push(message);
    size.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(msg: &[u8], top: Option<u64>, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = BodyEncoder::new(top);
        for piece in msg.chunks(chunk.max(1)) {
            enc.push(piece, &mut out);
        }
        enc.finish(&mut out);
        out
    }

    /// What a client does: strip the terminator and one leading dot from each line.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        assert!(wire.ends_with(b".\r\n"));
        let body = &wire[..wire.len() - 3];
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            assert!(line.ends_with(b"\r\n"), "line without CRLF: {line:?}");
            assert_ne!(line, b".\r\n", "unstuffed terminator inside body");
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    /// The message as RETR must deliver it: CRLF everywhere, last line terminated.
    fn crlf(msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &b) in msg.iter().enumerate() {
            if b == b'\n' && (i == 0 || msg[i - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(b);
        }
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(if out.ends_with(b"\r") { b"\n" } else { b"\r\n" });
        }
        out
    }

    #[test]
    fn stuffs_dots_and_fixes_line_endings() {
        let wire = encode(b"Subject: x\n\n.hidden\n..two\nend", None, 4096);
        assert_eq!(wire, b"Subject: x\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\n");
    }

    #[test]
    fn top_sends_headers_blank_line_and_n_lines() {
        let msg = b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(encode(msg, Some(0), 3), b"A: 1\r\nB: 2\r\n\r\n.\r\n");
        assert_eq!(encode(msg, Some(2), 1), b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n.\r\n");
        assert_eq!(encode(msg, Some(99), 5), [&msg[..], b".\r\n"].concat());
        // No body at all: the whole message is the header section.
        assert_eq!(encode(b"A: 1\n", Some(0), 2), b"A: 1\r\n.\r\n");
    }

    #[test]
    fn verbatim_files_are_crlf_without_dot_lines() {
        let verbatim = |msg: &[u8]| {
            let mut size = WireSize::default();
            size.push(msg);
            size.is_verbatim()
        };
        assert!(verbatim(b""));
        assert!(verbatim(b"A: 1\r\n\r\nbody\r\n"));
        assert!(!verbatim(b"A: 1\n\nbody\n"), "bare LF");
        assert!(!verbatim(b"A: 1\r\n\r\n.dot\r\n"), "dot line");
        assert!(!verbatim(b".A: 1\r\n"), "dot at the very start");
        assert!(!verbatim(b"A: 1\r\n\r\nbody"), "unterminated last line");
        assert!(!verbatim(b"A: 1\r\n\r\nbody\r"), "last line ends in CR only");
    }

    #[test]
    fn empty_message_is_just_the_terminator() {
        assert_eq!(encode(b"", None, 1), b".\r\n");
        assert_eq!(wire_size(b""), 0);
    }

    #[test]
    fn status_lines_are_bounded_and_single() {
        let long = "x".repeat(2000);
        assert_eq!(ok(&long).len(), MAX_RESPONSE_LINE);
        assert_eq!(err("a\r\nb"), b"-ERR a  b\r\n");
        // A long translated text is cut before a character, never inside one.
        let long = "語".repeat(300);
        let line = ok(&long);
        assert!(line.len() <= MAX_RESPONSE_LINE && line.ends_with(b"\r\n"));
        assert!(std::str::from_utf8(&line).is_ok());
    }

    #[test]
    fn numbers_in_decimal() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            let mut out = b"x".to_vec();
            push_number(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn multi_line_lists_are_stuffed() {
        assert_eq!(multi_line("x", [".a", "b"]), b"+OK x\r\n..a\r\nb\r\n.\r\n");
    }

    fn message() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'a'), any::<u8>()], 0..400)
    }

    proptest! {
        #[test]
        fn round_trip_gives_crlf_message(msg in message(), chunk in 1usize..64) {
            let wire = encode(&msg, None, chunk);
            prop_assert_eq!(unstuff(&wire), crlf(&msg));
        }

        #[test]
        fn size_is_what_retr_sends_before_stuffing(msg in message(), chunk in 1usize..16) {
            prop_assert_eq!(wire_size(&msg), crlf(&msg).len() as u64);
            let mut size = WireSize::default();
            msg.chunks(chunk).for_each(|c| size.push(c));
            prop_assert_eq!(size.finish(), crlf(&msg).len() as u64);
        }

        #[test]
        fn verbatim_means_the_encoder_changes_nothing(msg in message(), chunk in 1usize..16) {
            let mut size = WireSize::default();
            msg.chunks(chunk).for_each(|c| size.push(c));
            let unchanged = encode(&msg, None, 4096) == [&msg[..], TERMINATOR].concat();
            prop_assert_eq!(size.is_verbatim(), unchanged);
        }

        #[test]
        fn chunking_never_changes_output(msg in message(), chunk in 1usize..32, top in proptest::option::of(0u64..5)) {
            prop_assert_eq!(encode(&msg, top, chunk), encode(&msg, top, msg.len().max(1)));
        }

        #[test]
        fn push_within_keeps_the_longest_prefix_that_fits(msg in message(), chunk in 1usize..32, limit in 0u64..200) {
            let mut counted = WireSize::default();
            let mut kept = Vec::new();
            for piece in msg.chunks(chunk) {
                let fits = counted.push_within(piece, limit);
                kept.extend_from_slice(&piece[..fits]);
                if fits < piece.len() {
                    break;
                }
            }
            prop_assert_eq!(counted.finish(), wire_size(&kept));
            prop_assert!(wire_size(&kept) <= limit);
            if wire_size(&msg) <= limit {
                prop_assert_eq!(&kept, &msg);
            } else {
                // One more byte would not fit.
                prop_assert!(wire_size(&msg[..kept.len() + 1]) > limit);
            }
        }

        #[test]
        fn encoder_push_within_matches_counting_the_kept_prefix(msg in message(), chunk in 1usize..32, limit in 0u64..300) {
            let (mut encoder, mut out, mut kept) = (BodyEncoder::new(None), Vec::new(), Vec::new());
            for piece in msg.chunks(chunk) {
                let fits = encoder.push_within(piece, limit, &mut out);
                kept.extend_from_slice(&piece[..fits]);
                if fits < piece.len() {
                    break;
                }
            }
            prop_assert_eq!(encoder.counted().finish(), wire_size(&kept));
            encoder.finish(&mut out);
            prop_assert_eq!(&unstuff(&out), &crlf(&kept));
            prop_assert!(wire_size(&kept) <= limit);
            if wire_size(&msg) <= limit {
                prop_assert_eq!(&kept, &msg);
            }
        }
    }
}
