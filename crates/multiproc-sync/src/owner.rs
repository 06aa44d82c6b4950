//! Who holds what: process identities (from [`multiproc_core::proc::identity`]: immune to pid
//! reuse, so a recycled pid never inherits a dead owner's locks) and task identities.

use multiproc_core::proc::identity;
use std::hash::{Hash, Hasher};

/// This process's identity ([`multiproc_core::proc::identity`]).
#[inline]
pub(crate) fn me() -> u64 {
    identity::current()
}

/// A bit never set in an identity (pids are below 2^31): marks an owner word whose holder is
/// still filling in the rest of the state.
pub(crate) const CLAIMING: u64 = 1 << 63;

/// The pid part of an identity.
pub(crate) fn pid_of(id: u64) -> u32 {
    identity::pid_of(id)
}

/// Whether the process with identity `id` (the `CLAIMING` bit ignored) is still running.
pub(crate) fn is_alive(id: u64) -> bool {
    identity::is_alive(id)
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
