//! Functions named across hosts: [`RemoteFn`] (the submitter's typed name) and [`Registry`]
//! (the worker host's table from names to local functions), with the type fingerprint both
//! sides compare.
//!
//! Across hosts a function cannot be found by address (the local pool's way): two builds lay
//! out code differently. It is found by name, and the name travels with a fingerprint of its
//! argument and result types, so that a host built from other sources refuses the task with a
//! clear error instead of decoding garbage.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use multiproc_process::ChildOutput;
use multiproc_process::pool::Pool as LocalPool;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The name and signature of a function that worker hosts run: what a submitter calls.
///
/// Declare it once, in code both the submitter and the hosts build, and register the
/// function under it on the hosts ([`Registry::register`]); the types are checked at compile
/// time within one build and by fingerprint between builds.
///
/// # Examples
///
/// ```
/// use multiproc_nats::pool::RemoteFn;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
/// const SQUARE: RemoteFn<u64, u64> = RemoteFn::new("square");
/// let registry = multiproc_nats::pool::Registry::new().register(SQUARE, square);
/// assert!(registry.contains("square"));
/// ```
pub struct RemoteFn<A, R> {
    name: &'static str,
    _t: PhantomData<fn(A) -> R>,
}

impl<A, R> Clone for RemoteFn<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, R> Copy for RemoteFn<A, R> {}

impl<A, R> fmt::Debug for RemoteFn<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteFn({} : {})", self.name, signature::<A, R>())
    }
}

impl<A, R> RemoteFn<A, R> {
    /// The function called `name` on the hosts, taking `A` and returning `R`.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            _t: PhantomData,
        }
    }

    /// The name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The signature the fingerprint is taken of: `fn(A) -> R` with full type paths.
    pub fn signature(&self) -> String {
        signature::<A, R>()
    }

    /// The fingerprint of the signature, as both sides compare it.
    pub fn fingerprint(&self) -> u64 {
        fingerprint(&self.signature())
    }
}

pub(crate) fn signature<A, R>() -> String {
    format!(
        "fn({}) -> {}",
        std::any::type_name::<A>(),
        std::any::type_name::<R>()
    )
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike `std`'s hasher).
pub(crate) fn fingerprint(signature: &str) -> u64 {
    signature.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Why running a task on the host gave no encoded result.
pub(crate) enum RunError {
    BadArgs(String),
    Encode(String),
    Pool(multiproc_process::pool::PoolError),
}

/// Runs a chunk of tasks (their encoded arguments) on the local pool: each task's encoded
/// result or failure, in order.
type Runner = Arc<
    dyn Fn(&LocalPool, Vec<Bytes>) -> BoxFuture<'static, Vec<Result<Bytes, RunError>>>
        + Send
        + Sync,
>;

/// One registered function.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) signature: String,
    pub(crate) fingerprint: u64,
    pub(crate) run: Runner,
}

/// A worker host's table of the functions it runs, by name.
///
/// # Examples
///
/// See [`RemoteFn`].
#[derive(Clone, Default)]
pub struct Registry {
    entries: HashMap<String, Entry>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, e)| (k, &e.signature)))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` (a `fn` or non-capturing closure, sync or async, as the local pool runs)
    /// under `name`. Registering a name again replaces it.
    pub fn register<A, R, M, F>(mut self, name: RemoteFn<A, R::Output>, f: F) -> Self
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(A) -> R + Copy + Send + Sync + 'static,
        R: ChildOutput<M>,
    {
        let signature = name.signature();
        let run: Runner = Arc::new(move |pool: &LocalPool, tasks: Vec<Bytes>| {
            let mut outcomes: Vec<Option<Result<Bytes, RunError>>> =
                tasks.iter().map(|_| None).collect();
            // Arguments that decode go to the local pool; the others fail alone.
            let mut args = Vec::with_capacity(tasks.len());
            let mut at = Vec::with_capacity(tasks.len());
            for (i, task) in tasks.iter().enumerate() {
                match postcard::from_bytes::<A>(task) {
                    Ok(a) => {
                        args.push(a);
                        at.push(i);
                    }
                    Err(e) => outcomes[i] = Some(Err(RunError::BadArgs(e.to_string()))),
                }
            }
            // One local task per item (chunk size 1), so that a worker that dies fails only the
            // item it was running.
            let mut results = pool.imap(f, args);
            Box::pin(async move {
                let mut last = None;
                for i in at {
                    let outcome = match results.next().await {
                        Some(Ok(out)) => postcard::to_allocvec(&out)
                            .map(Bytes::from)
                            .map_err(|e| RunError::Encode(e.to_string())),
                        Some(Err(e)) => {
                            last = Some(e.clone());
                            Err(RunError::Pool(e))
                        }
                        // The local pool stopped taking work: its error for the rest.
                        None => Err(last.clone().map_or_else(
                            || RunError::Encode("the local pool gave no result".into()),
                            RunError::Pool,
                        )),
                    };
                    outcomes[i] = Some(outcome);
                }
                outcomes
                    .into_iter()
                    .map(|o| o.unwrap_or_else(|| Err(RunError::Encode("no outcome".into()))))
                    .collect()
            })
        });
        self.entries.insert(
            name.name().to_string(),
            Entry {
                fingerprint: fingerprint(&signature),
                signature,
                run,
            },
        );
        self
    }

    /// True when a function is registered under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_signatures_apart() {
        let a = RemoteFn::<u64, u64>::new("f");
        let b = RemoteFn::<u32, u64>::new("f");
        assert_eq!(
            a.fingerprint(),
            RemoteFn::<u64, u64>::new("g").fingerprint()
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert!(a.signature().contains("u64"));
    }
}
