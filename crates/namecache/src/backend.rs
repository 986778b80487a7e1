//! The filesystem interface the namecache drives, and the attributes it caches.
//!
//! The namecache calls a backend only on entries it holds locked: at most one call
//! resolves a given (directory, name) at a time, and every namespace change (create,
//! remove, rename, ...) runs with the affected entries locked exclusively, so the
//! backend never sees two conflicting operations on one name.

use crate::Errno;

/// A backend's identity for a file (its inode number).
pub type Ino = u64;

/// What kind of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else (device, fifo, socket).
    Other,
}

/// The attributes the namecache keeps for a positive entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attr {
    /// Inode number within the backend.
    pub ino: Ino,
    /// File kind.
    pub kind: Kind,
    /// Hard link count.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
}

/// A filesystem the namecache sits on. Directory arguments are inode numbers of
/// directories; names are single components (never empty, `.` or `..`, never with
/// `/` or NUL).
pub trait Backend: Send + Sync + 'static {
    /// The root directory's inode.
    fn root(&self) -> Ino;
    /// Looks `name` up in `dir`: `Ok(None)` if it does not exist.
    fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<Attr>, Errno>;
    /// The parent of directory `dir` (the root's parent is the root).
    fn lookup_dotdot(&self, dir: Ino) -> Result<Ino, Errno>;
    /// Attributes of `ino`.
    fn getattr(&self, ino: Ino) -> Result<Attr, Errno>;
    /// Creates a regular file (fails with `Exist` if the name exists).
    fn create(&self, dir: Ino, name: &[u8], mode: u32) -> Result<Attr, Errno>;
    /// Creates a directory.
    fn mkdir(&self, dir: Ino, name: &[u8], mode: u32) -> Result<Attr, Errno>;
    /// Creates a symbolic link to `target`.
    fn symlink(&self, dir: Ino, name: &[u8], target: &[u8]) -> Result<Attr, Errno>;
    /// Adds a hard link to `ino` (not a directory) as `dir/name`.
    fn link(&self, ino: Ino, dir: Ino, name: &[u8]) -> Result<Attr, Errno>;
    /// Removes a non-directory.
    fn remove(&self, dir: Ino, name: &[u8]) -> Result<(), Errno>;
    /// Removes an empty directory.
    fn rmdir(&self, dir: Ino, name: &[u8]) -> Result<(), Errno>;
    /// Renames `sdir/sname` to `tdir/tname`, replacing a compatible target (POSIX
    /// `rename(2)` semantics).
    fn rename(&self, sdir: Ino, sname: &[u8], tdir: Ino, tname: &[u8]) -> Result<(), Errno>;
    /// The target of a symbolic link.
    fn readlink(&self, ino: Ino) -> Result<Vec<u8>, Errno>;
    /// The names in directory `dir` (for listings; not cached).
    fn readdir(&self, dir: Ino) -> Result<Vec<(Vec<u8>, Attr)>, Errno>;
    /// Reads up to `len` bytes of regular file `ino` from `off` (fewer at the end
    /// of the file). Backends without file data answer `NotSup`.
    fn read(&self, ino: Ino, off: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let _ = (ino, off, len);
        Err(Errno::NotSup)
    }
    /// Writes `data` into regular file `ino` at `off`; returns the bytes written.
    fn write(&self, ino: Ino, off: u64, data: &[u8]) -> Result<u32, Errno> {
        let _ = (ino, off, data);
        Err(Errno::NotSup)
    }
    /// Changes the size (regular files) and/or permission bits of `ino`; returns
    /// the new attributes.
    fn setattr(&self, ino: Ino, size: Option<u64>, mode: Option<u32>) -> Result<Attr, Errno> {
        let _ = (ino, size, mode);
        Err(Errno::NotSup)
    }
}
