//! Ten workers in a process set: one crashes, the set sees it first (completion order), and the
//! rest are shut down gracefully: each is asked to stop (`SIGTERM`), finishes the unit of work
//! it is in, and returns how many units it did (one that would not stop would be killed after
//! the grace period). Nothing is left running when `main` returns (Python's "join the
//! non-daemon children at exit", on purpose).
//!
//! Run with `cargo run --example process_set`.

use std::time::Duration;

use multiproc::process::{ProcessSet, current_process, stop_requested};

/// Works in units of 20 ms until asked to stop; worker 3 crashes after a few units.
async fn worker(id: u32) -> u32 {
    let stop = stop_requested();
    tokio::pin!(stop);
    let mut units = 0;
    loop {
        tokio::select! {
            _ = &mut stop => return units,
            _ = tokio::time::sleep(Duration::from_millis(20)) => units += 1,
        }
        if id == 3 && units == 5 {
            panic!("{} hit a bad record", current_process().name());
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut set = ProcessSet::new();
    for id in 0..10 {
        set.spawn(id, id, worker)?;
    }
    println!("started {} workers", set.len());

    // The first to finish is the one that crashed.
    let (id, crashed) = set.join_next().await.expect("ten members");
    let error = crashed.expect_err("worker 3 crashes");
    println!("worker {id} failed: {error}");

    let live: Vec<u32> = set.live().map(|(id, _)| *id).collect();
    println!("still running: {live:?}; shutting them down");
    for (id, outcome) in set.shutdown(Duration::from_secs(5)).await {
        match outcome {
            Ok(units) => println!("worker {id} stopped cleanly after {units} units"),
            Err(e) => println!("worker {id}: {e}"),
        }
    }
    assert!(set.is_empty());
    Ok(())
}
