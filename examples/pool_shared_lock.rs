//! A pool of 8 workers shares one `Lock` and one log file (the classic `multiprocessing.Pool`
//! tutorial, without Python's `Manager` detour).
//!
//! The initializer runs once in every worker and receives the lock and the log path; it keeps
//! them in a `static` for the tasks. `map` runs 100 tasks: each appends one line to the log
//! under the lock (written in two halves, so lines would interleave without it) and returns
//! `x * x`. The program checks the results are the squares in input order and the log holds
//! 100 whole lines, one per item.
//!
//! Run with `cargo run --release --example pool_shared_lock`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use multiproc::{Lock, Pool};

const WORKERS: usize = 8;
const ITEMS: u64 = 100;

/// What the initializer received, for this worker's tasks (Python: a global set by
/// `initializer`).
static LOG: OnceLock<(Lock, File)> = OnceLock::new();

/// Runs once in each worker, before its first task. The `Lock` arrives usable: Python's pool
/// can only pass it here by inheritance, never as a task argument.
fn init_worker((lock, path): (Lock, PathBuf)) {
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open the log");
    let _ = LOG.set((lock, file));
}

/// One task: some work, then one line in the log under the lock, and the square.
fn log_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2)); // stands in for real work
    let (lock, file) = LOG.get().expect("the initializer ran");
    let mut file: &File = file; // `&File` implements `Write`
    let line = format!(
        "item {x:3} squared is {:5} in worker {}\n",
        x * x,
        std::process::id()
    );
    let (head, tail) = line.split_at(line.len() / 2);
    // A blocking lock is fine here: a sync task runs on the worker's own thread.
    let _guard = lock.blocking_lock().expect("lock");
    file.write_all(head.as_bytes()).expect("write");
    // Without the lock, another worker's line would often land here, tearing both.
    std::thread::sleep(Duration::from_micros(100));
    file.write_all(tail.as_bytes()).expect("write");
    x * x
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The pid in the name keeps two runs at once apart.
    let path = std::env::temp_dir().join(format!(
        "multiproc-pool-shared-lock-{}.log",
        std::process::id()
    ));
    std::fs::write(&path, "")?;

    let pool = Pool::builder()
        .workers(WORKERS)
        .initializer((Lock::new()?, path.clone()), init_worker)
        .build()?;
    let squares = pool.map(log_square, 0..ITEMS).await?;
    pool.close();
    pool.join().await?;

    let text = std::fs::read_to_string(&path)?;
    std::fs::remove_file(&path)?;

    assert_eq!(squares, (0..ITEMS).map(|x| x * x).collect::<Vec<_>>());
    // Every line is whole: it parses, and each item appears exactly once.
    let mut items = HashSet::new();
    let mut workers = HashSet::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, x, _, _, square, _, _, pid] = words[..] else {
            panic!("torn line in the log: {line:?}");
        };
        let (x, square): (u64, u64) = (x.parse()?, square.parse()?);
        assert_eq!(square, x * x, "torn line in the log: {line:?}");
        assert!(items.insert(x), "item {x} logged twice");
        workers.insert(pid.to_string());
    }
    assert_eq!(text.lines().count() as u64, ITEMS);
    assert_eq!(items.len() as u64, ITEMS);
    assert!(text.ends_with('\n'));

    println!(
        "map gave {} squares in order (last: {}); the log had {} whole lines, written by {} of \
         the {WORKERS} workers",
        squares.len(),
        squares[squares.len() - 1],
        items.len(),
        workers.len()
    );
    Ok(())
}
