//! `dfly-slaballoc` will be DragonFly's per-CPU slab allocator in userspace: zones
//! and size classes owned by one CPU, lock-free remote free with a passive IPI to the
//! owner, release hysteresis in malloc only, a `GlobalAlloc`, a typed object cache
//! and a C ABI for `LD_PRELOAD`. It will work in any program, with or without an
//! LWKT machine.
//!
//! **State: not implemented yet.** This crate exports nothing. See
//! `shared/design/slaballoc.md`.
#![forbid(unsafe_code)]
