//! The reference SPSC ring: the smallest fast ring we know how to write (cached
//! indices, each index on its own 128-byte line, power-of-two capacity), used as the
//! hardware floor in the ipi suite. Written here for the benchmark; not a dfly API.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dfly_core::CachePadded;

struct Inner<T> {
    head: CachePadded<AtomicUsize>, // next slot to read; written by the consumer
    tail: CachePadded<AtomicUsize>, // next slot to write; written by the producer
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
}

// SAFETY: slots are handed between exactly one producer and one consumer by the
// head/tail protocol (Release store, Acquire load); T moves across threads.
unsafe impl<T: Send> Sync for Inner<T> {}

/// The producer end.
pub struct Producer<T> {
    inner: Arc<Inner<T>>,
    tail: usize,
    head_cache: usize,
}

/// The consumer end.
pub struct Consumer<T> {
    inner: Arc<Inner<T>>,
    head: usize,
    tail_cache: usize,
}

impl<T> std::fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("tail", &self.tail).finish()
    }
}

impl<T> std::fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("head", &self.head).finish()
    }
}

/// A ring of `capacity` (rounded up to a power of two) slots.
pub fn ring<T: Copy + Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let cap = capacity.next_power_of_two().max(2);
    let inner = Arc::new(Inner {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        slots: (0..cap).map(|_| UnsafeCell::new(MaybeUninit::uninit())).collect(),
        mask: cap - 1,
    });
    (
        Producer { inner: inner.clone(), tail: 0, head_cache: 0 },
        Consumer { inner, head: 0, tail_cache: 0 },
    )
}

impl<T: Copy + Send> Producer<T> {
    /// Pushes `v`; false if full.
    #[inline]
    pub fn push(&mut self, v: T) -> bool {
        let cap = self.inner.mask + 1;
        if self.tail - self.head_cache == cap {
            self.head_cache = self.inner.head.load(Ordering::Acquire);
            if self.tail - self.head_cache == cap {
                return false;
            }
        }
        // SAFETY: tail - head < cap, so the consumer is done with this slot and will
        // not read it before the Release store below.
        unsafe { (*self.inner.slots[self.tail & self.inner.mask].get()).write(v) };
        self.tail += 1;
        self.inner.tail.store(self.tail, Ordering::Release);
        true
    }

    /// Pushes all of `vs` with one index publication; false (nothing pushed) if
    /// they do not fit.
    #[inline]
    pub fn push_batch(&mut self, vs: &[T]) -> bool {
        let cap = self.inner.mask + 1;
        if cap - (self.tail - self.head_cache) < vs.len() {
            self.head_cache = self.inner.head.load(Ordering::Acquire);
            if cap - (self.tail - self.head_cache) < vs.len() {
                return false;
            }
        }
        for (i, v) in vs.iter().enumerate() {
            // SAFETY: as in `push`, for each of the free slots checked above.
            unsafe { (*self.inner.slots[(self.tail + i) & self.inner.mask].get()).write(*v) };
        }
        self.tail += vs.len();
        self.inner.tail.store(self.tail, Ordering::Release);
        true
    }
}

impl<T: Copy + Send> Consumer<T> {
    /// Pops the oldest value, if any.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.tail_cache {
            self.tail_cache = self.inner.tail.load(Ordering::Acquire);
            if self.head == self.tail_cache {
                return None;
            }
        }
        // SAFETY: head < tail, published by the producer's Release store.
        let v = unsafe { (*self.inner.slots[self.head & self.inner.mask].get()).assume_init() };
        self.head += 1;
        self.inner.head.store(self.head, Ordering::Release);
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ping-pong over two capacity-2 rings: nothing is lost or duplicated.
    #[test]
    fn ping_pong_loses_nothing() {
        let (mut a_tx, mut a_rx) = ring::<u64>(2);
        let (mut b_tx, mut b_rx) = ring::<u64>(2);
        const N: u64 = 200_000;
        let t = std::thread::spawn(move || {
            for _ in 0..N {
                let v = loop {
                    if let Some(v) = a_rx.pop() {
                        break v;
                    }
                    std::hint::spin_loop();
                };
                while !b_tx.push(v) {}
            }
        });
        for r in 0..N {
            while !a_tx.push(r) {}
            let v = loop {
                if let Some(v) = b_rx.pop() {
                    break v;
                }
                std::hint::spin_loop();
            };
            assert_eq!(v, r);
        }
        t.join().unwrap();
    }
}
