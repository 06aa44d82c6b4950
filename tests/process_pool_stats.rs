//! `Pool::stats`: workers alive and replaced, tasks queued, running, done and failed, as a
//! service would export them, with real workers.

use multiproc::{Event, Pool};
use multiproc_suite::{eventually, within};

/// Blocks its worker until `gate` is set.
fn wait_for(gate: Event) -> u32 {
    gate.blocking_wait().unwrap();
    1
}

/// A task that ends its worker process.
fn exit_with(code: i32) {
    std::process::exit(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_stats_follow_tasks_and_workers() {
    let pool = Pool::new(2).unwrap();
    let stats = pool.stats();
    assert_eq!(stats.workers, 2);
    assert!(
        eventually(|| pool.stats().workers_alive == 2).await,
        "{:?}",
        pool.stats()
    );

    // Done and failed, by task: one of ten fails.
    let results = within(
        "map",
        pool.map(|x: u32| if x == 3 { Err(x) } else { Ok(x) }, 0..10u32),
    )
    .await
    .unwrap();
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    let stats = pool.stats();
    assert_eq!((stats.tasks_done, stats.tasks_failed), (10, 0), "{stats:?}");

    // Running and queued: two tasks hold both workers, three more wait behind them.
    let gate = Event::new().unwrap();
    let held: Vec<_> = (0..5)
        .map(|_| pool.submit(wait_for, gate.clone()))
        .collect();
    assert!(
        eventually(|| {
            let s = pool.stats();
            s.tasks_running >= 2 && s.tasks_queued + s.tasks_running == 5
        })
        .await,
        "{:?}",
        pool.stats()
    );
    gate.set();
    for task in held {
        assert_eq!(within("held task", task).await.unwrap(), 1);
    }
    let stats = pool.stats();
    assert_eq!(
        (stats.tasks_queued, stats.tasks_running),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.tasks_done, 15, "{stats:?}");

    // A task that kills its worker: failed, and the worker is replaced.
    let died = within("killing task", pool.apply(exit_with, 3))
        .await
        .unwrap_err();
    assert!(died.is_worker_died(), "{died}");
    assert!(
        eventually(|| {
            let s = pool.stats();
            s.workers_replaced >= 1 && s.workers_alive == 2
        })
        .await,
        "{:?}",
        pool.stats()
    );
    let stats = pool.stats();
    assert_eq!((stats.tasks_done, stats.tasks_failed), (15, 1), "{stats:?}");
    pool.close();
    within("join", pool.join()).await.unwrap();
    assert_eq!(pool.stats().workers_alive, 0);
}
