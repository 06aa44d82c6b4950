//! Five worker processes share a `Semaphore(2)`: never more than two inside at once.
//!
//! Each worker prints when it acquires and releases, and counts itself in and out of a shared
//! counter; the parent checks the counter's peak never exceeded two.
//! Run with `cargo run --example semaphore_limit`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use multiproc::{Semaphore, SharedMemory};

const WORKERS: usize = 5;
const LIMIT: usize = 2;

async fn worker((sem, counters, id): (Semaphore, SharedMemory, usize)) {
    let inside = counters.region().atomic_u64(0);
    let peak = counters.region().atomic_u64(8);
    for round in 0..3 {
        let permit = sem.acquire().await.expect("acquire");
        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(now, Ordering::SeqCst);
        println!("worker {id} acquired (round {round}, {now} inside)");
        tokio::time::sleep(Duration::from_millis(20)).await;
        inside.fetch_sub(1, Ordering::SeqCst);
        println!("worker {id} releasing");
        drop(permit);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sem = Semaphore::new(LIMIT)?;
    let counters = SharedMemory::new(16)?;
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| multiproc::spawn((sem.clone(), counters.clone(), id), worker))
        .collect();
    for w in workers {
        w.await?;
    }
    let peak = counters.region().atomic_u64(8).load(Ordering::SeqCst);
    println!("peak inside: {peak} (limit {LIMIT})");
    assert!(
        peak >= 1 && peak <= LIMIT as u64,
        "semaphore limit exceeded: {peak}"
    );
    assert_eq!(sem.available_permits(), LIMIT);
    println!("ok");
    Ok(())
}
