//! The namecache suite: dfly-namecache against raw `fstatat(2)` on the same tree in a
//! host directory, a full-path `RwLock<HashMap<PathBuf, _>>`, a concurrent full-path
//! map (dashmap) and a (parent, name) map under one lock, in the same run.
//!
//! Cases: cached lookups at depths 1, 6 and 16 in trees of 10,000 and 1,000,000
//! entries; a negative hit against a positive one; rename of a directory with
//! 10^2..10^5 cached descendants (10^6 with `--full`) against rewriting a full-path
//! map; resident bytes per cached entry; and a flood of distinct misses against the
//! negative cap; create/rename-over churn with the longest index probe after it.
//! `DFLY_BENCH_ONLY=lookup,negative,fullpath,rename,memory,flood,churn` selects cases
//! (`negative` and `fullpath` run with the 10K lookups).

use std::collections::HashMap;
use std::ffi::CString;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use dfly_benches::{median, progress, Mode, Recorder};
use dfly_namecache::{Attr, Backend, Errno, Ino, Kind, MemFs, Namecache, DEFAULT_NEGATIVE_CAP};

const FSTATAT: &str = "fstatat(2)";
const RWMAP: &str = "RwLock<HashMap<PathBuf>>";
const DASHMAP: &str = "dashmap 6 full-path";
const PNMAP: &str = "Mutex<HashMap<(parent,name)>>";
const REALPATH: &str = "realpath(3)";
const UPMAP: &str = "Mutex<HashMap<id,(parent,name)>> climb";

/// Directory chain `/d0/d1/.../d15` with files spread over its levels.
fn chain_paths(total: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut dirs = Vec::new();
    let mut p = Vec::new();
    for i in 0..16 {
        p.extend_from_slice(format!("/d{i}").as_bytes());
        dirs.push(p.clone());
    }
    let mut files = Vec::new();
    let per = (total.saturating_sub(16) / 17).max(1);
    for level in 0..17 {
        let base: &[u8] = if level == 0 { b"" } else { &dirs[level - 1] };
        for j in 0..per {
            let mut f = base.to_vec();
            f.extend_from_slice(format!("/f{j}").as_bytes());
            files.push(f);
        }
    }
    (dirs, files)
}

/// The file probed at `depth` components (depth 1 = `/f0`).
fn probe(depth: usize) -> Vec<u8> {
    let mut p = Vec::new();
    for i in 0..depth - 1 {
        p.extend_from_slice(format!("/d{i}").as_bytes());
    }
    p.extend_from_slice(b"/f0");
    p
}

/// The median time per call of each closure, its repetitions interleaved (each
/// closure runs `n` calls once, then each again, `reps` rounds), so a slow phase of
/// a shared machine lands on all of them rather than on whichever ran then.
/// Each closure is wrapped by [`looped`], so the loop over its calls is compiled
/// with the closure inlined (one dynamic call per repetition, not per call).
fn per_op_interleaved(reps: usize, cases: &mut [(u64, &mut dyn FnMut(u64))]) -> Vec<f64> {
    let mut v: Vec<Vec<f64>> = vec![Vec::with_capacity(reps); cases.len()];
    for _ in 0..reps {
        for ((n, f), out) in cases.iter_mut().zip(v.iter_mut()) {
            let t = Instant::now();
            f(*n);
            out.push(t.elapsed().as_nanos() as f64 / *n as f64);
        }
    }
    v.iter_mut().map(|x| median(x)).collect()
}

/// `f` called `n` times in a loop of its own.
fn looped(mut f: impl FnMut()) -> impl FnMut(u64) {
    move |n| {
        for _ in 0..n {
            f();
        }
    }
}

fn attr(ino: u64) -> Attr {
    Attr { ino, kind: Kind::File, nlink: 1, size: 0, mode: 0o644 }
}

fn lookup_suite(rec: &mut Recorder, mode: Mode, total: usize, label: &str) {
    progress(&format!("namecache: lookup/{label} (building {total} entries)"));
    let (dirs, files) = chain_paths(total);
    let fs = Arc::new(MemFs::new());
    let nc = Namecache::new(fs);
    let root = nc.root();
    for d in &dirs {
        nc.mkdir(&root, d, 0o755).unwrap();
    }
    for f in &files {
        nc.create(&root, f, 0o644).unwrap();
    }
    // Peers hold the same names.
    let rw: RwLock<HashMap<PathBuf, Attr>> = RwLock::new(HashMap::new());
    let dm: dashmap::DashMap<PathBuf, Attr> = dashmap::DashMap::new();
    let pn: Mutex<HashMap<(u64, Vec<u8>), u64>> = Mutex::new(HashMap::new());
    // The (parent, name) map's way back up, for fullpath: id -> (parent, name).
    let up: Mutex<HashMap<u64, (u64, Vec<u8>)>> = Mutex::new(HashMap::new());
    {
        let mut g = rw.write().unwrap();
        let mut pg = pn.lock().unwrap();
        let mut ug = up.lock().unwrap();
        let mut ids: HashMap<Vec<u8>, u64> = HashMap::new();
        ids.insert(Vec::new(), 0);
        for (next, p) in (1u64..).zip(dirs.iter().chain(files.iter())) {
            let pb = PathBuf::from(String::from_utf8_lossy(p).into_owned());
            g.insert(pb.clone(), attr(next));
            dm.insert(pb, attr(next));
            let cut = p.iter().rposition(|&b| b == b'/').unwrap_or(0);
            let parent = ids.get(&p[..cut]).copied().unwrap_or(0);
            pg.insert((parent, p[cut + 1..].to_vec()), next);
            ug.insert(next, (parent, p[cut + 1..].to_vec()));
            ids.insert(p.clone(), next);
        }
    }
    // The host tree for fstatat (only the probed paths need to exist).
    let host = std::env::temp_dir().join(format!("dfly-nc-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&host);
    for depth in [1usize, 6, 16] {
        let p = probe(depth);
        let full = host.join(String::from_utf8_lossy(&p[1..]).into_owned());
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, b"").unwrap();
    }
    let reps = mode.reps();
    let n = mode.scale(200_000);
    for depth in [1usize, 6, 16] {
        let case = format!("lookup/{label}/depth{depth}");
        let p = probe(depth);
        let cpath = CString::new(
            host.join(String::from_utf8_lossy(&p[1..]).into_owned())
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        let pb = PathBuf::from(String::from_utf8_lossy(&p).into_owned());
        let comps: Vec<Vec<u8>> =
            p.split(|&b| b == b'/').filter(|c| !c.is_empty()).map(|c| c.to_vec()).collect();
        let mut dfly = looped(|| {
            black_box(nc.stat(&root, black_box(&p)).unwrap());
        });
        let mut fstatat = looped(|| {
            // SAFETY: a valid NUL-terminated path and a zeroed stat buffer.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above; AT_FDCWD with an absolute path.
            let r = unsafe { libc::fstatat(libc::AT_FDCWD, cpath.as_ptr(), &mut st, 0) };
            black_box(r);
        });
        let mut rwmap = looped(|| {
            black_box(rw.read().unwrap().get(black_box(&pb)).copied());
        });
        let mut dash = looped(|| {
            black_box(dm.get(black_box(&pb)).map(|r| *r));
        });
        let mut pnmap = looped(|| {
            let g = pn.lock().unwrap();
            let mut id = 0u64;
            for c in &comps {
                // The key is built per component, as a real walk must.
                id = *g.get(&(id, c.clone())).unwrap();
            }
            black_box(id);
        });
        let v = per_op_interleaved(
            reps,
            &mut [
                (n, &mut dfly),
                (n / 4, &mut fstatat),
                (n, &mut rwmap),
                (n, &mut dash),
                (n, &mut pnmap),
            ],
        );
        for (peer, v) in ["dfly", FSTATAT, RWMAP, DASHMAP, PNMAP].into_iter().zip(v) {
            rec.record(&case, peer, "ns_per_lookup", v, "ns", true);
        }
    }
    if label == "10k" {
        for depth in [6usize, 16] {
            let case = format!("fullpath/depth{depth}");
            progress(&format!("namecache: {case}"));
            let p = probe(depth);
            let e = nc.nlookup(&root, &p, Default::default()).unwrap();
            assert_eq!(nc.fullpath(&e).path, p);
            let cpath = CString::new(
                host.join(String::from_utf8_lossy(&p[1..]).into_owned())
                    .into_os_string()
                    .into_encoded_bytes(),
            )
            .unwrap();
            let id = {
                let g = pn.lock().unwrap();
                let mut id = 0u64;
                for c in p.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
                    id = g[&(id, c.to_vec())];
                }
                id
            };
            let mut dfly = looped(|| {
                black_box(nc.fullpath(black_box(&e)));
            });
            let mut realpath = looped(|| {
                // SAFETY: a valid NUL-terminated path; a null buffer makes realpath
                // allocate the result, which we free.
                let r = unsafe { libc::realpath(cpath.as_ptr(), std::ptr::null_mut()) };
                assert!(!r.is_null());
                // SAFETY: allocated by realpath with malloc.
                unsafe { libc::free(black_box(r).cast()) };
            });
            let mut upmap = looped(|| {
                // Climb to the root collecting names, then join them, as fullpath
                // does.
                let g = up.lock().unwrap();
                let mut names: Vec<&[u8]> = Vec::new();
                let mut cur = black_box(id);
                while cur != 0 {
                    let (parent, name) = &g[&cur];
                    names.push(name);
                    cur = *parent;
                }
                let mut out = Vec::with_capacity(64);
                for n in names.iter().rev() {
                    out.push(b'/');
                    out.extend_from_slice(n);
                }
                black_box(out);
            });
            let v = per_op_interleaved(
                reps,
                &mut [(n, &mut dfly), (n / 4, &mut realpath), (n, &mut upmap)],
            );
            for (peer, v) in ["dfly", REALPATH, UPMAP].into_iter().zip(v) {
                rec.record(&case, peer, "ns_per_fullpath", v, "ns", true);
            }
        }
        progress("namecache: negative/10k/depth6");
        // A name of the same length as the positive probe's (`x0` for `f0`), so the
        // two differ only in the entry's state, not in bytes hashed and compared.
        let mut miss = probe(6);
        let last = miss.len() - 2;
        miss[last] = b'x';
        let _ = nc.stat(&root, &miss);
        let case = "negative/10k/depth6";
        let hit = probe(6);
        let mut neg = looped(|| {
            black_box(nc.stat(&root, black_box(&miss)).unwrap_err());
        });
        let mut pos = looped(|| {
            black_box(nc.stat(&root, black_box(&hit)).unwrap());
        });
        let v = per_op_interleaved(reps, &mut [(n, &mut neg), (n, &mut pos)]);
        rec.record(case, "dfly", "ns_per_lookup", v[0], "ns", true);
        rec.record(case, "dfly positive hit", "ns_per_lookup", v[1], "ns", true);
    }
    let _ = std::fs::remove_dir_all(&host);
}

fn rename_suite(rec: &mut Recorder, mode: Mode) {
    let sizes: &[usize] = match mode {
        Mode::Test => &[100],
        Mode::Quick => &[100, 10_000, 100_000],
        Mode::Full => &[100, 10_000, 100_000, 1_000_000],
    };
    for &k in sizes {
        progress(&format!("namecache: rename/{k}"));
        let nc = Namecache::new(Arc::new(MemFs::new()));
        let root = nc.root();
        nc.mkdir(&root, b"/a", 0o755).unwrap();
        let mut full: HashMap<PathBuf, Attr> = HashMap::new();
        // k cached descendants: 100 per directory.
        let ndirs = k.div_ceil(100);
        for d in 0..ndirs {
            let dp = format!("/a/s{d}");
            nc.mkdir(&root, dp.as_bytes(), 0o755).unwrap();
            full.insert(PathBuf::from(&dp), attr(d as u64));
            for f in 0..(k / ndirs).min(100) {
                let fp = format!("{dp}/f{f}");
                nc.create(&root, fp.as_bytes(), 0o644).unwrap();
                full.insert(PathBuf::from(&fp), attr(f as u64));
            }
        }
        // Batches of renames back and forth (an even count, so each batch starts
        // from /a); the median batch, like the lookup cases.
        let per_batch = if mode == Mode::Test { 4 } else { 200 };
        let mut v: Vec<f64> = (0..mode.reps().max(3))
            .map(|_| {
                let t = Instant::now();
                for i in 0..per_batch {
                    let (a, b) = if i % 2 == 0 {
                        (&b"/a"[..], &b"/b"[..])
                    } else {
                        (&b"/b"[..], &b"/a"[..])
                    };
                    nc.rename(&root, a, b).unwrap();
                }
                t.elapsed().as_secs_f64() * 1e6 / per_batch as f64
            })
            .collect();
        let us = median(&mut v);
        let case = format!("rename/{k}");
        rec.record(&case, "dfly", "us_per_rename", us, "us", true);
        // The full-path map must rewrite every key under the renamed directory.
        let t = Instant::now();
        let moved: Vec<(PathBuf, Attr)> = full.drain().collect();
        for (p, a) in moved {
            let np = PathBuf::from("/b").join(p.strip_prefix("/a").unwrap());
            full.insert(np, a);
        }
        let us = t.elapsed().as_secs_f64() * 1e6;
        rec.record(&case, "HashMap<PathBuf> rewrite", "us_per_rename", us, "us", true);
    }
}

/// A backend that says every name exists (files) without storing anything, so the
/// namecache's own memory can be measured.
struct Synthetic;

impl Backend for Synthetic {
    fn root(&self) -> Ino {
        1
    }
    fn lookup(&self, _dir: Ino, name: &[u8]) -> Result<Option<Attr>, Errno> {
        if name.starts_with(b"miss") {
            return Ok(None);
        }
        Ok(Some(attr(2 + name.len() as u64)))
    }
    fn lookup_dotdot(&self, _dir: Ino) -> Result<Ino, Errno> {
        Ok(1)
    }
    fn getattr(&self, ino: Ino) -> Result<Attr, Errno> {
        Ok(Attr { ino, kind: Kind::Dir, nlink: 2, size: 0, mode: 0o755 })
    }
    fn create(&self, _: Ino, _: &[u8], _: u32) -> Result<Attr, Errno> {
        Err(Errno::Perm)
    }
    fn mkdir(&self, _: Ino, _: &[u8], _: u32) -> Result<Attr, Errno> {
        Err(Errno::Perm)
    }
    fn symlink(&self, _: Ino, _: &[u8], _: &[u8]) -> Result<Attr, Errno> {
        Err(Errno::Perm)
    }
    fn link(&self, _: Ino, _: Ino, _: &[u8]) -> Result<Attr, Errno> {
        Err(Errno::Perm)
    }
    fn remove(&self, _: Ino, _: &[u8]) -> Result<(), Errno> {
        Err(Errno::Perm)
    }
    fn rmdir(&self, _: Ino, _: &[u8]) -> Result<(), Errno> {
        Err(Errno::Perm)
    }
    fn rename(&self, _: Ino, _: &[u8], _: Ino, _: &[u8]) -> Result<(), Errno> {
        Err(Errno::Perm)
    }
    fn readlink(&self, _: Ino) -> Result<Vec<u8>, Errno> {
        Err(Errno::Inval)
    }
    fn readdir(&self, _: Ino) -> Result<Vec<(Vec<u8>, Attr)>, Errno> {
        Ok(Vec::new())
    }
}

/// Live heap bytes of this process, counted by the allocator below (RSS cannot
/// see memory reused from earlier cases' frees).
static LIVE: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

struct Counting;

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed through.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_bytes() -> i64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

fn memory_suite(rec: &mut Recorder, mode: Mode) {
    let n = if mode == Mode::Test { 2_000 } else { 200_000 };
    progress(&format!("namecache: memory/{n} (heap bytes per cached entry)"));
    // From before the cache is made: its fixed tables (the path hints, 512 KiB)
    // are part of what the entries cost.
    let before = live_bytes();
    let nc = Namecache::new(Arc::new(Synthetic));
    let root = nc.root();
    for i in 0..n {
        // 20-byte names: inline.
        let _ = nc.stat(&root, format!("/entry-{i:014}").as_bytes());
    }
    let after = live_bytes();
    assert_eq!(nc.stats().entries as usize, n);
    let case = format!("memory/{n}");
    rec.record(&case, "dfly", "bytes_per_entry", (after - before) as f64 / n as f64, "B", true);
}

fn flood_suite(rec: &mut Recorder, mode: Mode) {
    let n = mode.scale(2_000_000);
    progress(&format!("namecache: negflood/{n} distinct misses"));
    let cap = DEFAULT_NEGATIVE_CAP;
    let nc = Namecache::new(Arc::new(Synthetic));
    let root = nc.root();
    let mut max = 0u64;
    for i in 0..n {
        let _ = nc.stat(&root, format!("/miss{i}").as_bytes());
        if i % 1024 == 0 {
            max = max.max(nc.stats().negatives);
        }
    }
    max = max.max(nc.stats().negatives);
    let bound = (cap + cap / 8 + 1) as f64;
    rec.record("negflood", "dfly", "max_resident_over_bound", max as f64 / bound, "x", true);
}

/// Create/rename-over churn: a directory of 10,000 files where each iteration creates
/// a temporary name and renames it over one of the files (the replaced entry leaves
/// the index, the temporary one moves), then the longest probe a cached lookup needs
/// in the (parent, name) index, the open-addressed counterpart of a hash chain.
fn churn_suite(rec: &mut Recorder, mode: Mode) {
    let iters = match mode {
        Mode::Test => 20_000u64,
        Mode::Quick => 10_000_000,
        Mode::Full => 10_000_000,
    };
    let files = 10_000u64;
    progress(&format!("namecache: churn ({iters} create/rename-over in a directory of {files})"));
    let nc = Namecache::new(Arc::new(MemFs::new()));
    let root = nc.root();
    nc.mkdir(&root, b"/d", 0o755).expect("mkdir");
    for j in 0..files {
        nc.create(&root, format!("/d/f{j}").as_bytes(), 0o644).expect("create");
    }
    let t0 = std::time::Instant::now();
    let mut longest = nc.index_longest_probe();
    for i in 0..iters {
        let tmp = format!("/d/t{}", i % 64);
        nc.create(&root, tmp.as_bytes(), 0o644).expect("create");
        let target = format!("/d/f{}", i.wrapping_mul(7919) % files);
        nc.rename(&root, tmp.as_bytes(), target.as_bytes()).expect("rename over");
        if i % 1_000_000 == 999_999 {
            longest = longest.max(nc.index_longest_probe());
            progress(&format!("namecache: churn {} done, longest probe so far {longest}", i + 1));
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    longest = longest.max(nc.index_longest_probe());
    rec.record("churn", "dfly", "longest_probe", longest as f64, "cells", true);
    rec.record("churn", "dfly", "us_per_iteration", secs * 1e6 / iters as f64, "us", true);
}

fn main() {
    let mode = Mode::from_args();
    let mut rec = Recorder::new("namecache");
    progress(&format!("namecache suite, mode {mode:?}"));
    let only = std::env::var("DFLY_BENCH_ONLY").unwrap_or_default();
    let want = |name: &str| only.is_empty() || only.split(',').any(|w| w == name);
    if want("lookup") || want("negative") || want("fullpath") {
        lookup_suite(&mut rec, mode, if mode == Mode::Test { 500 } else { 10_000 }, "10k");
        if mode != Mode::Test && want("lookup") {
            lookup_suite(&mut rec, mode, 1_000_000, "1m");
        }
    }
    if want("rename") {
        rename_suite(&mut rec, mode);
    }
    if want("memory") {
        memory_suite(&mut rec, mode);
    }
    if want("flood") {
        flood_suite(&mut rec, mode);
    }
    if want("churn") {
        churn_suite(&mut rec, mode);
    }
    progress(&format!("namecache suite done: {} records", rec.count()));
}
