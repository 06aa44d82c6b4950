//! Frames between a pool and its workers.
//!
//! Every frame is a small postcard header followed by a body whose type only the header's
//! function knows, so both sides decode the header with `message::decode_head` and hand the
//! rest (with all of the frame's descriptors) to the function's shim. Bodies (a chunk's
//! arguments, its `ChunkOutput`, the initializer's argument) are in core's fixed-width layout
//! (`message::encode_fixed_into`): bulk data between two copies of one program, where a
//! varint per integer was half of a worker's time on a chunk of numbers.

use std::os::fd::OwnedFd;

use multiproc_core::proc::remote_fn::RemoteFn;
use serde::{Deserialize, Serialize};

use super::result_ring::{Control, ItemMarker};

/// A function a worker can run: decodes `call.input`, runs, encodes into `call.output`.
pub(crate) type TaskFn = RemoteFn<Call, Call>;

/// Parent to worker.
#[derive(Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// The first frame: run the initializer, if any (its argument follows). The worker answers
    /// `Ready` or `InitFailed`.
    Init { func: Option<TaskFn> },
    /// Run a chunk of tasks; a `Vec` of their arguments follows. Answered by `Done` or
    /// `Rejected`, in the order the chunks were sent. `span`: the submitter's span, which the
    /// worker's `multiproc.task` span names as its parent.
    Run {
        id: u64,
        func: TaskFn,
        span: Option<crate::RemoteSpan>,
    },
}

/// Worker to parent.
#[derive(Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The initializer returned.
    Ready,
    /// The initializer panicked; the worker exits.
    InitFailed {
        message: String,
        location: Option<String>,
    },
    /// A chunk ran; a `ChunkOutput<R>` follows. `busy_ns` is how long it took. Sent through the
    /// shared ring when it fits there (see `result_ring`), else through the socket.
    Done { id: u64, busy_ns: u64 },
    /// A chunk could not run (its arguments did not decode) or its results could not be sent.
    Rejected { id: u64, why: Rejected },
    /// Results wait in the shared ring (sent only when the pool said it waits for them).
    Nudge,
}

impl FromWorker {
    /// The job this message answers, if it answers one.
    pub(crate) fn job(&self) -> Option<u64> {
        match self {
            FromWorker::Done { id, .. } | FromWorker::Rejected { id, .. } => Some(*id),
            FromWorker::Ready | FromWorker::InitFailed { .. } | FromWorker::Nudge => None,
        }
    }
}

/// The outcomes of a chunk's tasks: the values of those that returned, in order, and the
/// failures of the others by position. Kept apart so that the common case (every task
/// returned) is a plain `Vec<R>` on the wire and in memory.
#[derive(Serialize, Deserialize)]
pub(crate) struct ChunkOutput<R> {
    pub values: Vec<R>,
    /// `(position in the chunk, failure)`, positions strictly increasing.
    pub failures: Vec<(u32, Failure)>,
}

/// Why one task has no value.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) enum Failure {
    Panicked {
        message: String,
        location: Option<String>,
    },
    /// The value could not be encoded; the reason.
    Unsendable(String),
}

/// Input and output buffers of a call to a [`TaskFn`] in a worker (reused between calls).
#[derive(Default)]
pub(crate) struct Call {
    /// The encoded arguments.
    pub input: Vec<u8>,
    /// The descriptors that came with them.
    pub input_fds: Vec<OwnedFd>,
    /// Where the function appends its encoded outcomes.
    pub output: Vec<u8>,
    /// The descriptors the outcomes carry.
    pub output_fds: Vec<OwnedFd>,
    /// Set when the call failed as a whole.
    pub rejected: Option<Rejected>,
    /// Where the worker records which task of a chunk runs (absent outside a worker).
    pub progress: Option<Control>,
}

impl Call {
    /// Where the chunk's tasks record that they start ([`ItemMarker::started`]), so that a task
    /// that kills the worker is blamed, not its chunk's first task. `None` outside a worker.
    pub(crate) fn item_marker(&self) -> Option<ItemMarker<'_>> {
        self.progress.as_ref().map(Control::item_marker)
    }

    /// Records that no task of the chunk runs any more: its results are being encoded, and a
    /// worker that dies now (a result's `Serialize` aborting, say) is blamed on no task.
    pub(crate) fn tasks_done(&self) {
        if let Some(progress) = &self.progress {
            progress.clear_running_item();
        }
    }
}

/// Why a whole chunk failed in the worker.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Rejected {
    /// The arguments did not decode; nothing ran.
    Args(String),
    /// The chunk ran but its results could not be encoded or sent.
    Results(String),
    /// The pool cancelled the job after sending it; nothing ran.
    Cancelled,
}
