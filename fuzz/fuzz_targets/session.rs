//! A whole POP3 session fed arbitrary client bytes; see `harness/session.rs` for the input
//! layout, the checks and how the maildir is restored between runs.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../harness/session.rs"]
mod session;

static HARNESS: OnceLock<session::SessionHarness> = OnceLock::new();

/// The demo fixtures of the crate under test.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/demo");
/// The per-process copy is `<tmp>/apopd-fuzz-session-<pid>`.
const WORKDIR_PREFIX: &str = "apopd-fuzz-session-";

/// A fresh work directory for this process. libFuzzer exits without running destructors, so
/// copies left by earlier processes (whose pid is gone) are removed here instead.
fn workdir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(WORKDIR_PREFIX)
                && !Path::new("/proc").join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("{WORKDIR_PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fuzz_target!(|data: &[u8]| {
    let harness = HARNESS.get_or_init(|| session::SessionHarness::new(Path::new(FIXTURES), &workdir()));
    // The harness checks everything itself; the deletion count is for the regression test.
    let _deleted = harness.run(data);
});
