//! The per-CPU run queue: 32 FIFO lists, one per priority, and a bitmap of the
//! non-empty ones (DragonFly's 2003 layout, which it returned to in 2011).
//!
//! Only the owning CPU touches its run queue. The running thread stays on the queue,
//! at the head of its level unless a tick or a priority change moved it; blocking
//! removes it, yielding moves it to the tail of its level (round robin among
//! equals), and a higher level always runs first. A scheduler tick moves the
//! running thread behind its equals only if it heads its level
//! ([`RunQueue::rotate_head`]), so a thread that a yield already rotated is not
//! pushed back a second time.
//!
//! The lists are intrusive, as DragonFly's `TAILQ`s are: each key (a thread's slot
//! number) has one link record (next, previous, level) in a table indexed by the
//! key, so pushing, removing anywhere and rotating touch a few words and never move
//! or scan the other entries. Each level's list is a circle (the tail's next is the
//! head, a lone key links to itself) and the queue keeps only its head, so moving
//! the head to the tail, which every yield does, is one store: the head becomes
//! the old head's next.

use core::marker::PhantomData;

use crate::Priority;

/// "No key": an empty level's head, or the links of a key that is not queued.
const NIL: u32 = u32::MAX;

/// A key's place in its level's circle.
#[derive(Debug, Clone, Copy)]
struct Link {
    next: u32,
    prev: u32,
    /// The level the key is queued at, or `NIL`.
    level: u32,
}

const UNQUEUED: Link = Link { next: NIL, prev: NIL, level: NIL };

/// `p`'s level as an index the compiler knows is below 32.
#[inline]
fn level(p: Priority) -> u32 {
    p.get() as u32 & 31
}

/// Runnable threads of one CPU, by priority. Keys are small indices (thread slot
/// numbers); the link table grows to the largest key queued and never shrinks, so
/// every queued key, and every key a queued link names, indexes it.
#[derive(Debug)]
pub(crate) struct RunQueue<K> {
    head: [u32; 32],
    links: Vec<Link>,
    mask: u32,
    len: usize,
    _keys: PhantomData<K>,
}

impl<K: Copy + PartialEq + Into<usize> + TryFrom<usize>> RunQueue<K> {
    pub(crate) fn new() -> Self {
        RunQueue { head: [NIL; 32], links: Vec::new(), mask: 0, len: 0, _keys: PhantomData }
    }

    #[inline]
    fn index(k: K) -> u32 {
        let i: usize = k.into();
        debug_assert!(i < NIL as usize, "run queue key {i} out of range");
        i as u32
    }

    #[inline]
    fn key(i: u32) -> Option<K> {
        K::try_from(i as usize).ok()
    }

    #[inline]
    fn link(&self, i: u32) -> Link {
        self.links.get(i as usize).copied().unwrap_or(UNQUEUED)
    }

    /// Number of queued threads.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `k` at the tail of level `p` (a key already queued is moved there).
    #[inline]
    pub(crate) fn push_back(&mut self, k: K, p: Priority) {
        let i = Self::index(k);
        if i as usize >= self.links.len() {
            self.links.resize(i as usize + 1, UNQUEUED);
        } else if self.links[i as usize].level != NIL {
            debug_assert!(false, "key {i} pushed while queued");
            let l = self.links[i as usize].level;
            self.unlink(i, l);
        }
        self.append(i, level(p));
        self.len += 1;
    }

    /// Links unqueued index `i` (below `links.len()`) at the tail of level `l`:
    /// just before the head in its circle.
    #[inline]
    fn append(&mut self, i: u32, l: u32) {
        let head = self.head[l as usize];
        if head == NIL {
            self.links[i as usize] = Link { next: i, prev: i, level: l };
            self.head[l as usize] = i;
            self.mask |= 1 << l;
            return;
        }
        let tail = self.links[head as usize].prev;
        self.links[i as usize] = Link { next: head, prev: tail, level: l };
        self.links[tail as usize].next = i;
        self.links[head as usize].prev = i;
    }

    /// Takes queued index `i` out of its level `l`.
    #[inline]
    fn unlink(&mut self, i: u32, l: u32) {
        let Link { next, prev, .. } = self.links[i as usize];
        if next == i {
            // Alone at its level.
            self.head[l as usize] = NIL;
            self.mask &= !(1 << l);
        } else {
            self.links[prev as usize].next = next;
            self.links[next as usize].prev = prev;
            if self.head[l as usize] == i {
                self.head[l as usize] = next;
            }
        }
        self.links[i as usize] = UNQUEUED;
        self.len -= 1;
    }

    /// Removes `k` from level `p`; false if it was not there.
    #[inline]
    pub(crate) fn remove(&mut self, k: K, p: Priority) -> bool {
        let i = Self::index(k);
        let l = level(p);
        if self.link(i).level != l {
            return false;
        }
        self.unlink(i, l);
        true
    }

    /// True if some thread other than `k` is queued at level `p` or above.
    #[inline]
    pub(crate) fn other_at_or_above(&self, k: K, p: Priority) -> bool {
        let l = level(p);
        let above = self.mask & !((1u32 << l) - 1);
        if above & !(1 << l) != 0 {
            return true;
        }
        let head = self.head[l as usize];
        head != NIL && (head != Self::index(k) || self.link(head).next != head)
    }

    /// True if some thread is queued at a level strictly above `p`.
    #[inline]
    pub(crate) fn any_above(&self, p: Priority) -> bool {
        // Shifting in two steps keeps the shift below 32 for level 31.
        (self.mask >> level(p)) >> 1 != 0
    }

    /// The scheduler tick's rule (DragonFly's `lwkt_schedulerclock`): if `k` is the
    /// head of level `p` and another thread is queued at that level, `k` moves
    /// behind its equals. Returns true if it moved.
    #[inline]
    pub(crate) fn rotate_head(&mut self, k: K, p: Priority) -> bool {
        let i = Self::index(k);
        let l = level(p);
        if self.head[l as usize] != i {
            return false;
        }
        // `i` heads the level, so it is queued and indexes the link table.
        let Some(&Link { next, .. }) = self.links.get(i as usize) else { return false };
        if next == i {
            return false;
        }
        self.head[l as usize] = next;
        true
    }

    /// Moves `k` (which must be queued at `p`) to the tail of its level.
    #[inline]
    pub(crate) fn rotate_to_tail(&mut self, k: K, p: Priority) {
        let i = Self::index(k);
        let l = level(p);
        let link = self.link(i);
        if link.level != l || link.next == self.head[l as usize] {
            // Not queued at `p`, or already the tail.
            return;
        }
        if self.head[l as usize] == i {
            // The common case (every yield): the running thread, at the head, with
            // a successor; in a circle the head moving to the tail is the head
            // moving on by one.
            self.head[l as usize] = link.next;
            return;
        }
        self.move_to_tail(i, l);
    }

    /// The common yield in one step: if `k` heads level `p`, has a successor there,
    /// and no higher level is queued, moves `k` to the tail of its level and
    /// returns the new head (the thread to run next). Otherwise changes nothing
    /// and returns `None`; the caller then uses the general operations
    /// ([`other_at_or_above`](Self::other_at_or_above),
    /// [`rotate_to_tail`](Self::rotate_to_tail), [`head`](Self::head)), whose
    /// combined effect in the case handled here is the same.
    #[inline]
    pub(crate) fn yield_rotate(&mut self, k: K, p: Priority) -> Option<K> {
        // With nothing higher queued, this is the tick's rotation followed by
        // `head`.
        if self.any_above(p) || !self.rotate_head(k, p) {
            return None;
        }
        Self::key(self.head[level(p) as usize])
    }

    /// [`rotate_to_tail`](Self::rotate_to_tail) for a key that is neither head nor
    /// tail of its level (out of line: a yield gets here only when a tick or a
    /// priority change has moved the running thread from the head).
    #[cold]
    #[inline(never)]
    fn move_to_tail(&mut self, i: u32, l: u32) {
        self.unlink(i, l);
        self.append(i, l);
        self.len += 1;
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
            let head = self.head[l as usize];
            let mut i = head;
            core::iter::from_fn(move || {
                if i == NIL {
                    return None;
                }
                let k = i;
                i = self.link(i).next;
                if i == head {
                    // Around the circle.
                    i = NIL;
                }
                Some(k)
            })
            .filter_map(Self::key)
            .map(move |k| (k, p))
        })
    }

    /// Checks the lists' invariants (test builds only): each queued level is a
    /// circle whose `next` and `prev` links agree and whose keys record that
    /// level, the mask names exactly the non-empty levels, and the circles hold
    /// `len` keys in all. Every walk is bounded, so a broken circle is reported
    /// rather than followed forever.
    #[cfg(test)]
    pub(crate) fn check_links(&self) -> Result<(), String> {
        let mut total = 0usize;
        for l in 0..32u32 {
            let head = self.head[l as usize];
            if (self.mask >> l) & 1 != u32::from(head != NIL) {
                return Err(format!("level {l}: mask bit disagrees with head {head}"));
            }
            if head == NIL {
                continue;
            }
            let mut i = head;
            loop {
                let Some(link) = self.links.get(i as usize) else {
                    return Err(format!("level {l}: key {i} has no link record"));
                };
                if link.level != l {
                    return Err(format!("level {l}: key {i} records level {}", link.level));
                }
                let next = self.link(link.next);
                if next.prev != i {
                    return Err(format!(
                        "level {l}: {i} -> {} but its prev is {}",
                        link.next, next.prev
                    ));
                }
                total += 1;
                if total > self.len {
                    return Err(format!("more keys linked than len {}", self.len));
                }
                i = link.next;
                if i == head {
                    break;
                }
            }
        }
        if total != self.len {
            return Err(format!("{total} keys linked, len {}", self.len));
        }
        let stray = self.links.iter().enumerate().filter(|(_, k)| k.level != NIL).count();
        if stray != total {
            return Err(format!("{stray} link records say queued, {total} keys linked"));
        }
        Ok(())
    }

    /// The first thread in run order.
    #[inline]
    pub(crate) fn head(&self) -> Option<K> {
        if self.mask == 0 {
            return None;
        }
        Self::key(self.head[(31 - self.mask.leading_zeros()) as usize])
    }
}
