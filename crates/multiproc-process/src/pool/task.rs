//! What a pool runs: the user's function adapted to one item, and the worker-side shims that
//! decode a chunk of arguments, run the function on each, and encode the outcomes.

use std::sync::OnceLock;

use multiproc_core::message;
use multiproc_core::proc::remote_fn::RemoteFn;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::worker_protocol::{Call, ChunkOutput, Failure, Rejected, TaskFn};
use crate::function::ChildOutput;
use crate::panic::{self, PanicReport};

/// A function [`Pool::starmap`](super::Pool::starmap) can call with a tuple of arguments,
/// spread: `Fn(A)`, `Fn(A, B)`, ... up to six arguments, as a `fn` item or a closure that
/// captures nothing. Implemented for every such function; you never implement it.
pub trait StarmapFn<Args>: Copy + Send + 'static {
    /// What the function returns.
    type Ret;
    /// Calls the function with the tuple's fields as arguments.
    fn call_spread(self, args: Args) -> Self::Ret;
}

macro_rules! starmap_fn {
    ($($arg:ident),+) => {
        impl<Func, Ret, $($arg),+> StarmapFn<($($arg,)+)> for Func
        where
            Func: Fn($($arg),+) -> Ret + Copy + Send + 'static,
        {
            type Ret = Ret;
            #[allow(non_snake_case)]
            fn call_spread(self, ($($arg,)+): ($($arg,)+)) -> Ret {
                self($($arg),+)
            }
        }
    };
}
starmap_fn!(A);
starmap_fn!(A, B);
starmap_fn!(A, B, C);
starmap_fn!(A, B, C, D);
starmap_fn!(A, B, C, D, E);
starmap_fn!(A, B, C, D, E, G);

/// A function called with one item; zero-sized when the function is.
pub(crate) trait Invoke<A>: Copy + 'static {
    type Ret;
    fn invoke(self, item: A) -> Self::Ret;
}

/// `f(item)`.
#[derive(Clone, Copy)]
pub(crate) struct Plain<F>(pub F);

impl<F, A, R> Invoke<A> for Plain<F>
where
    F: Fn(A) -> R + Copy + 'static,
{
    type Ret = R;
    fn invoke(self, item: A) -> R {
        (self.0)(item)
    }
}

/// `f(a, b, ...)` for an item `(a, b, ...)`.
#[derive(Clone, Copy)]
pub(crate) struct Spread<F>(pub F);

impl<F, Args> Invoke<Args> for Spread<F>
where
    F: StarmapFn<Args>,
{
    type Ret = F::Ret;
    fn invoke(self, item: Args) -> F::Ret {
        self.0.call_spread(item)
    }
}

/// The token for running chunks of `f` in a worker.
pub(crate) fn chunk_fn<T, A, M>(f: T) -> TaskFn
where
    T: Invoke<A>,
    A: DeserializeOwned + 'static,
    T::Ret: ChildOutput<M>,
{
    RemoteFn::new(f, run_chunk::<T, A, M>)
}

/// The token for running `f` once as the initializer.
pub(crate) fn init_fn<T, A, M>(f: T) -> TaskFn
where
    T: Invoke<A>,
    A: DeserializeOwned + 'static,
    T::Ret: ChildOutput<M>,
{
    RemoteFn::new(f, run_init::<T, A, M>)
}

/// Worker side: decodes a `Vec<A>`, runs `f` on each item, encodes a `ChunkOutput`.
fn run_chunk<T, A, M>(f: T, mut call: Call) -> Call
where
    T: Invoke<A>,
    A: DeserializeOwned,
    T::Ret: ChildOutput<M>,
{
    let Some(items) = take_input::<Vec<A>>(&mut call) else {
        return call;
    };
    let mut output = ChunkOutput {
        values: Vec::with_capacity(items.len()),
        failures: Vec::new(),
    };
    let marker = call.item_marker();
    for (i, item) in items.into_iter().enumerate() {
        if let Some(marker) = &marker {
            marker.started(i);
        }
        match panic::catch(|| f.invoke(item).resolve(async_runtime::<T::Ret, M>())) {
            Ok(value) => output.values.push(value),
            Err(PanicReport { message, location }) => output
                .failures
                .push((i as u32, Failure::Panicked { message, location })),
        }
    }
    call.tasks_done();
    encode_output(output, &mut call);
    call
}

/// Worker side: decodes an `A`, runs `f` once, encodes a `ChunkOutput<()>`.
fn run_init<T, A, M>(f: T, mut call: Call) -> Call
where
    T: Invoke<A>,
    A: DeserializeOwned,
    T::Ret: ChildOutput<M>,
{
    let Some(arg) = take_input::<A>(&mut call) else {
        return call;
    };
    let mut output = ChunkOutput {
        values: Vec::new(),
        failures: Vec::new(),
    };
    match panic::catch(|| drop(f.invoke(arg).resolve(async_runtime::<T::Ret, M>()))) {
        Ok(()) => output.values.push(()),
        Err(PanicReport { message, location }) => output
            .failures
            .push((0, Failure::Panicked { message, location })),
    }
    encode_output(output, &mut call);
    call
}

/// Decodes the call's arguments; when they do not decode, marks the call rejected.
fn take_input<A: DeserializeOwned>(call: &mut Call) -> Option<A> {
    match message::decode_fixed(&call.input, std::mem::take(&mut call.input_fds)) {
        Ok(input) => Some(input),
        Err(e) => {
            call.rejected = Some(Rejected::Args(e.to_string()));
            None
        }
    }
}

/// Encodes the output into `call.output`; a value that cannot be encoded becomes an
/// `Unsendable` failure instead of failing its neighbours.
fn encode_output<R: Serialize>(output: ChunkOutput<R>, call: &mut Call) {
    let start = call.output.len();
    if let Ok(fds) = message::encode_fixed_into(&output, &mut call.output) {
        call.output_fds = fds;
        return;
    }
    call.output.truncate(start);
    // Rare: find the culprits one by one, and renumber the values into positions.
    let ChunkOutput { values, failures } = output;
    let mut failures = failures.into_iter().peekable();
    let mut values = values.into_iter();
    let mut fixed = ChunkOutput {
        values: Vec::new(),
        failures: Vec::new(),
    };
    let mut position = 0u32;
    loop {
        if let Some(failure) = failures.next_if(|(at, _)| *at == position) {
            fixed.failures.push(failure);
        } else if let Some(value) = values.next() {
            match message::encode_fixed_into(&value, &mut Vec::new()) {
                Ok(_) => fixed.values.push(value),
                Err(e) => fixed
                    .failures
                    .push((position, Failure::Unsendable(e.to_string()))),
            }
        } else {
            break;
        }
        position += 1;
    }
    match message::encode_fixed_into(&fixed, &mut call.output) {
        Ok(fds) => call.output_fds = fds,
        Err(e) => {
            call.output.truncate(start);
            call.rejected = Some(Rejected::Results(e.to_string()));
        }
    }
}

/// The worker's tokio runtime, started the first time an async function runs.
fn async_runtime<R: ChildOutput<M>, M>() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if !R::ASYNC {
        return None;
    }
    Some(RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start the pool worker's tokio runtime")
    }))
}
