//! [`Barrier`]: a cross-process rendezvous for a fixed number of parties.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use multiproc_core::wait::spin::Contention;
use multiproc_core::wait::{WaitQueue, deadline_after};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{BarrierWaitError, CreateError};

// Word: generation << 32 | BROKEN | RESET1 | RESET2 | arrived count, where RESET1 says the
// previous generation ended by `reset` and RESET2 the one before it. A waiter of generation g
// that wakes late finds its phase's fate in RESET1 (now g + 1) or RESET2 (now g + 2).
const WORD: usize = 8;
const PARTIES: usize = 16;
const LEN: usize = 64;
const BROKEN: u64 = 1 << 31;
const RESET1: u64 = 1 << 30;
const RESET2: u64 = 1 << 29;
const COUNT: u64 = RESET2 - 1;

/// The word opening the generation after the one in `w`; `by_reset` records how it ended.
fn next_generation(w: u64, by_reset: bool) -> u64 {
    let gen_ = ((w >> 32) + 1) & 0xffff_ffff;
    let mut next = gen_ << 32;
    if by_reset {
        next |= RESET1;
    }
    if w & RESET1 != 0 {
        next |= RESET2;
    }
    next
}

/// What [`Barrier::wait`] returns to each party of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarrierWaitResult {
    index: usize,
    leader: bool,
}

impl BarrierWaitResult {
    /// The party's arrival index, `0..parties`, each given exactly once per phase (Python's
    /// return value).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Whether this party is the phase's leader: the last to arrive (`index == parties - 1`).
    pub fn is_leader(&self) -> bool {
        self.leader
    }
}

/// A barrier shared by any number of processes: Python's `multiprocessing.Barrier`, with
/// `.await`.
///
/// Each phase releases the waiters once `parties` of them have called
/// [`wait`](Self::wait); each gets a distinct [`index`](BarrierWaitResult::index) and the last
/// to arrive is the leader. The barrier then starts the next phase by itself.
///
/// A barrier *breaks* when a waiter times out, is cancelled, fails, or calls
/// [`abort`](Self::abort): every current and future waiter then gets
/// [`BarrierWaitError::Broken`] until [`reset`](Self::reset), which also breaks the phase in
/// progress for its waiters and makes the barrier usable again (Python's semantics).
///
/// # Crash behavior
/// The barrier does not track parties: a process that dies before arriving leaves the others
/// waiting, as in Python. Use [`wait_timeout`](Self::wait_timeout) (or a supervisor calling
/// `abort`) where a party may die.
///
/// # Examples
/// ```
/// use multiproc::Barrier;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let barrier = Barrier::new(2)?;
/// let other = barrier.clone(); // or: pass `barrier` to a child process
/// let task = tokio::spawn(async move { other.wait().await });
/// let mine = barrier.wait().await?;
/// let theirs = task.await??;
/// assert_eq!(mine.index() + theirs.index(), 1);
/// assert!(mine.is_leader() != theirs.is_leader());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    core: WaitQueue,
}

impl Barrier {
    /// Creates a barrier for `parties` parties.
    ///
    /// # Errors
    /// When the process's arenas are full and the kernel refuses a new arena's memfd, mapping or
    /// eventfds (out of memory or descriptors).
    ///
    /// # Panics
    /// When `parties` is zero or above 2^29 - 1.
    pub fn new(parties: usize) -> Result<Self, CreateError> {
        assert!(
            parties > 0 && (parties as u64) <= COUNT,
            "a barrier needs 1..2^29 parties"
        );
        let core = WaitQueue::in_arena()?;
        core.atomic_u64(PARTIES)
            .store(parties as u64, Ordering::SeqCst);
        Ok(Self { core })
    }

    fn word(&self) -> &AtomicU64 {
        self.core.atomic_u64(WORD)
    }

    /// The number of parties of each phase.
    pub fn parties(&self) -> usize {
        self.core.atomic_u64(PARTIES).load(Ordering::SeqCst) as usize
    }

    /// How many parties are waiting in the current phase.
    pub fn n_waiting(&self) -> usize {
        let w = self.word().load(Ordering::SeqCst);
        if w & BROKEN != 0 {
            0
        } else {
            (w & COUNT) as usize
        }
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        self.word().load(Ordering::SeqCst) & BROKEN != 0
    }

    /// Breaks the barrier: every waiter, now and until [`reset`](Self::reset), gets
    /// [`BarrierWaitError::Broken`].
    pub fn abort(&self) {
        self.word().fetch_or(BROKEN, Ordering::SeqCst);
        self.core.wake();
    }

    /// Returns the barrier to its initial state; parties waiting in the current phase get
    /// [`BarrierWaitError::Broken`].
    pub fn reset(&self) {
        let _ = self
            .word()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                Some(next_generation(w, true))
            });
        self.core.wake();
    }

    /// Breaks phase `gen` if it is still current.
    fn break_phase(&self, gen_: u64) {
        let r = self
            .word()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w >> 32 == gen_ && w & BROKEN == 0).then_some(w | BROKEN)
            });
        if r.is_ok() {
            self.core.wake();
        }
    }

    /// How phase `gen` ended for a waiter of it, if it did.
    fn outcome(&self, gen_: u64) -> Option<Result<(), BarrierWaitError>> {
        let w = self.word().load(Ordering::SeqCst);
        let now = w >> 32;
        if now != gen_ {
            let reset = match now.wrapping_sub(gen_) & 0xffff_ffff {
                1 => w & RESET1 != 0,
                2 => w & RESET2 != 0,
                _ => false,
            };
            Some(if reset {
                Err(BarrierWaitError::Broken)
            } else {
                Ok(())
            })
        } else if w & BROKEN != 0 {
            Some(Err(BarrierWaitError::Broken))
        } else {
            None
        }
    }

    /// Arrives; returns the result at once for the leader, else the phase and index to wait on.
    fn arrive(&self) -> Result<Result<BarrierWaitResult, (u64, usize)>, BarrierWaitError> {
        let parties = self.parties() as u64;
        let word = self.word();
        let mut w = word.load(Ordering::SeqCst);
        loop {
            if w & BROKEN != 0 {
                return Err(BarrierWaitError::Broken);
            }
            let gen_ = w >> 32;
            let count = w & COUNT;
            let (new, leader) = if count + 1 >= parties {
                (next_generation(w, false), true)
            } else {
                ((w & !COUNT) | (count + 1), false)
            };
            match word.compare_exchange(w, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) if leader => {
                    self.core.wake();
                    return Ok(Ok(BarrierWaitResult {
                        index: count as usize,
                        leader: true,
                    }));
                }
                Ok(_) => return Ok(Err((gen_, count as usize))),
                Err(cur) => w = cur,
            }
        }
    }

    async fn wait_inner(
        &self,
        deadline: Option<Instant>,
    ) -> Result<BarrierWaitResult, BarrierWaitError> {
        let (gen_, index) = match self.arrive()? {
            Ok(result) => return Ok(result),
            Err(pending) => pending,
        };
        let mut arrival = Arrival {
            barrier: self,
            gen_,
            done: false,
        };
        let got = self
            .core
            .spin_then_wait_until_in(Contention::Unshared, deadline, None, |_| self.outcome(gen_))
            .await;
        arrival.done = true;
        self.finish(gen_, index, got)
    }

    /// The blocking twin of `wait_inner`.
    fn blocking_wait_inner(
        &self,
        deadline: Option<Instant>,
    ) -> Result<BarrierWaitResult, BarrierWaitError> {
        let (gen_, index) = match self.arrive()? {
            Ok(result) => return Ok(result),
            Err(pending) => pending,
        };
        let got = self.core.blocking_spin_then_wait_until_in(
            Contention::Unshared,
            deadline,
            None,
            |_| self.outcome(gen_),
        );
        self.finish(gen_, index, got)
    }

    /// What a non-leader's wait for phase `gen_` came to, as `got` ended it: a wait that ran
    /// out of time or failed breaks the phase.
    fn finish(
        &self,
        gen_: u64,
        index: usize,
        got: std::io::Result<Option<Result<(), BarrierWaitError>>>,
    ) -> Result<BarrierWaitResult, BarrierWaitError> {
        let result = match got {
            Ok(Some(r)) => r,
            Ok(None) => {
                self.break_phase(gen_);
                match self.outcome(gen_) {
                    Some(Ok(())) => Ok(()),
                    _ => Err(BarrierWaitError::Timeout),
                }
            }
            Err(e) => {
                self.break_phase(gen_);
                Err(BarrierWaitError::Failed(e))
            }
        };
        result.map(|()| BarrierWaitResult {
            index,
            leader: false,
        })
    }

    /// The blocking twin of [`wait`](Self::wait), for code outside tokio: blocks the thread.
    /// Do not call it on a runtime thread.
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn blocking_wait(&self) -> Result<BarrierWaitResult, BarrierWaitError> {
        self.blocking_wait_inner(None)
    }

    /// The blocking twin of [`wait_timeout`](Self::wait_timeout).
    ///
    /// # Errors
    /// As [`wait_timeout`](Self::wait_timeout).
    pub fn blocking_wait_timeout(
        &self,
        timeout: Duration,
    ) -> Result<BarrierWaitResult, BarrierWaitError> {
        self.blocking_wait_inner(deadline_after(timeout))
    }

    /// Waits until `parties` parties have arrived.
    ///
    /// # Errors
    /// [`BarrierWaitError::Broken`] when the barrier is or becomes broken, or is reset, while
    /// waiting; [`BarrierWaitError::Failed`] when the process cannot wait (this breaks the
    /// barrier).
    ///
    /// # Cancel safety
    /// **Dropping a pending `wait` breaks the barrier** for every party (as a timeout does in
    /// Python), since this party's arrival cannot be taken back.
    pub async fn wait(&self) -> Result<BarrierWaitResult, BarrierWaitError> {
        self.wait_inner(None).await
    }

    /// As [`wait`](Self::wait), giving up after `timeout`: then this party gets
    /// [`BarrierWaitError::Timeout`] and the barrier is broken for the others.
    ///
    /// # Errors
    /// As [`wait`](Self::wait), plus [`BarrierWaitError::Timeout`].
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait).
    pub async fn wait_timeout(
        &self,
        timeout: Duration,
    ) -> Result<BarrierWaitResult, BarrierWaitError> {
        self.wait_inner(deadline_after(timeout)).await
    }
}

/// Breaks the barrier if a wait ends without an outcome (cancellation).
struct Arrival<'a> {
    barrier: &'a Barrier,
    gen_: u64,
    done: bool,
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.barrier.break_phase(self.gen_);
        }
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.is_broken())
            .finish()
    }
}

impl Serialize for Barrier {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.core.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let core = WaitQueue::deserialize(deserializer)?;
        core.check_len(LEN).map_err(D::Error::custom)?;
        let b = Self { core };
        if b.parties() == 0 || b.parties() as u64 > COUNT {
            return Err(D::Error::custom("received shared state is not a barrier"));
        }
        Ok(b)
    }
}
