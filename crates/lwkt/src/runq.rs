//! The per-CPU run queue: 32 FIFO lists, one per priority, and a bitmap of the
//! non-empty ones (DragonFly's 2003 layout, which it returned to in 2011).
//!
//! Only the owning CPU touches its run queue. The running thread stays on the queue,
//! at the head of its level; blocking removes it, yielding moves it to the tail of
//! its level (round robin among equals), and a higher level always runs first.

use std::collections::VecDeque;

use crate::Priority;

/// Runnable threads of one CPU, by priority.
#[derive(Debug)]
pub(crate) struct RunQueue<K> {
    levels: [VecDeque<K>; 32],
    mask: u32,
    len: usize,
}

impl<K: Copy + PartialEq> RunQueue<K> {
    pub(crate) fn new() -> Self {
        RunQueue { levels: std::array::from_fn(|_| VecDeque::new()), mask: 0, len: 0 }
    }

    /// Number of queued threads.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `k` at the tail of level `p`.
    #[inline]
    pub(crate) fn push_back(&mut self, k: K, p: Priority) {
        let l = p.get() as usize;
        self.levels[l].push_back(k);
        self.mask |= 1 << l;
        self.len += 1;
    }

    /// Removes `k` from level `p`; false if it was not there.
    #[inline]
    pub(crate) fn remove(&mut self, k: K, p: Priority) -> bool {
        let l = p.get() as usize;
        let q = &mut self.levels[l];
        if q.front() == Some(&k) {
            // The common case: the running thread (at the head) blocks or exits.
            q.pop_front();
        } else {
            let Some(i) = q.iter().position(|&x| x == k) else { return false };
            q.remove(i);
        }
        if q.is_empty() {
            self.mask &= !(1 << l);
        }
        self.len -= 1;
        true
    }

    /// True if some thread other than `k` is queued at level `p` or above.
    pub(crate) fn other_at_or_above(&self, k: K, p: Priority) -> bool {
        let l = p.get() as u32;
        let above = self.mask & !((1u32 << l) - 1);
        if above & !(1 << l) != 0 {
            return true;
        }
        let q = &self.levels[l as usize];
        q.len() > 1 || q.front().is_some_and(|&x| x != k)
    }

    /// Moves `k` (which must be queued at `p`) to the tail of its level.
    pub(crate) fn rotate_to_tail(&mut self, k: K, p: Priority) {
        let q = &mut self.levels[p.get() as usize];
        if q.front() == Some(&k) {
            // The common case: the running thread is at the head of its level.
            q.rotate_left(1);
        } else if self.remove(k, p) {
            self.push_back(k, p);
        }
    }

    /// Threads in run order: highest level first, FIFO within a level.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, Priority)> + '_ {
        // Walk the set bits of the mask from the top, not all 32 levels.
        let mut mask = self.mask;
        core::iter::from_fn(move || {
            if mask == 0 {
                return None;
            }
            let l = 31 - mask.leading_zeros();
            mask &= !(1 << l);
            Some(l)
        })
        .flat_map(move |l| {
            let p = Priority::new(l).unwrap_or(Priority::IDLE);
            self.levels[l as usize].iter().map(move |&k| (k, p))
        })
    }

    /// The first thread in run order.
    #[inline]
    pub(crate) fn head(&self) -> Option<K> {
        if self.mask == 0 {
            return None;
        }
        self.levels[(31 - self.mask.leading_zeros()) as usize].front().copied()
    }
}
