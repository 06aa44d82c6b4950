//! Arenas: the state of many small primitives (locks, events, re-entrant locks, barriers) in
//! one shared memfd, woken through a few shared eventfds, as a futex parking lot hashes
//! addresses onto a few queues.
//!
//! **Layout.** An arena is a sealed memfd of [`ARENA_SLOTS`] slots of [`SLOT_LEN`] bytes (slot 0
//! is the header: a magic word and the owner table's window) and an owner table of
//! [`TABLE_ENTRIES`] entries shared by the arena's primitives ([`TABLE_AT`]: the semaphores
//! record there which process holds how many of their permits), plus [`WAKE_LANES`] eventfds. A primitive is `(arena, slot)`:
//! its waiter count and state words live in its 64 bytes, and it parks on the eventfd of lane
//! `slot % WAKE_LANES`. A releaser writes that eventfd only when the slot's own waiter count is
//! non-zero; every waiter of the lane (in every process) wakes and re-checks its own slot, so a
//! wake-up meant for a neighbour is a spurious one, never a lost one. The memfd is sparse:
//! a slot costs memory only once touched, 64 bytes per idle primitive.
//!
//! **Descriptors.** Each process keeps one registry of the arenas it maps, keyed by the memfd's
//! `(st_dev, st_ino)`, which cannot be reused while the process holds the memfd open. Sending a
//! slot sends the arena's descriptors (the message encoder sends each descriptor once however
//! many slots of the arena a message holds); a receiver that already maps the arena reuses its
//! mapping and eventfds and closes the copies it received. So 100,000 primitives cost
//! `ceil(100,000 / 16,383)` arenas of `1 + WAKE_LANES` descriptors each in their creator, and
//! receiving 10,000 slots of one arena costs a receiver `1 + WAKE_LANES` descriptors once. The
//! cached tokio registrations (each a duplicate of an eventfd) are kept per lane, not per
//! primitive, so waiting on 100,000 primitives in turn does not cost 100,000 descriptors either.
//!
//! **Slot lifetime.** Only the creating process allocates from an arena. A slot that never left
//! its creator (no handle of it was ever serialized) is zeroed and reused when its last handle
//! there is dropped: no other process can reach it. A slot that was sent is *retired* when its
//! creator's last handle goes: never reused, because a process that received it (or a message
//! still in flight) may use it at any time, and no shared count could tell when the last of
//! them is gone if one is killed. Its 64 bytes are given back with the whole arena: the kernel
//! frees the memfd when the last process holding a handle of any slot in it drops it or dies.
//! So a process killed holding slots leaks nothing beyond its own life, and what retired slots
//! waste is bounded by the arenas that live handles keep alive: at most one arena (1 MiB of
//! address space, only touched pages resident) per live handle, in the worst case of one
//! survivor per arena. The creator's registry holds the arena it allocates from, so creating
//! and dropping primitives in a loop reuses one arena's slots and opens no descriptor.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use serde::{Deserialize, Serialize};

use crate::SharedFd;
use crate::shm::SharedRegion;
use crate::wait::eventfd::EventFd;
use crate::wait::wait_queue::Registrations;

/// Bytes of shared memory per primitive in an arena: a waiter count and the state words.
pub const SLOT_LEN: usize = 64;

/// Eventfds per arena: slot `i` parks on lane `i % WAKE_LANES`.
pub const WAKE_LANES: usize = 8;

/// Slots per arena, the header's included (1 MiB of sparse memfd).
pub const ARENA_SLOTS: usize = 16_384;

/// Byte offset of the arena's owner table, after the slots: a table that the primitives of
/// the arena share for what must outlive a process (a semaphore's permits held by each
/// process), in the format of `multiproc-sync`'s owner tables (16-byte entries: owner, value).
pub const TABLE_AT: usize = ARENA_SLOTS * SLOT_LEN;

/// Byte offset of the owner table's window word, in the header (slot 0).
pub const TABLE_WINDOW_AT: usize = 8;

/// Entries in the arena's owner table (1 MiB of sparse memfd).
pub const TABLE_ENTRIES: usize = 1 << 16;

const ARENA_LEN: usize = TABLE_AT + TABLE_ENTRIES * 16;

/// The arena's header word (slot 0), checked on receipt.
const MAGIC: u64 = u64::from_le_bytes(*b"MPARENA1");

/// One arena as this process maps it.
struct Arena {
    region: SharedRegion,
    lanes: Box<[Lane]>,
    /// The allocator, in the creating process only.
    alloc: Option<Mutex<Alloc>>,
}

/// One wake-up eventfd of an arena, with this process's cached registrations of it.
pub(crate) struct Lane {
    pub(crate) efd: EventFd,
    pub(crate) cache: Arc<Registrations>,
}

impl Lane {
    fn new(efd: EventFd) -> Self {
        Self {
            efd,
            cache: Arc::default(),
        }
    }
}

/// The creator's free slots: a bump index, then the slots given back.
struct Alloc {
    next: u32,
    free: Vec<u32>,
}

/// An arena's identity in this process: the memfd's device and inode.
type Key = (u64, u64);

/// The arenas this process maps; see the [module docs](self).
struct Registry {
    /// The arena new slots come from (kept alive even with no slot in use).
    current: Option<Arc<Arena>>,
    /// Every arena this process created, for slots given back to one that is not `current`.
    created: Vec<Weak<Arena>>,
    /// Every arena this process maps, by identity.
    mapped: HashMap<Key, Weak<Arena>>,
    /// `mapped`'s size at which dead entries are next dropped.
    purge_at: usize,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        current: None,
        created: Vec::new(),
        mapped: HashMap::new(),
        purge_at: 64,
    })
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn key_of(fd: &SharedFd) -> io::Result<Key> {
    let st = rustix::fs::fstat(fd)?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.st_dev as u64, st.st_ino as u64))
}

impl Registry {
    /// Records a mapped arena, unless one with the same identity is alive (which is returned).
    fn map(&mut self, key: Key, arena: &Arc<Arena>) -> Option<Arc<Arena>> {
        if let Some(live) = self.mapped.get(&key).and_then(Weak::upgrade) {
            return Some(live);
        }
        if self.mapped.len() >= self.purge_at {
            self.mapped.retain(|_, w| w.strong_count() > 0);
            self.created.retain(|w| w.strong_count() > 0);
            self.purge_at = (2 * self.mapped.len()).max(64);
        }
        self.mapped.insert(key, Arc::downgrade(arena));
        None
    }
}

impl Arena {
    fn create() -> io::Result<Arc<Self>> {
        let region = SharedRegion::new(ARENA_LEN)?;
        region.atomic_u64(0).store(MAGIC, Ordering::SeqCst);
        let lanes = (0..WAKE_LANES)
            .map(|_| EventFd::new().map(Lane::new))
            .collect::<io::Result<_>>()?;
        Ok(Arc::new(Self {
            region,
            lanes,
            alloc: Some(Mutex::new(Alloc {
                next: 1,
                free: Vec::new(),
            })),
        }))
    }

    fn alloc(&self) -> Option<MutexGuard<'_, Alloc>> {
        let alloc = self.alloc.as_ref()?;
        Some(alloc.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A free slot of an arena this process created.
    fn take_slot(&self) -> Option<u32> {
        let mut alloc = self.alloc()?;
        if let Some(i) = alloc.free.pop() {
            return Some(i);
        }
        if (alloc.next as usize) < ARENA_SLOTS {
            alloc.next += 1;
            return Some(alloc.next - 1);
        }
        None
    }
}

/// One primitive's place in an arena: what a [`WaitQueue`](crate::wait::WaitQueue) in an arena
/// holds. Shared by the handle's clones in this process; see the [module docs](self) for when
/// the slot is reused.
pub(crate) struct Slot {
    arena: Arc<Arena>,
    index: u32,
    /// Allocated here and never serialized: reused when the last handle is dropped.
    private: AtomicBool,
}

impl Slot {
    /// A zeroed slot of an arena of this process (creating an arena when every one is full).
    ///
    /// # Errors
    /// When a new arena's memfd, mapping or eventfds cannot be made.
    pub(crate) fn allocate() -> io::Result<Arc<Self>> {
        let mut reg = registry();
        if let Some(arena) = &reg.current
            && let Some(index) = arena.take_slot()
        {
            return Ok(Self::private(arena.clone(), index));
        }
        // The current arena is full: one whose slots came back, else a new one.
        let reusable = reg
            .created
            .iter()
            .filter_map(Weak::upgrade)
            .find_map(|a| a.take_slot().map(|i| (a, i)));
        let (arena, index) = match reusable {
            Some(found) => found,
            None => {
                let arena = Arena::create()?;
                let key = key_of(arena.region.shared_fd())?;
                reg.map(key, &arena);
                reg.created.push(Arc::downgrade(&arena));
                let index = arena.take_slot().expect("a new arena has free slots");
                (arena, index)
            }
        };
        reg.current = Some(arena.clone());
        Ok(Self::private(arena, index))
    }

    fn private(arena: Arc<Arena>, index: u32) -> Arc<Self> {
        Arc::new(Self {
            arena,
            index,
            private: AtomicBool::new(true),
        })
    }

    /// The arena's region.
    pub(crate) fn region(&self) -> &SharedRegion {
        &self.arena.region
    }

    /// The slot's index in its arena.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The slot's byte offset in [`Self::region`].
    pub(crate) fn base(&self) -> usize {
        self.index as usize * SLOT_LEN
    }

    /// The wake-up lane the slot hashes to.
    pub(crate) fn lane(&self) -> &Lane {
        &self.arena.lanes[self.index as usize % WAKE_LANES]
    }

    /// What travels for this slot; from now on the slot is never reused.
    pub(crate) fn to_wire(&self) -> SlotWire {
        self.private.store(false, Ordering::Relaxed);
        SlotWire {
            memfd: self.arena.region.shared_fd().clone(),
            lanes: std::array::from_fn(|i| self.arena.lanes[i].efd.shared_fd().clone()),
            slot: self.index,
        }
    }

    /// The slot a message names, in the arena this process already maps if it does (the
    /// received copies of its descriptors are then closed), else in a new mapping.
    ///
    /// # Errors
    /// When the descriptors are not an arena's (a memfd sealed and large enough, with the
    /// arena's magic word, and eventfds), or the slot is out of range.
    pub(crate) fn from_wire(wire: SlotWire) -> io::Result<Arc<Self>> {
        let index = wire.slot;
        if index == 0 || index as usize >= ARENA_SLOTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("arena slot {index} out of range 1..{ARENA_SLOTS}"),
            ));
        }
        let key = key_of(&wire.memfd)?;
        let known = registry().mapped.get(&key).and_then(Weak::upgrade);
        let arena = match known {
            Some(arena) => arena,
            None => {
                let arena = Arc::new(Arena::received(wire)?);
                registry().map(key, &arena).unwrap_or(arena)
            }
        };
        Ok(Arc::new(Self {
            arena,
            index,
            private: AtomicBool::new(false),
        }))
    }

    /// Whether `self` and `other` are the same slot of the same arena.
    pub(crate) fn same_slot(&self, other: &Slot) -> bool {
        Arc::ptr_eq(&self.arena, &other.arena) && self.index == other.index
    }
}

impl Arena {
    /// Maps an arena received from another process, after checking it is one.
    fn received(wire: SlotWire) -> io::Result<Self> {
        let region = SharedRegion::from_received(wire.memfd, ARENA_LEN)?;
        if region.atomic_u64(0).load(Ordering::SeqCst) != MAGIC {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "received shared memory is not a multiproc arena",
            ));
        }
        let lanes = wire
            .lanes
            .into_iter()
            .map(|fd| EventFd::from_received(fd).map(Lane::new))
            .collect::<io::Result<_>>()?;
        Ok(Self {
            region,
            lanes,
            alloc: None,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.private.load(Ordering::Relaxed) {
            return;
        }
        if let Some(mut alloc) = self.arena.alloc() {
            // No other handle of the slot exists anywhere: clear it for its next primitive.
            self.arena
                .region
                .write_slice(self.base(), &[0u64; SLOT_LEN / 8]);
            alloc.free.push(self.index);
        }
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("arena", self.arena.region.shared_fd())
            .field("index", &self.index)
            .finish()
    }
}

/// A slot on the wire: the arena's descriptors and the slot's index.
#[derive(Serialize, Deserialize)]
pub(crate) struct SlotWire {
    memfd: SharedFd,
    lanes: [SharedFd; WAKE_LANES],
    slot: u32,
}

/// How many arenas this process maps now, and how many of them it created (for tests and
/// statistics).
pub fn arenas_mapped() -> (usize, usize) {
    let reg = registry();
    let mapped = reg.mapped.values().filter(|w| w.strong_count() > 0).count();
    let created = reg.created.iter().filter(|w| w.strong_count() > 0).count();
    (mapped, created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message;

    #[test]
    fn a_private_slot_is_reused_and_a_sent_one_is_not() {
        let a = Slot::allocate().unwrap();
        let (arena, index) = (a.arena.clone(), a.index);
        a.region()
            .atomic_u64(a.base() + 8)
            .store(7, Ordering::SeqCst);
        drop(a);
        // Whichever slot comes next, the freed one is zero again and back on the free list.
        assert_eq!(
            arena
                .region
                .atomic_u64(index as usize * SLOT_LEN + 8)
                .load(Ordering::SeqCst),
            0
        );
        assert!(arena.alloc().unwrap().free.contains(&index));

        let b = Slot::allocate().unwrap();
        let (bytes, fds) = message::encode(&b.to_wire()).unwrap();
        let (arena, index) = (b.arena.clone(), b.index);
        drop(b);
        assert!(
            !arena.alloc().unwrap().free.contains(&index),
            "a sent slot is retired"
        );
        // Received back in its own process: the same arena, no second mapping.
        let wire: SlotWire = message::decode(&bytes, fds).unwrap();
        let back = Slot::from_wire(wire).unwrap();
        assert!(Arc::ptr_eq(&back.arena, &arena));
    }

    #[test]
    fn a_received_slot_out_of_range_or_not_an_arena_is_refused() {
        let s = Slot::allocate().unwrap();
        let mut wire = s.to_wire();
        wire.slot = ARENA_SLOTS as u32;
        assert!(Slot::from_wire(wire).is_err());
        let mut wire = s.to_wire();
        wire.slot = 0;
        assert!(Slot::from_wire(wire).is_err());
        let mut wire = s.to_wire();
        wire.memfd = SharedRegion::new(ARENA_LEN).unwrap().shared_fd().clone();
        assert!(Slot::from_wire(wire).is_err());
    }
}
