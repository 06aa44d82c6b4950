//! The shared region of a channel pair: per direction, a ring of small frames and the words
//! that order them against the socket and wake a parked receiver. The protocol is argued in
//! the [module docs](super) ("The shared ring").

use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use serde::{Deserialize, Serialize};

use crate::SharedFd;
use crate::shm::{Record, RingError, RingLayout, RingWriter, SharedRegion, SpscRing};

/// Control words sit on cache lines of their own (128 bytes: adjacent-line prefetch), so the
/// words one side writes do not slow down the other side's.
const LINE: usize = 128;
/// Control words of one direction.
const DIR_CONTROL: usize = 8 * LINE;
/// Bytes ever appended to the direction's ring (producer).
const HEAD: usize = 0;
/// Bytes ever taken from the ring (consumer).
const TAIL: usize = LINE;
/// Owned socket frames delivered so far (consumer), on the tail's line.
const DELIVERED: usize = LINE + 8;
/// Whether the receiver is parked (`1`) and must be woken through the socket. Set by the
/// consumer, taken (swapped to `0`) by the producer.
const PARKED: usize = 2 * LINE;
/// Owned socket frames accepted so far (producer).
const OWNED_SENT: usize = 3 * LINE;
/// The CPU (plus one; zero: unknown) the producer last published from (producer).
const TX_CPU: usize = 3 * LINE + 8;
/// The token of the sender copy that may write the ring (`0`: nobody, the first to send claims
/// it).
const OWNER: usize = 4 * LINE;
/// [`RING`] while the ring may be written, [`SOCKET`] for good once two live copies of the
/// sender wanted it.
const MODE: usize = 5 * LINE;
const RING: u32 = 0;
const SOCKET: u32 = 1;
/// The rings start on a page of their own.
const RINGS: usize = 4096;
/// Bytes of each direction's ring.
const RING_LEN: usize = 32 << 10;
/// Largest payload a ring record holds; larger frames go through the socket.
pub(crate) const MAX_RECORD: usize = 4 << 10;
/// Unpublished record bytes after which records are published without waiting for the flush
/// (the consumer starts on them, and the `head` line moves once per this many bytes). Records
/// are written one per flush today (a frame sent alone), so this bounds a large record's wait.
const PUBLISH_EVERY: u64 = 4 << 10;
/// How often (in frames sent alone) a sender reads the receiver's progress to find out
/// whether a receiver that took nothing is still alive.
const LIVENESS_EVERY: u32 = 4;
/// The longest interval between such reads while a live receiver keeps taking nothing: each
/// stall found alive doubles the interval up to this, and progress resets it.
const LIVENESS_EVERY_MAX: u32 = 256;
/// Bytes of a pair's region.
pub(crate) const REGION_LEN: usize = RINGS + 2 * RING_LEN;

/// The region of a channel pair and which end this is (end 0 sends on direction 0).
#[derive(Clone, Debug)]
pub(crate) struct RingShare {
    region: SharedRegion,
    side: u8,
}

impl RingShare {
    /// A fresh region for a new pair: end 0's and end 1's shares.
    pub(crate) fn pair() -> io::Result<(RingShare, RingShare)> {
        let region = SharedRegion::new(REGION_LEN)?;
        Ok((
            RingShare {
                region: region.clone(),
                side: 0,
            },
            RingShare { region, side: 1 },
        ))
    }

    /// End 1's share of a region that the other end's process made and offered on a
    /// connection (see `super::offer`).
    pub(crate) fn taken(region: SharedRegion) -> RingShare {
        RingShare { region, side: 1 }
    }

    /// The region.
    pub(crate) fn region(&self) -> &SharedRegion {
        &self.region
    }

    fn control(&self, dir: usize, word: usize) -> usize {
        dir * DIR_CONTROL + word
    }

    fn u64(&self, dir: usize, word: usize) -> &AtomicU64 {
        self.region.atomic_u64(self.control(dir, word))
    }

    fn u32(&self, dir: usize, word: usize) -> &AtomicU32 {
        self.region.atomic_u32(self.control(dir, word))
    }

    fn ring(&self, dir: usize) -> SpscRing {
        SpscRing::new(
            self.region.clone(),
            RingLayout {
                head: self.control(dir, HEAD),
                tail: self.control(dir, TAIL),
                data: RINGS + dir * RING_LEN,
                len: RING_LEN,
                max_record: MAX_RECORD,
            },
        )
    }

    fn tx_dir(&self) -> usize {
        usize::from(self.side)
    }

    fn rx_dir(&self) -> usize {
        1 - usize::from(self.side)
    }
}

/// A token naming one copy of a sender, unique across processes (pid and a counter).
pub(crate) fn new_token() -> u64 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed).max(1);
    (u64::from(std::process::id()) << 32) | u64::from(n)
}

/// The sending side's part: ownership of the direction's ring, records, and wake-ups.
pub(crate) struct TxRing {
    share: RingShare,
    token: u64,
    /// Set while this copy owns the ring (and attached to it).
    writer: Option<RingWriter>,
    /// Records were written since the last [`wake_due`](Self::wake_due).
    dirty: bool,
    /// A publication in the middle of a batch found the receiver parked: it must be woken.
    wake_pending: bool,
    /// The receiver's count of taken bytes when [`backlogged`](Self::backlogged) last read it.
    taken_seen: u64,
    /// Calls of [`backlogged`](Self::backlogged) since it last read the receiver's count.
    unchecked: u32,
    /// Calls between two reads of the receiver's count (see [`LIVENESS_EVERY_MAX`]).
    check_every: u32,
}

impl TxRing {
    pub(crate) fn new(share: RingShare, token: u64) -> Self {
        Self {
            share,
            token,
            writer: None,
            dirty: false,
            wake_pending: false,
            taken_seen: u64::MAX,
            unchecked: 0,
            check_every: LIVENESS_EVERY,
        }
    }

    fn word(&self, word: usize) -> &AtomicU64 {
        self.share.u64(self.share.tx_dir(), word)
    }

    fn mode(&self) -> &AtomicU32 {
        self.share.u32(self.share.tx_dir(), MODE)
    }

    /// Whether this copy may use the ring now: it owns the direction (claiming it if nobody
    /// does) and the direction has not fallen back to the socket. A copy that finds another
    /// copy owning the ring turns the ring off for the direction for good: from then on every
    /// copy sends through the socket, in the socket's order.
    pub(crate) fn usable(&mut self) -> bool {
        if self.mode().load(Ordering::Acquire) == SOCKET {
            self.detach();
            return false;
        }
        // Acquire: a previous owner released the word after its last publication.
        let current = self.word(OWNER).load(Ordering::Acquire);
        if current == self.token {
            if self.writer.is_none() {
                self.writer = Some(RingWriter::attach(self.share.ring(self.share.tx_dir())));
            }
            return true;
        }
        self.detach();
        if current == 0
            && self
                .word(OWNER)
                .compare_exchange(0, self.token, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.writer = Some(RingWriter::attach(self.share.ring(self.share.tx_dir())));
            return true;
        }
        // Another copy (maybe in another process) owns the ring: two producers cannot share
        // it, so the direction goes back to the socket alone. SeqCst: any copy that looks at
        // the mode after this copy's next frame was sent sees it.
        self.mode().store(SOCKET, Ordering::SeqCst);
        false
    }

    /// Stops writing the ring, publishing what this copy wrote (records written before it
    /// lost the ring still come before anything it sends later).
    fn detach(&mut self) {
        self.publish();
        self.writer = None;
    }

    /// Publishes the records written so far (done before any write to the socket, so a record
    /// is always visible before a socket frame sent after it can be read). Only while this
    /// copy owns the ring: a copy that handed the ring on must never store its stale head over
    /// the new owner's (only this copy's own `hand_off` or release moves the ring away from it,
    /// so the check cannot race).
    pub(crate) fn publish(&self) {
        if let Some(writer) = &self.writer
            && self.word(OWNER).load(Ordering::Acquire) == self.token
        {
            writer.publish();
        }
    }

    /// Whether records this copy published still wait for a receiver that took none of them
    /// over the last [`LIVENESS_EVERY`] calls (one per frame sent alone). A receiver killed
    /// while it was not parked leaves no wake-up frame to fail, so a sender that finds its
    /// records untaken checks that the receiver lives before it adds more (see
    /// [`RawSender`](super::RawSender)): a send to a dead peer then fails a few messages late,
    /// as sends into a socket buffer succeed when the peer dies just after them. Reading the
    /// receiver's count costs a cache line the receiver keeps writing, so it is read only
    /// every [`LIVENESS_EVERY`] calls: a stream of small frames pays it rarely. A receiver that
    /// is only slow (parked, or busy) stalls the same way, and each check costs the caller a
    /// system call, so while stalls go on the checks come at twice the interval each time, up
    /// to [`LIVENESS_EVERY_MAX`] (by then the ring is full, and a frame to a dead receiver
    /// fails in the socket anyway); any progress brings the interval back.
    pub(crate) fn backlogged(&mut self) -> bool {
        self.unchecked += 1;
        if self.unchecked < self.check_every {
            return false;
        }
        self.unchecked = 0;
        let Some(w) = self.writer.as_ref() else {
            return false;
        };
        let taken = w.ring().taken();
        let stalled = taken < w.ring().published() && taken == self.taken_seen;
        self.taken_seen = taken;
        self.check_every = match stalled {
            true => (self.check_every * 2).min(LIVENESS_EVERY_MAX),
            false => LIVENESS_EVERY,
        };
        stalled
    }

    /// Whether the receiver took every record this copy published.
    pub(crate) fn all_taken(&self) -> bool {
        self.writer
            .as_ref()
            .is_none_or(|w| w.ring().taken() >= w.ring().published())
    }

    /// Puts a frame's payload in the ring if this copy owns it and it fits; `false` when it
    /// must go through the socket (then call [`tag_socket_frame`](Self::tag_socket_frame)).
    /// Records are published at the next [`wake_due`](Self::wake_due) (every flush), or once
    /// [`PUBLISH_EVERY`] bytes are unpublished.
    pub(crate) fn try_write(&mut self, payload: &[u8]) -> bool {
        if payload.len() > MAX_RECORD || !self.usable() {
            return false;
        }
        let stamp = self.word(OWNED_SENT).load(Ordering::Relaxed);
        let writer = self.writer.as_mut().expect("usable attaches the writer");
        // (`usable` just saw this copy own the ring: publishing directly is safe.)
        if !writer.try_write(stamp, payload) {
            // Full: what is written goes out now, so that the receiver can make room.
            writer.publish();
            self.wake_pending |= self.parked_taken();
            return false;
        }
        self.dirty = true;
        if writer.unpublished() >= PUBLISH_EVERY {
            writer.publish();
            self.wake_pending |= self.parked_taken();
        }
        true
    }

    /// Whether a wake frame is owed since a publication in the middle of a batch (taken).
    pub(crate) fn take_wake_pending(&mut self) -> bool {
        std::mem::take(&mut self.wake_pending)
    }

    /// After a publication: whether the receiver is parked (then it is no longer marked so,
    /// and the caller must wake it). The futex handshake: our `HEAD` store, this fence, the
    /// `PARKED` load; the receiver's `PARKED` store, its fence, its `HEAD` load. Two SeqCst
    /// fences order the two pairs, so either we see `PARKED` set or the receiver sees our
    /// record (or both).
    fn parked_taken(&self) -> bool {
        fence(Ordering::SeqCst);
        let parked = self.share.u32(self.share.tx_dir(), PARKED);
        parked.load(Ordering::Relaxed) != 0 && parked.swap(0, Ordering::AcqRel) != 0
    }

    /// A frame accepted for the socket: whether it is the owner's (then it is counted, and its
    /// header says so, so the receiver keeps it in order with the ring's records).
    pub(crate) fn tag_socket_frame(&mut self) -> bool {
        self.tag_socket_frames(1)
    }

    /// [`tag_socket_frame`](Self::tag_socket_frame) for `n` frames at once: one store.
    pub(crate) fn tag_socket_frames(&mut self, n: u64) -> bool {
        if !self.usable() {
            return false;
        }
        let sent = self.word(OWNED_SENT);
        sent.store(sent.load(Ordering::Relaxed) + n, Ordering::Release);
        true
    }

    /// After publishing records: whether the receiver is parked and must be woken with a wake
    /// frame. True at most once per park. Cheap when nothing was published.
    pub(crate) fn wake_due(&mut self) -> bool {
        let pending = self.take_wake_pending();
        if !std::mem::take(&mut self.dirty) {
            return pending;
        }
        self.publish();
        self.say_cpu();
        self.parked_taken() || pending
    }

    /// Publishes the CPU this copy runs on for the receiver's spin (`CpuCue`), storing only
    /// when it changed: a store invalidates the line in the receiver's cache, which it reads on
    /// every look, so an unchanged CPU costs the receiver no cache-line transfer (a load of a
    /// line both share is a hit).
    fn say_cpu(&self) {
        let cpu = rustix::thread::sched_getcpu() as u64 + 1;
        let word = self.word(TX_CPU);
        if word.load(Ordering::Relaxed) != cpu {
            word.store(cpu, Ordering::Relaxed);
        }
    }

    /// What travels with a copy of this sender: the share and a token for the copy. If this
    /// copy owns the ring, ownership moves to the new copy (this one falls back to the socket
    /// if it sends again while the other lives).
    pub(crate) fn hand_off(&self) -> (RingShare, u64) {
        // The next owner goes on from the published head.
        self.publish();
        let token = new_token();
        let _ = self.word(OWNER).compare_exchange(
            self.token,
            token,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        (self.share.clone(), token)
    }
}

impl Drop for TxRing {
    fn drop(&mut self) {
        self.publish();
        // Release: the next owner sees everything this copy published.
        let _ =
            self.word(OWNER)
                .compare_exchange(self.token, 0, Ordering::Release, Ordering::Relaxed);
    }
}

/// The receiving side's part: records in order with owned socket frames, and parking.
pub(crate) struct RxRing {
    share: RingShare,
    ring: SpscRing,
    /// The payload of the record at the front, once [`front`](Self::front) found it
    /// deliverable.
    pub(crate) scratch: Vec<u8>,
    front: Option<Record>,
    /// The producer's head as last read: records up to it are there without reading the
    /// `head` line again.
    seen_head: u64,
    /// A record that was found waiting for owned socket frames: the consumer's position it
    /// sits at and its stamp. While both hold, [`front`](Self::front) answers from these two
    /// words instead of copying the record out again for every socket frame delivered before
    /// it (a batch fed behind a record sent alone delivers thousands).
    blocked: Option<(u64, u64)>,
    /// A look at `head` was asked for and not made yet (see
    /// [`front_looking`](Self::front_looking)): it is kept until made, even while the answer
    /// comes from records already seen.
    must_look: bool,
}

impl RxRing {
    pub(crate) fn new(share: RingShare) -> Self {
        let ring = share.ring(share.rx_dir());
        Self {
            share,
            ring,
            scratch: Vec::new(),
            front: None,
            seen_head: 0,
            blocked: None,
            must_look: true,
        }
    }

    fn word(&self, word: usize) -> &AtomicU64 {
        self.share.u64(self.share.rx_dir(), word)
    }

    fn parked_word(&self) -> &AtomicU32 {
        self.share.u32(self.share.rx_dir(), PARKED)
    }

    fn delivered(&self) -> u64 {
        self.word(DELIVERED).load(Ordering::Relaxed)
    }

    /// The record at the front of the ring if it may be delivered now (every owned socket
    /// frame sent before it has been), its payload in [`scratch`](Self::scratch).
    ///
    /// # Errors
    /// When the ring is corrupt.
    pub(crate) fn front(&mut self) -> Result<Option<Record>, RingError> {
        self.front_looking(true)
    }

    /// [`front`](Self::front), reading the producer's `head` for new records only when `look`
    /// (or when records seen before are still there). A receiver needs to look only when it has
    /// nothing buffered and after each read of the socket: a record that must come before a
    /// socket frame was published before that frame was written (the sender publishes before
    /// every write), so a read that returned any of the frame's bytes is followed by a look
    /// that finds the record; without new reads, the frames already buffered were all written
    /// before any record not seen yet was published, and come first. So a batch of socket
    /// frames does not read the producer's line per frame.
    ///
    /// # Errors
    /// When the ring is corrupt.
    pub(crate) fn front_looking(&mut self, look: bool) -> Result<Option<Record>, RingError> {
        self.must_look |= look;
        if let Some(front) = self.front {
            return Ok(Some(front));
        }
        if let Some((at, stamp)) = self.blocked {
            // The same record (nobody took it: the position is unchanged) still waits.
            if self.ring.taken() == at && stamp > self.delivered() {
                return Ok(None);
            }
            self.blocked = None;
        }
        let taken = self.ring.taken();
        if self.seen_head <= taken {
            if !self.must_look {
                return Ok(None);
            }
            // Everything seen is taken (here, or by another copy of this end): look for more,
            // the only read of the producer's line.
            self.must_look = false;
            self.seen_head = self.ring.published();
            if self.seen_head == taken {
                return Ok(None);
            }
        }
        match self.ring.peek_upto(self.seen_head, &mut self.scratch)? {
            Some(record) if record.tag <= self.delivered() => {
                self.front = Some(record);
                Ok(Some(record))
            }
            Some(record) => {
                // Its position after `peek_upto`, which passes over a wrap marker.
                self.blocked = Some((self.ring.taken(), record.tag));
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Takes the record [`front`](Self::front) returned.
    pub(crate) fn consume(&mut self) {
        if let Some(record) = self.front.take() {
            self.ring.consume(record);
        }
    }

    /// An owned socket frame was delivered.
    pub(crate) fn owned_delivered(&self) {
        self.owned_delivered_n(1);
    }

    /// `n` owned socket frames were delivered.
    pub(crate) fn owned_delivered_n(&self, n: u64) {
        let word = self.word(DELIVERED);
        word.store(word.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// How many owned socket frames already buffered may be delivered one after another before
    /// a record of the ring can be due (`u64::MAX`: no record is waiting), or `None` when one
    /// may be due now or a look at the ring is owed: then [`front_looking`] decides. Buffered
    /// frames need no look of their own (see [`front_looking`]), so a run of them pays for the
    /// ring once.
    ///
    /// [`front_looking`]: Self::front_looking
    pub(crate) fn owned_before_record(&self) -> Option<u64> {
        if self.front.is_some() || self.must_look {
            return None;
        }
        let taken = self.ring.taken();
        if self.seen_head <= taken {
            return Some(u64::MAX);
        }
        match self.blocked {
            Some((at, stamp)) if at == taken => {
                stamp.checked_sub(self.delivered()).filter(|&k| k > 0)
            }
            _ => None,
        }
    }

    /// Whether something is on its way that a spin should stop for: a record in the ring, or
    /// an owned socket frame accepted and not delivered yet. Loads only.
    pub(crate) fn news(&self) -> (bool, bool) {
        let record = self.ring.has_record();
        let owned = self.word(OWNED_SENT).load(Ordering::Acquire) > self.delivered();
        (record, owned)
    }

    /// Whether the sender may still write the ring (else, once it is drained, the channel is
    /// a plain socket channel).
    pub(crate) fn ring_on(&self) -> bool {
        self.share
            .u32(self.share.rx_dir(), MODE)
            .load(Ordering::Relaxed)
            == RING
            || self.ring.has_record()
    }

    /// Where the sender runs, for a spin that reads the ring (`None` once the ring is off and
    /// drained: the channel is a plain socket channel then).
    pub(crate) fn cue(&self) -> Option<CpuCue> {
        self.ring_on().then(|| CpuCue(self.share.clone()))
    }

    /// Says the receiver is about to park; returns whether a deliverable record arrived
    /// meanwhile (then it must not park). See [`TxRing::wake_due`] for the handshake.
    ///
    /// # Errors
    /// When the ring is corrupt.
    pub(crate) fn park(&mut self) -> Result<bool, RingError> {
        self.parked_word().store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.front().map(|f| f.is_some())
    }

    /// No longer parked.
    pub(crate) fn unpark(&self) {
        let parked = self.parked_word();
        if parked.load(Ordering::Relaxed) != 0 {
            parked.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn share(&self) -> &RingShare {
        &self.share
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // Look parked: the sender's next record then comes with a wake-up frame through the
        // socket, whose write fails once every copy of this end is closed, so a sender learns
        // that its receiver is gone as it did before the ring.
        self.parked_word().store(1, Ordering::Relaxed);
    }
}

/// The sender's CPU as it last published, the "peer's CPU" cue of the spin policy
/// (`wait::spin`): a spin for the ring busy-reads while the sender runs on another CPU.
pub(crate) struct CpuCue(RingShare);

impl CpuCue {
    /// Whether the sender last published from another CPU (or nobody knows where it runs).
    pub(crate) fn peer_apart(&self) -> bool {
        let peer = self.0.u64(self.0.rx_dir(), TX_CPU).load(Ordering::Relaxed);
        peer != rustix::thread::sched_getcpu() as u64 + 1
    }
}

/// One end of a channel as it travels or is built: its socket, and for an end made as one of a
/// pair by [`pair`](super::pair), the pair's shared region (which end it is, and for a sender
/// the token of this copy).
///
/// Serializes as the socket's descriptor beside the region's, so an end sent to another process
/// keeps its fast path there.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChannelEnd {
    pub(crate) fd: SharedFd,
    pub(crate) ring: Option<RingWire>,
}

/// The shared region of a [`ChannelEnd`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RingWire {
    region: SharedRegion,
    side: u8,
    token: u64,
}

impl ChannelEnd {
    /// An end over a bare socket: no shared ring, every frame goes through the socket.
    pub fn from_fd(fd: SharedFd) -> Self {
        Self { fd, ring: None }
    }

    /// The socket.
    pub fn shared_fd(&self) -> &SharedFd {
        &self.fd
    }

    /// Whether the end has a shared ring.
    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    pub(crate) fn with_ring(fd: SharedFd, share: RingShare, token: u64) -> Self {
        Self {
            fd,
            ring: Some(RingWire {
                region: share.region,
                side: share.side,
                token,
            }),
        }
    }

    /// The share and token, checked (a region from another process may be anything).
    pub(crate) fn take_ring(&mut self) -> io::Result<Option<(RingShare, u64)>> {
        let Some(wire) = self.ring.take() else {
            return Ok(None);
        };
        if wire.side > 1 || wire.region.len() < REGION_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "channel ring region of {} bytes for end {} (need {REGION_LEN} bytes, end 0 or 1)",
                    wire.region.len(),
                    wire.side
                ),
            ));
        }
        Ok(Some((
            RingShare {
                region: wire.region,
                side: wire.side,
            },
            wire.token,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_wait_for_the_owned_socket_frames_sent_before_them() {
        let (a, b) = RingShare::pair().unwrap();
        let mut tx = TxRing::new(a, new_token());
        let mut rx = RxRing::new(b);
        assert!(tx.try_write(b"first"));
        assert!(tx.tag_socket_frame());
        assert!(tx.try_write(b"after the socket frame"));
        assert_eq!(rx.front().unwrap(), None, "nothing published yet");
        tx.publish();
        assert_eq!(rx.front().unwrap().map(|r| r.len), Some(5));
        rx.consume();
        assert_eq!(rx.front().unwrap(), None, "waits for the socket frame");
        assert_eq!(rx.news(), (true, true));
        rx.owned_delivered();
        assert!(rx.front().unwrap().is_some());
        assert_eq!(&rx.scratch[..], b"after the socket frame");
    }

    #[test]
    fn a_record_behind_many_socket_frames_is_looked_at_once_and_delivered_in_turn() {
        let (a, b) = RingShare::pair().unwrap();
        let mut tx = TxRing::new(a, new_token());
        let mut rx = RxRing::new(b);
        for _ in 0..50 {
            assert!(tx.tag_socket_frame());
        }
        assert!(tx.try_write(b"after fifty"));
        tx.publish();
        assert_eq!(rx.front().unwrap(), None, "waits for fifty socket frames");
        // Not copied out again while it waits: the scratch keeps what we put there.
        rx.scratch.clear();
        rx.scratch.extend_from_slice(b"untouched");
        for i in 0..50 {
            assert_eq!(
                rx.front().unwrap(),
                None,
                "socket frame {i} not delivered yet"
            );
            assert_eq!(&rx.scratch[..], b"untouched");
            rx.owned_delivered();
        }
        assert_eq!(rx.front().unwrap().map(|r| r.len), Some(11));
        assert_eq!(&rx.scratch[..], b"after fifty");
        rx.consume();
        // The next record waits behind one more socket frame: a new position, a new look.
        assert!(tx.tag_socket_frame());
        assert!(tx.try_write(b"next"));
        tx.publish();
        assert_eq!(rx.front().unwrap(), None);
        rx.owned_delivered();
        assert_eq!(rx.front().unwrap().map(|r| r.len), Some(4));
        assert_eq!(&rx.scratch[..], b"next");
    }

    #[test]
    fn a_second_live_copy_turns_the_ring_off() {
        let (a, b) = RingShare::pair().unwrap();
        let mut first = TxRing::new(a.clone(), new_token());
        let mut second = TxRing::new(a, new_token());
        assert!(first.try_write(b"1"));
        assert!(!second.try_write(b"2"), "the first copy owns the ring");
        assert!(!first.try_write(b"3"), "the ring is off for the direction");
        assert!(
            !first.tag_socket_frame(),
            "socket frames are plain from now on"
        );
        let mut rx = RxRing::new(b);
        assert!(rx.ring_on(), "until the record is taken");
        assert!(
            rx.front().unwrap().is_some(),
            "published as the ring went off"
        );
        rx.consume();
        assert!(!rx.ring_on());
    }

    #[test]
    fn ownership_moves_with_a_copy_and_comes_back_on_drop() {
        let (a, _b) = RingShare::pair().unwrap();
        let mut original = TxRing::new(a, new_token());
        assert!(original.try_write(b"1"));
        let (share, token) = original.hand_off();
        let mut copy = TxRing::new(share, token);
        assert!(copy.try_write(b"2"), "the copy owns the ring");
        drop(copy);
        assert!(original.try_write(b"3"), "free again: claimed");
    }

    #[test]
    fn a_copy_that_handed_the_ring_on_never_publishes_over_the_new_owner() {
        let (a, b) = RingShare::pair().unwrap();
        let mut original = TxRing::new(a, new_token());
        let mut rx = RxRing::new(b);
        assert!(original.try_write(b"1"));
        let (share, token) = original.hand_off();
        let mut copy = TxRing::new(share, token);
        assert!(copy.try_write(b"2"));
        assert!(!copy.wake_due());
        // The original goes away after the copy published: its stale head must not win.
        drop(original);
        for want in [&b"1"[..], b"2"] {
            assert!(rx.front().unwrap().is_some());
            assert_eq!(&rx.scratch[..], want);
            rx.consume();
        }
    }

    /// A measurement, not a check (run it with `--ignored --nocapture` in release): round
    /// trips of a 64-byte frame through a pair's ring between two threads, each on a
    /// current-thread runtime with the async API (as the `pipe_pingpong_64B` bench row), in
    /// windows of 200; prints the fastest window and some quantiles in ns per round trip. On a
    /// loaded machine compare builds by the fastest windows (windows nobody preempted), not by
    /// the median. `RING_PINGPONG_PIN=1` puts the threads on CPUs 0 and 1.
    #[test]
    #[ignore = "a measurement: prints ns per round trip"]
    fn ring_pingpong_64b() {
        use crate::transport::channel::{RawReceiver, RawSender, pair, split_end};
        use std::time::{Duration, Instant};

        const WINDOW: u32 = 200;
        const WINDOWS: usize = 400;
        let pin = std::env::var_os("RING_PINGPONG_PIN").is_some_and(|v| v == "1");
        let pin_to = move |cpu: usize| {
            if pin {
                let mut set = rustix::thread::CpuSet::new();
                set.set(cpu);
                rustix::thread::sched_setaffinity(None, &set).unwrap();
            }
        };
        async fn send(tx: &mut RawSender, payload: &[u8]) {
            tx.push(|buf| {
                buf.extend_from_slice(payload);
                Ok(Vec::new())
            })
            .unwrap();
            std::future::poll_fn(|cx| tx.poll_flush(cx)).await.unwrap();
        }
        async fn recv(rx: &mut RawReceiver) -> usize {
            let receiving = std::future::poll_fn(|cx| rx.poll_recv_with(cx, |b, _| b.len()));
            tokio::time::timeout(Duration::from_secs(10), receiving)
                .await
                .expect("no frame within 10 s")
                .unwrap()
                .expect("end-of-stream instead of a frame")
        }
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let (a, b) = pair().unwrap();
        let echo = std::thread::spawn(move || {
            pin_to(1);
            runtime().block_on(async {
                let (mut tx, mut rx) = split_end(b).unwrap();
                let payload = [7u8; 64];
                while recv(&mut rx).await != 0 {
                    send(&mut tx, &payload).await;
                }
            });
        });
        pin_to(0);
        let mut windows = runtime().block_on(async {
            let (mut tx, mut rx) = split_end(a).unwrap();
            let payload = [7u8; 64];
            let mut windows = Vec::with_capacity(WINDOWS);
            for w in 0..WINDOWS + 10 {
                let t0 = Instant::now();
                for _ in 0..WINDOW {
                    send(&mut tx, &payload).await;
                    assert_eq!(recv(&mut rx).await, 64);
                }
                if w >= 10 {
                    windows.push(t0.elapsed().as_nanos() as f64 / f64::from(WINDOW));
                }
            }
            send(&mut tx, &[]).await;
            windows
        });
        echo.join().unwrap();
        windows.sort_by(f64::total_cmp);
        let q = |f: f64| windows[(f * (windows.len() - 1) as f64) as usize];
        println!(
            "ring ping-pong 64 B, ns per round trip over windows of {WINDOW}: min {:.0} q10 {:.0} q25 {:.0} median {:.0}",
            q(0.0),
            q(0.1),
            q(0.25),
            q(0.5)
        );
    }

    #[test]
    fn a_parked_receiver_is_woken_once() {
        let (a, b) = RingShare::pair().unwrap();
        let mut tx = TxRing::new(a, new_token());
        let mut rx = RxRing::new(b);
        assert!(!rx.park().unwrap());
        assert!(tx.try_write(b"x"));
        assert!(tx.wake_due());
        assert!(!tx.wake_due());
        assert!(tx.try_write(b"y"));
        assert!(!tx.wake_due(), "nobody parked");
        assert!(rx.park().unwrap(), "a record is there: do not park");
    }
}
