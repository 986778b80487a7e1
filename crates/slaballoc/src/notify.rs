//! Waking the owner of remote work: when a remote free ends a zone's dropped-off state
//! (or a batch lands in an empty inbound stack), the owning slot has work that only
//! its holder may do. The mailbox push is the signal every holder sees on its next
//! malloc slow path; when the owner is a CPU slot and the freeing thread runs as a CPU
//! of a dfly-ipi crossbar, a **passive IPI** also goes to that CPU (DragonFly's
//! `lwkt_send_ipiq_passive` from `kfree`), so the owner services its mailbox at its
//! next poll or tick even if it never allocates again. Passive: it does not wake a
//! parked CPU (unless the FIFO is a quarter full, when dfly-ipi sends it actively),
//! and costs the freer one FIFO write.
//!
//! The IPI handler services the mailbox only if the CPU thread running it holds the
//! slot (it might have given it up or re-homed since); IPIs run at poll points, which
//! never lie inside an allocator call, so holder-only state is consistent there.

use dfly_core::sync::atomic::Ordering;
use dfly_core::{CpuId, MAX_CPUS};
use dfly_ipi::Cpu;

use crate::heap::Slab;
use crate::slot::Slot;
use crate::zone::Mailbox;

/// Tells the holder of the slot owning `mailbox` that it has remote work.
pub(crate) fn owner_has_work(heap: &Slab, mailbox: *const Mailbox) {
    // The mailbox is the first field of its (repr(C)) slot.
    let slot = mailbox.cast::<Slot>();
    // SAFETY: slots live as long as their heap; `index` is immutable.
    let index = unsafe { (*slot).index };
    if index >= MAX_CPUS {
        return;
    }
    let sent = dfly_ipi::with_attached(|cpu| {
        if index == cpu.id().index() {
            return false;
        }
        match CpuId::checked(index, cpu.ncpus()) {
            Ok(target) => cpu.send_passive(target, service_ipi, slot as usize, 0).is_ok(),
            Err(_) => false,
        }
    });
    if sent == Some(true) {
        heap.ipis.fetch_add(1, Ordering::Relaxed);
    }
}

/// The IPI handler: services the slot's mailbox if this thread holds the slot.
fn service_ipi(_cpu: &Cpu, slot: usize, _: usize) {
    let s = slot as *mut Slot;
    // SAFETY: slots live as long as their heap, and heaps that hand out slots are
    // `'static`.
    let heap: &'static Slab = unsafe { &*(*s).heap };
    if heap.tls_slot() == s {
        // SAFETY: this thread holds the slot, and IPIs run outside allocator calls.
        let slot = unsafe { &*s };
        slot.service();
        heap.ipi_services.fetch_add(1, Ordering::Relaxed);
    }
}
