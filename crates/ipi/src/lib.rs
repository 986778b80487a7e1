//! `dfly-ipi`: DragonFly BSD's software crossbar for cross-CPU function calls.
//!
//! Every ordered pair of CPUs has its own single-producer/single-consumer FIFO
//! (N x N in all), so sending needs no lock and no compare-and-swap: the source
//! writes a slot `{function, arg1, arg2}` and publishes it with the slot's stamp. Each target
//! has a pending-sender mask, so an idle CPU checks one word rather than 2N queues,
//! and a park word, so a sender makes a wake syscall only when the target is
//! actually asleep and no wakeup is already in flight.
//!
//! What you get:
//! - [`Crossbar`]: build one for `ncpus` CPUs; any OS threads [`attach`](Crossbar::attach)
//!   as its CPUs (no scheduler needed; `dfly-lwkt` uses it for its CPUs).
//! - [`Cpu`]: [`send`](Cpu::send) (a send to self is a direct call),
//!   [`send_passive`](Cpu::send_passive) (no wakeup; picked up at the next poll or
//!   tick), [`send_mask`](Cpu::send_mask), [`wait`](Cpu::wait) for completion,
//!   [`synchronize_all`](Cpu::synchronize_all), [`poll`](Cpu::poll),
//!   [`park`](Cpu::park)/[`poll_or_park`](Cpu::poll_or_park) for idle loops,
//!   cpusync ([`cpusync_interlock`](Cpu::cpusync_interlock),
//!   [`cpusync_simple`](Cpu::cpusync_simple), [`cpusync_quick`](Cpu::cpusync_quick)),
//!   [`stats`](Cpu::stats), and a typed layer ([`send_boxed`](Cpu::send_boxed),
//!   [`call`](Cpu::call)) for closures.
//! - [`Crossbar::send_foreign`] for threads that are not CPUs.
//!
//! A full FIFO never deadlocks: a waiting sender runs its own incoming IPIs, and
//! sends from inside IPI callbacks may use a reserved upper part of the FIFO. See
//! the `crossbar` module documentation (and ARCHITECTURE.md) for the protocol.
//!
//! ```
//! use dfly_ipi::{Cpu, Crossbar};
//! use dfly_core::{CpuId, CpuMask};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! static SEEN: AtomicUsize = AtomicUsize::new(0);
//! fn note(cpu: &Cpu, _: usize, _: usize) { SEEN.fetch_add(1 << cpu.id().index(), Ordering::SeqCst); }
//!
//! let xbar = Crossbar::new(3).unwrap();
//! let workers: Vec<_> = (1..3).map(|i| {
//!     let x = xbar.clone();
//!     std::thread::spawn(move || {
//!         let cpu = x.attach(i).unwrap();
//!         while !x.is_shutdown() { cpu.poll_or_park(None); }
//!     })
//! }).collect();
//! let me = xbar.attach(0).unwrap();
//! while !(xbar.is_attached(1) && xbar.is_attached(2)) { std::hint::spin_loop(); }
//! me.send_mask(CpuMask::all(3), note, 0, 0).unwrap(); // cpus 1, 2, then 0 directly
//! me.synchronize_all().unwrap();
//! assert_eq!(SEEN.load(Ordering::SeqCst), 0b111);
//! let answer = me.call(CpuId::new(2).unwrap(), |cpu| cpu.id().index() * 10).unwrap();
//! assert_eq!(answer, 20);
//! xbar.shutdown();
//! for w in workers { w.join().unwrap(); }
//! ```
//!
//! A [`CpuHandle`] belongs to the thread that attached:
//!
//! ```compile_fail
//! let xbar = dfly_ipi::Crossbar::new(1).unwrap();
//! let h = xbar.attach(0).unwrap();
//! std::thread::spawn(move || drop(h)); // error: CpuHandle is not Send
//! ```

mod cpusync;
mod crossbar;
mod error;
mod ring;
mod stats;

#[cfg(test)]
mod tests;

pub use cpusync::{Interlocked, SyncFn};
pub use crossbar::{with_attached, Config, Cpu, CpuHandle, Crossbar, IpiFn, Seq, MAX_NEST};
pub use error::{AttachError, BuildError, SendError, WaitError};
pub use stats::CpuStats;
