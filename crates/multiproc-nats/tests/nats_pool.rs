//! The distributed pool on a real `nats-server`, with worker hosts in real child processes
//! (each running its own local pool of worker processes): map/imap/imap_unordered/submit, a
//! host SIGKILLed mid-run, a host paused (SIGSTOP) past the ack timeout, an always-crashing
//! task (retry cap, dead letter, error to the submitter, no loop), a panic, mismatched
//! fingerprints and an unknown function; and the same per task inside chunks (many tasks in
//! one message): one failing item in a chunk, a host killed mid-chunk, a crashing item under
//! the retry policy.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use multiproc_nats::Nats;
use multiproc_nats::pool::{OnWorkerDeath, Registry, RemoteFn, WorkerHost};
use multiproc_nats::server::NatsServer;
mod support;
use support::within;

/// Short enough that redelivery tests take a few seconds.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

fn square(x: u64) -> u64 {
    x * x
}

/// Records that it started (a file named after the item and the worker's pid), then works a
/// while.
fn slow_square((dir, x, millis): (PathBuf, u64, u64)) -> u64 {
    let _ = std::fs::write(dir.join(format!("{x}-{}", std::process::id())), b"");
    std::thread::sleep(Duration::from_millis(millis));
    x * x
}

fn crash(_: u64) -> u64 {
    std::process::abort()
}

fn panics(x: u64) -> u64 {
    panic!("no good: {x}")
}

/// Squares, except 7, which panics.
fn picky(x: u64) -> u64 {
    assert!(x != 7, "not seven");
    x * x
}

/// Squares (recording that it started, as `slow_square`), except 3, whose worker dies.
fn crash_on_3((dir, x): (PathBuf, u64)) -> u64 {
    let _ = std::fs::write(dir.join(format!("{x}-{}", std::process::id())), b"");
    if x == 3 {
        std::process::abort();
    }
    x * x
}

const SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square");
const SLOW: RemoteFn<(PathBuf, u64, u64), u64> = RemoteFn::new("slow_square");
const CRASH: RemoteFn<u64, u64> = RemoteFn::new("crash");
const PANICS: RemoteFn<u64, u64> = RemoteFn::new("panics");
const PICKY: RemoteFn<u64, u64> = RemoteFn::new("picky");
const CRASH_ON_3: RemoteFn<(PathBuf, u64), u64> = RemoteFn::new("crash_on_3");

fn registry() -> Registry {
    Registry::new()
        .register(SQUARE, square)
        .register(SLOW, slow_square)
        .register(CRASH, crash)
        .register(PANICS, panics)
        .register(PICKY, picky)
        .register(CRASH_ON_3, crash_on_3)
}

/// A worker host process: serves the pool until killed.
async fn host((url, retry): (String, bool)) -> u32 {
    let nats = Nats::builder()
        .url(url)
        .namespace("p")
        .connect()
        .await
        .unwrap();
    let policy = if retry {
        OnWorkerDeath::Retry
    } else {
        OnWorkerDeath::Report
    };
    WorkerHost::builder(&nats, "work", registry())
        .workers(2)
        .ack_timeout(ACK_TIMEOUT)
        .max_attempts(3)
        .on_worker_death(policy)
        .serve()
        .await
        .unwrap();
    0
}

async fn submitter(server: &NatsServer) -> multiproc_nats::pool::Pool {
    chunked_submitter(server, None).await
}

/// A submitter whose maps send `chunksize` tasks per message (`None`: the default).
async fn chunked_submitter(
    server: &NatsServer,
    chunksize: Option<usize>,
) -> multiproc_nats::pool::Pool {
    let nats = within(
        "connect",
        Nats::builder().url(server.url()).namespace("p").connect(),
    )
    .await
    .unwrap();
    let mut builder = nats
        .pool_builder("work")
        .ack_timeout(ACK_TIMEOUT)
        .max_attempts(3);
    if let Some(chunksize) = chunksize {
        builder = builder.chunksize(chunksize);
    }
    within("open pool", builder.open()).await.unwrap()
}

/// Files in `dir` named `{x}-{pid}` by tasks that started: how many times each `x` started.
fn starts(dir: &std::path::Path) -> std::collections::HashMap<u64, usize> {
    let mut count = std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let x = name.split('-').next().unwrap().parse::<u64>().unwrap();
        *count.entry(x).or_default() += 1;
    }
    count
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "multiproc-nats-pool-{what}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn map_imap_and_submit_across_two_hosts() {
    let server = NatsServer::start().expect("nats-server");
    let pool = submitter(&server).await;
    let a = multiproc_process::spawn((server.url(), false), host);
    let b = multiproc_process::spawn((server.url(), false), host);
    let squares = within("map", pool.map(SQUARE, 0..200u64)).await.unwrap();
    assert_eq!(squares, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    let ordered: Vec<u64> = within(
        "imap",
        pool.imap(SQUARE, 0..50u64).map(Result::unwrap).collect(),
    )
    .await;
    assert_eq!(ordered, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = within(
        "imap_unordered",
        pool.imap_unordered(SQUARE, 0..50u64)
            .map(Result::unwrap)
            .collect(),
    )
    .await;
    unordered.sort();
    assert_eq!(unordered, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
    let mut handle = within("submit", pool.submit(SQUARE, 12)).await.unwrap();
    assert_eq!(
        within("result", handle.result_timeout(Duration::from_secs(30)))
            .await
            .unwrap(),
        144
    );
    assert_eq!(within("apply", pool.apply(SQUARE, 3)).await.unwrap(), 9);
    let _ = (a.kill(), b.kill());
}

/// Runs `SLOW` over `n` items of `millis` each on two hosts, SIGKILLs the first host after
/// `first` results, and checks that every result comes, once and in order.
async fn kill_a_host_mid_run(
    server: &NatsServer,
    pool: &multiproc_nats::pool::Pool,
    dir: &std::path::Path,
    (n, millis, first): (u64, u64, usize),
) {
    let a = multiproc_process::spawn((server.url(), false), host);
    let b = multiproc_process::spawn((server.url(), false), host);
    let items: Vec<_> = (0..n).map(|x| (dir.to_path_buf(), x, millis)).collect();
    let mut results = pool.imap(SLOW, items);
    let mut got = Vec::new();
    for _ in 0..first {
        got.push(
            within("first results", results.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    a.kill().unwrap();
    while let Some(r) = within("the rest", results.next()).await {
        got.push(r.expect("every task finishes on the surviving host"));
    }
    assert_eq!(got, (0..n).map(|x| x * x).collect::<Vec<_>>());
    let _ = b.kill();
}

#[tokio::test]
async fn a_killed_hosts_tasks_finish_elsewhere_with_each_result_once() {
    let server = NatsServer::start().expect("nats-server");
    let pool = submitter(&server).await;
    let dir = scratch_dir("kill");
    kill_a_host_mid_run(&server, &pool, &dir, (40, 100, 5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_paused_hosts_tasks_go_to_another_after_the_ack_timeout() {
    let server = NatsServer::start().expect("nats-server");
    let pool = submitter(&server).await;
    let dir = scratch_dir("stop");
    let a = multiproc_process::spawn((server.url(), false), host);
    // A serves (this ran on it: it is the only host).
    assert_eq!(within("warm up", pool.apply(SQUARE, 2)).await.unwrap(), 4);
    let h1 = within("submit", pool.submit(SLOW, (dir.clone(), 1, 1500)))
        .await
        .unwrap();
    let h2 = within("submit", pool.submit(SLOW, (dir.clone(), 2, 1500)))
        .await
        .unwrap();
    // Both started on A's workers: pause A (its workers finish, but A can neither heartbeat
    // nor publish).
    within("A started both", async {
        while std::fs::read_dir(&dir).unwrap().count() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    a.signal(rustix::process::Signal::STOP.as_raw()).unwrap();
    let paused = std::time::Instant::now();
    let b = multiproc_process::spawn((server.url(), false), host);
    assert_eq!(within("h1", h1).await.unwrap(), 1);
    assert_eq!(within("h2", h2).await.unwrap(), 4);
    assert!(
        paused.elapsed() >= ACK_TIMEOUT / 2,
        "finished before any redelivery"
    );
    // They ran twice (A's workers, then B's; more if a loaded machine delayed a heartbeat)...
    assert!(std::fs::read_dir(&dir).unwrap().count() >= 4);
    // ...and once A resumes, its late results are dropped; the pool goes on.
    a.signal(rustix::process::Signal::CONT.as_raw()).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        within("after", pool.map(SQUARE, 0..10u64)).await.unwrap()[3],
        9
    );
    let _ = (a.kill(), b.kill());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_always_crashing_task_is_dead_lettered_after_its_attempts() {
    let server = NatsServer::start().expect("nats-server");
    let pool = submitter(&server).await;
    let a = multiproc_process::spawn((server.url(), true), host);
    let err = within("crash", pool.apply(CRASH, 1)).await.unwrap_err();
    assert!(err.is_retries_exhausted(), "{err}");
    assert_eq!(err.attempts(), Some(3));
    assert_eq!(err.dead_letter_subject(), Some(pool.dead_letter_subject()));
    let text = err.to_string();
    assert!(
        text.contains("3 attempts") && text.contains("dead-letter"),
        "{text}"
    );
    assert_eq!(
        within("dead letters", pool.dead_letters()).await.unwrap(),
        1
    );
    // No loop: the host serves the next task.
    assert_eq!(within("after", pool.apply(SQUARE, 5)).await.unwrap(), 25);
    let _ = a.kill();
}

#[tokio::test]
async fn panics_mismatches_and_unknown_functions_are_clear_errors() {
    let server = NatsServer::start().expect("nats-server");
    let pool = submitter(&server).await;
    let a = multiproc_process::spawn((server.url(), false), host);
    let err = within("panic", pool.apply(PANICS, 7)).await.unwrap_err();
    assert!(err.is_panic(), "{err}");
    assert_eq!(err.panic_message(), Some("no good: 7"));

    // Another build's idea of `square`.
    const SQUARE_U32: RemoteFn<u32, u64> = RemoteFn::new("square");
    let err = within("mismatch", pool.apply(SQUARE_U32, 3))
        .await
        .unwrap_err();
    assert!(err.is_fingerprint_mismatch(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("fn(u64) -> u64") && text.contains("fn(u32) -> u64"),
        "{text}"
    );

    // The host's policy here is to report a dead worker process, as the local pool does.
    let err = within("worker died", pool.apply(CRASH, 1))
        .await
        .unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.attempts(), Some(1));

    const NOPE: RemoteFn<u64, u64> = RemoteFn::new("nope");
    let err = within("unknown", pool.apply(NOPE, 3)).await.unwrap_err();
    assert!(err.is_unknown_function(), "{err}");

    let err = within("map error", pool.map(PANICS, [1u64]))
        .await
        .unwrap_err();
    assert_eq!(err.item(), Some(0));
    let seen: HashSet<u64> = within("still serving", pool.map(SQUARE, 0..5u64))
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(seen.len(), 5);
    let _ = a.kill();
}

#[tokio::test]
async fn a_server_restart_mid_map_loses_no_task_and_duplicates_no_result() {
    let mut server = NatsServer::start().expect("nats-server");
    let pool = submitter(&server).await;
    let dir = scratch_dir("restart");
    let a = multiproc_process::spawn((server.url(), false), host);
    let b = multiproc_process::spawn((server.url(), false), host);
    let n = 100u64;
    let items: Vec<_> = (0..n).map(|x| (dir.clone(), x, 20)).collect();
    let mut results = pool.imap(SLOW, items);
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(
            within("first results", results.next())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    server.restart().expect("restart");
    while let Some(r) = within("the rest", results.next()).await {
        got.push(r.expect("every task finishes after the restart"));
    }
    assert_eq!(got, (0..n).map(|x| x * x).collect::<Vec<_>>());
    // The pool goes on after the restart.
    assert_eq!(within("after", pool.apply(SQUARE, 6)).await.unwrap(), 36);
    let _ = (a.kill(), b.kill());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_task_longer_than_the_ack_timeout_runs_once_while_its_host_lives() {
    let server = NatsServer::start().expect("nats-server");
    let pool = submitter(&server).await;
    let dir = scratch_dir("long");
    let a = multiproc_process::spawn((server.url(), false), host);
    let b = multiproc_process::spawn((server.url(), false), host);
    let millis = (ACK_TIMEOUT * 5 / 2).as_millis() as u64;
    assert_eq!(
        within("long task", pool.apply(SLOW, (dir.clone(), 3, millis)))
            .await
            .unwrap(),
        9
    );
    // The heartbeats kept it: no other host started it.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let _ = (a.kill(), b.kill());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_chunk_with_one_failing_item_reports_that_item_and_the_others_results() {
    let server = NatsServer::start().expect("nats-server");
    // Ten tasks per message: 0..20 is two chunks, and 7 fails inside the first.
    let pool = chunked_submitter(&server, Some(10)).await;
    let a = multiproc_process::spawn((server.url(), false), host);
    let got: Vec<_> = within("imap", pool.imap(PICKY, 0..20u64).collect()).await;
    assert_eq!(got.len(), 20);
    for (x, r) in got.into_iter().enumerate() {
        let x = x as u64;
        if x == 7 {
            let e = r.unwrap_err();
            assert!(e.is_panic(), "{e}");
            assert_eq!(e.item(), Some(7));
            assert!(e.panic_message().unwrap().contains("not seven"), "{e}");
        } else {
            assert_eq!(r.unwrap(), x * x);
        }
    }
    let err = within("map", pool.map(PICKY, 0..20u64)).await.unwrap_err();
    assert_eq!(err.item(), Some(7));
    // Many chunks, unordered: every result once.
    let mut all: Vec<u64> = within(
        "imap_unordered",
        pool.imap_unordered(SQUARE, 0..1000u64)
            .map(Result::unwrap)
            .collect(),
    )
    .await;
    all.sort_unstable();
    assert_eq!(all, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let _ = a.kill();
}

#[tokio::test]
async fn a_host_killed_mid_chunk_has_its_chunk_run_elsewhere_with_each_result_once() {
    let server = NatsServer::start().expect("nats-server");
    // Eight tasks per message: the host killed after the third result is in the middle of a
    // chunk (8 x 50 ms over its two workers).
    let pool = chunked_submitter(&server, Some(8)).await;
    let dir = scratch_dir("chunk-kill");
    let n = 48;
    kill_a_host_mid_run(&server, &pool, &dir, (n, 50, 3)).await;
    assert_eq!(starts(&dir).len() as u64, n, "every task started");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_crashing_item_in_a_chunk_is_retried_then_dead_lettered_alone() {
    let server = NatsServer::start().expect("nats-server");
    let pool = chunked_submitter(&server, Some(6)).await;
    let dir = scratch_dir("chunk-crash");
    let a = multiproc_process::spawn((server.url(), true), host);
    let items: Vec<_> = (0..6u64).map(|x| (dir.clone(), x)).collect();
    let got: Vec<_> = within("imap", pool.imap(CRASH_ON_3, items).collect()).await;
    for (x, r) in got.iter().enumerate() {
        let x = x as u64;
        if x == 3 {
            let e = r.as_ref().unwrap_err();
            assert!(e.is_retries_exhausted(), "{e}");
            assert_eq!(e.attempts(), Some(3));
            assert_eq!(e.item(), Some(3));
        } else {
            assert_eq!(*r.as_ref().unwrap(), x * x);
        }
    }
    // The chunk ran on each of its attempts (more if a loaded machine delayed a heartbeat);
    // only the crashing item went to the dead letters.
    assert!(starts(&dir).get(&3).is_some_and(|&n| n >= 3));
    assert_eq!(
        within("dead letters", pool.dead_letters()).await.unwrap(),
        1
    );
    assert_eq!(within("after", pool.apply(SQUARE, 5)).await.unwrap(), 25);
    let _ = a.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
