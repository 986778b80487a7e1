//! CPU identities: [`CpuId`], the bitset [`CpuMask`] and its shared form
//! [`AtomicCpuMask`].
//!
//! A "CPU" in dfly is a participant that owns state (an OS thread running a scheduler,
//! or any thread attached to a crossbar). Ids are dense, `0..ncpus`, at most
//! [`MAX_CPUS`].

use core::fmt;

use crate::sync::atomic::{AtomicU64, Ordering};

/// The largest number of CPUs any dfly structure supports.
pub const MAX_CPUS: usize = 256;
const WORDS: usize = MAX_CPUS / 64;

/// A CPU number in `0..MAX_CPUS`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(u16);

/// The error for a CPU number outside `0..MAX_CPUS` (or outside a structure's `ncpus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuOutOfRange {
    /// The number that was given.
    pub cpu: usize,
    /// The exclusive bound it had to be under.
    pub limit: usize,
}

impl fmt::Display for CpuOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu {} is out of range (this machine has cpus 0..{})", self.cpu, self.limit)
    }
}

impl std::error::Error for CpuOutOfRange {}

impl CpuId {
    /// CPU 0.
    pub const ZERO: CpuId = CpuId(0);

    /// The id for `index`, or an error if `index >= MAX_CPUS`.
    ///
    /// ```
    /// use dfly_core::CpuId;
    /// assert_eq!(CpuId::new(3).unwrap().index(), 3);
    /// assert!(CpuId::new(100_000).is_err());
    /// ```
    #[inline]
    pub const fn new(index: usize) -> Result<CpuId, CpuOutOfRange> {
        if index < MAX_CPUS {
            Ok(CpuId(index as u16))
        } else {
            Err(CpuOutOfRange { cpu: index, limit: MAX_CPUS })
        }
    }

    /// The id for `index` if it is below `ncpus` (and [`MAX_CPUS`]).
    #[inline]
    pub const fn checked(index: usize, ncpus: usize) -> Result<CpuId, CpuOutOfRange> {
        let limit = if ncpus < MAX_CPUS { ncpus } else { MAX_CPUS };
        if index < limit {
            Ok(CpuId(index as u16))
        } else {
            Err(CpuOutOfRange { cpu: index, limit })
        }
    }

    /// The CPU number as an index.
    #[inline(always)]
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// Every id in `0..ncpus` (capped at [`MAX_CPUS`]).
    pub fn all(ncpus: usize) -> impl ExactSizeIterator<Item = CpuId> + Clone {
        (0..ncpus.min(MAX_CPUS)).map(|i| CpuId(i as u16))
    }
}

impl fmt::Debug for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu{}", self.0)
    }
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu{}", self.0)
    }
}

impl TryFrom<usize> for CpuId {
    type Error = CpuOutOfRange;
    fn try_from(value: usize) -> Result<Self, Self::Error> {
        CpuId::new(value)
    }
}

impl From<CpuId> for usize {
    fn from(c: CpuId) -> usize {
        c.index()
    }
}

/// A set of CPUs: a 256-bit bitset, `Copy`.
///
/// Iteration is ascending; [`CpuMask::iter_after`] starts after a given CPU and wraps,
/// so broadcasts do not always favour CPU 0.
///
/// ```
/// use dfly_core::{CpuId, CpuMask};
/// let c = |i| CpuId::new(i).unwrap();
/// let m = CpuMask::all(4);
/// let order: Vec<usize> = m.iter_after(c(1)).map(|c| c.index()).collect();
/// assert_eq!(order, [2, 3, 0, 1]);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CpuMask {
    words: [u64; WORDS],
}

impl CpuMask {
    /// The empty set.
    pub const EMPTY: CpuMask = CpuMask { words: [0; WORDS] };

    /// The empty set.
    #[inline]
    pub const fn new() -> Self {
        Self::EMPTY
    }

    /// CPUs `0..ncpus` (capped at [`MAX_CPUS`]).
    pub fn all(ncpus: usize) -> Self {
        let mut m = Self::EMPTY;
        for c in CpuId::all(ncpus) {
            m.insert(c);
        }
        m
    }

    /// The set holding only `cpu`.
    #[inline]
    pub fn single(cpu: CpuId) -> Self {
        let mut m = Self::EMPTY;
        m.insert(cpu);
        m
    }

    /// Adds `cpu`; returns true if it was absent.
    #[inline]
    pub fn insert(&mut self, cpu: CpuId) -> bool {
        let (w, b) = split(cpu);
        let was = self.words[w] & b != 0;
        self.words[w] |= b;
        !was
    }

    /// Removes `cpu`; returns true if it was present.
    #[inline]
    pub fn remove(&mut self, cpu: CpuId) -> bool {
        let (w, b) = split(cpu);
        let was = self.words[w] & b != 0;
        self.words[w] &= !b;
        was
    }

    /// True if `cpu` is in the set.
    #[inline]
    pub fn contains(&self, cpu: CpuId) -> bool {
        let (w, b) = split(cpu);
        self.words[w] & b != 0
    }

    /// True if the set is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The number of CPUs in the set.
    #[inline]
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The lowest CPU in the set.
    pub fn first(&self) -> Option<CpuId> {
        self.iter().next()
    }

    /// Members in ascending order.
    pub fn iter(&self) -> Iter {
        Iter { words: self.words, word: 0 }
    }

    /// Members starting after `cpu` and wrapping around; `cpu` itself, if a member,
    /// comes last.
    pub fn iter_after(&self, cpu: CpuId) -> impl Iterator<Item = CpuId> + '_ {
        let start = cpu.index();
        self.iter()
            .filter(move |c| c.index() > start)
            .chain(self.iter().filter(move |c| c.index() <= start))
    }

    /// Raw words (bit `i` of word `w` is CPU `64*w + i`).
    pub const fn words(&self) -> [u64; WORDS] {
        self.words
    }

    /// A mask from raw words.
    pub const fn from_words(words: [u64; WORDS]) -> Self {
        Self { words }
    }

    /// Members of `self` that are not in `other`.
    pub fn difference(&self, other: &CpuMask) -> CpuMask {
        let mut m = *self;
        for (a, b) in m.words.iter_mut().zip(other.words.iter()) {
            *a &= !*b;
        }
        m
    }

    /// Members of both.
    pub fn intersection(&self, other: &CpuMask) -> CpuMask {
        let mut m = *self;
        for (a, b) in m.words.iter_mut().zip(other.words.iter()) {
            *a &= *b;
        }
        m
    }

    /// Members of either.
    pub fn union(&self, other: &CpuMask) -> CpuMask {
        let mut m = *self;
        for (a, b) in m.words.iter_mut().zip(other.words.iter()) {
            *a |= *b;
        }
        m
    }
}

#[inline(always)]
fn split(cpu: CpuId) -> (usize, u64) {
    (cpu.index() / 64, 1u64 << (cpu.index() % 64))
}

impl fmt::Debug for CpuMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|c| c.index())).finish()
    }
}

impl FromIterator<CpuId> for CpuMask {
    fn from_iter<I: IntoIterator<Item = CpuId>>(iter: I) -> Self {
        let mut m = CpuMask::EMPTY;
        for c in iter {
            m.insert(c);
        }
        m
    }
}

impl IntoIterator for &CpuMask {
    type Item = CpuId;
    type IntoIter = Iter;
    fn into_iter(self) -> Iter {
        self.iter()
    }
}

/// Ascending iterator over a [`CpuMask`].
#[derive(Debug, Clone)]
pub struct Iter {
    words: [u64; WORDS],
    word: usize,
}

impl Iterator for Iter {
    type Item = CpuId;
    #[inline]
    fn next(&mut self) -> Option<CpuId> {
        while self.word < WORDS {
            let w = self.words[self.word];
            if w != 0 {
                let bit = w.trailing_zeros() as usize;
                self.words[self.word] = w & (w - 1);
                return Some(CpuId((self.word * 64 + bit) as u16));
            }
            self.word += 1;
        }
        None
    }
}

/// A [`CpuMask`] that several CPUs update concurrently (one atomic word per 64 CPUs).
///
/// Each bit is set and cleared with single atomic RMWs; a [`load`](Self::load) of the
/// whole mask is not one atomic snapshot across words, which is fine for its uses
/// (acknowledgement sets and pending-sender hints, where each bit is independently
/// meaningful).
#[derive(Debug, Default)]
pub struct AtomicCpuMask {
    words: [AtomicU64; WORDS],
}

impl AtomicCpuMask {
    /// An empty mask.
    pub fn new() -> Self {
        Self { words: Default::default() }
    }

    /// Sets `cpu`'s bit; returns whether it was already set.
    #[inline]
    pub fn set(&self, cpu: CpuId, order: Ordering) -> bool {
        let (w, b) = split(cpu);
        self.words[w].fetch_or(b, order) & b != 0
    }

    /// Clears `cpu`'s bit; returns whether it was set.
    #[inline]
    pub fn clear(&self, cpu: CpuId, order: Ordering) -> bool {
        let (w, b) = split(cpu);
        self.words[w].fetch_and(!b, order) & b != 0
    }

    /// Tests `cpu`'s bit.
    #[inline]
    pub fn contains(&self, cpu: CpuId, order: Ordering) -> bool {
        let (w, b) = split(cpu);
        self.words[w].load(order) & b != 0
    }

    /// Reads every word.
    pub fn load(&self, order: Ordering) -> CpuMask {
        let mut m = CpuMask::EMPTY;
        for (d, s) in m.words.iter_mut().zip(self.words.iter()) {
            *d = s.load(order);
        }
        m
    }

    /// Clears every bit and returns what was set.
    pub fn take(&self, order: Ordering) -> CpuMask {
        let mut m = CpuMask::EMPTY;
        for (d, s) in m.words.iter_mut().zip(self.words.iter()) {
            *d = s.swap(0, order);
        }
        m
    }

    /// Clears every bit.
    pub fn clear_all(&self, order: Ordering) {
        for w in &self.words {
            w.store(0, order);
        }
    }
}
