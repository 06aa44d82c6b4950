//! What a waiter does when the peer it waits for runs on its own CPU: park at once, or take
//! turns with it (see [`ParkApart`]).

use super::spin::several_cpus;
use crate::sys::affinity;

/// Waits that take turns with a peer on the waiter's CPU (yield) rather than park, after a
/// park that did not move the two apart.
pub const TAKE_TURNS: u8 = 64;

/// One waiter's choice between parking and taking turns while the peer it waits for shares its
/// CPU.
///
/// Spinning for a peer on one's own CPU only keeps the peer from running. Yielding runs it, but
/// then the two take turns on one CPU (a context switch each way, about 5 us a round trip on a
/// virtual machine) while another CPU may idle: no wake-up ever lets the scheduler place one of
/// them there. Parking may: the peer's wake-up of the waiter lets the scheduler put it on an
/// idle CPU, and from then on the two spin apart (about 1 us a round trip). So a wait that finds
/// its peer on its CPU parks at once ([`ParkApart::may_park`]). The wake-up does not always
/// move it, though: a Unix socket's wake-up places the woken task on the waker's CPU when that
/// runs nothing else, and the load balancer leaves tasks that ran within the last half
/// millisecond where they are. So a waiter that wakes still beside its peer
/// ([`ParkApart::still_together`]) moves itself to another CPU (by its affinity mask, which it
/// restores; see `sys::affinity`). If the next park leaves them together again (the other CPUs
/// are busy, and the move did not last), every wait would pay a sleep and a wake-up for
/// nothing: the waiter takes turns (yields) for the next [`TAKE_TURNS`] waits, then tries
/// again. With a single CPU (pinned, or a quota of one) there is nowhere to move to: it always
/// takes turns.
///
/// Used by the pipe receiver (its peer is the sender, known by the shared ring's CPU cue) and
/// by the manager's serving loop (its peers are the clients it waits for).
#[derive(Debug, Default, Clone)]
pub struct ParkApart {
    /// Waits left that take turns.
    turns: u8,
    /// The waiter moved itself to another CPU since it last woke apart from its peer.
    moved: bool,
}

impl ParkApart {
    /// A waiter that parks to move apart from its peer at its first chance.
    pub const fn new() -> Self {
        Self {
            turns: 0,
            moved: false,
        }
    }

    /// Whether a wait that begins now, with the peer on this CPU, parks at once (to let the
    /// wake-up move one of them to another CPU) rather than yield to the peer. Counts down the
    /// waits that take turns. Never with a single CPU.
    pub fn may_park(&mut self) -> bool {
        if self.turns > 0 {
            self.turns -= 1;
            return false;
        }
        several_cpus()
    }

    /// A waiter woke from a park with its peer still on its CPU: it moves to another CPU, or,
    /// when it did so after its last park already (the move did not last: the other CPUs are
    /// busy), takes turns for the next [`TAKE_TURNS`] waits.
    pub fn still_together(&mut self) {
        if !self.moved && several_cpus() && affinity::move_off_this_cpu() {
            self.moved = true;
            return;
        }
        self.moved = false;
        self.turns = TAKE_TURNS;
    }

    /// A waiter woke from a park with its peer on another CPU: a later wake-up beside it may
    /// try moving again.
    pub fn woke_apart(&mut self) {
        self.moved = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_first_then_takes_turns_for_a_while_if_the_two_stay_together() {
        let mut apart = ParkApart::new();
        let parks = several_cpus();
        assert_eq!(apart.may_park(), parks);
        // Together once: with several CPUs the waiter moves (and waits park as before).
        apart.still_together();
        if parks {
            assert!(apart.moved);
            assert!(apart.may_park(), "moved, not taking turns");
            // Together again after the move: take turns.
            apart.still_together();
        }
        assert!(!apart.moved);
        for _ in 0..TAKE_TURNS {
            assert!(!apart.may_park(), "takes turns");
        }
        assert_eq!(apart.may_park(), parks, "then parks again");
        // Woken apart: the next time together moves again.
        apart.still_together();
        apart.woke_apart();
        assert!(!apart.moved);
    }
}
