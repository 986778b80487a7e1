//! Size-class laws, checked for every size up to the zone limit and every alignment
//! up to it.

use super::*;

#[test]
fn class_index_laws_for_every_size() {
    let mut prev = 0;
    for n in 1..=ZONE_LIMIT {
        let c = class_index(n).unwrap();
        let s = class_size(c);
        assert!(c < NCLASSES, "n={n}");
        assert!(s >= n, "n={n} class size {s}");
        // Waste is below one step of the band: 8 below 128, base/8 above.
        let step =
            if n <= 128 { 8 } else { (1usize << (usize::BITS - 1 - (n - 1).leading_zeros())) / 8 };
        assert!(s - n < step, "n={n} s={s} step={step}");
        assert_eq!(s % step, 0, "n={n}");
        assert!(c >= prev, "index not monotonic at {n}");
        prev = c;
        // Round trip: the class size maps to its own class.
        assert_eq!(class_index(s), Some(c), "n={n}");
        if n > 128 {
            assert!((s - n) * 8 <= n, "waste above 1/8 at n={n}");
        }
    }
    assert_eq!(class_index(0), None);
    assert_eq!(class_index(ZONE_LIMIT + 1), None);
    assert_eq!(class_index(ZONE_LIMIT), Some(NCLASSES - 1));
    // DragonFly boundary values: 127 and 128 share class 15.
    assert_eq!(class_index(127), Some(15));
    assert_eq!(class_index(128), Some(15));
}

#[test]
fn classes_are_strictly_increasing_and_fit_zones() {
    for c in 1..NCLASSES {
        assert!(class_size(c) > class_size(c - 1));
    }
    for c in 0..NCLASSES {
        let off = first_chunk_offset(c);
        assert_eq!(off % class_align(c), 0);
        assert!(off >= ZONE_HEADER);
        let n = chunks_per_zone(c, ZONE_SIZE);
        assert!(n >= 7, "class {c} has only {n} chunks");
        assert!(off + n * class_size(c) <= ZONE_SIZE);
    }
    // Metadata for small classes stays under 0.5% of the zone (the debug feature's
    // bitmap adds 1.6%).
    #[cfg(not(feature = "debug"))]
    const {
        assert!(ZONE_HEADER * 200 <= ZONE_SIZE)
    };
}

#[test]
fn power_of_two_sizes_are_naturally_aligned() {
    let mut p = 8;
    while p <= ZONE_LIMIT {
        let c = class_index(p).unwrap();
        assert_eq!(class_size(c), p);
        assert_eq!(class_align(c), p);
        p *= 2;
    }
}

#[test]
fn class_for_respects_alignment_for_every_size() {
    let mut align = 1;
    while align <= ZONE_LIMIT {
        for n in 0..=ZONE_LIMIT {
            match class_for(n, align) {
                Some(c) => {
                    assert!(class_size(c) >= n.max(1), "n={n} align={align}");
                    assert!(class_align(c) >= align, "n={n} align={align}");
                }
                None => assert!(n.max(align) > ZONE_LIMIT / 2 || n > ZONE_LIMIT, "n={n} a={align}"),
            }
        }
        align *= 2;
    }
    assert_eq!(class_for(1, 1).map(class_size), Some(8));
    assert_eq!(class_for(ZONE_LIMIT, ZONE_LIMIT).map(class_size), Some(ZONE_LIMIT));
    assert_eq!(class_for(usize::MAX, 16), None);
}
