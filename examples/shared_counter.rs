//! Four processes each add 1 to a `SharedValue` a thousand times under its lock: exactly 4000.
//! (Python's `Value('i', 0)` with `with v.get_lock(): v.value += 1`.)
//! Run with `cargo run --example shared_counter`.

use multiproc::SharedValue;

const PROCESSES: usize = 4;
const ADDS: i64 = 1000;

async fn add(counter: SharedValue<i64>) {
    for _ in 0..ADDS {
        let mut value = counter.lock().await.expect("lock");
        *value += 1;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let counter = SharedValue::new(0i64)?;
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| multiproc::spawn(counter.clone(), add))
        .collect();
    for child in children {
        child.await?;
    }
    let total = counter.get();
    println!("counter = {total}");
    assert_eq!(total, PROCESSES as i64 * ADDS, "lost updates");
    println!("ok");
    Ok(())
}
