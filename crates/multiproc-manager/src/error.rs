//! Errors of manager operations: [`OpError`] for every operation on a served value (and
//! opening one), [`StartError`] for starting a manager, [`ShutdownError`] for stopping one,
//! `ServeError` and `ConnectError` (feature `remote`) for serving one on an endpoint and
//! connecting to it.

use std::fmt;
use std::io;

use multiproc_core::{EncodeError, RecvError, SendErrorKind};

use crate::wire::{BlobError, Failure, KeyError};

/// Why an operation on a served value failed.
///
/// Opaque: ask with the predicates. The cause, when there is one, is [`source`]
/// (std::error::Error::source).
///
/// [`source`]: std::error::Error::source
pub struct OpError {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Gone(Option<RecvError>),
    Encode(EncodeError),
    Key(KeyError),
    Decode(BlobError),
    Failed(Failure),
    Io(io::Error),
    Send(SendErrorKind),
    Protocol(String, Option<RecvError>),
    OtherManager,
    #[cfg(feature = "remote")]
    Connect(multiproc_connection::error::ConnectError),
}

impl OpError {
    pub(crate) fn gone() -> Self {
        Self {
            kind: Kind::Gone(None),
        }
    }
    pub(crate) fn gone_with(e: RecvError) -> Self {
        Self {
            kind: Kind::Gone(Some(e)),
        }
    }
    pub(crate) fn encode(e: EncodeError) -> Self {
        Self {
            kind: Kind::Encode(e),
        }
    }
    pub(crate) fn key(e: KeyError) -> Self {
        Self { kind: Kind::Key(e) }
    }
    pub(crate) fn decode(e: BlobError) -> Self {
        Self {
            kind: Kind::Decode(e),
        }
    }
    pub(crate) fn failed(e: Failure) -> Self {
        Self {
            kind: Kind::Failed(e),
        }
    }
    pub(crate) fn io(e: io::Error) -> Self {
        Self { kind: Kind::Io(e) }
    }
    pub(crate) fn send(e: SendErrorKind) -> Self {
        Self {
            kind: Kind::Send(e),
        }
    }
    pub(crate) fn protocol(what: &str) -> Self {
        Self {
            kind: Kind::Protocol(what.into(), None),
        }
    }
    pub(crate) fn protocol_with(e: RecvError) -> Self {
        Self {
            kind: Kind::Protocol(
                "an answer from the manager could not be read".into(),
                Some(e),
            ),
        }
    }
    /// A connection to a remote manager could not be made: refused means gone.
    #[cfg(feature = "remote")]
    pub(crate) fn connect(e: multiproc_connection::error::ConnectError) -> Self {
        // Refused, or closed by the listener before the handshake was done: nobody serves it.
        let closed = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::UnexpectedEof
                )
            });
        if e.is_refused() || closed {
            return Self::gone();
        }
        Self {
            kind: Kind::Connect(e),
        }
    }
    pub(crate) fn other_manager() -> Self {
        Self {
            kind: Kind::OtherManager,
        }
    }

    /// True when the manager is gone: killed, shut down, or its owner dropped it. Every later
    /// operation on a proxy of that manager fails the same way, at once.
    pub fn is_manager_gone(&self) -> bool {
        matches!(self.kind, Kind::Gone(_))
    }

    /// True when a value, argument or key could not be encoded in the caller (nothing was sent).
    pub fn is_encode(&self) -> bool {
        matches!(self.kind, Kind::Encode(_) | Kind::Key(_))
    }

    /// True when the served value is not what this proxy expects: another kind (a list opened
    /// as a map), another Rust type, or an answer that does not decode as the proxy's type.
    pub fn is_wrong_type(&self) -> bool {
        matches!(
            self.kind,
            Kind::Decode(_)
                | Kind::Failed(
                    Failure::WrongKind { .. } | Failure::WrongType { .. } | Failure::Undecodable(_)
                )
        )
    }

    /// True when a remote manager refused this process's authentication.
    pub fn is_auth(&self) -> bool {
        #[cfg(feature = "remote")]
        if let Kind::Connect(e) = &self.kind {
            return e.is_auth();
        }
        false
    }

    /// True when a list index was out of range (nothing was changed).
    pub fn is_out_of_range(&self) -> bool {
        matches!(self.kind, Kind::Failed(Failure::OutOfRange { .. }))
    }

    /// True when the update function panicked inside the manager; the value was left as it
    /// was, and the manager keeps serving.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, Kind::Failed(Failure::Panicked(_)))
    }

    /// The panic message of an update function that panicked in the manager.
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            Kind::Failed(Failure::Panicked(m)) => Some(m),
            _ => None,
        }
    }
}

impl fmt::Debug for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpError").field("kind", &self.kind).finish()
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Gone(_) => {
                f.write_str("the manager is gone (killed, shut down, or dropped by its owner)")
            }
            Kind::Encode(_) => f.write_str("could not encode the value for the manager"),
            Kind::Key(KeyError::Handles) => {
                f.write_str("a map key cannot hold handles (descriptors)")
            }
            Kind::Key(KeyError::Encode(_)) => {
                f.write_str("could not encode the key for the manager")
            }
            Kind::Decode(_) => f.write_str("the manager's answer is not of the proxy's type"),
            Kind::Failed(failure) => write!(f, "the manager refused the operation: {failure}"),
            Kind::Io(_) => f.write_str("could not reach the manager"),
            Kind::Send(_) => f.write_str("could not send the request to the manager"),
            Kind::Protocol(what, _) => f.write_str(what),
            Kind::OtherManager => {
                f.write_str("a batch or pipeline holds operations of two different managers")
            }
            #[cfg(feature = "remote")]
            Kind::Connect(_) => f.write_str("could not connect to the remote manager"),
        }
    }
}

impl std::error::Error for OpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Gone(Some(e)) | Kind::Protocol(_, Some(e)) => Some(e),
            Kind::Encode(e) | Kind::Key(KeyError::Encode(e)) => Some(e),
            Kind::Decode(e) => Some(e),
            Kind::Io(e) => Some(e),
            Kind::Send(e) => Some(e),
            #[cfg(feature = "remote")]
            Kind::Connect(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a manager could not be started.
#[derive(Debug, thiserror::Error)]
#[error("could not start the manager process")]
pub struct StartError {
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StartError {
    pub(crate) fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

/// Why [`Manager::shutdown`](crate::Manager::shutdown) did not see the manager exit cleanly.
#[derive(Debug, thiserror::Error)]
#[error("the manager process did not exit cleanly")]
pub struct ShutdownError {
    #[source]
    source: multiproc_process::JoinError,
}

impl ShutdownError {
    pub(crate) fn new(source: multiproc_process::JoinError) -> Self {
        Self { source }
    }

    /// The join error: how the manager process ended (killed by a signal, ...).
    pub fn join_error(&self) -> &multiproc_process::JoinError {
        &self.source
    }
}

/// Why [`connect`](crate::connect) could not reach a served manager.
#[cfg(feature = "remote")]
#[derive(Debug, thiserror::Error)]
#[error("could not connect to the manager")]
pub struct ConnectError {
    #[source]
    source: OpError,
}

#[cfg(feature = "remote")]
impl ConnectError {
    pub(crate) fn new(source: OpError) -> Self {
        Self { source }
    }

    /// True when the manager refused this client's authentication (a wrong key, say).
    pub fn is_auth(&self) -> bool {
        self.source.is_auth()
    }

    /// True when nothing answered at the address (no manager served there, or it is gone, or
    /// it stopped serving).
    pub fn is_unreachable(&self) -> bool {
        self.source.is_manager_gone()
    }
}

/// Why [`Client::serve`](crate::Client::serve) could not serve the manager.
#[cfg(feature = "remote")]
#[derive(Debug, thiserror::Error)]
#[error("could not serve the manager")]
pub struct ServeError {
    #[source]
    source: multiproc_connection::error::BindError,
}

#[cfg(feature = "remote")]
impl ServeError {
    pub(crate) fn new(source: multiproc_connection::error::BindError) -> Self {
        Self { source }
    }

    /// True when another listener (of any program) has the address.
    pub fn is_addr_in_use(&self) -> bool {
        self.source.is_addr_in_use()
    }
}
