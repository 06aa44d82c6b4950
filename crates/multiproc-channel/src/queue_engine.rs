//! The untyped engine under [`Queue`](crate::Queue) and [`JoinableQueue`](crate::JoinableQueue).
//!
//! - Transport: a `SOCK_SEQPACKET` pair ([`multiproc_core::packet`]) shared by every handle in
//!   every process. Producers write packets to the send end, consumers read the receive end; the
//!   kernel hands each packet to exactly one reader, whole.
//! - Shared state: a small [`SharedRegion`] with the message count (`len`, which also counts
//!   slots reserved by puts in progress), the capacity, the size limit, the closed flag, the
//!   unfinished-task count of a joinable queue and waiter counts.
//! - Wake-ups: two [`EventFd`]s used with the core's broadcast protocol: `slot_freed` (a bounded
//!   queue's putters wait for it; `close` also fires it) and `all_done` (joiners wait for it).
//!
//! A put reserves a slot (and, for a joinable queue, a task) before its packet becomes visible,
//! then sends it; a [`Reservation`] dropped before the send completed gives both back, which is
//! what makes a cancelled put leave no trace. A get takes a packet, then releases its slot.

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Instant;

use multiproc_core::SharedFd;
use multiproc_core::eventfd::EventFd;
use multiproc_core::packet::{self, Packet, PacketRecvError, PacketSocket, Received, TryRecv};
use multiproc_core::shm::SharedRegion;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

// Layout of the shared region.
const OFF_MAGIC: usize = 0; // u32
const OFF_FLAGS: usize = 4; // u32
const OFF_CAPACITY: usize = 8; // u64, 0 = unbounded
const OFF_MAX_SIZE: usize = 16; // u64
const OFF_LEN: usize = 24; // u64
const OFF_UNFINISHED: usize = 32; // u64
const OFF_CLOSED: usize = 40; // u32
const OFF_PUT_WAITERS: usize = 44; // u32
const OFF_JOIN_WAITERS: usize = 48; // u32
const REGION_LEN: usize = 64;

const MAGIC: u32 = 0x5155_4555; // "QUEU"
const FLAG_JOINABLE: u32 = 1;

/// Why the engine did not put a packet.
pub(crate) enum PutFail {
    Full,
    /// Only from the blocking calls with a deadline.
    Timeout,
    Closed,
    Io(io::Error),
}

/// The shared part of every queue handle in one process.
pub(crate) struct Engine {
    tx: PacketSocket,
    rx: PacketSocket,
    state: SharedRegion,
    slot_freed: EventFd,
    all_done: EventFd,
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
    pub(crate) fn new(
        capacity: Option<usize>,
        max_size: usize,
        joinable: bool,
    ) -> io::Result<Self> {
        let (tx, rx) = packet::packet_pair()?;
        let state = SharedRegion::new(REGION_LEN)?;
        let capacity = capacity.map_or(0, |c| c as u64);
        state
            .atomic_u32(OFF_FLAGS)
            .store(if joinable { FLAG_JOINABLE } else { 0 }, SeqCst);
        state.atomic_u64(OFF_CAPACITY).store(capacity, SeqCst);
        state
            .atomic_u64(OFF_MAX_SIZE)
            .store(max_size as u64, SeqCst);
        state.atomic_u32(OFF_MAGIC).store(MAGIC, SeqCst);
        Ok(Self {
            tx: PacketSocket::new(tx)?,
            rx: PacketSocket::new(rx)?,
            state,
            slot_freed: EventFd::new()?,
            all_done: EventFd::new()?,
            capacity,
            max_size,
            joinable,
        })
    }

    fn from_wire(w: Wire) -> io::Result<Self> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        if w.state.len() < REGION_LEN {
            return Err(invalid("queue state region is too small"));
        }
        if w.state.atomic_u32(OFF_MAGIC).load(SeqCst) != MAGIC {
            return Err(invalid("shared region is not a queue's state"));
        }
        let capacity = w.state.atomic_u64(OFF_CAPACITY).load(SeqCst);
        let max_size =
            usize::try_from(w.state.atomic_u64(OFF_MAX_SIZE).load(SeqCst)).unwrap_or(usize::MAX);
        let joinable = w.state.atomic_u32(OFF_FLAGS).load(SeqCst) & FLAG_JOINABLE != 0;
        Ok(Self {
            tx: PacketSocket::new(w.tx)?,
            rx: PacketSocket::new(w.rx)?,
            state: w.state,
            slot_freed: w.slot_freed,
            all_done: w.all_done,
            capacity,
            max_size,
            joinable,
        })
    }

    pub(crate) fn is_joinable(&self) -> bool {
        self.joinable
    }

    fn len_word(&self) -> &AtomicU64 {
        self.state.atomic_u64(OFF_LEN)
    }
    fn unfinished_word(&self) -> &AtomicU64 {
        self.state.atomic_u64(OFF_UNFINISHED)
    }
    fn closed_word(&self) -> &AtomicU32 {
        self.state.atomic_u32(OFF_CLOSED)
    }
    fn put_waiters(&self) -> &AtomicU32 {
        self.state.atomic_u32(OFF_PUT_WAITERS)
    }
    fn join_waiters(&self) -> &AtomicU32 {
        self.state.atomic_u32(OFF_JOIN_WAITERS)
    }

    pub(crate) fn capacity(&self) -> Option<usize> {
        (self.capacity != 0).then(|| usize::try_from(self.capacity).unwrap_or(usize::MAX))
    }
    pub(crate) fn max_message_size(&self) -> usize {
        self.max_size
    }
    pub(crate) fn len(&self) -> usize {
        usize::try_from(self.len_word().load(SeqCst)).unwrap_or(usize::MAX)
    }
    pub(crate) fn is_full(&self) -> bool {
        self.capacity != 0 && self.len_word().load(SeqCst) >= self.capacity
    }
    pub(crate) fn has_pending(&self) -> bool {
        self.rx.has_pending().unwrap_or(false)
    }
    pub(crate) fn is_closed(&self) -> bool {
        self.closed_word().load(SeqCst) != 0
    }
    pub(crate) fn unfinished(&self) -> u64 {
        self.unfinished_word().load(SeqCst)
    }

    pub(crate) fn encode<T: Serialize>(
        &self,
        value: &T,
    ) -> Result<Packet, packet::PacketEncodeError> {
        Packet::encode(value, self.max_size)
    }

    /// Closes the queue for every handle in every process.
    pub(crate) fn close(&self) {
        self.closed_word().store(1, SeqCst);
        // Fails only if the socket is already shut down or not a socket: nothing to do then.
        let _ = self.tx.shutdown();
        let _ = self.slot_freed.notify();
    }

    // ---- put side ----

    /// Reserves a slot without waiting.
    fn try_reserve(&self) -> Result<Reservation<'_>, PutFail> {
        if self.is_closed() {
            return Err(PutFail::Closed);
        }
        if self.capacity == 0 {
            self.len_word().fetch_add(1, SeqCst);
        } else {
            let cap = self.capacity;
            self.len_word()
                .fetch_update(SeqCst, SeqCst, |l| (l < cap).then_some(l + 1))
                .map_err(|_| PutFail::Full)?;
        }
        if self.joinable {
            self.unfinished_word().fetch_add(1, SeqCst);
        }
        Ok(Reservation {
            engine: self,
            armed: true,
        })
    }

    /// Reserves a slot, waiting while the queue is full.
    async fn reserve(&self) -> Result<Reservation<'_>, PutFail> {
        loop {
            match self.try_reserve() {
                Err(PutFail::Full) => {}
                other => return other,
            }
            let _waiting = Counted::new(self.put_waiters());
            let waiter = self.slot_freed.waiter().map_err(PutFail::Io)?;
            match self.try_reserve() {
                Err(PutFail::Full) => {}
                other => return other,
            }
            waiter.wait().await.map_err(PutFail::Io)?;
        }
    }

    fn send_error(e: io::Error) -> PutFail {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::NotConnected => PutFail::Closed,
            io::ErrorKind::WouldBlock => PutFail::Full,
            _ => PutFail::Io(e),
        }
    }

    /// Puts `packet`, waiting for a slot and for room in the socket.
    ///
    /// Cancel safe: the packet is sent by one system call, and the reservation made before it is
    /// given back if the future is dropped before that call succeeded.
    pub(crate) async fn put(&self, packet: &Packet) -> Result<(), PutFail> {
        let reservation = self.reserve().await?;
        self.tx.send(packet).await.map_err(Self::send_error)?;
        reservation.commit();
        Ok(())
    }

    /// Reserves a slot, blocking the thread while the queue is full, until `deadline`.
    fn blocking_reserve(&self, deadline: Option<Instant>) -> Result<Reservation<'_>, PutFail> {
        loop {
            match self.try_reserve() {
                Err(PutFail::Full) => {}
                other => return other,
            }
            let _waiting = Counted::new(self.put_waiters());
            let waiter = self.slot_freed.blocking_waiter().map_err(PutFail::Io)?;
            match self.try_reserve() {
                Err(PutFail::Full) => {}
                other => return other,
            }
            if !waiter.wait(deadline).map_err(PutFail::Io)? {
                return Err(PutFail::Timeout);
            }
        }
    }

    /// Puts `packet`, blocking the thread while the queue is full, until `deadline`.
    pub(crate) fn blocking_put(
        &self,
        packet: &Packet,
        deadline: Option<Instant>,
    ) -> Result<(), PutFail> {
        let reservation = self.blocking_reserve(deadline)?;
        match self.tx.blocking_send(packet, deadline) {
            Ok(true) => {}
            Ok(false) => return Err(PutFail::Timeout),
            Err(e) => return Err(Self::send_error(e)),
        }
        reservation.commit();
        Ok(())
    }

    /// Puts `packet` if there is a slot and room in the socket right now.
    pub(crate) fn try_put(&self, packet: &Packet) -> Result<(), PutFail> {
        let reservation = self.try_reserve()?;
        self.tx.try_send(packet).map_err(Self::send_error)?;
        reservation.commit();
        Ok(())
    }

    /// Gives back a slot taken by a put that did not happen or by a get.
    fn release_slot(&self) {
        let _ = self
            .len_word()
            .fetch_update(SeqCst, SeqCst, |l| l.checked_sub(1));
        if self.put_waiters().load(SeqCst) != 0 {
            let _ = self.slot_freed.notify();
        }
    }

    // ---- get side ----

    /// Accounts for a packet that was taken off the socket.
    fn taken(&self, delivered: bool) {
        self.release_slot();
        if !delivered {
            self.discarded();
        }
    }

    /// A taken message could not be delivered: in a joinable queue the consumer can never call
    /// `task_done` for it, so it is done now.
    pub(crate) fn discarded(&self) {
        if self.joinable {
            let _ = self.finish_task();
        }
    }

    fn after_recv(&self, r: Result<TryRecv, PacketRecvError>) -> Result<TryRecv, PacketRecvError> {
        match &r {
            Ok(TryRecv::Message(_)) => self.taken(true),
            Ok(TryRecv::Empty | TryRecv::Closed) | Err(PacketRecvError::Io(_)) => {}
            Err(_) => self.taken(false),
        }
        r
    }

    /// Takes a message if one is waiting.
    pub(crate) fn try_get(&self) -> Result<TryRecv, PacketRecvError> {
        self.after_recv(self.rx.try_recv(self.max_size))
    }

    /// Takes a message, waiting until one arrives; `Ok(None)` at end of queue.
    ///
    /// Cancel safe: a message is taken off the socket and returned within one poll.
    pub(crate) async fn get(&self) -> Result<Option<Received>, PacketRecvError> {
        match self.try_get()? {
            TryRecv::Message(m) => return Ok(Some(m)),
            TryRecv::Closed => return Ok(None),
            TryRecv::Empty => {}
        }
        // `recv` makes a single poll take the message and return it; account right after.
        match self.rx.recv(self.max_size).await {
            Ok(Some(m)) => {
                self.taken(true);
                Ok(Some(m))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                if !matches!(e, PacketRecvError::Io(_)) {
                    self.taken(false);
                }
                Err(e)
            }
        }
    }

    /// Takes a message, blocking the thread until one arrives or `deadline` passes
    /// (`TryRecv::Empty`).
    pub(crate) fn blocking_get(
        &self,
        deadline: Option<Instant>,
    ) -> Result<TryRecv, PacketRecvError> {
        self.after_recv(self.rx.blocking_recv(self.max_size, deadline))
    }

    // ---- joinable ----

    /// Marks one task done; `false` when none was outstanding.
    pub(crate) fn finish_task(&self) -> bool {
        match self
            .unfinished_word()
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        {
            Ok(1) => {
                if self.join_waiters().load(SeqCst) != 0 {
                    let _ = self.all_done.notify();
                }
                true
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Waits until no task is outstanding.
    pub(crate) async fn join(&self) -> io::Result<()> {
        loop {
            if self.unfinished() == 0 {
                return Ok(());
            }
            let _waiting = Counted::new(self.join_waiters());
            let waiter = self.all_done.waiter()?;
            if self.unfinished() == 0 {
                return Ok(());
            }
            waiter.wait().await?;
        }
    }
}

impl Engine {
    /// Blocks the thread until no task is outstanding or `deadline` passes (`Ok(false)`).
    pub(crate) fn blocking_join(&self, deadline: Option<Instant>) -> io::Result<bool> {
        loop {
            if self.unfinished() == 0 {
                return Ok(true);
            }
            let _waiting = Counted::new(self.join_waiters());
            let waiter = self.all_done.blocking_waiter()?;
            if self.unfinished() == 0 {
                return Ok(true);
            }
            if !waiter.wait(deadline)? {
                return Ok(self.unfinished() == 0);
            }
        }
    }
}

/// A slot (and task) taken by a put in progress; given back on drop unless committed.
struct Reservation<'a> {
    engine: &'a Engine,
    armed: bool,
}

impl Reservation<'_> {
    fn commit(mut self) {
        self.armed = false;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            if self.engine.joinable {
                self.engine.finish_task();
            }
            self.engine.release_slot();
        }
    }
}

/// Counts this process's task as a waiter in a shared word while alive.
struct Counted<'a>(&'a AtomicU32);

impl<'a> Counted<'a> {
    fn new(word: &'a AtomicU32) -> Self {
        word.fetch_add(1, SeqCst);
        Self(word)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// What travels when a queue handle is sent to another process.
#[derive(Serialize, Deserialize)]
struct Wire {
    tx: SharedFd,
    rx: SharedFd,
    state: SharedRegion,
    slot_freed: EventFd,
    all_done: EventFd,
}

impl Serialize for Engine {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            tx: self.tx.shared_fd().clone(),
            rx: self.rx.shared_fd().clone(),
            state: self.state.clone(),
            slot_freed: self.slot_freed.clone(),
            all_done: self.all_done.clone(),
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
