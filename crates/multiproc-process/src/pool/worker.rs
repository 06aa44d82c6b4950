//! The worker process: reads chunks from its socket, runs them one after another, hands back
//! the outcomes (through the shared result ring, or the socket), and exits when the pool closes
//! the socket.

use std::os::fd::OwnedFd;
use std::time::Instant;

use multiproc_core::shm::SharedRegion;
use multiproc_core::transport::channel::{self, RawReceiver, RawSender, TryRecv};
use multiproc_core::wait::spin::{self, SpinPolicy, Spun};
use multiproc_core::{SharedFd, message};
use serde::{Deserialize, Serialize};

use super::result_ring::{Control, Cpu, MAX_RECORD, RingWriter};
use super::worker_protocol::{Call, ChunkOutput, Failure, FromWorker, Rejected, TaskFn, ToWorker};
use crate::panic;

/// What a worker is started with.
#[derive(Serialize, Deserialize)]
pub(crate) struct WorkerArgs {
    /// The worker's end of its socket to the pool.
    pub socket: SharedFd,
    /// The memory shared with the pool (see `result_ring`): where the worker records the job it
    /// starts, so that the pool knows, if the worker dies, which jobs never started; and the
    /// ring its results go through.
    pub shared: SharedRegion,
}

enum Step {
    Continue,
    Stop,
}

struct Worker {
    tx: RawSender,
    ctrl: Control,
    ring: RingWriter,
    call: Call,
    /// The record being written (reused).
    record: Vec<u8>,
    /// Jobs received so far (the next job's place in the pool's count, for its cancel bit).
    jobs: u64,
}

/// The worker process's function (run by `spawn`).
pub(crate) fn worker_main(args: WorkerArgs) {
    panic::install_hook(false);
    let Some(ctrl) = Control::from_region(args.shared) else {
        return;
    };
    let Ok((tx, rx)) = channel::split(args.socket) else {
        return;
    };
    let mut worker = Worker {
        tx,
        ring: RingWriter::new(ctrl.clone()),
        call: Call {
            progress: Some(ctrl.clone()),
            ..Call::default()
        },
        ctrl,
        record: Vec::new(),
        jobs: 0,
    };
    worker.serve(rx);
}

impl Worker {
    /// Runs frames until the pool closes the socket (close, retirement) or speaks nonsense.
    fn serve(&mut self, mut rx: RawReceiver) {
        // Frames read so far, against the pool's count of frames written: while they differ,
        // a read will find something, and when they agree there is no point reading.
        let mut frames: u64 = 0;
        let mut policy = SpinPolicy::new();
        // The socket was seen readable, or the last read found part of a frame.
        let mut readable = false;
        loop {
            let got = match rx.try_recv_buffered_with(|bytes, fds| self.handle(bytes, fds)) {
                Ok(Some(step)) => Some(step),
                Ok(None) if readable || self.ctrl.sent() > frames => {
                    match rx.try_recv_with(|bytes, fds| self.handle(bytes, fds)) {
                        Ok(TryRecv::Frame(step)) => Some(step),
                        // Part of a frame: the rest is on its way.
                        Ok(TryRecv::Empty) => None,
                        Ok(TryRecv::Closed) | Err(_) => return,
                    }
                }
                Ok(None) => None,
                Err(_) => return,
            };
            match got {
                Some(Step::Continue) => {
                    frames += 1;
                    readable = false;
                    continue;
                }
                Some(Step::Stop) => return,
                None => {}
            }
            // Idle: spin for the next job as the spin policy says, while the pool runs on
            // another CPU, then park.
            let me = self.ctrl.note_worker_cpu();
            let ctrl = &self.ctrl;
            let spun = match readable {
                true => Spun::Park(None),
                false => spin::spin(
                    &mut policy,
                    None,
                    Some(&mut || Cpu::current() == me && me.apart_from(ctrl.driver_cpu())),
                    || (ctrl.sent() > frames).then_some(()),
                ),
            };
            let parked_at = match spun {
                Spun::Caught(()) => continue,
                Spun::Park(at) => at,
            };
            if rx.blocking_wait(None).is_err() {
                return;
            }
            if let Some(at) = parked_at {
                policy.parked(at.elapsed());
            }
            readable = true;
        }
    }

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
            ToWorker::Run { id, func, span } => {
                let seq = self.jobs;
                self.jobs += 1;
                // A job cancelled after it was sent is skipped: looked at once before it is
                // marked started (the usual case, and the pool then has no reason to stop this
                // worker), and once after (see `Control::set_started`).
                if self.ctrl.is_cancelled(seq) {
                    return self.skip(id);
                }
                self.ctrl.set_started(id);
                if self.ctrl.is_cancelled(seq) {
                    return self.skip(id);
                }
                self.ctrl.note_worker_cpu();
                let started = Instant::now();
                // The chunk's tasks hang under the submitter's span (the initializer, which
                // installs a subscriber if the program wants one, has run by now).
                #[cfg(feature = "tracing")]
                let _task = span.map(|parent| crate::trace::task_span(parent, id).entered());
                #[cfg(not(feature = "tracing"))]
                let _ = span;
                self.run(func, body, fds);
                let busy_ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
                match self.call.rejected.take() {
                    Some(why) => self.answer(&FromWorker::Rejected { id, why }, false),
                    None => self
                        .answer(&FromWorker::Done { id, busy_ns }, true)
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

    /// Answers a cancelled job without running it.
    fn skip(&mut self, id: u64) -> Step {
        let why = Rejected::Cancelled;
        match self.answer(&FromWorker::Rejected { id, why }, false) {
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
            Some(Rejected::Cancelled) => failed("the initializer was cancelled".into()),
            None => match message::decode_fixed::<ChunkOutput<()>>(&self.call.output, Vec::new()) {
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

    /// Hands back the answer to a job: `head`, followed by the last call's output when
    /// `with_output`. Through the shared ring when it fits there (and carries no descriptors),
    /// nudging the pool if it waits for it; through the socket otherwise.
    ///
    /// Either way the result is out of the process before the next task starts: a task that
    /// then kills its worker cannot take finished results down with it.
    fn answer(&mut self, head: &FromWorker, with_output: bool) -> Result<(), String> {
        let output: &[u8] = if with_output { &self.call.output } else { &[] };
        if !with_output || self.call.output_fds.is_empty() {
            self.record.clear();
            message::encode_into(head, &mut self.record).map_err(|e| e.to_string())?;
            if self.record.len() + output.len() <= MAX_RECORD {
                self.record.extend_from_slice(output);
                if self.ring.try_write(&self.record) {
                    if self.ctrl.take_waiter() {
                        return self.send(&FromWorker::Nudge, false);
                    }
                    return Ok(());
                }
            }
        }
        self.send(head, with_output)
    }

    /// Sends `head` through the socket, followed by the last call's output when `with_output`.
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
