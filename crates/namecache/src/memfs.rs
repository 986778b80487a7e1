//! An in-memory filesystem backend: directories, regular files (with their data),
//! symbolic links and hard links, with POSIX error rules for every operation.
//!
//! One mutex guards the whole tree; the namecache in front of it is what makes
//! lookups fast, and this backend is the reference the namecache is tested against.

use std::collections::BTreeMap;

use crate::idmap::IdMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::backend::{Attr, Backend, Ino, Kind};
use crate::Errno;

#[derive(Debug, Clone)]
struct Node {
    kind: Kind,
    mode: u32,
    nlink: u32,
    parent: Ino,
    entries: BTreeMap<Vec<u8>, Ino>,
    target: Vec<u8>,
    data: Vec<u8>,
}

/// The in-memory filesystem. Counts the backend calls it serves (for tests that
/// check how often the namecache asks).
#[derive(Debug)]
pub struct MemFs {
    nodes: Mutex<(IdMap<Ino, Node>, Ino)>,
    lookups: AtomicU64,
}

const ROOT: Ino = 1;

impl Default for MemFs {
    fn default() -> Self {
        Self::new()
    }
}

impl MemFs {
    /// An empty filesystem (just the root directory).
    pub fn new() -> MemFs {
        let mut m = IdMap::default();
        m.insert(
            ROOT,
            Node {
                kind: Kind::Dir,
                mode: 0o755,
                nlink: 2,
                parent: ROOT,
                entries: BTreeMap::new(),
                target: Vec::new(),
                data: Vec::new(),
            },
        );
        MemFs { nodes: Mutex::new((m, ROOT + 1)), lookups: AtomicU64::new(0) }
    }

    /// How many `lookup` calls this backend has served.
    pub fn lookup_calls(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }

    fn with<R>(&self, f: impl FnOnce(&mut IdMap<Ino, Node>, &mut Ino) -> R) -> R {
        let mut g = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let (m, next) = &mut *g;
        f(m, next)
    }
}

fn attr(ino: Ino, n: &Node) -> Attr {
    let size = match n.kind {
        Kind::Symlink => n.target.len() as u64,
        Kind::Dir => n.entries.len() as u64,
        _ => n.data.len() as u64,
    };
    Attr { ino, kind: n.kind, nlink: n.nlink, size, mode: n.mode }
}

fn dir_mut(m: &mut IdMap<Ino, Node>, dir: Ino) -> Result<&mut Node, Errno> {
    match m.get_mut(&dir) {
        Some(n) if n.kind == Kind::Dir => Ok(n),
        Some(_) => Err(Errno::NotDir),
        None => Err(Errno::NoEnt),
    }
}

fn add(
    m: &mut IdMap<Ino, Node>,
    next: &mut Ino,
    dir: Ino,
    name: &[u8],
    kind: Kind,
    mode: u32,
    target: &[u8],
) -> Result<Attr, Errno> {
    let d = dir_mut(m, dir)?;
    if d.entries.contains_key(name) {
        return Err(Errno::Exist);
    }
    let ino = *next;
    *next += 1;
    d.entries.insert(name.to_vec(), ino);
    if kind == Kind::Dir {
        d.nlink += 1;
    }
    let n = Node {
        kind,
        mode,
        nlink: if kind == Kind::Dir { 2 } else { 1 },
        parent: dir,
        entries: BTreeMap::new(),
        target: target.to_vec(),
        data: Vec::new(),
    };
    let a = attr(ino, &n);
    m.insert(ino, n);
    Ok(a)
}

fn drop_link(m: &mut IdMap<Ino, Node>, ino: Ino) {
    if let Some(n) = m.get_mut(&ino) {
        n.nlink = n.nlink.saturating_sub(if n.kind == Kind::Dir { 2 } else { 1 });
        if n.nlink == 0 {
            m.remove(&ino);
        }
    }
}

impl Backend for MemFs {
    fn root(&self) -> Ino {
        ROOT
    }

    fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<Attr>, Errno> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.with(|m, _| {
            let d = dir_mut(m, dir)?;
            let Some(&ino) = d.entries.get(name) else { return Ok(None) };
            Ok(m.get(&ino).map(|n| attr(ino, n)))
        })
    }

    fn lookup_dotdot(&self, dir: Ino) -> Result<Ino, Errno> {
        self.with(|m, _| Ok(dir_mut(m, dir)?.parent))
    }

    fn getattr(&self, ino: Ino) -> Result<Attr, Errno> {
        self.with(|m, _| m.get(&ino).map(|n| attr(ino, n)).ok_or(Errno::NoEnt))
    }

    fn create(&self, dir: Ino, name: &[u8], mode: u32) -> Result<Attr, Errno> {
        self.with(|m, next| add(m, next, dir, name, Kind::File, mode, b""))
    }

    fn mkdir(&self, dir: Ino, name: &[u8], mode: u32) -> Result<Attr, Errno> {
        self.with(|m, next| add(m, next, dir, name, Kind::Dir, mode, b""))
    }

    fn symlink(&self, dir: Ino, name: &[u8], target: &[u8]) -> Result<Attr, Errno> {
        self.with(|m, next| add(m, next, dir, name, Kind::Symlink, 0o777, target))
    }

    fn link(&self, ino: Ino, dir: Ino, name: &[u8]) -> Result<Attr, Errno> {
        self.with(|m, _| {
            match m.get(&ino) {
                None => return Err(Errno::NoEnt),
                Some(n) if n.kind == Kind::Dir => return Err(Errno::Perm),
                Some(_) => {}
            }
            let d = dir_mut(m, dir)?;
            if d.entries.contains_key(name) {
                return Err(Errno::Exist);
            }
            d.entries.insert(name.to_vec(), ino);
            let n = m.get_mut(&ino).ok_or(Errno::NoEnt)?;
            n.nlink += 1;
            Ok(attr(ino, n))
        })
    }

    fn remove(&self, dir: Ino, name: &[u8]) -> Result<(), Errno> {
        self.with(|m, _| {
            let d = dir_mut(m, dir)?;
            let &ino = d.entries.get(name).ok_or(Errno::NoEnt)?;
            if m.get(&ino).is_some_and(|n| n.kind == Kind::Dir) {
                return Err(Errno::IsDir);
            }
            dir_mut(m, dir)?.entries.remove(name);
            drop_link(m, ino);
            Ok(())
        })
    }

    fn rmdir(&self, dir: Ino, name: &[u8]) -> Result<(), Errno> {
        self.with(|m, _| {
            let d = dir_mut(m, dir)?;
            let &ino = d.entries.get(name).ok_or(Errno::NoEnt)?;
            match m.get(&ino) {
                Some(n) if n.kind != Kind::Dir => return Err(Errno::NotDir),
                Some(n) if !n.entries.is_empty() => return Err(Errno::NotEmpty),
                _ => {}
            }
            let d = dir_mut(m, dir)?;
            d.entries.remove(name);
            d.nlink -= 1;
            drop_link(m, ino);
            Ok(())
        })
    }

    fn rename(&self, sdir: Ino, sname: &[u8], tdir: Ino, tname: &[u8]) -> Result<(), Errno> {
        self.with(|m, _| {
            let &src = dir_mut(m, sdir)?.entries.get(sname).ok_or(Errno::NoEnt)?;
            let dst = dir_mut(m, tdir)?.entries.get(tname).copied();
            let skind = m.get(&src).ok_or(Errno::NoEnt)?.kind;
            if skind == Kind::Dir {
                // Not into its own subtree.
                let mut d = tdir;
                loop {
                    if d == src {
                        return Err(Errno::Inval);
                    }
                    let p = m.get(&d).map_or(ROOT, |n| n.parent);
                    if p == d {
                        break;
                    }
                    d = p;
                }
            }
            if let Some(dst) = dst {
                if dst == src {
                    return Ok(());
                }
                let dn = m.get(&dst).ok_or(Errno::NoEnt)?;
                match (skind == Kind::Dir, dn.kind == Kind::Dir) {
                    (true, false) => return Err(Errno::NotDir),
                    (false, true) => return Err(Errno::IsDir),
                    (true, true) if !dn.entries.is_empty() => return Err(Errno::NotEmpty),
                    _ => {}
                }
                dir_mut(m, tdir)?.entries.remove(tname);
                if dn_is_dir(m, dst) {
                    dir_mut(m, tdir)?.nlink -= 1;
                }
                drop_link(m, dst);
            }
            dir_mut(m, sdir)?.entries.remove(sname);
            dir_mut(m, tdir)?.entries.insert(tname.to_vec(), src);
            if skind == Kind::Dir {
                dir_mut(m, sdir)?.nlink -= 1;
                dir_mut(m, tdir)?.nlink += 1;
                if let Some(n) = m.get_mut(&src) {
                    n.parent = tdir;
                }
            }
            Ok(())
        })
    }

    fn readlink(&self, ino: Ino) -> Result<Vec<u8>, Errno> {
        self.with(|m, _| match m.get(&ino) {
            Some(n) if n.kind == Kind::Symlink => Ok(n.target.clone()),
            Some(_) => Err(Errno::Inval),
            None => Err(Errno::NoEnt),
        })
    }

    fn readdir(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Attr)>, Errno> {
        self.with(|m, _| {
            let d = dir_mut(m, dir)?.entries.clone();
            Ok(d.into_iter()
                .filter_map(|(k, ino)| m.get(&ino).map(|n| (k, attr(ino, n))))
                .collect())
        })
    }

    fn read(&self, ino: Ino, off: u64, len: u32) -> Result<Vec<u8>, Errno> {
        self.with(|m, _| {
            let n = file(m, ino)?;
            let start = usize::try_from(off).unwrap_or(usize::MAX).min(n.data.len());
            let end = start.saturating_add(len as usize).min(n.data.len());
            Ok(n.data[start..end].to_vec())
        })
    }

    fn write(&self, ino: Ino, off: u64, data: &[u8]) -> Result<u32, Errno> {
        self.with(|m, _| {
            let n = file(m, ino)?;
            let start = usize::try_from(off).map_err(|_| Errno::NoSpc)?;
            let end = start.checked_add(data.len()).ok_or(Errno::NoSpc)?;
            if end > MAX_FILE {
                return Err(Errno::NoSpc);
            }
            if n.data.len() < end {
                n.data.resize(end, 0);
            }
            n.data[start..end].copy_from_slice(data);
            Ok(data.len() as u32)
        })
    }

    fn setattr(&self, ino: Ino, size: Option<u64>, mode: Option<u32>) -> Result<Attr, Errno> {
        self.with(|m, _| {
            if let Some(size) = size {
                let n = file(m, ino)?;
                let size = usize::try_from(size).map_err(|_| Errno::NoSpc)?;
                if size > MAX_FILE {
                    return Err(Errno::NoSpc);
                }
                n.data.resize(size, 0);
            }
            let n = m.get_mut(&ino).ok_or(Errno::NoEnt)?;
            if let Some(mode) = mode {
                n.mode = mode & 0o7777;
            }
            Ok(attr(ino, n))
        })
    }
}

/// The largest file this backend holds (it keeps data in memory).
const MAX_FILE: usize = 1 << 30;

fn file(m: &mut IdMap<Ino, Node>, ino: Ino) -> Result<&mut Node, Errno> {
    match m.get_mut(&ino) {
        Some(n) if n.kind == Kind::File => Ok(n),
        Some(n) if n.kind == Kind::Dir => Err(Errno::IsDir),
        Some(_) => Err(Errno::Inval),
        None => Err(Errno::NoEnt),
    }
}

fn dn_is_dir(m: &IdMap<Ino, Node>, ino: Ino) -> bool {
    m.get(&ino).is_some_and(|n| n.kind == Kind::Dir)
}
