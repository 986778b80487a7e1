//! A thread's task cell: its body (or the continuation it blocked with), its result,
//! the join handshake and a reference count, all in one allocation, so a spawn costs
//! one allocation and a thread that ends with nobody joining it costs no atomic
//! read-modify-write beyond its handle's drop and its own.
//!
//! # State
//! `state` holds four flag bits and, above them, a reference count in units of
//! [`REF_ONE`]:
//! - `DONE`: the result (or the failure) is in the cell. Set once, by the thread's
//!   owner.
//! - `TAKEN`: a join has taken the result (set with a read-modify-write, so two
//!   `try_join`s through a shared handle cannot both read it).
//! - `LWKT_JOINER`: an LWKT thread waits in [`crate::Ctx::join`], asleep on the
//!   cell's address. The owner reads the flag in the same read-modify-write that sets
//!   `DONE`, so either the owner routes a wakeup or the joiner sees `DONE`.
//! - `BLOCKING_JOINER`: a foreign thread waits in [`JoinHandle::join_blocking`] on
//!   the cell's condvar (it sets the flag and checks `DONE` under the cell's lock;
//!   the owner, seeing the flag, notifies under the same lock).
//!
//! Two references exist: the thread's ([`TaskRef`], in its record on a CPU or in the
//! spawn request on its way there) and the [`JoinHandle`]'s. The last one dropped
//! frees the cell.
//!
//! # Who touches the stage
//! Before `DONE`, only the thread's owner: the running thread takes its body out and
//! stores the continuation it blocks or migrates with (in short, separate accesses;
//! no reference into the stage lives across a call into user code), and the owning
//! CPU (or `Machine::stop`) writes a failure. After `DONE`, only the join that set
//! `TAKEN`. Must never happen: the owner touching the stage after setting `DONE`;
//! anyone reading the stage without having seen `DONE` (Acquire); a result read
//! twice.
//!
//! A thread whose handle is already gone when it finishes (reference count 1) drops
//! its result at once and never sets `DONE`: nobody can ask for it.
//!
//! # Cell memory
//! Cells come from a small per-OS-thread cache of freed blocks in 64-byte classes
//! (up to 512 bytes, 16-byte aligned; larger or more aligned cells go straight to
//! the global allocator). A cell freed on a CPU's thread goes back to that CPU's
//! cache, so a CPU that spawns and reaps threads reuses the same few blocks with no
//! call to the allocator. Each class keeps at most [`POOL_MAX`] blocks; the rest go
//! back to the allocator, and an OS thread's cache is emptied when it exits. This
//! module is lwkt's one raw-allocation helper.
#![allow(unsafe_code)]

use core::alloc::Layout;
use core::cell::RefCell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

use dfly_core::sync::atomic::{AtomicUsize, Ordering};
use dfly_core::sync::{Condvar, Mutex, UnsafeCell};

use crate::machine::{FlowCont, JoinError, Shared};
use crate::sched::{current_core, CpuCore, Step};
use crate::{Ctx, Flow, FlowInner};

const DONE: usize = 1;
const TAKEN: usize = 2;
const LWKT_JOINER: usize = 4;
const BLOCKING_JOINER: usize = 8;
const REF_ONE: usize = 16;

/// The type-independent head of every task cell (the cell's first field).
pub(crate) struct Header {
    state: AtomicUsize,
    vtable: &'static Vtable,
    lock: Mutex<()>,
    cv: Condvar,
}

/// Operations that need the cell's concrete types.
struct Vtable {
    /// Runs the body or the pending continuation (owner, inside the thread).
    run: unsafe fn(NonNull<Header>, &mut Ctx<'_>) -> Step,
    /// Writes a failure unless a result is in (owner).
    fail: unsafe fn(NonNull<Header>, JoinError, Option<&CpuCore>, &Shared),
    /// Moves the result into `*mut Option<Result<R, JoinError>>` (the `TAKEN` winner).
    read: unsafe fn(NonNull<Header>, *mut ()),
    /// Drops the stage and frees the cell (the last reference).
    dealloc: unsafe fn(NonNull<Header>),
}

#[repr(C)]
struct Cell<F, R> {
    header: Header,
    stage: UnsafeCell<Stage<F, R>>,
}

enum Stage<F, R> {
    /// Not started.
    Body(F),
    /// Blocked or migrating with a continuation.
    Cont(FlowCont<R>),
    /// The body or continuation is on the thread's stack.
    Running,
    /// Finished (or failed); not yet taken.
    Done(Result<R, JoinError>),
    /// The result was taken or dropped.
    Taken,
}

/// A new task cell for `body`: the thread's reference and the handle's.
pub(crate) fn new<F, R>(body: F) -> (TaskRef, JoinHandle<R>)
where
    F: FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static,
    R: Send + 'static,
{
    let p = cell_alloc(Layout::new::<Cell<F, R>>()).cast::<Cell<F, R>>();
    let cell = Cell::<F, R> {
        header: Header {
            state: AtomicUsize::new(2 * REF_ONE),
            vtable: vtable::<F, R>(),
            lock: Mutex::new(()),
            cv: Condvar::new(),
        },
        stage: UnsafeCell::new(Stage::Body(body)),
    };
    // SAFETY: `p` is a fresh block with the size and alignment of `Cell<F, R>`.
    unsafe { p.as_ptr().write(cell) };
    let raw = p.cast::<Header>();
    (TaskRef { raw }, JoinHandle { raw, _r: PhantomData })
}

fn vtable<F, R>() -> &'static Vtable
where
    F: FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static,
    R: Send + 'static,
{
    &Vtable { run: run::<F, R>, fail: fail::<F, R>, read: read::<F, R>, dealloc: dealloc::<F, R> }
}

/// The header of a live cell.
///
/// # Safety
/// The caller holds a reference (a [`TaskRef`], a [`JoinHandle`], or a raw pointer
/// whose cell a live `TaskRef` keeps).
unsafe fn header<'a>(raw: NonNull<Header>) -> &'a Header {
    // SAFETY: the caller keeps the cell alive; the header is only shared-borrowed.
    unsafe { raw.as_ref() }
}

/// Drops one reference; the last frees the cell.
///
/// # Safety
/// The caller owns the reference it drops and does not use `raw` afterwards.
unsafe fn release(raw: NonNull<Header>) {
    // SAFETY: the caller's reference keeps the cell alive until this decrement.
    let h = unsafe { header(raw) };
    let vtable = h.vtable;
    // The caller's reference is the only one left: nobody else can add or drop
    // one (no reference is ever cloned), so skip the read-modify-write. Acquire
    // pairs with the other holder's releasing decrement.
    let last = h.state.load(Ordering::Acquire) < 2 * REF_ONE
        || h.state.fetch_sub(REF_ONE, Ordering::AcqRel) < 2 * REF_ONE;
    if last {
        // SAFETY: that was the last reference (AcqRel: every other holder's accesses
        // happened before), so nobody else can reach the cell.
        unsafe { (vtable.dealloc)(raw) }
    }
}

/// Runs the cell's body or continuation and lowers the [`Flow`] it returns.
///
/// # Safety
/// Called by the thread's owner, on its CPU, inside the thread, with the cell kept
/// alive by the thread's [`TaskRef`]; `raw` is a `Cell<F, R>`.
unsafe fn run<F, R>(raw: NonNull<Header>, cx: &mut Ctx<'_>) -> Step
where
    F: FnOnce(&mut Ctx<'_>) -> Flow<R> + Send + 'static,
    R: Send + 'static,
{
    // SAFETY: the caller guarantees the type and liveness.
    let cell = unsafe { raw.cast::<Cell<F, R>>().as_ref() };
    // SAFETY: before DONE only the owner touches the stage, and this access ends
    // before any user code runs.
    let stage = cell.stage.with_mut(|s| unsafe { core::ptr::replace(s, Stage::Running) });
    let flow = match stage {
        Stage::Body(f) => f(cx),
        Stage::Cont(c) => c(cx),
        other => {
            // Not reachable: a thread runs only with a body or continuation. Put it
            // back and end the thread.
            // SAFETY: as above.
            cell.stage.with_mut(|s| unsafe { *s = other });
            return Step::Done;
        }
    };
    match flow.0 {
        FlowInner::Done(r) => {
            let core = cx.core();
            // SAFETY: the owner, before DONE (the result is written once).
            unsafe { finish(cell, Ok(r), Some(core), &core.shared) };
            Step::Done
        }
        FlowInner::Block { ident, timeout, cont } => {
            // SAFETY: the owner, before DONE, no other access live.
            cell.stage.with_mut(|s| unsafe { *s = Stage::Cont(cont) });
            Step::Block { ident, timeout }
        }
        FlowInner::Migrate { cpu, cont } => {
            // SAFETY: as above.
            cell.stage.with_mut(|s| unsafe { *s = Stage::Cont(cont) });
            Step::Migrate { cpu }
        }
    }
}

/// Puts `r` in the cell (dropping whatever the stage held) and wakes a joiner.
///
/// # Safety
/// Called by the thread's owner, with no other access to the stage live.
unsafe fn finish<F, R>(
    cell: &Cell<F, R>,
    r: Result<R, JoinError>,
    core: Option<&CpuCore>,
    shared: &Shared,
) {
    let h = &cell.header;
    let st = h.state.load(Ordering::Acquire);
    if st & DONE != 0 {
        return;
    }
    if st < 2 * REF_ONE {
        // Only the thread's own reference is left: no handle, nobody can join. The
        // stage (a body or continuation, on failure) goes with the cell when the
        // owner drops that reference.
        drop(r);
        return;
    }
    // SAFETY: as above; the Release half of the RMW below publishes the write.
    cell.stage.with_mut(|s| unsafe { *s = Stage::Done(r) });
    let prev = h.state.fetch_or(DONE, Ordering::AcqRel);
    if prev & BLOCKING_JOINER != 0 {
        // The joiner set its flag and checks DONE under the lock, so it is either
        // already waiting on the condvar or about to see DONE.
        let _g = h.lock.lock();
        h.cv.notify_all();
    }
    if prev & LWKT_JOINER != 0 {
        shared.route_wakeup(core, h as *const Header as usize, false);
    }
}

/// # Safety
/// As [`finish`]; `raw` is a live `Cell<F, R>`.
unsafe fn fail<F, R>(
    raw: NonNull<Header>,
    err: JoinError,
    core: Option<&CpuCore>,
    shared: &Shared,
) {
    // SAFETY: the caller guarantees type and liveness.
    let cell = unsafe { raw.cast::<Cell<F, R>>().as_ref() };
    // SAFETY: the caller's contract.
    unsafe { finish(cell, Err(err), core, shared) }
}

/// # Safety
/// The caller won `TAKEN` after seeing `DONE`; `out` points to an
/// `Option<Result<R, JoinError>>`; `raw` is a live `Cell<F, R>`.
unsafe fn read<F, R>(raw: NonNull<Header>, out: *mut ()) {
    // SAFETY: the caller guarantees type and liveness.
    let cell = unsafe { raw.cast::<Cell<F, R>>().as_ref() };
    // SAFETY: after DONE the TAKEN winner is the stage's only user.
    let stage = cell.stage.with_mut(|s| unsafe { core::ptr::replace(s, Stage::Taken) });
    if let Stage::Done(r) = stage {
        // SAFETY: the caller passes a valid, initialised slot of this type.
        unsafe { *out.cast::<Option<Result<R, JoinError>>>() = Some(r) };
    }
}

/// # Safety
/// The last reference is gone; `raw` is a `Cell<F, R>` made by [`new`].
unsafe fn dealloc<F, R>(raw: NonNull<Header>) {
    let p = raw.cast::<Cell<F, R>>();
    // SAFETY: a live, initialised `Cell<F, R>` that nobody else can reach any more.
    unsafe { core::ptr::drop_in_place(p.as_ptr()) };
    // SAFETY: allocated by `cell_alloc` with this layout (in `new`), dropped above.
    unsafe { cell_free(p.cast(), Layout::new::<Cell<F, R>>()) };
}

// ---- cell memory ----------------------------------------------------------------------

/// Size classes of cached cell blocks: 64, 128, ... bytes.
const CLASS_SHIFT: u32 = 6;
/// Number of classes (so the largest cached block is 512 bytes).
const CLASSES: usize = 8;
/// Alignment of every cached block.
const CLASS_ALIGN: usize = 16;
/// Blocks kept per class per OS thread.
const POOL_MAX: usize = 64;

/// One OS thread's cached blocks, by class.
struct Pool {
    free: [Vec<NonNull<u8>>; CLASSES],
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (c, list) in self.free.iter_mut().enumerate() {
            for p in list.drain(..) {
                // SAFETY: every cached block was allocated by `raw_alloc` with its
                // class layout and is owned by this cache alone.
                unsafe { raw_free(p, class_layout(c)) };
            }
        }
    }
}

std::thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { free: [const { Vec::new() }; CLASSES] })
    };
}

/// The cache class serving `layout`, if any.
fn class_of(layout: Layout) -> Option<usize> {
    let c = (layout.size().max(1) - 1) >> CLASS_SHIFT;
    (c < CLASSES && layout.align() <= CLASS_ALIGN).then_some(c)
}

fn class_layout(c: usize) -> Layout {
    // A constant power-of-two alignment and a small multiple of it: always valid.
    Layout::from_size_align((c + 1) << CLASS_SHIFT, CLASS_ALIGN).unwrap_or(Layout::new::<u8>())
}

/// A block for a cell of `layout`: from this OS thread's cache if it has one.
fn cell_alloc(layout: Layout) -> NonNull<u8> {
    let Some(c) = class_of(layout) else { return raw_alloc(layout) };
    let cached =
        POOL.try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.free[c].pop())).ok().flatten();
    cached.unwrap_or_else(|| raw_alloc(class_layout(c)))
}

/// Gives back a block from [`cell_alloc`].
///
/// # Safety
/// `p` came from `cell_alloc(layout)`, its contents are dropped, and it is not used
/// again.
unsafe fn cell_free(p: NonNull<u8>, layout: Layout) {
    let Some(c) = class_of(layout) else {
        // SAFETY: allocated by `raw_alloc(layout)` (no class), per the contract.
        return unsafe { raw_free(p, layout) };
    };
    let kept = POOL
        .try_with(|pool| match pool.try_borrow_mut() {
            Ok(mut pool) if pool.free[c].len() < POOL_MAX => {
                pool.free[c].push(p);
                true
            }
            _ => false,
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: allocated with the class layout, per the contract.
        unsafe { raw_free(p, class_layout(c)) };
    }
}

/// The global allocator, for `layout` (never zero-sized here: a cell has a header).
#[allow(clippy::disallowed_methods)] // this module is lwkt's raw-allocation helper
fn raw_alloc(layout: Layout) -> NonNull<u8> {
    // SAFETY: `layout` has a non-zero size (every cell and class does).
    let p = unsafe { std::alloc::alloc(layout) };
    NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// # Safety
/// `p` came from [`raw_alloc`] with `layout` and is not used again.
#[allow(clippy::disallowed_methods)] // this module is lwkt's raw-allocation helper
unsafe fn raw_free(p: NonNull<u8>, layout: Layout) {
    // SAFETY: the caller's contract.
    unsafe { std::alloc::dealloc(p.as_ptr(), layout) }
}

/// The thread's own reference to its task cell (in its record, or in the spawn
/// request on its way to its CPU). Not `Sync`: one owner at a time.
pub(crate) struct TaskRef {
    raw: NonNull<Header>,
}

// SAFETY: the cell's body and result are `Send`, its header is made of `Sync`
// parts, and the owner's stage accesses move with the `TaskRef`.
unsafe impl Send for TaskRef {}

impl TaskRef {
    /// Runs the body or the pending continuation inside the thread, on its CPU
    /// (`&mut self`: nothing else can touch the cell's stage meanwhile).
    pub(crate) fn run(&mut self, cx: &mut Ctx<'_>) -> Step {
        // SAFETY: this `TaskRef` keeps the cell alive and is its owner's; the
        // vtable matches the cell.
        unsafe { (header(self.raw).vtable.run)(self.raw, cx) }
    }

    /// Fails the thread's join with `err` unless it has a result already.
    pub(crate) fn fail(&mut self, err: JoinError, core: Option<&CpuCore>, shared: &Shared) {
        // SAFETY: as in `run`; `&mut self` rules out a live stage access.
        unsafe { (header(self.raw).vtable.fail)(self.raw, err, core, shared) }
    }
}

impl Drop for TaskRef {
    fn drop(&mut self) {
        // SAFETY: this is the thread's reference, dropped once.
        unsafe { release(self.raw) }
    }
}

/// The handle to a spawned thread's result.
pub struct JoinHandle<R> {
    raw: NonNull<Header>,
    _r: PhantomData<R>,
}

// SAFETY: the handle gives out `R` by value at most once (the `TAKEN` bit), so it may
// move or be shared between threads whenever `R` may move.
unsafe impl<R: Send> Send for JoinHandle<R> {}
// SAFETY: as above; every method through `&self` is guarded by the state word.
unsafe impl<R: Send> Sync for JoinHandle<R> {}

impl<R> fmt::Debug for JoinHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").field("finished", &(self.state() & DONE != 0)).finish()
    }
}

impl<R> Drop for JoinHandle<R> {
    fn drop(&mut self) {
        // SAFETY: the handle's reference, dropped once.
        unsafe { release(self.raw) }
    }
}

impl<R> JoinHandle<R> {
    fn header(&self) -> &Header {
        // SAFETY: the handle holds a reference.
        unsafe { header(self.raw) }
    }

    fn state(&self) -> usize {
        self.header().state.load(Ordering::Acquire)
    }

    /// The sleep ident an LWKT joiner waits on.
    pub(crate) fn ident(&self) -> usize {
        self.raw.as_ptr() as usize
    }

    /// Registers an LWKT joiner; true if the thread is already done.
    pub(crate) fn lwkt_join_prepare(&self) -> bool {
        self.header().state.fetch_or(LWKT_JOINER, Ordering::AcqRel) & DONE != 0
    }

    /// True once the thread has finished (or failed).
    pub fn is_finished(&self) -> bool {
        self.state() & DONE != 0
    }

    pub(crate) fn take(&self) -> Result<R, JoinError> {
        if !self.is_finished() {
            return Err(JoinError::NotFinished);
        }
        if self.header().state.fetch_or(TAKEN, Ordering::AcqRel) & TAKEN != 0 {
            return Err(JoinError::Taken);
        }
        let mut out: Option<Result<R, JoinError>> = None;
        let read = self.header().vtable.read;
        // SAFETY: DONE was seen (Acquire) and this call won TAKEN; `out` has the
        // handle's result type, which is the cell's.
        unsafe { read(self.raw, (&mut out as *mut Option<Result<R, JoinError>>).cast()) };
        out.unwrap_or(Err(JoinError::Taken))
    }

    /// The result if the thread has finished, without waiting.
    pub fn try_join(&self) -> Result<R, JoinError> {
        self.take()
    }

    /// Waits on an ordinary (foreign) OS thread. Fails with
    /// [`JoinError::OnCpuThread`] on a CPU's own OS thread.
    pub fn join_blocking(self) -> Result<R, JoinError> {
        if current_core().is_some() {
            return Err(JoinError::OnCpuThread);
        }
        {
            let h = self.header();
            let mut g = h.lock.lock().map_err(|_| JoinError::Taken)?;
            let mut st = h.state.fetch_or(BLOCKING_JOINER, Ordering::AcqRel);
            while st & DONE == 0 {
                g = h.cv.wait(g).map_err(|_| JoinError::Taken)?;
                st = h.state.load(Ordering::Acquire);
            }
        }
        self.take()
    }
}
