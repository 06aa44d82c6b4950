//! The shared-memory ring under [`Queue`](crate::Queue): fixed-size message slots in a memfd
//! mapped by every process, moved through with atomics alone (no system call per message).
//!
//! A bounded MPMC ring in the style of Vyukov's, changed so that a process killed at any point
//! cannot wedge it:
//!
//! - Every slot has one 64-bit state word: the *lap* it is in (its position divided by the
//!   number of slots), a phase (`EMPTY`, `WRITING`, `FULL`, `READING`) and, while `WRITING` or
//!   `READING`, who is doing it (pid and low start-time bits, so a recycled pid is not mistaken
//!   for the writer).
//! - A producer claims the slot at the tail by one compare-and-swap on that state word
//!   (`EMPTY` of the tail's lap to `WRITING` by itself), copies the message in, and publishes it
//!   with one store (`FULL`). A consumer claims the slot at the head the same way (`FULL` to
//!   `READING`), copies the message out, and frees the slot for the next lap with one store.
//! - `head` and `tail` are only hints: whoever sees the slot at a hint already claimed moves the
//!   hint on. So a process that dies between claiming a slot and moving the hint stops no one.
//! - A slot left `WRITING` or `READING` by a dead process is found by a waiter (the consumer
//!   waiting behind it, or a producer finding the ring full) which checks the holder's liveness
//!   and frees the slot: a message half written is dropped; a message half read was taken.
//!
//! A slot carries either a whole message (up to [`SLOT_PAYLOAD`] bytes), a *token* that marks
//! the place of a message sent through the queue's socket (messages with descriptors, and
//! larger ones while the socket has room), or a *log token*: where a message stored in the
//! queue's log lies; see `engine`.
//!
//! # Sparse rings
//! An unbounded queue has a ring of [`MAX_SLOTS`] slots (8 GiB of address space), far more
//! than it ever holds, in a memfd that takes memory only for the pages written. As consumers
//! move on, they give the memory behind them back (`fallocate(PUNCH_HOLE)`, 64 KiB at a time),
//! so the ring costs about its backlog, not its size. A punched page reads as zeroes, so a zero
//! state word means "empty, free for whatever lap comes" (for a fresh ring that is its first
//! lap anyway):
//!
//! - Chunks are punched one behind: the process that frees the last slot of a chunk punches
//!   the chunk before it, whose slots were all taken earlier, once the head has passed it. It
//!   first marks each of them held by itself as a reader of their old lap (a compare-and-swap
//!   from "free for the next lap", so a slot still being read, or already reused, makes it
//!   give up and leave the chunk as it is). While held, a producer that wrapped around to the
//!   chunk waits as for a full ring, and a consumer as for a slow reader; if the puncher dies
//!   there, they free the slots as from any dead reader.
//! - Fresh pages would cost a page fault each (in every process that touches them): the
//!   producer that claims the first slot of a chunk faults the next chunk in with one
//!   `madvise(MADV_POPULATE_WRITE)`. With that, an unbounded queue streams small messages as
//!   fast as a bounded one (within the noise of interleaved benchmark runs; without it, about
//!   a quarter slower).
//! - A producer that claims a zero word checks that the head has not passed its position: a
//!   producer that read the tail, stalled while the ring moved on and its chunk was punched,
//!   would otherwise claim a position already behind every consumer (the ABA that laps
//!   prevent in a dense ring). It gives such a slot back and claims again.

use std::sync::atomic::{AtomicU64, Ordering};

use multiproc_core::proc::identity;
use multiproc_core::shm::SharedRegion;

/// Bytes of one slot.
const SLOT_LEN: usize = 128;
/// Largest message a slot holds: the slot less its 16-byte header.
pub(crate) const SLOT_PAYLOAD: usize = SLOT_LEN - 16;
const PAYLOAD_WORDS: usize = SLOT_PAYLOAD / 8;

// Slot layout.
const SLOT_STATE: usize = 0; // u64
const SLOT_LEN_FIELD: usize = 8; // u32: payload bytes
const SLOT_KIND: usize = 12; // u32
const SLOT_DATA: usize = 16;

// Ring layout from its base offset: the hints on their own cache lines, then the slots.
const TAIL: usize = 0;
const HEAD: usize = 64;
const SLOTS: usize = 128;

/// Most slots a ring may have: an unbounded queue's sparse ring.
pub(crate) const MAX_SLOTS: u64 = 1 << 26;
/// Rings of at least this many slots are sparse (see the module docs).
const SPARSE_SLOTS: u64 = 1 << 20;
/// A memory page: a sparse ring's slots start on one.
pub(crate) const PAGE: usize = 4096;
/// Bytes a sparse ring gives back at a time: 16 pages, so that the system call and the TLB
/// flushes it costs (every process mapping the ring) are paid once per 512 messages.
const CHUNK: usize = 16 * PAGE;
const SLOTS_PER_CHUNK: u64 = (CHUNK / SLOT_LEN) as u64;

// The state word: lap (24 bits) | phase (2) | holder pid (22) | holder start time, low 16 bits.
const LAP_SHIFT: u32 = 40;
const LAP_MASK: u64 = (1 << 24) - 1;
const PHASE_SHIFT: u32 = 38;
const HOLDER_MASK: u64 = (1 << 38) - 1;

const EMPTY: u64 = 0;
const WRITING: u64 = 1;
const FULL: u64 = 2;
const READING: u64 = 3;

/// What a published slot carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A whole message.
    Message = 1,
    /// The place of a message sent through the socket.
    Token = 2,
    /// Where a message stored in the queue's log lies.
    Log = 3,
}

/// The outcome of [`Ring::take`].
#[derive(Debug)]
pub(crate) enum Take {
    /// The message (or log token) at the head, now off the ring.
    Message(Kind, Vec<u8>),
    /// A token at the head, still on the ring: take it with [`Ring::claim_token`].
    Token(u64),
    /// Nothing at the head.
    Empty,
    /// The head slot is being written (or its last reader has not let go): a message is coming
    /// unless its holder died, which [`Ring::repair`] checks.
    Busy(u64),
    /// The head slot held a message with an impossible length (the shared memory was written by
    /// something else than a queue); it was dropped.
    Corrupt(u32),
}

/// Why a slot's holder was found dead by [`Ring::repair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repaired {
    /// A producer died while writing: its message never existed.
    Writer,
    /// A consumer died while reading: it had taken the message.
    Reader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct State {
    lap: u64,
    phase: u64,
    holder: u64,
}

impl State {
    /// The state of a slot whose word is `word`, as position `lap` sees it: a zero word (a fresh
    /// or punched page) is an empty slot of any lap.
    fn seen_from(word: u64, lap: u64) -> Self {
        if word == 0 {
            return Self {
                lap,
                phase: EMPTY,
                holder: 0,
            };
        }
        Self::unpack(word)
    }

    fn unpack(word: u64) -> Self {
        Self {
            lap: word >> LAP_SHIFT,
            phase: (word >> PHASE_SHIFT) & 3,
            holder: word & HOLDER_MASK,
        }
    }

    fn pack(lap: u64, phase: u64, holder: u64) -> u64 {
        ((lap & LAP_MASK) << LAP_SHIFT) | (phase << PHASE_SHIFT) | (holder & HOLDER_MASK)
    }
}

/// How a slot's lap compares with the lap a position expects.
#[derive(Debug, PartialEq, Eq)]
enum Lap {
    Same,
    /// The slot is already in a later lap: the position was used and freed (a stale hint).
    Ahead,
    /// The slot is still in an earlier lap: the position's turn has not come.
    Behind,
}

fn compare_laps(slot: u64, expected: u64) -> Lap {
    match slot.wrapping_sub(expected) & LAP_MASK {
        0 => Lap::Same,
        d if d < LAP_MASK / 2 => Lap::Ahead,
        _ => Lap::Behind,
    }
}

/// This process as a slot holder: pid and the low 16 bits of its start time.
fn me() -> u64 {
    let id = identity::current();
    (u64::from(identity::pid_of(id)) << 16) | (id & 0xffff)
}

fn holder_alive(holder: u64) -> bool {
    let pid = (holder >> 16) as u32;
    identity::is_running(pid, holder as u32 & 0xffff, 0xffff)
}

/// A ring of `slots` message slots at `base` in a shared region.
#[derive(Debug)]
pub(crate) struct Ring {
    region: SharedRegion,
    base: usize,
    slots: u64,
    sparse: bool,
    me: u64,
}

impl Ring {
    /// Bytes the ring needs from its base offset.
    pub(crate) fn bytes_needed(slots: u64) -> usize {
        SLOTS + SLOT_LEN * slots as usize
    }

    /// The ring at `base` in `region`; the region must be large enough (checked) and zeroed or
    /// already a ring of the same number of slots. A ring of [`SPARSE_SLOTS`] or more is sparse
    /// and needs its slots on page boundaries (`base + 128` a multiple of [`PAGE`]).
    pub(crate) fn new(region: SharedRegion, base: usize, slots: u64) -> Result<Self, String> {
        if slots == 0 || slots > MAX_SLOTS {
            return Err(format!("a queue ring of {slots} slots"));
        }
        let sparse = slots >= SPARSE_SLOTS;
        if sparse
            && (!(base + SLOTS).is_multiple_of(PAGE) || !slots.is_multiple_of(SLOTS_PER_CHUNK))
        {
            return Err(format!("a sparse queue ring of {slots} slots at {base}"));
        }
        if !base.is_multiple_of(64) || region.len() < base + Self::bytes_needed(slots) {
            return Err(format!(
                "queue ring of {slots} slots does not fit a shared region of {} bytes",
                region.len()
            ));
        }
        Ok(Self {
            region,
            base,
            slots,
            sparse,
            me: me(),
        })
    }

    pub(crate) fn slots(&self) -> u64 {
        self.slots
    }

    fn tail(&self) -> &AtomicU64 {
        self.region.atomic_u64(self.base + TAIL)
    }

    fn head(&self) -> &AtomicU64 {
        self.region.atomic_u64(self.base + HEAD)
    }

    /// The slot of position `pos` (its offset) and the lap `pos` expects it in.
    #[inline]
    fn locate(&self, pos: u64) -> (usize, u64) {
        let index = (pos % self.slots) as usize;
        (
            self.base + SLOTS + index * SLOT_LEN,
            (pos / self.slots) & LAP_MASK,
        )
    }

    fn state(&self, slot: usize) -> &AtomicU64 {
        self.region.atomic_u64(slot + SLOT_STATE)
    }

    /// Moves a hint from `pos` to `pos + 1` unless someone already moved it.
    fn advance(hint: &AtomicU64, pos: u64) {
        let _ = hint.compare_exchange(pos, pos + 1, Ordering::SeqCst, Ordering::Relaxed);
    }

    /// Messages on the ring, counting slots being written or read (approximate while others
    /// put and get: the hints may trail by a message).
    pub(crate) fn len(&self) -> u64 {
        let tail = self.tail().load(Ordering::SeqCst);
        let head = self.head().load(Ordering::SeqCst);
        tail.saturating_sub(head).min(self.slots)
    }

    // ---- producers ----

    /// Claims the slot at the tail for writing; `None` when the ring is full.
    pub(crate) fn claim(&self) -> Option<u64> {
        loop {
            let pos = self.tail().load(Ordering::SeqCst);
            let (slot, lap) = self.locate(pos);
            let word = self.state(slot).load(Ordering::SeqCst);
            let state = State::seen_from(word, lap);
            match compare_laps(state.lap, lap) {
                Lap::Same if state.phase == EMPTY => {
                    let claimed = State::pack(lap, WRITING, self.me);
                    if self
                        .state(slot)
                        .compare_exchange(word, claimed, Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok()
                    {
                        // A zero word may be a punched page this position's turn has passed
                        // (see the module docs): then it is no place for a message.
                        if word == 0 && self.head().load(Ordering::SeqCst) > pos {
                            self.state(slot).store(0, Ordering::SeqCst);
                            Self::advance(self.tail(), pos);
                            continue;
                        }
                        Self::advance(self.tail(), pos);
                        if self.sparse && pos.is_multiple_of(SLOTS_PER_CHUNK) {
                            // The first of a chunk: fault the next chunk in now, in one call.
                            let (next, _) = self.locate(pos + SLOTS_PER_CHUNK);
                            self.region.populate(next, CHUNK);
                        }
                        return Some(pos);
                    }
                }
                Lap::Same | Lap::Ahead => Self::advance(self.tail(), pos),
                Lap::Behind => return None,
            }
        }
    }

    /// True when the tail slot is free for this lap (or the tail moved on): what a putter
    /// waiting for room checks, two loads and no write.
    pub(crate) fn has_room(&self) -> bool {
        self.hint_at(self.tail(), EMPTY)
    }

    /// True when the slot at `hint` is in `phase` for the hint's lap, or already in a later
    /// lap (the hint is stale, so things moved on). Two loads, no write.
    fn hint_at(&self, hint: &AtomicU64, phase: u64) -> bool {
        let (slot, lap) = self.locate(hint.load(Ordering::Acquire));
        let state = State::seen_from(self.state(slot).load(Ordering::Acquire), lap);
        match compare_laps(state.lap, lap) {
            Lap::Same => state.phase == phase,
            Lap::Ahead => true,
            Lap::Behind => false,
        }
    }

    /// Fills the slot claimed at `pos` and makes it visible to consumers.
    pub(crate) fn publish(&self, pos: u64, kind: Kind, payload: &[u8]) {
        assert!(
            payload.len() <= SLOT_PAYLOAD,
            "message too large for a slot"
        );
        let (slot, lap) = self.locate(pos);
        let mut words = [0u64; PAYLOAD_WORDS];
        for (word, chunk) in words.iter_mut().zip(payload.chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            *word = u64::from_le_bytes(bytes);
        }
        let used = payload.len().div_ceil(8);
        self.region.write_slice(slot + SLOT_DATA, &words[..used]);
        self.region
            .write(slot + SLOT_LEN_FIELD, payload.len() as u32);
        self.region.write(slot + SLOT_KIND, kind as u32);
        self.state(slot)
            .store(State::pack(lap, FULL, 0), Ordering::SeqCst);
    }

    /// Gives back the slot claimed at `pos` without publishing anything.
    pub(crate) fn abandon(&self, pos: u64) {
        self.free(pos);
    }

    // ---- consumers ----

    /// Takes the message at the head, if there is one.
    pub(crate) fn take(&self) -> Take {
        loop {
            let pos = self.head().load(Ordering::SeqCst);
            let (slot, lap) = self.locate(pos);
            let word = self.state(slot).load(Ordering::SeqCst);
            let state = State::seen_from(word, lap);
            match compare_laps(state.lap, lap) {
                Lap::Same => match state.phase {
                    EMPTY => return Take::Empty,
                    WRITING => return Take::Busy(pos),
                    READING => Self::advance(self.head(), pos),
                    _ => {
                        let kind = match self.region.read::<u32>(slot + SLOT_KIND) {
                            k if k == Kind::Token as u32 => return Take::Token(pos),
                            k if k == Kind::Log as u32 => Kind::Log,
                            _ => Kind::Message,
                        };
                        let reading = State::pack(lap, READING, self.me);
                        if self
                            .state(slot)
                            .compare_exchange(word, reading, Ordering::SeqCst, Ordering::Relaxed)
                            .is_err()
                        {
                            continue;
                        }
                        Self::advance(self.head(), pos);
                        let len: u32 = self.region.read(slot + SLOT_LEN_FIELD);
                        if len as usize > SLOT_PAYLOAD {
                            self.free(pos);
                            return Take::Corrupt(len);
                        }
                        let bytes = self.read_payload(slot, len as usize);
                        self.free(pos);
                        return Take::Message(kind, bytes);
                    }
                },
                Lap::Ahead => Self::advance(self.head(), pos),
                // The previous lap's reader of this slot has not let go yet.
                Lap::Behind => return Take::Busy(pos),
            }
        }
    }

    fn read_payload(&self, slot: usize, len: usize) -> Vec<u8> {
        let mut words = [0u64; PAYLOAD_WORDS];
        let used = len.div_ceil(8);
        self.region.read_slice(slot + SLOT_DATA, &mut words[..used]);
        let mut bytes = Vec::with_capacity(len);
        for word in &words[..used] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.truncate(len);
        bytes
    }

    /// True when the head slot holds something to take (or the head moved on): two loads and
    /// no write. Getters spin on `take` itself (as cheap on an empty ring), so only the tests
    /// look at the head this way.
    #[cfg(test)]
    pub(crate) fn head_ready(&self) -> bool {
        self.hint_at(self.head(), FULL)
    }

    /// True while the token at `pos` (found by [`take`](Self::take)) is still there, unclaimed.
    pub(crate) fn has_token(&self, pos: u64) -> bool {
        let (slot, lap) = self.locate(pos);
        self.state(slot).load(Ordering::SeqCst) == State::pack(lap, FULL, 0)
            && self.region.read::<u32>(slot + SLOT_KIND) == Kind::Token as u32
    }

    /// Claims the token at `pos` (found by [`take`](Self::take)); `false` when it is no longer
    /// there (another consumer took it).
    pub(crate) fn claim_token(&self, pos: u64) -> bool {
        let (slot, lap) = self.locate(pos);
        let full = State::pack(lap, FULL, 0);
        if self.region.read::<u32>(slot + SLOT_KIND) != Kind::Token as u32 {
            return false;
        }
        let reading = State::pack(lap, READING, self.me);
        if self
            .state(slot)
            .compare_exchange(full, reading, Ordering::SeqCst, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        Self::advance(self.head(), pos);
        true
    }

    /// Frees the slot at `pos` (claimed by this process) for the next lap; in a sparse ring,
    /// the consumer freeing the last slot of a chunk then gives the chunk before it back.
    pub(crate) fn free(&self, pos: u64) {
        let (slot, lap) = self.locate(pos);
        self.state(slot)
            .store(State::pack(lap + 1, EMPTY, 0), Ordering::SeqCst);
        if self.sparse
            && pos % SLOTS_PER_CHUNK == SLOTS_PER_CHUNK - 1
            && pos + 1 >= 2 * SLOTS_PER_CHUNK
        {
            self.punch_chunk(pos + 1 - 2 * SLOTS_PER_CHUNK);
        }
    }

    /// Gives back the chunk of the slots of positions `first..first + SLOTS_PER_CHUNK` (all taken
    /// and freed already) if every one of them is still free; `true` if it did.
    fn punch_chunk(&self, first: u64) -> bool {
        let positions = first..first + SLOTS_PER_CHUNK;
        // Only behind the head: a zero word at the head reads as "nothing yet".
        if self.head().load(Ordering::SeqCst) < positions.end {
            return false;
        }
        let mut held = 0;
        for pos in positions.clone() {
            let (slot, lap) = self.locate(pos);
            let free = State::pack(lap + 1, EMPTY, 0);
            // Held as by a reader of the old lap: a producer of the next lap waits, a consumer
            // waits, a dead puncher's slots are repaired like a dead reader's.
            let hold = State::pack(lap, READING, self.me);
            if self
                .state(slot)
                .compare_exchange(free, hold, Ordering::SeqCst, Ordering::Relaxed)
                .is_err()
            {
                break;
            }
            held += 1;
        }
        let (start, _) = self.locate(first);
        let punched = held == SLOTS_PER_CHUNK && self.region.punch_hole(start, CHUNK).is_ok();
        if !punched {
            // Give the held slots back as they were.
            for pos in positions.take(held as usize) {
                let (slot, lap) = self.locate(pos);
                self.state(slot)
                    .store(State::pack(lap + 1, EMPTY, 0), Ordering::SeqCst);
            }
        }
        punched
    }

    // ---- dead holders ----

    /// Frees the slot of position `pos` if a dead process holds it (writing or reading, in
    /// whatever lap), and says which.
    pub(crate) fn repair(&self, pos: u64) -> Option<Repaired> {
        let (slot, _) = self.locate(pos);
        let word = self.state(slot).load(Ordering::SeqCst);
        let state = State::unpack(word);
        let repaired = match state.phase {
            WRITING => Repaired::Writer,
            READING => Repaired::Reader,
            _ => return None,
        };
        if state.holder == self.me || holder_alive(state.holder) {
            return None;
        }
        let freed = State::pack(state.lap + 1, EMPTY, 0);
        self.state(slot)
            .compare_exchange(word, freed, Ordering::SeqCst, Ordering::Relaxed)
            .ok()
            .map(|_| {
                multiproc_core::trace_warn!(pos, ?repaired, "queue slot freed: its holder died");
                repaired
            })
    }

    /// [`repair`](Self::repair) of the slot at the tail: what a producer finding the ring full
    /// checks.
    pub(crate) fn repair_tail(&self) -> Option<Repaired> {
        self.repair(self.tail().load(Ordering::SeqCst))
    }
}

#[cfg(test)]
impl Ring {
    /// Makes the slot claimed at `pos` look held by a process that is not running (pid 0x7fff
    /// with a start time no process has), as if its writer had been killed.
    pub(crate) fn forge_dead_writer(&self, pos: u64) {
        let (slot, lap) = self.locate(pos);
        self.state(slot).store(
            State::pack(lap, WRITING, 0x7fff_0000 | 0x1234),
            Ordering::SeqCst,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn ring(slots: u64) -> Ring {
        let region = SharedRegion::new(64 + Ring::bytes_needed(slots)).unwrap();
        Ring::new(region, 64, slots).unwrap()
    }

    fn put(r: &Ring, bytes: &[u8]) -> bool {
        match r.claim() {
            Some(pos) => {
                r.publish(pos, Kind::Message, bytes);
                true
            }
            None => false,
        }
    }

    fn take(r: &Ring) -> Option<Vec<u8>> {
        match r.take() {
            Take::Message(_, m) => Some(m),
            Take::Empty => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn fifo_across_many_laps() {
        let r = ring(4);
        for lap in 0..100u32 {
            for i in 0..4u32 {
                assert!(put(&r, &(lap * 4 + i).to_le_bytes()));
            }
            assert!(!r.has_room());
            assert!(!put(&r, b"x"), "a ring of 4 holds 4");
            assert_eq!(r.len(), 4);
            for i in 0..4u32 {
                assert_eq!(take(&r).unwrap(), (lap * 4 + i).to_le_bytes());
            }
            assert_eq!(take(&r), None);
            assert!(r.has_room());
        }
    }

    #[test]
    fn payload_lengths_round_trip() {
        let r = ring(2);
        for len in 0..=SLOT_PAYLOAD {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
            assert!(put(&r, &bytes));
            assert_eq!(take(&r).unwrap(), bytes);
        }
    }

    #[test]
    fn a_one_slot_ring_works() {
        let r = ring(1);
        for i in 0..10u8 {
            assert!(put(&r, &[i]));
            assert!(!put(&r, &[i]));
            assert_eq!(take(&r).unwrap(), [i]);
        }
    }

    #[test]
    fn a_slot_being_written_is_busy_and_abandoning_it_skips_it() {
        let r = ring(4);
        let pos = r.claim().unwrap();
        assert!(put(&r, b"after"));
        assert!(matches!(r.take(), Take::Busy(p) if p == pos));
        assert!(!r.head_ready());
        // Our own slot is never "repaired".
        assert_eq!(r.repair(pos), None);
        r.abandon(pos);
        assert!(r.head_ready());
        assert_eq!(take(&r).unwrap(), b"after");
    }

    #[test]
    fn tokens_are_claimed_separately() {
        let r = ring(4);
        let pos = r.claim().unwrap();
        r.publish(pos, Kind::Token, &[]);
        assert!(put(&r, b"m"));
        let Take::Token(p) = r.take() else { panic!() };
        assert_eq!(p, pos);
        assert!(r.claim_token(p));
        assert!(!r.claim_token(p), "a token is taken once");
        r.free(p);
        assert_eq!(take(&r).unwrap(), b"m");
    }

    #[test]
    fn slots_held_by_the_dead_are_freed() {
        let r = ring(2);
        // Forge a writer and a reader that are not running: pid 0 never is.
        let dead = 0x7fff;
        let pos = r.claim().unwrap();
        let (slot, lap) = r.locate(pos);
        r.state(slot)
            .store(State::pack(lap, WRITING, dead), Ordering::SeqCst);
        assert!(matches!(r.take(), Take::Busy(_)));
        assert_eq!(r.repair(pos), Some(Repaired::Writer));
        assert_eq!(take(&r), None);

        assert!(put(&r, b"a"));
        assert!(put(&r, b"b"));
        assert!(!put(&r, b"c"));
        // A consumer died reading "a": the ring is full until its slot is repaired.
        let head = r.head().load(Ordering::SeqCst);
        let (slot, lap) = r.locate(head);
        r.state(slot)
            .store(State::pack(lap, READING, dead), Ordering::SeqCst);
        Ring::advance(r.head(), head);
        assert!(r.claim().is_none());
        assert_eq!(r.repair_tail(), Some(Repaired::Reader));
        assert!(put(&r, b"c"));
        assert_eq!(take(&r).unwrap(), b"b");
        assert_eq!(take(&r).unwrap(), b"c");
    }

    fn sparse_ring() -> Ring {
        let slots = SPARSE_SLOTS;
        let region = SharedRegion::new(PAGE + Ring::bytes_needed(slots) - SLOTS).unwrap();
        let r = Ring::new(region, PAGE - SLOTS, slots).unwrap();
        assert!(r.sparse);
        r
    }

    fn resident(r: &Ring) -> u64 {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let path = format!("/proc/self/fd/{}", r.region.shared_fd().as_raw_fd());
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn a_sparse_ring_gives_pages_back_behind_the_head() {
        let r = sparse_ring();
        for round in 0..4u32 {
            for i in 0..10_000u32 {
                assert!(put(&r, &(round * 10_000 + i).to_le_bytes()));
            }
            assert!(resident(&r) >= 10_000 * SLOT_LEN as u64);
            for i in 0..10_000u32 {
                assert_eq!(take(&r).unwrap(), (round * 10_000 + i).to_le_bytes());
            }
            // The last two chunks (and the hints' page) stay.
            assert!(
                resident(&r) <= (3 * CHUNK + PAGE) as u64,
                "{}",
                resident(&r)
            );
        }
    }

    #[test]
    fn a_stale_producer_never_claims_a_punched_position() {
        let r = sparse_ring();
        let n = 2 * SLOTS_PER_CHUNK + 10;
        for i in 0..n {
            assert!(put(&r, &i.to_le_bytes()));
            assert_eq!(take(&r).unwrap(), i.to_le_bytes());
        }
        // Chunk 0 was punched: its state words read zero again.
        let (slot, _) = r.locate(0);
        assert_eq!(r.state(slot).load(Ordering::SeqCst), 0);
        // A producer that read the tail long ago, as if it had stalled since.
        r.tail().store(0, Ordering::SeqCst);
        let pos = r.claim().unwrap();
        assert_eq!(pos, n, "claimed a position the head had passed");
        r.publish(pos, Kind::Message, b"late");
        assert_eq!(take(&r).unwrap(), b"late");
        assert_eq!(take(&r), None);
    }

    #[test]
    fn a_chunk_being_read_is_not_punched() {
        let r = sparse_ring();
        let n = 2 * SLOTS_PER_CHUNK;
        for i in 0..n {
            assert!(put(&r, &i.to_le_bytes()));
        }
        // A slow consumer still reads position 5 while others take everything else.
        let (slot, lap) = r.locate(5);
        for i in 0..n {
            if i == 5 {
                let word = r.state(slot).load(Ordering::SeqCst);
                let reading = State::pack(lap, READING, r.me);
                r.state(slot)
                    .compare_exchange(word, reading, Ordering::SeqCst, Ordering::SeqCst)
                    .unwrap();
                Ring::advance(r.head(), 5);
                continue;
            }
            assert_eq!(take(&r).unwrap(), i.to_le_bytes());
        }
        // Freeing the last position would have punched chunk 0, but position 5 is still read.
        assert_eq!(
            State::unpack(r.state(slot).load(Ordering::SeqCst)).phase,
            READING
        );
        let (other, _) = r.locate(6);
        assert_ne!(
            r.state(other).load(Ordering::SeqCst),
            0,
            "chunk 0 was kept whole"
        );
        r.free(5);
        assert!(r.punch_chunk(0));
        assert_eq!(r.state(slot).load(Ordering::SeqCst), 0);
    }

    #[test]
    fn laps_compare_across_wrap_around() {
        assert_eq!(compare_laps(5, 5), Lap::Same);
        assert_eq!(compare_laps(6, 5), Lap::Ahead);
        assert_eq!(compare_laps(4, 5), Lap::Behind);
        assert_eq!(compare_laps(0, LAP_MASK), Lap::Ahead);
        assert_eq!(compare_laps(LAP_MASK, 0), Lap::Behind);
    }

    #[test]
    fn threads_hammering_lose_and_duplicate_nothing() {
        let r = std::sync::Arc::new(ring(8));
        let taken = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        // A lost or stuck message fails the test instead of hanging it.
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let producers: Vec<_> = (0..3u32)
            .map(|p| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let msg = [p.to_le_bytes(), i.to_le_bytes()].concat();
                        while !put(&r, &msg) {
                            assert!(Instant::now() < deadline, "producer stuck: ring full");
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let r = r.clone();
                let taken = taken.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut last = [None::<u32>; 3];
                    while taken.load(Ordering::SeqCst) < 60_000 {
                        match r.take() {
                            Take::Message(_, m) => {
                                taken.fetch_add(1, Ordering::SeqCst);
                                let p = u32::from_le_bytes(m[..4].try_into().unwrap());
                                let i = u32::from_le_bytes(m[4..].try_into().unwrap());
                                assert!(last[p as usize].is_none_or(|l| l < i), "out of order");
                                last[p as usize] = Some(i);
                                got.push((p, i));
                            }
                            _ => {
                                assert!(Instant::now() < deadline, "consumer stuck: lost message");
                                std::thread::yield_now();
                            }
                        }
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<_> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 60_000);
    }
}
