//! Shared memory: a sealed memfd mapped `MAP_SHARED` ([`SharedRegion`]) that travels as its
//! descriptor, the plain-old-data rule ([`Pod`]) for what may live in it, immutable bytes
//! handed over instead of streamed ([`SharedBytes`], written in place with
//! [`SharedBytesMut`]), and POSIX shared memory objects named as Python names them
//! ([`create_posix`], [`open_posix`], [`unlink_posix`]), and a single-producer single-consumer
//! ring of byte records in a region ([`SpscRing`], [`RingWriter`]).
//!
//! May import: `sys`, `message`, `fd`. Never `wait`, `transport` or `proc`.

mod bytes;
mod posix;
mod region;
mod spsc_ring;

pub use bytes::{SharedBytes, SharedBytesMut};
pub use posix::{create_posix, open_posix, unlink_posix};
pub use region::{Pod, SharedRegion};
pub(crate) use region::{Window, punch_hole};
pub use spsc_ring::{Record, RingError, RingLayout, RingWriter, SpscRing};
