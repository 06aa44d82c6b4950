//! Processes: how a re-executed or forked copy of the program becomes a child running one
//! function ([`bootstrap`], [`remote_fn`]), starting it ([`spawner`], the private fork server),
//! watching and reaping it ([`pidfd`], [`reaper`]), and who a process is ([`cpu`];
//! [`identity`], which lives in `sys` so that `wait` can use it too).
//!
//! May import: `sys`, `shm`, `message`, `transport`. Nothing imports `proc` but the crates
//! above core.

pub mod bootstrap;
pub mod cpu;
mod forkserver;
pub use crate::sys::identity;
pub mod pidfd;
pub mod reaper;
pub mod remote_fn;
pub mod spawner;
