//! When a receiver should spin before it parks, and for how long.
//!
//! Parking a receiver (tokio's `epoll_wait`, or `poll(2)` on the blocking path) and waking it
//! again costs a sleep and a wake-up in the kernel: a few microseconds when both processes share
//! a CPU, tens of microseconds for a wake-up across CPUs on a virtual machine. When the peer
//! answers quickly (a request and its reply), a receiver that keeps trying the socket for a
//! little while, yielding the CPU between tries, gets the answer without either: with one CPU
//! the yield runs the peer directly, with two it catches the answer without a cross-CPU wake-up.
//! When the peer is slow, spinning only burns CPU (and, on a tokio runtime, holds up the
//! thread's other tasks). Each spin is one of three outcomes, and the decision adapts to them:
//!
//! - **caught**: data arrived within [`SPIN_BUDGET`]; the receiver keeps spinning.
//! - **missed**: the budget ran out with every step quick (the peer is just slow). The
//!   receiver's next waits park at once: 1, then 3, 7, ... up to [`MAX_SKIP`] of them, doubling
//!   with each miss in a row; a caught spin forgets the misses, and a parked wait that turned
//!   out short (data within the budget, wake-up included) halves the waits still to skip, so a
//!   receiver that fell back to parking returns to spinning soon once a quick exchange resumes.
//! - **contended**: one step (a yield and a read) took longer than [`SLOW_STEP`]. On a CPU
//!   shared with another busy process a yield gives that process the rest of a time slice
//!   (milliseconds under Linux's EEVDF scheduler), which is far worse than parking. One slow
//!   step can also be noise (an interrupt, the hypervisor running another guest), so the first
//!   contended spin only raises suspicion; a second one in a row (no quick spin between) turns
//!   spinning off for every receiver of the process for [`COOLDOWN_MIN`], doubling with each
//!   further contended spin up to [`COOLDOWN_MAX`]. A permanently busy CPU then costs at most
//!   two slow yields per `COOLDOWN_MAX`. The CPU is the process's, not a channel's, hence one
//!   [`CpuContention`] for all receivers.
//!
//! The policy is pure bookkeeping; the caller measures time and does the trying.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest a receiver spins before it parks.
pub(crate) const SPIN_BUDGET: Duration = Duration::from_micros(50);

/// A spin step (yield, then read) longer than this means the yield ran someone else for long:
/// the CPU is contended. Between a peer's turnaround (microseconds) and a scheduler time slice
/// given to a busy process (0.75 ms and more).
pub(crate) const SLOW_STEP: Duration = Duration::from_micros(200);

/// Most waits in a row that park without spinning after repeated missed spins.
pub(crate) const MAX_SKIP: u32 = 255;

/// How long no receiver spins after a contended spin.
pub(crate) const COOLDOWN_MIN: Duration = Duration::from_millis(50);

/// The longest cooldown, reached after contended spins in a row.
pub(crate) const COOLDOWN_MAX: Duration = Duration::from_millis(800);

/// How a spin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spin {
    /// Data arrived after this long, with every step quick.
    Caught(Duration),
    /// The budget ran out, every step quick.
    Missed,
    /// A step took longer than [`SLOW_STEP`] (whether data arrived or not).
    Contended,
}

/// Whether spinning is off for the whole process because the CPU was found contended.
#[derive(Debug)]
pub(crate) struct CpuContention {
    epoch: Instant,
    /// Nanoseconds after `epoch` until which nobody spins.
    until_ns: AtomicU64,
    /// Cooldowns in a row (each doubles the next).
    streak: AtomicU32,
    /// The last spin was contended: the next contended one confirms it.
    suspect: AtomicBool,
}

impl CpuContention {
    /// No contention known.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            until_ns: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            suspect: AtomicBool::new(false),
        }
    }

    /// The process's record.
    pub(crate) fn global() -> &'static CpuContention {
        static GLOBAL: OnceLock<CpuContention> = OnceLock::new();
        GLOBAL.get_or_init(CpuContention::new)
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch)
            .as_nanos()
            .min(u64::MAX as u128) as u64
    }

    /// Whether spinning is off at `now`.
    pub(crate) fn cooling(&self, now: Instant) -> bool {
        // Relaxed throughout: this is a hint, and a race only costs one spin more or less.
        self.ns(now) < self.until_ns.load(Ordering::Relaxed)
    }

    /// A spin found the CPU contended at `now`: if the previous spin did too, turn spinning off
    /// for the next cooldown.
    fn contended(&self, now: Instant) {
        if !self.suspect.swap(true, Ordering::Relaxed) {
            return;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed).min(16);
        let cooldown = COOLDOWN_MIN.saturating_mul(1 << streak).min(COOLDOWN_MAX);
        let until = self.ns(now).saturating_add(cooldown.as_nanos() as u64);
        self.until_ns.fetch_max(until, Ordering::Relaxed);
    }

    /// A spin went through with quick steps: forget suspicion and cooldowns.
    fn uncontended(&self) {
        if self.suspect.load(Ordering::Relaxed) {
            self.suspect.store(false, Ordering::Relaxed);
        }
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }
}

/// Spin-or-park bookkeeping of one receiver.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpinPolicy {
    /// Missed spins since the last one that caught data.
    misses: u32,
    /// Waits still to park without spinning.
    skip: u32,
}

impl SpinPolicy {
    /// A policy that spins at its first wait.
    pub(crate) const fn new() -> Self {
        Self { misses: 0, skip: 0 }
    }

    /// A wait begins at `now`: how long to spin first, or `None` to park at once (then report
    /// how long the wait took with [`parked`](Self::parked)).
    pub(crate) fn begin_wait(&mut self, now: Instant, cpu: &CpuContention) -> Option<Duration> {
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        (!cpu.cooling(now)).then_some(SPIN_BUDGET)
    }

    /// A spin ended at `now`, as `how`.
    pub(crate) fn spun(&mut self, how: Spin, now: Instant, cpu: &CpuContention) {
        match how {
            Spin::Contended => cpu.contended(now),
            Spin::Caught(after) if after <= SPIN_BUDGET => {
                cpu.uncontended();
                self.misses = 0;
                self.skip = 0;
            }
            Spin::Caught(_) | Spin::Missed => {
                cpu.uncontended();
                self.misses = self.misses.saturating_add(1);
                self.skip = 1u32
                    .checked_shl(self.misses)
                    .map_or(MAX_SKIP, |n| (n - 1).min(MAX_SKIP));
            }
        }
    }

    /// A wait that parked without spinning ended after `waited`.
    pub(crate) fn parked(&mut self, waited: Duration) {
        if waited <= SPIN_BUDGET {
            self.skip /= 2;
        }
    }

    /// Whether the next wait spins, CPU contention aside.
    #[cfg(test)]
    pub(crate) fn spins_next(&self) -> bool {
        self.skip == 0
    }

    /// Missed spins since the last one that caught data.
    #[cfg(test)]
    pub(crate) fn misses(&self) -> u32 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_micros(5);
    const LONG: Duration = Duration::from_millis(10);

    /// Counts the waits that park before the policy spins again (each reported as `waited`).
    fn parks_before_next_spin(
        policy: &mut SpinPolicy,
        cpu: &CpuContention,
        waited: Duration,
    ) -> u32 {
        let mut parks = 0;
        while policy.begin_wait(Instant::now(), cpu).is_none() {
            policy.parked(waited);
            parks += 1;
            assert!(parks <= MAX_SKIP, "never spins again");
        }
        parks
    }

    /// Spins (asserting that the policy wants to) and reports `how`.
    fn spin(policy: &mut SpinPolicy, cpu: &CpuContention, how: Spin) {
        let now = Instant::now();
        assert_eq!(policy.begin_wait(now, cpu), Some(SPIN_BUDGET));
        policy.spun(how, now, cpu);
    }

    #[test]
    fn spins_at_first_and_while_spins_catch_data() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        for _ in 0..1000 {
            spin(&mut policy, &cpu, Spin::Caught(SHORT));
        }
    }

    #[test]
    fn missed_spins_back_off_exponentially_up_to_the_cap() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        let mut skipped = Vec::new();
        for _ in 0..12 {
            spin(&mut policy, &cpu, Spin::Missed);
            skipped.push(parks_before_next_spin(&mut policy, &cpu, LONG));
        }
        assert_eq!(
            skipped,
            [1, 3, 7, 15, 31, 63, 127, 255, 255, 255, 255, 255],
            "waits parked without spinning after each missed spin"
        );
    }

    #[test]
    fn backoff_survives_overflowing_miss_counts() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy {
            misses: u32::MAX - 1,
            skip: 0,
        };
        policy.spun(Spin::Missed, Instant::now(), &cpu);
        policy.spun(Spin::Missed, Instant::now(), &cpu);
        assert_eq!(policy.skip, MAX_SKIP);
    }

    #[test]
    fn a_caught_spin_forgets_misses() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        for _ in 0..6 {
            spin(&mut policy, &cpu, Spin::Missed);
            parks_before_next_spin(&mut policy, &cpu, LONG);
        }
        spin(&mut policy, &cpu, Spin::Caught(SHORT));
        assert!(policy.spins_next());
        // The next miss starts the backoff from the beginning.
        spin(&mut policy, &cpu, Spin::Missed);
        assert_eq!(parks_before_next_spin(&mut policy, &cpu, LONG), 1);
    }

    #[test]
    fn a_catch_after_the_budget_is_a_miss() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        spin(&mut policy, &cpu, Spin::Caught(SPIN_BUDGET));
        assert!(policy.spins_next(), "caught just in time");
        spin(&mut policy, &cpu, Spin::Caught(SPIN_BUDGET + SHORT));
        assert_eq!(policy.misses(), 1);
        assert_eq!(parks_before_next_spin(&mut policy, &cpu, LONG), 1);
    }

    #[test]
    fn short_parked_waits_bring_spinning_back_soon() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        for _ in 0..20 {
            spin(&mut policy, &cpu, Spin::Missed);
            parks_before_next_spin(&mut policy, &cpu, LONG);
        }
        // Fully backed off: long waits keep it parking for MAX_SKIP waits...
        spin(&mut policy, &cpu, Spin::Missed);
        assert_eq!(
            parks_before_next_spin(&mut policy.clone(), &cpu, LONG),
            MAX_SKIP
        );
        // ...while short ones halve what is left each time.
        assert_eq!(parks_before_next_spin(&mut policy, &cpu, SHORT), 8);
    }

    #[test]
    fn a_wait_of_exactly_the_budget_counts_as_short() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        policy.spun(Spin::Missed, Instant::now(), &cpu);
        policy.spun(Spin::Missed, Instant::now(), &cpu);
        assert_eq!(policy.skip, 3);
        assert!(policy.begin_wait(Instant::now(), &cpu).is_none());
        policy.parked(SPIN_BUDGET);
        assert_eq!(policy.skip, 1);
        assert!(policy.begin_wait(Instant::now(), &cpu).is_none());
        policy.parked(SPIN_BUDGET + Duration::from_nanos(1));
        assert!(policy.spins_next());
    }

    /// The CPU a receiver can waste on spins that never catch anything is a small share of the
    /// time it waits: at most one budget per `MAX_SKIP + 1` waits once backed off.
    #[test]
    fn spinning_on_a_slow_peer_costs_little() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        let (mut spins, waits) = (0u32, 10_000u32);
        for _ in 0..waits {
            let now = Instant::now();
            match policy.begin_wait(now, &cpu) {
                Some(_) => {
                    spins += 1;
                    policy.spun(Spin::Missed, now, &cpu);
                }
                None => policy.parked(LONG),
            }
        }
        assert!(spins <= 8 + waits / (MAX_SKIP + 1) + 1, "{spins} spins");
    }

    /// One contended spin alone is taken for noise; a second in a row turns spinning off for
    /// every receiver of the process until the cooldown ends, and further ones double it, up to
    /// the cap.
    #[test]
    fn contention_turns_spinning_off_for_a_doubling_cooldown() {
        let cpu = CpuContention::new();
        let mut a = SpinPolicy::new();
        let mut b = SpinPolicy::new();
        let t0 = Instant::now();
        assert!(a.begin_wait(t0, &cpu).is_some());
        a.spun(Spin::Contended, t0, &cpu);
        assert!(!cpu.cooling(t0), "one slow step is not enough");
        assert!(b.begin_wait(t0, &cpu).is_some());
        b.spun(Spin::Contended, t0, &cpu);
        let mut expected = COOLDOWN_MIN;
        let mut start = t0;
        for round in 0..10 {
            let just_before = start + expected - Duration::from_nanos(1);
            assert!(a.begin_wait(just_before, &cpu).is_none(), "round {round}");
            assert!(b.begin_wait(just_before, &cpu).is_none(), "round {round}");
            // Cooling waits do not count as skipped ones for the receiver's own backoff.
            assert!(a.spins_next() && b.spins_next());
            let after = start + expected;
            assert_eq!(
                b.begin_wait(after, &cpu),
                Some(SPIN_BUDGET),
                "round {round}"
            );
            b.spun(Spin::Contended, after, &cpu);
            start = after;
            expected = (expected * 2).min(COOLDOWN_MAX);
        }
        assert_eq!(expected, COOLDOWN_MAX);
    }

    #[test]
    fn a_quick_spin_clears_suspicion_and_resets_the_cooldown() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        let mut now = Instant::now();
        for _ in 0..5 {
            policy.spun(Spin::Contended, now, &cpu);
            now += COOLDOWN_MAX;
        }
        assert!(!cpu.cooling(now));
        // Slow, quick, slow: noise, not contention.
        policy.spun(Spin::Missed, now, &cpu);
        policy.spun(Spin::Contended, now, &cpu);
        policy.spun(Spin::Caught(SHORT), now, &cpu);
        policy.spun(Spin::Contended, now, &cpu);
        assert!(!cpu.cooling(now));
        // A second slow one in a row starts the shortest cooldown again.
        policy.spun(Spin::Contended, now, &cpu);
        assert!(cpu.cooling(now + COOLDOWN_MIN - Duration::from_nanos(1)));
        assert!(!cpu.cooling(now + COOLDOWN_MIN));
    }

    /// Under a permanently contended CPU, spins (each costing a slow yield) become rare: at most
    /// two per `COOLDOWN_MAX` once the cooldown has grown.
    #[test]
    fn a_busy_cpu_costs_few_spins() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        let mut now = Instant::now();
        let mut spins = 0;
        // A wait every 20 us for 60 s.
        for _ in 0..3_000_000u32 {
            if policy.begin_wait(now, &cpu).is_some() {
                spins += 1;
                policy.spun(Spin::Contended, now, &cpu);
            }
            now += Duration::from_micros(20);
        }
        // Spins at 0 and 20 us (confirmed: 50 ms cooldown), then 50 ms, 150, 350 and 750 ms,
        // then one per 0.8 s: suspicion is never cleared, as no spin is quick.
        assert!(spins <= 6 + 60_000 / 800, "{spins} spins");
    }
}
