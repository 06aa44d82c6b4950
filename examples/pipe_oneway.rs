//! A one-way pipe: a child sends 0, 1, 2 and closes; the reader gets them, then end-of-stream.
//!
//! Using a one-way pipe in the wrong direction does not compile:
//!
//! ```compile_fail
//! # async fn wrong() -> Result<(), Box<dyn std::error::Error>> {
//! let (tx, mut rx) = multiproc::pipe::simplex::<u32>()?;
//! rx.send(1).await?; // error[E0599]: no method named `send` found for `Receiver<u32>`
//! # Ok(()) }
//! ```
//!
//! Run with `cargo run --example pipe_oneway`.

use multiproc::pipe::{self, Sender};

fn count(mut tx: Sender<u32>) {
    for i in 0..3 {
        tx.blocking_send(i).expect("reader closed");
    }
    // Dropping `tx` closes the child's copy: the reader sees end-of-stream.
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (tx, mut rx) = pipe::simplex::<u32>()?;
    let child = multiproc::spawn(tx, count); // our copy of `tx` moves into the child

    let mut got = Vec::new();
    while let Some(i) = rx.recv().await? {
        println!("received {i}");
        got.push(i);
    }
    println!("end-of-stream");
    assert_eq!(got, [0, 1, 2]);
    child.await?;
    Ok(())
}
