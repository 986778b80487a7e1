//! Loom models of the remote-free protocol, run on the real `Zone` and `Mailbox` code
//! with a shrunken zone (768 bytes: two 256-byte chunks):
//!
//! - no chunk is lost and the dropped-off notification is never missed: after the
//!   freers finish and the owner handles its mailbox, an off-list zone always carries
//!   the signal (so the next remote free notifies), nothing is pinned, and every chunk
//!   is accounted for;
//! - no zone is retired while pinned: the owner retires as soon as the protocol
//!   allows, and the freers assert (inside `Zone::remote_free`) that the zone is live
//!   whenever they touch it after their push;
//! - batches pushed on a mailbox's inbound stack all arrive.

use loom::thread;

use crate::class::class_index;
use crate::zone::{link, set_link, Freed, Mailbox, Zone, ZoneState, SIGNAL};

const ZONE_BYTES: usize = 768;

/// Runs a model with at least 4 preemptions: these models are small enough (well under
/// a second each), and the retire-while-pinned interleaving needs more than CI's
/// default bound of 2 to be reached.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(b.preemption_bound.unwrap_or(4).max(4));
    b.check(f);
}

/// A zone in test memory, with its mailbox.
struct Env {
    mailbox: Box<Mailbox>,
    _mem: Box<[u64; ZONE_BYTES / 8]>,
    zone: *mut Zone,
}

impl Env {
    fn new() -> Self {
        let mailbox = Box::new(Mailbox::new());
        let mut mem = Box::new([0u64; ZONE_BYTES / 8]);
        let c = class_index(256).unwrap();
        // SAFETY: our own buffer, 8-aligned (chunk alignment does not matter here).
        let zone = unsafe { Zone::init(mem.as_mut_ptr().cast(), ZONE_BYTES, c, &*mailbox, 0) };
        Self { mailbox, _mem: mem, zone }
    }

    fn z(&self) -> &Zone {
        // SAFETY: initialised in `new`, lives as long as `mem`.
        unsafe { &*self.zone }
    }

    /// What a slot does with a free/notification outcome (list links not modelled).
    fn handle(&self, f: Freed, retired: &mut bool) {
        let z = self.z();
        if f == Freed::Relink {
            z.set_state(ZoneState::OnList);
        }
        if f != Freed::Plain && !*retired && z.nfree() == z.nmax() && z.releasable() {
            z.retire();
            *retired = true;
        }
    }

    /// The owner handles every pending notification.
    fn service(&self, retired: &mut bool) {
        let mut p = self.mailbox.take_pending();
        while !p.is_null() {
            assert_eq!(p, self.zone);
            let next = self.z().next_pending();
            let f = self.z().notified();
            self.handle(f, retired);
            p = next;
        }
    }

    /// Takes every chunk so the zone drops off with the signal set.
    fn take_all(&self) -> Vec<usize> {
        let z = self.z();
        assert_eq!(z.nmax(), 2);
        let v = vec![z.take() as usize, z.take() as usize];
        assert!(!z.drop_off());
        assert_eq!(z.remote_word(), SIGNAL);
        v
    }
}

#[test]
fn loom_remote_free_never_misses_the_notification() {
    model(|| {
        let env = Env::new();
        let chunks = env.take_all();
        let zone = env.zone as usize;
        let a = chunks[0];
        let remote = thread::spawn(move || {
            // SAFETY: the zone is live while chunk `a` is in use; `a` is given up.
            unsafe { Zone::remote_free(zone as *mut Zone, a as *mut u8) };
        });
        // Meanwhile the owner frees its chunk (relinking the zone) and takes it again
        // (dropping it off again, with or without the signal).
        let mut retired = false;
        let z = env.z();
        // SAFETY: chunk 1 is in use and ours.
        let f = unsafe { z.free_local(chunks[1] as *mut u8) };
        env.handle(f, &mut retired);
        let b = z.take() as usize;
        if z.nfree() == 0 && !z.drop_off() {
            z.set_state(ZoneState::OffList);
        }
        remote.join().unwrap();
        env.service(&mut retired);
        assert!(!retired);
        // Never missed: an off-list zone carries the signal, so the next remote free
        // notifies; an on-list zone has free chunks (local or remote).
        if z.state() == ZoneState::OffList {
            assert_eq!(z.remote_word(), SIGNAL, "chunk stranded on an off-list zone");
            assert_eq!(z.nfree(), 0);
        }
        assert!(!z.is_awaiting());
        assert_eq!(z.pins(), 0);
        // No chunk lost: give back the last one and absorb; every chunk is free.
        // SAFETY: `b` is in use and ours.
        let f = unsafe { z.free_local(b as *mut u8) };
        env.handle(f, &mut retired);
        z.absorb();
        assert_eq!(z.nfree(), z.nmax());
        assert!(z.releasable());
    });
}

#[test]
fn loom_zone_is_never_retired_while_pinned() {
    model(|| {
        let env = Env::new();
        let chunks = env.take_all();
        let zone = env.zone as usize;
        let a = chunks[0];
        let freer = thread::spawn(move || {
            // SAFETY: the zone is live while `a` is in use; `a` is given up. Inside, a
            // pinned freer asserts the zone is not retired whenever it touches it.
            unsafe { Zone::remote_free(zone as *mut Zone, a as *mut u8) };
        });
        // The owner frees its own chunk (relinking the zone), absorbs, and retires the
        // zone as soon as the protocol lets it.
        let mut retired = false;
        let z = env.z();
        // SAFETY: chunk 1 is in use and ours.
        let f = unsafe { z.free_local(chunks[1] as *mut u8) };
        env.handle(f, &mut retired);
        env.service(&mut retired);
        if !retired && z.state() == ZoneState::OnList {
            z.absorb();
            env.handle(Freed::Empty, &mut retired);
        }
        freer.join().unwrap();
        env.service(&mut retired);
        if !retired {
            z.absorb();
            assert_eq!(z.nfree(), z.nmax(), "chunk lost");
            assert_eq!(z.pins(), 0);
            assert!(z.releasable());
        }
    });
}

#[test]
fn loom_two_freers_one_notification() {
    model(|| {
        let env = Env::new();
        let chunks = env.take_all();
        let zone = env.zone as usize;
        let freers: Vec<_> = chunks
            .iter()
            .map(|&c| {
                thread::spawn(move || {
                    // SAFETY: the zone is live while `c` is in use; `c` is given up.
                    unsafe { Zone::remote_free(zone as *mut Zone, c as *mut u8) }
                })
            })
            .collect();
        let mut retired = false;
        env.service(&mut retired);
        let notified: u32 = freers.into_iter().map(|f| u32::from(f.join().unwrap())).sum();
        assert_eq!(notified, 1, "exactly one freer ends the dropped-off state");
        env.service(&mut retired);
        let z = env.z();
        if !retired {
            z.absorb();
            assert_eq!(z.nfree(), z.nmax(), "chunk lost");
            assert_eq!(z.pins(), 0);
        }
    });
}

#[test]
fn loom_inbound_batches_all_arrive() {
    model(|| {
        let mailbox = loom::sync::Arc::new(Mailbox::new());
        let mut mem = Box::new([0u64; 4]);
        let base = mem.as_mut_ptr() as usize;
        let senders: Vec<_> = (0..2)
            .map(|t| {
                let mb = mailbox.clone();
                thread::spawn(move || {
                    let (a, b) = (base + t * 16, base + t * 16 + 8);
                    // SAFETY: two words of the test buffer this thread owns.
                    unsafe {
                        set_link(a, b);
                        mb.push_inbound(a, b);
                    }
                })
            })
            .collect();
        let mut seen = 0;
        let take = |seen: &mut u32| {
            let mut c = mailbox.take_inbound();
            while c != 0 {
                *seen |= 1 << ((c - base) / 8);
                // SAFETY: chunks on the inbound stack are the buffer's words.
                c = unsafe { link(c) };
            }
        };
        take(&mut seen);
        for s in senders {
            s.join().unwrap();
        }
        take(&mut seen);
        assert_eq!(seen, 0b1111);
        drop(mem);
    });
}
