//! Three consumer processes take 20 items from a `JoinableQueue` and call `task_done` for each;
//! `join()` returns once all 20 are processed, and one more `task_done()` is an error.
//!
//! Run with `cargo run --example joinable_queue`.

use multiproc::{JoinableQueue, Queue};

async fn consume((jobs, done): (JoinableQueue<u32>, Queue<u32>)) {
    // Ends when the parent closes the queue.
    while let Ok(job) = jobs.get().await {
        done.put(job * 10).await.expect("results queue closed");
        jobs.task_done().expect("more task_done calls than jobs");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let jobs: JoinableQueue<u32> = JoinableQueue::new()?;
    let done: Queue<u32> = Queue::new()?;
    let consumers: Vec<_> = (0..3)
        .map(|_| multiproc::spawn((jobs.clone(), done.clone()), consume))
        .collect();

    for job in 0..20 {
        jobs.put(job).await?;
    }
    jobs.join().await?;
    assert_eq!(jobs.unfinished_tasks(), 0);

    // Every job was processed by the time join returned.
    let mut results = Vec::new();
    while let Ok(r) = done.try_get() {
        results.push(r);
    }
    results.sort_unstable();
    assert_eq!(results, (0..20).map(|j| j * 10).collect::<Vec<_>>());
    println!("join() returned with {} items processed", results.len());

    let extra = jobs.task_done();
    assert!(extra.is_err());
    println!("a further task_done() is an error: {}", extra.unwrap_err());

    jobs.shutdown();
    for c in consumers {
        c.await?;
    }
    Ok(())
}
