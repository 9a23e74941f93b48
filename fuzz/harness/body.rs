//! The `body_encoder` properties, shared by the fuzz target and `tests/fuzz_regressions.rs`.
//!
//! Input layout: byte 0 chooses the TOP line count, bytes 1-2 (little endian) the split
//! point, the rest is the message. The message is encoded without a limit and with the
//! TOP limit, each whole, split in two at the split point, and byte by byte.

use apopd::protocol::response::{BodyEncoder, WireSize, wire_size};

/// Check one input; panics when a property fails.
pub fn check_body(data: &[u8]) {
    let [b0, s0, s1, message @ ..] = data else { return };
    let top = if *b0 == u8::MAX { u64::MAX } else { u64::from(*b0 % 16) };
    let split = usize::from(u16::from_le_bytes([*s0, *s1])) % (message.len() + 1);
    let normalised = crlf(message);

    // Without a limit (RETR): the whole message comes back after un-stuffing.
    let wire = encode_all_ways(message, None, split);
    assert_eq!(unstuff(&wire), normalised, "RETR round trip of {message:?}");

    // The size counter (LIST sizes) agrees with what RETR sends before stuffing, whole and split.
    assert_eq!(wire_size(message), normalised.len() as u64, "wire_size");
    let mut size = WireSize::default();
    size.push(&message[..split]);
    size.push(&message[split..]);
    assert_eq!(size.finish(), normalised.len() as u64, "WireSize split at {split}");

    // With a limit (TOP): the headers, the blank line and `top` body lines.
    let wire = encode_all_ways(message, Some(top), split);
    assert_eq!(unstuff(&wire), expected_top(&normalised, top), "TOP {top} of {message:?}");
}

/// Encode whole, in two pieces and byte by byte; all three must agree. Returns the wire form.
fn encode_all_ways(message: &[u8], top: Option<u64>, split: usize) -> Vec<u8> {
    let whole = encode(&[message], top);
    let (a, b) = message.split_at(split);
    assert_eq!(encode(&[a, b], top), whole, "split at {split} changed the output (top {top:?})");
    let bytes: Vec<&[u8]> = message.chunks(1).collect();
    assert_eq!(encode(&bytes, top), whole, "byte-by-byte feeding changed the output (top {top:?})");
    whole
}

fn encode(pieces: &[&[u8]], top: Option<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = BodyEncoder::new(top);
    for piece in pieces {
        encoder.push(piece, &mut out);
    }
    encoder.finish(&mut out);
    out
}

/// Check the wire form (CRLF lines, no bare LF, only the last line is ".") and undo the
/// byte-stuffing as a client does.
fn unstuff(wire: &[u8]) -> Vec<u8> {
    let body = wire.strip_suffix(b".\r\n").unwrap_or_else(|| panic!("no terminator: {wire:?}"));
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        assert!(line.ends_with(b"\r\n"), "bare LF or unterminated line {line:?} in {wire:?}");
        assert_ne!(line, b".\r\n", "terminator inside the body: {wire:?}");
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// The message as RETR must deliver it: every LF preceded by CR, the last line terminated
/// (a trailing CR becomes that line's CRLF).
fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' && (i == 0 || message[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(if out.ends_with(b"\r") { b"\n" } else { b"\r\n" });
    }
    out
}

/// What TOP `n` sends of an already normalised message: every line up to and including the
/// first empty one, then `n` more (all of it when there is no empty line).
fn expected_top(normalised: &[u8], n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut body_lines: Option<u64> = None;
    for line in normalised.split_inclusive(|&b| b == b'\n') {
        match body_lines {
            Some(sent) if sent >= n => break,
            Some(sent) => body_lines = Some(sent + 1),
            None if line == b"\r\n" => body_lines = Some(0),
            None => {}
        }
        out.extend_from_slice(line);
    }
    out
}
