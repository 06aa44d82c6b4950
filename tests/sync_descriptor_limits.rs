//! Descriptor limits and primitives (issue 18): the soft `RLIMIT_NOFILE` is raised to the hard
//! limit at the first primitive (and again when a creation meets the soft limit), and a limit
//! reached anyway is named in the error. Each case runs in a child whose limits it lowers.
//!
//! Locks, events and semaphores share arenas (thousands per descriptor), so these tests make
//! `Condition`s, which still hold a memfd and an eventfd each.

use multiproc::{Builder, Condition, spawn};
use multiproc_suite::within;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Lowers the soft descriptor limit to `soft` (the hard one stays), then creates `count`
/// conditions. Gives back the soft limit afterwards, or the first creation error.
fn lower_then_create(soft: u64, count: usize) -> Result<Option<u64>, String> {
    let hard = getrlimit(Resource::Nofile).maximum;
    if hard.is_some_and(|h| h <= soft) {
        // Nothing to raise on this machine: say so rather than pass vacuously.
        return Err(format!("hard limit {hard:?} leaves no room above {soft}"));
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(soft),
            maximum: hard,
        },
    )
    .map_err(|e| e.to_string())?;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(Condition::new().map_err(|e| e.to_string())?);
    }
    Ok(getrlimit(Resource::Nofile).current)
}

#[tokio::test]
async fn a_lowered_soft_limit_is_raised_to_the_hard_one() {
    // 300 conditions hold 600 descriptors, far past the lowered soft limit of 64.
    let child = spawn((64u64, 300usize), |(soft, count)| {
        lower_then_create(soft, count)
    });
    let soft = within("child", child).await.unwrap().unwrap();
    let hard = getrlimit(Resource::Nofile).maximum;
    assert_eq!(soft, hard, "the soft limit was raised to the hard one");
}

/// Creates conditions until one fails; its message, whether it is the descriptor limit, and
/// how many were made.
fn create_until_refused(_: ()) -> (String, bool, usize) {
    let mut held = Vec::new();
    loop {
        match Condition::new() {
            Ok(condition) => held.push(condition),
            Err(e) => return (e.to_string(), e.is_descriptor_limit(), held.len()),
        }
        assert!(held.len() < 100_000, "no limit reached");
    }
}

#[tokio::test]
async fn a_reached_descriptor_limit_is_named() {
    // Soft and hard limits both 64: nothing to raise.
    let child = Builder::new()
        .open_files_limit(64)
        .spawn((), create_until_refused)
        .unwrap();
    let (message, is_limit, made) = within("limited child", child).await.unwrap();
    assert!(is_limit, "{message}");
    assert_eq!(
        message,
        "the process's open-descriptor limit (RLIMIT_NOFILE, soft 64) is reached"
    );
    assert!(
        made > 0 && made < 64,
        "{made} conditions under a limit of 64"
    );
}
