//! Who this process is ([`current_process`]) and who started it ([`parent_process`]): Python's
//! `multiprocessing.current_process()` and `parent_process()`.
//!
//! A child learns its identity from its parent's setup message before its function runs; the
//! first process of the program is `MainProcess` at depth 0. Children are named as in Python
//! when no name is given: `Process-1`, `Process-2`... from the main process, `Process-1:1`
//! from `Process-1`, and so on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use multiproc_core::proc::pidfd::PidFd;

/// What a child was told about itself, set once before its function runs.
struct Me {
    name: String,
    identity: Vec<u32>,
    daemon: bool,
    parent_pid: u32,
    /// Opened at the first [`parent_process`] (a descriptor only for children that ask).
    parent: OnceLock<ParentProcess>,
}

static ME: OnceLock<Me> = OnceLock::new();

/// Children started so far by this process, for their default names.
static CHILDREN: AtomicU32 = AtomicU32::new(0);

/// In a child, before its function: records what the parent said.
pub(crate) fn set_child(name: String, identity: Vec<u32>, daemon: bool, parent_pid: u32) {
    let _ = ME.set(Me {
        name,
        identity,
        daemon,
        parent_pid,
        parent: OnceLock::new(),
    });
}

/// Opens the parent's pidfd, only while the parent is still ours (checked before and after):
/// once it exited this process was handed to another, the pid may name someone else, and the
/// parent is simply gone.
fn open_parent(parent_pid: u32) -> ParentProcess {
    let ours = || std::os::unix::process::parent_id() == parent_pid;
    let pidfd = ours()
        .then(|| PidFd::open(parent_pid).ok())
        .flatten()
        .filter(|_| ours());
    ParentProcess {
        pid: parent_pid,
        pidfd: pidfd.map(Arc::new),
    }
}

/// The identity and default name of the next child this process starts.
pub(crate) fn next_child() -> (Vec<u32>, String) {
    let n = CHILDREN.fetch_add(1, Ordering::Relaxed) + 1;
    let mut identity = ME.get().map(|me| me.identity.clone()).unwrap_or_default();
    identity.push(n);
    let numbers: Vec<String> = identity.iter().map(u32::to_string).collect();
    let name = format!("Process-{}", numbers.join(":"));
    (identity, name)
}

/// This process as [`current_process`] describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    name: String,
    pid: u32,
    ppid: u32,
    depth: usize,
    daemon: bool,
}

impl ProcessInfo {
    /// The name: `MainProcess` for the program's first process; a child's
    /// [`Builder::name`](crate::Builder::name), or `Process-N` (`Process-N:M` for a child's
    /// child...) when none was given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The parent's process id as the kernel sees it now (after the parent exited, the
    /// process that adopted this one).
    pub fn ppid(&self) -> u32 {
        self.ppid
    }

    /// How many spawns separate this process from the main process: 0 for it, 1 for its
    /// children...
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// True for a daemon child (it dies with its parent); false for the main process and for
    /// children started with `daemon(false)`.
    pub fn daemon(&self) -> bool {
        self.daemon
    }
}

/// This process: its name, pid, parent pid, depth and daemon flag (Python's
/// `multiprocessing.current_process()`).
///
/// # Examples
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use multiproc::process::current_process;
///
/// assert_eq!(current_process().name(), "MainProcess");
/// let (name, depth) = multiproc::spawn((), |()| {
///     let me = current_process();
///     (me.name().to_string(), me.depth())
/// })
/// .await?;
/// assert_eq!((name.as_str(), depth), ("Process-1", 1));
/// # Ok(())
/// # }
/// ```
pub fn current_process() -> ProcessInfo {
    let pid = std::process::id();
    let ppid = std::os::unix::process::parent_id();
    match ME.get() {
        Some(me) => ProcessInfo {
            name: me.name.clone(),
            pid,
            ppid,
            depth: me.identity.len(),
            daemon: me.daemon,
        },
        None => ProcessInfo {
            name: "MainProcess".into(),
            pid,
            ppid,
            depth: 0,
            daemon: false,
        },
    }
}

/// The process that started this one, seen from a child: Python's
/// `multiprocessing.parent_process()`. `None` in the main process.
///
/// A child that must not outlive its parent even when started with `daemon(false)` can
/// `select!` on [`exited`](ParentProcess::exited) and stop its work.
pub fn parent_process() -> Option<ParentProcess> {
    let me = ME.get()?;
    Some(me.parent.get_or_init(|| open_parent(me.parent_pid)).clone())
}

/// The parent of this process (see [`parent_process`]).
#[derive(Clone, Debug)]
pub struct ParentProcess {
    pid: u32,
    /// `None` when the parent was gone already when this child started.
    pidfd: Option<Arc<PidFd>>,
}

impl ParentProcess {
    /// The parent's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True while the parent runs.
    pub fn is_alive(&self) -> bool {
        self.pidfd.as_ref().is_some_and(|p| !p.has_exited())
    }

    /// Waits until the parent has exited (however it exited).
    ///
    /// # Errors
    /// Outside a tokio runtime, or when the wait cannot be registered with it.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches, and can be awaited again.
    pub async fn exited(&self) -> std::io::Result<()> {
        match &self.pidfd {
            Some(pidfd) => pidfd.exited().await,
            None => Ok(()),
        }
    }
}
