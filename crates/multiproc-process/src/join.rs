//! The parent's handle on a running child.

use std::fmt;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use multiproc_core::message;
use multiproc_core::proc::reaper;
use multiproc_core::transport::channel::{RawReceiver, TryRecv};
use serde::de::DeserializeOwned;

use crate::children::Child;
use crate::error::{JoinError, SpawnError};
use crate::spawn_protocol::Report;
use crate::status::ExitStatus;
use crate::stdio::{ChildStderr, ChildStdin, ChildStdout, Pipes};

type Exited = Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>;

/// `SIGABRT`: how Rust ends a process whose allocation failed.
const SIGABRT: i32 = 6;

enum State<R> {
    Running(Box<Running<R>>),
    NotStarted(SpawnError),
    Done,
}

/// A join in progress: first the report on the control socket, then the exit.
struct Running<R> {
    /// `None` once the report (or its absence) was read.
    control: Option<RawReceiver>,
    heard: Option<Heard<R>>,
    /// The wait for the exit, once started.
    exited: Option<Exited>,
    /// Decodes the report (where `R: DeserializeOwned` is known).
    decode: fn(&[u8], Vec<OwnedFd>) -> Heard<R>,
}

/// What the control socket said.
enum Heard<R> {
    Report(Report<R>),
    Garbled(String),
    Nothing,
}

/// A handle on a child process started by [`spawn`](crate::spawn) or
/// [`Builder::spawn`](crate::Builder::spawn).
///
/// Awaiting the handle (or [`join`](Self::join)) gives the child's result, or a [`JoinError`]
/// saying what happened instead: the function panicked (with the message and location), a
/// signal killed the process, it ran out of memory under its limit, it exited early, or it
/// could not be started. The process is always reaped, so no zombie is left, whether or not the
/// handle is awaited. [`exited`](Self::exited) waits for the exit without taking the result (a
/// sentinel, usable in `select!` any number of times); [`blocking_join`](Self::blocking_join)
/// joins from code outside of async.
///
/// [`kill`](Self::kill), [`terminate`](Self::terminate) and [`shutdown`](Self::shutdown) reach
/// the child's whole tree: its own children and theirs, external programs included.
///
/// Dropping the handle does not stop the child unless
/// [`kill_on_drop`](crate::Builder::kill_on_drop) was set; a daemon child (the default) still
/// dies with this process. A child whose handle was dropped is reaped by a background thread
/// once it exits, even if its runtime has shut down by then.
pub struct JoinHandle<R> {
    name: Option<String>,
    child: Option<Arc<Child>>,
    kill_on_drop: bool,
    pipes: Pipes,
    state: State<R>,
    /// The child's `multiproc.child` span: joins run in it, it records how the child ended, and
    /// the reaper records the exit of a handle dropped unjoined.
    #[cfg(feature = "tracing")]
    span: Option<tracing::Span>,
}

impl<R: DeserializeOwned + Send + 'static> JoinHandle<R> {
    pub(crate) fn start(
        child: Arc<Child>,
        kill_on_drop: bool,
        control: RawReceiver,
        pipes: Pipes,
    ) -> Self {
        Self {
            name: Some(child.name.clone()),
            child: Some(child),
            kill_on_drop,
            pipes,
            state: State::Running(Box::new(Running {
                control: Some(control),
                heard: None,
                exited: None,
                decode: |bytes, fds| match message::decode::<Report<R>>(bytes, fds) {
                    Ok(report) => Heard::Report(report),
                    Err(e) => Heard::Garbled(e.to_string()),
                },
            })),
            #[cfg(feature = "tracing")]
            span: None,
        }
    }
}

impl<R: Send + 'static> JoinHandle<R> {
    /// Runs the join inside the child's `multiproc.child` span, which records how it ended.
    #[cfg(feature = "tracing")]
    pub(crate) fn traced(mut self, span: tracing::Span) -> Self {
        self.span = Some(span);
        self
    }
}

impl<R> JoinHandle<R> {
    pub(crate) fn not_started(e: SpawnError) -> Self {
        Self {
            name: None,
            child: None,
            kill_on_drop: false,
            pipes: Pipes::default(),
            state: State::NotStarted(e),
            #[cfg(feature = "tracing")]
            span: None,
        }
    }

    /// The child's process id; `None` only if it could not be started.
    ///
    /// A child forked by the fork server is handed out before the server has answered (so
    /// that spawns in a row overlap): the first call then waits for that answer, usually there
    /// already, and at most as long as it takes to give up on a server that cannot answer (see
    /// the guide). The same holds for the first signal, sentinel or join.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.pid())
    }

    /// The child's name: the one given with [`Builder::name`](crate::Builder::name), or
    /// Python's default `Process-N`; `None` only if it could not be started.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// True while the child process is running.
    pub fn is_alive(&self) -> bool {
        self.child
            .as_ref()
            .and_then(|c| c.pidfd())
            .is_some_and(|p| !p.has_exited())
    }

    /// How the child ended, once it has ended (Python's `exitcode`, via
    /// [`ExitStatus::exitcode`]); `None` while it runs, or if it could not be started.
    ///
    /// It needs no join: after a [`join_timeout`](Self::join_timeout) that timed out, the
    /// status shows as soon as the process exits. Looking does not take the child's result; a
    /// join still gives it.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.child.as_ref().and_then(|c| c.peek())
    }

    /// Waits until the child has exited, without taking its result or reaping it: Python's
    /// `sentinel`. It can be awaited any number of times, by several tasks at once, and in
    /// `select!` beside anything else; a join afterwards still gives the result. A child that
    /// could not be started counts as exited.
    ///
    /// # Errors
    /// When the wait cannot be registered with the runtime.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches.
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// let mut child = multiproc::spawn((), |()| std::thread::sleep(Duration::from_millis(200)));
    /// loop {
    ///     tokio::select! {
    ///         exited = child.exited() => { exited?; break }
    ///         _ = tokio::time::sleep(Duration::from_millis(50)) => println!("still running"),
    ///     }
    /// }
    /// child.join().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn exited(&self) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        // Owns what it watches, so the future is `Send` and outlives a borrow of the handle.
        let child = self.child.clone();
        async move {
            match child.as_ref().and_then(|c| c.pidfd()) {
                Some(pidfd) => pidfd.exited().await,
                None => Ok(()),
            }
        }
    }

    /// Takes the parent's end of the child's standard input, when it was set to
    /// `Stdio::piped()` (once; `None` afterwards).
    pub fn stdin(&mut self) -> Option<ChildStdin> {
        self.pipes.stdin.take()
    }

    /// Takes the parent's end of the child's standard output, when it was set to
    /// `Stdio::piped()` (once; `None` afterwards).
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.pipes.stdout.take()
    }

    /// Takes the parent's end of the child's standard error, when it was set to
    /// `Stdio::piped()` (once; `None` afterwards).
    pub fn stderr(&mut self) -> Option<ChildStderr> {
        self.pipes.stderr.take()
    }

    /// Kills the child and its whole tree (`SIGKILL`): every process it started, and theirs,
    /// external programs included, are stopped first and then killed, so none escapes by
    /// forking. A child that already ended is not an error. Join to reap it and see the
    /// outcome.
    ///
    /// # Errors
    /// When the signal cannot be sent (permissions).
    pub fn kill(&self) -> std::io::Result<()> {
        match &self.child {
            Some(child) => child.kill_tree(),
            None => Ok(()),
        }
    }

    /// Sends `SIGTERM` to the child and its whole tree (Python's `terminate()`). A child that
    /// awaits [`stop_requested`](crate::stop_requested) sees it as a stop request; one that
    /// does not dies of it. See [`shutdown`](Self::shutdown) for a stop with a grace period.
    ///
    /// # Errors
    /// As [`kill`](Self::kill).
    pub fn terminate(&self) -> std::io::Result<()> {
        match &self.child {
            Some(child) => child.signal_tree(15),
            None => Ok(()),
        }
    }

    /// Sends signal number `signal` to the child alone (not its tree).
    ///
    /// # Errors
    /// When `signal` is not a signal number or cannot be sent.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        match self.child.as_ref().and_then(|c| c.pidfd()) {
            Some(pidfd) => pidfd.send_signal(signal),
            None => Ok(()),
        }
    }

    /// Stops the child gracefully and joins it: [`terminate`](Self::terminate), wait up to
    /// `grace` for it to exit, then [`kill`](Self::kill) it (and its tree) if it has not.
    /// A child that finishes within the grace period gives its result as usual.
    ///
    /// # Errors
    /// As [`join`](Self::join); a child killed after the grace period gives
    /// [`JoinError::is_killed`].
    ///
    /// # Panics
    /// Inside a tokio runtime without the time driver.
    ///
    /// # Cancel safety
    /// Cancel safe in the sense that the handle stays joinable; the signals already sent
    /// stay sent.
    pub async fn shutdown(&mut self, grace: Duration) -> Result<R, JoinError> {
        if let Some(child) = self.child.clone() {
            child.stop(grace).await;
        }
        self.join().await
    }

    /// Waits for the child and returns its result; the same as awaiting the handle, without
    /// consuming it.
    ///
    /// # Errors
    /// [`JoinError`]: see its predicates. A second join after the result was taken gives
    /// [`JoinError::is_already_joined`].
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future leaves the child running and the handle joinable.
    pub async fn join(&mut self) -> Result<R, JoinError> {
        std::future::poll_fn(|cx| self.poll_join(cx)).await
    }

    /// Waits at most `timeout` for the child. On timeout the child keeps running and the
    /// handle can be joined again (Python's `join(timeout)`); a zero timeout only checks.
    ///
    /// # Errors
    /// As [`join`](Self::join), plus [`JoinError::is_timeout`].
    ///
    /// # Panics
    /// Inside a tokio runtime without the time driver.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`join`](Self::join).
    pub async fn join_timeout(&mut self, timeout: Duration) -> Result<R, JoinError> {
        match tokio::time::timeout(timeout, self.join()).await {
            Ok(result) => result,
            Err(_) => Err(JoinError::timeout(self.pid().unwrap_or(0))),
        }
    }

    /// Blocks the calling thread until the child is done and returns its result: the join
    /// for code outside of async (a plain thread, `spawn_blocking`). It needs no runtime.
    ///
    /// # Errors
    /// As [`join`](Self::join).
    ///
    /// # Examples
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let child = multiproc::spawn(6, |x: u32| x * 7);
    /// let answer = std::thread::spawn(move || {
    ///     let mut child = child;
    ///     child.blocking_join()
    /// })
    /// .join()
    /// .expect("no panic")?;
    /// assert_eq!(answer, 42);
    /// # Ok(())
    /// # }
    /// ```
    pub fn blocking_join(&mut self) -> Result<R, JoinError> {
        self.blocking_join_until(None)
    }

    /// As [`blocking_join`](Self::blocking_join), waiting at most `timeout`. On timeout the
    /// child keeps running and the handle can be joined again.
    ///
    /// # Errors
    /// As [`join`](Self::join), plus [`JoinError::is_timeout`].
    pub fn blocking_join_timeout(&mut self, timeout: Duration) -> Result<R, JoinError> {
        self.blocking_join_until(multiproc_core::wait::deadline_after(timeout))
    }

    fn blocking_join_until(&mut self, deadline: Option<Instant>) -> Result<R, JoinError> {
        #[cfg(feature = "tracing")]
        let _entered = self.span.clone().map(tracing::Span::entered);
        if let Some(failed) = self.not_started_after_all() {
            return failed;
        }
        let pid = self.pid().unwrap_or(0);
        let (State::Running(run), Some(child), Some(pidfd)) = (
            &mut self.state,
            self.child.clone(),
            self.child.as_ref().and_then(|c| c.pidfd()).cloned(),
        ) else {
            return match std::mem::replace(&mut self.state, State::Done) {
                State::NotStarted(e) => Err(JoinError::spawn(e)),
                _ => Err(JoinError::already_joined(self.pid())),
            };
        };
        if let Some(control) = &mut run.control {
            let heard = match control.blocking_recv_with(deadline, run.decode) {
                Ok(TryRecv::Frame(heard)) => heard,
                Ok(TryRecv::Empty) => return Err(JoinError::timeout(pid)),
                Ok(TryRecv::Closed) | Err(_) => Heard::Nothing,
            };
            run.heard = Some(heard);
            run.control = None;
        }
        let outcome = loop {
            match child.reap() {
                Ok(Some(exit)) => break Ok(exit),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            match pidfd.blocking_exited(deadline) {
                Ok(true) => {}
                Ok(false) => return Err(JoinError::timeout(pid)),
                Err(e) => break Err(e),
            }
        };
        match outcome {
            Ok(exit) => self.finish(exit),
            Err(e) => self.fail(e),
        }
    }

    fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, JoinError>> {
        #[cfg(feature = "tracing")]
        let _entered = self.span.clone().map(tracing::Span::entered);
        if let Some(failed) = self.not_started_after_all() {
            return Poll::Ready(failed);
        }
        let (State::Running(run), Some(child), Some(pidfd)) = (
            &mut self.state,
            self.child.clone(),
            self.child.as_ref().and_then(|c| c.pidfd()).cloned(),
        ) else {
            return Poll::Ready(match std::mem::replace(&mut self.state, State::Done) {
                State::NotStarted(e) => Err(JoinError::spawn(e)),
                _ => Err(JoinError::already_joined(self.pid())),
            });
        };
        if let Some(control) = &mut run.control {
            let heard = match std::task::ready!(control.poll_recv_with(cx, run.decode)) {
                Ok(Some(heard)) => heard,
                Ok(None) | Err(_) => Heard::Nothing,
            };
            run.heard = Some(heard);
            // Closes our end: a child still writing gets an error instead of waiting.
            run.control = None;
        }
        let outcome = loop {
            match child.reap() {
                Ok(Some(exit)) => break Ok(exit),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
            let exited = run.exited.get_or_insert_with(|| {
                let pidfd = pidfd.clone();
                Box::pin(async move { pidfd.exited().await })
            });
            let watched = std::task::ready!(exited.as_mut().poll(cx));
            run.exited = None;
            if let Err(e) = watched {
                break Err(e);
            }
        };
        Poll::Ready(match outcome {
            Ok(exit) => self.finish(exit),
            Err(e) => self.fail(e),
        })
    }

    /// The join's outcome when the child, handed out before its pid was known, could not be
    /// started after all (the fork server did not fork it and re-executing it failed): why,
    /// once; `None` while there is a child to join.
    fn not_started_after_all(&mut self) -> Option<Result<R, JoinError>> {
        if !matches!(self.state, State::Running(_)) {
            return None;
        }
        let child = self.child.as_ref()?;
        if child.pidfd().is_some() {
            return None;
        }
        let e = child.take_start_error();
        self.state = State::Done;
        let result = Err(JoinError::spawn(SpawnError::io(e)));
        #[cfg(feature = "tracing")]
        crate::trace::joined(&result);
        Some(result)
    }

    /// The outcome once the child is reaped with status `exit` (recorded in its span).
    fn finish(&mut self, exit: ExitStatus) -> Result<R, JoinError> {
        let result = self.outcome(exit);
        #[cfg(feature = "tracing")]
        crate::trace::joined(&result);
        result
    }

    fn outcome(&mut self, exit: ExitStatus) -> Result<R, JoinError> {
        let pid = self.pid().unwrap_or(0);
        let heard = match std::mem::replace(&mut self.state, State::Done) {
            State::Running(run) => run.heard.unwrap_or(Heard::Nothing),
            _ => Heard::Nothing,
        };
        match heard {
            Heard::Report(Report::Returned(value)) => Ok(value),
            Heard::Report(Report::Panicked { message, location }) => {
                Err(JoinError::panicked(pid, message, location))
            }
            Heard::Report(Report::BadArgs(why)) => Err(JoinError::bad_args(pid, why)),
            Heard::Report(Report::BadResult(why)) | Heard::Garbled(why) => {
                Err(JoinError::bad_result(pid, why))
            }
            // No report: the process ended some other way; its status says how.
            Heard::Nothing => match self.child.as_ref().and_then(|c| c.memory_limit) {
                Some(limit) if exit.signal() == Some(SIGABRT) => {
                    Err(JoinError::out_of_memory(pid, exit, limit))
                }
                _ => Err(JoinError::exited(pid, exit)),
            },
        }
    }

    /// The wait failed (no runtime, say): the caller learns why, and the reaper thread reaps
    /// the child all the same.
    fn fail(&mut self, e: std::io::Error) -> Result<R, JoinError> {
        self.state = State::Done;
        if let Some(pidfd) = self.child.as_ref().and_then(|c| c.pidfd()) {
            reaper::reap_orphan(pidfd.clone());
        }
        let result = Err(JoinError::io(self.pid().unwrap_or(0), e));
        #[cfg(feature = "tracing")]
        crate::trace::joined(&result);
        result
    }
}

impl<R> Future for JoinHandle<R> {
    type Output = Result<R, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_join(cx)
    }
}

impl<R> Unpin for JoinHandle<R> {}

impl<R> Drop for JoinHandle<R> {
    /// A child not joined yet is killed (with its tree) if `kill_on_drop` was set, and reaped
    /// by the reaper thread once it exits, so it never stays a zombie, whether or not a
    /// runtime is left.
    fn drop(&mut self) {
        if !matches!(self.state, State::Running(_)) {
            return;
        }
        // Dropping the join first closes our end of the control socket: a child still
        // sending its report gets an error instead of waiting for a reader.
        self.state = State::Done;
        let Some(child) = self.child.take() else {
            return;
        };
        // A child handed out before its pid was known is started now if it was not (it runs
        // on unless killed below, as any child whose handle is dropped).
        let Some(pidfd) = child.pidfd().cloned() else {
            return;
        };
        if self.kill_on_drop {
            let _ = child.kill_tree();
        }
        // Nobody will await the join that records the exit: it is recorded here if the child
        // was reaped already (it exited, or `active_children` saw it), else by the reaper.
        let reaped = child.reap();
        #[cfg(feature = "tracing")]
        if let Some(span) = self.span.take() {
            let on_reaped = crate::trace::exit_unjoined(span.clone(), self.kill_on_drop);
            match reaped {
                Ok(Some(status)) => crate::trace::exited_unjoined(&span, status),
                Ok(None) => return reaper::reap_orphan_then(pidfd, Some(on_reaped)),
                Err(_) => {}
            }
            return;
        }
        if matches!(reaped, Ok(None)) {
            reaper::reap_orphan(pidfd);
        }
    }
}

impl<R> fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only what is known: a look at the handle never waits for the fork server.
        let known = self.child.as_ref().and_then(|c| c.known_pid());
        f.debug_struct("JoinHandle")
            .field("pid", &known)
            .field("name", &self.name)
            .field("exit_status", &known.and_then(|_| self.exit_status()))
            .finish_non_exhaustive()
    }
}
