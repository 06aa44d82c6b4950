//! Spawns that do not wait for the fork server: `spawn` returns once the request is sent, and
//! the handle learns its child's pid on first need (join, `pid`, a signal, a drop). Every child
//! still runs exactly once and joins with its own result; a handle dropped or killed before its
//! pid was known leaves no process behind; a server killed with requests in flight settles every
//! one of them (forked children kept, the others re-executed), promptly.

use std::io::Write;
use std::time::Duration;

use multiproc::{Builder, spawn};
use multiproc_suite::{
    children_named, eventually, fork_server, process_gone, temp_file, within, zombie_children,
};

/// Makes sure this process's fork server is running: the first spawn starts it.
async fn warm_up() {
    within("warm-up child", spawn((), |()| ())).await.unwrap();
}

/// Its argument tripled, and its own pid.
fn triple(x: u64) -> (u64, u32) {
    (x * 3, std::process::id())
}

#[tokio::test]
async fn children_started_in_a_row_each_join_with_their_own_result() {
    warm_up().await;
    // More than the requests the server may have in flight at once, from one thread, as the
    // concurrent benchmark rows do: all sent before any is joined.
    const CHILDREN: u64 = 40;
    let handles: Vec<_> = (0..CHILDREN)
        .map(|i| Builder::new().spawn(i, triple).unwrap())
        .collect();
    let mut pids = Vec::new();
    for (i, mut handle) in (0..CHILDREN).zip(handles) {
        let (value, pid) = within("child", handle.join()).await.unwrap();
        assert_eq!(value, i * 3, "child {i} answered for another");
        assert_eq!(
            handle.pid(),
            Some(pid),
            "child {i}'s handle names another process"
        );
        pids.push(pid);
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len() as u64, CHILDREN, "two handles shared a child");
    assert!(eventually(|| zombie_children().is_empty()).await);
}

fn sleep_long(_: ()) {
    std::thread::sleep(Duration::from_secs(300));
}

/// Runs in a fresh process with a server of its own. Handles dropped (with `kill_on_drop`)
/// right after their spawn, and handles killed right after their spawn, before anything asked
/// for their pids: how many `kill`ed children joined as killed, how many joins there were, and
/// whether no such child (alive or zombie) was left.
async fn drop_and_kill_before_the_pid(_: ()) -> (usize, usize, bool) {
    warm_up().await;
    const EACH: usize = 6;
    for _ in 0..EACH {
        let handle = Builder::new()
            .name("mp-dropped")
            .kill_on_drop(true)
            .spawn((), sleep_long)
            .unwrap();
        drop(handle);
    }
    let handles: Vec<_> = (0..EACH)
        .map(|_| {
            let handle = Builder::new()
                .name("mp-killed")
                .spawn((), sleep_long)
                .unwrap();
            handle.kill().unwrap();
            handle
        })
        .collect();
    let mut killed = 0;
    let joins = handles.len();
    for handle in handles {
        let outcome = within("killed child", handle).await;
        killed += usize::from(outcome.is_err_and(|e| e.is_killed()));
    }
    let none_left = eventually(|| {
        children_named("mp-dropped").is_empty()
            && children_named("mp-killed").is_empty()
            && zombie_children().is_empty()
    })
    .await;
    (killed, joins, none_left)
}

#[tokio::test]
async fn handles_dropped_or_killed_before_their_pid_is_known_leave_no_process() {
    let (killed, joins, none_left) = within(
        "middle process",
        Builder::new()
            .spawn((), drop_and_kill_before_the_pid)
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        killed, joins,
        "a child killed before its pid was known was not killed"
    );
    assert!(none_left, "a dropped or killed child was left behind");
}

/// Appends its token to the log (one `write` with `O_APPEND`) and returns it.
fn record((token, log): (u64, String)) -> u64 {
    let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    file.write_all(format!("{token}\n").as_bytes()).unwrap();
    token
}

/// Runs in a fresh process with a server of its own: handles dropped right after their spawn
/// (no `kill_on_drop`) still run their children, once each, and nothing is left of them, not
/// even a zombie. Returns whether every child ran and whether none was left.
async fn drop_before_the_pid(log: String) -> (bool, bool) {
    warm_up().await;
    for token in 0..6u64 {
        let handle = Builder::new()
            .name("mp-dropped-run")
            .spawn((token, log.clone()), record)
            .unwrap();
        drop(handle);
    }
    // Each child writes before it exits, and must not be killed with this process first.
    let all_ran =
        eventually(|| std::fs::read_to_string(&log).is_ok_and(|runs| runs.lines().count() >= 6))
            .await;
    let none_left =
        eventually(|| children_named("mp-dropped-run").is_empty() && zombie_children().is_empty())
            .await;
    (all_ran, none_left)
}

/// The tokens that [`record`] wrote to `log`, sorted; removes the log.
fn tokens_recorded(log: &std::path::Path) -> Vec<u64> {
    let runs = std::fs::read_to_string(log).unwrap();
    let _ = std::fs::remove_file(log);
    let mut ran: Vec<u64> = runs.lines().map(|line| line.parse().unwrap()).collect();
    ran.sort_unstable();
    ran
}

#[tokio::test]
async fn a_handle_dropped_before_its_pid_is_known_still_runs_its_child_once() {
    let log = temp_file("dropped");
    let (all_ran, none_left) = within(
        "middle process",
        Builder::new()
            .spawn(log.to_string_lossy().into_owned(), drop_before_the_pid)
            .unwrap(),
    )
    .await
    .unwrap();
    let ran = tokens_recorded(&log);
    assert!(all_ran, "not every dropped child ran: {ran:?}");
    assert_eq!(
        ran,
        (0..6).collect::<Vec<_>>(),
        "each child runs exactly once"
    );
    assert!(none_left, "a dropped child was left behind");
}

/// Sends `signal` to process `pid`.
fn signal(pid: u32, signal: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), signal)
        .unwrap();
}

/// What a middle process saw: each spawn's outcome, whether the old server was reaped and
/// replaced, and whether no zombie was left.
type Settled = (Vec<Result<u64, String>>, bool, bool, bool);

/// Runs in a fresh process with a server of its own: stops the server (so that every request
/// below stays in flight, unanswered), spawns, kills the server, then joins every spawn.
async fn kill_with_requests_in_flight(log: String) -> Settled {
    warm_up().await;
    let server = fork_server().expect("a running fork server");
    signal(server, rustix::process::Signal::STOP);
    let handles: Vec<_> = (0..6u64)
        .map(|token| Builder::new().spawn((token, log.clone()), record).unwrap())
        .collect();
    signal(server, rustix::process::Signal::KILL);
    let mut outcomes = Vec::new();
    for handle in handles {
        outcomes.push(
            within("spawn in flight", handle)
                .await
                .map_err(|e| e.to_string()),
        );
    }
    let reaped = eventually(|| process_gone(server)).await;
    // The next spawn finds a new server (started when the first of these was re-executed).
    within("after the kill", spawn((), |()| ())).await.unwrap();
    let replaced = fork_server().is_some_and(|pid| pid != server);
    let no_zombies = eventually(|| zombie_children().is_empty()).await;
    (outcomes, reaped, replaced, no_zombies)
}

#[tokio::test]
async fn a_server_killed_with_requests_in_flight_settles_every_one() {
    let log = temp_file("in-flight");
    let (outcomes, reaped, replaced, no_zombies) = within(
        "middle process",
        Builder::new()
            .spawn(
                log.to_string_lossy().into_owned(),
                kill_with_requests_in_flight,
            )
            .unwrap(),
    )
    .await
    .unwrap();
    let ran = tokens_recorded(&log);
    let answers: Vec<u64> = outcomes.iter().map(|o| o.clone().unwrap()).collect();
    assert_eq!(
        answers,
        (0..6).collect::<Vec<_>>(),
        "each spawn gets its own child"
    );
    assert_eq!(
        ran,
        (0..6).collect::<Vec<_>>(),
        "each child runs exactly once"
    );
    assert!(reaped, "the killed server was left a zombie");
    assert!(replaced, "no new server was started");
    assert!(no_zombies, "a zombie was left");
}

#[tokio::test]
async fn a_join_dropped_after_its_first_poll_leaves_the_handle_joinable() {
    warm_up().await;
    let mut handle = Builder::new().spawn(14, slow_triple).unwrap();
    let first = {
        let join = handle.join();
        let mut join = std::pin::pin!(join);
        // The first poll learns the pid; the child still sleeps, so it is pending.
        futures::poll!(&mut join)
    };
    let (value, pid) = match first {
        // A machine so slow that the child finished before the first poll: nothing left to
        // drop, but the result must be right.
        std::task::Poll::Ready(joined) => joined.unwrap(),
        std::task::Poll::Pending => within("joined again", handle.join()).await.unwrap(),
    };
    assert_eq!(value, 42);
    assert_eq!(handle.pid(), Some(pid));
}

fn slow_triple(x: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(300));
    triple(x)
}
