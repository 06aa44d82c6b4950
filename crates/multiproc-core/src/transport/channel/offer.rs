//! The shared ring of a connection that was not made as a pair: two programs that met on a
//! listening socket (`multiproc::connection`) have one socket and no common region, so the
//! connecting side makes the region and offers it as the first bytes on the socket, and the
//! accepting side takes it before anything else is read.
//!
//! The offer is [`OFFER_LEN`] bytes (a magic and the region's length) with the region's memfd
//! beside them (`SCM_RIGHTS`). The taker reads exactly those bytes, so the frames that follow
//! stay in the socket for the channel, and checks everything: the magic, one descriptor, a
//! memfd sealed against shrinking (so the offerer cannot make the taker's mapping fault later)
//! and of the right size. Anything else is an `InvalidData` error and no end is made.
//!
//! The offerer is end 0 of the ring, the taker end 1. Offering takes no round trip: the
//! offerer's first message may follow the offer at once.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use tokio::io::Interest;
use tokio::net::UnixStream;

use super::ChannelEnd;
use super::ring::{REGION_LEN, RingShare, new_token};
use crate::SharedFd;
use crate::shm::SharedRegion;
use crate::sys;

/// The magic that opens an offer: "multiproc ring", version 1.
const OFFER_MAGIC: [u8; 8] = *b"MPRING01";
/// Bytes of an offer: the magic and the region's length (little-endian `u64`).
pub const OFFER_LEN: usize = 16;

/// Makes a shared ring for the connected Unix stream socket `stream` and offers it to the peer
/// (which takes it with [`take_ring_offer`]); returns this side's end, socket and ring.
///
/// # Errors
/// When the region cannot be made (out of memory or descriptors) or the socket fails (the
/// peer closed).
///
/// # Cancel safety
/// Not cancel safe: dropping the future may leave part of an offer on the socket, which the
/// peer then refuses.
pub async fn offer_ring(stream: UnixStream) -> io::Result<ChannelEnd> {
    let (mine, theirs) = RingShare::pair()?;
    let mut offer = [0u8; OFFER_LEN];
    offer[..8].copy_from_slice(&OFFER_MAGIC);
    offer[8..].copy_from_slice(&(REGION_LEN as u64).to_le_bytes());
    let region = theirs.region().shared_fd().clone();
    let mut sent = 0;
    while sent < OFFER_LEN {
        sent += stream
            .async_io(Interest::WRITABLE, || {
                // The descriptor goes with the first byte; a short write sends the rest alone.
                let fds = if sent == 0 {
                    vec![region.as_fd()]
                } else {
                    Vec::new()
                };
                sys::send_with_fds(stream.as_fd(), &offer[sent..], &fds)
            })
            .await?;
    }
    let fd = SharedFd::new(OwnedFd::from(stream.into_std()?));
    Ok(ChannelEnd::with_ring(fd, mine, new_token()))
}

/// Reads the ring offer the peer of `stream` made with [`offer_ring`], and nothing after it;
/// returns this side's end, socket and ring.
///
/// # Errors
/// `UnexpectedEof` when the peer closed before offering; `InvalidData` when what it sent is not
/// an offer (wrong magic or length, no descriptor or several, a region that is not a sealed
/// memfd of the right size); the socket's error otherwise.
///
/// # Cancel safety
/// Not cancel safe: dropping the future may leave part of the offer read, and the connection
/// is then unusable.
pub async fn take_ring_offer(stream: UnixStream) -> io::Result<ChannelEnd> {
    let mut offer = [0u8; OFFER_LEN];
    let mut got = 0;
    let mut fds: Vec<OwnedFd> = Vec::new();
    while got < OFFER_LEN {
        let received = stream
            .async_io(Interest::READABLE, || {
                sys::recv_with_fds(stream.as_fd(), &mut offer[got..], &mut fds)
            })
            .await?;
        if received.fds_truncated {
            return Err(not_an_offer("more descriptors than an offer carries"));
        }
        if received.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection before offering its shared ring",
            ));
        }
        got += received.bytes;
    }
    if offer[..8] != OFFER_MAGIC {
        return Err(not_an_offer(
            "it does not start with the ring offer's magic",
        ));
    }
    let len = u64::from_le_bytes(offer[8..].try_into().expect("8 bytes"));
    if len != REGION_LEN as u64 {
        return Err(not_an_offer(&format!(
            "it offers a region of {len} bytes, not {REGION_LEN}"
        )));
    }
    if fds.len() != 1 {
        return Err(not_an_offer(&format!(
            "it came with {} descriptors, not one",
            fds.len()
        )));
    }
    let region = SharedRegion::from_received(SharedFd::new(fds.remove(0)), REGION_LEN)?;
    let fd = SharedFd::new(OwnedFd::from(stream.into_std()?));
    Ok(ChannelEnd::with_ring(
        fd,
        RingShare::taken(region),
        new_token(),
    ))
}

fn not_an_offer(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the peer's first bytes are not a shared ring offer: {why}"),
    )
}
