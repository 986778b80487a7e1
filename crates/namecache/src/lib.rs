//! `dfly-namecache`: a namecache that is the authority on a namespace, as in
//! DragonFly, usable in any program (no LWKT machine needed).
//!
//! Entries are connected (every entry's parent chain reaches the root) and keyed by
//! (parent, name) in a hash with random SipHash keys. An entry is unresolved,
//! positive, negative or destroyed; it can be locked shared or exclusive in any of
//! those states, so a locked *negative* entry reserves a name that does not exist
//! yet. Concurrent misses on one name make one backend call. `rename` relinks the
//! source entry itself, so renaming a directory costs the same whatever is cached
//! under it and every handle inside it stays valid; `fullpath` works on removed but
//! still-held entries. [`Namecache::nlookup`] implements the path rules (`.`, `..`
//! as its own operation, the root's `..`, symlinks up to 40, trailing slashes,
//! `ENAMETOOLONG`, empty paths, NUL, mount crossing). Filesystems plug in through
//! [`Backend`]; [`MemFs`] is an in-memory one and [`HostFs`] passes through to a
//! host directory without ever leaving it.
//!
//! Entries are 88-byte slots of atomics in an arena (names up to 32 bytes inline),
//! found through an open-addressed (parent, name) index: a cached lookup reads
//! slots under their seqlocks and writes nothing shared (no lock, no reference
//! count except the returned entry's when a handle is asked for), and falls back to
//! a locked walk for anything unusual. Negative entries are capped globally and per
//! directory, positive ones globally, with hysteresis; nothing referenced or locked
//! is ever evicted. `slots.rs`, `cache.rs`, `topo.rs` and `ops.rs` state the protocols.
//!
//! ```
//! use dfly_namecache::{Errno, Flags, MemFs, Namecache};
//! use std::sync::Arc;
//! let nc = Namecache::new(Arc::new(MemFs::new()));
//! let root = nc.root();
//! nc.mkdir(&root, b"/src", 0o755).unwrap();
//! nc.create(&root, b"/src/main.rs", 0o644).unwrap();
//! nc.symlink(&root, b"/cur", b"src").unwrap();
//! let f = nc.nlookup(&root, b"/cur/main.rs", Flags { follow: true, ..Flags::default() }).unwrap();
//! assert_eq!(nc.fullpath(&f).path, b"/src/main.rs");
//! assert_eq!(nc.stat(&root, b"/src/main.rs/").unwrap_err(), Errno::NotDir);
//! nc.unlink(&root, b"/src/main.rs").unwrap();
//! assert!(nc.fullpath(&f).deleted);
//! ```
#![forbid(unsafe_code)]

mod backend;
mod cache;
mod errno;
mod hints;
mod hostfs;
mod idmap;
mod memfs;
mod ops;
mod slots;
mod topo;

#[cfg(test)]
mod tests;

pub use backend::{Attr, Backend, Ino, Kind};
pub use cache::{
    Flags, FullPath, Limits, Locked, Namecache, NcLock, NcStats, Ncp, DEFAULT_ENTRY_CAP,
    DEFAULT_NEGATIVE_CAP, INLINE_NAME, NAME_MAX, PATH_MAX, SYMLINK_MAX,
};
pub use errno::Errno;
pub use hostfs::HostFs;
pub use memfs::MemFs;
