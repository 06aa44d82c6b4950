//! The handshake each kind of [`Auth`] runs on a fresh connection, server and client side.
//!
//! | kind | bytes exchanged | checks |
//! |---|---|---|
//! | none | none | none |
//! | same-user | none | each side compares the peer's `SO_PEERCRED` uid with its own euid |
//! | key | Python's challenge, server first, then client ([`crate::challenge`]) | HMAC |
//! | TLS | the TLS handshake, then the key challenge inside it if there is a key | certificates (+ HMAC) |
//!
//! On a Unix socket the challenge reads exactly its frames and nothing more, so the socket is
//! handed to the descriptor-carrying channel with nothing the peer sent after it swallowed.
//!
//! Then, on a native Unix connection ([`Protocol::Native`]), the client offers the shared ring
//! of the connection's channel and the server takes it (`offer_ring` / `take_ring_offer` in
//! core's `transport::channel`, 16 bytes and a memfd), still within the handshake timeout.

use std::os::fd::AsFd;

use multiproc_core::transport::channel::{ChannelEnd, offer_ring, take_ring_offer};
use multiproc_core::transport::endpoint::{effective_uid, peer_credentials};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::auth::{Auth, AuthKind};
use crate::challenge::{self, ChallengeError, FAILURE, MAX_HANDSHAKE_MESSAGE, WELCOME};
use crate::error::{HandshakeError, HandshakeErrorKind};
use crate::framed::{BoxStream, Io};
use crate::peer::Peer;
use crate::wire::{read_frame, write_frame};

/// A fresh connection, before the handshake.
pub(crate) enum Raw {
    Unix(UnixStream),
    Tcp(TcpStream),
}

/// What the connection speaks once authenticated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Protocol {
    /// multiproc's own messages: over a Unix socket the connecting side then offers a shared
    /// ring, which the accepting side takes (`multiproc_core::transport::channel::offer_ring`),
    /// so small messages skip the socket as they do on a pipe.
    Native,
    /// Python's `multiprocessing.connection` frames: nothing after the handshake.
    Python,
}

/// A connection whose handshake succeeded.
pub(crate) enum Established {
    /// A Unix socket: descriptors can travel.
    Unix(UnixStream),
    /// A Unix socket with the shared ring in place (a native connection).
    Channel(ChannelEnd),
    /// Plain TCP: no descriptors.
    Tcp(TcpStream),
    /// Another byte stream (TLS): no descriptors.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Stream(BoxStream),
}

impl Established {
    /// The connection as a byte stream (for Python-compatible connections).
    ///
    /// # Panics
    /// On a native connection's channel end, which never reaches the Python protocol.
    pub(crate) fn into_io(self) -> Io {
        match self {
            Established::Unix(s) => Io::Unix(s),
            Established::Channel(_) => unreachable!("a native connection speaks no Python"),
            Established::Tcp(s) => Io::Tcp(s),
            Established::Stream(s) => Io::Other(s),
        }
    }
}

/// What is known of the peer of a fresh connection.
pub(crate) fn peer_of(raw: &Raw) -> Peer {
    match raw {
        Raw::Unix(s) => Peer {
            credentials: peer_credentials(s.as_fd()).ok(),
            addr: None,
        },
        Raw::Tcp(s) => Peer {
            credentials: None,
            addr: s.peer_addr().ok(),
        },
    }
}

/// Python's `deliver_challenge`: we challenge, the peer answers.
async fn deliver<I: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    io: &mut I,
    key: &[u8],
) -> Result<(), HandshakeError> {
    let (frame, message) = challenge::new_challenge()?;
    write_frame(io, &frame).await?;
    let reply = read_frame(io, MAX_HANDSHAKE_MESSAGE).await?;
    match challenge::verify(key, &message, &reply) {
        Ok(()) => Ok(write_frame(io, WELCOME).await?),
        Err(e) => {
            // Tell the peer, as Python does; it may be gone already.
            let _ = write_frame(io, FAILURE).await;
            Err(e.into())
        }
    }
}

/// Python's `answer_challenge`: the peer challenges, we answer.
async fn answer<I: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    io: &mut I,
    key: &[u8],
) -> Result<(), HandshakeError> {
    let frame = read_frame(io, MAX_HANDSHAKE_MESSAGE).await?;
    let reply = challenge::answer(key, &frame)?;
    write_frame(io, &reply).await?;
    let verdict = read_frame(io, MAX_HANDSHAKE_MESSAGE).await?;
    if verdict == WELCOME {
        Ok(())
    } else {
        Err(ChallengeError::Rejected.into())
    }
}

fn check_same_user(peer: &Peer) -> Result<(), HandshakeError> {
    let ours = effective_uid();
    match peer.uid() {
        Some(uid) if uid == ours => Ok(()),
        Some(uid) => Err(HandshakeError::new(HandshakeErrorKind::OtherUser {
            peer: uid,
            ours,
        })),
        None => Err(HandshakeError::new(HandshakeErrorKind::Io(
            std::io::Error::other("the peer's credentials are unknown"),
        ))),
    }
}

#[cfg(feature = "tls")]
fn tls_error(e: std::io::Error) -> HandshakeError {
    HandshakeError::new(HandshakeErrorKind::Tls(e))
}

/// Which end of the connection runs the handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The listener's: it challenges first.
    Server,
    /// The client's: it answers first.
    Client,
}

/// The mutual challenge, in Python's order: the listener delivers first, then answers.
async fn mutual<I: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    io: &mut I,
    key: &[u8],
    side: Side,
) -> Result<(), HandshakeError> {
    if side == Side::Server {
        deliver(io, key).await?;
        answer(io, key).await
    } else {
        answer(io, key).await?;
        deliver(io, key).await
    }
}

/// One side of the handshake, then the shared ring of a native Unix connection (all without
/// its timeout, which the caller applies).
pub(crate) async fn run(
    raw: Raw,
    peer: &Peer,
    auth: &Auth,
    side: Side,
    protocol: Protocol,
) -> Result<Established, HandshakeError> {
    let established = authenticate(raw, peer, auth, side).await?;
    match (established, protocol) {
        (Established::Unix(stream), Protocol::Native) => {
            let end = match side {
                Side::Client => offer_ring(stream).await,
                Side::Server => take_ring_offer(stream).await,
            };
            end.map(Established::Channel)
                .map_err(|e| HandshakeError::new(HandshakeErrorKind::Io(e)))
        }
        (established, _) => Ok(established),
    }
}

/// The authentication `auth` asks for.
async fn authenticate(
    raw: Raw,
    peer: &Peer,
    auth: &Auth,
    side: Side,
) -> Result<Established, HandshakeError> {
    let key = auth.key.as_deref();
    match (&auth.kind, raw) {
        (AuthKind::None, raw) => Ok(plain(raw)),
        (AuthKind::SameUser, raw) => {
            check_same_user(peer)?;
            Ok(plain(raw))
        }
        (AuthKind::Key, Raw::Unix(mut s)) => {
            mutual(&mut s, key.unwrap_or_default(), side).await?;
            Ok(Established::Unix(s))
        }
        (AuthKind::Key, Raw::Tcp(mut s)) => {
            mutual(&mut s, key.unwrap_or_default(), side).await?;
            Ok(Established::Tcp(s))
        }
        #[cfg(feature = "tls")]
        (AuthKind::TlsServer(config), Raw::Tcp(s)) if side == Side::Server => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let mut tls = acceptor.accept(s).await.map_err(tls_error)?;
            if let Some(key) = key {
                mutual(&mut tls, key, side).await?;
            }
            Ok(Established::Stream(Box::new(tls)))
        }
        #[cfg(feature = "tls")]
        (AuthKind::TlsClient(config, name), Raw::Tcp(s)) if side == Side::Client => {
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let mut tls = connector
                .connect(name.clone(), s)
                .await
                .map_err(tls_error)?;
            if let Some(key) = key {
                mutual(&mut tls, key, side).await?;
            }
            Ok(Established::Stream(Box::new(tls)))
        }
        // `fits` refuses the other combinations before a connection is made.
        #[cfg(feature = "tls")]
        _ => Err(HandshakeError::new(HandshakeErrorKind::Io(
            std::io::Error::other("this authentication does not fit this transport"),
        ))),
    }
}

fn plain(raw: Raw) -> Established {
    match raw {
        Raw::Unix(s) => Established::Unix(s),
        Raw::Tcp(s) => Established::Tcp(s),
    }
}

/// Whether `auth` can run over `address`; the reason if not.
pub(crate) fn fits(auth: &Auth, unix: bool, listening: bool) -> Result<(), &'static str> {
    #[cfg(not(feature = "tls"))]
    let _ = listening; // Only TLS has a side.
    match (&auth.kind, unix) {
        (AuthKind::SameUser, false) => Err("same-user authentication needs a Unix socket address"),
        #[cfg(feature = "tls")]
        (AuthKind::TlsServer(_) | AuthKind::TlsClient(..), true) => {
            Err("TLS runs over TCP addresses only")
        }
        #[cfg(feature = "tls")]
        (AuthKind::TlsClient(..), false) if listening => {
            Err("a listener needs the server side of TLS (Auth::tls_server)")
        }
        #[cfg(feature = "tls")]
        (AuthKind::TlsServer(_), false) if !listening => {
            Err("a client needs the client side of TLS (Auth::tls_client)")
        }
        _ => Ok(()),
    }
}
