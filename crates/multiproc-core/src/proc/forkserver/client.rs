//! The parent's side of the fork server. Requests go from the spawning thread itself, one at a
//! time under a lock ([`ask`]); only the spawner thread starts a server ([`start_if_idle`]).
//! Starts the server,
//! sends it one request per child and reads the answer, and abandons and replaces a server that
//! does not answer (see the fork server's module docs).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::patience::{LOOK_EVERY, Patience, Seen};
use super::request::{
    HAS_STDERR, HAS_STDIN, HAS_STDOUT, NAME_ROOM, REQUEST_MAGIC, REQUEST_MAX, SERVER_NAME,
    SLOT_MAGIC, put_bytes,
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
    /// The server forked the child: its pid.
    Started(u32),
    /// Nothing was started: no server runs (yet), it is off, it declined, or it was abandoned
    /// without forking. The spawner thread starts the child ([`start_if_idle`], then `exec`).
    NotStarted,
}

/// Asks the running server, from any thread, to start the child whose control socket's child
/// end is `control`, with name `arg0` and environment `env` (the default working directory and
/// standard streams). The fast path: a spawn that gets `NotStarted` goes to the spawner
/// thread, which starts a server when none runs and re-executes the child.
///
/// # Errors
/// When a server that stopped answering could not be killed and reaped in time: it may still
/// start a child on `control`, which must then not be re-executed (the next spawn starts a new
/// server).
pub(crate) fn ask(control: &OwnedFd, arg0: &CStr, env: &Environment) -> io::Result<Asked> {
    with_state(|state| {
        let State::Running(server) = state else {
            return Ok(Asked::NotStarted);
        };
        match server.request(control, arg0, env) {
            Answer::Started(pid) => Ok(Asked::Started(pid)),
            Answer::Declined(Errno::NOSYS) => {
                crate::trace_info!("the fork server cannot fork here; re-executing every child");
                *state = State::Off;
                Ok(Asked::NotStarted)
            }
            Answer::Declined(_) => Ok(Asked::NotStarted),
            Answer::Unanswered => {
                // Kill and reap it and learn whether it forked this child; the spawner thread
                // starts the next server (and re-executes this child if it was not forked).
                crate::trace_warn!("the fork server stopped answering; restarting it");
                let forked = server.abandon();
                *state = State::Idle;
                Ok(forked?.map_or(Asked::NotStarted, Asked::Started))
            }
        }
    })
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

/// The running server: our end of its socket, its pidfd to reap it, and the word its `clone`
/// writes each child's pid into.
struct Server {
    socket: OwnedFd,
    /// Shared with the reaper thread if the server outlives us (see `Drop`).
    process: Arc<PidFd>,
    slot: SharedRegion,
    /// Killed (and reaped, if it died in time) by [`Server::abandon`].
    killed: bool,
}

/// What came of a request.
enum Answer {
    Started(u32),
    /// The server could not fork (an errno); nothing was started.
    Declined(Errno),
    /// No answer: the server is gone, stopped, stuck or garbled, and may have started a child.
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
        let slot = SharedRegion::new(std::mem::size_of::<u32>())?;
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
        })
    }

    fn request(&self, control: &OwnedFd, arg0: &CStr, env: &Environment) -> Answer {
        let name = arg0.to_bytes();
        if name.len() >= NAME_ROOM {
            return Answer::Declined(Errno::NAMETOOLONG);
        }
        let Ok(cwd) = rustix::fs::open(
            ".",
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            return Answer::Declined(Errno::NOENT);
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
            return Answer::Declined(Errno::MSGSIZE);
        }

        // Only this request's `clone` may write the slot from here on (the server reads the
        // request after this store, through the socket).
        self.slot.atomic_u32(0).store(0, Ordering::Relaxed);
        let mut patience = Patience::default();
        loop {
            match sys::send_with_fds(self.socket.as_fd(), &bytes, &fds) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.wait(Direction::Write, &mut patience) {
                        return Answer::Unanswered;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => match Errno::from_io_error(&e) {
                    Some(Errno::PIPE | Errno::CONNRESET | Errno::CONNREFUSED) | None => {
                        return Answer::Unanswered;
                    }
                    Some(errno) => return Answer::Declined(errno),
                },
            }
        }
        drop(cwd);
        self.answer(&mut patience)
    }

    /// Reads the one answer to a request: the child's pid, or why the server could not fork.
    fn answer(&self, patience: &mut Patience) -> Answer {
        loop {
            if !self.wait(Direction::Read, patience) {
                return Answer::Unanswered;
            }
            let mut buf = [0u8; 8];
            let mut fds: Vec<OwnedFd> = Vec::new();
            match sys::recv_with_fds(self.socket.as_fd(), &mut buf, &mut fds) {
                Ok(got) if got.bytes == 4 && !got.truncated => {
                    let value = i32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                    return match value {
                        1.. => Answer::Started(value as u32),
                        _ => Answer::Declined(Errno::from_raw_os_error(value.saturating_neg())),
                    };
                }
                // End of stream (the server died), or a garbled answer.
                Ok(_) => return Answer::Unanswered,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Answer::Unanswered,
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

    /// Kills the server and reaps it, then says whether it forked a child for the request it
    /// did not answer: the pid its `clone` left in the slot.
    ///
    /// # Errors
    /// When it did not die within [`DEATH_LIMIT`]; it may then still fork that child.
    fn abandon(&mut self) -> io::Result<Option<u32>> {
        if !self.kill_and_reap() {
            return Err(io::Error::other(
                "the fork server stopped answering and could not be killed",
            ));
        }
        // Dead and reaped: any `clone` it made has returned, so the slot is final.
        let pid = self.slot.atomic_u32(0).load(Ordering::Acquire);
        Ok((pid != 0).then_some(pid))
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
