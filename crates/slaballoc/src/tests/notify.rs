//! The passive IPI to the owner CPU: remote frees by a thread running as a dfly-ipi
//! CPU into zones that had dropped off their owner's list send the owner a passive
//! IPI, and the owner services its mailbox at its next poll without allocating.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use dfly_ipi::Crossbar;

use super::layout;
use crate::class::{chunks_per_zone, class_index, ZONE_SIZE};
use crate::{Config, RemoteMode, Slab};

#[test]
fn remote_frees_from_a_cpu_notify_the_owner_cpu_by_passive_ipi() {
    static HEAP: Slab =
        Slab::with_config(Config { reap_ms: 0, remote: RemoteMode::PerZone, ..Config::DEFAULT });
    let xb = Crossbar::new(2).unwrap();
    let (to_freer, blocks) = mpsc::channel::<Vec<usize>>();
    let (freed_tx, freed) = mpsc::channel::<()>();
    let xb1 = xb.clone();
    let freer = thread::spawn(move || {
        let _cpu = xb1.attach(1).unwrap();
        for p in blocks.recv().unwrap() {
            // SAFETY: live blocks of HEAP handed to us.
            unsafe { HEAP.dealloc(p as *mut u8) };
        }
        freed_tx.send(()).unwrap();
    });
    let cpu = xb.attach(0).unwrap();
    assert_eq!(HEAP.stats().ipis, 0);
    // Three full zones of 64-byte chunks: each drops off the owner's list.
    let per_zone = chunks_per_zone(class_index(64).unwrap(), ZONE_SIZE);
    let ps: Vec<usize> = (0..3 * per_zone).map(|_| HEAP.alloc(layout(64, 8)) as usize).collect();
    assert_eq!(HEAP.my_slot_index(), Some(0), "CPU 0 uses its CPU slot");
    to_freer.send(ps).unwrap();
    freed.recv().unwrap();
    freer.join().unwrap();
    let st = HEAP.stats();
    assert!(st.notifications >= 3 && st.ipis >= 3, "{st:?}");
    assert_eq!(st.ipi_services, 0, "nothing ran before the owner polled: {st:?}");
    assert_eq!(st.cached_zones, 0, "{st:?}");
    // The owner polls (no allocation): the IPIs service its mailbox, and the zones,
    // now fully free, are retired to its cache or the release stack.
    let start = Instant::now();
    while HEAP.stats().ipi_services == 0 && start.elapsed() < Duration::from_secs(5) {
        cpu.poll();
        thread::sleep(Duration::from_millis(1));
    }
    let st = HEAP.stats();
    assert!(st.ipi_services >= 1, "{st:?}");
    assert!(st.cached_zones + st.releasing_zones >= 2, "{st:?}");
    assert_eq!(st.in_use, 0, "{st:?}");
    HEAP.check_my_slot().unwrap();
}

#[test]
fn batches_from_a_cpu_notify_the_owner_cpu_by_passive_ipi() {
    static HEAP: Slab =
        Slab::with_config(Config { reap_ms: 0, remote: RemoteMode::Batched, ..Config::DEFAULT });
    let xb = Crossbar::new(2).unwrap();
    let (to_freer, blocks) = mpsc::channel::<Vec<usize>>();
    let xb1 = xb.clone();
    let freer = thread::spawn(move || {
        let _cpu = xb1.attach(1).unwrap();
        for p in blocks.recv().unwrap() {
            // SAFETY: live blocks of HEAP handed to us.
            unsafe { HEAP.dealloc(p as *mut u8) };
        }
    });
    let cpu = xb.attach(0).unwrap();
    let per_zone = chunks_per_zone(class_index(64).unwrap(), ZONE_SIZE);
    let ps: Vec<usize> = (0..3 * per_zone).map(|_| HEAP.alloc(layout(64, 8)) as usize).collect();
    to_freer.send(ps).unwrap();
    freer.join().unwrap();
    let st = HEAP.stats();
    assert!(st.batches >= 3 && st.ipis >= 1, "{st:?}");
    let start = Instant::now();
    while HEAP.stats().ipi_services == 0 && start.elapsed() < Duration::from_secs(5) {
        cpu.poll();
        thread::sleep(Duration::from_millis(1));
    }
    let st = HEAP.stats();
    assert!(st.ipi_services >= 1, "{st:?}");
    assert!(st.cached_zones + st.releasing_zones >= 2, "{st:?}");
    assert_eq!(st.in_use, 0, "{st:?}");
    HEAP.check_my_slot().unwrap();
}
