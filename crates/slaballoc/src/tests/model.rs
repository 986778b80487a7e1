//! Model-based test: random alloc/free/realloc sequences with random sizes and
//! alignments, blocks handed to and from other threads, checked against a shadow map
//! (no overlap, alignment, contents kept by realloc); after the run and a trim,
//! nothing is in use and no zone is mapped.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;

use proptest::prelude::*;

use super::{check, fill, layout};
use crate::{Config, RemoteMode, Slab};

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        size: usize,
        align_log: u32,
    },
    Free {
        pick: usize,
    },
    Realloc {
        pick: usize,
        size: usize,
    },
    /// Hand a block to the other thread, which frees it.
    Handoff {
        pick: usize,
    },
    /// Ask the other thread for a block it allocated.
    Fetch {
        size: usize,
    },
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..256, 3 => 256usize..20_000, 1 => 20_000usize..300_000]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (size(), 0u32..22).prop_map(|(size, a)| Op::Alloc { size, align_log: if a > 12 { a % 13 } else { a } }),
        1 => (size(), 13u32..22).prop_map(|(size, align_log)| Op::Alloc { size, align_log }),
        2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => (any::<usize>(), size()).prop_map(|(pick, size)| Op::Realloc { pick, size }),
        1 => any::<usize>().prop_map(|pick| Op::Handoff { pick }),
        1 => size().prop_map(|size| Op::Fetch { size }),
    ]
}

struct Block {
    addr: usize,
    size: usize,
    align: usize,
    tag: u64,
}

enum Req {
    Free(usize),
    Alloc(usize, mpsc::Sender<usize>),
}

fn run(heap: &'static Slab, ops: Vec<Op>) {
    let (tx, rx) = mpsc::channel::<Req>();
    let other = thread::spawn(move || {
        for r in rx {
            match r {
                // SAFETY: given up by the model thread.
                Req::Free(p) => unsafe { heap.dealloc(p as *mut u8) },
                Req::Alloc(size, back) => {
                    let p = heap.alloc(layout(size, 8));
                    // SAFETY: fresh block.
                    unsafe { fill(p, size, p as u64) };
                    back.send(p as usize).unwrap();
                }
            }
        }
    });
    let mut live: Vec<Block> = Vec::new();
    let mut shadow: BTreeMap<usize, usize> = BTreeMap::new();
    let mut next_tag = 1u64;
    let insert = |shadow: &mut BTreeMap<usize, usize>, b: &Block| {
        let len = b.size.max(1);
        if let Some((&a, &l)) = shadow.range(..=b.addr).next_back() {
            assert!(a + l <= b.addr, "overlap with block at {a:#x}");
        }
        if let Some((&a, _)) = shadow.range(b.addr..).next() {
            assert!(b.addr + len <= a, "overlap with block at {a:#x}");
        }
        shadow.insert(b.addr, len);
    };
    for op in ops {
        match op {
            Op::Alloc { size, align_log } => {
                let align = 1usize << align_log;
                let p = heap.alloc(layout(size, align));
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "misaligned: size {size} align {align}");
                let b = Block { addr: p as usize, size, align, tag: next_tag };
                next_tag += 1;
                // SAFETY: fresh block of `size` bytes.
                unsafe { fill(p, size, b.tag) };
                insert(&mut shadow, &b);
                live.push(b);
            }
            Op::Free { pick } if !live.is_empty() => {
                let b = live.swap_remove(pick % live.len());
                shadow.remove(&b.addr);
                // SAFETY: live block we own.
                unsafe {
                    check(b.addr as *mut u8, b.size, b.tag);
                    heap.dealloc(b.addr as *mut u8);
                }
            }
            Op::Realloc { pick, size } if !live.is_empty() => {
                let i = pick % live.len();
                let b = &mut live[i];
                shadow.remove(&b.addr);
                // SAFETY: live block allocated with this alignment.
                let q = unsafe { heap.realloc(b.addr as *mut u8, layout(b.size, b.align), size) };
                assert!(!q.is_null());
                assert_eq!(q as usize % b.align, 0, "realloc lost alignment");
                // SAFETY: the kept prefix, then a fresh fill of the whole block.
                unsafe {
                    check(q, b.size.min(size), b.tag);
                    fill(q, size, b.tag);
                }
                b.addr = q as usize;
                b.size = size;
                let b = live.swap_remove(i);
                insert(&mut shadow, &b);
                live.push(b);
            }
            Op::Handoff { pick } if !live.is_empty() => {
                let b = live.swap_remove(pick % live.len());
                shadow.remove(&b.addr);
                // SAFETY: live block we own.
                unsafe { check(b.addr as *mut u8, b.size, b.tag) };
                tx.send(Req::Free(b.addr)).unwrap();
            }
            Op::Fetch { size } => {
                let (btx, brx) = mpsc::channel();
                tx.send(Req::Alloc(size, btx)).unwrap();
                let p = brx.recv().unwrap();
                // SAFETY: the other thread filled it and gave it to us.
                unsafe { check(p as *mut u8, size, p as u64) };
                let b = Block { addr: p, size, align: 8, tag: p as u64 };
                insert(&mut shadow, &b);
                live.push(b);
            }
            _ => {}
        }
    }
    for b in live {
        // SAFETY: live blocks we own.
        unsafe {
            check(b.addr as *mut u8, b.size, b.tag);
            heap.dealloc(b.addr as *mut u8);
        }
    }
    drop(tx);
    other.join().unwrap();
    // Checks the list invariants if this thread has a slot (a sequence of only large
    // blocks and fetches never leases one).
    let _ = heap.check_my_slot();
    heap.trim();
    let st = heap.stats();
    assert_eq!(st.in_use, 0, "{st:?}");
    assert_eq!(st.zone_bytes, 0, "{st:?}");
    assert_eq!(st.large_bytes, 0, "{st:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn model_per_zone(ops in proptest::collection::vec(op(), 1..400)) {
        static HEAP: Slab = Slab::with_config(Config { remote: RemoteMode::PerZone, ..Config::DEFAULT });
        run(&HEAP, ops);
    }

    #[test]
    fn model_batched(ops in proptest::collection::vec(op(), 1..400)) {
        static HEAP: Slab =
            Slab::with_config(Config {
                remote: RemoteMode::Batched,
                batch_bytes: 256,
                zone_rels_thresh: 1,
                ..Config::DEFAULT
            });
        run(&HEAP, ops);
    }
}
