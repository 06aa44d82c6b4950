//! The limits a process meets when it creates descriptors and shared mappings: the soft
//! descriptor limit raised to the hard one (as Go's runtime does at start), and an error that
//! names the limit when one is reached anyway.
//!
//! **When the limit is raised.** Lazily and once per process, at the first descriptor-holding
//! resource the library creates (a shared region, an eventfd, a socket pair; see
//! [`creating`]), and again whenever a creation meets `EMFILE` while the soft limit is below
//! the hard one (the program, or a library, may have lowered it meanwhile). Not in the spawn
//! bootstrap: a child raises its own limit the same way at its first resource, so a program
//! that never creates one keeps its limits untouched. Lowering limits stays possible: a child
//! started with `Builder::open_files_limit` has soft and hard limits equal, which leaves
//! nothing to raise. The soft limit 1,024 exists for `select(2)`'s fixed-size sets; a program
//! that uses `select` on descriptors it opens after ours should lower it again itself.
//!
//! # References
//! - [`getrlimit(2)`](https://man7.org/linux/man-pages/man2/getrlimit.2.html) (`RLIMIT_NOFILE`),
//!   [`proc_sys_vm(5)`](https://man7.org/linux/man-pages/man5/proc_sys_vm.5.html)
//!   (`max_map_count`), [`proc_sys_fs(5)`](https://man7.org/linux/man-pages/man5/proc_sys_fs.5.html)
//!   (`file-max`)

use std::fmt;
use std::io;
use std::sync::Once;

use rustix::process::{Resource, Rlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard one, once per process.
pub(crate) fn raise_once() {
    static RAISED: Once = Once::new();
    RAISED.call_once(|| {
        raise_soft_to_hard();
    });
}

/// Raises the soft descriptor limit to the hard one; whether it rose.
fn raise_soft_to_hard() -> bool {
    let now = rustix::process::getrlimit(Resource::Nofile);
    if now.current.is_some() && now.current != now.maximum {
        let raised = Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        return rustix::process::setrlimit(Resource::Nofile, raised).is_ok();
    }
    false
}

/// Runs `make`, which creates descriptors (and maybe a mapping), with the descriptor limit
/// raised first; an `EMFILE` with room under the hard limit raises it and tries once more.
/// An error that means a limit was reached comes back as a [`LimitError`] naming it.
pub(crate) fn creating<T>(mut make: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    raise_once();
    match make() {
        Err(e) if e.raw_os_error() == Some(libc::EMFILE) && raise_soft_to_hard() => {
            make().map_err(name_limit)
        }
        r => r.map_err(name_limit),
    }
}

/// `e`, or a [`LimitError`] naming the limit `e` means was reached (its kind kept, `e` as its
/// source).
pub(crate) fn name_limit(e: io::Error) -> io::Error {
    let limit = match e.raw_os_error() {
        Some(libc::EMFILE) => Limit::Descriptors {
            soft: rustix::process::getrlimit(Resource::Nofile).current,
        },
        Some(libc::ENFILE) => Limit::SystemFiles,
        Some(libc::ENOMEM) => Limit::Memory {
            max_map_count: std::fs::read_to_string("/proc/sys/vm/max_map_count")
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        },
        _ => return e,
    };
    io::Error::new(e.kind(), LimitError { limit, source: e })
}

/// A limit of the process or the system was reached while creating a descriptor or a shared
/// mapping: the source of the [`io::Error`] a creation returns, naming the limit (reach it
/// with [`LimitError::find`]).
#[derive(Debug)]
pub struct LimitError {
    limit: Limit,
    source: io::Error,
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    /// `EMFILE`: the process's `RLIMIT_NOFILE`; its soft value (`None`: unlimited).
    Descriptors { soft: Option<u64> },
    /// `ENFILE`: the system's `fs.file-max`.
    SystemFiles,
    /// `ENOMEM`: memory, the address-space limit or the mapping count limit.
    Memory { max_map_count: Option<u64> },
}

impl LimitError {
    /// The limit error inside `e` (an error a creation of multiproc returned), if `e` is one.
    pub fn find(e: &io::Error) -> Option<&LimitError> {
        e.get_ref()?.downcast_ref()
    }

    /// Whether the process's open-descriptor limit (`RLIMIT_NOFILE`) was reached.
    pub fn is_descriptor_limit(&self) -> bool {
        matches!(self.limit, Limit::Descriptors { .. })
    }

    /// Whether the system-wide open-file limit was reached.
    pub fn is_system_file_limit(&self) -> bool {
        matches!(self.limit, Limit::SystemFiles)
    }

    /// Whether the kernel refused memory (or a mapping) for shared state.
    pub fn is_memory(&self) -> bool {
        matches!(self.limit, Limit::Memory { .. })
    }

    /// The soft descriptor limit at the time, for [`is_descriptor_limit`](Self::is_descriptor_limit).
    pub fn descriptor_limit(&self) -> Option<u64> {
        match self.limit {
            Limit::Descriptors { soft } => soft,
            _ => None,
        }
    }
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Limit::Descriptors { soft: Some(soft) } => write!(
                f,
                "the process's open-descriptor limit (RLIMIT_NOFILE, soft {soft}) is reached"
            ),
            Limit::Descriptors { soft: None } => {
                f.write_str("the process's open-descriptor limit (RLIMIT_NOFILE) is reached")
            }
            Limit::SystemFiles => {
                f.write_str("the system's open-file limit (fs.file-max) is reached")
            }
            Limit::Memory {
                max_map_count: Some(n),
            } => write!(
                f,
                "the kernel refused memory for shared state (out of memory, the address-space \
                 limit RLIMIT_AS, or the limit of {n} mappings, vm.max_map_count, is reached)"
            ),
            Limit::Memory {
                max_map_count: None,
            } => f.write_str(
                "the kernel refused memory for shared state (out of memory, the address-space \
                 limit RLIMIT_AS, or the mapping limit vm.max_map_count, is reached)",
            ),
        }
    }
}

impl std::error::Error for LimitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_descriptor_limit() {
        let e = name_limit(io::Error::from_raw_os_error(libc::EMFILE));
        let limit = LimitError::find(&e).expect("a limit error");
        assert!(limit.is_descriptor_limit());
        let soft = rustix::process::getrlimit(Resource::Nofile).current;
        assert_eq!(limit.descriptor_limit(), soft);
        assert!(e.to_string().contains("RLIMIT_NOFILE"), "{e}");
        let source = std::error::Error::source(limit).unwrap();
        assert!(source.to_string().contains("os error 24"), "{source}");
    }

    #[test]
    fn names_memory_and_the_system_limit_and_leaves_other_errors_alone() {
        let e = name_limit(io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(LimitError::find(&e).unwrap().is_memory());
        assert!(e.to_string().contains("vm.max_map_count"), "{e}");
        let e = name_limit(io::Error::from_raw_os_error(libc::ENFILE));
        assert!(LimitError::find(&e).unwrap().is_system_file_limit());
        let e = name_limit(io::Error::from_raw_os_error(libc::EINVAL));
        assert!(LimitError::find(&e).is_none());
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
}
