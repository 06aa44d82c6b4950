//! How children end, as the parent sees it: exit codes like Python's, `exit_status()` without a
//! join, and no zombie left by a runtime that ends before its children.
//!
//! Each scenario runs in a middle process of its own, once with the fork server and once with
//! every child re-executed (`MULTIPROC_FORK_SERVER=0`), so the two ways a child starts are both
//! covered, and a zombie count is not disturbed by the other tests of this binary.

use std::time::Duration;

use multiproc::{Builder, Pool, spawn};
use multiproc_suite::zombie_children;
use multiproc_suite::{Even, TEST_LIMIT, blocking_eventually, eventually, process_gone, within};

/// A variable the probe child gets from its builder: a re-executed child finds it in the
/// environment block the kernel built at `exec`; a child forked from the server does not.
const MARKER: &str = "MULTIPROC_TEST_EXIT_MARKER";

/// Runs `scenario` in a middle process, with the fork server on or off; the scenario returns
/// whether its children were forked from the server.
async fn on_both_paths<F>(what: &str, scenario: F)
where
    F: Fn(()) -> bool + Copy + Send + 'static,
{
    for server in [true, false] {
        let mut middle = Builder::new();
        if !server {
            middle = middle.env("MULTIPROC_FORK_SERVER", "0");
        }
        let forked = within(what, middle.spawn((), scenario).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{what} (fork server {server}): {e}"));
        assert_eq!(forked, server, "{what}: children forked from the server");
    }
}

/// Runs `f` on a current-thread runtime of its own (a middle process's scenario).
fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Starts the fork server (if it is on), then tells whether a child is forked from it.
async fn children_are_forked() -> bool {
    within("warm-up child", spawn((), |()| ())).await.unwrap();
    let probe = Builder::new().env(MARKER, "1").spawn((), forked).unwrap();
    within("probe child", probe).await.unwrap()
}

fn forked(_: ()) -> bool {
    let environ = std::fs::read("/proc/self/environ").unwrap();
    let marker = format!("{MARKER}=");
    !environ
        .split(|b| *b == 0)
        .any(|var| var.starts_with(marker.as_bytes()))
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn nap_then_panic(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    panic!("woke up cross")
}

fn sync_panic(_: ()) -> u8 {
    panic!("sync failure")
}

async fn async_panic(_: ()) -> u8 {
    tokio::task::yield_now().await;
    panic!("async failure")
}

fn sleep_forever(_: ()) {
    std::thread::sleep(Duration::from_secs(3600));
}

/// Joins each failing child and checks its `exitcode`; the errors stay what they were.
fn failing_children_exit_with_1(_: ()) -> bool {
    block_on(async {
        let forked = children_are_forked().await;

        let mut sync = spawn((), sync_panic);
        let err = within("sync panic", sync.join()).await.unwrap_err();
        assert_eq!(err.panic_message(), Some("sync failure"), "{err}");
        assert_eq!(sync.exit_status().map(|s| s.exitcode()), Some(1));

        let mut in_async = spawn((), async_panic);
        let err = within("async panic", in_async.join()).await.unwrap_err();
        assert_eq!(err.panic_message(), Some("async failure"), "{err}");
        assert_eq!(in_async.exit_status().map(|s| s.exitcode()), Some(1));

        for (what, mut bad) in [
            ("sync bad args", spawn(Even(3), |e: Even| e.0)),
            (
                "async bad args",
                spawn(Even(3), |e: Even| async move { e.0 }),
            ),
        ] {
            let err = within(what, bad.join()).await.unwrap_err();
            assert!(err.is_bad_args(), "{what}: {err}");
            let code = bad.exit_status().map(|s| s.exitcode());
            assert_eq!(code, Some(1), "{what}");
        }

        let mut fine = spawn(4, |x: u32| x + 1);
        assert_eq!(within("clean child", fine.join()).await.unwrap(), 5);
        assert_eq!(fine.exit_status().map(|s| s.exitcode()), Some(0));
        forked
    })
}

#[tokio::test]
async fn a_panic_or_bad_arguments_exit_with_code_1() {
    on_both_paths("failing children", failing_children_exit_with_1).await;
}

/// Lets `f(200)` time out a join, then checks that `exit_status()` reports its exit before any
/// join has seen it, and that the join still gets the outcome.
async fn status_before_the_join<F>(f: F, code: i32)
where
    F: Fn(u64) -> u64 + Copy + Send + 'static,
{
    let mut child = spawn(200, f);
    let err = child
        .join_timeout(Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(eventually(|| !child.is_alive()).await, "child never ended");
    assert_eq!(child.exit_status().map(|s| s.exitcode()), Some(code));
    // Not reaped by that: the join reaps it and gets the result.
    let pid = child.pid().unwrap();
    assert!(
        zombie_children().contains(&pid),
        "{pid} reaped before the join"
    );
    let joined = within("join after the exit", child.join()).await;
    match code {
        0 => assert_eq!(joined.unwrap(), 200),
        _ => assert_eq!(joined.unwrap_err().panic_message(), Some("woke up cross")),
    }
    assert_eq!(child.exit_status().map(|s| s.exitcode()), Some(code));
}

fn statuses_before_the_join(_: ()) -> bool {
    block_on(async {
        let forked = children_are_forked().await;
        status_before_the_join(nap, 0).await;
        status_before_the_join(nap_then_panic, 1).await;
        forked
    })
}

#[tokio::test]
async fn exit_status_reports_an_exit_after_a_timed_out_join() {
    on_both_paths("exit status before join", statuses_before_the_join).await;
}

/// Drops a runtime that still owns children (a dropped handle's, a pool's workers), as the end
/// of every `#[tokio::test]` does, and checks that every one of them is reaped.
fn children_outlive_their_runtime(_: ()) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (forked, pids) = runtime.block_on(async {
        let forked = children_are_forked().await;
        let mut pids = Vec::new();
        // Running when its handle and then its runtime go: it exits on its own later.
        let running = spawn(200, nap);
        pids.extend(running.pid());
        drop(running);
        let killed = Builder::new()
            .kill_on_drop(true)
            .spawn((), sleep_forever)
            .unwrap();
        pids.extend(killed.pid());
        drop(killed);
        let pool = Pool::builder().workers(2).build().unwrap();
        let squares = within("pool map", pool.map(|x: u64| x * x, 0..8u64)).await;
        assert_eq!(squares.unwrap(), [0, 1, 4, 9, 16, 25, 36, 49]);
        pids.extend(pool.worker_pids());
        drop(pool);
        (forked, pids)
    });
    drop(runtime);
    assert_eq!(pids.len(), 4, "{pids:?}");
    // Bounded so that a failure is reported before the parent's own limit.
    let limit = TEST_LIMIT / 4;
    assert!(
        blocking_eventually(limit, || pids.iter().all(|&pid| process_gone(pid))),
        "children still running: {pids:?}"
    );
    let reaped = blocking_eventually(limit, || zombie_children().is_empty());
    assert!(reaped, "zombies left: {:?} of {pids:?}", zombie_children());
    forked
}

#[tokio::test]
async fn children_of_a_dropped_runtime_are_reaped() {
    on_both_paths("dropped runtime", children_outlive_their_runtime).await;
}
