//! Direct tests of one instance each: every class, alignments up to 2 MiB, realloc,
//! zero size, remote free in both modes, hysteresis and "free never calls the OS",
//! CPU slots, per-kind accounting, and allocation during thread teardown.

use std::sync::mpsc;
use std::thread;

use dfly_core::{set_current_cpu, CpuId};

use super::{check, fill, layout};
use crate::class::{class_size, NCLASSES, ZONE_LIMIT, ZONE_SIZE};
use crate::{Config, Kind, RemoteMode, Slab};

/// Frees everything it is given, on a thread of its own.
fn freer(heap: &'static Slab) -> (mpsc::Sender<usize>, thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<usize>();
    let h = thread::spawn(move || {
        for p in rx {
            // SAFETY: the sender gave the block up.
            unsafe { heap.dealloc(p as *mut u8) };
        }
    });
    (tx, h)
}

#[test]
fn every_class_round_trips_and_trim_returns_everything() {
    static HEAP: Slab = Slab::new();
    let mut live = Vec::new();
    for c in 0..NCLASSES {
        let size = class_size(c);
        for k in 0..20 {
            let p = HEAP.alloc(layout(size, 1));
            assert!(!p.is_null());
            assert_eq!(p as usize % 8, 0);
            if size.is_power_of_two() {
                assert_eq!(p as usize % size, 0, "power of two {size} not naturally aligned");
            }
            // SAFETY: a fresh block of `size` bytes.
            unsafe { fill(p, size, (c * 100 + k) as u64) };
            // SAFETY: live.
            assert_eq!(unsafe { HEAP.usable_size(p) }, size);
            live.push((p, size, (c * 100 + k) as u64));
        }
    }
    let expect: i64 = live.iter().map(|&(_, s, _)| s as i64).sum();
    assert_eq!(HEAP.stats().in_use, expect);
    let mut sorted: Vec<_> = live.iter().map(|&(p, s, _)| (p as usize, s)).collect();
    sorted.sort_unstable();
    for w in sorted.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "overlap");
    }
    HEAP.check_my_slot().unwrap();
    for (p, size, tag) in live {
        // SAFETY: live blocks we own.
        unsafe {
            check(p, size, tag);
            HEAP.dealloc(p);
        }
    }
    assert_eq!(HEAP.stats().in_use, 0);
    HEAP.trim();
    let st = HEAP.stats();
    assert_eq!(st.zone_bytes, 0, "{st:?}");
    assert_eq!(st.cached_zones, 0);
}

#[test]
fn alignments_up_to_2_mib_and_large_blocks() {
    static HEAP: Slab = Slab::new();
    let mut align = 1;
    while align <= 2 << 20 {
        for size in [0, 1, 24, align, align + 1, 3 * align / 2 + 5, ZONE_LIMIT + 1, 300_000] {
            let p = HEAP.alloc(layout(size, align));
            assert!(!p.is_null(), "size {size} align {align}");
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            // SAFETY: live.
            let usable = unsafe { HEAP.usable_size(p) };
            assert!(usable >= size.max(1));
            // SAFETY: a fresh block of `usable` bytes.
            unsafe {
                fill(p, usable.min(4096), size as u64);
                check(p, usable.min(4096), size as u64);
                HEAP.dealloc(p);
            }
        }
        align *= 2;
    }
    let st = HEAP.stats();
    assert_eq!(st.in_use, 0);
    // Only freed mappings kept for reuse remain, and trim returns them.
    assert_eq!(st.large_bytes, st.large_cached_bytes, "{st:?}");
    HEAP.trim();
    assert_eq!(HEAP.stats().large_bytes, 0);
}

#[test]
fn zero_size_blocks_are_distinct() {
    static HEAP: Slab = Slab::new();
    let a = HEAP.alloc(layout(0, 1));
    let b = HEAP.alloc(layout(0, 1));
    assert!(!a.is_null() && !b.is_null() && a != b);
    // SAFETY: live blocks.
    unsafe {
        HEAP.dealloc(a);
        HEAP.dealloc(b);
    }
    assert_eq!(HEAP.stats().in_use, 0);
}

#[test]
fn realloc_is_in_place_within_a_class_and_preserves_contents() {
    static HEAP: Slab = Slab::new();
    let p = HEAP.alloc(layout(100, 8));
    // SAFETY: live blocks throughout; sizes as allocated.
    unsafe {
        fill(p, 100, 7);
        // 100 and 104 share the 104-byte class.
        assert_eq!(HEAP.realloc(p, layout(100, 8), 104), p);
        let q = HEAP.realloc(p, layout(104, 8), 5000);
        assert_ne!(q, p);
        check(q, 100, 7);
        fill(q, 5000, 8);
        let r = HEAP.realloc(q, layout(5000, 8), 1 << 20);
        check(r, 5000, 8);
        fill(r, 1 << 20, 9);
        // A large block shrinking by less than half stays put.
        assert_eq!(HEAP.realloc(r, layout(1 << 20, 8), 900_000), r);
        let s = HEAP.realloc(r, layout(900_000, 8), 40);
        check(s, 40, 9);
        assert_eq!(HEAP.realloc(s, layout(40, 8), 33), s);
        HEAP.dealloc(s);
    }
    let st = HEAP.stats();
    assert_eq!(st.in_use, 0);
    // Only freed mappings kept for reuse remain, and trim returns them.
    assert_eq!(st.large_bytes, st.large_cached_bytes, "{st:?}");
    HEAP.trim();
    assert_eq!(HEAP.stats().large_bytes, 0);
}

fn remote_round_trip(heap: &'static Slab) {
    let (tx, h) = freer(heap);
    let mut kept = Vec::new();
    for i in 0..20_000usize {
        let size = [8, 64, 200, 1000, 5000][i % 5];
        let p = heap.alloc(layout(size, 8));
        // SAFETY: fresh block.
        unsafe { fill(p, size.min(64), i as u64) };
        if i % 3 == 0 {
            kept.push((p, size, i));
        } else {
            tx.send(p as usize).unwrap();
        }
    }
    drop(tx);
    h.join().unwrap();
    for (p, size, i) in kept {
        // SAFETY: live blocks we own.
        unsafe {
            check(p, size.min(64), i as u64);
            heap.dealloc(p);
        }
    }
    heap.trim();
    let st = heap.stats();
    assert_eq!(st.in_use, 0, "{st:?}");
    assert_eq!(st.zone_bytes, 0, "{st:?}");
}

#[test]
fn remote_free_per_zone_returns_everything() {
    static HEAP: Slab =
        Slab::with_config(Config { remote: RemoteMode::PerZone, ..Config::DEFAULT });
    remote_round_trip(&HEAP);
    assert!(HEAP.stats().notifications > 0);
}

#[test]
fn remote_free_batched_returns_everything() {
    static HEAP: Slab =
        Slab::with_config(Config { remote: RemoteMode::Batched, ..Config::DEFAULT });
    remote_round_trip(&HEAP);
    assert!(HEAP.stats().batches > 0);
}

#[test]
fn free_never_calls_the_os_and_slow_paths_keep_the_bound() {
    // No reaper: it would unmap the released zones concurrently with the checks.
    static HEAP: Slab = Slab::with_config(Config { reap_ms: 0, ..Config::DEFAULT });
    let thresh = HEAP.config().zone_rels_thresh;
    for round in 0..3 {
        // About 20 zones of 64-byte chunks.
        let n = 20 * ZONE_SIZE / 64;
        let ps: Vec<_> = (0..n).map(|_| HEAP.alloc(layout(64, 8))).collect();
        let before = HEAP.stats().zone_os_calls;
        for &p in &ps {
            // SAFETY: live blocks.
            unsafe { HEAP.dealloc(p) };
        }
        let st = HEAP.stats();
        assert_eq!(st.zone_os_calls, before, "free called the OS");
        // The slot keeps at most the threshold; the excess waits on the release stack.
        assert!(st.cached_zones <= thresh, "round {round}: {st:?}");
        assert!(st.releasing_zones >= 20 - thresh - 2, "round {round}: {st:?}");
        // Any malloc slow path reuses or unmaps the released zones.
        let q = HEAP.alloc(layout(3000 + round * 256, 8));
        let (cached, _) = HEAP.check_my_slot().unwrap();
        assert!(cached <= thresh, "cached {cached} after a slow path");
        let st = HEAP.stats();
        assert_eq!(st.releasing_zones, 0, "{st:?}");
        // Cached zones plus one zone per class used so far.
        assert!(st.zone_bytes <= (thresh + 2 + round) * ZONE_SIZE, "{st:?}");
        // SAFETY: live.
        unsafe { HEAP.dealloc(q) };
    }
    // Random traffic: after every slow path the bound held (each slow path records
    // its end state).
    let mut live = Vec::new();
    let mut x = 12345u64;
    for _ in 0..200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x % 3 != 0 || live.is_empty() {
            live.push(HEAP.alloc(layout(8 << (x % 10), 8)));
        } else {
            let i = (x >> 8) as usize % live.len();
            // SAFETY: live.
            unsafe { HEAP.dealloc(live.swap_remove(i)) };
        }
        if live.len() > 30_000 {
            for p in live.drain(..) {
                // SAFETY: live.
                unsafe { HEAP.dealloc(p) };
            }
        }
    }
    for p in live {
        // SAFETY: live.
        unsafe { HEAP.dealloc(p) };
    }
    let st = HEAP.stats();
    assert!(st.worst_cached_after_slow <= thresh, "{st:?}");
    HEAP.check_my_slot().unwrap();
}

#[test]
fn lwkt_cpus_use_their_own_slot_and_others_lease() {
    static HEAP: Slab = Slab::new();
    thread::spawn(|| {
        let _cpu = set_current_cpu(CpuId::new(3).unwrap()).unwrap();
        let p = HEAP.alloc(layout(64, 8));
        assert_eq!(HEAP.my_slot_index(), Some(3));
        // SAFETY: live.
        unsafe { HEAP.dealloc(p) };
    })
    .join()
    .unwrap();
    // A thread that becomes a CPU after its first allocation moves on its slow path.
    thread::spawn(|| {
        let p = HEAP.alloc(layout(64, 8));
        let first = HEAP.my_slot_index().unwrap();
        assert!(first >= dfly_core::MAX_CPUS);
        let _cpu = set_current_cpu(CpuId::new(5).unwrap()).unwrap();
        let q = HEAP.alloc(layout(9000, 8)); // a class with no zone yet: slow path
        assert_eq!(HEAP.my_slot_index(), Some(5));
        // SAFETY: live blocks (p is now a remote free to the released slot).
        unsafe {
            HEAP.dealloc(p);
            HEAP.dealloc(q);
        }
    })
    .join()
    .unwrap();
    HEAP.trim();
    assert_eq!(HEAP.stats().in_use, 0);
    assert_eq!(HEAP.stats().zone_bytes, 0);
}

#[test]
fn kinds_sum_exactly_across_threads_and_enforce_limits() {
    static HEAP: Slab = Slab::new();
    static K: Kind = Kind::new("test");
    let (tx, rx) = mpsc::channel::<usize>();
    let h = thread::spawn(move || {
        for p in rx {
            // SAFETY: given up by the sender; allocated for K.
            unsafe { HEAP.dealloc_kind(&K, p as *mut u8) };
        }
    });
    for i in 0..5000 {
        let p = HEAP.alloc_kind(&K, layout(16 + i % 100, 8)).unwrap();
        tx.send(p.as_ptr() as usize).unwrap();
    }
    drop(tx);
    h.join().unwrap();
    assert_eq!(K.in_use(), 0);
    assert_eq!(K.calls(), 5000);
    // One counter went up, another down.
    assert!(K.counters().any(|c| c > 0) && K.counters().any(|c| c < 0));
    K.set_limit(Some(100));
    let a = HEAP.alloc_kind(&K, layout(64, 8)).unwrap();
    assert!(matches!(
        HEAP.alloc_kind(&K, layout(64, 8)),
        Err(crate::KindError::LimitExceeded { limit: 100, in_use: 64, requested: 64 })
    ));
    // SAFETY: live.
    unsafe { HEAP.dealloc_kind(&K, a.as_ptr()) };
    assert_eq!(K.in_use(), 0);
}

static TEARDOWN_HEAP: Slab = Slab::new();

extern "C" fn late_destructor(_: *mut libc::c_void) {
    // Runs after the allocator's own exit hook (a key created later runs later):
    // the thread's entry is DEAD and these go through the shared slot.
    let p = TEARDOWN_HEAP.alloc(layout(48, 8));
    assert!(!p.is_null());
    // SAFETY: live.
    unsafe { TEARDOWN_HEAP.dealloc(p) };
    let q = TEARDOWN_HEAP.alloc(layout(48, 8));
    // Left for another thread to free.
    LATE.store(q as usize, std::sync::atomic::Ordering::SeqCst);
}

static LATE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn allocation_during_thread_teardown_works() {
    thread_local! {
        static GUARD: Guard = const { Guard };
    }
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            // A Rust thread-local destructor: runs before the exit hook.
            let p = TEARDOWN_HEAP.alloc(layout(100, 8));
            // SAFETY: live.
            unsafe { TEARDOWN_HEAP.dealloc(p) };
        }
    }
    thread::spawn(|| {
        let p = TEARDOWN_HEAP.alloc(layout(32, 8)); // leases a slot, hooks exit
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: valid out-pointer and a destructor valid for the program's life.
        assert_eq!(unsafe { libc::pthread_key_create(&mut key, Some(late_destructor)) }, 0);
        // SAFETY: `key` was just created.
        unsafe { libc::pthread_setspecific(key, 1 as *const libc::c_void) };
        GUARD.with(|_| {});
        // SAFETY: live.
        unsafe { TEARDOWN_HEAP.dealloc(p) };
    })
    .join()
    .unwrap();
    let q = LATE.load(std::sync::atomic::Ordering::SeqCst);
    assert_ne!(q, 0);
    // SAFETY: the exited thread left it to us.
    unsafe { TEARDOWN_HEAP.dealloc(q as *mut u8) };
    TEARDOWN_HEAP.trim();
    let st = TEARDOWN_HEAP.stats();
    assert_eq!(st.in_use, 0, "{st:?}");
    assert_eq!(st.zone_bytes, 0, "{st:?}");
}

#[test]
fn zeroed_large_blocks_are_zero_when_they_come_from_the_cache() {
    // The large-block cache hands back mappings as their last owner left them:
    // alloc_zeroed must clear those (a fresh mapping is zero already). Sizes
    // within 2x of the freed one reuse it; every byte is checked.
    static HEAP: Slab = Slab::with_config(Config { reap_ms: 0, ..Config::DEFAULT });
    for (dirty, size, align) in [(1 << 20, 1 << 20, 8), (1 << 20, 600 * 1024, 4096)] {
        let p = HEAP.alloc(layout(dirty, 8));
        // SAFETY: a live block of `dirty` bytes.
        unsafe {
            p.write_bytes(0xa5, dirty);
            HEAP.dealloc(p);
        }
        let calls = HEAP.stats().large_os_calls;
        let q = HEAP.alloc_zeroed(layout(size, align));
        assert_eq!(HEAP.stats().large_os_calls, calls, "the cached mapping was reused");
        assert_eq!(q as usize % align, 0);
        // SAFETY: a live block of `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(q, size) };
        assert!(bytes.iter().all(|&b| b == 0), "a reused large block was not zeroed");
        // SAFETY: live.
        unsafe { HEAP.dealloc(q) };
    }
    HEAP.trim();
}

#[test]
fn freed_large_blocks_are_reused_and_double_frees_of_them_caught_later() {
    static HEAP: Slab = Slab::with_config(Config { reap_ms: 0, ..Config::DEFAULT });
    let p = HEAP.alloc(layout(1 << 20, 8));
    let calls = HEAP.stats().large_os_calls;
    // SAFETY: live.
    unsafe { HEAP.dealloc(p) };
    let st = HEAP.stats();
    assert_eq!(st.large_os_calls, calls, "freed into the cache, not unmapped: {st:?}");
    assert!(st.large_cached_bytes >= 1 << 20);
    // A similar size (within 2x) reuses the mapping: no system call.
    let q = HEAP.alloc(layout(700 * 1024, 64));
    assert_eq!(HEAP.stats().large_os_calls, calls);
    assert_eq!(q as usize % 64, 0);
    // SAFETY: a fresh block of 700 KiB.
    unsafe {
        q.write_bytes(7, 700 * 1024);
        assert!(HEAP.usable_size(q) >= 700 * 1024);
        HEAP.dealloc(q);
    }
    // Much smaller does not take a mapping twice its size.
    let r = HEAP.alloc(layout(200 * 1024, 8));
    assert!(HEAP.stats().large_os_calls > calls);
    // SAFETY: live.
    unsafe { HEAP.dealloc(r) };
    HEAP.trim();
    let st = HEAP.stats();
    assert_eq!((st.large_bytes, st.large_cached_bytes, st.in_use), (0, 0, 0), "{st:?}");
}
