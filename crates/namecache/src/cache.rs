//! The namecache: connected (parent, name) entries over one or more backends.
//!
//! # Structure
//! Every entry has a parent (the root's is none) and a name; a child holds a strong
//! reference to its parent, so every live entry's parent chain reaches the root.
//! Entries are found by a keyed (SipHash, random keys) hash of (parent id, name).
//! An entry is *unresolved* (the backend has not been asked), *positive* (it names
//! a file: its attributes are cached), *negative* (the name does not exist) or
//! *destroyed* (removed or replaced: it stays in its parent chain while referenced,
//! so `fullpath` still works, but it is out of the hash and never resolved again).
//!
//! # Locks and who writes what
//! - `Cache::topo` (RwLock): the hash and every entry's (parent, name) link. Lookups
//!   read it; create, remove, rename and eviction write it. Writers never call the
//!   backend while holding it.
//! - `Entry::state` (Mutex): the resolution state, written only by the thread that
//!   holds the entry's resolve lock.
//! - `Entry::resolve` (Mutex): held while asking the backend about the entry, so N
//!   threads missing one name make one backend call; the others wait on it and read
//!   the result.
//! - `Entry::lock`: the user-visible shared/exclusive entry lock, valid on every
//!   state: a thread holding a *negative* entry exclusively reserves that name, and
//!   namespace changes take the affected entries exclusively (lower id first).
//! - `Cache::rename_lock`: one rename at a time, so the "not into its own subtree"
//!   check and the relink see a stable tree.
//!
//! Must never happen: two entries in the hash with the same (parent, name); a
//! destroyed entry matching a lookup; an entry freed while a child or a handle still
//! refers to it; a lookup climbing out of a backend's root with `..`.

use core::fmt;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};

use smallvec::SmallVec;

use crate::backend::{Attr, Backend, Ino, Kind};
use crate::Errno;

/// Names up to this many bytes are stored inline in the entry.
pub const INLINE_NAME: usize = 32;
/// Longest component (bytes).
pub const NAME_MAX: usize = 255;
/// Longest path (bytes, counting the terminating NUL a C caller would add).
pub const PATH_MAX: usize = 4096;
/// Most symbolic links followed in one lookup.
pub const SYMLINK_MAX: u32 = 40;
/// Restarts of one step before a lookup gives up with `Again` (only under a
/// pathological storm of concurrent changes to the same names).
const RETRIES: u32 = 1000;

type Name = SmallVec<[u8; INLINE_NAME]>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Unresolved,
    Positive(Attr),
    Negative,
    Destroyed,
}

#[derive(Debug)]
struct Link {
    parent: Option<Arc<Entry>>,
    name: Name,
}

#[derive(Debug, Default)]
struct LockState {
    readers: u32,
    writer: bool,
}

/// The user-visible shared/exclusive lock of an entry.
#[derive(Debug, Default)]
struct EntryLock {
    st: Mutex<LockState>,
    cv: Condvar,
}

impl EntryLock {
    fn lock(&self, exclusive: bool) {
        let mut g = self.st.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let free = if exclusive { !g.writer && g.readers == 0 } else { !g.writer };
            if free {
                if exclusive {
                    g.writer = true;
                } else {
                    g.readers += 1;
                }
                return;
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn unlock(&self, exclusive: bool) {
        let mut g = self.st.lock().unwrap_or_else(|p| p.into_inner());
        if exclusive {
            g.writer = false;
        } else {
            g.readers = g.readers.saturating_sub(1);
        }
        drop(g);
        self.cv.notify_all();
    }
}

pub(crate) struct Entry {
    id: u64,
    mount: u64,
    link: RwLock<Link>,
    state: Mutex<State>,
    resolve: Mutex<()>,
    lock: EntryLock,
    /// Generation: bumped whenever the entry's state changes.
    gen: AtomicU64,
    /// A one-byte mirror of `state` for the lock-free hit path (see `fast_code`),
    /// stored under the state mutex after the state itself.
    fast: AtomicU8,
    /// A mount covering this directory, if any.
    covered_by: AtomicU64,
    symlink: Mutex<Option<Arc<[u8]>>>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Entry {
    fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, s: State) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *g = s;
        self.fast.store(fast_code(s), Ordering::Release);
        drop(g);
        self.gen.fetch_add(1, Ordering::Release);
    }

    fn parent(&self) -> Option<Arc<Entry>> {
        self.link.read().unwrap_or_else(|p| p.into_inner()).parent.clone()
    }

    fn name(&self) -> Name {
        self.link.read().unwrap_or_else(|p| p.into_inner()).name.clone()
    }
}

/// A held reference to a namecache entry (DragonFly's `nchandle`/`ncp`): it keeps
/// the entry and its whole parent chain alive, and stays valid across renames of
/// any of them.
#[derive(Clone)]
pub struct Ncp {
    e: Arc<Entry>,
}

impl fmt::Debug for Ncp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ncp").field("id", &self.e.id).field("state", &self.e.state()).finish()
    }
}

impl PartialEq for Ncp {
    fn eq(&self, other: &Ncp) -> bool {
        Arc::ptr_eq(&self.e, &other.e)
    }
}

impl Eq for Ncp {}

impl Ncp {
    /// The cached attributes, if the entry is positive.
    pub fn attr(&self) -> Option<Attr> {
        match self.e.state() {
            State::Positive(a) => Some(a),
            _ => None,
        }
    }

    /// True if the entry names nothing (a negative entry: typically one returned
    /// locked for a create).
    pub fn is_negative(&self) -> bool {
        self.e.state() == State::Negative
    }

    /// True if the entry was removed or replaced while this handle held it.
    pub fn is_destroyed(&self) -> bool {
        self.e.state() == State::Destroyed
    }

    /// The entry's current name.
    pub fn name(&self) -> Vec<u8> {
        self.e.name().to_vec()
    }

    /// The entry's generation (changes whenever its state changes).
    pub fn generation(&self) -> u64 {
        self.e.gen.load(Ordering::Acquire)
    }

    /// Locks the entry shared or exclusive (any state, negative included: an
    /// exclusive lock on a negative entry reserves its name). The guard unlocks.
    pub fn lock(&self, exclusive: bool) -> NcLock {
        self.e.lock.lock(exclusive);
        NcLock { e: self.e.clone(), exclusive }
    }
}

/// A held entry lock; unlocks on drop.
#[derive(Debug)]
pub struct NcLock {
    e: Arc<Entry>,
    exclusive: bool,
}

impl NcLock {
    /// The entry this lock is on.
    pub fn ncp(&self) -> Ncp {
        Ncp { e: self.e.clone() }
    }
}

impl Drop for NcLock {
    fn drop(&mut self) {
        self.e.lock.unlock(self.exclusive);
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

/// Counters (relaxed; read with [`Namecache::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NcStats {
    /// Components answered by a positive cached entry.
    pub hits: u64,
    /// Components answered by a negative cached entry.
    pub negative_hits: u64,
    /// Components that needed the backend.
    pub misses: u64,
    /// Lookups restarted (an entry changed under them).
    pub restarts: u64,
    /// Entries dropped by the limits.
    pub evictions: u64,
    /// Negative entries resident now.
    pub negatives: u64,
    /// Entries in the hash now.
    pub entries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    negative_hits: AtomicU64,
    misses: AtomicU64,
    restarts: AtomicU64,
    evictions: AtomicU64,
}

struct Mount {
    backend: Arc<dyn Backend>,
    root: Arc<Entry>,
    /// The covered directory (None for the namecache's root mount).
    over: Option<Weak<Entry>>,
}

struct Topo {
    hash: HashMap<(u64, Name), Arc<Entry>, RandomState>,
    negatives: usize,
    /// Negative entries in insertion order, for the cap (oldest first).
    neg_order: std::collections::VecDeque<Weak<Entry>>,
}

struct Cache {
    topo: RwLock<Topo>,
    mounts: RwLock<HashMap<u64, Mount>>,
    next_id: AtomicU64,
    root: Arc<Entry>,
    rename_lock: Mutex<()>,
    counters: Counters,
    neg_cap: usize,
}

/// Lookup options for [`Namecache::nlookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// Follow a symbolic link in the last component.
    pub follow: bool,
    /// The last component may be missing: return its (negative) entry, locked
    /// exclusively, instead of `NoEnt` (create and rename-target lookups).
    pub create: bool,
}

/// The result of an `nlookup` with [`Flags::create`]: the entry, locked
/// exclusively, and whether it exists.
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
    c: Arc<Cache>,
}

impl fmt::Debug for Namecache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Namecache").field("stats", &self.stats()).finish()
    }
}

/// Default cap on resident negative entries.
pub const DEFAULT_NEGATIVE_CAP: usize = 65_536;

fn new_entry(id: u64, mount: u64, parent: Option<Arc<Entry>>, name: &[u8], st: State) -> Entry {
    Entry {
        id,
        mount,
        link: RwLock::new(Link { parent, name: Name::from_slice(name) }),
        state: Mutex::new(st),
        resolve: Mutex::new(()),
        lock: EntryLock::default(),
        gen: AtomicU64::new(0),
        fast: AtomicU8::new(fast_code(st)),
        covered_by: AtomicU64::new(0),
        symlink: Mutex::new(None),
    }
}

const F_UNRESOLVED: u8 = 0;
const F_NEGATIVE: u8 = 1;
const F_DESTROYED: u8 = 2;
const F_DIR: u8 = 3;
const F_FILE: u8 = 4;
const F_SYMLINK: u8 = 5;

fn fast_code(s: State) -> u8 {
    match s {
        State::Unresolved => F_UNRESOLVED,
        State::Negative => F_NEGATIVE,
        State::Destroyed => F_DESTROYED,
        State::Positive(a) => match a.kind {
            Kind::Dir => F_DIR,
            Kind::Symlink => F_SYMLINK,
            _ => F_FILE,
        },
    }
}

fn dir_of(st: State) -> Result<Ino, Errno> {
    match st {
        State::Positive(a) if a.kind == Kind::Dir => Ok(a.ino),
        State::Positive(_) => Err(Errno::NotDir),
        _ => Err(Errno::NoEnt),
    }
}

fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        Err(Errno::NameTooLong)
    } else {
        Ok(())
    }
}

impl Namecache {
    /// A namecache whose root is `backend`'s root.
    pub fn new(backend: Arc<dyn Backend>) -> Namecache {
        Self::with_negative_cap(backend, DEFAULT_NEGATIVE_CAP)
    }

    /// As [`new`](Self::new), keeping at most `cap` negative entries (plus a slack of
    /// 1/8 before trimming back to `cap`).
    pub fn with_negative_cap(backend: Arc<dyn Backend>, cap: usize) -> Namecache {
        let ino = backend.root();
        let attr = backend.getattr(ino).unwrap_or(Attr {
            ino,
            kind: Kind::Dir,
            nlink: 2,
            size: 0,
            mode: 0o755,
        });
        let root = Arc::new(new_entry(0, 0, None, b"", State::Positive(attr)));
        let mut mounts = HashMap::new();
        mounts.insert(0, Mount { backend, root: root.clone(), over: None });
        Namecache {
            c: Arc::new(Cache {
                topo: RwLock::new(Topo {
                    hash: HashMap::with_hasher(RandomState::new()),
                    negatives: 0,
                    neg_order: Default::default(),
                }),
                mounts: RwLock::new(mounts),
                next_id: AtomicU64::new(1),
                root,
                rename_lock: Mutex::new(()),
                counters: Counters::default(),
                neg_cap: cap.max(1),
            }),
        }
    }

    /// The root entry.
    pub fn root(&self) -> Ncp {
        Ncp { e: self.c.root.clone() }
    }

    /// Counters and resident counts.
    pub fn stats(&self) -> NcStats {
        let c = &self.c.counters;
        let t = self.c.topo.read().unwrap_or_else(|p| p.into_inner());
        NcStats {
            hits: c.hits.load(Ordering::Relaxed),
            negative_hits: c.negative_hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            negatives: t.negatives as u64,
            entries: t.hash.len() as u64,
        }
    }

    fn backend(&self, mount: u64) -> Result<Arc<dyn Backend>, Errno> {
        let m = self.c.mounts.read().unwrap_or_else(|p| p.into_inner());
        m.get(&mount).map(|m| m.backend.clone()).ok_or(Errno::NoEnt)
    }

    fn dir_ino(e: &Entry) -> Result<Ino, Errno> {
        match e.state() {
            State::Positive(a) if a.kind == Kind::Dir => Ok(a.ino),
            State::Positive(_) => Err(Errno::NotDir),
            _ => Err(Errno::NoEnt),
        }
    }

    /// Mounts `backend` on directory `at` (its root replaces `at` in lookups until
    /// unmounted; `..` from the new root leads back to `at`'s parent).
    pub fn mount(&self, at: &Ncp, backend: Arc<dyn Backend>) -> Result<(), Errno> {
        Self::dir_ino(&at.e)?;
        let _serial = self.c.rename_lock.lock().unwrap_or_else(|p| p.into_inner());
        if at.e.covered_by.load(Ordering::Acquire) != 0 {
            return Err(Errno::Busy);
        }
        let id = self.c.next_id.fetch_add(1, Ordering::Relaxed);
        let ino = backend.root();
        let attr = backend.getattr(ino)?;
        let root = Arc::new(new_entry(id, id, at.e.parent(), &at.e.name(), State::Positive(attr)));
        let mut m = self.c.mounts.write().unwrap_or_else(|p| p.into_inner());
        m.insert(id, Mount { backend, root, over: Some(Arc::downgrade(&at.e)) });
        at.e.covered_by.store(id, Ordering::Release);
        Ok(())
    }

    /// If `e` is covered by a mount, that mount's root.
    fn cross_down(&self, e: Arc<Entry>) -> Arc<Entry> {
        let mut e = e;
        for _ in 0..16 {
            let id = e.covered_by.load(Ordering::Acquire);
            if id == 0 {
                return e;
            }
            let m = self.c.mounts.read().unwrap_or_else(|p| p.into_inner());
            match m.get(&id) {
                Some(mt) => {
                    let r = mt.root.clone();
                    drop(m);
                    e = r;
                }
                None => return e,
            }
        }
        e
    }

    /// `..` of `e`: the root's parent is the root; a mount root's parent is the
    /// parent of the directory it covers.
    fn dotdot(&self, e: &Arc<Entry>) -> Arc<Entry> {
        let mut e = e.clone();
        loop {
            if Arc::ptr_eq(&e, &self.c.root) {
                return e;
            }
            let is_mount_root = {
                let m = self.c.mounts.read().unwrap_or_else(|p| p.into_inner());
                m.get(&e.mount)
                    .filter(|mt| Arc::ptr_eq(&mt.root, &e))
                    .and_then(|mt| mt.over.clone())
            };
            match is_mount_root {
                Some(over) => match over.upgrade() {
                    Some(o) => e = o,
                    None => return self.c.root.clone(),
                },
                None => {
                    return e
                        .parent()
                        .map(|p| self.cross_down(p))
                        .unwrap_or_else(|| self.c.root.clone())
                }
            }
        }
    }

    /// Finds or makes the child entry `name` of `dir` and resolves it if needed
    /// (one backend call per miss, however many threads miss at once).
    fn child(
        &self,
        dir: &Arc<Entry>,
        dir_state: State,
        name: &[u8],
    ) -> Result<(Arc<Entry>, State), Errno> {
        check_name(name)?;
        let dino = dir_of(dir_state)?;
        let key = (dir.id, Name::from_slice(name));
        for _ in 0..RETRIES {
            let found = {
                let t = self.c.topo.read().unwrap_or_else(|p| p.into_inner());
                t.hash.get(&key).cloned()
            };
            let e = match found {
                Some(e) => e,
                None => {
                    let mut t = self.c.topo.write().unwrap_or_else(|p| p.into_inner());
                    match t.hash.get(&key) {
                        Some(e) => e.clone(),
                        None => {
                            let id = self.c.next_id.fetch_add(1, Ordering::Relaxed);
                            let e = Arc::new(new_entry(
                                id,
                                dir.mount,
                                Some(dir.clone()),
                                name,
                                State::Unresolved,
                            ));
                            t.hash.insert(key.clone(), e.clone());
                            e
                        }
                    }
                }
            };
            let mut st = e.state();
            match st {
                State::Positive(_) => {
                    self.c.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(self.cross_down_with(e, st));
                }
                State::Negative => {
                    self.c.counters.negative_hits.fetch_add(1, Ordering::Relaxed);
                    return Ok((e, st));
                }
                State::Destroyed => {
                    // Removed between our hash read and now: look again.
                    self.c.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                State::Unresolved => {}
            }
            {
                let _r = e.resolve.lock().unwrap_or_else(|p| p.into_inner());
                st = e.state();
                // Another thread resolved it while we waited: a cached answer.
                match st {
                    State::Positive(_) => {
                        self.c.counters.hits.fetch_add(1, Ordering::Relaxed);
                    }
                    State::Negative => {
                        self.c.counters.negative_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                if st == State::Unresolved {
                    self.c.counters.misses.fetch_add(1, Ordering::Relaxed);
                    let be = self.backend(dir.mount)?;
                    st = match be.lookup(dino, name)? {
                        Some(a) => State::Positive(a),
                        None => State::Negative,
                    };
                    e.set_state(st);
                    if st == State::Negative {
                        self.note_negative(&e);
                    }
                }
            }
            match st {
                State::Positive(_) => return Ok(self.cross_down_with(e, st)),
                State::Negative => return Ok((e, st)),
                _ => {
                    self.c.counters.restarts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err(Errno::Again)
    }

    /// [`cross_down`](Self::cross_down), keeping the state when nothing is mounted.
    fn cross_down_with(&self, e: Arc<Entry>, st: State) -> (Arc<Entry>, State) {
        if e.covered_by.load(Ordering::Acquire) == 0 {
            return (e, st);
        }
        let e = self.cross_down(e);
        let st = e.state();
        (e, st)
    }

    fn note_negative(&self, e: &Arc<Entry>) {
        let mut t = self.c.topo.write().unwrap_or_else(|p| p.into_inner());
        t.negatives += 1;
        t.neg_order.push_back(Arc::downgrade(e));
        let slack = self.c.neg_cap / 8 + 1;
        if t.negatives > self.c.neg_cap + slack {
            self.trim_negatives(&mut t);
        }
    }

    /// Drops the oldest negative entries nobody holds until at most the cap remain.
    fn trim_negatives(&self, t: &mut Topo) {
        let mut budget = t.neg_order.len();
        while t.negatives > self.c.neg_cap && budget > 0 {
            budget -= 1;
            let Some(w) = t.neg_order.pop_front() else { break };
            let Some(e) = w.upgrade() else { continue };
            if e.state() != State::Negative {
                continue;
            }
            // Held only by the hash (and our upgrade): free to go. A locked entry
            // is held by its lock guard, so it is never freed here.
            if Arc::strong_count(&e) > 2 {
                t.neg_order.push_back(w);
                continue;
            }
            let key = (e.parent().map_or(0, |p| p.id), e.name());
            if t.hash.get(&key).is_some_and(|x| Arc::ptr_eq(x, &e)) {
                t.hash.remove(&key);
                t.negatives -= 1;
                self.c.counters.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn readlink_cached(&self, e: &Arc<Entry>) -> Result<Arc<[u8]>, Errno> {
        if let Some(t) = e.symlink.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(t);
        }
        let State::Positive(a) = e.state() else { return Err(Errno::NoEnt) };
        let t: Arc<[u8]> = self.backend(e.mount)?.readlink(a.ino)?.into();
        *e.symlink.lock().unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
        Ok(t)
    }

    /// Resolves `path` from `start` (or the root, for an absolute path): `.` and
    /// `..` are their own operations, symbolic links are followed (at most 40), a
    /// trailing slash requires a directory, mounts are crossed both ways.
    pub fn nlookup(&self, start: &Ncp, path: &[u8], flags: Flags) -> Result<Ncp, Errno> {
        if let Some(r) = self.fast_walk(start, path, flags) {
            return r;
        }
        for _ in 0..RETRIES {
            let (_, e) = self.walk(start, path, flags.follow)?;
            match e.state() {
                State::Positive(_) => return Ok(Ncp { e }),
                State::Negative if flags.create => return Ok(Ncp { e }),
                State::Negative => return Err(Errno::NoEnt),
                // Removed or renamed away under us: walk again.
                _ => {
                    self.c.counters.restarts.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err(Errno::Again)
    }

    /// The hit path: under one read lock of the topology, walk cached entries by
    /// reference (no reference counts, no entry locks, no per-component counter
    /// writes), reading each entry's one-byte state mirror. Anything it does not
    /// handle (a miss, an unresolved or destroyed entry, a symlink to follow, `..`,
    /// a mount) returns `None` and the caller takes the locked walk from the start.
    fn fast_walk(&self, start: &Ncp, path: &[u8], flags: Flags) -> Option<Result<Ncp, Errno>> {
        if let Err(e) = Self::validate_path(path) {
            return Some(Err(e));
        }
        let t = self.c.topo.read().unwrap_or_else(|p| p.into_inner());
        let mut cur: &Arc<Entry> = if path[0] == b'/' { &self.c.root } else { &start.e };
        let mut code = cur.fast.load(Ordering::Acquire);
        let mut hits = 0u64;
        let mut key: (u64, Name) = (0, Name::new());
        let mut rest = path;
        loop {
            if cur.covered_by.load(Ordering::Acquire) != 0 {
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
            if code != F_DIR {
                return None;
            }
            if comp == b"." {
                rest = after;
                continue;
            }
            if comp == b".." {
                return None;
            }
            key.0 = cur.id;
            key.1.clear();
            key.1.extend_from_slice(comp);
            let child = t.hash.get(&key)?;
            let c = child.fast.load(Ordering::Acquire);
            hits += 1;
            match c {
                F_DIR => {}
                F_FILE if last && !trailing => {}
                F_FILE => return Some(Err(Errno::NotDir)),
                F_SYMLINK if last && !trailing && !flags.follow => {}
                F_NEGATIVE if last => {
                    self.c.counters.negative_hits.fetch_add(1, Ordering::Relaxed);
                    self.c.counters.hits.fetch_add(hits - 1, Ordering::Relaxed);
                    return Some(if flags.create {
                        Ok(Ncp { e: child.clone() })
                    } else {
                        Err(Errno::NoEnt)
                    });
                }
                F_NEGATIVE => return Some(Err(Errno::NoEnt)),
                _ => return None,
            }
            cur = child;
            code = c;
            rest = after;
            if last {
                break;
            }
        }
        if rest.iter().any(|&b| b != b'/')
            || (path.ends_with(b"/") && code != F_DIR)
            || cur.covered_by.load(Ordering::Acquire) != 0
        {
            return None;
        }
        if hits > 0 {
            self.c.counters.hits.fetch_add(hits, Ordering::Relaxed);
        }
        Some(Ok(Ncp { e: cur.clone() }))
    }

    /// A create or rename-target lookup: the last component's entry, locked
    /// exclusively, positive or negative (a locked negative entry reserves the name).
    pub fn nlookup_locked(&self, start: &Ncp, path: &[u8], follow: bool) -> Result<Locked, Errno> {
        for _ in 0..RETRIES {
            let (parent, e) = self.walk(start, path, follow)?;
            let Some(parent) = parent else { return Err(Errno::Busy) };
            let lock = Ncp { e: e.clone() }.lock(true);
            match e.state() {
                State::Positive(_) => {
                    return Ok(Locked { lock, parent: Ncp { e: parent }, exists: true })
                }
                State::Negative => {
                    return Ok(Locked { lock, parent: Ncp { e: parent }, exists: false })
                }
                // Changed while we waited for the lock: look again.
                _ => {
                    self.c.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
        }
        Err(Errno::Again)
    }

    fn validate_path(path: &[u8]) -> Result<(), Errno> {
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
    fn walk(
        &self,
        start: &Ncp,
        path: &[u8],
        follow_last: bool,
    ) -> Result<(Option<Arc<Entry>>, Arc<Entry>), Errno> {
        Self::validate_path(path)?;
        let mut links = 0u32;
        // The remaining path is `path[pos..]`, or `spliced[pos..]` once a symbolic
        // link has been spliced in (the only allocation of a walk).
        let mut spliced: Option<Vec<u8>> = None;
        let mut pos = 0usize;
        let mut cur =
            if path[0] == b'/' { self.c.root.clone() } else { self.cross_down(start.e.clone()) };
        let mut cur_state = cur.state();
        let mut parent: Option<Arc<Entry>> = None;
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
                                cur = self.c.root.clone();
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

    /// The path of `ncp` from the root, in O(depth); works for removed entries
    /// (flagged `deleted`).
    pub fn fullpath(&self, ncp: &Ncp) -> FullPath {
        let mut names: Vec<Name> = Vec::new();
        let mut deleted = false;
        let mut e = ncp.e.clone();
        loop {
            if Arc::ptr_eq(&e, &self.c.root) {
                break;
            }
            if e.state() == State::Destroyed {
                deleted = true;
            }
            // A mount root stands for the directory it covers.
            let over = {
                let m = self.c.mounts.read().unwrap_or_else(|p| p.into_inner());
                m.get(&e.mount)
                    .filter(|mt| Arc::ptr_eq(&mt.root, &e))
                    .and_then(|mt| mt.over.clone())
            };
            if let Some(o) = over.and_then(|w| w.upgrade()) {
                e = o;
                continue;
            }
            names.push(e.name());
            match e.parent() {
                Some(p) => e = p,
                None => break,
            }
        }
        let mut path = Vec::new();
        for n in names.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(n);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        FullPath { path, deleted }
    }

    // ---- namespace changes ----------------------------------------------------------

    fn split_last(path: &[u8]) -> Result<(&[u8], &[u8]), Errno> {
        Self::validate_path(path)?;
        let t = {
            let mut end = path.len();
            while end > 1 && path[end - 1] == b'/' {
                end -= 1;
            }
            &path[..end]
        };
        match t.iter().rposition(|&b| b == b'/') {
            Some(i) => Ok((if i == 0 { &t[..1] } else { &t[..i] }, &t[i + 1..])),
            None => Ok((b".", t)),
        }
    }

    /// Locks the parent directory and the last component for a change; the name
    /// must be an ordinary component.
    fn prepare(
        &self,
        start: &Ncp,
        path: &[u8],
        special: impl Fn(&[u8]) -> Errno,
    ) -> Result<(Arc<Entry>, Vec<u8>, Locked), Errno> {
        let (dir, name) = Self::split_last(path)?;
        if name.is_empty() || name == b"/" {
            return Err(special(b"/"));
        }
        check_name(name)?;
        // The parent is resolved first: its errors come before the name's.
        let d = self.nlookup(start, dir, Flags { follow: true, create: false })?;
        Self::dir_ino(&d.e)?;
        if name == b"." || name == b".." {
            return Err(special(name));
        }
        let d = d.e;
        let locked = self.nlookup_locked(&Ncp { e: d.clone() }, name, false)?;
        Ok((d, name.to_vec(), locked))
    }

    fn make(
        &self,
        start: &Ncp,
        path: &[u8],
        kind: Kind,
        mode: u32,
        target: &[u8],
    ) -> Result<Ncp, Errno> {
        let (d, name, locked) = self.prepare(start, path, |_| Errno::Exist)?;
        // As open(O_CREAT): a trailing slash on a file to create is EISDIR, whether
        // or not the name exists.
        if kind == Kind::File && path.ends_with(b"/") {
            return Err(Errno::IsDir);
        }
        if locked.exists {
            return Err(Errno::Exist);
        }
        if kind != Kind::Dir && path.ends_with(b"/") {
            return Err(Errno::NotDir);
        }
        let dino = Self::dir_ino(&d)?;
        let be = self.backend(d.mount)?;
        let a = match kind {
            Kind::Dir => be.mkdir(dino, &name, mode)?,
            Kind::Symlink => be.symlink(dino, &name, target)?,
            _ => be.create(dino, &name, mode)?,
        };
        let e = locked.lock.ncp().e;
        {
            let mut t = self.c.topo.write().unwrap_or_else(|p| p.into_inner());
            if e.state() == State::Negative {
                t.negatives = t.negatives.saturating_sub(1);
            }
        }
        e.set_state(State::Positive(a));
        Ok(Ncp { e })
    }

    /// Creates a regular file at `path`.
    pub fn create(&self, start: &Ncp, path: &[u8], mode: u32) -> Result<Ncp, Errno> {
        self.make(start, path, Kind::File, mode, b"")
    }

    /// Creates a directory at `path`.
    pub fn mkdir(&self, start: &Ncp, path: &[u8], mode: u32) -> Result<Ncp, Errno> {
        self.make(start, path, Kind::Dir, mode, b"")
    }

    /// Creates a symbolic link at `path` pointing to `target`.
    pub fn symlink(&self, start: &Ncp, path: &[u8], target: &[u8]) -> Result<Ncp, Errno> {
        if target.contains(&0) {
            return Err(Errno::Inval);
        }
        if target.len() >= PATH_MAX {
            return Err(Errno::NameTooLong);
        }
        self.make(start, path, Kind::Symlink, 0o777, target)
    }

    /// Adds a hard link `new` to the existing non-directory `old`.
    pub fn link(&self, start: &Ncp, old: &[u8], new: &[u8]) -> Result<Ncp, Errno> {
        let src = self.nlookup(start, old, Flags::default())?;
        let Some(sa) = src.attr() else { return Err(Errno::NoEnt) };
        if sa.kind == Kind::Dir {
            return Err(Errno::Perm);
        }
        let (d, name, locked) = self.prepare(start, new, |_| Errno::Exist)?;
        if locked.exists {
            return Err(Errno::Exist);
        }
        if d.mount != src.e.mount {
            return Err(Errno::XDev);
        }
        let a = self.backend(d.mount)?.link(sa.ino, Self::dir_ino(&d)?, &name)?;
        let e = locked.lock.ncp().e;
        e.set_state(State::Positive(a));
        // Every alias of the inode now has a stale link count.
        self.invalidate_ino(d.mount, sa.ino);
        e.set_state(State::Positive(a));
        Ok(Ncp { e })
    }

    fn destroy(&self, e: &Arc<Entry>) {
        let mut t = self.c.topo.write().unwrap_or_else(|p| p.into_inner());
        let key = (e.parent().map_or(0, |p| p.id), e.name());
        if t.hash.get(&key).is_some_and(|x| Arc::ptr_eq(x, e)) {
            t.hash.remove(&key);
        }
        if e.state() == State::Negative {
            t.negatives = t.negatives.saturating_sub(1);
        }
        drop(t);
        e.set_state(State::Destroyed);
    }

    fn remove_common(&self, start: &Ncp, path: &[u8], dir: bool) -> Result<(), Errno> {
        // unlink of `.`, `..` or `/` is EISDIR; rmdir of `.` is EINVAL, of `..`
        // ENOTEMPTY, of `/` EBUSY (Linux).
        let special = |n: &[u8]| match (dir, n) {
            (false, _) => Errno::IsDir,
            (true, b".") => Errno::Inval,
            (true, b"..") => Errno::NotEmpty,
            (true, _) => Errno::Busy,
        };
        let (d, name, locked) = self.prepare(start, path, special)?;
        if !locked.exists {
            return Err(Errno::NoEnt);
        }
        let e = locked.lock.ncp().e;
        let Some(a) = (Ncp { e: e.clone() }).attr() else { return Err(Errno::NoEnt) };
        if e.mount != d.mount || e.covered_by.load(Ordering::Acquire) != 0 {
            return Err(Errno::Busy);
        }
        let dino = Self::dir_ino(&d)?;
        let be = self.backend(d.mount)?;
        if dir {
            if a.kind != Kind::Dir {
                return Err(Errno::NotDir);
            }
            be.rmdir(dino, &name)?;
        } else {
            if a.kind == Kind::Dir {
                return Err(Errno::IsDir);
            }
            if path.ends_with(b"/") {
                return Err(Errno::NotDir);
            }
            be.remove(dino, &name)?;
        }
        self.destroy(&e);
        if a.kind != Kind::Dir {
            self.invalidate_ino(d.mount, a.ino);
        }
        Ok(())
    }

    /// Removes the non-directory at `path`.
    pub fn unlink(&self, start: &Ncp, path: &[u8]) -> Result<(), Errno> {
        self.remove_common(start, path, false)
    }

    /// Removes the empty directory at `path`.
    pub fn rmdir(&self, start: &Ncp, path: &[u8]) -> Result<(), Errno> {
        self.remove_common(start, path, true)
    }

    /// Renames `from` to `to` (POSIX `rename(2)`): the source entry itself is
    /// relinked, so handles inside a renamed directory stay valid and their
    /// `fullpath` shows the new path; a replaced target is destroyed.
    pub fn rename(&self, start: &Ncp, from: &[u8], to: &[u8]) -> Result<(), Errno> {
        let _serial = self.c.rename_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (fname_dir, fname) = Self::split_last(from)?;
        let (tname_dir, tname) = Self::split_last(to)?;
        for n in [fname, tname] {
            if n == b"." || n == b".." || n == b"/" {
                return Err(if n == b"/" { Errno::Busy } else { Errno::Inval });
            }
            check_name(n)?;
        }
        let sd = self.nlookup(start, fname_dir, Flags { follow: true, create: false })?.e;
        let sdino = Self::dir_ino(&sd)?;
        let td = self.nlookup(start, tname_dir, Flags { follow: true, create: false })?.e;
        let tdino = Self::dir_ino(&td)?;
        let (src, _) = self.child(&sd, sd.state(), fname)?;
        let Some(sa) = (Ncp { e: src.clone() }).attr() else { return Err(Errno::NoEnt) };
        if from.ends_with(b"/") && sa.kind != Kind::Dir {
            return Err(Errno::NotDir);
        }
        if sd.mount != td.mount {
            return Err(Errno::XDev);
        }
        let (dst, _) = self.child(&td, td.state(), tname)?;
        let da = (Ncp { e: dst.clone() }).attr();
        if to.ends_with(b"/") && sa.kind != Kind::Dir {
            return Err(Errno::NotDir);
        }
        if let Some(da) = da {
            if da.ino == sa.ino {
                // The same file (or two links to it): nothing to do.
                return Ok(());
            }
            match (sa.kind == Kind::Dir, da.kind == Kind::Dir) {
                (true, false) => return Err(Errno::NotDir),
                (false, true) => return Err(Errno::IsDir),
                _ => {}
            }
        }
        if sa.kind == Kind::Dir {
            // Not into its own subtree: walk up from the target directory.
            let mut p = Some(td.clone());
            while let Some(x) = p {
                if Arc::ptr_eq(&x, &src) {
                    return Err(Errno::Inval);
                }
                p = x.parent();
            }
        }
        for (e, dir) in [(&src, &sd), (&dst, &td)] {
            // A mount point (or a mount's root, which stands in for it) cannot move.
            if e.mount != dir.mount || e.covered_by.load(Ordering::Acquire) != 0 {
                return Err(Errno::Busy);
            }
        }
        let (first, second) = if src.id < dst.id { (&src, &dst) } else { (&dst, &src) };
        let _l1 = Ncp { e: first.clone() }.lock(true);
        let _l2 = Ncp { e: second.clone() }.lock(true);
        self.backend(sd.mount)?.rename(sdino, fname, tdino, tname)?;
        // Relink: the target entry is destroyed; the source takes its place.
        let mut t = self.c.topo.write().unwrap_or_else(|p| p.into_inner());
        let dkey = (td.id, Name::from_slice(tname));
        if let Some(old) = t.hash.remove(&dkey) {
            if old.state() == State::Negative {
                t.negatives = t.negatives.saturating_sub(1);
            }
            old.set_state(State::Destroyed);
        }
        let skey = (sd.id, Name::from_slice(fname));
        if t.hash.get(&skey).is_some_and(|x| Arc::ptr_eq(x, &src)) {
            t.hash.remove(&skey);
        }
        {
            let mut l = src.link.write().unwrap_or_else(|p| p.into_inner());
            l.parent = Some(td.clone());
            l.name = Name::from_slice(tname);
        }
        t.hash.insert(dkey, src.clone());
        drop(t);
        src.gen.fetch_add(1, Ordering::Release);
        if let Some(da) = da {
            if da.kind != Kind::Dir {
                self.invalidate_ino(sd.mount, da.ino);
            }
        }
        Ok(())
    }

    /// The attributes of the file at `path` (following a final symlink).
    pub fn stat(&self, start: &Ncp, path: &[u8]) -> Result<Attr, Errno> {
        self.nlookup(start, path, Flags { follow: true, create: false })?.attr().ok_or(Errno::NoEnt)
    }

    /// The attributes of the file at `path` (not following a final symlink).
    pub fn lstat(&self, start: &Ncp, path: &[u8]) -> Result<Attr, Errno> {
        self.nlookup(start, path, Flags::default())?.attr().ok_or(Errno::NoEnt)
    }

    /// The target of the symbolic link at `path`.
    pub fn readlink(&self, start: &Ncp, path: &[u8]) -> Result<Vec<u8>, Errno> {
        let n = self.nlookup(start, path, Flags::default())?;
        match n.attr() {
            Some(a) if a.kind == Kind::Symlink => Ok(self.readlink_cached(&n.e)?.to_vec()),
            Some(_) => Err(Errno::Inval),
            None => Err(Errno::NoEnt),
        }
    }

    /// The names in the directory at `path` (from the backend; not cached).
    pub fn readdir(&self, start: &Ncp, path: &[u8]) -> Result<Vec<(Vec<u8>, Attr)>, Errno> {
        let d = self.nlookup(start, path, Flags { follow: true, create: false })?;
        let ino = Self::dir_ino(&d.e)?;
        self.backend(d.e.mount)?.readdir(ino)
    }

    // ---- invalidation -----------------------------------------------------------

    /// Forgets what is cached about `ncp` (it is resolved again on next use).
    pub fn invalidate(&self, ncp: &Ncp) {
        let e = &ncp.e;
        let _r = e.resolve.lock().unwrap_or_else(|p| p.into_inner());
        match e.state() {
            State::Destroyed => {}
            State::Negative => {
                let mut t = self.c.topo.write().unwrap_or_else(|p| p.into_inner());
                t.negatives = t.negatives.saturating_sub(1);
                drop(t);
                e.set_state(State::Unresolved);
            }
            _ if Arc::ptr_eq(e, &self.c.root) => {}
            _ => e.set_state(State::Unresolved),
        }
        *e.symlink.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Forgets every cached child of directory `dir`.
    pub fn invalidate_children(&self, dir: &Ncp) {
        let kids: Vec<Arc<Entry>> = {
            let t = self.c.topo.read().unwrap_or_else(|p| p.into_inner());
            t.hash.iter().filter(|((pid, _), _)| *pid == dir.e.id).map(|(_, e)| e.clone()).collect()
        };
        for k in kids {
            self.invalidate(&Ncp { e: k });
        }
    }

    /// Forgets every entry of backend `mount` naming inode `ino` (all its hard-link
    /// aliases).
    fn invalidate_ino(&self, mount: u64, ino: Ino) {
        let hits: Vec<Arc<Entry>> = {
            let t = self.c.topo.read().unwrap_or_else(|p| p.into_inner());
            t.hash
                .values()
                .filter(|e| {
                    e.mount == mount && matches!(e.state(), State::Positive(a) if a.ino == ino)
                })
                .cloned()
                .collect()
        };
        for e in hits {
            self.invalidate(&Ncp { e });
        }
    }

    /// Forgets every entry naming backend inode `ino` in the root mount (aliases).
    pub fn invalidate_backend_id(&self, ino: Ino) {
        self.invalidate_ino(0, ino);
    }
}
