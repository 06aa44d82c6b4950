//! Why a pool task has no result.

use std::fmt;
use std::sync::Arc;

/// The error underneath a pool error, shared by its clones and reachable through `source()`.
type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why a task submitted to a [`Pool`](super::Pool) has no result.
///
/// Opaque; ask it with the predicates ([`is_panic`](Self::is_panic),
/// [`is_worker_died`](Self::is_worker_died), [`is_closed`](Self::is_closed)...). Errors of
/// [`map`](super::Pool::map) and the `imap` streams say which item failed
/// ([`item`](Self::item)). Cheap to clone.
#[derive(Clone)]
pub struct PoolError(Box<Inner>);

#[derive(Clone)]
struct Inner {
    kind: Kind,
    item: Option<usize>,
}

#[derive(Clone)]
enum Kind {
    Panicked {
        message: String,
        location: Option<String>,
    },
    WorkerDied {
        pid: u32,
        cause: String,
        /// For a task lost with its chunk: the item whose task was running when the worker
        /// died (the culprit, or the victim of an outside kill).
        running: Option<usize>,
        /// The worker ran out of memory under this limit (bytes).
        out_of_memory: Option<u64>,
    },
    Initializer {
        message: String,
        location: Option<String>,
    },
    Spawn(Cause),
    Encode {
        cause: Cause,
        /// The initializer's arguments, not a task's.
        initializer: bool,
    },
    BadArgs(String),
    BadResult(String),
    Closed,
    NotClosed,
    Terminated,
    Cancelled,
    TimedOut,
    NoRuntime,
    /// A builder or call option out of range; what is wrong.
    InvalidOption(&'static str),
}

impl PoolError {
    fn new(kind: Kind) -> Self {
        Self(Box::new(Inner { kind, item: None }))
    }
    pub(crate) fn panicked(message: String, location: Option<String>) -> Self {
        Self::new(Kind::Panicked { message, location })
    }
    pub(crate) fn worker_died(pid: u32, cause: String, out_of_memory: Option<u64>) -> Self {
        Self::new(Kind::WorkerDied {
            pid,
            out_of_memory,
            cause,
            running: None,
        })
    }
    pub(crate) fn initializer(message: String, location: Option<String>) -> Self {
        Self::new(Kind::Initializer { message, location })
    }
    pub(crate) fn spawn(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(Kind::Spawn(Arc::from(cause.into())))
    }
    pub(crate) fn encode(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(Kind::Encode {
            cause: Arc::from(cause.into()),
            initializer: false,
        })
    }
    pub(crate) fn encode_initializer(
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::new(Kind::Encode {
            cause: Arc::from(cause.into()),
            initializer: true,
        })
    }
    pub(crate) fn bad_args(cause: String) -> Self {
        Self::new(Kind::BadArgs(cause))
    }
    pub(crate) fn bad_result(cause: String) -> Self {
        Self::new(Kind::BadResult(cause))
    }
    pub(crate) fn closed() -> Self {
        Self::new(Kind::Closed)
    }
    pub(crate) fn not_closed() -> Self {
        Self::new(Kind::NotClosed)
    }
    pub(crate) fn terminated() -> Self {
        Self::new(Kind::Terminated)
    }
    pub(crate) fn cancelled() -> Self {
        Self::new(Kind::Cancelled)
    }
    pub(crate) fn timed_out() -> Self {
        Self::new(Kind::TimedOut)
    }
    pub(crate) fn no_runtime() -> Self {
        Self::new(Kind::NoRuntime)
    }
    pub(crate) fn invalid_option(why: &'static str) -> Self {
        Self::new(Kind::InvalidOption(why))
    }

    /// For a worker death: the same error, for a task lost because the worker died while
    /// running the task for item `index` of the same chunk. Other errors are unchanged.
    pub(crate) fn while_running(mut self, index: usize) -> Self {
        if let Kind::WorkerDied { running, .. } = &mut self.0.kind {
            *running = Some(index);
        }
        self
    }

    /// The error of the task that caused this one: for a task lost with a worker that died
    /// running another item's task, that item's error; otherwise this error.
    pub(crate) fn into_cause(mut self) -> Self {
        if let Kind::WorkerDied { running, .. } = &mut self.0.kind
            && let Some(index) = running.take()
        {
            self.0.item = Some(index);
        }
        self
    }

    /// The same error, about item `index` of a map.
    pub(crate) fn at_item(mut self, index: usize) -> Self {
        self.0.item = Some(index);
        self
    }

    /// The index (in the input) of the item whose task failed, for errors of `map`, `starmap`
    /// and the `imap` streams.
    pub fn item(&self) -> Option<usize> {
        self.0.item
    }

    /// True when the task's function panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.0.kind, Kind::Panicked { .. })
    }

    /// The panic message, when the task (or the initializer) panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.0.kind {
            Kind::Panicked { message, .. } | Kind::Initializer { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Where the task (or the initializer) panicked, as `file:line:column`, when known.
    pub fn panic_location(&self) -> Option<&str> {
        match &self.0.kind {
            Kind::Panicked { location, .. } | Kind::Initializer { location, .. } => {
                location.as_deref()
            }
            _ => None,
        }
    }

    /// True when the worker process running the task died (killed, aborted, or exited from
    /// inside the task) before the task finished.
    pub fn is_worker_died(&self) -> bool {
        matches!(self.0.kind, Kind::WorkerDied { .. })
    }

    /// True when the worker died because it ran out of memory under its limit
    /// ([`PoolBuilder::worker_memory_limit`](super::PoolBuilder::worker_memory_limit)), while
    /// running this task (or, with [`item`](Self::item) different from the running one, the
    /// task of its chunk that was running). [`memory_limit`](Self::memory_limit) gives it.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(
            self.0.kind,
            Kind::WorkerDied {
                out_of_memory: Some(_),
                ..
            }
        )
    }

    /// The worker's memory limit in bytes, for [`is_out_of_memory`](Self::is_out_of_memory)
    /// errors.
    pub fn memory_limit(&self) -> Option<u64> {
        match self.0.kind {
            Kind::WorkerDied { out_of_memory, .. } => out_of_memory,
            _ => None,
        }
    }

    /// The pid of the worker that died, for [`is_worker_died`](Self::is_worker_died) errors.
    pub fn worker_pid(&self) -> Option<u32> {
        match self.0.kind {
            Kind::WorkerDied { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// True when the pool's initializer panicked: the pool cannot run tasks any more.
    pub fn is_initializer_failure(&self) -> bool {
        matches!(self.0.kind, Kind::Initializer { .. })
    }

    /// True when no worker process could be started.
    pub fn is_spawn_failure(&self) -> bool {
        matches!(self.0.kind, Kind::Spawn(_))
    }

    /// True when the task's arguments could not be encoded (nothing was sent), or the worker
    /// could not decode them.
    pub fn is_bad_args(&self) -> bool {
        matches!(self.0.kind, Kind::Encode { .. } | Kind::BadArgs(_))
    }

    /// True when the task ran but its result could not be encoded or decoded.
    pub fn is_bad_result(&self) -> bool {
        matches!(self.0.kind, Kind::BadResult(_))
    }

    /// True when the pool was closed (or terminated) before this work was submitted.
    pub fn is_closed(&self) -> bool {
        matches!(self.0.kind, Kind::Closed)
    }

    /// True when [`Pool::terminate`](super::Pool::terminate) (or dropping the pool) stopped
    /// the task.
    pub fn is_terminated(&self) -> bool {
        matches!(self.0.kind, Kind::Terminated)
    }

    /// True when the task was cancelled with [`TaskHandle::abort`](super::TaskHandle::abort).
    pub fn is_cancelled(&self) -> bool {
        matches!(self.0.kind, Kind::Cancelled)
    }

    /// True when a timed wait for a result expired.
    pub fn is_timeout(&self) -> bool {
        matches!(self.0.kind, Kind::TimedOut)
    }

    /// True when an option was out of range: zero [`workers`](super::PoolBuilder::workers),
    /// [`max_tasks_per_worker`](super::PoolBuilder::max_tasks_per_worker) or chunk size
    /// ([`PoolBuilder::chunksize`](super::PoolBuilder::chunksize),
    /// [`Map::chunksize`](super::Map::chunksize) and the streams'). Nothing ran.
    pub fn is_invalid_option(&self) -> bool {
        matches!(self.0.kind, Kind::InvalidOption(_))
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let task = match self.0.item {
            Some(i) => format!("task for item {i}"),
            None => "task".to_string(),
        };
        match &self.0.kind {
            Kind::Panicked { message, location } => {
                write!(f, "{task} panicked")?;
                if let Some(at) = location {
                    write!(f, " at {at}")?;
                }
                write!(f, ": {message}")
            }
            Kind::WorkerDied {
                pid,
                cause,
                running: None,
                ..
            } => write!(
                f,
                "worker process {pid} died while running the {task}: {cause}"
            ),
            Kind::WorkerDied {
                pid,
                cause,
                running: Some(running),
                ..
            } => write!(
                f,
                "worker process {pid} died while running the task for item {running}, and \
                 the {task} (in the same chunk) with it: {cause}"
            ),
            Kind::Initializer { message, location } => {
                write!(f, "the pool initializer panicked")?;
                if let Some(at) = location {
                    write!(f, " at {at}")?;
                }
                write!(f, ": {message}")
            }
            // The cause is the `source()`, not part of this text.
            Kind::Spawn(_) => f.write_str("cannot start a pool worker"),
            Kind::Encode {
                initializer: true, ..
            } => f.write_str("cannot encode the initializer's arguments"),
            Kind::Encode { .. } => write!(f, "cannot encode the {task}'s arguments"),
            Kind::BadArgs(cause) => {
                write!(
                    f,
                    "the worker cannot decode the {task}'s arguments: {cause}"
                )
            }
            Kind::BadResult(cause) => write!(f, "the {task}'s result did not arrive: {cause}"),
            Kind::Closed => f.write_str("the pool is closed"),
            Kind::NotClosed => f.write_str("join() needs close() or terminate() first"),
            Kind::Terminated => write!(f, "the pool was terminated before the {task} finished"),
            Kind::Cancelled => write!(f, "the {task} was cancelled"),
            Kind::TimedOut => f.write_str("timed out before the result was ready"),
            Kind::NoRuntime => f.write_str("a pool must be built inside a tokio runtime"),
            Kind::InvalidOption(why) => f.write_str(why),
        }
    }
}

impl fmt::Debug for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PoolError({self})")
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0.kind {
            Kind::Spawn(cause) | Kind::Encode { cause, .. } => Some(&**cause),
            _ => None,
        }
    }
}
