//! `parse` never panics, and accepted commands survive a render/re-parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../harness/command.rs"]
mod command;

fuzz_target!(|data: &[u8]| command::check_command(data));
