//! Errors of channel operations.

#[doc(inline)]
pub use multiproc_core::DescriptorError;
#[doc(inline)]
pub use multiproc_core::error::{DecodeError, EncodeError, RecvError, SendError, SendErrorKind};

/// Why [`try_recv`](crate::pipe::Receiver::try_recv) returned no message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// No whole message is waiting right now.
    #[error("no message is waiting")]
    Empty,
    /// The peer closed and every message was delivered.
    #[error("the sending end is closed")]
    Closed,
    /// A message arrived but could not be received.
    #[error(transparent)]
    Failed(#[from] RecvError),
}

/// Why [`recv_timeout`](crate::pipe::Receiver::recv_timeout) returned no message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// Nothing arrived in time; the channel is still usable.
    #[error("timed out waiting for a message")]
    Timeout,
    /// A message arrived but could not be received.
    #[error(transparent)]
    Failed(#[from] RecvError),
}

impl RecvTimeoutError {
    /// True for [`RecvTimeoutError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }
}

#[doc(inline)]
pub use crate::queue::error::{
    GetError, GetTimeoutError, JoinTimeoutError, PutError, PutErrorKind, PutTimeoutError,
    TaskDoneError, TryGetError, TryPutError,
};
