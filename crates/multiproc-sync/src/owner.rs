//! Who holds what: process identities immune to pid reuse, liveness checks, task identities.
//!
//! A process identity is one non-zero `u64`: the pid in the high half and the low 32 bits of the
//! process start time (`/proc/<pid>/stat` field 22, clock ticks since boot) in the low half.
//! A recycled pid has a different start time, so it never inherits a dead owner's locks.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

/// This process's identity (cached: multiproc never forks, it re-executes, so a child always
/// starts with an empty cache; reading it makes no system call).
#[inline]
pub(crate) fn me() -> u64 {
    static ME: OnceLock<u64> = OnceLock::new();
    *ME.get_or_init(|| identity(std::process::id()))
}

fn identity(pid: u32) -> u64 {
    let start = stat(pid).map(|s| s.start_time).unwrap_or(0);
    (u64::from(pid) << 32) | u64::from(start as u32)
}

/// A bit never set in an identity (pids are below 2^31): marks an owner word whose holder is
/// still filling in the rest of the state.
pub(crate) const CLAIMING: u64 = 1 << 63;

/// The pid part of an identity.
pub(crate) fn pid_of(id: u64) -> u32 {
    ((id & !CLAIMING) >> 32) as u32
}

struct Stat {
    state: u8,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // `rest` starts at field 3 (state); field 22 is start time.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Whether the process with identity `id` is still running (not exited, not a zombie, and its
/// pid not recycled). When `/proc` cannot tell, answers `true`: never steal from the living.
pub(crate) fn is_alive(id: u64) -> bool {
    let id = id & !CLAIMING;
    if id == me() {
        return true;
    }
    let pid = pid_of(id);
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
        Ok(_) => match stat(pid) {
            None => false,
            Some(s) => {
                !matches!(s.state, b'Z' | b'X' | b'x')
                    && (s.start_time as u32 == id as u32 || id as u32 == 0)
            }
        },
    }
}

/// The identity of the current task within this process: the tokio task id inside a task,
/// else the thread (high bit set). Never zero.
pub(crate) fn task() -> u64 {
    struct Capture(u64);
    impl Hasher for Capture {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(*b);
            }
        }
        fn write_u64(&mut self, n: u64) {
            self.0 = self.0.rotate_left(17) ^ n;
        }
    }
    let mut h = Capture(0);
    let id = match tokio::task::try_id() {
        Some(id) => {
            id.hash(&mut h);
            h.finish() & !(1 << 63)
        }
        None => {
            std::thread::current().id().hash(&mut h);
            h.finish() | (1 << 63)
        }
    };
    id.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_liveness() {
        let id = me();
        assert_eq!(pid_of(id), std::process::id());
        assert!(is_alive(id));
        // Same pid, different start time: a recycled pid.
        assert!(!is_alive(id ^ 1) || id as u32 == 0);
        // pid 0x7fff_fff0 is above pid_max on every system.
        assert!(!is_alive(0x7fff_fff0_u64 << 32 | 5));
    }

    #[test]
    fn tasks_differ_from_threads() {
        let t = task();
        assert!(t >> 63 == 1);
        let other = std::thread::spawn(task).join().unwrap();
        assert_ne!(t, other);
    }
}
