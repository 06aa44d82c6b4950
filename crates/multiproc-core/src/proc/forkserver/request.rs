//! What the parent and the server say to each other: one request per child (bytes plus
//! descriptors), one answer (a pid or an errno), in order, and before any request the shared
//! pid slot (one word per request in flight).
//! Decoding never trusts the bytes: a malformed request is `EINVAL`, never a panic.

use std::os::fd::OwnedFd;

use rustix::io::Errno;

pub(super) const REQUEST_MAGIC: [u8; 4] = *b"MPF1";
/// The largest request (mostly the environment); a larger one is re-executed instead.
pub(super) const REQUEST_MAX: usize = 64 * 1024;
/// The server's `argv[0]`. Its children write their names over it, so it is padded: a name
/// must fit in its length (a longer one is re-executed instead).
pub(super) const SERVER_NAME: &str = "multiproc-fork-server";
pub(super) const NAME_ROOM: usize = 256;
/// The first packet after the hello: the shared words the server's `clone` writes pids into.
pub(super) const SLOT_MAGIC: [u8; 4] = *b"MPFS";
/// How many requests may await their answers at once: each has its own pid word in the shared
/// slot, request number `n` the word `n % SLOTS`. Below the kernel's default queue limit of a
/// unix datagram socket (`net.unix.max_dgram_qlen`, 10), so that neither side's queue of
/// packets fills.
pub(super) const SLOTS: usize = 8;
/// The shared slot's size: one `u32` pid per request in flight.
pub(super) const SLOT_BYTES: usize = SLOTS * std::mem::size_of::<u32>();

/// Byte offset of request number `n`'s pid word in the shared slot.
pub(super) fn slot_offset(n: u64) -> usize {
    (n % SLOTS as u64) as usize * std::mem::size_of::<u32>()
}

/// Whether the next descriptor in a request is standard input, output or error.
pub(super) const HAS_STDIN: u8 = 1;
pub(super) const HAS_STDOUT: u8 = 2;
pub(super) const HAS_STDERR: u8 = 4;

/// One child to start: its control socket, working directory, streams, affinity, name and
/// environment.
pub(super) struct Request {
    pub(super) control: OwnedFd,
    pub(super) cwd: OwnedFd,
    /// Standard input, output and error: the descriptor to put there, or `None` to close it.
    pub(super) streams: [Option<OwnedFd>; 3],
    pub(super) affinity: Vec<u8>,
    pub(super) name: Vec<u8>,
    /// The environment's `KEY=value` strings, each ended by a NUL (none inside): one buffer,
    /// which the child hands to the C library as it is (see `server::set_environment`).
    pub(super) env: Vec<u8>,
}

impl Request {
    /// Decodes a request; `EINVAL` when it is malformed (never a panic).
    pub(super) fn parse(bytes: &[u8], fds: Vec<OwnedFd>) -> Result<Request, Errno> {
        let mut rest = bytes.strip_prefix(&REQUEST_MAGIC[..]).ok_or(Errno::INVAL)?;
        let (&present, tail) = rest.split_first().ok_or(Errno::INVAL)?;
        rest = tail;
        let mut fds = fds.into_iter();
        let control = fds.next().ok_or(Errno::INVAL)?;
        let cwd = fds.next().ok_or(Errno::INVAL)?;
        let mut streams = [None, None, None];
        for (i, bit) in [HAS_STDIN, HAS_STDOUT, HAS_STDERR].into_iter().enumerate() {
            if present & bit != 0 {
                streams[i] = Some(fds.next().ok_or(Errno::INVAL)?);
            }
        }
        let name = take_bytes(&mut rest)?.to_vec();
        let affinity = take_bytes(&mut rest)?.to_vec();
        let mut env = Vec::with_capacity(rest.len());
        while !rest.is_empty() {
            let var = take_bytes(&mut rest)?;
            if var.contains(&0) {
                return Err(Errno::INVAL);
            }
            env.extend_from_slice(var);
            env.push(0);
        }
        if fds.next().is_some() || name.len() >= NAME_ROOM {
            return Err(Errno::INVAL);
        }
        Ok(Request {
            control,
            cwd,
            streams,
            affinity,
            name,
            env,
        })
    }
}

/// Appends `bytes` with their length.
pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], Errno> {
    let (len, tail) = rest.split_first_chunk::<4>().ok_or(Errno::INVAL)?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > tail.len() {
        return Err(Errno::INVAL);
    }
    let (bytes, tail) = tail.split_at(len);
    *rest = tail;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptors(n: usize) -> Vec<OwnedFd> {
        (0..n)
            .map(|_| rustix::pipe::pipe().expect("pipe").0)
            .collect()
    }

    fn request(present: u8, name: &[u8], env: &[&[u8]]) -> Vec<u8> {
        let mut bytes = REQUEST_MAGIC.to_vec();
        bytes.push(present);
        put_bytes(&mut bytes, name);
        put_bytes(&mut bytes, &[1, 0, 0, 0]);
        for var in env {
            put_bytes(&mut bytes, var);
        }
        bytes
    }

    #[test]
    fn a_well_formed_request_decodes() {
        let bytes = request(HAS_STDOUT, b"worker", &[b"A=1", b"B=2"]);
        let parsed = Request::parse(&bytes, descriptors(3)).expect("valid");
        assert_eq!(parsed.name, b"worker");
        assert_eq!(parsed.affinity, [1, 0, 0, 0]);
        assert_eq!(parsed.env, b"A=1\0B=2\0");
        assert!(parsed.streams[0].is_none() && parsed.streams[1].is_some());
        assert!(parsed.streams[2].is_none());
    }

    #[test]
    fn malformed_requests_are_refused_without_panicking() {
        let good = request(HAS_STDIN | HAS_STDERR, b"w", &[b"A=1"]);
        // Every truncation of a valid request, with the right descriptors.
        for len in 0..good.len() {
            let cut = &good[..len];
            // A cut exactly between fields is a shorter valid request only after the affinity.
            if let Ok(parsed) = Request::parse(cut, descriptors(4)) {
                assert!(parsed.env.is_empty(), "cut at {len} decoded an environment");
            }
        }
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (b"XXXX".to_vec(), 2, "wrong magic"),
            (good.clone(), 3, "a stream descriptor missing"),
            (good.clone(), 1, "the working directory missing"),
            (good.clone(), 5, "a descriptor too many"),
            (request(0, &[b'n'; NAME_ROOM], &[]), 2, "a name too long"),
            (
                request(0, b"w", &[b"A=\x001"]),
                2,
                "a NUL inside a variable",
            ),
            (
                [good.clone(), vec![0xff, 0xff, 0xff, 0xff]].concat(),
                4,
                "a length past the end",
            ),
        ];
        for (bytes, fds, what) in cases {
            assert_eq!(
                Request::parse(&bytes, descriptors(fds)).err(),
                Some(Errno::INVAL),
                "{what}"
            );
        }
    }
}
