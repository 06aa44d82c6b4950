//! Shared memory: a sealed memfd mapped `MAP_SHARED` ([`SharedRegion`]) that travels as its
//! descriptor, and the plain-old-data rule ([`Pod`]) for what may live in it.
//!
//! May import: `sys`, `message`, `fd`. Never `wait`, `transport` or `proc`.

mod region;

pub(crate) use region::punch_hole;
pub use region::{Pod, SharedRegion};
