//! The pool's API, Python's `Pool` call by call: `map`, `imap`, `imap_unordered`, `starmap`,
//! `apply`, submitted tasks (`apply_async`) with a timed wait, a panicking task, and sync and
//! `async` task functions.
//!
//! Run with `cargo run --release --example pool_api`.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use multiproc::Pool;

/// A sync task function: runs on the worker's main thread.
fn square(x: u64) -> u64 {
    x * x
}

/// An `async` task function: the worker runs it on its own tokio runtime.
async fn slow_square(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(x)).await;
    x * x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn checked_sqrt(x: f64) -> f64 {
    assert!(x >= 0.0, "cannot take the square root of {x}");
    x.sqrt()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = Pool::new(4)?;

    // map: every result, in input order (Python: `pool.map(square, range(10))`).
    let squares = pool.map(square, 0..10).await?;
    println!("map:            {squares:?}");
    assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);

    // The same with an async function; a closure that captures nothing works too.
    let async_squares = pool.map(slow_square, 0..10).await?;
    assert_eq!(async_squares, squares);
    let plus_one = pool.map(|x: u64| x + 1, 0..5).await?;
    assert_eq!(plus_one, [1, 2, 3, 4, 5]);

    // imap: a Stream of results in input order, each as soon as it and those before it are
    // done. The later items take less time, yet come out in order.
    let in_order: Vec<u64> = pool.imap(sleep_ms, [40, 30, 20, 10]).try_collect().await?;
    println!("imap:           {in_order:?}");
    assert_eq!(in_order, [40, 30, 20, 10]);

    // imap_unordered: results as they finish, not in input order (which worker holds which
    // task decides the order, so only the contents are checked).
    let mut finished: Vec<u64> = pool
        .imap_unordered(sleep_ms, [300, 1, 2, 3])
        .try_collect()
        .await?;
    println!("imap_unordered: {finished:?}");
    finished.sort_unstable();
    assert_eq!(finished, [1, 2, 3, 300]);

    // starmap: a function of several arguments, called with the fields of each tuple.
    let powers = pool
        .starmap(|x: u64, y: u32| x.pow(y), [(2, 10), (3, 3), (10, 2)])
        .await?;
    println!("starmap:        {powers:?}");
    assert_eq!(powers, [1024, 27, 100]);

    // apply: one call, awaited (Python: `pool.apply(square, (12,))`).
    let one = pool.apply(square, 12).await?;
    println!("apply:          {one}");
    assert_eq!(one, 144);

    // submit: the task starts now; await the handle later (Python: `apply_async(...).get()`).
    let handles: Vec<_> = (0..5).map(|x| pool.submit(square, x)).collect();
    let mut slow = pool.submit(sleep_ms, 500);
    let mut submitted = Vec::new();
    for handle in handles {
        submitted.push(handle.await?);
    }
    println!("submitted:      {submitted:?}");
    assert_eq!(submitted, [0, 1, 4, 9, 16]);

    // A timed wait that expires leaves the task running (Python: `get(timeout)`); the handle
    // can be awaited again. Dropping the handle instead would cancel the task.
    let err = slow
        .result_timeout(Duration::from_millis(10))
        .await
        .unwrap_err();
    println!("result_timeout: {err}");
    assert!(err.is_timeout());
    assert_eq!(slow.await?, 500);

    // A task that panics fails alone, with the panic message and location as data.
    let err = pool.apply(checked_sqrt, -1.0).await.unwrap_err();
    println!("panicking task: {err}");
    assert!(err.is_panic());
    assert_eq!(
        err.panic_message(),
        Some("cannot take the square root of -1")
    );
    // In a stream, the other items still succeed; `item()` says which one failed.
    let roots: Vec<_> = pool.imap(checked_sqrt, [4.0, -9.0, 16.0]).collect().await;
    let failed = roots[1].as_ref().unwrap_err();
    println!(
        "  in imap:      {failed}; the others gave {:?} and {:?}",
        roots[0], roots[2]
    );
    assert_eq!(failed.item(), Some(1));
    assert_eq!((roots[0].clone()?, roots[2].clone()?), (2.0, 4.0));

    // close: no more work; join: wait until the workers have exited.
    pool.close();
    assert!(pool.apply(square, 1).await.unwrap_err().is_closed());
    pool.join().await?;
    assert!(pool.worker_pids().is_empty());
    println!("closed and joined: no worker left");
    Ok(())
}
