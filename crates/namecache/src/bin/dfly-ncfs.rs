//! `dfly-ncfs`: serves a namecache-backed filesystem over FUSE, so ordinary
//! programs (`ls`, `find`, `cp -r`, `tar`, `git`) run against it.
//!
//! ```text
//! dfly-ncfs MOUNTPOINT --host DIR   # pass through to a host directory (confined to it)
//! dfly-ncfs MOUNTPOINT --mem        # an in-memory filesystem
//! ```
//! The process serves requests until the mount point is unmounted (`umount`).
//!
//! # Inodes and handles
//! FUSE names files by inode numbers it got from `lookup`, `mkdir`, `create`,
//! `symlink` and `link`, and returns them with `forget(ino, n)`. This server hands
//! out its own numbers (1 is the root; numbers are never reused), one per backend
//! file (hard links share it), and keeps for each a namecache handle ([`Ncp`], the
//! latest name seen) and the kernel's lookup count; the handle keeps the entry (and
//! its parents) alive until the kernel forgets it, so a working directory inside a
//! renamed directory stays usable. Every request runs on the session's single
//! thread, so the table needs no lock.
//!
//! Not kept: owners, times (shown as root and the epoch; changes to them succeed
//! and do nothing), data of a file after its last name is removed while it is open.
//!
//! What never happens: a namespace change that bypasses the namecache (every
//! create, remove, rename and link goes through it, and through it to the backend);
//! an inode number naming two entries over the life of the mount.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use dfly_namecache::{Attr, Backend, Errno, Flags, HostFs, Kind, MemFs, Namecache, Ncp};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

/// How long the kernel may keep what we tell it (the namecache stays the
/// authority; every change goes through this server).
const TTL: Duration = Duration::from_secs(1);
const ROOT_INO: u64 = 1;

struct Node {
    /// The most recently seen name of the file (hard links share one node).
    ncp: Ncp,
    /// The backend's inode number.
    file: u64,
    lookups: u64,
}

struct NcFs {
    nc: Namecache,
    nodes: HashMap<u64, Node>,
    /// FUSE inode by backend inode, so hard links are one inode to the kernel.
    inos: HashMap<u64, u64>,
    next: u64,
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::Other => FileType::NamedPipe,
    }
}

fn file_attr(ino: u64, a: Attr) -> FileAttr {
    FileAttr {
        ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl NcFs {
    fn new(nc: Namecache) -> NcFs {
        let mut fs = NcFs { nc, nodes: HashMap::new(), inos: HashMap::new(), next: ROOT_INO + 1 };
        let root = fs.nc.root();
        let file = root.attr().map_or(0, |a| a.ino);
        fs.inos.insert(file, ROOT_INO);
        // The root is never forgotten.
        fs.nodes.insert(ROOT_INO, Node { ncp: root, file, lookups: 1 });
        fs
    }

    fn ncp(&self, ino: u64) -> Result<Ncp, Errno> {
        self.nodes.get(&ino).map(|n| n.ncp.clone()).ok_or(Errno::NoEnt)
    }

    /// The inode number for the file `ncp` names, counting one kernel lookup.
    fn remember(&mut self, ncp: Ncp, a: Attr) -> u64 {
        if let Some(&ino) = self.inos.get(&a.ino) {
            if let Some(n) = self.nodes.get_mut(&ino) {
                n.lookups += 1;
                n.ncp = ncp;
            }
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.inos.insert(a.ino, ino);
        self.nodes.insert(ino, Node { ncp, file: a.ino, lookups: 1 });
        ino
    }

    fn entry(&mut self, r: Result<Ncp, Errno>, reply: ReplyEntry) {
        match r.and_then(|n| self.nc.getattr(&n).map(|a| (n, a))) {
            Ok((n, a)) => {
                let ino = self.remember(n, a);
                reply.entry(&TTL, &file_attr(ino, a), 0);
            }
            Err(e) => reply.error(e.raw()),
        }
    }
}

fn empty(r: Result<(), Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.raw()),
    }
}

fn attr(ino: u64, r: Result<Attr, Errno>, reply: ReplyAttr) {
    match r {
        Ok(a) => reply.attr(&TTL, &file_attr(ino, a)),
        Err(e) => reply.error(e.raw()),
    }
}

fn data(r: Result<Vec<u8>, Errno>, reply: ReplyData) {
    match r {
        Ok(d) => reply.data(&d),
        Err(e) => reply.error(e.raw()),
    }
}

fn name_ok(name: &OsStr) -> Result<&[u8], Errno> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') {
        return Err(Errno::Inval);
    }
    Ok(b)
}

impl Filesystem for NcFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let r = self.ncp(parent).and_then(|d| {
            let n = name_ok(name)?;
            self.nc.nlookup(&d, n, Flags::default())
        });
        self.entry(r, reply);
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        if ino == ROOT_INO {
            return;
        }
        let gone = match self.nodes.get_mut(&ino) {
            Some(n) => {
                n.lookups = n.lookups.saturating_sub(nlookup);
                n.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(n) = self.nodes.remove(&ino) {
                self.inos.remove(&n.file);
            }
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        attr(ino, self.ncp(ino).and_then(|n| self.nc.getattr(&n)), reply);
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        // Owners and times are not kept: those changes succeed and change nothing.
        attr(ino, self.ncp(ino).and_then(|n| self.nc.setattr(&n, size, mode)), reply);
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        data(self.ncp(ino).and_then(|n| self.nc.readlink_at(&n)), reply);
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .ncp(parent)
            .and_then(|d| self.nc.mkdir(&d, name_ok(name)?, mode & !umask & 0o7777));
        self.entry(r, reply);
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(self.ncp(parent).and_then(|d| self.nc.unlink(&d, name_ok(name)?)), reply);
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        empty(self.ncp(parent).and_then(|d| self.nc.rmdir(&d, name_ok(name)?)), reply);
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let r = self
            .ncp(parent)
            .and_then(|d| self.nc.symlink(&d, name_ok(link_name)?, target.as_os_str().as_bytes()));
        self.entry(r, reply);
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags != 0 {
            // RENAME_NOREPLACE / RENAME_EXCHANGE are not offered.
            reply.error(Errno::Inval.raw());
            return;
        }
        let r = self.ncp(parent).and_then(|s| {
            let t = self.ncp(newparent)?;
            self.nc.rename_at(&s, name_ok(name)?, &t, name_ok(newname)?)
        });
        empty(r, reply);
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = self.ncp(ino).and_then(|src| {
            let d = self.ncp(newparent)?;
            self.nc.link_at(&src, &d, name_ok(newname)?)
        });
        self.entry(r, reply);
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        match self.ncp(ino) {
            Ok(_) => reply.opened(0, 0),
            Err(e) => reply.error(e.raw()),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let off = u64::try_from(offset).map_err(|_| Errno::Inval);
        data(off.and_then(|off| self.ncp(ino).and_then(|n| self.nc.read(&n, off, size))), reply);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let off = u64::try_from(offset).map_err(|_| Errno::Inval);
        match off.and_then(|off| self.ncp(ino).and_then(|n| self.nc.write(&n, off, data))) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.raw()),
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let d = match self.ncp(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e.raw()),
        };
        let list = match self.nc.readdir_at(&d) {
            Ok(l) => l,
            Err(e) => return reply.error(e.raw()),
        };
        let mut all: Vec<(u64, FileType, Vec<u8>)> = vec![
            (ino, FileType::Directory, b".".to_vec()),
            (ino, FileType::Directory, b"..".to_vec()),
        ];
        all.extend(list.into_iter().map(|(n, a)| (a.ino, file_type(a.kind), n)));
        let skip = usize::try_from(offset).unwrap_or(0);
        for (i, (eino, kind, name)) in all.into_iter().enumerate().skip(skip) {
            // The offset handed back is where the next call resumes.
            if reply.add(eino.max(1), (i + 1) as i64, kind, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self
            .ncp(parent)
            .and_then(|d| self.nc.create(&d, name_ok(name)?, mode & !umask & 0o7777));
        match r.and_then(|n| self.nc.getattr(&n).map(|a| (n, a))) {
            Ok((n, a)) => {
                let ino = self.remember(n, a);
                reply.created(&TTL, &file_attr(ino, a), 0, 0, 0);
            }
            Err(e) => reply.error(e.raw()),
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: dfly-ncfs MOUNTPOINT (--host DIR | --mem)");
    std::process::exit(2);
}

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let (mnt, backend): (PathBuf, Arc<dyn Backend>) = match args.as_slice() {
        [m, flag, dir] if flag == "--host" => match HostFs::open(Path::new(dir)) {
            Ok(h) => (PathBuf::from(m), Arc::new(h)),
            Err(e) => {
                eprintln!("dfly-ncfs: {}: {e}", Path::new(dir).display());
                std::process::exit(1);
            }
        },
        [m, flag] if flag == "--mem" => (PathBuf::from(m), Arc::new(MemFs::new())),
        _ => usage(),
    };
    let fs = NcFs::new(Namecache::new(backend));
    let opts = [MountOption::FSName("dfly-ncfs".into()), MountOption::Subtype("dfly".into())];
    if let Err(e) = fuser::mount2(fs, &mnt, &opts) {
        eprintln!("dfly-ncfs: mount on {}: {e}", mnt.display());
        std::process::exit(1);
    }
}
