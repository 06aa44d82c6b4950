//! Adaptive spinning before parking, for a worker waiting for its next job and a driver waiting
//! for a result.
//!
//! Parking costs a wake-up through the kernel when the peer answers: tens of microseconds
//! across CPUs on these machines (far more under CPU steal), while a peer watched through
//! shared memory is seen within a fraction of a microsecond. Spinning pays only when the
//! answer comes within the spin, and costs a CPU otherwise, so the budget adapts: a wait caught
//! while spinning keeps the full budget, a spin that ends in parking halves it (down to none),
//! and a short parked wait (one a spin would plausibly have caught) turns spinning back on.
//!
//! A peer on the same CPU cannot answer while we spin (the spin only delays it), so neither
//! side spins with a single CPU to run on, nor while the peer was last seen on the CPU it runs
//! on itself (each side publishes its CPU in the shared region, see `ring::Cpu`): measured
//! under load, nearly every spin that ran out had the peer on its own CPU, and nearly every one
//! that caught the answer had it on the other.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Spins shorter than this are not worth starting.
const MIN_SPIN_NS: u64 = 2_000;

/// The spin budget of one waiting side.
#[derive(Debug)]
pub(crate) struct Spin {
    /// The most to spin per wait (0: never).
    limit_ns: u64,
    /// What to spin next time.
    budget_ns: u64,
}

impl Spin {
    /// A budget of at most `limit` per wait, starting full (none on a single CPU).
    pub(crate) fn new(limit: Duration) -> Self {
        let limit_ns = match several_cpus() {
            true => limit.as_nanos().min(u128::from(u64::MAX)) as u64,
            false => 0,
        };
        Self {
            limit_ns,
            budget_ns: limit_ns,
        }
    }

    /// How long to spin before parking now; zero: park at once.
    pub(crate) fn budget(&self) -> Duration {
        Duration::from_nanos(self.budget_ns)
    }

    /// Learns from a wait that just ended after `waited`.
    pub(crate) fn record(&mut self, waited: Duration, outcome: Outcome) {
        if self.limit_ns == 0 {
            return;
        }
        let waited_ns = waited.as_nanos().min(u128::from(u64::MAX)) as u64;
        match outcome {
            Outcome::Caught => self.budget_ns = self.limit_ns,
            // The answer came later than we were willing to spin.
            Outcome::RanOut => {
                let half = self.budget_ns / 2;
                self.budget_ns = if half < MIN_SPIN_NS { 0 } else { half };
            }
            // Parked with spinning off, yet the answer came soon: the wake-up was (most of)
            // the wait, and a spin would likely have caught it.
            Outcome::Parked if self.budget_ns == 0 && waited_ns <= 2 * self.limit_ns => {
                self.budget_ns = self.limit_ns;
            }
            Outcome::Parked => {}
        }
    }
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The answer came while spinning.
    Caught,
    /// The spin ran out and the waiter parked.
    RanOut,
    /// The waiter parked without spinning.
    Parked,
}

/// Spins until `ready`, or until `budget` has passed or `worth_it` (asked now and then) says to
/// stop; whether `ready` came true.
pub(crate) fn spin_until(
    budget: Duration,
    mut ready: impl FnMut() -> bool,
    mut worth_it: impl FnMut() -> bool,
) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= budget || !worth_it() {
            return ready();
        }
    }
}

/// Whether this process may run on more than one CPU (its affinity and cgroup quota allow it).
fn several_cpus() -> bool {
    static SEVERAL: OnceLock<bool> = OnceLock::new();
    *SEVERAL.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn misses_turn_spinning_off_and_short_waits_back_on() {
        let mut spin = Spin {
            limit_ns: 50_000,
            budget_ns: 50_000,
        };
        spin.record(us(5), Outcome::Caught);
        assert_eq!(spin.budget(), us(50));
        // Waits parked without trying to spin teach nothing while spinning is on.
        spin.record(us(1_000), Outcome::Parked);
        assert_eq!(spin.budget(), us(50));
        // Each spin that runs out halves the budget, until it is not worth spinning.
        let mut budgets = Vec::new();
        while spin.budget() > Duration::ZERO {
            spin.record(us(500), Outcome::RanOut);
            budgets.push(spin.budget().as_micros());
        }
        assert_eq!(budgets, [25, 12, 6, 3, 0]);
        // Long parked waits keep it off; a short one turns it back on.
        spin.record(us(1_000), Outcome::Parked);
        assert_eq!(spin.budget(), Duration::ZERO);
        spin.record(us(40), Outcome::Parked);
        assert_eq!(spin.budget(), us(50));
    }

    #[test]
    fn a_zero_limit_never_spins() {
        let mut spin = Spin {
            limit_ns: 0,
            budget_ns: 0,
        };
        spin.record(us(1), Outcome::Parked);
        spin.record(us(1), Outcome::Caught);
        assert_eq!(spin.budget(), Duration::ZERO);
    }

    #[test]
    fn spin_until_stops_at_ready_or_budget() {
        let mut polls = 0;
        let ready = || {
            polls += 1;
            polls == 100
        };
        assert!(spin_until(Duration::from_secs(10), ready, || true));
        let start = Instant::now();
        assert!(!spin_until(us(200), || false, || true));
        assert!(start.elapsed() >= us(200));
        // Told it is not worth it, it stops long before its budget.
        let mut asked = 0;
        let worth_it = || {
            asked += 1;
            asked < 3
        };
        assert!(!spin_until(Duration::from_secs(3600), || false, worth_it));
        assert_eq!(asked, 3);
    }
}
