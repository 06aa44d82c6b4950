//! Messages on the control socket between a parent and its child.

use multiproc_core::proc::limits::ResourceLimits;
use serde::{Deserialize, Serialize};

/// First message to the child: how to run. Kept apart from the arguments so that a child whose
/// arguments do not decode can still report it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Setup {
    pub parent_pid: u32,
    pub die_with_parent: bool,
    /// The child's name (given, or `Process-N...` from `identity`).
    pub name: String,
    /// Python's `_identity`: the child's place in the tree (1-based counters, one per level).
    pub identity: Vec<u32>,
    pub limits: ResourceLimits,
    /// The parent's span for this child, for the child's spans to name as their parent.
    pub trace_parent: Option<crate::trace::RemoteSpan>,
}

/// The child's one report to the parent.
#[derive(Serialize, Deserialize)]
pub(crate) enum Report<R> {
    Returned(R),
    Panicked {
        message: String,
        location: Option<String>,
    },
    BadArgs(String),
    BadResult(String),
}
