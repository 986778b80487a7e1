//! The slaballoc suite: dfly-slaballoc against glibc (`std::alloc::System`), mimalloc,
//! snmalloc-rs and tikv-jemallocator, every allocator called through its `GlobalAlloc`
//! impl from the same generic workload functions in one process (none is this binary's
//! `#[global_allocator]`; the harness's own vectors and channels use `System`).
//!
//! Workloads (clean-room Rust versions of the mimalloc-bench ideas described in
//! `shared/reference/alloc.md`; nothing is ported from their code):
//! - `hot_pair/{16,64,256,1024,4096}`: alloc, write a byte, free, repeated (ns per pair);
//! - `batch_{lifo,fifo}/{64,256}`: 10,000 blocks allocated, then freed in reverse or in
//!   the same order (ns per object, alloc and free);
//! - `prodcons/64`: xmalloc-test style; a producer on core 0 allocates 64-byte blocks
//!   and sends them in batches of 4096 through a bounded channel to a consumer on core 1
//!   that frees them (ns per object); dfly also as `dfly-perzone` and `dfly-batched`
//!   (a `Slab` instance with each remote-free design; `dfly` is `SlabAlloc`, the
//!   default configuration);
//! - `larson`: two pinned threads randomly replace blocks of 16..1024 bytes in arrays
//!   of slots, handing one block in 16 to the other thread to free (ns per op, wall
//!   time over both threads' ops); the same three dfly variants;
//! - `churn` (child process per allocator): 200 threads, two at a time, each frees what
//!   the previous ones left, allocates a few hundred blocks, frees half and leaves the
//!   rest (us per thread, RSS after);
//! - `retain` (child process per allocator): 256 MiB of 64..1024-byte blocks freed in
//!   bulk, then the fraction of that memory given back to the OS after 0.1, 1 and 5 s
//!   of light activity; nothing asks the allocator to trim;
//! - `peak_rss` (child process per allocator): a fixed single-threaded random
//!   alloc/free trace of mixed small sizes; VmHWM growth over the trace, and its ratio
//!   to the trace's peak live bytes;
//! - `metadata/{16,64,256}`: dfly only, from a `Slab`'s counters after filling zones:
//!   (slot metadata + bytes before each zone's first chunk) / zone bytes;
//! - `large/{64KiB,1MiB,8MiB}`: alloc, touch every page, free (ns per pair).
//!
//! - `typed/{hot,batch100}`: dfly's typed object cache (`ObjCache` of a 64-byte
//!   struct; get, write, put back) against `slab::Slab` insert/remove, a bumpalo arena
//!   (alloc; reset every 1024 objects, or after each batch) and `Box::new`/drop
//!   (glibc, this binary's allocator): one object at a time, or 100 held then released.
//!
//! Record names match `xtask/src/goals.rs`.
//! Run with `cargo xtask bench slaballoc`; `DFLY_BENCH_ONLY=hot,batch,prodcons,larson,
//! churn,retain,peak,metadata,large,typed` selects cases when calling the binary
//! directly.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::hint::black_box;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use dfly_benches::{median, pin, progress, Mode, Recorder};
use dfly_slaballoc::class::{class_index, first_chunk_offset, ZONE_SIZE};
use dfly_slaballoc::{Config, ObjCache, RemoteMode, Slab, SlabAlloc};
use mimalloc::MiMalloc;
use snmalloc_rs::SnMalloc;
use tikv_jemallocator::Jemalloc as JeMalloc;

const SUITE: &str = "slaballoc";
const GLIBC: &str = "glibc (std System)";
const MIMALLOC: &str = "mimalloc 0.1.52";
const SNMALLOC: &str = "snmalloc-rs 0.7.6";
const JEMALLOC: &str = "tikv-jemallocator 0.7.0";
const SLAB: &str = "slab 0.4.12";
const BUMPALO: &str = "bumpalo 3.20.4";
const BOX: &str = "Box (glibc System)";
/// The hidden first argument that makes this binary a one-case child process.
const CHILD_FLAG: &str = "--slab-child";

// ---- the allocators ----------------------------------------------------------------

/// A `Slab` instance as a `GlobalAlloc`.
struct Inst(&'static Slab);

// SAFETY: forwards to `Slab`, whose alloc/dealloc/realloc keep GlobalAlloc's contract
// (blocks of at least the size and alignment asked, valid until freed).
unsafe impl GlobalAlloc for Inst {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a live block of this instance.
        unsafe { self.0.dealloc(ptr) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is `Slab::realloc`'s.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

static PERZONE: Slab = Slab::with_config(Config { remote: RemoteMode::PerZone, ..Config::DEFAULT });
static BATCHED: Slab = Slab::with_config(Config { remote: RemoteMode::Batched, ..Config::DEFAULT });
/// Used only by the metadata case, so its counters see nothing else.
static META: Slab = Slab::new();
static PERZONE_A: Inst = Inst(&PERZONE);
static BATCHED_A: Inst = Inst(&BATCHED);

/// The allocators under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    /// `SlabAlloc`: the process-wide instance, default configuration.
    Dfly,
    DflyPerZone,
    DflyBatched,
    Glibc,
    Mimalloc,
    Snmalloc,
    Jemalloc,
}

use Which::*;

/// dfly and its four peers.
const MAIN: &[Which] = &[Dfly, Glibc, Mimalloc, Snmalloc, Jemalloc];
/// The cross-thread cases add both remote-free designs as explicit instances.
const REMOTE: &[Which] = &[Dfly, DflyPerZone, DflyBatched, Glibc, Mimalloc, Snmalloc, Jemalloc];

impl Which {
    /// The `impl` string of its records.
    fn name(self) -> &'static str {
        match self {
            Dfly => "dfly",
            DflyPerZone => "dfly-perzone",
            DflyBatched => "dfly-batched",
            Glibc => GLIBC,
            Mimalloc => MIMALLOC,
            Snmalloc => SNMALLOC,
            Jemalloc => JEMALLOC,
        }
    }

    /// Its name on a child's command line.
    fn key(self) -> &'static str {
        match self {
            Dfly => "dfly",
            DflyPerZone => "dfly-perzone",
            DflyBatched => "dfly-batched",
            Glibc => "glibc",
            Mimalloc => "mimalloc",
            Snmalloc => "snmalloc",
            Jemalloc => "jemalloc",
        }
    }

    fn from_key(key: &str) -> Option<Which> {
        REMOTE.iter().copied().find(|w| w.key() == key)
    }

    /// Runs `job` monomorphised for this allocator.
    fn run<J: Job>(self, job: J) -> J::Out {
        match self {
            Dfly => job.run(&SlabAlloc),
            DflyPerZone => job.run(&PERZONE_A),
            DflyBatched => job.run(&BATCHED_A),
            Glibc => job.run(&System),
            Mimalloc => job.run(&MiMalloc),
            Snmalloc => job.run(&SnMalloc),
            Jemalloc => job.run(&JeMalloc),
        }
    }
}

/// A workload generic over the allocator.
trait Job {
    type Out;
    fn run<A: GlobalAlloc + Sync>(self, a: &A) -> Self::Out;
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).expect("valid layout")
}

/// Allocates `l` from `a`, aborting the bench on out-of-memory.
#[inline(always)]
fn get<A: GlobalAlloc>(a: &A, l: Layout) -> *mut u8 {
    // SAFETY: every layout here has a non-zero size.
    let p = unsafe { a.alloc(l) };
    if p.is_null() {
        std::alloc::handle_alloc_error(l);
    }
    p
}

/// Frees a block `get` returned with the same layout.
#[inline(always)]
fn put<A: GlobalAlloc>(a: &A, p: *mut u8, l: Layout) {
    // SAFETY: callers pass a live block of `a` allocated with `l`.
    unsafe { a.dealloc(p, l) }
}

/// Writes one byte of a fresh block so the allocation cannot be elided.
#[inline(always)]
fn touch(p: *mut u8, v: u8) {
    // SAFETY: `p` is a live block of at least one byte.
    unsafe { p.write_volatile(v) }
}

/// A small xorshift64* generator (deterministic traces).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Medians of `reps` runs of `f(i)` for each implementation `i < k`, after one
/// unmeasured warm-up run of each (unless testing). The repetitions are interleaved
/// (every implementation once, then again), so a burst of other load on the machine
/// falls on all of them alike rather than on one.
fn measure_each(mode: Mode, k: usize, mut f: impl FnMut(usize) -> f64) -> Vec<f64> {
    if mode != Mode::Test {
        for i in 0..k {
            black_box(f(i));
        }
    }
    let mut runs = vec![Vec::with_capacity(mode.reps()); k];
    for _ in 0..mode.reps() {
        for (i, v) in runs.iter_mut().enumerate() {
            v.push(f(i));
        }
    }
    runs.iter_mut().map(|v| median(v)).collect()
}

// ---- single-thread speed ------------------------------------------------------------

struct HotPair {
    size: usize,
    n: u64,
}

impl Job for HotPair {
    type Out = f64;
    fn run<A: GlobalAlloc + Sync>(self, a: &A) -> f64 {
        hot_pair(a, self.size, self.n)
    }
}

/// ns per alloc+free pair of one `size`-byte block.
fn hot_pair<A: GlobalAlloc>(a: &A, size: usize, n: u64) -> f64 {
    let l = layout(size);
    let t = Instant::now();
    for i in 0..n {
        let p = get(a, black_box(l));
        touch(p, i as u8);
        put(a, black_box(p), l);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

struct Batch {
    size: usize,
    count: usize,
    rounds: u64,
    fifo: bool,
}

impl Job for Batch {
    type Out = f64;
    fn run<A: GlobalAlloc + Sync>(self, a: &A) -> f64 {
        batch(a, self.size, self.count, self.rounds, self.fifo)
    }
}

/// ns per object: `count` blocks allocated, then all freed (reverse order for LIFO,
/// allocation order for FIFO), `rounds` times.
fn batch<A: GlobalAlloc>(a: &A, size: usize, count: usize, rounds: u64, fifo: bool) -> f64 {
    let l = layout(size);
    let mut ptrs: Vec<*mut u8> = Vec::with_capacity(count);
    let t = Instant::now();
    for r in 0..rounds {
        for _ in 0..count {
            let p = get(a, l);
            touch(p, r as u8);
            ptrs.push(p);
        }
        if fifo {
            for &p in &ptrs {
                put(a, p, l);
            }
        } else {
            for &p in ptrs.iter().rev() {
                put(a, p, l);
            }
        }
        ptrs.clear();
    }
    t.elapsed().as_nanos() as f64 / (rounds as f64 * count as f64)
}

struct Large {
    size: usize,
    n: u64,
}

impl Job for Large {
    type Out = f64;
    fn run<A: GlobalAlloc + Sync>(self, a: &A) -> f64 {
        let l = Layout::from_size_align(self.size, 8).expect("valid layout");
        let t = Instant::now();
        for i in 0..self.n {
            let p = get(a, l);
            for off in (0..self.size).step_by(4096) {
                // SAFETY: `off < size`, inside the block.
                touch(unsafe { p.add(off) }, i as u8);
            }
            put(a, black_box(p), l);
        }
        t.elapsed().as_nanos() as f64 / self.n as f64
    }
}

// ---- cross-thread speed -------------------------------------------------------------

struct ProdCons {
    total: u64,
    batch: usize,
}

impl Job for ProdCons {
    type Out = f64;
    fn run<A: GlobalAlloc + Sync>(self, a: &A) -> f64 {
        prodcons(a, self.total, self.batch)
    }
}

/// ns per object: the producer (core 0) allocates 64-byte blocks in batches sent
/// through a bounded channel of 8 batches; the consumer (core 1) frees them. Batch
/// vectors are recycled through a return channel, so the channel traffic does not
/// allocate while measuring. Timed from the producer's start to the consumer's end.
fn prodcons<A: GlobalAlloc + Sync>(a: &A, total: u64, batch: usize) -> f64 {
    let l = layout(64);
    let (tx, rx) = mpsc::sync_channel::<Vec<usize>>(8);
    let (back_tx, back_rx) = mpsc::channel::<Vec<usize>>();
    for _ in 0..12 {
        back_tx.send(Vec::with_capacity(batch)).expect("receiver alive");
    }
    let go = Barrier::new(2);
    let (start, end) = std::thread::scope(|s| {
        let go = &go;
        let cons = s.spawn(move || {
            pin(1);
            go.wait();
            for mut v in rx {
                for p in v.drain(..) {
                    put(a, p as *mut u8, l);
                }
                let _ = back_tx.send(v);
            }
            Instant::now()
        });
        let prod = s.spawn(move || {
            pin(0);
            go.wait();
            let t = Instant::now();
            let mut left = total;
            while left > 0 {
                let k = left.min(batch as u64);
                let mut v = back_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(batch));
                for i in 0..k {
                    let p = get(a, l);
                    touch(p, i as u8);
                    v.push(p as usize);
                }
                tx.send(v).expect("consumer alive");
                left -= k;
            }
            t
        });
        (prod.join().expect("producer"), cons.join().expect("consumer"))
    });
    (end - start).as_nanos() as f64 / total as f64
}

struct Larson {
    slots: usize,
    ops: u64,
}

impl Job for Larson {
    type Out = f64;
    fn run<A: GlobalAlloc + Sync>(self, a: &A) -> f64 {
        larson(a, self.slots, self.ops)
    }
}

/// ns per op (wall time over both threads' ops): two pinned threads each keep `slots`
/// blocks of 16..1024 bytes and replace a random one per op; one freed block in 16 is
/// handed to the other thread (in batches of 64 through a channel) to free instead.
fn larson<A: GlobalAlloc + Sync>(a: &A, slots: usize, ops: u64) -> f64 {
    let (tx0, rx0) = mpsc::channel::<Vec<(usize, usize)>>();
    let (tx1, rx1) = mpsc::channel::<Vec<(usize, usize)>>();
    let go = Barrier::new(2);
    let start = Mutex::new(None::<Instant>);
    let free_all = |v: Vec<(usize, usize)>| {
        for (p, sz) in v {
            put(a, p as *mut u8, layout(sz));
        }
    };
    let ends = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (core, (tx, rx)) in [(tx1, rx0), (tx0, rx1)].into_iter().enumerate() {
            let (go, start, free_all) = (&go, &start, &free_all);
            handles.push(s.spawn(move || {
                pin(core);
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (core as u64 + 1));
                let mut arr: Vec<(usize, usize)> = (0..slots)
                    .map(|_| {
                        let sz = 16 + rng.below(1009) as usize;
                        (get(a, layout(sz)) as usize, sz)
                    })
                    .collect();
                let mut out: Vec<(usize, usize)> = Vec::with_capacity(64);
                go.wait();
                start.lock().expect("start lock").get_or_insert_with(Instant::now);
                for i in 0..ops {
                    let r = rng.next();
                    let idx = ((u128::from(r) * slots as u128) >> 64) as usize;
                    let old = arr[idx];
                    if r & 15 == 0 {
                        out.push(old);
                        if out.len() == 64 {
                            let _ = tx.send(std::mem::replace(&mut out, Vec::with_capacity(64)));
                        }
                    } else {
                        put(a, old.0 as *mut u8, layout(old.1));
                    }
                    let sz = 16 + (r >> 32) as usize % 1009;
                    let p = get(a, layout(sz));
                    touch(p, i as u8);
                    arr[idx] = (p as usize, sz);
                    if i % 256 == 0 {
                        while let Ok(v) = rx.try_recv() {
                            free_all(v);
                        }
                    }
                }
                let _ = tx.send(out);
                drop(tx);
                // Free what the other thread hands over until it is done.
                for v in rx {
                    free_all(v);
                }
                let end = Instant::now();
                free_all(arr);
                end
            }));
        }
        handles.into_iter().map(|h| h.join().expect("larson thread")).collect::<Vec<_>>()
    });
    let start = start.into_inner().expect("start lock").expect("started");
    let end = ends.into_iter().max().expect("two threads");
    (end - start).as_nanos() as f64 / (2 * ops) as f64
}

// ---- metadata ----------------------------------------------------------------------

/// dfly's metadata fraction for `size`-byte blocks: fills `bytes` of zones from the
/// `META` instance on this thread and reads its counters.
fn metadata(size: usize, bytes: usize) -> Option<f64> {
    let l = layout(size);
    let class = class_index(size)?;
    let n = bytes / size;
    let mut ptrs = Vec::with_capacity(n);
    for _ in 0..n {
        let p = META.alloc(l);
        if p.is_null() {
            break;
        }
        ptrs.push(p);
    }
    let st = META.stats();
    let zones = st.zone_bytes / ZONE_SIZE;
    let meta = st.meta_bytes + zones * first_chunk_offset(class);
    for p in ptrs {
        // SAFETY: a live block of META.
        unsafe { META.dealloc(p) };
    }
    META.trim();
    (st.zone_bytes > 0).then(|| meta as f64 / st.zone_bytes as f64)
}

// ---- typed object cache ------------------------------------------------------------

/// The pooled type: 64 bytes.
#[derive(Clone, Copy)]
struct Obj64 {
    w: [u64; 8],
}

const OBJ64: Obj64 = Obj64 { w: [0; 8] };

/// ns per object for `n` objects taken and given back `batch` at a time (`batch` 1:
/// one object in use at a time), by dfly's ObjCache, slab, bumpalo and Box.
fn typed(mode: Mode, n: u64, batch: usize) -> [(&'static str, f64); 4] {
    let rounds = (n / batch as u64).max(1);
    let per = |t: Instant| t.elapsed().as_nanos() as f64 / (rounds * batch as u64) as f64;
    let cache = ObjCache::new(|| OBJ64);
    let dfly = || {
        let mut held = Vec::with_capacity(batch);
        let t = Instant::now();
        for r in 0..rounds {
            for i in 0..batch {
                let mut o = cache.get();
                o.w[i & 7] = r;
                held.push(black_box(o));
            }
            held.clear();
        }
        per(t)
    };
    let mut pool: slab::Slab<Obj64> = slab::Slab::with_capacity(batch);
    let mut slab = || {
        let mut keys = Vec::with_capacity(batch);
        let t = Instant::now();
        for r in 0..rounds {
            for i in 0..batch {
                let k = pool.insert(OBJ64);
                pool[k].w[i & 7] = r;
                keys.push(black_box(k));
            }
            for k in keys.drain(..) {
                black_box(pool.remove(k));
            }
        }
        per(t)
    };
    let mut arena = bumpalo::Bump::new();
    let mut bump = || {
        let t = Instant::now();
        let mut since_reset = 0;
        for r in 0..rounds {
            for i in 0..batch {
                let o = arena.alloc(OBJ64);
                o.w[i & 7] = r;
                black_box(o);
            }
            since_reset += batch;
            if batch > 1 || since_reset >= 1024 {
                arena.reset();
                since_reset = 0;
            }
        }
        per(t)
    };
    let boxed = || {
        let mut held = Vec::with_capacity(batch);
        let t = Instant::now();
        for r in 0..rounds {
            for i in 0..batch {
                let mut o = Box::new(OBJ64);
                o.w[i & 7] = r;
                held.push(black_box(o));
            }
            held.clear();
        }
        per(t)
    };
    let v = measure_each(mode, 4, |i| match i {
        0 => dfly(),
        1 => slab(),
        2 => bump(),
        _ => boxed(),
    });
    [("dfly", v[0]), (SLAB, v[1]), (BUMPALO, v[2]), (BOX, v[3])]
}

fn typed_suite(rec: &mut Recorder, mode: Mode) {
    let n = mode.scale(5_000_000);
    for (case, batch, metric) in
        [("typed/hot", 1usize, "ns_per_pair"), ("typed/batch100", 100, "ns_per_object")]
    {
        progress(&format!("slaballoc: {case} ({n} objects of 64 bytes)"));
        for (imp, v) in typed(mode, n, batch) {
            rec.record(case, imp, metric, v, "ns", true);
        }
    }
}

// ---- child processes: RSS over time, churn, peak ------------------------------------

/// Resident bytes now (`/proc/self/statm`).
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// A `kB` field of `/proc/self/status` in bytes (`VmHWM`, `VmRSS`).
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Lets a child use every online core again (the parent's main thread may be pinned).
fn unpin() {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.clamp(1, 1024) as usize;
    // SAFETY: cpu_set_t is a plain bitmask; all-zero is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for c in 0..n.min(libc::CPU_SETSIZE as usize) {
        // SAFETY: `c` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is initialised and of the size passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

const MIB: f64 = 1024.0 * 1024.0;

struct Retain {
    bytes: usize,
    waits: [Duration; 3],
}

impl Job for Retain {
    type Out = Vec<(String, f64)>;
    fn run<A: GlobalAlloc + Sync>(self, a: &A) -> Self::Out {
        // Block sizes cycle over 64, 128, 256, 512 and 1024 bytes.
        let size = |i: usize| 64usize << (i % 5);
        let mut n = 0;
        let mut total = 0;
        while total < self.bytes {
            total += size(n);
            n += 1;
        }
        // The pointer table is made resident before the baseline.
        let mut ptrs: Vec<usize> = vec![1; n];
        black_box(&mut ptrs);
        let base = rss_bytes();
        for (i, slot) in ptrs.iter_mut().enumerate() {
            let p = get(a, layout(size(i)));
            touch(p, i as u8);
            *slot = p as usize;
        }
        let peak = rss_bytes();
        for (i, &p) in ptrs.iter().enumerate() {
            put(a, p as *mut u8, layout(size(i)));
        }
        let freed_at = Instant::now();
        let grown = peak.saturating_sub(base).max(1) as f64;
        let mut out = vec![("rss_grown_mb".to_string(), grown / MIB)];
        let names = ["returned_frac_0.1s", "returned_frac_1s", "returned_frac_5s"];
        let mut i = 0u64;
        for (name, wait) in names.iter().zip(self.waits) {
            // Light activity until the mark: a few small blocks every millisecond.
            while freed_at.elapsed() < wait {
                for k in 0..8 {
                    let p = get(a, layout(64 + 64 * (k % 4)));
                    touch(p, i as u8);
                    put(a, black_box(p), layout(64 + 64 * (k % 4)));
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let back = peak.saturating_sub(rss_bytes()) as f64;
            out.push((name.to_string(), (back / grown).clamp(0.0, 1.0)));
        }
        out
    }
}

struct Churn {
    threads: usize,
    blocks: usize,
}

impl Job for Churn {
    type Out = Vec<(String, f64)>;
    fn run<A: GlobalAlloc + Sync>(self, a: &A) -> Self::Out {
        let left: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
        let t = Instant::now();
        let mut spawned = 0;
        while spawned < self.threads {
            std::thread::scope(|s| {
                for k in 0..2.min(self.threads - spawned) {
                    let left = &left;
                    let seed = (spawned + k) as u64 + 1;
                    s.spawn(move || {
                        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                        // Free what earlier threads left behind.
                        let theirs = std::mem::take(&mut *left.lock().expect("left lock"));
                        for (p, sz) in theirs {
                            put(a, p as *mut u8, layout(sz));
                        }
                        let mut mine = Vec::with_capacity(self.blocks);
                        for i in 0..self.blocks {
                            let sz = 16 + rng.below(497) as usize;
                            let p = get(a, layout(sz));
                            touch(p, i as u8);
                            mine.push((p as usize, sz));
                        }
                        let mut keep = Vec::with_capacity(self.blocks / 2 + 1);
                        for (i, (p, sz)) in mine.into_iter().enumerate() {
                            if i % 2 == 0 {
                                put(a, p as *mut u8, layout(sz));
                            } else {
                                keep.push((p, sz));
                            }
                        }
                        left.lock().expect("left lock").extend(keep);
                    });
                }
            });
            spawned += 2;
        }
        for (p, sz) in left.into_inner().expect("left lock") {
            put(a, p as *mut u8, layout(sz));
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / self.threads as f64;
        vec![
            ("us_per_thread".to_string(), us),
            ("rss_after_mb".to_string(), rss_bytes() as f64 / MIB),
        ]
    }
}

struct Peak {
    ops: u64,
    high: usize,
}

impl Job for Peak {
    type Out = Vec<(String, f64)>;
    fn run<A: GlobalAlloc + Sync>(self, a: &A) -> Self::Out {
        // The live table, resident before the baseline.
        let mut live: Vec<(usize, usize)> = vec![(1, 1); self.high];
        black_box(&mut live);
        live.clear();
        // Reset VmHWM to the current RSS (Linux >= 4.0), then take the baseline.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let base = status_bytes("VmRSS").max(rss_bytes());
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let (mut bytes, mut peak_bytes) = (0usize, 0usize);
        // The live count follows a sawtooth between high/10 and high, twice.
        let period = (self.ops / 2).max(2);
        for i in 0..self.ops {
            let phase = i % period;
            let up = phase < period / 2;
            let target = if up {
                self.high / 10 + (self.high * 9 / 10) * (phase as usize) / (period as usize / 2)
            } else {
                self.high
                    - (self.high * 9 / 10) * (phase - period / 2) as usize / (period as usize / 2)
            };
            if live.len() < target || live.is_empty() {
                let r = rng.below(100);
                let sz = if r < 70 {
                    16 + rng.below(49) as usize
                } else if r < 95 {
                    64 + rng.below(449) as usize
                } else {
                    512 + rng.below(3585) as usize
                };
                let p = get(a, layout(sz));
                touch(p, i as u8);
                live.push((p as usize, sz));
                bytes += sz;
                peak_bytes = peak_bytes.max(bytes);
            } else {
                let k = rng.below(live.len() as u64) as usize;
                let (p, sz) = live.swap_remove(k);
                put(a, p as *mut u8, layout(sz));
                bytes -= sz;
            }
        }
        let hwm = status_bytes("VmHWM");
        for (p, sz) in live.drain(..) {
            put(a, p as *mut u8, layout(sz));
        }
        let grown = hwm.saturating_sub(base) as f64;
        vec![
            ("peak_rss_mb".to_string(), grown / MIB),
            ("peak_over_live".to_string(), grown / peak_bytes.max(1) as f64),
            ("peak_live_mb".to_string(), peak_bytes as f64 / MIB),
        ]
    }
}

/// Child side: `--slab-child <case> <allocator> --test|--quick|--full`; prints
/// `metric value` lines on stdout.
fn child_main(args: &[String]) -> ! {
    unpin();
    let mode = Mode::from_args();
    let case = args.first().map(String::as_str).unwrap_or("");
    let Some(which) = args.get(1).and_then(|k| Which::from_key(k)) else {
        eprintln!("slaballoc child: bad arguments {args:?}");
        std::process::exit(2);
    };
    let out = match case {
        "retain" => {
            let (bytes, waits) = match mode {
                Mode::Test => (4 << 20, [10, 50, 100]),
                _ => (256 << 20, [100, 1000, 5000]),
            };
            which.run(Retain { bytes, waits: waits.map(Duration::from_millis) })
        }
        "churn" => which.run(Churn {
            threads: match mode {
                Mode::Test => 20,
                Mode::Quick => 200,
                Mode::Full => 1000,
            },
            blocks: 400,
        }),
        "peak" => which.run(Peak {
            ops: mode.scale(4_000_000),
            high: if mode == Mode::Test { 2_000 } else { 200_000 },
        }),
        _ => {
            eprintln!("slaballoc child: unknown case {case:?}");
            std::process::exit(2);
        }
    };
    for (k, v) in out {
        println!("{k} {v}");
    }
    std::process::exit(0)
}

/// Parent side: runs one child and returns its `metric value` lines (empty, with a
/// message, if the child failed).
fn run_child(mode: Mode, case: &str, which: Which) -> HashMap<String, f64> {
    let flag = match mode {
        Mode::Test => "--test",
        Mode::Quick => "--quick",
        Mode::Full => "--full",
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            progress(&format!("slaballoc: cannot find this binary to re-run it: {e}"));
            return HashMap::new();
        }
    };
    let out = Command::new(exe)
        .args([CHILD_FLAG, case, which.key(), flag])
        .env_remove("DFLY_BENCH_OUT")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect(),
        Ok(o) => {
            progress(&format!("slaballoc: {case} child for {} failed: {}", which.name(), o.status));
            HashMap::new()
        }
        Err(e) => {
            progress(&format!("slaballoc: cannot start the {case} child: {e}"));
            HashMap::new()
        }
    }
}

// ---- the suite -----------------------------------------------------------------------

fn hot_suite(rec: &mut Recorder, mode: Mode) {
    let n = mode.scale(5_000_000);
    for size in [16usize, 64, 256, 1024, 4096] {
        progress(&format!("slaballoc: hot_pair/{size} ({n} pairs x {} reps)", mode.reps()));
        let case = format!("hot_pair/{size}");
        let v = measure_each(mode, MAIN.len(), |i| MAIN[i].run(HotPair { size, n }));
        for (w, v) in MAIN.iter().zip(v) {
            rec.record(&case, w.name(), "ns_per_pair", v, "ns", true);
        }
    }
}

fn batch_suite(rec: &mut Recorder, mode: Mode) {
    let count = 10_000;
    let rounds = mode.scale(300);
    for (order, fifo) in [("lifo", false), ("fifo", true)] {
        for size in [64usize, 256] {
            progress(&format!("slaballoc: batch_{order}/{size} ({rounds} rounds of {count})"));
            let case = format!("batch_{order}/{size}");
            let (mut calls, mut runs) = (0u64, 0u64);
            let v = measure_each(mode, MAIN.len(), |i| {
                let w = MAIN[i];
                let before = SlabAlloc.heap().stats().zone_os_calls;
                let v = w.run(Batch { size, count, rounds, fifo });
                if w == Which::Dfly {
                    calls += SlabAlloc.heap().stats().zone_os_calls - before;
                    runs += 1;
                }
                v
            });
            for (w, v) in MAIN.iter().zip(v) {
                rec.record(&case, w.name(), "ns_per_object", v, "ns", true);
            }
            // dfly's zone mmap/munmap calls per round: hysteresis at work (or not).
            let per_round = calls as f64 / (runs.max(1) * rounds) as f64;
            rec.record(&case, "dfly", "zone_os_calls_per_round", per_round, "calls", true);
        }
    }
}

fn prodcons_suite(rec: &mut Recorder, mode: Mode) {
    let total = mode.scale(4_000_000);
    progress(&format!("slaballoc: prodcons/64 ({total} objects, batches of 4096, cores 0 -> 1)"));
    let v = measure_each(mode, REMOTE.len(), |i| REMOTE[i].run(ProdCons { total, batch: 4096 }));
    for (w, v) in REMOTE.iter().zip(v) {
        rec.record("prodcons/64", w.name(), "ns_per_object", v, "ns", true);
    }
}

fn larson_suite(rec: &mut Recorder, mode: Mode) {
    let ops = mode.scale(2_000_000);
    let slots = if mode == Mode::Test { 500 } else { 5000 };
    progress(&format!("slaballoc: larson ({slots} slots, {ops} ops per thread, 2 threads)"));
    let v = measure_each(mode, REMOTE.len(), |i| REMOTE[i].run(Larson { slots, ops }));
    for (w, v) in REMOTE.iter().zip(v) {
        rec.record("larson", w.name(), "ns_per_op", v, "ns", true);
    }
}

fn large_suite(rec: &mut Recorder, mode: Mode) {
    for (label, size, quick) in
        [("64KiB", 64usize << 10, 5_000u64), ("1MiB", 1 << 20, 500), ("8MiB", 8 << 20, 60)]
    {
        let n = match mode {
            Mode::Test => 8,
            _ => mode.scale(quick),
        };
        progress(&format!("slaballoc: large/{label} ({n} pairs, every page touched)"));
        let case = format!("large/{label}");
        let v = measure_each(mode, MAIN.len(), |i| MAIN[i].run(Large { size, n }));
        for (w, v) in MAIN.iter().zip(v) {
            rec.record(&case, w.name(), "ns_per_pair", v, "ns", true);
        }
    }
}

fn metadata_suite(rec: &mut Recorder, mode: Mode) {
    let bytes = if mode == Mode::Test { 16 << 20 } else { 64 << 20 };
    for size in [16usize, 64, 256] {
        progress(&format!("slaballoc: metadata/{size} ({} MiB of blocks)", bytes >> 20));
        match metadata(size, bytes) {
            Some(f) => {
                rec.record(&format!("metadata/{size}"), "dfly", "meta_frac", f, "fraction", true)
            }
            None => progress("slaballoc: metadata: no zone was mapped"),
        }
    }
}

fn child_suite(rec: &mut Recorder, mode: Mode, case: &str, what: &str) {
    for &w in MAIN {
        progress(&format!("slaballoc: {case}/{} ({what}, child process)", w.key()));
        let got = run_child(mode, case, w);
        let mut keys: Vec<&String> = got.keys().collect();
        keys.sort();
        for k in keys {
            let (unit, lower) = match k.as_str() {
                m if m.starts_with("returned_frac") => ("fraction", false),
                m if m.ends_with("_mb") => ("MiB", true),
                "us_per_thread" => ("us", true),
                _ => ("x", true),
            };
            let record_case = if case == "peak" { "peak_rss" } else { case };
            rec.record(record_case, w.name(), k, got[k], unit, lower);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == CHILD_FLAG) {
        child_main(&args[i + 1..]);
    }
    let mode = Mode::from_args();
    dfly_benches::cores();
    let mut rec = Recorder::new(SUITE);
    progress(&format!("slaballoc suite, mode {mode:?}"));
    let only = std::env::var("DFLY_BENCH_ONLY").unwrap_or_default();
    let want = |name: &str| only.is_empty() || only.split(',').any(|w| w == name);
    if want("metadata") {
        metadata_suite(&mut rec, mode);
    }
    // Child processes first, while the parent's heaps are small (children inherit
    // nothing but the binary, and they unpin themselves).
    if want("retain") {
        child_suite(&mut rec, mode, "retain", "bulk free, then RSS over time");
    }
    if want("peak") {
        child_suite(&mut rec, mode, "peak", "single-thread trace, VmHWM");
    }
    if want("churn") {
        child_suite(&mut rec, mode, "churn", "short-lived threads");
    }
    if want("prodcons") {
        prodcons_suite(&mut rec, mode);
    }
    if want("larson") {
        larson_suite(&mut rec, mode);
    }
    pin(0);
    if want("hot") {
        hot_suite(&mut rec, mode);
    }
    if want("batch") {
        batch_suite(&mut rec, mode);
    }
    if want("large") {
        large_suite(&mut rec, mode);
    }
    if want("typed") {
        typed_suite(&mut rec, mode);
    }
    progress(&format!("slaballoc suite done: {} records", rec.count()));
}
