//! Resource limits of one process (memory, CPU time, open files) and what the process's
//! cgroup says about the machine: the CPU quota, and whether a cgroup v2 subtree is delegated
//! to it.
//!
//! Limits are applied as rlimits by the child to itself, before its function runs
//! ([`ResourceLimits::apply`]): `RLIMIT_AS` for memory (an allocation past it fails, and Rust
//! aborts the process), `RLIMIT_CPU` for CPU time (`SIGXCPU`, then `SIGKILL` a second later),
//! `RLIMIT_NOFILE` for open descriptors. A cgroup v2 memory controller would count resident
//! memory rather than address space and could kill a whole tree, but only a cgroup delegated to
//! this process may be used for that (never a v1 hierarchy, never a cgroup we do not own):
//! [`delegated_cgroup`] detects one. Enforcing limits through it is not implemented yet, so the
//! rlimits are what applies everywhere: a delegated cgroup that this process lives in cannot
//! hand the memory controller to child cgroups while it has members (cgroup v2's "no internal
//! processes" rule), so using one means first moving this process into a leaf of its own, a
//! step a library should not take behind a program's back.
//!
//! # References
//! - [`setrlimit(2)`](https://man7.org/linux/man-pages/man2/setrlimit.2.html),
//!   [`cgroups(7)`](https://man7.org/linux/man-pages/man7/cgroups.7.html) ("Delegation")

use std::io;
use std::path::{Path, PathBuf};

use rustix::process::{Resource, Rlimit};
use serde::{Deserialize, Serialize};

/// Limits for one child process; `None` leaves a limit as inherited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    /// Address space in bytes (`RLIMIT_AS`).
    pub memory: Option<u64>,
    /// CPU time in whole seconds (`RLIMIT_CPU`).
    pub cpu_seconds: Option<u64>,
    /// Highest descriptor number plus one (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
}

impl ResourceLimits {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Sets the CPU-time limit to `limit`, rounded up to whole seconds (at least one).
    pub fn set_cpu_time(&mut self, limit: std::time::Duration) {
        let secs = limit.as_secs() + u64::from(limit.subsec_nanos() > 0);
        self.cpu_seconds = Some(secs.max(1));
    }

    /// Applies the limits to this process, soft and hard alike (a child cannot raise them
    /// again), except CPU time, whose hard limit is a second later (`SIGXCPU` first, so the
    /// cause shows). A limit above the current hard limit is lowered to it.
    ///
    /// # Errors
    /// When the kernel refuses one.
    pub fn apply(&self) -> io::Result<()> {
        let pairs = [
            (Resource::As, self.memory),
            (Resource::Cpu, self.cpu_seconds),
            (Resource::Nofile, self.open_files),
        ];
        for (resource, limit) in pairs {
            let Some(limit) = limit else { continue };
            let hard = rustix::process::getrlimit(resource).maximum;
            let limit = hard.map_or(limit, |h| h.min(limit));
            let maximum = match resource {
                Resource::Cpu => hard.map_or(limit + 1, |h| h.min(limit + 1)),
                _ => limit,
            };
            rustix::process::setrlimit(
                resource,
                Rlimit {
                    current: Some(limit),
                    maximum: Some(maximum),
                },
            )?;
        }
        Ok(())
    }
}

/// The resident memory of process `pid`, in bytes (`/proc/<pid>/statm`).
///
/// # Errors
/// When the process is gone or the file cannot be read.
pub fn resident_bytes(pid: u32) -> io::Result<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_ascii_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("unexpected /proc/<pid>/statm"))?;
    Ok(pages * rustix::param::page_size() as u64)
}

/// This process's cgroup v2 path (`/proc/self/cgroup`'s `0::` line), under `/sys/fs/cgroup`,
/// when the unified hierarchy is mounted there.
fn own_cgroup_v2() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.controllers").exists() {
        return None; // v1 or hybrid without the unified hierarchy at the root: not ours to use
    }
    Some(root.join(path.trim_start_matches('/')))
}

/// The cgroup v2 directory delegated to this process, if any: its own cgroup, with the memory
/// controller available, and its `cgroup.subtree_control` and `cgroup.procs` owned by this
/// process's user (what delegation means, `cgroups(7)`). `None` on a v1 or hybrid system, or
/// when the cgroup belongs to someone else.
pub fn delegated_cgroup() -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir = own_cgroup_v2()?;
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    if !controllers.split_ascii_whitespace().any(|c| c == "memory") {
        return None;
    }
    let uid = rustix::process::geteuid().as_raw();
    let owned = |file: &str| {
        std::fs::metadata(dir.join(file)).is_ok_and(|m| m.uid() == uid)
            && rustix::fs::access(dir.join(file), rustix::fs::Access::WRITE_OK).is_ok()
    };
    (owned("cgroup.subtree_control") && owned("cgroup.procs")).then_some(dir)
}

/// A cgroup v2 `cpu.max` (`"<quota> <period>"`, or `"max <period>"` for no quota) as
/// (quota, period) in microseconds; `None` without a quota.
fn parse_cpu_max(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_ascii_whitespace();
    let quota = fields.next()?.parse().ok()?;
    let period = fields.next()?.parse().ok()?;
    Some((quota, period))
}

/// How many CPUs the quota of this process's cgroup allows (cgroup v2 `cpu.max` of its cgroup
/// and each ancestor, or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up; `None`
/// when there is no quota.
pub fn cpu_quota() -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut take = |quota: u64, period: u64| {
        if quota > 0 && period > 0 {
            let cpus = quota.div_ceil(period).max(1) as usize;
            best = Some(best.map_or(cpus, |b| b.min(cpus)));
        }
    };
    if let Some(mut dir) = own_cgroup_v2() {
        loop {
            if let Some((q, p)) = std::fs::read_to_string(dir.join("cpu.max"))
                .ok()
                .and_then(|max| parse_cpu_max(&max))
            {
                take(q, p);
            }
            if dir == Path::new("/sys/fs/cgroup") || !dir.pop() {
                break;
            }
        }
    } else if let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") {
        // v1: the cpu controller's line, e.g. `4:cpu,cpuacct:/path`.
        let path = text.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "cpu")
                .then(|| path.to_owned())
        });
        if let Some(path) = path {
            for base in ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"] {
                let dir = Path::new(base).join(path.trim_start_matches('/'));
                let read = |f: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .ok()
                        .and_then(|s| s.trim().parse::<i64>().ok())
                };
                if let (Some(q), Some(p)) = (read("cpu.cfs_quota_us"), read("cpu.cfs_period_us")) {
                    if q > 0 && p > 0 {
                        take(q as u64, p as u64);
                    }
                    break;
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_gives_a_quota_only_when_set() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some((150_000, 100_000)));
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn the_quota_of_this_machine_is_sane() {
        // No quota here, or a positive one: never zero CPUs.
        assert!(cpu_quota().is_none_or(|cpus| cpus >= 1));
    }

    #[test]
    fn no_limit_is_empty() {
        assert!(ResourceLimits::default().is_empty());
        let limits = ResourceLimits {
            open_files: Some(64),
            ..ResourceLimits::default()
        };
        assert!(!limits.is_empty());
    }
}
