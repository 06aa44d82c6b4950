//! Process trees: finding a process's descendants and signalling or killing all of them.
//!
//! A child's own children, and theirs (started by our spawner or by any external program),
//! form its *tree*. A child made a subreaper ([`become_subreaper`]) keeps its orphaned
//! descendants in that tree instead of losing them to `init`, so [`kill_tree`] finds them too.
//!
//! [`kill_tree`] and [`signal_tree`] stop the tree before they signal it: `SIGSTOP` top-down, looking again until no
//! new process shows up (a stopped process cannot fork, and cannot reap the children it has,
//! so their pids stay theirs until the `SIGKILL`), then `SIGKILL` to every one. A process that
//! escapes both (one that moved to another parent outside the tree before the walk) is not
//! ours to find: a cgroup would be, but one is not always available.
//!
//! Descendants are found by scanning `/proc/<pid>/stat` for parent pids (one pass per round),
//! which works with or without `CONFIG_PROC_CHILDREN`.
//!
//! # References
//! - [`PR_SET_CHILD_SUBREAPER` in `prctl(2)`](https://man7.org/linux/man-pages/man2/PR_SET_CHILD_SUBREAPER.2const.html),
//!   [`proc_pid_stat(5)`](https://man7.org/linux/man-pages/man5/proc_pid_stat.5.html)

use std::collections::{BTreeSet, HashMap};
use std::io;

use rustix::process::{Pid, Signal};

use crate::proc::pidfd::PidFd;

/// Makes this process a subreaper: its orphaned descendants become its children instead of
/// `init`'s, so they stay in its tree (and [`kill_tree`] on it finds them).
///
/// # Errors
/// When the kernel refuses (older than 3.4).
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))?;
    Ok(())
}

/// Every living descendant of `root` (children, their children...), parents before their
/// children. Processes that exit while we look may or may not be listed.
pub fn descendants(root: u32) -> Vec<u32> {
    let parents = parent_map();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &(ppid, _)) in &parents {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        if let Some(kids) = children.get(&pid) {
            for &kid in kids {
                // A zombie is dead already: nothing to signal.
                if parents.get(&kid).is_some_and(|&(_, zombie)| !zombie) {
                    out.push(kid);
                }
                next.push(kid);
            }
        }
    }
    out
}

/// Pid to (parent pid, is a zombie) for every process in `/proc`.
fn parent_map() -> HashMap<u32, (u32, bool)> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(info) = stat_parent(pid) {
            map.insert(pid, info);
        }
    }
    map
}

/// (parent pid, is a zombie) of `pid`, from `/proc/<pid>/stat`; `None` if it is gone.
pub fn stat_parent(pid: u32) -> Option<(u32, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state == "Z" || state == "X"))
}

fn signal_pid(pid: u32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid as i32) {
        // Gone already is fine: that is what we want.
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Stops `root` and every process of its tree, top-down, looking again until no new one
/// appears; gives the descendants stopped.
fn freeze(root: &PidFd) -> io::Result<BTreeSet<u32>> {
    root.send_signal(Signal::STOP.as_raw())?;
    let mut stopped = BTreeSet::new();
    // Bounded: a tree that keeps growing faster than we stop it is taken as it is.
    for _ in 0..64 {
        let fresh: Vec<u32> = descendants(root.pid())
            .into_iter()
            .filter(|pid| !stopped.contains(pid))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            signal_pid(pid, Signal::STOP);
            stopped.insert(pid);
        }
    }
    Ok(stopped)
}

/// Sends signal number `signal` to `root` and its whole tree: stops the tree first (so that
/// no process in it exits, forks or loses its place while we look), sends `signal` to every
/// process in it, then lets them all continue. A process that catches `signal` handles it once
/// it runs again.
///
/// # Errors
/// When `signal` is not a signal number or cannot be sent to `root`.
pub fn signal_tree(root: &PidFd, signal: i32) -> io::Result<()> {
    let sig = Signal::from_named_raw(signal).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{signal} is not a signal number"),
        )
    })?;
    let stopped = freeze(root)?;
    root.send_signal(signal)?;
    for &pid in &stopped {
        signal_pid(pid, sig);
    }
    for &pid in &stopped {
        signal_pid(pid, Signal::CONT);
    }
    root.send_signal(Signal::CONT.as_raw())?;
    Ok(())
}

/// Kills `root` and its whole tree: stops every process in it top-down until no new one
/// appears, then sends `SIGKILL` to all (see the [module docs](self)). `root` is left for its
/// parent to reap.
///
/// # Errors
/// When `root` cannot be signalled (permissions).
pub fn kill_tree(root: &PidFd) -> io::Result<()> {
    let stopped = freeze(root)?;
    root.send_signal(Signal::KILL.as_raw())?;
    for pid in stopped {
        signal_pid(pid, Signal::KILL);
    }
    Ok(())
}
