//! Parsing one POP3 command line (without its line ending) into a [`Command`].
//!
//! Pure and I/O-free so it can be unit-, property- and fuzz-tested on byte slices.

use std::fmt;

/// The longest user name we accept; longer ones are refused before any lookup.
pub const MAX_ARG_LEN: usize = 255;

/// One parsed POP3 command (RFC 1939, RFC 2449).
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// `USER name`
    User(String),
    /// `PASS password`: the rest of the line, spaces included.
    Pass(Vec<u8>),
    /// `APOP name digest`
    Apop { name: String, digest: String },
    /// `QUIT`
    Quit,
    /// `STAT`
    Stat,
    /// `LIST [msg]`
    List(Option<u64>),
    /// `RETR msg`
    Retr(u64),
    /// `DELE msg`
    Dele(u64),
    /// `NOOP`
    Noop,
    /// `RSET`
    Rset,
    /// `TOP msg lines`
    Top { msg: u64, lines: u64 },
    /// `UIDL [msg]`
    Uidl(Option<u64>),
    /// `CAPA` (RFC 2449)
    Capa,
    /// `STLS` (RFC 2595)
    Stls,
    /// `AUTH [mechanism [initial-response]]` (RFC 5034)
    Auth { mechanism: Option<String>, initial: Option<String> },
}

// Hand-written so a password never reaches a log line through `{:?}`.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Pass(_) => f.write_str("Pass(<redacted>)"),
            Command::Apop { name, .. } => write!(f, "Apop({name:?}, <digest>)"),
            Command::User(n) => write!(f, "User({n:?})"),
            Command::Quit => f.write_str("Quit"),
            Command::Stat => f.write_str("Stat"),
            Command::List(m) => write!(f, "List({m:?})"),
            Command::Retr(m) => write!(f, "Retr({m})"),
            Command::Dele(m) => write!(f, "Dele({m})"),
            Command::Noop => f.write_str("Noop"),
            Command::Rset => f.write_str("Rset"),
            Command::Top { msg, lines } => write!(f, "Top({msg}, {lines})"),
            Command::Uidl(m) => write!(f, "Uidl({m:?})"),
            Command::Capa => f.write_str("Capa"),
            Command::Stls => f.write_str("Stls"),
            Command::Auth { mechanism, initial } => {
                write!(f, "Auth({mechanism:?}{})", if initial.is_some() { ", <initial response>" } else { "" })
            }
        }
    }
}

/// Why a line is not a valid command; the text is what the client is told after `-ERR `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The keyword is not a POP3 command we implement.
    #[error("unknown command")]
    Unknown,
    /// The line holds no keyword at all.
    #[error("empty command")]
    Empty,
    /// The keyword is known but its arguments are not.
    #[error("{0}")]
    BadArguments(&'static str),
}

/// Parse one command line, with its CRLF or LF already removed.
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    if keyword.is_empty() {
        return Err(ParseError::Empty);
    }
    if keyword.len() > 4 {
        return Err(ParseError::Unknown);
    }
    let mut upper = [0u8; 4];
    upper[..keyword.len()].copy_from_slice(keyword);
    upper.make_ascii_uppercase();
    let keyword = &upper[..keyword.len()];

    // PASS keeps its argument verbatim: passwords may contain (and end in) spaces.
    if keyword == b"PASS" {
        if rest.is_empty() {
            return Err(ParseError::BadArguments("PASS needs a password"));
        }
        return Ok(Command::Pass(rest.to_vec()));
    }

    let args = Args::split(rest)?;
    let cmd = match keyword {
        b"USER" => Command::User(args.exactly_one_text("USER needs exactly one user name")?),
        b"APOP" => match args.as_slice() {
            [name, digest] => Command::Apop {
                name: text(name, "APOP needs a user name and a digest")?,
                digest: text(digest, "APOP needs a user name and a digest")?,
            },
            _ => return Err(ParseError::BadArguments("APOP needs a user name and a digest")),
        },
        b"QUIT" => args.none(Command::Quit, "QUIT takes no arguments")?,
        b"STAT" => args.none(Command::Stat, "STAT takes no arguments")?,
        b"NOOP" => args.none(Command::Noop, "NOOP takes no arguments")?,
        b"RSET" => args.none(Command::Rset, "RSET takes no arguments")?,
        b"CAPA" => args.none(Command::Capa, "CAPA takes no arguments")?,
        b"STLS" => args.none(Command::Stls, "STLS takes no arguments")?,
        b"AUTH" => match args.as_slice() {
            [] => Command::Auth { mechanism: None, initial: None },
            [mechanism] => Command::Auth { mechanism: Some(text(mechanism, "bad mechanism name")?), initial: None },
            [mechanism, initial] => Command::Auth {
                mechanism: Some(text(mechanism, "bad mechanism name")?),
                initial: Some(text(initial, "bad initial response")?),
            },
            _ => return Err(ParseError::BadArguments("AUTH takes a mechanism and an optional initial response")),
        },
        b"LIST" => Command::List(args.optional_number()?),
        b"UIDL" => Command::Uidl(args.optional_number()?),
        b"RETR" => Command::Retr(args.one_number("RETR needs a message number")?),
        b"DELE" => Command::Dele(args.one_number("DELE needs a message number")?),
        b"TOP" => match args.as_slice() {
            [msg, lines] => Command::Top {
                msg: number(msg, "invalid message number")?,
                lines: number(lines, "invalid line count")?,
            },
            _ => return Err(ParseError::BadArguments("TOP needs a message number and a line count")),
        },
        _ => return Err(ParseError::Unknown),
    };
    Ok(cmd)
}

/// The space-separated arguments after the keyword (at most two are ever meaningful).
struct Args<'a>(Vec<&'a [u8]>);

impl<'a> Args<'a> {
    fn split(rest: &'a [u8]) -> Result<Self, ParseError> {
        let args: Vec<&[u8]> = rest.split(|&b| b == b' ').filter(|a| !a.is_empty()).take(3).collect();
        if args.iter().any(|a| a.len() > MAX_ARG_LEN) {
            return Err(ParseError::BadArguments("argument too long"));
        }
        Ok(Args(args))
    }

    fn as_slice(&self) -> &[&'a [u8]] {
        &self.0
    }

    fn none(&self, cmd: Command, why: &'static str) -> Result<Command, ParseError> {
        if self.0.is_empty() { Ok(cmd) } else { Err(ParseError::BadArguments(why)) }
    }

    fn exactly_one_text(&self, why: &'static str) -> Result<String, ParseError> {
        match self.as_slice() {
            [one] => text(one, why),
            _ => Err(ParseError::BadArguments(why)),
        }
    }

    fn one_number(&self, why: &'static str) -> Result<u64, ParseError> {
        match self.as_slice() {
            [one] => number(one, "invalid message number"),
            _ => Err(ParseError::BadArguments(why)),
        }
    }

    fn optional_number(&self) -> Result<Option<u64>, ParseError> {
        match self.as_slice() {
            [] => Ok(None),
            [one] => number(one, "invalid message number").map(Some),
            _ => Err(ParseError::BadArguments("too many arguments")),
        }
    }
}

/// A printable-ASCII argument (user names, digests).
fn text(arg: &[u8], why: &'static str) -> Result<String, ParseError> {
    if arg.iter().all(|b| b.is_ascii_graphic()) {
        Ok(String::from_utf8_lossy(arg).into_owned())
    } else {
        Err(ParseError::BadArguments(why))
    }
}

/// A decimal number made of digits only; values past `u64` saturate (they are out of range anyway).
fn number(arg: &[u8], why: &'static str) -> Result<u64, ParseError> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadArguments(why));
    }
    Ok(arg.iter().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(parse(b"stat"), Ok(Command::Stat));
        assert_eq!(parse(b"StAt"), Ok(Command::Stat));
        assert_eq!(parse(b"list 3"), Ok(Command::List(Some(3))));
        assert_eq!(parse(b"Top 1 0"), Ok(Command::Top { msg: 1, lines: 0 }));
    }

    #[test]
    fn pass_keeps_spaces() {
        assert_eq!(parse(b"PASS  two words "), Ok(Command::Pass(b" two words ".to_vec())));
        assert!(parse(b"PASS").is_err());
    }

    #[test]
    fn apop_has_two_arguments() {
        assert_eq!(
            parse(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            Ok(Command::Apop { name: "mrose".into(), digest: "c4c9334bac560ecc979e58001b3e22fb".into() })
        );
        assert!(parse(b"APOP mrose").is_err());
        assert!(parse(b"APOP a b c").is_err());
    }

    #[test]
    fn bad_numbers_are_refused() {
        for line in [&b"RETR"[..], b"RETR x", b"RETR -1", b"RETR +1", b"RETR 1 2", b"DELE 1.5", b"TOP 1", b"TOP 1 -1"] {
            assert!(matches!(parse(line), Err(ParseError::BadArguments(_))), "{line:?}");
        }
        assert_eq!(parse(b"RETR 99999999999999999999999"), Ok(Command::Retr(u64::MAX)));
        assert_eq!(parse(b"RETR 0"), Ok(Command::Retr(0)));
    }

    #[test]
    fn unknown_and_empty() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b" STAT"), Err(ParseError::Empty));
        assert_eq!(parse(b"HELO"), Err(ParseError::Unknown));
        assert_eq!(parse(b"STATUS"), Err(ParseError::Unknown));
        assert_eq!(parse(b"\x00\xff\x01"), Err(ParseError::Unknown));
        assert!(parse(b"STAT now").is_err());
    }

    #[test]
    fn user_names_must_be_printable() {
        assert!(parse(b"USER a\x01b").is_err());
        assert_eq!(parse(b"USER ../../etc"), Ok(Command::User("../../etc".into())));
    }

    #[test]
    fn stls_and_auth() {
        assert_eq!(parse(b"stls"), Ok(Command::Stls));
        assert_eq!(parse(b"AUTH"), Ok(Command::Auth { mechanism: None, initial: None }));
        assert_eq!(parse(b"AUTH plain"), Ok(Command::Auth { mechanism: Some("plain".into()), initial: None }));
        assert_eq!(
            parse(b"AUTH PLAIN AGJvYgBidWlsZGVy"),
            Ok(Command::Auth { mechanism: Some("PLAIN".into()), initial: Some("AGJvYgBidWlsZGVy".into()) })
        );
        assert!(parse(b"AUTH A B C").is_err());
        assert!(!format!("{:?}", parse(b"AUTH PLAIN AGJvYgBidWlsZGVy").unwrap()).contains("AGJv"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let shown = format!("{:?}", parse(b"PASS hunter2").unwrap());
        assert!(!shown.contains("hunter2"));
        let shown = format!("{:?}", parse(b"APOP u c4c9334bac560ecc979e58001b3e22fb").unwrap());
        assert!(!shown.contains("c4c9"));
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&line);
        }

        #[test]
        fn numbers_round_trip(n in 0u64..u64::MAX, k in 0u64..1_000_000) {
            prop_assert_eq!(parse(format!("retr {n}").as_bytes()), Ok(Command::Retr(n)));
            prop_assert_eq!(parse(format!("TOP {n} {k}").as_bytes()), Ok(Command::Top { msg: n, lines: k }));
        }

        #[test]
        fn pass_round_trips(pw in proptest::collection::vec(any::<u8>().prop_filter("no line end", |b| *b != b'\n'), 1..200)) {
            let mut line = b"PASS ".to_vec();
            line.extend_from_slice(&pw);
            prop_assert_eq!(parse(&line), Ok(Command::Pass(pw)));
        }
    }
}
