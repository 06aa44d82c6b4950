//! [`Event`]: a flag in the key-value store that any host can set, clear and wait for.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures::StreamExt;

use super::lease;
use crate::connect::Nats;
use crate::error::{EventError, OpenError, RemoteError};

/// An event flag shared across hosts (Python's `Event`): `set`, `clear`, `is_set`, `wait`.
///
/// A wait watches the key, so it wakes on the server's push, not by polling.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = multiproc_nats::server::NatsServer::start()?;
/// let nats = multiproc_nats::Nats::connect(server.url()).await?;
/// let ready = nats.event("ready").await?;
/// ready.set().await?;
/// ready.wait().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Event {
    name: String,
    key: String,
    kv: kv::Store,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event").field("name", &self.name).finish()
    }
}

fn is_set_value(entry: &kv::Entry) -> bool {
    entry.operation == Operation::Put && entry.value.as_ref() == b"1"
}

impl Event {
    /// The event's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the flag and wakes every waiter.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe; the flag may or may not have been set.
    pub async fn set(&self) -> Result<(), EventError> {
        self.write(b"1").await
    }

    /// Clears the flag.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe; the flag may or may not have been cleared.
    pub async fn clear(&self) -> Result<(), EventError> {
        self.write(b"0").await
    }

    async fn write(&self, value: &'static [u8]) -> Result<(), EventError> {
        self.kv
            .put(&self.key, Bytes::from_static(value))
            .await
            .map(|_| ())
            .map_err(|e| EventError(RemoteError::new("key write", e)))
    }

    /// Whether the flag is set.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe (a read).
    pub async fn is_set(&self) -> Result<bool, EventError> {
        let entry = self
            .kv
            .entry(self.key.clone())
            .await
            .map_err(|e| EventError(RemoteError::new("key read", e)))?;
        Ok(entry.as_ref().is_some_and(is_set_value))
    }

    /// Waits until the flag is set.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self) -> Result<(), EventError> {
        loop {
            // The watch delivers the current value first, then every change.
            let mut watch = self
                .kv
                .watch(&self.key)
                .await
                .map_err(|e| EventError(RemoteError::new("key watch", e)))?;
            if self.is_set().await? {
                return Ok(());
            }
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| EventError(RemoteError::new("key watch", e)))?;
                if is_set_value(&entry) {
                    return Ok(());
                }
            }
            // The watch ended (a reconnection): watch again.
        }
    }

    /// Waits at most `timeout` for the flag; `Ok(false)` on timeout.
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<bool, EventError> {
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }
}

impl Nats {
    /// Opens the event `name` in this namespace (initially clear).
    ///
    /// # Errors
    /// An invalid name, or the server refused to create the namespace's key-value bucket.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn event(&self, name: &str) -> Result<Event, OpenError> {
        crate::name::check(name)?;
        let kv = lease::bucket(self).await?;
        Ok(Event {
            name: name.to_string(),
            key: format!("event.{name}"),
            kv,
        })
    }
}
