//! `SharedValue`, `SharedArray` and `SharedMemory` across real processes.
//!
//! Behaviours follow CPython's `_test_multiprocessing.py` (`_TestValue`, `_TestArray`:
//! children write, the parent sees; `get_lock()` serializes read-modify-write).

use multiproc::core::message;
use multiproc::{SharedArray, SharedMemory, SharedValue, spawn};
use multiproc_suite::within;

async fn add_thousand(value: SharedValue<i64>) {
    for _ in 0..1000 {
        let mut guard = value.lock().await.unwrap();
        *guard += 1;
    }
}

#[tokio::test]
async fn four_processes_add_to_a_shared_value_under_its_lock() {
    let value = SharedValue::new(0i64).unwrap();
    let children: Vec<_> = (0..4).map(|_| spawn(value.clone(), add_thousand)).collect();
    for child in children {
        within("child", child).await.unwrap();
    }
    assert_eq!(value.get(), 4000);
    assert!(!value.get_lock().is_locked());
}

#[tokio::test]
async fn array_written_by_a_child_is_seen_by_the_parent() {
    let array = SharedArray::<f64>::new(8).unwrap();
    assert_eq!(array.to_vec(), [0.0; 8]);
    let child = spawn(array.clone(), |array: SharedArray<f64>| {
        for i in 0..array.len() {
            array.set(i, (i * i) as f64);
        }
        let mut guard = array.blocking_lock().unwrap();
        guard[7] = -1.0;
        array.len()
    });
    assert_eq!(within("child", child).await.unwrap(), 8);
    assert_eq!(array.to_vec(), [0.0, 1.0, 4.0, 9.0, 16.0, 25.0, 36.0, -1.0]);
    assert_eq!(array.get(8), None);
    array.copy_from_slice(&[2.0; 8]);
    let guard = array.lock().await.unwrap();
    assert_eq!(&guard[..], &[2.0; 8]);
}

#[tokio::test]
async fn shared_memory_bytes_travel_both_ways() {
    let shm = SharedMemory::new(4096).unwrap();
    shm.write(100, b"from parent");
    let child = spawn(shm.clone(), |shm: SharedMemory| {
        let mut buf = [0u8; 11];
        shm.read(100, &mut buf);
        shm.write(0, b"from child");
        buf.to_vec()
    });
    assert_eq!(within("child", child).await.unwrap(), b"from parent");
    assert_eq!(&shm.to_vec()[..10], b"from child");
    assert_eq!(shm.len(), 4096);
}

#[test]
fn zero_bytes_of_shared_memory_is_an_error() {
    let err = SharedMemory::new(0).unwrap_err();
    assert_eq!(err.io_error().kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(SharedMemory::new(1).unwrap().len(), 1);
}

#[test]
fn an_array_too_large_to_address_is_an_error_not_a_panic() {
    let err = SharedArray::<u64>::new(usize::MAX / 4).unwrap_err();
    assert_eq!(err.io_error().kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn decoding_as_another_type_is_an_error_not_a_panic() {
    let value = SharedValue::new(7u32).unwrap();
    let (bytes, fds) = message::encode(&value).unwrap();
    assert!(message::decode::<SharedValue<u64>>(&bytes, fds).is_err());
    let (bytes, fds) = message::encode(&value).unwrap();
    let same: SharedValue<u32> = message::decode(&bytes, fds).unwrap();
    assert_eq!(same.get(), 7);
    same.set(8);
    assert_eq!(value.get(), 8);

    let lock = multiproc::Lock::new().unwrap();
    let (bytes, fds) = message::encode(&lock).unwrap();
    assert!(message::decode::<multiproc::Semaphore>(&bytes, fds).is_err());
    let sem = multiproc::Semaphore::new(1).unwrap();
    let (bytes, fds) = message::encode(&sem).unwrap();
    assert!(message::decode::<multiproc::BoundedSemaphore>(&bytes, fds).is_err());
}
