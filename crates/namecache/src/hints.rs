//! Path hints: a small direct-mapped table from (start entry, path bytes) to the
//! entry a recent lookup of that path ended at, so a repeated lookup hashes the
//! path once instead of once per component.
//!
//! A hint is only a guess. The lookup that uses one proves it by climbing from the
//! hinted entry to the start through the entries' own parent links, comparing each
//! entry's name with the path's components from the last one back (see
//! `Namecache::hinted`). Because the index holds at most one entry per (parent,
//! name), a chain that matches every component, with every entry indexed, is the
//! one a forward walk would take; so a wrong, stale or colliding hint costs a
//! fallback to the forward walk and never a wrong answer. That is also why the
//! path hash here needs no cryptographic key: an attacker who makes hints collide
//! only sends lookups down the forward walk, whose index is keyed with SipHash.
//!
//! A cell is one `u64`: the hash's high 32 bits as a tag and the slot index + 1
//! (0: empty). A lookup only loads its cell; the forward walk stores a cell only
//! when the cell holds something else, so repeated hits write nothing shared.
//!
//! Must never happen: a hint trusted without the climb; a cell holding an index
//! that was never a slot of this cache's arena.

use dfly_core::sync::atomic::{AtomicU64, Ordering};

use crate::slots::{short_word, word_ending_at};

/// Cells in the table (64 KiB).
const CELLS: usize = 1 << 13;

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

#[derive(Debug)]
pub(crate) struct Hints {
    cells: Box<[AtomicU64]>,
    seed: u64,
}

/// The 64-bit product of `a` and `b`, high half folded onto the low half.
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hints {
    pub(crate) fn new() -> Hints {
        use std::hash::{BuildHasher, Hasher};
        // A per-cache seed, so collisions differ between caches and processes.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(CELLS);
        Hints { cells: (0..CELLS).map(|_| AtomicU64::new(0)).collect(), seed: h.finish() | 1 }
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

    fn cell(&self, h: u64) -> &AtomicU64 {
        &self.cells[h as usize & (CELLS - 1)]
    }

    /// The slot a lookup with hash `h` last ended at, if the cell is `h`'s.
    #[inline]
    pub(crate) fn get(&self, h: u64) -> Option<u32> {
        let v = self.cell(h).load(Ordering::Relaxed);
        (v >> 32 == h >> 32 && v as u32 != 0).then(|| v as u32 - 1)
    }

    /// Records that the lookup with hash `h` ended at `slot` (a store only when
    /// the cell holds something else).
    #[inline]
    pub(crate) fn put(&self, h: u64, slot: u32) {
        let v = (h >> 32 << 32) | u64::from(slot.wrapping_add(1));
        let c = self.cell(h);
        if c.load(Ordering::Relaxed) != v {
            c.store(v, Ordering::Relaxed);
        }
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
        assert_eq!(h.get(a), None);
        h.put(a, 7);
        assert_eq!(h.get(a), Some(7));
        assert_eq!(h.get(b), None);
        // Same cell, other tag: no answer.
        assert_eq!(h.get(a ^ (1 << 40)), None);
        h.put(a, 9);
        assert_eq!(h.get(a), Some(9));
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
