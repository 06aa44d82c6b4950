//! When a receiver should spin before it parks, and for how long.
//!
//! Parking a receiver (tokio's `epoll_wait`, or `poll(2)` on the blocking path) and waking it
//! again costs a sleep and a wake-up in the kernel: a few microseconds when both processes share
//! a CPU, tens of microseconds for a wake-up across CPUs on a virtual machine. When the peer
//! answers quickly (a request and its reply), a receiver that keeps trying the socket for a
//! little while, yielding the CPU between tries, gets the answer without either: with one CPU
//! the yield runs the peer directly, with two it catches the answer without a cross-CPU wake-up.
//! When the peer is slow, spinning only burns CPU (and, on a tokio runtime, holds up the
//! thread's other tasks), so the decision adapts per receiver:
//!
//! - a wait spins for at most [`SPIN_BUDGET`];
//! - a spin that runs out of budget makes the next waits park at once: 1, then 3, 7, ... up to
//!   [`MAX_SKIP`] of them, doubling with each failed spin in a row;
//! - a spin that catches the data within the budget forgets the failures; one that catches it
//!   later (a yield can hand the CPU to another busy process for a whole time slice) counts as
//!   a failure;
//! - a parked wait that turned out short (data within the budget, wake-up included) halves the
//!   number of waits still to skip, so a receiver that fell back to parking (a stall, an idle
//!   period) returns to spinning soon once a quick exchange resumes.
//!
//! The policy is pure bookkeeping; the caller measures time and does the trying.

use std::time::Duration;

/// The longest a receiver spins before it parks.
pub(crate) const SPIN_BUDGET: Duration = Duration::from_micros(50);

/// Most waits in a row that park without spinning after repeated failed spins.
pub(crate) const MAX_SKIP: u32 = 255;

/// Spin-or-park bookkeeping of one receiver.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpinPolicy {
    /// Failed spins since the last one that caught data.
    fails: u32,
    /// Waits still to park without spinning.
    skip: u32,
}

impl SpinPolicy {
    /// A policy that spins at its first wait.
    pub(crate) const fn new() -> Self {
        Self { fails: 0, skip: 0 }
    }

    /// A wait begins: how long to spin first, or `None` to park at once (report how long the
    /// wait took with [`parked`](Self::parked)).
    pub(crate) fn begin_wait(&mut self) -> Option<Duration> {
        if self.skip == 0 {
            Some(SPIN_BUDGET)
        } else {
            self.skip -= 1;
            None
        }
    }

    /// A spin ended: `caught_after` is how long it took to catch data, `None` when it ran out
    /// of budget.
    pub(crate) fn spun(&mut self, caught_after: Option<Duration>) {
        if caught_after.is_some_and(|t| t <= SPIN_BUDGET) {
            self.fails = 0;
            self.skip = 0;
        } else {
            self.fails = self.fails.saturating_add(1);
            self.skip = 1u32
                .checked_shl(self.fails)
                .map_or(MAX_SKIP, |n| (n - 1).min(MAX_SKIP));
        }
    }

    /// A wait that parked without spinning ended after `waited`.
    pub(crate) fn parked(&mut self, waited: Duration) {
        if waited <= SPIN_BUDGET {
            self.skip /= 2;
        }
    }

    /// Whether the next wait spins.
    #[cfg(test)]
    pub(crate) fn spins_next(&self) -> bool {
        self.skip == 0
    }

    /// Failed spins since the last one that caught data.
    #[cfg(test)]
    pub(crate) fn failures(&self) -> u32 {
        self.fails
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_micros(5);
    const LONG: Duration = Duration::from_millis(10);

    /// Counts the waits that park before the policy spins again (each reported as `waited`).
    fn parks_before_next_spin(policy: &mut SpinPolicy, waited: Duration) -> u32 {
        let mut parks = 0;
        while policy.begin_wait().is_none() {
            policy.parked(waited);
            parks += 1;
            assert!(parks <= MAX_SKIP, "never spins again");
        }
        parks
    }

    #[test]
    fn spins_at_first_and_while_spins_catch_data() {
        let mut policy = SpinPolicy::new();
        for _ in 0..1000 {
            assert_eq!(policy.begin_wait(), Some(SPIN_BUDGET));
            policy.spun(Some(SHORT));
        }
    }

    #[test]
    fn failed_spins_back_off_exponentially_up_to_the_cap() {
        let mut policy = SpinPolicy::new();
        let mut skipped = Vec::new();
        for _ in 0..12 {
            assert_eq!(policy.begin_wait(), Some(SPIN_BUDGET));
            policy.spun(None);
            skipped.push(parks_before_next_spin(&mut policy, LONG));
        }
        assert_eq!(
            skipped,
            [1, 3, 7, 15, 31, 63, 127, 255, 255, 255, 255, 255],
            "waits parked without spinning after each failed spin"
        );
    }

    #[test]
    fn a_catch_after_the_budget_is_a_failure() {
        let mut policy = SpinPolicy::new();
        assert!(policy.begin_wait().is_some());
        policy.spun(Some(SPIN_BUDGET));
        assert!(policy.spins_next(), "caught just in time");
        assert!(policy.begin_wait().is_some());
        policy.spun(Some(LONG));
        assert_eq!(policy.failures(), 1);
        assert_eq!(parks_before_next_spin(&mut policy, LONG), 1);
    }

    #[test]
    fn backoff_survives_overflowing_failure_counts() {
        let mut policy = SpinPolicy {
            fails: u32::MAX - 1,
            skip: 0,
        };
        policy.spun(None);
        policy.spun(None);
        assert_eq!(policy.skip, MAX_SKIP);
    }

    #[test]
    fn a_caught_spin_forgets_failures() {
        let mut policy = SpinPolicy::new();
        for _ in 0..6 {
            assert!(policy.begin_wait().is_some());
            policy.spun(None);
            parks_before_next_spin(&mut policy, LONG);
        }
        assert!(policy.begin_wait().is_some());
        policy.spun(Some(SHORT));
        assert!(policy.spins_next());
        // The next failure starts the backoff from the beginning.
        assert!(policy.begin_wait().is_some());
        policy.spun(None);
        assert_eq!(parks_before_next_spin(&mut policy, LONG), 1);
    }

    #[test]
    fn short_parked_waits_bring_spinning_back_soon() {
        let mut policy = SpinPolicy::new();
        for _ in 0..20 {
            assert!(policy.begin_wait().is_some());
            policy.spun(None);
            parks_before_next_spin(&mut policy, LONG);
        }
        // Fully backed off: long waits keep it parking for MAX_SKIP waits...
        assert!(policy.begin_wait().is_some());
        policy.spun(None);
        assert_eq!(parks_before_next_spin(&mut policy.clone(), LONG), MAX_SKIP);
        // ...while short ones halve what is left each time.
        assert_eq!(parks_before_next_spin(&mut policy, SHORT), 8);
    }

    #[test]
    fn a_wait_of_exactly_the_budget_counts_as_short() {
        let mut policy = SpinPolicy::new();
        policy.spun(None);
        policy.spun(None);
        assert_eq!(policy.skip, 3);
        assert!(policy.begin_wait().is_none());
        policy.parked(SPIN_BUDGET);
        assert_eq!(policy.skip, 1);
        assert!(policy.begin_wait().is_none());
        policy.parked(SPIN_BUDGET + Duration::from_nanos(1));
        assert!(policy.spins_next());
    }

    /// The CPU a receiver can waste on spins that never catch anything is a small share of the
    /// time it waits: at most one budget per `MAX_SKIP + 1` waits once backed off.
    #[test]
    fn spinning_on_a_slow_peer_costs_little() {
        let mut policy = SpinPolicy::new();
        let (mut spins, waits) = (0u32, 10_000u32);
        for _ in 0..waits {
            match policy.begin_wait() {
                Some(_) => {
                    spins += 1;
                    policy.spun(None);
                }
                None => policy.parked(LONG),
            }
        }
        assert!(spins <= 8 + waits / (MAX_SKIP + 1) + 1, "{spins} spins");
    }
}
