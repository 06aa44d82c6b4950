//! The memory a worker shares with its pool: a few control words and a ring of results.
//!
//! The worker appends each result to the ring (one writer) before it starts the next job, and
//! the pool's driver takes them from it (one reader). A result in the ring is durable the moment
//! the worker publishes it: if the worker then dies, the driver still finds it there. Appending
//! costs no system call; the worker writes a small `Nudge` frame to the socket only when the
//! driver said it is parked and waiting for results (the futex pattern, with the socket as the
//! wake-up channel). Results too large for a record, or carrying descriptors, go through the
//! socket instead; both sides keep the worker's order by job id.
//!
//! Every word is accessed atomically. Records are whole 8-byte words, so copying one in or out
//! is a loop of relaxed atomic loads or stores, ordered by the release store of `HEAD` and the
//! acquire load that reads it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use multiproc_core::shm::SharedRegion;

/// Control words sit on cache lines of their own (128 bytes: adjacent-line prefetch), so the
/// words one side writes do not slow down the other side's.
const LINE: usize = 128;
/// The id (plus one) of the job the worker started last. Written by the worker.
const PROGRESS: usize = 0;
/// The position (plus one; zero: none yet) of the task the worker started last within that
/// job, so a worker that dies mid-chunk is blamed on the task it was running. Written by the
/// worker.
const ITEM: usize = PROGRESS + 8;
/// Bytes ever appended to the ring. Written by the worker.
const HEAD: usize = LINE;
/// Bytes ever taken from the ring. Written by the driver.
const TAIL: usize = 2 * LINE;
/// Whether the driver is parked waiting for results (a `Wake` value). Set by the driver, taken
/// by the worker, which then nudges it.
const WAITING: usize = 3 * LINE;
/// Frames the driver has written to the worker's socket (flushed in full). The worker compares
/// it with the frames it has read, to know whether more are on the way without a system call.
const SENT: usize = 4 * LINE;
/// The CPU (plus one; zero: not known yet) the worker was last seen running on, as it started
/// a job or began to wait. Written by the worker.
const WORKER_CPU: usize = 5 * LINE;
/// The same for the driver, as it began to wait for a result. Written by the driver.
const DRIVER_CPU: usize = 6 * LINE;
/// Jobs cancelled after they were sent: bit `seq % JOBS_HELD` for the worker's `seq`-th job
/// (counted from 0 over its life). Set by the driver; cleared by it before it sends the job
/// that next uses the bit; read by the worker as it starts a job, to skip a cancelled one.
const CANCELLED: usize = 7 * LINE;
/// The most jobs a worker holds at once: a cancel bit names exactly one of them.
pub(crate) const JOBS_HELD: usize = 512;
/// The ring starts on a page of its own.
const RING: usize = 4096;
/// Bytes in the ring (room for several of the largest records).
pub(crate) const RING_LEN: usize = 128 << 10;
/// Bytes of the whole shared region.
pub(crate) const REGION_LEN: usize = RING + RING_LEN;
/// Largest record payload; larger results go through the socket. A default-sized chunk of
/// 1,024 eight-byte results (8 KiB in the fixed-width layout) and its header fit.
pub(crate) const MAX_RECORD: usize = 16 << 10;
/// A record header saying "the rest of the ring is unused, go on at its start".
const WRAP: u64 = u64::MAX;

/// The driver is not waiting.
const NOT_WAITING: u32 = 0;
/// The driver is parked: nudge it after the next result.
const WAITING_NOW: u32 = 1;

/// The word in which a worker records the task of its current job that runs
/// ([`Control::item_marker`]).
pub(crate) struct ItemMarker<'a>(&'a AtomicU64);

impl ItemMarker<'_> {
    /// Records that the task at `position` in the current job starts now.
    ///
    /// Relaxed: the driver reads the word only once the worker is dead
    /// ([`Control::running_item`]), and the death, learned through a system call, orders every
    /// store the worker made before it. (Looked up through the region for every task, the word
    /// cost a chain of loads and a bounds check per task.)
    #[inline]
    pub(crate) fn started(&self, position: usize) {
        self.0.store(position as u64 + 1, Ordering::Relaxed);
    }
}

/// The control words and the ring, shared by one worker and its driver.
#[derive(Clone)]
pub(crate) struct Control {
    region: SharedRegion,
}

impl Control {
    /// A fresh region for a new worker.
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            region: SharedRegion::new(REGION_LEN)?,
        })
    }

    /// Wraps a region received from the pool; `None` if it is too small to be one.
    pub(crate) fn from_region(region: SharedRegion) -> Option<Self> {
        (region.len() >= REGION_LEN).then_some(Self { region })
    }

    /// The region, to send to the worker.
    pub(crate) fn region(&self) -> &SharedRegion {
        &self.region
    }

    #[inline]
    fn word(&self, offset: usize) -> &AtomicU64 {
        self.region.atomic_u64(offset)
    }

    fn waiting(&self) -> &AtomicU32 {
        self.region.atomic_u32(WAITING)
    }

    /// Worker: notes the CPU it runs on now (see [`Cpu`]).
    pub(crate) fn note_worker_cpu(&self) -> Cpu {
        let cpu = Cpu::current();
        self.word(WORKER_CPU).store(cpu.0, Ordering::Relaxed);
        cpu
    }

    /// Driver: notes the CPU it runs on now.
    pub(crate) fn note_driver_cpu(&self) -> Cpu {
        let cpu = Cpu::current();
        self.word(DRIVER_CPU).store(cpu.0, Ordering::Relaxed);
        cpu
    }

    /// The CPU the worker was last seen on.
    pub(crate) fn worker_cpu(&self) -> Cpu {
        Cpu(self.word(WORKER_CPU).load(Ordering::Relaxed))
    }

    /// The CPU the driver was last seen on.
    pub(crate) fn driver_cpu(&self) -> Cpu {
        Cpu(self.word(DRIVER_CPU).load(Ordering::Relaxed))
    }

    /// Worker: records that job `id` starts now (none of its tasks yet).
    ///
    /// Sequentially consistent, with [`is_cancelled`](Self::is_cancelled) after it and the
    /// driver's [`set_cancelled`](Self::set_cancelled) then [`last_started`](Self::last_started)
    /// (Dekker's pattern): either the worker sees the job cancelled and skips it, or the driver
    /// sees it started and stops the worker, or both; never neither.
    pub(crate) fn set_started(&self, id: u64) {
        self.word(ITEM).store(0, Ordering::Relaxed);
        self.word(PROGRESS)
            .store(id.wrapping_add(1), Ordering::SeqCst);
    }

    fn cancel_bit(&self, seq: u64) -> (&AtomicU64, u64) {
        let bit = (seq % JOBS_HELD as u64) as usize;
        (self.word(CANCELLED + bit / 64 * 8), 1 << (bit % 64))
    }

    /// Driver: job `seq` is about to be sent, not cancelled.
    pub(crate) fn clear_cancelled(&self, seq: u64) {
        let (word, bit) = self.cancel_bit(seq);
        word.fetch_and(!bit, Ordering::Release);
    }

    /// Driver: job `seq`, sent, was cancelled; the worker skips it unless it started it.
    pub(crate) fn set_cancelled(&self, seq: u64) {
        let (word, bit) = self.cancel_bit(seq);
        word.fetch_or(bit, Ordering::SeqCst);
    }

    /// Worker: whether the driver cancelled job `seq`.
    pub(crate) fn is_cancelled(&self, seq: u64) -> bool {
        let (word, bit) = self.cancel_bit(seq);
        word.load(Ordering::SeqCst) & bit != 0
    }

    /// Worker: where the tasks of the current job record that they start, looked up once per
    /// job rather than once per task.
    pub(crate) fn item_marker(&self) -> ItemMarker<'_> {
        ItemMarker(self.word(ITEM))
    }

    /// Driver: the id of the last job the worker started.
    pub(crate) fn last_started(&self) -> Option<u64> {
        self.word(PROGRESS).load(Ordering::SeqCst).checked_sub(1)
    }

    /// Worker: the current job's tasks are all done (its results are being handed back): a
    /// death from now on is no task's doing.
    pub(crate) fn clear_running_item(&self) {
        self.word(ITEM).store(0, Ordering::Release);
    }

    /// Driver: the position in the [last job started](Self::last_started) of the last task
    /// the worker started, if it started one (read it after that job's id).
    pub(crate) fn running_item(&self) -> Option<usize> {
        let word = self.word(ITEM).load(Ordering::Acquire);
        usize::try_from(word.checked_sub(1)?).ok()
    }

    /// Driver: `frames` frames have been written to the worker's socket in total.
    pub(crate) fn set_sent(&self, frames: u64) {
        self.word(SENT).store(frames, Ordering::Release);
    }

    /// Worker: how many frames the driver has written to the socket in total.
    pub(crate) fn sent(&self) -> u64 {
        self.word(SENT).load(Ordering::Acquire)
    }

    /// Driver: says it is about to park until a result comes. Returns whether a result was
    /// appended that `reader` has not taken (then it must not park). After this, the worker
    /// nudges the driver once it appends a result.
    pub(crate) fn park(&self, reader: &RingReader) -> bool {
        self.waiting().store(WAITING_NOW, Ordering::SeqCst);
        // Pairs with the worker's `HEAD` store then `WAITING` load (both `SeqCst`): either the
        // worker sees the flag, or this load sees its record.
        self.word(HEAD).load(Ordering::SeqCst) != reader.tail
    }

    /// Driver: no longer parked (it polls the ring itself).
    pub(crate) fn unpark(&self) {
        if self.waiting().load(Ordering::Relaxed) != NOT_WAITING {
            self.waiting().store(NOT_WAITING, Ordering::Relaxed);
        }
    }

    /// Worker, after appending a result: whether the driver waits for it and must be nudged.
    /// True at most once per [`park`](Self::park).
    pub(crate) fn take_waiter(&self) -> bool {
        self.waiting().load(Ordering::SeqCst) != NOT_WAITING
            && self.waiting().swap(NOT_WAITING, Ordering::SeqCst) != NOT_WAITING
    }
}

/// A CPU number plus one (zero: unknown), as the two sides publish where they run: the "peer's
/// CPU" cue of core's spin policy (`multiproc_core::wait::spin`). Spinning for a peer pays only
/// while it runs on another CPU; on the same one, the spin only keeps it from running.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Cpu(u64);

impl Cpu {
    /// The CPU this thread runs on now (`getcpu`, through the vDSO: no system call).
    pub(crate) fn current() -> Cpu {
        Cpu(multiproc_core::proc::cpu::current() as u64 + 1)
    }

    /// Whether a peer last seen on `peer` may well be running alongside us, on another CPU.
    pub(crate) fn apart_from(self, peer: Cpu) -> bool {
        self != peer
    }
}

/// Why the ring cannot be read: the worker broke the protocol.
#[derive(Debug)]
pub(crate) struct RingError(String);

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt result ring: {}", self.0)
    }
}

/// Payload bytes rounded up to whole words.
fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// The worker's end: appends records.
pub(crate) struct RingWriter {
    ctrl: Control,
    head: u64,
    /// The driver's `TAIL` as last read; re-read only when the ring looks full.
    tail: u64,
}

impl RingWriter {
    pub(crate) fn new(ctrl: Control) -> Self {
        let head = ctrl.word(HEAD).load(Ordering::Relaxed);
        let tail = ctrl.word(TAIL).load(Ordering::Acquire);
        Self { ctrl, head, tail }
    }

    /// Appends `bytes` as one record and publishes it. Returns `false`, having written nothing,
    /// when the record is too large or the ring has no room for it.
    pub(crate) fn try_write(&mut self, bytes: &[u8]) -> bool {
        if bytes.len() > MAX_RECORD {
            return false;
        }
        let size = (8 + padded(bytes.len())) as u64;
        let mut at = (self.head % RING_LEN as u64) as usize;
        let to_end = (RING_LEN - at) as u64;
        let skip = if to_end < size { to_end } else { 0 };
        let need = self.head + skip + size;
        if need.wrapping_sub(self.tail) > RING_LEN as u64 {
            self.tail = self.ctrl.word(TAIL).load(Ordering::Acquire);
            if need.wrapping_sub(self.tail) > RING_LEN as u64 {
                return false;
            }
        }
        if skip > 0 {
            self.ctrl.word(RING + at).store(WRAP, Ordering::Relaxed);
            self.head += skip;
            at = 0;
        }
        self.ctrl.region.store_words(RING + at + 8, bytes);
        self.ctrl
            .word(RING + at)
            .store(bytes.len() as u64, Ordering::Relaxed);
        self.head += size;
        // Release: the record's words are visible to whoever sees this head. SeqCst: see
        // `Control::park`.
        self.ctrl.word(HEAD).store(self.head, Ordering::SeqCst);
        true
    }
}

/// The driver's end: takes records in order.
pub(crate) struct RingReader {
    ctrl: Control,
    /// Bytes taken so far.
    tail: u64,
    /// `tail` as last published to the worker.
    published: u64,
}

impl RingReader {
    pub(crate) fn new(ctrl: Control) -> Self {
        Self {
            ctrl,
            tail: 0,
            published: 0,
        }
    }

    /// Whether the worker has appended something not taken yet: what a waiting driver spins
    /// on (one load).
    pub(crate) fn has_record(&self) -> bool {
        self.ctrl.word(HEAD).load(Ordering::Acquire) != self.tail
    }

    /// Copies the next record into `out` without taking it; returns its size in the ring, to
    /// pass to [`consume`](Self::consume), or `None` when the ring is empty.
    ///
    /// # Errors
    /// When the worker's positions or record headers make no sense.
    pub(crate) fn peek(&mut self, out: &mut Vec<u8>) -> Result<Option<u64>, RingError> {
        loop {
            let head = self.ctrl.word(HEAD).load(Ordering::Acquire);
            let used = head.wrapping_sub(self.tail);
            if used == 0 {
                return Ok(None);
            }
            if used > RING_LEN as u64 || !used.is_multiple_of(8) {
                return Err(RingError(format!(
                    "{used} bytes announced in a ring of {RING_LEN}"
                )));
            }
            let at = (self.tail % RING_LEN as u64) as usize;
            let to_end = (RING_LEN - at) as u64;
            let header = self.ctrl.word(RING + at).load(Ordering::Relaxed);
            if header == WRAP {
                if to_end > used {
                    return Err(RingError("a wrap past the last record".into()));
                }
                self.tail += to_end;
                continue;
            }
            let len = usize::try_from(header).unwrap_or(usize::MAX);
            if len > MAX_RECORD {
                return Err(RingError(format!("a record of {header} bytes")));
            }
            let size = (8 + padded(len)) as u64;
            if size > to_end || size > used {
                return Err(RingError(format!(
                    "a record of {len} bytes overruns the ring"
                )));
            }
            self.ctrl.region.load_words(RING + at + 8, len, out);
            return Ok(Some(size));
        }
    }

    /// Takes the record [`peek`](Self::peek) copied.
    pub(crate) fn consume(&mut self, size: u64) {
        self.tail += size;
    }

    /// Tells the worker how far the ring was read, so it can reuse the space.
    pub(crate) fn publish(&mut self) {
        if self.published != self.tail {
            self.ctrl.word(TAIL).store(self.tail, Ordering::Release);
            self.published = self.tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> Vec<u8> {
        let len = (i * 37) % 300;
        (0..len).map(|j| (i + j) as u8).collect()
    }

    fn take(reader: &mut RingReader) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let size = reader.peek(&mut out).unwrap()?;
        reader.consume(size);
        reader.publish();
        Some(out)
    }

    #[test]
    fn records_come_out_in_order_across_wraps() {
        let ctrl = Control::new().unwrap();
        let mut writer = RingWriter::new(ctrl.clone());
        let mut reader = RingReader::new(ctrl);
        let mut next_out = 0;
        // Enough bytes to go round the ring many times; the reader lags by up to 50 records.
        for i in 0..20_000 {
            while !writer.try_write(&record(i)) {
                assert_eq!(take(&mut reader), Some(record(next_out)));
                next_out += 1;
            }
            if i % 50 == 0 {
                while let Some(got) = take(&mut reader) {
                    assert_eq!(got, record(next_out), "record {next_out}");
                    next_out += 1;
                }
            }
        }
        while let Some(got) = take(&mut reader) {
            assert_eq!(got, record(next_out));
            next_out += 1;
        }
        assert_eq!(next_out, 20_000);
    }

    #[test]
    fn a_full_ring_and_a_large_record_are_refused() {
        let ctrl = Control::new().unwrap();
        let mut writer = RingWriter::new(ctrl.clone());
        let mut reader = RingReader::new(ctrl);
        assert!(!writer.try_write(&vec![1; MAX_RECORD + 1]));
        let big = vec![7u8; MAX_RECORD];
        let mut written = 0;
        while writer.try_write(&big) {
            written += 1;
        }
        assert_eq!(written, RING_LEN / (MAX_RECORD + 8));
        // Room comes back as the reader takes records.
        assert_eq!(take(&mut reader).as_deref(), Some(&big[..]));
        assert!(writer.try_write(b"small"));
        for _ in 1..written {
            assert_eq!(take(&mut reader).as_deref(), Some(&big[..]));
        }
        assert_eq!(take(&mut reader).as_deref(), Some(&b"small"[..]));
        assert_eq!(take(&mut reader), None);
    }

    #[test]
    fn a_corrupt_ring_is_an_error_not_a_panic() {
        let corruptions: [fn(&Control); 4] = [
            // More announced than the ring holds.
            |c| c.word(HEAD).store(RING_LEN as u64 + 8, Ordering::SeqCst),
            // A record longer than the limit.
            |c| {
                c.word(RING).store(MAX_RECORD as u64 + 1, Ordering::SeqCst);
                c.word(HEAD).store(16, Ordering::SeqCst);
            },
            // A record running past what was announced.
            |c| {
                c.word(RING).store(100, Ordering::SeqCst);
                c.word(HEAD).store(16, Ordering::SeqCst);
            },
            // A wrap marker with records announced beyond the ring's end.
            |c| {
                c.word(RING).store(WRAP, Ordering::SeqCst);
                c.word(HEAD).store(8, Ordering::SeqCst);
            },
        ];
        for (i, corrupt) in corruptions.iter().enumerate() {
            let ctrl = Control::new().unwrap();
            corrupt(&ctrl);
            let mut reader = RingReader::new(ctrl);
            assert!(reader.peek(&mut Vec::new()).is_err(), "corruption {i}");
        }
    }

    #[test]
    fn the_parked_driver_is_told_once() {
        let ctrl = Control::new().unwrap();
        let mut writer = RingWriter::new(ctrl.clone());
        let mut reader = RingReader::new(ctrl.clone());
        assert!(!ctrl.take_waiter(), "nobody waits yet");
        assert!(!ctrl.park(&reader), "nothing to read: park");
        assert!(writer.try_write(b"one"));
        assert!(ctrl.take_waiter());
        assert!(!ctrl.take_waiter(), "one nudge per park");
        // A record appended before the driver parks: it must read instead of parking.
        assert!(writer.try_write(b"two"));
        assert!(ctrl.park(&reader));
        ctrl.unpark();
        assert!(!ctrl.take_waiter());
        assert_eq!(take(&mut reader).as_deref(), Some(&b"one"[..]));
        assert_eq!(take(&mut reader).as_deref(), Some(&b"two"[..]));
    }

    /// A writer thread and a reader thread, as a worker and its driver.
    #[test]
    fn concurrent_writer_and_reader_agree() {
        let ctrl = Control::new().unwrap();
        let mut writer = RingWriter::new(ctrl.clone());
        let mut reader = RingReader::new(ctrl);
        const N: usize = 50_000;
        let writing = std::thread::spawn(move || {
            for i in 0..N {
                while !writer.try_write(&record(i)) {
                    std::thread::yield_now();
                }
            }
        });
        let mut next = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while next < N {
            assert!(
                std::time::Instant::now() < deadline,
                "reader stuck at {next}"
            );
            match take(&mut reader) {
                Some(got) => {
                    assert_eq!(got, record(next), "record {next}");
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        writing.join().unwrap();
    }
}
