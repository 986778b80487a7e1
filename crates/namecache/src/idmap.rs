//! Hash maps keyed by numbers this crate assigns itself (slot indices, mount ids,
//! the in-memory filesystem's inode numbers): a multiply-and-fold hash instead of
//! SipHash. No caller chooses these keys, so there is no flooding to defend
//! against, and a rename or create touches several such maps.
//!
//! Names, which callers do choose, are never keyed here: the (parent, name) index
//! keeps its keyed SipHash.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

/// A map keyed by crate-assigned numbers.
pub(crate) type IdMap<K, V> = HashMap<K, V, IdHash>;
/// A set of crate-assigned numbers.
pub(crate) type IdSet<K> = HashSet<K, IdHash>;

/// The [`BuildHasher`] of [`IdMap`] and [`IdSet`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHash;

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// Odd, with bits spread over the word.
const K: u64 = 0x9e37_79b9_7f4a_7c15;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(K);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    /// The product's high half folded onto its low half, so both the low bits
    /// (bucket) and the high bits (hashbrown's tag) depend on every input bit.
    fn finish(&self) -> u64 {
        let p = u128::from(self.0) * u128::from(K);
        (p as u64) ^ ((p >> 64) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets_and_tags() {
        let h = |n: u64| IdHash.hash_one(n);
        let mut low = HashSet::new();
        let mut high = HashSet::new();
        for n in 0..4096u64 {
            low.insert(h(n) & 1023);
            high.insert(h(n) >> 57);
        }
        assert!(low.len() > 900, "{} of 1024 buckets used", low.len());
        assert_eq!(high.len(), 128, "every 7-bit tag seen");
        let mut m: IdMap<u32, u32> = IdMap::default();
        for n in 0..10_000 {
            m.insert(n, n * 2);
        }
        assert!((0..10_000).all(|n| m[&n] == n * 2));
    }
}
