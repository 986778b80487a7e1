//! `dfly-netstack` will be a threaded TCP/IPv4 stack after DragonFly's netisr design:
//! a no-panic wire layer, one protocol thread per CPU, Toeplitz dispatch, connections
//! owned by one CPU with no locks and no reference counts, replicated listeners,
//! sockets, and TUN and in-memory links.
//!
//! **State: not implemented yet.** This crate exports nothing. See
//! `shared/design/netstack.md`.
#![forbid(unsafe_code)]
