//! Where this thread runs: what an adaptive spin asks before spinning for a peer (spinning pays
//! only while the peer runs on another CPU; on the same one it only keeps the peer from running).

/// The CPU this thread runs on now (`getcpu(2)` through the vDSO: no system call). The answer
/// may be stale as soon as it returns; use it as a hint.
///
/// # References
/// - [`getcpu(2)`](https://man7.org/linux/man-pages/man2/getcpu.2.html)
pub fn current() -> usize {
    rustix::thread::sched_getcpu()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_current_cpu_is_one_we_may_run_on() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        // CPU numbers can exceed the count when the affinity mask has holes; allow for it.
        assert!(super::current() < cpus.max(1024));
    }
}
