//! `Barrier` across real processes: each index once per phase, abort, reset, timeout.
//!
//! Behaviours follow CPython's `_test_multiprocessing.py` (`_TestBarrier`: `test_barrier`,
//! `test_wait_return`, `test_abort`, `test_reset`, `test_timeout`).

use std::time::{Duration, Instant};

use futures::poll;
use multiproc::error::BarrierWaitError;
use multiproc::{Barrier, spawn};
use multiproc_suite::within;

async fn phases((barrier, n): (Barrier, usize)) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = barrier.wait_timeout(Duration::from_secs(60)).await.unwrap();
        out.push((r.index(), r.is_leader()));
    }
    out
}

#[tokio::test]
async fn each_index_once_per_phase_with_one_leader() {
    let barrier = Barrier::new(4).unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| spawn((barrier.clone(), 3), phases))
        .collect();
    let mine = phases((barrier.clone(), 3)).await;
    let mut all = vec![mine];
    for child in children {
        all.push(within("child", child).await.unwrap());
    }
    for phase in 0..3 {
        let mut indices: Vec<usize> = all.iter().map(|p| p[phase].0).collect();
        indices.sort_unstable();
        assert_eq!(indices, [0, 1, 2, 3], "phase {phase}");
        let leaders: Vec<usize> = all
            .iter()
            .filter(|p| p[phase].1)
            .map(|p| p[phase].0)
            .collect();
        assert_eq!(leaders, [3]);
    }
    assert_eq!(barrier.n_waiting(), 0);
    assert!(!barrier.is_broken());
}

fn wait_expect_broken(barrier: Barrier) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        matches!(
            barrier.wait_timeout(Duration::from_secs(60)).await,
            Err(BarrierWaitError::Broken)
        )
    })
}

#[tokio::test]
async fn abort_breaks_waiters_in_other_processes_and_reset_repairs() {
    let barrier = Barrier::new(3).unwrap();
    let child = spawn(barrier.clone(), wait_expect_broken);
    within("child arrives", async {
        while barrier.n_waiting() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    barrier.abort();
    assert!(within("child", child).await.unwrap());
    assert!(barrier.is_broken());
    assert!(matches!(
        within("broken wait", barrier.wait()).await,
        Err(BarrierWaitError::Broken)
    ));
    barrier.reset();
    assert!(!barrier.is_broken());
    let children: Vec<_> = (0..2)
        .map(|_| spawn((barrier.clone(), 1), phases))
        .collect();
    within("phase after reset", barrier.wait()).await.unwrap();
    for child in children {
        within("child", child).await.unwrap();
    }
}

#[tokio::test]
async fn reset_breaks_the_phase_in_progress() {
    let barrier = Barrier::new(3).unwrap();
    let child = spawn(barrier.clone(), wait_expect_broken);
    within("child arrives", async {
        while barrier.n_waiting() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    barrier.reset();
    assert!(within("child", child).await.unwrap());
    assert!(!barrier.is_broken());
    assert_eq!(barrier.n_waiting(), 0);
}

#[tokio::test]
async fn timeout_breaks_the_barrier_for_everyone() {
    let barrier = Barrier::new(3).unwrap();
    let child = spawn(barrier.clone(), wait_expect_broken);
    within("child arrives", async {
        while barrier.n_waiting() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let start = Instant::now();
    let err = barrier
        .wait_timeout(Duration::from_millis(60))
        .await
        .unwrap_err();
    assert!(matches!(err, BarrierWaitError::Timeout), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(60));
    assert!(within("child", child).await.unwrap());
    assert!(barrier.is_broken());
}

#[tokio::test]
async fn cancelled_wait_breaks_the_barrier() {
    let barrier = Barrier::new(2).unwrap();
    let mut cancelled = Box::pin(barrier.wait());
    assert!(poll!(&mut cancelled).is_pending());
    drop(cancelled);
    assert!(barrier.is_broken());
    barrier.reset();
    let other = barrier.clone();
    let task = tokio::spawn(async move { other.wait().await.unwrap().index() });
    let mine = within("wait", barrier.wait()).await.unwrap().index();
    assert_eq!(mine + within("task", task).await.unwrap(), 1);
}

#[tokio::test]
async fn single_party_barrier_never_waits() {
    let barrier = Barrier::new(1).unwrap();
    for _ in 0..3 {
        let r = barrier.wait_timeout(Duration::ZERO).await.unwrap();
        assert_eq!((r.index(), r.is_leader()), (0, true));
    }
}
