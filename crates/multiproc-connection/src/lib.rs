//! Named endpoints for [multiproc](https://docs.rs/multiproc): programs that were started
//! separately find each other at an address, authenticate, and talk through typed ends
//! (Python's `multiprocessing.connection`: `Listener`, `Client`, `authkey`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use multiproc::connection::{Address, Auth, Listener, connect};
//!
//! // The server program.
//! let path = std::env::temp_dir().join(format!("doc-tour-{}.sock", std::process::id()));
//! let mut listener = Listener::<String, String>::bind(&*path, Auth::key(b"secret")).await?;
//!
//! // The client program (normally another process).
//! let mut client = connect::<String, String>(&*path, Auth::key(b"secret")).await?;
//! client.send("hello".into()).await?;
//!
//! let (mut conn, peer) = listener.accept().await?;
//! println!("client pid {:?}", peer.pid());
//! let text = conn.recv().await?.unwrap();
//! conn.send(text.to_uppercase()).await?;
//! assert_eq!(client.recv().await?.as_deref(), Some("HELLO"));
//! # Ok(())
//! # }
//! ```
//!
//! - **Addresses** ([`Address`]): a Unix socket path, a Linux abstract name, or TCP. A socket
//!   file left behind by a listener that was killed is reclaimed by the next bind; of two
//!   listeners racing for one path exactly one wins; the listener removes its file when dropped.
//! - **Authentication** ([`Auth`]): none; same user (the kernel's peer credentials, no round
//!   trip); a shared key with Python's mutual HMAC challenge; TLS over TCP (rustls, the `tls`
//!   feature), optionally with a key on top. Every handshake has a timeout: a silent client is dropped while the
//!   listener serves the others, and a wrong key fails on both sides.
//! - **Ends** ([`Connection`]): over Unix sockets a [`pipe::Duplex`](multiproc_channel::pipe::Duplex)
//!   underneath, so handles travel inside messages and small messages skip the socket through
//!   a shared ring the client offers after the authentication; over TCP, bytes, and a message holding a
//!   handle fails to send rather than arrive broken. [`ready_timeout`](Connection::ready_timeout)
//!   is Python's `poll(timeout)`.
//! - **Python** ([`python`]): byte connections in Python's own protocol, so a Python
//!   `Client(address, authkey=...)` talks to a multiproc listener and the other way round.
//!
//! # Features
//! - `tls` (off by default): TLS over TCP, `Auth::tls_server` and `Auth::tls_client`, and the
//!   `rustls` re-export. It brings rustls and ring (C and assembly); key and same-user
//!   authentication do not need it. The facade forwards it as `multiproc`'s `tls` feature.
//!
//! Linux only.
#![cfg(target_os = "linux")]
#![forbid(unsafe_code)]

mod acceptor;
mod address;
mod auth;
mod bind;
mod challenge;
mod connect;
mod connection;
pub mod error;
mod framed;
mod handshake;
mod listener;
mod peer;
pub mod python;
mod wire;

pub use acceptor::MAX_PENDING;
pub use address::Address;
pub use auth::{Auth, DEFAULT_HANDSHAKE_TIMEOUT};
pub use connect::connect;
pub use connection::Connection;
pub use listener::{Incoming, Listener};
pub use peer::Peer;

#[cfg(feature = "tls")]
/// The rustls crate this one is built with, to build [`Auth::tls_server`] and
/// [`Auth::tls_client`] configurations with matching types.
pub use rustls;
