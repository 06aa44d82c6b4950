//! Children as a family: the sentinel (`exited`), process sets (join in completion order,
//! graceful shutdown with escalation, nothing left after a drop), `active_children`, graceful
//! stop seen from the child, and blocking joins for code outside of async.

use std::time::{Duration, Instant};

use multiproc::process::{ProcessSet, active_children, stop_requested};
use multiproc::{Builder, Event, spawn};
use multiproc_suite::{eventually, process_gone, within, within_blocking};

fn sleep_forever(_: ()) {
    std::thread::sleep(Duration::from_secs(3600));
}

/// Sleeps `ms` milliseconds, then returns them.
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Takes stop requests (`SIGTERM`) and answers them: `ready` is set once the handler is in.
async fn graceful(ready: Event) -> String {
    let stop = stop_requested();
    tokio::pin!(stop);
    // Polled first: the handler is installed before `ready` tells the parent.
    tokio::select! {
        biased;
        stopped = &mut stop => return format!("stopped early: {stopped:?}"),
        () = async { ready.set() } => {}
    }
    match stop.await {
        Ok(()) => "stopped cleanly".to_string(),
        Err(e) => format!("no stop: {e}"),
    }
}

/// Takes the stop request and ignores it: only `SIGKILL` ends it.
async fn stubborn(ready: Event) -> String {
    let stop = stop_requested();
    tokio::pin!(stop);
    tokio::select! {
        biased;
        _ = &mut stop => {}
        () = async { ready.set() } => {}
    }
    let _ = stop.await;
    // Asked to stop, and it will not.
    std::future::pending::<String>().await
}

#[tokio::test]
async fn the_sentinel_works_in_select_any_number_of_times() {
    let mut child = spawn(300, nap);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            exited = child.exited() => { exited.unwrap(); break; }
            _ = tokio::time::sleep(Duration::from_millis(20)) => ticks += 1,
        }
        assert!(ticks < 3000, "the sentinel never fired");
    }
    assert!(!child.is_alive());
    // Again, and twice at once: an exited child stays exited.
    let (a, b) = tokio::join!(child.exited(), child.exited());
    a.unwrap();
    b.unwrap();
    // Watching took nothing: the join still gives the result.
    assert_eq!(
        within("join after the sentinel", child.join())
            .await
            .unwrap(),
        300
    );
    within("sentinel after the join", child.exited())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_set_joins_in_completion_order() {
    let mut set = ProcessSet::new();
    set.spawn("slow", 3_600_000, nap).unwrap();
    set.spawn("quick", 0, nap).unwrap();
    assert_eq!(set.len(), 2);
    let (key, result) = within("first join", set.join_next()).await.unwrap();
    assert_eq!((key, result.unwrap()), ("quick", 0));
    let live: Vec<&str> = set.live().map(|(k, _)| *k).collect();
    assert_eq!(live, ["slow"]);
    set.get(&"slow").unwrap().kill().unwrap();
    let (key, result) = within("second join", set.join_next()).await.unwrap();
    assert_eq!(key, "slow");
    assert_eq!(result.unwrap_err().signal(), Some(9));
    assert!(within("empty set", set.join_next()).await.is_none());
}

#[tokio::test]
async fn set_shutdown_stops_gracefully_and_kills_who_ignores_it() {
    let mut set = ProcessSet::new();
    let ready = [Event::new().unwrap(), Event::new().unwrap()];
    set.spawn("graceful", ready[0].clone(), graceful).unwrap();
    set.spawn("stubborn", ready[1].clone(), stubborn).unwrap();
    set.spawn("plain", (), |()| {
        std::thread::sleep(Duration::from_secs(3600));
        String::new()
    })
    .unwrap();
    for event in &ready {
        assert!(
            within("child ready", event.wait_timeout(Duration::from_secs(60)))
                .await
                .unwrap()
        );
    }
    let pids: Vec<u32> = set.iter().map(|(_, h)| h.pid().unwrap()).collect();
    let grace = Duration::from_millis(500);
    let started = Instant::now();
    let mut results = within("shutdown", set.shutdown(grace)).await;
    assert!(
        started.elapsed() >= grace,
        "the stubborn child got its grace period"
    );
    results.sort_by_key(|(k, _)| *k);
    let [(_, graceful), (_, plain), (_, stubborn)] = results.try_into().unwrap();
    assert_eq!(graceful.unwrap(), "stopped cleanly");
    assert_eq!(
        plain.unwrap_err().signal(),
        Some(15),
        "SIGTERM ends a child that did not ask"
    );
    assert_eq!(
        stubborn.unwrap_err().signal(),
        Some(9),
        "escalated to SIGKILL"
    );
    assert!(set.is_empty());
    for pid in pids {
        assert!(process_gone(pid));
    }
}

#[tokio::test]
async fn a_dropped_set_leaves_nothing_running() {
    let mut set = ProcessSet::new();
    for n in 0..3 {
        set.spawn(n, (), sleep_forever).unwrap();
    }
    let pids: Vec<u32> = set.iter().map(|(_, h)| h.pid().unwrap()).collect();
    drop(set);
    assert!(
        eventually(|| pids.iter().all(|&p| process_gone(p))).await,
        "members of a dropped set still run"
    );
}

#[tokio::test]
async fn shutdown_of_one_handle_gives_a_graceful_childs_result() {
    let ready = Event::new().unwrap();
    let mut child = spawn(ready.clone(), graceful);
    assert!(
        within("ready", ready.wait_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
    );
    let result = within("shutdown", child.shutdown(Duration::from_secs(30))).await;
    assert_eq!(result.unwrap(), "stopped cleanly");
}

#[tokio::test]
async fn active_children_lists_the_running_ones_and_reaps_the_rest() {
    let a = Builder::new()
        .name("ac-sleeper-a")
        .spawn((), sleep_forever)
        .unwrap();
    let mut b = Builder::new()
        .name("ac-sleeper-b")
        .spawn((), sleep_forever)
        .unwrap();
    let ours = |names: &[&str]| {
        let mut found: Vec<String> = active_children()
            .into_iter()
            .filter(|c| c.name().starts_with("ac-sleeper"))
            .map(|c| c.name().to_string())
            .collect();
        found.sort();
        found == names
    };
    assert!(ours(&["ac-sleeper-a", "ac-sleeper-b"]));
    let listed = active_children();
    let entry = listed.iter().find(|c| c.name() == "ac-sleeper-a").unwrap();
    assert_eq!(Some(entry.pid()), a.pid());
    b.kill().unwrap();
    assert!(eventually(|| ours(&["ac-sleeper-a"])).await);
    // Reaped by `active_children`, and no zombie left...
    assert!(process_gone(b.pid().unwrap()));
    // ...but the status is kept for the join.
    let err = within("join of a reaped child", b.join())
        .await
        .unwrap_err();
    assert_eq!(err.signal(), Some(9));
    a.kill().unwrap();
    drop(a);
}

#[tokio::test]
async fn blocking_join_works_outside_of_async() {
    let child = spawn(6, |x: u32| x * 7);
    let answer = within_blocking("blocking join", move || {
        let mut child = child;
        child.blocking_join()
    })
    .await;
    assert_eq!(answer.unwrap(), 42);

    let sleeper = spawn((), sleep_forever);
    let (timed_out, then) = within_blocking("blocking join with a timeout", move || {
        let mut sleeper = sleeper;
        let started = Instant::now();
        let first = sleeper.blocking_join_timeout(Duration::from_millis(100));
        let waited = started.elapsed();
        sleeper.kill().unwrap();
        (
            (first.unwrap_err().is_timeout(), waited),
            sleeper.blocking_join_timeout(Duration::from_secs(60)),
        )
    })
    .await;
    assert!(timed_out.0, "the first join times out");
    assert!(timed_out.1 >= Duration::from_millis(100));
    assert_eq!(then.unwrap_err().signal(), Some(9));
}

#[test]
fn blocking_join_needs_no_runtime_once_spawned() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Spawned inside the runtime (its handle registers there), joined after it is gone.
    let mut child = {
        let _inside = runtime.enter();
        spawn(20, |x: u32| x + 1)
    };
    // The runtime that spawned it is gone: a blocking join still works.
    drop(runtime);
    assert_eq!(child.blocking_join().unwrap(), 21);
    assert!(child.blocking_join().unwrap_err().is_already_joined());
}

#[tokio::test]
async fn a_dropped_join_next_loses_no_member() {
    let mut set = ProcessSet::new();
    set.spawn("sleeper", (), sleep_forever).unwrap();
    // Cancelled mid-wait: the member stays, joinable.
    let waited = tokio::time::timeout(Duration::from_millis(50), set.join_next()).await;
    assert!(waited.is_err());
    assert_eq!(set.len(), 1);
    set.kill_all();
    let (key, result) = within("join after a cancelled wait", set.join_next())
        .await
        .unwrap();
    assert_eq!(key, "sleeper");
    assert_eq!(result.unwrap_err().signal(), Some(9));
}

#[tokio::test]
async fn a_dropped_sentinel_or_join_leaves_the_handle_joinable() {
    let mut child = spawn(150, nap);
    assert!(
        tokio::time::timeout(Duration::from_millis(1), child.exited())
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(1), child.join())
            .await
            .is_err()
    );
    assert_eq!(within("join", child.join()).await.unwrap(), 150);
}

/// Drops a first wait for a stop request, then waits again: the request reaches the second.
async fn stop_after_a_cancelled_wait(ready: Event) -> bool {
    let first = tokio::time::timeout(Duration::from_millis(1), stop_requested()).await;
    assert!(first.is_err(), "no stop was requested yet");
    ready.set();
    stop_requested().await.is_ok() && multiproc::process::is_stop_requested()
}

#[tokio::test]
async fn a_stop_request_is_not_lost_to_a_dropped_wait() {
    let ready = Event::new().unwrap();
    let mut child = spawn(ready.clone(), stop_after_a_cancelled_wait);
    assert!(
        within("ready", ready.wait_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
    );
    assert!(
        within("shutdown", child.shutdown(Duration::from_secs(30)))
            .await
            .unwrap()
    );
}

fn send<T: Send>() {}
fn sync<T: Sync>() {}

#[test]
fn family_types_are_send_and_sync() {
    use multiproc::process::{
        ChildInfo, ChildStderr, ChildStdin, ChildStdout, Command, CommandChild, ParentProcess,
        ProcessInfo,
    };
    send::<ProcessSet<String, u64>>();
    send::<CommandChild>();
    sync::<CommandChild>();
    send::<Command>();
    send::<ChildStdin>();
    send::<ChildStdout>();
    send::<ChildStderr>();
    send::<ProcessInfo>();
    sync::<ProcessInfo>();
    send::<ParentProcess>();
    sync::<ParentProcess>();
    send::<ChildInfo>();
    sync::<ChildInfo>();
}

#[allow(clippy::let_underscore_future)]
#[tokio::test]
async fn family_futures_are_send() {
    fn send_val<T: Send>(_: &T) {}
    let mut set: ProcessSet<u32, u64> = ProcessSet::new();
    send_val(&set.join_next());
    send_val(&set.shutdown(Duration::ZERO));
    let mut child = spawn(0, nap);
    send_val(&child.exited());
    send_val(&child.shutdown(Duration::ZERO));
    send_val(&stop_requested());
    child.kill().unwrap();
    let _ = within("join", child).await;
}
