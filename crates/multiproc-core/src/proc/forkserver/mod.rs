//! The fork server: one re-executed copy of this program that forks the later children.
//!
//! Re-executing the program costs about 1.5 ms per child (`exec`, dynamic loading, the first
//! page faults); forking a small single-threaded process costs a tenth of that. Forking the
//! parent itself is unsound: it runs tokio's threads, and a forked child may find a lock (the
//! allocator's, stdio's) held by a thread that does not exist there. So the first spawn
//! re-executes one extra copy of the program, the *server*, which stops before `main` (in the
//! bootstrap constructor), stays single-threaded, holds no lock, and forks every later child
//! from that clean state. This is Python's `forkserver` start method.
//!
//! The server forks with `CLONE_PARENT`: its children are children of the *parent*, as if the
//! spawner thread had started them. The parent reaps them by pidfd and reads their exit status
//! as for a re-executed child, and a daemon child's parent-death signal follows the spawner
//! thread as before. The server has no children of its own to reap.
//!
//! Each request carries what a re-executed child would take from the parent at that moment: the
//! environment, the working directory (a descriptor), the standard streams, the CPU affinity and
//! the name (`argv[0]`). The child sets the environment as one array handed to the C library
//! (as `execve` would), and the affinity only when it differs from the server's. The server
//! receives each request into a buffer that its children do not inherit (`MADV_DONTFORK`):
//! after a `clone` every page the server shares with the new child is copy-on-write, and the
//! next request, written there, would copy one before the next `clone`. The server is
//! started with `LD_BIND_NOW=1`, so that the dynamic loader resolves every symbol once, in the
//! server, instead of in every child on its first call of each (which writes a copy-on-write
//! page); the server's own environment reaches no child. Other attributes (resource limits, umask, nice value, credentials, signal
//! dispositions, inherited non-close-on-exec descriptors) are the parent's as of the server's
//! start. Set `MULTIPROC_FORK_SERVER=0` to re-execute every child instead.
//!
//! The server answers each request once, in order, with the child's pid or why it could not
//! fork (right after the fork: it closes its copies of the request's descriptors only then).
//! The child lets go of the server's socket first thing, so once the server is dead the
//! parent's end reads end-of-stream.
//!
//! # Requests in flight
//! A spawn does not wait for its answer: it sends the request and returns a *ticket*, so that
//! the server forks this child while the caller prepares the next (a thread starting many
//! children keeps the server busy instead of taking turns with it). The pid is read when
//! someone needs it (the handle's join, `pid()`, a signal, a drop): answers come in the order
//! of the requests, so whoever reads them (under the state lock) stores each in its own ticket
//! until the one wanted has come. At most [`SLOTS`](request::SLOTS) (8) requests are unanswered
//! at once: the spawn that would send a ninth first reads the oldest answer. That keeps both
//! queues of the socket under the kernel's default limit of 10 packets, and gives each request
//! in flight its own pid word (below). A child whose server did not fork it (declined, or the
//! server was abandoned first) is re-executed when its ticket is resolved; one that could not be
//! re-executed either reports why at its join.
//!
//! # A server that does not answer
//! The thread that needs an answer (often a runtime thread) waits for it, so the wait must end soon
//! when the server cannot answer (stopped with `SIGSTOP` or by a debugger, dead, wedged) yet never give up on one that is only late because the machine
//! is busy: a tight timeout alone cannot do both, and on a loaded machine it would restart
//! servers over and over. So the parent measures liveness instead. While no answer has come, it
//! looks at the server every [`LOOK_EVERY`](patience::LOOK_EVERY) (20 ms): its pidfd says whether it exited, and
//! `/proc/<pid>/stat` whether it is stopped (the pid names the server, an unreaped child of
//! ours). An exited server is abandoned at once, one seen stopped at [`STOPPED_LOOKS`](patience::STOPPED_LOOKS) (two)
//! looks in a row too, so within tens of milliseconds (two looks, so that job control resuming
//! the whole process group never loses a server to the moment between our wake-up and its
//! own). A server that is running, runnable or asleep may answer yet and gets
//! [`ANSWER_LOOKS`](patience::ANSWER_LOOKS) looks (2 s), then is abandoned all the same: a busy machine costs at most
//! one restart per 2 s, never a storm. Looks are counted rather than time measured, so time
//! this process itself spends stopped (job control) or waiting for a CPU does not run out the
//! server's patience. (A pidfd alone cannot tell a stopped process from a busy one.) All of it
//! is one policy type, [`Patience`](patience::Patience).
//!
//! Abandoning a server kills it with `SIGKILL` (which ends a stopped process at once) and reaps it,
//! drops our end of its socket, and starts a new server for the next spawn. No answer of an
//! abandoned server is ever read, so a late one cannot pass for the answer to a later request.
//! Whether it forked a child for each request it left unanswered is not guessed: it forks with
//! `CLONE_PARENT_SETTID`, which makes the kernel write the child's pid, inside the `clone` call,
//! into a word of memory the parent shares with it (a memfd sent right after the hello): request
//! number `n` (both sides count them) uses word `n % SLOTS`, which the parent zeroes before it
//! sends that request, and only once the request that used the word before was answered (its
//! `clone` had returned). Once the server is reaped every `clone` it made has returned, so the
//! words are final: for each request in flight, a pid there is its child, used as if the server
//! had answered; zero means no child exists, and that child is re-executed on its control
//! socket. Every ticket of an abandoned server is settled this way at once, so none waits for a
//! server that is gone. A wait for one answer lasts at most
//! [`ANSWER_LOOKS`](patience::ANSWER_LOOKS) looks plus [`DEATH_LIMIT`](client::DEATH_LIMIT) (a
//! server that outlives `SIGKILL` that long fails the spawns it left unanswered: it might still
//! fork them).
//!
//! # Forking without glibc's `fork`
//! `fork(3)` cannot ask for `CLONE_PARENT`, so the server calls `clone3` (or `clone`) itself and
//! redoes the two parts of glibc's bookkeeping that matter in a single-threaded child: the
//! thread descriptor's cached thread id (glibc's `raise`, `abort` and recursive mutexes read it),
//! written by the kernel through `CLONE_CHILD_SETTID` at the address glibc registered with
//! `set_tid_address` (read back with `PR_GET_TID_ADDRESS`); and the robust-mutex list, which the
//! kernel does not carry into a child (read with `get_robust_list`, set again in the child). A
//! server that cannot find either declines every request, and children are re-executed.
//!
//! # References
//! - [`clone(2)`](https://man7.org/linux/man-pages/man2/clone.2.html) (`CLONE_PARENT`,
//!   `CLONE_CHILD_SETTID`), [`PR_GET_TID_ADDRESS`](https://man7.org/linux/man-pages/man2/PR_GET_TID_ADDRESS.2const.html),
//!   [`get_robust_list(2)`](https://man7.org/linux/man-pages/man2/get_robust_list.2.html),
//!   [`proc_pid_stat(5)`](https://man7.org/linux/man-pages/man5/proc_pid_stat.5.html) (`arg_start`,
//!   `state`), [`CLONE_PARENT_SETTID`](https://man7.org/linux/man-pages/man2/clone.2.html)
//!
//! # Layout
//! - `client`: the parent's side: sends requests from the spawning thread (the server's
//!   children are the spawner thread's all the same, by `CLONE_PARENT`) and hands out tickets,
//!   starts the server on the spawner thread, reads answers in order into their tickets,
//!   abandons and replaces a server that does not answer;
//! - `patience`: when to stop waiting for an answer;
//! - `request`: what the two sides say to each other (the request's bytes, the pid words);
//! - `server`: the server's loop and the forked child's set-up, in the re-executed copy;
//! - `clone`: the raw `clone3`/`clone` call that forks with `CLONE_PARENT`.

mod client;
mod clone;
mod patience;
mod request;
mod server;

pub use client::FORK_SERVER_ENV;
pub(crate) use client::{Asked, Ticket, ask, resolve, start_if_idle};
