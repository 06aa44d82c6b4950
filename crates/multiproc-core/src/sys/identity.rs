//! Process identities immune to pid reuse, and liveness checks.
//!
//! An identity is one non-zero `u64`: the pid in the high half and the low 32 bits of the
//! process start time (`/proc/<pid>/stat` field 22, clock ticks since boot) in the low half.
//! A recycled pid has a different start time, so a new process never passes for a dead one.
//! Primitives record the identity of whoever holds something in shared memory, and a waiter
//! that finds the holder dead takes over.

use std::sync::OnceLock;

/// This process's identity (cached: a child is re-executed, or forked from the fork server,
/// which never reads it, so a child always starts with an empty cache; reading it makes no
/// system call).
#[inline]
pub fn current() -> u64 {
    static ME: OnceLock<u64> = OnceLock::new();
    *ME.get_or_init(|| identity(std::process::id()))
}

fn identity(pid: u32) -> u64 {
    let start = stat(pid).map(|s| s.start_time).unwrap_or(0);
    (u64::from(pid) << 32) | u64::from(start as u32)
}

/// The pid part of an identity (bit 63 is ignored, so callers may use it as a flag).
pub fn pid_of(id: u64) -> u32 {
    ((id << 1) >> 33) as u32
}

struct Stat {
    state: u8,
    /// The kernel's `PF_*` flags of the process's main thread (field 9).
    flags: u32,
    start_time: u64,
}

/// `PF_EXITING` in `/proc/<pid>/stat`'s flags: the thread is in `exit`, and runs no more user
/// code.
const PF_EXITING: u32 = 0x4;

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // `rest` starts at field 3 (state); field 9 is the flags, field 22 the start time.
    let flags = fields.nth(5)?.parse().ok()?;
    let start_time = fields.nth(12)?.parse().ok()?;
    Some(Stat {
        state,
        flags,
        start_time,
    })
}

/// Whether the process with identity `id` is still running (not exited, not a zombie, and its
/// pid not recycled). Bit 63 of `id` is ignored. When `/proc` cannot tell, answers `true`:
/// never steal from the living.
pub fn is_alive(id: u64) -> bool {
    let id = id & !(1 << 63);
    if id == current() {
        return true;
    }
    // An identity made without a start time (unreadable /proc) matches any start time.
    let mask = if id as u32 == 0 { 0 } else { u32::MAX };
    is_running(pid_of(id), id as u32, mask)
}

/// Whether process `pid` is running and the low bits of its start time, selected by `mask`,
/// equal `start & mask`. When `/proc` cannot tell, answers `true`.
pub fn is_running(pid: u32, start: u32, mask: u32) -> bool {
    if pid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
        Ok(_) => match stat(pid) {
            None => false,
            Some(s) => {
                !matches!(s.state, b'Z' | b'X' | b'x') && (s.start_time as u32 ^ start) & mask == 0
            }
        },
    }
}

/// Whether process `pid` is dying: its main thread is in `exit` (killed, or exiting) but the
/// process is not a zombie yet. Its children may already have a new parent then, since the
/// kernel hands them over before it marks the process a zombie.
pub(crate) fn is_exiting(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.flags & PF_EXITING != 0)
}

/// Whether process `pid` is stopped, by a signal or a tracer (state `T` or `t`). A process
/// that cannot be read is not stopped.
pub(crate) fn is_stopped(pid: u32) -> bool {
    stat(pid).is_some_and(|s| matches!(s.state, b'T' | b't'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_liveness() {
        let id = current();
        assert_eq!(pid_of(id), std::process::id());
        assert_eq!(pid_of(id | 1 << 63), std::process::id());
        assert!(is_alive(id));
        assert!(is_running(std::process::id(), id as u32, 0xffff));
        // Same pid, different start time: a recycled pid.
        assert!(!is_alive(id ^ 1) || id as u32 == 0);
        assert!(!is_running(std::process::id(), id as u32 ^ 1, u32::MAX) || id as u32 == 0);
        // pid 0x7fff_fff0 is above pid_max on every system.
        assert!(!is_alive(0x7fff_fff0_u64 << 32 | 5));
        assert!(!is_running(0, 0, 0));
        assert!(!is_exiting(std::process::id()));
        assert!(!is_exiting(0x7fff_fff0));
    }
}
