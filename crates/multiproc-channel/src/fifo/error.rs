//! Errors of FIFO operations, one per operation.

use std::io;

use multiproc_core::{DecodeError, EncodeError};

/// Error of opening a FIFO end ([`FifoSender::open`](super::FifoSender::open) and friends,
/// [`FifoReceiver::open`](super::FifoReceiver::open)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FifoOpenError {
    /// No process has the FIFO open for reading (only from
    /// [`try_open`](super::FifoSender::try_open)).
    #[error("no process has the FIFO open for reading")]
    NoReader,
    /// A single writer has the FIFO open, or (opening a single writer) other senders do.
    #[error("the FIFO is held by a sender that excludes this one")]
    WriterConflict,
    /// Another receiver (in any process of this user) has the FIFO open: a FIFO has one
    /// reader, since two would tear each other's frames.
    #[error("another receiver has the FIFO open")]
    ReaderConflict,
    /// The path does not exist, is not a FIFO, or cannot be opened.
    #[error("cannot open the FIFO")]
    Io(#[source] io::Error),
}

/// Error of [`FifoSender::send`](super::FifoSender::send).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FifoSendError {
    /// The message is larger than one atomic write allows for a FIFO with several writers
    /// (nothing was written). Open the sender with
    /// [`open_single_writer`](super::FifoSender::open_single_writer) for larger messages.
    #[error(
        "a message of {len} bytes is over the {limit} bytes a FIFO with several writers can take in one atomic write"
    )]
    TooLarge {
        /// The encoded message's length.
        len: usize,
        /// [`MAX_SHARED_MESSAGE`](super::MAX_SHARED_MESSAGE).
        limit: usize,
    },
    /// The message holds handles (file descriptors), which cannot travel through a FIFO.
    #[error(
        "a message holding {0} handle descriptor(s) cannot be sent through a FIFO (use multiproc::named or a pipe)"
    )]
    Descriptors(usize),
    /// The value could not be encoded.
    #[error("cannot encode the message")]
    Encode(#[source] EncodeError),
    /// Every reader closed the FIFO (`EPIPE`).
    #[error("no process has the FIFO open for reading any more")]
    Closed,
    /// The write failed otherwise.
    #[error("cannot write to the FIFO")]
    Io(#[source] io::Error),
}

/// Error of [`FifoReceiver::recv`](super::FifoReceiver::recv).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FifoRecvError {
    /// A whole message arrived but is not the expected type; the FIFO stays usable.
    #[error("cannot decode the message")]
    Decode(#[source] DecodeError),
    /// A frame announces more than the receiver's limit: the bytes are not frames of this
    /// protocol (or a writer garbled them); the stream cannot be resynchronized.
    #[error("a frame announces {len} bytes, over this receiver's limit of {limit}")]
    Corrupt {
        /// The announced length.
        len: usize,
        /// The receiver's limit.
        limit: usize,
    },
    /// Every writer closed in the middle of a frame (a writer died mid-message); the partial
    /// frame was dropped.
    #[error("the FIFO's writers closed in the middle of a message ({0} bytes dropped)")]
    Truncated(usize),
    /// The read failed.
    #[error("cannot read from the FIFO")]
    Io(#[source] io::Error),
}
