//! `Condition` across real processes: `notify(n)` wakes exactly n, `notify_all`, `wait_for`,
//! timeouts, a cancelled waiter passing its notification on, killed waiters (skipped, their
//! places reclaimed), and 200 waiters at once.
//!
//! Behaviours follow CPython's `_test_multiprocessing.py` (`_TestCondition`: `test_notify`,
//! `test_notify_n`, `test_notify_all`, `test_timeout`, `test_waitfor`).

use std::time::{Duration, Instant};

use futures::poll;
use multiproc::{Condition, RLock, SharedValue, spawn};
use multiproc_suite::within;

/// Counters: `[sleeping, woken]`, both changed under the condition's lock.
type Counters = SharedValue<[u32; 2]>;

async fn sleeper((cond, counters): (Condition, Counters)) -> bool {
    let guard = cond.lock().await.unwrap();
    counters.set([counters.get()[0] + 1, counters.get()[1]]);
    let (guard, notified) = guard.wait_timeout(Duration::from_secs(60)).await.unwrap();
    counters.set([counters.get()[0], counters.get()[1] + 1]);
    drop(guard);
    notified
}

/// Waits (polling under the lock, woken by nothing else) until `pred(counters)` holds.
async fn until(cond: &Condition, counters: &Counters, pred: impl Fn([u32; 2]) -> bool) {
    within("counters", async {
        loop {
            {
                let _g = cond.lock().await.unwrap();
                if pred(counters.get()) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

#[tokio::test]
async fn notify_n_wakes_exactly_n_then_notify_all_the_rest() {
    let cond = Condition::new().unwrap();
    let counters = Counters::new([0, 0]).unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| spawn((cond.clone(), counters.clone()), sleeper))
        .collect();
    until(&cond, &counters, |[sleeping, _]| sleeping == 4).await;
    {
        let guard = cond.lock().await.unwrap();
        assert_eq!(guard.notify(1), 1);
    }
    until(&cond, &counters, |[_, woken]| woken == 1).await;
    {
        let guard = cond.lock().await.unwrap();
        assert_eq!(guard.notify(2), 2);
    }
    until(&cond, &counters, |[_, woken]| woken == 3).await;
    {
        let guard = cond.lock().await.unwrap();
        assert_eq!(counters.get()[1], 3, "notify(2) woke more than two");
        assert_eq!(guard.notify_all(), 1);
        assert_eq!(guard.notify_all(), 0);
    }
    for child in children {
        assert!(within("child", child).await.unwrap());
    }
    assert_eq!(counters.get(), [4, 4]);
}

#[tokio::test]
async fn wait_for_predicate_across_processes() {
    let cond = Condition::new().unwrap();
    let value = SharedValue::new(0u32).unwrap();
    let child = spawn(
        (cond.clone(), value.clone()),
        |(cond, value): (Condition, SharedValue<u32>)| async move {
            let guard = cond.lock().await.unwrap();
            let (_guard, ok) = guard
                .wait_for_timeout(Duration::from_secs(60), || value.get() == 3)
                .await
                .unwrap();
            ok
        },
    );
    for i in 1..=3 {
        let guard = cond.lock().await.unwrap();
        value.set(i);
        guard.notify_all();
    }
    assert!(within("child", child).await.unwrap());
}

#[tokio::test]
async fn wait_timeout_returns_false_never_early() {
    let cond = Condition::new().unwrap();
    let guard = cond.lock().await.unwrap();
    let start = Instant::now();
    let (guard, notified) = guard.wait_timeout(Duration::from_millis(80)).await.unwrap();
    assert!(!notified);
    assert!(start.elapsed() >= Duration::from_millis(80));
    let (_guard, ok) = guard
        .wait_for_timeout(Duration::from_millis(30), || false)
        .await
        .unwrap();
    assert!(!ok);
    assert!(start.elapsed() >= Duration::from_millis(110));
}

#[tokio::test]
async fn cancelled_notified_waiter_passes_the_notification_on() {
    let cond = Condition::new().unwrap();
    let counters = Counters::new([0, 0]).unwrap();
    // This process's waiter enqueues first, so notify(1) picks it.
    let guard = cond.lock().await.unwrap();
    let mut cancelled = Box::pin(guard.wait());
    assert!(poll!(&mut cancelled).is_pending());
    let child = spawn((cond.clone(), counters.clone()), sleeper);
    until(&cond, &counters, |[sleeping, _]| sleeping == 1).await;
    {
        let guard = cond.lock().await.unwrap();
        assert_eq!(guard.notify(1), 1);
    }
    // Dropped after being notified: the child must get the notification instead.
    drop(cancelled);
    assert!(within("child", child).await.unwrap());
}

#[tokio::test]
async fn condition_over_a_given_lock() {
    let lock = multiproc::Lock::new().unwrap();
    let cond = Condition::with_lock(lock.clone()).unwrap();
    let guard = cond.lock().await.unwrap();
    assert!(lock.is_locked());
    assert!(cond.get_lock().unwrap().same_lock(&lock));
    drop(guard);
    assert!(!lock.is_locked());
}

#[tokio::test]
async fn condition_over_an_rlock_releases_and_restores_every_level() {
    let rlock = RLock::new().unwrap();
    let cond = Condition::with_rlock(rlock.clone()).unwrap();
    assert!(cond.get_lock().is_none());
    let counters = Counters::new([0, 0]).unwrap();
    let child = spawn(
        (cond.clone(), counters.clone()),
        |(cond, counters): (Condition, Counters)| async move {
            let rlock = cond.get_rlock().unwrap().clone();
            let outer = rlock.lock().await.unwrap();
            let guard = cond.lock().await.unwrap();
            counters.set([1, 0]);
            let (guard, notified) = guard.wait_timeout(Duration::from_secs(60)).await.unwrap();
            let depth_after = rlock.depth();
            drop(guard);
            drop(outer);
            (notified, depth_after, rlock.is_locked())
        },
    );
    until(&cond, &counters, |[sleeping, _]| sleeping == 1).await;
    {
        // The waiter released both of its levels: this process can take the lock.
        let guard = cond.lock().await.unwrap();
        assert_eq!(rlock.depth(), 1);
        assert_eq!(guard.notify(1), 1);
    }
    assert_eq!(within("child", child).await.unwrap(), (true, 2, false));
}

/// Waits in `tasks` tasks of this child at once (each counted in `sleeping` before it waits);
/// returns how many were notified.
async fn many_sleepers((cond, counters, tasks): (Condition, Counters, u32)) -> u32 {
    let waits: Vec<_> = (0..tasks)
        .map(|_| tokio::spawn(sleeper((cond.clone(), counters.clone()))))
        .collect();
    let mut notified = 0;
    for wait in waits {
        notified += u32::from(wait.await.unwrap());
    }
    notified
}

#[tokio::test]
async fn a_killed_waiter_does_not_swallow_a_notification() {
    let cond = Condition::new().unwrap();
    let counters = Counters::new([0, 0]).unwrap();
    // The oldest waiter dies while waiting: notify(1) must skip it.
    let mut doomed = spawn((cond.clone(), counters.clone()), sleeper);
    until(&cond, &counters, |[sleeping, _]| sleeping == 1).await;
    doomed.kill().unwrap();
    let err = within("killed waiter", doomed.join()).await.unwrap_err();
    assert!(err.is_killed(), "{err}");
    let live = spawn((cond.clone(), counters.clone()), sleeper);
    until(&cond, &counters, |[sleeping, _]| sleeping == 2).await;
    {
        let guard = cond.lock().await.unwrap();
        assert_eq!(guard.notify(1), 1);
    }
    assert!(
        within("the live waiter is woken", live).await.unwrap(),
        "the live waiter timed out instead of being notified"
    );
    // The dead waiter's slot is gone: nobody is left to notify.
    let guard = cond.lock().await.unwrap();
    assert_eq!(guard.notify_all(), 0);
}

#[tokio::test]
async fn killed_waiters_leave_no_slot_behind() {
    let cond = Condition::new().unwrap();
    let counters = Counters::new([0, 0]).unwrap();
    // 260 waiters killed mid-wait, ten at a time: more than the 130 that used to fill the
    // table for good, and more than fit in the table's first page, so that a new waiter finds
    // it full of dead ones and must reclaim their places.
    for batch in 1..=26 {
        let doomed: Vec<_> = (0..10)
            .map(|_| spawn((cond.clone(), counters.clone()), sleeper))
            .collect();
        until(&cond, &counters, |[sleeping, _]| sleeping == batch * 10).await;
        for mut child in doomed {
            child.kill().unwrap();
            let err = within("killed waiter", child.join()).await.unwrap_err();
            assert!(err.is_killed(), "{err}");
        }
    }
    // Later waits still find a place, and notifications reach only live waiters.
    let guard = cond.lock().await.unwrap();
    let (guard, notified) = guard
        .wait_timeout(Duration::from_millis(10))
        .await
        .expect("a wait after 260 dead waiters");
    assert!(!notified);
    drop(guard);
    let live = spawn((cond.clone(), counters.clone()), sleeper);
    until(&cond, &counters, |[sleeping, _]| sleeping == 261).await;
    {
        let guard = cond.lock().await.unwrap();
        assert_eq!(guard.notify_all(), 1);
    }
    assert!(within("live waiter", live).await.unwrap());
}

#[tokio::test]
async fn two_hundred_waiters_across_ten_processes() {
    let cond = Condition::new().unwrap();
    let counters = Counters::new([0, 0]).unwrap();
    let children: Vec<_> = (0..10)
        .map(|_| spawn((cond.clone(), counters.clone(), 20), many_sleepers))
        .collect();
    until(&cond, &counters, |[sleeping, _]| sleeping == 200).await;
    {
        let guard = cond.lock().await.unwrap();
        assert_eq!(guard.notify(50), 50);
    }
    until(&cond, &counters, |[_, woken]| woken == 50).await;
    {
        let guard = cond.lock().await.unwrap();
        assert_eq!(counters.get()[1], 50, "notify(50) woke more than fifty");
        assert_eq!(guard.notify_all(), 150);
    }
    let mut notified = 0;
    for child in children {
        notified += within("child", child).await.unwrap();
    }
    assert_eq!(notified, 200);
    assert_eq!(counters.get(), [200, 200]);
}
