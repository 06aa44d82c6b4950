//! Tracing across the process boundary: the span of each spawned child and the parent's span
//! context a child inherits, so that a trace of work that fans out to child processes reads as
//! one tree.
//!
//! The parent opens a `multiproc.child` span (fields `pid`, `name`, `function`) inside its
//! current span for every child it spawns; the child's exit, panic or death is an event in it:
//! from the join when the handle is awaited, else from the reaper thread once the child whose
//! handle was dropped (detached, or killed by `kill_on_drop`) exits.
//! Span ids are per process, so the child cannot enter that span itself: it receives the span
//! as data, a [`RemoteSpan`] (the parent's pid and the span's id there), and
//! [`child_span`] opens the child's root span, `multiproc.remote`, with fields
//! `parent.pid` and `parent.span` naming it. A collector that gathers spans from every
//! process (by pid) joins the two: the child's tree hangs under the parent's `multiproc.child`.
//!
//! Pool tasks carry the span current where they were submitted (`map`, `apply`, `submit`, ...):
//! a worker runs each chunk inside a `multiproc.task` span (fields `parent.pid`,
//! `parent.span`, `pid`, `job`) naming it, so a request that fans out through a pool reads as
//! one tree with no code in the task. Work submitted outside any recorded span opens no task
//! span.
//!
//! A child never runs `main`, so it has no subscriber until its function installs one, and a
//! span created before a subscriber exists stays disabled for good (tracing decides when a
//! span is created, not when it is entered). That is why a spawned child's root span cannot be
//! opened for it: its function calls [`child_span`] after installing its subscriber and enters
//! it. A pool does this by itself: install the subscriber in the pool's initializer, which runs
//! before any task, and every task span is recorded.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// A span in another process: the parent's span for this child, as a child receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSpan {
    /// The process the span lives in.
    pub pid: u32,
    /// The span's id in that process's subscriber (`tracing::Id::into_u64`).
    pub span_id: u64,
}

/// What this child received: set once, before its function runs.
static PARENT: OnceLock<RemoteSpan> = OnceLock::new();

/// In a child process: the parent's `multiproc.child` span for this child, if the parent had a
/// subscriber that recorded it (and the `tracing` feature on). `None` in a process that was not
/// spawned by multiproc.
pub fn remote_parent() -> Option<RemoteSpan> {
    PARENT.get().copied()
}

/// Records what the parent sent (in the child, before the function runs).
pub(crate) fn set_remote_parent(parent: Option<RemoteSpan>) {
    if let Some(parent) = parent {
        let _ = PARENT.set(parent);
    }
}

/// In a child process: opens its root span, `multiproc.remote` (info level, target
/// `multiproc`), with fields `parent.pid` and `parent.span` naming the parent's span for this
/// child ([`remote_parent`]; both 0 when there is none). Enter it once a subscriber is
/// installed, and the child's spans and events hang under it.
///
/// # Examples
/// ```no_run
/// # fn install_my_subscriber() {}
/// fn child(n: u32) -> u32 {
///     install_my_subscriber(); // a child never runs `main`
///     let _span = multiproc::process::child_span().entered();
///     n * 2
/// }
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// assert_eq!(multiproc::spawn(21, child).await?, 42);
/// # Ok(()) }
/// ```
#[cfg(feature = "tracing")]
pub fn child_span() -> tracing::Span {
    let parent = remote_parent();
    tracing::info_span!(
        target: "multiproc",
        "multiproc.remote",
        parent.pid = parent.map_or(0, |p| p.pid),
        parent.span = parent.map_or(0, |p| p.span_id),
        pid = std::process::id(),
    )
}

/// The current span as another process is to name it: `None` without the `tracing` feature, or
/// when no subscriber records the current span.
pub(crate) fn current_remote() -> Option<RemoteSpan> {
    #[cfg(feature = "tracing")]
    {
        tracing::Span::current().id().map(|id| RemoteSpan {
            pid: std::process::id(),
            span_id: id.into_u64(),
        })
    }
    #[cfg(not(feature = "tracing"))]
    None
}

/// In a pool worker: the span a chunk of tasks runs in, `multiproc.task` (info level, target
/// `multiproc`), naming the span it was submitted from.
#[cfg(feature = "tracing")]
pub(crate) fn task_span(parent: RemoteSpan, job: u64) -> tracing::Span {
    tracing::info_span!(
        target: "multiproc",
        "multiproc.task",
        parent.pid = parent.pid,
        parent.span = parent.span_id,
        pid = std::process::id(),
        job,
    )
}

/// In the parent: the span of a child about to be spawned running `function`, inside the
/// current span, and what the child is to receive of it (`None` when no subscriber records it).
#[cfg(feature = "tracing")]
pub(crate) fn spawn_span(
    name: Option<&str>,
    function: &'static str,
) -> (tracing::Span, Option<RemoteSpan>) {
    let span = tracing::info_span!(
        target: "multiproc",
        "multiproc.child",
        pid = tracing::field::Empty,
        name,
        function,
    );
    let remote = span.id().map(|id| RemoteSpan {
        pid: std::process::id(),
        span_id: id.into_u64(),
    });
    (span, remote)
}

/// In the parent, for a child whose handle was dropped before it was joined: an event now, and
/// the call the reaper makes once it reaps the child, which records its exit status in the
/// child's span. The reaper's thread has no subscriber of its own, so the call runs under the
/// one the span was recorded by.
#[cfg(feature = "tracing")]
pub(crate) fn exit_unjoined(
    span: tracing::Span,
    killed: bool,
) -> multiproc_core::proc::reaper::OnReaped {
    use multiproc_core::trace_debug;
    span.in_scope(|| {
        trace_debug!(
            kill_on_drop = killed,
            "child process handle dropped before the join; the child is reaped in the background"
        );
    });
    Box::new(move |status| exited_unjoined(&span, crate::ExitStatus::new(status)))
}

/// Records, in `span`, the exit of a child whose handle was dropped unjoined: from the reaper's
/// thread, or at once when the child had already been reaped.
#[cfg(feature = "tracing")]
pub(crate) fn exited_unjoined(span: &tracing::Span, status: crate::ExitStatus) {
    use multiproc_core::{trace_debug, trace_warn};
    span.with_subscriber(|(_, dispatch)| {
        tracing::dispatcher::with_default(dispatch, || {
            span.in_scope(|| {
                if status.success() {
                    trace_debug!(%status, "child process exited (reaped unjoined)");
                } else {
                    trace_warn!(%status, "child process exited (reaped unjoined)");
                }
            });
        });
    });
}

/// In the parent, inside a child's span: how its join ended, as an event.
#[cfg(feature = "tracing")]
pub(crate) fn joined<R>(result: &Result<R, crate::JoinError>) {
    use multiproc_core::proc::bootstrap::BOOTSTRAP_FAILED_EXIT;
    use multiproc_core::{trace_debug, trace_error, trace_warn};
    match result {
        Ok(_) => trace_debug!("child process returned"),
        Err(e) if e.exit_code() == Some(BOOTSTRAP_FAILED_EXIT) => trace_error!(
            error = %e,
            "child process failed to bootstrap (its control socket did not pass the checks)"
        ),
        Err(e) if e.is_panic() => trace_warn!(error = %e, "child process panicked"),
        Err(e) => trace_warn!(error = %e, "child process ended without a result"),
    }
}
