//! The looking-up side: [`lookup`] and [`blocking_lookup`].
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::error::{LookupError, LookupErrorKind};
use super::serve::MAX_RECORD;
use crate::message;
use crate::sys::abstract_socket::connect_abstract;
use crate::sys::{Direction, Received, recv_with_fds, wait_ready};
use crate::transport::endpoint::{effective_uid, peer_credentials};

/// How long a lookup waits for the publisher's answer. The publisher answers from a thread that
/// does nothing else, in microseconds; only a stopped or starved publisher takes this long.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Looks up the value published under `name` (in the registry namespace) by a process of this
/// user, and returns this process's own copy of it; see the [module docs](super).
///
/// # Errors
/// [`LookupError::is_not_found`] when nothing is published under `name` (never published,
/// withdrawn, or the publisher died); [`LookupError::is_wrong_type`] when it was published as
/// another type; [`LookupError::is_other_user`] when a process of another user holds the name;
/// [`LookupError::is_timeout`] when the publisher does not answer within [`LOOKUP_TIMEOUT`];
/// [`LookupError::is_invalid_name`]; a decode error when the value cannot be rebuilt here.
///
/// # Cancel safety
/// Cancel safe: dropping the future closes the connection, and the publication is unaffected.
///
/// # Examples
/// ```
/// use multiproc_core::named;
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("doc-lookup-{}", std::process::id());
/// let _publication = named::publish(&name, &String::from("hello"))?;
/// let value: String = named::lookup(&name).await?;
/// assert_eq!(value, "hello");
/// assert!(named::lookup::<String>("doc-lookup-missing").await.unwrap_err().is_not_found());
/// # Ok(()) }
/// ```
pub async fn lookup<T: DeserializeOwned>(name: &str) -> Result<T, LookupError> {
    lookup_in(super::REGISTRY_NAMESPACE, name).await
}

/// The blocking twin of [`lookup`], for code outside a runtime. It blocks the calling thread
/// for one local round trip (at most [`LOOKUP_TIMEOUT`]).
///
/// # Errors
/// As [`lookup`].
pub fn blocking_lookup<T: DeserializeOwned>(name: &str) -> Result<T, LookupError> {
    blocking_lookup_in(super::REGISTRY_NAMESPACE, name)
}

/// [`lookup`] in another namespace than the registry's.
///
/// # Errors
/// As [`lookup`].
///
/// # Cancel safety
/// As [`lookup`].
pub async fn lookup_in<T: DeserializeOwned>(namespace: &str, name: &str) -> Result<T, LookupError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io_error(io::Error::other(
            "async lookup outside of a tokio runtime",
        )));
    }
    let socket_name = socket_name(namespace, name)?;
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    // A full backlog (the publisher is busy, stopped or starved): retry with a timer, never
    // a sleep that would block a runtime thread.
    let socket = loop {
        if let Some(socket) = try_connect(&socket_name, name, deadline)? {
            break socket;
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    };
    check_owner(&socket, name)?;
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which keeps it open (same file
    // description, same number) for as long as it is registered.
    let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(|e| io_error(e.into_parts().1))?;
    let received = tokio::time::timeout(LOOKUP_TIMEOUT, async {
        loop {
            let mut guard = socket.readable().await?;
            let mut buf = vec![0u8; MAX_RECORD + 1];
            let mut fds = Vec::new();
            match guard.try_io(|s| recv_with_fds(s.get_ref().as_fd(), &mut buf, &mut fds)) {
                Ok(Ok(received)) => return Ok((received, buf, fds)),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    })
    .await
    .map_err(|_| LookupError::new(LookupErrorKind::TimedOut(name.to_owned())))?
    .map_err(|e| answer_error(name, e))?;
    finish(name, received)
}

/// [`blocking_lookup`] in another namespace than the registry's.
///
/// # Errors
/// As [`lookup`].
pub fn blocking_lookup_in<T: DeserializeOwned>(
    namespace: &str,
    name: &str,
) -> Result<T, LookupError> {
    let socket_name = socket_name(namespace, name)?;
    let deadline = Instant::now() + LOOKUP_TIMEOUT;
    let socket = loop {
        if let Some(socket) = try_connect(&socket_name, name, deadline)? {
            break socket;
        }
        std::thread::sleep(CONNECT_RETRY);
    };
    check_owner(&socket, name)?;
    let mut buf = vec![0u8; MAX_RECORD + 1];
    let mut fds = Vec::new();
    loop {
        if !wait_ready(socket.as_fd(), Direction::Read, Some(deadline)).map_err(io_error)? {
            return Err(LookupError::new(LookupErrorKind::TimedOut(name.to_owned())));
        }
        match recv_with_fds(socket.as_fd(), &mut buf, &mut fds) {
            Ok(received) => return finish(name, (received, buf, fds)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(answer_error(name, e)),
        }
    }
}

/// The pause before connecting again to a publisher whose backlog is full.
const CONNECT_RETRY: Duration = Duration::from_millis(1);

fn socket_name(namespace: &str, name: &str) -> Result<Vec<u8>, LookupError> {
    super::socket_name(namespace, name).map_err(|why| {
        LookupError::new(LookupErrorKind::InvalidName {
            name: name.to_owned(),
            why,
        })
    })
}

/// One connection attempt to the name's socket: `Ok(None)` when the publisher's backlog is
/// full (it is answering others, or stopped) and `deadline` has not passed, to retry shortly.
fn try_connect(
    socket_name: &[u8],
    name: &str,
    deadline: Instant,
) -> Result<Option<OwnedFd>, LookupError> {
    match connect_abstract(socket_name) {
        Ok(socket) => Ok(Some(socket)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(LookupError::new(LookupErrorKind::NotFound(name.to_owned())))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            Err(LookupError::new(LookupErrorKind::TimedOut(name.to_owned())))
        }
        Err(e) => Err(io_error(e)),
    }
}

/// Checks that the connected publisher is a process of our user.
fn check_owner(socket: &OwnedFd, name: &str) -> Result<(), LookupError> {
    let uid = peer_credentials(socket.as_fd()).map_err(io_error)?.uid;
    if uid != effective_uid() {
        return Err(LookupError::new(LookupErrorKind::OtherUser {
            name: name.to_owned(),
            uid,
        }));
    }
    Ok(())
}

/// A failed receive of the publisher's answer. When the listener closes (the publication was
/// withdrawn, or its owner died) with our connection still queued in its backlog, the kernel
/// resets the connection: that is a name no longer published, as for a refused connection.
fn answer_error(name: &str, e: io::Error) -> LookupError {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::NotConnected => {
            LookupError::new(LookupErrorKind::Refused(name.to_owned()))
        }
        _ => io_error(e),
    }
}

fn finish<T: DeserializeOwned>(
    name: &str,
    (received, buf, fds): (Received, Vec<u8>, Vec<OwnedFd>),
) -> Result<T, LookupError> {
    if received.bytes == 0 {
        return Err(LookupError::new(LookupErrorKind::Refused(name.to_owned())));
    }
    if received.truncated || received.fds_truncated || received.bytes > MAX_RECORD {
        return Err(io_error(io::Error::new(
            io::ErrorKind::InvalidData,
            "the publisher's answer was truncated",
        )));
    }
    let bytes = &buf[..received.bytes];
    let decode_error = |source| {
        LookupError::new(LookupErrorKind::Decode {
            name: name.to_owned(),
            source,
        })
    };
    let (published, _) = message::decode_head::<String>(bytes).map_err(decode_error)?;
    let expected = std::any::type_name::<T>();
    if published != expected {
        return Err(LookupError::new(LookupErrorKind::WrongType {
            name: name.to_owned(),
            published,
            expected,
        }));
    }
    let (_, value) = message::decode::<(String, T)>(bytes, fds).map_err(decode_error)?;
    Ok(value)
}

fn io_error(e: io::Error) -> LookupError {
    LookupError::new(LookupErrorKind::Io(e))
}
