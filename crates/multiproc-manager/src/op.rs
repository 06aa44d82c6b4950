//! Operations as values: [`Op`], and the two ways to send many with few round trips,
//! [`Batch`] (one request, applied atomically) and [`Pipeline`] (many requests in flight).
//!
//! Every proxy method is an [`Op`] built by the proxy's `ops()` view and sent alone; the same
//! `Op` can instead go into a batch or a pipeline, which give back a [`Slot`] per operation to
//! take its typed result from.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use std::future::Future;

use futures::{SinkExt, StreamExt};

use crate::error::OpError;
use crate::link::{Endpoint, Link, Requests, Responses};
use crate::wire::{self, Failure, Reply, Request, Response};

/// Turns one answer into the operation's typed result.
pub(crate) type Decode<R> = fn(Result<Reply, Failure>) -> Result<R, OpError>;

/// One operation on a served value, not sent yet, whose result is an `R`.
///
/// Made by a proxy's `ops()` view (for example [`Map::ops`](crate::Map::ops)); send it with
/// [`Batch::push`] or [`Pipeline::push`]. Encoding happened when it was made, so a value that
/// cannot be encoded was already refused there.
pub struct Op<R> {
    pub(crate) manager: u64,
    pub(crate) wire: wire::Op,
    pub(crate) decode: Decode<R>,
}

impl<R> fmt::Debug for Op<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Op").field("wire", &self.wire).finish()
    }
}

/// Runs one operation on `link` and decodes its result.
pub(crate) async fn run<R>(link: &Link, op: Op<R>) -> Result<R, OpError> {
    let mut results = link.call(vec![op.wire]).await?;
    let result = results
        .pop()
        .ok_or_else(|| OpError::protocol("empty answer"))?;
    (op.decode)(result)
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
    ops: Vec<wire::Op>,
}

impl Batch {
    pub(crate) fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            ops: Vec::new(),
        }
    }

    /// Adds `op`.
    ///
    /// # Errors
    /// When `op` belongs to another manager.
    pub fn push<R>(&mut self, op: Op<R>) -> Result<Slot<R>, OpError> {
        if op.manager != self.link.endpoint.manager() {
            return Err(OpError::other_manager());
        }
        self.ops.push(op.wire);
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
        self.ops.is_empty()
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
    pub async fn run(self) -> Result<BatchResults, OpError> {
        let results = self.link.call(self.ops).await?;
        Ok(BatchResults {
            results: results.into_iter().map(Some).collect(),
        })
    }
}

/// The results of a [`Batch`], taken by [`Slot`].
#[derive(Debug)]
pub struct BatchResults {
    results: Vec<Option<Result<Reply, Failure>>>,
}

impl BatchResults {
    /// The result of the operation at `slot`.
    ///
    /// # Errors
    /// The operation's own failure, or a protocol error for a slot taken twice or from another
    /// batch.
    pub fn take<R>(&mut self, slot: Slot<R>) -> Result<R, OpError> {
        let result = self
            .results
            .get_mut(slot.at as usize)
            .and_then(Option::take)
            .ok_or_else(|| {
                OpError::protocol("this slot's result was taken or is not in this batch")
            })?;
        (slot.decode)(result)
    }
}

/// Most requests a pipeline leaves unanswered before it waits for answers.
const WINDOW: u64 = 512;

/// Operations sent one after another without waiting for each answer: the round trip is paid
/// once for many operations, and operations of one pipeline are applied in order.
///
/// A pipeline has its own connection to the manager. [`push`](Self::push) sends (buffered), and
/// [`wait`](Self::wait) or [`finish`](Self::finish) collect answers. While it writes, it also
/// reads the answers that arrive (and keeps them), so the manager is never stuck writing
/// answers nobody reads, however large they are.
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
    next_id: u64,
    flushed: bool,
}

/// The receiving side of a pipeline: answers read so far.
struct Answers {
    rx: Responses,
    /// Answers were read for ids `..answered`.
    answered: u64,
    /// Answers read but not taken yet.
    kept: HashMap<u64, Result<Reply, Failure>>,
    /// Requests whose answers are dropped as they arrive (failures are kept in `failed`).
    forgotten: HashSet<u64>,
    /// The first failure of a forgotten request.
    failed: Option<Failure>,
}

impl Answers {
    /// Reads the next answer and keeps it.
    async fn read_one(&mut self) -> Result<(), OpError> {
        let id = self.answered;
        let mut results = loop {
            match self.rx.next().await {
                Some(Ok(Response::Done { id: got, results })) if got == id => break results,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Err(OpError::gone()),
            }
        };
        self.answered += 1;
        let result = results
            .pop()
            .ok_or_else(|| OpError::protocol("empty answer"))?;
        if self.forgotten.remove(&id) {
            if let Err(failure) = result {
                self.failed.get_or_insert(failure);
            }
        } else {
            self.kept.insert(id, result);
        }
        Ok(())
    }

    /// Runs `write` (a send or flush) while reading answers, so that neither side can block
    /// the other with full socket buffers.
    async fn while_writing<W>(&mut self, sent: u64, write: W) -> Result<(), OpError>
    where
        W: Future<Output = Result<(), OpError>>,
    {
        let mut write = std::pin::pin!(write);
        loop {
            if self.answered >= sent {
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
            .field("sent", &self.next_id)
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
                kept: HashMap::new(),
                forgotten: HashSet::new(),
                failed: None,
            },
            next_id: 0,
            flushed: true,
        })
    }

    /// Sends `op` without waiting for its answer.
    ///
    /// # Errors
    /// When `op` belongs to another manager, or the manager is gone.
    ///
    /// # Cancel safety
    /// Once polled, the operation may be sent even if the future is dropped; its slot is then
    /// lost.
    pub async fn push<R>(&mut self, op: Op<R>) -> Result<Slot<R>, OpError> {
        if op.manager != self.manager {
            return Err(OpError::other_manager());
        }
        while self.next_id - self.answers.answered >= WINDOW {
            self.flush().await?;
            self.answers.read_one().await?;
        }
        let id = self.next_id;
        let request = Request {
            id,
            ops: vec![op.wire],
        };
        self.next_id += 1;
        self.flushed = false;
        self.answers
            .while_writing(id, self.tx.feed(request))
            .await?;
        Ok(Slot {
            at: id,
            decode: op.decode,
            _marker: PhantomData,
        })
    }

    /// Sends `op` without waiting for its answer, which is dropped when it arrives (a failure
    /// is kept for [`finish`](Self::finish)): for writes whose results nobody needs, so that a
    /// long pipeline holds no answers.
    ///
    /// # Errors
    /// When `op` belongs to another manager, or the manager is gone.
    ///
    /// # Cancel safety
    /// Once polled, the operation may be sent even if the future is dropped.
    pub async fn push_forget<R>(&mut self, op: Op<R>) -> Result<(), OpError> {
        let slot = self.push(op).await?;
        match self.answers.kept.remove(&slot.at) {
            Some(Err(failure)) => {
                self.answers.failed.get_or_insert(failure);
            }
            Some(Ok(_)) => {}
            None => {
                self.answers.forgotten.insert(slot.at);
            }
        }
        Ok(())
    }

    /// Writes every operation pushed so far.
    ///
    /// # Errors
    /// [`OpError::is_manager_gone`] when the manager is gone.
    ///
    /// # Cancel safety
    /// Cancel safe: what was pushed is still sent by a later flush.
    pub async fn flush(&mut self) -> Result<(), OpError> {
        if !self.flushed {
            let sent = self.next_id;
            self.answers.while_writing(sent, self.tx.flush()).await?;
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
        self.flush().await?;
        loop {
            if let Some(result) = self.answers.kept.remove(&slot.at) {
                return (slot.decode)(result);
            }
            if slot.at >= self.next_id || slot.at < self.answers.answered {
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
        while self.answers.answered < self.next_id {
            self.answers.read_one().await?;
        }
        let mut kept: Vec<_> = self.answers.kept.drain().collect();
        kept.sort_by_key(|(id, _)| *id);
        let failed = self.answers.failed.take();
        match failed.or_else(|| kept.into_iter().find_map(|(_, r)| r.err())) {
            Some(failure) => Err(OpError::failed(failure)),
            None => Ok(()),
        }
    }
}
