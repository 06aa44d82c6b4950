//! The untyped engine under [`Queue`](crate::Queue) and [`JoinableQueue`](crate::JoinableQueue).
//!
//! - Order and small messages: a shared-memory [`Ring`] of fixed slots (see
//!   [`crate::queue::ring`]).
//!   A message whose encoding fits a slot and carries no descriptor (the common case) is copied
//!   into a slot and out again: no system call unless a process sleeps.
//! - Larger messages and messages with descriptors: one packet socket
//!   ([`packet_loopback`](multiproc_core::transport::packet::packet_loopback), a datagram
//!   socket connected to itself) shared by every handle. Such a message is sent on
//!   the socket with a *ticket* ([`crate::queue::ticket`]: its ring position, sealed with the
//!   queue's [`TicketKey`]) and a token
//!   takes its place on the ring, so it keeps its place in the order. Producers send and
//!   publish, and consumers find a token, receive its packet and claim the token, under one
//!   cross-process [`RobustLock`]; so the socket holds the packets in token order. A consumer looks
//!   at each ticket before taking the packet (see `take_token`): it skips older tickets (left
//!   by a producer that died in between), reports packets whose seal does not verify (not the
//!   queue's) and leaves its token for the next get, so a stray packet costs only itself. The
//!   lock is only taken for these messages, and never across an `await`.
//! - The log ([`PacketLog`]): a message without descriptors that the socket cannot take (above
//!   64 KiB, or while the socket buffer is full) is appended to the shared memfd past its
//!   mapped part, and a log token (offset and length) takes its place on the ring. The getter reads it and
//!   releases it, which frees every page all of whose bytes were read. So how much a queue
//!   holds is bounded by its ring and by memory, never by a socket buffer.
//! - Shared state: a header with the capacity, size limit, closed flag, ticket key and the
//!   unfinished-task count of a joinable queue, then the ring, then the log's counters, mapped
//!   from one memfd, whose bytes past the mapping are the log's data. An unbounded queue's ring
//!   is sparse (see [`crate::queue::ring`]).
//! - Wake-ups: three [`WaitQueue`]s and the out-of-band lock, with their waiter counts (and the
//!   lock's owner word) in one 64-byte slot of a [wait arena](multiproc_core::wait::arena),
//!   parking on that slot's shared wake-up eventfd, as `Lock`s and `Event`s do: `not_empty`
//!   (getters), `slot_freed` (putters of a full queue) and `all_done` (joiners). A waker writes
//!   the eventfd only while its own count is non-zero; `close` wakes the first two. A write
//!   wakes every parked waiter of the lane (this queue's, and those of the other primitives
//!   hashed to it), whichever it was meant for; the others re-check their condition and park
//!   again. So a queue holds two descriptors of its own, the memfd and the socket, and shares
//!   the arena's with thousands of other primitives.
//! - Every wait (a getter on an empty queue, a putter on a full one, a joiner) first spins as
//!   core's one spin policy says ([`WaitQueue::spin_then_wait_until`]) before it sleeps, so a
//!   steady stream is handed over without a wake-up per message.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Instant;

use multiproc_core::SharedFd;
use multiproc_core::shm::SharedRegion;
use multiproc_core::transport::packet::{self, PacketLog, PacketSocket};
use multiproc_core::wait::spin::Contention;
use multiproc_core::wait::{LIVENESS_TICK, RobustLock, WaitQueue};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::{GetError, PutErrorKind};
use super::lane::{Encoded, GetOutcome, Message};
use super::ring::{self, Kind, Ring, SLOT_PAYLOAD, Take};
use super::ticket::{Peeked, TicketKey, TicketedRecv};

// Layout of the shared region: the header, then the ring.
const OFF_MAGIC: usize = 0; // u32
const OFF_FLAGS: usize = 4; // u32
const OFF_CAPACITY: usize = 8; // u64, 0 = unbounded
const OFF_MAX_SIZE: usize = 16; // u64
const OFF_SLOTS: usize = 24; // u64
const OFF_CLOSED: usize = 32; // u32
const OFF_KEY: usize = 40; // [u64; 2]
const OFF_UNFINISHED: usize = 128; // u64
/// The ring's hints take 128 bytes, then its slots start on a page boundary (for a sparse ring).
const RING_BASE: usize = ring::PAGE - 128;

const MAGIC: u32 = 0x5155_4535; // "QUE5"

// Layout of the queue's arena slot (64 bytes, a cache line: read on every put and get,
// written only by sleepers).
const W_GET: usize = 0; // u32: getters parked
const W_PUT: usize = 4; // u32: putters parked
const W_JOIN: usize = 8; // u32: joiners parked
/// The out-of-band lock: its waiter count (u32), then its owner word (u64) at +8.
const W_OOB: usize = 16;
const FLAG_JOINABLE: u32 = 1;

/// Slots of an unbounded queue's ring: how many messages it holds before `put` waits. The ring
/// is sparse: it takes memory for what it holds, not for its size.
pub(crate) const UNBOUNDED_SLOTS: u64 = ring::MAX_SLOTS;
/// The largest capacity of a bounded queue.
pub(crate) const MAX_CAPACITY: usize = 1 << 16;

/// Where the log's counters start in the shared region: after a ring of `slots` slots.
fn log_table_at(slots: u64) -> usize {
    (RING_BASE + Ring::bytes_needed(slots)).next_multiple_of(64)
}

/// The mapped part of the memfd of a queue with `slots` slots: header, ring and the log's
/// counters, to a page boundary (the log's data follows).
fn mapped_len(slots: u64) -> usize {
    (log_table_at(slots) + PacketLog::TABLE_BYTES).next_multiple_of(ring::PAGE)
}

/// A log token's payload: offset and length, little-endian `u64`s.
const LOG_TOKEN_LEN: usize = 16;

/// One attempt at a put.
enum Attempt {
    Done,
    /// No free slot in the ring.
    RingFull,
    /// No room in the socket for an out-of-band packet.
    SocketFull,
    Fail(PutErrorKind),
}

/// Why a put that claimed a slot did not publish it.
enum Unpublished {
    /// The socket had no room.
    SocketFull,
    Failed(PutErrorKind),
}

/// One attempt at a get, before the lock that tokens need.
enum Got {
    Message(Message),
    Token(u64),
    Empty,
    Busy(u64),
}

/// What a waiting getter found.
enum Found {
    /// Return this (a message, or the end of the queue).
    Done(Result<GetOutcome, GetError>),
    /// Take the token at this position, under the out-of-band lock.
    Token(u64),
}

/// The shared part of every queue handle in one process.
pub(crate) struct Engine {
    state: SharedRegion,
    ring: Ring,
    /// The out-of-band lane: every handle sends and receives on this one socket.
    socket: PacketSocket,
    log: PacketLog,
    key: TicketKey,
    oob: RobustLock<W_OOB>,
    not_empty: WaitQueue<W_GET>,
    slot_freed: WaitQueue<W_PUT>,
    all_done: WaitQueue<W_JOIN>,
    capacity: u64,
    max_size: usize,
    joinable: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A new queue holding at most `capacity` messages (`None`: unbounded).
    ///
    /// # Errors
    /// [`io::ErrorKind::InvalidInput`] for a capacity of zero or above [`MAX_CAPACITY`];
    /// otherwise when the process is out of descriptors or memory.
    pub(crate) fn new(
        capacity: Option<usize>,
        max_size: usize,
        joinable: bool,
    ) -> io::Result<Self> {
        let slots = match capacity {
            None => UNBOUNDED_SLOTS,
            Some(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a queue's capacity must be at least 1",
                ));
            }
            Some(c) if c > MAX_CAPACITY => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "queue capacity {c} exceeds the limit of {MAX_CAPACITY} \
                         (an unbounded queue has none)"
                    ),
                ));
            }
            Some(c) => c as u64,
        };
        let capacity = capacity.map_or(0, |c| c as u64);
        let state = SharedRegion::new_growable(mapped_len(slots))?;
        state
            .atomic_u32(OFF_FLAGS)
            .store(if joinable { FLAG_JOINABLE } else { 0 }, SeqCst);
        state.atomic_u64(OFF_CAPACITY).store(capacity, SeqCst);
        state
            .atomic_u64(OFF_MAX_SIZE)
            .store(max_size as u64, SeqCst);
        state.atomic_u64(OFF_SLOTS).store(slots, SeqCst);
        let [k0, k1] = TicketKey::random().words();
        state.atomic_u64(OFF_KEY).store(k0, SeqCst);
        state.atomic_u64(OFF_KEY + 8).store(k1, SeqCst);
        state.atomic_u32(OFF_MAGIC).store(MAGIC, SeqCst);
        Self::from_wire(Wire {
            socket: packet::packet_loopback()?,
            state,
            waits: WaitQueue::in_arena()?,
        })
    }

    fn from_wire(w: Wire) -> io::Result<Self> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        if w.state.len() < RING_BASE {
            return Err(invalid(format!(
                "queue state region of {} bytes is too small: it needs {RING_BASE}",
                w.state.len()
            )));
        }
        if w.state.atomic_u32(OFF_MAGIC).load(SeqCst) != MAGIC {
            return Err(invalid("shared region is not a queue's state".into()));
        }
        let capacity = w.state.atomic_u64(OFF_CAPACITY).load(SeqCst);
        let max_size =
            usize::try_from(w.state.atomic_u64(OFF_MAX_SIZE).load(SeqCst)).unwrap_or(usize::MAX);
        let joinable = w.state.atomic_u32(OFF_FLAGS).load(SeqCst) & FLAG_JOINABLE != 0;
        let slots = w.state.atomic_u64(OFF_SLOTS).load(SeqCst);
        let ring = Ring::new(w.state.clone(), RING_BASE, slots).map_err(invalid)?;
        let log = PacketLog::in_file(w.state.clone(), log_table_at(slots))?;
        let key = TicketKey::from_words([
            w.state.atomic_u64(OFF_KEY).load(SeqCst),
            w.state.atomic_u64(OFF_KEY + 8).load(SeqCst),
        ]);
        if w.waits.check_len(W_OOB + 16).is_err() {
            return Err(invalid("queue wait state too small".into()));
        }
        Ok(Self {
            socket: PacketSocket::new(w.socket)?,
            log,
            key,
            ring,
            oob: RobustLock::over(w.waits.beside()),
            slot_freed: w.waits.beside(),
            all_done: w.waits.beside(),
            not_empty: w.waits,
            state: w.state,
            capacity,
            max_size,
            joinable,
        })
    }

    pub(crate) fn is_joinable(&self) -> bool {
        self.joinable
    }

    fn unfinished_word(&self) -> &AtomicU64 {
        self.state.atomic_u64(OFF_UNFINISHED)
    }
    fn closed_word(&self) -> &AtomicU32 {
        self.state.atomic_u32(OFF_CLOSED)
    }
    pub(crate) fn capacity(&self) -> Option<usize> {
        (self.capacity != 0).then(|| usize::try_from(self.capacity).unwrap_or(usize::MAX))
    }
    pub(crate) fn max_message_size(&self) -> usize {
        self.max_size
    }
    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.ring.len()).unwrap_or(usize::MAX)
    }
    pub(crate) fn is_full(&self) -> bool {
        self.capacity != 0 && self.ring.len() >= self.ring.slots()
    }
    pub(crate) fn has_pending(&self) -> bool {
        self.ring.len() > 0
    }
    pub(crate) fn is_closed(&self) -> bool {
        self.closed_word().load(SeqCst) != 0
    }
    /// Getters and putters parked now, in every process.
    pub(crate) fn waiting(&self) -> (usize, usize) {
        (self.not_empty.waiting(), self.slot_freed.waiting())
    }
    pub(crate) fn unfinished(&self) -> u64 {
        self.unfinished_word().load(SeqCst)
    }

    pub(crate) fn encode<T: Serialize>(&self, value: &T) -> Result<Encoded, PutErrorKind> {
        Encoded::new(value, self.max_size)
    }

    /// Closes the queue for every handle in every process.
    pub(crate) fn close(&self) {
        self.closed_word().store(1, SeqCst);
        // Fails only if the socket is already shut down or not a socket: nothing to do then.
        let _ = self.socket.shutdown();
        self.not_empty.wake();
        self.slot_freed.wake();
    }

    // ---- put side ----

    /// Counts the task of a joinable queue's put before its message can be seen.
    fn reserve_task(&self) {
        if self.joinable {
            self.unfinished_word().fetch_add(1, SeqCst);
        }
    }

    /// Gives back the task of a put that did not happen.
    fn unreserve_task(&self) {
        if self.joinable {
            self.finish_task();
        }
    }

    /// A message is on the ring: wake sleeping getters, if any.
    fn published(&self) {
        self.not_empty.wake();
    }

    /// A slot was freed: wake sleeping putters, if any.
    fn freed(&self) {
        self.slot_freed.wake();
    }

    /// Claims a slot, checking for close after the claim: a put that claims a slot after
    /// `close` gives it back, so once a getter saw the queue closed and empty, it stays empty.
    fn claim(&self) -> Result<u64, Attempt> {
        if self.is_closed() {
            return Err(Attempt::Fail(PutErrorKind::Closed));
        }
        self.reserve_task();
        let Some(pos) = self.ring.claim() else {
            self.unreserve_task();
            return Err(Attempt::RingFull);
        };
        if self.is_closed() {
            self.ring.abandon(pos);
            self.unreserve_task();
            // Getters may be waiting behind this slot.
            self.published();
            self.freed();
            return Err(Attempt::Fail(PutErrorKind::Closed));
        }
        Ok(pos)
    }

    /// Puts a message that fits a slot.
    fn attempt_inline(&self, bytes: &[u8]) -> Attempt {
        match self.claim() {
            Ok(pos) => {
                self.ring.publish(pos, Kind::Message, bytes);
                self.published();
                Attempt::Done
            }
            Err(a) => a,
        }
    }

    /// Puts a message through the socket, holding the out-of-band lock; a plain message finding
    /// the socket full goes to the log instead.
    fn attempt_oob(&self, packet: &packet::Packet, _locked: &OobHeld<'_>) -> Attempt {
        let pos = match self.claim() {
            Ok(pos) => pos,
            Err(a) => return a,
        };
        let sent = match self.key.send(&self.socket, packet, pos) {
            Ok(()) => {
                self.ring.publish(pos, Kind::Token, &[]);
                Ok(())
            }
            Err(e) => match (Self::send_error(e), packet.plain_bytes()) {
                (Unpublished::SocketFull, Some(bytes)) => self.publish_logged(pos, bytes),
                (fail, _) => Err(fail),
            },
        };
        self.settle(pos, sent)
    }

    /// Puts a plain message through the log (one too large for the socket).
    fn attempt_logged(&self, bytes: &[u8]) -> Attempt {
        match self.claim() {
            Ok(pos) => {
                let logged = self.publish_logged(pos, bytes);
                self.settle(pos, logged)
            }
            Err(a) => a,
        }
    }

    /// Writes `bytes` to the log and publishes a log token at the claimed `pos`.
    fn publish_logged(&self, pos: u64, bytes: &[u8]) -> Result<(), Unpublished> {
        let offset = self
            .log
            .append(bytes)
            .map_err(|e| Unpublished::Failed(PutErrorKind::Io(e)))?;
        let mut token = [0u8; LOG_TOKEN_LEN];
        token[..8].copy_from_slice(&offset.to_le_bytes());
        token[8..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.ring.publish(pos, Kind::Log, &token);
        Ok(())
    }

    /// Ends a put that claimed `pos`: wakes getters if it was published, else gives the slot
    /// (and the task) back.
    fn settle(&self, pos: u64, outcome: Result<(), Unpublished>) -> Attempt {
        match outcome {
            Ok(()) => {
                self.published();
                Attempt::Done
            }
            Err(fail) => {
                self.ring.abandon(pos);
                self.unreserve_task();
                self.freed();
                match fail {
                    Unpublished::SocketFull => Attempt::SocketFull,
                    Unpublished::Failed(fail) => Attempt::Fail(fail),
                }
            }
        }
    }

    fn send_error(e: io::Error) -> Unpublished {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::NotConnected => Unpublished::Failed(PutErrorKind::Closed),
            io::ErrorKind::WouldBlock => Unpublished::SocketFull,
            _ => Unpublished::Failed(PutErrorKind::Io(e)),
        }
    }

    /// Takes the out-of-band lock: at once if it is free, else by spinning then parking, as core's
    /// spin policy decides. Which earlier holder died does not matter: whatever it did under the
    /// lock is repaired by the ticket and token checks.
    async fn lock_oob(&self) -> io::Result<OobHeld<'_>> {
        if self.oob.try_acquire(false).is_none() {
            // Boxed: the parking future is large and seldom needed; `put` and `get` embed this
            // one, so they stay small (as with `Lock::lock`'s boxed slow path).
            Box::pin(self.oob.acquire()).await?;
        }
        Ok(OobHeld(&self.oob))
    }

    /// The blocking twin of [`lock_oob`](Self::lock_oob).
    fn blocking_lock_oob(&self) -> io::Result<OobHeld<'_>> {
        self.oob.blocking_acquire()?;
        Ok(OobHeld(&self.oob))
    }

    /// One attempt, waiting only for the out-of-band lock (held briefly by others).
    async fn attempt(&self, encoded: &Encoded) -> Attempt {
        match encoded {
            Encoded::Plain(bytes) => self.attempt_unlocked(bytes),
            Encoded::Packet(packet) => match self.lock_oob().await {
                Ok(guard) => self.attempt_oob(packet, &guard),
                Err(e) => Attempt::Fail(PutErrorKind::Io(e)),
            },
        }
    }

    /// An attempt that needs no lock: a plain message for a ring slot or for the log.
    fn attempt_unlocked(&self, bytes: &[u8]) -> Attempt {
        if bytes.len() <= SLOT_PAYLOAD {
            self.attempt_inline(bytes)
        } else {
            self.attempt_logged(bytes)
        }
    }

    /// The blocking twin of [`attempt`](Self::attempt).
    fn blocking_attempt(&self, encoded: &Encoded) -> Attempt {
        match encoded {
            Encoded::Plain(bytes) => self.attempt_unlocked(bytes),
            Encoded::Packet(packet) => match self.blocking_lock_oob() {
                Ok(guard) => self.attempt_oob(packet, &guard),
                Err(e) => Attempt::Fail(PutErrorKind::Io(e)),
            },
        }
    }

    /// A putter that found the ring full frees slots held by dead processes.
    fn repair_tail(&self) {
        if self.ring.repair_tail().is_some() {
            self.repaired();
        }
    }

    /// A slot held by a dead process was freed. A dead writer's message never existed; a dead
    /// reader's was taken and never delivered: either way nobody will call `task_done` for it.
    fn repaired(&self) {
        self.discarded();
        self.freed();
    }

    /// What a putter waiting for a free slot checks: `Some` once a put may succeed (or fail).
    fn room(&self, ticked: bool) -> Option<()> {
        if ticked {
            self.repair_tail();
        }
        (self.ring.has_room() || self.is_closed()).then_some(())
    }

    /// Puts a message, waiting for a slot (and, for a large message, for room in the socket).
    ///
    /// Cancel safe: a message is claimed, written and published within one poll, so a dropped
    /// future put the whole message or nothing.
    pub(crate) async fn put(&self, encoded: &Encoded) -> Result<(), PutErrorKind> {
        loop {
            match self.attempt(encoded).await {
                Attempt::Done => return Ok(()),
                Attempt::Fail(fail) => return Err(fail),
                Attempt::RingFull => {
                    self.slot_freed
                        .spin_then_wait_until_in(
                            Contention::Unshared,
                            None,
                            Some(LIVENESS_TICK),
                            |ticked| self.room(ticked),
                        )
                        .await
                        .map_err(PutErrorKind::Io)?;
                }
                Attempt::SocketFull => {
                    // A registration of its own for each wait: a queue whose socket once filled
                    // holds no descriptor more at rest.
                    self.socket
                        .writable_once()
                        .await
                        .map_err(PutErrorKind::Io)?;
                }
            }
        }
    }

    /// Puts a message, blocking the thread while the queue is full; `Ok(false)` when
    /// `deadline` passed first.
    pub(crate) fn blocking_put(
        &self,
        encoded: &Encoded,
        deadline: Option<Instant>,
    ) -> Result<bool, PutErrorKind> {
        loop {
            match self.blocking_attempt(encoded) {
                Attempt::Done => return Ok(true),
                Attempt::Fail(fail) => return Err(fail),
                Attempt::RingFull => {
                    let room = self
                        .slot_freed
                        .blocking_spin_then_wait_until_in(
                            Contention::Unshared,
                            deadline,
                            Some(LIVENESS_TICK),
                            |ticked| self.room(ticked),
                        )
                        .map_err(PutErrorKind::Io)?;
                    if room.is_none() {
                        return Ok(false);
                    }
                }
                Attempt::SocketFull => {
                    if !self
                        .socket
                        .blocking_wait_writable(deadline)
                        .map_err(PutErrorKind::Io)?
                    {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Puts a message if there is a slot (and room in the socket) right now; `Ok(false)` when
    /// the queue is full.
    pub(crate) fn try_put(&self, encoded: &Encoded) -> Result<bool, PutErrorKind> {
        match self.blocking_attempt(encoded) {
            Attempt::Done => Ok(true),
            Attempt::RingFull | Attempt::SocketFull => {
                self.repair_tail();
                Ok(false)
            }
            Attempt::Fail(fail) => Err(fail),
        }
    }

    // ---- get side ----

    /// One look at the head of the ring.
    fn look(&self) -> Result<Got, GetError> {
        Ok(match self.ring.take() {
            Take::Message(Kind::Log, token) => {
                self.freed();
                match self.read_logged(&token) {
                    Ok(bytes) => Got::Message(Message::from_bytes(bytes)),
                    Err(e) => {
                        self.discarded();
                        return Err(e);
                    }
                }
            }
            Take::Message(_, bytes) => {
                self.freed();
                Got::Message(Message::from_bytes(bytes))
            }
            Take::Token(pos) => Got::Token(pos),
            Take::Empty => Got::Empty,
            Take::Busy(pos) => Got::Busy(pos),
            Take::Corrupt(len) => {
                self.freed();
                self.discarded();
                return Err(GetError::Corrupt {
                    reason: format!("queue slot claims {len} bytes, more than a slot holds"),
                });
            }
        })
    }

    /// Reads (and frees) the message of a log token taken off the ring.
    fn read_logged(&self, token: &[u8]) -> Result<Vec<u8>, GetError> {
        let corrupt = |reason: String| GetError::Corrupt { reason };
        let (Ok(offset), Ok(len)) = (
            <[u8; 8]>::try_from(token.get(..8).unwrap_or_default()),
            <[u8; 8]>::try_from(token.get(8..).unwrap_or_default()),
        ) else {
            return Err(corrupt(format!("log token of {} bytes", token.len())));
        };
        let (offset, len) = (u64::from_le_bytes(offset), u64::from_le_bytes(len));
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max_size {
            return Err(GetError::TooLarge {
                len,
                limit: self.max_size,
            });
        }
        let read = self.log.read(offset, len);
        self.log.release(offset, len);
        read.map_err(|e| corrupt(format!("cannot read a queue message from the log: {e}")))
    }

    /// Takes the out-of-band message of the token at `pos`, holding the out-of-band lock.
    /// `None` when there is none to take any more (another consumer took the token first, or
    /// the message is gone): look again.
    ///
    /// Only lock holders claim tokens, so the token stays unclaimed until this getter has its
    /// packet. It looks at each packet's ticket before taking it off the socket:
    /// - an older ticket was orphaned by a producer that died between sending and publishing:
    ///   taken off and skipped;
    /// - a packet that is not the queue's (its seal does not verify, or it is empty) is taken
    ///   off and returned as an error, the token left in place: the next get looks again, so a
    ///   stray packet costs only itself;
    /// - a later ticket, or no packet at all, means this token's packet is gone: a getter took
    ///   it and died before claiming the token (all of this happens under the lock). The later
    ///   packet stays for its own token; this token is freed like the slot of a dead reader.
    fn take_token(&self, pos: u64, _locked: &OobHeld<'_>) -> Option<Result<Message, GetError>> {
        if !self.ring.has_token(pos) {
            return None;
        }
        let result = loop {
            match self.key.peek(&self.socket) {
                Ok(Peeked::Ticket(at)) if at > pos => break None,
                Ok(Peeked::Empty) => break None,
                // Zero bytes on a shut-down socket: the end, unless packets are still queued
                // (then it is an empty packet, taken off below as a foreign one).
                Ok(Peeked::Closed) if self.socket.unread_sent().is_ok_and(|n| n == 0) => {
                    break None;
                }
                Ok(_) => {}
                Err(e) => return Some(Err(GetError::Io(e))),
            }
            match self.key.recv(&self.socket) {
                Ok(TicketedRecv::Ticketed(p)) if p.position() < pos => {}
                Ok(TicketedRecv::Ticketed(p)) if p.position() == pos => {
                    break Some(p.open(self.max_size));
                }
                // Not what the look showed: something else than a getter reads this socket.
                Ok(TicketedRecv::Ticketed(_) | TicketedRecv::Empty) => break None,
                // Zero bytes where the look saw queued packets: an empty packet, now taken off.
                Ok(TicketedRecv::Closed) => {
                    return Some(Err(foreign(GetError::Corrupt {
                        reason: "empty packet".into(),
                    })));
                }
                Ok(TicketedRecv::Foreign(e)) => return Some(Err(foreign(e))),
                Err(e) => return Some(Err(GetError::Io(e))),
            }
        };
        if !self.ring.claim_token(pos) {
            // Impossible while the lock is held; be safe rather than deliver twice.
            return None;
        }
        self.ring.free(pos);
        self.freed();
        if !matches!(result, Some(Ok(_))) {
            self.discarded();
        }
        result
    }

    /// What a getter that found nothing reports: `Closed` once the queue is closed and still
    /// empty after the close was seen, else `Empty`.
    fn nothing(&self, closed_seen: &mut bool) -> Option<GetOutcome> {
        if *closed_seen {
            return Some(GetOutcome::Closed);
        }
        if self.is_closed() {
            // A put that claimed a slot before the close may still publish: look once more.
            *closed_seen = true;
            return None;
        }
        Some(GetOutcome::Empty)
    }

    /// Takes a message if one is waiting.
    pub(crate) fn try_get(&self) -> Result<GetOutcome, GetError> {
        let mut closed_seen = false;
        loop {
            match self.look()? {
                Got::Message(m) => return Ok(GetOutcome::Message(m)),
                Got::Token(pos) => {
                    let guard = self.blocking_lock_oob().map_err(GetError::Io)?;
                    if let Some(r) = self.take_token(pos, &guard) {
                        return r.map(GetOutcome::Message);
                    }
                }
                Got::Empty => {
                    if let Some(r) = self.nothing(&mut closed_seen) {
                        return Ok(r);
                    }
                }
                Got::Busy(pos) => {
                    self.repair_head(pos);
                    return Ok(GetOutcome::Empty);
                }
            }
        }
    }

    /// A getter waiting behind a slot being written frees it if its writer died; true if so.
    fn repair_head(&self, pos: u64) -> bool {
        let repaired = self.ring.repair(pos).is_some();
        if repaired {
            self.repaired();
        }
        repaired
    }

    /// One look for a waiting getter, shaped as a wait queue's attempt: `None` while there is
    /// nothing to take. With `ticked`, a slot whose writer died is freed and looked past.
    fn attempt_get(&self, ticked: bool, closed_seen: &mut bool) -> Option<Found> {
        loop {
            match self.look() {
                Err(e) => return Some(Found::Done(Err(e))),
                Ok(Got::Message(m)) => return Some(Found::Done(Ok(GetOutcome::Message(m)))),
                Ok(Got::Token(pos)) => return Some(Found::Token(pos)),
                Ok(Got::Empty) => match self.nothing(closed_seen) {
                    Some(GetOutcome::Closed) => return Some(Found::Done(Ok(GetOutcome::Closed))),
                    Some(_) => return None,
                    None => {}
                },
                Ok(Got::Busy(pos)) => {
                    if !(ticked && self.repair_head(pos)) {
                        return None;
                    }
                }
            }
        }
    }

    /// Takes a message, waiting until one arrives; `Ok(None)` at end of queue.
    ///
    /// Cancel safe: a message is taken off the ring (and the socket) within one poll.
    pub(crate) async fn get(&self) -> Result<Option<Message>, GetError> {
        let mut closed_seen = false;
        loop {
            let found = match self.attempt_get(false, &mut closed_seen) {
                Some(found) => found,
                None => self
                    .not_empty
                    .spin_then_wait_until_in(
                        Contention::Unshared,
                        None,
                        Some(LIVENESS_TICK),
                        |ticked| self.attempt_get(ticked, &mut closed_seen),
                    )
                    .await
                    .map_err(GetError::Io)?
                    .expect("a wait without deadline ends only with a value"),
            };
            match found {
                Found::Done(r) => {
                    return r.map(|t| match t {
                        GetOutcome::Message(m) => Some(m),
                        GetOutcome::Empty | GetOutcome::Closed => None,
                    });
                }
                Found::Token(pos) => {
                    let guard = self.lock_oob().await.map_err(GetError::Io)?;
                    if let Some(r) = self.take_token(pos, &guard) {
                        return r.map(Some);
                    }
                }
            }
        }
    }

    /// Takes a message, blocking the thread until one arrives or `deadline` passes
    /// (`GetOutcome::Empty`).
    pub(crate) fn blocking_get(&self, deadline: Option<Instant>) -> Result<GetOutcome, GetError> {
        let mut closed_seen = false;
        loop {
            let found = match self.attempt_get(false, &mut closed_seen) {
                Some(found) => found,
                None => {
                    let found = self
                        .not_empty
                        .blocking_spin_then_wait_until_in(
                            Contention::Unshared,
                            deadline,
                            Some(LIVENESS_TICK),
                            |ticked| self.attempt_get(ticked, &mut closed_seen),
                        )
                        .map_err(GetError::Io)?;
                    let Some(found) = found else {
                        return Ok(GetOutcome::Empty);
                    };
                    found
                }
            };
            match found {
                Found::Done(r) => return r,
                Found::Token(pos) => {
                    let guard = self.blocking_lock_oob().map_err(GetError::Io)?;
                    if let Some(r) = self.take_token(pos, &guard) {
                        return r.map(GetOutcome::Message);
                    }
                }
            }
        }
    }

    // ---- joinable ----

    /// A taken message could not be delivered: in a joinable queue the consumer can never call
    /// `task_done` for it, so it is done now.
    pub(crate) fn discarded(&self) {
        if self.joinable {
            let _ = self.finish_task();
        }
    }

    /// Marks one task done; `false` when none was outstanding.
    pub(crate) fn finish_task(&self) -> bool {
        match self
            .unfinished_word()
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        {
            Ok(1) => {
                self.all_done.wake();
                true
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Waits until no task is outstanding.
    pub(crate) async fn join(&self) -> io::Result<()> {
        self.all_done
            .spin_then_wait_until_in(Contention::Unshared, None, None, |_| {
                (self.unfinished() == 0).then_some(())
            })
            .await
            .map(drop)
    }

    /// Blocks the thread until no task is outstanding or `deadline` passes (`Ok(false)`).
    pub(crate) fn blocking_join(&self, deadline: Option<Instant>) -> io::Result<bool> {
        self.all_done
            .blocking_spin_then_wait_until_in(Contention::Unshared, deadline, None, |_| {
                (self.unfinished() == 0).then_some(())
            })
            .map(|done| done.is_some())
    }
}

/// What a getter reports for a packet on the queue's socket that is not the queue's.
fn foreign(e: GetError) -> GetError {
    match e {
        GetError::Corrupt { reason } => GetError::Corrupt {
            reason: format!("not a message of this queue ({reason}); it was skipped"),
        },
        other => other,
    }
}

/// Holds the out-of-band lock; releases it when dropped.
struct OobHeld<'a>(&'a RobustLock<W_OOB>);

impl Drop for OobHeld<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// What travels when a queue handle is sent to another process: two descriptors of its own
/// (the socket first: tests that forge packets rely on it), and its arena slot, whose
/// descriptors a receiver that maps the arena already closes again.
#[derive(Serialize, Deserialize)]
struct Wire {
    socket: SharedFd,
    /// Header, ring and the log's counters, mapped; the log's data past them.
    state: SharedRegion,
    /// The getters' wait queue, in the arena slot that holds all of the queue's waits.
    waits: WaitQueue<W_GET>,
}

impl Serialize for Engine {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            socket: self.socket.shared_fd().clone(),
            state: self.state.clone(),
            waits: self.not_empty.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Engine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        Engine::from_wire(wire).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn packet(byte: u8, len: usize) -> Encoded {
        Encoded::new(&vec![byte; len], 8 << 20).unwrap()
    }

    async fn get_bytes(engine: &Engine) -> Vec<u8> {
        let got = tokio::time::timeout(Duration::from_secs(10), engine.get())
            .await
            .expect("get hung")
            .unwrap()
            .expect("queue ended");
        got.decode().unwrap()
    }

    #[tokio::test]
    async fn small_messages_use_the_ring_and_large_ones_the_socket_in_one_order() {
        let engine = Engine::new(None, 1 << 20, false).unwrap();
        let sizes = [1, 2000, SLOT_PAYLOAD - 2, 100_000, 0, 70_000, 5];
        for (i, &len) in sizes.iter().enumerate() {
            engine.put(&packet(i as u8, len)).await.unwrap();
        }
        assert!(matches!(packet(0, 1), Encoded::Plain(_)), "a ring slot");
        assert!(matches!(packet(0, 2000), Encoded::Packet(_)), "the socket");
        assert_eq!(engine.len(), sizes.len());
        for (i, &len) in sizes.iter().enumerate() {
            assert_eq!(get_bytes(&engine).await, vec![i as u8; len]);
        }
        assert!(matches!(engine.try_get().unwrap(), GetOutcome::Empty));
    }

    #[tokio::test]
    async fn packets_orphaned_by_a_dead_producer_are_skipped() {
        let engine = Engine::new(None, 1 << 20, false).unwrap();
        // A producer that died after sending its packet and before publishing its token.
        let pos = engine.ring.claim().unwrap();
        let Encoded::Packet(orphan) = packet(7, 1000) else {
            panic!("not a socket message")
        };
        engine.key.send(&engine.socket, &orphan, pos).unwrap();
        engine.ring.abandon(pos);
        engine.put(&packet(8, 1000)).await.unwrap();
        assert_eq!(get_bytes(&engine).await, vec![8; 1000]);
        assert!(matches!(engine.try_get().unwrap(), GetOutcome::Empty));
    }

    #[tokio::test]
    async fn a_slot_left_by_a_dead_writer_is_skipped_and_its_task_finished() {
        let engine = Engine::new(None, 1 << 20, true).unwrap();
        engine.reserve_task();
        let pos = engine.ring.claim().unwrap();
        engine.ring.forge_dead_writer(pos);
        engine.put(&packet(3, 10)).await.unwrap();
        assert_eq!(engine.unfinished(), 2);
        assert!(matches!(engine.try_get().unwrap(), GetOutcome::Empty));
        // The getter waits behind the dead writer's slot, notices it is dead, and goes on.
        assert_eq!(get_bytes(&engine).await, vec![3; 10]);
        assert_eq!(
            engine.unfinished(),
            1,
            "the dead writer's task was finished"
        );
    }

    #[test]
    fn a_full_ring_held_by_a_dead_writer_is_repaired_by_a_putter() {
        let engine = Engine::new(Some(1), 1 << 20, false).unwrap();
        let pos = engine.ring.claim().unwrap();
        engine.ring.forge_dead_writer(pos);
        assert!(engine.is_full());
        // The first try finds the ring full and repairs it; the next one succeeds.
        assert!(matches!(engine.try_put(&packet(1, 1)), Ok(false)));
        assert!(engine.try_put(&packet(1, 1)).unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        let GetOutcome::Message(m) = engine.blocking_get(Some(deadline)).unwrap() else {
            panic!("no message")
        };
        assert_eq!(m.decode::<Vec<u8>>().unwrap(), vec![1]);
    }

    /// Bytes of memory a memfd holds right now.
    fn resident(fd: &SharedFd) -> u64 {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    /// A packet that is not the queue's, sent into its socket ahead of a real one.
    fn forge(engine: &Engine, bytes: &[u8]) {
        use std::os::fd::AsFd;
        let fd = engine
            .socket
            .shared_fd()
            .as_fd()
            .try_clone_to_owned()
            .unwrap();
        std::os::unix::net::UnixDatagram::from(fd)
            .send(bytes)
            .unwrap();
    }

    #[tokio::test]
    async fn a_forged_packet_costs_only_itself() {
        let engine = Engine::new(None, 1 << 20, true).unwrap();
        let next = |e: &Engine| e.state.atomic_u64(RING_BASE).load(SeqCst);
        let forgeries: Vec<Vec<u8>> = vec![
            b"zzz".to_vec(),
            // An empty packet, which must not read as the end of the queue.
            Vec::new(),
            // A ticket for the very position the real message will take, without the key.
            [
                &[0xA3][..],
                &next(&engine).to_le_bytes(),
                &[0; 8],
                &[0xA1, 1, 2],
            ]
            .concat(),
            // A ticket for a later position.
            [
                &[0xA3][..],
                &(next(&engine) + 5).to_le_bytes(),
                &[7; 8],
                &[0xA1],
            ]
            .concat(),
            // The ticket format before seals, which matched by position alone.
            [&[0xA3][..], &next(&engine).to_le_bytes(), &[0xA1, 3, 4, 5]].concat(),
        ];
        for forged in &forgeries {
            forge(&engine, forged);
            engine.put(&packet(9, 1000)).await.unwrap();
            let e = engine.get().await.unwrap_err();
            assert!(
                matches!(&e, GetError::Corrupt { reason } if reason.contains("not a message of this queue")),
                "{e}"
            );
            assert_eq!(engine.unfinished(), 1, "a forged packet is no task");
            assert_eq!(get_bytes(&engine).await, vec![9; 1000]);
            assert!(engine.finish_task());
        }
        assert!(matches!(engine.try_get().unwrap(), GetOutcome::Empty));
    }

    #[tokio::test]
    async fn an_empty_packet_in_a_closed_queue_is_not_its_end() {
        let engine = Engine::new(None, 1 << 20, false).unwrap();
        forge(&engine, &[]);
        engine.put(&packet(4, 1000)).await.unwrap();
        engine.close();
        let e = engine.get().await.unwrap_err();
        assert!(matches!(e, GetError::Corrupt { .. }), "{e}");
        assert_eq!(get_bytes(&engine).await, vec![4; 1000]);
        assert!(engine.get().await.unwrap().is_none(), "then the end");
    }

    #[tokio::test]
    async fn a_getter_that_died_after_receiving_costs_only_its_own_message() {
        let engine = Engine::new(None, 1 << 20, true).unwrap();
        for i in 0..3u8 {
            engine.put(&packet(i, 1000)).await.unwrap();
        }
        // A getter took the first packet off the socket and died before claiming its token.
        let TicketedRecv::Ticketed(taken) = engine.key.recv(&engine.socket).unwrap() else {
            panic!("no packet")
        };
        assert_eq!(taken.position(), 0);
        drop(taken);
        assert_eq!(get_bytes(&engine).await, vec![1; 1000]);
        assert_eq!(get_bytes(&engine).await, vec![2; 1000]);
        assert_eq!(engine.unfinished(), 2, "the lost message's task is done");
        assert!(matches!(engine.try_get().unwrap(), GetOutcome::Empty));
    }

    #[tokio::test]
    async fn large_and_overflowing_messages_go_to_the_log_and_give_memory_back() {
        let engine = Engine::new(None, 4 << 20, false).unwrap();
        // Above 64 KiB: the log, always.
        for i in 0..16u8 {
            engine.put(&packet(i, 1 << 20)).await.unwrap();
        }
        assert!(engine.log.resident().unwrap() >= 16 << 20);
        for i in 0..16u8 {
            assert_eq!(get_bytes(&engine).await, vec![i; 1 << 20]);
        }
        assert!(engine.log.resident().unwrap() < 1 << 20);
        // Medium messages: the socket while it has room, then the log; one order.
        let n = 20_000u32;
        for i in 0..n {
            assert!(engine.try_put(&packet(i as u8, 1000)).unwrap());
        }
        assert!(engine.log.resident().unwrap() > 0, "the socket overflowed");
        for i in 0..n {
            assert_eq!(get_bytes(&engine).await, vec![i as u8; 1000]);
        }
        assert!(matches!(engine.try_get().unwrap(), GetOutcome::Empty));
        // Packed, and freed as read: at most the page the log ends in is left.
        assert!(engine.log.resident().unwrap() <= 4096);
    }

    #[tokio::test]
    async fn an_unbounded_ring_gives_memory_back_as_it_drains() {
        let engine = Engine::new(None, 1 << 20, false).unwrap();
        let n = 200_000u32;
        for i in 0..n {
            assert!(engine.try_put(&Encoded::new(&i, 64).unwrap()).unwrap());
        }
        let full = resident(engine.state.shared_fd());
        assert!(full >= u64::from(n) * 128, "{full}");
        for i in 0..n {
            let got: u32 = get_any(&engine).await.decode().unwrap();
            assert_eq!(got, i);
        }
        let drained = resident(engine.state.shared_fd());
        assert!(drained <= 256 << 10, "{drained} bytes still held");
    }

    async fn get_any(engine: &Engine) -> Message {
        tokio::time::timeout(Duration::from_secs(10), engine.get())
            .await
            .expect("get hung")
            .unwrap()
            .expect("queue ended")
    }

    #[tokio::test]
    async fn a_put_waiting_for_socket_room_goes_on_once_getters_drain_it() {
        let engine = Engine::new(None, 1 << 20, false).unwrap();
        // Messages that carry a descriptor must take the socket: fill it.
        let fd = engine.socket.shared_fd().clone();
        let with_fd = |i: u32| Encoded::new(&(i, fd.clone()), 1 << 20).unwrap();
        let mut n = 0u32;
        while engine.try_put(&with_fd(n)).unwrap() {
            n += 1;
        }
        assert!(n >= 100, "only {n} fit");
        let last = with_fd(n);
        let mut put = std::pin::pin!(engine.put(&last));
        assert!(
            poll_once(&mut put).is_none(),
            "the socket is full: the put waits"
        );
        // Getters drain it; the waiting put goes on and its message comes last.
        for i in 0..n {
            let (got, _): (u32, SharedFd) = get_any(&engine).await.decode().unwrap();
            assert_eq!(got, i);
        }
        tokio::time::timeout(Duration::from_secs(10), put)
            .await
            .expect("the put never saw room")
            .unwrap();
        let (got, _): (u32, SharedFd) = get_any(&engine).await.decode().unwrap();
        assert_eq!(got, n);
    }

    /// Polls `f` once: `Some` if it is ready.
    fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        match std::pin::Pin::new(f).poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn zero_and_oversized_capacities_are_refused() {
        for bad in [0, MAX_CAPACITY + 1, usize::MAX] {
            let e = Engine::new(Some(bad), 1 << 20, false).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        assert!(Engine::new(Some(MAX_CAPACITY), 1 << 20, false).is_ok());
    }
}
