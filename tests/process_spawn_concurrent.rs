//! Spawns from many threads at once: fork-server requests go from the spawning thread itself,
//! yet every child stays a child of this process tied to the long-lived spawner thread (a daemon
//! child outlives the thread that spawned it), and every spawn gets its own child and result,
//! even while the fork server is killed again and again.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use multiproc::{Builder, spawn};
use multiproc_suite::{
    TEST_LIMIT, eventually, fork_server, process_gone, temp_file, within, zombie_children,
};

/// A variable every child gets from its builder: a re-executed child finds it in the
/// environment block the kernel built at `exec` (`/proc/<pid>/environ`), a child forked from
/// the server does not (that block is the server's).
const MARKER: &str = "MULTIPROC_TEST_CONCURRENT_MARKER";

/// Whether `pid` (a child of ours) was forked by the fork server rather than re-executed.
fn forked_from_server(pid: u32) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let marker = format!("{MARKER}=");
    !environ
        .split(|b| *b == 0)
        .any(|var| var.starts_with(marker.as_bytes()))
}

/// Makes sure this process's fork server is running: the first spawn starts it.
async fn warm_up() {
    within("warm-up child", spawn((), |()| ())).await.unwrap();
}

/// What each child reports: its argument doubled, its parent and whether it was forked.
fn report(x: u64) -> (u64, u32, bool) {
    let environ = std::fs::read("/proc/self/environ").unwrap();
    let marker = format!("{MARKER}=");
    let forked = !environ
        .split(|b| *b == 0)
        .any(|var| var.starts_with(marker.as_bytes()));
    (x * 2, std::os::unix::process::parent_id(), forked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn children_spawned_from_many_threads_at_once_each_report_to_their_spawner() {
    warm_up().await;
    const TASKS: u64 = 8;
    const EACH: u64 = 8;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(async move {
                // Start this task's children together, then join them all.
                let handles: Vec<_> = (0..EACH)
                    .map(|i| {
                        Builder::new()
                            .env(MARKER, "1")
                            .spawn(t * EACH + i, report)
                            .unwrap()
                    })
                    .collect();
                let mut seen = Vec::new();
                for handle in handles {
                    seen.push(within("concurrent child", handle).await.unwrap());
                }
                seen
            })
        })
        .collect();
    let mut doubled = Vec::new();
    let mut forked = 0;
    for task in tasks {
        for (value, parent, was_forked) in within("spawning task", task).await.unwrap() {
            assert_eq!(parent, std::process::id(), "every child is ours");
            doubled.push(value);
            forked += usize::from(was_forked);
        }
    }
    doubled.sort_unstable();
    let expected: Vec<u64> = (0..TASKS * EACH).map(|x| x * 2).collect();
    assert_eq!(doubled, expected, "each spawn ran its own child once");
    // The server ran all along (a server abandoned under load re-executes a child or two).
    assert!(forked > 0, "no child came from the fork server");
    assert!(
        eventually(|| zombie_children().is_empty()).await,
        "zombies left: {:?}",
        zombie_children()
    );
}

/// A daemon child that waits to be killed.
fn wait_forever(_: ()) {
    std::thread::sleep(TEST_LIMIT);
}

#[tokio::test]
async fn a_daemon_child_outlives_the_thread_that_spawned_it() {
    warm_up().await;
    // Spawned from a thread (with its own runtime) that ends right after: the request went
    // from that thread, but the kernel's parent-death signal follows the thread that started
    // the server, which lives as long as the process.
    let spawn_from_a_thread = || {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _entered = rt.enter();
            Builder::new()
                .env(MARKER, "1")
                .spawn((), wait_forever)
                .unwrap()
        })
        .join()
        .unwrap()
    };
    // A server abandoned under load (2 s without an answer) re-executes one child: try again.
    let mut child = spawn_from_a_thread();
    for _ in 0..4 {
        if forked_from_server(child.pid().unwrap()) {
            break;
        }
        child.kill().unwrap();
        let _ = within("re-executed child", child.join()).await;
        child = spawn_from_a_thread();
    }
    let pid = child.pid().unwrap();
    assert!(
        forked_from_server(pid),
        "the child was re-executed, not forked"
    );
    // The thread is gone: a child tied to it would have had SIGKILL by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.is_alive() && !process_gone(pid),
        "the child died with the thread that spawned it: {:?}",
        child.exit_status()
    );
    child.kill().unwrap();
    let err = within("killed child", child.join()).await.unwrap_err();
    assert!(err.is_killed(), "{err}");
}

/// A child that appends its token to the shared log (one `write` with `O_APPEND`, so lines of
/// several children never mix) and returns it.
fn record((token, log): (u64, String)) -> u64 {
    let mut file = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    file.write_all(format!("{token}\n").as_bytes()).unwrap();
    token
}

/// Each spawning thread's tokens and what came of them: the child's answer or why not.
type Outcomes = Vec<(u64, Result<u64, String>)>;

const THREADS: u64 = 4;
const EACH: u64 = 8;

/// Runs in a fresh process with a server of its own: several threads spawn children while
/// another thread kills the fork server every few milliseconds. Returns every spawn's
/// outcome, how many servers it killed, and whether no zombie was left.
async fn spawn_through_kills(log: String) -> (Outcomes, usize, bool) {
    warm_up().await;
    // True when a server was found and killed.
    let kill_server = || {
        fork_server()
            .and_then(|server| rustix::process::Pid::from_raw(server as i32))
            .is_some_and(|pid| {
                rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
            })
    };
    let mut kills = usize::from(kill_server());
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut kills = 0;
            while !stop.load(Ordering::Relaxed) {
                kills += usize::from(kill_server());
                std::thread::sleep(Duration::from_millis(5));
            }
            kills
        })
    };
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let _entered = rt.enter();
                // This thread's children are started together, then joined.
                let spawned: Vec<_> = (0..EACH)
                    .map(|i| {
                        let token = t * EACH + i;
                        (token, Builder::new().spawn((token, log.clone()), record))
                    })
                    .collect();
                spawned
                    .into_iter()
                    .map(|(token, child)| {
                        let outcome = match child {
                            Ok(mut child) => child
                                .blocking_join_timeout(TEST_LIMIT)
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        (token, outcome)
                    })
                    .collect::<Outcomes>()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for thread in threads {
        outcomes.extend(thread.join().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    kills += killer.join().unwrap();
    // A killed server is reaped by the next spawn, which finds it dead (the last one killed
    // has had none yet).
    within("last child", spawn((), |()| ())).await.unwrap();
    let no_zombies = eventually(|| zombie_children().is_empty()).await;
    (outcomes, kills, no_zombies)
}

#[tokio::test]
async fn spawns_from_many_threads_survive_a_fork_server_killed_again_and_again() {
    let log = temp_file("kills");
    let (outcomes, kills, no_zombies) = within(
        "middle process",
        Builder::new()
            .spawn(log.to_string_lossy().into_owned(), spawn_through_kills)
            .unwrap(),
    )
    .await
    .unwrap();
    let runs = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let ran: Vec<u64> = runs.lines().map(|line| line.parse().unwrap()).collect();
    assert_eq!(outcomes.len() as u64, THREADS * EACH);
    let mut started = 0;
    for (token, outcome) in &outcomes {
        let times = ran.iter().filter(|&&r| r == *token).count();
        match outcome {
            // Each handle got its own child's answer, from a child that ran once.
            Ok(answer) => {
                assert_eq!(answer, token, "a handle got another spawn's answer");
                assert_eq!(times, 1, "child {token} ran {times} times");
                started += 1;
            }
            // A spawn may fail (a server that outlived SIGKILL for seconds), never silently.
            Err(why) => {
                assert!(!why.is_empty());
                assert!(times <= 1, "child {token} ran {times} times");
            }
        }
    }
    assert!(started > 0, "no spawn succeeded: {outcomes:?}");
    // At least the server running at the start (warmed up) was killed.
    assert!(kills > 0, "no server was killed");
    eprintln!(
        "{kills} servers killed; {started} of {} spawns succeeded",
        outcomes.len()
    );
    assert!(
        ran.iter().all(|&r| r < THREADS * EACH),
        "a child ran that no spawn asked for: {runs}"
    );
    assert!(no_zombies, "zombies were left in the middle process");
}
