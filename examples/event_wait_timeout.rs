//! An `Event` with two waiting processes: one waits without a timeout, one with a short one.
//!
//! The parent sets the event only after the timed waiter has given up: the timed waiter reports
//! `false`, the other `true`.
//! Run with `cargo run --example event_wait_timeout`.

use std::time::{Duration, Instant};

use multiproc::Event;

async fn wait_forever(event: Event) -> bool {
    event.wait().await.is_ok()
}

async fn wait_briefly(event: Event) -> (bool, u128) {
    let start = Instant::now();
    let set = event
        .wait_timeout(Duration::from_millis(200))
        .await
        .expect("wait");
    (set, start.elapsed().as_millis())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let event = Event::new()?;
    let untimed = multiproc::spawn(event.clone(), wait_forever);
    let timed = multiproc::spawn(event.clone(), wait_briefly);

    let (timed_result, waited_ms) = timed.await?;
    println!("timed waiter (200 ms): {timed_result} after {waited_ms} ms");
    event.set();
    println!("parent set the event");
    let untimed_result = untimed.await?;
    println!("untimed waiter: {untimed_result}");

    assert!(!timed_result, "the timed waiter should have timed out");
    assert!(waited_ms >= 200, "the timed wait returned early");
    assert!(untimed_result, "the untimed waiter should see the event");
    println!("ok");
    Ok(())
}
