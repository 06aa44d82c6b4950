//! The worker process: reads chunks from its socket, runs them one after another, sends back
//! the outcomes, and exits when the pool closes the socket.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use multiproc_core::channel::{self, RawSender, TryRecv};
use multiproc_core::shm::SharedRegion;
use multiproc_core::{SharedFd, message};
use serde::{Deserialize, Serialize};

use super::protocol::{Call, ChunkOutput, Failure, FromWorker, Rejected, TaskFn, ToWorker};
use crate::panic;

/// What a worker is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    /// The worker's end of its socket to the pool.
    pub socket: SharedFd,
    /// Where the worker records the id (plus one) of the job it starts, so that the pool knows,
    /// if the worker dies, which jobs never started.
    pub progress: SharedRegion,
}

/// Reads the id of the last job a worker started (the parent's side of `progress`).
pub(crate) fn last_started(progress: &SharedRegion) -> Option<u64> {
    progress
        .atomic_u64(0)
        .load(Ordering::Acquire)
        .checked_sub(1)
}

enum Step {
    Continue,
    Stop,
}

struct Worker {
    tx: RawSender,
    progress: SharedRegion,
    call: Call,
}

/// The worker process's function (run by `spawn`).
pub(crate) fn worker_main(args: WorkerArgs) {
    panic::install_hook(false);
    let Ok((tx, mut rx)) = channel::split(args.socket) else {
        return;
    };
    let mut worker = Worker {
        tx,
        progress: args.progress,
        call: Call::default(),
    };
    // Until the pool closes the socket (close, retirement) or speaks nonsense.
    while let Ok(TryRecv::Frame(Step::Continue) | TryRecv::Empty) =
        rx.blocking_recv_with(None, |bytes, fds| worker.handle(bytes, fds))
    {}
}

impl Worker {
    fn handle(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) -> Step {
        let Ok((head, body)) = message::decode_head::<ToWorker>(bytes) else {
            return Step::Stop;
        };
        let sent = match head {
            ToWorker::Init { func } => {
                let reply = match func {
                    Some(func) => self.initialize(func, body, fds),
                    None => FromWorker::Ready,
                };
                let failed = matches!(reply, FromWorker::InitFailed { .. });
                let sent = self.send(&reply, false);
                if failed {
                    return Step::Stop;
                }
                sent
            }
            ToWorker::Run { id, func } => {
                self.progress
                    .atomic_u64(0)
                    .store(id.wrapping_add(1), Ordering::Release);
                let started = Instant::now();
                self.run(func, body, fds);
                let busy_ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
                match self.call.rejected.take() {
                    Some(why) => self.send(&FromWorker::Rejected { id, why }, false),
                    None => self
                        .send(&FromWorker::Done { id, busy_ns }, true)
                        // Too large for the socket, say: the pool must still hear of the chunk.
                        .or_else(|why| {
                            let why = Rejected::Results(why);
                            self.send(&FromWorker::Rejected { id, why }, false)
                        }),
                }
            }
        };
        match sent {
            Ok(()) => Step::Continue,
            Err(_) => Step::Stop,
        }
    }

    fn initialize(&mut self, func: TaskFn, body: &[u8], fds: Vec<OwnedFd>) -> FromWorker {
        self.run(func, body, fds);
        let failed = |message: String| FromWorker::InitFailed {
            message,
            location: None,
        };
        match self.call.rejected.take() {
            Some(Rejected::Args(why)) => {
                failed(format!("cannot decode the initializer's argument: {why}"))
            }
            Some(Rejected::Results(why)) => failed(why),
            None => match message::decode::<ChunkOutput<()>>(&self.call.output, Vec::new()) {
                Ok(mut output) => match output.failures.pop() {
                    Some((_, Failure::Panicked { message, location })) => {
                        FromWorker::InitFailed { message, location }
                    }
                    Some((_, Failure::Unsendable(why))) => failed(why),
                    None => FromWorker::Ready,
                },
                Err(e) => failed(e.to_string()),
            },
        }
    }

    /// Calls `func` with the frame's body as input, reusing the buffers of the last call.
    fn run(&mut self, func: TaskFn, body: &[u8], fds: Vec<OwnedFd>) {
        let mut call = std::mem::take(&mut self.call);
        call.input.clear();
        call.input.extend_from_slice(body);
        call.input_fds = fds;
        call.output.clear();
        call.output_fds.clear();
        call.rejected = None;
        self.call = func.call(call);
    }

    /// Sends `head`, followed by the last call's output when `with_output`.
    ///
    /// Each result leaves the process before the next task starts: a task that then kills its
    /// worker cannot take finished results down with it.
    fn send(&mut self, head: &FromWorker, with_output: bool) -> Result<(), String> {
        let call = &mut self.call;
        self.tx
            .push(|buf| {
                message::encode_into(head, buf)?;
                if with_output {
                    buf.extend_from_slice(&call.output);
                    return Ok(std::mem::take(&mut call.output_fds));
                }
                Ok(Vec::new())
            })
            .map_err(|e| e.to_string())?;
        self.tx
            .blocking_flush(None)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
