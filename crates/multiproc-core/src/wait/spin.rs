//! The one spin-or-park policy of the workspace: when a waiter should spin before it parks,
//! and for how long. Every wait uses it: [`WaitQueue`](crate::wait::WaitQueue)'s waits (so every
//! `multiproc-sync` primitive and the queue's getters, putters and joiners), the pipe receiver
//! (for its socket), and the pool's driver and workers (for their shared ring), each through the
//! one driver loop, [`spin`] (or its async form, [`poll_spin`]); "data" below is whatever they
//! wait for.
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
//!   (milliseconds under Linux's EEVDF scheduler), which is far worse than parking; and every
//!   yield, quick or not, gives it a larger share of the CPU. So no receiver of the process
//!   spins for a cooldown: [`COOLDOWN_MIN`] at first, as a single slow step is often a burst
//!   (a peer starting up, an interrupt, the hypervisor running another guest), and four times
//!   longer each time contention is found again within [`RECENT`] of the previous cooldown's
//!   end, up to [`COOLDOWN_MAX`]. Quick spins in between do not count as evidence of a free
//!   CPU (with a busy process beside them, some yields still happen to run the peer); only
//!   `RECENT` without contention does. A permanently busy CPU thus costs about one slow yield
//!   per `COOLDOWN_MAX` after its first second. The CPU is the process's, not a channel's,
//!   hence one `CpuContention` for all receivers.
//!
//! **The peer's CPU.** A waiter that knows where its peer runs (the pool's driver and workers
//! publish their CPU in shared memory) passes that cue to [`spin`]: while the peer runs on
//! another CPU the spin busy-waits (a yield would only add a system call, and the contention
//! cooldown, which is about yields, does not apply), and it stops at once,
//! without counting as a miss, when the peer is on the waiter's own CPU (then spinning only keeps
//! it from running) or the process has a single CPU. A waiter without the cue yields between
//! tries, which runs the peer directly when they share a CPU.
//!
//! **The one rule for async waits: spin inside `poll`, once per wait, for at most the policy's
//! budget, and only with the task's cooperative budget left** ([`poll_spin`]; a spin that catches
//! the data spends one unit, as the read it replaces would). The thread is held for at most
//! [`SPIN_BUDGET`] plus one yield, a cost the policy only pays while spins are catching data, and
//! the coop budget keeps a task that always catches from starving its neighbours. The
//! alternative, a cooperative self-wake (`wake_by_ref` and `Pending`, then look again), goes
//! through the scheduler for every look, so each look also costs the runtime's own bookkeeping
//! and now and then an `epoll_wait`; its step time measures the other tasks rather than the CPU,
//! which blinds the contention cue above; and on a busy runtime the look comes too late to beat
//! a wake-up anyway.
//!
//! **Spin-free mode.** A user who prefers never to burn a CPU on a wait turns spinning off for
//! the whole process with [`set_spinning`]`(false)` or by starting it with `MULTIPROC_SPIN=0`
//! ([`SPIN_ENV`]). It is checked here, in the driver loop every wait goes through, so no wait
//! spins: each parks at once. Children started afterwards inherit the setting (the spawner
//! passes them the variable). [`spins_begun`] counts the spins a process began, so a test or a
//! metrics exporter can see that it holds.
//!
//! The policy is pure bookkeeping; the driver loop measures time and does the trying.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest a waiter spins before it parks.
pub const SPIN_BUDGET: Duration = Duration::from_micros(50);

/// A spin step (yield, then read) longer than this means the yield ran someone else for long:
/// the CPU is contended. Above a peer's turnaround (microseconds, or some hundreds while a child
/// starts up) and at the low end of what a yield to a busy process takes (the rest of its time
/// slice, 1 to 8 ms measured with a 250 Hz kernel).
pub const SLOW_STEP: Duration = Duration::from_millis(1);

/// Most waits in a row that park without spinning after repeated missed spins.
pub const MAX_SKIP: u32 = 255;

/// How long no receiver spins after contention is found.
pub const COOLDOWN_MIN: Duration = Duration::from_millis(5);

/// Contention found again soon after a cooldown multiplies the next one by this.
const COOLDOWN_GROWTH: u32 = 4;

/// The longest cooldown.
pub const COOLDOWN_MAX: Duration = Duration::from_millis(800);

/// Contention found within this time after a cooldown ended makes the next cooldown longer;
/// after this long without contention, the next cooldown is the shortest again.
pub const RECENT: Duration = Duration::from_secs(1);

/// The environment variable that turns spinning off for a process and its children when it is
/// `0` (any other value leaves spinning on).
pub const SPIN_ENV: &str = "MULTIPROC_SPIN";

/// The process's spin setting: not read yet, on, or off.
static SPINNING: AtomicU8 = AtomicU8::new(UNREAD);
const UNREAD: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// Spins begun in this process.
static SPINS_BEGUN: AtomicU64 = AtomicU64::new(0);

/// Turns spinning before parking on or off for every wait of this process (pipes, queues, locks,
/// events, the pool), and for the children it starts from now on.
///
/// Off, a wait that finds nothing parks at once: it never keeps a CPU busy, at the price of a
/// sleep and a wake-up for answers that would have come within microseconds. Overrides
/// [`SPIN_ENV`].
pub fn set_spinning(on: bool) {
    SPINNING.store(if on { ON } else { OFF }, Ordering::Relaxed);
}

/// Whether waits spin before they park: as [`set_spinning`] last said, else as [`SPIN_ENV`] says
/// (on unless it is `0`).
pub fn spinning() -> bool {
    match SPINNING.load(Ordering::Relaxed) {
        ON => true,
        OFF => false,
        _ => {
            let on = std::env::var_os(SPIN_ENV).is_none_or(|v| v != "0");
            // A racing `set_spinning` wins over the environment.
            let _ = SPINNING.compare_exchange(
                UNREAD,
                if on { ON } else { OFF },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            SPINNING.load(Ordering::Relaxed) == ON
        }
    }
}

/// The value of [`SPIN_ENV`] children must be given so that they follow this process's
/// setting, when [`set_spinning`] chose one the environment does not say: `"0"` when it turned
/// spinning off, `"1"` when it turned it on in a process started with `MULTIPROC_SPIN=0`.
/// `None` when the inherited environment already says the same.
pub(crate) fn env_for_children() -> Option<&'static str> {
    let env_on = std::env::var_os(SPIN_ENV).is_none_or(|v| v != "0");
    match SPINNING.load(Ordering::Relaxed) {
        ON if !env_on => Some("1"),
        OFF if env_on => Some("0"),
        _ => None,
    }
}

/// How many spins this process has begun (each wait spins at most once). Stays put while
/// spinning is off.
pub fn spins_begun() -> u64 {
    SPINS_BEGUN.load(Ordering::Relaxed)
}

/// How a spin ended, as the policy learns from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpinOutcome {
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
    /// Nanoseconds after `epoch` until which nobody spins (0: never contended).
    until_ns: AtomicU64,
    /// Cooldowns in a row, each started within `RECENT` of the previous one's end.
    streak: AtomicU32,
}

impl CpuContention {
    /// No contention known.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            until_ns: AtomicU64::new(0),
            streak: AtomicU32::new(0),
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

    /// A spin found the CPU contended at `now`: turn spinning off for a cooldown, longer if
    /// the previous one ended recently.
    fn contended(&self, now: Instant) {
        let now_ns = self.ns(now);
        let last_end = self.until_ns.load(Ordering::Relaxed);
        let recent = last_end != 0 && now_ns < last_end.saturating_add(RECENT.as_nanos() as u64);
        let streak = if recent {
            self.streak
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            self.streak.store(0, Ordering::Relaxed);
            0
        };
        let cooldown = COOLDOWN_MIN
            .saturating_mul(COOLDOWN_GROWTH.saturating_pow(streak.min(16)))
            .min(COOLDOWN_MAX);
        let until = now_ns.saturating_add(cooldown.as_nanos() as u64);
        self.until_ns.fetch_max(until, Ordering::Relaxed);
    }
}

/// Spin-or-park bookkeeping of one waiter (a receiver, a handle's waits, a pool side).
#[derive(Debug, Clone, Default)]
pub struct SpinPolicy {
    /// Missed spins since the last one that caught data.
    misses: u32,
    /// Waits still to park without spinning.
    skip: u32,
    /// How the last spin ended.
    #[cfg(test)]
    last: Option<SpinOutcome>,
}

impl SpinPolicy {
    /// A policy that spins at its first wait.
    pub const fn new() -> Self {
        Self {
            misses: 0,
            skip: 0,
            #[cfg(test)]
            last: None,
        }
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
    pub(crate) fn spun(&mut self, how: SpinOutcome, now: Instant, cpu: &CpuContention) {
        #[cfg(test)]
        {
            self.last = Some(how);
        }
        match how {
            SpinOutcome::Contended => cpu.contended(now),
            SpinOutcome::Caught(after) if after <= SPIN_BUDGET => {
                self.misses = 0;
                self.skip = 0;
            }
            SpinOutcome::Caught(_) | SpinOutcome::Missed => {
                self.misses = self.misses.saturating_add(1);
                self.skip = 1u32
                    .checked_shl(self.misses)
                    .map_or(MAX_SKIP, |n| (n - 1).min(MAX_SKIP));
            }
        }
    }

    /// A wait that parked without spinning ([`Spun::Park`] with an instant) ended after
    /// `waited`.
    pub fn parked(&mut self, waited: Duration) {
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

    /// How the last spin ended, if there was one.
    #[cfg(test)]
    pub(crate) fn last(&self) -> Option<SpinOutcome> {
        self.last
    }
}

/// What a [`spin`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Spun<T> {
    /// The attempt succeeded while spinning.
    Caught(T),
    /// Park. With `Some(since)` the policy chose not to spin at `since`: once the parked wait
    /// ends, report how long it took with [`SpinPolicy::parked`]. With `None` (a spin that
    /// missed or was cut short, a peer on this CPU, a deadline already gone) there is nothing
    /// to report.
    Park(Option<Instant>),
}

/// How long a step tries busily (a `spin_loop` hint between tries), after its yield: a
/// shared-memory try costs a few loads, so dozens of them; a try that is a system call (a
/// socket read) takes about this long, so one.
pub const BUSY_STEP: Duration = Duration::from_micros(1);

/// Most looks a busy step makes between two readings of the clock.
const MAX_LOOKS_PER_READ: u32 = 16;

/// When a busy step reads the clock: after its first look, then after 2, 4, 8, ... more, up to
/// [`MAX_LOOKS_PER_READ`] looks between two readings. A look at shared memory costs a few loads,
/// less than the clock (`clock_gettime`, some tens of nanoseconds), so reading it after each
/// look spent most of a spin in the clock and delayed the look that sees the data; a look that
/// is a system call (a socket read) takes about [`BUSY_STEP`] itself, and the reading after the
/// first look still ends the step after it, as before.
#[derive(Debug)]
struct ClockStride {
    /// Looks to make before the next reading.
    until_read: u32,
    /// Looks between the last two readings.
    stride: u32,
}

impl ClockStride {
    const fn new() -> Self {
        Self {
            until_read: 1,
            stride: 1,
        }
    }

    /// A look found nothing: whether to read the clock now.
    fn look(&mut self) -> bool {
        self.until_read -= 1;
        if self.until_read > 0 {
            return false;
        }
        self.stride = (self.stride * 2).min(MAX_LOOKS_PER_READ);
        self.until_read = self.stride;
        true
    }
}

/// The driver loop: spins on `attempt` as `policy` says, and tells the policy how it went.
///
/// For a waiter that has just tried and found nothing: if the policy wants a spin, tries `attempt`
/// in steps (a yield, unless `peer_apart` says the peer runs on another CPU, then busy tries for
/// [`BUSY_STEP`]) until it succeeds, [`SPIN_BUDGET`] or `deadline` has passed, or a step is slow
/// (the CPU is contended). `peer_apart`, when the waiter can tell, says whether the peer runs on
/// another CPU now; it is asked before the spin and after each step, and a `false` ends the spin
/// without counting it.
///
/// Blocks the thread for up to the budget: async code calls [`poll_spin`] instead.
pub fn spin<T>(
    policy: &mut SpinPolicy,
    deadline: Option<Instant>,
    peer_apart: Option<&mut dyn FnMut() -> bool>,
    attempt: impl FnMut() -> Option<T>,
) -> Spun<T> {
    spin_in(Contention::Process, policy, deadline, peer_apart, attempt)
}

/// Whose record of CPU contention a spin obeys and feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contention {
    /// The process's record, shared by all its waits: a wait for a peer's answer (a pipe's
    /// reply, an event, a condition's notification), where a slow yield means a busy process
    /// shares the CPU.
    Process,
    /// None kept beyond this spin: a wait among contenders (a lock, a permit, a barrier's
    /// parties, a queue's producers and consumers). With more contenders than CPUs a yield
    /// mostly runs another contender, which says nothing of the CPU the process's answer-waits
    /// will run on; so such spins neither stop for nor start the process's cooldown (the
    /// waiter's own backoff still learns from them).
    Unshared,
}

/// [`spin`], with the contention record `scope` says.
pub(crate) fn spin_in<T>(
    scope: Contention,
    policy: &mut SpinPolicy,
    deadline: Option<Instant>,
    mut peer_apart: Option<&mut dyn FnMut() -> bool>,
    mut attempt: impl FnMut() -> Option<T>,
) -> Spun<T> {
    if !spinning() {
        return Spun::Park(None);
    }
    let start = Instant::now();
    if deadline.is_some_and(|d| start >= d) {
        return Spun::Park(None);
    }
    if let Some(apart) = peer_apart.as_mut()
        && !(several_cpus() && apart())
    {
        return Spun::Park(None);
    }
    // With the peer's CPU known, the spin never yields, so the process's contention record
    // (which is about yields that run someone else) neither stops it nor learns from it.
    let unshared;
    let cpu = match (&peer_apart, scope) {
        (None, Contention::Process) => CpuContention::global(),
        _ => {
            unshared = CpuContention::new();
            &unshared
        }
    };
    let Some(budget) = policy.begin_wait(start, cpu) else {
        return Spun::Park(Some(start));
    };
    SPINS_BEGUN.fetch_add(1, Ordering::Relaxed);
    let end = deadline.map_or(start + budget, |d| d.min(start + budget));
    let mut step_start = start;
    loop {
        let tries_from = match peer_apart {
            Some(_) => step_start,
            None => {
                std::thread::yield_now();
                Instant::now()
            }
        };
        // The clock is read after some looks only (see `ClockStride`); a look that catches the
        // data goes on with the last reading, so no clock read delays the catch.
        let mut now = tries_from;
        let mut stride = ClockStride::new();
        let got = loop {
            let got = attempt();
            if got.is_some() {
                break got;
            }
            if stride.look() {
                now = Instant::now();
                if now - tries_from >= BUSY_STEP {
                    break got;
                }
            }
            std::hint::spin_loop();
        };
        let how = if now - step_start > SLOW_STEP {
            SpinOutcome::Contended
        } else if got.is_some() {
            SpinOutcome::Caught(now - start)
        } else if now >= end {
            SpinOutcome::Missed
        } else if peer_apart.as_mut().is_some_and(|apart| !apart()) {
            // The peer came onto this CPU: the cut-short spin says nothing of its pace.
            return Spun::Park(None);
        } else {
            step_start = now;
            continue;
        };
        policy.spun(how, now, cpu);
        return got.map_or(Spun::Park(None), Spun::Caught);
    }
}

/// The async form of [`spin`], for use inside `poll`: the one rule for async waits (see the
/// [module docs](self)). `Pending` when the task's cooperative budget is spent: the task has
/// been woken to run again after its neighbours, and the wait should not begin before then.
/// A spin that catches the data spends a unit of the budget.
pub fn poll_spin<T>(
    cx: &mut std::task::Context<'_>,
    policy: &mut SpinPolicy,
    deadline: Option<Instant>,
    peer_apart: Option<&mut dyn FnMut() -> bool>,
    attempt: impl FnMut() -> Option<T>,
) -> std::task::Poll<Spun<T>> {
    poll_spin_in(
        Contention::Process,
        cx,
        policy,
        deadline,
        peer_apart,
        attempt,
    )
}

/// [`poll_spin`], with the contention record `scope` says.
pub(crate) fn poll_spin_in<T>(
    scope: Contention,
    cx: &mut std::task::Context<'_>,
    policy: &mut SpinPolicy,
    deadline: Option<Instant>,
    peer_apart: Option<&mut dyn FnMut() -> bool>,
    attempt: impl FnMut() -> Option<T>,
) -> std::task::Poll<Spun<T>> {
    let std::task::Poll::Ready(coop) = tokio::task::coop::poll_proceed(cx) else {
        return std::task::Poll::Pending;
    };
    let spun = spin_in(scope, policy, deadline, peer_apart, attempt);
    if let Spun::Caught(_) = spun {
        coop.made_progress();
    }
    std::task::Poll::Ready(spun)
}

/// Whether this process may run on more than one CPU (its affinity and cgroup quota allow it):
/// with one, a peer can never run alongside.
pub(crate) fn several_cpus() -> bool {
    static SEVERAL: OnceLock<bool> = OnceLock::new();
    *SEVERAL.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
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
    fn spin(policy: &mut SpinPolicy, cpu: &CpuContention, how: SpinOutcome) {
        let now = Instant::now();
        assert_eq!(policy.begin_wait(now, cpu), Some(SPIN_BUDGET));
        policy.spun(how, now, cpu);
    }

    #[test]
    fn spins_at_first_and_while_spins_catch_data() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        for _ in 0..1000 {
            spin(&mut policy, &cpu, SpinOutcome::Caught(SHORT));
        }
    }

    #[test]
    fn missed_spins_back_off_exponentially_up_to_the_cap() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        let mut skipped = Vec::new();
        for _ in 0..12 {
            spin(&mut policy, &cpu, SpinOutcome::Missed);
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
            ..SpinPolicy::new()
        };
        policy.spun(SpinOutcome::Missed, Instant::now(), &cpu);
        policy.spun(SpinOutcome::Missed, Instant::now(), &cpu);
        assert_eq!(policy.skip, MAX_SKIP);
    }

    #[test]
    fn a_caught_spin_forgets_misses() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        for _ in 0..6 {
            spin(&mut policy, &cpu, SpinOutcome::Missed);
            parks_before_next_spin(&mut policy, &cpu, LONG);
        }
        spin(&mut policy, &cpu, SpinOutcome::Caught(SHORT));
        assert!(policy.spins_next());
        // The next miss starts the backoff from the beginning.
        spin(&mut policy, &cpu, SpinOutcome::Missed);
        assert_eq!(parks_before_next_spin(&mut policy, &cpu, LONG), 1);
    }

    #[test]
    fn a_catch_after_the_budget_is_a_miss() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        spin(&mut policy, &cpu, SpinOutcome::Caught(SPIN_BUDGET));
        assert!(policy.spins_next(), "caught just in time");
        spin(&mut policy, &cpu, SpinOutcome::Caught(SPIN_BUDGET + SHORT));
        assert_eq!(policy.misses(), 1);
        assert_eq!(parks_before_next_spin(&mut policy, &cpu, LONG), 1);
    }

    #[test]
    fn short_parked_waits_bring_spinning_back_soon() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        for _ in 0..20 {
            spin(&mut policy, &cpu, SpinOutcome::Missed);
            parks_before_next_spin(&mut policy, &cpu, LONG);
        }
        // Fully backed off: long waits keep it parking for MAX_SKIP waits...
        spin(&mut policy, &cpu, SpinOutcome::Missed);
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
        policy.spun(SpinOutcome::Missed, Instant::now(), &cpu);
        policy.spun(SpinOutcome::Missed, Instant::now(), &cpu);
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
                    policy.spun(SpinOutcome::Missed, now, &cpu);
                }
                None => policy.parked(LONG),
            }
        }
        assert!(spins <= 8 + waits / (MAX_SKIP + 1) + 1, "{spins} spins");
    }

    /// Contention turns spinning off for every receiver of the process until the cooldown
    /// ends; found again soon after, it makes the next cooldown four times longer, up to the
    /// cap, whatever quick spins happened in between.
    #[test]
    fn contention_turns_spinning_off_for_a_growing_cooldown() {
        let cpu = CpuContention::new();
        let mut a = SpinPolicy::new();
        let mut b = SpinPolicy::new();
        let t0 = Instant::now();
        assert!(a.begin_wait(t0, &cpu).is_some());
        a.spun(SpinOutcome::Contended, t0, &cpu);
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
            b.spun(SpinOutcome::Caught(SHORT), after, &cpu);
            let later = after + RECENT / 2;
            assert_eq!(
                a.begin_wait(later, &cpu),
                Some(SPIN_BUDGET),
                "round {round}"
            );
            a.spun(SpinOutcome::Contended, later, &cpu);
            start = later;
            expected = (expected * COOLDOWN_GROWTH).min(COOLDOWN_MAX);
        }
        assert_eq!(expected, COOLDOWN_MAX);
    }

    #[test]
    fn a_quiet_spell_brings_the_shortest_cooldown_back() {
        let cpu = CpuContention::new();
        let mut policy = SpinPolicy::new();
        let mut now = Instant::now();
        for _ in 0..5 {
            policy.spun(SpinOutcome::Contended, now, &cpu);
            now += COOLDOWN_MAX;
        }
        assert!(!cpu.cooling(now + RECENT));
        // Within RECENT of the last cooldown's end: longer again.
        policy.spun(
            SpinOutcome::Contended,
            now + RECENT - Duration::from_millis(1),
            &cpu,
        );
        assert!(cpu.cooling(now + RECENT + COOLDOWN_MIN));
        // After a quiet RECENT: the shortest.
        let quiet = now + RECENT + COOLDOWN_MAX + RECENT;
        policy.spun(SpinOutcome::Contended, quiet, &cpu);
        assert!(cpu.cooling(quiet + COOLDOWN_MIN - Duration::from_nanos(1)));
        assert!(!cpu.cooling(quiet + COOLDOWN_MIN));
    }

    /// Looks before each reading of the clock in a busy step: one, then twice as many each
    /// time up to the cap, so a step of cheap looks reads the clock a few times, a step whose
    /// first look is slow still ends after it.
    #[test]
    fn the_clock_is_read_after_the_first_look_then_ever_more_rarely() {
        let mut stride = ClockStride::new();
        let readings: Vec<u32> = (1..=200).filter(|_| stride.look()).collect();
        let mut want = vec![1, 3, 7, 15];
        while let Some(&last) = want.last()
            && last + MAX_LOOKS_PER_READ <= 200
        {
            want.push(last + MAX_LOOKS_PER_READ);
        }
        assert_eq!(readings, want);
    }

    /// A measurement, not a check (run it with `--ignored --nocapture` in release): how many
    /// looks a spin that catches nothing makes in its budget, i.e. how often a busy spin sees
    /// the word it waits on. Compare builds by this figure, not by any bound.
    #[test]
    #[ignore = "a measurement: prints looks per missed spin"]
    fn looks_per_missed_spin() {
        let word = AtomicU64::new(0);
        let mut counts = Vec::new();
        for _ in 0..200 {
            let mut policy = SpinPolicy::new();
            let mut looks = 0u64;
            let mut apart = || true;
            let spun = spin_in(
                Contention::Unshared,
                &mut policy,
                None,
                Some(&mut apart),
                || {
                    looks += 1;
                    (word.load(Ordering::Acquire) != 0).then_some(())
                },
            );
            assert_eq!(spun, Spun::Park(None));
            counts.push(looks);
        }
        counts.sort_unstable();
        println!(
            "looks per missed spin of {SPIN_BUDGET:?}: min {} median {} max {}",
            counts[0],
            counts[counts.len() / 2],
            counts[counts.len() - 1]
        );
    }

    /// Under a permanently contended CPU, spins (each costing a slow yield) become rare: one per
    /// `COOLDOWN_MAX` once the cooldown has grown.
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
                policy.spun(SpinOutcome::Contended, now, &cpu);
            }
            now += Duration::from_micros(20);
        }
        // Spins at 0, 5 ms, 25, 105 and 425 ms, then one per 0.8 s.
        assert!(spins <= 5 + 60_000 / 800, "{spins} spins");
    }
}
