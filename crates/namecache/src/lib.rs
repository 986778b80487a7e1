//! `dfly-namecache` will be a namecache that is the authority on a namespace, as in
//! DragonFly: connected (parent, name) entries, locked negative entries that reserve
//! names, rename that relinks the source entry, fullpath of deleted-but-held entries,
//! `nlookup`, pluggable backends (memory, host directory) and a FUSE server. It will
//! work in any program, with no LWKT machine.
//!
//! **State: not implemented yet.** This crate exports nothing. See
//! `shared/design/namecache.md`.
#![forbid(unsafe_code)]
