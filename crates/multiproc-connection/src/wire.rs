//! Python `multiprocessing.connection`'s framing on byte streams, used for the handshake on
//! every transport and for every message on TCP, TLS and Python-compatible connections.
//!
//! ```text
//! length (i32, big-endian) | payload                      lengths up to 2^31 - 1
//! -1 (i32, big-endian) | length (u64, big-endian) | payload   larger ones
//! ```
//!
//! The handshake reads frames one exact read at a time ([`read_frame`]), never past the frame,
//! so a Unix socket can be handed over to the descriptor-carrying channel right after it with
//! nothing the peer sent already swallowed.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A header that says "an 8-byte length follows".
const EXTENDED: i32 = -1;

/// The header for a payload of `len` bytes: 4 bytes, or 12 for lengths above `i32::MAX`.
pub(crate) fn header(len: usize) -> ([u8; 12], usize) {
    let mut out = [0u8; 12];
    if let Ok(small) = i32::try_from(len) {
        out[..4].copy_from_slice(&small.to_be_bytes());
        (out, 4)
    } else {
        out[..4].copy_from_slice(&EXTENDED.to_be_bytes());
        out[4..].copy_from_slice(&(len as u64).to_be_bytes());
        (out, 12)
    }
}

/// What the first four bytes of a frame say.
pub(crate) enum Prefix {
    /// The payload length.
    Len(u64),
    /// An 8-byte length follows.
    Extended,
}

/// Parses the first four bytes of a frame.
///
/// # Errors
/// A negative length other than -1: the stream is not this framing.
pub(crate) fn prefix(first: [u8; 4]) -> Result<Prefix, String> {
    match i32::from_be_bytes(first) {
        EXTENDED => Ok(Prefix::Extended),
        n if n >= 0 => Ok(Prefix::Len(n as u64)),
        n => Err(format!("negative frame length {n}")),
    }
}

/// Why a handshake frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFrameError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("bad message length {len} (at most {max} expected)")]
    TooLong { len: u64, max: usize },
    #[error("not a frame: {0}")]
    Corrupt(String),
    #[error("socket error")]
    Io(#[source] std::io::Error),
}

fn io(e: std::io::Error) -> ReadFrameError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ReadFrameError::Closed
    } else {
        ReadFrameError::Io(e)
    }
}

/// Reads one frame of at most `max` bytes, reading nothing past it.
pub(crate) async fn read_frame<I: AsyncRead + Unpin + ?Sized>(
    io_: &mut I,
    max: usize,
) -> Result<Vec<u8>, ReadFrameError> {
    let mut first = [0u8; 4];
    io_.read_exact(&mut first).await.map_err(io)?;
    let len = match prefix(first).map_err(ReadFrameError::Corrupt)? {
        Prefix::Len(n) => n,
        Prefix::Extended => {
            let mut long = [0u8; 8];
            io_.read_exact(&mut long).await.map_err(io)?;
            u64::from_be_bytes(long)
        }
    };
    if len > max as u64 {
        return Err(ReadFrameError::TooLong { len, max });
    }
    let mut payload = vec![0u8; len as usize];
    io_.read_exact(&mut payload).await.map_err(io)?;
    Ok(payload)
}

/// Writes one frame and flushes it.
pub(crate) async fn write_frame<I: AsyncWrite + Unpin + ?Sized>(
    io_: &mut I,
    payload: &[u8],
) -> std::io::Result<()> {
    let (head, n) = header(payload.len());
    let mut frame = Vec::with_capacity(n + payload.len());
    frame.extend_from_slice(&head[..n]);
    frame.extend_from_slice(payload);
    io_.write_all(&frame).await?;
    io_.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_match_python() {
        // struct.pack("!i", 5)
        assert_eq!(&header(5).0[..header(5).1], &[0, 0, 0, 5]);
        let (h, n) = header(0x8000_0000);
        assert_eq!(n, 12);
        assert_eq!(&h[..4], &[0xff; 4]);
        assert_eq!(&h[4..], &0x8000_0000u64.to_be_bytes());
        assert!(prefix([0xff, 0xff, 0xff, 0xfe]).is_err());
        assert!(matches!(prefix([0xff; 4]), Ok(Prefix::Extended)));
    }

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"hello").await.unwrap();
        write_frame(&mut a, &[1; 300]).await.unwrap();
        assert_eq!(read_frame(&mut b, 256).await.unwrap(), b"hello");
        assert!(matches!(
            read_frame(&mut b, 256).await,
            Err(ReadFrameError::TooLong { len: 300, .. })
        ));
        drop(a);
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 300);
        assert!(matches!(
            read_frame(&mut b, 256).await,
            Err(ReadFrameError::Closed)
        ));
    }
}
