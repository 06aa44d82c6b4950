//! A tour of multiproc: child processes you `.await`, typed pipes between them, handles that
//! travel, and errors that say what happened.
//!
//! Run with `cargo run --release --example tour`.

use std::time::{Duration, Instant};

use futures::{SinkExt, TryStreamExt};
use multiproc::pipe::{self, Duplex, Receiver, Sender};
use serde::{Deserialize, Serialize};

/// A typed message: any serde type works.
#[derive(Debug, Serialize, Deserialize)]
enum Job {
    Square(u64),
    Words(String),
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Square(u64),
    WordCount(usize),
}

/// Runs in a child: answers jobs until the parent closes its end.
async fn worker(mut end: Duplex<Answer, Job>) -> usize {
    let mut done = 0;
    while let Some(job) = end.recv().await.expect("bad message from parent") {
        let answer = match job {
            Job::Square(x) => Answer::Square(x * x),
            Job::Words(s) => Answer::WordCount(s.split_whitespace().count()),
        };
        end.send(answer).await.expect("parent went away");
        done += 1;
    }
    done
}

/// Runs in a child: streams numbers into a pipe end it was handed.
async fn producer((count, mut out): (u64, Sender<u64>)) -> u64 {
    for i in 0..count {
        out.feed(i).await.expect("reader went away"); // batched: few system calls
    }
    out.flush().await.expect("reader went away");
    count
}

/// Runs in a child: sums whatever arrives until the writer closes.
async fn summer(input: Receiver<u64>) -> u64 {
    input
        .try_fold(0, |acc, x| async move { Ok(acc + x) })
        .await
        .expect("bad stream")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("multiproc tour (parent pid {})\n", std::process::id());

    // 1. A child process is an awaitable task.
    let start = Instant::now();
    let answer = multiproc::spawn(6u64, |x: u64| x * 7).await?;
    println!(
        "1. spawn: a child computed 6 * 7 = {answer} in {:.1?}",
        start.elapsed()
    );

    // 2. Typed request/response over a duplex pipe, with a long-lived child.
    let (mut here, there) = pipe::duplex::<Job, Answer>()?;
    let child = multiproc::spawn(there, worker);
    here.send(Job::Square(12)).await?;
    here.send(Job::Words("the quick brown fox".into())).await?;
    let a = here.recv().await?;
    let b = here.recv().await?;
    println!("2. duplex pipe: {a:?}, {b:?}");
    drop(here); // end-of-stream: the worker's loop ends
    println!("   worker handled {} jobs and exited", child.await?);

    // 3. Handles travel: a pipe's two ends go to two different children, which stream to each
    //    other directly.
    let (tx, rx) = pipe::simplex::<u64>()?;
    let n = 100_000u64;
    let start = Instant::now();
    let sum = multiproc::spawn(rx, summer);
    let sent = multiproc::spawn((n, tx), producer);
    let (sent, sum) = (sent.await?, sum.await?);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "3. child-to-child stream: {sent} messages, sum {sum} (expected {}), {:.0} msgs/s",
        n * (n - 1) / 2,
        sent as f64 / secs
    );
    assert_eq!(sum, n * (n - 1) / 2);

    // 4. Many children at once.
    let start = Instant::now();
    let handles: Vec<_> = (1..=16u64)
        .map(|i| multiproc::spawn(i, |i: u64| (1..=i).product::<u64>()))
        .collect();
    let results = futures::future::try_join_all(handles).await?;
    println!(
        "4. 16 children in {:.1?}: 16! = {}",
        start.elapsed(),
        results[15]
    );

    // 5. Failures are data: a panic, a kill, a timeout.
    println!("5. (the child below panics on purpose: its message on stderr is expected)");
    let err = multiproc::spawn((), |()| -> u32 { panic!("something broke") })
        .await
        .unwrap_err();
    println!("5. panic:   {err}");
    let mut sleeper = multiproc::spawn((), |()| std::thread::sleep(Duration::from_secs(60)));
    let err = sleeper
        .join_timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    println!("   timeout: {err} (alive: {})", sleeper.is_alive());
    sleeper.kill()?;
    let err = sleeper.join().await.unwrap_err();
    println!(
        "   kill:    {err}; exitcode {}",
        sleeper.exit_status().map_or(0, |s| s.exitcode())
    );

    println!("\ndone.");
    Ok(())
}
