//! # multiproc: async-first multiprocessing for Rust and tokio
//!
//! Python's `multiprocessing`, for tokio services: child processes you `.await`, a process [`Pool`]
//! whose results are futures and streams, typed pipes and queues between processes, and
//! cross-process locks, semaphores and events whose waits never block a runtime thread. Linux only
//! (it is built on `SCM_RIGHTS`, eventfd, memfd and pidfd).
//!
//! ## A first example
//!
//! ```no_run
//! use multiproc::pipe;
//!
//! // A child process: a `fn` or non-capturing closure, sync or async. Its arguments and
//! // result are serde types, and may contain handles such as this pipe end.
//! async fn shout(mut end: pipe::Duplex<String, String>) -> usize {
//!     let mut n = 0;
//!     while let Ok(Some(word)) = end.recv().await {
//!         end.send(word.to_uppercase()).await.unwrap();
//!         n += 1;
//!     }
//!     n
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (mut here, there) = pipe::duplex::<String, String>()?;
//!     let child = multiproc::spawn(there, shout);
//!     here.send("ping".into()).await?;
//!     assert_eq!(here.recv().await?.as_deref(), Some("PING"));
//!     drop(here); // end-of-stream for the child
//!     assert_eq!(child.await?, 1);
//!     Ok(())
//! }
//! ```
//!
//! ## From Python's multiprocessing
//!
//! | Python                                   | multiproc                                              |
//! |------------------------------------------|--------------------------------------------------------|
//! | `Process(target=f, args=a).start()`      | [`spawn(a, f)`](spawn) or [`Builder`]`::new().name(..).spawn(a, f)` |
//! | `p.join()`, `p.join(timeout)`            | `handle.await`, [`JoinHandle::join_timeout`]           |
//! | `p.exitcode`, `p.pid`, `p.is_alive()`    | [`JoinHandle::exit_status`], [`JoinHandle::pid`], [`JoinHandle::is_alive`] |
//! | `p.terminate()`, `p.kill()`              | [`JoinHandle::terminate`], [`JoinHandle::kill`]        |
//! | `p.daemon = True`                        | [`Builder::daemon`] (the default: children die with their parent) |
//! | `p.sentinel`, `connection.wait`          | [`JoinHandle::exited`] in `select!`                     |
//! | `current_process()`, `parent_process()`, `active_children()` | [`process::current_process`], [`process::parent_process`], [`process::active_children`]; sets of children: [`process::ProcessSet`] |
//! | `subprocess.Popen(..., pass_fds=...)`, pipes | [`process::Command`] (`pass_fd`), `Stdio::piped()` with [`JoinHandle::stdout`]... |
//! | `Pipe()`, `Pipe(duplex=False)`           | [`pipe::duplex`], [`pipe::simplex`]                    |
//! | `conn.send`, `recv`, `poll(t)`           | `send().await`, `recv().await`, `ready_timeout(t)` (takes nothing), `recv_timeout(t)` |
//! | `connection.Listener(addr, authkey=k)`, `Client(addr, authkey=k)` | [`connection::Listener::bind`]`(addr, Auth::key(k))`, [`connection::connect`]; [`connection::python`] for Python peers |
//! | `Lock()`, `RLock()`                      | [`Lock`], [`RLock`]: `lock().await` gives a guard; a dead holder is detected ([`LockGuard::owner_died`]) |
//! | `Semaphore(n)`, `BoundedSemaphore(n)`    | [`Semaphore`], [`BoundedSemaphore`] (over-release is an error) |
//! | `Event()`                                | [`Event`]: `set`, `clear`, `is_set`, `wait().await`, `wait_timeout` |
//! | `Condition(lock)`                        | [`Condition`]: wait/notify through the [`ConditionGuard`], so doing it unlocked cannot compile |
//! | `Barrier(n)`                             | [`Barrier`]: `wait().await` gives each index once per phase; `abort`, `reset` |
//! | `Queue(maxsize)`, `JoinableQueue()`      | [`Queue<T>`] (`put`/`get` async, `try_*`, `*_timeout`, `Stream`/`Sink`, `shutdown`), [`JoinableQueue<T>`] (`task_done`, `join().await`) |
//! | `Value('i', 0)`, `Array('d', n)`         | [`SharedValue<T>`], [`SharedArray<T>`] (with `get_lock()`), [`SharedMemory`] |
//! | `Pool(n, initializer, initargs)`         | [`Pool::builder`]`().workers(n).initializer(args, f).build()?` (the arguments may hold handles) |
//! | `pool.map`, `starmap`, `imap`, `imap_unordered` | [`Pool::map`]`(f, items).await`, [`Pool::starmap`], [`Pool::imap`] and [`Pool::imap_unordered`] (`Stream`s) |
//! | `SharedMemory(name=n, create=True, size=s)`, `SharedMemory(name=n)`, `unlink()` | [`SharedMemory::create`] / [`attach`](SharedMemory::attach) (gone with its owner, nothing left in `/dev/shm`), or [`create_posix`](SharedMemory::create_posix) / [`attach_posix`](SharedMemory::attach_posix) / [`unlink`](SharedMemory::unlink) (Python's own names: each attaches the other's) |
//! | a `Manager` registry of shared objects    | [`named::publish`]`(name, &handle)` and [`named::lookup`]`(name).await` from unrelated programs of the same user, no server process |
//! | `fcntl.flock(f, LOCK_EX)`, `fcntl.lockf` | [`sync::FileLock`]: `lock().await`, `lock_shared`, `try_lock`, `lock_timeout`, byte ranges; `open_flock` to exclude `flock(1)` and Python |
//! | `os.mkfifo(path)` + `open`               | [`fifo::create`], [`fifo::FifoSender`], [`fifo::FifoReceiver`]: typed messages, the `PIPE_BUF` rule enforced |
//! | `pool.apply`, `apply_async`, `AsyncResult.get(t)` | [`Pool::apply`]`.await`, [`Pool::submit`] gives a [`TaskHandle`]; `result_timeout(t)` |
//! | `close`, `join`, `terminate`, `maxtasksperchild` | [`Pool::close`], [`Pool::join`]`.await`, [`Pool::terminate`], [`PoolBuilder::max_tasks_per_worker`]; a dead worker fails its task instead of hanging ([`PoolError::is_worker_died`]) |
//! | `Manager().dict()`, `.list()`, `.Namespace()` | [`manager::Manager`]`::start().await`, then `map(name)`, `list(name)`, `value(name, init)`; [`manager::Map::update`] runs a `fn` in the manager, so a nested mutation is never lost; [`manager::connect`] for a served one |
//!
//! ## Where things are
//!
//! The types above are at the root, so `multiproc::Lock` or `multiproc::spawn` is all most
//! programs write. Each area also has a namespace holding all of its types:
//!
//! - [`sync`]: [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`],
//!   [`Condition`], [`Barrier`] and their guards;
//! - [`shm`]: [`SharedValue`], [`SharedArray`], [`SharedMemory`];
//! - [`pipe`]: [`pipe::duplex`], [`pipe::simplex`] and their ends;
//! - [`queue`]: [`Queue`], [`JoinableQueue`] and their builder, sink and stream;
//! - [`process`]: [`spawn`], [`Builder`], [`JoinHandle`], [`ExitStatus`], `ProcessSet`,
//!   `current_process`, `Command`...;
//! - [`pool`]: [`Pool`], its builder, futures and streams;
//! - [`named`]: handles published under a name and looked up by unrelated programs;
//! - [`fifo`]: typed named FIFOs;
//! - [`error`]: every error type, one per operation ([`error::LockTimeoutError`],
//!   [`error::RecvTimeoutError`], [`error::PutError`], [`SpawnError`], [`PoolError`]...);
//! - [`manager`]: the [`Manager`](manager::Manager) serving maps, lists, values and counters
//!   (Python's `Manager()`), with atomic `update`s, batches, pipelines and `watch`;
//! - [`connection`]: named endpoints between unrelated programs (`Listener`, `connect`,
//!   authentication, Python-protocol connections);
//! - [`core`]: the lower-level pieces for building new handle types;
//! - `nats` (feature `nats`): the same queues, pool, `Lock`, `Semaphore`, `Event` and `Barrier`
//!   on a NATS JetStream server, for work that spans hosts.
//!
//! ## The process model
//!
//! A child is this same executable, re-executed from `/proc/self/exe` (never `fork()`ed from
//! a threaded tokio process). A constructor that runs before `main` recognises a child and
//! runs the requested function instead of `main`, so there is no setup line to write and a
//! program can never spawn itself recursively. To save the `exec`, children after the first
//! are forked from one re-executed copy that stopped in that constructor, single-threaded: a
//! fork server, as in Python's `forkserver` start method (`MULTIPROC_FORK_SERVER=0` turns it
//! off). Functions are found by address, which is why
//! they must be `fn` items or closures that capture nothing; everything else goes in `args`.
//!
//! Every handle (pipe end, lock, queue, shared memory) is a set of file descriptors plus
//! plain data. Passed as a spawn argument or inside a message, the descriptors travel beside
//! the postcard bytes as `SCM_RIGHTS` and the handle is rebuilt on the other side.
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

// The headline types, at the root: what most programs name.
#[doc(inline)]
pub use multiproc_channel::pipe;
#[doc(inline)]
pub use multiproc_channel::{
    JoinableQueue, Queue, QueueBuilder, QueueSink, QueueStats, QueueStream,
};
#[doc(inline)]
pub use multiproc_process::pool::{Pool, PoolBuilder, PoolError, PoolStats, TaskHandle};
#[doc(inline)]
pub use multiproc_process::{Builder, ExitStatus, JoinError, JoinHandle, SpawnError, spawn};
#[doc(inline)]
pub use multiproc_sync::{
    Barrier, BarrierWaitResult, BoundedSemaphore, Condition, ConditionGuard, Event, Lock,
    LockGuard, OwnedLockGuard, OwnedSemaphorePermit, Pod, RLock, RLockGuard, Semaphore,
    SemaphorePermit, SharedArray, SharedArrayGuard, SharedMemory, SharedValue, SharedValueGuard,
};

/// Spinning before parking: whether waits may keep a CPU busy for a few microseconds to catch
/// an answer that is about to come, process-wide. See [`set_spinning`] and the variable
/// `MULTIPROC_SPIN=0`.
#[doc(inline)]
pub use multiproc_core::wait::spin::{SPIN_ENV, set_spinning, spinning, spins_begun};

/// Cross-process synchronization: locks, semaphores, events, conditions and barriers, whose
/// waits never block a runtime thread.
pub mod sync {
    #[doc(inline)]
    pub use multiproc_sync::{
        Barrier, BarrierWaitResult, BoundedSemaphore, Condition, ConditionGuard, Event, Lock,
        LockGuard, OwnedLockGuard, OwnedSemaphorePermit, RLock, RLockGuard, Semaphore,
        SemaphorePermit,
    };
    // Named resources: locks on files that unrelated programs meet by path.
    #[doc(hidden)]
    pub use multiproc_sync::BLOCKING_LOCK_TEST_PAUSE_MS;
    #[doc(inline)]
    pub use multiproc_sync::{FileLock, FileLockGuard};
}

/// Shared memory: typed values and arrays (Python's `Value` and `Array`), raw regions, and
/// immutable bytes that travel in messages without being streamed ([`SharedBytes`](shm::SharedBytes)).
pub mod shm {
    #[doc(inline)]
    pub use multiproc_core::shm::{SharedBytes, SharedBytesMut};
    #[doc(inline)]
    pub use multiproc_sync::{
        Pod, SharedArray, SharedArrayGuard, SharedMemory, SharedValue, SharedValueGuard,
    };
}

// ---- Named resources (issue 13, named half): the registry and FIFOs ----

/// Handles published under a name and looked up by unrelated programs of the same user: the
/// registry Python users build with a `Manager`, without a server process holding the objects.
///
/// A publisher keeps its [`Publication`](named::Publication) alive; the name lives exactly
/// that long (and vanishes if the publisher dies, even by `SIGKILL`: it is a Linux abstract
/// socket, no file). Lookups from processes of other users are refused on both sides.
///
/// ```
/// use multiproc::{Queue, named};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-jobs-{}", std::process::id());
/// let jobs = Queue::<u32>::new()?;
/// let _publication = named::publish(&name, &jobs)?;
/// // In another program of the same user:
/// let found: Queue<u32> = named::lookup(&name).await?;
/// found.put(7).await?;
/// assert_eq!(jobs.get().await?, 7);
/// # Ok(()) }
/// ```
pub mod named {
    #[doc(inline)]
    pub use multiproc_core::named::{
        LOOKUP_TIMEOUT, LookupError, Publication, PublishError, blocking_lookup, lookup, publish,
    };
}

/// Typed named FIFOs (`os.mkfifo`): create one at a path, open its ends from unrelated
/// programs, send and receive typed messages with the `PIPE_BUF` atomic-write rule enforced.
pub mod fifo {
    #[doc(inline)]
    pub use multiproc_channel::fifo::*;
}

// ---- end of named resources ----

/// Queues shared by any number of producer and consumer processes.
pub mod queue {
    #[doc(inline)]
    pub use multiproc_channel::{
        JoinableQueue, Queue, QueueBuilder, QueueSink, QueueStats, QueueStream,
    };
}

/// Child processes: [`spawn`], the [`Builder`] for options, the [`JoinHandle`] to await, and
/// what a child may be; families of them ([`ProcessSet`](process::ProcessSet),
/// [`active_children`](process::active_children)), identity
/// ([`current_process`](process::current_process), [`parent_process`](process::parent_process)),
/// graceful stop ([`stop_requested`](process::stop_requested)), piped stdio and external
/// programs with passed descriptors ([`Command`](process::Command)).
pub mod process {
    #[cfg(feature = "tracing")]
    #[doc(inline)]
    pub use multiproc_process::child_span;
    #[doc(inline)]
    pub use multiproc_process::{
        Builder, ChildInfo, ChildOutput, ChildStderr, ChildStdin, ChildStdout, Command,
        CommandChild, ExitStatus, FD_ENV_PREFIX, JoinHandle, ParentProcess, ProcessInfo,
        ProcessSet, RemoteSpan, Returns, ReturnsFuture, active_children, current_process,
        is_stop_requested, parent_process, remote_parent, signal_name, spawn, stop_requested,
    };
}

/// The process pool, with its futures, streams and helper traits ([`Pool`] returns them).
pub mod pool {
    #[doc(inline)]
    pub use multiproc_process::pool::*;
}

/// Error types, one per operation, for every primitive: pipes and queues, synchronization,
/// spawning, joining and the pool.
pub mod error {
    #[doc(inline)]
    pub use multiproc_channel::error::*;
    #[doc(inline)]
    pub use multiproc_process::error::*;
    #[doc(inline)]
    pub use multiproc_process::pool::PoolError;
    #[doc(inline)]
    pub use multiproc_sync::error::*;
    // Named resources.
    #[doc(inline)]
    pub use multiproc_channel::fifo::{FifoOpenError, FifoRecvError, FifoSendError};
    #[doc(inline)]
    pub use multiproc_core::named::{LookupError, PublishError};
    // Named endpoints.
    #[cfg(feature = "connection")]
    #[doc(inline)]
    pub use multiproc_connection::error::{AcceptError, BindError, ConnectError, HandshakeError};
}

/// Named endpoints: unrelated programs meet at an address (a Unix socket path, an abstract
/// name, TCP), authenticate (same user, a Python-compatible key, TLS with the `tls` feature)
/// and talk through typed ends; Python's `multiprocessing.connection` (`Listener`, `Client`,
/// `authkey`, `poll`).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use multiproc::connection::{Address, Auth, Listener, connect};
///
/// let address = Address::abstract_name(format!("facade-doc-{}", std::process::id()));
/// let mut listener = Listener::<String, usize>::bind(address.clone(), Auth::same_user()).await?;
/// let mut client = connect::<usize, String>(address, Auth::same_user()).await?;
/// let (mut server, peer) = listener.accept().await?;
/// assert_eq!(peer.uid(), client.peer().uid());
/// client.send(5).await?;
/// let n = server.recv().await?.unwrap();
/// server.send("x".repeat(n)).await?;
/// assert_eq!(client.recv().await?.as_deref(), Some("xxxxx"));
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "connection")]
pub mod connection {
    #[doc(inline)]
    pub use multiproc_connection::*;
}

/// Queues, pools and locks across hosts, on a NATS JetStream server (feature `nats`).
///
/// The same types as the local ones, opened by name on a [`nats::Nats`] connection; see the
/// [`multiproc_nats`] crate docs for the tour.
#[cfg(feature = "nats")]
pub mod nats {
    #[doc(inline)]
    pub use multiproc_nats::*;
}

// --- manager (issue 15) ---
#[cfg(feature = "manager")]
/// Served typed state (Python's `Manager`): a [`Manager`](manager::Manager) process serves
/// maps, lists, values and counters to every process through proxies that travel like any
/// handle, with atomic `update`s run inside the manager, batches, pipelines and `watch`.
///
/// Locks, queues, events and the other primitives need no manager: hand the real handle out.
pub mod manager {
    #[doc(inline)]
    pub use multiproc_manager::*;
}
// --- end manager ---

/// Lower-level pieces for building new handle types.
pub mod core {
    #[doc(inline)]
    pub use multiproc_core::{SharedFd, message};
    // The benchmark's peers that need `unsafe` (a robust pthread mutex); not an API.
    #[doc(hidden)]
    pub use multiproc_core::peer;
}
