//! The parent side of one worker slot: a tokio task that starts a worker, feeds it jobs from
//! the queue, routes its results, and replaces it when it retires or dies.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use multiproc_core::channel::{self, RawReceiver, RawSender};
use multiproc_core::message;

use super::error::PoolError;
use super::protocol::{FromWorker, Rejected, TaskFn};
use super::shared::{Job, JobMeta, Shared};
use super::worker::{WorkerArgs, last_started, worker_main};
use crate::{Builder, JoinError, JoinHandle};
use multiproc_core::shm::SharedRegion;

/// Give a busy worker another job while it holds less than this much work by the recent pace
/// of its jobs' functions: enough that it never waits for the next job, little enough that an
/// idle worker can take the rest...
const QUEUE_AHEAD_NS: u64 = 500_000;
/// ...and never more than this many jobs.
const MAX_IN_FLIGHT: usize = 512;
/// How long a worker that should exit may take before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Attempts in a row to start a worker before the pool is declared broken.
const START_ATTEMPTS: u32 = 4;

/// Runs slot `slot` of the pool until the pool ends.
pub(crate) async fn run_slot(shared: Arc<Shared>, slot: usize) {
    let mut failed_starts = 0;
    loop {
        if stop_spawning(&shared) {
            break;
        }
        let next = match Conn::start(&shared, slot) {
            Ok(mut conn) => {
                shared.set_pid(slot, Some(conn.pid));
                let end = poll_fn(|cx| conn.poll(cx, &shared, slot)).await;
                // Before the jobs it held fail: whoever sees the error must not see the pid.
                shared.set_pid(slot, None);
                conn.finish(end, &shared).await
            }
            Err(e) => Next::StartFailed(format!("cannot start a worker process: {e}")),
        };
        match next {
            Next::Replace => failed_starts = 0,
            Next::Stop => break,
            // Retry a few times (the system may be briefly out of processes or memory), then
            // fail the pool's work rather than retry forever.
            Next::StartFailed(why) => {
                failed_starts += 1;
                if failed_starts >= START_ATTEMPTS {
                    shared.break_pool(PoolError::spawn(why));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25 << failed_starts)).await;
            }
        }
    }
    shared.driver_finished();
}

/// What a slot does after a worker's service ended.
enum Next {
    /// Start a new worker.
    Replace,
    /// The pool needs no more workers in this slot.
    Stop,
    /// The worker could not be started or died before it was ready.
    StartFailed(String),
}

/// No new worker is needed: the pool is terminated or broken, or closed with nothing left.
fn stop_spawning(shared: &Shared) -> bool {
    shared.is_terminated()
        || shared.broken().is_some()
        || (shared.is_closed() && shared.queue_is_empty())
}

/// Why a worker's service ended.
enum End {
    /// Its socket closed: it died (or exited from inside a task).
    Died,
    /// It sent something that makes no sense; it is killed.
    Garbled(String),
    /// It ran its quota of tasks.
    Retire,
    /// The pool is closed and all work is done.
    Drained,
    /// The pool is terminated.
    Terminate,
    /// It runs work nobody waits for any more; it is killed to stop that work.
    Abandoned,
    /// The pool cannot run tasks (its initializer panicked, here or in another worker).
    Broken(PoolError),
}

/// A live worker and the jobs it holds.
struct Conn {
    handle: JoinHandle<()>,
    pid: u32,
    tx: RawSender,
    rx: RawReceiver,
    /// Jobs sent, in the order the worker answers them. Their frames are kept so that jobs a
    /// dead worker never started can go to another.
    in_flight: VecDeque<InFlight>,
    /// Where the worker records the job it starts.
    progress: SharedRegion,
    /// Jobs sent over the worker's life (for `max_tasks_per_worker`).
    sent: usize,
    /// What the worker has learnt of each function's time per task.
    pace: Pace,
    /// The sum of the in-flight jobs' `estimate_ns`.
    queued_ns: u64,
    /// The worker has said `Ready` (started, initializer run). Jobs wait for it, so a worker
    /// that cannot start holds none.
    ready: bool,
}

impl Conn {
    fn start(shared: &Shared, slot: usize) -> std::io::Result<Conn> {
        let (ours, theirs) = channel::socket_pair()?;
        let (mut tx, rx) = channel::split(ours)?;
        let progress = SharedRegion::new(8)?;
        tx.push(|buf| shared.config.encode_init(buf))
            .map_err(std::io::Error::other)?;
        let handle = Builder::new()
            .name(format!("{}-{slot}", shared.config.name))
            .kill_on_drop(true)
            .spawn(
                WorkerArgs {
                    socket: theirs,
                    progress: progress.clone(),
                },
                worker_main,
            )
            .map_err(std::io::Error::other)?;
        let pid = handle
            .pid()
            .ok_or_else(|| std::io::Error::other("the worker has no pid"))?;
        Ok(Conn {
            handle,
            pid,
            tx,
            rx,
            in_flight: VecDeque::new(),
            progress,
            sent: 0,
            pace: Pace::default(),
            queued_ns: 0,
            ready: false,
        })
    }

    /// Whether this worker should be given `job` now: when it is idle, or when it runs tasks
    /// of known pace and holds less than `QUEUE_AHEAD_NS` of them. A job of a function it has
    /// not timed yet waits for an idle worker, so a slow new function cannot pile up behind one.
    fn wants(&self, job: &JobMeta, shared: &Shared) -> bool {
        let under_quota = shared
            .config
            .max_tasks_per_worker
            .is_none_or(|max| self.sent < max);
        if !self.ready || !under_quota || self.in_flight.len() >= MAX_IN_FLIGHT {
            return false;
        }
        self.in_flight.is_empty()
            || (self.queued_ns < QUEUE_AHEAD_NS && self.pace.estimate(job).is_some())
    }

    fn retiring(&self, shared: &Shared) -> bool {
        shared
            .config
            .max_tasks_per_worker
            .is_some_and(|max| self.sent >= max)
    }

    fn poll(&mut self, cx: &mut Context<'_>, shared: &Shared, slot: usize) -> Poll<End> {
        shared.register(slot, cx.waker());
        loop {
            if shared.is_terminated() {
                return Poll::Ready(End::Terminate);
            }
            // Results first: they free capacity.
            loop {
                let Conn {
                    rx,
                    in_flight,
                    pace,
                    queued_ns,
                    ready,
                    ..
                } = self;
                let frame =
                    |bytes: &[u8], fds| on_frame(in_flight, pace, queued_ns, ready, bytes, fds);
                match rx.poll_recv_with(cx, frame) {
                    Poll::Ready(Ok(Some(Ok(())))) => {}
                    Poll::Ready(Ok(Some(Err(end)))) => return Poll::Ready(end),
                    Poll::Ready(Ok(None) | Err(_)) => return Poll::Ready(End::Died),
                    Poll::Pending => break,
                }
            }
            let mut took = false;
            while let Some(job) = shared.take_job_if(|job| self.wants(job, shared)) {
                // The job keeps its descriptors (for another worker, should this one die).
                let fds = match job.fds.iter().map(|fd| fd.try_clone()).collect() {
                    Ok(fds) => fds,
                    Err(e) => {
                        job.meta.fail(PoolError::encode(e.to_string()));
                        continue;
                    }
                };
                let pushed = self.tx.push(|buf| {
                    buf.extend_from_slice(&job.frame);
                    Ok(fds)
                });
                match pushed {
                    Ok(()) => {
                        let estimate_ns = self.pace.estimate(&job.meta).unwrap_or(QUEUE_AHEAD_NS);
                        self.queued_ns += estimate_ns;
                        self.in_flight.push_back(InFlight { job, estimate_ns });
                        self.sent += 1;
                        took = true;
                    }
                    // Too large for the worker's socket: only this job fails.
                    Err(e @ multiproc_core::SendErrorKind::TooLarge { .. }) => {
                        job.meta.fail(PoolError::encode(e.to_string()));
                    }
                    Err(_) => {
                        shared.requeue(vec![job]);
                        return Poll::Ready(End::Died);
                    }
                }
            }
            if self.tx.buffered() > 0
                && let Poll::Ready(Err(_)) = self.tx.poll_flush(cx)
            {
                return Poll::Ready(End::Died);
            }
            if self.in_flight.is_empty() {
                if self.retiring(shared) {
                    return Poll::Ready(End::Retire);
                }
                if shared.is_closed() && shared.queue_is_empty() {
                    return Poll::Ready(End::Drained);
                }
                if let Some(error) = shared.broken() {
                    return Poll::Ready(End::Broken(error));
                }
            } else if self.in_flight[0].job.meta.sink.is_cancelled() {
                // The worker is busy with work nobody waits for: stop it, and let another
                // worker take what it holds that still matters.
                return Poll::Ready(End::Abandoned);
            }
            if !took {
                return Poll::Pending;
            }
        }
    }

    /// Ends the worker's service: stops it, reaps it, settles the jobs it held, and says what
    /// the slot does next.
    async fn finish(mut self, end: End, shared: &Shared) -> Next {
        match &end {
            End::Garbled(_) | End::Terminate | End::Abandoned => {
                let _ = self.handle.kill();
            }
            End::Broken(error) => shared.break_pool(error.clone()),
            End::Died | End::Retire | End::Drained => {}
        }
        // Closing our end tells a healthy worker to exit.
        drop(self.tx);
        drop(self.rx);
        let exit = match self.handle.join_timeout(EXIT_GRACE).await {
            Err(e) if e.is_timeout() => {
                let _ = self.handle.kill();
                self.handle.join_timeout(EXIT_GRACE).await
            }
            other => other,
        };
        let end_requeues = matches!(end, End::Died | End::Garbled(_) | End::Abandoned);
        let (error, next) = match end {
            End::Terminate => (PoolError::terminated(), Next::Stop),
            End::Drained => (PoolError::closed(), Next::Stop),
            End::Broken(error) => (error, Next::Stop),
            End::Garbled(why) => (PoolError::worker_died(self.pid, why), Next::Replace),
            End::Died if !self.ready => {
                let why = format!(
                    "worker process {} died while starting: {}",
                    self.pid,
                    death_cause(&exit)
                );
                (PoolError::spawn(why.clone()), Next::StartFailed(why))
            }
            End::Died | End::Retire | End::Abandoned => (
                PoolError::worker_died(self.pid, death_cause(&exit)),
                Next::Replace,
            ),
        };
        // The worker runs jobs in order: those after the one it started last never ran, and
        // go to another worker. The others (the one it was running, and any whose results it
        // had not sent yet) fail.
        let started = last_started(&self.progress).and_then(|id| {
            self.in_flight
                .iter()
                .position(|sent| sent.job.meta.id == id)
        });
        let unstarted = match started {
            Some(at) => self.in_flight.split_off(at + 1),
            None => std::mem::take(&mut self.in_flight),
        };
        for sent in self.in_flight.drain(..) {
            sent.job.meta.fail(error.clone());
        }
        let unstarted: Vec<Job> = unstarted.into_iter().map(|sent| sent.job).collect();
        match end_requeues {
            true => shared.requeue(unstarted),
            false => unstarted
                .into_iter()
                .for_each(|job| job.meta.fail(error.clone())),
        }
        next
    }
}

/// Routes one frame from the worker.
fn on_frame(
    in_flight: &mut VecDeque<InFlight>,
    pace: &mut Pace,
    queued_ns: &mut u64,
    ready: &mut bool,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(), End> {
    let (head, body) = message::decode_head::<FromWorker>(bytes)
        .map_err(|e| End::Garbled(format!("unreadable message from the worker: {e}")))?;
    let mut finished = |id: u64| match in_flight.front() {
        Some(sent) if sent.job.meta.id == id => {
            let sent = in_flight.pop_front().expect("front exists");
            *queued_ns -= sent.estimate_ns;
            Ok(sent.job.meta)
        }
        _ => Err(End::Garbled(format!(
            "the worker answered job {id}, which it was not running"
        ))),
    };
    match head {
        FromWorker::Ready => {
            *ready = true;
            Ok(())
        }
        FromWorker::InitFailed { message, location } => {
            Err(End::Broken(PoolError::initializer(message, location)))
        }
        FromWorker::Done { id, busy_ns } => {
            let job = finished(id)?;
            pace.record(&job, busy_ns);
            job.sink.done(&job, body, fds);
            Ok(())
        }
        FromWorker::Rejected { id, why } => {
            let job = finished(id)?;
            job.fail(match why {
                Rejected::Args(why) => PoolError::bad_args(why),
                Rejected::Results(why) => PoolError::bad_result(why),
            });
            Ok(())
        }
    }
}

/// A job a worker holds, with the time it was expected to take when it was sent.
struct InFlight {
    job: Job,
    estimate_ns: u64,
}

/// A worker's running average of the time per task of each function it ran.
#[derive(Default)]
struct Pace {
    per_task_ns: HashMap<TaskFn, u64>,
}

impl Pace {
    /// How long `job` should take, if its function was timed.
    fn estimate(&self, job: &JobMeta) -> Option<u64> {
        let per_task = self.per_task_ns.get(&job.func)?;
        Some(per_task.saturating_mul(job.items as u64))
    }

    fn record(&mut self, job: &JobMeta, busy_ns: u64) {
        let per_task = (busy_ns / job.items.max(1) as u64).max(1);
        self.per_task_ns
            .entry(job.func)
            .and_modify(|old| *old = (*old * 7 + per_task) / 8)
            .or_insert(per_task);
    }
}

/// Says how a worker ended, for the errors of the jobs it held.
fn death_cause(exit: &Result<(), JoinError>) -> String {
    match exit {
        Ok(()) => "it exited normally".to_string(),
        Err(e) => match (e.signal(), e.exit_code()) {
            (Some(sig), _) => format!("killed by signal {sig} ({})", crate::signal_name(sig)),
            (None, Some(code)) => format!("it exited with code {code}"),
            _ => e.to_string(),
        },
    }
}
