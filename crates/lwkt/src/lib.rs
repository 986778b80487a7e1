//! `dfly-lwkt` will be DragonFly's light-weight kernel threads in userspace: one
//! scheduler per CPU with strict fixed priorities, stackful threads on pooled
//! guard-paged stacks, `tsleep`/`wakeup`, serializing tokens, serializers,
//! continuation blocking, and `Machine::simulated(ncpus, seed)` for deterministic
//! replay.
//!
//! **State: not implemented yet.** This crate exports nothing; it exists so the
//! workspace layout and the layering checks are in place. See
//! `shared/design/lwkt.md` for the brief and the project issues for progress.
#![forbid(unsafe_code)]
