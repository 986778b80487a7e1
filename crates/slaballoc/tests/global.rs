//! The allocator installed as this test binary's `#[global_allocator]`: everything the
//! standard library and the test harness allocate goes through it, so these tests run
//! std's collections, strings, threads, channels, thread-local destructors and large
//! reallocations on it, and check its counters saw the work.
//!
//! (The whole test suites of dfly-ipi and dfly-namecache also run on the allocator,
//! under `LD_PRELOAD` of the C library: see `cabi/tests/preload.rs`.)

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use dfly_slaballoc::SlabAlloc;

#[global_allocator]
static GLOBAL: SlabAlloc = SlabAlloc;

#[test]
fn std_collections_run_on_it() {
    let before = GLOBAL.heap().stats();
    let mut m: HashMap<String, Vec<u64>> = HashMap::new();
    let mut b = BTreeMap::new();
    let mut q = VecDeque::new();
    for i in 0..50_000u64 {
        m.entry(format!("key-{}", i % 5000)).or_default().push(i);
        b.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i.to_string());
        q.push_back(vec![i as u8; (i % 700) as usize]);
        if q.len() > 1000 {
            q.pop_front();
        }
    }
    assert_eq!(m.len(), 5000);
    assert_eq!(m["key-42"].len(), 10);
    assert_eq!(b.len(), 50_000);
    let st = GLOBAL.heap().stats();
    assert!(st.zone_bytes > 0 && st.in_use > before.in_use, "{st:?}");
    // Growth by realloc, through small classes into large mappings and back.
    let mut v: Vec<u8> = Vec::new();
    for i in 0..(8 << 20) {
        v.push(i as u8);
    }
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u8));
    v.truncate(100);
    v.shrink_to_fit();
    assert_eq!(v.len(), 100);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u8));
}

thread_local! {
    static DTOR: RefCell<Option<Droppy>> = const { RefCell::new(None) };
}

/// Allocates in its destructor, which runs during thread-local teardown.
struct Droppy(Vec<String>);

impl Drop for Droppy {
    fn drop(&mut self) {
        let mut more: Vec<String> = (0..100).map(|i| format!("late {i}")).collect();
        more.append(&mut self.0);
        assert_eq!(more.len(), 200);
    }
}

#[test]
fn threads_channels_and_thread_local_teardown_run_on_it() {
    let shared = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<Vec<String>>();
    let consumer = thread::spawn(move || {
        let mut n = 0;
        for batch in rx {
            n += batch.len();
            drop(batch); // freed on another thread than the one that allocated
        }
        n
    });
    let producers: Vec<_> = (0..4)
        .map(|t| {
            let tx = tx.clone();
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                DTOR.with(|d| {
                    *d.borrow_mut() = Some(Droppy((0..100).map(|i| i.to_string()).collect()))
                });
                for i in 0..200 {
                    tx.send((0..50).map(|j| format!("{t}-{i}-{j}")).collect()).unwrap();
                }
                shared.lock().unwrap().push(Box::new([t as u8; 300]));
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 4 * 200 * 50);
    assert_eq!(shared.lock().unwrap().len(), 4);
    // Many short threads: their slots are drained and adopted.
    for round in 0..50 {
        let h: Vec<_> =
            (0..4).map(|i| thread::spawn(move || vec![round * i; 1000].len())).collect();
        for x in h {
            assert_eq!(x.join().unwrap(), 1000);
        }
    }
    let st = GLOBAL.heap().stats();
    assert!(st.slots <= 16, "thread slots are reused: {st:?}");
}
