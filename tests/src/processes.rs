//! The `datahub` CLIs an agent started, found in the process table as users would find them: live processes whose
//! working directory is under that agent's `--work-dir` (each run's directory; the agent puts each CLI in a
//! process group of its own). Found so even after the agent itself was killed.

use std::path::Path;

use crate::Cluster;

/// A live process: its pid and process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CliProcess {
    pub pid: i32,
    pub pgid: i32,
}

impl Cluster {
    /// Live (not zombie) processes working under the work directory of agent `name`.
    pub fn cli_processes(&self, name: &str) -> Vec<CliProcess> {
        processes_under(&self.path(&format!("work-{name}")))
    }

    /// The process groups of agent `name`'s CLIs (one per run), oldest first.
    pub fn cli_process_groups(&self, name: &str) -> Vec<i32> {
        let mut groups: Vec<i32> = self.cli_processes(name).iter().map(|p| p.pgid).collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// Kills whatever is left of agent `name`'s CLIs (an agent killed with SIGKILL leaves them running).
    pub fn kill_cli_processes(&self, name: &str) {
        kill_processes_under(&self.path(&format!("work-{name}")));
    }
}

/// Kills the process groups of every process working under `dir`.
pub fn kill_processes_under(dir: &Path) {
    let mut groups: Vec<i32> = processes_under(dir).iter().map(|p| p.pgid).collect();
    groups.dedup();
    for pgid in groups {
        // SAFETY: killpg(2) has no memory-safety preconditions.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// `(state, pgid)` of a process, from /proc/PID/stat.
fn state_and_group(pid: i32) -> Option<(String, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name in parentheses: state, ppid, pgrp, ...
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((fields.first()?.to_string(), fields.get(2)?.parse().ok()?))
}

fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
}

fn processes_under(dir: &Path) -> Vec<CliProcess> {
    pids()
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir)))
        .filter_map(|pid| match state_and_group(pid)? {
            (state, _) if state == "Z" => None,
            (_, pgid) => Some(CliProcess { pid, pgid }),
        })
        .collect()
}

/// Live processes (not zombies) whose process group is `pgid`, from /proc.
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    pids().filter(|pid| state_and_group(*pid).is_some_and(|(state, group)| group == pgid && state != "Z")).collect()
}
