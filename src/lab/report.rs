//! `apopd lab report DIR`: what each lab account did, from the session transcripts and the
//! maildirs, as a terminal table and as `DIR/report.html`.
//!
//! From the transcripts: a login by USER/PASS or by APOP (the server's `*: login` note), a
//! failed APOP digest or PASS (`-ERR [AUTH]` answering APOP or PASS; a refusal for another
//! reason, such as `[IN-USE]`, is not counted), and RETR, DELE and QUIT answered `+OK` after
//! a login (QUIT then means UPDATE ran). From the maildirs: mail from another group, meaning
//! a message that is not the welcome message whose `From:`, `Sender:` or `Return-Path:`
//! names a lab account of another group (as `g02a@…` or bare `g02a`). Mail that was deleted
//! no longer counts: the handout tells students to keep it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use anyhow::Context;

use super::{CONFIG_FILE, WELCOME_HEADER, group_of, html_escape, read_accounts, write_private};
use crate::config::Config;
use crate::store::index::Sub;
use crate::store::safe_fs::Maildir;
use crate::transcript::SUFFIX;

/// How much of a message's head is read to find its senders.
const HEAD_LIMIT: u64 = 64 * 1024;

/// One account's line in the report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// The account.
    pub account: String,
    /// Logged in with USER/PASS at least once.
    pub user_pass: bool,
    /// Logged in with APOP at least once.
    pub apop: bool,
    /// PASS answered `-ERR [AUTH]`.
    pub failed_passwords: u32,
    /// APOP answered `-ERR [AUTH]`.
    pub failed_digests: u32,
    /// RETR answered `+OK`.
    pub retr: bool,
    /// DELE answered `+OK`.
    pub dele: bool,
    /// QUIT after a login answered `+OK` (UPDATE done).
    pub quit: bool,
    /// Other groups' accounts this mailbox holds mail from.
    pub mail_from: BTreeSet<String>,
}

/// Collect the report for the lab in `dir`.
pub fn collect(dir: &Path) -> anyhow::Result<Vec<Row>> {
    let config = Config::load(&dir.join(CONFIG_FILE))?;
    let accounts = read_accounts(dir)?;
    let mut rows: BTreeMap<String, Row> =
        accounts.iter().map(|a| (a.name.clone(), Row { account: a.name.clone(), ..Row::default() })).collect();
    if let Some(transcripts) = &config.transcript_dir {
        let mut names: Vec<_> = std::fs::read_dir(transcripts)
            .with_context(|| format!("cannot read {}", transcripts.display()))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(SUFFIX))
            .map(|e| e.path())
            .collect();
        names.sort();
        for path in names {
            let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            read_transcript(&String::from_utf8_lossy(&text), &mut rows);
        }
    }
    let root = config.mail_root()?;
    let names: BTreeSet<String> = rows.keys().cloned().collect();
    for row in rows.values_mut() {
        let Some(location) = root.locate(&row.account) else { continue };
        // The teacher's own files: no owner check (the report may run as another user than serve).
        let Ok(maildir) = Maildir::open(&location, root.policy(), false) else { continue };
        row.mail_from = senders(&maildir, &names)
            .into_iter()
            .filter(|sender| group_of(sender).is_some_and(|g| Some(g) != group_of(&row.account)))
            .collect();
    }
    Ok(rows.into_values().collect())
}

/// What the command a server reply answers was.
enum Asked {
    Pass(String),
    Apop(String),
    Retr,
    Dele,
    Quit,
}

/// Add what one transcript shows to `rows` (accounts not in `rows` are ignored).
fn read_transcript(text: &str, rows: &mut BTreeMap<String, Row>) {
    let mut user_named: Option<String> = None;
    let mut logged_in: Option<String> = None;
    let mut asked: Option<Asked> = None;
    for line in text.lines() {
        let Some((_, rest)) = line.split_once(' ') else { continue };
        if let Some(command) = rest.strip_prefix("C: ") {
            let mut words = command.split(' ');
            let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
            let argument = words.next().map(str::to_owned);
            asked = match keyword.as_str() {
                "USER" => {
                    user_named = argument;
                    None
                }
                "PASS" => user_named.take().map(Asked::Pass),
                "APOP" => argument.map(Asked::Apop),
                "RETR" if logged_in.is_some() => Some(Asked::Retr),
                "DELE" if logged_in.is_some() => Some(Asked::Dele),
                "QUIT" if logged_in.is_some() => Some(Asked::Quit),
                _ => None,
            };
        } else if let Some(reply) = rest.strip_prefix("S: ") {
            let ok = reply.starts_with("+OK");
            let auth_failed = reply.starts_with("-ERR [AUTH]");
            let current = logged_in.as_deref().and_then(|u| rows.get_mut(u));
            match (asked.take(), current) {
                (Some(Asked::Pass(user)), _) if auth_failed => {
                    rows.get_mut(&user).into_iter().for_each(|r| r.failed_passwords += 1);
                }
                (Some(Asked::Apop(user)), _) if auth_failed => {
                    rows.get_mut(&user).into_iter().for_each(|r| r.failed_digests += 1);
                }
                (Some(Asked::Retr), Some(row)) if ok => row.retr = true,
                (Some(Asked::Dele), Some(row)) if ok => row.dele = true,
                (Some(Asked::Quit), Some(row)) if ok => row.quit = true,
                _ => {}
            }
        } else if let Some(note) = rest.strip_prefix("*: login ") {
            let (user, method) = note.split_once(' ').unwrap_or((note, ""));
            if let Some(row) = rows.get_mut(user) {
                match method {
                    "USER/PASS" => row.user_pass = true,
                    "APOP" => row.apop = true,
                    _ => {}
                }
            }
            logged_in = Some(user.to_owned());
        }
    }
}

/// The lab accounts named as senders of the messages in `maildir`, the welcome message aside.
fn senders(maildir: &Maildir, accounts: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for sub in [Sub::New, Sub::Cur] {
        for listed in maildir.list(sub).unwrap_or_default() {
            let Ok(file) = maildir.open_message(sub, listed.name.as_encoded_bytes()) else { continue };
            let mut head = Vec::new();
            if file.take(HEAD_LIMIT).read_to_end(&mut head).is_err() {
                continue;
            }
            found.extend(message_senders(&String::from_utf8_lossy(&head), accounts));
        }
    }
    found
}

/// The lab accounts named in a message's sender headers (none for the welcome message).
fn message_senders(message: &str, accounts: &BTreeSet<String>) -> BTreeSet<String> {
    let header_end = message.find("\r\n\r\n").or_else(|| message.find("\n\n")).unwrap_or(message.len());
    let header = &message[..header_end];
    // Unfold continuation lines.
    let unfolded = header.replace("\r\n", "\n").replace("\n ", " ").replace("\n\t", " ");
    if unfolded.lines().any(|l| l.eq_ignore_ascii_case(WELCOME_HEADER)) {
        return BTreeSet::new();
    }
    let mut found = BTreeSet::new();
    for line in unfolded.lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        if !["from", "sender", "return-path"].contains(&name.trim().to_ascii_lowercase().as_str()) {
            continue;
        }
        for token in value.split(|c: char| !(c.is_ascii_alphanumeric() || "._+-@".contains(c))) {
            let local = token.split('@').next().unwrap_or_default().to_ascii_lowercase();
            if accounts.contains(&local) {
                found.insert(local);
            }
        }
    }
    found
}

fn mark(done: bool) -> &'static str {
    if done { "yes" } else { "-" }
}

fn cells(row: &Row) -> [String; 9] {
    let from: Vec<&str> = row.mail_from.iter().map(String::as_str).collect();
    [
        row.account.clone(),
        mark(row.user_pass).to_owned(),
        mark(row.apop).to_owned(),
        row.failed_passwords.to_string(),
        row.failed_digests.to_string(),
        mark(row.retr).to_owned(),
        mark(row.dele).to_owned(),
        mark(row.quit).to_owned(),
        if from.is_empty() { "-".to_owned() } else { from.join(",") },
    ]
}

const HEADINGS: [&str; 9] =
    ["account", "USER/PASS", "APOP", "failed PASS", "failed APOP", "RETR", "DELE", "QUIT", "mail from"];

/// The report as a text table, one line per account, a blank line between groups.
pub fn text(rows: &[Row]) -> String {
    let table: Vec<[String; 9]> = rows.iter().map(cells).collect();
    let widths: Vec<usize> = (0..HEADINGS.len())
        .map(|i| table.iter().map(|r| r[i].chars().count()).chain([HEADINGS[i].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(&HEADINGS);
    let mut last_group = None;
    for (row, cells) in rows.iter().zip(&table) {
        let group = group_of(&row.account);
        if last_group.is_some() && group != last_group {
            out.push('\n');
        }
        last_group = group;
        out.push_str(&line(&cells.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

/// The report as a self-contained HTML page.
pub fn html(rows: &[Row]) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>POP3 lab report</title>\n<style>\n\
         body { font-family: sans-serif; }\ntable { border-collapse: collapse; }\n\
         th, td { border: 1px solid #888; padding: 0.2em 0.6em; }\n\
         td.yes { background: #d8f0d8; } tr.first td { border-top: 3px solid #444; }\n\
         </style>\n</head>\n<body>\n<h1>POP3 lab report</h1>\n<table>\n<tr>",
    );
    for heading in HEADINGS {
        let _ = write!(out, "<th>{}</th>", html_escape(heading));
    }
    out.push_str("</tr>\n");
    let mut last_group = None;
    for row in rows {
        let group = group_of(&row.account);
        let class = if last_group.is_some() && group != last_group { " class=\"first\"" } else { "" };
        last_group = group;
        let _ = write!(out, "<tr{class}>");
        for cell in cells(row) {
            let class = if cell == "yes" { " class=\"yes\"" } else { "" };
            let _ = write!(out, "<td{class}>{}</td>", html_escape(&cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n</body>\n</html>\n");
    out
}

/// Collect, write `DIR/report.html`, and return the text table.
pub fn report(dir: &Path) -> anyhow::Result<String> {
    let rows = collect(dir)?;
    write_private(&dir.join("report.html"), html(&rows).as_bytes())?;
    Ok(text(&rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(names: &[&str]) -> BTreeMap<String, Row> {
        names.iter().map(|n| (n.to_string(), Row { account: n.to_string(), ..Row::default() })).collect()
    }

    #[test]
    fn a_transcript_is_read_as_the_server_answered() {
        let mut r = rows(&["g01a", "g01b"]);
        let transcript = "# apopd transcript\n\
            10:00:00.000 S: +OK apopd POP3 server ready <1.2@h>\n\
            10:00:01.000 C: APOP g01b ***\n10:00:01.100 S: -ERR [AUTH] invalid user name or password\n\
            10:00:02.000 C: USER g01a\n10:00:02.001 S: +OK send PASS\n\
            10:00:03.000 C: PASS ***\n10:00:03.100 S: -ERR [AUTH] invalid user name or password\n\
            10:00:03.500 C: USER g01a\n10:00:03.501 S: +OK send PASS\n\
            10:00:04.000 C: PASS ***\n10:00:04.100 *: login g01a USER/PASS\n10:00:04.100 S: +OK g01a's maildrop has 1 message (10 octets)\n\
            10:00:05.000 C: retr 1\n10:00:05.001 S: +OK 10 octets\n10:00:05.001 S: [10 octets sent, message text not recorded]\n\
            10:00:06.000 C: DELE 2\n10:00:06.001 S: -ERR no such message\n\
            10:00:07.000 C: QUIT\n10:00:07.001 S: +OK bye\n10:00:07.002 *: end\n";
        read_transcript(transcript, &mut r);
        let a = &r["g01a"];
        assert!(a.user_pass && !a.apop && a.retr && !a.dele && a.quit);
        assert_eq!(a.failed_passwords, 1);
        assert_eq!(r["g01b"].failed_digests, 1);
        assert!(!r["g01b"].apop);
    }

    #[test]
    fn senders_of_other_groups_count_and_the_welcome_message_does_not() {
        let accounts: BTreeSet<String> = ["g01a", "g02a", "g02b"].iter().map(|s| s.to_string()).collect();
        let mail =
            "Return-Path: <g02a@lab.test>\r\nFrom: Someone\r\n <G02B@lab.test>\r\nTo: g01a\r\n\r\nFrom: g01a\r\n";
        let found = message_senders(mail, &accounts);
        assert_eq!(found.into_iter().collect::<Vec<_>>(), ["g02a", "g02b"]);
        let welcome = format!("From: g02a\r\n{WELCOME_HEADER}\r\n\r\nhi");
        assert!(message_senders(&welcome, &accounts).is_empty());
    }

    #[test]
    fn html_is_escaped() {
        let row = Row { account: "<g01a>".into(), ..Row::default() };
        let page = html(&[row]);
        assert!(page.contains("&lt;g01a&gt;") && !page.contains("<g01a>"));
    }
}
