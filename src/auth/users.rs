//! The users file and the APOP secrets file: reading, checking and rewriting them.
//!
//! Both are `name:value` lines (`#` starts a comment). The users file holds stored passwords
//! (argon2id PHC strings, or imported ones: see [`super::schemes`]); the secrets file holds APOP secrets in the clear, because APOP needs them, so it
//! is refused when anyone but its owner may read it. The users file gets the same rule: the
//! hashes are what an offline guesser wants.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::store::is_valid_user_name;

/// `name → value` in file order.
pub type Entries = BTreeMap<String, String>;

/// A problem with one of the files, naming it.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be read or written.
    #[error("{path}: {cause}")]
    Io { path: String, cause: io::Error },
    /// Group or others may read it.
    #[error("{path}: mode {mode:o} lets group or others read it; run `chmod 600 {path}`")]
    TooOpen { path: String, mode: u32 },
    /// A line is malformed.
    #[error("{path}:{line}: {why}")]
    Syntax { path: String, line: usize, why: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |cause| FileError::Io { path: path.display().to_string(), cause }
}

/// Read a `name:value` file; a missing file is an empty one when `missing_ok`.
pub fn read_entries(path: &Path, missing_ok: bool) -> Result<Entries, FileError> {
    let text = match fs::read_to_string(path) {
        Err(e) if missing_ok && e.kind() == io::ErrorKind::NotFound => return Ok(Entries::new()),
        other => other.map_err(io_error(path))?,
    };
    let mode = fs::metadata(path).map_err(io_error(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(FileError::TooOpen { path: path.display().to_string(), mode: mode & 0o777 });
    }
    let mut entries = Entries::new();
    for (i, line) in text.lines().enumerate() {
        let syntax = |why: String| FileError::Syntax { path: path.display().to_string(), line: i + 1, why };
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| syntax("expected name:value".into()))?;
        if !is_valid_user_name(name) {
            return Err(syntax(format!("invalid user name {name:?}")));
        }
        if entries.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(syntax(format!("user {name:?} appears twice")));
        }
    }
    Ok(entries)
}

/// Replace the file at `path` with `entries`, atomically and with mode 0600, owned like the
/// file it replaces or, for a new file, like the first of `owned_like` that exists (so
/// `apopd user …` run as root never hands the server's files to root).
pub fn write_entries(path: &Path, entries: &Entries, owned_like: &[&Path]) -> Result<(), FileError> {
    let text: String = entries.iter().map(|(name, value)| format!("{name}:{value}\n")).collect();
    write_atomically(path, text.as_bytes(), owned_like)
}

/// Replace `name`'s value in the file at `path` by `new`, leaving every other byte as it was,
/// but only while it still is `old` (someone may have changed it since it was read). True when
/// replaced. The caller holds [`lock`].
pub fn replace_value(path: &Path, name: &str, old: &str, new: &str) -> Result<bool, FileError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    let mut out = String::with_capacity(text.len() + new.len());
    let mut replaced = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        match body.split_once(':') {
            Some((n, value)) if n == name && value == old && !replaced => {
                out.push_str(&format!("{name}:{new}{}", &line[body.len()..]));
                replaced = true;
            }
            _ => out.push_str(line),
        }
    }
    if replaced {
        write_atomically(path, out.as_bytes(), &[])?;
    }
    Ok(replaced)
}

/// Write `bytes` to `path` by a temp file, fsync and rename: mode 0600, owned as [`write_entries`] says.
fn write_atomically(path: &Path, bytes: &[u8], owned_like: &[&Path]) -> Result<(), FileError> {
    let dir = parent_of(path);
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut file: File = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        // An existing temp file keeps its mode under O_CREAT: force it.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        if let Some(owner) = std::iter::once(path).chain(owned_like.iter().copied()).find_map(|p| fs::metadata(p).ok())
        {
            std::os::unix::fs::fchown(&file, Some(owner.uid()), Some(owner.gid()))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        FileError::Io { path: path.display().to_string(), cause: e }
    })
}

fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// An exclusive lock on a users or secrets file, held until dropped.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

/// Wait for the exclusive lock every writer of the file at `path` takes (`apopd user …` and the
/// server's rehash on login): flock(2) on `.NAME.lock` beside it, created mode 0600 and owned
/// like `path` (or the first of `owned_like` that exists), so the server may take it too.
pub fn lock(path: &Path, owned_like: &[&Path]) -> Result<Lock, FileError> {
    let dir = parent_of(path);
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lock_path = dir.join(format!(".{file_name}.lock"));
    let open = || -> io::Result<File> {
        fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)?;
        // Root (running `apopd user`) hands the lock file to the users file's owner, so that
        // the server, running as that owner, can open it too.
        let meta = file.metadata()?;
        if nix::unistd::geteuid().is_root()
            && let Some(owner) =
                std::iter::once(path).chain(owned_like.iter().copied()).find_map(|p| fs::metadata(p).ok())
            && (meta.uid(), meta.gid()) != (owner.uid(), owner.gid())
        {
            std::os::unix::fs::fchown(&file, Some(owner.uid()), Some(owner.gid()))?;
        }
        file.lock()?;
        Ok(file)
    };
    open().map(Lock).map_err(|cause| FileError::Io { path: lock_path.display().to_string(), cause })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/users");
        let mut entries = Entries::new();
        entries.insert("alice".into(), "secret:with:colons".into());
        write_entries(&path, &entries, &[]).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_entries(&path, false).unwrap(), entries);
    }

    #[test]
    fn readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        fs::write(&path, "alice:x\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(read_entries(&path, false), Err(FileError::TooOpen { .. })));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        fs::write(&path, "# comment\nalice:x\n../etc:y\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_entries(&path, false).unwrap_err().to_string();
        assert!(err.ends_with(":3: invalid user name \"../etc\""), "{err}");
    }

    #[test]
    fn replace_value_changes_one_line_only_while_it_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let text = "# imported\nbob:{PLAIN}x\r\nalice:$6$old\ncarol:$6$old\n";
        fs::write(&path, text).unwrap();
        let _lock = lock(&path, &[]).unwrap();
        assert!(!replace_value(&path, "alice", "$6$other", "$argon2id$new").unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        assert!(replace_value(&path, "alice", "$6$old", "$argon2id$new").unwrap());
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "# imported\nbob:{PLAIN}x\r\nalice:$argon2id$new\ncarol:$6$old\n"
        );
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(replace_value(&path, "bob", "{PLAIN}x", "y").unwrap());
        assert!(fs::read_to_string(&path).unwrap().contains("bob:y\r\n"));
    }

    #[test]
    fn missing_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_entries(&dir.path().join("none"), true).unwrap().is_empty());
        assert!(read_entries(&dir.path().join("none"), false).is_err());
    }
}
