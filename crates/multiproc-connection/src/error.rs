//! Errors of endpoint operations, one per operation: [`BindError`], [`AcceptError`],
//! [`ConnectError`], and the [`HandshakeError`] the last two share.

use std::fmt;
use std::io;

use crate::challenge::ChallengeError;
use crate::peer::Peer;
use crate::wire::ReadFrameError;

#[doc(inline)]
pub use multiproc_channel::error::{RecvTimeoutError, TryRecvError};
#[doc(inline)]
pub use multiproc_core::error::{DecodeError, EncodeError, RecvError, SendError, SendErrorKind};

/// Why [`Listener::bind`](crate::Listener::bind) failed.
#[derive(Debug)]
pub struct BindError {
    address: String,
    kind: BindErrorKind,
}

#[derive(Debug, thiserror::Error)]
enum BindErrorKind {
    #[error("address in use")]
    InUse(#[source] Option<io::Error>),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("socket error")]
    Io(#[source] io::Error),
}

impl BindError {
    pub(crate) fn in_use(address: impl ToString, e: Option<io::Error>) -> BindError {
        BindError {
            address: address.to_string(),
            kind: BindErrorKind::InUse(e),
        }
    }
    pub(crate) fn invalid(address: impl ToString, why: &'static str) -> BindError {
        BindError {
            address: address.to_string(),
            kind: BindErrorKind::Invalid(why),
        }
    }
    pub(crate) fn io(address: impl ToString, e: io::Error) -> BindError {
        if e.kind() == io::ErrorKind::AddrInUse {
            return BindError::in_use(address, Some(e));
        }
        BindError {
            address: address.to_string(),
            kind: BindErrorKind::Io(e),
        }
    }
    /// True when another listener (of this process, another one, or another program) holds
    /// the address: Python's `EADDRINUSE`.
    pub fn is_addr_in_use(&self) -> bool {
        matches!(self.kind, BindErrorKind::InUse(_))
    }
    /// True when the address and the authentication do not go together (same-user over TCP,
    /// TLS over a Unix socket).
    pub fn is_invalid(&self) -> bool {
        matches!(self.kind, BindErrorKind::Invalid(_))
    }
}

/// Why a handshake failed: the peer's authentication, a timeout, or the connection.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HandshakeError {
    kind: HandshakeErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeErrorKind {
    #[error("authentication failed")]
    Challenge(#[source] ChallengeError),
    #[error("authentication failed: the peer runs as uid {peer}, not as uid {ours}")]
    OtherUser { peer: u32, ours: u32 },
    #[error("handshake timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("handshake failed: the peer closed the connection")]
    Closed,
    #[error("handshake failed: unexpected message from the peer")]
    Protocol(#[source] ReadFrameError),
    #[cfg(feature = "tls")]
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
    #[error("handshake failed: socket error")]
    Io(#[source] io::Error),
}

impl HandshakeError {
    pub(crate) fn new(kind: HandshakeErrorKind) -> HandshakeError {
        HandshakeError { kind }
    }
    /// True when the peer failed authentication (wrong key, another user, a failed TLS
    /// handshake): Python's `AuthenticationError`.
    pub fn is_auth(&self) -> bool {
        matches!(
            self.kind,
            HandshakeErrorKind::Challenge(_) | HandshakeErrorKind::OtherUser { .. }
        ) || self.is_tls()
    }
    #[cfg(feature = "tls")]
    fn is_tls(&self) -> bool {
        matches!(self.kind, HandshakeErrorKind::Tls(_))
    }
    #[cfg(not(feature = "tls"))]
    fn is_tls(&self) -> bool {
        false
    }
    /// True when the handshake did not finish in time (a silent peer, or one expecting
    /// another kind of authentication).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, HandshakeErrorKind::Timeout(_))
    }
}

impl From<ReadFrameError> for HandshakeError {
    fn from(e: ReadFrameError) -> HandshakeError {
        HandshakeError::new(match e {
            ReadFrameError::Closed => HandshakeErrorKind::Closed,
            ReadFrameError::Io(e) => HandshakeErrorKind::Io(e),
            other => HandshakeErrorKind::Protocol(other),
        })
    }
}

impl From<ChallengeError> for HandshakeError {
    fn from(e: ChallengeError) -> HandshakeError {
        HandshakeError::new(HandshakeErrorKind::Challenge(e))
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> HandshakeError {
        HandshakeError::new(HandshakeErrorKind::Io(e))
    }
}

/// Why [`Listener::accept`](crate::Listener::accept) gave no connection.
///
/// Most are about one client whose handshake failed ([`is_handshake`](Self::is_handshake)):
/// the listener goes on serving, so log them and accept again. Only a
/// [`is_fatal`](Self::is_fatal) one means the listener itself stopped.
#[derive(Debug)]
pub struct AcceptError {
    kind: AcceptErrorKind,
    peer: Option<Peer>,
}

#[derive(Debug, thiserror::Error)]
enum AcceptErrorKind {
    #[error("a client's handshake failed")]
    Handshake(#[source] HandshakeError),
    #[error("the listener stopped")]
    Stopped(#[source] io::Error),
    #[error("the listener is closed")]
    Closed,
}

impl AcceptError {
    pub(crate) fn handshake(e: HandshakeError, peer: Peer) -> AcceptError {
        AcceptError {
            kind: AcceptErrorKind::Handshake(e),
            peer: Some(peer),
        }
    }
    pub(crate) fn stopped(e: io::Error) -> AcceptError {
        AcceptError {
            kind: AcceptErrorKind::Stopped(e),
            peer: None,
        }
    }
    pub(crate) fn closed() -> AcceptError {
        AcceptError {
            kind: AcceptErrorKind::Closed,
            peer: None,
        }
    }
    /// True when one client's handshake failed; the listener still serves others.
    pub fn is_handshake(&self) -> bool {
        matches!(self.kind, AcceptErrorKind::Handshake(_))
    }
    /// True when a client failed authentication (Python's `AuthenticationError`).
    pub fn is_auth(&self) -> bool {
        self.handshake_error().is_some_and(HandshakeError::is_auth)
    }
    /// True when a client's handshake timed out (it said nothing, or not what we expected).
    pub fn is_timeout(&self) -> bool {
        self.handshake_error()
            .is_some_and(HandshakeError::is_timeout)
    }
    /// True when the listener can accept nothing more.
    pub fn is_fatal(&self) -> bool {
        !self.is_handshake()
    }
    /// The listener was already done (an earlier error stopped it).
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.kind, AcceptErrorKind::Closed)
    }
    /// The handshake failure, for a client's failed handshake.
    pub fn handshake_error(&self) -> Option<&HandshakeError> {
        match &self.kind {
            AcceptErrorKind::Handshake(e) => Some(e),
            _ => None,
        }
    }
    /// What is known of the client whose handshake failed.
    pub fn peer(&self) -> Option<&Peer> {
        self.peer.as_ref()
    }
}

/// Why [`connect`](crate::connect) gave no connection.
#[derive(Debug)]
pub struct ConnectError {
    address: String,
    kind: ConnectErrorKind,
}

#[derive(Debug, thiserror::Error)]
enum ConnectErrorKind {
    #[error("{0}")]
    Invalid(&'static str),
    #[error("connection failed")]
    Connect(#[source] io::Error),
    #[error("handshake failed")]
    Handshake(#[source] HandshakeError),
}

impl ConnectError {
    pub(crate) fn invalid(address: impl ToString, why: &'static str) -> ConnectError {
        ConnectError {
            address: address.to_string(),
            kind: ConnectErrorKind::Invalid(why),
        }
    }
    pub(crate) fn connect(address: impl ToString, e: io::Error) -> ConnectError {
        ConnectError {
            address: address.to_string(),
            kind: ConnectErrorKind::Connect(e),
        }
    }
    pub(crate) fn handshake(address: impl ToString, e: HandshakeError) -> ConnectError {
        ConnectError {
            address: address.to_string(),
            kind: ConnectErrorKind::Handshake(e),
        }
    }
    /// True when the listener did not accept our authentication, or failed ours (Python's
    /// `AuthenticationError`).
    pub fn is_auth(&self) -> bool {
        self.handshake_error().is_some_and(HandshakeError::is_auth)
    }
    /// True when connecting or the handshake took longer than the handshake timeout.
    pub fn is_timeout(&self) -> bool {
        self.handshake_error()
            .is_some_and(HandshakeError::is_timeout)
    }
    /// True when nobody listens there (`ECONNREFUSED`, or no such socket file).
    pub fn is_refused(&self) -> bool {
        matches!(&self.kind, ConnectErrorKind::Connect(e)
            if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound))
    }
    /// The handshake failure, when the connection was made but the handshake failed.
    pub fn handshake_error(&self) -> Option<&HandshakeError> {
        match &self.kind {
            ConnectErrorKind::Handshake(e) => Some(e),
            _ => None,
        }
    }
}

// The outer errors print their own message and hand the cause out through `source()` only.

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on {}: {}", self.address, self.kind)
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}

impl fmt::Display for AcceptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl std::error::Error for AcceptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot connect to {}: {}", self.address, self.kind)
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}
