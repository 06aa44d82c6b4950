//! The wire format of a channel: a 12-byte header, then the postcard payload.
//!
//! ```text
//! magic "MPF1" (u32 LE) | payload length (u32 LE) | descriptor count (u32 LE) | payload
//! ```
//!
//! Two more magics exist on channels with a shared ring (see `channel`'s module docs): "MPF2",
//! a frame the ring's owner sent through the socket (counted, so the receiver can keep its
//! order against the ring's records), and "MPFW", a wake-up with no payload that is never
//! delivered.
//!
//! The descriptors travel as `SCM_RIGHTS` attached to the frame's own bytes (at most 253 to a
//! `sendmsg`), so they have all arrived by the time its last byte has.

/// Header size in bytes.
pub(crate) const HEADER_LEN: usize = 12;
const MAGIC: u32 = u32::from_le_bytes(*b"MPF1");
const MAGIC_OWNED: u32 = u32::from_le_bytes(*b"MPF2");
const MAGIC_WAKE: u32 = u32::from_le_bytes(*b"MPFW");

/// What a frame is, by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Kind {
    /// An ordinary frame.
    #[default]
    Plain,
    /// A frame the owner of the channel's ring sent through the socket.
    Owned,
    /// A wake-up for a receiver parked on the ring: no payload, never delivered.
    Wake,
}
/// Most descriptors one message may carry; far above any process's descriptor limit.
pub(crate) const MAX_FDS_PER_FRAME: u32 = 1 << 16;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Header {
    pub len: u32,
    pub fds: u32,
    pub kind: Kind,
}

/// Why a header could not be parsed; the stream cannot be trusted after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    BadMagic([u8; 4]),
    TooManyFds(u32),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::BadMagic(m) => {
                write!(f, "frame starts with {m:02x?}, not the multiproc magic")
            }
            HeaderError::TooManyFds(n) => {
                write!(
                    f,
                    "frame claims {n} descriptors (limit {MAX_FDS_PER_FRAME})"
                )
            }
        }
    }
}

impl Header {
    #[inline]
    pub(crate) fn encode(self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        let magic = match self.kind {
            Kind::Plain => MAGIC,
            Kind::Owned => MAGIC_OWNED,
            Kind::Wake => MAGIC_WAKE,
        };
        out[0..4].copy_from_slice(&magic.to_le_bytes());
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..12].copy_from_slice(&self.fds.to_le_bytes());
        out
    }

    /// The fields, or `None` when the magic is not one of ours.
    #[inline]
    fn fields(bytes: &[u8; HEADER_LEN]) -> Option<Header> {
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let kind = match word(0) {
            MAGIC => Kind::Plain,
            MAGIC_OWNED => Kind::Owned,
            MAGIC_WAKE => Kind::Wake,
            _ => return None,
        };
        Some(Header {
            len: word(4),
            fds: word(8),
            kind,
        })
    }

    /// A header this process encoded, read back without the checks that input from another
    /// process needs.
    #[inline]
    pub(crate) fn decode_own(bytes: &[u8; HEADER_LEN]) -> Header {
        Self::fields(bytes).unwrap_or_default()
    }

    #[inline]
    pub(crate) fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        let header = Self::fields(bytes)
            .ok_or_else(|| HeaderError::BadMagic([bytes[0], bytes[1], bytes[2], bytes[3]]))?;
        if header.fds > MAX_FDS_PER_FRAME {
            return Err(HeaderError::TooManyFds(header.fds));
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header {
            len: 0xdead_beef,
            fds: 300,
            kind: Kind::Owned,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn bad_magic_is_named() {
        let mut raw = Header {
            len: 1,
            ..Header::default()
        }
        .encode();
        raw[0] = b'X';
        let err = Header::decode(&raw).unwrap_err();
        assert!(matches!(err, HeaderError::BadMagic(_)));
        assert!(err.to_string().contains("magic"));
    }

    #[test]
    fn absurd_descriptor_count_is_rejected() {
        let raw = Header {
            len: 1,
            fds: MAX_FDS_PER_FRAME + 1,
            ..Header::default()
        }
        .encode();
        assert_eq!(
            Header::decode(&raw),
            Err(HeaderError::TooManyFds(MAX_FDS_PER_FRAME + 1))
        );
    }
}
