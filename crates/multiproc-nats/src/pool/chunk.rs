//! The wire form of a chunk: several tasks of one function in one JetStream message (one
//! publish, one acknowledgement, one redelivery unit), and their outcomes in one result
//! message (or a few, when they are large).
//!
//! Both are a count followed by that many entries, in postcard's varint (LEB128):
//!
//! - a chunk: `count`, then per task `len` and the task's postcard-encoded arguments;
//! - a result part: `count`, then per task a tag (`0`: the payload is the postcard-encoded
//!   result; `1`: it is a [`WireError`]), `len` and the payload. The part's `Mp-First` header
//!   says which task of the chunk its first entry belongs to.
//!
//! Every task keeps its own outcome: a chunk in which one item fails reports that item's error
//! and the others' results. Input from the network never panics: a malformed chunk or part is
//! an error naming what was wrong.

use bytes::Bytes;

use super::error::WireError;

/// A chunk stops growing at this many encoded bytes (a task larger than this goes alone), well
/// under the server's default 1 MiB message limit.
pub(crate) const MAX_CHUNK_BYTES: usize = 256 << 10;
/// A result part stops growing at this many encoded bytes.
pub(crate) const MAX_PART_BYTES: usize = 256 << 10;

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a varint at `*at`, moving past it.
fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&b) = bytes.get(*at) else {
            return Err("truncated length".into());
        };
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err("length too long".into())
}

/// Reads a `len`-prefixed slice at `*at`, moving past it.
fn slice(bytes: &Bytes, at: &mut usize) -> Result<Bytes, String> {
    let len = varint(bytes, at)?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| at.checked_add(len))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| format!("entry of {len} bytes past the end of the message"))?;
    let out = bytes.slice(*at..end);
    *at = end;
    Ok(out)
}

/// A count no bigger than the bytes could hold (each entry takes at least one byte), so a
/// hostile count cannot make us allocate.
fn count(bytes: &Bytes, at: &mut usize) -> Result<usize, String> {
    let n = varint(bytes, at)?;
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= bytes.len() - *at)
        .ok_or_else(|| format!("count of {n} entries in a message of {} bytes", bytes.len()))
}

/// A chunk being filled by the submitter: the encoded arguments of consecutive tasks.
#[derive(Debug, Default)]
pub(crate) struct ChunkBuf {
    body: Vec<u8>,
    count: usize,
}

impl ChunkBuf {
    /// Tasks in the chunk.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// True when adding `args` would make the chunk too big (never for an empty chunk).
    pub(crate) fn full_for(&self, args: &[u8], max_items: usize) -> bool {
        self.count > 0
            && (self.count >= max_items || self.body.len() + args.len() + 10 > MAX_CHUNK_BYTES)
    }

    /// Adds one task's encoded arguments.
    pub(crate) fn push(&mut self, args: &[u8]) {
        put_varint(&mut self.body, args.len() as u64);
        self.body.extend_from_slice(args);
        self.count += 1;
    }

    /// The message payload; leaves the chunk empty.
    pub(crate) fn take(&mut self) -> (usize, Bytes) {
        let mut out = Vec::with_capacity(self.body.len() + 10);
        put_varint(&mut out, self.count as u64);
        out.extend_from_slice(&self.body);
        self.body.clear();
        (std::mem::take(&mut self.count), Bytes::from(out))
    }
}

/// The encoded arguments of each task of a chunk.
pub(crate) fn tasks(payload: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut at = 0;
    let n = count(payload, &mut at)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(slice(payload, &mut at)?);
    }
    if at != payload.len() {
        return Err(format!("{} bytes after the last task", payload.len() - at));
    }
    Ok(out)
}

/// The outcomes of a chunk's tasks as result parts, each at most about [`MAX_PART_BYTES`]:
/// `(first task, tasks in the part, payload)`.
pub(crate) fn parts(outcomes: &[Result<Bytes, WireError>]) -> Vec<(usize, usize, Bytes)> {
    let mut parts = Vec::new();
    let mut body = Vec::new();
    let (mut first, mut n) = (0, 0);
    let mut close = |body: &mut Vec<u8>, first: usize, n: usize| {
        let mut out = Vec::with_capacity(body.len() + 10);
        put_varint(&mut out, n as u64);
        out.append(body);
        parts.push((first, n, Bytes::from(out)));
    };
    for (i, outcome) in outcomes.iter().enumerate() {
        let encoded;
        let (tag, bytes): (u8, &[u8]) = match outcome {
            Ok(bytes) => (0, bytes),
            Err(e) => {
                encoded = postcard::to_allocvec(e).unwrap_or_default();
                (1, &encoded)
            }
        };
        if n > 0 && body.len() + bytes.len() + 11 > MAX_PART_BYTES {
            close(&mut body, first, n);
            (first, n) = (i, 0);
        }
        body.push(tag);
        put_varint(&mut body, bytes.len() as u64);
        body.extend_from_slice(bytes);
        n += 1;
    }
    if n > 0 || outcomes.is_empty() {
        close(&mut body, first, n);
    }
    parts
}

/// One task's outcome as read from a result part: its encoded result, or its error (or why the
/// error did not decode).
pub(crate) type ReadOutcome = Result<Bytes, Result<WireError, String>>;

/// The outcomes in a result part: each task's encoded result, or its error.
pub(crate) fn outcomes(payload: &Bytes) -> Result<Vec<ReadOutcome>, String> {
    let mut at = 0;
    let n = count(payload, &mut at)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let tag = *payload.get(at).ok_or("truncated entry")?;
        at += 1;
        let bytes = slice(payload, &mut at)?;
        out.push(match tag {
            0 => Ok(bytes),
            1 => Err(postcard::from_bytes::<WireError>(&bytes).map_err(|e| e.to_string())),
            t => return Err(format!("unknown outcome tag {t}")),
        });
    }
    if at != payload.len() {
        return Err(format!(
            "{} bytes after the last outcome",
            payload.len() - at
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_round_trips_and_splits_by_size() {
        let mut c = ChunkBuf::default();
        assert!(!c.full_for(&[0; MAX_CHUNK_BYTES * 2], 1));
        for i in 0..300u32 {
            c.push(&i.to_le_bytes()[..(i % 4) as usize]);
        }
        assert!(c.full_for(b"x", 300));
        assert!(!c.full_for(b"x", 301));
        let (n, payload) = c.take();
        assert_eq!(n, 300);
        assert_eq!(c.len(), 0);
        let tasks = tasks(&payload).unwrap();
        assert_eq!(tasks.len(), 300);
        assert_eq!(&tasks[7][..], &7u32.to_le_bytes()[..3]);
    }

    #[test]
    fn outcomes_keep_each_tasks_error_and_split_into_parts() {
        let big = Bytes::from(vec![1u8; MAX_PART_BYTES / 2]);
        let err = WireError::BadArgs {
            message: "no".into(),
            host: "h".into(),
        };
        let all = vec![
            Ok(Bytes::from_static(b"a")),
            Err(err),
            Ok(big.clone()),
            Ok(big.clone()),
            Ok(big),
        ];
        let parts = parts(&all);
        assert!(parts.len() >= 2, "{}", parts.len());
        let mut seen = Vec::new();
        for (first, n, payload) in &parts {
            assert_eq!(*first, seen.len());
            let got = outcomes(payload).unwrap();
            assert_eq!(got.len(), *n);
            seen.extend(got);
        }
        assert_eq!(seen.len(), 5);
        assert_eq!(&seen[0].as_ref().unwrap()[..], b"a");
        assert!(matches!(seen[1], Err(Ok(WireError::BadArgs { .. }))));
        assert_eq!(seen[4].as_ref().unwrap().len(), MAX_PART_BYTES / 2);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        for bad in [
            &b""[..],
            &[0xff; 12][..],
            &[5, 1, 0][..],
            &[1, 9, 1][..],
            &[200, 1][..],
            &[1, 0, 0, 7][..],
        ] {
            let bad = Bytes::copy_from_slice(bad);
            assert!(tasks(&bad).is_err(), "{bad:?}");
            assert!(outcomes(&bad).is_err(), "{bad:?}");
        }
        assert!(outcomes(&Bytes::from_static(&[1, 3, 0])).is_err());
    }
}
