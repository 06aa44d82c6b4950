//! `Lock` and `RLock` across real processes: exact counters under contention, timeouts, a
//! holder killed with SIGKILL, cancellation, handles sent through a pipe to a running process.
//!
//! Behaviours follow CPython's `_test_multiprocessing.py` (`_TestLock`: lock/try-lock/release,
//! RLock re-entry and release by a non-owner) plus what Python lacks (owner death, async).

use std::task::Poll;
use std::time::{Duration, Instant};

use futures::poll;
use multiproc::error::{LockTimeoutError, ReleaseError, TryLockError};
use multiproc::pipe::{self, Duplex};
use multiproc::{Event, Lock, LockGuard, RLock, SharedMemory, spawn};
use multiproc_suite::within;

/// Adds `n` to a non-atomic counter in `mem` under `lock`, yielding inside the critical section
/// so that a broken lock would lose updates.
async fn add_under_lock((lock, mem, n): (Lock, SharedMemory, u32)) -> u32 {
    for _ in 0..n {
        let _guard = lock.lock().await.unwrap();
        let mut buf = [0u8; 8];
        mem.read(0, &mut buf);
        let v = u64::from_ne_bytes(buf);
        tokio::task::yield_now().await;
        mem.write(0, &(v + 1).to_ne_bytes());
    }
    n
}

fn counter(mem: &SharedMemory) -> u64 {
    let mut buf = [0u8; 8];
    mem.read(0, &mut buf);
    u64::from_ne_bytes(buf)
}

#[tokio::test]
async fn counter_is_exact_with_two_processes() {
    let lock = Lock::new().unwrap();
    let mem = SharedMemory::new(8).unwrap();
    let a = spawn((lock.clone(), mem.clone(), 300), add_under_lock);
    let b = spawn((lock.clone(), mem.clone(), 300), add_under_lock);
    assert_eq!(within("child a", a).await.unwrap(), 300);
    assert_eq!(within("child b", b).await.unwrap(), 300);
    assert_eq!(counter(&mem), 600);
    assert!(!lock.is_locked());
}

#[tokio::test]
async fn counter_is_exact_with_eight_processes_and_the_parent() {
    let lock = Lock::new().unwrap();
    let mem = SharedMemory::new(8).unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| spawn((lock.clone(), mem.clone(), 100), add_under_lock))
        .collect();
    add_under_lock((lock.clone(), mem.clone(), 100)).await;
    for child in children {
        assert_eq!(within("child", child).await.unwrap(), 100);
    }
    assert_eq!(counter(&mem), 900);
}

#[tokio::test]
async fn blocking_lock_in_a_sync_child() {
    let lock = Lock::new().unwrap();
    let mem = SharedMemory::new(8).unwrap();
    let child = spawn(
        (lock.clone(), mem.clone()),
        |(lock, mem): (Lock, SharedMemory)| {
            for _ in 0..200 {
                let _g = lock.blocking_lock().unwrap();
                let v = counter(&mem);
                std::thread::yield_now();
                mem.write(0, &(v + 1).to_ne_bytes());
            }
        },
    );
    add_under_lock((lock.clone(), mem.clone(), 200)).await;
    within("sync child", child).await.unwrap();
    assert_eq!(counter(&mem), 400);
}

#[tokio::test]
async fn try_lock_and_timeout_see_a_lock_held_by_another_process() {
    let lock = Lock::new().unwrap();
    let guard = lock.try_lock().unwrap();
    let child = spawn(lock.clone(), |lock: Lock| async move {
        let busy = matches!(lock.try_lock(), Err(TryLockError::WouldBlock));
        let start = Instant::now();
        let timed_out = matches!(
            lock.lock_timeout(Duration::from_millis(100)).await,
            Err(LockTimeoutError::Timeout)
        );
        let not_early = start.elapsed() >= Duration::from_millis(100);
        let zero = Instant::now();
        let zero_timed_out = lock.lock_timeout(Duration::ZERO).await.is_err();
        let zero_fast = zero.elapsed() < Duration::from_secs(5);
        (
            busy,
            timed_out,
            not_early,
            zero_timed_out && zero_fast,
            lock.owner_pid(),
        )
    });
    let (busy, timed_out, not_early, zero, owner) = within("child", child).await.unwrap();
    assert!(busy && timed_out && not_early && zero);
    assert_eq!(owner, Some(std::process::id()));
    drop(guard);
    assert!(!lock.is_locked());
}

#[tokio::test]
async fn waiter_in_another_process_is_woken_by_unlock() {
    let lock = Lock::new().unwrap();
    let waiting = Event::new().unwrap();
    let guard = lock.lock().await.unwrap();
    let child = spawn(
        (lock.clone(), waiting.clone()),
        |(lock, waiting): (Lock, Event)| async move {
            waiting.set();
            let g = lock.lock().await.unwrap();
            g.owner_died()
        },
    );
    within("child waiting", waiting.wait()).await.unwrap();
    drop(guard);
    assert!(!within("child", child).await.unwrap());
}

fn hold_forever((lock, locked): (Lock, Event)) {
    let _g = lock.blocking_lock().unwrap();
    locked.set();
    std::thread::sleep(Duration::from_secs(3600));
}

#[tokio::test]
async fn holder_killed_with_sigkill_hands_the_lock_over_with_owner_died() {
    let lock = Lock::new().unwrap();
    let locked = Event::new().unwrap();
    let mut child = spawn((lock.clone(), locked.clone()), hold_forever);
    within("child holds the lock", locked.wait()).await.unwrap();
    let pid = child.pid().unwrap();
    assert_eq!(lock.owner_pid(), Some(pid));
    assert!(lock.try_lock().is_err());
    child.kill().unwrap();
    // The child is not reaped yet (a zombie): the waiter must still see it as dead.
    let guard = within("lock after holder death", lock.lock())
        .await
        .unwrap();
    assert!(guard.owner_died());
    drop(guard);
    let err = within("killed child", child.join()).await.unwrap_err();
    assert!(err.is_killed(), "{err}");
    let again = lock.try_lock().unwrap();
    assert!(!again.owner_died());
}

#[tokio::test]
async fn timed_lock_returns_on_time_while_holder_lives_and_after_it_dies() {
    let lock = Lock::new().unwrap();
    let locked = Event::new().unwrap();
    let mut child = spawn((lock.clone(), locked.clone()), hold_forever);
    within("child holds the lock", locked.wait()).await.unwrap();
    let start = Instant::now();
    let err = lock
        .lock_timeout(Duration::from_millis(120))
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    assert!(start.elapsed() >= Duration::from_millis(120));
    child.kill().unwrap();
    let g = within(
        "timed lock after death",
        lock.lock_timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert!(g.owner_died());
    let _ = within("child", child.join()).await;
}

#[tokio::test]
async fn cancelled_lock_future_loses_no_wake_up() {
    let lock = Lock::new().unwrap();
    let guard = lock.lock().await.unwrap();
    let mut cancelled = Box::pin(lock.lock());
    assert!(poll!(&mut cancelled).is_pending());
    // A second waiter, in another process, waits meanwhile.
    let waiting = Event::new().unwrap();
    let child = spawn(
        (lock.clone(), waiting.clone()),
        |(lock, waiting): (Lock, Event)| async move {
            waiting.set();
            let _g = lock.lock().await.unwrap();
            true
        },
    );
    within("child waiting", waiting.wait()).await.unwrap();
    drop(cancelled);
    drop(guard);
    assert!(within("other waiter gets the lock", child).await.unwrap());
    // The cancelled future left nothing behind.
    let _again = within("lock again", lock.lock()).await.unwrap();
}

/// Takes the lock, says so on `locked`, and releases it once `release` is set.
async fn hold_until((lock, locked, release): (Lock, Event, Event)) -> bool {
    let guard = lock.lock().await.unwrap();
    locked.set();
    release.wait().await.unwrap();
    drop(guard);
    true
}

#[tokio::test]
async fn lock_future_acts_only_when_polled_and_its_fast_path_is_cancel_safe() {
    let lock = Lock::new().unwrap();
    // Never polled: takes nothing.
    drop(lock.lock());
    assert!(!lock.is_locked());
    // First poll of a free lock: ready at once, with the ordinary guard, which releases it.
    let guard: LockGuard<'_> = match poll!(Box::pin(lock.lock())) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("a free lock was not taken at the first poll"),
    };
    assert!(!guard.owner_died());
    assert!(lock.is_locked());
    drop(guard);
    assert!(!lock.is_locked());
    // Created while another process holds the lock, first polled once that process released
    // it: the first poll takes it.
    let (locked, release) = (Event::new().unwrap(), Event::new().unwrap());
    let mut early = Box::pin(lock.lock());
    let child = spawn((lock.clone(), locked.clone(), release.clone()), hold_until);
    within("child holds the lock", locked.wait()).await.unwrap();
    assert!(lock.try_lock().is_err());
    release.set();
    assert!(within("child", child).await.unwrap());
    let guard = match poll!(&mut early) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("a released lock was not taken at the first poll"),
    };
    assert!(!guard.owner_died());
    drop(guard);
    drop(early);
    assert!(!lock.is_locked());
    // A future that went on to wait and was dropped leaves the lock free for the next taker.
    let (locked, release) = (Event::new().unwrap(), Event::new().unwrap());
    let child = spawn((lock.clone(), locked.clone(), release.clone()), hold_until);
    within("child holds the lock again", locked.wait())
        .await
        .unwrap();
    let mut waiting = Box::pin(lock.lock());
    assert!(poll!(&mut waiting).is_pending());
    drop(waiting);
    release.set();
    assert!(within("child", child).await.unwrap());
    assert!(!lock.is_locked());
    drop(
        within("lock after the cancelled wait", lock.lock())
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn timed_out_waiter_does_not_block_later_unlocks() {
    let lock = Lock::new().unwrap();
    let g = lock.lock().await.unwrap();
    let other = lock.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(20), other.lock())
            .await
            .is_err()
    );
    let task = tokio::spawn(async move { other.lock().await.map(|g| g.owner_died()).unwrap() });
    drop(g);
    assert!(!within("waiter", task).await.unwrap());
}

async fn try_received_lock(mut end: Duplex<bool, Lock>) -> usize {
    let mut n = 0;
    while let Some(lock) = end.recv().await.unwrap() {
        let free = lock.try_lock().is_ok();
        end.send(free).await.unwrap();
        n += 1;
    }
    n
}

#[tokio::test]
async fn lock_sent_through_a_pipe_to_a_running_process() {
    let (mut here, there) = pipe::duplex::<Lock, bool>().unwrap();
    let child = spawn(there, try_received_lock);
    let lock = Lock::new().unwrap();
    let guard = lock.lock().await.unwrap();
    here.send(lock.clone()).await.unwrap();
    assert_eq!(within("held", here.recv()).await.unwrap(), Some(false));
    drop(guard);
    here.send(lock.clone()).await.unwrap();
    assert_eq!(within("free", here.recv()).await.unwrap(), Some(true));
    drop(here);
    assert_eq!(within("child", child).await.unwrap(), 2);
}

#[tokio::test]
async fn rlock_reentry_and_foreign_release_across_processes() {
    let rlock = RLock::new().unwrap();
    let outer = rlock.lock().await.unwrap();
    let inner = rlock.try_lock().unwrap();
    assert_eq!(rlock.depth(), 2);
    let checked = Event::new().unwrap();
    let child = spawn(
        (rlock.clone(), checked.clone()),
        |(rlock, checked): (RLock, Event)| async move {
            let foreign = rlock.release() == Err(ReleaseError::NotOwner);
            let busy = rlock.try_lock().is_err();
            checked.set();
            // Re-entry inside the child once it owns the lock.
            let g1 = rlock.lock_timeout(Duration::from_secs(30)).await.unwrap();
            let g2 = rlock.lock().await.unwrap();
            let depth = rlock.depth();
            drop(g2);
            drop(g1);
            (foreign, busy, depth, rlock.is_locked())
        },
    );
    // Another task of this process is not the owner either.
    let other = rlock.clone();
    let (release, try_lock) =
        tokio::spawn(async move { (other.release(), other.try_lock().is_err()) })
            .await
            .unwrap();
    assert_eq!(release, Err(ReleaseError::NotOwner));
    assert!(try_lock);
    within("child checked", checked.wait()).await.unwrap();
    drop(inner);
    assert!(rlock.is_locked());
    drop(outer);
    let (foreign, busy, depth, locked) = within("child", child).await.unwrap();
    assert!(foreign);
    assert!(busy);
    assert_eq!(depth, 2);
    assert!(!locked);
}

fn hold_rlock_forever((lock, locked): (RLock, Event)) {
    let _a = lock.blocking_lock().unwrap();
    let _b = lock.blocking_lock().unwrap();
    locked.set();
    std::thread::sleep(Duration::from_secs(3600));
}

#[tokio::test]
async fn rlock_holder_killed_hands_over_with_owner_died() {
    let lock = RLock::new().unwrap();
    let locked = Event::new().unwrap();
    let mut child = spawn((lock.clone(), locked.clone()), hold_rlock_forever);
    within("child holds the rlock", locked.wait())
        .await
        .unwrap();
    child.kill().unwrap();
    let g = within("rlock after death", lock.lock()).await.unwrap();
    assert!(g.owner_died());
    assert_eq!(lock.depth(), 1);
    drop(g);
    assert!(!lock.is_locked());
    let _ = within("child", child.join()).await;
}

#[test]
fn handles_and_futures_are_send_and_sync() {
    fn check<T: Send + Sync>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Lock>();
    send_sync::<multiproc::LockGuard<'static>>();
    send_sync::<RLock>();
    send_sync::<multiproc::RLockGuard<'static>>();
    send_sync::<multiproc::Semaphore>();
    send_sync::<multiproc::BoundedSemaphore>();
    send_sync::<multiproc::SemaphorePermit<'static>>();
    send_sync::<Event>();
    send_sync::<multiproc::Condition>();
    send_sync::<multiproc::ConditionGuard<'static>>();
    send_sync::<multiproc::Barrier>();
    send_sync::<multiproc::SharedValue<u64>>();
    send_sync::<multiproc::SharedValueGuard<'static, u64>>();
    send_sync::<multiproc::SharedArray<f64>>();
    send_sync::<multiproc::SharedArrayGuard<'static, f64>>();
    send_sync::<SharedMemory>();

    let lock = Lock::new().unwrap();
    check(&lock.lock());
    check(&lock.lock_timeout(Duration::ZERO));
    let rlock = RLock::new().unwrap();
    check(&rlock.lock());
    check(&rlock.lock_timeout(Duration::ZERO));
    let sem = multiproc::Semaphore::new(1).unwrap();
    check(&sem.acquire());
    check(&sem.acquire_timeout(Duration::ZERO));
    let bsem = multiproc::BoundedSemaphore::new(1).unwrap();
    check(&bsem.acquire());
    check(&bsem.acquire_timeout(Duration::ZERO));
    let event = Event::new().unwrap();
    check(&event.wait());
    check(&event.wait_timeout(Duration::ZERO));
    let cond = multiproc::Condition::new().unwrap();
    check(&cond.lock());
    let guard = cond.try_lock().unwrap();
    check(&guard.wait());
    let guard = cond.try_lock().unwrap();
    check(&guard.wait_timeout(Duration::ZERO));
    let guard = cond.try_lock().unwrap();
    check(&guard.wait_for(|| true));
    let barrier = multiproc::Barrier::new(1).unwrap();
    check(&barrier.wait());
    check(&barrier.wait_timeout(Duration::ZERO));
    let value = multiproc::SharedValue::new(1u8).unwrap();
    check(&value.lock());
    let array = multiproc::SharedArray::<u8>::new(1).unwrap();
    check(&array.lock());
}

/// Locks `lock` over and over until `stop` is set, holding it across a yield each time;
/// returns how many times it got it. Every single wait is bounded: a wait of more than
/// `STARVED` is starvation, reported as a panic.
async fn contend((lock, go, stop): (Lock, Event, Event)) -> u64 {
    const STARVED: Duration = Duration::from_secs(20);
    go.wait_timeout(STARVED).await.unwrap();
    let mut count = 0;
    while !stop.is_set() {
        let guard = lock
            .lock_timeout(STARVED)
            .await
            .expect("a waiter starved: no turn within 20 s");
        count += 1;
        tokio::task::yield_now().await;
        drop(guard);
    }
    count
}

#[tokio::test]
async fn every_contending_process_makes_progress() {
    const PROCESSES: usize = 6;
    let lock = Lock::new().unwrap();
    let (go, stop) = (Event::new().unwrap(), Event::new().unwrap());
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| spawn((lock.clone(), go.clone(), stop.clone()), contend))
        .collect();
    go.set();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.set();
    let mut counts = Vec::new();
    for child in children {
        counts.push(within("contending child", child).await.unwrap());
    }
    let mean = counts.iter().sum::<u64>() / PROCESSES as u64;
    eprintln!("turns per process: {counts:?}");
    // A lower bound only: each process had at least 1% of the mean number of turns.
    for (i, &n) in counts.iter().enumerate() {
        assert!(n >= 1 && n >= mean / 100, "process {i} starved: {counts:?}");
    }
}
