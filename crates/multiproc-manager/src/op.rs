//! Operations as values: [`Op`], and the two ways to send many with few round trips,
//! [`Batch`] (one request, applied atomically) and [`Pipeline`] (many requests in flight).
//!
//! Every proxy method is an [`Op`] built by the proxy's `ops()` view and sent alone; the same
//! `Op` can instead go into a batch or a pipeline, which give back a [`Slot`] per operation to
//! take its typed result from.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use std::future::Future;

use futures::StreamExt;
use rustc_hash::FxHashMap;

use crate::codec::{Answer, At, Kept, OpWire, OpsBuf, index_results};
use crate::decode::malformed;
use crate::error::OpError;
use crate::link::{Endpoint, Link, Requests, Responses};
use crate::wire::{self, Failure, Request, Response};

/// Turns one answer into the operation's typed result.
pub(crate) type Decode<R> = fn(Answer<'_>) -> Result<R, OpError>;

/// One operation on a served value, not sent yet, whose result is an `R`.
///
/// Made by a proxy's `ops()` view (for example [`Map::ops`](crate::Map::ops)); send it with
/// [`Batch::push`] or [`Pipeline::push`]. Encoding happened when it was made, so a value that
/// cannot be encoded was already refused there.
pub struct Op<R> {
    pub(crate) manager: u64,
    pub(crate) wire: OpWire,
    pub(crate) decode: Decode<R>,
}

impl<R> Op<R> {
    /// An operation sent as a value (encoded when it is sent).
    pub(crate) fn general(manager: u64, wire: wire::Op, decode: Decode<R>) -> Self {
        Self {
            manager,
            wire: OpWire::General(wire),
            decode,
        }
    }
}

impl<R> fmt::Debug for Op<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Op").field("wire", &self.wire).finish()
    }
}

/// Runs one operation on `link` and decodes its result.
pub(crate) async fn run<R>(link: &Link, op: Op<R>) -> Result<R, OpError> {
    let results = link.call_one(&op.wire).await?;
    let mut at = Vec::with_capacity(1);
    let at = indexed(&results, 1, &mut at)?;
    (op.decode)(at[0].answer(&results.bytes, &results.fds))
}

/// Where each of the `n` results of an answer lies (in `at`, emptied first).
///
/// # Errors
/// A protocol error when the results do not frame, or there are not `n` of them.
pub(crate) fn indexed<'a>(
    results: &wire::Results,
    n: usize,
    at: &'a mut Vec<At>,
) -> Result<&'a [At], OpError> {
    at.clear();
    index_results(&results.bytes, results.fds.len(), at).map_err(malformed)?;
    if at.len() != n {
        return Err(OpError::protocol(
            "the manager answered a different number of operations",
        ));
    }
    Ok(at)
}

/// Where the typed result of an operation in a [`Batch`] or [`Pipeline`] will be.
#[must_use = "a slot is how the operation's result is taken"]
pub struct Slot<R> {
    at: u64,
    decode: Decode<R>,
    _marker: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Slot<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").field("at", &self.at).finish()
    }
}

/// Several operations, on any values of one manager, sent as one request: one round trip, and
/// the manager applies them all at once (no other client's operation comes in between).
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = multiproc::manager::Manager::start().await?;
/// let scores = manager.map::<String, u32>("scores").await?;
/// let mut batch = manager.batch();
/// batch.push(scores.ops().insert(&"ann".to_string(), &3)?)?;
/// let bob = batch.push(scores.ops().insert(&"bob".to_string(), &5)?)?;
/// let len = batch.push(scores.ops().len())?;
/// let mut results = batch.run().await?;
/// assert_eq!(results.take(bob)?, None);
/// assert_eq!(results.take(len)?, 2);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Batch {
    link: Arc<Link>,
    /// The operations, encoded as they are pushed.
    ops: OpsBuf,
}

impl Batch {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            ops: OpsBuf::default(),
        }
    }

    /// Adds `op`.
    ///
    /// # Errors
    /// When `op` belongs to another manager, or carries a handle whose descriptor cannot be
    /// duplicated ([`OpError::is_encode`]; the batch is as it was).
    pub fn push<R>(&mut self, op: Op<R>) -> Result<Slot<R>, OpError> {
        if op.manager != self.link.endpoint.manager() {
            return Err(OpError::other_manager());
        }
        self.ops.push(&op.wire).map_err(OpError::encode)?;
        Ok(Slot {
            at: self.ops.len() as u64 - 1,
            decode: op.decode,
            _marker: PhantomData,
        })
    }

    /// How many operations the batch holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.len() == 0
    }

    /// The operations, for a request built elsewhere (the cost measurement).
    #[cfg(test)]
    pub(crate) fn into_ops(self) -> OpsBuf {
        self.ops
    }

    /// Sends the batch and waits for every result.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone. A single operation's failure is
    /// reported by [`BatchResults::take`].
    ///
    /// # Cancel safety
    /// Once polled, the batch may be applied even if the future is dropped; its results are
    /// then lost.
    pub async fn run(mut self) -> Result<BatchResults, OpError> {
        let (results, n) = self.link.call_encoded(&mut self.ops).await?;
        BatchResults::new(results, n)
    }
}

/// The results of a [`Batch`], taken by [`Slot`]: the manager's answer as it came, each
/// result decoded when it is taken.
#[derive(Debug)]
pub struct BatchResults {
    results: wire::Results,
    /// Where each operation's result lies; `None` once taken.
    at: Vec<Option<At>>,
}

impl BatchResults {
    /// The results of `n` operations in `results`.
    ///
    /// # Errors
    /// A protocol error when they do not frame, or there are not `n` of them.
    pub(crate) fn new(results: wire::Results, n: usize) -> Result<Self, OpError> {
        let mut at = Vec::with_capacity(n);
        indexed(&results, n, &mut at)?;
        Ok(Self {
            results,
            at: at.into_iter().map(Some).collect(),
        })
    }

    /// The result of the operation at `slot`.
    ///
    /// # Errors
    /// The operation's own failure, or a protocol error for a slot taken twice or from another
    /// batch.
    pub fn take<R>(&mut self, slot: Slot<R>) -> Result<R, OpError> {
        let at = self
            .at
            .get_mut(slot.at as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                OpError::protocol("this slot's result was taken or is not in this batch")
            })?;
        (slot.decode)(at.answer(&self.results.bytes, &self.results.fds))
    }
}

/// Most operations a pipeline leaves unanswered before it waits for answers.
const WINDOW: u64 = 512;

/// Most operations a pipeline puts in one request. Operations pushed one after another go
/// out together (one request, one answer), so a long pipeline pays the per-request work (its
/// framing, the manager's lock, the answer's header) once per group, not once per operation.
const GROUP: usize = 64;
// A request's `quiet` mask has a bit per operation of a group.
const _: () = assert!(GROUP <= 64);

/// Operations sent one after another without waiting for each answer: the round trip is paid
/// once for many operations, and operations of one pipeline are applied in order.
///
/// A pipeline has its own connection to the manager. [`push`](Self::push) queues an operation
/// (consecutive operations go out in groups of up to 64, each one request that the manager
/// applies at once; a full group is written by the next push, so the manager works on it while
/// this side goes on), and [`wait`](Self::wait), [`flush`](Self::flush) or
/// [`finish`](Self::finish) send what is queued and collect answers. While it writes, it also reads the answers that arrive
/// (and keeps them), so the manager is never stuck writing answers nobody reads, however large
/// they are.
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = multiproc::manager::Manager::start().await?;
/// let squares = manager.map::<u64, u64>("squares").await?;
/// let mut pipeline = squares.pipeline().await?;
/// for i in 0..1000 {
///     let _ = pipeline.push(squares.ops().insert(&i, &(i * i))?).await?;
/// }
/// let len = pipeline.push(squares.ops().len()).await?;
/// assert_eq!(pipeline.wait(len).await?, 1000);
/// pipeline.finish().await?;
/// # Ok(())
/// # }
/// ```
pub struct Pipeline {
    manager: u64,
    tx: Requests,
    answers: Answers,
    /// Operations pushed but not yet in a request, encoded.
    queued: OpsBuf,
    /// The queued operations whose results are forgotten (bit `i` for `queued[i]`).
    quiet: u64,
    /// Operations pushed so far (queued ones included): the next operation's slot.
    pushed: u64,
    /// Requests sent so far: the next request's id.
    next_request: u64,
    flushed: bool,
}

/// The receiving side of a pipeline: answers read so far.
struct Answers {
    rx: Responses,
    /// Answers were read for operations `..answered`.
    answered: u64,
    /// Answers were read for requests `..requests_answered`.
    requests_answered: u64,
    /// How many operations each sent request not answered yet holds, oldest first.
    in_flight: VecDeque<usize>,
    /// Answers read but not taken yet, by operation (operation numbers hash well with Fx).
    kept: FxHashMap<u64, Kept>,
    /// Where the results of the answer being read lie (kept for its room).
    at: Vec<At>,
    /// For each operation pushed and not answered yet, oldest first (operation `answered + i`
    /// at `i`): whether its answer is dropped as it arrives (failures are kept in `failed`).
    forgotten: VecDeque<bool>,
    /// The first failure of a forgotten operation.
    failed: Option<Failure>,
}

impl Answers {
    /// Reads the answer to the oldest request in flight and keeps its results.
    async fn read_one(&mut self) -> Result<(), OpError> {
        let id = self.requests_answered;
        let results = loop {
            match self.rx.next().await {
                Some(Ok(Response::Done { id: got, results })) if got == id => break results,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Err(OpError::gone()),
            }
        };
        let expected = self.in_flight.pop_front().unwrap_or(0);
        let mut at = std::mem::take(&mut self.at);
        indexed(&results, expected, &mut at)?;
        self.requests_answered += 1;
        for at in &at {
            let answer = at.answer(&results.bytes, &results.fds);
            let op = self.answered;
            self.answered += 1;
            if self.forgotten.pop_front().unwrap_or(false) {
                if let Some(failure) = answer.failure().map_err(malformed)? {
                    self.failed.get_or_insert(failure);
                }
            } else {
                self.kept.insert(op, Kept::new(answer));
            }
        }
        self.at = at;
        Ok(())
    }

    /// Runs `write` (a send or flush) while reading answers, so that neither side can block
    /// the other with full socket buffers.
    async fn while_writing<W>(&mut self, write: W) -> Result<(), OpError>
    where
        W: Future<Output = Result<(), OpError>>,
    {
        let mut write = std::pin::pin!(write);
        loop {
            if self.in_flight.is_empty() {
                return write.await;
            }
            tokio::select! {
                biased;
                done = &mut write => return done,
                read = self.read_one() => read?,
            }
        }
    }
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("pushed", &self.pushed)
            .field("answered", &self.answers.answered)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    pub(crate) async fn open(endpoint: &Endpoint) -> Result<Self, OpError> {
        let (tx, rx) = endpoint.open().await?;
        Ok(Self {
            manager: endpoint.manager(),
            tx,
            answers: Answers {
                rx,
                answered: 0,
                requests_answered: 0,
                in_flight: VecDeque::new(),
                kept: FxHashMap::default(),
                at: Vec::new(),
                forgotten: VecDeque::new(),
                failed: None,
            },
            queued: OpsBuf::default(),
            quiet: 0,
            pushed: 0,
            next_request: 0,
            flushed: true,
        })
    }

    /// Queues `op` to be sent without waiting for its answer.
    ///
    /// # Errors
    /// When `op` belongs to another manager, or the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: an operation is queued only when the call returns (a dropped call queued
    /// nothing); queued operations are sent by a later push, flush, wait or finish.
    pub async fn push<R>(&mut self, op: Op<R>) -> Result<Slot<R>, OpError> {
        if op.manager != self.manager {
            return Err(OpError::other_manager());
        }
        if self.queued.len() >= GROUP {
            // A full group is written at once, so the manager works on it while this side
            // encodes the next one (the answers are read later, or while writing).
            self.flush().await?;
        }
        while self.pushed - self.answers.answered >= WINDOW {
            self.flush().await?;
            self.answers.read_one().await?;
        }
        let at = self.pushed;
        self.queued.push(&op.wire).map_err(OpError::encode)?;
        self.pushed += 1;
        self.answers.forgotten.push_back(false);
        Ok(Slot {
            at,
            decode: op.decode,
            _marker: PhantomData,
        })
    }

    /// Puts the queued operations in one request, handed to the connection (written when its
    /// buffer fills or at the next flush). Cancel safe: nothing leaves `queued` before the
    /// connection has room for it.
    async fn send_queued(&mut self) -> Result<(), OpError> {
        if self.queued.len() == 0 {
            return Ok(());
        }
        let tx = &mut self.tx;
        self.answers
            .while_writing(std::future::poll_fn(|cx| tx.as_mut().poll_ready(cx)))
            .await?;
        let (request, n) = Request::take(self.next_request, &mut self.queued, self.quiet);
        self.quiet = 0;
        self.tx.as_mut().start_send(request)?;
        self.next_request += 1;
        self.answers.in_flight.push_back(n);
        self.flushed = false;
        Ok(())
    }

    /// Queues `op` to be sent without waiting for its answer, which is dropped when it arrives
    /// (a failure is kept for [`finish`](Self::finish)): for writes whose results nobody needs,
    /// so that a long pipeline holds no answers.
    ///
    /// # Errors
    /// When `op` belongs to another manager, or the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`push`](Self::push).
    pub async fn push_forget<R>(&mut self, op: Op<R>) -> Result<(), OpError> {
        let _ = self.push(op).await?;
        if let Some(forgotten) = self.answers.forgotten.back_mut() {
            *forgotten = true;
        }
        // The manager need not send the result back (`push` just queued the operation last,
        // and a group holds at most 64).
        let i = self.queued.len() - 1;
        if i < 64 {
            self.quiet |= 1 << i;
        }
        Ok(())
    }

    /// Sends and writes every operation pushed so far.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: what was pushed is still sent by a later flush.
    pub async fn flush(&mut self) -> Result<(), OpError> {
        self.send_queued().await?;
        if !self.flushed {
            let tx = &mut self.tx;
            self.answers
                .while_writing(std::future::poll_fn(|cx| tx.as_mut().poll_flush(cx)))
                .await?;
            self.flushed = true;
        }
        Ok(())
    }

    /// Waits for the result of the operation at `slot` (answers before it are kept).
    ///
    /// # Errors
    /// The operation's failure; [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: answers read are kept for later.
    pub async fn wait<R>(&mut self, slot: Slot<R>) -> Result<R, OpError> {
        if slot.at >= self.pushed {
            return Err(OpError::protocol(
                "this slot's result was taken or is not in this pipeline",
            ));
        }
        self.flush().await?;
        loop {
            if let Some(kept) = self.answers.kept.remove(&slot.at) {
                return (slot.decode)(kept.answer());
            }
            if slot.at < self.answers.answered {
                return Err(OpError::protocol(
                    "this slot's result was taken or is not in this pipeline",
                ));
            }
            self.answers.read_one().await?;
        }
    }

    /// Waits for every answer; the first failure among the operations whose result was not
    /// taken is the error.
    ///
    /// # Errors
    /// As above; [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn finish(&mut self) -> Result<(), OpError> {
        self.flush().await?;
        while !self.answers.in_flight.is_empty() {
            self.answers.read_one().await?;
        }
        let mut kept: Vec<_> = self.answers.kept.drain().collect();
        kept.sort_by_key(|(id, _)| *id);
        if let Some(failure) = self.answers.failed.take() {
            return Err(OpError::failed(failure));
        }
        for (_, kept) in kept {
            if let Some(failure) = kept.answer().failure().map_err(malformed)? {
                return Err(OpError::failed(failure));
            }
        }
        Ok(())
    }
}
