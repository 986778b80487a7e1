//! The background reaper (memory comes back after a bulk free with no further
//! allocation) and fork safety (a child forked while other threads allocate can use
//! the allocator).

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::layout;
use crate::class::ZONE_SIZE;
use crate::{Config, Slab, REAPER_AFTER_BYTES};

#[test]
fn reaper_returns_a_bulk_free_by_the_owning_thread() {
    static HEAP: Slab = Slab::with_config(Config { reap_ms: 10, ..Config::DEFAULT });
    // The owner allocates and frees everything locally, then only sleeps: the fully
    // free zones beyond the threshold go to the release stack from the free path, and
    // the reaper unmaps them.
    let t = thread::spawn(|| {
        let n = 2 * REAPER_AFTER_BYTES / 256;
        let ps: Vec<_> = (0..n).map(|_| HEAP.alloc(layout(256, 8))).collect();
        // One more slow path once the reaper may start.
        let q = HEAP.alloc(layout(4000, 8));
        let calls = HEAP.stats().zone_os_calls;
        for p in ps {
            // SAFETY: live blocks of HEAP.
            unsafe { HEAP.dealloc(p) };
        }
        // SAFETY: live.
        unsafe { HEAP.dealloc(q) };
        let limit = (HEAP.config().zone_rels_thresh + 3) * ZONE_SIZE;
        let start = Instant::now();
        while HEAP.stats().zone_bytes > limit && start.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(5));
        }
        let st = HEAP.stats();
        assert!(st.zone_bytes <= limit, "after {:?}: {st:?}", start.elapsed());
        assert!(st.zone_os_calls > calls, "the reaper unmapped nothing: {st:?}");
        HEAP.check_my_slot().unwrap();
    });
    t.join().unwrap();
}

#[test]
fn fork_while_other_threads_allocate_leaves_a_usable_allocator() {
    static HEAP: Slab = Slab::with_config(Config { reap_ms: 1, ..Config::DEFAULT });
    static STOP: AtomicBool = AtomicBool::new(false);
    // Enough to start the reaper, so forks also meet it mid-round.
    let warm: Vec<_> =
        (0..REAPER_AFTER_BYTES / 512 + 64).map(|_| HEAP.alloc(layout(512, 8))).collect();
    let workers: Vec<_> = (0..2)
        .map(|w| {
            thread::spawn(move || {
                let mut live = Vec::new();
                let mut i = 0u64;
                let start = Instant::now();
                while !STOP.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(20) {
                    i += 1;
                    live.push(HEAP.alloc(layout(16 << (i % 9), 8)) as usize);
                    if live.len() > 2000 + w * 100 {
                        for p in live.drain(..) {
                            // SAFETY: live blocks of HEAP.
                            unsafe { HEAP.dealloc(p as *mut u8) };
                        }
                        // Exercise the shared and creation paths too.
                        HEAP.cleanup();
                    }
                }
                for p in live {
                    // SAFETY: live.
                    unsafe { HEAP.dealloc(p as *mut u8) };
                }
            })
        })
        .collect();
    for round in 0..20 {
        // SAFETY: the child only uses HEAP (which allocates nothing from the global
        // allocator) and raw system calls, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let mut ok = true;
            let mut ps = [0usize; 512];
            for (i, p) in ps.iter_mut().enumerate() {
                let q = HEAP.alloc(layout(8 + i * 40, 8));
                ok &= !q.is_null();
                // SAFETY: a fresh block of at least one byte.
                unsafe { q.write(i as u8) };
                *p = q as usize;
            }
            for (i, &p) in ps.iter().enumerate() {
                // SAFETY: live blocks written above.
                ok &= unsafe { (p as *const u8).read() } == i as u8;
                // SAFETY: live.
                unsafe { HEAP.dealloc(p as *mut u8) };
            }
            HEAP.cleanup();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let start = Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: waiting for our own child.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r == pid {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                // SAFETY: killing our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                STOP.store(true, Ordering::Relaxed);
                panic!("round {round}: the forked child hung (allocator lock inherited held?)");
            }
            thread::sleep(Duration::from_millis(1));
        }
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "round {round}: child status {status:#x}"
        );
    }
    STOP.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    for p in warm {
        // SAFETY: live.
        unsafe { HEAP.dealloc(p) };
    }
}

#[test]
fn released_zones_are_reused_before_the_reaper_unmaps_them() {
    // A reaper that runs, but not within this test: released zones wait for it.
    static HEAP: Slab = Slab::with_config(Config { reap_ms: 60_000, ..Config::DEFAULT });
    let n = 2 * REAPER_AFTER_BYTES / 256;
    let mut ps: Vec<_> = (0..n).map(|_| HEAP.alloc(layout(256, 8))).collect();
    // One more slow path, now that the instance is big enough to start its reaper.
    let q = HEAP.alloc(layout(5000, 8));
    assert!(HEAP.reaper_running());
    for round in 0..5 {
        for p in ps.drain(..) {
            // SAFETY: live blocks of HEAP.
            unsafe { HEAP.dealloc(p) };
        }
        let st = HEAP.stats();
        assert!(st.releasing_zones > 32, "round {round}: {st:?}");
        let calls = st.zone_os_calls;
        ps = (0..n).map(|_| HEAP.alloc(layout(256, 8))).collect();
        let st = HEAP.stats();
        assert_eq!(
            st.zone_os_calls, calls,
            "round {round}: zones were unmapped and mapped again: {st:?}"
        );
        assert_eq!(st.releasing_zones, 0, "round {round}: {st:?}");
    }
    for p in ps {
        // SAFETY: live.
        unsafe { HEAP.dealloc(p) };
    }
    // SAFETY: live.
    unsafe { HEAP.dealloc(q) };
    HEAP.trim();
    assert_eq!(HEAP.stats().zone_bytes, 0);
}

/// `trim` waits for a reaper round in progress. The reaper takes cached large
/// mappings off the cache and unmaps them after; a trim that did not wait could find
/// the cache empty and return while such a mapping was still mapped and counted.
/// With the reaper running every millisecond, every trim of a heap with nothing
/// live must leave no large bytes counted.
#[test]
fn trim_leaves_nothing_mapped_while_the_reaper_runs() {
    static HEAP: Slab = Slab::with_config(Config { reap_ms: 1, ..Config::DEFAULT });
    // Enough zones to start the reaper, then give them back.
    let n = 2 * REAPER_AFTER_BYTES / 256;
    let ps: Vec<_> = (0..n).map(|_| HEAP.alloc(layout(256, 8))).collect();
    let q = HEAP.alloc(layout(4000, 8));
    for p in ps {
        // SAFETY: live blocks of HEAP.
        unsafe { HEAP.dealloc(p) };
    }
    // SAFETY: live.
    unsafe { HEAP.dealloc(q) };
    assert!(HEAP.reaper_running(), "the reaper did not start");
    let start = Instant::now();
    let mut rounds = 0u32;
    while rounds < 20_000 && start.elapsed() < Duration::from_secs(3) {
        // Large blocks of a few sizes, freed into the cache, which the reaper
        // empties a round after they arrive.
        let sizes = [300_000, 200_000, 700_000];
        let bs: Vec<_> = sizes.iter().map(|&s| HEAP.alloc(layout(s, 8))).collect();
        for b in bs {
            // SAFETY: live blocks of HEAP.
            unsafe { HEAP.dealloc(b) };
        }
        if rounds % 4 == 0 {
            thread::sleep(Duration::from_micros(200));
        }
        HEAP.trim();
        let st = HEAP.stats();
        assert_eq!(st.large_bytes, 0, "after round {rounds}: {st:?}");
        rounds += 1;
    }
}
