//! A task kills its own worker, as an OOM kill or a segfault would: the caller gets a "worker
//! died" error at once, a fresh worker takes the dead one's place, and the pool keeps serving.
//! (Python's `Pool` hangs forever here.)
//!
//! Run with `cargo run --release --example pool_worker_death`.

use std::time::Duration;

use futures::StreamExt;
use multiproc::{Pool, PoolError};

const WORKERS: usize = 2;

fn square(x: u64) -> u64 {
    x * x
}

/// Sends SIGKILL to the worker running it: no unwinding, no cleanup, no goodbye message.
fn kill_own_worker(_: ()) -> u64 {
    let me = rustix::process::getpid();
    rustix::process::kill_process(me, rustix::process::Signal::KILL).expect("kill");
    // SIGKILL cannot be caught; this only waits for it to land.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Item 5 ends its worker with `exit(3)`; the others return their input.
fn exit_on_five(x: u64) -> u64 {
    if x == 5 {
        std::process::exit(3);
    }
    x
}

/// Waits (at most 10 s) until the pool has all its workers and `dead` is not among them. The
/// pool starts workers in the background, and may still list a dead one for a moment after
/// reporting its death, until it has reaped it.
async fn live_workers(
    pool: &Pool,
    dead: Option<u32>,
) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let settled = || {
        let pids = pool.worker_pids();
        pids.len() == pool.workers() && dead.is_none_or(|dead| !pids.contains(&dead))
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while !settled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .map_err(|_| "the pool did not have all its workers within 10 s")?;
    let mut pids = pool.worker_pids();
    pids.sort_unstable();
    Ok(pids)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::new(WORKERS)?;
    let before = live_workers(&pool, None).await?;
    println!("workers: {before:?}");

    // The task's worker dies mid-task: its result is an error, promptly, never a hang.
    let err = pool.apply(kill_own_worker, ()).await.unwrap_err();
    println!("error: {err}");
    assert!(err.is_worker_died());
    let dead = err.worker_pid().expect("the error names the dead worker");
    assert!(before.contains(&dead));

    // The pool goes on: a fresh worker (initializer included, had there been one) replaces the
    // dead one.
    let squares = pool.map(square, 0..100).await?;
    assert_eq!(squares, (0..100).map(|x| x * x).collect::<Vec<_>>());
    // A new worker has taken the dead one's slot.
    let after = live_workers(&pool, Some(dead)).await?;
    println!(
        "map after the death: {} squares; workers now: {after:?}",
        squares.len()
    );
    assert!(!after.contains(&dead));

    // In a stream, only the tasks the dead worker held fail; the others still give results.
    let results: Vec<Result<u64, PoolError>> = pool.imap(exit_on_five, 0..10).collect().await;
    let failed: Vec<&PoolError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    for e in &failed {
        println!("imap: {e}");
    }
    assert!(failed.iter().all(|e| e.is_worker_died()));
    assert!(failed.iter().any(|e| e.item() == Some(5)));
    println!("imap: {} of 10 items succeeded", 10 - failed.len());

    pool.close();
    pool.join().await?;
    Ok(())
}
