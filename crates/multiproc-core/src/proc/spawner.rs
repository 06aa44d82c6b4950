//! Starting child processes: [`spawn`], the one way core starts a child running an
//! [`EntryPoint`], on one long-lived thread that starts them all, by the fork server or by
//! re-executing this program.
//!
//! A daemon child asks the kernel to kill it when its parent goes away
//! ([`die_with_parent`](crate::proc::pidfd::die_with_parent), `PR_SET_PDEATHSIG`). The kernel's
//! "parent" there is the *thread* that forked the child: the signal fires as soon as that thread
//! ends, even while the rest of the process lives on. Children must therefore be started from a
//! thread that lives exactly as long as the process, never from a tokio blocking-pool thread or
//! a caller's thread that may retire. `run` hands the start-up work to such a thread, started
//! on first use and never stopped; it ends only with the process.
//!
//! [`spawn`] makes the control socket (with the bootstrap hello naming the entry point queued
//! on it) and starts the child ([`spawn_on`] starts it on a control socket the caller made, and
//! queued its first messages on, with [`bootstrap::control_socket`]). With the default standard
//! streams and working directory it asks the fork server (a re-executed copy of this program
//! that forks children for it: see the `forkserver` module, and [`FORK_SERVER_ENV`]) *from the
//! calling thread*: the server was started by the spawner thread and forks with
//! `CLONE_PARENT`, so its children are that thread's children whoever asks, and the request
//! saves two thread hand-offs. Without a server (the first child, or the server off or gone)
//! the spawner thread re-executes this program with `posix_spawn`, and with custom stdio or a
//! working directory with `std::process::Command` (the `exec` module). The caller gets a pidfd
//! and its end of the control socket, and speaks its own protocol on it. [`start_on`] does not
//! wait for the fork server's answer: it gives a [`Starting`], whose pidfd comes with
//! [`Starting::finish`], so that one thread starting many children keeps the server busy.
//!
//! # References
//! - [`PR_SET_PDEATHSIG` in `prctl(2)`](https://man7.org/linux/man-pages/man2/PR_SET_PDEATHSIG.2const.html)

use std::any::Any;
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, Sender};

use rustix::process::{Pid, Signal, WaitOptions};

use crate::proc::bootstrap::{self, ControlSocket, EntryPoint};
use crate::proc::exec::{self, Environment};
use crate::proc::forkserver;
use crate::proc::pidfd::PidFd;

pub use crate::proc::exec::{SpawnOptions, StdioPipes};
pub use crate::proc::external::{ProgramOptions, spawn_program};
pub use crate::proc::forkserver::FORK_SERVER_ENV;

type Job = Box<dyn FnOnce() + Send>;

/// The spawner thread's queue, with the pid of the process that started it: a process that was
/// `fork`ed (by someone else) from one that had the thread does not have it, and starts its own.
static SPAWNER: Mutex<Option<(u32, Sender<Job>)>> = Mutex::new(None);

/// Runs `f` on the process-wide spawner thread and returns its value; the caller blocks until
/// `f` has run. Start child processes (`Command::spawn`) inside `f`, so that the thread that
/// forks them outlives them (see the [module docs](self)).
///
/// Jobs run one at a time, in the order they were submitted. A panic in `f` is caught on the
/// spawner thread (which keeps serving) and resumed on the caller's.
///
/// # Errors
/// When the spawner thread cannot be started.
///
/// # Panics
/// When `f` panics, with its payload.
fn run<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (done_tx, done_rx) = mpsc::sync_channel::<Result<T, Box<dyn Any + Send>>>(1);
    let job: Job = Box::new(move || {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
        // The caller waits for this; if it is gone, nobody needs the value.
        let _ = done_tx.send(outcome);
    });
    submit(job)?;
    match done_rx.recv() {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // The job was dropped without running: only if the thread died, which `serve` prevents.
        Err(_) => Err(io::Error::other("the multiproc spawner thread went away")),
    }
}

fn submit(job: Job) -> io::Result<()> {
    let mut spawner = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
    let me = std::process::id();
    if let Some((pid, queue)) = spawner.as_ref()
        && *pid == me
    {
        match queue.send(job) {
            Ok(()) => return Ok(()),
            // Unreachable while `serve` runs forever; start a new thread all the same.
            Err(mpsc::SendError(job)) => return start(&mut spawner, me, job),
        }
    }
    start(&mut spawner, me, job)
}

fn start(slot: &mut Option<(u32, Sender<Job>)>, me: u32, job: Job) -> io::Result<()> {
    let (queue, jobs) = mpsc::channel::<Job>();
    queue
        .send(job)
        .expect("the receiver is alive until the thread is started");
    std::thread::Builder::new()
        .name("multiproc-spawner".into())
        .spawn(move || serve(jobs))?;
    *slot = Some((me, queue));
    Ok(())
}

/// The thread's body: runs jobs until the process ends. Jobs never unwind (`run` catches their
/// panics), and the sender lives in a static, so `recv` never fails and the thread never ends.
fn serve(jobs: Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        job();
    }
    // Only reachable if the sender were dropped; park rather than end the thread, so that
    // children forked here are never signalled while this process lives.
    loop {
        std::thread::park();
    }
}

/// Starts a child of this executable running `entry` with `options`, and returns a pidfd for
/// it and the parent's end of its control socket (the child's end is passed to `entry`).
///
/// A fork-server request goes from the calling thread (the server's children are the spawner
/// thread's whatever thread asks); any other start-up runs on the spawner thread (see the
/// [module docs](self)). Without
/// `current_dir` and custom stdio the child comes from the fork server or `posix_spawn`, else
/// from `std::process::Command`; either way it has the same environment, name and signal
/// set-up (empty mask, default `SIGPIPE`). The caller reaps the child: [`PidFd::wait`] or
/// [`PidFd::try_wait`].
///
/// # Errors
/// When the control socket or the spawner thread cannot be made, an option cannot be passed
/// to the child (a NUL byte in `arg0` or the environment), or the process cannot be started;
/// in a secure-execution program (setuid, setgid, file capabilities), which spawns no children
/// (see [`bootstrap`]).
pub fn spawn(entry: EntryPoint, options: SpawnOptions) -> io::Result<Spawned> {
    let ControlSocket {
        parent_end,
        child_end,
    } = bootstrap::control_socket(entry)?;
    let (pidfd, pipes) = spawn_on(child_end, options)?;
    Ok(Spawned {
        pidfd,
        control: parent_end,
        pipes,
    })
}

/// Starts a child of this executable on the child end of a [`ControlSocket`] (made with
/// [`bootstrap::control_socket`]), and returns a pidfd for it and the parent's ends of its
/// piped standard streams: [`spawn`] for a caller that queues its first messages on the
/// parent's end *before* the child exists, so that the child finds them at once instead of
/// waiting for a second wake-up. `child_end` is closed here, whatever happens.
///
/// # Errors
/// As [`spawn`].
pub fn spawn_on(child_end: OwnedFd, options: SpawnOptions) -> io::Result<(PidFd, StdioPipes)> {
    start_on(child_end, options)?.finish()
}

/// [`spawn_on`] without waiting for the fork server: when the server takes the request, this
/// returns as soon as it is sent, and the pid comes with [`Starting::finish`]. So a thread that
/// starts many children keeps the server forking one while it prepares the next.
///
/// # Errors
/// As [`spawn`], for what can be known before the server answers; the rest comes from
/// [`Starting::finish`].
pub fn start_on(child_end: OwnedFd, mut options: SpawnOptions) -> io::Result<Starting> {
    // Spinning turned on or off through the API reaches the child as the variable (first, so
    // that the caller's own setting of it wins).
    if let Some(value) = crate::wait::spin::env_for_children() {
        let setting = (crate::wait::spin::SPIN_ENV.into(), Some(value.into()));
        options.env.insert(0, setting);
    }
    if options.posix_spawnable() {
        let arg0 = exec::arg0(&options)?;
        let env = exec::environment(&options)?;
        // The fast path, on this thread: the running fork server forks the child (as the
        // spawner thread's child, see `forkserver`), with no hop to the spawner thread.
        let stage = match forkserver::ask(&child_end, &arg0, &env) {
            forkserver::Asked::Sent(ticket) => Stage::Asked {
                ticket,
                child_end,
                arg0,
                env,
            },
            forkserver::Asked::NotStarted => {
                let (pidfd, pipes) = reexecute(child_end, arg0, env)?;
                Stage::Started(pidfd, pipes)
            }
        };
        return Ok(Starting(Some(stage)));
    }
    let (pidfd, pipes) = run(move || start_child(child_end, options))??;
    Ok(Starting(Some(Stage::Started(pidfd, pipes))))
}

/// On the spawner thread: starts a server if none runs (so that the next spawn finds one), and
/// re-executes this program as the child on `child_end`, whose `exec` overlaps the server's.
fn reexecute(
    child_end: OwnedFd,
    arg0: CString,
    env: Environment,
) -> io::Result<(PidFd, StdioPipes)> {
    run(move || {
        forkserver::start_if_idle();
        let pid = exec::posix_spawn_child(&child_end, &arg0, env)?;
        drop(child_end);
        Ok((open_pidfd(pid)?, StdioPipes::default()))
    })?
}

/// A child being started ([`start_on`]): started already, or asked of the fork server, whose
/// answer (its pid) may not have been read yet.
///
/// Dropping it unfinished finishes it all the same, and hands the child to the [`reaper`]
/// (the caller's end of the control socket decides what the child does then).
///
/// [`reaper`]: crate::proc::reaper
#[derive(Debug)]
pub struct Starting(Option<Stage>);

#[derive(Debug)]
enum Stage {
    Started(PidFd, StdioPipes),
    /// Sent to the server. The control socket's child end stays here until the answer: if the
    /// server did not fork the child, it is re-executed on it.
    Asked {
        ticket: forkserver::Ticket,
        child_end: OwnedFd,
        arg0: CString,
        env: Environment,
    },
}

impl Starting {
    /// Waits for the child's pid if the fork server has not given it yet (re-executing the
    /// child if the server did not fork it), and returns its pidfd and the parent's ends of its
    /// piped standard streams. It blocks the calling thread until the server answers, or for
    /// as long as deciding that the server cannot (see the fork server's module docs: tens of
    /// milliseconds for a dead or stopped server, at most a few seconds for a stuck one).
    ///
    /// # Errors
    /// When the child could not be started (re-executed) after all, or when a server that
    /// stopped answering could not be killed (it may still start the child).
    pub fn finish(mut self) -> io::Result<(PidFd, StdioPipes)> {
        match self.0.take() {
            Some(stage) => stage.finish(),
            None => Err(io::Error::other("the child was finished already")),
        }
    }

    /// True when the child's pid is known without waiting (the server's answer was read, or
    /// the child was not asked of the server).
    pub fn is_settled(&self) -> bool {
        match &self.0 {
            Some(Stage::Asked { ticket, .. }) => ticket.is_settled(),
            _ => true,
        }
    }
}

impl Stage {
    fn finish(self) -> io::Result<(PidFd, StdioPipes)> {
        match self {
            Stage::Started(pidfd, pipes) => Ok((pidfd, pipes)),
            Stage::Asked {
                ticket,
                child_end,
                arg0,
                env,
            } => match forkserver::resolve(&ticket)? {
                Some(pid) => {
                    drop(child_end);
                    Ok((open_pidfd(pid)?, StdioPipes::default()))
                }
                None => reexecute(child_end, arg0, env),
            },
        }
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(stage) = self.0.take()
            && let Ok((pidfd, _)) = stage.finish()
        {
            crate::proc::reaper::reap_orphan(pidfd);
        }
    }
}

/// A child that [`spawn`] started.
#[derive(Debug)]
pub struct Spawned {
    /// The child's pidfd; the caller reaps it.
    pub pidfd: PidFd,
    /// The parent's end of the control socket.
    pub control: OwnedFd,
    /// The parent's ends of the standard streams set to `Stdio::piped()`.
    pub pipes: StdioPipes,
}

/// Runs `f` on the spawner thread (see [`run`]): for the external-program path, whose
/// children may ask to die with this process too.
pub(crate) fn on_spawner_thread<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    run(f)
}

/// On the spawner thread: starts the child whose control socket's child end is `child_end`
/// with custom stdio or working directory (`std::process::Command`), closes that end here, and
/// opens a pidfd for the child.
fn start_child(child_end: OwnedFd, options: SpawnOptions) -> io::Result<(PidFd, StdioPipes)> {
    let (pid, pipes) = exec::command_spawn_child(&child_end, options)?;
    drop(child_end);
    Ok((open_pidfd(pid)?, pipes))
}

/// Opens the pidfd of a child just started here. Not reaped yet (only its parent reaps it),
/// so the pidfd names exactly this child; without one nobody could reap it, so a failure
/// kills and reaps it here.
pub(crate) fn open_pidfd(pid: u32) -> io::Result<PidFd> {
    PidFd::open(pid).inspect_err(|_| {
        if let Some(pid) = Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        }
    })
}
