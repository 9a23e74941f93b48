//! `apopd lab init` and `apopd lab report`: wiring to `apopd::lab`.

use std::process::ExitCode;

use apopd::args::LabAction;
use apopd::lab::{CONFIG_FILE, init, report};

/// Run a `lab` subcommand.
pub fn run(action: LabAction) -> anyhow::Result<ExitCode> {
    match action {
        LabAction::Init { dir, groups, members, listen, network, language, domain, server, add_groups } => {
            let options = init::Options {
                dir: dir.clone(),
                groups,
                members,
                listen,
                network,
                language,
                domain,
                server,
                add_groups,
            };
            let made = init::init(&options)?;
            let lab = &made.lab;
            println!(
                "{} {} accounts ({}) in {}: {} groups of {}, POP3 on {}:{}, handout in {}.",
                if add_groups { "added" } else { "created" },
                made.new_accounts.len(),
                made.new_accounts.join(" "),
                dir.display(),
                lab.groups,
                lab.members,
                lab.server,
                lab.port,
                lab.language
            );
            println!("print {}/handout.html (one page per group), then run:", dir.display());
            println!("  apopd serve --config {}", dir.join(CONFIG_FILE).display());
            println!("and afterwards: apopd lab report {}", dir.display());
            if network.is_none() && !add_groups {
                println!(
                    "note: no --network given, so USER/PASS works only from this machine (127.0.0.0/8); \
                     for students on other machines run lab init with --network CIDR (e.g. 192.168.10.0/24)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LabAction::Report { dir } => {
            print!("{}", report::report(&dir)?);
            eprintln!("apopd lab report: wrote {}", dir.join("report.html").display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
