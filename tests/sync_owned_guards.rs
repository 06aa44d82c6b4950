//! Owned guards (`lock_owned`, `acquire_owned`): a guard that moves into a spawned task holds the
//! primitive for every process until that task drops it.

use std::time::Duration;

use multiproc::{BoundedSemaphore, Lock, OwnedLockGuard, OwnedSemaphorePermit, Semaphore, spawn};
use multiproc_suite::within;

fn is_static_send<T: Send + 'static>(_: &T) {}

/// In a child: whether the lock can be taken within `wait`.
fn child_can_lock(lock: Lock, wait: Duration) -> bool {
    lock.blocking_lock_timeout(wait).is_ok()
}

#[tokio::test]
async fn an_owned_lock_guard_moves_into_a_task_and_holds_the_lock_for_other_processes() {
    let lock = Lock::new().unwrap();
    let guard: OwnedLockGuard = within("lock_owned", lock.clone().lock_owned())
        .await
        .unwrap();
    is_static_send(&guard);
    assert!(!guard.owner_died());
    assert!(guard.lock().same_lock(&lock));
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = release_rx.await;
        drop(guard);
    });
    // Held by the task: another process cannot take it.
    let held = within(
        "child tries while the task holds it",
        spawn((lock.clone(), Duration::from_millis(100)), |(l, d)| {
            child_can_lock(l, d)
        }),
    )
    .await
    .unwrap();
    assert!(
        !held,
        "a child took the lock while the task's owned guard held it"
    );
    assert!(lock.clone().try_lock_owned().is_err());
    release_tx.send(()).unwrap();
    within("task", task).await.unwrap();
    let free = within(
        "child tries after the task dropped the guard",
        spawn((lock.clone(), Duration::from_secs(30)), |(l, d)| {
            child_can_lock(l, d)
        }),
    )
    .await
    .unwrap();
    assert!(
        free,
        "the owned guard did not release the lock when dropped"
    );
    let again = lock.clone().try_lock_owned().unwrap();
    drop(again);
    assert!(!lock.is_locked());
}

#[tokio::test]
async fn owned_permits_move_into_tasks_and_return_when_dropped() {
    let sem = Semaphore::new(2).unwrap();
    let a: OwnedSemaphorePermit = within("acquire_owned", sem.clone().acquire_owned())
        .await
        .unwrap();
    is_static_send(&a);
    let b = sem.clone().try_acquire_owned().unwrap();
    assert_eq!(sem.available_permits(), 0);
    assert!(sem.clone().try_acquire_owned().is_err());
    // A child sees none available while the tasks hold them.
    let seen = within(
        "child reads the count",
        spawn(sem.clone(), |s: Semaphore| s.available_permits()),
    )
    .await
    .unwrap();
    assert_eq!(seen, 0);
    let tasks = [
        tokio::spawn(async move { drop(a) }),
        tokio::spawn(async move { drop(b) }),
    ];
    for task in tasks {
        within("task", task).await.unwrap();
    }
    assert_eq!(sem.available_permits(), 2);

    // A forgotten owned permit stays taken.
    sem.clone().try_acquire_owned().unwrap().forget();
    assert_eq!(sem.available_permits(), 1);

    let bounded = BoundedSemaphore::new(1).unwrap();
    let p = within("bounded acquire_owned", bounded.clone().acquire_owned())
        .await
        .unwrap();
    assert_eq!(bounded.available_permits(), 0);
    drop(p);
    assert_eq!(bounded.available_permits(), 1);
    assert!(!bounded.over_released());
}
