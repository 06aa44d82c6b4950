//! The parent side of one worker slot: a tokio task that starts a worker, feeds it jobs from
//! the queue, routes its results, and replaces it when it retires or dies.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use multiproc_core::message;
use multiproc_core::proc::limits;
use multiproc_core::transport::channel::{self, RawReceiver, RawSender, TryRecv};
use multiproc_core::wait::spin::{self, SPIN_BUDGET, SpinPolicy, Spun};

use super::error::PoolError;
use super::result_ring::{Control, Cpu, JOBS_HELD, RingReader};
use super::state::{Job, JobMeta, Shared};
use super::stats::Counters;
use super::worker::{WorkerArgs, worker_main};
use super::worker_protocol::{FromWorker, Rejected, TaskFn};
use crate::{Builder, JoinError, JoinHandle};

/// Give a busy worker another job while it holds less than this much work by the recent pace
/// of its jobs' functions: enough that it never waits for the next job, little enough that an
/// idle worker can take the rest...
const QUEUE_AHEAD_NS: u64 = 500_000;
/// ...and never more than this many jobs (each has a cancel bit in the shared region).
const MAX_IN_FLIGHT: usize = JOBS_HELD;
/// Take no more jobs while this many bytes wait in the send buffer (the worker's socket is
/// full): the worker has plenty to do, the queued jobs stay available to idle workers, and the
/// buffer does not grow (a driver pushed up to half a millisecond of work at once, 400 KiB of
/// chunks of integers, copied into freshly faulted-in memory behind a full socket).
const MAX_UNSENT: usize = 64 << 10;
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
                multiproc_core::trace_debug!(slot, pid = conn.pid, "pool worker started");
                shared.set_pid(slot, Some(conn.pid));
                let end = poll_fn(|cx| conn.poll(cx, &shared, slot)).await;
                // Before the jobs it held fail: whoever sees the error must not see the pid.
                shared.set_pid(slot, None);
                conn.finish(end, &shared).await
            }
            Err(e) => Next::StartFailed(PoolError::spawn(e)),
        };
        match next {
            Next::Replace => {
                multiproc_core::trace_info!(slot, "replacing a pool worker");
                Counters::add(&shared.counters.replaced, 1);
                failed_starts = 0
            }
            Next::Stop => break,
            // Retry a few times (the system may be briefly out of processes or memory), then
            // fail the pool's work rather than retry forever.
            Next::StartFailed(error) => {
                failed_starts += 1;
                multiproc_core::trace_warn!(slot, failed_starts, error = %error, "pool worker did not start");
                if failed_starts >= START_ATTEMPTS {
                    multiproc_core::trace_error!(error = %error, "pool broken: its workers cannot start");
                    shared.break_pool(error);
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
    StartFailed(PoolError),
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
    /// The memory shared with the worker: its progress, the result ring, wake-up words.
    ctrl: Control,
    ring: RingReader,
    /// The last record taken from the ring (reused).
    record: Vec<u8>,
    held: Held,
    /// Jobs sent over the worker's life (for `max_tasks_per_worker`).
    sent: usize,
    /// Frames pushed to the worker's socket, and how many of them the worker was told about
    /// (once flushed).
    frames: u64,
    frames_announced: u64,
    spin: SpinPolicy,
    /// Set while the driver has nothing to do but wait for a result.
    wait: Option<Wait>,
    /// The pool's count of cancelled submissions when the driver last looked for cancelled
    /// jobs among those the worker holds.
    cancels_seen: u64,
    /// The worker's memory passed the recycling threshold: it takes no more jobs and retires.
    over_memory: bool,
}

/// A wait for a result, past its spin.
struct Wait {
    /// When the spin policy chose to park without spinning (to report how long the wait took).
    parked_at: Option<Instant>,
}

/// The jobs a worker holds, and what was learnt of their pace.
struct Held {
    /// Jobs sent, in the order the worker answers them. Their frames are kept so that jobs a
    /// dead worker never started can go to another.
    in_flight: VecDeque<InFlight>,
    /// What the worker has learnt of each function's time per task.
    pace: Pace,
    /// The sum of the in-flight jobs' `estimate_ns`.
    queued_ns: u64,
    /// The worker has said `Ready` (started, initializer run). Jobs wait for it, so a worker
    /// that cannot start holds none.
    ready: bool,
    /// Jobs answered so far.
    answered: u64,
    /// The pool's counters (tasks running: those in `in_flight`).
    counters: Arc<Counters>,
}

impl Conn {
    fn start(shared: &Shared, slot: usize) -> std::io::Result<Conn> {
        let (ours, theirs) = channel::socket_pair()?;
        let (mut tx, rx) = channel::split(ours)?;
        let ctrl = Control::new()?;
        tx.push(|buf| shared.config.encode_init(buf))
            .map_err(std::io::Error::other)?;
        let handle = Builder::new()
            .name(format!("{}-{slot}", shared.config.name))
            .kill_on_drop(true)
            .limits(shared.config.limits)
            .spawn(
                WorkerArgs {
                    socket: theirs,
                    shared: ctrl.region().clone(),
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
            ring: RingReader::new(ctrl.clone()),
            ctrl,
            record: Vec::new(),
            held: Held {
                in_flight: VecDeque::new(),
                pace: Pace::default(),
                queued_ns: 0,
                ready: false,
                answered: 0,
                counters: shared.counters.clone(),
            },
            sent: 0,
            // The `Init` frame.
            frames: 1,
            frames_announced: 0,
            spin: SpinPolicy::new(),
            wait: None,
            cancels_seen: 0,
            over_memory: false,
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
        let held = &self.held;
        if !held.ready
            || !under_quota
            || self.over_memory
            || held.in_flight.len() >= MAX_IN_FLIGHT
            || self.tx.buffered() >= MAX_UNSENT
        {
            return false;
        }
        held.in_flight.is_empty()
            || (held.queued_ns < QUEUE_AHEAD_NS && held.pace.estimate(job).is_some())
    }

    fn retiring(&self, shared: &Shared) -> bool {
        self.over_memory
            || shared
                .config
                .max_tasks_per_worker
                .is_some_and(|max| self.sent >= max)
    }

    /// After answers came: whether the worker's resident memory passed the pool's recycling
    /// threshold. If so it takes no more jobs, and retires once it answered those it holds.
    fn check_memory(&mut self, shared: &Shared) {
        if let Some(threshold) = shared.config.recycle_above
            && !self.over_memory
            && limits::resident_bytes(self.pid).is_ok_and(|rss| rss > threshold)
        {
            self.over_memory = true;
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, shared: &Shared, slot: usize) -> Poll<End> {
        shared.register(slot, cx.waker());
        loop {
            if shared.is_terminated() {
                return Poll::Ready(End::Terminate);
            }
            // Results first: they free capacity.
            let answered = self.held.answered;
            if let Err(end) = self.take_results(cx) {
                return Poll::Ready(end);
            }
            if self.held.answered != answered {
                self.check_memory(shared);
            }
            if self.held.answered != answered
                && let Some(wait) = self.wait.take()
                && let Some(at) = wait.parked_at
            {
                self.spin.parked(at.elapsed());
            }
            self.mark_cancelled(shared);
            let mut took = false;
            while let Some(job) = shared.take_job_if(|job| self.wants(job, shared)) {
                // The job keeps its descriptors (for another worker, should this one die).
                let fds = match job.fds.iter().map(|fd| fd.try_clone()).collect() {
                    Ok(fds) => fds,
                    Err(e) => {
                        job.meta.fail(PoolError::encode(e));
                        continue;
                    }
                };
                // The job's place among those sent to this worker, whose cancel bit it takes.
                let seq = self.sent as u64;
                self.ctrl.clear_cancelled(seq);
                let pushed = self.tx.push(|buf| {
                    buf.extend_from_slice(&job.frame);
                    Ok(fds)
                });
                match pushed {
                    Ok(()) => {
                        let held = &mut self.held;
                        let estimate_ns = held.pace.estimate(&job.meta).unwrap_or(QUEUE_AHEAD_NS);
                        held.queued_ns += estimate_ns;
                        Counters::add(&held.counters.running, job.meta.items);
                        held.in_flight.push_back(InFlight {
                            job,
                            estimate_ns,
                            seq,
                        });
                        self.sent += 1;
                        self.frames += 1;
                        took = true;
                    }
                    // Too large for the worker's socket: only this job fails.
                    Err(e @ multiproc_core::SendErrorKind::TooLarge { .. }) => {
                        job.meta.fail(PoolError::encode(e));
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
            if self.tx.buffered() == 0 && self.frames_announced != self.frames {
                // Every frame is in the socket: an idle worker may stop spinning and read.
                self.ctrl.set_sent(self.frames);
                self.frames_announced = self.frames;
            }
            if self.held.in_flight.is_empty() {
                self.wait = None;
                if self.retiring(shared) {
                    return Poll::Ready(End::Retire);
                }
                if shared.is_closed() && shared.queue_is_empty() {
                    return Poll::Ready(End::Drained);
                }
                if let Some(error) = shared.broken() {
                    return Poll::Ready(End::Broken(error));
                }
            } else if self.held.in_flight[0].job.meta.sink.is_cancelled() {
                // The job the worker answers next is cancelled. If it has started it, it is
                // busy with work nobody waits for: stop it, and let another worker take what
                // it holds that still matters. Otherwise it skips the job when it comes to it
                // (its bit is set before `last_started` is read: see `Control::set_started`).
                let front = &self.held.in_flight[0];
                self.ctrl.set_cancelled(front.seq);
                if self.ctrl.last_started() == Some(front.job.meta.id) {
                    return Poll::Ready(End::Abandoned);
                }
            }
            if took {
                continue;
            }
            if self.held.in_flight.is_empty() {
                return Poll::Pending;
            }
            match self.wait_for_results(cx) {
                Poll::Ready(Err(end)) => return Poll::Ready(end),
                Poll::Ready(Ok(())) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// After a submission was cancelled, tells the worker which of the jobs it holds are
    /// cancelled, so that it skips those it has not started.
    fn mark_cancelled(&mut self, shared: &Shared) {
        let cancels = shared.cancels();
        if cancels == self.cancels_seen {
            return;
        }
        self.cancels_seen = cancels;
        for sent in &self.held.in_flight {
            if sent.job.meta.sink.is_cancelled() {
                self.ctrl.set_cancelled(sent.seq);
            }
        }
    }

    /// Takes the worker's results from the ring and the socket, in the order it ran the jobs.
    fn take_results(&mut self, cx: &mut Context<'_>) -> Result<(), End> {
        let Conn {
            rx,
            ring,
            record,
            held,
            ..
        } = self;
        drain_ring(ring, record, held, None)?;
        loop {
            let frame = |bytes: &[u8], fds| on_socket_frame(ring, record, held, bytes, fds);
            match rx.poll_recv_with(cx, frame) {
                Poll::Ready(Ok(Some(Ok(())))) => {}
                Poll::Ready(Ok(Some(Err(end)))) => return Err(end),
                Poll::Ready(Ok(None) | Err(_)) => {
                    // The worker is gone; the results it put in the ring are still good.
                    drain_ring(ring, record, held, None)?;
                    return Err(End::Died);
                }
                Poll::Pending => break,
            }
        }
        ring.publish();
        Ok(())
    }

    /// Nothing to do but wait for a result: as the wait begins, spin if one is due within the
    /// spin budget (by the one rule for async waits, with the worker's CPU as the peer cue), else
    /// ask the worker for a nudge and park. `Ready(Ok)` when a result came in meanwhile and the
    /// driver should look again.
    fn wait_for_results(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), End>> {
        if self.wait.is_none() {
            let Conn {
                ctrl,
                ring,
                held,
                spin: policy,
                ..
            } = self;
            let cpu = ctrl.note_driver_cpu();
            let due_soon = held.queued_ns <= SPIN_BUDGET.as_nanos() as u64;
            let spun = match due_soon {
                true => {
                    // The spin polls the ring itself: no nudge needed from an earlier park.
                    ctrl.unpark();
                    spin::poll_spin(
                        cx,
                        policy,
                        None,
                        Some(&mut || Cpu::current() == cpu && cpu.apart_from(ctrl.worker_cpu())),
                        || ring.has_record().then_some(()),
                    )
                }
                false => Poll::Ready(Spun::Park(None)),
            };
            match spun {
                // Out of cooperative budget: yield first; the wait begins at the next poll.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Spun::Caught(())) => {
                    self.wait = Some(Wait { parked_at: None });
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Spun::Park(parked_at)) => self.wait = Some(Wait { parked_at }),
            }
        }
        if !self.ctrl.park(&self.ring) {
            return Poll::Pending;
        }
        // A result came in as we were about to park.
        let answered = self.held.answered;
        let Conn {
            ring, record, held, ..
        } = self;
        drain_ring(ring, record, held, None)?;
        ring.publish();
        if self.held.answered != answered {
            return Poll::Ready(Ok(()));
        }
        // What the ring holds waits for a result still on its way through the socket.
        Poll::Pending
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
        // Closing our end tells a healthy worker to exit. A worker that died, or was killed
        // for abandoned work, may have answered jobs since the driver last looked (a death
        // found by a failed send comes before the results it handed back just before): keep
        // its socket to take them, so that only the jobs it never finished fail.
        drop(self.tx);
        let abandoned = matches!(end, End::Abandoned);
        let mut rx = Some(self.rx).filter(|_| abandoned || matches!(end, End::Died));
        let exit = match self.handle.join_timeout(EXIT_GRACE).await {
            Err(e) if e.is_timeout() => {
                let _ = self.handle.kill();
                self.handle.join_timeout(EXIT_GRACE).await
            }
            other => other,
        };
        if let Some(rx) = &mut rx {
            take_last_results(rx, &mut self.ring, &mut self.record, &mut self.held);
        }
        let end_requeues = matches!(end, End::Died | End::Garbled(_) | End::Abandoned);
        // A worker that ran out of memory under its limit: the task it ran gets the limit.
        let out_of_memory = exit.as_ref().err().and_then(JoinError::memory_limit);
        let (error, next) = match end {
            End::Terminate => (PoolError::terminated(), Next::Stop),
            End::Drained => (PoolError::closed(), Next::Stop),
            End::Broken(error) => (error, Next::Stop),
            End::Garbled(why) => {
                multiproc_core::trace_warn!(
                    pid = self.pid,
                    why,
                    "pool worker garbled its answers; replacing it"
                );
                (PoolError::worker_died(self.pid, why, None), Next::Replace)
            }
            End::Died if !self.held.ready => {
                let why = format!(
                    "worker process {} died while starting: {}",
                    self.pid,
                    death_cause(&exit)
                );
                let error = PoolError::spawn(why);
                (error.clone(), Next::StartFailed(error))
            }
            End::Retire => (
                PoolError::worker_died(self.pid, death_cause(&exit), out_of_memory),
                Next::Replace,
            ),
            End::Died | End::Abandoned => {
                let error = PoolError::worker_died(self.pid, death_cause(&exit), out_of_memory);
                multiproc_core::trace_warn!(pid = self.pid, error = %error, "pool worker died");
                (error, Next::Replace)
            }
        };
        // The worker runs jobs in order: those after the one it started last never ran, and
        // go to another worker. The others (the one it was running, and any whose results it
        // had not sent yet) fail; the one it was running blames the task it was running, not
        // its first. Except when the worker was killed for abandoned work: then no job still
        // wanted fails for it, not even one the worker had just started as the kill came (the
        // job it then moved on to, from another submission): they all go to another worker.
        let in_flight = std::mem::take(&mut self.held.in_flight);
        let tasks = in_flight.iter().map(|sent| sent.job.meta.items).sum();
        Counters::sub(&self.held.counters.running, tasks);
        let last_started = self.ctrl.last_started();
        let running = self.ctrl.running_item();
        let started =
            last_started.and_then(|id| in_flight.iter().position(|sent| sent.job.meta.id == id));
        let mut requeued = Vec::new();
        for (at, sent) in in_flight.into_iter().enumerate() {
            let job = sent.job;
            let ran = started.is_some_and(|started| at <= started);
            let wanted = !job.meta.sink.is_cancelled();
            if (end_requeues && !ran) || (abandoned && wanted) {
                requeued.push(job);
            } else if Some(job.meta.id) == last_started {
                job.meta.fail_running(error.clone(), running);
            } else {
                job.meta.fail(error.clone());
            }
        }
        shared.requeue(requeued);
        next
    }
}

/// Takes every answer a dead worker handed back since the driver last looked, from the ring
/// and from its socket, so that the jobs left held are those it never answered.
fn take_last_results(
    rx: &mut RawReceiver,
    ring: &mut RingReader,
    record: &mut Vec<u8>,
    held: &mut Held,
) {
    // What cannot be read or makes no sense stays unanswered: those jobs are settled as held.
    if drain_ring(ring, record, held, None).is_err() {
        return;
    }
    while let Ok(TryRecv::Frame(Ok(()))) =
        rx.try_recv_with(|bytes, fds| on_socket_frame(ring, record, held, bytes, fds))
    {}
    let _ = drain_ring(ring, record, held, None);
}

/// Takes results from the ring, in order. With `until`, stops once job `until` is the next to
/// be answered (its answer came through the socket). Without, stops at the first record that
/// must wait for an answer still on its way through the socket.
fn drain_ring(
    ring: &mut RingReader,
    record: &mut Vec<u8>,
    held: &mut Held,
    until: Option<u64>,
) -> Result<(), End> {
    loop {
        if until.is_some() && held.next_job() == until {
            return Ok(());
        }
        let size = match ring.peek(record) {
            Ok(Some(size)) => size,
            Ok(None) => return Ok(()),
            Err(e) => return Err(End::Garbled(e.to_string())),
        };
        let (head, body) = decode_head(record)?;
        let Some(id) = head.job() else {
            return Err(End::Garbled(
                "a message other than a result in the result ring".into(),
            ));
        };
        if held.next_job() != Some(id) && until.is_none() && held.holds(id) {
            return Ok(());
        }
        ring.consume(size);
        held.on_message(head, body, Vec::new())?;
    }
}

/// Routes one frame from the worker's socket, after the results it put in the ring before.
fn on_socket_frame(
    ring: &mut RingReader,
    record: &mut Vec<u8>,
    held: &mut Held,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<(), End> {
    let (head, body) = decode_head(bytes)?;
    if let Some(id) = head.job() {
        drain_ring(ring, record, held, Some(id))?;
    }
    held.on_message(head, body, fds)
}

fn decode_head(bytes: &[u8]) -> Result<(FromWorker, &[u8]), End> {
    message::decode_head::<FromWorker>(bytes)
        .map_err(|e| End::Garbled(format!("unreadable message from the worker: {e}")))
}

impl Held {
    /// The job the worker answers next.
    fn next_job(&self) -> Option<u64> {
        self.in_flight.front().map(|sent| sent.job.meta.id)
    }

    fn holds(&self, id: u64) -> bool {
        self.in_flight.iter().any(|sent| sent.job.meta.id == id)
    }

    /// Acts on one message from the worker.
    fn on_message(&mut self, head: FromWorker, body: &[u8], fds: Vec<OwnedFd>) -> Result<(), End> {
        let mut finished = |id: u64| match self.in_flight.front() {
            Some(sent) if sent.job.meta.id == id => {
                let sent = self.in_flight.pop_front().expect("front exists");
                Counters::sub(&self.counters.running, sent.job.meta.items);
                self.queued_ns -= sent.estimate_ns;
                self.answered += 1;
                Ok(sent.job.meta)
            }
            _ => Err(End::Garbled(format!(
                "the worker answered job {id}, which it was not running"
            ))),
        };
        match head {
            FromWorker::Ready => {
                self.ready = true;
                Ok(())
            }
            FromWorker::InitFailed { message, location } => {
                multiproc_core::trace_error!(message, location, "pool initializer panicked");
                Err(End::Broken(PoolError::initializer(message, location)))
            }
            FromWorker::Done { id, busy_ns } => {
                let job = finished(id)?;
                self.pace.record(&job, busy_ns);
                job.sink.done(&job, body, fds);
                Ok(())
            }
            FromWorker::Rejected { id, why } => {
                let job = finished(id)?;
                job.fail(match why {
                    Rejected::Args(why) => PoolError::bad_args(why),
                    Rejected::Results(why) => PoolError::bad_result(why),
                    Rejected::Cancelled => PoolError::cancelled(),
                });
                Ok(())
            }
            FromWorker::Nudge => Ok(()),
        }
    }
}

/// A job a worker holds, with the time it was expected to take when it was sent.
struct InFlight {
    job: Job,
    estimate_ns: u64,
    /// Its place among the jobs sent to the worker (its cancel bit).
    seq: u64,
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
        Err(e) if e.is_out_of_memory() => format!(
            "it ran out of memory (limit {} bytes)",
            e.memory_limit().unwrap_or(0)
        ),
        Err(e) => match (e.signal(), e.exit_code()) {
            (Some(sig), _) => format!("killed by signal {sig} ({})", crate::signal_name(sig)),
            (None, Some(code)) => format!("it exited with code {code}"),
            _ => e.to_string(),
        },
    }
}
