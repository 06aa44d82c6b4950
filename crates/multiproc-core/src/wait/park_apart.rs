//! What a waiter does when the peer it waits for runs on its own CPU: park at once, or take
//! turns with it.
//!
//! Spinning for a peer on one's own CPU only keeps the peer from running. Yielding runs it, but
//! then the two take turns on one CPU (a context switch each way, about 5 us a round trip on a
//! virtual machine) while another CPU may idle: no wake-up ever lets the scheduler place one of
//! them there. Parking does: the peer's wake-up of the waiter lets the scheduler put it on an
//! idle CPU, and from then on the two spin apart (about 1 us a round trip). So a wait that finds
//! its peer on its CPU parks at once ([`ParkApart::may_park`]). When the other CPUs are busy the
//! wake-up leaves the two together, and every wait would pay a sleep and a wake-up for nothing:
//! a waiter that wakes still beside its peer ([`ParkApart::still_together`]) takes turns
//! (yields) for the next [`TAKE_TURNS`] waits, then tries parking again. With a single CPU
//! (pinned, or a quota of one) there is nowhere to move to: it always takes turns.
//!
//! Used by the pipe receiver (its peer is the sender, known by the shared ring's CPU cue) and
//! by the manager's serving loop (its peers are the clients it waits for).

use super::spin::several_cpus;

/// Waits that take turns with a peer on the waiter's CPU (yield) rather than park, after a
/// park that did not move the two apart.
pub const TAKE_TURNS: u8 = 64;

/// One waiter's choice between parking and taking turns while its peer shares its CPU (see the
/// [module docs](self)).
#[derive(Debug, Default, Clone)]
pub struct ParkApart {
    /// Waits left that take turns.
    turns: u8,
}

impl ParkApart {
    /// A waiter that parks to move apart from its peer at its first chance.
    pub const fn new() -> Self {
        Self { turns: 0 }
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

    /// A waiter woke from a park with its peer still on its CPU (the other CPUs are busy): the
    /// next [`TAKE_TURNS`] waits take turns.
    pub fn still_together(&mut self) {
        self.turns = TAKE_TURNS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_turns_for_a_while_after_a_park_that_left_the_two_together() {
        let mut apart = ParkApart::new();
        let parks = several_cpus();
        assert_eq!(apart.may_park(), parks);
        apart.still_together();
        for _ in 0..TAKE_TURNS {
            assert!(!apart.may_park(), "takes turns");
        }
        assert_eq!(apart.may_park(), parks, "then parks again");
    }
}
