//! Async child processes that run a Rust function, for multiproc.
//!
//! [`spawn`] starts a child process running a function and returns a [`JoinHandle`] to
//! `.await` its result, like `tokio::spawn` for processes. The child is this same program,
//! re-executed (never `fork()`ed from a threaded process): a constructor that runs before
//! `main` recognises it and jumps to the function, so there is no setup to write, in binaries,
//! examples and test binaries alike, and `main` never runs twice.
//!
//! Children as a family: [`ProcessSet`] (keyed children joined as they finish, stopped
//! together), [`JoinHandle::exited`] (a sentinel), [`active_children`], [`current_process`] and
//! [`parent_process`], graceful stop ([`stop_requested`], [`JoinHandle::shutdown`]), whole-tree
//! kills, resource limits ([`Builder::memory_limit`]...), piped stdio, and external programs
//! with descriptors passed at fixed numbers ([`Command`]).
//!
//! Linux only.
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

mod builder;
mod child;
mod children;
mod command;
pub mod error;
mod function;
mod identity;
mod join;
mod panic;
pub mod pool;
mod set;
mod spawn_protocol;
mod status;
mod stdio;
mod stop;
mod trace;

pub use builder::Builder;
pub use children::{ChildInfo, active_children};
pub use command::{Command, CommandChild, FD_ENV_PREFIX};
pub use error::{JoinError, SpawnError};
pub use function::{ChildOutput, Returns, ReturnsFuture};
pub use identity::{ParentProcess, ProcessInfo, current_process, parent_process};
pub use join::JoinHandle;
pub use set::ProcessSet;
pub use status::{ExitStatus, signal_name};
pub use stdio::{ChildStderr, ChildStdin, ChildStdout};
pub use stop::{is_stop_requested, stop_requested};
#[cfg(feature = "tracing")]
pub use trace::child_span;
pub use trace::{RemoteSpan, remote_parent};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Runs `f(args)` in a new child process; await the handle for the result.
///
/// The same as `Builder::new().spawn(args, f)`, except that a failure to start the process is
/// reported when the handle is awaited ([`JoinError::is_spawn_failure`]) rather than here.
/// See [`Builder::spawn`] for what `f`, `args` and the result may be.
///
/// # Panics
/// Outside a tokio runtime (with I/O and time drivers).
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// async fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let a = multiproc::spawn(7, square);
/// let b = multiproc::spawn((2, 3), |(x, y): (u32, u32)| x.pow(y));
/// assert_eq!(a.await?, 49);
/// assert_eq!(b.await?, 8);
/// # Ok(())
/// # }
/// ```
pub fn spawn<A, R, M, F>(args: A, f: F) -> JoinHandle<R::Output>
where
    A: Serialize + DeserializeOwned + 'static,
    F: Fn(A) -> R + Copy + Send + 'static,
    R: ChildOutput<M>,
{
    Builder::new()
        .spawn(args, f)
        .unwrap_or_else(JoinHandle::not_started)
}
