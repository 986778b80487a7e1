//! A backend that passes through to a host directory, confined to it.
//!
//! Every operation is a `*at` system call relative to a directory file descriptor
//! (`O_PATH`) that this backend opened itself, starting from the root directory's
//! descriptor. The backend only ever receives single names (never `..`, never a
//! `/`), looks them up without following symbolic links, and answers `..` of its
//! root with the root; the namecache above it follows symbolic links itself, against
//! its own root. So no operation can reach outside the host directory (short of
//! someone else moving a directory out of it while we hold its descriptor).
//!
//! Inode numbers are the host's, folded with the device number so that a different
//! file system mounted inside the root cannot collide.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::backend::{Attr, Backend, Ino, Kind};
use crate::Errno;

/// A host directory as a namecache backend.
///
/// ```
/// use dfly_namecache::{HostFs, Namecache};
/// use std::sync::Arc;
/// let dir = std::env::temp_dir().join(format!("dfly-hostfs-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let nc = Namecache::new(Arc::new(HostFs::open(&dir).unwrap()));
/// nc.mkdir(&nc.root(), b"/made", 0o755).unwrap();
/// assert!(dir.join("made").is_dir());
/// // `..` at the root stays at the root: the host's parent is out of reach.
/// assert_eq!(nc.nlookup(&nc.root(), b"/../..", Default::default()).unwrap(), nc.root());
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct HostFs {
    root: Ino,
    /// Directory descriptors by inode (`O_PATH`): they follow renames.
    dirs: Mutex<HashMap<Ino, OwnedFd>>,
    /// Where each non-directory was last seen, for `link` and `readlink`.
    files: Mutex<HashMap<Ino, (Ino, Vec<u8>)>>,
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

fn fold(dev: u64, ino: u64) -> Ino {
    ino ^ (dev.rotate_left(40))
}

// The `Stat` field types differ between architectures (u64, c_ulong, u32, c_uint),
// so the casts are needed on some targets and no-ops on others.
#[allow(clippy::unnecessary_cast)]
fn attr_of(st: &rustix::fs::Stat) -> Attr {
    let kind = match FileType::from_raw_mode(st.st_mode as _) {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    Attr {
        ino: fold(st.st_dev as u64, st.st_ino as u64),
        kind,
        nlink: st.st_nlink as u32,
        size: st.st_size as u64,
        mode: (st.st_mode as u32) & 0o7777,
    }
}

fn check(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(Errno::Inval);
    }
    Ok(())
}

impl HostFs {
    /// Opens the host directory `root`.
    pub fn open(root: &Path) -> Result<HostFs, Errno> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        let ino = attr_of(&st).ino;
        let mut dirs = HashMap::new();
        dirs.insert(ino, fd);
        Ok(HostFs { root: ino, dirs: Mutex::new(dirs), files: Mutex::new(HashMap::new()) })
    }

    fn with_dir<R>(
        &self,
        dir: Ino,
        f: impl FnOnce(&OwnedFd) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        let g = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let fd = g.get(&dir).ok_or(Errno::NoEnt)?;
        f(fd)
    }

    /// Records what a lookup found: a descriptor for a directory, the place of
    /// anything else.
    fn remember(&self, dir: Ino, name: &[u8], a: &Attr) -> Result<(), Errno> {
        if a.kind == Kind::Dir {
            let mut g = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
            if !g.contains_key(&a.ino) {
                let parent = g.get(&dir).ok_or(Errno::NoEnt)?;
                let fd = rustix::fs::openat(
                    parent.as_fd(),
                    name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno)?;
                g.insert(a.ino, fd);
            }
        } else {
            let mut g = self.files.lock().unwrap_or_else(|p| p.into_inner());
            g.insert(a.ino, (dir, name.to_vec()));
        }
        Ok(())
    }

    fn stat_child(&self, dir: Ino, name: &[u8]) -> Result<Attr, Errno> {
        let a = self.with_dir(dir, |fd| {
            rustix::fs::statat(fd.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| attr_of(&st))
                .map_err(errno)
        })?;
        self.remember(dir, name, &a)?;
        Ok(a)
    }
}

impl Backend for HostFs {
    fn root(&self) -> Ino {
        self.root
    }

    fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<Attr>, Errno> {
        check(name)?;
        match self.stat_child(dir, name) {
            Ok(a) => Ok(Some(a)),
            Err(Errno::NoEnt) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn lookup_dotdot(&self, dir: Ino) -> Result<Ino, Errno> {
        if dir == self.root {
            return Ok(self.root);
        }
        let a = self.with_dir(dir, |fd| {
            rustix::fs::statat(fd.as_fd(), "..", AtFlags::SYMLINK_NOFOLLOW)
                .map(|st| attr_of(&st))
                .map_err(errno)
        })?;
        Ok(a.ino)
    }

    fn getattr(&self, ino: Ino) -> Result<Attr, Errno> {
        if let Ok(a) =
            self.with_dir(ino, |fd| rustix::fs::fstat(fd).map(|st| attr_of(&st)).map_err(errno))
        {
            return Ok(a);
        }
        let place = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned();
        match place {
            Some((dir, name)) => self.stat_child(dir, &name),
            None => Err(Errno::NoEnt),
        }
    }

    fn create(&self, dir: Ino, name: &[u8], mode: u32) -> Result<Attr, Errno> {
        check(name)?;
        self.with_dir(dir, |fd| {
            rustix::fs::openat(
                fd.as_fd(),
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_bits_truncate(mode as _),
            )
            .map(drop)
            .map_err(errno)
        })?;
        self.stat_child(dir, name)
    }

    fn mkdir(&self, dir: Ino, name: &[u8], mode: u32) -> Result<Attr, Errno> {
        check(name)?;
        self.with_dir(dir, |fd| {
            rustix::fs::mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(mode as _))
                .map_err(errno)
        })?;
        self.stat_child(dir, name)
    }

    fn symlink(&self, dir: Ino, name: &[u8], target: &[u8]) -> Result<Attr, Errno> {
        check(name)?;
        self.with_dir(dir, |fd| rustix::fs::symlinkat(target, fd.as_fd(), name).map_err(errno))?;
        self.stat_child(dir, name)
    }

    fn link(&self, ino: Ino, dir: Ino, name: &[u8]) -> Result<Attr, Errno> {
        check(name)?;
        let place = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned();
        let Some((odir, oname)) = place else { return Err(Errno::NoEnt) };
        let g = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let ofd = g.get(&odir).ok_or(Errno::NoEnt)?;
        let nfd = g.get(&dir).ok_or(Errno::NoEnt)?;
        rustix::fs::linkat(ofd.as_fd(), oname.as_slice(), nfd.as_fd(), name, AtFlags::empty())
            .map_err(errno)?;
        drop(g);
        self.stat_child(dir, name)
    }

    fn remove(&self, dir: Ino, name: &[u8]) -> Result<(), Errno> {
        check(name)?;
        self.with_dir(dir, |fd| {
            rustix::fs::unlinkat(fd.as_fd(), name, AtFlags::empty()).map_err(errno)
        })
    }

    fn rmdir(&self, dir: Ino, name: &[u8]) -> Result<(), Errno> {
        check(name)?;
        let a = self.stat_child(dir, name)?;
        self.with_dir(dir, |fd| {
            rustix::fs::unlinkat(fd.as_fd(), name, AtFlags::REMOVEDIR).map_err(errno)
        })?;
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).remove(&a.ino);
        Ok(())
    }

    fn rename(&self, sdir: Ino, sname: &[u8], tdir: Ino, tname: &[u8]) -> Result<(), Errno> {
        check(sname)?;
        check(tname)?;
        let g = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let s = g.get(&sdir).ok_or(Errno::NoEnt)?;
        let t = g.get(&tdir).ok_or(Errno::NoEnt)?;
        rustix::fs::renameat(s.as_fd(), sname, t.as_fd(), tname).map_err(errno)?;
        drop(g);
        // A moved non-directory is now found under its new name.
        let _ = self.stat_child(tdir, tname);
        Ok(())
    }

    fn readlink(&self, ino: Ino) -> Result<Vec<u8>, Errno> {
        let place = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned();
        let Some((dir, name)) = place else { return Err(Errno::NoEnt) };
        self.with_dir(dir, |fd| {
            rustix::fs::readlinkat(fd.as_fd(), name.as_slice(), Vec::new())
                .map(|c| c.into_bytes())
                .map_err(errno)
        })
    }

    fn readdir(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Attr)>, Errno> {
        let names: Vec<Vec<u8>> = self.with_dir(dir, |fd| {
            let d = rustix::fs::openat(
                fd.as_fd(),
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            let it = rustix::fs::Dir::read_from(&d).map_err(errno)?;
            let mut out = Vec::new();
            for ent in it {
                let ent = ent.map_err(errno)?;
                let n = ent.file_name().to_bytes();
                if n != b"." && n != b".." {
                    out.push(n.to_vec());
                }
            }
            Ok(out)
        })?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Ok(a) = self.stat_child(dir, &n) {
                out.push((n, a));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    fn read(&self, ino: Ino, off: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let fd = self.open_file(ino, OFlags::RDONLY)?;
        let mut buf = vec![0u8; len as usize];
        let mut got = 0;
        while got < buf.len() {
            let n = rustix::io::pread(&fd, &mut buf[got..], off + got as u64).map_err(errno)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn write(&self, ino: Ino, off: u64, data: &[u8]) -> Result<u32, Errno> {
        let fd = self.open_file(ino, OFlags::WRONLY)?;
        let mut done = 0;
        while done < data.len() {
            done += rustix::io::pwrite(&fd, &data[done..], off + done as u64).map_err(errno)?;
        }
        Ok(done as u32)
    }

    fn setattr(&self, ino: Ino, size: Option<u64>, mode: Option<u32>) -> Result<Attr, Errno> {
        if let Some(size) = size {
            let fd = self.open_file(ino, OFlags::WRONLY)?;
            rustix::fs::ftruncate(&fd, size).map_err(errno)?;
        }
        if let Some(mode) = mode {
            let mode = Mode::from_bits_truncate((mode & 0o7777) as _);
            let dir = self.with_dir(ino, |fd| {
                // A directory: change it through its own descriptor's path.
                rustix::fs::chmodat(fd.as_fd(), ".", mode, AtFlags::empty()).map_err(errno)
            });
            if dir.is_err() {
                let place = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned();
                let Some((d, name)) = place else { return Err(Errno::NoEnt) };
                self.with_dir(d, |fd| {
                    rustix::fs::chmodat(fd.as_fd(), name.as_slice(), mode, AtFlags::empty())
                        .map_err(errno)
                })?;
            }
        }
        self.getattr(ino)
    }
}

impl HostFs {
    /// Opens the regular file `ino` where it was last seen (never following a
    /// symbolic link, never outside the root).
    fn open_file(&self, ino: Ino, how: OFlags) -> Result<OwnedFd, Errno> {
        let place = self.files.lock().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned();
        let Some((dir, name)) = place else {
            return Err(if self.with_dir(ino, |_| Ok(())).is_ok() {
                Errno::IsDir
            } else {
                Errno::NoEnt
            });
        };
        let fd = self.with_dir(dir, |d| {
            rustix::fs::openat(
                d.as_fd(),
                name.as_slice(),
                how | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)
        })?;
        let st = rustix::fs::fstat(&fd).map_err(errno)?;
        if attr_of(&st).ino != ino {
            // Something else has that name now.
            return Err(Errno::NoEnt);
        }
        Ok(fd)
    }
}
