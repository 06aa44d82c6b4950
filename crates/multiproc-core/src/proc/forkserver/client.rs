//! The parent's side of the fork server. Requests go from the spawning thread itself, under a
//! lock, without waiting for their answers ([`ask`] gives a [`Ticket`]); answers are read in
//! order when someone needs one ([`resolve`]) or when [`SLOTS`] requests await theirs. Only the
//! spawner thread starts a server ([`start_if_idle`]). A server that does not answer is
//! abandoned and replaced, and every request it left unanswered settled (see the fork server's
//! module docs).
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::patience::{LOOK_EVERY, Patience, Seen};
use super::request::{
    HAS_STDERR, HAS_STDIN, HAS_STDOUT, NAME_ROOM, REQUEST_MAGIC, REQUEST_MAX, SERVER_NAME,
    SLOT_BYTES, SLOT_MAGIC, SLOTS, put_bytes, slot_offset,
};
use super::server::{self, affinity};
use crate::proc::bootstrap;
use crate::proc::exec::{self, Environment, SpawnOptions};
use crate::proc::pidfd::PidFd;
use crate::proc::reaper;
use crate::shm::SharedRegion;
use crate::sys::identity;
use crate::sys::{self, Direction};

/// The environment variable that turns the fork server off when set to `0`.
pub const FORK_SERVER_ENV: &str = "MULTIPROC_FORK_SERVER";
/// Added to the server's environment: see [`Server::start`].
const BIND_NOW: &CStr = c"LD_BIND_NOW=1";
/// How long an abandoned server may take to die of `SIGKILL` before the spawn fails.
pub(super) const DEATH_LIMIT: Duration = Duration::from_secs(2);

enum State {
    /// Not started yet (or wedged and killed, and to be started again).
    Idle,
    Running(Server),
    /// Turned off by the environment, or the server cannot fork here.
    Off,
}

/// The server, with the pid of the process that started it. Any thread may send it a request
/// (its children are the spawner thread's whatever thread asks, since it forks with
/// `CLONE_PARENT`), one at a time under this lock; only the spawner thread starts one. A
/// process `fork`ed (by someone else) from one with a server must not use that server (its
/// children would be the other process's): it finds another pid here and starts its own.
static STATE: Mutex<Option<(u32, State)>> = Mutex::new(None);

/// Runs `f` on this process's server state (`Idle` in a process that has not started one).
fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut slot = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let me = std::process::id();
    match slot.as_mut() {
        Some((pid, state)) if *pid == me => f(state),
        _ => {
            // Another process's server (we were forked from it): not ours to use, kill or reap.
            if let Some((_, inherited)) = slot.take() {
                std::mem::forget(inherited);
            }
            f(&mut slot.insert((me, State::Idle)).1)
        }
    }
}

/// What came of asking the running server from the caller's thread ([`ask`]).
pub(crate) enum Asked {
    /// The request went out: the server forks the child (or says why not) while the caller
    /// goes on; [`resolve`] the ticket for the outcome.
    Sent(Ticket),
    /// Nothing was started: no server runs (yet), it is off, it declined, or it was abandoned
    /// before the request went out. The spawner thread starts the child ([`start_if_idle`],
    /// then `exec`).
    NotStarted,
}

/// A request sent to the server, whose answer may not have been read yet. Whoever reads
/// answers (in order, under the state lock) stores each in its own ticket; [`resolve`] reads
/// until this one's has come. Abandoning a server settles every ticket it left unanswered
/// (from the pid slot), so a ticket never waits for a server that is gone.
#[derive(Debug)]
pub(crate) struct Ticket {
    outcome: Arc<AtomicI64>,
    /// The process that sent the request (a process forked from it has no such request).
    owner: u32,
}

impl Ticket {
    /// True once the outcome is known ([`resolve`] then does not wait).
    pub(crate) fn is_settled(&self) -> bool {
        self.outcome.load(Ordering::Acquire) != PENDING
    }
}

/// A ticket's outcome word: not answered yet.
const PENDING: i64 = 0;
/// A ticket's outcome word: no child was forked (declined, or the server died first).
const NOT_STARTED: i64 = -1;
/// A ticket's outcome word: the server stopped answering and outlived `SIGKILL`: it may still
/// fork this child, which must therefore not be re-executed.
const LOST: i64 = -2;

/// Asks the running server, from any thread, to start the child whose control socket's child
/// end is `control`, with name `arg0` and environment `env` (the default working directory and
/// standard streams). The fast path: it returns once the request is sent, with a [`Ticket`] for
/// the pid; a spawn that gets `NotStarted` goes to the spawner thread, which starts a server
/// when none runs and re-executes the child. `control` must stay open until the ticket is
/// resolved (the child is re-executed on it if the server does not fork it).
pub(crate) fn ask(control: &OwnedFd, arg0: &CStr, env: &Environment) -> Asked {
    with_state(|state| {
        let State::Running(server) = state else {
            return Asked::NotStarted;
        };
        if server.cannot_fork {
            settle_then_off(state);
            return Asked::NotStarted;
        }
        match server.send(control, arg0, env) {
            Sent::Ticket(outcome) => Asked::Sent(Ticket {
                outcome,
                owner: std::process::id(),
            }),
            Sent::Declined => Asked::NotStarted,
            Sent::Unanswered => {
                // Nothing of this request reached it; the spawner thread starts the next
                // server and re-executes this child.
                crate::trace_warn!("the fork server stopped answering; restarting it");
                abandon(state);
                Asked::NotStarted
            }
        }
    })
}

/// The outcome of a request: `Some(pid)` when the server forked the child, `None` when it did
/// not (the caller re-executes it). Reads the server's answers in order until this one's has
/// come; a server that stops answering is abandoned (see the module docs), which settles it.
///
/// # Errors
/// When a server that stopped answering could not be killed and reaped in time: it may still
/// start the child, which must then not be re-executed (the next spawn starts a new server); and
/// for a ticket of another process (this one was forked from it).
pub(crate) fn resolve(ticket: &Ticket) -> io::Result<Option<u32>> {
    if ticket.owner != std::process::id() {
        return Err(io::Error::other(
            "a fork-server request of another process (this one was forked from it)",
        ));
    }
    loop {
        match ticket.outcome.load(Ordering::Acquire) {
            PENDING => {}
            NOT_STARTED => return Ok(None),
            LOST => {
                return Err(io::Error::other(
                    "the fork server stopped answering and could not be killed",
                ));
            }
            pid => return Ok(Some(pid as u32)),
        }
        with_state(|state| {
            // Answered meanwhile by another thread: look again.
            if ticket.outcome.load(Ordering::Acquire) != PENDING {
                return;
            }
            let State::Running(server) = state else {
                // Unreachable: a server settles its tickets before it goes. Never wait forever,
                // and never re-execute a child that might have been forked.
                ticket.outcome.store(LOST, Ordering::Release);
                return;
            };
            if !server.read_answer() {
                crate::trace_warn!("the fork server stopped answering; restarting it");
                abandon(state);
            } else if server.cannot_fork && server.pending.is_empty() {
                *state = State::Off;
            }
        });
    }
}

/// Kills and reaps a server that stopped answering, settles its tickets, and leaves `Idle`:
/// the spawner thread starts the next server.
fn abandon(state: &mut State) {
    if let State::Running(server) = state {
        server.abandon();
    }
    *state = State::Idle;
}

/// A server that cannot fork here: reads the answers still due (so every ticket is settled),
/// then turns the server off.
fn settle_then_off(state: &mut State) {
    if let State::Running(server) = state {
        while !server.pending.is_empty() {
            if !server.read_answer() {
                return abandon(state);
            }
        }
        crate::trace_info!("the fork server cannot fork here; re-executing every child");
    }
    *state = State::Off;
}

/// On the spawner thread, for a child [`ask`] did not start: starts the server if none runs
/// (turned off by [`FORK_SERVER_ENV`]), so that the next spawn finds one; the caller then
/// re-executes this child, whose `exec` overlaps the server's. Must run on the spawner thread:
/// the server's children are that thread's children (`CLONE_PARENT`).
pub(crate) fn start_if_idle() {
    with_state(|state| {
        if let State::Idle = state {
            let off = std::env::var_os(FORK_SERVER_ENV).is_some_and(|v| v == "0");
            *state = match off {
                true => State::Off,
                false => Server::start().map_or_else(off_after, State::Running),
            };
        }
    });
}

/// The state after the server could not start: off, children re-executed.
fn off_after(_e: io::Error) -> State {
    crate::trace_warn!(error = %_e, "cannot start the fork server; re-executing every child");
    State::Off
}

/// The running server: our end of its socket, its pidfd to reap it, the words its `clone`
/// writes each child's pid into, and the requests awaiting their answers.
struct Server {
    socket: OwnedFd,
    /// Shared with the reaper thread if the server outlives us (see `Drop`).
    process: Arc<PidFd>,
    slot: SharedRegion,
    /// Killed (and reaped, if it died in time) by [`Server::abandon`].
    killed: bool,
    /// How many requests were sent: the next one's number.
    sent: u64,
    /// The outcome words of the requests not answered yet, oldest first: numbers
    /// `sent - pending.len()` to `sent - 1`. At most [`SLOTS`].
    pending: VecDeque<Arc<AtomicI64>>,
    /// It answered `ENOSYS` (it cannot fork here): no request goes to it any more.
    cannot_fork: bool,
}

/// What came of sending a request.
enum Sent {
    /// Sent; the answer comes later, into this word.
    Ticket(Arc<AtomicI64>),
    /// Not sent, and never will be (too large, no working directory, a send error): nothing
    /// was started.
    Declined,
    /// Not sent: the server is gone, stopped, stuck or garbled.
    Unanswered,
}

impl Server {
    fn start() -> io::Result<Server> {
        let (socket, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        bootstrap::send_hello(&socket, server::entry())?;
        let slot = SharedRegion::new(SLOT_BYTES)?;
        sys::send_with_fds(socket.as_fd(), &SLOT_MAGIC, &[slot.shared_fd().as_fd()])?;
        let mut name = String::from(SERVER_NAME);
        name.extend(std::iter::repeat_n(' ', NAME_ROOM - 1 - SERVER_NAME.len()));
        let arg0 = CString::new(name).expect("no NUL in the server's name");
        let mut env = exec::environment(&SpawnOptions::default())?;
        // The dynamic loader resolves every symbol as the server starts, so that no child
        // resolves one on its first call (each would write the copy-on-write page it is in).
        // The server's own environment reaches no child: each request brings one.
        let bind_now = BIND_NOW.to_bytes();
        let key = &bind_now[..=bind_now.iter().position(|&b| b == b'=').unwrap_or(0)];
        if !env.has(key) {
            env.push(BIND_NOW);
        }
        let pid = exec::posix_spawn_child(&theirs, &arg0, env)?;
        let process = Arc::new(PidFd::open(pid)?);
        Ok(Server {
            socket,
            process,
            slot,
            killed: false,
            sent: 0,
            pending: VecDeque::with_capacity(SLOTS),
            cannot_fork: false,
        })
    }

    /// Sends one request; its answer is read later ([`read_answer`](Self::read_answer)). With
    /// [`SLOTS`] requests unanswered, it first reads the oldest answer, so that no two requests
    /// in flight share a pid word.
    fn send(&mut self, control: &OwnedFd, arg0: &CStr, env: &Environment) -> Sent {
        let name = arg0.to_bytes();
        if name.len() >= NAME_ROOM {
            return Sent::Declined;
        }
        let Ok(cwd) = rustix::fs::open(
            ".",
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            return Sent::Declined;
        };

        let affinity = affinity();
        // Each variable (at least `K=` and its NUL) gets 4 bytes of length instead of its NUL:
        // at most twice its size.
        let mut bytes = Vec::with_capacity(64 + name.len() + affinity.len() + 2 * env.len());
        bytes.extend_from_slice(&REQUEST_MAGIC);
        let mut fds: Vec<BorrowedFd<'_>> = vec![control.as_fd(), cwd.as_fd()];
        let mut present = 0u8;
        for (bit, number) in [(HAS_STDIN, 0), (HAS_STDOUT, 1), (HAS_STDERR, 2)] {
            // SAFETY: a borrow of a standard stream's number for this request only; if it is
            // not open, `fcntl` says so and it is left out (a stream closed meanwhile by another
            // thread makes `sendmsg` fail, and the child is re-executed).
            let stream = unsafe { BorrowedFd::borrow_raw(number) };
            if rustix::io::fcntl_getfd(stream).is_ok() {
                present |= bit;
                fds.push(stream);
            }
        }
        bytes.push(present);
        put_bytes(&mut bytes, name);
        put_bytes(&mut bytes, &affinity);
        for var in env.vars() {
            put_bytes(&mut bytes, var);
        }
        if bytes.len() > REQUEST_MAX {
            return Sent::Declined;
        }

        while self.pending.len() >= SLOTS {
            if !self.read_answer() {
                return Sent::Unanswered;
            }
        }
        // Only this request's `clone` may write its word from here on: the request that used
        // it last was answered, so its `clone` has returned, and the server reads this request
        // after this store, through the socket.
        self.slot
            .atomic_u32(slot_offset(self.sent))
            .store(0, Ordering::Relaxed);
        let mut patience = Patience::default();
        loop {
            match sys::send_with_fds(self.socket.as_fd(), &bytes, &fds) {
                Ok(_) => break,
                // The server may be waiting for room to answer: read an answer, then retry.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.pending.is_empty() => {
                    if !self.read_answer() {
                        return Sent::Unanswered;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.wait(Direction::Write, &mut patience) {
                        return Sent::Unanswered;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => match Errno::from_io_error(&e) {
                    Some(Errno::PIPE | Errno::CONNRESET | Errno::CONNREFUSED) | None => {
                        return Sent::Unanswered;
                    }
                    Some(_) => return Sent::Declined,
                },
            }
        }
        drop(cwd);
        self.sent += 1;
        let outcome = Arc::new(AtomicI64::new(PENDING));
        self.pending.push_back(outcome.clone());
        Sent::Ticket(outcome)
    }

    /// Reads the oldest unanswered request's answer (the child's pid, or why the server could
    /// not fork) into its ticket; false when the server does not answer (gone, stopped, stuck,
    /// garbled): the caller abandons it.
    fn read_answer(&mut self) -> bool {
        let mut patience = Patience::default();
        loop {
            if !self.wait(Direction::Read, &mut patience) {
                return false;
            }
            let mut buf = [0u8; 8];
            let mut fds: Vec<OwnedFd> = Vec::new();
            match sys::recv_with_fds(self.socket.as_fd(), &mut buf, &mut fds) {
                Ok(got) if got.bytes == 4 && !got.truncated => {
                    // An answer nobody asked for is as garbled as a short one.
                    let Some(outcome) = self.pending.pop_front() else {
                        return false;
                    };
                    let value = i32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                    let value = match value {
                        1.. => i64::from(value),
                        _ => {
                            let errno = Errno::from_raw_os_error(value.saturating_neg());
                            self.cannot_fork |= errno == Errno::NOSYS;
                            NOT_STARTED
                        }
                    };
                    outcome.store(value, Ordering::Release);
                    return true;
                }
                // End of stream (the server died), or a garbled answer.
                Ok(_) => return false,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits until the socket is ready in `direction`, looking at the server every
    /// [`LOOK_EVERY`]; false when `patience` gives up on it.
    fn wait(&self, direction: Direction, patience: &mut Patience) -> bool {
        loop {
            let slice = Instant::now() + LOOK_EVERY;
            match sys::wait_ready(self.socket.as_fd(), direction, Some(slice)) {
                Ok(true) => return true,
                Ok(false) => {}
                Err(_) => return false,
            }
            let seen = if self.process.has_exited() {
                Seen::Exited
            } else if identity::is_stopped(self.process.pid()) {
                Seen::Stopped
            } else {
                Seen::Alive
            };
            if patience.give_up(seen) {
                return false;
            }
        }
    }

    /// Kills the server and reaps it, then settles every request it left unanswered: the pid
    /// its `clone` left in the request's word, or none. A server still alive after
    /// [`DEATH_LIMIT`] may still fork them: they are settled as lost (never re-executed).
    fn abandon(&mut self) {
        let dead = self.kill_and_reap();
        // Dead and reaped: any `clone` it made has returned, so the words are final.
        let pending = std::mem::take(&mut self.pending);
        let first = self.sent - pending.len() as u64;
        for (number, outcome) in (first..).zip(pending) {
            let value = match dead {
                false => LOST,
                true => match self
                    .slot
                    .atomic_u32(slot_offset(number))
                    .load(Ordering::Acquire)
                {
                    0 => NOT_STARTED,
                    pid => i64::from(pid),
                },
            };
            outcome.store(value, Ordering::Release);
        }
    }

    /// Sends `SIGKILL` and reaps the server; false if it is still alive after [`DEATH_LIMIT`].
    fn kill_and_reap(&mut self) -> bool {
        self.killed = true;
        let _ = self.process.send_signal(libc::SIGKILL);
        let deadline = Some(Instant::now() + DEATH_LIMIT);
        match sys::wait_ready(self.process.as_fd(), Direction::Read, deadline) {
            Ok(true) => {
                let _ = self.process.try_wait();
                true
            }
            _ => false,
        }
    }
}

impl Drop for Server {
    /// Kills the server (it would exit on end-of-stream, but a wedged one needs the signal)
    /// and leaves it to the reaper thread, so dropping never waits and it never stays a zombie.
    fn drop(&mut self) {
        if !self.killed {
            let _ = self.process.send_signal(libc::SIGKILL);
        }
        reaper::reap_orphan(self.process.clone());
    }
}
