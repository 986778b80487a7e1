//! The namecache: connected (parent, name) entries over one or more backends, and
//! path lookup.
//!
//! # Structure
//! Entries live in the slot arena of [`crate::slots`]; a handle ([`Ncp`]) is a slot
//! index plus a counted reference. Every entry but the root has a parent and holds
//! one reference on it, so every live entry's parent chain reaches the root and a
//! parent is never freed under a child. Entries are found by a keyed (SipHash,
//! random keys) hash of (parent, name). An entry is *unresolved* (the backend has
//! not been asked), *positive* (it names a file; its attributes are cached),
//! *negative* (the name does not exist; stamped with the negative generation) or
//! *destroyed* (removed or replaced: out of the index, never resolved again, but it
//! keeps its parent link while referenced, so `fullpath` still works).
//!
//! # The hit path
//! [`Namecache::nlookup`] and [`Namecache::stat`] first try the path hint (see
//! [`crate::hints`]): the entry the last lookup of the same bytes from the same
//! start ended at. An exact record of that lookup is accepted by `exact` if the
//! topology sequence has not moved since it was proven and the end entry is
//! still its parent's child of that name; a tag alone only after `hinted` climbs
//! from the entry to the start through parent links, matching names against the
//! path's components from the end, under the same seqlock and topology-sequence
//! checks as the walk below. Failing that they try `fast_walk`, whose end becomes
//! the new hint. It reads the topology sequence, then for each component hashes
//! (parent, name), probes the index and checks the candidate slot's parent, name
//! and state under the slot's seqlock, re-checking the directory's own sequence
//! after each step (a ladder of snapshots), and at the end re-reads the topology
//! sequence. It writes
//! nothing shared: no lock, no reference count, no statistics line other than the
//! calling thread's own counter stripe. Only the final entry of an `nlookup` is
//! pinned (one `fetch_add` on that entry's count, then a sequence re-check); `stat`
//! copies the attributes out and pins nothing. Anything else (a miss, an unresolved
//! or destroyed entry, `..`, a symlink to follow, a mount, a long name, a
//! concurrent change) falls back to the locked walk.
//!
//! # Locks and who writes what
//! - `Cache::topo` (mutex): every slot field write (see `slots`), the index, the
//!   free list and the eviction queues. Never held across a backend call or while
//!   waiting for an entry lock; handles are not dropped under it (a drop that would
//!   free a slot queues it on `reap_q`, drained by the next holder).
//! - The entry lock (`Slot::lock`): shared/exclusive, valid in every state: a thread
//!   holding a *negative* entry exclusively reserves the name. Namespace changes
//!   take the affected entries exclusively (lower index first) before calling the
//!   backend. The *resolving* bit in the same word makes one thread ask the backend
//!   about an unresolved entry while the others wait: one backend call per miss.
//! - `Cache::rename_lock`: one rename or mount at a time, so the "not into its own
//!   subtree" check and the relink see a stable tree.
//! - `Cache::topo_seq` (written under `topo`, by `topo_begin`/`topo_end`) is odd
//!   while a relink, a mount, or a directory ceasing to be an indexed directory
//!   is being written, so optimistic walks that overlap one retry and exact path
//!   hints proven before it are no longer trusted.
//!
//! Lock order: `rename_lock`, entry locks (lower index first), `topo`, then the
//! small leaf mutexes (`reap_q`, `long_names`, `symlinks`, `mounts`).
//!
//! Must never happen: two indexed entries with the same (parent, name); a destroyed
//! entry matching a lookup; a slot freed while a handle, a lock or a child refers to
//! it; a lookup climbing out of a backend's root with `..`; a backend call made
//! under `topo`.

use core::fmt;

use dfly_core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use dfly_core::sync::{Condvar, Mutex, MutexGuard};
// Handles and backends are shared with `std::sync::Arc` even under loom: callers
// pass their own `Arc<dyn Backend>`, and no loom model covers handle lifetimes.
use dfly_core::CachePadded;
use std::sync::Arc;

use crate::backend::{Attr, Backend, Ino, Kind};
use crate::hints::{Exact, Hint, Hints, Scan, EXACT_MAX};
use crate::idmap::IdMap;
use crate::slots::*;
use crate::topo::Topo;
use crate::Errno;

/// Names up to this many bytes are stored inline in the entry.
pub const INLINE_NAME: usize = INLINE;
/// Longest component (bytes).
pub const NAME_MAX: usize = 255;
/// Longest path (bytes, counting the terminating NUL a C caller would add).
pub const PATH_MAX: usize = 4096;
/// Most symbolic links followed in one lookup.
pub const SYMLINK_MAX: u32 = 40;
/// Default cap on resident negative entries.
pub const DEFAULT_NEGATIVE_CAP: usize = 65_536;
/// Default cap on resident positive entries (leaves are evicted beyond it).
pub const DEFAULT_ENTRY_CAP: usize = 1 << 22;
/// Restarts of one step before an operation gives up with `Again` (only under a
/// pathological storm of concurrent changes to the same names).
pub(crate) const RETRIES: u32 = 1000;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Unresolved,
    Positive(Attr),
    Negative,
    Destroyed,
}

pub(crate) fn kind_code(k: Kind) -> u32 {
    match k {
        Kind::Dir => C_DIR,
        Kind::File => C_FILE,
        Kind::Symlink => C_SYMLINK,
        Kind::Other => C_OTHER,
    }
}

pub(crate) fn attr_of(s: &Snap) -> Option<Attr> {
    let kind = match s.code() {
        C_DIR => Kind::Dir,
        C_FILE => Kind::File,
        C_SYMLINK => Kind::Symlink,
        C_OTHER => Kind::Other,
        _ => return None,
    };
    Some(Attr { ino: s.ino, kind, nlink: s.nlink, size: s.size, mode: s.mode })
}

/// Limits on what the cache keeps (see [`Namecache::with_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Resident negative entries; trimmed back to this when it is exceeded by 1/8.
    pub negative: usize,
    /// Resident negative entries under one directory (same hysteresis).
    pub negative_per_parent: usize,
    /// Resident positive and unresolved entries; unreferenced leaves are evicted
    /// (oldest first) when this is exceeded by 1/8.
    pub entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            negative: DEFAULT_NEGATIVE_CAP,
            negative_per_parent: DEFAULT_NEGATIVE_CAP / 8,
            entries: DEFAULT_ENTRY_CAP,
        }
    }
}

/// Counter stripes with one writing thread each (see `Cache::count`).
pub(crate) const OWNED_STRIPES: usize = 64;
/// Counter stripes shared, with atomic adds, by the threads after those.
pub(crate) const SHARED_STRIPES: usize = 16;

#[derive(Debug, Default)]
pub(crate) struct Stripe {
    pub(crate) hits: AtomicU64,
    pub(crate) negative_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) evictions: AtomicU64,
}

pub(crate) struct Mount {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) root: u32,
    /// The covered directory (None for the namecache's root mount).
    pub(crate) over: Option<u32>,
}

/// Symbolic link targets by slot, with the slot sequence they were read at.
pub(crate) type LinkCache = IdMap<u32, (u32, Arc<[u8]>)>;

pub(crate) struct Cache {
    pub(crate) arena: Arena,
    pub(crate) index: Index,
    pub(crate) hints: Hints,
    pub(crate) topo: Mutex<Topo>,
    pub(crate) reap_q: Mutex<Vec<u32>>,
    pub(crate) topo_seq: AtomicU64,
    pub(crate) neg_gen: AtomicU32,
    pub(crate) mounts: Mutex<IdMap<u32, Mount>>,
    pub(crate) next_mount: AtomicU32,
    pub(crate) rename_lock: Mutex<()>,
    pub(crate) long_names: Mutex<IdMap<u32, Box<[u8]>>>,
    pub(crate) symlinks: Mutex<LinkCache>,
    pub(crate) waits: Box<[(Mutex<()>, Condvar)]>,
    pub(crate) stripes: Box<[CachePadded<Stripe>]>,
    pub(crate) limits: Limits,
    pub(crate) root: u32,
    /// The root mount's backend (mount 0, never removed), also in `mounts`.
    pub(crate) root_backend: Arc<dyn Backend>,
}

/// One reference stripe: handles made by one group of threads count their
/// references to the cache here, not on one shared counter.
struct Handle {
    c: Arc<Cache>,
}

/// A held reference to a namecache entry (DragonFly's `ncp` in a `nchandle`): it
/// keeps the entry and its whole parent chain alive, and stays valid across renames
/// of any of them. Cloning and dropping change the entry's reference count.
pub struct Ncp {
    r: Arc<CachePadded<Handle>>,
    pub(crate) idx: u32,
}

impl Ncp {
    pub(crate) fn c(&self) -> &Cache {
        &self.r.c
    }

    pub(crate) fn slot(&self) -> &Slot {
        self.r.c.arena.get(self.idx)
    }

    pub(crate) fn snap(&self) -> Snap {
        self.c().snap(self.idx)
    }

    pub(crate) fn state(&self) -> State {
        self.c().state_of(&self.snap())
    }

    /// A handle on another slot through the same stripe; the caller has already
    /// counted the reference.
    pub(crate) fn sibling(&self, idx: u32) -> Ncp {
        Ncp { r: self.r.clone(), idx }
    }

    /// Pins `idx`, which the caller knows cannot be freed meanwhile (it holds a
    /// child of it, holds `topo`, or it is a mount root).
    pub(crate) fn pin(&self, idx: u32) -> Ncp {
        self.c().arena.get(idx).refs.fetch_add(1, Ordering::Relaxed);
        self.sibling(idx)
    }

    /// Pins `idx` if it still is what `seq` said (see the pin protocol in `slots`).
    pub(crate) fn try_pin(&self, idx: u32, seq: u32) -> Option<Ncp> {
        let ok = self.c().arena.get(idx).pin_at(seq);
        // Made either way, so a failed pin is released (and reaped) normally.
        let n = self.sibling(idx);
        ok.then_some(n)
    }

    /// The parent entry (pinned), or `None` for the root and mount roots' owner.
    pub(crate) fn parent(&self) -> Option<Ncp> {
        loop {
            let s = self.snap();
            if s.parent == NIL {
                return None;
            }
            if let Some(p) = self.try_pin_parent(s.parent, s.seq) {
                return Some(p);
            }
        }
    }

    fn try_pin_parent(&self, p: u32, child_seq: u32) -> Option<Ncp> {
        let ps = self.c().arena.get(p);
        ps.refs.fetch_add(1, Ordering::SeqCst);
        // As in `Slot::pin_at`: the relink that could drop the child's reference
        // on `p` makes the child's sequence odd first.
        fence(Ordering::SeqCst);
        let n = self.sibling(p);
        (self.slot().seq.load(Ordering::SeqCst) == child_seq).then_some(n)
    }

    /// The cached attributes, if the entry is positive.
    pub fn attr(&self) -> Option<Attr> {
        attr_of(&self.snap())
    }

    /// True if the entry names nothing (a negative entry: typically one returned
    /// locked for a create).
    pub fn is_negative(&self) -> bool {
        self.snap().code() == C_NEGATIVE
    }

    /// True if the entry was removed or replaced while this handle held it.
    pub fn is_destroyed(&self) -> bool {
        self.snap().code() == C_DESTROYED
    }

    /// The entry's current name.
    pub fn name(&self) -> Vec<u8> {
        self.c().name_of(self.idx).1
    }

    /// The entry's generation: changes whenever its state, name or parent changes.
    pub fn generation(&self) -> u64 {
        u64::from(self.snap().seq / 2)
    }

    /// Locks the entry shared or exclusive (any state, negative included: an
    /// exclusive lock on a negative entry reserves its name). The guard unlocks.
    pub fn lock(&self, exclusive: bool) -> NcLock {
        self.c().lock_entry(self.idx, exclusive);
        NcLock { n: self.clone(), exclusive }
    }
}

impl Clone for Ncp {
    fn clone(&self) -> Ncp {
        self.pin(self.idx)
    }
}

impl Drop for Ncp {
    fn drop(&mut self) {
        let s = self.slot();
        if s.refs.fetch_sub(1, Ordering::SeqCst) == 1
            && s.meta.load(Ordering::Relaxed) & 0xff == C_DESTROYED
        {
            self.r.c.queue_reap(self.idx);
        }
    }
}

impl PartialEq for Ncp {
    fn eq(&self, other: &Ncp) -> bool {
        self.idx == other.idx && Arc::ptr_eq(&self.r.c, &other.r.c)
    }
}

impl Eq for Ncp {}

impl std::hash::Hash for Ncp {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.idx.hash(h);
    }
}

impl fmt::Debug for Ncp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ncp").field("slot", &self.idx).field("state", &self.state()).finish()
    }
}

/// A held entry lock; unlocks on drop.
#[derive(Debug)]
pub struct NcLock {
    n: Ncp,
    exclusive: bool,
}

impl NcLock {
    /// The entry this lock is on.
    pub fn ncp(&self) -> Ncp {
        self.n.clone()
    }
}

impl Drop for NcLock {
    fn drop(&mut self) {
        let ex = self.exclusive;
        self.n.c().unlock_entry(self.n.idx, move |w| if ex { w & !L_WRITER } else { w - 1 });
    }
}

/// `fullpath` of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullPath {
    /// The path from the namecache root.
    pub path: Vec<u8>,
    /// True if the entry (or a directory above it) has been removed.
    pub deleted: bool,
}

/// Counters (read with [`Namecache::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NcStats {
    /// Components answered by a positive cached entry.
    pub hits: u64,
    /// Components answered by a negative cached entry.
    pub negative_hits: u64,
    /// Components that needed the backend.
    pub misses: u64,
    /// Lookups or renames restarted (an entry changed under them).
    pub restarts: u64,
    /// Entries dropped by the limits.
    pub evictions: u64,
    /// Negative entries resident now.
    pub negatives: u64,
    /// Entries in the index now.
    pub entries: u64,
    /// Bytes held by entry slots, the index, the path hints (a fixed 64 KiB) and
    /// the eviction queues (not names longer than 32 bytes, which are kept apart).
    pub bytes: u64,
}

/// Lookup options for [`Namecache::nlookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// Follow a symbolic link in the last component.
    pub follow: bool,
    /// The last component may be missing: return its (negative) entry instead of
    /// `NoEnt` (create and rename-target lookups; [`Namecache::nlookup_locked`]
    /// returns it locked).
    pub create: bool,
}

/// The result of [`Namecache::nlookup_locked`]: the entry, locked exclusively, and
/// whether it exists.
#[derive(Debug)]
pub struct Locked {
    /// The exclusive lock on the entry (its handle is `lock.ncp()`).
    pub lock: NcLock,
    /// The entry's parent directory.
    pub parent: Ncp,
    /// True if the name exists (the entry is positive).
    pub exists: bool,
}

/// A namecache over a backend. Cheap to clone (shared).
///
/// ```
/// use dfly_namecache::{Flags, MemFs, Namecache};
/// use std::sync::Arc;
/// let nc = Namecache::new(Arc::new(MemFs::new()));
/// let root = nc.root();
/// nc.mkdir(&root, b"a", 0o755).unwrap();
/// nc.mkdir(&root, b"a/b", 0o755).unwrap();
/// let b = nc.nlookup(&root, b"/a/./b/../b", Flags::default()).unwrap();
/// nc.rename(&root, b"a", b"z").unwrap();
/// assert_eq!(nc.fullpath(&b).path, b"/z/b"); // the handle followed the rename
/// ```
#[derive(Clone)]
pub struct Namecache {
    pub(crate) c: Arc<Cache>,
    handles: Arc<[Arc<CachePadded<Handle>>]>,
}

impl fmt::Debug for Namecache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namecache").field("stats", &self.stats()).finish()
    }
}

const STRIPES: usize = 16;

pub(crate) fn dir_of(st: State) -> Result<Ino, Errno> {
    match st {
        State::Positive(a) if a.kind == Kind::Dir => Ok(a.ino),
        State::Positive(_) => Err(Errno::NotDir),
        _ => Err(Errno::NoEnt),
    }
}

pub(crate) fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        Err(Errno::NameTooLong)
    } else {
        Ok(())
    }
}

impl Namecache {
    /// A namecache whose root is `backend`'s root, with the default [`Limits`].
    pub fn new(backend: Arc<dyn Backend>) -> Namecache {
        Self::with_limits(backend, Limits::default())
    }

    /// As [`new`](Self::new), keeping at most `cap` negative entries (plus a slack of
    /// 1/8 before trimming back to `cap`); the per-directory cap is `cap / 8`.
    pub fn with_negative_cap(backend: Arc<dyn Backend>, cap: usize) -> Namecache {
        let cap = cap.max(1);
        Self::with_limits(
            backend,
            Limits { negative: cap, negative_per_parent: (cap / 8).max(1), ..Limits::default() },
        )
    }

    /// A namecache with explicit [`Limits`].
    pub fn with_limits(backend: Arc<dyn Backend>, limits: Limits) -> Namecache {
        let ino = backend.root();
        let attr = backend.getattr(ino).unwrap_or(Attr {
            ino,
            kind: Kind::Dir,
            nlink: 2,
            size: 0,
            mode: 0o755,
        });
        let c = Cache {
            arena: Arena::new(),
            index: Index::new(),
            hints: Hints::new(),
            topo: Mutex::new(Topo::default()),
            reap_q: Mutex::new(Vec::new()),
            topo_seq: AtomicU64::new(0),
            neg_gen: AtomicU32::new(1),
            mounts: Mutex::new(IdMap::default()),
            next_mount: AtomicU32::new(1),
            rename_lock: Mutex::new(()),
            long_names: Mutex::new(IdMap::default()),
            symlinks: Mutex::new(IdMap::default()),
            waits: (0..64).map(|_| (Mutex::new(()), Condvar::new())).collect(),
            stripes: (0..OWNED_STRIPES + SHARED_STRIPES)
                .map(|_| CachePadded::new(Stripe::default()))
                .collect(),
            limits: Limits {
                negative: limits.negative.max(1),
                negative_per_parent: limits.negative_per_parent.max(1),
                entries: limits.entries.max(1),
            },
            root: 0,
            root_backend: backend.clone(),
        };
        {
            let mut t = lock(&c.topo);
            let root = c.alloc_locked(&mut t, NIL, b"", 0, State::Positive(attr), false);
            debug_assert_eq!(root, Ok(0));
        }
        // The cache's own reference on the root.
        c.arena.get(0).refs.fetch_add(1, Ordering::Relaxed);
        lock(&c.mounts).insert(0, Mount { backend: backend.clone(), root: 0, over: None });
        let c = Arc::new(c);
        let handles: Arc<[Arc<CachePadded<Handle>>]> =
            (0..STRIPES).map(|_| Arc::new(CachePadded::new(Handle { c: c.clone() }))).collect();
        Namecache { c, handles }
    }

    fn handle(&self) -> &Arc<CachePadded<Handle>> {
        &self.handles[stripe() % self.handles.len()]
    }

    /// A handle on `idx` whose reference the caller has already counted.
    pub(crate) fn adopt(&self, idx: u32) -> Ncp {
        Ncp { r: self.handle().clone(), idx }
    }

    /// Pins `idx`, which cannot be freed meanwhile (see [`Ncp::pin`]).
    pub(crate) fn pin(&self, idx: u32) -> Ncp {
        self.c.arena.get(idx).refs.fetch_add(1, Ordering::Relaxed);
        self.adopt(idx)
    }

    /// The root entry.
    pub fn root(&self) -> Ncp {
        self.pin(self.c.root)
    }

    /// Counters and resident counts.
    pub fn stats(&self) -> NcStats {
        let mut s = NcStats::default();
        for st in self.c.stripes.iter() {
            s.hits += st.hits.load(Ordering::Relaxed);
            s.negative_hits += st.negative_hits.load(Ordering::Relaxed);
            s.misses += st.misses.load(Ordering::Relaxed);
            s.restarts += st.restarts.load(Ordering::Relaxed);
            s.evictions += st.evictions.load(Ordering::Relaxed);
        }
        let t = self.c.topo();
        let (negatives, entries, queues) = t.counts();
        s.negatives = negatives as u64;
        s.entries = entries as u64;
        s.bytes =
            (self.c.arena.bytes() + self.c.index.bytes() + self.c.hints.bytes() + queues) as u64;
        s
    }

    /// The longest probe sequence a cached lookup of one component needs in the
    /// (parent, name) index: 1 when every entry sits in its home cell. Walks the whole
    /// index under the topology mutex (a diagnostic, not for hot paths).
    pub fn index_longest_probe(&self) -> usize {
        let _t = self.c.topo();
        self.c.index.longest_probe(|i| self.c.rehash(i))
    }

    /// Makes every cached negative entry stale at once (they are asked about again
    /// on next use): for backends whose namespace changed behind the cache.
    pub fn invalidate_negatives(&self) {
        let mut g = self.c.neg_gen.load(Ordering::Relaxed).wrapping_add(1);
        if g == 0 {
            g = 1;
        }
        self.c.neg_gen.store(g, Ordering::Release);
    }

    pub(crate) fn dir_ino(e: &Ncp) -> Result<Ino, Errno> {
        dir_of(e.state())
    }

    /// Mounts `backend` on directory `at` (its root replaces `at` in lookups until
    /// the cache is dropped; `..` from the new root leads back to `at`'s parent).
    pub fn mount(&self, at: &Ncp, backend: Arc<dyn Backend>) -> Result<(), Errno> {
        Self::dir_ino(at)?;
        let _serial = lock(&self.c.rename_lock);
        if at.slot().covered_by.load(Ordering::Acquire) != 0 {
            return Err(Errno::Busy);
        }
        let ino = backend.root();
        let attr = backend.getattr(ino)?;
        let id = self.c.next_mount.fetch_add(1, Ordering::Relaxed);
        let (parent, name) = self.c.name_of(at.idx);
        let root = {
            let mut t = self.c.topo();
            self.c.alloc_locked(&mut t, parent, &name, id, State::Positive(attr), false)?
        };
        // Permanent references: the mount's root and the covered directory.
        self.c.arena.get(root).refs.fetch_add(1, Ordering::Relaxed);
        at.slot().refs.fetch_add(1, Ordering::Relaxed);
        lock(&self.c.mounts).insert(id, Mount { backend, root, over: Some(at.idx) });
        // Covering a directory changes where paths through it lead.
        let mut t = self.c.topo();
        let began = self.c.topo_begin(&mut t);
        at.slot().covered_by.store(id, Ordering::Release);
        self.c.topo_end(&mut t, began);
        Ok(())
    }

    /// If `e` is covered by a mount, that mount's root.
    pub(crate) fn cross_down(&self, e: Ncp) -> Ncp {
        let mut e = e;
        for _ in 0..16 {
            let id = e.slot().covered_by.load(Ordering::Acquire);
            if id == 0 {
                return e;
            }
            let root = lock(&self.c.mounts).get(&id).map(|m| m.root);
            match root {
                Some(r) => e = e.pin(r),
                None => return e,
            }
        }
        e
    }

    /// `..` of `e`: the root's parent is the root; a mount root's parent is the
    /// parent of the directory it covers.
    pub(crate) fn dotdot(&self, e: &Ncp) -> Ncp {
        let mut e = e.clone();
        loop {
            if e.idx == self.c.root {
                return e;
            }
            match self.c.covered_dir(e.idx) {
                Some(over) => e = e.pin(over),
                None => {
                    return e.parent().map(|p| self.cross_down(p)).unwrap_or_else(|| self.root())
                }
            }
        }
    }

    /// Finds the indexed child `name` of `dir` without a lock and pins it.
    /// Names longer than 32 bytes match on their first 32 bytes and length, then on
    /// the whole name kept apart (one small mutex, not the topology's).
    fn find_pin(&self, dir: &Ncp, h: u64, name: &[u8]) -> Option<Ncp> {
        let words = pack(name);
        let long = name.len() > INLINE;
        let (idx, seq) = self.c.index.probe(h, |i| {
            let (seq, meta, _) = self.c.arena.get(i).matches(dir.idx, name.len(), &words)?;
            let same = meta & F_HASHED != 0
                && (!long || lock(&self.c.long_names).get(&i).is_some_and(|n| &n[..] == name));
            same.then_some((i, seq))
        })?;
        dir.try_pin(idx, seq)
    }

    /// Finds or makes the child entry `name` of `dir` and resolves it if needed
    /// (one backend call per miss, however many threads miss at once).
    pub(crate) fn child(
        &self,
        dir: &Ncp,
        dir_state: State,
        name: &[u8],
    ) -> Result<(Ncp, State), Errno> {
        check_name(name)?;
        let dino = dir_of(dir_state)?;
        let h = self.c.index.hash(dir.idx, name);
        let stripe = self.c.stripe();
        for _ in 0..RETRIES {
            let e = match self.find_pin(dir, h, name) {
                Some(e) => e,
                None => {
                    let mut t = self.c.topo();
                    let idx = match self.c.find_locked(h, dir.idx, name) {
                        Some(i) => {
                            self.c.arena.get(i).refs.fetch_add(1, Ordering::Relaxed);
                            i
                        }
                        None => {
                            let mount = dir.slot().mount.load(Ordering::Relaxed);
                            let i = self.c.alloc_locked(
                                &mut t,
                                dir.idx,
                                name,
                                mount,
                                State::Unresolved,
                                true,
                            )?;
                            self.c.arena.get(i).refs.fetch_add(1, Ordering::Relaxed);
                            i
                        }
                    };
                    drop(t);
                    dir.sibling(idx)
                }
            };
            let mut st = e.state();
            match st {
                State::Positive(_) => {
                    stripe.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(self.cross_down_with(e, st));
                }
                State::Negative => {
                    stripe.negative_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((e, st));
                }
                State::Destroyed => {
                    // Removed between our index read and now: look again.
                    stripe.restarts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                State::Unresolved => {}
            }
            self.c.acquire(e.idx, |w| (w & L_RESOLVING == 0).then_some(w | L_RESOLVING));
            st = e.state();
            let res = match st {
                State::Unresolved => {
                    stripe.misses.fetch_add(1, Ordering::Relaxed);
                    let r = self
                        .c
                        .backend(dir.slot().mount.load(Ordering::Relaxed))
                        .and_then(|be| be.lookup(dino, name));
                    match r {
                        Ok(found) => {
                            st = match found {
                                Some(a) => State::Positive(a),
                                None => State::Negative,
                            };
                            let mut t = self.c.topo();
                            // Destroyed meanwhile (its parent was removed): keep that.
                            if e.snap().code() != C_DESTROYED {
                                self.c.set_state_locked(&mut t, e.idx, st);
                            } else {
                                st = State::Destroyed;
                            }
                            Ok(())
                        }
                        Err(err) => {
                            // Leave no unresolved entry behind for an error (it
                            // would never be evicted); the next lookup asks again.
                            let mut t = self.c.topo();
                            if e.snap().code() == C_UNRESOLVED {
                                self.c.destroy_locked(&mut t, e.idx);
                            }
                            Err(err)
                        }
                    }
                }
                // Another thread resolved it while we waited: a cached answer.
                State::Positive(_) => {
                    stripe.hits.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                State::Negative => {
                    stripe.negative_hits.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                State::Destroyed => Ok(()),
            };
            self.c.unlock_entry(e.idx, |w| w & !L_RESOLVING);
            res?;
            match st {
                State::Positive(_) => return Ok(self.cross_down_with(e, st)),
                State::Negative => return Ok((e, st)),
                _ => stripe.restarts.fetch_add(1, Ordering::Relaxed),
            };
        }
        Err(Errno::Again)
    }

    /// [`cross_down`](Self::cross_down), keeping the state when nothing is mounted.
    fn cross_down_with(&self, e: Ncp, st: State) -> (Ncp, State) {
        if e.slot().covered_by.load(Ordering::Acquire) == 0 {
            return (e, st);
        }
        let e = self.cross_down(e);
        let st = e.state();
        (e, st)
    }

    pub(crate) fn readlink_cached(&self, e: &Ncp) -> Result<Arc<[u8]>, Errno> {
        let snap = e.snap();
        if let Some((seq, t)) = lock(&self.c.symlinks).get(&e.idx) {
            if *seq == snap.seq {
                return Ok(t.clone());
            }
        }
        let Some(a) = attr_of(&snap) else { return Err(Errno::NoEnt) };
        let t: Arc<[u8]> = self.c.backend(snap.mount)?.readlink(a.ino)?.into();
        let mut g = lock(&self.c.symlinks);
        if e.slot().seq.load(Ordering::Acquire) == snap.seq {
            g.insert(e.idx, (snap.seq, t.clone()));
        }
        Ok(t)
    }

    /// Resolves `path` from `start` (or the root, for an absolute path): `.` and
    /// `..` are their own operations, symbolic links are followed (at most 40;
    /// the last component's only with [`Flags::follow`] or a trailing slash), a
    /// trailing slash requires a directory, mounts are crossed both ways. Errors:
    /// `NoEnt` (missing, or an empty path), `NotDir`, `Loop`, `NameTooLong`,
    /// `Inval` (a NUL byte), or the backend's.
    ///
    /// ```
    /// use dfly_namecache::{Errno, Flags, MemFs, Namecache};
    /// use std::sync::Arc;
    /// let nc = Namecache::new(Arc::new(MemFs::new()));
    /// let root = nc.root();
    /// nc.mkdir(&root, b"/d", 0o755).unwrap();
    /// let d = nc.nlookup(&root, b"d/.//", Flags::default()).unwrap();
    /// assert_eq!(nc.nlookup(&d, b"../..", Flags::default()).unwrap(), root);
    /// assert_eq!(nc.nlookup(&d, b"nope", Flags::default()).unwrap_err(), Errno::NoEnt);
    /// // With `create`, a missing last component comes back as a negative entry.
    /// let n = nc.nlookup(&d, b"nope", Flags { create: true, ..Flags::default() }).unwrap();
    /// assert!(n.is_negative());
    /// ```
    pub fn nlookup(&self, start: &Ncp, path: &[u8], flags: Flags) -> Result<Ncp, Errno> {
        match self.fast(start, path, flags) {
            Some(Ok(Fast::Entry(idx, seq) | Fast::Read(idx, seq, _))) => {
                if let Some(n) = start.try_pin(idx, seq) {
                    return Ok(n);
                }
                self.c.count_restart();
            }
            Some(Ok(Fast::Missing(_))) => return Err(Errno::NoEnt),
            Some(Err(e)) => return Err(e),
            None => {}
        }
        for _ in 0..RETRIES {
            let (_, e) = self.walk(start, path, flags.follow)?;
            match e.state() {
                State::Positive(_) => return Ok(e),
                State::Negative if flags.create => return Ok(e),
                State::Negative => return Err(Errno::NoEnt),
                // Removed or renamed away under us: walk again.
                _ => self.c.count_restart(),
            }
        }
        Err(Errno::Again)
    }

    /// The attributes of the file at `path` (following a final symlink). On a
    /// cache hit this pins nothing and writes no shared memory.
    ///
    /// ```
    /// use dfly_namecache::{Kind, MemFs, Namecache};
    /// use std::sync::Arc;
    /// let nc = Namecache::new(Arc::new(MemFs::new()));
    /// nc.create(&nc.root(), b"/f", 0o644).unwrap();
    /// assert_eq!(nc.stat(&nc.root(), b"/f").unwrap().kind, Kind::File);
    /// ```
    pub fn stat(&self, start: &Ncp, path: &[u8]) -> Result<Attr, Errno> {
        self.stat_flags(start, path, Flags { follow: true, create: false })
    }

    /// The attributes of the file at `path` (not following a final symlink).
    pub fn lstat(&self, start: &Ncp, path: &[u8]) -> Result<Attr, Errno> {
        self.stat_flags(start, path, Flags::default())
    }

    fn stat_flags(&self, start: &Ncp, path: &[u8], flags: Flags) -> Result<Attr, Errno> {
        match self.fast(start, path, flags) {
            Some(Ok(Fast::Entry(idx, seq))) => {
                if let Some(s) = self.c.arena.get(idx).try_read().filter(|s| s.seq == seq) {
                    if let Some(a) = attr_of(&s) {
                        return Ok(a);
                    }
                }
                self.c.count_restart();
            }
            Some(Ok(Fast::Read(_, _, a))) => return Ok(a),
            Some(Ok(Fast::Missing(_))) => return Err(Errno::NoEnt),
            Some(Err(e)) => return Err(e),
            None => {}
        }
        self.nlookup_slow(start, path, flags)?.attr().ok_or(Errno::NoEnt)
    }

    fn nlookup_slow(&self, start: &Ncp, path: &[u8], flags: Flags) -> Result<Ncp, Errno> {
        for _ in 0..RETRIES {
            let (_, e) = self.walk(start, path, flags.follow)?;
            match e.state() {
                State::Positive(_) => return Ok(e),
                State::Negative => return Err(Errno::NoEnt),
                _ => self.c.count_restart(),
            }
        }
        Err(Errno::Again)
    }

    /// The hit path (see the module docs): the path hint if it proves out, else
    /// the optimistic forward walk, whose end then becomes the hint. `None`: take
    /// the locked walk.
    fn fast(&self, start: &Ncp, path: &[u8], flags: Flags) -> Option<Result<Fast, Errno>> {
        if path.is_empty() {
            return Some(Err(Errno::NoEnt));
        }
        let c = &*self.c;
        let from = if path[0] == b'/' { c.root } else { start.idx };
        let scan = c.hints.scan(from, path);
        let h = scan.hash;
        // `validate_path`'s rules, in its order, without a second pass.
        if scan.nul {
            return Some(Err(Errno::Inval));
        }
        if path.len() >= PATH_MAX {
            return Some(Err(Errno::NameTooLong));
        }
        let x = match c.hints.get(h, from, path) {
            Hint::Exact(e) => {
                if let Some(r) = self.exact(e, path, flags) {
                    return Some(Ok(r));
                }
                Some(e.x)
            }
            Hint::Tag(x) => Some(x),
            Hint::None => None,
        };
        if let Some((r, proof)) = x.and_then(|x| self.hinted(from, x, path, &scan, flags)) {
            self.remember(h, from, path, &r, proof);
            return Some(Ok(r));
        }
        let r = self.fast_walk(start, path, flags);
        if let Some(Ok((f, proof))) = &r {
            self.remember(h, from, path, f, *proof);
        }
        r.map(|r| r.map(|(f, _)| f))
    }

    /// Leaves the hint for a proven lookup: an exact record when the path is
    /// short enough and ends in a name, else the end slot alone.
    #[inline]
    fn remember(&self, h: u64, from: u32, path: &[u8], r: &Fast, proof: Proof) {
        let c = &*self.c;
        let x = match *r {
            Fast::Entry(x, _) | Fast::Missing(x) | Fast::Read(x, _, _) => x,
        };
        if path.len() <= EXACT_MAX {
            let end = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
            let start = path[..end].iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            let comp = &path[start..end];
            if !comp.is_empty() && comp != b"." && comp.len() <= INLINE {
                let e = Exact {
                    x,
                    parent: proof.parent,
                    topo: proof.topo,
                    last: (start, comp.len()),
                    comps: proof.comps,
                };
                c.hints.put_exact(h, from, path, e);
                return;
            }
        }
        c.hints.put(h, x);
    }

    /// Checks an exact record of this lookup (see [`crate::hints`]): if the
    /// topology sequence is still the one the record was proven at, no
    /// directory has stopped being one, moved, or been covered since, so the
    /// path up to its last component still leads to the recorded parent; the
    /// end slot, read whole, must then still be that parent's indexed child of
    /// that name, and pass the forward walk's rules for the end of a path.
    /// `None`: take the climb or the walk.
    #[inline]
    fn exact(&self, e: Exact, path: &[u8], flags: Flags) -> Option<Fast> {
        let c = &*self.c;
        let r0 = c.topo_seq.load(Ordering::Acquire);
        if r0 != e.topo {
            return None;
        }
        let xs = c.arena.get(e.x);
        let snap = xs.try_read()?;
        let comp = &path[e.last.0..e.last.0 + e.last.1];
        let trailing = path.ends_with(b"/");
        let neg_gen = c.neg_gen.load(Ordering::Acquire);
        if snap.parent != e.parent || !end_ok(xs, &snap, comp, trailing, flags, neg_gen) {
            return None;
        }
        fence(Ordering::Acquire);
        if xs.seq.load(Ordering::Relaxed) != snap.seq || c.topo_seq.load(Ordering::Relaxed) != r0 {
            return None;
        }
        self.hinted_hit(e.x, &snap, u64::from(e.comps), flags)
    }

    /// The result of a hint proven to end at slot `x` (read whole as `snap`) after
    /// `n` components, counted in the statistics (the end codes the hint paths
    /// accept all have attributes, or are negative).
    #[inline(always)]
    fn hinted_hit(&self, x: u32, snap: &Snap, n: u64, flags: Flags) -> Option<Fast> {
        let c = &*self.c;
        if snap.code() == C_NEGATIVE {
            c.count(|s| &s.negative_hits, 1);
            if n > 1 {
                c.count(|s| &s.hits, n - 1);
            }
            return Some(if flags.create { Fast::Entry(x, snap.seq) } else { Fast::Missing(x) });
        }
        c.count(|s| &s.hits, n);
        attr_of(snap).map(|a| Fast::Read(x, snap.seq, a))
    }

    /// Proves the hint that `path` from `from` ends at slot `x` by climbing
    /// from `x` through parent links, matching each entry's name against the
    /// path's components from the last one back, until `from`: every entry on
    /// the way indexed, the directories uncovered, no rename in between. The
    /// index holds one entry per (parent, name), so a chain that matches is the
    /// one the forward walk takes, and the final checks are the forward walk's.
    /// `None`: the hint does not hold (or the path has `.`, `..` or names over 32
    /// bytes, which only the forward walk handles). No shared writes but the
    /// stripe.
    fn hinted(
        &self,
        from: u32,
        x: u32,
        path: &[u8],
        scan: &Scan,
        flags: Flags,
    ) -> Option<(Fast, Proof)> {
        let c = &*self.c;
        let r0 = c.topo_seq.load(Ordering::Acquire);
        if r0 & 1 != 0 {
            return None;
        }
        let neg_gen = c.neg_gen.load(Ordering::Acquire);
        let trailing = path.ends_with(b"/");
        let mut comps = scan.components_rev(path);
        // The last component: its entry read whole, under the forward walk's
        // rules for the end of a path.
        let (comp, _) = comps.next()?;
        if comp == b"." || comp == b".." || comp.len() > INLINE {
            return None;
        }
        let xs = c.arena.get(x);
        let snap = xs.try_read()?;
        if !end_ok(xs, &snap, comp, trailing, flags, neg_gen) {
            return None;
        }
        // The directories above it, up to `from`.
        let mut cur = snap.parent;
        let mut n = 1u64;
        // Entries on one path tend to share a chunk: keep the last one.
        let mut chunk = c.arena.chunk(x);
        let mut chunk_of = x & !CHUNK_MASK;
        for (comp, w0) in comps {
            // No `.`/`..` test: no entry is named either, so the name check fails.
            if comp.len() > INLINE {
                return None;
            }
            if cur & !CHUNK_MASK != chunk_of {
                if cur == NIL {
                    return None;
                }
                chunk = c.arena.chunk(cur);
                chunk_of = cur & !CHUNK_MASK;
            }
            let slot = &chunk[(cur & CHUNK_MASK) as usize];
            let (_, meta, parent) = slot.named_dir(comp, w0)?;
            if meta & F_HASHED == 0
                || meta & 0xff != C_DIR
                || slot.covered_by.load(Ordering::Acquire) != 0
            {
                return None;
            }
            n += 1;
            cur = parent;
        }
        if cur != from {
            return None;
        }
        let fs = c.arena.get(from);
        // The root's slot is never freed or reused, so one look at its state
        // does; another start could have been removed (its slot reused) while we
        // climbed, so its sequence brackets the look.
        let fseq = if from == c.root { 0 } else { fs.seq.load(Ordering::Acquire) };
        if fseq & 1 != 0
            || fs.meta.load(Ordering::Relaxed) & 0xff != C_DIR
            || fs.covered_by.load(Ordering::Acquire) != 0
        {
            return None;
        }
        fence(Ordering::Acquire);
        if (from != c.root && fs.seq.load(Ordering::Relaxed) != fseq)
            || xs.seq.load(Ordering::Relaxed) != snap.seq
            || c.topo_seq.load(Ordering::Relaxed) != r0
        {
            return None;
        }
        let proof = Proof { parent: snap.parent, topo: r0, comps: n as u32 };
        self.hinted_hit(x, &snap, n, flags).map(|f| (f, proof))
    }

    /// The optimistic forward walk (see the module docs). `None`: take the
    /// locked walk. Kept out of line so the hint path stays small.
    #[inline(never)]
    fn fast_walk(
        &self,
        start: &Ncp,
        path: &[u8],
        flags: Flags,
    ) -> Option<Result<(Fast, Proof), Errno>> {
        let c = &*self.c;
        let r0 = c.topo_seq.load(Ordering::Acquire);
        if r0 & 1 != 0 {
            return None;
        }
        let neg_gen = c.neg_gen.load(Ordering::Acquire);
        let mut cur = if path[0] == b'/' { c.root } else { start.idx };
        let mut cur_slot = c.arena.get(cur);
        let mut cur_seq = cur_slot.seq.load(Ordering::Acquire);
        let mut code = cur_slot.meta.load(Ordering::Acquire) & 0xff;
        let mut hits = 0u64;
        let mut parent = NIL;
        let mut rest = path;
        loop {
            if cur_seq & 1 != 0 || cur_slot.covered_by.load(Ordering::Acquire) != 0 {
                return None;
            }
            let skip = rest.iter().take_while(|&&b| b == b'/').count();
            rest = &rest[skip..];
            if rest.is_empty() {
                break;
            }
            let clen = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let (comp, after) = rest.split_at(clen);
            let last = after.iter().all(|&b| b == b'/');
            let trailing = !after.is_empty();
            if comp.len() > NAME_MAX {
                return Some(Err(Errno::NameTooLong));
            }
            if code != C_DIR {
                return None;
            }
            if comp == b"." {
                rest = after;
                continue;
            }
            if comp == b".." || comp.len() > INLINE {
                return None;
            }
            let words = pack(comp);
            let h = c.index.hash(cur, comp);
            let (child, seq, meta, stamp) = c.index.probe(h, |i| {
                let (seq, meta, ino) = c.arena.get(i).matches(cur, comp.len(), &words)?;
                (meta & F_HASHED != 0).then_some((i, seq, meta, ino))
            })?;
            // The directory must still be what we walked into.
            if cur_slot.seq.load(Ordering::Acquire) != cur_seq {
                return None;
            }
            let ccode = meta & 0xff;
            hits += 1;
            match ccode {
                C_DIR => {}
                C_FILE | C_OTHER if last && !trailing => {}
                C_FILE | C_OTHER => return Some(Err(Errno::NotDir)),
                C_SYMLINK if last && !trailing && !flags.follow => {}
                C_NEGATIVE if stamp as u32 != neg_gen => return None,
                C_NEGATIVE if last => {
                    if c.topo_seq.load(Ordering::Acquire) != r0 {
                        return None;
                    }
                    c.count(|s| &s.negative_hits, 1);
                    c.count(|s| &s.hits, hits - 1);
                    let f =
                        if flags.create { Fast::Entry(child, seq) } else { Fast::Missing(child) };
                    let proof = Proof { parent: cur, topo: r0, comps: hits as u32 };
                    return Some(Ok((f, proof)));
                }
                C_NEGATIVE => return Some(Err(Errno::NoEnt)),
                _ => return None,
            }
            parent = cur;
            cur = child;
            cur_slot = c.arena.get(child);
            cur_seq = seq;
            code = ccode;
            rest = after;
            if last {
                break;
            }
        }
        if rest.iter().any(|&b| b != b'/')
            || (path.ends_with(b"/") && code != C_DIR)
            || cur_slot.covered_by.load(Ordering::Acquire) != 0
            || !matches!(code, C_DIR | C_FILE | C_OTHER | C_SYMLINK)
        {
            return None;
        }
        fence(Ordering::Acquire);
        if c.topo_seq.load(Ordering::Relaxed) != r0 {
            return None;
        }
        if hits > 0 {
            c.count(|s| &s.hits, hits);
        }
        Some(Ok((Fast::Entry(cur, cur_seq), Proof { parent, topo: r0, comps: hits as u32 })))
    }

    /// A create or rename-target lookup: the last component's entry, locked
    /// exclusively, positive or negative (a locked negative entry reserves the name).
    pub fn nlookup_locked(&self, start: &Ncp, path: &[u8], follow: bool) -> Result<Locked, Errno> {
        for _ in 0..RETRIES {
            let (parent, e) = self.walk(start, path, follow)?;
            let Some(parent) = parent else { return Err(Errno::Busy) };
            let lock = e.lock(true);
            match e.state() {
                State::Positive(_) => return Ok(Locked { lock, parent, exists: true }),
                State::Negative => return Ok(Locked { lock, parent, exists: false }),
                // Changed while we waited for the lock: look again.
                _ => self.c.count_restart(),
            }
        }
        Err(Errno::Again)
    }

    pub(crate) fn validate_path(path: &[u8]) -> Result<(), Errno> {
        if path.contains(&0) {
            return Err(Errno::Inval);
        }
        if path.len() >= PATH_MAX {
            return Err(Errno::NameTooLong);
        }
        if path.is_empty() {
            return Err(Errno::NoEnt);
        }
        Ok(())
    }

    /// Walks `path`; returns (parent of the last entry, last entry). The last entry
    /// may be negative (the caller decides). `None` parent: the path named the
    /// start or root itself (`/`, `.`, `..`).
    pub(crate) fn walk(
        &self,
        start: &Ncp,
        path: &[u8],
        follow_last: bool,
    ) -> Result<(Option<Ncp>, Ncp), Errno> {
        Self::validate_path(path)?;
        let mut links = 0u32;
        // The remaining path is `path[pos..]`, or `spliced[pos..]` once a symbolic
        // link has been spliced in (the only allocation of a walk).
        let mut spliced: Option<Vec<u8>> = None;
        let mut pos = 0usize;
        let mut cur = if path[0] == b'/' { self.root() } else { self.cross_down(start.clone()) };
        let mut cur_state = cur.state();
        let mut parent: Option<Ncp> = None;
        loop {
            let buf: &[u8] = spliced.as_deref().unwrap_or(path);
            let rest = &buf[pos..];
            let skip = rest.iter().take_while(|&&b| b == b'/').count();
            let rest = &rest[skip..];
            pos += skip;
            if rest.is_empty() {
                // Only slashes left (or a path of slashes).
                dir_of(cur_state)?;
                return Ok((parent, cur));
            }
            let clen = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let (comp, after) = rest.split_at(clen);
            let last = after.iter().all(|&b| b == b'/');
            let trailing_slash = !after.is_empty();
            check_name(comp)?;
            match comp {
                b"." => {
                    dir_of(cur_state)?;
                }
                b".." => {
                    dir_of(cur_state)?;
                    cur = self.dotdot(&cur);
                    cur_state = cur.state();
                    parent = None;
                }
                name => {
                    let (child, st) = self.child(&cur, cur_state, name)?;
                    match st {
                        State::Positive(a)
                            if a.kind == Kind::Symlink
                                && (!last || follow_last || trailing_slash) =>
                        {
                            links += 1;
                            if links > SYMLINK_MAX {
                                return Err(Errno::Loop);
                            }
                            let target = self.readlink_cached(&child)?;
                            if target.is_empty() {
                                return Err(Errno::NoEnt);
                            }
                            let mut next = Vec::with_capacity(target.len() + after.len());
                            next.extend_from_slice(&target);
                            next.extend_from_slice(after);
                            if next.len() >= PATH_MAX {
                                return Err(Errno::NameTooLong);
                            }
                            if target[0] == b'/' {
                                cur = self.root();
                                cur_state = cur.state();
                                parent = None;
                            }
                            spliced = Some(next);
                            pos = 0;
                            continue;
                        }
                        State::Positive(a) => {
                            if (!last || trailing_slash) && a.kind != Kind::Dir {
                                return Err(Errno::NotDir);
                            }
                            parent = Some(cur);
                            cur = child;
                            cur_state = st;
                        }
                        State::Negative if last => {
                            return Ok((Some(cur), child));
                        }
                        _ => return Err(Errno::NoEnt),
                    }
                }
            }
            if last {
                return Ok((parent, cur));
            }
            pos += clen;
        }
    }
}

/// What the hit path found.
/// The forward walk's rules for the entry a path ends at, applied to a hinted
/// end read whole (`snap` of slot `xs`): indexed, named `comp` (inline names
/// only), a directory if the path has a trailing slash, a symlink only when not
/// following, a negative only of the current generation, not covered by a mount.
#[inline(always)]
fn end_ok(xs: &Slot, snap: &Snap, comp: &[u8], trailing: bool, flags: Flags, neg_gen: u32) -> bool {
    let w = pack(comp);
    // Word by word (names up to 8 bytes have zeros after the first word on both
    // sides): one wide compare of freshly stored words stalls on store
    // forwarding.
    let same = snap.words[0] == w[0]
        && (comp.len() <= 8
            || (snap.words[1] == w[1] && snap.words[2] == w[2] && snap.words[3] == w[3]));
    if snap.len() != comp.len() || !same || !snap.hashed() {
        return false;
    }
    let ok = match snap.code() {
        C_DIR => true,
        C_FILE | C_OTHER => !trailing,
        C_SYMLINK => !trailing && !flags.follow,
        C_NEGATIVE => snap.ino as u32 == neg_gen,
        _ => false,
    };
    ok && (snap.code() == C_NEGATIVE || xs.covered_by.load(Ordering::Acquire) == 0)
}

/// What a proven lookup knows besides its end, for its exact hint: the end's
/// parent slot, the topology sequence it was proven at, and the components it
/// matched.
#[derive(Debug, Clone, Copy)]
struct Proof {
    parent: u32,
    topo: u64,
    comps: u32,
}

enum Fast {
    /// This slot, at this sequence.
    Entry(u32, u32),
    /// A cached negative last component (this slot).
    Missing(u32),
    /// This slot at this sequence, with the attributes read with it (the hint
    /// path reads the last entry whole).
    Read(u32, u32, Attr),
}
