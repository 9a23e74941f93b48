//! BodyEncoder: CRLF lines, byte-stuffing, the terminator, TOP limits, chunking independence.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/body.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::check_body(data));
