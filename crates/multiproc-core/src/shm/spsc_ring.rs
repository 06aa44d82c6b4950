//! A single-producer single-consumer ring of byte records in a [`SharedRegion`], for two
//! processes that hand each other small messages without a system call.
//!
//! The ring is three places in one region: a `head` word (bytes ever appended, written only by
//! the producer), a `tail` word (bytes ever taken, written only by the consumer) and the data
//! area, a power of nothing in particular but a multiple of 8 bytes. A record is a length word,
//! a tag word (the user's, e.g. a sequence number) and the payload padded to whole words; a
//! length of `u64::MAX` says "the rest of the area is unused, go on at its start".
//!
//! Every access is atomic (records are copied as whole words with relaxed loads and stores),
//! so a peer that scribbles over the region can make the reader see garbage but never makes it
//! read out of bounds or invoke undefined behaviour: [`SpscRing::peek`] checks every position
//! and length it reads and reports a [`RingError`]. The producer writes records, then publishes
//! them with a release store of `head` ([`RingWriter::publish`]: once per record for latency,
//! or once per batch so the consumer's CPU is not sent the `head` line for every record), and
//! the consumer reads `head` with an acquire load before copying them (again only when it has
//! taken everything it last saw); it frees space with a release store of `tail`.
//!
//! Who is *the* producer and *the* consumer is the user's business: this type does not arbitrate
//! between several would-be writers (the channel's ring keeps an owner word for that, see
//! `transport::channel`).

use std::sync::atomic::{AtomicU64, Ordering};

use super::SharedRegion;

/// A record header word saying "the rest of the data area is unused, go on at its start".
const WRAP: u64 = u64::MAX;
/// Bytes of a record header: the length word and the tag word.
const RECORD_HEADER: usize = 16;

/// Where a ring lives in its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Offset of the `head` word (8-aligned).
    pub head: usize,
    /// Offset of the `tail` word (8-aligned; on another cache line than `head`).
    pub tail: usize,
    /// Offset of the data area (8-aligned).
    pub data: usize,
    /// Bytes in the data area (a multiple of 8).
    pub len: usize,
    /// Largest payload of one record (at most a quarter of `len`).
    pub max_record: usize,
}

/// Why a ring cannot be read: its producer broke the format (or another process scribbled on
/// it). The ring cannot be trusted after this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingError(String);

impl std::fmt::Display for RingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "corrupt shared ring: {}", self.0)
    }
}

impl std::error::Error for RingError {}

/// A record found by [`SpscRing::peek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The tag the producer wrote with it.
    pub tag: u64,
    /// Payload bytes (copied into the caller's buffer).
    pub len: usize,
    /// Bytes the record takes in the ring, to pass to [`SpscRing::consume`].
    pub size: u64,
}

/// Payload bytes rounded up to whole words.
fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// A ring in a shared region: the consumer's operations, and [`RingWriter`] for the producer.
#[derive(Debug, Clone)]
pub struct SpscRing {
    region: SharedRegion,
    layout: RingLayout,
}

impl SpscRing {
    /// The ring at `layout` in `region`.
    ///
    /// # Panics
    /// When `layout` does not fit in `region` or is misaligned (a programming error: check a
    /// received region's length before).
    pub fn new(region: SharedRegion, layout: RingLayout) -> Self {
        assert!(
            layout.head.is_multiple_of(8)
                && layout.tail.is_multiple_of(8)
                && layout.data.is_multiple_of(8)
                && layout.len.is_multiple_of(8)
                && layout.max_record <= layout.len / 4
                && layout.data + layout.len <= region.len()
                && layout.head + 8 <= region.len()
                && layout.tail + 8 <= region.len(),
            "ring layout {layout:?} does not fit a region of {} bytes",
            region.len()
        );
        Self { region, layout }
    }

    /// The region the ring lives in.
    pub fn region(&self) -> &SharedRegion {
        &self.region
    }

    /// The largest payload one record holds.
    pub fn max_record(&self) -> usize {
        self.layout.max_record
    }

    fn head(&self) -> &AtomicU64 {
        self.region.atomic_u64(self.layout.head)
    }

    fn tail(&self) -> &AtomicU64 {
        self.region.atomic_u64(self.layout.tail)
    }

    fn data_word(&self, at: usize) -> &AtomicU64 {
        self.region.atomic_u64(self.layout.data + at)
    }

    /// Consumer: whether a record (or a wrap marker) was appended and not taken: one load,
    /// what a waiting consumer spins on.
    pub fn has_record(&self) -> bool {
        self.head().load(Ordering::Acquire) != self.tail().load(Ordering::Relaxed)
    }

    /// Consumer: bytes taken so far (its own position).
    pub fn taken(&self) -> u64 {
        self.tail().load(Ordering::Relaxed)
    }

    /// Consumer: the producer's published position (an acquire load), for
    /// [`peek_upto`](Self::peek_upto).
    pub fn published(&self) -> u64 {
        self.head().load(Ordering::Acquire)
    }

    /// Consumer: copies the next record's payload into `out` (replacing its contents) without
    /// taking it; `None` when the ring is empty. Passes over wrap markers (taking them).
    ///
    /// # Errors
    /// When the positions or the record headers make no sense.
    pub fn peek(&self, out: &mut Vec<u8>) -> Result<Option<Record>, RingError> {
        self.peek_upto(self.published(), out)
    }

    /// [`peek`](Self::peek), with `head` a value [`published`](Self::published) returned
    /// earlier: records up to it are there, and the `head` line is not read again.
    ///
    /// # Errors
    /// As [`peek`](Self::peek).
    pub fn peek_upto(&self, head: u64, out: &mut Vec<u8>) -> Result<Option<Record>, RingError> {
        let ring_len = self.layout.len as u64;
        loop {
            let tail = self.tail().load(Ordering::Relaxed);
            let used = head.wrapping_sub(tail);
            if used == 0 {
                return Ok(None);
            }
            if used > ring_len || !used.is_multiple_of(8) {
                return Err(RingError(format!(
                    "{used} bytes announced in a ring of {ring_len}"
                )));
            }
            let at = (tail % ring_len) as usize;
            let to_end = ring_len - at as u64;
            let header = self.data_word(at).load(Ordering::Relaxed);
            if header == WRAP {
                if to_end > used {
                    return Err(RingError("a wrap past the last record".into()));
                }
                self.tail().store(tail + to_end, Ordering::Release);
                continue;
            }
            let len = usize::try_from(header).unwrap_or(usize::MAX);
            if len > self.layout.max_record {
                return Err(RingError(format!("a record of {header} bytes")));
            }
            let size = (RECORD_HEADER + padded(len)) as u64;
            if size > to_end || size > used {
                return Err(RingError(format!(
                    "a record of {len} bytes overruns the ring"
                )));
            }
            let tag = self.data_word(at + 8).load(Ordering::Relaxed);
            self.region
                .load_words(self.layout.data + at + RECORD_HEADER, len, out);
            return Ok(Some(Record { tag, len, size }));
        }
    }

    /// Consumer: takes the record [`peek`](Self::peek) found, freeing its space.
    pub fn consume(&self, record: Record) {
        let tail = self.tail().load(Ordering::Relaxed);
        self.tail().store(tail + record.size, Ordering::Release);
    }
}

/// The producer's end of a [`SpscRing`]: appends records, which the consumer sees once they
/// are [published](Self::publish).
#[derive(Debug)]
pub struct RingWriter {
    ring: SpscRing,
    head: u64,
    /// The consumer's `tail` as last read; re-read only when the ring looks full.
    tail: u64,
}

impl RingWriter {
    /// Becomes the ring's producer, going on from the `head` a previous producer published.
    ///
    /// Whoever was the producer before must have stopped, and the caller must have synchronised
    /// with its last publication (an acquire operation on something it released after).
    pub fn attach(ring: SpscRing) -> Self {
        let head = ring.head().load(Ordering::Acquire);
        let tail = ring.tail().load(Ordering::Acquire);
        Self { ring, head, tail }
    }

    /// The ring written to.
    pub fn ring(&self) -> &SpscRing {
        &self.ring
    }

    /// Bytes appended and not yet published.
    pub fn unpublished(&self) -> u64 {
        self.head - self.ring.head().load(Ordering::Relaxed)
    }

    /// Publishes every record appended so far (a release store of `head`: their words are
    /// visible to whoever sees it).
    pub fn publish(&self) {
        self.ring.head().store(self.head, Ordering::Release);
    }

    /// Appends `bytes` as one record tagged `tag`, unpublished. Returns `false`, having written
    /// nothing, when the record is over the ring's [`max_record`](SpscRing::max_record) or the
    /// ring has no room for it.
    pub fn try_write(&mut self, tag: u64, bytes: &[u8]) -> bool {
        let ring_len = self.ring.layout.len as u64;
        if bytes.len() > self.ring.layout.max_record {
            return false;
        }
        let size = (RECORD_HEADER + padded(bytes.len())) as u64;
        let mut at = (self.head % ring_len) as usize;
        let to_end = ring_len - at as u64;
        let skip = if to_end < size { to_end } else { 0 };
        let need = self.head + skip + size;
        if need.wrapping_sub(self.tail) > ring_len {
            self.tail = self.ring.tail().load(Ordering::Acquire);
            if need.wrapping_sub(self.tail) > ring_len {
                return false;
            }
        }
        if skip > 0 {
            self.ring.data_word(at).store(WRAP, Ordering::Relaxed);
            self.head += skip;
            at = 0;
        }
        self.ring
            .region
            .store_words(self.ring.layout.data + at + RECORD_HEADER, bytes);
        self.ring.data_word(at + 8).store(tag, Ordering::Relaxed);
        self.ring
            .data_word(at)
            .store(bytes.len() as u64, Ordering::Relaxed);
        self.head += size;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: RingLayout = RingLayout {
        head: 0,
        tail: 128,
        data: 256,
        len: 4096,
        max_record: 1024,
    };

    fn ring() -> SpscRing {
        SpscRing::new(SharedRegion::new(256 + 4096).unwrap(), LAYOUT)
    }

    fn record(i: usize) -> Vec<u8> {
        let len = (i * 37) % 300;
        (0..len).map(|j| (i + j) as u8).collect()
    }

    fn take(ring: &SpscRing) -> Option<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let rec = ring.peek(&mut out).unwrap()?;
        ring.consume(rec);
        Some((rec.tag, out))
    }

    #[test]
    fn records_come_out_in_order_with_their_tags_across_wraps() {
        let ring = ring();
        let mut writer = RingWriter::attach(ring.clone());
        let mut next_out = 0;
        for i in 0..5_000 {
            while !writer.try_write(i as u64, &record(i)) {
                writer.publish();
                assert_eq!(take(&ring), Some((next_out as u64, record(next_out))));
                next_out += 1;
            }
            if i.is_multiple_of(3) {
                writer.publish();
            }
            if i.is_multiple_of(7) {
                while let Some(got) = take(&ring) {
                    assert_eq!(got, (next_out as u64, record(next_out)));
                    next_out += 1;
                }
            }
        }
        writer.publish();
        while let Some(got) = take(&ring) {
            assert_eq!(got, (next_out as u64, record(next_out)));
            next_out += 1;
        }
        assert_eq!(next_out, 5_000);
    }

    #[test]
    fn a_new_writer_goes_on_where_the_last_one_stopped() {
        let ring = ring();
        let mut first = RingWriter::attach(ring.clone());
        assert!(first.try_write(1, b"one"));
        assert_eq!(take(&ring), None, "not published yet");
        first.publish();
        drop(first);
        let mut second = RingWriter::attach(ring.clone());
        assert!(second.try_write(2, b"two"));
        second.publish();
        assert_eq!(take(&ring), Some((1, b"one".to_vec())));
        assert_eq!(take(&ring), Some((2, b"two".to_vec())));
        assert_eq!(take(&ring), None);
    }

    #[test]
    fn a_full_ring_and_a_large_record_are_refused() {
        let ring = ring();
        let mut writer = RingWriter::attach(ring.clone());
        assert!(!writer.try_write(0, &vec![1; LAYOUT.max_record + 1]));
        let big = vec![7u8; LAYOUT.max_record];
        let mut written = 0;
        while writer.try_write(0, &big) {
            written += 1;
        }
        writer.publish();
        assert_eq!(written, LAYOUT.len / (LAYOUT.max_record + RECORD_HEADER));
        assert_eq!(take(&ring).map(|r| r.1), Some(big.clone()));
        assert!(writer.try_write(0, b"small"));
    }

    #[test]
    fn a_corrupt_ring_is_an_error_not_a_panic() {
        let corruptions: [fn(&SpscRing); 5] = [
            |r| r.head().store(LAYOUT.len as u64 + 8, Ordering::SeqCst),
            |r| r.head().store(12, Ordering::SeqCst),
            |r| {
                r.data_word(0)
                    .store(LAYOUT.max_record as u64 + 1, Ordering::SeqCst);
                r.head().store(32, Ordering::SeqCst);
            },
            |r| {
                r.data_word(0).store(100, Ordering::SeqCst);
                r.head().store(32, Ordering::SeqCst);
            },
            |r| {
                r.data_word(0).store(WRAP, Ordering::SeqCst);
                r.head().store(8, Ordering::SeqCst);
            },
        ];
        for (i, corrupt) in corruptions.iter().enumerate() {
            let ring = ring();
            corrupt(&ring);
            assert!(ring.peek(&mut Vec::new()).is_err(), "corruption {i}");
        }
    }

    #[test]
    fn concurrent_writer_and_reader_agree() {
        let ring = ring();
        let mut writer = RingWriter::attach(ring.clone());
        const N: usize = 50_000;
        let writing = std::thread::spawn(move || {
            for i in 0..N {
                while !writer.try_write(i as u64, &record(i)) {
                    writer.publish();
                    std::thread::yield_now();
                }
                if i.is_multiple_of(5) {
                    writer.publish();
                }
            }
            writer.publish();
        });
        let mut next = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while next < N {
            assert!(
                std::time::Instant::now() < deadline,
                "reader stuck at {next}"
            );
            match take(&ring) {
                Some(got) => {
                    assert_eq!(got, (next as u64, record(next)), "record {next}");
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        writing.join().unwrap();
    }
}
