//! Joining with a timeout, terminating and killing, and reading exit statuses.
//!
//! A child that hangs: a 500 ms timed join returns with the child still alive; `terminate()`
//! ends it and its exit status shows SIGTERM; a second child killed shows SIGKILL.
//! Run with `cargo run --example join_timeout`.

use std::time::{Duration, Instant};

fn hang(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut child = multiproc::spawn((), hang);
    let start = Instant::now();
    let err = child
        .join_timeout(Duration::from_millis(500))
        .await
        .unwrap_err();
    println!("join_timeout(500ms) after {:.0?}: {err}", start.elapsed());
    assert!(err.is_timeout() && child.is_alive());

    child.terminate()?;
    let err = child.join().await.unwrap_err();
    let status = child.exit_status().expect("joined");
    println!(
        "after terminate(): {err}; status {status}, exitcode {}",
        status.exitcode()
    );
    assert_eq!(status.signal(), Some(15));
    assert_eq!(status.exitcode(), -15);

    let mut second = multiproc::spawn((), hang);
    second.kill()?;
    let err = second.join().await.unwrap_err();
    let status = second.exit_status().expect("joined");
    println!(
        "after kill():      {err}; status {status}, exitcode {}",
        status.exitcode()
    );
    assert_eq!(status.signal(), Some(9));
    Ok(())
}
