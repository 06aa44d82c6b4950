//! `Semaphore` and `BoundedSemaphore` across real processes: the limit is never exceeded,
//! timeouts, over-release, permits of killed holders come back (however many), cancellation.
//!
//! Behaviours follow CPython's `_test_multiprocessing.py` (`_TestSemaphore`: `test_semaphore`,
//! `test_bounded_semaphore`, `test_timeout`), plus permit recovery, which Python lacks.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::poll;
use multiproc::error::{ReleaseError, TryAcquireError};
use multiproc::{BoundedSemaphore, Event, Semaphore, SharedMemory, spawn};
use multiproc_suite::{eventually, within};

/// Enters the semaphore `rounds` times, recording how many are inside at once (offset 0) and the
/// peak (offset 8) in `mem`.
async fn enter((sem, mem, rounds): (Semaphore, SharedMemory, u32)) -> u32 {
    let inside = mem.region().atomic_u64(0);
    let peak = mem.region().atomic_u64(8);
    for _ in 0..rounds {
        let _permit = sem.acquire().await.unwrap();
        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1)).await;
        inside.fetch_sub(1, Ordering::SeqCst);
    }
    rounds
}

#[tokio::test]
async fn limit_is_never_exceeded_by_eight_processes() {
    let sem = Semaphore::new(2).unwrap();
    let mem = SharedMemory::new(16).unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| spawn((sem.clone(), mem.clone(), 25), enter))
        .collect();
    for child in children {
        assert_eq!(within("child", child).await.unwrap(), 25);
    }
    let peak = mem.region().atomic_u64(8).load(Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "peak {peak}");
    assert_eq!(mem.region().atomic_u64(0).load(Ordering::SeqCst), 0);
    assert_eq!(sem.available_permits(), 2);
}

#[tokio::test]
async fn semaphore_counts_like_python() {
    let sem = Semaphore::new(2).unwrap();
    let a = sem.try_acquire().unwrap();
    assert_eq!(sem.available_permits(), 1);
    let b = sem.acquire().await.unwrap();
    assert_eq!(sem.try_acquire().unwrap_err(), TryAcquireError::NoPermits);
    drop(a);
    b.forget();
    assert_eq!(sem.available_permits(), 1);
    sem.release().unwrap();
    sem.add_permits(3).unwrap();
    assert_eq!(sem.available_permits(), 5);
    assert_eq!(
        sem.add_permits(Semaphore::MAX_PERMITS),
        Err(ReleaseError::TooManyReleases)
    );
    assert_eq!(sem.available_permits(), 5);
}

#[tokio::test]
async fn release_in_another_process_wakes_a_waiter() {
    let sem = Semaphore::new(0).unwrap();
    let child = spawn(sem.clone(), |sem: Semaphore| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        sem.release().unwrap();
    });
    let permit = within("acquire", sem.acquire()).await.unwrap();
    permit.forget();
    within("child", child).await.unwrap();
    assert_eq!(sem.available_permits(), 0);
}

#[tokio::test]
async fn timeouts_never_return_early_and_zero_returns_at_once() {
    let sem = Semaphore::new(0).unwrap();
    let child = spawn(sem.clone(), |sem: Semaphore| async move {
        let start = Instant::now();
        let timed_out = sem
            .acquire_timeout(Duration::from_millis(100))
            .await
            .unwrap_err()
            .is_timeout();
        let waited = start.elapsed() >= Duration::from_millis(100);
        let blocking_start = Instant::now();
        let blocking = sem
            .blocking_acquire_timeout(Duration::from_millis(50))
            .unwrap_err()
            .is_timeout();
        let blocking_waited = blocking_start.elapsed() >= Duration::from_millis(50);
        (timed_out, waited, blocking, blocking_waited)
    });
    assert_eq!(
        within("child", child).await.unwrap(),
        (true, true, true, true)
    );
    assert!(
        sem.acquire_timeout(Duration::ZERO)
            .await
            .unwrap_err()
            .is_timeout()
    );
    sem.release().unwrap();
    sem.acquire_timeout(Duration::ZERO).await.unwrap().forget();
}

#[tokio::test]
async fn bounded_semaphore_rejects_over_release_in_any_process() {
    let sem = BoundedSemaphore::new(2).unwrap();
    assert_eq!(sem.bound(), 2);
    sem.acquire().await.unwrap().forget();
    let child = spawn(sem.clone(), |sem: BoundedSemaphore| {
        let first = sem.release().is_ok();
        let second = sem.release() == Err(ReleaseError::TooManyReleases);
        (first, second, sem.available_permits())
    });
    assert_eq!(within("child", child).await.unwrap(), (true, true, 2));
    assert!(sem.over_released());
    assert_eq!(sem.available_permits(), 2);
}

#[tokio::test]
async fn bounded_permit_dropped_after_unmatched_release_stays_at_bound() {
    let sem = BoundedSemaphore::new(1).unwrap();
    let permit = sem.acquire().await.unwrap();
    sem.release().unwrap();
    assert!(!sem.over_released());
    drop(permit);
    assert_eq!(sem.available_permits(), 1);
    assert!(sem.over_released());
}

fn hold_permits_forever((sem, held): (Semaphore, Event)) {
    let a = sem.blocking_acquire().unwrap();
    let b = sem.blocking_acquire().unwrap();
    held.set();
    std::thread::sleep(Duration::from_secs(3600));
    drop((a, b));
}

#[tokio::test]
async fn permits_of_a_killed_holder_come_back() {
    let sem = Semaphore::new(3).unwrap();
    let held = Event::new().unwrap();
    let mut child = spawn((sem.clone(), held.clone()), hold_permits_forever);
    within("child holds two permits", held.wait())
        .await
        .unwrap();
    let mine = sem.try_acquire().unwrap();
    assert_eq!(sem.available_permits(), 0);
    // A waiter that started before the death gets a permit once the holder is killed.
    let waiter = {
        let sem = sem.clone();
        tokio::spawn(async move {
            sem.acquire_timeout(Duration::from_secs(60))
                .await
                .map(|p| p.forget())
                .is_ok()
        })
    };
    child.kill().unwrap();
    assert!(within("waiter", waiter).await.unwrap());
    drop(mine);
    let err = within("child", child.join()).await.unwrap_err();
    assert!(err.is_killed(), "{err}");
    // Two recovered, one taken by the waiter, one returned by `mine`.
    assert_eq!(sem.available_permits(), 2);
}

#[tokio::test]
async fn try_acquire_recovers_permits_of_a_dead_holder() {
    let sem = Semaphore::new(1).unwrap();
    let held = Event::new().unwrap();
    let mut child = spawn(
        (sem.clone(), held.clone()),
        |(sem, held): (Semaphore, Event)| {
            sem.blocking_acquire().unwrap().forget(); // forgotten: never comes back
            let _kept = sem.blocking_acquire_timeout(Duration::from_secs(60));
            held.set();
            std::thread::sleep(Duration::from_secs(3600));
        },
    );
    sem.release().unwrap();
    within("child holds a permit", held.wait()).await.unwrap();
    assert!(sem.try_acquire().is_err());
    child.kill().unwrap();
    let _ = within("child", child.join()).await;
    let p = sem.try_acquire().unwrap();
    drop(p);
    assert_eq!(sem.available_permits(), 1);
}

#[tokio::test]
async fn cancelled_acquire_leaks_no_permit_and_loses_no_wake_up() {
    let sem = Semaphore::new(1).unwrap();
    let permit = sem.acquire().await.unwrap();
    let mut cancelled = Box::pin(sem.acquire());
    assert!(poll!(&mut cancelled).is_pending());
    let mut timed = Box::pin(sem.acquire_timeout(Duration::from_secs(60)));
    assert!(poll!(&mut timed).is_pending());
    let waiting = Event::new().unwrap();
    let child = spawn(
        (sem.clone(), waiting.clone()),
        |(sem, waiting): (Semaphore, Event)| async move {
            waiting.set();
            sem.acquire().await.is_ok()
        },
    );
    within("child waiting", waiting.wait()).await.unwrap();
    drop(cancelled);
    drop(timed);
    drop(permit);
    assert!(within("child gets the permit", child).await.unwrap());
    assert_eq!(sem.available_permits(), 1);
}

/// Takes one permit, counts itself in `mem` (offset 0), then holds the permit until killed.
fn hold_one_forever((sem, mem): (Semaphore, SharedMemory)) {
    let _permit = sem.blocking_acquire().unwrap();
    mem.region().atomic_u64(0).fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3600));
}

#[tokio::test]
async fn permits_of_150_killed_holders_all_come_back() {
    let sem = Semaphore::new(200).unwrap();
    let mem = SharedMemory::new(8).unwrap();
    let holders: Vec<_> = (0..150)
        .map(|_| spawn((sem.clone(), mem.clone()), hold_one_forever))
        .collect();
    let holding = || mem.region().atomic_u64(0).load(Ordering::SeqCst);
    assert!(
        eventually(|| holding() == 150).await,
        "only {} of 150 children took a permit",
        holding()
    );
    assert_eq!(sem.available_permits(), 50);
    for child in &holders {
        child.kill().unwrap();
    }
    for mut child in holders {
        let err = within("killed holder", child.join()).await.unwrap_err();
        assert!(err.is_killed(), "{err}");
    }
    // Every permit comes back: all 200 can be taken again.
    let mut permits = Vec::new();
    for i in 0..200 {
        let permit = sem
            .acquire_timeout(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("permit {i} of 200: {e}"));
        permits.push(permit);
    }
    drop(permits);
    assert_eq!(sem.available_permits(), 200);
}
