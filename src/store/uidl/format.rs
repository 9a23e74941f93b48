//! Dovecot's `pop3_uidl_format`: parsed once from the config, rendered per message.
//!
//! The syntax is Dovecot's `var_expand` subset that UIDL formats use: `%%`, and
//! `%[0][width][modifiers]key` with key `u` (IMAP UID), `v` (UIDVALIDITY), `f` (base file
//! name), `g` (the uidlist's `G` field, else the base name) or their long forms `%{uid}`,
//! `%{uidvalidity}`, `%{filename}`, `%{guid}`. Modifiers: `X` (decimal to lowercase hex, as
//! Dovecot's `%llx`), `L`, `U` (case). A width with a leading `0` pads with zeros and never
//! truncates; a width without it keeps at most that many characters (Dovecot's rules).

use std::fmt;

/// A value a format refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `%u`: the IMAP UID.
    Uid,
    /// `%v`: the mailbox's UIDVALIDITY.
    UidValidity,
    /// `%f`: the base file name.
    FileName,
    /// `%g`: the GUID (the uidlist's `G` field, else the base name).
    Guid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var { key: Key, zero_pad: bool, width: usize, modifiers: Vec<char> },
}

/// A parsed `pop3_uidl_format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    source: String,
    parts: Vec<Part>,
}

/// The values of one message.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    /// The IMAP UID, when Dovecot numbered the message.
    pub uid: Option<u32>,
    /// The UIDVALIDITY, when there is a uidlist.
    pub uid_validity: Option<u32>,
    /// The base file name.
    pub file_name: &'a str,
    /// The uidlist's `G` field.
    pub guid: Option<&'a str>,
}

impl Format {
    /// Dovecot's default, `%08Xu%08Xv`.
    pub fn dovecot_default() -> Format {
        Format::parse("%08Xu%08Xv").unwrap_or_else(|_| Format { source: String::new(), parts: Vec::new() })
    }

    /// Parse `text`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Format, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            if chars.peek() == Some(&'%') {
                chars.next();
                literal.push('%');
                continue;
            }
            let zero_pad = chars.next_if_eq(&'0').is_some();
            let mut width = 0usize;
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                width = width.saturating_mul(10).saturating_add(d as usize - '0' as usize).min(1000);
            }
            let mut modifiers = Vec::new();
            while let Some(m) = chars.next_if(|c| matches!(c, 'X' | 'L' | 'U')) {
                modifiers.push(m);
            }
            let key = match chars.next() {
                Some('u') => Key::Uid,
                Some('v') => Key::UidValidity,
                Some('f') => Key::FileName,
                Some('g') => Key::Guid,
                Some('{') => {
                    let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    match name.as_str() {
                        "uid" => Key::Uid,
                        "uidvalidity" => Key::UidValidity,
                        "filename" => Key::FileName,
                        "guid" => Key::Guid,
                        _ => {
                            return Err(format!(
                                "%{{{name}}} is not a variable apopd knows (uid, uidvalidity, filename, guid)"
                            ));
                        }
                    }
                }
                Some(other) => {
                    return Err(format!("%{other} is not a variable apopd knows (u, v, f, g; %m needs mbox)"));
                }
                None => return Err("the format ends inside a % variable".to_owned()),
            };
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var { key, zero_pad, width, modifiers });
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        if !parts.iter().any(|p| matches!(p, Part::Var { .. })) {
            return Err("the format uses no variable: every message would get the same UIDL".to_owned());
        }
        Ok(Format { source: text.to_owned(), parts })
    }

    /// True when the format needs Dovecot's numbering (`%u` or `%v`): it applies only to
    /// messages listed in `dovecot-uidlist`.
    pub fn needs_uidlist(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var { key: Key::Uid | Key::UidValidity, .. }))
    }

    /// The UIDL Dovecot would render, or `None` when a needed value is missing.
    pub fn render(&self, values: &Values<'_>) -> Option<String> {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(24);
        let mut value = String::with_capacity(24); // one scratch buffer: no allocation per part
        for part in &self.parts {
            let Part::Var { key, zero_pad, width, modifiers } = part else {
                if let Part::Text(text) = part {
                    out.push_str(text);
                }
                continue;
            };
            value.clear();
            let number = match key {
                Key::Uid => Some(u64::from(values.uid?)),
                Key::UidValidity => Some(u64::from(values.uid_validity?)),
                Key::FileName => {
                    value.push_str(values.file_name);
                    None
                }
                Key::Guid => {
                    value.push_str(values.guid.unwrap_or(values.file_name));
                    None
                }
            };
            let mut modifiers = modifiers.iter().peekable();
            match (number, modifiers.peek()) {
                // The usual `%08Xu`: straight to hex, as Dovecot's %llx.
                (Some(n), Some('X')) => {
                    modifiers.next();
                    let _ = write!(value, "{n:x}");
                }
                (Some(n), _) => {
                    let _ = write!(value, "{n}");
                }
                (None, _) => {}
            }
            for m in modifiers {
                match m {
                    // Dovecot: str_to_uintmax, 0 when not a number, printed with %llx.
                    'X' => {
                        let n = value.parse::<u64>().unwrap_or(0);
                        value.clear();
                        let _ = write!(value, "{n:x}");
                    }
                    'L' => value.make_ascii_lowercase(),
                    _ => value.make_ascii_uppercase(),
                }
            }
            if *width == 0 {
                out.push_str(&value);
            } else if *zero_pad {
                out.extend(std::iter::repeat_n('0', width.saturating_sub(value.len())));
                out.push_str(&value);
            } else {
                out.extend(value.chars().take(*width));
            }
        }
        Some(out)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(uid: u32, v: u32, name: &'static str) -> Values<'static> {
        Values { uid: Some(uid), uid_validity: Some(v), file_name: name, guid: None }
    }

    #[test]
    fn dovecot_default_is_lowercase_hex_padded_to_eight() {
        let f = Format::dovecot_default();
        assert_eq!(f.render(&values(1, 1_700_000_000, "x")).unwrap(), "000000016553f100");
        assert_eq!(f.render(&values(0xabcdef12, 0x1_0000 - 1, "x")).unwrap(), "abcdef120000ffff");
        assert!(f.needs_uidlist());
    }

    #[test]
    fn other_servers_formats() {
        let v = values(42, 1234, "1700.M1P2.host,S=5");
        let render = |f: &str| Format::parse(f).unwrap().render(&v).unwrap();
        assert_eq!(render("%08Xv%08Xu"), "000004d20000002a"); // UW
        assert_eq!(render("%v.%u"), "1234.42"); // Cyrus >= 2.1.4, Dovecot 0.99
        assert_eq!(render("%u"), "42"); // Cyrus <= 2.1.3
        assert_eq!(render("%f"), "1700.M1P2.host,S=5");
        assert_eq!(render("%g"), "1700.M1P2.host,S=5", "no G field: the base name");
        assert_eq!(render("%{uid}-%{uidvalidity}"), "42-1234");
        assert_eq!(render("%4f"), "1700", "a width without 0 truncates");
        assert_eq!(render("%04u%%"), "0042%");
        assert_eq!(render("%XUv"), "4D2", "modifiers apply in order");
        assert_eq!(render("%UXv"), "4d2");
        assert!(!Format::parse("%f").unwrap().needs_uidlist());
        let with_guid = Values { guid: Some("0123abcd"), ..v };
        assert_eq!(Format::parse("%g").unwrap().render(&with_guid).unwrap(), "0123abcd");
        let unnumbered = Values { uid: None, ..v };
        assert_eq!(Format::parse("%u").unwrap().render(&unnumbered), None);
    }

    #[test]
    fn bad_formats_say_why() {
        for bad in ["%m", "%q", "%", "plain", "%{user}", "%08"] {
            assert!(Format::parse(bad).is_err(), "{bad}");
        }
    }
}
