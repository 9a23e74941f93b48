//! The `command_parser` property, shared by the fuzz target and `tests/fuzz_regressions.rs`.
//!
//! `parse` must never panic, and every command it accepts must come back unchanged when it
//! is rendered in canonical form and parsed again, also with a lower-case keyword and
//! extra spaces between the arguments (arguments are space-separated, empty ones ignored).

use apopd::protocol::command::{Command, parse};

/// Check one input line (without its line ending); panics when a property fails.
pub fn check_command(data: &[u8]) {
    let Ok(command) = parse(data) else { return };
    // Debug is hand-written to hide secrets; it must at least never panic.
    let _ = format!("{command:?}");

    let (keyword, args) = render(&command);
    let canonical = join(keyword, &args, " ");
    assert_eq!(parse(&canonical), Ok(command.clone()), "canonical form {:?} of {data:?}", bstr(&canonical));

    if let Command::Pass(_) = command {
        // PASS keeps its argument verbatim, spaces included: only the keyword's case is free.
        let lower = join(&keyword.to_ascii_lowercase(), &args, " ");
        assert_eq!(parse(&lower), Ok(command), "lower-case form {:?}", bstr(&lower));
        return;
    }
    let mut loose = join(&keyword.to_ascii_lowercase(), &args, "   ");
    loose.push(b' ');
    assert_eq!(parse(&loose), Ok(command), "loose form {:?} of {data:?}", bstr(&loose));
}

/// The canonical keyword and arguments of `command`.
fn render(command: &Command) -> (&'static [u8], Vec<Vec<u8>>) {
    let n = |v: &u64| v.to_string().into_bytes();
    let s = |v: &String| v.clone().into_bytes();
    match command {
        Command::User(name) => (b"USER", vec![s(name)]),
        Command::Pass(password) => (b"PASS", vec![password.clone()]),
        Command::Apop { name, digest } => (b"APOP", vec![s(name), s(digest)]),
        Command::Quit => (b"QUIT", vec![]),
        Command::Stat => (b"STAT", vec![]),
        Command::List(m) => (b"LIST", m.iter().map(n).collect()),
        Command::Retr(m) => (b"RETR", vec![n(m)]),
        Command::Dele(m) => (b"DELE", vec![n(m)]),
        Command::Noop => (b"NOOP", vec![]),
        Command::Rset => (b"RSET", vec![]),
        Command::Top { msg, lines } => (b"TOP", vec![n(msg), n(lines)]),
        Command::Uidl(m) => (b"UIDL", m.iter().map(n).collect()),
        Command::Capa => (b"CAPA", vec![]),
        Command::Stls => (b"STLS", vec![]),
        Command::Auth { mechanism, initial } => (b"AUTH", mechanism.iter().chain(initial).map(s).collect()),
        Command::Lang(range) => (b"LANG", range.iter().map(s).collect()),
        Command::Utf8 => (b"UTF8", vec![]),
    }
}

fn join(keyword: &[u8], args: &[Vec<u8>], separator: &str) -> Vec<u8> {
    let mut line = keyword.to_vec();
    for arg in args {
        line.extend_from_slice(separator.as_bytes());
        line.extend_from_slice(arg);
    }
    line
}

fn bstr(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
