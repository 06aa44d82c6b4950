//! Processes: how one process names a function for another ([`remote_fn`], the one entry
//! mechanism of spawns, pool tasks and later the Manager), how a re-executed or forked copy of
//! the program becomes a child running one ([`bootstrap`]), starting it ([`spawner::spawn`],
//! over the private `exec` and fork server), watching and reaping it ([`pidfd`], [`reaper`]),
//! and who a process is ([`cpu`]; [`identity`], which lives in `sys` so that `wait` can use it
//! too; [`title`], its name in `ps`). Families and budgets: [`tree`] (a child's descendants,
//! killed together), [`limits`] (rlimits, the cgroup's CPU quota and delegation). External
//! programs with descriptors at fixed numbers: [`spawner::spawn_program`].
//!
//! May import: `sys`, `shm`, `message`, `transport`, `wait` (the spin setting a child inherits). Nothing imports `proc` but the crates
//! above core. Inside, imports point one way: `spawner` → fork server → `exec` → `bootstrap`
//! → `remote_fn`, with `pidfd`, `reaper` and `identity` below them all; `tree` uses `pidfd`; `limits` and
//! `title` import nothing of proc.

pub mod bootstrap;
pub mod cpu;
mod exec;
mod external;
#[doc(hidden)]
pub mod fork_floor;
mod forkserver;
pub use crate::sys::identity;
pub mod limits;
pub mod pidfd;
pub mod reaper;
pub mod remote_fn;
pub mod spawner;
pub mod title;
pub mod tree;
