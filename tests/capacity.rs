//! Sizing for many connections: `serve` raises the soft open-file limit to the hard one, logs
//! it, and sizes an unset `max_connections` from it.

mod common;
use common::*;

/// The soft and hard "Max open files" of a process, from /proc.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files line");
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

#[test]
fn serve_raises_the_open_file_limit_to_the_hard_one_and_sizes_max_connections_from_it() {
    let (_, hard_here) = apopd::capacity::open_files_limit().expect("getrlimit");
    let hard = hard_here.min(4096);
    let soft = 256.min(hard);
    let fixture = Fixture::new("");
    let server = ServerProcess::spawn_with(&fixture.config_path, "info", |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                    .map_err(std::io::Error::from)
            });
        }
    });
    assert_eq!(open_file_limits(server.pid()), (hard, hard), "soft raised to hard");
    let log = server.log_lines().join("\n");
    if soft < hard {
        assert!(log.contains(&format!("open-file limit raised from {soft} to {hard}")), "{log}");
    }
    let expected = apopd::capacity::Sizing::from(hard, 1 << 50).max_connections;
    let sized = log
        .lines()
        .find_map(|l| l.split("max_connections ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no max_connections line: {log}"));
    // The open-file limit decides unless this machine has little memory.
    assert!(sized <= expected && sized >= 1, "{sized} vs {expected}: {log}");
    assert!(log.contains(&format!("sized from the open-file limit {hard} and ")), "{log}");
}

#[test]
fn an_explicit_max_connections_beyond_the_open_file_limit_is_warned_about() {
    let fixture = Fixture::new("max_connections = 100000");
    let server = ServerProcess::spawn_with(&fixture.config_path, "warn", |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: as above.
        unsafe {
            command.pre_exec(|| {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1024, 1024)
                    .map_err(std::io::Error::from)
            });
        }
    });
    server.wait_for_log("max_connections 100000 is more than the open-file limit 1024 can serve", 1);
}
