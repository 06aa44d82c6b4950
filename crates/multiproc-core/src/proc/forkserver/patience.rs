//! When the parent stops waiting for a server that has not answered: looks, not a timeout
//! (the fork server's module docs argue why).

use std::time::Duration;

/// How often the parent looks at a server that has not answered yet.
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(20);
/// A server seen stopped at this many looks in a row is abandoned.
pub(super) const STOPPED_LOOKS: u32 = 2;
/// A server that runs but has not answered after this many looks (2 s) is abandoned all the same.
pub(super) const ANSWER_LOOKS: u32 = 100;

/// What the parent sees of a server that has not answered yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seen {
    /// Running, runnable, sleeping or in the kernel: it may still answer.
    Alive,
    /// Stopped by a signal or a tracer: it cannot answer until someone continues it.
    Stopped,
    /// Exited (not reaped yet): it never will.
    Exited,
}

/// The one decision of when to stop waiting for a server (see the fork server's module docs): pure
/// bookkeeping of what each look saw.
#[derive(Debug, Default)]
pub(super) struct Patience {
    looks: u32,
    stopped_looks: u32,
}

impl Patience {
    /// After a look at a server that has not answered: true to abandon it.
    pub(super) fn give_up(&mut self, seen: Seen) -> bool {
        self.looks += 1;
        match seen {
            Seen::Exited => true,
            Seen::Stopped => {
                self.stopped_looks += 1;
                self.stopped_looks >= STOPPED_LOOKS
            }
            Seen::Alive => {
                self.stopped_looks = 0;
                self.looks >= ANSWER_LOOKS
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_or_dead_server_is_given_up_within_looks() {
        assert!(Patience::default().give_up(Seen::Exited));
        let mut patience = Patience::default();
        let looks: Vec<bool> = (0..STOPPED_LOOKS)
            .map(|_| patience.give_up(Seen::Stopped))
            .collect();
        assert_eq!(looks.last(), Some(&true));
        assert!(looks[..looks.len() - 1].iter().all(|&g| !g), "{looks:?}");
    }

    #[test]
    fn a_stop_seen_once_is_forgiven_when_the_server_runs_again() {
        let mut patience = Patience::default();
        // Job control: stopped and continued between looks, for as long as the limit allows.
        for _ in 0..(ANSWER_LOOKS - 1) / 2 {
            assert!(!patience.give_up(Seen::Stopped));
            assert!(!patience.give_up(Seen::Alive));
        }
    }

    #[test]
    fn a_live_server_gets_every_look_of_the_limit() {
        let mut patience = Patience::default();
        for look in 1..ANSWER_LOOKS {
            assert!(!patience.give_up(Seen::Alive), "gave up at look {look}");
        }
        assert!(patience.give_up(Seen::Alive));
        assert_eq!(LOOK_EVERY * ANSWER_LOOKS, Duration::from_secs(2));
    }
}
