//! The client side: [`connect`].

use tokio::net::{TcpStream, UnixStream};

use crate::address::Address;
use crate::auth::Auth;
use crate::connection::Connection;
use crate::error::{ConnectError, HandshakeError, HandshakeErrorKind};
use crate::handshake::{self, Established, Protocol, Raw, Side};
use crate::peer::Peer;

/// Connects to a listener at `address` and authenticates as `auth` says (Python's
/// `Client(address, authkey=...)`): a typed end that sends `S` and receives `R`, where the
/// listener's end sends `R` and receives `S`.
///
/// Over a Unix address the end is a [`pipe::Duplex`](multiproc_channel::pipe::Duplex)
/// underneath (handles travel in messages); over TCP it is a byte stream (a message holding a
/// handle fails to send).
///
/// # Errors
/// [`ConnectError`]: nobody listens ([`is_refused`](ConnectError::is_refused)), authentication
/// failed on either side ([`is_auth`](ConnectError::is_auth)), or connecting and the handshake
/// took longer than the handshake timeout ([`is_timeout`](ConnectError::is_timeout)).
///
/// # Cancel safety
/// Dropping the future abandons the connection; nothing is left behind.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use multiproc::connection::{Address, Auth, Listener, connect};
///
/// let name = format!("doc-connect-{}", std::process::id());
/// let mut listener = Listener::<String, String>::bind(Address::abstract_name(&name), Auth::key(b"k")).await?;
/// let mut client = connect::<String, String>(Address::abstract_name(&name), Auth::key(b"k")).await?;
/// let (mut server, peer) = listener.accept().await?;
/// assert_eq!(peer.pid(), Some(std::process::id()));
/// client.send("hello".to_string()).await?;
/// assert_eq!(server.recv().await?.as_deref(), Some("hello"));
/// # Ok(())
/// # }
/// ```
pub async fn connect<S, R>(
    address: impl Into<Address>,
    auth: Auth,
) -> Result<Connection<S, R>, ConnectError> {
    let address = address.into();
    let (established, peer) = establish(&address, &auth, Protocol::Native).await?;
    Connection::from_established(established, peer).map_err(|e| ConnectError::connect(&address, e))
}

/// Connects and runs the client's handshake, all within the handshake timeout.
pub(crate) async fn establish(
    address: &Address,
    auth: &Auth,
    protocol: Protocol,
) -> Result<(Established, Peer), ConnectError> {
    handshake::fits(auth, address.is_unix(), false)
        .map_err(|why| ConnectError::invalid(address, why))?;
    let work = async {
        let raw = match address {
            Address::Tcp(host_port) => {
                let s = TcpStream::connect(host_port.as_str())
                    .await
                    .map_err(|e| ConnectError::connect(address, e))?;
                let _ = s.set_nodelay(true);
                Raw::Tcp(s)
            }
            unix => {
                let path = unix.unix_path().expect("a Unix address");
                Raw::Unix(
                    UnixStream::connect(path)
                        .await
                        .map_err(|e| ConnectError::connect(address, e))?,
                )
            }
        };
        let peer = handshake::peer_of(&raw);
        let established = handshake::run(raw, &peer, auth, Side::Client, protocol)
            .await
            .map_err(|e| ConnectError::handshake(address, e))?;
        Ok((established, peer))
    };
    match tokio::time::timeout(auth.timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::handshake(
            address,
            HandshakeError::new(HandshakeErrorKind::Timeout(auth.timeout)),
        )),
    }
}
