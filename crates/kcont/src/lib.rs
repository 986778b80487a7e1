//! `dfly-kcont` will be stackless continuations in the style of NetBSD's kcont and
//! Mach's continuations: embedded callback objects queued per level and per CPU,
//! completion chains, and no allocation when a continuation is scheduled.
//!
//! **State: not implemented yet.** This crate exports nothing. See
//! `shared/design/msgport-kcont.md`.
#![forbid(unsafe_code)]
