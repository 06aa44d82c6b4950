//! The blocking twins of `Condition` and `Barrier`, for code outside tokio: children here are
//! plain `fn`s with no runtime, and the parent's blocking calls run on threads of their own.

use std::collections::BTreeSet;
use std::time::Duration;

use multiproc::{Barrier, Condition, RLock, SharedValue, spawn};
use multiproc_suite::{within, within_blocking};

/// A sync child: waits (blocking) under the condition until the shared value reaches `target`,
/// then bumps it to `target + 1` and notifies. Gives whether the wait saw the value in time.
fn wait_then_bump((cond, value, target): (Condition, SharedValue<u32>, u32)) -> bool {
    let guard = cond.blocking_lock().unwrap();
    let (guard, seen) = guard
        .blocking_wait_for_timeout(Duration::from_secs(60), || value.get() >= target)
        .unwrap();
    value.set(target + 1);
    guard.notify_all();
    seen
}

#[tokio::test]
async fn blocking_condition_waits_pass_a_value_between_processes() {
    for cond in [
        Condition::new().unwrap(),
        Condition::with_rlock(RLock::new().unwrap()).unwrap(),
    ] {
        let value = SharedValue::new(0u32).unwrap();
        // A chain: child k waits for k, then sets k + 1; the parent starts it with 1.
        let children: Vec<_> = (1..=3)
            .map(|k| spawn((cond.clone(), value.clone(), k), wait_then_bump))
            .collect();
        let (c, v) = (cond.clone(), value.clone());
        let end = within_blocking("parent's blocking wait", move || {
            let guard = c.blocking_lock().unwrap();
            v.set(1);
            guard.notify_all();
            let guard = guard.blocking_wait_for(|| v.get() == 4).unwrap();
            let got = v.get();
            drop(guard);
            got
        })
        .await;
        assert_eq!(end, 4);
        for child in children {
            assert!(within("child", child).await.unwrap());
        }
        // A blocking timed wait with nobody to notify times out and gives the lock back.
        let c = cond.clone();
        let (notified, relocked) = within_blocking("blocking_wait_timeout", move || {
            let guard = c.blocking_lock().unwrap();
            let (guard, notified) = guard
                .blocking_wait_timeout(Duration::from_millis(50))
                .unwrap();
            (notified, guard.owner_died())
        })
        .await;
        assert!(!notified);
        assert!(!relocked);
        assert!(
            cond.try_lock().is_ok(),
            "the lock stayed held after the timed wait"
        );
    }
}

/// A sync child: one party of the barrier; gives its index and whether it led.
fn party(barrier: Barrier) -> (usize, bool) {
    let r = barrier.blocking_wait().unwrap();
    (r.index(), r.is_leader())
}

#[tokio::test]
async fn blocking_barrier_waits_release_every_party_once() {
    let barrier = Barrier::new(3).unwrap();
    let children: Vec<_> = (0..2).map(|_| spawn(barrier.clone(), party)).collect();
    let b = barrier.clone();
    let mine = within_blocking("parent's blocking barrier wait", move || party(b)).await;
    let mut results = vec![mine];
    for child in children {
        results.push(within("party", child).await.unwrap());
    }
    let indices: BTreeSet<usize> = results.iter().map(|r| r.0).collect();
    assert_eq!(indices, BTreeSet::from([0, 1, 2]), "{results:?}");
    assert_eq!(results.iter().filter(|r| r.1).count(), 1, "{results:?}");

    // Too few parties: the blocking timed wait gives up and breaks the barrier.
    let b = barrier.clone();
    let err = within_blocking("blocking_wait_timeout", move || {
        b.blocking_wait_timeout(Duration::from_millis(50))
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(barrier.is_broken());
}
