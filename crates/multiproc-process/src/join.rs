//! The parent's handle on a running child.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use multiproc_core::message;
use multiproc_core::proc::pidfd::PidFd;
use multiproc_core::proc::reaper;
use multiproc_core::transport::channel::RawReceiver;
use serde::de::DeserializeOwned;

use crate::error::{JoinError, SpawnError};
use crate::spawn_protocol::Report;
use crate::status::ExitStatus;

type JoinFuture<R> = Pin<Box<dyn Future<Output = Result<R, JoinError>> + Send>>;

enum State<R> {
    Running(JoinFuture<R>),
    NotStarted(SpawnError),
    Done,
}

/// A handle on a child process started by [`spawn`](crate::spawn) or
/// [`Builder::spawn`](crate::Builder::spawn).
///
/// Awaiting the handle (or [`join`](Self::join)) gives the child's result, or a [`JoinError`]
/// saying what happened instead: the function panicked (with the message and location), a
/// signal killed the process, it exited early, or it could not be started. The process is
/// always reaped, so no zombie is left, whether or not the handle is awaited.
///
/// Dropping the handle does not stop the child unless
/// [`kill_on_drop`](crate::Builder::kill_on_drop) was set; a daemon child (the default) still
/// dies with this process. A child whose handle was dropped is reaped by a background thread
/// once it exits, even if its runtime has shut down by then.
pub struct JoinHandle<R> {
    pid: Option<u32>,
    name: Option<String>,
    pidfd: Option<Arc<PidFd>>,
    kill_on_drop: bool,
    /// The exit status, once a join reaped the child or [`exit_status`](Self::exit_status) saw it.
    status: Arc<Mutex<Option<ExitStatus>>>,
    state: State<R>,
    /// The child's `multiproc.child` span, for the exit event of a handle dropped unjoined.
    #[cfg(feature = "tracing")]
    span: Option<tracing::Span>,
}

impl<R: DeserializeOwned + Send + 'static> JoinHandle<R> {
    pub(crate) fn start(
        pidfd: PidFd,
        name: Option<String>,
        kill_on_drop: bool,
        mut control: RawReceiver,
    ) -> Self {
        let pid = pidfd.pid();
        let pidfd = Arc::new(pidfd);
        let status = Arc::new(Mutex::new(None));
        let status_slot = status.clone();
        let child = pidfd.clone();
        let future = async move {
            let report =
                std::future::poll_fn(|cx| control.poll_recv_with(cx, message::decode::<Report<R>>))
                    .await;
            drop(control);
            let exit = match child.wait().await {
                Ok(s) => ExitStatus::new(s),
                Err(e) => {
                    // The caller learns why (no runtime, say); the child is reaped all the same.
                    reaper::reap_orphan(child);
                    return Err(JoinError::io(pid, e));
                }
            };
            *status_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(exit);
            match report {
                Ok(Some(Ok(Report::Returned(value)))) => Ok(value),
                Ok(Some(Ok(Report::Panicked { message, location }))) => {
                    Err(JoinError::panicked(pid, message, location))
                }
                Ok(Some(Ok(Report::BadArgs(why)))) => Err(JoinError::bad_args(pid, why)),
                Ok(Some(Ok(Report::BadResult(why)))) => Err(JoinError::bad_result(pid, why)),
                Ok(Some(Err(e))) => Err(JoinError::bad_result(pid, e.to_string())),
                // No report: the process ended some other way; its status says how.
                Ok(None) | Err(_) => Err(JoinError::exited(pid, exit)),
            }
        };
        Self {
            pid: Some(pid),
            name,
            pidfd: Some(pidfd),
            kill_on_drop,
            status,
            state: State::Running(Box::pin(future)),
            #[cfg(feature = "tracing")]
            span: None,
        }
    }
}

impl<R: Send + 'static> JoinHandle<R> {
    /// Runs the join inside the child's `multiproc.child` span, which records how it ended.
    #[cfg(feature = "tracing")]
    pub(crate) fn traced(mut self, span: tracing::Span) -> Self {
        use tracing::Instrument;
        self.span = Some(span.clone());
        if let State::Running(join) = std::mem::replace(&mut self.state, State::Done) {
            let join = async move {
                let result = join.await;
                crate::trace::joined(&result);
                result
            };
            self.state = State::Running(Box::pin(join.instrument(span)));
        }
        self
    }
}

impl<R> JoinHandle<R> {
    pub(crate) fn not_started(e: SpawnError) -> Self {
        Self {
            pid: None,
            name: None,
            pidfd: None,
            kill_on_drop: false,
            status: Arc::new(Mutex::new(None)),
            state: State::NotStarted(e),
            #[cfg(feature = "tracing")]
            span: None,
        }
    }

    /// The child's process id; `None` only if it could not be started.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The name given with [`Builder::name`](crate::Builder::name).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// True while the child process is running.
    pub fn is_alive(&self) -> bool {
        self.pidfd.as_ref().is_some_and(|p| !p.has_exited())
    }

    /// How the child ended, once it has ended (Python's `exitcode`, via
    /// [`ExitStatus::exitcode`]); `None` while it runs, or if it could not be started.
    ///
    /// It needs no join: after a [`join_timeout`](Self::join_timeout) that timed out, the
    /// status shows as soon as the process exits. Looking does not reap the child or take its
    /// result; a join still gives the result.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.is_none()
            && let Some(pidfd) = &self.pidfd
            && let Ok(Some(exit)) = pidfd.peek_exit()
        {
            *status = Some(ExitStatus::new(exit));
        }
        *status
    }

    /// Sends `SIGKILL`. A child that already ended is not an error. Join to reap it and see
    /// the outcome.
    ///
    /// # Errors
    /// When the signal cannot be sent (permissions).
    pub fn kill(&self) -> std::io::Result<()> {
        self.signal(9)
    }

    /// Sends `SIGTERM` (Python's `terminate()`).
    ///
    /// # Errors
    /// As [`kill`](Self::kill).
    pub fn terminate(&self) -> std::io::Result<()> {
        self.signal(15)
    }

    /// Sends signal number `signal` to the child.
    ///
    /// # Errors
    /// When `signal` is not a signal number or cannot be sent.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        match &self.pidfd {
            Some(p) => p.send_signal(signal),
            None => Ok(()),
        }
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
        let pid = self.pid;
        match tokio::time::timeout(timeout, self.join()).await {
            Ok(result) => result,
            Err(_) => Err(JoinError::timeout(pid.unwrap_or(0))),
        }
    }

    fn poll_join(&mut self, cx: &mut Context<'_>) -> Poll<Result<R, JoinError>> {
        match &mut self.state {
            State::Running(future) => {
                let result = std::task::ready!(future.as_mut().poll(cx));
                self.state = State::Done;
                Poll::Ready(result)
            }
            State::NotStarted(_) => match std::mem::replace(&mut self.state, State::Done) {
                State::NotStarted(e) => Poll::Ready(Err(JoinError::spawn(e))),
                _ => unreachable!("state checked above"),
            },
            State::Done => Poll::Ready(Err(JoinError::already_joined(self.pid))),
        }
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
    /// A child not joined yet is killed if `kill_on_drop` was set, and reaped by the reaper
    /// thread once it exits, so it never stays a zombie, whether or not a runtime is left.
    fn drop(&mut self) {
        if !matches!(self.state, State::Running(_)) {
            return;
        }
        // Dropping the join future closes our end of the control socket first: a child still
        // sending its report gets an error instead of waiting for a reader.
        self.state = State::Done;
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        if self.kill_on_drop {
            let _ = pidfd.send_signal(9);
        }
        // Nobody will await the join that records the exit: the reaper records it instead.
        #[cfg(feature = "tracing")]
        if let Some(span) = self.span.take() {
            let on_reaped = crate::trace::exit_unjoined(span, self.kill_on_drop);
            return reaper::reap_orphan_then(pidfd, Some(on_reaped));
        }
        reaper::reap_orphan(pidfd);
    }
}

impl<R> fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("pid", &self.pid)
            .field("name", &self.name)
            .field("exit_status", &self.exit_status())
            .finish_non_exhaustive()
    }
}
