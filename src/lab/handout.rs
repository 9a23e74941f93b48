//! The handout: one page per group, from a template per language (`src/lab/handout/*.md`,
//! a teacher can edit or add one), as Markdown and as printable, self-contained HTML.
//!
//! A template is Markdown with `{{placeholder}}`s, then a line `%%% welcome` and the text of
//! the welcome message put in each mailbox. The HTML is made by a small converter that knows
//! only what the templates use: headings, paragraphs, lists, tables, code blocks, `code` and
//! **bold**; every piece of text is escaped.

use std::fmt::Write;

use super::{Account, Lab, group_of, html_escape};

/// The line that separates the handout from the welcome message in a template.
const WELCOME_MARK: &str = "%%% welcome";

/// The template for `language`, if there is one.
pub fn template(language: &str) -> Option<&'static str> {
    Some(match language {
        "en" => include_str!("handout/en.md"),
        "ja" => include_str!("handout/ja.md"),
        "zh-Hans" => include_str!("handout/zh-Hans.md"),
        "uk" => include_str!("handout/uk.md"),
        _ => return None,
    })
}

fn parts(language: &str) -> (&'static str, &'static str) {
    let text = template(language).or_else(|| template("en")).unwrap_or_default();
    match text.split_once(&format!("\n{WELCOME_MARK}\n")) {
        Some((handout, welcome)) => (handout, welcome),
        None => (text, ""),
    }
}

fn fill(template: &str, values: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (key, value) in values {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    out
}

/// The groups in `accounts`, in order, each with its accounts.
fn groups(accounts: &[Account]) -> Vec<(u32, Vec<&Account>)> {
    let mut groups: Vec<(u32, Vec<&Account>)> = Vec::new();
    for account in accounts {
        let Some(group) = group_of(&account.name) else { continue };
        match groups.last_mut() {
            Some((g, members)) if *g == group => members.push(account),
            _ => groups.push((group, vec![account])),
        }
    }
    groups
}

/// The page of one group, as Markdown.
fn page(lab: &Lab, group: u32, members: &[&Account], all: &[(u32, Vec<&Account>)]) -> String {
    let (handout, _) = parts(&lab.language);
    let rows: Vec<String> = members
        .iter()
        .map(|a| format!("| `{0}` | `{1}` | `{2}` | `{0}@{3}` |", a.name, a.password, a.secret, lab.domain))
        .collect();
    // The next group receives this group's mail (the last sends to the first).
    let index = all.iter().position(|(g, _)| *g == group).unwrap_or(0);
    let (peer_group, peer_members) = &all[(index + 1) % all.len().max(1)];
    let first = members.first();
    let values = [
        ("group", format!("{group:02}")),
        ("server", lab.server.clone()),
        ("port", lab.port.to_string()),
        ("domain", lab.domain.clone()),
        ("network", lab.network.to_string()),
        ("accounts", rows.join("\n")),
        ("user", first.map(|a| a.name.clone()).unwrap_or_default()),
        ("password", first.map(|a| a.password.clone()).unwrap_or_default()),
        ("secret", first.map(|a| a.secret.clone()).unwrap_or_default()),
        ("peer_group", format!("{peer_group:02}")),
        ("peer_user", peer_members.first().map(|a| a.name.clone()).unwrap_or_default()),
    ];
    fill(handout, &values)
}

/// The welcome message's text for `user` in `language`.
pub fn welcome(language: &str, user: &str) -> String {
    let group = group_of(user).map(|g| format!("{g:02}")).unwrap_or_default();
    fill(parts(language).1, &[("user", user.to_owned()), ("group", group)])
}

/// `handout.md` and `handout.html` for every group in `accounts`.
pub fn render(lab: &Lab, accounts: &[Account]) -> (String, String) {
    let all = groups(accounts);
    let pages: Vec<String> = all.iter().map(|(group, members)| page(lab, *group, members, &all)).collect();
    let markdown = pages.join("\n---\n\n");
    // One sheet of A4 or Letter per group: two columns, small type, the title and the
    // accounts table across both.
    let mut html = String::from(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>POP3 lab</title>\n<style>\n\
         @page { margin: 10mm; }\n\
         body { font-family: sans-serif; font-size: 8.5pt; line-height: 1.3; margin: 0; }\n\
         section { column-count: 2; column-gap: 6mm; page-break-after: always; break-after: page; }\n\
         section:last-child { page-break-after: auto; break-after: auto; }\n\
         h1, h1 + p, h1 + p + h2, table, table + p { column-span: all; }\n\
         h1 { font-size: 13pt; margin: 0 0 0.3em; } h2 { font-size: 10pt; margin: 0.6em 0 0.2em; }\n\
         h2, pre { break-inside: avoid; } h2 { break-after: avoid; }\n\
         p, ul { margin: 0.3em 0; } ul { padding-left: 1.2em; }\n\
         pre { background: #f4f4f4; border: 1px solid #ccc; padding: 0.3em 0.5em; margin: 0.3em 0; font-size: 8.5pt; white-space: pre-wrap; overflow-wrap: anywhere; }\n\
         code { font-family: monospace; }\n\
         table { border-collapse: collapse; margin: 0.3em 0; }\n\
         th, td { border: 1px solid #888; padding: 0.15em 0.5em; text-align: left; font-size: 9.5pt; }\n\
         </style>\n</head>\n<body>\n",
    );
    for page in &pages {
        let _ = write!(html, "<section lang=\"{}\">\n{}</section>\n", html_escape(&lab.language), to_html(page));
    }
    html.push_str("</body>\n</html>\n");
    (markdown, html)
}

/// Inline Markdown: `code` and **bold**, everything escaped.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, piece) in text.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", html_escape(piece));
        } else {
            for (j, part) in piece.split("**").enumerate() {
                if j % 2 == 1 {
                    let _ = write!(out, "<strong>{}</strong>", html_escape(part));
                } else {
                    out.push_str(&html_escape(part));
                }
            }
        }
    }
    out
}

/// The subset of Markdown the templates use, as HTML.
fn to_html(markdown: &str) -> String {
    let mut out = String::new();
    let mut lines = markdown.lines().peekable();
    let mut paragraph: Vec<&str> = Vec::new();
    let flush = |paragraph: &mut Vec<&str>, out: &mut String| {
        if !paragraph.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(&paragraph.join(" ")));
            paragraph.clear();
        }
    };
    while let Some(line) = lines.next() {
        if line.starts_with("```") {
            flush(&mut paragraph, &mut out);
            out.push_str("<pre><code>");
            for code in lines.by_ref() {
                if code.starts_with("```") {
                    break;
                }
                let _ = writeln!(out, "{}", html_escape(code));
            }
            out.push_str("</code></pre>\n");
        } else if let Some(heading) = line.strip_prefix("## ") {
            flush(&mut paragraph, &mut out);
            let _ = writeln!(out, "<h2>{}</h2>", inline(heading));
        } else if let Some(heading) = line.strip_prefix("# ") {
            flush(&mut paragraph, &mut out);
            let _ = writeln!(out, "<h1>{}</h1>", inline(heading));
        } else if line.starts_with('|') {
            flush(&mut paragraph, &mut out);
            out.push_str("<table>\n");
            let mut row = Some(line);
            let mut header = true;
            while let Some(current) = row {
                let cells: Vec<&str> = current.trim().trim_matches('|').split('|').map(str::trim).collect();
                if !cells.iter().all(|c| !c.is_empty() && c.chars().all(|ch| ch == '-' || ch == ':')) {
                    let tag = if header { "th" } else { "td" };
                    out.push_str("<tr>");
                    for cell in cells {
                        let _ = write!(out, "<{tag}>{}</{tag}>", inline(cell));
                    }
                    out.push_str("</tr>\n");
                    header = false;
                }
                row = lines.next_if(|l| l.starts_with('|'));
            }
            out.push_str("</table>\n");
        } else if line.starts_with("- ") {
            flush(&mut paragraph, &mut out);
            out.push_str("<ul>\n");
            let mut item = Some(line);
            while let Some(current) = item {
                let _ = writeln!(out, "<li>{}</li>", inline(&current[2..]));
                item = lines.next_if(|l| l.starts_with("- "));
            }
            out.push_str("</ul>\n");
        } else if line.trim().is_empty() || line == "---" {
            flush(&mut paragraph, &mut out);
        } else {
            paragraph.push(line);
        }
    }
    flush(&mut paragraph, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::LANGUAGES;

    fn placeholders(text: &str) -> std::collections::BTreeSet<&str> {
        text.match_indices("{{").filter_map(|(i, _)| text[i + 2..].split_once("}}").map(|(name, _)| name)).collect()
    }

    fn code_blocks(text: &str) -> Vec<&str> {
        text.split("```").skip(1).step_by(2).collect()
    }

    fn headings(text: &str) -> usize {
        text.lines().filter(|l| l.starts_with('#')).count()
    }

    /// Every language has what English has: the same placeholders, sections, commands and
    /// welcome message, so a page never misses a step or a credential.
    #[test]
    fn every_language_has_every_section_and_placeholder() {
        let (en, en_welcome) = parts("en");
        for language in LANGUAGES {
            let text = template(language).unwrap_or_else(|| panic!("no template for {language}"));
            assert!(text.contains(&format!("\n{WELCOME_MARK}\n")), "{language}: no welcome part");
            let (handout, welcome) = parts(language);
            assert_eq!(placeholders(handout), placeholders(en), "{language}: placeholders");
            assert_eq!(placeholders(welcome), placeholders(en_welcome), "{language}: welcome placeholders");
            assert_eq!(headings(handout), headings(en), "{language}: sections");
            assert_eq!(code_blocks(handout), code_blocks(en), "{language}: the commands must be the same");
            assert_eq!(handout.matches("\n|").count(), en.matches("\n|").count(), "{language}: table");
            assert!(!welcome.trim().is_empty());
        }
    }

    fn sample() -> (Lab, Vec<Account>) {
        let lab = Lab {
            groups: 2,
            members: 1,
            language: "en".into(),
            server: "pop.example".into(),
            port: 1110,
            domain: "lab.test".into(),
            network: "192.0.2.0/24".parse().unwrap(),
        };
        let accounts = vec![
            Account { name: "g01a".into(), password: "apple-river-12".into(), secret: "<b>&".into() },
            Account { name: "g02a".into(), password: "onion-lemon-99".into(), secret: "zebra-zinc-10".into() },
        ];
        (lab, accounts)
    }

    #[test]
    fn one_page_per_group_with_everything_escaped() {
        for language in LANGUAGES {
            let (mut lab, accounts) = sample();
            lab.language = language.into();
            let (markdown, html) = render(&lab, &accounts);
            assert!(!markdown.contains("{{"), "{language}: unfilled placeholder");
            assert_eq!(html.matches("<section").count(), 2);
            assert!(html.contains("page-break-after: always"));
            assert!(html.contains("<code>apple-river-12</code>"));
            assert!(html.contains("&lt;b&gt;&amp;") && !html.contains("<b>&"));
            assert!(
                html.contains("printf &#39;%s%s&#39; &#39;&lt;timestamp&gt;&#39; &#39;&lt;b&gt;&amp;&#39; | md5sum")
            );
            assert!(html.contains("apopd apop-digest"));
            assert!(html.contains("RCPT TO:&lt;g02a@lab.test&gt;"), "group 1 writes to group 2");
            assert!(html.contains("RCPT TO:&lt;g01a@lab.test&gt;"), "the last group writes to the first");
            for command in ["STAT", "LIST", "RETR 1", "TOP 1 0", "UIDL", "DELE 1", "RSET", "QUIT", "USER g01a"] {
                assert!(html.contains(command), "{language}: {command}");
            }
        }
    }

    #[test]
    fn welcome_names_the_user() {
        assert!(welcome("ja", "g03b").contains("g03b"));
        assert!(welcome("en", "g03b").contains("group 03"));
    }
}
