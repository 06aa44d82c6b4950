//! A message lent by a batch receive ([`Receiver::recv_many_borrowed`](super::Receiver::recv_many_borrowed)).

use std::fmt;
use std::os::fd::OwnedFd;

use multiproc_core::message;
use serde::Deserialize;

use crate::error::RecvError;

/// One message of a batch, still in the receiver's buffer: decode it as a value borrowing
/// from it, or look at its bytes. Lent for the duration of the call that got it.
pub struct Lent<'a> {
    bytes: &'a [u8],
    fds: Vec<OwnedFd>,
}

impl<'a> Lent<'a> {
    pub(super) fn new(bytes: &'a [u8], fds: Vec<OwnedFd>) -> Self {
        Self { bytes, fds }
    }

    /// Decodes the message as `V`, the borrowed form of the pipe's type (as for
    /// [`Receiver::recv_borrowed`](super::Receiver::recv_borrowed)): nothing is allocated or
    /// copied for its borrowed parts.
    ///
    /// # Errors
    /// [`RecvError::Decode`] when the bytes do not form a `V`, or when the message carries
    /// handles, which a borrowed value cannot hold
    /// ([`DecodeError::carries_descriptors`](crate::error::DecodeError::carries_descriptors));
    /// the message's descriptors are closed. Either way the pipe goes on with the next message.
    pub fn decode<V: Deserialize<'a>>(self) -> Result<V, RecvError> {
        message::decode_borrowed(self.bytes, self.fds).map_err(RecvError::Decode)
    }

    /// The message's encoding (postcard, as [`Receiver::recv_bytes`](super::Receiver::recv_bytes)
    /// would give it).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl fmt::Debug for Lent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent")
            .field("len", &self.bytes.len())
            .field("handles", &self.fds.len())
            .finish()
    }
}
