//! A child's standard streams set to `Stdio::piped()`: the parent's ends, as tokio
//! [`AsyncWrite`] (stdin) and [`AsyncRead`] (stdout, stderr).
//!
//! Each is taken once from its handle ([`JoinHandle::stdin`](crate::JoinHandle::stdin)...,
//! [`CommandChild::stdin`](crate::CommandChild::stdin)...). Dropping [`ChildStdin`] closes the child's
//! input (it reads end-of-file).

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use multiproc_core::proc::pidfd::PidFd;
use multiproc_core::proc::reaper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;

use crate::error::SpawnError;

/// The parent's end of a child's standard input: write to it, drop it to close it.
#[derive(Debug)]
pub struct ChildStdin(pipe::Sender);

/// The parent's end of a child's standard output.
#[derive(Debug)]
pub struct ChildStdout(pipe::Receiver);

/// The parent's end of a child's standard error.
#[derive(Debug)]
pub struct ChildStderr(pipe::Receiver);

/// The parent's ends of the piped streams of one child, taken one by one.
#[derive(Debug, Default)]
pub(crate) struct Pipes {
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Option<ChildStdout>,
    pub(crate) stderr: Option<ChildStderr>,
}

impl Pipes {
    /// Registers the pipe ends from the spawner with the current runtime.
    pub(crate) fn new(pipes: multiproc_core::proc::spawner::StdioPipes) -> io::Result<Self> {
        let reader = |fd: Option<OwnedFd>| fd.map(pipe::Receiver::from_owned_fd).transpose();
        Ok(Self {
            stdin: pipes
                .stdin
                .map(pipe::Sender::from_owned_fd)
                .transpose()?
                .map(ChildStdin),
            stdout: reader(pipes.stdout)?.map(ChildStdout),
            stderr: reader(pipes.stderr)?.map(ChildStderr),
        })
    }

    /// [`Pipes::new`] for a child just started: when its pipes cannot be registered, nobody
    /// could talk to it, so it is killed (the reaper reaps it) and the error returned.
    pub(crate) fn for_child(
        pidfd: PidFd,
        pipes: multiproc_core::proc::spawner::StdioPipes,
    ) -> Result<(PidFd, Self), SpawnError> {
        match Self::new(pipes) {
            Ok(pipes) => Ok((pidfd, pipes)),
            Err(e) => {
                let _ = pidfd.send_signal(9);
                reaper::reap_orphan(pidfd);
                Err(SpawnError::io(e))
            }
        }
    }
}

impl AsyncWrite for ChildStdin {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl AsyncRead for ChildStdout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncRead for ChildStderr {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}
