//! `dfly-slaballoc`: DragonFly BSD's per-CPU slab allocator (`kern_slaballoc.c`) for
//! ordinary Rust programs, with or without an LWKT machine.
//!
//! - Memory comes in 128 KiB **zones** aligned to their size; `free` finds a chunk's
//!   zone header by masking its address. Each zone serves one of 72 **size classes**
//!   ([`class`]): 8-byte steps below 128 bytes, then 8 classes per power of two up to
//!   16 KiB; power-of-two sizes come back naturally aligned. Larger requests are page
//!   mappings (module `large`).
//! - Each "CPU" has a **slot** of state only its holder touches: per-class zone lists,
//!   a free-zone cache, a slide so new zones spread first allocations over cache
//!   lines. An LWKT/ipi CPU (`dfly_core::current_cpu()` is `Some`) uses its own CPU's
//!   slot; any other thread leases a slot on first use and gives it back, drained, when
//!   it exits; the next thread adopts it (module `thread`).
//! - A free on a thread that does not hold the zone's slot is a **remote free** (module
//!   `zone`): a lock-free push on the zone's remote list, with a notification to the
//!   owner only when the zone had dropped off its owner's list, and a pin while the
//!   freer still touches the zone (DragonFly's design, [`RemoteMode::PerZone`]); or, by
//!   default, snmalloc-style batches per destination slot, one CAS per batch
//!   ([`RemoteMode::Batched`], which measured faster). When the owner is a CPU slot and
//!   the freer runs as a dfly-ipi CPU, the notification is also a passive IPI, so the
//!   owner services it at its next poll (module `notify`).
//! - **Hysteresis**: free never calls the OS for zone memory. A slot caches at most
//!   [`Config::zone_rels_thresh`] (default 4) fully free zones; free hands the excess
//!   to the instance's release list, where a malloc slow path reuses it and the
//!   **reaper**, a background thread every [`Config::reap_ms`] that also cleans slots
//!   no thread holds, unmaps what sat there a whole round, so memory comes back after
//!   a bulk free even if the program never allocates again. [`Slab::cleanup`]
//!   and [`Slab::trim`] do the same on demand.
//! - **Fork**: `pthread_atfork` handlers keep the allocator's locks consistent in the
//!   child (module `fork`).
//! - [`SlabAlloc`] is a `#[global_allocator]`; [`Slab`] is an instance with its own
//!   configuration and counters ([`Stats`]).
//! - [`ObjCache`] is a typed object cache (module [`objcache`]): per-CPU magazines in
//!   front of a depot; constructors run only on fresh objects.
//!
//! ```
//! use dfly_slaballoc::{Config, RemoteMode, Slab};
//! use std::alloc::Layout;
//!
//! static HEAP: Slab = Slab::with_config(Config { remote: RemoteMode::PerZone, ..Config::DEFAULT });
//! let l = Layout::from_size_align(64, 64).unwrap();
//! let p = HEAP.alloc(l) as usize;
//! assert_eq!(p % 64, 0);
//! // Freed on another thread: a remote free onto the zone's own list.
//! std::thread::spawn(move || unsafe { HEAP.dealloc(p as *mut u8) }).join().unwrap();
//! HEAP.trim();
//! assert_eq!(HEAP.stats().in_use, 0);
//! assert_eq!(HEAP.stats().zone_bytes, 0);
//! ```
//!
//! # Unsafe code
//! Confined to: `os` (system calls), `zone` (chunk links and zone headers in raw
//! memory), `slot` and `heap` (dereferencing zone and slot pointers), `large` (header
//! pages), `thread` (the pthread key), `fork` (`pthread_atfork`), `notify` (the slot
//! behind a mailbox), `global` (the `GlobalAlloc` impl); `debug` (chunk words, bitmaps,
//! `write`/`abort`), `objcache` (magazine slots), `kind` (calls into the unsafe free).
//! [`class`] and `lock` are safe code.
//!
//! # Faults
//! Every build ignores a free of a foreign pointer and aborts with a message on a
//! double free of a chunk of 16 bytes or more (a key in the freed chunk), on a chunk
//! freed twice in a row (any size) and on a free inside a large block; the `debug`
//! feature adds a per-zone in-use bitmap (every double free, 8-byte chunks included),
//! interior and unmapped pointer checks, and poisoning verified on reuse (module
//! [`debug`]).
//!
//! # The C library
//! The package `dfly-slaballoc-cabi` (in `cabi/`) builds `libdfly_slaballoc_c.so`,
//! the malloc family over [`global::DEFAULT`] for `LD_PRELOAD`; its test runs
//! `python3`, `sort` and `git` under it.

pub mod class;
pub mod debug;
#[cfg(not(loom))]
mod fork;
#[cfg(not(loom))]
pub mod global;
#[cfg(not(loom))]
mod heap;
#[cfg(not(loom))]
mod kind;
#[cfg(not(loom))]
mod large;
#[cfg(not(loom))]
mod lock;
#[cfg(not(loom))]
mod notify;
#[cfg(not(loom))]
pub mod objcache;
#[cfg(not(loom))]
mod os;
#[cfg(not(loom))]
mod slot;
#[cfg(not(loom))]
mod thread;
mod zone;

#[cfg(test)]
mod tests;

#[cfg(not(loom))]
pub use global::SlabAlloc;
#[cfg(not(loom))]
pub use heap::{Config, RemoteMode, Slab, Stats, REAPER_AFTER_BYTES};
#[cfg(not(loom))]
pub use kind::{Kind, KindError};
#[cfg(not(loom))]
pub use objcache::{Obj, ObjCache};
#[cfg(not(loom))]
pub use thread::MAX_INSTANCES;
