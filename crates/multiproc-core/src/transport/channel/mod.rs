//! The untyped channel: frames of bytes plus descriptors over a Unix stream socket.
//!
//! [`RawSender`] batches frames in a buffer and writes them with as few `sendmsg` calls as the
//! descriptors allow; [`RawReceiver`] reads large chunks and hands out whole frames. Both have an
//! async face (tokio readiness) and a blocking face (`poll(2)`), over the same state, so an end
//! can be used from either kind of code. For bulk bytes, [`RawSender::send_bytes`] writes a frame
//! from the caller's slice and [`RawReceiver::poll_recv_bytes`] reads a large frame into a `Vec`
//! of its own, so neither copies the payload in user space; for typed messages that are one
//! large byte string, [`RawSender::push_message`] and [`RawReceiver::poll_recv_typed`] do the
//! same with the value's own bytes.
//!
//! One job per file: [`RawSender`] (`sender/`: the outbox of batched frames, the zero-copy
//! [`SendBytes`] future, the thread that finishes what a dropped sender still owes),
//! [`RawReceiver`] (`receiver/`: frame assembly in the receive buffer, the spin before a park)
//! and the pair's shared ring (`ring.rs`, over [`shm::SpscRing`](crate::shm::SpscRing)).
//!
//! # The shared ring
//! Ends made as a pair by [`pair`] (every pipe) also share one memfd region: per direction, a
//! single-producer single-consumer ring of small frames (payload up to 4 KiB, 32 KiB of ring)
//! and a few control words. The path is chosen when buffered frames are written (a flush): a
//! frame that goes out alone (a send, a request, a reply) without descriptors and fits goes
//! into the ring: no system call, and a receiver that spins for it sees it with a few loads. A
//! frame with descriptors, or too large, or with no room left in the ring, or written with
//! others (a batch fed to a `Sink`, which one `sendmsg` moves more cheaply per frame than the
//! ring's copies and cache-line transfers, and which the receiver then takes in runs without
//! looking at the ring per frame), goes through the socket as before. Ends over
//! a bare socket ([`split`], [`ChannelEnd::from_fd`]: the spawner's control socket, the pool,
//! accepted connections) have no ring and work exactly as before.
//!
//! **Order.** The sender that owns the ring (below) marks each socket frame it sends with the
//! "MPF2" magic and counts them in a shared word (once per flush, before the write); each ring
//! record carries that count as it was when the record was written (the number of owned socket
//! frames before it). The receiver counts the owned socket frames it delivered (skipped oversize
//! ones included) and delivers the ring's front record only once that count has reached the
//! record's, and before any socket frame still buffered. So the sender's order holds exactly across
//! both paths: a record never overtakes a socket frame sent before it (the count), and a socket
//! frame never overtakes a record published before it (the record is visible before the socket
//! frame can be read, since it was published first and a `recvmsg` that returns the frame orders
//! after its `sendmsg`, and the sender publishes before every write; the receiver reads the ring's
//! head after each read of the socket and whenever nothing is buffered, so frames already buffered,
//! all written before any record it has not seen, go first). A sequence number on every frame would
//! do the same, but would change the socket's frame header and cost a word per frame; the count
//! only touches frames that go through the socket.
//!
//! **Waiting.** A receive that finds nothing spins only when an answer is due (as before), by
//! the one spin policy (`wait::spin`): on the ring it busy-reads the ring's head and the owned
//! count while the sender runs on another CPU (the sender publishes its CPU), with no system
//! call. Before it parks on the socket, the receiver sets a `PARKED` word, issues a SeqCst
//! fence, and looks at the ring once more; the sender, after publishing records, issues a
//! SeqCst fence, reads `PARKED`, and if set swaps it to zero and sends a one-header wake frame
//! ("MPFW", never delivered) through the socket. The two fences order the two store-then-load
//! pairs (Dekker's pattern, the futex protocol), so either the sender sees the receiver parked
//! and wakes it, or the receiver sees the record and does not park: no wake-up is lost. Socket
//! frames wake a parked receiver by themselves. A dropped receiver leaves `PARKED` set, so a
//! sender's next record is followed by a wake frame whose write fails once every copy of the
//! receiving end is closed: a send to a closed pipe still fails. (A send into the ring after
//! the receiving process was killed while not parked is not noticed until the next write to
//! the socket, at the latest once the ring is full; it is lost as any message in flight to a
//! dying process is.)
//!
//! **Dead and hostile peers.** A peer that dies mid-frame or never publishes: its socket's
//! hang-up ends the stream exactly as before (the receiver parks on the socket, so it always
//! sees the hang-up; records published before the hang-up are delivered first, and records
//! that wait for an owned socket frame that never came are dropped with the stream). A stale
//! wake frame still unread when a peer closes makes the kernel report `ECONNRESET` after the
//! last frame; with a ring that is read as end-of-stream. Every read of the ring is checked: a
//! corrupt record is [`RecvError::Corrupt`](crate::error::RecvError::Corrupt), never a panic or
//! a read out of bounds.
//!
//! **Copies of an end.** An end can be serialized (`&self`) and used in two processes at once,
//! but a ring has one producer and one consumer. The producer side is arbitrated: an `OWNER`
//! word names the sender copy that may write the ring (a token of pid and counter); a copy
//! claims it when it is free, releases it on drop, and hands it to the copy it serializes
//! ([`RawSender::to_end`]), so the usual "pass the end to a child and drop ours" moves the fast
//! path with the end. A copy that wants to send while another live copy owns the ring switches
//! the direction to the socket for good (a `MODE` word): from then on every copy sends plain
//! socket frames, and the records already in the ring are still delivered first. The consumer
//! side needs no arbitration: its positions (the ring's tail, the owned count) live in the
//! region, so whichever copy receives next goes on from there; two copies receiving at once
//! were never supported (each reads the socket in large chunks).

use std::io;
use std::sync::Arc;

use crate::SharedFd;
use crate::sys;
use crate::transport::socket::Socket;

mod offer;
mod receiver;
mod ring;
mod sender;
#[cfg(test)]
mod tests;

pub use crate::message::Payload;
pub use offer::{OFFER_LEN, offer_ring, take_ring_offer};
pub use receiver::{RawReceiver, TryRecv};
pub use ring::ChannelEnd;
use ring::{RingShare, RxRing, TxRing, new_token};
pub use sender::{RawSender, SendBytes};

/// Buffers above this size are released once empty, so one huge message does not pin memory.
const KEEP_CAPACITY: usize = 4 << 20;

/// Creates a connected pair of Unix stream sockets for a channel.
///
/// # Errors
/// When the process is out of descriptors.
///
/// # References
/// - [`socketpair(2)`](https://man7.org/linux/man-pages/man2/socketpair.2.html)
pub fn socket_pair() -> io::Result<(SharedFd, SharedFd)> {
    let (a, b) = sys::stream_socketpair()?;
    Ok((SharedFd::new(a), SharedFd::new(b)))
}

/// Creates a connected pair of channel ends with a shared ring: a socket pair, and one shared
/// region (a memfd) holding each direction's ring of small frames (see the module docs, "The
/// shared ring").
///
/// # Errors
/// When the process is out of descriptors or memory.
pub fn pair() -> io::Result<(ChannelEnd, ChannelEnd)> {
    let (a, b) = socket_pair()?;
    let (ring_a, ring_b) = RingShare::pair()?;
    Ok((
        ChannelEnd::with_ring(a, ring_a, new_token()),
        ChannelEnd::with_ring(b, ring_b, new_token()),
    ))
}

/// Splits a channel end into its sending and receiving halves, which share a single tokio
/// registration (and the end's shared ring, if it has one).
///
/// # Errors
/// When the end's descriptor is not a socket, or its ring region is malformed (an end received
/// from another process).
pub fn split_end(mut end: ChannelEnd) -> io::Result<(RawSender, RawReceiver)> {
    let ring = end.take_ring()?;
    let (mut tx, mut rx) = split(end.fd)?;
    if let Some((share, token)) = ring {
        rx.ring = Some(Box::new(RxRing::new(share.clone())));
        tx.ring = Some(Box::new(TxRing::new(share, token)));
    }
    Ok((tx, rx))
}

/// Splits one socket into its sending and receiving halves, which share a single tokio
/// registration. The halves have no shared ring: every frame goes through the socket.
///
/// # Errors
/// When `fd` is not a socket.
pub fn split(fd: SharedFd) -> io::Result<(RawSender, RawReceiver)> {
    if !sys::is_socket(&fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "channel descriptor {} is not a socket",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ),
        ));
    }
    let socket = Arc::new(Socket::new(fd));
    Ok((
        RawSender::with_socket(socket.clone()),
        RawReceiver::with_socket(socket),
    ))
}
