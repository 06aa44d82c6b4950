//! A pool whose workers have a memory limit: the task that allocates past it fails with an
//! out-of-memory error naming its item, a fresh worker takes the dead one's place, and the
//! pool goes on with the other items. (Under Celery, Dask or Ray this is a worker lost to a
//! mystery.)
//!
//! Run with `cargo run --example memory_limit`.

use futures::StreamExt;
use multiproc::Pool;

const MIB: usize = 1 << 20;

/// Builds a table of `mib` MiB and returns its checksum.
fn build_table(mib: usize) -> u64 {
    let table: Vec<u8> = (0..mib * MIB).map(|i| i as u8).collect();
    table.iter().map(|&b| u64::from(b)).sum()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let limit = 512 * MIB as u64;
    let pool = Pool::builder()
        .workers(2)
        .worker_memory_limit(limit)
        .build()?;
    println!("workers limited to {} MiB each", limit / MIB as u64);

    // Item 2 asks for 4 GiB: its worker cannot allocate it.
    let sizes = vec![1, 8, 4096, 16, 2];
    let mut outcomes = pool.imap(build_table, sizes.clone()).chunksize(1);
    let mut item = 0;
    while let Some(outcome) = outcomes.next().await {
        match outcome {
            Ok(sum) => println!("item {item} ({} MiB): checksum {sum}", sizes[item]),
            Err(e) if e.is_out_of_memory() => {
                println!("item {item}: {e}");
                assert_eq!(e.item(), Some(item));
            }
            Err(e) => return Err(e.into()),
        }
        item += 1;
    }
    // The pool goes on.
    println!("after the failure: {}", pool.apply(build_table, 1).await?);
    pool.close();
    pool.join().await?;
    Ok(())
}
