//! Events for the `tracing` crate, behind the `tracing` feature: `trace_debug!`, `trace_info!`,
//! `trace_warn!` and `trace_error!` take `tracing`'s event syntax (fields, then a message) and
//! compile to nothing without the feature (their arguments are then not evaluated), so every
//! crate of the workspace emits events through them with one line and no `cfg` of its own. The
//! target is `multiproc`, whichever crate emits.
//!
//! Imports nothing; every area may use it.

#[cfg(feature = "tracing")]
#[doc(hidden)]
pub use tracing as __tracing;

/// A `tracing::debug!` event with target `multiproc` (see the [module docs](crate::trace)).
#[cfg(feature = "tracing")]
#[macro_export]
macro_rules! trace_debug {
    ($($arg:tt)*) => {
        $crate::trace::__tracing::debug!(target: "multiproc", $($arg)*)
    };
}

/// Nothing: the `tracing` feature is off (see the [module docs](crate::trace)).
#[cfg(not(feature = "tracing"))]
#[macro_export]
macro_rules! trace_debug {
    ($($arg:tt)*) => {};
}

/// A `tracing::info!` event with target `multiproc` (see the [module docs](crate::trace)).
#[cfg(feature = "tracing")]
#[macro_export]
macro_rules! trace_info {
    ($($arg:tt)*) => {
        $crate::trace::__tracing::info!(target: "multiproc", $($arg)*)
    };
}

/// Nothing: the `tracing` feature is off (see the [module docs](crate::trace)).
#[cfg(not(feature = "tracing"))]
#[macro_export]
macro_rules! trace_info {
    ($($arg:tt)*) => {};
}

/// A `tracing::warn!` event with target `multiproc` (see the [module docs](crate::trace)).
#[cfg(feature = "tracing")]
#[macro_export]
macro_rules! trace_warn {
    ($($arg:tt)*) => {
        $crate::trace::__tracing::warn!(target: "multiproc", $($arg)*)
    };
}

/// Nothing: the `tracing` feature is off (see the [module docs](crate::trace)).
#[cfg(not(feature = "tracing"))]
#[macro_export]
macro_rules! trace_warn {
    ($($arg:tt)*) => {};
}

/// A `tracing::error!` event with target `multiproc` (see the [module docs](crate::trace)).
#[cfg(feature = "tracing")]
#[macro_export]
macro_rules! trace_error {
    ($($arg:tt)*) => {
        $crate::trace::__tracing::error!(target: "multiproc", $($arg)*)
    };
}

/// Nothing: the `tracing` feature is off (see the [module docs](crate::trace)).
#[cfg(not(feature = "tracing"))]
#[macro_export]
macro_rules! trace_error {
    ($($arg:tt)*) => {};
}
