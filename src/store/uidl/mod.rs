//! Unique-ids (UIDL): which one each message gets, and from where.
//!
//! A maildir name is `<base>[:2,<flags>]`; the flags change when a client marks a message
//! read, the base never does. Without any other source the UIDL is the base when it is a valid
//! RFC 1939 unique-id (1–70 characters in 0x21–0x7E), otherwise the hex MD5 of the base:
//! deterministic, so it is the same in every session.
//!
//! A maildir served before by another POP3 server carries that server's UIDLs: Dovecot's
//! `dovecot-uidlist` ([`dovecot`], rendered with `pop3_uidl_format`, see [`format`]),
//! Courier's `courierpop3dsizelist` ([`courier`]), qpopper's `X-UIDL:` headers ([`xuidl`]).
//! [`assign`] is the one place that decides, per the configured [`Scheme`]; the scan calls it
//! only for a message it has not seen before and then remembers the answer in its index, so a
//! UIDL never changes once given (docs/migration.md has the rules and why they cannot collide).

pub mod courier;
pub mod dovecot;
pub mod format;
pub mod xuidl;

use std::collections::HashSet;
use std::fmt;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

pub use format::Format;

use super::index::{Previous, Sub};
use super::safe_fs::Maildir;

/// The longest unique-id RFC 1939 allows.
pub const MAX_UIDL_LEN: usize = 70;

/// Dovecot's file of IMAP UIDs in a maildir.
pub const DOVECOT_UIDLIST: &str = "dovecot-uidlist";
/// Courier pop3d's file of UIDLs in a maildir.
pub const COURIER_SIZELIST: &str = "courierpop3dsizelist";

/// The part of a maildir file name that survives flag changes.
pub fn base_name(file_name: &[u8]) -> &[u8] {
    match memchr::memchr(b':', file_name) {
        Some(i) => &file_name[..i],
        None => file_name,
    }
}

/// True for a valid RFC 1939 unique-id: 1 to 70 characters in 0x21–0x7E.
pub fn is_valid(uidl: &[u8]) -> bool {
    !uidl.is_empty() && uidl.len() <= MAX_UIDL_LEN && uidl.iter().all(u8::is_ascii_graphic)
}

/// The UIDL of the message stored under `file_name`, from its base name.
pub fn uidl_of(file_name: &[u8]) -> String {
    let base = base_name(file_name);
    // A valid UIDL is printable ASCII, so the conversion is a check, not a rewrite.
    match is_valid(base).then(|| std::str::from_utf8(base)) {
        Some(Ok(uidl)) => uidl.to_owned(),
        _ => hashed(file_name),
    }
}

/// The hex MD5 of the base name: for names that are no valid UIDL, and for a base-name UIDL
/// that another message already has.
pub fn hashed(file_name: &[u8]) -> String {
    base16ct::lower::encode_string(&Md5::digest(base_name(file_name)))
}

/// Config key `uidl_format`: where UIDLs come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scheme {
    /// Dovecot's saved `P` UIDL, else Dovecot's default format for messages in
    /// `dovecot-uidlist`, else Courier's UIDL, else the base name.
    #[default]
    Auto,
    /// The base name only (apopd before migration support).
    BaseName,
    /// Courier's `courierpop3dsizelist`, else the base name.
    Courier,
    /// The `X-UIDL:` header of messages present at apopd's first scan, else as `auto`.
    XUidl,
    /// Dovecot's saved `P` UIDL, else this `pop3_uidl_format` (for a format with `%u`/`%v`,
    /// only for messages in `dovecot-uidlist`), else the base name.
    Dovecot(Format),
}

impl TryFrom<String> for Scheme {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "auto" => Ok(Scheme::Auto),
            "basename" => Ok(Scheme::BaseName),
            "courier" => Ok(Scheme::Courier),
            "xuidl" => Ok(Scheme::XUidl),
            t if t.contains('%') => {
                Format::parse(t).map(Scheme::Dovecot).map_err(|e| format!("uidl_format {t:?}: {e}"))
            }
            t => Err(format!(
                "uidl_format {t:?}: use auto, basename, courier, xuidl or a Dovecot pop3_uidl_format such as %08Xu%08Xv"
            )),
        }
    }
}

impl From<Scheme> for String {
    fn from(scheme: Scheme) -> String {
        scheme.to_string()
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Auto => f.write_str("auto"),
            Scheme::BaseName => f.write_str("basename"),
            Scheme::Courier => f.write_str("courier"),
            Scheme::XUidl => f.write_str("xuidl"),
            Scheme::Dovecot(format) => format.fmt(f),
        }
    }
}

impl Scheme {
    /// Whether this scheme reads `dovecot-uidlist`.
    pub fn reads_dovecot(&self) -> bool {
        matches!(self, Scheme::Auto | Scheme::XUidl | Scheme::Dovecot(_))
    }

    /// Whether this scheme reads `courierpop3dsizelist`.
    pub fn reads_courier(&self) -> bool {
        matches!(self, Scheme::Auto | Scheme::XUidl | Scheme::Courier)
    }
}

/// Where a message's UIDL came from (for `apopd migrate check` and the logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// A `P` field Dovecot saved (`pop3_save_uidl`, or its Courier migration script).
    DovecotSaved,
    /// Rendered with the Dovecot format from the message's `dovecot-uidlist` record.
    DovecotFormat,
    /// Courier's `courierpop3dsizelist`.
    Courier,
    /// qpopper's `X-UIDL:` header.
    XUidl,
    /// The base name (or its MD5), for the reason given.
    BaseName(Why),
}

/// Why a message gets a base-name UIDL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Why {
    /// `uidl_format = "basename"`.
    Selected,
    /// No other server's UIDL file is in the maildir.
    NoForeignList,
    /// The other server's file does not list the message (delivered after it last looked).
    NotListed,
    /// The other server's file is there but unreadable or corrupt.
    ListUnreadable,
    /// `xuidl`: the message has no (valid) `X-UIDL:` header.
    NoXUidl,
    /// `xuidl`: the message arrived after apopd's first scan, so its header is not trusted.
    ArrivedLater,
    /// The UIDL the scheme gave is not a valid RFC 1939 unique-id (hashed base name instead).
    Invalid,
    /// Another message already has the UIDL the scheme gave (hashed base name instead).
    Collision,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::DovecotSaved => "Dovecot's saved UIDL (P field)",
            Origin::DovecotFormat => "Dovecot's UIDL (pop3_uidl_format)",
            Origin::Courier => "Courier's UIDL",
            Origin::XUidl => "qpopper's X-UIDL header",
            Origin::BaseName(why) => match why {
                Why::Selected => "base name: uidl_format = \"basename\"",
                Why::NoForeignList => "base name: no dovecot-uidlist or courierpop3dsizelist",
                Why::NotListed => "base name: not listed by the previous server (new mail)",
                Why::ListUnreadable => "base name: the previous server's list is unreadable",
                Why::NoXUidl => "base name: no X-UIDL header",
                Why::ArrivedLater => "base name: arrived after apopd's first scan (X-UIDL not trusted)",
                Why::Invalid => "hashed base name: the other server's UIDL is not a valid unique-id",
                Why::Collision => "hashed base name: its UIDL was taken by another message",
            },
        })
    }
}

/// The other servers' files of one maildir, as far as the scheme reads them.
#[derive(Debug, Default)]
pub struct Sources {
    /// `dovecot-uidlist`: absent, parsed, or why it cannot be used.
    pub dovecot: Option<Result<dovecot::UidList, String>>,
    /// `courierpop3dsizelist`: absent, parsed, or why it cannot be used.
    pub courier: Option<Result<courier::SizeList, String>>,
}

/// The UIDL of the message named `name` under `scheme`, and where it came from.
/// `first_sight` says whether this is apopd's first scan of the maildir (no index yet);
/// `header` reads the message's `X-UIDL:` header (called only for `xuidl`).
pub fn assign(
    scheme: &Scheme,
    sources: &Sources,
    name: &[u8],
    first_sight: bool,
    header: impl FnOnce() -> Option<String>,
) -> (String, Origin) {
    let found = match scheme {
        Scheme::BaseName => Err(Why::Selected),
        Scheme::Courier => from_courier(sources, name),
        Scheme::Dovecot(format) => from_dovecot(sources, name, format),
        Scheme::Auto => from_auto(sources, name),
        Scheme::XUidl => {
            if !first_sight {
                from_auto(sources, name).map_err(|_| Why::ArrivedLater)
            } else if let Some(uidl) = header() {
                Ok((uidl, Origin::XUidl))
            } else {
                from_auto(sources, name).map_err(|_| Why::NoXUidl)
            }
        }
    };
    match found {
        Ok((uidl, origin)) if is_valid(uidl.as_bytes()) => (uidl, origin),
        Ok(_) => (hashed(name), Origin::BaseName(Why::Invalid)),
        Err(why) => (uidl_of(name), Origin::BaseName(why)),
    }
}

/// The most of another server's UIDL file apopd reads (a 100,000-message uidlist with GUIDs
/// is about 8 MB).
const MAX_FOREIGN_LIST: u64 = 64 << 20;

/// Read the other servers' files `scheme` uses. An unusable file is logged with its cause
/// and reported in [`Sources`] (its messages get base-name UIDLs, never a guess).
pub fn load_sources(maildir: &Maildir, scheme: &Scheme) -> Sources {
    fn read<T>(maildir: &Maildir, file: &str, parse: fn(&[u8]) -> Result<T, String>) -> Option<Result<T, String>> {
        let parsed = match maildir.read_foreign(file, MAX_FOREIGN_LIST) {
            Ok(None) => return None,
            Ok(Some(bytes)) => parse(&bytes),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &parsed {
            tracing::warn!(maildir = %maildir.path().display(), file, error = %e, "not using the file's UIDLs");
        }
        Some(parsed)
    }
    Sources {
        dovecot: if scheme.reads_dovecot() { read(maildir, DOVECOT_UIDLIST, dovecot::parse) } else { None },
        courier: if scheme.reads_courier() { read(maildir, COURIER_SIZELIST, courier::parse) } else { None },
    }
}

/// The UIDL of every message named in `names` (in that order): the one `previous` remembers
/// (origin `None`), else the one [`assign`] gives. A base-name or `X-UIDL:` UIDL that another
/// message already has is replaced by the hashed base name, so UIDLs stay unique.
pub fn assign_all(
    maildir: &Maildir,
    scheme: &Scheme,
    previous: &Previous,
    first_sight: bool,
    names: &[(Sub, &[u8])],
) -> Vec<(Box<str>, Option<Origin>)> {
    let mut sources: Option<Sources> = None;
    let mut out: Vec<(Box<str>, Option<Origin>)> = Vec::with_capacity(names.len());
    for &(sub, name) in names {
        if let Some(uidl) = previous.uidl_of(base_name(name)) {
            out.push((uidl.into(), None));
            continue;
        }
        let sources = sources.get_or_insert_with(|| load_sources(maildir, scheme));
        let header = || maildir.open_message(sub, name).ok().and_then(|file| xuidl::read(file).ok().flatten());
        let (uidl, origin) = assign(scheme, sources, name, first_sight, header);
        out.push((uidl.into(), Some(origin)));
    }
    // Borrowed strings, no copies: this runs over every message of a 100,000-message maildir.
    let chosen = |origin: &Option<Origin>| matches!(origin, Some(Origin::BaseName(_) | Origin::XUidl));
    let taken_twice: Vec<usize> = if out.iter().any(|(_, origin)| chosen(origin)) {
        // Sized for every message up front: no rehashing on the way.
        let mut taken: HashSet<&str> = HashSet::with_capacity(out.len());
        taken.extend(out.iter().filter(|(_, origin)| !chosen(origin)).map(|(uidl, _)| &**uidl));
        out.iter()
            .enumerate()
            .filter(|(_, (uidl, origin))| chosen(origin) && !taken.insert(uidl))
            .map(|(i, _)| i)
            .collect()
    } else {
        Vec::new()
    };
    for i in taken_twice {
        out[i] = (hashed(names[i].1).into(), Some(Origin::BaseName(Why::Collision)));
    }
    out
}

/// Dovecot's default `pop3_uidl_format`, parsed once.
static DOVECOT_DEFAULT: std::sync::LazyLock<Format> = std::sync::LazyLock::new(Format::dovecot_default);

fn from_auto(sources: &Sources, name: &[u8]) -> Result<(String, Origin), Why> {
    let dovecot = from_dovecot(sources, name, &DOVECOT_DEFAULT);
    if dovecot.is_ok() || sources.courier.is_none() {
        return dovecot;
    }
    from_courier(sources, name).map_err(|why| match dovecot {
        Err(Why::NoForeignList) => why,
        Err(other) => other.min(why),
        Ok(_) => why,
    })
}

fn from_dovecot(sources: &Sources, name: &[u8], format: &Format) -> Result<(String, Origin), Why> {
    if sources.dovecot.is_none() && format.needs_uidlist() {
        return Err(Why::NoForeignList); // the common case of a maildir only apopd served
    }
    let record = match &sources.dovecot {
        Some(Ok(list)) => list.get(name).map(|r| (list, r)),
        Some(Err(_)) if format.needs_uidlist() => return Err(Why::ListUnreadable),
        _ => None,
    };
    if let Some((_, record)) = record
        && let Some(saved) = record.pop3_uidl
    {
        let saved = if saved.is_empty() { base_name(name) } else { saved };
        return Ok((String::from_utf8_lossy(saved).into_owned(), Origin::DovecotSaved));
    }
    let file_name = String::from_utf8_lossy(base_name(name));
    let values = format::Values {
        uid: record.map(|(_, r)| r.uid),
        uid_validity: record.map(|(list, _)| list.uid_validity),
        file_name: &file_name,
        guid: record.and_then(|(_, r)| r.guid).and_then(|g| std::str::from_utf8(g).ok()),
    };
    match format.render(&values) {
        Some(uidl) => Ok((uidl, Origin::DovecotFormat)),
        None if sources.dovecot.is_none() => Err(Why::NoForeignList),
        None => Err(Why::NotListed),
    }
}

fn from_courier(sources: &Sources, name: &[u8]) -> Result<(String, Origin), Why> {
    match &sources.courier {
        None => Err(Why::NoForeignList),
        Some(Err(_)) => Err(Why::ListUnreadable),
        Some(Ok(list)) => list.get(name).map(|u| (u.to_owned(), Origin::Courier)).ok_or(Why::NotListed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flags_do_not_change_the_uidl() {
        assert_eq!(uidl_of(b"1700000000.M1P2.host,S=10"), "1700000000.M1P2.host,S=10");
        assert_eq!(uidl_of(b"1700000000.M1P2.host,S=10:2,S"), "1700000000.M1P2.host,S=10");
        assert_eq!(uidl_of(b"1700000000.M1P2.host,S=10:2,RS"), uidl_of(b"1700000000.M1P2.host,S=10"));
    }

    #[test]
    fn long_or_odd_names_are_hashed() {
        let long = "1".repeat(71);
        let uidl = uidl_of(long.as_bytes());
        assert_eq!(uidl.len(), 32);
        assert_eq!(uidl, uidl_of(format!("{long}:2,S").as_bytes()));
        assert_eq!(uidl_of(b"with space").len(), 32);
        assert_eq!(uidl_of("caf\u{e9}".as_bytes()).len(), 32);
    }

    fn sources(uidlist: &[u8], sizelist: Option<&[u8]>) -> Sources {
        Sources { dovecot: Some(dovecot::parse(uidlist)), courier: sizelist.map(courier::parse) }
    }

    #[test]
    fn auto_takes_saved_then_dovecot_then_courier_then_base_name() {
        let s = sources(
            b"3 V1234 N4\n1 :1.a.host\n2 Psaved-uidl :2.b.host\n3 P :3.c.host:2,S\n",
            Some(b"/3 9 77\n4.d.host 10 8:77\n1.a.host 10 1:77\n"),
        );
        let auto = |name: &[u8]| assign(&Scheme::Auto, &s, name, false, || None);
        assert_eq!(auto(b"1.a.host:2,S"), ("00000001000004d2".to_owned(), Origin::DovecotFormat));
        assert_eq!(auto(b"2.b.host"), ("saved-uidl".to_owned(), Origin::DovecotSaved));
        assert_eq!(auto(b"3.c.host:2,"), ("3.c.host".to_owned(), Origin::DovecotSaved));
        assert_eq!(auto(b"4.d.host"), ("UID8-77".to_owned(), Origin::Courier));
        assert_eq!(auto(b"5.e.host"), ("5.e.host".to_owned(), Origin::BaseName(Why::NotListed)));
        let none = Sources::default();
        assert_eq!(assign(&Scheme::Auto, &none, b"5.e", true, || None).1, Origin::BaseName(Why::NoForeignList));
    }

    #[test]
    fn explicit_schemes() {
        let s = sources(b"3 V1234 N3\n1 :1.a.host\n2 Gabc :2.b.host\n", None);
        let with = |scheme: &str, name: &[u8]| {
            assign(&Scheme::try_from(scheme.to_owned()).unwrap(), &s, name, true, || Some("xu-1".to_owned()))
        };
        assert_eq!(with("%v.%u", b"1.a.host").0, "1234.1");
        assert_eq!(with("%08Xv%08Xu", b"1.a.host").0, "000004d200000001");
        assert_eq!(with("%v.%u", b"9.z.host").1, Origin::BaseName(Why::NotListed));
        assert_eq!(with("%f", b"9.z.host:2,S"), ("9.z.host".to_owned(), Origin::DovecotFormat));
        assert_eq!(with("%g", b"2.b.host").0, "abc");
        assert_eq!(with("basename", b"1.a.host").0, "1.a.host");
        assert_eq!(with("courier", b"1.a.host").1, Origin::BaseName(Why::NoForeignList));
        assert_eq!(with("xuidl", b"1.a.host"), ("xu-1".to_owned(), Origin::XUidl));
        let later = assign(&Scheme::XUidl, &s, b"9.z.host", false, || Some("forged".to_owned()));
        assert_eq!(later, ("9.z.host".to_owned(), Origin::BaseName(Why::ArrivedLater)));
        assert!(Scheme::try_from("nonsense".to_owned()).is_err());
        assert!(Scheme::try_from("%m".to_owned()).is_err());
        assert_eq!(Scheme::try_from("%v.%u".to_owned()).unwrap().to_string(), "%v.%u");
    }

    #[test]
    fn a_new_uidl_that_is_taken_gets_the_hashed_base_name() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(
            &crate::store::Location::at(&dir.path().join("box"), "x"),
            &crate::store::Policy::default(),
            true,
        )
        .unwrap();
        // `%v.%u` gives "7.1" to the listed message; a file whose base name is "7.1" arrives.
        std::fs::write(dir.path().join("box/dovecot-uidlist"), "3 V7 N2\n1 :1.a.host\n").unwrap();
        let scheme = Scheme::try_from("%v.%u".to_owned()).unwrap();
        let names: [(Sub, &[u8]); 2] = [(Sub::Cur, b"1.a.host:2,"), (Sub::New, b"7.1")];
        let out = assign_all(&maildir, &scheme, &Previous::default(), true, &names);
        assert_eq!(&*out[0].0, "7.1");
        assert_eq!((&*out[1].0, out[1].1), (&*hashed(b"7.1"), Some(Origin::BaseName(Why::Collision))));
    }

    #[test]
    fn a_corrupt_uidlist_gives_base_names() {
        let s = Sources { dovecot: Some(dovecot::parse(b"garbage")), courier: None };
        assert_eq!(assign(&Scheme::Auto, &s, b"1.a", false, || None).1, Origin::BaseName(Why::ListUnreadable));
    }

    proptest! {
        #[test]
        fn always_valid(name in proptest::collection::vec(any::<u8>(), 0..200)) {
            let u = uidl_of(&name);
            prop_assert!((1..=MAX_UIDL_LEN).contains(&u.len()));
            prop_assert!(u.bytes().all(|b| b.is_ascii_graphic()));
        }
    }
}
