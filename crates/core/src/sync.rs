//! The sync shim: every atomic, cell, `Arc`, lock and thread the workspace uses for a
//! concurrency protocol comes from here, never from `std` directly, so that building
//! with `RUSTFLAGS="--cfg loom"` swaps in [loom](https://docs.rs/loom)'s model-checked
//! versions everywhere at once.
//!
//! Under loom the types are loom's; otherwise they are `std`'s, except [`UnsafeCell`],
//! which wraps `std::cell::UnsafeCell` in loom's closure-based `with`/`with_mut` API
//! so code written once works under both.
//!
//! Only protocol state goes through the shim. Process-wide registries that are written
//! once at start-up (for example the deferred-work handler table in [`crate::crit`])
//! use `std` directly; loom has no `const` constructors for statics.

#[cfg(not(loom))]
mod imp {
    pub use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
    pub use std::thread;
    pub use std::thread_local;

    /// Atomics (re-exported from `std::sync::atomic`, or loom's under `--cfg loom`).
    pub mod atomic {
        pub use std::sync::atomic::{
            fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        };
    }

    /// A spin-loop hint (`PAUSE` on x86); under loom, a yield to the model scheduler.
    #[inline(always)]
    pub fn spin_loop() {
        std::hint::spin_loop();
    }

    /// `std::cell::UnsafeCell` with loom's access API.
    #[derive(Debug, Default)]
    #[repr(transparent)]
    pub struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        /// Wraps `value`.
        #[inline(always)]
        pub const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }

        /// Consumes the cell and returns the value.
        #[inline(always)]
        pub fn into_inner(self) -> T {
            self.0.into_inner()
        }
    }

    impl<T: ?Sized> UnsafeCell<T> {
        /// Runs `f` with a shared raw pointer to the contents. Dereferencing it is the
        /// caller's responsibility: no `&mut` to the contents may exist meanwhile.
        #[inline(always)]
        pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Runs `f` with an exclusive raw pointer to the contents. Dereferencing it is
        /// the caller's responsibility: no other reference may exist meanwhile.
        #[inline(always)]
        pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::cell::UnsafeCell;
    pub use loom::sync::{Arc, Condvar, Mutex, MutexGuard};
    pub use loom::thread;
    pub use loom::thread_local;
    pub use std::sync::Weak;

    /// Atomics (loom's model-checked versions).
    pub mod atomic {
        pub use loom::sync::atomic::{
            fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        };
    }

    /// Under loom, a spin-loop hint yields to the model scheduler.
    #[inline(always)]
    pub fn spin_loop() {
        loom::hint::spin_loop();
    }
}

pub use imp::*;

/// True when this build is a loom model-checking build (`--cfg loom`). Code uses it to
/// shrink capacities and bounds so models finish.
pub const LOOM: bool = cfg!(loom);
