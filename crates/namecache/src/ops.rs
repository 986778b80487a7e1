//! Namespace changes through the namecache (create, mkdir, symlink, link, unlink,
//! rmdir, rename), `fullpath`, and invalidation.
//!
//! # Protocol
//! Every change looks up the parent directory, then takes the last component's
//! entry *exclusively* with [`Namecache::nlookup_locked`] (positive or negative: a
//! locked negative entry reserves the name), calls the backend with no cache mutex
//! held, and only then updates the entry under the topology mutex. Rename also holds
//! the cache's rename lock (one rename at a time), locks source and target entries
//! (lower slot first), re-checks that neither changed generation since it looked
//! them up (else it starts again: `Again` after too many tries), and relinks the
//! source entry itself under the target's parent, with the rename sequence odd
//! meanwhile so optimistic lookups that overlap it retry. The replaced target entry
//! is destroyed; handles on it see that.
//!
//! Must never happen: a backend call with the topology mutex held; an entry changed
//! by a namespace operation without its exclusive lock; a relink while the source
//! or target has changed since the checks were made.

use dfly_core::sync::atomic::{fence, Ordering};

use crate::backend::{Attr, Ino, Kind};
use crate::cache::{
    attr_of, check_name, lock, Flags, FullPath, Locked, Namecache, Ncp, State, PATH_MAX, RETRIES,
};
use crate::slots::{C_DESTROYED, C_DIR, NIL};
use crate::Errno;

impl Namecache {
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
    /// must be an ordinary component (`special` gives the error for `.`, `..`, `/`).
    fn prepare(
        &self,
        start: &Ncp,
        path: &[u8],
        special: impl Fn(&[u8]) -> Errno,
    ) -> Result<(Ncp, Vec<u8>, Locked), Errno> {
        let (dir, name) = Self::split_last(path)?;
        if name.is_empty() || name == b"/" {
            return Err(special(b"/"));
        }
        check_name(name)?;
        // The parent is resolved first: its errors come before the name's.
        let d = self.nlookup(start, dir, Flags { follow: true, create: false })?;
        Self::dir_ino(&d)?;
        if name == b"." || name == b".." {
            return Err(special(name));
        }
        let locked = self.nlookup_locked(&d, name, false)?;
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
        let be = self.c.backend(d.slot().mount.load(Ordering::Relaxed))?;
        let a = match kind {
            Kind::Dir => be.mkdir(dino, &name, mode)?,
            Kind::Symlink => be.symlink(dino, &name, target)?,
            _ => be.create(dino, &name, mode)?,
        };
        let e = locked.lock.ncp();
        self.set_state(&e, State::Positive(a));
        Ok(e)
    }

    fn set_state(&self, e: &Ncp, st: State) {
        let mut t = self.c.topo();
        if e.snap().code() != C_DESTROYED {
            self.c.set_state_locked(&mut t, e.idx, st);
        }
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
        // Linux order: the old path, the new path (parent, then EEXIST), EXDEV,
        // and only then EPERM for a directory.
        let src = self.nlookup(start, old, Flags::default())?;
        self.link_at(&src, start, new)
    }

    /// Adds a hard link `new` (a path from `start`) to the file `src` names.
    pub fn link_at(&self, src: &Ncp, start: &Ncp, new: &[u8]) -> Result<Ncp, Errno> {
        let Some(sa) = src.attr() else { return Err(Errno::NoEnt) };
        let (d, name, locked) = self.prepare(start, new, |_| Errno::Exist)?;
        if locked.exists {
            return Err(Errno::Exist);
        }
        let mount = d.slot().mount.load(Ordering::Relaxed);
        if mount != src.slot().mount.load(Ordering::Relaxed) {
            return Err(Errno::XDev);
        }
        if sa.kind == Kind::Dir {
            return Err(Errno::Perm);
        }
        let a = self.c.backend(mount)?.link(sa.ino, Self::dir_ino(&d)?, &name)?;
        let e = locked.lock.ncp();
        // Every alias of the inode now has a stale link count: the source, and
        // other cached names only if it already had more than one.
        self.invalidate(src);
        if sa.nlink > 1 {
            self.invalidate_ino(mount, sa.ino);
        }
        self.set_state(&e, State::Positive(a));
        Ok(e)
    }

    fn destroy(&self, e: &Ncp) {
        let mut t = self.c.topo();
        self.c.destroy_locked(&mut t, e.idx);
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
        let e = locked.lock.ncp();
        let Some(a) = e.attr() else { return Err(Errno::NoEnt) };
        let mount = d.slot().mount.load(Ordering::Relaxed);
        if e.slot().mount.load(Ordering::Relaxed) != mount
            || e.slot().covered_by.load(Ordering::Acquire) != 0
        {
            return Err(Errno::Busy);
        }
        let dino = Self::dir_ino(&d)?;
        let be = self.c.backend(mount)?;
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
        // Other names of the file (hard links) now have a stale link count.
        if a.kind != Kind::Dir && a.nlink > 1 {
            self.invalidate_ino(mount, a.ino);
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
    /// `fullpath` shows the new path; a replaced target is destroyed. Errors:
    /// `Inval` (a directory into its own subtree), `XDev` (across mounts),
    /// `NotDir`, `IsDir`, `NotEmpty`, `Busy` (a mount point, or `.`/`..` as a last
    /// component, as on Linux), `NoEnt`.
    ///
    /// ```
    /// use dfly_namecache::{Errno, Flags, MemFs, Namecache};
    /// use std::sync::Arc;
    /// let nc = Namecache::new(Arc::new(MemFs::new()));
    /// let r = nc.root();
    /// nc.mkdir(&r, b"/a", 0o755).unwrap();
    /// nc.create(&r, b"/a/f", 0o644).unwrap();
    /// let f = nc.nlookup(&r, b"/a/f", Flags::default()).unwrap();
    /// nc.rename(&r, b"/a", b"/b").unwrap();
    /// assert_eq!(nc.fullpath(&f).path, b"/b/f");
    /// assert_eq!(nc.rename(&r, b"/b", b"/b/f/x").unwrap_err(), Errno::NotDir);
    /// ```
    pub fn rename(&self, start: &Ncp, from: &[u8], to: &[u8]) -> Result<(), Errno> {
        self.rename_at(start, from, start, to)
    }

    /// [`rename`](Self::rename) with the two paths resolved from different
    /// directories (`renameat(2)`).
    pub fn rename_at(
        &self,
        fstart: &Ncp,
        from: &[u8],
        tstart: &Ncp,
        to: &[u8],
    ) -> Result<(), Errno> {
        let _serial = lock(&self.c.rename_lock);
        for _ in 0..RETRIES {
            match self.rename_once(fstart, from, tstart, to) {
                Err(Errno::Again) => self.c.count_restart(),
                r => return r,
            }
        }
        Err(Errno::Again)
    }

    fn rename_once(&self, fstart: &Ncp, from: &[u8], tstart: &Ncp, to: &[u8]) -> Result<(), Errno> {
        let (fname_dir, fname) = Self::split_last(from)?;
        let (tname_dir, tname) = Self::split_last(to)?;
        for n in [fname, tname] {
            check_name(n)?;
        }
        let sd = self.nlookup(fstart, fname_dir, Flags { follow: true, create: false })?;
        let sdino = Self::dir_ino(&sd)?;
        let td = self.nlookup(tstart, tname_dir, Flags { follow: true, create: false })?;
        let tdino = Self::dir_ino(&td)?;
        let mount = sd.slot().mount.load(Ordering::Relaxed);
        if mount != td.slot().mount.load(Ordering::Relaxed) {
            return Err(Errno::XDev);
        }
        // `.`, `..` or `/` as either last component: EBUSY, as Linux answers
        // (POSIX says EINVAL; the differential corpus holds us to the kernel).
        for n in [fname, tname] {
            if n == b"." || n == b".." || n == b"/" {
                return Err(Errno::Busy);
            }
        }
        let (src, _) = self.child(&sd, sd.state(), fname)?;
        let src_gen = src.snap().seq;
        let Some(sa) = src.attr() else { return Err(Errno::NoEnt) };
        if from.ends_with(b"/") && sa.kind != Kind::Dir {
            return Err(Errno::NotDir);
        }
        let (dst, _) = self.child(&td, td.state(), tname)?;
        let dst_gen = dst.snap().seq;
        let da = dst.attr();
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
                if x == src {
                    return Err(Errno::Inval);
                }
                p = x.parent();
            }
        }
        for (e, dir) in [(&src, &sd), (&dst, &td)] {
            // A mount point (or a mount's root, which stands in for it) cannot move.
            if e.slot().mount.load(Ordering::Relaxed) != dir.slot().mount.load(Ordering::Relaxed)
                || e.slot().covered_by.load(Ordering::Acquire) != 0
            {
                return Err(Errno::Busy);
            }
        }
        let (first, second) = if src.idx < dst.idx { (&src, &dst) } else { (&dst, &src) };
        let _l1 = first.lock(true);
        let _l2 = second.lock(true);
        // Stale generation: something changed either entry since we looked.
        if src.snap().seq != src_gen || dst.snap().seq != dst_gen {
            return Err(Errno::Again);
        }
        self.c.backend(mount)?.rename(sdino, fname, tdino, tname)?;
        // Relink: the target entry is destroyed; the source takes its place.
        {
            let mut t = self.c.topo();
            let began = self.c.topo_begin(&mut t);
            self.c.destroy_locked(&mut t, dst.idx);
            self.c.relink_locked(&mut t, src.idx, td.idx, tname);
            // Only under a directory still there: once the backend rename emptied
            // it, a concurrent rmdir may have removed it. Running out of slots
            // only costs the shortcut.
            if self.c.snap(sd.idx).code() == C_DIR {
                let _ = self.c.alloc_locked(&mut t, sd.idx, fname, mount, State::Negative, true);
            }
            self.c.topo_end(&mut t, began);
        }
        if let Some(da) = da {
            if da.kind != Kind::Dir && da.nlink > 1 {
                self.invalidate_ino(mount, da.ino);
            }
        }
        Ok(())
    }

    /// The target of the symbolic link at `path`.
    pub fn readlink(&self, start: &Ncp, path: &[u8]) -> Result<Vec<u8>, Errno> {
        let n = self.nlookup(start, path, Flags::default())?;
        self.readlink_at(&n)
    }

    /// The names in the directory at `path` (from the backend; not cached).
    pub fn readdir(&self, start: &Ncp, path: &[u8]) -> Result<Vec<(Vec<u8>, Attr)>, Errno> {
        let d = self.nlookup(start, path, Flags { follow: true, create: false })?;
        self.readdir_at(&d)
    }

    /// The names in directory `dir` (from the backend; not cached). A directory a
    /// mount covers lists the mount's root.
    pub fn readdir_at(&self, dir: &Ncp) -> Result<Vec<(Vec<u8>, Attr)>, Errno> {
        let d = self.cross_down(dir.clone());
        let ino = Self::dir_ino(&d)?;
        self.c.backend(d.slot().mount.load(Ordering::Relaxed))?.readdir(ino)
    }

    /// The target of the symbolic link `ncp`.
    pub fn readlink_at(&self, ncp: &Ncp) -> Result<Vec<u8>, Errno> {
        match ncp.attr() {
            Some(a) if a.kind == Kind::Symlink => Ok(self.readlink_cached(ncp)?.to_vec()),
            Some(_) => Err(Errno::Inval),
            None => Err(Errno::NoEnt),
        }
    }

    // ---- file data --------------------------------------------------------------

    /// The attributes of `ncp`, asking the backend again if they were invalidated
    /// (`NoEnt` if the entry is negative or was removed).
    ///
    /// ```
    /// use dfly_namecache::{MemFs, Namecache};
    /// use std::sync::Arc;
    /// let nc = Namecache::new(Arc::new(MemFs::new()));
    /// let f = nc.create(&nc.root(), b"/f", 0o644).unwrap();
    /// nc.invalidate(&f);
    /// assert_eq!(f.attr(), None, "forgotten");
    /// assert_eq!(nc.getattr(&f).unwrap().mode, 0o644, "asked again");
    /// ```
    pub fn getattr(&self, ncp: &Ncp) -> Result<Attr, Errno> {
        for _ in 0..RETRIES {
            match ncp.state() {
                State::Positive(a) => return Ok(a),
                State::Negative | State::Destroyed => return Err(Errno::NoEnt),
                State::Unresolved => {}
            }
            let Some(p) = ncp.parent() else { return Err(Errno::NoEnt) };
            let name = ncp.name();
            let (e, st) = self.child(&p, p.state(), &name)?;
            if e != *ncp {
                // Renamed or replaced meanwhile: look at it again.
                self.c.count_restart();
                continue;
            }
            if let State::Positive(a) = st {
                return Ok(a);
            }
        }
        Err(Errno::Again)
    }

    fn file_of(&self, ncp: &Ncp) -> Result<(u32, Attr), Errno> {
        match self.getattr(ncp).ok() {
            Some(a) if a.kind == Kind::File => Ok((ncp.slot().mount.load(Ordering::Relaxed), a)),
            Some(a) if a.kind == Kind::Dir => Err(Errno::IsDir),
            Some(_) => Err(Errno::Inval),
            None => Err(Errno::NoEnt),
        }
    }

    /// Reads up to `len` bytes of the regular file `ncp` from `off`.
    pub fn read(&self, ncp: &Ncp, off: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let (mount, a) = self.file_of(ncp)?;
        self.c.backend(mount)?.read(a.ino, off, len)
    }

    /// Writes `data` into the regular file `ncp` at `off`; the cached attributes
    /// (size) follow.
    ///
    /// ```
    /// use dfly_namecache::{MemFs, Namecache};
    /// use std::sync::Arc;
    /// let nc = Namecache::new(Arc::new(MemFs::new()));
    /// let f = nc.create(&nc.root(), b"/f", 0o644).unwrap();
    /// nc.write(&f, 0, b"hello").unwrap();
    /// assert_eq!(nc.stat(&nc.root(), b"/f").unwrap().size, 5);
    /// assert_eq!(nc.read(&f, 1, 3).unwrap(), b"ell");
    /// ```
    pub fn write(&self, ncp: &Ncp, off: u64, data: &[u8]) -> Result<u32, Errno> {
        let (mount, a) = self.file_of(ncp)?;
        let be = self.c.backend(mount)?;
        let n = be.write(a.ino, off, data)?;
        self.refresh(ncp, mount, be.getattr(a.ino)?);
        Ok(n)
    }

    /// Changes the size and/or permission bits of `ncp`; returns the new attributes.
    pub fn setattr(&self, ncp: &Ncp, size: Option<u64>, mode: Option<u32>) -> Result<Attr, Errno> {
        let a = self.getattr(ncp)?;
        if size.is_some() && a.kind != Kind::File {
            return Err(if a.kind == Kind::Dir { Errno::IsDir } else { Errno::Inval });
        }
        let mount = ncp.slot().mount.load(Ordering::Relaxed);
        if size.is_none() && mode.is_none() {
            return Ok(a);
        }
        let na = self.c.backend(mount)?.setattr(a.ino, size, mode)?;
        self.refresh(ncp, mount, na);
        Ok(na)
    }

    /// Stores new attributes of `ncp` (and forgets other names of the same file,
    /// whose cached attributes are now stale).
    fn refresh(&self, ncp: &Ncp, mount: u32, a: Attr) {
        if a.kind != Kind::Dir && a.nlink > 1 {
            self.invalidate_ino(mount, a.ino);
        }
        self.set_state(ncp, State::Positive(a));
    }

    /// The path of `ncp` from the root, in O(depth); works for removed entries
    /// (flagged `deleted`). Mount roots stand for the directories they cover.
    ///
    /// ```
    /// use dfly_namecache::{Flags, MemFs, Namecache};
    /// use std::sync::Arc;
    /// let nc = Namecache::new(Arc::new(MemFs::new()));
    /// let r = nc.root();
    /// let cwd = nc.mkdir(&r, b"/gone", 0o755).unwrap();
    /// nc.rmdir(&r, b"/gone").unwrap();
    /// let fp = nc.fullpath(&cwd);
    /// assert_eq!((fp.path.as_slice(), fp.deleted), (&b"/gone"[..], true));
    /// ```
    pub fn fullpath(&self, ncp: &Ncp) -> FullPath {
        if let Some(fp) = self.fullpath_fast(ncp) {
            return fp;
        }
        for _ in 0..64 {
            let r0 = self.c.topo_seq.load(Ordering::Acquire);
            if r0 & 1 == 0 {
                let fp = self.fullpath_once(ncp);
                if self.c.topo_seq.load(Ordering::Acquire) == r0 {
                    return fp;
                }
            }
            // Wait for the rename in progress.
            drop(lock(&self.c.rename_lock));
        }
        // Renames keep coming: hold them off.
        let _serial = lock(&self.c.rename_lock);
        self.fullpath_once(ncp)
    }

    /// The optimistic fullpath: climbs the parent links reading each slot under
    /// its seqlock, with no pin, no lock and one allocation (the result, built
    /// backwards and reversed), bracketed by the topology sequence. The held
    /// entry pins its whole chain, so no slot on it is freed or reused, and only a
    /// relink (which makes the sequence odd) changes a parent link or a name.
    /// `None` (take the locked climb): a mount root or another entry outside the
    /// index but not destroyed, a name longer than the inline part, a chain that
    /// ends before the root, or a concurrent change.
    pub(crate) fn fullpath_fast(&self, ncp: &Ncp) -> Option<FullPath> {
        let c = &*self.c;
        let r0 = c.topo_seq.load(Ordering::Acquire);
        if r0 & 1 != 0 {
            return None;
        }
        let mut rev = Vec::with_capacity(64);
        let mut deleted = false;
        let mut cur = ncp.idx;
        // Each level adds at least two bytes: a longer chain is not a path.
        for _ in 0..PATH_MAX / 2 {
            if cur == c.root {
                fence(Ordering::Acquire);
                if c.topo_seq.load(Ordering::Relaxed) != r0 {
                    return None;
                }
                rev.reverse();
                if rev.is_empty() {
                    rev.push(b'/');
                }
                return Some(FullPath { path: rev, deleted });
            }
            let s = c.arena.get(cur).try_read()?;
            if s.code() == C_DESTROYED {
                deleted = true;
            } else if !s.hashed() {
                return None;
            }
            let len = s.len();
            if len > crate::slots::INLINE || s.parent == NIL {
                return None;
            }
            for i in (0..len).rev() {
                rev.push((s.words[i / 8] >> (8 * (i % 8))) as u8);
            }
            rev.push(b'/');
            cur = s.parent;
        }
        None
    }

    pub(crate) fn fullpath_once(&self, ncp: &Ncp) -> FullPath {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut deleted = false;
        let mut e = ncp.clone();
        loop {
            if e.idx == self.c.root {
                break;
            }
            if e.snap().code() == C_DESTROYED {
                deleted = true;
            }
            if let Some(o) = self.c.covered_dir(e.idx) {
                e = e.pin(o);
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

    // ---- invalidation -----------------------------------------------------------

    /// Forgets what is cached about `ncp` (it is resolved again on next use).
    pub fn invalidate(&self, ncp: &Ncp) {
        if ncp.idx == self.c.root || self.c.covered_dir(ncp.idx).is_some() {
            return;
        }
        let idx = ncp.idx;
        self.c.acquire(idx, |w| {
            (w & crate::slots::L_RESOLVING == 0).then_some(w | crate::slots::L_RESOLVING)
        });
        {
            let mut t = self.c.topo();
            let s = ncp.snap();
            if s.code() != C_DESTROYED && s.hashed() {
                self.c.set_state_locked(&mut t, idx, State::Unresolved);
            }
        }
        lock(&self.c.symlinks).remove(&idx);
        self.c.unlock_entry(idx, |w| w & !crate::slots::L_RESOLVING);
    }

    /// Forgets every cached child of directory `dir`.
    pub fn invalidate_children(&self, dir: &Ncp) {
        let kids = self.scan(|s| s.parent == dir.idx);
        for k in kids {
            self.invalidate(&k);
        }
    }

    /// Indexed entries whose snapshot satisfies `f`, pinned.
    fn scan(&self, f: impl Fn(&crate::slots::Snap) -> bool) -> Vec<Ncp> {
        let t = self.c.topo();
        let mut out = Vec::new();
        for i in 0..t_next(&t) {
            let s = self.c.snap(i);
            if s.hashed() && f(&s) {
                out.push(self.pin(i));
            }
        }
        drop(t);
        out
    }

    /// Forgets every entry of mount `mount` naming inode `ino` (all its hard-link
    /// aliases).
    pub(crate) fn invalidate_ino(&self, mount: u32, ino: Ino) {
        let hits = self.scan(|s| s.mount == mount && attr_of(s).is_some_and(|a| a.ino == ino));
        for e in hits {
            self.invalidate(&e);
        }
    }

    /// Forgets every entry naming backend inode `ino` in the root mount (aliases).
    pub fn invalidate_backend_id(&self, ino: Ino) {
        self.invalidate_ino(0, ino);
    }

    /// Test hook: the number of negative entries under `dir`'s slot that are
    /// indexed, counted by a scan (to check the per-parent bookkeeping).
    #[cfg(test)]
    pub(crate) fn negatives_under(&self, dir: &Ncp) -> usize {
        self.scan(|s| s.parent == dir.idx && s.code() == crate::slots::C_NEGATIVE).len()
    }
}

fn t_next(t: &crate::topo::Topo) -> u32 {
    t.next()
}
