//! [`ProcessSet`]: many children under one owner, like tokio's `JoinSet` for processes.

use std::fmt;
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builder::Builder;
use crate::error::{JoinError, SpawnError};
use crate::function::ChildOutput;
use crate::join::JoinHandle;

/// A set of child processes, each under a key: join them in the order they finish, look at
/// the live ones, stop them all with a grace period. Nothing leaks: dropping the set kills
/// every member that is still running, with its whole tree.
///
/// This is also how to get Python's "the parent joins its non-daemon children at exit": keep
/// them in a set and [`join_all`](Self::join_all) or [`shutdown`](Self::shutdown) it before
/// `main` returns.
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use multiproc::process::ProcessSet;
///
/// let mut set = ProcessSet::new();
/// for n in 0..4u64 {
///     set.spawn(n, n, |n: u64| n * n)?;
/// }
/// while let Some((key, result)) = set.join_next().await {
///     println!("worker {key}: {}", result?);
/// }
/// # Ok(())
/// # }
/// ```
pub struct ProcessSet<K, R> {
    members: Vec<(K, JoinHandle<R>)>,
}

impl<K, R> Default for ProcessSet<K, R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, R> ProcessSet<K, R> {
    /// An empty set.
    pub fn new() -> Self {
        Self {
            members: Vec::new(),
        }
    }

    /// How many members have not been joined yet (running, or finished and waiting for
    /// [`join_next`](Self::join_next)).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when every member was joined.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Adds a child already started, under `key`.
    pub fn insert(&mut self, key: K, handle: JoinHandle<R>) {
        self.members.push((key, handle));
    }

    /// The members not joined yet, in the order they were added; ask each handle
    /// [`is_alive`](JoinHandle::is_alive), [`pid`](JoinHandle::pid)...
    pub fn iter(&self) -> impl Iterator<Item = (&K, &JoinHandle<R>)> {
        self.members.iter().map(|(k, h)| (k, h))
    }

    /// The members still running.
    pub fn live(&self) -> impl Iterator<Item = (&K, &JoinHandle<R>)> {
        self.iter().filter(|(_, h)| h.is_alive())
    }

    /// The member under `key`, if it was not joined yet.
    pub fn get(&self, key: &K) -> Option<&JoinHandle<R>>
    where
        K: PartialEq,
    {
        self.members.iter().find(|(k, _)| k == key).map(|(_, h)| h)
    }

    /// Takes the member under `key` out of the set (it is then the caller's to join or drop).
    pub fn remove(&mut self, key: &K) -> Option<JoinHandle<R>>
    where
        K: PartialEq,
    {
        let at = self.members.iter().position(|(k, _)| k == key)?;
        Some(self.members.remove(at).1)
    }

    /// Waits for the next member to finish and returns its key and outcome, in the order they
    /// finish; `None` when the set is empty.
    ///
    /// # Cancel safety
    /// Cancel safe: a member whose outcome was not returned stays in the set.
    pub async fn join_next(&mut self) -> Option<(K, Result<R, JoinError>)> {
        poll_fn(|cx| {
            if self.members.is_empty() {
                return Poll::Ready(None);
            }
            for i in 0..self.members.len() {
                if let Poll::Ready(result) = std::pin::Pin::new(&mut self.members[i].1).poll(cx) {
                    let (key, _) = self.members.remove(i);
                    return Poll::Ready(Some((key, result)));
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Joins every member; the outcomes in the order they finished.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`join_next`](Self::join_next): the outcomes gathered so far are lost
    /// with the future, the members not joined stay in the set.
    pub async fn join_all(&mut self) -> Vec<(K, Result<R, JoinError>)> {
        let mut out = Vec::with_capacity(self.members.len());
        while let Some(next) = self.join_next().await {
            out.push(next);
        }
        out
    }

    /// Stops every member gracefully and joins them all: `SIGTERM` to each (and its tree),
    /// then up to `grace` for them to exit (a child awaiting
    /// [`stop_requested`](crate::stop_requested) finishes its work), then `SIGKILL` to each
    /// one left. The outcomes in the order the members finished.
    ///
    /// # Panics
    /// Inside a tokio runtime without the time driver.
    ///
    /// # Cancel safety
    /// Cancel safe in the sense of [`join_all`](Self::join_all); the signals already sent stay
    /// sent, and members not joined stay in the set (and are killed when it is dropped).
    pub async fn shutdown(&mut self, grace: Duration) -> Vec<(K, Result<R, JoinError>)> {
        for (_, handle) in &self.members {
            let _ = handle.terminate();
        }
        let mut out = Vec::with_capacity(self.members.len());
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, self.join_next()).await {
                Ok(Some(next)) => out.push(next),
                Ok(None) => return out,
                Err(_) => break,
            }
        }
        self.kill_all();
        out.extend(self.join_all().await);
        out
    }

    /// Kills every member still running, with its tree (`SIGKILL`); join them afterwards.
    pub fn kill_all(&self) {
        for (_, handle) in &self.members {
            let _ = handle.kill();
        }
    }
}

impl<K, R: Serialize + DeserializeOwned + Send + 'static> ProcessSet<K, R> {
    /// Starts a child running `f(args)` under `key` (as [`spawn`](crate::spawn)).
    ///
    /// # Errors
    /// As [`Builder::spawn`]; nothing is added then.
    pub fn spawn<A, T, M, F>(&mut self, key: K, args: A, f: F) -> Result<&JoinHandle<R>, SpawnError>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> T + Copy + Send + 'static,
        T: ChildOutput<M, Output = R>,
    {
        self.spawn_with(key, Builder::new(), args, f)
    }

    /// Starts a child with the options of `builder` under `key`.
    ///
    /// # Errors
    /// As [`Builder::spawn`]; nothing is added then.
    pub fn spawn_with<A, T, M, F>(
        &mut self,
        key: K,
        builder: Builder,
        args: A,
        f: F,
    ) -> Result<&JoinHandle<R>, SpawnError>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> T + Copy + Send + 'static,
        T: ChildOutput<M, Output = R>,
    {
        let handle = builder.spawn(args, f)?;
        self.members.push((key, handle));
        Ok(&self.members.last().expect("just pushed").1)
    }
}

impl<K, R> Drop for ProcessSet<K, R> {
    /// Kills every member still running, with its tree; the reaper thread reaps them.
    fn drop(&mut self) {
        self.kill_all();
    }
}

impl<K: fmt::Debug, R> fmt::Debug for ProcessSet<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.members.iter().map(|(k, h)| (k, h.pid())))
            .finish()
    }
}
