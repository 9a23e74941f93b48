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
    /// `LANG [range]` (RFC 6856): list the languages, or select one (`*`: the default).
    Lang(Option<String>),
    /// `UTF8` (RFC 6856): UTF-8 user names and passwords from now on.
    Utf8,
}

impl Command {
    /// The command's keyword, upper case (for texts such as hints).
    pub fn keyword(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Apop { .. } => "APOP",
            Command::Quit => "QUIT",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Top { .. } => "TOP",
            Command::Uidl(_) => "UIDL",
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
            Command::Auth { .. } => "AUTH",
            Command::Lang(_) => "LANG",
            Command::Utf8 => "UTF8",
        }
    }
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
            Command::Lang(range) => write!(f, "Lang({range:?})"),
            Command::Utf8 => f.write_str("Utf8"),
        }
    }
}

/// Why a line is not a valid command; the session turns it into a text in the client's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The keyword is not a POP3 command we implement.
    Unknown,
    /// The line holds no keyword at all.
    Empty,
    /// The keyword is known but its arguments are not.
    BadArguments {
        /// The command, upper case.
        keyword: &'static str,
        /// What is wrong with the arguments.
        problem: Problem,
    },
}

/// What is wrong with a known command's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The command takes none.
    NoArguments,
    /// PASS without a password.
    NeedsPassword,
    /// USER needs exactly one name.
    OneUserName,
    /// APOP needs a name and a digest.
    ApopArguments,
    /// An AUTH mechanism name that is not printable.
    BadMechanism,
    /// An AUTH initial response that is not printable.
    BadInitialResponse,
    /// AUTH with more than two arguments.
    AuthArguments,
    /// RETR or DELE without a message number.
    NeedsMessageNumber,
    /// A message number that is not made of digits.
    InvalidMessageNumber,
    /// A TOP line count that is not made of digits.
    InvalidLineCount,
    /// TOP without both arguments.
    TopArguments,
    /// LIST or UIDL with more than one argument.
    TooManyArguments,
    /// An argument over [`MAX_ARG_LEN`] octets.
    ArgumentTooLong,
    /// LANG with more than one argument, or one that is not a language range.
    LangArguments,
}

/// The keywords we implement.
const KEYWORDS: &[&str] = &[
    "USER", "PASS", "APOP", "QUIT", "STAT", "NOOP", "RSET", "CAPA", "STLS", "AUTH", "LIST", "UIDL", "RETR", "DELE",
    "TOP", "LANG", "UTF8",
];

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
    let upper = &upper[..keyword.len()];
    let Some(&keyword) = KEYWORDS.iter().find(|k| k.as_bytes() == upper) else {
        return Err(ParseError::Unknown);
    };
    arguments(keyword, rest).map_err(|problem| ParseError::BadArguments { keyword, problem })
}

/// The command `keyword` with the argument bytes `rest`.
fn arguments(keyword: &'static str, rest: &[u8]) -> Result<Command, Problem> {
    // PASS keeps its argument verbatim: passwords may contain (and end in) spaces.
    if keyword == "PASS" {
        if rest.is_empty() {
            return Err(Problem::NeedsPassword);
        }
        return Ok(Command::Pass(rest.to_vec()));
    }
    let args = Args::split(rest)?;
    let cmd = match keyword {
        "USER" => match args.as_slice() {
            [one] => Command::User(name(one, Problem::OneUserName)?),
            _ => return Err(Problem::OneUserName),
        },
        "APOP" => match args.as_slice() {
            [user, digest] => Command::Apop {
                name: name(user, Problem::ApopArguments)?,
                digest: text(digest, Problem::ApopArguments)?,
            },
            _ => return Err(Problem::ApopArguments),
        },
        "QUIT" => args.none(Command::Quit)?,
        "STAT" => args.none(Command::Stat)?,
        "NOOP" => args.none(Command::Noop)?,
        "RSET" => args.none(Command::Rset)?,
        "CAPA" => args.none(Command::Capa)?,
        "STLS" => args.none(Command::Stls)?,
        "UTF8" => args.none(Command::Utf8)?,
        "AUTH" => match args.as_slice() {
            [] => Command::Auth { mechanism: None, initial: None },
            [mechanism] => Command::Auth { mechanism: Some(text(mechanism, Problem::BadMechanism)?), initial: None },
            [mechanism, initial] => Command::Auth {
                mechanism: Some(text(mechanism, Problem::BadMechanism)?),
                initial: Some(text(initial, Problem::BadInitialResponse)?),
            },
            _ => return Err(Problem::AuthArguments),
        },
        "LANG" => match args.as_slice() {
            [] => Command::Lang(None),
            [range] if is_language_range(range) => Command::Lang(Some(text(range, Problem::LangArguments)?)),
            _ => return Err(Problem::LangArguments),
        },
        "LIST" => Command::List(args.optional_number()?),
        "UIDL" => Command::Uidl(args.optional_number()?),
        "RETR" => Command::Retr(args.one_number()?),
        "DELE" => Command::Dele(args.one_number()?),
        "TOP" => match args.as_slice() {
            [msg, lines] => Command::Top {
                msg: number(msg, Problem::InvalidMessageNumber)?,
                lines: number(lines, Problem::InvalidLineCount)?,
            },
            _ => return Err(Problem::TopArguments),
        },
        _ => return Err(Problem::NoArguments), // not reached: `parse` passes only KEYWORDS
    };
    Ok(cmd)
}

/// `*`, or a basic language range (RFC 4647): subtags of letters and digits joined by `-`.
fn is_language_range(arg: &[u8]) -> bool {
    arg == b"*"
        || arg
            .split(|&b| b == b'-')
            .all(|sub| (1..=8).contains(&sub.len()) && sub.iter().all(u8::is_ascii_alphanumeric))
}

/// The space-separated arguments after the keyword (at most two are ever meaningful).
struct Args<'a>(Vec<&'a [u8]>);

impl<'a> Args<'a> {
    fn split(rest: &'a [u8]) -> Result<Self, Problem> {
        let args: Vec<&[u8]> = rest.split(|&b| b == b' ').filter(|a| !a.is_empty()).take(3).collect();
        if args.iter().any(|a| a.len() > MAX_ARG_LEN) {
            return Err(Problem::ArgumentTooLong);
        }
        Ok(Args(args))
    }

    fn as_slice(&self) -> &[&'a [u8]] {
        &self.0
    }

    fn none(&self, cmd: Command) -> Result<Command, Problem> {
        if self.0.is_empty() { Ok(cmd) } else { Err(Problem::NoArguments) }
    }

    fn one_number(&self) -> Result<u64, Problem> {
        match self.as_slice() {
            [one] => number(one, Problem::InvalidMessageNumber),
            _ => Err(Problem::NeedsMessageNumber),
        }
    }

    fn optional_number(&self) -> Result<Option<u64>, Problem> {
        match self.as_slice() {
            [] => Ok(None),
            [one] => number(one, Problem::InvalidMessageNumber).map(Some),
            _ => Err(Problem::TooManyArguments),
        }
    }
}

/// A printable-ASCII argument (digests, mechanisms, language ranges).
fn text(arg: &[u8], why: Problem) -> Result<String, Problem> {
    if arg.iter().all(|b| b.is_ascii_graphic()) { Ok(String::from_utf8_lossy(arg).into_owned()) } else { Err(why) }
}

/// A user name: UTF-8 without control characters (RFC 6856 allows UTF-8 names after `UTF8`;
/// the session checks that, and the store which names can be a maildir).
fn name(arg: &[u8], why: Problem) -> Result<String, Problem> {
    match std::str::from_utf8(arg) {
        Ok(name) if !name.chars().any(char::is_control) => Ok(name.to_owned()),
        _ => Err(why),
    }
}

/// A decimal number made of digits only; values past `u64` saturate (they are out of range anyway).
fn number(arg: &[u8], why: Problem) -> Result<u64, Problem> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return Err(why);
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
            assert!(matches!(parse(line), Err(ParseError::BadArguments { .. })), "{line:?}");
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
        assert!(parse(b"USER a\xc2\x85b").is_err(), "a C1 control character");
        assert!(parse(b"USER \xff").is_err(), "not UTF-8");
        assert_eq!(parse(b"USER ../../etc"), Ok(Command::User("../../etc".into())));
        assert_eq!(parse("USER ユーザー".as_bytes()), Ok(Command::User("ユーザー".into())));
        assert!(parse("APOP ユーザー c4c9334bac560ecc979e58001b3e22fb".as_bytes()).is_ok());
        assert!(parse("APOP u ä".as_bytes()).is_err(), "digests are ASCII");
    }

    #[test]
    fn lang_and_utf8() {
        assert_eq!(parse(b"LANG"), Ok(Command::Lang(None)));
        assert_eq!(parse(b"lang zh-Hans"), Ok(Command::Lang(Some("zh-Hans".into()))));
        assert_eq!(parse(b"LANG *"), Ok(Command::Lang(Some("*".into()))));
        for bad in [&b"LANG a b"[..], b"LANG ja_JP", b"LANG -", b"LANG abcdefghi", b"LANG en-"] {
            let e = parse(bad);
            assert_eq!(
                e,
                Err(ParseError::BadArguments { keyword: "LANG", problem: Problem::LangArguments }),
                "{bad:?}"
            );
        }
        assert_eq!(parse(b"utf8"), Ok(Command::Utf8));
        assert_eq!(parse(b"UTF8 x"), Err(ParseError::BadArguments { keyword: "UTF8", problem: Problem::NoArguments }));
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
