//! Resource limits per child and per pool worker (rlimits: memory, CPU time, open files),
//! out-of-memory attribution for children and pool tasks, and recycling a pool worker whose
//! memory passed a threshold.

use std::time::Duration;

use multiproc::{Builder, Pool, spawn};
use multiproc_suite::within;

const MIB: u64 = 1 << 20;
/// Room for the child's own program, runtime and stacks, with a margin.
const LIMIT: u64 = 512 * MIB;

/// Allocates `mib` MiB and touches every page; gives back how many bytes it touched.
fn allocate(mib: u64) -> u64 {
    let mut block = vec![0u8; (mib * MIB) as usize];
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    std::hint::black_box(&block);
    block.iter().map(|&b| u64::from(b)).sum::<u64>() * 4096
}

#[tokio::test]
async fn a_child_past_its_memory_limit_is_out_of_memory() {
    let within_limit = Builder::new()
        .memory_limit(LIMIT)
        .spawn(16, allocate)
        .unwrap();
    assert_eq!(
        within("small allocation", within_limit).await.unwrap(),
        16 * MIB
    );

    let past_limit = Builder::new()
        .memory_limit(LIMIT)
        .stderr(std::process::Stdio::null())
        .spawn(4096, allocate)
        .unwrap();
    let err = within("large allocation", past_limit).await.unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    assert_eq!(err.memory_limit(), Some(LIMIT));
    assert!(err.to_string().contains("out of memory"), "{err}");

    // Without a limit the same abort is not blamed on memory.
    let abort = spawn((), abort);
    let err = within("abort", abort).await.unwrap_err();
    assert!(!err.is_out_of_memory());
    assert_eq!(err.signal(), Some(6));
}

fn abort(_: ()) {
    std::process::abort()
}

fn exit_three(_: ()) {
    std::process::exit(3)
}

fn spin(_: ()) {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn open_many(n: usize) -> Result<usize, String> {
    let mut files = Vec::new();
    for _ in 0..n {
        match std::fs::File::open("/proc/self/stat") {
            Ok(f) => files.push(f),
            Err(e) => return Err(format!("after {}: {e}", files.len())),
        }
    }
    Ok(files.len())
}

#[tokio::test]
async fn the_open_files_limit_holds_in_the_child() {
    let limited = Builder::new()
        .open_files_limit(32)
        .spawn(64, open_many)
        .unwrap();
    let outcome = within("limited child", limited).await.unwrap();
    let err = outcome.unwrap_err();
    assert!(err.contains("Too many open files"), "{err}");
    let free = within("unlimited child", spawn(64, open_many))
        .await
        .unwrap();
    assert_eq!(free, Ok(64));
}

#[tokio::test]
async fn the_cpu_time_limit_ends_a_spinning_child() {
    let spinner = Builder::new()
        .cpu_time_limit(Duration::from_millis(300))
        .spawn((), spin)
        .unwrap();
    let err = within("spinning child", spinner).await.unwrap_err();
    // SIGXCPU at the soft limit (rounded up to one second).
    assert_eq!(err.signal(), Some(24), "{err}");
}

#[tokio::test]
async fn a_pool_task_past_the_workers_limit_fails_as_out_of_memory() {
    let pool = Pool::builder()
        .workers(1)
        .worker_memory_limit(LIMIT)
        .build()
        .unwrap();
    let map = pool.map(allocate, vec![8, 8, 4096, 8]).chunksize(1);
    let err = within("map", map).await.unwrap_err();
    assert!(err.is_out_of_memory(), "{err}");
    assert!(err.is_worker_died());
    assert_eq!(err.memory_limit(), Some(LIMIT));
    assert_eq!(err.item(), Some(2), "the error names the item: {err}");
    assert!(err.to_string().contains("out of memory"), "{err}");
    // A worker that dies otherwise is not blamed on memory.
    let killed = pool.submit(exit_three, ());
    let err = within("abort", killed).await.unwrap_err();
    assert!(err.is_worker_died() && !err.is_out_of_memory(), "{err}");
    // And the pool goes on.
    assert_eq!(
        within("apply", pool.apply(allocate, 8)).await.unwrap(),
        8 * MIB
    );
}

/// Leaks `mib` MiB (touched) and gives the worker's pid.
fn leak(mib: u64) -> u32 {
    let block = vec![1u8; (mib * MIB) as usize];
    std::mem::forget(block);
    std::process::id()
}

#[tokio::test]
async fn a_pool_recycles_a_worker_above_its_memory_threshold() {
    let recycling = Pool::builder()
        .workers(1)
        .recycle_above_memory(128 * MIB)
        .build()
        .unwrap();
    let mut pids = Vec::new();
    for _ in 0..3 {
        pids.push(
            within("leaky task", recycling.apply(leak, 160))
                .await
                .unwrap(),
        );
    }
    pids.dedup();
    assert_eq!(
        pids.len(),
        3,
        "each leaky task should get a fresh worker: {pids:?}"
    );

    let keeping = Pool::builder().workers(1).build().unwrap();
    let mut pids = Vec::new();
    for _ in 0..3 {
        pids.push(within("small task", keeping.apply(leak, 1)).await.unwrap());
    }
    pids.dedup();
    assert_eq!(pids.len(), 1, "no recycling without a threshold");
}
