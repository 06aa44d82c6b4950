//! [`QueueStats`]: a snapshot of a queue that a service can export.

/// A snapshot of a [`Queue`](crate::Queue) across all processes
/// ([`Queue::stats`](crate::Queue::stats)).
///
/// Each field is read separately while other processes work, so the snapshot is approximate,
/// like Python's `qsize()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Messages in the queue (including puts and gets in progress).
    pub len: usize,
    /// The bound, for a bounded queue.
    pub capacity: Option<usize>,
    /// Whether the queue was shut down.
    pub shutdown: bool,
    /// Getters parked waiting for a message (spinning ones are not counted).
    pub getters_waiting: usize,
    /// Putters parked waiting for room in a full bounded queue.
    pub putters_waiting: usize,
    /// Messages put and not yet marked done, for a [`JoinableQueue`](crate::JoinableQueue).
    pub unfinished_tasks: Option<usize>,
}
