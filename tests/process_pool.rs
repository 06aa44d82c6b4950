//! The process pool across real worker processes.
//!
//! Behaviours follow CPython's `_test_multiprocessing.py` `_TestPool` where the semantics match
//! (map/imap/starmap order, empty input, apply, async results, close/join/terminate,
//! maxtasksperchild), plus what Python's pool gets wrong: a worker that dies, handles as
//! arguments.

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use multiproc::pipe;
use multiproc::{Lock, Pool, PoolError, Queue, SharedValue, TaskHandle};
use multiproc_suite::{eventually, process_gone, within};

fn square(x: u64) -> u64 {
    x * x
}

async fn async_square(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    x * x
}

fn pid_of_worker(_: u32) -> u32 {
    std::process::id()
}

fn panics_on_three(x: u32) -> u32 {
    if x == 3 {
        panic!("three is not allowed");
    }
    x
}

fn kill_self(_: ()) -> u32 {
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL).ok();
    std::thread::sleep(Duration::from_secs(60));
    0
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_imap_and_starmap_keep_input_order() {
    let pool = Pool::new(3).unwrap();
    let expected: Vec<u64> = (0..1000).map(|x| x * x).collect();
    assert_eq!(
        within("map", pool.map(square, 0..1000)).await.unwrap(),
        expected
    );
    for chunksize in [1, 7, 1000, 5000] {
        let got = within(
            "map chunked",
            pool.map(square, 0..1000).chunksize(chunksize),
        )
        .await
        .unwrap();
        assert_eq!(got, expected, "chunksize {chunksize}");
    }
    let got: Vec<u64> = within(
        "imap",
        pool.imap(square, 0..1000)
            .chunksize(3)
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got, expected);
    // Tasks of uneven length finish out of order; the results still come in order.
    let got: Vec<u64> = within(
        "imap uneven",
        pool.imap(sleep_ms, [30, 0, 20, 0, 10, 0])
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(got, [30, 0, 20, 0, 10, 0]);
    let got = within(
        "starmap",
        pool.starmap(|x: u64, y: u32| x.pow(y), (0..100).map(|x| (x, 2))),
    )
    .await
    .unwrap();
    assert_eq!(got, expected[..100]);
    let three = within(
        "starmap of three",
        pool.starmap(
            |a: String, b: u8, c: bool| format!("{a}{b}{c}"),
            [("x".to_string(), 1, true)],
        ),
    )
    .await
    .unwrap();
    assert_eq!(three, ["x1true"]);
}

#[tokio::test]
async fn imap_unordered_yields_every_result_once() {
    let pool = Pool::new(2).unwrap();
    let got: Vec<u64> = within(
        "imap_unordered",
        pool.imap_unordered(square, 0..500)
            .chunksize(4)
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
    )
    .await;
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..500).map(|x| x * x).collect::<Vec<_>>());
}

#[tokio::test]
async fn empty_inputs_give_empty_results_at_once() {
    let pool = Pool::new(1).unwrap();
    let none: Vec<u64> = Vec::new();
    assert!(
        within("map", pool.map(square, none.clone()))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        within("imap", pool.imap(square, none.clone()).count()).await,
        0
    );
    assert_eq!(
        within("imap_unordered", pool.imap_unordered(square, none).count()).await,
        0
    );
    let none: Vec<(u64, u64)> = Vec::new();
    assert!(
        within("starmap", pool.starmap(|a: u64, b: u64| a + b, none))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn apply_submit_and_async_functions() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(within("apply", pool.apply(square, 12)).await.unwrap(), 144);
    assert_eq!(
        within("async apply", pool.apply(async_square, 5))
            .await
            .unwrap(),
        25
    );
    let got = within("async map", pool.map(async_square, 0..50))
        .await
        .unwrap();
    assert_eq!(got, (0..50).map(|x| x * x).collect::<Vec<_>>());

    let handles: Vec<_> = (0..20u64).map(|i| pool.submit(square, i)).collect();
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(within("submitted", handle).await.unwrap(), (i * i) as u64);
    }

    // A timed wait that expires leaves the task running and the handle usable.
    let mut slow = pool.submit(sleep_ms, 300);
    let err = slow
        .result_timeout(Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(!slow.is_finished());
    // A huge timeout waits as long as it takes (never panics).
    let waited = within("slow task", slow.result_timeout(Duration::MAX)).await;
    assert_eq!(waited.unwrap(), 300);
}

#[tokio::test]
async fn a_panicking_task_fails_alone() {
    let pool = Pool::new(2).unwrap();
    let results: Vec<Result<u32, PoolError>> =
        within("imap", pool.imap(panics_on_three, 0..6).collect::<Vec<_>>()).await;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(v) => assert_eq!(*v as usize, i),
            Err(e) => {
                assert_eq!(i, 3);
                assert!(e.is_panic(), "{e}");
                assert_eq!(e.panic_message(), Some("three is not allowed"));
                assert!(
                    e.panic_location().unwrap().contains("process_pool.rs"),
                    "{e}"
                );
                assert_eq!(e.item(), Some(3));
            }
        }
    }
    assert!(results[3].is_err());

    let err = within("map", pool.map(panics_on_three, 0..6))
        .await
        .unwrap_err();
    assert!(err.is_panic() && err.item() == Some(3), "{err}");
    assert!(err.to_string().contains("item 3 panicked at"), "{err}");

    let err = within("apply", pool.apply(panics_on_three, 3))
        .await
        .unwrap_err();
    assert!(err.is_panic(), "{err}");
    // The workers survived.
    assert_eq!(
        within("after panics", pool.apply(square, 3)).await.unwrap(),
        9
    );
}

#[tokio::test]
async fn a_worker_killed_mid_task_fails_its_task_and_is_replaced() {
    let pool = Pool::new(2).unwrap();
    assert!(within("workers up", eventually(|| pool.worker_pids().len() == 2)).await);
    let before: HashSet<u32> = pool.worker_pids().into_iter().collect();

    let err = within("killed task", pool.apply(kill_self, ()))
        .await
        .unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    let dead = err.worker_pid().unwrap();
    assert!(before.contains(&dead));
    assert!(err.to_string().contains("SIGKILL"), "{err}");

    // The pool keeps serving, with a new worker in place of the dead one.
    let got = within("map after death", pool.map(square, 0..100))
        .await
        .unwrap();
    assert_eq!(got.len(), 100);
    assert!(within("replacement", eventually(|| pool.worker_pids().len() == 2)).await);
    assert!(!pool.worker_pids().contains(&dead));
    assert!(process_gone(dead));

    // In a map, only the tasks the dead worker held fail.
    let results: Vec<Result<u32, PoolError>> = within(
        "imap with a death",
        pool.imap(|x: u32| if x == 5 { kill_self(()) } else { x }, 0..10)
            .collect::<Vec<_>>(),
    )
    .await;
    assert!(results[5].as_ref().is_err_and(|e| e.is_worker_died()));
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 9, "{results:?}");
}

fn exit_with_3(_: ()) -> u8 {
    std::process::exit(3)
}

fn abort(_: ()) -> u8 {
    std::process::abort()
}

#[tokio::test]
async fn exit_and_abort_in_a_task_are_reported() {
    let pool = Pool::new(1).unwrap();
    let err = within("exit", pool.apply(exit_with_3, ()))
        .await
        .unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert!(err.to_string().contains("code 3"), "{err}");
    let err = within("abort", pool.apply(abort, ())).await.unwrap_err();
    assert!(err.to_string().contains("SIGABRT"), "{err}");
    assert_eq!(within("after", pool.apply(square, 4)).await.unwrap(), 16);
}

fn abort_on_100(x: u32) -> u32 {
    if x == 100 {
        std::process::abort();
    }
    x
}

/// A worker killed by one task of a chunk is blamed on that task, not on the chunk's first:
/// with 3 workers a 200-item map goes in chunks of 17, so item 100 runs 16th in its chunk.
#[tokio::test]
async fn map_blames_the_item_that_killed_the_worker() {
    let pool = Pool::new(3).unwrap();
    let err = within("map", pool.map(abort_on_100, 0..200))
        .await
        .unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.item(), Some(100), "{err}");
    assert!(err.to_string().contains("item 100"), "{err}");
    assert!(err.to_string().contains("SIGABRT"), "{err}");

    // The stream gives every item's outcome: the chunk's other items name item 100 too.
    let results: Vec<_> = within(
        "imap",
        pool.imap(abort_on_100, 85..110).chunksize(25).collect(),
    )
    .await;
    for (x, result) in (85..110).zip(&results) {
        let err = result.as_ref().unwrap_err();
        assert!(err.is_worker_died(), "{err}");
        assert_eq!(err.item(), Some(x - 85), "{err}");
        assert!(err.to_string().contains("item 15"), "{err}");
    }
}

/// A result that aborts its process when it is encoded, for 3.
#[derive(Debug, serde::Deserialize)]
struct AbortWhenSent(u32);

impl serde::Serialize for AbortWhenSent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 3 {
            std::process::abort();
        }
        self.0.serialize(s)
    }
}

fn abort_when_sent(x: u32) -> AbortWhenSent {
    AbortWhenSent(x)
}

/// A worker that dies after every task of its chunk returned (as it hands the results back)
/// is blamed on no task: not on the chunk's last one, which was not running.
#[tokio::test]
async fn a_death_after_the_tasks_blames_no_task() {
    let pool = Pool::new(1).unwrap();
    let results: Vec<_> = within(
        "imap",
        pool.imap(abort_when_sent, 0..5).chunksize(5).collect(),
    )
    .await;
    assert_eq!(results.len(), 5);
    for (i, result) in results.iter().enumerate() {
        let err = result.as_ref().unwrap_err();
        assert!(err.is_worker_died(), "{err}");
        assert_eq!(err.item(), Some(i), "{err}");
        assert!(!err.to_string().contains("in the same chunk"), "{err}");
    }
    let err = within("map", pool.map(abort_when_sent, 0..5).chunksize(5))
        .await
        .unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.item(), Some(0), "{err}");
}

static INIT_COUNTER: OnceLock<SharedValue<u32>> = OnceLock::new();

fn count_init(counter: SharedValue<u32>) {
    *counter.blocking_lock().unwrap() += 1;
    let _ = INIT_COUNTER.set(counter);
}

fn initialized(_: ()) -> bool {
    INIT_COUNTER.get().is_some()
}

#[tokio::test]
async fn initializer_runs_once_per_worker_and_for_replacements() {
    let counter = SharedValue::<u32>::new(0).unwrap();
    let pool = Pool::builder()
        .workers(3)
        .initializer(counter.clone(), count_init)
        .build()
        .unwrap();
    let all = within(
        "tasks see the initializer",
        pool.map(initialized, vec![(); 30]),
    )
    .await
    .unwrap();
    assert!(all.into_iter().all(|seen| seen));
    assert!(
        within(
            "three inits",
            eventually(|| *counter.blocking_lock().unwrap() == 3)
        )
        .await
    );

    let err = within("killed", pool.apply(kill_self, ()))
        .await
        .unwrap_err();
    assert!(err.is_worker_died());
    assert!(
        within(
            "replacement init",
            eventually(|| *counter.blocking_lock().unwrap() == 4)
        )
        .await
    );
    assert!(within("after", pool.apply(initialized, ())).await.unwrap());
}

#[tokio::test]
async fn max_tasks_per_worker_replaces_workers() {
    let pool = Pool::builder()
        .workers(2)
        .max_tasks_per_worker(5)
        .build()
        .unwrap();
    let pids = within("pids", pool.map(pid_of_worker, 0..40).chunksize(1))
        .await
        .unwrap();
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    // 40 tasks, at most 5 per worker: at least 8 different workers.
    assert!(distinct.len() >= 8, "{} workers: {pids:?}", distinct.len());
    for pid in &distinct {
        let counted = pids.iter().filter(|p| *p == pid).count();
        assert!(counted <= 5, "worker {pid} ran {counted} tasks");
    }
    pool.close();
    within("join", pool.join()).await.unwrap();
    assert!(distinct.iter().all(|pid| process_gone(*pid)));
}

fn initializer_panics(_: ()) {
    panic!("cannot initialise");
}

#[tokio::test]
async fn a_panicking_initializer_fails_tasks_instead_of_hanging() {
    let pool = Pool::builder()
        .workers(2)
        .initializer((), initializer_panics)
        .build()
        .unwrap();
    let err = within("map", pool.map(square, 0..10)).await.unwrap_err();
    assert!(err.is_initializer_failure(), "{err}");
    assert_eq!(err.panic_message(), Some("cannot initialise"));
    let err = within("apply", pool.apply(square, 1)).await.unwrap_err();
    assert!(err.is_initializer_failure(), "{err}");
}

#[tokio::test]
async fn close_lets_submitted_work_finish_then_join_returns() {
    let pool = Pool::new(2).unwrap();
    let err = within("join before close", pool.join()).await.unwrap_err();
    assert!(err.to_string().contains("close"), "{err}");

    let pending = pool.map(sleep_ms, [50; 6]).into_future();
    let task = pool.submit(sleep_ms, 80);
    let running = tokio::spawn(pending);
    tokio::time::sleep(Duration::from_millis(10)).await;
    pool.close();
    assert!(
        within("closed map", pool.map(square, 0..3))
            .await
            .unwrap_err()
            .is_closed()
    );
    assert!(
        within("closed apply", pool.apply(square, 3))
            .await
            .unwrap_err()
            .is_closed()
    );

    assert_eq!(
        within("drained map", running).await.unwrap().unwrap(),
        [50; 6]
    );
    assert_eq!(within("drained task", task).await.unwrap(), 80);
    within("join", pool.join()).await.unwrap();
    assert!(pool.worker_pids().is_empty());
}

#[tokio::test]
async fn terminate_kills_workers_and_fails_their_tasks() {
    let pool = Pool::new(2).unwrap();
    assert!(within("workers up", eventually(|| pool.worker_pids().len() == 2)).await);
    let pids = pool.worker_pids();
    let long = pool.submit(sleep_ms, 60_000);
    let queued = pool.submit(sleep_ms, 60_000);
    let more = pool.submit(sleep_ms, 60_000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    pool.terminate();
    for handle in [long, queued, more] {
        let err = within("terminated task", handle).await.unwrap_err();
        assert!(err.is_terminated(), "{err}");
    }
    within("join", pool.join()).await.unwrap();
    for pid in pids {
        assert!(process_gone(pid), "worker {pid} still alive");
    }
    assert!(
        within("after terminate", pool.apply(square, 2))
            .await
            .unwrap_err()
            .is_closed()
    );
}

#[tokio::test]
async fn dropping_a_pool_leaves_no_worker_behind() {
    let pool = Pool::new(2).unwrap();
    assert!(within("workers up", eventually(|| pool.worker_pids().len() == 2)).await);
    let pids = pool.worker_pids();
    assert_eq!(within("work", pool.apply(square, 2)).await.unwrap(), 4);
    drop(pool);
    for pid in pids {
        assert!(within("worker exits", eventually(|| process_gone(pid))).await);
    }
}

#[tokio::test]
async fn cancelling_a_map_stops_its_work_promptly() {
    let pool = Pool::new(2).unwrap();
    assert!(within("workers up", eventually(|| pool.worker_pids().len() == 2)).await);
    let busy = pool.worker_pids();
    let err = within(
        "timed map",
        pool.map(sleep_ms, [60_000; 8])
            .chunksize(1)
            .timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The workers that were sleeping for nobody are replaced at once...
    for pid in busy {
        assert!(within("abandoned worker killed", eventually(|| process_gone(pid))).await);
    }
    // ...and the pool serves the next caller without waiting a minute.
    assert_eq!(
        within("next task", pool.apply(square, 7)).await.unwrap(),
        49
    );

    // Dropping an imap stream cancels the same way.
    let mut stream = pool.imap(sleep_ms, [0, 60_000, 60_000]);
    assert_eq!(within("first", stream.next()).await.unwrap().unwrap(), 0);
    drop(stream);
    assert_eq!(
        within("after drop", pool.apply(square, 8)).await.unwrap(),
        64
    );
}

/// Says it started (on `started`), sleeps, then says it finished (on `done`): side effects the
/// test can observe from outside the worker.
fn announced_sleep((started, done, ms, tag): (Queue<u32>, Queue<u32>, u64, u32)) {
    started.blocking_put(tag).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    done.blocking_put(tag).unwrap();
}

#[tokio::test]
async fn a_dropped_task_handle_detaches_the_task() {
    let pool = Pool::new(1).unwrap();
    let started: Queue<u32> = Queue::new().unwrap();
    let done: Queue<u32> = Queue::new().unwrap();
    // One task running when its handle goes, one queued behind it.
    let first = pool.submit(announced_sleep, (started.clone(), done.clone(), 300, 1));
    assert_eq!(within("first starts", started.get()).await.unwrap(), 1);
    drop(first);
    drop(pool.submit(announced_sleep, (started.clone(), done.clone(), 0, 2)));
    // close + join wait for both.
    pool.close();
    within("join", pool.join()).await.unwrap();
    assert_eq!(done.try_get().unwrap(), 1);
    assert_eq!(done.try_get().unwrap(), 2);
}

#[tokio::test]
async fn abort_cancels_a_running_task_and_a_queued_one() {
    let pool = Pool::new(1).unwrap();
    assert!(within("worker up", eventually(|| pool.worker_pids().len() == 1)).await);
    let worker = pool.worker_pids()[0];
    let started: Queue<u32> = Queue::new().unwrap();
    let done: Queue<u32> = Queue::new().unwrap();
    let running = pool.submit(announced_sleep, (started.clone(), done.clone(), 60_000, 1));
    let queued = pool.submit(announced_sleep, (started.clone(), done.clone(), 0, 2));
    assert_eq!(within("first starts", started.get()).await.unwrap(), 1);
    queued.abort();
    running.abort();
    running.abort();
    assert!(running.is_finished() && queued.is_finished());
    for handle in [running, queued] {
        let err = within("aborted task", handle).await.unwrap_err();
        assert!(err.is_cancelled(), "{err}");
    }
    // The worker running the aborted task is killed and replaced.
    assert!(within("worker killed", eventually(|| process_gone(worker))).await);
    assert_eq!(within("next task", pool.apply(square, 3)).await.unwrap(), 9);
    pool.close();
    within("join", pool.join()).await.unwrap();
    // Neither finished; the queued one never started.
    assert!(done.try_get().unwrap_err().is_empty());
    assert!(started.try_get().unwrap_err().is_empty());
}

/// A worker running short tasks is handed the next ones ahead of time; aborting one of those
/// still means it never runs: the worker is told, and skips it.
#[tokio::test]
async fn an_aborted_task_already_sent_to_its_worker_never_starts() {
    let pool = Pool::new(1).unwrap();
    let started: Queue<u32> = Queue::new().unwrap();
    let done: Queue<u32> = Queue::new().unwrap();
    let args = |ms, tag| (started.clone(), done.clone(), ms, tag);
    // Teach the driver the function's pace (short), so that it sends tasks ahead.
    let warm = within(
        "warm-up",
        pool.map(announced_sleep, (0..20).map(|_| args(0, 0))),
    )
    .await;
    warm.unwrap();
    while started.try_get().is_ok() || done.try_get().is_ok() {}

    let first = pool.submit(announced_sleep, args(300, 1));
    let aborted: Vec<_> = (2..6)
        .map(|tag| pool.submit(announced_sleep, args(0, tag)))
        .collect();
    let last = pool.submit(announced_sleep, args(0, 6));
    assert_eq!(within("first starts", started.get()).await.unwrap(), 1);
    let worker = pool.worker_pids();
    aborted.iter().for_each(TaskHandle::abort);
    within("first", first).await.unwrap();
    within("last", last).await.unwrap();
    for task in aborted {
        assert!(within("aborted", task).await.unwrap_err().is_cancelled());
    }
    // Only the two tasks kept ran, and no worker had to be killed for the others.
    assert_eq!(started.try_get().unwrap(), 6);
    assert!(started.try_get().unwrap_err().is_empty());
    assert_eq!(pool.worker_pids(), worker);
}

/// `apply` is a future like any other: dropping it cancels its task (unlike dropping a
/// `TaskHandle`, which detaches it), so the worker running it is killed and replaced.
#[tokio::test]
async fn dropping_an_apply_future_cancels_its_task() {
    let pool = Pool::new(1).unwrap();
    assert!(within("worker up", eventually(|| pool.worker_pids().len() == 1)).await);
    let worker = pool.worker_pids()[0];
    let started: Queue<u32> = Queue::new().unwrap();
    let done: Queue<u32> = Queue::new().unwrap();
    let apply = pool.apply(announced_sleep, (started.clone(), done.clone(), 60_000, 1));
    // The apply future is dropped as soon as its task has started.
    within("task starts", async {
        tokio::select! {
            result = apply => panic!("a minute-long task returned: {result:?}"),
            tag = started.get() => assert_eq!(tag.unwrap(), 1),
        }
    })
    .await;
    assert!(within("worker killed", eventually(|| process_gone(worker))).await);
    assert_eq!(within("next task", pool.apply(square, 3)).await.unwrap(), 9);
    assert!(done.try_get().unwrap_err().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks() {
    let pool = Pool::new(2).unwrap();
    let got = within("10k map chunk 1", pool.map(square, 0..10_000).chunksize(1))
        .await
        .unwrap();
    assert_eq!(got, (0..10_000).map(|x| x * x).collect::<Vec<_>>());
    let sum: u64 = within(
        "10k unordered",
        pool.imap_unordered(square, 0..10_000)
            .map(Result::unwrap)
            .fold(0, |a, b| async move { a + b }),
    )
    .await;
    assert_eq!(sum, (0..10_000u64).map(|x| x * x).sum::<u64>());
    let handles: Vec<_> = (0..10_000u64).map(|i| pool.submit(square, i)).collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(within("submitted", h).await.unwrap(), (i * i) as u64);
    }
}

static POOL_LOCK: OnceLock<Lock> = OnceLock::new();

fn keep_lock(lock: Lock) {
    let _ = POOL_LOCK.set(lock);
}

fn locked_increment(value: SharedValue<u64>) -> bool {
    let lock = POOL_LOCK.get().expect("initializer ran");
    let _guard = lock.blocking_lock().unwrap();
    let mut v = value.blocking_lock().unwrap();
    *v += 1;
    true
}

fn reply_through(mut end: pipe::Sender<u32>) -> bool {
    end.blocking_send(std::process::id()).unwrap();
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_travel_in_initializer_and_task_arguments() {
    let lock = Lock::new().unwrap();
    let pool = Pool::builder()
        .workers(3)
        .initializer(lock.clone(), keep_lock)
        .build()
        .unwrap();
    let counter = SharedValue::<u64>::new(0).unwrap();
    let done = within(
        "locked increments",
        pool.map(locked_increment, vec![counter.clone(); 300])
            .chunksize(1),
    )
    .await
    .unwrap();
    assert_eq!(done.len(), 300);
    assert_eq!(*counter.blocking_lock().unwrap(), 300);

    let (tx, mut rx) = pipe::simplex::<u32>().unwrap();
    assert!(
        within("pipe end as argument", pool.apply(reply_through, tx))
            .await
            .unwrap()
    );
    let pid = within("reply", rx.recv()).await.unwrap().unwrap();
    assert!(pool.worker_pids().contains(&pid));
}

#[derive(Debug)]
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("never"))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unencodable)
    }
}

#[tokio::test]
async fn unencodable_arguments_and_results_are_errors() {
    let pool = Pool::new(1).unwrap();
    let err = within("bad args", pool.apply(|_: Unencodable| 1u8, Unencodable))
        .await
        .unwrap_err();
    assert!(err.is_bad_args(), "{err}");
    let results: Vec<Result<Unencodable, PoolError>> = within(
        "bad results",
        pool.imap(|_: u8| Unencodable, [0, 1]).collect::<Vec<_>>(),
    )
    .await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.is_bad_result()))
    );
    // The pool is unharmed.
    assert_eq!(within("after", pool.apply(square, 5)).await.unwrap(), 25);
}

#[tokio::test]
async fn builder_errors() {
    assert!(Pool::new(0).unwrap_err().is_invalid_option());
    let bad_init = Pool::builder()
        .initializer(Unencodable, |_: Unencodable| ())
        .build();
    assert!(bad_init.unwrap_err().is_bad_args());
}

/// Zero is never silently taken for one: every option that must be positive is an error.
#[tokio::test]
async fn zero_options_are_errors_not_ones() {
    let zero_tasks = Pool::builder().max_tasks_per_worker(0).build();
    let err = zero_tasks.unwrap_err();
    assert!(err.is_invalid_option(), "{err}");
    assert!(err.to_string().contains("max_tasks_per_worker"), "{err}");
    let zero_chunks = Pool::builder().chunksize(0).build();
    let err = zero_chunks.unwrap_err();
    assert!(err.is_invalid_option(), "{err}");
    assert!(err.to_string().contains("chunksize"), "{err}");
    // The value set last counts, as with any builder: a later call corrects an earlier zero.
    let corrected = Pool::builder()
        .workers(0)
        .workers(1)
        .max_tasks_per_worker(0)
        .max_tasks_per_worker(5)
        .chunksize(0)
        .chunksize(2)
        .build();
    let pool = corrected.unwrap();
    let squares = within("corrected pool", pool.map(square, 0..4)).await;
    assert_eq!(squares.unwrap(), [0, 1, 4, 9]);
    drop(pool);

    let pool = Pool::new(1).unwrap();
    let err = within("map", pool.map(square, 0..10).chunksize(0))
        .await
        .unwrap_err();
    assert!(err.is_invalid_option(), "{err}");
    let ordered: Vec<_> = within("imap", pool.imap(square, 0..10).chunksize(0).collect()).await;
    let unordered: Vec<_> = within(
        "imap_unordered",
        pool.imap_unordered(square, 0..10).chunksize(0).collect(),
    )
    .await;
    for results in [ordered, unordered] {
        assert_eq!(results.len(), 1);
        assert!(results[0].as_ref().unwrap_err().is_invalid_option());
    }
    // The pool is unharmed.
    let squares = within("map", pool.map(square, 0..10).chunksize(3)).await;
    assert_eq!(squares.unwrap(), (0..10).map(|x| x * x).collect::<Vec<_>>());
}

#[test]
fn building_outside_a_runtime_is_an_error() {
    let err = Pool::new(1).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

#[tokio::test]
async fn short_tasks_do_not_wait_behind_a_long_one() {
    let pool = Pool::new(2).unwrap();
    assert!(within("workers up", eventually(|| pool.worker_pids().len() == 2)).await);
    // Neither worker has timed `sleep_ms` yet: each takes one task at a time, so the short
    // ones all go to the worker that is not stuck in the long one.
    let order: Vec<u64> = within(
        "imap_unordered",
        pool.imap_unordered(sleep_ms, [2_000, 1, 1, 1, 1])
            .map(Result::unwrap)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(order, [1, 1, 1, 1, 2_000]);
}

fn die_on_twenty(x: u32) -> u32 {
    if x == 20 {
        kill_self(());
    }
    x
}

/// Results a worker finished before it died are delivered, even those it had handed back
/// (into the shared result ring) while the pool was not looking.
#[tokio::test]
async fn results_finished_before_a_worker_dies_are_delivered() {
    let pool = Pool::new(1).unwrap();
    // Teach the worker's driver the function's pace, so that it sends the worker many jobs
    // at once rather than one at a time.
    let warm = within("warm-up", pool.map(die_on_twenty, 100..400).chunksize(1))
        .await
        .unwrap();
    assert_eq!(warm.len(), 300);
    let dead = pool.worker_pids()[0];

    let mut results = pool.imap(die_on_twenty, 0..100);
    // One poll queues the jobs and wakes the driver; yielding lets it hand the worker a batch.
    assert!(futures::poll!(results.next()).is_pending());
    tokio::task::yield_now().await;
    // Block this (single) runtime thread: the worker runs its batch, hands results back with
    // nobody taking them, and dies at item 20.
    std::thread::sleep(Duration::from_millis(300));
    let results: Vec<Result<u32, PoolError>> =
        within("imap across a death", results.collect::<Vec<_>>()).await;

    assert_eq!(results.len(), 100);
    for (i, result) in results.iter().enumerate() {
        match (i, result) {
            (20, Err(e)) => {
                assert!(e.is_worker_died(), "{e}");
                assert_eq!(e.worker_pid(), Some(dead));
            }
            (i, Ok(x)) if i != 20 => assert_eq!(*x as usize, i),
            (i, other) => panic!("item {i}: {other:?}"),
        }
    }
}

fn sized(len: u32) -> Vec<u8> {
    vec![len as u8; len as usize]
}

fn value_or_handle(x: u64) -> (u64, Option<SharedValue<u64>>) {
    let handle = (x % 7 == 3).then(|| SharedValue::new(x * 10).unwrap());
    (x, handle)
}

/// Small results, results too large for the result ring, and results carrying descriptors
/// take different ways back; they still arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_of_every_size_and_kind_arrive_in_order() {
    let pool = Pool::new(2).unwrap();
    // Around the ring's record limit, and well beyond it; enough of them that the ring wraps
    // and, with the parent slower to read than the worker to write, fills up.
    let lens = [0, 1, 100, 8_150, 8_180, 8_200, 9_000, 70_000, 5, 4_000];
    let items: Vec<u32> = (0..600).map(|i| lens[i % lens.len()]).collect();
    for chunksize in [1, 3] {
        let got = within("sized", pool.map(sized, items.clone()).chunksize(chunksize))
            .await
            .unwrap();
        assert_eq!(got.len(), items.len());
        for (i, (result, len)) in got.iter().zip(&items).enumerate() {
            assert!(
                result.len() == *len as usize && result.iter().all(|b| *b == *len as u8),
                "item {i} (chunk size {chunksize}) came back damaged"
            );
        }
    }

    let got = within(
        "handles among values",
        pool.map(value_or_handle, 0..300).chunksize(1),
    )
    .await
    .unwrap();
    for (i, (x, handle)) in got.into_iter().enumerate() {
        assert_eq!(x, i as u64);
        assert_eq!(handle.is_some(), i % 7 == 3, "item {i}");
        if let Some(value) = handle {
            assert_eq!(value.get(), i as u64 * 10);
        }
    }
}

fn spin_30us(x: u32) -> u32 {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_micros(30) {
        std::hint::spin_loop();
    }
    x
}

/// Aborting tasks kills their worker only for them: a task of another submission that the
/// worker holds, or had just moved on to as the abort came, is not failed by the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_tasks_never_fails_another_task() {
    let pool = Pool::new(1).unwrap();
    // Teach the driver the function's pace, so that it hands the worker many tasks at once.
    let warm = within("warm-up", pool.map(spin_30us, 0..300).chunksize(1)).await;
    assert_eq!(warm.unwrap().len(), 300);
    for round in 0..100 {
        let (mut kept, mut aborted) = (Vec::new(), Vec::new());
        for i in 0..100 {
            kept.push(pool.submit(spin_30us, i));
            aborted.push(pool.submit(spin_30us, i));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        aborted.iter().for_each(TaskHandle::abort);
        for (i, task) in kept.into_iter().enumerate() {
            let result = within("kept task", task).await;
            assert_eq!(result.unwrap(), i as u32, "round {round}, task {i}");
        }
    }
}
