//! The lease engine under [`Lock`](crate::Lock) and [`Semaphore`](crate::Semaphore): a set of
//! key-value slots, each taken by compare-and-swap and held by renewing it.
//!
//! # The protocol
//! - A slot is a key in the namespace's `sync` bucket. It is free when it has no value (never
//!   written, deleted or purged). Taking it is a write that expects the key's last revision
//!   (0 for a key never written), so two takers cannot both succeed; the revision the server
//!   gives that write is the **fencing token**: every later taking gets a larger one.
//! - The holder rewrites the value every third of the lease (again a compare-and-swap on its
//!   own last revision). A rewrite that finds another revision means the lease was taken over:
//!   the guard's lease-lost future fires. So does going two thirds of a lease without a
//!   confirmed renewal (the server may be gone; better to stop early than late).
//! - A waiter watches the slots. A slot whose revision has not changed for a whole lease, as
//!   timed by the waiter's own monotonic clock from when it first saw that revision, belongs to
//!   a holder that stopped renewing (dead, paused, cut off): the waiter takes it over by a
//!   compare-and-swap on that revision and is told the owner died.
//!
//! # Why not server-side expiry
//! Servers from 2.11 on can expire a key by itself (a per-message TTL) and tell watchers with a
//! delete marker; 2.9 (Debian's) has neither, only bucket-wide `max_age`, whose expiry is not
//! announced to watchers at all. Timing the lease on the waiter's side behaves the same on both
//! and needs no synchronized clocks: only revisions and local elapsed time are compared.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::connect::Nats;
use crate::error::{AcquireError, AcquireTimeoutError, ReleaseError, RemoteError};

/// Opens (creating it if needed) the namespace's bucket for sync primitives.
///
/// The bucket's stream is created here rather than by `async-nats`'s `create_key_value`, which
/// first asks for account information in a form that 2.9 servers do not send; the layout is the
/// standard one (`KV_<bucket>` over `$KV.<bucket>.>`), so any NATS tool sees a normal bucket.
pub(crate) async fn bucket(nats: &Nats) -> Result<kv::Store, RemoteError> {
    let name = format!("{}_sync", nats.namespace);
    if let Ok(store) = nats.js.get_key_value(&name).await {
        return Ok(store);
    }
    let config = stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    };
    // Another process may create it at the same time: get_or_create tolerates that.
    nats.js
        .get_or_create_stream(config)
        .await
        .map_err(|e| RemoteError::new("key-value bucket creation", e))?;
    nats.js
        .get_key_value(&name)
        .await
        .map_err(|e| RemoteError::new("key-value bucket creation", e))
}

/// A set of slots (one for a lock, `n` for a semaphore) with a lease duration.
#[derive(Clone)]
pub(crate) struct Slots {
    kv: kv::Store,
    keys: Vec<String>,
    pattern: String,
    lease: Duration,
}

/// A slot taken: its fencing token, and the renewal running in the background.
pub(crate) struct Held {
    kv: kv::Store,
    key: String,
    token: u64,
    owner_died: bool,
    revision: Arc<AtomicU64>,
    lost: watch::Receiver<bool>,
    renewal: JoinHandle<()>,
}

impl Slots {
    pub(crate) fn new(kv: kv::Store, keys: Vec<String>, pattern: String, lease: Duration) -> Self {
        Self {
            kv,
            keys,
            pattern,
            lease,
        }
    }

    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// Waits until a slot is taken, or the deadline passes.
    pub(crate) async fn acquire(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Held, AcquireTimeoutError> {
        let remote = |e: RemoteError| AcquireTimeoutError::Failed(AcquireError(e));
        // Watch first, so that a release between a failed try and the wait is not missed.
        let mut watch = self
            .kv
            .watch(&self.pattern)
            .await
            .map_err(|e| remote(RemoteError::new("key watch", e)))?;
        let mut seen: HashMap<String, (u64, Instant)> = HashMap::new();
        loop {
            if let Some(held) = self.try_once(&mut seen).await.map_err(remote)? {
                return Ok(held);
            }
            // Wake when a slot changes, when one would go stale, or at the deadline.
            let stale_at = seen
                .values()
                .map(|(_, since)| *since + self.lease)
                .min()
                .unwrap_or_else(|| Instant::now() + self.lease);
            let wake = deadline.map_or(stale_at, |d| d.min(stale_at));
            tokio::select! {
                event = watch.next() => {
                    if event.is_none() {
                        watch = self
                            .kv
                            .watch(&self.pattern)
                            .await
                            .map_err(|e| remote(RemoteError::new("key watch", e)))?;
                    }
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                // One last try, so that a slot freed right at the deadline is not missed.
                return match self.try_once(&mut seen).await.map_err(remote)? {
                    Some(held) => Ok(held),
                    None => Err(AcquireTimeoutError::Timeout),
                };
            }
        }
    }

    /// Tries every slot once; takes a free or stale one.
    async fn try_once(
        &self,
        seen: &mut HashMap<String, (u64, Instant)>,
    ) -> Result<Option<Held>, RemoteError> {
        for key in &self.keys {
            let entry = self
                .kv
                .entry(key.clone())
                .await
                .map_err(|e| RemoteError::new("key read", e))?;
            let (expected, owner_died) = match entry {
                None => (0, false),
                Some(e) if matches!(e.operation, Operation::Delete | Operation::Purge) => {
                    (e.revision, false)
                }
                Some(e) => {
                    let now = Instant::now();
                    let since = seen.entry(key.clone()).or_insert((e.revision, now));
                    if since.0 != e.revision {
                        *since = (e.revision, now);
                    }
                    if now.duration_since(since.1) < self.lease {
                        continue;
                    }
                    (e.revision, true)
                }
            };
            match self.kv.update(key, owner_value(), expected).await {
                Ok(token) => {
                    seen.remove(key);
                    return Ok(Some(self.hold(key.clone(), token, owner_died)));
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(RemoteError::new("key update", e)),
            }
        }
        Ok(None)
    }

    fn hold(&self, key: String, token: u64, owner_died: bool) -> Held {
        let revision = Arc::new(AtomicU64::new(token));
        let (lost_tx, lost) = watch::channel(false);
        let renewal = tokio::spawn(renew(
            self.kv.clone(),
            key.clone(),
            revision.clone(),
            self.lease,
            lost_tx,
        ));
        Held {
            kv: self.kv.clone(),
            key,
            token,
            owner_died,
            revision,
            lost,
            renewal,
        }
    }
}

/// Rewrites the slot every third of the lease until it fails; then reports the lease lost.
async fn renew(
    kv: kv::Store,
    key: String,
    revision: Arc<AtomicU64>,
    lease: Duration,
    lost: watch::Sender<bool>,
) {
    let period = lease / 3;
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(period).await;
        let expected = revision.load(Ordering::SeqCst);
        match tokio::time::timeout(period, kv.update(&key, owner_value(), expected)).await {
            Ok(Ok(new)) => {
                revision.store(new, Ordering::SeqCst);
                last_ok = Instant::now();
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => break,
            // Unconfirmed: keep trying while the lease may still be ours.
            Ok(Err(_)) | Err(_) => {
                if last_ok.elapsed() >= lease * 2 / 3 {
                    break;
                }
            }
        }
    }
    let _ = lost.send(true);
}

/// What a holder writes into its slot (only its revision matters; this helps debugging).
fn owner_value() -> Bytes {
    Bytes::from(format!("pid {}", std::process::id()))
}

impl Held {
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    pub(crate) fn owner_died(&self) -> bool {
        self.owner_died
    }

    pub(crate) fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    pub(crate) fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops renewing and deletes the slot if it is still ours.
    pub(crate) async fn release(self) -> Result<(), ReleaseError> {
        self.renewal.abort();
        if self.is_lost() {
            return Err(ReleaseError::LeaseLost);
        }
        let expected = self.revision.load(Ordering::SeqCst);
        match self
            .kv
            .delete_expect_revision(&self.key, Some(expected))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(ReleaseError::LeaseLost)
            }
            Err(e) => Err(ReleaseError::Remote(RemoteError::new("key delete", e))),
        }
    }

    /// Stops renewing and deletes the slot in the background (for a guard's drop).
    pub(crate) fn release_in_background(self) {
        self.renewal.abort();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let expected = self.revision.load(Ordering::SeqCst);
            let kv = self.kv.clone();
            let key = self.key.clone();
            handle.spawn(async move {
                let _ = kv.delete_expect_revision(&key, Some(expected)).await;
            });
        }
    }
}

/// A future that resolves when a lease is lost; see
/// [`LockGuard::lease_lost`](crate::LockGuard::lease_lost).
pub(crate) async fn wait_lost(mut lost: watch::Receiver<bool>) {
    // An error means the renewal task is gone, which happens only when the guard released.
    let _ = lost.wait_for(|l| *l).await;
}
