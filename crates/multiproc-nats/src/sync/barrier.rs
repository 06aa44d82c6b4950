//! [`Barrier`]: parties on any hosts meet at a key in the key-value store.
//!
//! The key `barrier.NAME` holds `generation:arrived`. A party arrives by compare-and-swap on
//! the key's revision (`arrived + 1`); the last party of a generation instead moves the key to
//! `generation + 1:0`, which releases everyone: the others watch the key until its generation
//! changes. A party that gives up (`wait_timeout`) takes its arrival back by compare-and-swap
//! while the generation is still its own, so the count stays true.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures::StreamExt;

use super::lease;
use crate::connect::Nats;
use crate::error::{BarrierError, OpenError, RemoteError};

/// A barrier for a fixed number of parties on any hosts (Python's `Barrier`): each `wait`
/// returns once `parties` waits have arrived, and the barrier is ready for the next round.
///
/// A wait watches the key, so it wakes on the server's push, not by polling.
///
/// # Crash behavior
/// A party that arrived and then died still counts as arrived (the others go on when the rest
/// arrive); a party that never arrives keeps the others waiting: bound waits with
/// [`wait_timeout`](Self::wait_timeout).
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = multiproc_nats::server::NatsServer::start()?;
/// let nats = multiproc_nats::Nats::connect(server.url()).await?;
/// let start = nats.barrier("start", 1).await?;
/// assert_eq!(start.wait().await?, 0); // the only party: through at once
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Barrier {
    name: String,
    key: String,
    parties: usize,
    kv: kv::Store,
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("name", &self.name)
            .field("parties", &self.parties)
            .finish()
    }
}

/// The key's state: its revision (0: no key), generation and arrivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    revision: u64,
    generation: u64,
    arrived: usize,
}

fn remote(
    what: &'static str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> BarrierError {
    BarrierError(RemoteError::new(what, e))
}

/// Reads `generation:arrived`; anything else (a deleted key, another program's value) is a
/// fresh barrier.
fn parse(entry: Option<&kv::Entry>) -> State {
    let Some(entry) = entry else {
        return State {
            revision: 0,
            generation: 0,
            arrived: 0,
        };
    };
    let (generation, arrived) = match entry.operation {
        Operation::Put => std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|s| s.split_once(':'))
            .and_then(|(g, a)| Some((g.parse().ok()?, a.parse().ok()?)))
            .unwrap_or((0, 0)),
        Operation::Delete | Operation::Purge => (0, 0),
    };
    State {
        revision: entry.revision,
        generation,
        arrived,
    }
}

impl Barrier {
    /// The barrier's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many parties each round waits for.
    pub fn parties(&self) -> usize {
        self.parties
    }

    async fn state(&self) -> Result<State, BarrierError> {
        let entry = self
            .kv
            .entry(self.key.clone())
            .await
            .map_err(|e| remote("key read", e))?;
        Ok(parse(entry.as_ref()))
    }

    /// Writes `generation:arrived` if the key is still at `revision`; `Ok(false)` if another
    /// party changed it first.
    async fn swap(
        &self,
        revision: u64,
        generation: u64,
        arrived: usize,
    ) -> Result<bool, BarrierError> {
        let value = Bytes::from(format!("{generation}:{arrived}"));
        match self.kv.update(&self.key, value, revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(remote("key update", e)),
        }
    }

    /// Counts this party in; gives its arrival index and the generation it waits in (`None`
    /// when it was the last and released the round).
    async fn arrive(&self) -> Result<(usize, Option<u64>), BarrierError> {
        loop {
            let s = self.state().await?;
            let index = s.arrived;
            if index + 1 >= self.parties {
                if self.swap(s.revision, s.generation + 1, 0).await? {
                    return Ok((index, None));
                }
            } else if self.swap(s.revision, s.generation, index + 1).await? {
                return Ok((index, Some(s.generation)));
            }
        }
    }

    /// Waits until the key's generation is past `generation`.
    async fn released(&self, generation: u64) -> Result<(), BarrierError> {
        loop {
            // The watch delivers the current value first, then every change.
            let mut watch = self
                .kv
                .watch(&self.key)
                .await
                .map_err(|e| remote("key watch", e))?;
            if self.state().await?.generation != generation {
                return Ok(());
            }
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| remote("key watch", e))?;
                if parse(Some(&entry)).generation != generation {
                    return Ok(());
                }
            }
            // The watch ended (a reconnection): watch again.
        }
    }

    /// Arrives and waits for the other parties; gives this party's arrival index, `0` to
    /// `parties - 1`, distinct within a round (as Python's `wait`).
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// **Not cancel safe once it has arrived**: a dropped wait still counts as arrived, so the
    /// round may go on without this party. Use [`wait_timeout`](Self::wait_timeout), which
    /// takes its arrival back when it gives up.
    pub async fn wait(&self) -> Result<usize, BarrierError> {
        let (index, generation) = self.arrive().await?;
        if let Some(generation) = generation {
            self.released(generation).await?;
        }
        Ok(index)
    }

    /// As [`wait`](Self::wait), giving up after `timeout`: `Ok(None)`, with this party's
    /// arrival taken back (unless the round was released meanwhile: then its index).
    ///
    /// # Errors
    /// The server or the network failed.
    ///
    /// # Cancel safety
    /// As [`wait`](Self::wait): dropped before it returns, its arrival may still count.
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<Option<usize>, BarrierError> {
        let (index, generation) = self.arrive().await?;
        let Some(generation) = generation else {
            return Ok(Some(index));
        };
        if let Ok(released) = tokio::time::timeout(timeout, self.released(generation)).await {
            return released.map(|()| Some(index));
        }
        loop {
            let s = self.state().await?;
            if s.generation != generation {
                return Ok(Some(index)); // released as it gave up
            }
            if self
                .swap(s.revision, generation, s.arrived.saturating_sub(1))
                .await?
            {
                return Ok(None);
            }
        }
    }
}

impl Nats {
    /// Opens the barrier `name` in this namespace for `parties` parties (at least 1). Every
    /// party must open it with the same count.
    ///
    /// # Errors
    /// An invalid name, or the server refused to create the namespace's key-value bucket.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn barrier(&self, name: &str, parties: usize) -> Result<Barrier, OpenError> {
        crate::name::check(name)?;
        let kv = lease::bucket(self).await?;
        Ok(Barrier {
            name: name.to_string(),
            key: format!("barrier.{name}"),
            parties: parties.max(1),
            kv,
        })
    }
}
