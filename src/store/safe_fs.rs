//! Every open of a file or directory inside a maildir goes through here.
//!
//! A user who can write to their own maildir (home-directory layouts, lab machines with shell
//! accounts) controls what apopd finds there, while apopd reads it with one identity (root or
//! `run_as_user`). So a maildir is hostile input, like the socket:
//! - the walk from the operator's part of `mail_root` to the maildir, and into `cur/`, `new/`
//!   and `tmp/`, opens one component at a time with `O_NOFOLLOW | O_DIRECTORY`, so no
//!   component the user could have made is a symlink that is followed;
//! - a message is opened with `O_NOFOLLOW | O_NONBLOCK` (a FIFO cannot block the open) and
//!   accepted only when `fstat` of the open descriptor says it is a regular file, owned as the
//!   [`OwnerRule`] requires, and no larger than `max_message_size`: no check-then-use race;
//! - names are single path components, so an index entry cannot point elsewhere;
//! - files apopd writes (lock, index) are never opened through a link, and the index is
//!   trusted only when apopd itself wrote it;
//! - other servers' files apopd reads (`dovecot-uidlist`, `courierpop3dsizelist`) must be
//!   regular, unlinked elsewhere, owned like the messages and of bounded size;
//! - renames (new/ to cur/, flag changes) are between the checked directory descriptors and
//!   never replace an existing file.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, RenameFlags, ResolveFlag, openat, openat2, renameat, renameat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, geteuid, unlinkat};
use serde::{Deserialize, Serialize};

use super::index::Sub;
use super::uidl::Scheme;

/// Who must own a maildir and the messages in it (config key `maildir_owner`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerRule {
    /// Under the home directory of the system account named like the POP3 user, as `user`;
    /// elsewhere every message must have the maildir's owner (a hard link to someone else's
    /// file is not served).
    #[default]
    Auto,
    /// The system account named like the POP3 user owns the maildir and every message.
    User,
    /// The account apopd runs as (`run_as_user`, or root) owns them: virtual users.
    MailUser,
    /// No ownership check.
    Any,
}

/// How maildirs may be opened; built from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Who must own maildirs and messages.
    pub owner: OwnerRule,
    /// Follow symlinks between the operator's part of `mail_root` and the maildir itself
    /// (never inside the maildir). For mail kept on another volume through links users cannot change.
    pub allow_symlinked_maildir: bool,
    /// Larger messages are skipped, never read (a sparse 1 TiB file cannot stall a login).
    pub max_message_size: u64,
    /// Where UIDLs come from (config key `uidl_format`).
    pub uidl: Scheme,
    /// Never move messages from `new/` to `cur/` nor set the seen flag (`pop3_no_flag_updates`).
    pub no_flag_updates: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            owner: OwnerRule::Auto,
            allow_symlinked_maildir: false,
            max_message_size: 1 << 30,
            uidl: Scheme::Auto,
            no_flag_updates: false,
        }
    }
}

/// Where one user's maildir is: a directory the operator named, then components that are
/// walked without following links.
#[derive(Debug, Clone)]
pub struct Location {
    /// The POP3 user (for the `user` owner rule).
    pub user: String,
    /// The operator's directory: opened normally.
    pub trusted: PathBuf,
    /// The components below it, ending with the maildir.
    pub parts: Vec<OsString>,
}

impl Location {
    /// The maildir at `path`, with only its last component untrusted (tests, and maildirs
    /// given directly).
    pub fn at(path: &Path, user: &str) -> Location {
        let trusted = path.parent().unwrap_or(Path::new("/")).to_owned();
        let parts = path.file_name().map(|n| vec![n.to_owned()]).unwrap_or_default();
        Location { user: user.to_owned(), trusted, parts }
    }

    /// The maildir's path, for logs and messages.
    pub fn path(&self) -> PathBuf {
        self.parts.iter().fold(self.trusted.clone(), |path, part| path.join(part))
    }
}

/// Why a maildir was not opened.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// It is not safe to serve: a symlink, not a directory, or the wrong owner (`[SYS/PERM]`).
    #[error("{0}")]
    Unsafe(String),
    /// The disk said no (`[SYS/TEMP]`).
    #[error("{0}")]
    Io(String),
}

/// An open maildir: descriptors for the maildir and its three subdirectories, so every later
/// open is relative to a directory that was checked once.
#[derive(Debug)]
pub struct Maildir {
    path: PathBuf,
    dir: OwnedFd,
    cur: OwnedFd,
    new: OwnedFd,
    tmp: OwnedFd,
    /// The uid every message must have, when the rule checks owners.
    file_owner: Option<u32>,
    /// Per subdirectory (`cur/`, `new/`): only apopd's own user can add entries to it, so a
    /// listing need not `stat` each file for its owner (the open descriptor is still checked).
    only_we_write: [bool; 2],
    max_message_size: u64,
}

/// What a scan lists of one subdirectory.
#[derive(Debug)]
pub struct Listed {
    /// The file name.
    pub name: OsString,
    /// Its length in bytes, when the listing had to `stat` it anyway.
    pub len: Option<u64>,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_CLOEXEC);
/// For any file a user may have placed: no link, no blocking on a FIFO, no controlling tty.
const UNTRUSTED_FILE: OFlag = OFlag::O_NOFOLLOW.union(OFlag::O_NONBLOCK).union(OFlag::O_CLOEXEC).union(OFlag::O_NOCTTY);

impl Maildir {
    /// Walk to the maildir at `location`, creating missing directories (owned like their
    /// parent when running as root), and check its owner. `policy.owner` is ignored when
    /// `check_owner` is false (delivery runs as whoever the MTA chose).
    ///
    /// Blocking.
    pub fn open(location: &Location, policy: &Policy, check_owner: bool) -> Result<Maildir, WalkError> {
        Maildir::walk(location, policy, check_owner, true)
    }

    /// Walk to an existing maildir without creating anything (`apopd migrate check`). The
    /// owner rule is not applied to the maildir itself; messages are checked as `policy` says.
    ///
    /// Blocking.
    pub fn open_read_only(location: &Location, policy: &Policy) -> Result<Maildir, WalkError> {
        Maildir::walk(location, policy, false, false)
    }

    fn walk(location: &Location, policy: &Policy, check_owner: bool, create: bool) -> Result<Maildir, WalkError> {
        let path = location.path();
        let io_err = |what: &str, e: Errno| WalkError::Io(format!("cannot open {what}: {}", io::Error::from(e)));
        if create {
            std::fs::create_dir_all(&location.trusted)
                .map_err(|e| WalkError::Io(format!("cannot create {}: {e}", location.trusted.display())))?;
        }
        let mut dir = nix::fcntl::open(&location.trusted, DIR_FLAGS, Mode::empty())
            .map_err(|e| io_err(&location.trusted.display().to_string(), e))?;
        let mut walked = location.trusted.clone();
        for part in &location.parts {
            walked.push(part);
            dir = open_dir(&dir, part, !policy.allow_symlinked_maildir, create, &walked)?;
        }
        let [cur, new, tmp] =
            ["cur", "new", "tmp"].map(|sub| open_dir(&dir, OsStr::new(sub), true, create, &path.join(sub)));
        let (cur, new, tmp) = (cur?, new?, tmp?);
        let stat = fstat(&dir).map_err(|e| io_err(&path.display().to_string(), e))?;
        let file_owner =
            if check_owner { required_owner(policy.owner, &location.user, &path, stat.st_uid)? } else { None };
        let only_we_write = [&cur, &new].map(|fd| fstat(fd).is_ok_and(|st| writable_only_by_us(&st)));
        Ok(Maildir { dir, cur, new, tmp, file_owner, only_we_write, max_message_size: policy.max_message_size, path })
    }

    /// The maildir's path, for logs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sub(&self, sub: Sub) -> BorrowedFd<'_> {
        match sub {
            Sub::Cur => self.cur.as_fd(),
            Sub::New => self.new.as_fd(),
        }
    }

    /// The modification time of `cur/` or `new/`, in nanoseconds since the epoch.
    pub fn mtime(&self, sub: Sub) -> io::Result<u64> {
        let st = fstat(self.sub(sub))?;
        Ok((st.st_mtime as u64).saturating_mul(1_000_000_000).saturating_add(st.st_mtime_nsec as u64))
    }

    /// The regular, non-hidden files of `sub`. Anything else (symlink, FIFO, device, socket,
    /// directory, a file with the wrong owner) is left out and logged by name.
    pub fn list(&self, sub: Sub) -> io::Result<Vec<Listed>> {
        let fd = nix::unistd::dup(self.sub(sub))?;
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let mut found = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name.as_bytes().starts_with(b".") {
                continue;
            }
            let is_file = entry.file_type().map(|t| t == nix::dir::Type::File);
            if is_file == Some(false) {
                self.skip(sub, name, "not a regular file");
                continue;
            }
            // The owner (and, for unknown d_type, the kind) needs a stat, unless nobody but
            // apopd's user can have put the file here; the rules are enforced again on the
            // open descriptor when the message is read.
            let owner_known = self.file_owner.is_none() || self.only_we_write[sub as usize];
            if owner_known && is_file == Some(true) {
                found.push(Listed { name: name.to_owned(), len: None });
                continue;
            }
            match fstatat(self.sub(sub), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => match self.refusal(&st) {
                    None => found.push(Listed { name: name.to_owned(), len: Some(st.st_size as u64) }),
                    Some(why) => self.skip(sub, name, &why),
                },
                Err(Errno::ENOENT) => {} // removed since the listing
                Err(e) => return Err(e.into()),
            }
        }
        Ok(found)
    }

    fn skip(&self, sub: Sub, name: &OsStr, why: &str) {
        tracing::warn!(maildir = %self.path.display(), file = ?Path::new(sub.dir()).join(name), why, "not serving a file in the maildir");
    }

    /// The length of message `name`, when it may be served (else why not, as an error).
    pub fn length(&self, sub: Sub, name: &[u8]) -> io::Result<u64> {
        let st = fstatat(self.sub(sub), single_component(name)?, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        match self.refusal(&st) {
            None => Ok(st.st_size as u64),
            Some(why) => Err(io::Error::new(io::ErrorKind::PermissionDenied, why)),
        }
    }

    /// Why a file with this status must not be served, if it must not.
    fn refusal(&self, st: &FileStat) -> Option<String> {
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Some("not a regular file".to_owned());
        }
        if let Some(owner) = self.file_owner.filter(|&owner| owner != st.st_uid) {
            return Some(format!("owned by uid {}, not {owner}", st.st_uid));
        }
        if st.st_size as u64 > self.max_message_size {
            return Some(format!("{} bytes, larger than max_message_size {}", st.st_size, self.max_message_size));
        }
        None
    }

    /// Open a message for reading, with every rule checked on the open descriptor.
    pub fn open_message(&self, sub: Sub, name: &[u8]) -> io::Result<File> {
        let name = single_component(name)?;
        let fd = openat(self.sub(sub), name, OFlag::O_RDONLY | UNTRUSTED_FILE, Mode::empty())?;
        if let Some(why) = self.refusal(&fstat(&fd)?) {
            self.skip(sub, name, &why);
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
        }
        Ok(File::from(fd))
    }

    /// [`Maildir::open_message`], but only when that needs no disk I/O (the name is in the
    /// kernel's dentry cache: `openat2` with `RESOLVE_CACHED`), so the async runtime's own thread
    /// may call it. `None` when it would block, or for anything unusual (a missing name, a
    /// link, a kernel without `openat2`): the caller then uses [`Maildir::open_message`] from
    /// a blocking thread, which gives the full answer. The same owner and type checks apply.
    /// With the file, its length (from the same `fstat`).
    pub fn open_message_cached(&self, sub: Sub, name: &[u8]) -> Option<(File, u64)> {
        // Linux 5.12's RESOLVE_CACHED; nix does not name it yet.
        const RESOLVE_CACHED: u64 = 0x20;
        let name = single_component(name).ok()?;
        let resolve = ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::from_bits_retain(RESOLVE_CACHED);
        let how = OpenHow::new().flags(OFlag::O_RDONLY | UNTRUSTED_FILE).resolve(resolve);
        let fd = openat2(self.sub(sub), name, how).ok()?;
        let stat = fstat(&fd).ok()?;
        match self.refusal(&stat) {
            None => Some((File::from(fd), u64::try_from(stat.st_size).ok()?)),
            // Refused: let the blocking path refuse it again, and log it once.
            Some(_) => None,
        }
    }

    /// Remove a message (the name itself: unlink never follows a link).
    pub fn unlink(&self, sub: Sub, name: &[u8]) -> io::Result<()> {
        Ok(unlinkat(self.sub(sub), single_component(name)?, UnlinkatFlags::NoRemoveDir)?)
    }

    /// Make renames and unlinks in `sub` durable.
    pub fn sync(&self, sub: Sub) -> io::Result<()> {
        Ok(nix::unistd::fsync(self.sub(sub))?)
    }

    /// Open (creating, mode 0600) apopd's own file `name` in the maildir for locking.
    pub fn lock_file(&self, name: &str) -> io::Result<File> {
        let flags = OFlag::O_RDWR | OFlag::O_CREAT | UNTRUSTED_FILE;
        let fd = openat(&self.dir, name, flags, Mode::from_bits_truncate(0o600))?;
        if SFlag::from_bits_truncate(fstat(&fd)?.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(io::Error::other(format!("{name} is not a regular file")));
        }
        Ok(File::from(fd))
    }

    /// The contents of apopd's own file `name`, when apopd wrote it: a regular file with one
    /// link, owned by the uid apopd runs as, at most `max` bytes. Anything else is `None`.
    pub fn read_own(&self, name: &str, max: u64) -> Option<Vec<u8>> {
        let fd = openat(&self.dir, name, OFlag::O_RDONLY | UNTRUSTED_FILE, Mode::empty()).ok()?;
        let st = fstat(&fd).ok()?;
        let own = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
            && st.st_uid == geteuid().as_raw()
            && st.st_nlink == 1
            && (st.st_size as u64) <= max;
        if !own {
            tracing::warn!(maildir = %self.path.display(), file = name, "ignoring a file apopd did not write");
            return None;
        }
        let mut bytes = Vec::with_capacity(st.st_size as usize);
        File::from(fd).take(max).read_to_end(&mut bytes).ok()?;
        Some(bytes)
    }

    /// The contents of another program's file `name` in the maildir (Dovecot's
    /// `dovecot-uidlist`, Courier's `courierpop3dsizelist`): a regular file with one link,
    /// owned as messages must be, at most `max` bytes, opened without following a link.
    /// `Ok(None)` when there is no such file; an error says why it is not read.
    pub fn read_foreign(&self, name: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        let fd = match openat(&self.dir, name, OFlag::O_RDONLY | UNTRUSTED_FILE, Mode::empty()) {
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(io::Error::new(io::ErrorKind::PermissionDenied, "a symbolic link")),
            other => other?,
        };
        let st = fstat(&fd)?;
        let refused = match self.refusal(&st) {
            Some(why) => Some(why),
            None if st.st_nlink != 1 => Some("it has other hard links".to_owned()),
            None if st.st_size as u64 > max => Some(format!("{} bytes, more than {max}", st.st_size)),
            None => None,
        };
        if let Some(why) = refused {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
        }
        let mut bytes = Vec::with_capacity(st.st_size as usize);
        File::from(fd).take(max).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Rename a message (a move from `new/` to `cur/`, a flag change), never replacing an
    /// existing file.
    pub fn rename(&self, from_sub: Sub, from: &[u8], to_sub: Sub, to: &[u8]) -> io::Result<()> {
        let (from, to) = (single_component(from)?, single_component(to)?);
        let (old_dir, new_dir) = (self.sub(from_sub), self.sub(to_sub));
        match renameat2(old_dir, from, new_dir, to, RenameFlags::RENAME_NOREPLACE) {
            // A file system without RENAME_NOREPLACE: maildir names are unique, rename anyway.
            Err(Errno::EINVAL) => Ok(renameat(old_dir, from, new_dir, to)?),
            other => Ok(other?),
        }
    }

    /// Remove files in `tmp/` not modified for `max_age` (deliveries that died half-way; the
    /// maildir spec allows it after 36 hours). Returns how many were removed.
    pub fn clean_tmp(&self, max_age: std::time::Duration) -> io::Result<usize> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let limit = now.as_secs().saturating_sub(max_age.as_secs());
        let mut dir = nix::dir::Dir::from_fd(nix::unistd::dup(self.tmp.as_fd())?)?;
        let mut old = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." || entry.file_type().is_some_and(|t| t == nix::dir::Type::Directory) {
                continue;
            }
            let name = OsStr::from_bytes(name);
            match fstatat(self.tmp.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st)
                    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFDIR
                        && (st.st_mtime as u64) < limit =>
                {
                    old.push(name.to_owned())
                }
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut removed = 0;
        for name in old {
            match unlinkat(&self.tmp, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => removed += 1,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(removed)
    }

    /// Replace apopd's own file `name` atomically: a fresh file (never an existing one, which
    /// could be a hard link to anything) renamed over it.
    pub fn replace_own(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = format!(".{name}.tmp");
        match unlinkat(&self.dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | UNTRUSTED_FILE;
        File::from(openat(&self.dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600))?).write_all(bytes)?;
        Ok(renameat(&self.dir, tmp.as_str(), &self.dir, name)?)
    }

    /// Create `name` in `tmp/` for delivery: a new file, never through a link.
    pub fn create_in_tmp(&self, name: &str) -> io::Result<File> {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | UNTRUSTED_FILE;
        Ok(File::from(openat(&self.tmp, single_component(name.as_bytes())?, flags, Mode::from_bits_truncate(0o600))?))
    }

    /// Remove `name` from `tmp/`.
    pub fn unlink_tmp(&self, name: &str) -> io::Result<()> {
        Ok(unlinkat(&self.tmp, single_component(name.as_bytes())?, UnlinkatFlags::NoRemoveDir)?)
    }

    /// Move a delivered file from `tmp/` into `new/` under its final name.
    pub fn move_tmp_to_new(&self, tmp_name: &str, new_name: &str) -> io::Result<()> {
        let (from, to) = (single_component(tmp_name.as_bytes())?, single_component(new_name.as_bytes())?);
        Ok(renameat(&self.tmp, from, &self.new, to)?)
    }
}

/// True for a directory owned by the user apopd runs as (or root) that neither group nor
/// others may write to (with POSIX ACLs, the group bits are the mask, so this covers them).
fn writable_only_by_us(st: &FileStat) -> bool {
    let ours = st.st_uid == geteuid().as_raw() || st.st_uid == 0;
    ours && st.st_mode & 0o022 == 0
}

/// A name that stays in its directory: one component, not `.` or `..`.
fn single_component(name: &[u8]) -> io::Result<&OsStr> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file name inside the maildir"));
    }
    Ok(OsStr::from_bytes(name))
}

/// Open (creating when missing) the directory `name` in `parent`, without following a
/// symlink when `no_follow`.
fn open_dir(parent: &OwnedFd, name: &OsStr, no_follow: bool, create: bool, path: &Path) -> Result<OwnedFd, WalkError> {
    let flags = if no_follow { DIR_FLAGS | OFlag::O_NOFOLLOW } else { DIR_FLAGS };
    let open = || openat(parent, name, flags, Mode::empty());
    let opened = match open() {
        Err(Errno::ENOENT) if create => {
            match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(WalkError::Io(format!("cannot create {}: {}", path.display(), io::Error::from(e))));
                }
            }
            let opened = open();
            if let Ok(fd) = &opened {
                own_like_parent(parent, fd, path);
            }
            opened
        }
        other => other,
    };
    opened.map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => {
            let link = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK);
            let what = if link { "a symbolic link" } else { "not a directory" };
            WalkError::Unsafe(format!("{} is {what}", path.display()))
        }
        e => WalkError::Io(format!("cannot open {}: {}", path.display(), io::Error::from(e))),
    })
}

/// A directory root creates belongs to the owner of the one it is in, so that the user or
/// the delivery agent can still write there.
fn own_like_parent(parent: &OwnedFd, created: &OwnedFd, path: &Path) {
    if !geteuid().is_root() {
        return;
    }
    let chowned =
        fstat(parent).and_then(|st| fchown(created, Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid))));
    if let Err(e) = chowned {
        tracing::warn!(dir = %path.display(), error = %e, "cannot give a new maildir directory its parent's owner");
    }
}

/// The uid messages must have under `rule`, after checking the maildir's own owner.
fn required_owner(rule: OwnerRule, user: &str, path: &Path, dir_uid: u32) -> Result<Option<u32>, WalkError> {
    let account = || nix::unistd::User::from_name(user).ok().flatten();
    let expect = |uid: u32, whose: &str| {
        if dir_uid == uid {
            Ok(Some(uid))
        } else {
            Err(WalkError::Unsafe(format!("{} is owned by uid {dir_uid}, not by {whose} (uid {uid})", path.display())))
        }
    };
    match rule {
        OwnerRule::Any => Ok(None),
        OwnerRule::MailUser => expect(geteuid().as_raw(), "the user apopd runs as"),
        OwnerRule::User => match account() {
            Some(account) => expect(account.uid.as_raw(), &format!("the account {user:?}")),
            None => {
                Err(WalkError::Unsafe(format!("maildir_owner = \"user\", but there is no system account {user:?}")))
            }
        },
        OwnerRule::Auto => match account().filter(|account| is_within(path, &account.dir)) {
            Some(account) => expect(account.uid.as_raw(), &format!("the account {user:?}, whose home it is in")),
            None => Ok(Some(dir_uid)),
        },
    }
}

/// True when `path` is `home` or below it, comparing normal components.
fn is_within(path: &Path, home: &Path) -> bool {
    let normal = |p: &Path| p.components().filter(|c| matches!(c, Component::Normal(_))).count();
    home.is_absolute() && normal(home) > 0 && path.starts_with(home)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn maildir(root: &Path) -> Maildir {
        Maildir::open(&Location::at(&root.join("box"), "nobody-here"), &Policy::default(), true).unwrap()
    }

    #[test]
    fn names_must_stay_in_their_directory() {
        for bad in [&b""[..], b".", b"..", b"../x", b"a/b", b"a\0b"] {
            assert!(single_component(bad).is_err(), "{bad:?}");
        }
        assert!(single_component(b"1.a.host:2,S").is_ok());
    }

    #[test]
    fn the_walk_refuses_a_symlinked_maildir_or_subdirectory_unless_allowed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("real/cur")).unwrap();
        symlink(root.path().join("real"), root.path().join("box")).unwrap();
        let location = Location::at(&root.path().join("box"), "x");
        let refused = Maildir::open(&location, &Policy::default(), true).unwrap_err();
        assert!(matches!(refused, WalkError::Unsafe(_)), "{refused}");
        let allowed = Policy { allow_symlinked_maildir: true, ..Policy::default() };
        assert!(Maildir::open(&location, &allowed, true).is_ok());

        std::fs::remove_dir_all(root.path().join("real/cur")).unwrap();
        symlink("/", root.path().join("real/cur")).unwrap();
        assert!(matches!(Maildir::open(&location, &allowed, true), Err(WalkError::Unsafe(_))), "cur/ never follows");
    }

    #[test]
    fn only_regular_files_are_listed_and_opened() {
        let root = tempfile::tempdir().unwrap();
        let mail = maildir(root.path());
        let cur = root.path().join("box/cur");
        std::fs::write(cur.join("1.ok"), b"hi\n").unwrap();
        std::fs::write(root.path().join("secret"), b"secret\n").unwrap();
        symlink(root.path().join("secret"), cur.join("2.link")).unwrap();
        nix::unistd::mkfifo(&cur.join("3.fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(cur.join("4.dir")).unwrap();
        let names: Vec<_> = mail.list(Sub::Cur).unwrap().into_iter().map(|l| l.name).collect();
        assert_eq!(names, vec![OsString::from("1.ok")]);
        assert!(mail.open_message(Sub::Cur, b"1.ok").is_ok());
        for name in [&b"2.link"[..], b"3.fifo", b"4.dir", b"../../secret"] {
            assert!(mail.open_message(Sub::Cur, name).is_err(), "{name:?}");
            // The cached open never opens what the full one refuses (it leaves it to it).
            assert!(mail.open_message_cached(Sub::Cur, name).is_none(), "{name:?}");
        }
        // Just listed, so its name is cached: opened on the spot, the same file.
        let mut text = String::new();
        let (mut file, len) = mail.open_message_cached(Sub::Cur, b"1.ok").expect("cached open");
        file.read_to_string(&mut text).unwrap();
        assert_eq!(len, 3);
        assert_eq!(text, "hi\n");
        assert!(mail.open_message_cached(Sub::Cur, b"5.missing").is_none());
    }

    #[test]
    fn files_apopd_writes_are_never_written_through_a_link() {
        let root = tempfile::tempdir().unwrap();
        let mail = maildir(root.path());
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        symlink(&victim, root.path().join("box/.idx.tmp")).unwrap();
        symlink(&victim, root.path().join("box/lock")).unwrap();
        std::fs::hard_link(&victim, root.path().join("box/other.tmp")).unwrap();
        mail.replace_own("idx", b"new").unwrap();
        assert!(mail.lock_file("lock").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(mail.read_own("idx", 100).unwrap(), b"new");
        // A hard link apopd did not make is not its own file.
        assert_eq!(mail.read_own("other.tmp", 100), None);
    }

    #[test]
    fn foreign_files_are_read_only_when_plain() {
        let root = tempfile::tempdir().unwrap();
        let mail = maildir(root.path());
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"secret").unwrap();
        assert!(mail.read_foreign("dovecot-uidlist", 100).unwrap().is_none());
        symlink(&victim, root.path().join("box/dovecot-uidlist")).unwrap();
        assert!(mail.read_foreign("dovecot-uidlist", 100).is_err(), "a symlink");
        std::fs::remove_file(root.path().join("box/dovecot-uidlist")).unwrap();
        std::fs::hard_link(&victim, root.path().join("box/dovecot-uidlist")).unwrap();
        assert!(mail.read_foreign("dovecot-uidlist", 100).is_err(), "a hard link");
        std::fs::remove_file(root.path().join("box/dovecot-uidlist")).unwrap();
        std::fs::write(root.path().join("box/dovecot-uidlist"), b"3 V1 N1\n").unwrap();
        assert!(mail.read_foreign("dovecot-uidlist", 4).is_err(), "too big");
        assert_eq!(mail.read_foreign("dovecot-uidlist", 100).unwrap().unwrap(), b"3 V1 N1\n");
    }

    #[test]
    fn renames_never_replace_and_old_tmp_files_go() {
        let root = tempfile::tempdir().unwrap();
        let mail = maildir(root.path());
        let b = root.path().join("box");
        std::fs::write(b.join("new/1.a"), b"a").unwrap();
        std::fs::write(b.join("cur/1.a:2,"), b"other").unwrap();
        assert!(mail.rename(Sub::New, b"1.a", Sub::Cur, b"1.a:2,").is_err());
        mail.rename(Sub::New, b"1.a", Sub::Cur, b"1.a:2,S").unwrap();
        assert_eq!(std::fs::read(b.join("cur/1.a:2,S")).unwrap(), b"a");
        std::fs::write(b.join("tmp/old"), b"x").unwrap();
        std::fs::write(b.join("tmp/fresh"), b"x").unwrap();
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(37 * 3600);
        File::options().write(true).open(b.join("tmp/old")).unwrap().set_modified(long_ago).unwrap();
        assert_eq!(mail.clean_tmp(std::time::Duration::from_secs(36 * 3600)).unwrap(), 1);
        assert!(b.join("tmp/fresh").exists() && !b.join("tmp/old").exists());
    }
}
