//! `update`: a user's `fn` run inside the manager, on the stored value, atomically.
//!
//! The client names the function with a [`RemoteFn`] (as `spawn` names a child's function); its
//! shim, monomorphised here for the value, argument and result types, decodes the stored value
//! (or starts from `Default` where the proxy allows it), decodes the argument, calls the
//! function under `catch_unwind`, and encodes the new value and the result. The manager stores
//! the new value only when all of that succeeded, so an update is applied whole or not at all,
//! and a panicking function leaves the value as it was.

use std::panic::{AssertUnwindSafe, catch_unwind};

use multiproc_core::proc::remote_fn::RemoteFn;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wire::{Blob, Failure, FnToken, UpdateCall};

/// The token for `f(&mut T, A) -> R`, for a value that must exist.
pub(crate) fn update_fn<T, A, R, F>(f: F) -> FnToken
where
    F: Fn(&mut T, A) -> R + Copy + Send + 'static,
    T: Serialize + DeserializeOwned + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    FnToken::new(RemoteFn::new(f, run::<T, A, R, F>))
}

/// The token for `f(&mut T, A) -> R`, for a map entry that starts as `T::default()` when absent.
pub(crate) fn update_or_default_fn<T, A, R, F>(f: F) -> FnToken
where
    F: Fn(&mut T, A) -> R + Copy + Send + 'static,
    T: Serialize + DeserializeOwned + Default + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    FnToken::new(RemoteFn::new(f, run_or_default::<T, A, R, F>))
}

fn run<T, A, R, F>(f: F, call: UpdateCall) -> UpdateCall
where
    F: Fn(&mut T, A) -> R,
    T: Serialize + DeserializeOwned,
    A: DeserializeOwned,
    R: Serialize,
{
    let current = match call.current.as_ref().map(Blob::decode::<T>) {
        Some(Ok(value)) => value,
        Some(Err(e)) => return fail(call, Failure::Undecodable(e.to_string())),
        None => return fail(call, Failure::NoSuchValue),
    };
    apply(f, current, call)
}

fn run_or_default<T, A, R, F>(f: F, call: UpdateCall) -> UpdateCall
where
    F: Fn(&mut T, A) -> R,
    T: Serialize + DeserializeOwned + Default,
    A: DeserializeOwned,
    R: Serialize,
{
    let current = match call.current.as_ref().map(Blob::decode::<T>) {
        Some(Ok(value)) => value,
        Some(Err(e)) => return fail(call, Failure::Undecodable(e.to_string())),
        None => T::default(),
    };
    apply(f, current, call)
}

fn apply<T, A, R, F>(f: F, mut value: T, mut call: UpdateCall) -> UpdateCall
where
    F: Fn(&mut T, A) -> R,
    T: Serialize,
    A: DeserializeOwned,
    R: Serialize,
{
    let arg = match call.arg.decode::<A>() {
        Ok(arg) => arg,
        Err(e) => return fail(call, Failure::Undecodable(e.to_string())),
    };
    let ret = match catch_unwind(AssertUnwindSafe(|| f(&mut value, arg))) {
        Ok(ret) => ret,
        Err(payload) => return fail(call, Failure::Panicked(panic_text(&*payload))),
    };
    let encoded = Blob::encode(&value).and_then(|new| Ok((new, Blob::encode(&ret)?)));
    call.outcome = Some(encoded.map_err(|e| Failure::Unencodable(e.to_string())));
    call
}

fn fail(mut call: UpdateCall, failure: Failure) -> UpdateCall {
    call.outcome = Some(Err(failure));
    call
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_owned()
    }
}

/// Runs `f` on `current` in this process (the manager): the new value and the result.
pub(crate) fn call(f: &FnToken, current: Option<Blob>, arg: Blob) -> Result<(Blob, Blob), Failure> {
    let out = f.resolve()?.call(UpdateCall {
        current,
        arg,
        outcome: None,
    });
    out.outcome
        .unwrap_or_else(|| Err(Failure::Unencodable("the update gave no outcome".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(list: &mut Vec<u32>, x: u32) -> usize {
        list.push(x);
        list.len()
    }

    fn boom(_: &mut Vec<u32>, _: u32) {
        panic!("no");
    }

    #[test]
    fn runs_on_the_decoded_value_and_encodes_both() {
        let f = update_or_default_fn(push);
        let (new, ret) = call(&f, None, Blob::encode(&7u32).unwrap()).unwrap();
        assert_eq!(new.decode::<Vec<u32>>().unwrap(), [7]);
        assert_eq!(ret.decode::<usize>().unwrap(), 1);
        let (new, ret) = call(&f, Some(new), Blob::encode(&8u32).unwrap()).unwrap();
        assert_eq!(new.decode::<Vec<u32>>().unwrap(), [7, 8]);
        assert_eq!(ret.decode::<usize>().unwrap(), 2);
    }

    #[test]
    fn a_panic_is_a_failure_and_a_missing_value_too() {
        let f = update_fn(boom);
        let old = Blob::encode(&vec![1u32]).unwrap();
        let err = call(&f, Some(old), Blob::encode(&1u32).unwrap()).unwrap_err();
        assert!(
            matches!(err, Failure::Panicked(ref m) if m == "no"),
            "{err}"
        );
        let err = call(&f, None, Blob::encode(&1u32).unwrap()).unwrap_err();
        assert!(matches!(err, Failure::NoSuchValue), "{err}");
    }

    #[test]
    fn a_token_that_does_not_verify_fails_the_operation_only() {
        let mut bytes = [0u8; 24].to_vec();
        bytes[0] = 1;
        let (token, _) =
            multiproc_core::message::encode(&serde_bytes::ByteBuf::from(bytes)).unwrap();
        let forged: FnToken = multiproc_core::message::decode(&token, Vec::new()).unwrap();
        let err = call(&forged, None, Blob::encode(&1u32).unwrap()).unwrap_err();
        assert!(matches!(err, Failure::UnknownFunction), "{err}");
    }

    #[test]
    fn a_wrong_argument_type_is_undecodable() {
        let f = update_or_default_fn(push);
        let err = call(&f, None, Blob::encode("text").unwrap()).unwrap_err();
        assert!(matches!(err, Failure::Undecodable(_)), "{err}");
    }
}
