//! Typed pipes between processes: [`duplex`] (both ends send and receive) and [`simplex`]
//! (one sender, one receiver), Python's `Pipe(duplex=True)` and `Pipe(duplex=False)`.
//!
//! Each message is a serde value encoded with postcard; message boundaries are kept, an empty
//! message is a real message, and handles inside a message (another pipe end, a lock, shared
//! memory...) travel as file descriptors beside the bytes and arrive usable. Ends are handles
//! themselves: pass one to a spawned child or send it through another pipe.
//!
//! Using a one-way pipe the wrong way is a compile error:
//!
//! ```compile_fail
//! # async fn wrong() -> Result<(), Box<dyn std::error::Error>> {
//! let (tx, mut rx) = multiproc::pipe::simplex::<u32>()?;
//! rx.send(1).await?; // a Receiver has no `send`
//! # Ok(()) }
//! ```
//!
//! ```compile_fail
//! # async fn wrong() -> Result<(), Box<dyn std::error::Error>> {
//! let (mut tx, rx) = multiproc::pipe::simplex::<u32>()?;
//! let _ = tx.recv().await?; // a Sender has no `recv`
//! # Ok(()) }
//! ```
//!
//! # Waiting
//! A receive waits without blocking a tokio thread. Right after the end has sent something (a
//! request whose answer is due), it may first spend up to about 50 us looking for the answer,
//! which makes request/reply exchanges much faster than a sleep and a wake-up each way; it
//! stops doing so when that does not pay, or while other processes keep the CPU busy.
//!
//! # The shared ring
//! The two ends of a pipe also share a small region of memory: small messages without handles
//! go through it without a system call (a waiting receiver sees them within a fraction of a
//! microsecond), and the rest through the socket, in one order. Ends keep it when they travel
//! to other processes. If two copies of a sending end are used at once (one kept, one passed
//! on), the pipe goes back to the socket for that direction, still in order per copy.
//!
//! # Closing
//! A receiver sees end-of-stream (`Ok(None)`) when every copy of the other end, in every
//! process, is closed, after all messages sent before were delivered. A copy passed to a child
//! counts: drop your own after passing it if the reader should see the end when the child
//! is done.

mod duplex;
mod lent;
mod receiver;
mod sender;

pub use duplex::Duplex;
pub use lent::Lent;
pub use receiver::Receiver;
pub use sender::Sender;

use multiproc_core::transport::channel;

/// Creates a duplex pipe: the first end sends `A` and receives `B`, the second the reverse.
///
/// # Errors
/// When the process is out of descriptors.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use multiproc::pipe;
///
/// let (mut parent, mut child) = pipe::duplex::<String, usize>()?;
/// parent.send("ping".to_string()).await?;
/// let got = child.recv().await?.unwrap();
/// child.send(got.len()).await?;
/// assert_eq!(parent.recv().await?, Some(4));
/// # Ok(())
/// # }
/// ```
pub fn duplex<A, B>() -> std::io::Result<(Duplex<A, B>, Duplex<B, A>)> {
    let (a, b) = channel::pair()?;
    Ok((Duplex::from_end(a)?, Duplex::from_end(b)?))
}

/// Creates a one-way pipe: a [`Sender`] and a [`Receiver`] of `T`.
///
/// # Errors
/// When the process is out of descriptors.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::{SinkExt, TryStreamExt};
///
/// let (mut tx, rx) = multiproc::pipe::simplex::<u64>()?;
/// for i in 0..3 {
///     tx.feed(i).await?; // buffered: one write for the batch
/// }
/// tx.flush().await?;
/// drop(tx);
/// let all: Vec<u64> = rx.try_collect().await?;
/// assert_eq!(all, [0, 1, 2]);
/// # Ok(())
/// # }
/// ```
pub fn simplex<T>() -> std::io::Result<(Sender<T>, Receiver<T>)> {
    let (a, b) = channel::pair()?;
    let (tx, _) = channel::split_end(a)?;
    let (_, rx) = channel::split_end(b)?;
    Ok((Sender::from_raw(tx), Receiver::from_raw(rx)))
}
