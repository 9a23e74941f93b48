//! The committed fuzz corpora (`fuzz/corpus/`), replayed as ordinary tests so every seed and
//! every minimised crash keeps guarding `cargo test` without libFuzzer or a nightly toolchain.
//! The checks are the fuzz targets' own: the harness modules are shared with `fuzz/`.

mod common;

use std::path::{Path, PathBuf};

#[path = "../fuzz/harness/body.rs"]
mod body;
#[path = "../fuzz/harness/command.rs"]
mod command;
#[path = "../fuzz/harness/session.rs"]
mod session;

/// Every file of `fuzz/corpus/<target>`, sorted by name, with its bytes.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(&dir).expect("corpus directory").map(|e| e.expect("corpus entry").path()).collect();
    files.sort();
    assert!(files.len() >= 20, "expected a seed corpus in {}, found {} files", dir.display(), files.len());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).expect("read corpus file"))).collect()
}

/// Run `check` on `data`, naming the corpus file when it panics.
fn replay(path: &Path, data: &[u8], check: impl FnOnce(&[u8])) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(data))).is_err() {
        panic!("fuzz corpus file {} fails (bytes: {data:02x?})", path.display());
    }
}

#[test]
fn command_parser_corpus() {
    for (path, data) in corpus("command_parser") {
        replay(&path, &data, command::check_command);
    }
}

#[test]
fn body_encoder_corpus() {
    for (path, data) in corpus("body_encoder") {
        replay(&path, &data, body::check_body);
    }
}

#[test]
fn session_corpus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let harness = session::SessionHarness::new(Path::new(common::FIXTURES), &dir.path().join("demo"));
    let mut deleted = 0;
    for (path, data) in corpus("session") {
        replay(&path, &data, |data| deleted += harness.run(data));
    }
    // The restore-and-count oracle is live: seeds that DELE then QUIT did delete (and were restored).
    assert!(deleted > 0, "no seed deleted anything: the deletion checks were never exercised");
    let again = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/session/t-dele-all-quit"))
        .expect("seed t-dele-all-quit");
    assert_eq!(harness.run(&again), 5, "DELE 1..5 then QUIT deletes all five of alice's messages");
    assert_eq!(harness.run(&again), 5, "and they were all restored for the next run");
}
