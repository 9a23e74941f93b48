//! The module dependency direction, enforced: main → cli → server → session → auth/store →
//! protocol, and i18n (the reply texts) below them all. A layer may name the layers below it,
//! never one above.
//!
//! Reads the source files of the lower layers and fails naming every `crate::…` path (in `use`
//! lines, grouped imports `crate::{…}` and inline paths alike; comments are skipped) that
//! reaches upwards.

use std::path::{Path, PathBuf};

/// Each layer's module under `src/` (a folder or one file), with the top-level modules it must
/// never name.
const RULES: &[(&str, &[&str])] = &[
    ("shared", &["server", "cli", "session"]),
    ("session", &["server", "cli"]),
    // The connection limit is below both the server that admits and the session that logs in.
    ("capacity", &["server", "cli", "session", "shared", "auth", "store", "protocol", "config"]),
    ("metrics", &["server", "cli", "session", "shared", "store"]),
    ("auth", &["server", "cli", "session", "shared"]),
    ("store", &["server", "cli", "session", "shared", "auth"]),
    ("protocol", &["server", "cli", "session", "shared", "auth", "store", "config", "tls"]),
    // The reply texts are a leaf every layer may use.
    ("i18n", &["server", "cli", "session", "shared", "auth", "store", "config", "tls", "protocol"]),
];

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The source with `//` comments blanked out (line numbers kept).
fn without_comments(source: &str) -> String {
    source.lines().map(|line| line.find("//").map_or(line, |i| &line[..i])).collect::<Vec<_>>().join("\n")
}

/// `(line number, top-level module)` for every `crate::` path in `source`, including each
/// member of a `crate::{a, b::c, …}` group.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let code = without_comments(source);
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        // `apopd_crate::x` or `my_crate::x` are not this crate.
        if code[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level members: identifiers at depth 0 after `{` or `,`.
            let mut depth = 0;
            let mut expect_name = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expect_name = true,
                    c if expect_name && depth == 0 && (c.is_alphanumeric() || c == '_') => {
                        let offset = at + "crate::{".len() + i;
                        found.push((line_of(offset), ident(&group[i..])));
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push((line_of(at), ident(rest)));
        }
    }
    found
}

#[test]
fn lower_layers_never_name_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offences = Vec::new();
    for (layer, forbidden) in RULES {
        let dir = src.join(layer);
        let files = if dir.is_dir() { rust_files(&dir) } else { vec![src.join(format!("{layer}.rs"))] };
        assert!(!files.is_empty(), "no sources under src/{layer}");
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            for (line, module) in crate_paths(&source) {
                if forbidden.contains(&module.as_str()) {
                    let text = source.lines().nth(line - 1).unwrap_or("").trim();
                    let file = file.strip_prefix(&src).unwrap().display();
                    offences.push(format!("src/{file}:{line}: {layer} names crate::{module}: {text}"));
                }
            }
        }
    }
    assert!(offences.is_empty(), "dependencies pointing upwards:\n{}", offences.join("\n"));
}

#[test]
fn the_scanner_sees_plain_grouped_and_inline_paths() {
    let source = "use crate::server::Shared;\n\
                  use crate::{protocol::Command, session::{self, serve}, store};\n\
                  // use crate::cli;\n\
                  fn f() { crate::shared::Shared::new(); }\n\
                  use other_crate::server;\n";
    let expected = [(1, "server"), (2, "protocol"), (2, "session"), (2, "store"), (4, "shared")];
    let expected: Vec<(usize, String)> = expected.iter().map(|(l, m)| (*l, m.to_string())).collect();
    assert_eq!(crate_paths(source), expected);
}
