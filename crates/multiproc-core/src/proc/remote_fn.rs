//! Functions named across the processes of one program: the one way a process tells another
//! which function to run.
//!
//! A [`RemoteFn`] names a `fn` item or non-capturing closure so that another process running the
//! same executable can call it. It is what a spawn sends in the bootstrap hello to say what the
//! child runs (`bootstrap::EntryPoint`), and what a pool sends to a long-lived worker to say
//! which function a task runs. It travels as two offsets from an anchor in this binary (which
//! survive address-space randomisation, since every process of the program runs the identical
//! file: the bootstrap checks it) plus a tag.
//!
//! Calling a function found by an address read from a socket would let whoever writes to that
//! socket jump anywhere. So every token carries a keyed tag (SipHash-2-4) over the offsets and
//! the call signature, with a 128-bit key drawn from the OS by the first process of the program
//! and handed to every child in the bootstrap hello. A token that does not verify fails to
//! deserialize; only processes of this program tree can make valid ones, and they all run the
//! same executable. (In the hello itself the key and the token arrive together, so there the
//! tag checks the token's integrity and signature; who may send a hello at all is settled by
//! the socket's origin, see `bootstrap`.)
#![allow(unsafe_code)]

use std::fmt;
use std::hash::Hasher;
use std::marker::PhantomData;
use std::sync::OnceLock;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The point every offset is measured from. The whole executable moves as one under
/// address-space randomisation, so a function's distance from it is the same in every process
/// running the file. A static, because a static has exactly one address in the program, while
/// an optimised build may copy a small function into every codegen unit that uses it, each copy
/// at its own address (offsets taken against one copy would then miss in another).
static ANCHOR: u8 = 0;

fn anchor() -> usize {
    (&raw const ANCHOR) as usize
}

/// The offset of a function address from the anchor: the same in every process of this
/// executable.
fn offset_of(addr: usize) -> i64 {
    addr.wrapping_sub(anchor()) as i64
}

/// The address in this process of the function at `offset` from the anchor.
fn address_of(offset: i64) -> usize {
    anchor().wrapping_add(offset as usize)
}

static PROGRAM_KEY: OnceLock<[u64; 2]> = OnceLock::new();

/// The key of this program tree: inherited from the parent, or drawn now by the first process.
pub(crate) fn program_key() -> [u64; 2] {
    *PROGRAM_KEY.get_or_init(crate::sys::random_key)
}

/// Adopts the key of the parent; called by the bootstrap before anything else runs.
pub(crate) fn inherit_program_key(key: [u64; 2]) {
    let _ = PROGRAM_KEY.set(key);
}

/// A function `fn(I) -> O` that can be sent to another process of this program and called there.
///
/// Made from a `fn` item or a closure that captures nothing, with [`RemoteFn::new`]. It is `Copy`,
/// serializes to 24 bytes and deserializes only in a process of the same program tree (see the
/// module docs); anything else is a decode error, never a call.
///
/// # Examples
/// ```
/// use multiproc_core::proc::remote_fn::RemoteFn;
///
/// let double = RemoteFn::new(|x: u32| x * 2, |f, x| f(x));
/// assert_eq!(double.call(21), 42);
///
/// let (bytes, fds) = multiproc_core::message::encode(&double)?;
/// let back: RemoteFn<u32, u32> = multiproc_core::message::decode(&bytes, fds)?;
/// assert_eq!(back.call(4), 8);
///
/// // Tampered bytes are refused.
/// let mut bad = bytes.clone();
/// bad[0] ^= 1;
/// assert!(multiproc_core::message::decode::<RemoteFn<u32, u32>>(&bad, Vec::new()).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RemoteFn<I, O> {
    shim: i64,
    run: i64,
    signature: PhantomData<fn(I) -> O>,
}

impl<I, O> Clone for RemoteFn<I, O> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I, O> Copy for RemoteFn<I, O> {}

impl<I, O> RemoteFn<I, O> {
    /// Names `run(f, input)`, where `f` is zero-sized: a `fn` item or a closure that captures
    /// nothing (anything else is a compile-time error). `run` adapts `f` to the signature, e.g.
    /// decoding arguments before calling it.
    pub fn new<F: Copy + 'static>(f: F, run: fn(F, I) -> O) -> Self {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "multiproc: a function run in another process (by spawn or a pool) must be a `fn` \
                 item or a closure that captures nothing; pass what it needs in its argument. \
                 Which closure: the `{{closure@file:line:col}}` in the notes of this error \
                 (this check runs in `cargo build`, not in `cargo check`)"
            )
        };
        let _ = f;
        RemoteFn {
            shim: offset_of(shim::<F, I, O> as fn(usize, I) -> O as usize),
            run: offset_of(run as usize),
            signature: PhantomData,
        }
    }

    /// Calls the function in this process.
    pub fn call(&self, input: I) -> O {
        let shim_addr = address_of(self.shim);
        // SAFETY: this value was either made by `new` in this process, or rebuilt by
        // `from_token` after its tag verified: then it was made by `new` in a process of this
        // program tree, which runs this identical executable (the bootstrap checks it before it
        // adopts the key), for this very signature (the tag covers its type name). Either way
        // `shim` is the offset of `shim::<F, I, O>`, a `fn(usize, I) -> O`.
        let shim = unsafe { std::mem::transmute::<usize, fn(usize, I) -> O>(shim_addr) };
        shim(address_of(self.run), input)
    }

    /// The wire form: both offsets and their tag.
    pub(crate) fn token(&self) -> (i64, i64, u64) {
        (self.shim, self.run, Self::tag(self.shim, self.run))
    }

    /// The function a token names, if its tag verifies under this program's key for this
    /// signature; `None` otherwise.
    pub(crate) fn from_token((shim, run, tag): (i64, i64, u64)) -> Option<Self> {
        (tag == Self::tag(shim, run)).then_some(RemoteFn {
            shim,
            run,
            signature: PhantomData,
        })
    }

    fn tag(shim: i64, run: i64) -> u64 {
        let [k0, k1] = program_key();
        // SipHash-2-4 with a secret key is a PRF, which is what a tag needs; std's is deprecated
        // only as a general-purpose hasher, its output is stable.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
        h.write_i64(shim);
        h.write_i64(run);
        h.write(std::any::type_name::<fn(I) -> O>().as_bytes());
        h.finish()
    }
}

/// Rebuilds the zero-sized `F` and calls the `run` function found at `run_addr`.
fn shim<F: Copy + 'static, I, O>(run_addr: usize, input: I) -> O {
    // SAFETY: `run_addr` is the address of the `run: fn(F, I) -> O` given to `RemoteFn::new`
    // together with this very instantiation of `shim` (see `RemoteFn::call`).
    let run = unsafe { std::mem::transmute::<usize, fn(F, I) -> O>(run_addr) };
    // SAFETY: `F` is zero-sized (asserted at compile time in `RemoteFn::new`), `Copy` (no drop
    // glue) and inhabited (a value of it was passed to `new`). A zero-sized value has no bytes,
    // so the zeroed value is that value.
    let f: F = unsafe { std::mem::zeroed() };
    run(f, input)
}

impl<I, O> PartialEq for RemoteFn<I, O> {
    fn eq(&self, other: &Self) -> bool {
        (self.shim, self.run) == (other.shim, other.run)
    }
}

impl<I, O> Eq for RemoteFn<I, O> {}

impl<I, O> std::hash::Hash for RemoteFn<I, O> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.shim, self.run).hash(state);
    }
}

impl<I, O> fmt::Debug for RemoteFn<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteFn")
            .field("signature", &std::any::type_name::<fn(I) -> O>())
            .finish_non_exhaustive()
    }
}

impl<I, O> Serialize for RemoteFn<I, O> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.token().serialize(serializer)
    }
}

impl<'de, I, O> Deserialize<'de> for RemoteFn<I, O> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let token = <(i64, i64, u64)>::deserialize(deserializer)?;
        Self::from_token(token).ok_or_else(|| {
            D::Error::custom("function token not made by this program (or for another signature)")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message;

    fn twice(x: u64) -> u64 {
        x * 2
    }

    #[test]
    fn calls_locally_and_after_a_round_trip() {
        let f = RemoteFn::new(twice, |f, x: u64| f(x) + 1);
        assert_eq!(f.call(5), 11);
        let (bytes, fds) = message::encode(&f).unwrap();
        let g: RemoteFn<u64, u64> = message::decode(&bytes, fds).unwrap();
        assert_eq!(g.call(5), 11);
    }

    #[test]
    fn a_token_for_another_signature_is_refused() {
        let f = RemoteFn::new(twice, |f, x: u64| f(x));
        let (bytes, fds) = message::encode(&f).unwrap();
        let err = message::decode::<RemoteFn<u32, u64>>(&bytes, fds).unwrap_err();
        // postcard drops custom messages; the error still names the expected type.
        assert!(err.to_string().contains("RemoteFn<u32, u64>"), "{err}");
    }

    #[test]
    fn every_tampered_bit_is_refused() {
        let f = RemoteFn::new(twice, |f, x: u64| f(x));
        let (bytes, _) = message::encode(&f).unwrap();
        for i in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert!(
                message::decode::<RemoteFn<u64, u64>>(&bad, Vec::new()).is_err(),
                "bit {i} flipped and still accepted"
            );
        }
    }
}
