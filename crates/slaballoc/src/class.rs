//! Geometry and size classes: DragonFly's `zoneindex()` table, computed rather than
//! copied.
//!
//! - A *zone* is [`ZONE_SIZE`] bytes (128 KiB) aligned to its size, so the header of
//!   the zone holding any chunk is found by masking the chunk's address.
//! - Requests up to [`ZONE_LIMIT`] (16 KiB) are served from zones in one of
//!   [`NCLASSES`] (72) classes: 8-byte steps up to 128 bytes (16 classes), then 8
//!   classes per power-of-two band (128–256 in 16-byte steps, 256–512 in 32-byte
//!   steps, ..., 8–16 KiB in 1 KiB steps). Rounding wastes at most 1/8 above 128 bytes.
//! - Chunks of a class are laid out from the first multiple of the class's natural
//!   alignment ([`class_align`]: the largest power of two dividing its size) past the
//!   zone header, so a power-of-two size comes back aligned to itself.
//! - Larger requests, or alignments the classes cannot give, go to whole-page
//!   mappings ([`class_for`] returns `None`).
//!
//! Everything here is pure arithmetic: no state, no unsafe code.

/// Bytes in a zone; zones are aligned to this, so `ptr & !(ZONE_SIZE - 1)` is the
/// zone header of any chunk.
pub const ZONE_SIZE: usize = 128 * 1024;
/// The largest request served from a zone; anything larger is a page mapping.
pub const ZONE_LIMIT: usize = 16 * 1024;
/// The number of size classes for a 16 KiB zone limit (DragonFly's `NZONES`).
pub const NCLASSES: usize = 72;
/// The page size assumed for large mappings (checked against the OS at run time).
pub const PAGE: usize = 4096;
/// Bytes reserved for the zone header at the start of every zone. Chunks start at
/// the first multiple of the class alignment at or above this.
///
/// With the `debug` feature the reserve also holds the zone's in-use bitmap (2 KiB).
pub const ZONE_HEADER: usize = if cfg!(feature = "debug") { 256 + ZONE_SIZE / 64 } else { 256 };

/// The class size (bytes per chunk) of class `index`. Panics if `index >= NCLASSES`.
///
/// ```
/// use dfly_slaballoc::class::{class_size, NCLASSES};
/// assert_eq!(class_size(0), 8);
/// assert_eq!(class_size(15), 128);
/// assert_eq!(class_size(16), 144);
/// assert_eq!(class_size(NCLASSES - 1), 16 * 1024);
/// ```
#[inline(always)]
pub const fn class_size(index: usize) -> usize {
    assert!(index < NCLASSES, "size class out of range");
    SIZES[index] as usize
}

/// The class sizes, computed once at compile time.
const SIZES: [u32; NCLASSES] = {
    let mut t = [0u32; NCLASSES];
    let mut i = 0;
    while i < NCLASSES {
        t[i] = compute_class_size(i) as u32;
        i += 1;
    }
    t
};

const fn compute_class_size(index: usize) -> usize {
    if index < 16 {
        (index + 1) * 8
    } else {
        let band = (index - 16) / 8;
        let step_in_band = (index - 16) % 8;
        let base = 128 << band;
        base + (step_in_band + 1) * (base / 8)
    }
}

/// The class that serves `n` bytes (`1..=ZONE_LIMIT`), or `None` if `n` is 0 or above
/// the zone limit. The class size is the smallest in the table that is at least `n`.
#[inline(always)]
pub const fn class_index(n: usize) -> Option<usize> {
    if n == 0 || n > ZONE_LIMIT {
        return None;
    }
    if n <= 128 {
        return Some(n.div_ceil(8) - 1);
    }
    // 128 << band < n <= 256 << band
    let band = (usize::BITS - 1 - (n - 1).leading_zeros()) as usize - 7;
    let base = 128 << band;
    let step = base / 8;
    let j = (n - base).div_ceil(step) - 1;
    Some(16 + 8 * band + j)
}

/// The natural alignment of class `index`: the largest power of two dividing its size.
#[inline]
pub const fn class_align(index: usize) -> usize {
    let s = class_size(index);
    s & s.wrapping_neg()
}

/// Offset of the first chunk of class `index` from the zone start.
pub const fn first_chunk_offset(index: usize) -> usize {
    ZONE_HEADER.next_multiple_of(class_align(index))
}

/// The number of chunks in a zone of `zone_bytes` for class `index`.
pub const fn chunks_per_zone(index: usize, zone_bytes: usize) -> usize {
    (zone_bytes - first_chunk_offset(index)) / class_size(index)
}

/// The class for a request of `size` bytes aligned to `align` (a power of two), or
/// `None` if it must go to a page mapping. Size 0 is served as 1 byte.
///
/// ```
/// use dfly_slaballoc::class::{class_for, class_size};
/// assert_eq!(class_size(class_for(24, 8).unwrap()), 24);
/// assert_eq!(class_size(class_for(24, 32).unwrap()), 32);
/// assert_eq!(class_size(class_for(100, 64).unwrap()), 128);
/// assert_eq!(class_for(16 * 1024 + 1, 8), None);
/// assert_eq!(class_for(8, 32 * 1024), None);
/// ```
#[inline(always)]
pub const fn class_for(size: usize, align: usize) -> Option<usize> {
    if align <= 8 {
        // Every class size is a multiple of 8, so every chunk is 8-aligned; sizes up to
        // 128 map to classes by one shift (0 is served as 1).
        if size <= 128 {
            return Some(size.saturating_sub(1) >> 3);
        }
        return class_index(size);
    }
    let mut n = if size == 0 { 1 } else { size };
    if align > ZONE_LIMIT {
        return None;
    }
    if align > 8 {
        // Round up to a multiple of the alignment; guard against overflow.
        match n.checked_add(align - 1) {
            Some(v) => n = v & !(align - 1),
            None => return None,
        }
    }
    let Some(c) = class_index(n) else { return None };
    if class_align(c) >= align {
        return Some(c);
    }
    // A power of two at least `n` is naturally aligned to at least `align`.
    class_index(n.next_power_of_two())
}

#[cfg(test)]
mod tests;
