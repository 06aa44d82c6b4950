//! `JoinableQueue` across real child processes (spawned with `multiproc::spawn`).
//!
//! Follows CPython's `_test_multiprocessing.py` `_TestQueue.test_task_done` (several consumer
//! processes call `task_done`, `join` returns once all are done) and checks what Python leaves
//! undefined: an extra `task_done` is an error, and accounting survives failed puts.

use std::time::Duration;

use multiproc::error::GetError;
use multiproc::{JoinableQueue, spawn};
use multiproc_suite::{blocked_until, within, within_blocking};

async fn worker(queue: JoinableQueue<u32>) -> Vec<u32> {
    let mut done = Vec::new();
    loop {
        match queue.get().await {
            Ok(item) => {
                done.push(item);
                queue.task_done().unwrap();
            }
            Err(GetError::Closed) => return done,
            Err(e) => panic!("worker: {e}"),
        }
    }
}

#[tokio::test]
async fn join_returns_once_every_task_is_done() {
    let queue: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    // Nothing outstanding: join returns at once.
    within("empty join", queue.join()).await.unwrap();
    let workers: Vec<_> = (0..3).map(|_| spawn(queue.clone(), worker)).collect();
    for i in 0..20 {
        queue.put(i).await.unwrap();
    }
    within("join", queue.join()).await.unwrap();
    assert_eq!(queue.unfinished_tasks(), 0);
    assert!(
        queue.task_done().is_err(),
        "task_done beyond the puts must be an error"
    );
    queue.shutdown();
    let mut all = Vec::new();
    for w in workers {
        all.extend(within("worker", w).await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
}

async fn join_in_child(queue: JoinableQueue<u32>) -> usize {
    queue.join().await.unwrap();
    queue.unfinished_tasks()
}

async fn take_and_finish((queue, n): (JoinableQueue<u32>, u32)) -> bool {
    for _ in 0..n {
        queue.get().await.unwrap();
        queue.task_done().unwrap();
    }
    queue.task_done().is_err()
}

#[tokio::test]
async fn a_child_joins_while_another_finishes_the_tasks() {
    let queue: JoinableQueue<u32> = JoinableQueue::bounded(4).unwrap();
    for i in 0..4 {
        queue.put(i).await.unwrap();
    }
    let joiners: Vec<_> = (0..2)
        .map(|_| spawn(queue.clone(), join_in_child))
        .collect();
    assert!(
        queue
            .join_timeout(Duration::from_millis(20))
            .await
            .unwrap_err()
            .is_timeout()
    );
    let finisher = spawn((queue.clone(), 4), take_and_finish);
    assert!(within("finisher", finisher).await.unwrap());
    for j in joiners {
        assert_eq!(within("joiner", j).await.unwrap(), 0);
    }
}

/// A huge timeout (`Duration::MAX`) waits forever, never panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_join_timeout_waits_until_every_task_is_done() {
    let queue: JoinableQueue<u32> = JoinableQueue::new().unwrap();
    // Nothing unfinished: at once.
    let q = queue.clone();
    within_blocking(
        "blocking_join_timeout(MAX) with nothing unfinished",
        move || q.blocking_join_timeout(Duration::MAX).unwrap(),
    )
    .await;
    let joined = within("join_timeout(MAX)", queue.join_timeout(Duration::MAX)).await;
    joined.unwrap();
    // One unfinished task: waits until a child finishes it.
    within("put", queue.put(1)).await.unwrap();
    let q = queue.clone();
    let (joined, finished) = blocked_until(
        "blocking_join_timeout(MAX) with a task unfinished",
        move || q.blocking_join_timeout(Duration::MAX).is_ok(),
        || spawn((queue.clone(), 1), take_and_finish),
    )
    .await;
    assert!(joined);
    assert!(finished.unwrap());
}

async fn put_one_cancelled(queue: JoinableQueue<u32>) -> usize {
    // The queue is full: this put times out and must not count as a task.
    assert!(
        queue
            .put_timeout(1, Duration::from_millis(20))
            .await
            .unwrap_err()
            .is_timeout()
    );
    queue.unfinished_tasks()
}

#[tokio::test]
async fn cancelled_puts_are_not_tasks() {
    let queue: JoinableQueue<u32> = JoinableQueue::bounded(1).unwrap();
    queue.put(0).await.unwrap();
    assert_eq!(
        within("child", spawn(queue.clone(), put_one_cancelled))
            .await
            .unwrap(),
        1
    );
    assert_eq!(within("get", queue.get()).await.unwrap(), 0);
    queue.task_done().unwrap();
    within("join", queue.join()).await.unwrap();
}
