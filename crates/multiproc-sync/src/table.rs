//! A table of slots in shared memory, each owned by a process, whose dead owners' slots are
//! reclaimed by whoever needs room: the waiter queue of a [`Condition`](crate::Condition) and
//! the permit holders of a [`Semaphore`](crate::Semaphore).
//!
//! A slot is two `u64`s: the owner's identity ([`owner::me`], pid plus start time, so a
//! recycled pid never passes for a dead owner) and a value the primitive gives meaning to (a
//! waiter's ticket and status, a holder's permit count). Owner 0 means free.
//!
//! **Size.** The table's capacity is fixed when the primitive is created and is large (tens of
//! thousands of slots or more), but the memfd is sparse: a page costs memory only once touched.
//! So every scan stays inside a *window*, the first `window` slots, which starts as what fits
//! in the first page and doubles only when it is full of live owners. Claims take the lowest
//! free slot, so the window, and the memory touched, follow the peak number of owners at once,
//! not the capacity and not how many owners ever came and went.
//!
//! **Protocol.** Every change of an owner word is a compare-and-swap, so each transition has
//! exactly one winner:
//! - *claim*: `0 -> me`, then the value is set (a reader that sees a value sees its owner);
//! - *release*, by the owner itself: value to 0, then owner to 0;
//! - *reclaim*, by anyone who finds the owner `o` dead: `o -> CLAIMING | me` (the bit marks a
//!   reclaim in progress and `me` lets a later reclaimer take over if this one dies too), then
//!   the value is swapped out to 0 and handed to the caller, then owner to 0.
//!
//! The owner of a slot is the only process that releases it, and only a dead owner's slot is
//! reclaimed, so a live owner never loses its slot. Liveness costs a read of `/proc`, so it is
//! checked only where it is needed: a claim that finds the window full sweeps it once (and
//! grows it unless the sweep freed a quarter of it, so sweeps stay rare), and the primitives
//! check the owners they are about to rely on. A [`Liveness`] remembers answers for the length
//! of one operation, so many slots of one process cost one check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use multiproc_core::shm::SharedRegion;

use crate::owner::{self, CLAIMING};

/// Bytes per slot: owner, value.
const SLOT: usize = 16;
/// The unit of memory the window starts with.
const PAGE: usize = 4096;

/// Where a table lives in its primitive's region.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// Byte offset of the `u64` window (slots scanned so far); 0 at creation.
    pub(crate) window_at: usize,
    /// Byte offset of slot 0.
    pub(crate) base: usize,
    /// Most slots the table can hold.
    pub(crate) capacity: usize,
}

impl Layout {
    /// Bytes the region needs: up to the end of the last slot.
    pub(crate) const fn len(&self) -> usize {
        self.base + self.capacity * SLOT
    }

    /// The window before any growth: the slots in the first page.
    const fn first_window(&self) -> usize {
        let fit = (PAGE - self.base % PAGE) / SLOT;
        let fit = if fit == 0 { 1 } else { fit };
        if fit < self.capacity {
            fit
        } else {
            self.capacity
        }
    }
}

/// Liveness answers remembered for one operation; see the [module docs](self).
#[derive(Default)]
pub(crate) struct Liveness {
    known: HashMap<u64, bool>,
}

impl Liveness {
    /// Whether the process `id` (bit [`CLAIMING`] ignored) is alive; free for this process.
    pub(crate) fn is_alive(&mut self, id: u64) -> bool {
        let id = id & !CLAIMING;
        if id == owner::me() {
            return true;
        }
        *self.known.entry(id).or_insert_with(|| owner::is_alive(id))
    }
}

/// A view of a table in a region.
pub(crate) struct Table<'a> {
    region: &'a SharedRegion,
    layout: Layout,
}

impl<'a> Table<'a> {
    /// The table at `layout` in `region`, which the caller has checked is `layout.len()` long.
    #[inline]
    pub(crate) fn new(region: &'a SharedRegion, layout: Layout) -> Self {
        Self { region, layout }
    }

    /// The owner word of slot `i` (`i < capacity`).
    #[inline]
    pub(crate) fn owner(&self, i: usize) -> &'a AtomicU64 {
        self.region.atomic_u64(self.layout.base + i * SLOT)
    }

    /// The value word of slot `i` (`i < capacity`).
    #[inline]
    pub(crate) fn value(&self, i: usize) -> &'a AtomicU64 {
        self.region.atomic_u64(self.layout.base + i * SLOT + 8)
    }

    /// How many slots (from 0) may be in use: every scan stops there. A value written by a
    /// broken or hostile process is clamped, never trusted.
    pub(crate) fn window(&self) -> usize {
        let w = self
            .region
            .atomic_u64(self.layout.window_at)
            .load(Ordering::SeqCst);
        usize::try_from(w)
            .unwrap_or(usize::MAX)
            .clamp(self.layout.first_window(), self.layout.capacity)
    }

    /// The first slot in the window owned by `id`, if any.
    #[cfg(test)]
    pub(crate) fn find(&self, id: u64) -> Option<usize> {
        (0..self.window()).find(|&i| self.owner(i).load(Ordering::SeqCst) == id)
    }

    /// Claims a free slot for this process, with value 0. When the window is full, first
    /// reclaims the slots of dead owners (handing each one's value to `reclaimed`), then grows
    /// the window. `None` only when all `capacity` slots have live owners.
    pub(crate) fn claim(&self, alive: &mut Liveness, reclaimed: impl FnMut(u64)) -> Option<usize> {
        self.claim_from(0, alive, reclaimed)
    }

    /// [`Self::claim`], looking from slot `start` on (then from 0): for a table shared by many
    /// primitives, where the lowest free slot would cost a scan of every live one.
    pub(crate) fn claim_from(
        &self,
        start: usize,
        alive: &mut Liveness,
        mut reclaimed: impl FnMut(u64),
    ) -> Option<usize> {
        let me = owner::me();
        let mut swept = false;
        loop {
            let w = self.window();
            let start = start.min(w);
            if let Some(i) = (start..w).chain(0..start).find(|&i| {
                let o = self.owner(i);
                o.load(Ordering::SeqCst) == 0
                    && o.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
            }) {
                return Some(i);
            }
            if !swept {
                swept = true;
                let freed = self.sweep(alive, &mut reclaimed);
                // Enough room made (or no room to grow): take a freed slot.
                if freed > 0 && (freed >= w / 4 || w >= self.layout.capacity) {
                    continue;
                }
            }
            if w >= self.layout.capacity {
                return None;
            }
            let grown = w.saturating_mul(2).min(self.layout.capacity);
            self.region
                .atomic_u64(self.layout.window_at)
                .fetch_max(grown as u64, Ordering::SeqCst);
        }
    }

    /// Releases this process's slot `i`: its value, then its owner, back to 0.
    pub(crate) fn release(&self, i: usize) {
        self.value(i).store(0, Ordering::SeqCst);
        self.owner(i).store(0, Ordering::SeqCst);
    }

    /// Reclaims slot `i` if its owner is still `o` and `o` is dead (an owner mid-reclaim counts
    /// as its reclaimer); returns the value it held. `None` when the owner is alive, or the
    /// slot changed hands meanwhile.
    pub(crate) fn reclaim(&self, i: usize, o: u64, alive: &mut Liveness) -> Option<u64> {
        if o == 0 || alive.is_alive(o) {
            return None;
        }
        self.owner(i)
            .compare_exchange(
                o,
                CLAIMING | owner::me(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .ok()?;
        let value = self.value(i).swap(0, Ordering::SeqCst);
        self.owner(i).store(0, Ordering::SeqCst);
        Some(value)
    }

    /// Reclaims every slot in the window whose owner is dead, handing each one's value to
    /// `reclaimed`; returns how many slots it freed.
    pub(crate) fn sweep(&self, alive: &mut Liveness, reclaimed: impl FnMut(u64)) -> usize {
        self.sweep_if(alive, |_| true, reclaimed)
    }

    /// [`Self::sweep`] of the slots whose value `wanted` accepts (looked at before the owner's
    /// liveness, which costs a read of `/proc`): for a table shared by many primitives.
    pub(crate) fn sweep_if(
        &self,
        alive: &mut Liveness,
        wanted: impl Fn(u64) -> bool,
        mut reclaimed: impl FnMut(u64),
    ) -> usize {
        let mut freed = 0;
        for i in 0..self.window() {
            let o = self.owner(i).load(Ordering::SeqCst);
            if o == 0 || !wanted(self.value(i).load(Ordering::SeqCst)) {
                continue;
            }
            if let Some(value) = self.reclaim(i, o, alive) {
                reclaimed(value);
                freed += 1;
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout {
        window_at: 8,
        base: 64,
        capacity: 1000,
    };

    /// An identity of this pid with another start time: a dead process.
    fn dead() -> u64 {
        owner::me() ^ 1
    }

    fn region() -> SharedRegion {
        SharedRegion::new(LAYOUT.len()).unwrap()
    }

    #[test]
    fn the_window_starts_at_one_page_and_doubles_when_full_of_live_owners() {
        let region = region();
        let t = Table::new(&region, LAYOUT);
        assert_eq!(t.window(), 252);
        let mut alive = Liveness::default();
        for i in 0..252 {
            assert_eq!(t.claim(&mut alive, |_| unreachable!()), Some(i));
        }
        assert_eq!(t.claim(&mut alive, |_| unreachable!()), Some(252));
        assert_eq!(t.window(), 504);
        // Up to the capacity, then no more.
        for i in 253..1000 {
            assert_eq!(t.claim(&mut alive, |_| unreachable!()), Some(i));
        }
        assert_eq!(t.window(), 1000);
        assert_eq!(t.claim(&mut alive, |_| unreachable!()), None);
        // A released slot is the next one claimed.
        t.release(17);
        assert_eq!(t.claim(&mut alive, |_| unreachable!()), Some(17));
    }

    #[test]
    fn a_full_window_reclaims_dead_owners_instead_of_growing() {
        let region = region();
        let t = Table::new(&region, LAYOUT);
        for i in 0..252 {
            t.owner(i).store(dead(), Ordering::SeqCst);
            t.value(i).store(i as u64, Ordering::SeqCst);
        }
        let mut alive = Liveness::default();
        let mut values = Vec::new();
        assert_eq!(t.claim(&mut alive, |v| values.push(v)), Some(0));
        assert_eq!(values, (0..252).collect::<Vec<u64>>());
        assert_eq!(t.window(), 252, "reclaimed, not grown");
        assert_eq!(t.value(0).load(Ordering::SeqCst), 0);
        assert_eq!(t.owner(1).load(Ordering::SeqCst), 0);
    }

    #[test]
    fn live_owners_and_changed_slots_are_never_reclaimed() {
        let region = region();
        let t = Table::new(&region, LAYOUT);
        let mut alive = Liveness::default();
        let mine = t.claim(&mut alive, |_| {}).unwrap();
        t.value(mine).store(5, Ordering::SeqCst);
        assert_eq!(t.reclaim(mine, owner::me(), &mut alive), None);
        // An owner read before the slot changed hands: the compare-and-swap fails.
        assert_eq!(t.reclaim(mine, dead(), &mut alive), None);
        assert_eq!(t.value(mine).load(Ordering::SeqCst), 5);
        assert_eq!(t.find(owner::me()), Some(mine));
        // A reclaimer that died mid-reclaim is itself reclaimed.
        t.owner(3).store(CLAIMING | dead(), Ordering::SeqCst);
        t.value(3).store(9, Ordering::SeqCst);
        assert_eq!(t.sweep(&mut alive, |v| assert_eq!(v, 9)), 1);
        assert_eq!(t.owner(3).load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_corrupt_window_is_clamped() {
        let region = region();
        let t = Table::new(&region, LAYOUT);
        region.atomic_u64(8).store(u64::MAX, Ordering::SeqCst);
        assert_eq!(t.window(), 1000);
        region.atomic_u64(8).store(3, Ordering::SeqCst);
        assert_eq!(t.window(), 252);
    }
}
