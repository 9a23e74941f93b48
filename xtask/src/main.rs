//! xtask: release chores for apopd, run as `cargo run -p xtask -- dist`.
//!
//! `dist` writes what the Debian package needs and git does not hold, into `target/assets/`
//! of the workspace (whatever CARGO_TARGET_DIR is, so `[package.metadata.deb]` can name it):
//! - `apopd.8`: the man page, from the clap definitions in `apopd::args`;
//! - `apopd.bash`, `_apopd`, `apopd.fish`: shell completions, from the same definitions;
//! - `systemd/`: the units of `deploy/`, with ExecStart pointing at the packaged `/usr/bin/apopd`,
//!   one directory per unit name (`systemd/apopd/`: service and socket; `systemd/apopd-pop3s/`:
//!   the POP3S socket), as cargo-deb's `systemd-units` entries read them: given one directory,
//!   cargo-deb would also install `apopd.service` a second time as `apopd-pop3s.service`.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};
use clap::CommandFactory;
use clap_complete::Shell;

/// The workspace root: this crate's parent directory.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new(".."))
}

/// Where `deploy/apopd.service` expects a hand-installed binary, and where the package puts it.
const HAND_INSTALLED: &str = "/usr/local/bin/apopd";
const PACKAGED: &str = "/usr/bin/apopd";

/// The systemd units of `deploy/` that the package ships.
const UNITS: [&str; 3] = ["apopd.service", "apopd.socket", "apopd-pop3s.socket"];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["dist"] => {
            let out = workspace().join("target/assets");
            dist(workspace(), &out)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        _ => bail!("usage: cargo run -p xtask -- dist   (man page, completions and units into target/assets/)"),
    }
}

/// Write the man page, the completions and the packaged units into `out`.
fn dist(workspace: &Path, out: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write(&out.join("apopd.8"), &man_page()?)?;
    for (shell, name) in COMPLETIONS {
        write(&out.join(name), &completion(shell))?;
    }
    for unit in UNITS {
        let source = workspace.join("deploy").join(unit);
        let text = fs::read_to_string(&source).with_context(|| format!("cannot read {}", source.display()))?;
        let dir = out.join(unit_dir(unit));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write(&dir.join(unit), packaged_unit(&text).as_bytes())?;
    }
    Ok(())
}

/// The directory of `target/assets/` that holds `unit`: `systemd/<unit name>`.
fn unit_dir(unit: &str) -> String {
    let name = unit.split_once('.').map_or(unit, |(name, _)| name);
    format!("systemd/{name}")
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// The completion files and the shells they are for.
const COMPLETIONS: [(Shell, &str); 3] =
    [(Shell::Bash, "apopd.bash"), (Shell::Zsh, "_apopd"), (Shell::Fish, "apopd.fish")];

/// The completion script for `shell`.
fn completion(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut apopd::args::Args::command(), "apopd", &mut script);
    script
}

/// apopd(8): clap_mangen's sections for the top command, then one subsection per command
/// (its usage, description and options), so that one page documents every command, then FILES.
fn man_page() -> anyhow::Result<Vec<u8>> {
    let mut cmd = apopd::args::Args::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone()).section("8").manual("System Manager's Manual");
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    page.extend_from_slice(b".SH COMMANDS\n");
    for sub in leaf_commands(&cmd) {
        let usage = sub.clone().render_usage().to_string();
        let usage = usage.trim().trim_start_matches("Usage:").trim();
        page.extend_from_slice(format!(".SS \"{}\"\n", roff_escape(usage)).as_bytes());
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            page.extend_from_slice(format!("{}\n", roff_escape(&about.to_string())).as_bytes());
        }
        let mut options = Vec::new();
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut options)?;
        // Under a subsection the options are a plain list: drop the section heading.
        let options = String::from_utf8(options)?.replace(".SH OPTIONS\n", "");
        page.extend_from_slice(options.as_bytes());
    }
    man.render_version_section(&mut page)?;
    page.extend_from_slice(FILES.as_bytes());
    Ok(page)
}

/// The FILES and SEE ALSO sections of apopd(8), as the Debian package lays them out.
const FILES: &str = r#".SH FILES
.TP
\fI/etc/apopd/apopd.toml\fR
The config file (\fBcheck\-config\fR validates it). Every key is described in it.
.TP
\fI/etc/apopd/users\fR, \fI/etc/apopd/apop\-secrets\fR
Password hashes and APOP secrets, mode 0600, written by \fBapopd user\fR.
.TP
\fI/srv/mail/\fRUSER
The maildirs (\fBmail_root\fR).
.TP
\fIapopd.service\fR, \fIapopd.socket\fR, \fIapopd\-pop3s.socket\fR
The systemd units; none is enabled until the administrator enables it.
.SH SEE ALSO
\fBfail2ban\-client\fR(1), \fBsystemctl\fR(1), /usr/share/doc/apopd/README.md
"#;

/// Every command that runs something (not `help`), depth first: `serve`, …, `user add`, ….
fn leaf_commands(cmd: &clap::Command) -> Vec<clap::Command> {
    let mut found = Vec::new();
    for sub in cmd.get_subcommands().filter(|sub| sub.get_name() != "help" && !sub.is_hide_set()) {
        if sub.has_subcommands() {
            found.extend(leaf_commands(sub));
        } else {
            found.push(sub.clone());
        }
    }
    found
}

/// Text safe inside a roff line: backslashes and hyphens escaped, no leading control dot.
fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    escaped
        .lines()
        .map(|line| if line.starts_with(['.', '\'']) { format!("\\&{line}") } else { line.to_owned() })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A unit of `deploy/` as the package installs it: the binary is `/usr/bin/apopd`.
fn packaged_unit(text: &str) -> String {
    format!(
        "# Installed by the apopd Debian package (binary: {PACKAGED}); not enabled until you enable it.\n{}",
        text.replace(HAND_INSTALLED, PACKAGED)
    )
}

/// A fresh scratch directory for a test.
#[cfg(test)]
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("apopd-xtask-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page is section 8 and names every command, `user add` … `user list` included.
    #[test]
    fn the_man_page_documents_every_command() {
        let page = String::from_utf8(man_page().unwrap()).unwrap();
        assert!(page.contains("\n.TH apopd 8 "), "not a section 8 page:\n{page}");
        let cmd = apopd::args::Args::command();
        let mut names = Vec::new();
        for sub in cmd.get_subcommands() {
            names.push(sub.get_name().to_owned());
            for nested in sub.get_subcommands() {
                names.push(format!("{} {}", sub.get_name(), nested.get_name()));
            }
        }
        assert!(names.len() >= 9, "{names:?}");
        for name in names {
            assert!(
                page.contains(&format!("apopd {}", roff_escape(&name))),
                "apopd(8) does not mention `apopd {name}`"
            );
        }
        // Every option of a command is there too, e.g. `user add --apop`.
        assert!(page.contains("\\-\\-apop"), "{page}");
        assert!(page.contains("/etc/apopd/apopd.toml"));
    }

    #[test]
    fn completions_exist_for_bash_zsh_and_fish() {
        for (shell, _) in COMPLETIONS {
            let script = String::from_utf8(completion(shell)).unwrap();
            assert!(script.len() > 500, "{shell} completion is nearly empty");
            for word in ["check-config", "apop-digest", "passwd", "--config"] {
                assert!(script.contains(word), "{shell} completion lacks {word}");
            }
        }
    }

    #[test]
    fn dist_writes_every_asset_and_units_run_the_packaged_binary() {
        let out = scratch("dist");
        dist(workspace(), &out).unwrap();
        for name in ["apopd.8", "apopd.bash", "_apopd", "apopd.fish"] {
            assert!(fs::metadata(out.join(name)).unwrap().len() > 0, "{name}");
        }
        let service = fs::read_to_string(out.join("systemd/apopd/apopd.service")).unwrap();
        assert!(service.contains("\nExecStart=/usr/bin/apopd serve --config /etc/apopd/apopd.toml\n"), "{service}");
        assert!(!service.contains(HAND_INSTALLED));
        assert_eq!(fs::read_dir(out.join("systemd/apopd-pop3s")).unwrap().count(), 1, "only the socket");
        for unit in UNITS {
            assert!(out.join(unit_dir(unit)).join(unit).is_file(), "{unit}");
        }
        fs::remove_dir_all(&out).unwrap();
    }
}
