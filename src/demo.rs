//! The bundled demo: `apopd serve` with no config serves a copy of `fixtures/demo`.
//!
//! The copy lives in a fresh temporary directory, so the demo never modifies the repository
//! and the secrets files get the private mode git cannot record.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Where the demo fixtures are in the source tree this binary was built from.
pub const DEMO_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/demo");

/// The demo's config file name inside the demo directory.
pub const DEMO_CONFIG: &str = "apopd.toml";

/// Copy the demo into a new temporary directory; returns that directory.
pub fn prepare() -> anyhow::Result<PathBuf> {
    let source = Path::new(DEMO_SOURCE);
    anyhow::ensure!(
        source.join(DEMO_CONFIG).is_file(),
        "no --config given and the demo fixtures are not at {} (give --config FILE)",
        source.display()
    );
    let target = std::env::temp_dir().join(format!("apopd-demo-{}", std::process::id()));
    if target.exists() {
        fs::remove_dir_all(&target).with_context(|| format!("cannot clear {}", target.display()))?;
    }
    copy_private(source, &target).with_context(|| format!("cannot copy the demo to {}", target.display()))?;
    Ok(target)
}

/// Copy a tree, making directories 0700 and files 0600 (also used by the tests).
pub fn copy_private(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_private(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}
