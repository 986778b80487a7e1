//! `dfly-msgport` will be Amiga-style message ports as DragonFly uses them:
//! `sendmsg`/`domsg`/`forwardmsg`/`replymsg`/`waitmsg`/`abortmsg`/`dropmsg`, thread,
//! spin, serializer and agent ports, the semisynchronous fast path where the target
//! port's agent handles a message in the caller's context, and reader/writer node
//! queues.
//!
//! **State: not implemented yet.** This crate exports nothing. See
//! `shared/design/msgport-kcont.md`.
#![forbid(unsafe_code)]
