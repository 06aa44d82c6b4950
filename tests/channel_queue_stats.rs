//! `Queue::stats`: length, waiting getters and putters, unfinished tasks, across processes.

use std::time::Duration;

use multiproc::{JoinableQueue, Queue, spawn};
use multiproc_suite::{eventually, within};

#[tokio::test]
async fn queue_stats_see_every_process() {
    let queue = Queue::<u32>::bounded(1).unwrap();
    let stats = queue.stats();
    assert_eq!(
        (stats.len, stats.capacity, stats.shutdown),
        (0, Some(1), false)
    );
    assert_eq!((stats.getters_waiting, stats.putters_waiting), (0, 0));
    assert_eq!(stats.unfinished_tasks, None);

    // A child parked in `get` on the empty queue.
    let getter = spawn(queue.clone(), |q: Queue<u32>| q.blocking_get().unwrap());
    assert!(
        eventually(|| queue.stats().getters_waiting == 1).await,
        "{:?}",
        queue.stats()
    );
    within("put", queue.put(5)).await.unwrap();
    assert_eq!(within("getter", getter).await.unwrap(), 5);

    // A child parked in `put` on the full queue.
    within("fill", queue.put(1)).await.unwrap();
    let putter = spawn(queue.clone(), |q: Queue<u32>| q.blocking_put(2).is_ok());
    assert!(
        eventually(|| queue.stats().putters_waiting == 1).await,
        "{:?}",
        queue.stats()
    );
    assert_eq!(queue.stats().len, 1);
    assert_eq!(within("get", queue.get()).await.unwrap(), 1);
    assert!(within("putter", putter).await.unwrap());
    assert_eq!(queue.stats().len, 1);
    queue.shutdown();
    assert!(queue.stats().shutdown);

    // A joinable queue counts what was put and not yet done, in any process.
    let jq = JoinableQueue::<u32>::new().unwrap();
    for i in 0..3 {
        within("put", jq.put(i)).await.unwrap();
    }
    assert_eq!(jq.stats().unfinished_tasks, Some(3));
    let worker = spawn(jq.clone(), |q: JoinableQueue<u32>| {
        let n = q.blocking_get_timeout(Duration::from_secs(60)).unwrap();
        q.task_done().unwrap();
        n
    });
    assert_eq!(within("worker", worker).await.unwrap(), 0);
    let stats = jq.stats();
    assert_eq!(
        (stats.len, stats.unfinished_tasks),
        (2, Some(2)),
        "{stats:?}"
    );
}
