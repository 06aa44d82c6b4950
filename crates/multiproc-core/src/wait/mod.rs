//! A cross-process wait queue: a shared word that counts waiters, and an eventfd that is written
//! only when that count is non-zero. The engine under every `multiproc-sync` primitive and the
//! queue's waits.
//!
//! Waiting: announce (count += 1), take an edge-triggered registration of the eventfd, then
//! loop { clear the word's `WOKEN` bit; check the shared state; wait for an edge }. Notifying:
//! change the shared state, then, if the count is non-zero and `WOKEN` is clear, set `WOKEN`
//! and write the eventfd (only the waker that set the bit writes). All of it is `SeqCst`, so
//! either the waiter's check sees the new state or the notifier sees the waiter (the futex
//! argument); and a notifier that finds `WOKEN` set knows that a write came after every parked
//! waiter's last clear, so each will clear and check again after it, hence after this change.
//! Wake-ups are broadcasts that nobody consumes, so dropping a waiter mid-wait loses nothing for
//! the others.
//!
//! Registrations are reused: each wait queue (with its clones in this process) keeps one async
//! registration (for the runtime that made it) and one blocking one, and a wait takes it
//! *exclusively* and puts it back when it ends, however it ends. A registration only has to
//! exist before the waiter's last check, which a cached one does; what it carries over from
//! earlier waits is at most a stale readiness, which costs one spurious re-check. It must never
//! serve two waits at once: one waiter's `clear_ready` could then swallow the edge another
//! waiter has not yet looked at. A wait that finds the slot empty (another wait of this process
//! holds it) or holding another runtime's registration makes a fresh one; whichever is put back
//! last stays cached.
//!
//! **The area.** Waiting across processes without blocking a runtime thread: the eventfd wake-up
//! ([`eventfd`]), the wait queue every primitive and queue parks on ([`WaitQueue`]), the arenas
//! that hold thousands of small primitives' state and share a few eventfds among them
//! ([`arena`]), the robust
//! lock over it that `multiproc-sync`'s `Lock` and the queue share ([`RobustLock`]), the one
//! spin policy that decides when to park and its driver loop ([`spin`]), what a waiter does
//! while its peer shares its CPU ([`ParkApart`]), the liveness tick
//! ([`LIVENESS_TICK`]) and the timeout-to-deadline rule ([`deadline_after`]).
//!
//! May import: `shm`, `sys` (process identities too), `message` (for handles that travel).
//! Never `transport` or `proc`.

pub mod arena;
pub mod eventfd;
mod park_apart;
mod robust_lock;
pub mod spin;
mod wait_queue;

pub use park_apart::{ParkApart, TAKE_TURNS};
pub use robust_lock::RobustLock;
pub use wait_queue::{LIVENESS_TICK, WaitQueue, deadline_after};
