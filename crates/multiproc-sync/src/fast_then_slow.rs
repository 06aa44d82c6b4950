//! What the primitives add to the core's [`WaitQueue`](multiproc_core::wait::WaitQueue): the
//! fast-path-then-park future shape. Spinning before parking and the liveness tick are core's
//! (`multiproc_core::wait`).

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The shape of every `lock()`/`acquire()`/`wait()`: at the first poll, `fast(ctx)` runs
/// synchronously (no state machine around it, nothing allocated); only when it returns
/// `Err(x)` is `slow(ctx, x)` built, boxed (so the common case never carries its size) and
/// polled to completion.
///
/// `fast` and `slow` are meant to be non-capturing closures (zero-sized): everything they need
/// comes through `ctx` and `x`, so the fast path reads one reference and one tag.
///
/// Lazy like any future: nothing happens before the first poll (so a task identity read by
/// `fast` is that of the polling task). Cancel safe exactly when `slow`'s future is: once
/// `fast` has succeeded the future has already returned its value.
#[inline]
pub(crate) fn fast_then_slow<'a, C: ?Sized, T, X, F, S, Fut>(
    ctx: &'a C,
    fast: F,
    slow: S,
) -> FastThenSlow<'a, C, F, S, Fut>
where
    F: Fn(&'a C) -> Result<T, X> + Unpin,
    S: Fn(&'a C, X) -> Fut + Unpin,
    Fut: Future<Output = T>,
{
    FastThenSlow {
        ctx,
        fast,
        slow,
        state: State::Start,
    }
}

/// The future of [`fast_then_slow`].
pub(crate) struct FastThenSlow<'a, C: ?Sized, F, S, Fut: Future> {
    ctx: &'a C,
    fast: F,
    slow: S,
    state: State<Fut>,
}

// The slow future is boxed and an output in `State::Ready` is only moved, never pinned.
impl<C: ?Sized, F: Unpin, S: Unpin, Fut: Future> Unpin for FastThenSlow<'_, C, F, S, Fut> {}

/// `repr(u8)`: a plain tag byte, not a niche of the output (the drop glue then checks one
/// byte, as for any state).
#[repr(u8)]
enum State<Fut: Future> {
    Start,
    Slow(SlowBox<Fut>),
    /// The slow future's output, from [`poll_slow`] to [`FastThenSlow::poll`], which takes it
    /// at once (so it is never dropped here: `ManuallyDrop` keeps its drop code out of the
    /// future's drop glue). Handed over in the future rather than returned, so the output of
    /// the fast path, which never goes through memory, does not have to either: a value
    /// returned from an out-of-line call comes back through a stack slot, and the caller's
    /// `.await` then stores the fast path's output in that slot too.
    Ready(ManuallyDrop<Fut::Output>),
    Done,
}

/// The boxed slow future, dropped out of line so that dropping a [`FastThenSlow`] that took
/// the fast path stays a tag check. The `ManuallyDrop` keeps the future's drop code out of
/// the drop glue (which would otherwise grow too large to inline into every `lock().await`):
/// `Drop` takes the box out and drops it in [`drop_slow`], leaving nothing to drop.
struct SlowBox<Fut>(ManuallyDrop<Option<Pin<Box<Fut>>>>);

impl<Fut> Drop for SlowBox<Fut> {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_some() {
            drop_slow(&mut self.0);
        }
    }
}

#[cold]
#[inline(never)]
fn drop_slow<Fut>(slow: &mut Option<Pin<Box<Fut>>>) {
    drop(slow.take());
}

impl<'a, C: ?Sized, T, X, F, S, Fut> Future for FastThenSlow<'a, C, F, S, Fut>
where
    F: Fn(&'a C) -> Result<T, X> + Unpin,
    S: Fn(&'a C, X) -> Fut + Unpin,
    Fut: Future<Output = T>,
{
    type Output = T;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        if let State::Start = this.state {
            match (this.fast)(this.ctx) {
                // The state stays `Start` (no store: the common case writes nothing into the
                // future). Polled again after this, the future would start over, which the
                // `Future` contract allows; `.await` never does.
                Ok(v) => return Poll::Ready(v),
                Err(x) => start_slow(&mut this.state, this.ctx, &this.slow, x),
            }
        }
        if poll_slow(&mut this.state, cx) {
            Poll::Ready(take_ready(&mut this.state))
        } else {
            Poll::Pending
        }
    }
}

/// Boxes the slow future: out of line, so the fast path's frame stays small.
#[cold]
#[inline(never)]
fn start_slow<'a, C: ?Sized, X, S, Fut>(state: &mut State<Fut>, ctx: &'a C, slow: &S, x: X)
where
    S: Fn(&'a C, X) -> Fut,
    Fut: Future,
{
    *state = State::Slow(SlowBox(ManuallyDrop::new(Some(Box::pin(slow(ctx, x))))));
}

/// The parking half of [`FastThenSlow::poll`], out of line like [`start_slow`]: polls the
/// slow future, and when it is ready leaves its output in `state` (`State::Ready`) and
/// returns `true`.
#[cold]
#[inline(never)]
fn poll_slow<Fut: Future>(state: &mut State<Fut>, cx: &mut Context<'_>) -> bool {
    let State::Slow(SlowBox(slow)) = state else {
        polled_after_completion();
    };
    let Some(fut) = &mut **slow else {
        polled_after_completion();
    };
    match fut.as_mut().poll(cx) {
        Poll::Ready(v) => {
            *state = State::Ready(ManuallyDrop::new(v));
            true
        }
        Poll::Pending => false,
    }
}

/// The output [`poll_slow`] left in `state`, leaving `State::Done`.
#[inline]
fn take_ready<Fut: Future>(state: &mut State<Fut>) -> Fut::Output {
    match std::mem::replace(state, State::Done) {
        State::Ready(v) => ManuallyDrop::into_inner(v),
        _ => polled_after_completion(),
    }
}

#[cold]
#[inline(never)]
fn polled_after_completion() -> ! {
    panic!("future polled after completion");
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::task::Waker;

    use super::*;

    /// What the fast and slow halves saw.
    #[derive(Default)]
    struct Probe {
        fast_calls: Cell<u32>,
        fast_ok: Cell<bool>,
        slow_built: Cell<u32>,
        slow_dropped: Cell<bool>,
    }

    /// Pending once, then ready with `v`; records its drop.
    struct PendingOnce<'a> {
        probe: &'a Probe,
        polled: bool,
        v: u32,
    }

    impl Future for PendingOnce<'_> {
        type Output = u32;
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
            if std::mem::replace(&mut self.polled, true) {
                Poll::Ready(self.v)
            } else {
                Poll::Pending
            }
        }
    }

    impl Drop for PendingOnce<'_> {
        fn drop(&mut self) {
            self.probe.slow_dropped.set(true);
        }
    }

    fn future(probe: &Probe) -> impl Future<Output = u32> + '_ {
        fast_then_slow(
            probe,
            |p: &Probe| {
                p.fast_calls.set(p.fast_calls.get() + 1);
                if p.fast_ok.get() { Ok(1) } else { Err(2) }
            },
            |p: &Probe, v| {
                p.slow_built.set(p.slow_built.get() + 1);
                PendingOnce {
                    probe: p,
                    polled: false,
                    v,
                }
            },
        )
    }

    fn poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn nothing_happens_before_the_first_poll() {
        let probe = Probe::default();
        drop(future(&probe));
        assert_eq!(probe.fast_calls.get(), 0);
        assert_eq!(probe.slow_built.get(), 0);
    }

    #[test]
    fn fast_success_never_builds_the_slow_future() {
        let probe = Probe::default();
        probe.fast_ok.set(true);
        let mut f = std::pin::pin!(future(&probe));
        assert_eq!(poll(f.as_mut()), Poll::Ready(1));
        assert_eq!(probe.fast_calls.get(), 1);
        assert_eq!(probe.slow_built.get(), 0);
    }

    #[test]
    fn fast_failure_hands_over_to_the_slow_future_once() {
        let probe = Probe::default();
        let mut f = std::pin::pin!(future(&probe));
        assert_eq!(poll(f.as_mut()), Poll::Pending);
        // Even if the fast half would now succeed, the slow future owns the rest.
        probe.fast_ok.set(true);
        assert_eq!(poll(f.as_mut()), Poll::Ready(2));
        assert_eq!(probe.fast_calls.get(), 1);
        assert_eq!(probe.slow_built.get(), 1);
        // Finished: the slow future is already gone.
        assert!(probe.slow_dropped.get());
    }

    #[test]
    fn dropping_a_pending_future_drops_the_slow_future() {
        let probe = Probe::default();
        let mut f = Box::pin(future(&probe));
        assert_eq!(poll(f.as_mut()), Poll::Pending);
        assert!(!probe.slow_dropped.get());
        drop(f);
        assert!(probe.slow_dropped.get());
    }
}
