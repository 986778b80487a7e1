//! Thread churn (the mleak pattern): 1,000 short threads, each leaving objects for
//! the next ones and for the main thread to free. Slots are adopted, so mapped memory
//! stays bounded, and nothing leaks.

use std::sync::{Arc, Mutex};
use std::thread;

use super::layout;
use crate::{Config, RemoteMode, Slab};

fn churn(heap: &'static Slab) {
    let shelf: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    let mut worst_zone_bytes = 0;
    for wave in 0..125 {
        let hs: Vec<_> = (0..8)
            .map(|t| {
                let shelf = shelf.clone();
                thread::spawn(move || {
                    // Free what earlier threads left, then leave some of our own.
                    let left: Vec<usize> = std::mem::take(&mut *shelf.lock().unwrap());
                    for p in left {
                        // SAFETY: given up by the thread that left it.
                        unsafe { heap.dealloc(p as *mut u8) };
                    }
                    let mut mine = Vec::new();
                    for i in 0..64 {
                        let p = heap.alloc(layout(16 + (wave + t + i) % 500, 8));
                        mine.push(p as usize);
                    }
                    shelf.lock().unwrap().extend(mine.drain(32..));
                    for p in mine {
                        // SAFETY: ours.
                        unsafe { heap.dealloc(p as *mut u8) };
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        worst_zone_bytes = worst_zone_bytes.max(heap.stats().zone_bytes);
    }
    for p in std::mem::take(&mut *shelf.lock().unwrap()) {
        // SAFETY: left by exited threads.
        unsafe { heap.dealloc(p as *mut u8) };
    }
    let st = heap.stats();
    // At most 8 threads live at once: a handful of slots, reused.
    assert!(st.slots <= 16, "{st:?}");
    // Each slot keeps at most a few zones per used class plus 4 cached zones.
    assert!(worst_zone_bytes <= 16 * 48 * crate::class::ZONE_SIZE, "{worst_zone_bytes} {st:?}");
    heap.trim();
    let st = heap.stats();
    assert_eq!(st.in_use, 0, "{st:?}");
    assert_eq!(st.zone_bytes, 0, "{st:?}");
}

#[test]
fn thread_churn_per_zone_is_bounded_and_leak_free() {
    static HEAP: Slab =
        Slab::with_config(Config { remote: RemoteMode::PerZone, ..Config::DEFAULT });
    churn(&HEAP);
}

#[test]
fn thread_churn_batched_is_bounded_and_leak_free() {
    static HEAP: Slab =
        Slab::with_config(Config { remote: RemoteMode::Batched, ..Config::DEFAULT });
    churn(&HEAP);
}
