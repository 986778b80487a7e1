//! The passive IPI to the owner CPU: remote frees by a thread running as a dfly-ipi
//! CPU (per zone: into zones that had dropped off their owner's list; batched: a batch
//! landing in an empty inbound stack) send the owner a passive IPI, and the owner
//! services its mailbox at its next poll without allocating.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use dfly_ipi::Crossbar;

use super::layout;
use crate::class::{chunks_per_zone, class_index, ZONE_SIZE};
use crate::{Config, RemoteMode, Slab, Stats};

/// CPU 0 fills three zones of 64-byte chunks; CPU 1 frees them all and exits. Checks
/// what `sent` says about the counters before CPU 0 polls, then polls (no allocation)
/// until an IPI has serviced the mailbox, and checks the zones came back.
fn owner_polls_and_gets_its_zones_back(heap: &'static Slab, sent: impl Fn(&Stats) -> bool) {
    let xb = Crossbar::new(2).unwrap();
    let (to_freer, blocks) = mpsc::channel::<Vec<usize>>();
    let xb1 = xb.clone();
    let freer = thread::spawn(move || {
        let _cpu = xb1.attach(1).unwrap();
        for p in blocks.recv().unwrap() {
            // SAFETY: live blocks of `heap` handed to us.
            unsafe { heap.dealloc(p as *mut u8) };
        }
    });
    let cpu = xb.attach(0).unwrap();
    assert_eq!(heap.stats().ipis, 0);
    let per_zone = chunks_per_zone(class_index(64).unwrap(), ZONE_SIZE);
    let ps: Vec<usize> = (0..3 * per_zone).map(|_| heap.alloc(layout(64, 8)) as usize).collect();
    assert_eq!(heap.my_slot_index(), Some(0), "CPU 0 uses its CPU slot");
    to_freer.send(ps).unwrap();
    freer.join().unwrap();
    let st = heap.stats();
    assert!(sent(&st), "{st:?}");
    assert_eq!(st.ipi_services, 0, "nothing ran before the owner polled: {st:?}");
    let start = Instant::now();
    while heap.stats().ipi_services == 0 && start.elapsed() < Duration::from_secs(5) {
        cpu.poll();
        thread::sleep(Duration::from_millis(1));
    }
    let st = heap.stats();
    assert!(st.ipi_services >= 1, "{st:?}");
    // The zones, now fully free, went to the cache or the release list.
    assert!(st.cached_zones + st.releasing_zones >= 2, "{st:?}");
    assert_eq!(st.in_use, 0, "{st:?}");
    heap.check_my_slot().unwrap();
}

#[test]
fn remote_frees_from_a_cpu_notify_the_owner_cpu_by_passive_ipi() {
    static HEAP: Slab =
        Slab::with_config(Config { reap_ms: 0, remote: RemoteMode::PerZone, ..Config::DEFAULT });
    owner_polls_and_gets_its_zones_back(&HEAP, |st| st.notifications >= 3 && st.ipis >= 3);
}

#[test]
fn batches_from_a_cpu_notify_the_owner_cpu_by_passive_ipi() {
    static HEAP: Slab =
        Slab::with_config(Config { reap_ms: 0, remote: RemoteMode::Batched, ..Config::DEFAULT });
    owner_polls_and_gets_its_zones_back(&HEAP, |st| st.batches >= 3 && st.ipis >= 1);
}
