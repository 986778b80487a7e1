//! `dfly-core`: the machine layer every other dfly crate stands on.
//!
//! DragonFly BSD scales by giving each CPU its own state and letting only that CPU
//! touch it. This crate provides the vocabulary for that in userspace:
//!
//! - [`CpuId`], [`CpuMask`] (256 CPUs, wrap-around iteration), [`AtomicCpuMask`];
//! - [`PerCpu`] storage in [`CachePadded`] slots and exact per-CPU [`Counter`]s;
//! - the current CPU ([`current_cpu`], [`set_current_cpu`]);
//! - critical sections with request flags and deferred work ([`crit`]);
//! - clocks, real and virtual, behind one trait ([`clock`]);
//! - parking without lost wakeups ([`park`]) and a bounded [`Backoff`] for the spin
//!   before it;
//! - the sync shim ([`sync`]) that swaps in loom under `--cfg loom`;
//! - asymmetric barriers for handshakes with one hot and one rare side ([`barrier`]);
//! - thread pinning ([`affinity`]).
//!
//! It depends on nothing else in the workspace and needs no running machine.
//!
//! ```
//! use dfly_core::{crit, current_cpu, set_current_cpu, CpuId, CpuMask, PerCpu};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! let ncpus = 4;
//! let work = PerCpu::new(ncpus, |_| AtomicU64::new(0)).unwrap();
//! let me = CpuId::new(2).unwrap();
//! let _cpu = set_current_cpu(me).unwrap();
//! {
//!     let _cs = crit::crit_enter(); // deferred work waits until this ends
//!     work[current_cpu().unwrap()].fetch_add(1, Ordering::Relaxed);
//! }
//! let others = CpuMask::all(ncpus).difference(&CpuMask::single(me));
//! assert_eq!(others.iter_after(me).map(|c| c.index()).collect::<Vec<_>>(), [3, 0, 1]);
//! ```

pub mod affinity;
pub mod backoff;
pub mod barrier;
pub mod clock;
pub mod counter;
pub mod cpu;
pub mod crit;
pub mod current;
pub mod pad;
pub mod park;
pub mod percpu;
pub mod sync;

#[cfg(test)]
mod tests;

pub use backoff::Backoff;
pub use clock::{Clock, RealClock, Timestamp, VirtualClock};
pub use counter::Counter;
pub use cpu::{AtomicCpuMask, CpuId, CpuMask, CpuOutOfRange, MAX_CPUS};
pub use current::{current_cpu, set_current_cpu, CurrentCpuGuard};
pub use pad::CachePadded;
pub use park::{Futex, Parker};
pub use percpu::PerCpu;
