//! Moving the calling thread to another CPU: what a waiter does when the scheduler keeps it on
//! one CPU with the peer it exchanges with, while another CPU may be idle.
//!
//! Two processes that pass a message back and forth every microsecond are both "cache hot" to
//! the load balancer (they ran within its migration cost, half a millisecond), so it never moves
//! either to an idle CPU; and a Unix socket's wake-up is a synchronous one, which places the
//! woken task on the waker's CPU when that CPU runs nothing else. Once together, such a pair
//! stays together. Narrowing the thread's affinity mask to exclude its CPU migrates it at once;
//! restoring the mask right after leaves it where it landed.
//!
//! # References
//! - [`sched_setaffinity(2)`](https://man7.org/linux/man-pages/man2/sched_setaffinity.2.html)

/// Moves the calling thread off the CPU it runs on, to another CPU its affinity mask allows,
/// then restores the mask. `false` when the mask allows no other CPU or a call failed (the
/// mask is restored whenever it was changed).
///
/// The mask is read, narrowed and written back: a change of this thread's affinity by another
/// thread in between would be undone.
pub(crate) fn move_off_this_cpu() -> bool {
    let Ok(mask) = rustix::thread::sched_getaffinity(None) else {
        return false;
    };
    let here = rustix::thread::sched_getcpu();
    if mask.count() < 2 || !mask.is_set(here) {
        return false;
    }
    let mut elsewhere = mask;
    elsewhere.unset(here);
    let moved = rustix::thread::sched_setaffinity(None, &elsewhere).is_ok();
    let restored = rustix::thread::sched_setaffinity(None, &mask).is_ok();
    moved && restored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_move_lands_elsewhere_and_keeps_the_mask() {
        let before = rustix::thread::sched_getaffinity(None).unwrap();
        if before.count() < 2 {
            assert!(!move_off_this_cpu(), "nowhere to move to");
            return;
        }
        // The migration happens before the first call returns, and the restore does not undo
        // it; the scheduler may move the thread again later (a loaded machine), so a few tries.
        let landed = (0..5).any(|_| {
            let from = rustix::thread::sched_getcpu();
            assert!(move_off_this_cpu());
            rustix::thread::sched_getcpu() != from
        });
        assert!(landed, "never left its CPU");
        assert_eq!(rustix::thread::sched_getaffinity(None).unwrap(), before);
    }
}
