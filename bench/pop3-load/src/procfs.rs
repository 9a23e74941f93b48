//! Server CPU time and memory from /proc, summed over the given pids (and, with
//! `--server-tree`, all their descendants: Dovecot forks a process per session).

use std::collections::{HashMap, HashSet};
use std::fs;

/// Linux reports /proc/PID/stat times in USER_HZ, which is 100 on every mainstream arch.
const TICKS_PER_SEC: f64 = 100.0;

/// Which processes make up "the server".
#[derive(Debug, Clone, Default)]
pub struct ServerProcs {
    pub pids: Vec<u32>,
    pub tree: bool,
}

/// CPU seconds and memory of the server at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime (+ cutime + cstime: reaped children) in seconds.
    pub cpu_secs: f64,
    /// Sum of VmRSS in bytes.
    pub rss: u64,
    /// Sum of Pss (smaps_rollup) in bytes.
    pub pss: u64,
    /// How many processes were summed.
    pub processes: usize,
}

impl ServerProcs {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// The pids to sum now.
    fn members(&self) -> Vec<u32> {
        if !self.tree {
            return self.pids.clone();
        }
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
                if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|s| s.parse::<u32>().ok())) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
        let mut seen: HashSet<u32> = HashSet::new();
        let mut stack = self.pids.clone();
        while let Some(pid) = stack.pop() {
            if seen.insert(pid) {
                stack.extend(children.get(&pid).into_iter().flatten().copied());
            }
        }
        seen.into_iter().collect()
    }

    /// CPU only (cheap enough to take often).
    pub fn cpu(&self) -> Option<f64> {
        if self.is_empty() {
            return None;
        }
        Some(self.members().into_iter().filter_map(cpu_secs).sum())
    }

    /// CPU and memory.
    pub fn sample(&self) -> Sample {
        let mut s = Sample::default();
        for pid in self.members() {
            let Some(cpu) = cpu_secs(pid) else { continue };
            s.cpu_secs += cpu;
            s.rss += vm_rss(pid).unwrap_or(0);
            s.pss += pss(pid).unwrap_or(0);
            s.processes += 1;
        }
        s
    }
}

/// The fields of /proc/PID/stat after the `(comm)`: index 0 is the state, 1 the ppid, …
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_ascii_whitespace().map(str::to_owned).collect())
}

fn cpu_secs(pid: u32) -> Option<f64> {
    let f = stat_fields(pid)?;
    // Fields 14–17 of stat(5) (utime stime cutime cstime) are 11–14 after the comm.
    let ticks: f64 = (11..=14).filter_map(|i| f.get(i)?.parse::<f64>().ok()).sum();
    Some(ticks / TICKS_PER_SEC)
}

fn kb_field(path: &str, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..].split_ascii_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

fn vm_rss(pid: u32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn pss(pid: u32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// This process's own CPU seconds so far (user + system), to show when the client itself
/// is the bottleneck.
pub fn self_cpu_secs() -> Option<f64> {
    cpu_secs(std::process::id())
}

/// Server CPU milliseconds per operation between two CPU readings.
pub fn cpu_ms_per_op(before: Option<f64>, after: Option<f64>, ops: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if ops > 0 => Some((a - b).max(0.0) * 1000.0 / ops as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = ServerProcs { pids: vec![std::process::id()], tree: true };
        let s = me.sample();
        assert!(s.processes >= 1);
        assert!(s.rss > 0);
        assert!(me.cpu().is_some());
        assert_eq!(cpu_ms_per_op(Some(1.0), Some(1.5), 10), Some(50.0));
        assert_eq!(cpu_ms_per_op(None, Some(1.5), 10), None);
    }
}
