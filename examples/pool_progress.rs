//! A progress bar over a long `imap`: 2,000 tasks of about a millisecond each, the bar moving
//! as the results stream in (Python: `tqdm(pool.imap(f, items), total=n)`).
//!
//! The bar is drawn with indicatif on stderr, when stderr is a terminal.
//! Run with `cargo run --release --example pool_progress`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use multiproc::Pool;

const TASKS: u64 = 2_000;

/// Stands in for real work: about a millisecond each.
fn work(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    x * x
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One worker per CPU, the default.
    let pool = Pool::builder().build()?;
    let bar = ProgressBar::new(TASKS).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} tasks  {elapsed_precise}  eta {eta}",
    )?);

    let start = Instant::now();
    // imap yields each result as soon as it and those before it are done, so the bar moves
    // steadily; `map` would give nothing until the end. Its default chunk size is 1 (one
    // result per task); a larger one moves the bar in steps but costs fewer messages.
    let mut results = pool.imap(work, 0..TASKS);
    let mut next = 0;
    while let Some(result) = results.next().await {
        assert_eq!(result?, next * next, "results come in input order");
        next += 1;
        bar.inc(1);
    }
    bar.finish();
    assert_eq!(next, TASKS);

    println!(
        "{TASKS} results in order from {} workers in {:.2?}",
        pool.workers(),
        start.elapsed()
    );
    Ok(())
}
