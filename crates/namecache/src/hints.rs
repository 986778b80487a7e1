//! Path hints: a small direct-mapped table from (start entry, path bytes) to the
//! entry a recent lookup of that path ended at, so a repeated lookup hashes the
//! path once instead of once per component.
//!
//! A cell holds a *tag* (the hash's high half and the end slot) and, for paths of
//! at most [`EXACT_MAX`] bytes, an *exact record* of the lookup that left it: the
//! start slot, the path's bytes, the end's parent slot, where the last component
//! is, and the cache's topology sequence (`Cache::topo_seq`) the lookup was proven
//! at. Both are used only after a check, and a failed check costs a fallback to
//! the forward walk, never a wrong answer:
//!
//! - An exact record is checked by `Namecache::exact`. The topology sequence is
//!   made odd and then even around every change that can make a path lead
//!   elsewhere while the entry it led to stays: a relink (rename), a directory
//!   that stops being an indexed directory (removed, invalidated, evicted, freed),
//!   a mount. A child pins its parent and only a relink moves one, so if the
//!   sequence is still the recorded one, every directory the lookup passed
//!   through is still there, still a directory, uncovered and linked as it was,
//!   and the path up to its last component still leads to the recorded parent.
//!   The end slot, read whole under its seqlock, must then still be that
//!   parent's indexed child of that name (the index holds one per (parent,
//!   name)) and pass the forward walk's rules for the end of a path.
//! - A tag alone is proven by climbing from the hinted entry to the start
//!   through the entries' own parent links, comparing each entry's name with the
//!   path's components from the last one back (`Namecache::hinted`): a chain that
//!   matches every component, with every entry indexed, is the one a forward walk
//!   would take.
//!
//! Records are only made by lookups that proved them (the climb or the walk,
//! with the sequence read before and found unchanged after), so the path hash
//! here needs no cryptographic key: an attacker who makes hints collide only
//! evicts cells and sends lookups down the forward walk, whose index is keyed with
//! SipHash.
//!
//! A cell is two cache lines of atomics under a seqlock: readers load its words
//! and check the version did not move; a writer takes the version odd with one
//! compare-exchange and skips the cell if another writer holds it. A lookup that
//! finds its own record writes nothing, so repeated hits write nothing shared.
//!
//! Must never happen: an exact record trusted at a topology sequence other than
//! the one it was proven at, or read torn; a tag trusted without the climb; a
//! cell holding an index that was never a slot of this cache's arena.

use dfly_core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::slots::{short_word, word_ending_at};

/// Odd multipliers for the folded-multiply mix.
const M0: u64 = 0x9e37_79b9_7f4a_7c15;
const M1: u64 = 0xd6e8_feb8_6659_fd93;

/// What [`Hints::scan`] finds in one pass over a path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scan {
    pub(crate) hash: u64,
    pub(crate) nul: bool,
    /// Bit `i` set: byte `i` is `/` (paths of at most 64 bytes).
    pub(crate) slashes: Option<u64>,
}

impl Scan {
    /// The path's components from the last one back (empty ones skipped).
    #[inline]
    pub(crate) fn components_rev<'a>(&self, path: &'a [u8]) -> RevComponents<'a> {
        RevComponents { path, end: path.len(), slashes: self.slashes }
    }
}

/// The components of a path from the last one back; see [`Scan::components_rev`].
#[derive(Debug)]
pub(crate) struct RevComponents<'a> {
    path: &'a [u8],
    end: usize,
    slashes: Option<u64>,
}

impl<'a> Iterator for RevComponents<'a> {
    /// The component, and its first (up to) 8 bytes as a little-endian word.
    type Item = (&'a [u8], u64);

    #[inline(always)]
    fn next(&mut self) -> Option<(&'a [u8], u64)> {
        let (start, end) = match self.slashes {
            // The slashes not yet passed, highest first: each one starts the
            // component that ends where the previous one was; an empty component
            // (a doubled or trailing slash) is skipped.
            Some(ref mut m) => loop {
                let end = self.end;
                if end == 0 {
                    return None;
                }
                let start = if *m == 0 {
                    self.end = 0;
                    0
                } else {
                    let h = 63 - m.leading_zeros() as usize;
                    *m ^= 1 << h;
                    self.end = h;
                    h + 1
                };
                if start < end {
                    break (start, end);
                }
            },
            None => {
                let p = &self.path[..self.end];
                let end = p.iter().rposition(|&b| b != b'/')? + 1;
                let start = p[..end].iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
                self.end = start;
                (start, end)
            }
        };
        let comp = &self.path[start..end];
        let w0 = if comp.len() <= 8 {
            word_ending_at(self.path, end, comp.len())
        } else {
            word_ending_at(self.path, start + 8, 8)
        };
        Some((comp, w0))
    }
}

const L7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const SLASHES: u64 = 0x2f2f_2f2f_2f2f_2f2f;

/// The high bit of every zero byte of `w`, and no other bit (no borrow runs
/// between bytes: each byte's low seven bits plus 0x7f stay below 0x100).
#[inline(always)]
fn zero_bytes(w: u64) -> u64 {
    !(((w & L7) + L7) | w) & HIGHS
}

/// One bit per byte (bit `i` for byte `i`) from a mask of high bits: the
/// multiplier sends byte `i`'s bit to bit `56 + i` and every other product
/// either above bit 63 or below bit 56 without carries.
#[inline(always)]
fn byte_bits(z: u64) -> u64 {
    (z >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Cells in the table (512 KiB: 4096 cells of two cache lines).
const CELLS: usize = 1 << 12;

/// Longest path (bytes) an exact record holds; a longer one gets a tag-only hint.
pub(crate) const EXACT_MAX: usize = PATH_WORDS * 8;
const PATH_WORDS: usize = 12;

/// One hint: a tag and a slot, and for paths of at most [`EXACT_MAX`] bytes an
/// exact record of the lookup that left it, all under one seqlock.
#[repr(C, align(128))]
#[derive(Default)]
struct Cell {
    /// Bits 0..32: the seqlock version (odd while a writer holds the cell).
    /// Bits 32..40: the recorded path's length (0: no exact record); 40..48: where
    /// its last component starts; 48..56: that component's length; 56..64: how
    /// many components the lookup matched.
    head: AtomicU64,
    /// The hash's high 32 bits (bits 32..64) and the end slot + 1 (0: empty).
    tag: AtomicU64,
    /// The start slot (bits 0..32) and the end entry's parent slot (32..64).
    ends: AtomicU64,
    /// The cache's topology sequence when the lookup was proven.
    topo: AtomicU64,
    /// The path's bytes, little-endian words, zero padded.
    path: [AtomicU64; PATH_WORDS],
}

/// What [`Hints::get`] found for a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    /// Nothing for this hash.
    None,
    /// A slot to prove by climbing (`Namecache::hinted`).
    Tag(u32),
    /// An exact record of this very (start, path).
    Exact(Exact),
}

/// An exact record: the lookup of this (start, path) was proven, at topology
/// sequence `topo`, to end at slot `x`, the child of `parent` named
/// `path[last.0..last.0 + last.1]`, after matching `comps` components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exact {
    pub(crate) x: u32,
    pub(crate) parent: u32,
    pub(crate) topo: u64,
    pub(crate) last: (usize, usize),
    pub(crate) comps: u32,
}

#[derive(Debug)]
pub(crate) struct Hints {
    cells: Box<[Cell]>,
    seed: u64,
}

impl core::fmt::Debug for Cell {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cell").finish_non_exhaustive()
    }
}

/// The 64-bit product of `a` and `b`, high half folded onto the low half.
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Word `k` of `path` as the cells store it (little-endian, zero padded).
#[inline(always)]
fn path_word(path: &[u8], k: usize) -> u64 {
    let rest = &path[k * 8..];
    match rest.first_chunk::<8>() {
        Some(w) => u64::from_le_bytes(*w),
        None => short_word(rest),
    }
}

impl Hints {
    pub(crate) fn new() -> Hints {
        use std::hash::{BuildHasher, Hasher};
        // A per-cache seed, so collisions differ between caches and processes.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(CELLS);
        Hints { cells: (0..CELLS).map(|_| Cell::default()).collect(), seed: h.finish() | 1 }
    }

    /// One pass over `path`: its hash with `start`, whether it holds a NUL byte,
    /// and (for paths of at most 64 bytes) where its slashes are, so the hint
    /// climb finds component boundaries without scanning bytes again.
    #[inline]
    pub(crate) fn scan(&self, start: u32, path: &[u8]) -> Scan {
        // Each word is mixed on its own (with its position), and the mixes are
        // summed: the multiplies do not wait on each other, so the hash adds
        // little latency before the table load it feeds.
        let key = self.seed ^ u64::from(start);
        let mut sum = 0u64;
        let mut pos = key;
        let mut nuls = 0u64;
        let mut slashes = 0u64;
        let mut words = path.chunks_exact(8);
        for (k, w) in (&mut words).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            let w = u64::from_le_bytes(b);
            nuls |= zero_bytes(w);
            if k < 8 {
                slashes |= byte_bits(zero_bytes(w ^ SLASHES)) << (k * 8);
            }
            sum = sum.wrapping_add(fold(w ^ pos, M1));
            pos = pos.wrapping_add(M0);
        }
        let tail = words.remainder();
        let tw = short_word(tail);
        let valid = (1u64 << tail.len()) - 1;
        let nul = nuls != 0 || byte_bits(zero_bytes(tw)) & valid != 0;
        let k = path.len() / 8;
        if k < 8 {
            slashes |= (byte_bits(zero_bytes(tw ^ SLASHES)) & valid) << (k * 8);
        }
        sum = sum.wrapping_add(fold(tw ^ pos, M1));
        Scan {
            hash: fold(sum ^ key ^ ((path.len() as u64) << 56), M0),
            nul,
            slashes: (path.len() <= 64).then_some(slashes),
        }
    }

    fn cell(&self, h: u64) -> &Cell {
        &self.cells[h as usize & (CELLS - 1)]
    }

    /// What the cell of hash `h` says about the lookup of `path` from slot
    /// `from`: an exact record if it holds one of this very lookup (read whole
    /// under the cell's seqlock), else its slot if the tag is `h`'s.
    #[inline]
    pub(crate) fn get(&self, h: u64, from: u32, path: &[u8]) -> Hint {
        let c = self.cell(h);
        let head = c.head.load(Ordering::Acquire);
        let t = c.tag.load(Ordering::Relaxed);
        if t >> 32 != h >> 32 || t as u32 == 0 {
            return Hint::None;
        }
        let x = t as u32 - 1;
        let len = (head >> 32) as u8 as usize;
        if head & 1 != 0 || len != path.len() {
            return Hint::Tag(x);
        }
        let ends = c.ends.load(Ordering::Relaxed);
        let topo = c.topo.load(Ordering::Relaxed);
        if ends as u32 != from {
            return Hint::Tag(x);
        }
        for k in 0..len.div_ceil(8) {
            if c.path[k].load(Ordering::Relaxed) != path_word(path, k) {
                return Hint::Tag(x);
            }
        }
        fence(Ordering::Acquire);
        if c.head.load(Ordering::Relaxed) != head {
            return Hint::Tag(x);
        }
        Hint::Exact(Exact {
            x,
            parent: (ends >> 32) as u32,
            topo,
            last: ((head >> 40) as u8 as usize, (head >> 48) as u8 as usize),
            comps: (head >> 56) as u32,
        })
    }

    /// Rewrites the cell of `h` under its seqlock: `fill` stores the fields and
    /// returns the head's bits above the version. Skipped if another writer holds
    /// the cell (a hint is only a hint).
    #[inline]
    fn write(&self, h: u64, fill: impl FnOnce(&Cell) -> u64) {
        let c = self.cell(h);
        let head = c.head.load(Ordering::Relaxed);
        if head & 1 != 0
            || c.head
                .compare_exchange(head, head | 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // The odd version is visible before any field changes.
        fence(Ordering::Release);
        let meta = fill(c);
        c.head.store(u64::from((head as u32).wrapping_add(2)) | meta, Ordering::Release);
    }

    /// Records that the lookup with hash `h` ended at `slot`, with no exact
    /// record (a write only when the cell holds something else).
    #[inline]
    pub(crate) fn put(&self, h: u64, slot: u32) {
        let v = (h >> 32 << 32) | u64::from(slot.wrapping_add(1));
        if self.cell(h).tag.load(Ordering::Relaxed) != v {
            self.write(h, |c| {
                c.tag.store(v, Ordering::Relaxed);
                0
            });
        }
    }

    /// Records that the lookup of `path` (1 to [`EXACT_MAX`] bytes) from `from`
    /// with hash `h` was proven to end as `e` says (a write only when the cell
    /// does not already say so). The caller vouches for `e`: the lookup that
    /// proved it read `e.topo` before it started and found it unchanged at its
    /// end, and the last component is a name (not `.`).
    pub(crate) fn put_exact(&self, h: u64, from: u32, path: &[u8], e: Exact) {
        debug_assert!((1..=EXACT_MAX).contains(&path.len()) && e.last.1 > 0);
        debug_assert!(e.topo & 1 == 0 && e.comps < 256);
        if self.get(h, from, path) == Hint::Exact(e) {
            return;
        }
        self.write(h, |c| {
            c.tag.store((h >> 32 << 32) | u64::from(e.x.wrapping_add(1)), Ordering::Relaxed);
            c.ends.store(u64::from(from) | (u64::from(e.parent) << 32), Ordering::Relaxed);
            c.topo.store(e.topo, Ordering::Relaxed);
            for k in 0..path.len().div_ceil(8) {
                c.path[k].store(path_word(path, k), Ordering::Relaxed);
            }
            (path.len() as u64) << 32
                | (e.last.0 as u64) << 40
                | (e.last.1 as u64) << 48
                | u64::from(e.comps) << 56
        });
    }

    /// Bytes the table takes.
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of_val(&*self.cells)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_answers_only_for_its_own_hash() {
        let h = Hints::new();
        let a = h.scan(0, b"/a/b/c").hash;
        let b = h.scan(0, b"/a/b/d").hash;
        let c = h.scan(1, b"/a/b/c").hash;
        assert!(a != b && a != c, "distinct inputs should hash apart here");
        assert_eq!(h.get(a, 0, b"/a/b/c"), Hint::None);
        h.put(a, 7);
        assert_eq!(h.get(a, 0, b"/a/b/c"), Hint::Tag(7));
        assert_eq!(h.get(b, 0, b"/a/b/d"), Hint::None);
        // Same cell, other tag: no answer.
        assert_eq!(h.get(a ^ (1 << 40), 0, b"/a/b/c"), Hint::None);
        h.put(a, 9);
        assert_eq!(h.get(a, 0, b"/a/b/c"), Hint::Tag(9));
    }

    #[test]
    fn an_exact_record_answers_only_its_own_start_and_bytes() {
        let h = Hints::new();
        let path = b"/usr/lib/x86_64-linux-gnu/libc.so.6";
        let hash = h.scan(5, path).hash;
        let e = Exact { x: 40, parent: 39, topo: 6, last: (26, 9), comps: 4 };
        h.put_exact(hash, 5, path, e);
        assert_eq!(h.get(hash, 5, path), Hint::Exact(e));
        // Another start, or any byte changed, with the same hash: only the tag.
        assert_eq!(h.get(hash, 6, path), Hint::Tag(40));
        for i in 0..path.len() {
            let mut p = path.to_vec();
            p[i] ^= 0x20;
            assert_eq!(h.get(hash, 5, &p), Hint::Tag(40), "byte {i}");
        }
        assert_eq!(h.get(hash, 5, &path[..path.len() - 1]), Hint::Tag(40));
        // A tag-only put drops the record; a new one replaces it whole.
        h.put(hash, 41);
        assert_eq!(h.get(hash, 5, path), Hint::Tag(41));
        let e2 = Exact { topo: 8, ..e };
        h.put_exact(hash, 5, path, e2);
        assert_eq!(h.get(hash, 5, path), Hint::Exact(e2));
        // Every length up to the longest an exact record holds.
        let long = [b'q'; EXACT_MAX];
        for len in 1..=EXACT_MAX {
            let p = &long[..len];
            let hh = h.scan(2, p).hash;
            let e = Exact { x: len as u32, parent: 1, topo: 2, last: (0, len.min(32)), comps: 1 };
            h.put_exact(hh, 2, p, e);
            assert_eq!(h.get(hh, 2, p), Hint::Exact(e), "length {len}");
        }
    }

    #[test]
    fn a_writer_holding_a_cell_hides_its_record() {
        let h = Hints::new();
        let path = b"/a/b";
        let hash = h.scan(0, path).hash;
        let e = Exact { x: 3, parent: 2, topo: 0, last: (3, 1), comps: 2 };
        h.put_exact(hash, 0, path, e);
        let c = h.cell(hash);
        let head = c.head.load(Ordering::Relaxed);
        c.head.store(head | 1, Ordering::Relaxed);
        assert_eq!(h.get(hash, 0, path), Hint::Tag(3), "odd version: no exact record");
        // Writers skip a held cell instead of waiting.
        h.put(hash, 9);
        assert_eq!(c.tag.load(Ordering::Relaxed) as u32, 4);
        c.head.store(head, Ordering::Relaxed);
        assert_eq!(h.get(hash, 0, path), Hint::Exact(e));
    }

    #[test]
    fn the_hash_sees_every_byte_and_the_length() {
        let h = Hints::new();
        let base = b"/dir-0/dir-1/dir-2/file-name".to_vec();
        let h0 = h.scan(3, &base).hash;
        for i in 0..base.len() {
            let mut p = base.clone();
            p[i] ^= 1;
            assert_ne!(h.scan(3, &p).hash, h0, "byte {i}");
        }
        // A zero byte at the end is not the same as the zero padding.
        assert_ne!(h.scan(3, b"/a").hash, h.scan(3, b"/a\0").hash);
    }

    #[test]
    fn reverse_components_match_a_plain_split_at_every_length() {
        let h = Hints::new();
        // Slashes, runs of them, and bytes one bit away from a slash.
        let pick = [b'/', b'a', b'/', 0x2e, b'/', 0xaf, 0x2f ^ 0x80, b'b', b'/', b'/'];
        for seed in 0..6u32 {
            let bytes: Vec<u8> = (0..90u32)
                .map(|i| pick[((i * 7 + seed * 3 + i * i * seed) % 10) as usize])
                .collect();
            for len in 0..bytes.len() {
                let p = &bytes[..len];
                let s = h.scan(9, p);
                assert_eq!(s.slashes.is_some(), len <= 64);
                let want: Vec<&[u8]> =
                    p.split(|&b| b == b'/').filter(|c| !c.is_empty()).rev().collect();
                let got: Vec<&[u8]> = s
                    .components_rev(p)
                    .map(|(c, w)| {
                        assert_eq!(w, crate::slots::pack(c)[0], "first word of {c:?}");
                        c
                    })
                    .collect();
                assert_eq!(got, want, "seed {seed}, length {len}");
            }
        }
    }

    #[test]
    fn the_hash_finds_a_nul_anywhere() {
        let h = Hints::new();
        for len in 1..40 {
            let clean = vec![b'x'; len];
            assert!(!h.scan(0, &clean).nul, "length {len}");
            for i in 0..len {
                let mut p = clean.clone();
                p[i] = 0;
                assert!(h.scan(0, &p).nul, "NUL at {i} of {len}");
            }
        }
        // Bytes just above and below zero are not NUL.
        assert!(!h.scan(0, b"\x01\x80\xff\x01\x01\x01\x01\x01\x7f").nul);
    }
}
