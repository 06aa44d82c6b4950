//! The synchronization workloads (`lock_uncontended`, `lock_contended_2p`, `semaphore_limit`,
//! `event_pingpong`) for `multiproc`, `multiproc-blocking` and `raw-os`.
//!
//! The `raw-os` floor for the locks is a process-shared futex mutex in a shared page
//! (Drepper's "mutex 3": CAS 0->1 to lock, `fetch_sub` to unlock, `FUTEX_WAIT`/`FUTEX_WAKE` only
//! when contended, no spinning, like a default glibc mutex), for the semaphore a futex counting
//! semaphore with a waiter count, and for the event ping-pong two blocking eventfds.
//!
//! Multi-process workloads start their children with `multiproc::spawn` (not timed): every child
//! waits at a `Barrier` with the parent, the parent's clock starts when it passes the barrier and
//! stops when every child has put its report on a `Queue` (the same for every implementation).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use multiproc::core::SharedFd;
use multiproc::{Barrier, Event, JoinHandle, Lock, Queue, Semaphore, SharedMemory, SharedValue};
use rustix::event::EventfdFlags;
use rustix::io::Errno;
use rustix::thread::futex;
use serde::{Deserialize, Serialize};

use crate::{Impl, Sample, Workload, other};

/// How long any wait for a child (barrier, report) may take before the trial fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(120);

/// Processes of `semaphore_limit`, and its permits.
const SEM_PROCESSES: u64 = 8;
const SEM_PERMITS: usize = 2;

/// Runs one trial of a synchronization workload.
pub(crate) fn run(
    rt: &tokio::runtime::Runtime,
    w: Workload,
    imp: Impl,
    n: u64,
) -> io::Result<Sample> {
    let blocking = match imp {
        Impl::Multiproc | Impl::RawOs => false,
        Impl::MultiprocBlocking => true,
        _ => return Err(io::Error::other(format!("no {} variant", imp.name()))),
    };
    let raw = imp == Impl::RawOs;
    match w {
        Workload::LockUncontended if raw => Ok(raw_lock_uncontended(n)?.into()),
        Workload::LockUncontended => Ok(rt.block_on(lock_uncontended(n))?.into()),
        Workload::LockContended2p => rt
            .block_on(lock_contended(n, raw, blocking))
            .map(Sample::from),
        Workload::SemaphoreLimit => rt.block_on(semaphore_limit(n, raw)),
        Workload::EventPingpong => rt
            .block_on(event_pingpong(n, raw, blocking))
            .map(Sample::from),
        _ => Err(io::Error::other("not a synchronization workload")),
    }
}

// ---- the raw-os floor: futexes in a shared page ----

/// Locks a futex mutex word (0 free, 1 locked, 2 locked with possible waiters).
fn futex_lock(word: &AtomicU32) {
    if word
        .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
    {
        return;
    }
    let mut c = word.swap(2, Ordering::Acquire);
    while c != 0 {
        // EAGAIN (the word changed) and EINTR just mean: look again.
        let _ = futex::wait(word, futex::Flags::empty(), 2, None);
        c = word.swap(2, Ordering::Acquire);
    }
}

/// Unlocks a futex mutex word, waking one waiter if there may be one.
fn futex_unlock(word: &AtomicU32) {
    if word.fetch_sub(1, Ordering::Release) != 1 {
        word.store(0, Ordering::Release);
        let _ = futex::wake(word, futex::Flags::empty(), 1);
    }
}

/// Takes a permit of a futex semaphore (`count` permits, `waiters` sleepers).
fn futex_sem_acquire(count: &AtomicU32, waiters: &AtomicU32) {
    loop {
        let c = count.load(Ordering::Relaxed);
        if c > 0 {
            if count
                .compare_exchange_weak(c, c - 1, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
            continue;
        }
        waiters.fetch_add(1, Ordering::SeqCst);
        let _ = futex::wait(count, futex::Flags::empty(), 0, None);
        waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Gives a permit back, waking one sleeper if there is one.
fn futex_sem_release(count: &AtomicU32, waiters: &AtomicU32) {
    count.fetch_add(1, Ordering::SeqCst);
    if waiters.load(Ordering::SeqCst) > 0 {
        let _ = futex::wake(count, futex::Flags::empty(), 1);
    }
}

// ---- lock_uncontended ----

/// `lock().await` then drop the guard, `n` times, in one process: ns per pair.
async fn lock_uncontended(n: u64) -> io::Result<f64> {
    let lock = Lock::new().map_err(other)?;
    for _ in 0..n / 10 + 1 {
        drop(lock.lock().await.map_err(other)?);
    }
    let t0 = Instant::now();
    for _ in 0..n {
        drop(lock.lock().await.map_err(other)?);
    }
    let elapsed = t0.elapsed();
    if lock.is_locked() {
        return Err(io::Error::other("lock still held after the loop"));
    }
    Ok(elapsed.as_secs_f64() * 1e9 / n as f64)
}

/// The floor: lock and unlock a futex mutex in a shared page, `n` times.
fn raw_lock_uncontended(n: u64) -> io::Result<f64> {
    let shm = SharedMemory::new(64).map_err(other)?;
    let word = shm.region().atomic_u32(0);
    for _ in 0..n / 10 + 1 {
        futex_lock(word);
        futex_unlock(word);
    }
    let t0 = Instant::now();
    for _ in 0..n {
        futex_lock(word);
        futex_unlock(word);
    }
    let elapsed = t0.elapsed();
    if word.load(Ordering::SeqCst) != 0 {
        return Err(io::Error::other("futex lock still held after the loop"));
    }
    Ok(elapsed.as_secs_f64() * 1e9 / n as f64)
}

// ---- running a gang of children against the clock ----

/// A gang child's report: its result, and when it passed the start barrier and when it
/// finished, in nanoseconds of the wall clock (one clock for every process on the machine).
#[derive(Serialize, Deserialize)]
pub(crate) struct Timed<R> {
    value: R,
    start_ns: u64,
    end_ns: u64,
}

impl<R> Timed<R> {
    /// `value`, for work that began at `start_ns` ([`clock_ns`]) and ends now.
    pub(crate) fn since(start_ns: u64, value: R) -> Self {
        Timed {
            value,
            start_ns,
            end_ns: clock_ns(),
        }
    }
}

/// Nanoseconds of the wall clock, comparable between processes (`Instant` is not sent).
pub(crate) fn clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Waits at `barrier` with the children, collects one report per child from `reports`, then
/// joins the children. Returns the seconds from the first child's start to the last child's
/// end, as the children saw them (not the parent: pinned to one CPU, the parent may pass the
/// barrier after the children have done their work), and the reports.
pub(crate) async fn timed_gang<R>(
    barrier: &Barrier,
    reports: &Queue<Result<Timed<R>, String>>,
    children: Vec<JoinHandle<()>>,
) -> io::Result<(f64, Vec<R>)>
where
    R: Serialize + serde::de::DeserializeOwned,
{
    barrier.wait_timeout(PATIENCE).await.map_err(other)?;
    let mut got = Vec::with_capacity(children.len());
    let (mut first, mut last) = (u64::MAX, 0);
    let mut failure = None;
    for _ in 0..children.len() {
        match reports.get_timeout(PATIENCE).await.map_err(other)? {
            Ok(r) => {
                first = first.min(r.start_ns);
                last = last.max(r.end_ns);
                got.push(r.value);
            }
            Err(e) => failure = Some(e),
        }
    }
    for child in children {
        child.await.map_err(other)?;
    }
    match failure {
        Some(e) => Err(io::Error::other(format!("a child failed: {e}"))),
        None if last <= first => Err(io::Error::other("the children's clock did not advance")),
        None => Ok(((last - first) as f64 / 1e9, got)),
    }
}

// ---- lock_contended_2p ----

#[derive(Serialize, Deserialize)]
enum Counter {
    /// `multiproc::SharedValue<u64>` with its `Lock`.
    Mp(SharedValue<u64>),
    /// Futex word at 0, counter at 64.
    Raw(SharedMemory),
}

#[derive(Serialize, Deserialize)]
struct LockArgs {
    counter: Counter,
    blocking: bool,
    ops: u64,
    barrier: Barrier,
    reports: Queue<Result<Timed<u64>, String>>,
}

async fn lock_child(a: LockArgs) {
    let r = lock_child_body(&a).await;
    let _ = a.reports.put(r).await;
}

async fn lock_child_body(a: &LockArgs) -> Result<Timed<u64>, String> {
    a.barrier
        .wait_timeout(PATIENCE)
        .await
        .map_err(|e| e.to_string())?;
    let start = clock_ns();
    match &a.counter {
        Counter::Mp(counter) if a.blocking => {
            for _ in 0..a.ops {
                let mut g = counter.blocking_lock().map_err(|e| e.to_string())?;
                *g += 1;
            }
        }
        Counter::Mp(counter) => {
            for _ in 0..a.ops {
                let mut g = counter.lock().await.map_err(|e| e.to_string())?;
                *g += 1;
            }
        }
        Counter::Raw(shm) => {
            let word = shm.region().atomic_u32(0);
            let value = shm.region().atomic_u64(64);
            for _ in 0..a.ops {
                futex_lock(word);
                // A plain read-modify-write under the lock, as the others do.
                let v = value.load(Ordering::Relaxed);
                value.store(v + 1, Ordering::Relaxed);
                futex_unlock(word);
            }
        }
    }
    Ok(Timed::since(start, a.ops))
}

/// Two processes, `n / 2` locked increments each: total increments per second. The final count
/// must be exactly `n`.
async fn lock_contended(n: u64, raw: bool, blocking: bool) -> io::Result<f64> {
    let per = n / 2;
    let barrier = Barrier::new(3).map_err(other)?;
    let reports: Queue<Result<Timed<u64>, String>> = Queue::new()?;
    let shm = SharedMemory::new(128).map_err(other)?;
    let value = SharedValue::new(0u64).map_err(other)?;
    let children = (0..2)
        .map(|_| {
            let counter = if raw {
                Counter::Raw(shm.clone())
            } else {
                Counter::Mp(value.clone())
            };
            let args = LockArgs {
                counter,
                blocking,
                ops: per,
                barrier: barrier.clone(),
                reports: reports.clone(),
            };
            multiproc::spawn(args, lock_child)
        })
        .collect();
    let (secs, _) = timed_gang(&barrier, &reports, children).await?;
    let total = if raw {
        shm.region().atomic_u64(64).load(Ordering::SeqCst)
    } else {
        value.get()
    };
    if total != 2 * per {
        return Err(io::Error::other(format!(
            "lock_contended_2p: the counter is {total}, expected {}: mutual exclusion failed",
            2 * per
        )));
    }
    Ok((2 * per) as f64 / secs)
}

// ---- semaphore_limit ----

/// Offsets in the semaphore workload's shared page.
const HOLDERS: usize = 0; // u64: current holders
const PEAK: usize = 8; // u64: most holders seen at once
const RAW_COUNT: usize = 64; // u32: the futex semaphore's permits
const RAW_WAITERS: usize = 68; // u32: its sleepers

#[derive(Serialize, Deserialize)]
struct SemArgs {
    /// `None`: the futex semaphore in `shm`.
    sem: Option<Semaphore>,
    shm: SharedMemory,
    ops: u64,
    barrier: Barrier,
    reports: Queue<Result<Timed<u64>, String>>,
}

/// Records one more holder (and the peak); undone by [`leave`].
fn enter(shm: &SharedMemory) {
    let now = shm
        .region()
        .atomic_u64(HOLDERS)
        .fetch_add(1, Ordering::SeqCst)
        + 1;
    shm.region()
        .atomic_u64(PEAK)
        .fetch_max(now, Ordering::SeqCst);
}

fn leave(shm: &SharedMemory) {
    shm.region()
        .atomic_u64(HOLDERS)
        .fetch_sub(1, Ordering::SeqCst);
}

async fn sem_child(a: SemArgs) {
    let r = sem_child_body(&a).await;
    let _ = a.reports.put(r).await;
}

async fn sem_child_body(a: &SemArgs) -> Result<Timed<u64>, String> {
    a.barrier
        .wait_timeout(PATIENCE)
        .await
        .map_err(|e| e.to_string())?;
    let start = clock_ns();
    match &a.sem {
        Some(sem) => {
            for _ in 0..a.ops {
                let permit = sem.acquire().await.map_err(|e| e.to_string())?;
                enter(&a.shm);
                leave(&a.shm);
                drop(permit);
            }
        }
        None => {
            let count = a.shm.region().atomic_u32(RAW_COUNT);
            let waiters = a.shm.region().atomic_u32(RAW_WAITERS);
            for _ in 0..a.ops {
                futex_sem_acquire(count, waiters);
                enter(&a.shm);
                leave(&a.shm);
                futex_sem_release(count, waiters);
            }
        }
    }
    Ok(Timed::since(start, a.ops))
}

/// Eight processes, `n / 8` acquire+release each on a semaphore of 2: operations per second.
/// The peak number of holders must not exceed 2.
async fn semaphore_limit(n: u64, raw: bool) -> io::Result<Sample> {
    let per = n / SEM_PROCESSES;
    let barrier = Barrier::new(SEM_PROCESSES as usize + 1).map_err(other)?;
    let reports: Queue<Result<Timed<u64>, String>> = Queue::new()?;
    let shm = SharedMemory::new(128).map_err(other)?;
    shm.region()
        .atomic_u32(RAW_COUNT)
        .store(SEM_PERMITS as u32, Ordering::SeqCst);
    let sem = if raw {
        None
    } else {
        Some(Semaphore::new(SEM_PERMITS).map_err(other)?)
    };
    let children = (0..SEM_PROCESSES)
        .map(|_| {
            let args = SemArgs {
                sem: sem.clone(),
                shm: shm.clone(),
                ops: per,
                barrier: barrier.clone(),
                reports: reports.clone(),
            };
            multiproc::spawn(args, sem_child)
        })
        .collect();
    let (secs, _) = timed_gang(&barrier, &reports, children).await?;
    let peak = shm.region().atomic_u64(PEAK).load(Ordering::SeqCst);
    let holders = shm.region().atomic_u64(HOLDERS).load(Ordering::SeqCst);
    if peak > SEM_PERMITS as u64 || holders != 0 {
        return Err(io::Error::other(format!(
            "semaphore_limit: {peak} holders at once (limit {SEM_PERMITS}), {holders} left"
        )));
    }
    let permits = match &sem {
        Some(s) => s.available_permits(),
        None => shm.region().atomic_u32(RAW_COUNT).load(Ordering::SeqCst) as usize,
    };
    if permits != SEM_PERMITS {
        return Err(io::Error::other(format!(
            "semaphore_limit: {permits} permits available at the end, expected {SEM_PERMITS}"
        )));
    }
    Ok(Sample {
        value: (per * SEM_PROCESSES) as f64 / secs,
        peak: Some(peak),
    })
}

// ---- event_pingpong ----

#[derive(Serialize, Deserialize)]
enum EventPair {
    Mp {
        e1: Event,
        e2: Event,
    },
    /// Blocking eventfds.
    Raw {
        e1: SharedFd,
        e2: SharedFd,
    },
}

#[derive(Serialize, Deserialize)]
struct EventArgs {
    pair: EventPair,
    blocking: bool,
    rounds: u64,
}

/// Reads an eventfd's counter (blocking until it is non-zero).
fn efd_read(fd: &SharedFd) -> io::Result<()> {
    let mut buf = [0u8; 8];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(8) => return Ok(()),
            Ok(k) => return Err(io::Error::other(format!("eventfd read of {k} bytes"))),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Adds 1 to an eventfd's counter.
fn efd_write(fd: &SharedFd) -> io::Result<()> {
    loop {
        match rustix::io::write(fd, &1u64.to_ne_bytes()) {
            Ok(_) => return Ok(()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Process B: wait for e1, clear it, set e2; `rounds` times.
async fn event_child(a: EventArgs) -> Result<u64, String> {
    match &a.pair {
        EventPair::Mp { e1, e2 } => {
            for _ in 0..a.rounds {
                if a.blocking {
                    e1.blocking_wait().map_err(|e| e.to_string())?;
                } else {
                    e1.wait().await.map_err(|e| e.to_string())?;
                }
                e1.clear();
                e2.set();
            }
        }
        EventPair::Raw { e1, e2 } => {
            for _ in 0..a.rounds {
                efd_read(e1).map_err(|e| e.to_string())?;
                efd_write(e2).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(a.rounds)
}

/// Process A's round: set e1, wait for e2, clear it.
async fn event_round(pair: &EventPair, blocking: bool) -> io::Result<()> {
    match pair {
        EventPair::Mp { e1, e2 } => {
            e1.set();
            if blocking {
                e2.blocking_wait().map_err(other)?;
            } else {
                e2.wait().await.map_err(other)?;
            }
            e2.clear();
        }
        EventPair::Raw { e1, e2 } => {
            efd_write(e1)?;
            efd_read(e2)?;
        }
    }
    Ok(())
}

fn blocking_eventfd() -> io::Result<OwnedFd> {
    Ok(rustix::event::eventfd(0, EventfdFlags::CLOEXEC)?)
}

/// Microseconds per round trip of two events between two processes.
async fn event_pingpong(n: u64, raw: bool, blocking: bool) -> io::Result<f64> {
    let warmup = n / 10 + 1;
    let pair = if raw {
        EventPair::Raw {
            e1: SharedFd::new(blocking_eventfd()?),
            e2: SharedFd::new(blocking_eventfd()?),
        }
    } else {
        EventPair::Mp {
            e1: Event::new().map_err(other)?,
            e2: Event::new().map_err(other)?,
        }
    };
    let theirs = match &pair {
        EventPair::Mp { e1, e2 } => EventPair::Mp {
            e1: e1.clone(),
            e2: e2.clone(),
        },
        EventPair::Raw { e1, e2 } => EventPair::Raw {
            e1: e1.clone(),
            e2: e2.clone(),
        },
    };
    let child = multiproc::spawn(
        EventArgs {
            pair: theirs,
            blocking,
            rounds: warmup + n,
        },
        event_child,
    );
    for _ in 0..warmup {
        event_round(&pair, blocking).await?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        event_round(&pair, blocking).await?;
    }
    let elapsed = t0.elapsed();
    let done = child.await.map_err(other)?.map_err(io::Error::other)?;
    if done != warmup + n {
        return Err(io::Error::other("event child did not finish its rounds"));
    }
    Ok(elapsed.as_secs_f64() * 1e6 / n as f64)
}
