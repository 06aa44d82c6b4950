#!/usr/bin/env python3
"""Reads a shared-memory segment a Rust program created with
`multiproc::SharedMemory::create_posix(name, size)`, and answers in it.

Layout (chosen by examples/shm_named_python.rs): bytes 0..8 a little-endian u64 count, then
`count` little-endian u32 values; at 4096 a NUL-terminated UTF-8 greeting; Python writes its
answer (the sum of the values, a u64) at 8192.

Usage: python3 shm_read.py NAME
"""
import struct
import sys
from multiprocessing import resource_tracker, shared_memory

name = sys.argv[1]
shm = shared_memory.SharedMemory(name=name)  # attach: the size is the creator's
# Python 3.11-3.12 register attached segments with the resource tracker too, which would
# unlink the Rust program's segment when this script exits (gh-82300; 3.13 has track=False).
resource_tracker.unregister(shm._name, "shared_memory")
(count,) = struct.unpack_from("<Q", shm.buf, 0)
values = struct.unpack_from(f"<{count}I", shm.buf, 8)
greeting = bytes(shm.buf[4096:8192]).split(b"\0", 1)[0].decode()
print(f"python: {greeting!r}, {count} values, size {shm.size}")
struct.pack_into("<Q", shm.buf, 8192, sum(values))
shm.close()  # detach; the Rust program unlinks
