//! A named shared-memory segment created by Rust and read by a Python script
//! (`examples/python/shm_read.py`), which answers in the same memory.
//!
//! The segment is a POSIX shared memory object named exactly as Python's
//! `multiprocessing.shared_memory.SharedMemory(name=...)` names it (`/dev/shm/<name>`), so the
//! script attaches it with `SharedMemory(name=name)`. It stays until `unlink()`, as in Python;
//! among multiproc programs, `SharedMemory::create` gives a name that vanishes with its owner
//! instead.
//! Run with `cargo run --example shm_named_python` (needs `python3`).

use std::process::Command;

use multiproc::SharedMemory;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("multiproc_example_{}", std::process::id());
    let shm = SharedMemory::create_posix(&name, 3 * 4096)?;
    let values: Vec<u32> = (1..=100).collect();
    shm.write(0, &(values.len() as u64).to_le_bytes());
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    shm.write(8, &bytes);
    shm.write(4096, b"hello from Rust\0");
    println!("rust: created /dev/shm/{name} ({} bytes)", shm.len());

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/shm_read.py");
    let status = Command::new("python3").arg(script).arg(&name).status();
    let outcome = match status {
        Ok(s) if s.success() => {
            let mut answer = [0u8; 8];
            shm.read(8192, &mut answer);
            let sum = u64::from_le_bytes(answer);
            println!("rust: python answered {sum}");
            if sum == 5050 {
                Ok(())
            } else {
                Err(format!("python answered {sum}, expected 5050").into())
            }
        }
        Ok(s) => Err(format!("python3 failed: {s}").into()),
        Err(e) => Err(format!("cannot run python3: {e}").into()),
    };
    shm.unlink()?; // as Python's shm.unlink(): /dev/shm/<name> is gone
    println!("rust: unlinked {name}");
    outcome
}
