//! [`RobustLock`]: the robust owner-word lock under `multiproc-sync`'s `Lock` and the queue's
//! out-of-band lock, as tokio's semaphore is under its `Mutex`.

use std::fmt;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys::identity;
use crate::wait::{LIVENESS_TICK, WaitQueue};

/// Byte offset of the lock word (see [`RobustLock`] for its bits).
const OWNER: usize = 8;
const LEN: usize = 64;

/// Lock word bit: some waiter may be parked, so the release must wake the wait queue. Set by a
/// waiter before it parks, cleared by the release (which then wakes). Bit 63 is never part of
/// an identity (`identity::pid_of` ignores it).
const CONTENDED: u64 = 1 << 63;
/// Lock word bit: a waiter has waited longer than [`STARVE_AFTER`], so a release hands the lock
/// to a starving waiter: the word keeps this bit with no owner, which no fast path takes.
const STARVING: u64 = 1 << 62;
/// The owner's identity in the lock word (0: no owner). Pids stay below 2^22, so an identity
/// (pid in the high half) never reaches bits 62 and 63.
const OWNER_MASK: u64 = !(CONTENDED | STARVING);

/// How long a waiter waits before it asks for a hand-over (Go's `sync.Mutex` switches to its
/// starvation mode after the same time). Without it, a holder that releases and re-takes the
/// lock in a loop keeps it for as long as it runs: parked waiters wake tens of microseconds
/// after a release, long after the holder has taken the lock again.
pub(crate) const STARVE_AFTER: Duration = Duration::from_millis(1);

/// A cross-process lock owned by a *process*, which a waiter takes over when the holder dies.
///
/// The state is one word in a 64-byte [arena](crate::wait::arena) slot: the holder's process
/// identity (pid plus start time, so a recycled pid never passes for the holder), 0 when free,
/// plus two flag bits. Taking a free lock is one compare-and-swap, releasing one nobody waits
/// for one atomic subtraction; no system call.
///
/// Under contention it behaves as glibc's mutex does, not as a spin lock: a waiter spins
/// briefly (the one spin policy, reading the word and trying only when it is free), then sets
/// the word's *contended* bit and parks on a [`WaitQueue`]. A release that finds the bit clears
/// it and wakes the parked waiters; a holder that takes the lock again at once does so without
/// the bit, so it runs a long batch of uncontended operations, each without a system call,
/// until a woken waiter sets the bit again (ownership does not bounce between CPUs on every
/// operation). A waiter that has waited 1 ms (`STARVE_AFTER`) sets the *starving* bit: the next
/// release leaves the lock ownerless but reserved, so the holder's next fast attempt fails and
/// a starving waiter takes it (no waiter starves). A starving waiter that gives up (a cancelled
/// or timed-out wait) withdraws the reservation; one that dies leaves it to the next waiter that
/// starves (or to a [`try_acquire`](Self::try_acquire) with the dead-holder check, when nobody
/// is parked).
///
/// Every [`LIVENESS_TICK`] a parked waiter checks whether the holder died; if so it takes the
/// lock over and is told so (`true`), like a robust mutex's `EOWNERDEAD`.
///
/// A handle: clones in this process and copies sent to other processes (it serializes as its
/// descriptors) are the same lock. It has no guard: the caller pairs each acquisition with one
/// [`release`](Self::release).
///
/// `AT` places the lock in its state: its waiter count at byte `AT`, its owner word at `AT + 8`.
/// A lock of its own has `AT = 0`; state holding a lock among other things (a queue's arena
/// slot, beside its wait queues) makes it with [`over`](Self::over) from a wait queue of that
/// state, and sends the state instead of the lock.
#[derive(Clone)]
pub struct RobustLock<const AT: usize = 0> {
    queue: WaitQueue<AT>,
    /// This process's identity ([`identity::current`]), what the word holds while this process
    /// holds the lock; kept in the handle so the fast paths load it with the word's address
    /// (a handle never leaves its process other than serialized, and is made anew there).
    me: u64,
}

/// One wait's state: when it began, and whether it has reserved the lock (the starving bit).
struct WaitState<'a, const AT: usize> {
    lock: &'a RobustLock<AT>,
    since: OnceLock<Instant>,
    reserved: AtomicBool,
    acquired: AtomicBool,
}

impl<'a, const AT: usize> WaitState<'a, AT> {
    fn new(lock: &'a RobustLock<AT>) -> Self {
        Self {
            lock,
            since: OnceLock::new(),
            reserved: AtomicBool::new(false),
            acquired: AtomicBool::new(false),
        }
    }

    /// One attempt of a waiter; `ticked` also takes the lock from a dead holder.
    fn attempt(&self, ticked: bool) -> Option<bool> {
        let now = Instant::now();
        let since = *self.since.get_or_init(|| now);
        let starving = now.duration_since(since) >= STARVE_AFTER;
        match self.lock.attempt(starving, ticked) {
            Attempt::Taken(died) => {
                self.acquired.store(true, Ordering::Relaxed);
                Some(died)
            }
            Attempt::Reserved => {
                self.reserved.store(true, Ordering::Relaxed);
                None
            }
            Attempt::Busy => None,
        }
    }
}

impl<const AT: usize> Drop for WaitState<'_, AT> {
    fn drop(&mut self) {
        // A starving waiter that gives up withdraws its reservation (another starving waiter
        // sets it again at its next look); a lock it leaves ownerless is free again: wake.
        if self.reserved.load(Ordering::Relaxed) && !self.acquired.load(Ordering::Relaxed) {
            let before = self.lock.word().fetch_and(!STARVING, Ordering::SeqCst);
            if before & STARVING != 0 && before & OWNER_MASK == 0 {
                self.lock.queue.wake();
            }
        }
    }
}

/// What one [`RobustLock::attempt`] came to.
enum Attempt {
    /// Taken; whether the previous holder died holding it.
    Taken(bool),
    /// Not taken; the word says a starving waiter (this one) is owed the lock.
    Reserved,
    /// Not taken; the word's contended bit is set, so the release will wake this waiter.
    Busy,
}

impl RobustLock {
    /// Creates an unlocked lock, in a 64-byte slot of one of the process's
    /// [arenas](crate::wait::arena).
    ///
    /// # Errors
    /// When every arena is full and the kernel refuses a new one's memfd, mapping or eventfds
    /// (out of memory or descriptors).
    pub fn new() -> io::Result<Self> {
        Ok(Self::with(WaitQueue::in_arena()?))
    }
}

impl<const AT: usize> RobustLock<AT> {
    /// The lock whose waiter count is `queue`'s and whose owner word follows it (at `AT + 8` of
    /// the queue's state, zeroed there: unlocked); its waits share the queue's state and
    /// eventfd with the other waits on that state (see [`WaitQueue::beside`]), which see each
    /// other's wake-ups as spurious ones and re-check.
    ///
    /// # Panics
    /// When `AT + 16` is out of the state's bounds or `AT` is not 8-aligned.
    pub fn over(queue: WaitQueue<AT>) -> Self {
        queue.atomic_u64(AT + OWNER);
        Self::with(queue)
    }

    fn with(queue: WaitQueue<AT>) -> Self {
        Self {
            queue,
            me: identity::current(),
        }
    }

    #[inline]
    fn word(&self) -> &AtomicU64 {
        self.queue.atomic_u64(AT + OWNER)
    }

    /// One attempt; with `check_dead`, takes the lock from a dead holder. `Some(died)` when
    /// taken, `died` telling whether the previous holder died holding it. A lock reserved for
    /// a starving waiter is not taken.
    #[inline]
    pub fn try_acquire(&self, check_dead: bool) -> Option<bool> {
        match self
            .word()
            .compare_exchange(0, self.me, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Some(false),
            Err(_) => self.try_acquire_slow(check_dead),
        }
    }

    #[cold]
    #[inline(never)]
    fn try_acquire_slow(&self, check_dead: bool) -> Option<bool> {
        let me = self.me;
        let word = self.word();
        let mut v = word.load(Ordering::SeqCst);
        loop {
            let owner = v & OWNER_MASK;
            // A reserved lock is owed to a starving waiter; with nobody parked (that waiter gave
            // up or died), a checking attempt takes it.
            let reserved = v & STARVING != 0 && !(check_dead && self.queue.waiting() == 0);
            let new = if owner == 0 && !reserved {
                me | (v & CONTENDED)
            } else if check_dead && owner != 0 && owner != me && !identity::is_alive(owner) {
                me | CONTENDED
            } else {
                return None;
            };
            match word.compare_exchange(v, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(owner != 0),
                Err(now) => v = now,
            }
        }
    }

    /// A waiter's attempt: takes a free lock (a reserved one too when `starving`: a reservation
    /// whose waiter died goes to the next waiter to starve), a dead holder's when `ticked`;
    /// otherwise makes sure the word says someone waits (and, when `starving`, that the lock is
    /// owed to a starving waiter), so that the release wakes this waiter. Reads only, while the
    /// word already says so.
    fn attempt(&self, starving: bool, ticked: bool) -> Attempt {
        let me = self.me;
        let word = self.word();
        let mut v = word.load(Ordering::SeqCst);
        loop {
            let owner = v & OWNER_MASK;
            let (new, outcome) = if owner == 0 && (v & STARVING == 0 || starving) {
                // Free (or reserved and ours to take): keep the contended bit for the others.
                (me | (v & CONTENDED), Attempt::Taken(false))
            } else if ticked && owner != 0 && owner != me && !identity::is_alive(owner) {
                (me | CONTENDED, Attempt::Taken(true))
            } else {
                let want = CONTENDED | if starving { STARVING } else { 0 };
                let outcome = if starving {
                    Attempt::Reserved
                } else {
                    Attempt::Busy
                };
                if v & want == want {
                    return outcome; // read-only while nothing changes
                }
                (v | want, outcome)
            };
            match word.compare_exchange(v, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return outcome,
                Err(now) => v = now,
            }
        }
    }

    /// Parks until the lock is taken; whether the previous holder died.
    ///
    /// # Errors
    /// Outside a tokio runtime with I/O and time enabled, or out of descriptors.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped future leaves the lock untouched (a reservation it made for
    /// itself is withdrawn) and takes no wake-up from other waiters (wake-ups are broadcasts).
    pub async fn acquire(&self) -> io::Result<bool> {
        let state = WaitState::new(self);
        self.queue
            .wait_forever(LIVENESS_TICK, |t| state.attempt(t))
            .await
    }

    /// Takes the lock, waiting at most `timeout` (`Ok(None)` then, never early; a zero timeout
    /// tries once).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_timeout(&self, timeout: Duration) -> io::Result<Option<bool>> {
        let state = WaitState::new(self);
        self.queue
            .wait_timeout(timeout, Some(LIVENESS_TICK), |t| state.attempt(t))
            .await
    }

    /// Takes the lock, blocking the thread (spinning first, as the spin policy decides).
    ///
    /// # Errors
    /// When out of descriptors.
    pub fn blocking_acquire(&self) -> io::Result<bool> {
        if let Some(died) = self.try_acquire(false) {
            return Ok(died);
        }
        let state = WaitState::new(self);
        self.queue
            .blocking_wait_forever(LIVENESS_TICK, |t| state.attempt(t))
    }

    /// The blocking twin of [`acquire_timeout`](Self::acquire_timeout).
    ///
    /// # Errors
    /// As [`blocking_acquire`](Self::blocking_acquire).
    pub fn blocking_acquire_timeout(&self, timeout: Duration) -> io::Result<Option<bool>> {
        let state = WaitState::new(self);
        self.queue
            .blocking_wait_timeout(timeout, Some(LIVENESS_TICK), |t| state.attempt(t))
    }

    /// Releases the hold this process has, and wakes the waiters if the word says some may be
    /// parked. The caller must hold the lock: every acquisition pairs with one release (a
    /// guard's drop); debug builds check it.
    ///
    /// One `fetch_sub` of this process's identity, which leaves 0 when no flag is set: exact,
    /// since a holder's word is its identity plus flag bits that no identity uses, and cheaper
    /// than a compare-and-swap (a `lock sub` whose zero flag is the test, as a futex mutex's
    /// unlock is a `lock dec`; measured: `lock cmpxchg` costs about 0.7 ns more per release, a
    /// `lock xadd` returning the old value 0.35 ns more). A word with flags left goes to the
    /// out-of-line rest, which clears the contended flag and wakes.
    #[inline]
    pub fn release(&self) {
        let word = self.word();
        debug_assert_eq!(
            word.load(Ordering::Relaxed) & OWNER_MASK,
            self.me,
            "released a lock this process does not hold"
        );
        if word.fetch_sub(self.me, Ordering::SeqCst) != self.me {
            self.release_marked();
        }
    }

    /// The rest of a release that left flags in the word (the lock is free now): the contended
    /// bit is cleared unless a starving waiter's reservation is there too (which stays, with
    /// the contended bit, so no fast path takes the lock), and the wait queue is woken.
    #[cold]
    #[inline(never)]
    fn release_marked(&self) {
        // Fails when the word is reserved (starving implies contended: both are set together,
        // a withdrawal clears only the starving bit) or someone took the lock meanwhile
        // (keeping the bit): both fine.
        let _ = self
            .word()
            .compare_exchange(CONTENDED, 0, Ordering::SeqCst, Ordering::SeqCst);
        self.queue.wake();
    }

    /// Whether some process holds the lock (possibly a dead one not yet noticed).
    pub fn is_locked(&self) -> bool {
        self.word().load(Ordering::SeqCst) & OWNER_MASK != 0
    }

    /// The pid of the holding process, if any.
    pub fn owner_pid(&self) -> Option<u32> {
        match self.word().load(Ordering::SeqCst) & OWNER_MASK {
            0 => None,
            id => Some(identity::pid_of(id)),
        }
    }

    /// Whether `self` and `other` are the same lock.
    pub fn same_lock(&self, other: &RobustLock<AT>) -> bool {
        self.queue.same_queue(&other.queue)
    }
}

impl<const AT: usize> fmt::Debug for RobustLock<AT> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RobustLock")
            .field("owner_pid", &self.owner_pid())
            .finish()
    }
}

impl Serialize for RobustLock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.queue.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RobustLock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let queue = WaitQueue::deserialize(deserializer)?;
        queue.check_len(LEN).map_err(D::Error::custom)?;
        Ok(Self::with(queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_owner_is_detected_by_try_acquire() {
        let lock = RobustLock::new().unwrap();
        // A holder with our pid but another start time: a recycled pid, i.e. a dead holder.
        lock.word().store(identity::current() ^ 1, Ordering::SeqCst);
        assert!(lock.is_locked());
        let died = lock.try_acquire(true).unwrap();
        assert!(died);
        lock.release();
        assert!(!lock.is_locked());
    }

    #[tokio::test]
    async fn dead_owner_is_detected_by_waiter() {
        let lock = RobustLock::new().unwrap();
        lock.word().store(identity::current() ^ 1, Ordering::SeqCst);
        let died = tokio::time::timeout(Duration::from_secs(10), lock.acquire())
            .await
            .unwrap()
            .unwrap();
        assert!(died);
    }

    #[test]
    fn an_uncontended_release_leaves_a_clean_word() {
        let lock = RobustLock::new().unwrap();
        assert_eq!(lock.try_acquire(false), Some(false));
        assert_eq!(lock.word().load(Ordering::SeqCst), identity::current());
        lock.release();
        assert_eq!(lock.word().load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_waiter_marks_the_word_and_the_release_clears_it() {
        let lock = RobustLock::new().unwrap();
        let me = identity::current();
        assert_eq!(lock.try_acquire(false), Some(false));
        assert!(matches!(lock.attempt(false, false), Attempt::Busy));
        assert_eq!(lock.word().load(Ordering::SeqCst), me | CONTENDED);
        // Marked already: the next look only reads.
        assert!(matches!(lock.attempt(false, false), Attempt::Busy));
        lock.release();
        assert_eq!(lock.word().load(Ordering::SeqCst), 0);
        assert!(!lock.is_locked());
    }

    #[test]
    fn a_reserved_lock_goes_to_a_starving_waiter_only() {
        let lock = RobustLock::new().unwrap();
        let me = identity::current();
        assert_eq!(lock.try_acquire(false), Some(false));
        assert!(matches!(lock.attempt(true, false), Attempt::Reserved));
        assert_eq!(
            lock.word().load(Ordering::SeqCst),
            me | CONTENDED | STARVING
        );
        lock.release();
        // Ownerless but reserved: no fast path and no fresh waiter takes it...
        assert!(!lock.is_locked());
        assert_eq!(lock.owner_pid(), None);
        assert_eq!(lock.try_acquire(false), None);
        assert!(matches!(lock.attempt(false, true), Attempt::Busy));
        // ... a starving one does, and keeps the contended bit for the others.
        assert!(matches!(lock.attempt(true, false), Attempt::Taken(false)));
        assert_eq!(lock.word().load(Ordering::SeqCst), me | CONTENDED);
        lock.release();
        assert_eq!(lock.word().load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_reservation_nobody_waits_for_is_taken_by_a_checking_try() {
        let lock = RobustLock::new().unwrap();
        lock.word().store(STARVING | CONTENDED, Ordering::SeqCst);
        assert_eq!(lock.try_acquire(false), None);
        assert_eq!(lock.try_acquire(true), Some(false));
        lock.release();
        assert!(!lock.is_locked());
    }

    #[test]
    fn a_starving_waiter_that_gives_up_withdraws_its_reservation() {
        let lock = RobustLock::new().unwrap();
        assert_eq!(lock.try_acquire(false), Some(false));
        let got = lock.blocking_acquire_timeout(STARVE_AFTER * 5).unwrap();
        assert_eq!(got, None, "the lock is held");
        lock.release();
        assert_eq!(lock.word().load(Ordering::SeqCst), 0, "nothing left behind");
        assert_eq!(lock.try_acquire(false), Some(false));
        lock.release();
    }

    /// A holder that releases and re-takes the lock in a loop still lets a waiter in: the waiter
    /// starves, reserves the lock, and the holder's next fast attempt fails.
    #[test]
    fn a_waiter_gets_a_turn_from_a_holder_that_relocks_in_a_loop() {
        let lock = RobustLock::new().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let turns = std::sync::Arc::new(AtomicU64::new(0));
        let holder = {
            let (lock, stop, turns) = (lock.clone(), stop.clone(), turns.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    lock.blocking_acquire().unwrap();
                    turns.fetch_add(1, Ordering::Relaxed);
                    lock.release();
                }
            })
        };
        // The holder is looping before the waiter starts (on a loaded machine its thread may
        // otherwise not have run at all by the end).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while turns.load(Ordering::Relaxed) == 0 {
            assert!(std::time::Instant::now() < deadline, "the holder never ran");
            std::thread::yield_now();
        }
        for _ in 0..20 {
            let got = lock
                .blocking_acquire_timeout(Duration::from_secs(30))
                .unwrap();
            assert!(got.is_some(), "a waiter starved for 30 s");
            std::thread::sleep(Duration::from_micros(100));
            lock.release();
        }
        stop.store(true, Ordering::Relaxed);
        holder.join().unwrap();
        assert!(!lock.is_locked());
    }
}
