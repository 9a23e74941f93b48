//! The `apopd` command line: wiring only; the logic lives in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Mail, lock files and maildirs we create are the owner's alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let args = apopd::args::Args::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("apopd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr as text or JSON lines; `RUST_LOG` filters them (default `info`).
/// Called once, by `cli::run`: `serve` calls it after reading its config's `log_format`.
fn init_logging(format: apopd::config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        apopd::config::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line: the event's fields at the top level, the session's in "span".
        apopd::config::LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init()
        }
    }
}
