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
//! Each request carries what a re-executed child would take from the parent at that moment:
//! the environment, the working directory (a descriptor), the standard streams, the CPU
//! affinity and the name (`argv[0]`). Other attributes (resource limits, umask, nice value, credentials,
//! signal dispositions, inherited non-close-on-exec descriptors) are the parent's as of the
//! server's start. Set `MULTIPROC_FORK_SERVER=0` to re-execute every child instead.
//!
//! The server answers each request once, with the child's pid or why it could not fork, and the
//! parent reads that answer before it sends the next request. The child lets go of the server's
//! socket first thing, so once the server is dead the parent's end reads end-of-stream.
//!
//! # A server that does not answer
//! The spawner thread waits for the answer and its caller, a runtime thread, waits for the
//! spawner, so the wait must end soon when the server cannot answer (stopped with `SIGSTOP` or
//! by a debugger, dead, wedged) yet never give up on one that is only late because the machine
//! is busy: a tight timeout alone cannot do both, and on a loaded machine it would restart
//! servers over and over. So the parent measures liveness instead. While no answer has come, it
//! looks at the server every [`LOOK_EVERY`] (20 ms): its pidfd says whether it exited, and
//! `/proc/<pid>/stat` whether it is stopped (the pid names the server, an unreaped child of
//! ours). An exited server is abandoned at once, one seen stopped at [`STOPPED_LOOKS`] (two)
//! looks in a row too, so within tens of milliseconds (two looks, so that job control resuming
//! the whole process group never loses a server to the moment between our wake-up and its
//! own). A server that is running, runnable or asleep may answer yet and gets
//! [`ANSWER_LOOKS`] looks (2 s), then is abandoned all the same: a busy machine costs at most
//! one restart per 2 s, never a storm. Looks are counted rather than time measured, so time
//! this process itself spends stopped (job control) or waiting for a CPU does not run out the
//! server's patience. (A pidfd alone cannot tell a stopped process from a busy one.) All of it
//! is one policy type, [`Patience`].
//!
//! Abandoning a server kills it with `SIGKILL` (which ends a stopped process at once) and reaps
//! it, drops our end of its socket, and starts a new server for the next spawn. No answer of
//! an abandoned server is ever read, so a late one cannot pass for the answer to a later
//! request. Whether it forked a child for the request it left unanswered is not guessed: it
//! forks with `CLONE_PARENT_SETTID`, which makes the kernel write the child's pid, inside the
//! `clone` call, into a word of memory the parent shares with it (a memfd sent right after the
//! hello, zeroed before each request). Once the server is reaped every `clone` it made has
//! returned, so the word is final: a pid there is this spawn's child, used as if the server
//! had answered; zero means no child exists, and the caller re-executes one on the same control
//! socket. A spawn waits for the server for at most [`ANSWER_LOOKS`] looks plus [`DEATH_LIMIT`]
//! (a server that outlives `SIGKILL` that long fails the spawn: it might still fork).
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
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::SharedFd;
use crate::proc::bootstrap::{self, EntryPoint};
use crate::proc::pidfd::PidFd;
use crate::proc::reaper;
use crate::proc::spawner::{self, SpawnOptions};
use crate::shm::SharedRegion;
use crate::sys::identity;
use crate::sys::{self, Direction};

/// The environment variable that turns the fork server off when set to `0`.
pub const FORK_SERVER_ENV: &str = "MULTIPROC_FORK_SERVER";

const REQUEST_MAGIC: [u8; 4] = *b"MPF1";
/// The largest request (mostly the environment); a larger one is re-executed instead.
const REQUEST_MAX: usize = 64 * 1024;
/// The server's `argv[0]`. Its children write their names over it, so it is padded: a name
/// must fit in its length (a longer one is re-executed instead).
const SERVER_NAME: &str = "multiproc-fork-server";
const NAME_ROOM: usize = 256;
/// How often the parent looks at a server that has not answered yet (see the module docs).
const LOOK_EVERY: Duration = Duration::from_millis(20);
/// A server seen stopped at this many looks in a row is abandoned.
const STOPPED_LOOKS: u32 = 2;
/// A server that runs but has not answered after this many looks (2 s) is abandoned all the same.
const ANSWER_LOOKS: u32 = 100;
/// How long an abandoned server may take to die of `SIGKILL` before the spawn fails.
const DEATH_LIMIT: Duration = Duration::from_secs(2);
/// The first packet after the hello: the shared word the server's `clone` writes pids into.
const SLOT_MAGIC: [u8; 4] = *b"MPFS";

/// Whether the next descriptor in a request is standard input, output or error.
const HAS_STDIN: u8 = 1;
const HAS_STDOUT: u8 = 2;
const HAS_STDERR: u8 = 4;

// ---------------------------------------------------------------------------------------------
// The parent's side: runs on the spawner thread only.

enum State {
    /// Not started yet (or wedged and killed, and to be started again).
    Idle,
    Running(Server),
    /// Turned off by the environment, or the server cannot fork here.
    Off,
}

thread_local! {
    /// The spawner thread's server. (Thread-local, not global: the server must be started
    /// from the spawner thread, which its children then have as their parent.)
    static STATE: RefCell<State> = const { RefCell::new(State::Idle) };
}

/// Starts the child whose control socket's child end is `control` through the fork server,
/// with name `arg0` and environment `env` (the default working directory and standard streams).
/// Must run on the spawner thread.
///
/// `Ok(None)` when the server did not start it (not running yet, off, gone or abandoned):
/// nothing was started, and the caller re-executes the child. The first call starts the server
/// and returns `None`, so that this child's `exec` and the server's overlap.
///
/// # Errors
/// When a server that stopped answering could not be killed and reaped in time: it may still
/// start a child on `control`, which must then not be re-executed (the next spawn starts a new
/// server).
pub(crate) fn spawn(control: &OwnedFd, arg0: &CStr, env: &[CString]) -> io::Result<Option<u32>> {
    STATE.with_borrow_mut(|state| {
        let server = match state {
            State::Running(server) => server,
            State::Off => return Ok(None),
            State::Idle => {
                let off = std::env::var_os(FORK_SERVER_ENV).is_some_and(|v| v == "0");
                *state = match off {
                    true => State::Off,
                    false => Server::start().map_or(State::Off, State::Running),
                };
                return Ok(None);
            }
        };
        match server.request(control, arg0, env) {
            Answer::Started(pid) => Ok(Some(pid)),
            Answer::Declined(Errno::NOSYS) => {
                *state = State::Off;
                Ok(None)
            }
            Answer::Declined(_) => Ok(None),
            Answer::Unanswered => {
                // Kill and reap it, learn whether it forked this child, and start the next
                // server while this child (if it was not forked) is re-executed.
                let forked = server.abandon();
                *state = Server::start().map_or(State::Off, State::Running);
                forked
            }
        }
    })
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

/// What the parent sees of a server that has not answered yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// Running, runnable, sleeping or in the kernel: it may still answer.
    Alive,
    /// Stopped by a signal or a tracer: it cannot answer until someone continues it.
    Stopped,
    /// Exited (not reaped yet): it never will.
    Exited,
}

/// The one decision of when to stop waiting for a server (see the module docs): pure
/// bookkeeping of what each look saw.
#[derive(Debug, Default)]
struct Patience {
    looks: u32,
    stopped_looks: u32,
}

impl Patience {
    /// After a look at a server that has not answered: true to abandon it.
    fn give_up(&mut self, seen: Seen) -> bool {
        self.looks += 1;
        match seen {
            Seen::Exited => true,
            Seen::Stopped => {
                self.stopped_looks += 1;
                self.stopped_looks >= STOPPED_LOOKS
            }
            Seen::Alive => {
                self.stopped_looks = 0;
                self.looks >= ANSWER_LOOKS
            }
        }
    }
}

impl Server {
    fn start() -> io::Result<Server> {
        let (socket, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        bootstrap::send_hello(&socket, EntryPoint::new(ForkServer, serve))?;
        let slot = SharedRegion::new(std::mem::size_of::<u32>())?;
        sys::send_with_fds(socket.as_fd(), &SLOT_MAGIC, &[slot.shared_fd().as_fd()])?;
        let mut name = String::from(SERVER_NAME);
        name.extend(std::iter::repeat_n(' ', NAME_ROOM - 1 - SERVER_NAME.len()));
        let arg0 = CString::new(name).expect("no NUL in the server's name");
        let env = spawner::environment(&SpawnOptions::default())?;
        let pid = spawner::posix_spawn_child(&theirs, &arg0, env)?;
        let process = Arc::new(PidFd::open(pid)?);
        Ok(Server {
            socket,
            process,
            slot,
            killed: false,
        })
    }

    fn request(&self, control: &OwnedFd, arg0: &CStr, env: &[CString]) -> Answer {
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

        let mut bytes = Vec::with_capacity(1024);
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
        put_bytes(&mut bytes, &affinity());
        for var in env {
            put_bytes(&mut bytes, var.to_bytes());
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

/// The calling thread's CPU affinity mask as bytes (empty when it cannot be read).
fn affinity() -> Vec<u8> {
    // SAFETY: `cpu_set_t` is plain bytes, valid when zeroed.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: the kernel writes at most `size` bytes into `set`, which is that large.
    if unsafe { libc::sched_getaffinity(0, size, &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: `set` is `size` initialised bytes, borrowed only for the copy.
    unsafe { std::slice::from_raw_parts((&raw const set).cast::<u8>(), size) }.to_vec()
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

// ---------------------------------------------------------------------------------------------
// The server's side: runs in the re-executed copy, before `main`, single-threaded.

/// The server's entry point, as a zero-sized function value for [`EntryPoint`].
#[derive(Clone, Copy)]
struct ForkServer;

/// The server's body: answers requests until the parent closes its end, then exits.
fn serve(_: ForkServer, socket: OwnedFd) {
    // Die with the parent even if something kept its end of the socket open.
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // Keep none of the parent's streams open: each child gets the ones its request names.
    if let Ok(null) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        for target in 0..3 {
            // SAFETY: `dup2` onto 0, 1 and 2, numbers that nothing in this process owns as an
            // `OwnedFd` (std's streams use them by number); `null` stays open.
            unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), target) };
        }
    }
    // The first packet after the hello: the parent's slot, where `clone` leaves each pid.
    let mut fds: Vec<OwnedFd> = Vec::new();
    let slot = match receive(&socket, &mut [0u8; 8], &mut fds) {
        Some(got) if got == SLOT_MAGIC.len() && fds.len() == 1 => fds.pop(),
        Some(_) => None,
        None => std::process::exit(0),
    }
    .and_then(|fd| SharedRegion::from_received(SharedFd::new(fd), std::mem::size_of::<u32>()).ok());
    let forker = match &slot {
        Some(slot) => Forker::new(slot.atomic_u32(0).as_ptr() as usize),
        None => Err(Errno::NOSYS),
    };
    let forker = forker.and_then(|forker| match ArgvArea::of_self() {
        Ok(argv) => Ok((forker, argv)),
        Err(_) => Err(Errno::NOSYS),
    });
    let mut buf = vec![0u8; REQUEST_MAX];
    loop {
        let mut fds: Vec<OwnedFd> = Vec::new();
        let Some(len) = receive(&socket, &mut buf, &mut fds) else {
            break;
        };
        let answer: Result<u32, Errno> = match (&forker, len > REQUEST_MAX) {
            (_, true) => Err(Errno::MSGSIZE),
            (Err(errno), _) => Err(*errno),
            (Ok((forker, argv)), false) => match Request::parse(&buf[..len], fds) {
                Err(errno) => Err(errno),
                Ok(request) => match forker.fork() {
                    Ok(Forked::Child) => run_child(socket, slot, request, argv),
                    // The child holds its own copies of the request's descriptors.
                    Ok(Forked::Parent(pid)) => Ok(pid),
                    Err(errno) => Err(errno),
                },
            },
        };
        let answer = match answer {
            Ok(pid) => pid as i32,
            Err(errno) => -errno.raw_os_error(),
        };
        if sys::send_with_fds(socket.as_fd(), &answer.to_le_bytes(), &[]).is_err() {
            break;
        }
    }
    std::process::exit(0);
}

/// Waits for the next packet on the server's socket and reads it into `buf` and `fds`: its
/// length, more than `buf.len()` if it was truncated or lost descriptors; `None` at the end of
/// the stream (or on an error, which ends the server too).
fn receive(socket: &OwnedFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Option<usize> {
    loop {
        if !matches!(
            sys::wait_ready(socket.as_fd(), Direction::Read, None),
            Ok(true)
        ) {
            return None;
        }
        match sys::recv_with_fds(socket.as_fd(), buf, fds) {
            Ok(got) if got.bytes == 0 => return None,
            Ok(got) if got.truncated || got.fds_truncated => return Some(buf.len() + 1),
            Ok(got) => return Some(got.bytes),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return None,
        }
    }
}

/// One child to start: its control socket, working directory, streams, affinity, name and
/// environment.
struct Request {
    control: OwnedFd,
    cwd: OwnedFd,
    /// Standard input, output and error: the descriptor to put there, or `None` to close it.
    streams: [Option<OwnedFd>; 3],
    affinity: Vec<u8>,
    name: Vec<u8>,
    env: Vec<CString>,
}

impl Request {
    /// Decodes a request; `EINVAL` when it is malformed (never a panic).
    fn parse(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<Request, Errno> {
        let mut rest = bytes.strip_prefix(&REQUEST_MAGIC[..]).ok_or(Errno::INVAL)?;
        let (&present, tail) = rest.split_first().ok_or(Errno::INVAL)?;
        rest = tail;
        let mut fds = fds.into_iter();
        let control = fds.next().ok_or(Errno::INVAL)?;
        let cwd = fds.next().ok_or(Errno::INVAL)?;
        let mut streams = [None, None, None];
        for (i, bit) in [HAS_STDIN, HAS_STDOUT, HAS_STDERR].into_iter().enumerate() {
            if present & bit != 0 {
                streams[i] = Some(fds.next().ok_or(Errno::INVAL)?);
            }
        }
        let name = take_bytes(&mut rest)?.to_vec();
        let affinity = take_bytes(&mut rest)?.to_vec();
        let mut env = Vec::new();
        while !rest.is_empty() {
            env.push(CString::new(take_bytes(&mut rest)?).map_err(|_| Errno::INVAL)?);
        }
        if fds.next().is_some() || name.len() >= NAME_ROOM {
            return Err(Errno::INVAL);
        }
        Ok(Request {
            control,
            cwd,
            streams,
            affinity,
            name,
            env,
        })
    }

    /// Makes this process what the request describes, and gives back its control socket.
    fn apply(self, argv: &ArgvArea) -> io::Result<OwnedFd> {
        for (target, stream) in self.streams.into_iter().enumerate() {
            let target = target as i32;
            match stream {
                // SAFETY: `dup2`/`close` on 0, 1 and 2, which nothing in this process owns as
                // an `OwnedFd`; `fd` stays open for the call.
                Some(fd) => unsafe {
                    if libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&fd), target) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                },
                // SAFETY: as above; the parent had no such stream, so neither does its child.
                None => unsafe {
                    libc::close(target);
                },
            }
        }
        rustix::process::fchdir(&self.cwd)?;
        if !self.affinity.is_empty() {
            // SAFETY: `cpu_set_t` is plain bytes, valid when zeroed.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            let size = self
                .affinity
                .len()
                .min(std::mem::size_of::<libc::cpu_set_t>());
            // SAFETY: copies `size` bytes, no more than either side holds; they do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.affinity.as_ptr(),
                    (&raw mut set).cast::<u8>(),
                    size,
                );
            }
            // SAFETY: `set` is an initialised `cpu_set_t` of the size given. A failure (a CPU
            // gone offline) keeps the server's affinity, which is the parent's at its start.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        }
        // SAFETY: this process is single-threaded (a fresh fork of the single-threaded server),
        // so nothing reads the environment while it changes. `putenv` keeps the strings, which
        // are leaked for the life of the process.
        unsafe {
            libc::clearenv();
            for var in self.env {
                libc::putenv(var.into_raw());
            }
        }
        argv.write(&self.name);
        Ok(self.control)
    }
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], Errno> {
    let (len, tail) = rest.split_first_chunk::<4>().ok_or(Errno::INVAL)?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > tail.len() {
        return Err(Errno::INVAL);
    }
    let (bytes, tail) = tail.split_at(len);
    *rest = tail;
    Ok(bytes)
}

/// The forked child: lets go of the server's socket and slot, becomes what the request says,
/// and runs the entry point named by the hello on its control socket, like a re-executed child.
/// Never returns.
fn run_child(socket: OwnedFd, slot: Option<SharedRegion>, request: Request, argv: &ArgvArea) -> ! {
    // The server answers for this child. Once the server is gone, end-of-stream on its socket
    // must mean that: no child may hold it.
    drop(socket);
    drop(slot);
    bootstrap::finish(request.apply(argv).and_then(bootstrap::enter))
}

/// The bytes of this process's command line (`/proc/<pid>/stat` fields 48 and 49): what `ps`
/// and `/proc/<pid>/cmdline` show. The server's is [`SERVER_NAME`] padded to [`NAME_ROOM`].
struct ArgvArea {
    start: usize,
    len: usize,
}

impl ArgvArea {
    fn of_self() -> io::Result<ArgvArea> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        let (start, end) = stat
            .rfind(')')
            .and_then(|i| {
                // After the command name come fields 3, 4, ...: field 48 is at index 45.
                let mut fields = stat[i + 1..].split_ascii_whitespace().skip(45);
                let start: usize = fields.next()?.parse().ok()?;
                let end: usize = fields.next()?.parse().ok()?;
                Some((start, end))
            })
            .ok_or_else(|| io::Error::other("/proc/self/stat has no command line bounds"))?;
        let len = end.saturating_sub(start);
        let area = ArgvArea { start, len };
        // It must be exactly the server's padded name, which `Server::start` gave it.
        if len != NAME_ROOM || !area.read().starts_with(SERVER_NAME.as_bytes()) {
            return Err(io::Error::other(
                "the command line is not the fork server's",
            ));
        }
        Ok(area)
    }

    fn read(&self) -> &[u8] {
        // SAFETY: `[start, start + len)` is this process's command line, which the kernel placed
        // on the initial stack: mapped, readable and never unmapped.
        unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) }
    }

    /// Replaces the command line with `name` (shorter than [`NAME_ROOM`]), NUL-padded.
    fn write(&self, name: &[u8]) {
        let n = name.len().min(self.len - 1);
        // SAFETY: the area is this process's own writable command line (see `read`), `len`
        // bytes long; `n < len`. std keeps pointers into it for `env::args` (which then reads
        // the new name) but no reference, and this process is single-threaded.
        unsafe {
            let area = self.start as *mut u8;
            std::ptr::copy_nonoverlapping(name.as_ptr(), area, n);
            std::ptr::write_bytes(area.add(n), 0, self.len - n);
        }
    }
}

/// Forks this (single-threaded) process with `CLONE_PARENT`, keeping glibc's view of the new
/// process right (see the module docs).
struct Forker {
    /// Where glibc keeps this thread's id (registered with `set_tid_address`).
    tid_address: usize,
    robust_list: (usize, usize),
    /// The parent's slot, mapped here: `clone` writes each child's pid into it.
    slot_address: usize,
}

enum Forked {
    /// In the server, with the child's pid.
    Parent(u32),
    Child,
}

/// `struct clone_args` up to `tls` (`CLONE_ARGS_SIZE_VER0`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// `prctl` option reading the `set_tid_address` pointer (not in the `libc` crate).
const PR_GET_TID_ADDRESS: libc::c_int = 40;

impl Forker {
    /// A forker that reports each child's pid at `slot_address` (a mapped, aligned `u32`);
    /// `ENOSYS` when this process cannot be forked safely here.
    fn new(slot_address: usize) -> Result<Forker, Errno> {
        let mut address: usize = 0;
        // SAFETY: PR_GET_TID_ADDRESS stores one pointer at the address passed, `&mut address`.
        let rc = unsafe {
            libc::prctl(
                PR_GET_TID_ADDRESS,
                (&raw mut address) as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        let tid = rustix::thread::gettid().as_raw_nonzero().get();
        if rc != 0 || address == 0 || address % std::mem::align_of::<i32>() != 0 {
            return Err(Errno::NOSYS);
        }
        // SAFETY: the kernel recorded this address from glibc's `set_tid_address(&self->tid)`:
        // a live, aligned `pid_t` in this thread's descriptor. Read once, to check that it holds
        // our thread id (musl registers another word, which would not).
        if unsafe { (address as *const i32).read_volatile() } != tid {
            return Err(Errno::NOSYS);
        }
        let (mut head, mut len): (usize, usize) = (0, 0);
        // SAFETY: get_robust_list(0, ...) stores the calling thread's list head and length at
        // the two addresses given.
        let rc =
            unsafe { libc::syscall(libc::SYS_get_robust_list, 0, &raw mut head, &raw mut len) };
        if rc != 0 || threads() != Some(1) {
            return Err(Errno::NOSYS);
        }
        Ok(Forker {
            tid_address: address,
            robust_list: (head, len),
            slot_address,
        })
    }

    fn fork(&self) -> Result<Forked, Errno> {
        let flags = libc::CLONE_PARENT
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_SETTID
            | libc::CLONE_CHILD_CLEARTID;
        let args = CloneArgs {
            flags: flags as u64,
            child_tid: self.tid_address as u64,
            parent_tid: self.slot_address as u64,
            // With `CLONE_PARENT` the child takes the server's exit signal (`SIGCHLD`, to the
            // parent); `clone3` insists this stays 0.
            exit_signal: 0,
            ..CloneArgs::default()
        };
        // SAFETY: like fork(2): no stack is given, so the child continues from this call on a
        // copy of this thread's stack, in a copy of this address space. The process has one
        // thread (checked in `new`) and holds no lock here, so the child finds every lock free.
        // `child_tid` is glibc's thread-id word (checked in `new`), which the kernel sets to the
        // child's id in the child only; `parent_tid` is the mapped slot, which it sets (shared
        // with the parent) before the call returns.
        let mut rc = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &raw const args,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if rc == -1 && Errno::from_raw_os_error(errno()) == Errno::NOSYS {
            rc = clone(flags, self.slot_address, self.tid_address);
        }
        match rc {
            -1 => Err(Errno::from_raw_os_error(errno())),
            0 => {
                // SAFETY: re-registers the list head glibc registered for this thread (read in
                // `new`); the copy in this child is at the same address.
                unsafe {
                    libc::syscall(
                        libc::SYS_set_robust_list,
                        self.robust_list.0,
                        self.robust_list.1,
                    )
                };
                Ok(Forked::Child)
            }
            pid => Ok(Forked::Parent(pid as u32)),
        }
    }
}

/// `clone(2)` with `flags | SIGCHLD`, the parent's and the child's thread-id words, for kernels
/// (or seccomp filters) without `clone3`. The argument order is the generic one (x86-64,
/// AArch64, RISC-V).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
fn clone(flags: libc::c_int, parent_tid: usize, child_tid: usize) -> libc::c_long {
    // SAFETY: as for `clone3` in `Forker::fork`: fork semantics (no new stack), one thread.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            parent_tid,
            child_tid,
            0usize,
        )
    }
}

#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
fn clone(_flags: libc::c_int, _parent_tid: usize, _child_tid: usize) -> libc::c_long {
    -1
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The number of threads in this process (`/proc/self/stat` field 20).
fn threads() -> Option<u32> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(17)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptors(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| rustix::pipe::pipe().expect("pipe").0)
            .collect()
    }

    fn request(present: u8, name: &[u8], env: &[&[u8]]) -> Vec<u8> {
        let mut bytes = REQUEST_MAGIC.to_vec();
        bytes.push(present);
        put_bytes(&mut bytes, name);
        put_bytes(&mut bytes, &[1, 0, 0, 0]);
        for var in env {
            put_bytes(&mut bytes, var);
        }
        bytes
    }

    #[test]
    fn a_stopped_or_dead_server_is_given_up_within_looks() {
        assert!(Patience::default().give_up(Seen::Exited));
        let mut patience = Patience::default();
        let looks: Vec<bool> = (0..STOPPED_LOOKS)
            .map(|_| patience.give_up(Seen::Stopped))
            .collect();
        assert_eq!(looks.last(), Some(&true));
        assert!(looks[..looks.len() - 1].iter().all(|&g| !g), "{looks:?}");
    }

    #[test]
    fn a_stop_seen_once_is_forgiven_when_the_server_runs_again() {
        let mut patience = Patience::default();
        // Job control: stopped and continued between looks, for as long as the limit allows.
        for _ in 0..(ANSWER_LOOKS - 1) / 2 {
            assert!(!patience.give_up(Seen::Stopped));
            assert!(!patience.give_up(Seen::Alive));
        }
    }

    #[test]
    fn a_live_server_gets_every_look_of_the_limit() {
        let mut patience = Patience::default();
        for look in 1..ANSWER_LOOKS {
            assert!(!patience.give_up(Seen::Alive), "gave up at look {look}");
        }
        assert!(patience.give_up(Seen::Alive));
        assert_eq!(LOOK_EVERY * ANSWER_LOOKS, Duration::from_secs(2));
    }

    #[test]
    fn a_well_formed_request_decodes() {
        let bytes = request(HAS_STDOUT, b"worker", &[b"A=1", b"B=2"]);
        let parsed = Request::parse(&bytes, descriptors(3)).expect("valid");
        assert_eq!(parsed.name, b"worker");
        assert_eq!(parsed.affinity, [1, 0, 0, 0]);
        assert_eq!(parsed.env, [c"A=1".to_owned(), c"B=2".to_owned()]);
        assert!(parsed.streams[0].is_none() && parsed.streams[1].is_some());
        assert!(parsed.streams[2].is_none());
    }

    #[test]
    fn malformed_requests_are_refused_without_panicking() {
        let good = request(HAS_STDIN | HAS_STDERR, b"w", &[b"A=1"]);
        // Every truncation of a valid request, with the right descriptors.
        for len in 0..good.len() {
            let cut = &good[..len];
            // A cut exactly between fields is a shorter valid request only after the affinity.
            if let Ok(parsed) = Request::parse(cut, descriptors(4)) {
                assert!(parsed.env.is_empty(), "cut at {len} decoded an environment");
            }
        }
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (b"XXXX".to_vec(), 2, "wrong magic"),
            (good.clone(), 3, "a stream descriptor missing"),
            (good.clone(), 1, "the working directory missing"),
            (good.clone(), 5, "a descriptor too many"),
            (request(0, &[b'n'; NAME_ROOM], &[]), 2, "a name too long"),
            (
                request(0, b"w", &[b"A=\x001"]),
                2,
                "a NUL inside a variable",
            ),
            (
                [good.clone(), vec![0xff, 0xff, 0xff, 0xff]].concat(),
                4,
                "a length past the end",
            ),
        ];
        for (bytes, fds, what) in cases {
            assert_eq!(
                Request::parse(&bytes, descriptors(fds)).err(),
                Some(Errno::INVAL),
                "{what}"
            );
        }
    }
}
