//! The `procspawn` peer: `procspawn` 1.0 (default features), the `spawn_join` workload only.
//!
//! `procspawn::spawn((), noop).join()`, sequentially, as the multiproc row does
//! `multiproc::spawn((), noop).await`: procspawn re-executes this binary, whose `main` calls
//! `procspawn::init()` first (procspawn's one line of setup), passes the function by address
//! and the argument and result over an ipc-channel, and waits for the child's exit in `join`.

use std::io;
use std::time::Instant;

/// The trivial child.
fn noop(_: ()) {}

/// One spawn and join.
fn once() -> io::Result<()> {
    procspawn::spawn((), noop)
        .join()
        .map_err(|e| io::Error::other(format!("procspawn child: {e}")))
}

/// `spawn_join`: milliseconds per sequential spawn + join of a trivial child.
pub(crate) fn spawn_join(n: u64) -> io::Result<f64> {
    for _ in 0..2 {
        once()?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        once()?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e3 / n as f64)
}
