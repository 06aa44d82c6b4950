//! Two worker processes each put 50 `(worker, i, i*i)` results on one queue; the parent collects
//! all 100 and checks that each worker's results arrived in order.
//!
//! Run with `cargo run --example queue_collect`.

use multiproc::Queue;

async fn work((results, worker): (Queue<(u32, u32, u32)>, u32)) {
    for i in 0..50 {
        results.put((worker, i, i * i)).await.expect("queue closed");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let results: Queue<(u32, u32, u32)> = Queue::new()?;
    let workers = [
        multiproc::spawn((results.clone(), 0), work),
        multiproc::spawn((results.clone(), 1), work),
    ];

    let mut next = [0u32; 2];
    for _ in 0..100 {
        let (worker, i, square) = results.get().await?;
        assert_eq!(
            i, next[worker as usize],
            "worker {worker}'s results out of order"
        );
        assert_eq!(square, i * i);
        next[worker as usize] += 1;
    }
    for worker in workers {
        worker.await?;
    }
    assert_eq!(next, [50, 50]);
    assert!(results.is_empty());
    println!("collected 100 results, 50 from each worker, each worker's in order");
    Ok(())
}
