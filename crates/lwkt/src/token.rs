//! Serializing tokens, and [`TokenCell`], the data they protect.
//!
//! # Semantics (DragonFly's, since 2004)
//! A token serializes only while its holder *runs*. When a thread blocks (any call
//! that takes `&mut Ctx` and may switch away), every token it holds is released; the
//! scheduler re-acquires all of them, all or nothing, before the thread runs again.
//! So no set of tokens can deadlock, and data protected by a token may have changed
//! across any blocking call.
//!
//! # State
//! `Token::state`: bit 63 = held exclusively; bits 0..63 = number of shared holds.
//! Only the holding thread clears what it set. A thread's holds live on its
//! [`TokenStack`] (at most [`MAX_TOKENS`], released in LIFO order); an entry either
//! *owns* an atomic hold or is a recursive reference to an exclusive hold below it.
//! Entries are acquired by the scheduler just before the thread is resumed and
//! released just after it switches out; the stack itself is touched only by the
//! thread's own CPU.
//!
//! # The borrow rule (why safe code cannot keep `&mut` across a block)
//! Protected data lives in a [`TokenCell`] and is reached only through
//! [`TokenCell::borrow`] / [`TokenCell::borrow_mut`], which take a [`Held`] proof
//! *and a shared borrow of the thread's [`Ctx`]*. Every call that can block takes
//! `&mut Ctx`, so while any guard into protected data is alive the borrow checker
//! refuses every blocking call, and the token cannot be released under the guard.
//! Releasing a token early ([`Ctx::release`]) consumes the `Held`, which ends every
//! guard made from it. Within one thread, exclusive access is checked like a
//! `RefCell` (one `&mut` or many `&`), so recursive holds cannot alias.
//!
//! Must never happen: a thread running without every token on its stack; an
//! exclusive holder coexisting with any other holder; a guard alive across a switch.
#![allow(unsafe_code)]

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::num::NonZeroU64;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use dfly_core::sync::Arc;

use dfly_core::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use dfly_core::CachePadded;

use crate::Ctx;

/// Most tokens one thread may hold at once (DragonFly's `LWKT_MAXTOKENS`).
pub const MAX_TOKENS: usize = 32;

const EXCL: u64 = 1 << 63;

/// A serializing token: a lock that is held only while its holder runs.
///
/// ```
/// use dfly_lwkt::{Machine, Spawn, Token, TokenCell};
/// static COUNT: TokenCell<u64> = TokenCell::new_static(&COUNT_TOKEN, 0);
/// static COUNT_TOKEN: Token = Token::new("count");
///
/// let mut m = Machine::builder().cpus(1).build().unwrap();
/// let h = m.spawn(Spawn::on_cpu(0), |cx| {
///     let held = cx.get_token(&COUNT_TOKEN).unwrap();
///     *COUNT.borrow_mut(&held, cx).unwrap() += 1;
///     cx.release(held).unwrap();
/// }).unwrap();
/// h.join_blocking().unwrap();
/// m.stop().unwrap();
/// ```
pub struct Token {
    state: AtomicU64,
    name: &'static str,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("exclusive", &(s & EXCL != 0))
            .field("shared", &(s & !EXCL))
            .finish()
    }
}

impl Token {
    /// A free token; `name` appears in diagnostics.
    pub const fn new(name: &'static str) -> Token {
        Token { state: AtomicU64::new(0), name }
    }

    /// The token's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// True if some thread holds it exclusively (a racy snapshot, for diagnostics).
    pub fn is_held_exclusive(&self) -> bool {
        self.state.load(Ordering::Relaxed) & EXCL != 0
    }

    /// Number of shared holds (a racy snapshot, for diagnostics).
    pub fn shared_count(&self) -> u64 {
        self.state.load(Ordering::Relaxed) & !EXCL
    }

    #[inline]
    fn try_exclusive(&self) -> bool {
        self.state.compare_exchange(0, EXCL, Ordering::Acquire, Ordering::Relaxed).is_ok()
    }

    #[inline]
    fn try_shared(&self) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & EXCL != 0 {
                return false;
            }
            match self.state.compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(v) => s = v,
            }
        }
    }

    #[inline]
    fn release_exclusive(&self) {
        self.state.store(0, Ordering::Release);
    }

    #[inline]
    fn release_shared(&self) {
        self.state.fetch_sub(1, Ordering::Release);
    }
}

const POOL_TOKENS: usize = 1024;
static POOL: [CachePadded<Token>; POOL_TOKENS] =
    [const { CachePadded::new(Token::new("pool")) }; POOL_TOKENS];

/// The pool token for an address (DragonFly's `lwkt_token_pool_lookup`): objects
/// without a token of their own share one of 1024 cache-aligned tokens chosen by a
/// hash of their address. Take pool tokens exclusively only: two objects may hash
/// to the same token, and a shared hold followed by an exclusive request for a
/// colliding object would wait on itself.
pub fn pool_token<T: ?Sized>(object: &T) -> &'static Token {
    let addr = object as *const T as *const u8 as usize;
    let h = (addr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    &POOL[(h >> 54) % POOL_TOKENS]
}

/// A reference to a token that a thread can keep on its token stack across blocking:
/// a `&'static Token` or an `Arc<Token>`.
#[derive(Clone)]
pub enum TokenRef {
    /// A token in a static.
    Static(&'static Token),
    /// A token shared by reference count.
    Shared(Arc<Token>),
}

impl fmt::Debug for TokenRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl TokenRef {
    #[inline]
    fn get(&self) -> &Token {
        match self {
            TokenRef::Static(t) => t,
            TokenRef::Shared(t) => t,
        }
    }

    #[inline]
    fn addr(&self) -> usize {
        self.get() as *const Token as usize
    }
}

impl From<&'static Token> for TokenRef {
    fn from(t: &'static Token) -> Self {
        TokenRef::Static(t)
    }
}

impl From<Arc<Token>> for TokenRef {
    fn from(t: Arc<Token>) -> Self {
        TokenRef::Shared(t)
    }
}

impl From<&Arc<Token>> for TokenRef {
    fn from(t: &Arc<Token>) -> Self {
        TokenRef::Shared(t.clone())
    }
}

/// What went wrong with a token operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// The thread already holds [`MAX_TOKENS`] tokens.
    TooMany,
    /// A release named a hold that is not the most recent one (LIFO order).
    OutOfOrder,
    /// An exclusive request for a token this thread holds shared (it would wait on
    /// itself).
    Upgrade,
    /// The [`Held`] does not belong to this thread or was already released.
    NotHeld,
    /// The [`Held`] is for a different token than the cell's.
    WrongToken,
    /// Mutable access needs an exclusive hold.
    NotExclusive,
    /// The data is already borrowed in a conflicting way by this thread.
    Borrowed,
    /// [`Ctx::try_token`] found the token held elsewhere.
    WouldBlock,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::TooMany => "a thread may hold at most 32 tokens",
            TokenError::OutOfOrder => "tokens must be released in reverse order of acquisition",
            TokenError::Upgrade => "cannot take exclusively a token this thread holds shared",
            TokenError::NotHeld => "this hold does not belong to the calling thread",
            TokenError::WrongToken => "this hold is for a different token",
            TokenError::NotExclusive => "mutable access needs the token held exclusively",
            TokenError::Borrowed => "the protected data is already borrowed",
            TokenError::WouldBlock => "the token is held by another thread",
        })
    }
}

impl std::error::Error for TokenError {}

/// A failed [`Ctx::release`]: the hold comes back so it can be released properly.
#[derive(Debug)]
pub struct ReleaseError {
    /// The hold that was not released.
    pub held: Held,
    /// Why.
    pub error: TokenError,
}

impl fmt::Display for ReleaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot release the token: {}", self.error)
    }
}

impl std::error::Error for ReleaseError {}

/// Proof that the current thread holds a token: returned by [`Ctx::get_token`],
/// consumed by [`Ctx::release`]. Not `Send`: it names a slot of one thread's token
/// stack.
///
/// Two words (the thread, and the entry's sequence number and stack index), with a
/// niche, so a `Result<Held, TokenError>` travels in registers.
#[derive(Debug)]
pub struct Held {
    thread: NonZeroU64,
    /// The entry's sequence number (bits 8..64) and its index on the stack (0..8).
    tag: u64,
    _not_send: PhantomData<*const ()>,
}

impl Held {
    #[inline]
    fn index(&self) -> usize {
        (self.tag & 0xff) as usize
    }

    #[inline]
    fn seq(&self) -> u64 {
        self.tag >> 8
    }
}

/// The thread id a [`Held`] carries: the uid with the top bit set (uids count up
/// from 1 and never reach 2^63), which is never zero without a check.
#[inline]
fn thread_tag(thread: u64) -> NonZeroU64 {
    const TOP: NonZeroU64 = match NonZeroU64::new(1 << 63) {
        Some(t) => t,
        // Not reachable (1 << 63 is not zero); `unwrap` is not const at the MSRV.
        None => NonZeroU64::MAX,
    };
    TOP | thread
}

/// One hold on a thread's token stack, in two words: the token and a tag.
struct Entry {
    /// The token. For a [`TokenRef::Shared`] hold this is the pointer
    /// `Arc::into_raw` gave, and the entry owns that reference (given back by
    /// [`Entry::drop_ref`] when the stack removes the entry).
    tok: NonNull<Token>,
    /// The hold's sequence number (bits 8..64) and its `E_*` flags (bits 0..8).
    meta: u64,
}

/// Exclusive hold (directly, or a recursive reference under an exclusive hold).
const E_EXCL: u64 = 1;
/// The entry holds the atomic itself (false for a recursive reference).
const E_OWNS: u64 = 2;
/// The atomic hold is currently taken (only meaningful with `E_OWNS`).
const E_ACQUIRED: u64 = 4;
/// `tok` came from `Arc::into_raw`.
const E_ARC: u64 = 8;

// SAFETY: an entry is a reference to a `Token` (whose state is atomic, so `Token` is
// `Sync`), either `'static` or an `Arc` reference the entry owns; sending it sends
// that reference, as sending a `TokenRef` would.
unsafe impl Send for Entry {}

impl Entry {
    #[inline]
    fn new(tok: TokenRef, flags: u64, seq: u64) -> Entry {
        let (ptr, arc) = match tok {
            TokenRef::Static(t) => (NonNull::from(t), 0),
            TokenRef::Shared(t) => {
                // The reference count is handed to the entry and given back by
                // `drop_ref` when the stack removes it.
                let raw = Arc::into_raw(t) as *mut Token;
                // SAFETY: `Arc::into_raw` returns the address of the token inside the
                // Arc's allocation, which is never null.
                (unsafe { NonNull::new_unchecked(raw) }, E_ARC)
            }
        };
        Entry { tok: ptr, meta: seq << 8 | flags | arc }
    }

    #[inline(always)]
    fn token(&self) -> &Token {
        // SAFETY: `tok` is a `&'static Token` or an `Arc<Token>` reference this
        // entry owns until it is dropped, so the token outlives `&self`.
        unsafe { self.tok.as_ref() }
    }

    #[inline(always)]
    fn addr(&self) -> usize {
        self.tok.as_ptr() as usize
    }

    #[inline(always)]
    fn has(&self, flag: u64) -> bool {
        self.meta & flag != 0
    }

    #[inline(always)]
    fn seq(&self) -> u64 {
        self.meta >> 8
    }

    /// True if the entry owns an atomic hold that is not taken now.
    #[inline(always)]
    fn needs_acquire(&self) -> bool {
        self.meta & (E_OWNS | E_ACQUIRED) == E_OWNS
    }

    /// Gives back the `Arc` reference the entry owns, if any. Called once, by the
    /// stack, as the entry leaves it (entries have no `Drop`, so that popping one
    /// is a length store and not a drop loop).
    #[inline(always)]
    fn drop_ref(&self) {
        if self.has(E_ARC) {
            // SAFETY: `tok` came from `Arc::into_raw` in `Entry::new`, this entry
            // owns that reference, and the stack calls this once per entry, as the
            // entry is removed.
            drop(unsafe { Arc::from_raw(self.tok.as_ptr() as *const Token) });
        }
    }

    /// Gives back the atomic hold if the entry owns one and has it taken.
    #[inline(always)]
    fn release(&mut self) {
        if self.meta & (E_OWNS | E_ACQUIRED) == E_OWNS | E_ACQUIRED {
            if self.has(E_EXCL) {
                self.token().release_exclusive();
            } else {
                self.token().release_shared();
            }
            self.meta &= !E_ACQUIRED;
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("token", self.token())
            .field("exclusive", &self.has(E_EXCL))
            .field("owns", &self.has(E_OWNS))
            .field("acquired", &self.has(E_ACQUIRED))
            .field("seq", &self.seq())
            .finish()
    }
}

/// How a thread's request for a token went.
#[derive(Debug)]
pub(crate) enum Acquire {
    /// Held now.
    Got(Held),
    /// Pushed but not acquired: the thread must switch out and let the scheduler
    /// take it (with all the others) before resuming.
    MustSwitch(Held),
}

/// A thread's stack of token holds. Owned by the thread record on its CPU.
#[derive(Debug, Default)]
pub(crate) struct TokenStack {
    entries: Vec<Entry>,
    next_seq: u64,
}

impl TokenStack {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[inline]
    fn find(&self, addr: usize) -> (bool, bool) {
        let mut excl = false;
        let mut shared = false;
        for e in &self.entries {
            if e.addr() == addr {
                if e.has(E_EXCL) {
                    excl = true;
                } else {
                    shared = true;
                }
            }
        }
        (excl, shared)
    }

    /// True if this thread holds the token at `addr` exclusively (directly or by a
    /// recursive hold).
    pub(crate) fn holds_exclusive(&self, addr: usize) -> bool {
        self.find(addr).0
    }

    /// Pushes a hold of `tok`; `try_only` fails instead of asking for a switch.
    #[inline]
    pub(crate) fn push(
        &mut self,
        tok: TokenRef,
        exclusive: bool,
        thread: u64,
        try_only: bool,
    ) -> Result<Acquire, TokenError> {
        if self.entries.len() >= MAX_TOKENS {
            return Err(TokenError::TooMany);
        }
        let addr = tok.addr();
        let (have_excl, have_shared) = self.find(addr);
        let (owns, got) = if have_excl {
            // Recursion under an exclusive hold (also a shared request under it).
            (false, true)
        } else if exclusive {
            if have_shared {
                return Err(TokenError::Upgrade);
            }
            (true, tok.get().try_exclusive())
        } else {
            (true, tok.get().try_shared())
        };
        if !got && try_only {
            return Err(TokenError::WouldBlock);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let index = self.entries.len() as u64;
        let flags = if exclusive || have_excl { E_EXCL } else { 0 }
            | if owns { E_OWNS } else { 0 }
            | if got { E_ACQUIRED } else { 0 };
        self.entries.push(Entry::new(tok, flags, seq));
        let held =
            Held { thread: thread_tag(thread), tag: seq << 8 | index, _not_send: PhantomData };
        Ok(if got { Acquire::Got(held) } else { Acquire::MustSwitch(held) })
    }

    /// Checks that `held` names a live entry of this stack (of thread `thread`);
    /// returns that entry's token address.
    #[inline]
    pub(crate) fn check(&self, held: &Held, thread: u64) -> Result<usize, TokenError> {
        if held.thread != thread_tag(thread) {
            return Err(TokenError::NotHeld);
        }
        match self.entries.get(held.index()) {
            Some(e) if e.seq() == held.seq() => Ok(e.addr()),
            _ => Err(TokenError::NotHeld),
        }
    }

    /// Pops `held`, which must be the top entry, releasing its atomic hold.
    #[inline]
    pub(crate) fn pop(&mut self, held: Held, thread: u64) -> Result<(), (Held, TokenError)> {
        let top = self.entries.len().wrapping_sub(1);
        if held.thread == thread_tag(thread) && held.index() == top {
            if let Some(e) = self.entries.last() {
                if e.seq() == held.seq() {
                    // Released and dropped in place: moving the entry out would copy
                    // it with a wide load over the narrow stores that made it (a
                    // store-forwarding stall on the hot path). The entry is
                    // discarded, so its flags are not updated.
                    if e.meta & (E_OWNS | E_ACQUIRED) == E_OWNS | E_ACQUIRED {
                        if e.has(E_EXCL) {
                            e.token().release_exclusive();
                        } else {
                            e.token().release_shared();
                        }
                    }
                    e.drop_ref();
                    self.entries.truncate(top);
                    return Ok(());
                }
            }
        }
        // Not the live top entry: say why.
        let error = match self.check(&held, thread) {
            Err(e) => e,
            Ok(_) => TokenError::OutOfOrder,
        };
        Err((held, error))
    }

    /// Releases every atomic hold (the thread is switching out); the entries stay.
    /// Releases every hold and forgets them (a thread's record is reused).
    pub(crate) fn clear(&mut self) {
        self.release_all();
        for e in &self.entries {
            e.drop_ref();
        }
        self.entries.clear();
    }

    pub(crate) fn release_all(&mut self) {
        for e in self.entries.iter_mut().rev() {
            e.release();
        }
    }

    /// Takes every atomic hold, all or nothing. Returns false (holding none of
    /// them) if some token is held elsewhere.
    pub(crate) fn acquire_all(&mut self) -> bool {
        for i in 0..self.entries.len() {
            let e = &mut self.entries[i];
            if !e.needs_acquire() {
                continue;
            }
            let ok = if e.has(E_EXCL) { e.token().try_exclusive() } else { e.token().try_shared() };
            if ok {
                e.meta |= E_ACQUIRED;
            } else {
                self.release_all();
                return false;
            }
        }
        true
    }

    /// True if every entry is acquired (the thread may run).
    pub(crate) fn all_acquired(&self) -> bool {
        self.entries.iter().all(|e| !e.needs_acquire())
    }
}

/// A thread's [`TokenStack`] in an allocation of its own. The thread record owns
/// it; the running thread's [`Ctx`] keeps a [`TokensRef`] to it, so taking and
/// releasing a token reach the stack directly, without borrowing the CPU's
/// scheduler state or looking the record up (a fifth of the instructions of an
/// uncontended get + release pair went to those two).
///
/// Lifetime: a record's slot (and so this allocation) is kept, reset, when its
/// thread ends, and is freed only with the CPU's scheduler state, which every
/// `Ctx` keeps alive (a `Ctx` holds an `Rc` of it); so a `TokensRef` never
/// outlives the allocation.
pub(crate) struct Tokens(TokensRef);

impl Tokens {
    pub(crate) fn new() -> Self {
        let b = Box::new(UnsafeCell::new(TokenStack::default()));
        Tokens(TokensRef(NonNull::from(Box::leak(b))))
    }

    /// A copy of the pointer for the thread's `Ctx`.
    #[inline]
    pub(crate) fn share(&self) -> TokensRef {
        self.0
    }
}

impl Deref for Tokens {
    type Target = TokensRef;
    #[inline]
    fn deref(&self) -> &TokensRef {
        &self.0
    }
}

impl Drop for Tokens {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` in `new` and this is its only
        // owner; no `TokensRef` is used after this (see the type's docs).
        drop(unsafe { Box::from_raw(self.0 .0.as_ptr()) });
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The length only: formatting the stack itself would hold the `&mut` that
        // `with` makes while the formatter runs code of its own.
        f.debug_struct("Tokens").field("holds", &self.0.len()).finish()
    }
}

/// A non-owning pointer to a thread's [`Tokens`]. Every operation makes the only
/// `&mut TokenStack` for its own duration: all of them run on the CPU's OS
/// thread (the pointer is neither `Send` nor `Sync`), and none calls back into
/// anything that could reach the same stack (a `TokenStack` method only touches
/// the token atomics and drops `Arc<Token>` references, and `Token` has no drop
/// code).
#[derive(Clone, Copy)]
pub(crate) struct TokensRef(NonNull<UnsafeCell<TokenStack>>);

impl TokensRef {
    #[inline(always)]
    fn with<R>(self, f: impl FnOnce(&mut TokenStack) -> R) -> R {
        // SAFETY: the allocation is alive (see `Tokens`), and the `&mut` made here
        // is the only reference to the stack while `f` runs (see the type's docs;
        // `f` is always one `TokenStack` method, below).
        f(unsafe { &mut *self.0.as_ref().get() })
    }

    #[inline]
    pub(crate) fn len(self) -> usize {
        self.with(|s| s.len())
    }

    #[inline]
    pub(crate) fn push(
        self,
        tok: TokenRef,
        exclusive: bool,
        thread: u64,
        try_only: bool,
    ) -> Result<Acquire, TokenError> {
        self.with(|s| s.push(tok, exclusive, thread, try_only))
    }

    #[inline]
    pub(crate) fn pop(self, held: Held, thread: u64) -> Result<(), (Held, TokenError)> {
        self.with(|s| s.pop(held, thread))
    }

    pub(crate) fn check(self, held: &Held, thread: u64) -> Result<usize, TokenError> {
        self.with(|s| s.check(held, thread))
    }

    pub(crate) fn holds_exclusive(self, addr: usize) -> bool {
        self.with(|s| s.holds_exclusive(addr))
    }

    pub(crate) fn clear(self) {
        self.with(TokenStack::clear)
    }

    pub(crate) fn release_all(self) {
        self.with(TokenStack::release_all)
    }

    pub(crate) fn acquire_all(self) -> bool {
        self.with(TokenStack::acquire_all)
    }

    pub(crate) fn all_acquired(self) -> bool {
        self.with(|s| s.all_acquired())
    }
}

impl Drop for TokenStack {
    fn drop(&mut self) {
        // A thread that ends (or is torn down at shutdown) gives back what it holds.
        self.clear();
    }
}

/// Data protected by a token: reachable only while the current thread holds that
/// token, and only through guards that cannot outlive a blocking call (see the
/// module docs for the rule).
pub struct TokenCell<T: ?Sized> {
    token: TokenRef,
    /// Borrow state for exclusive holders: 0 free, n > 0 shared borrows, -1 mutably
    /// borrowed. Touched only by the thread holding the token exclusively.
    borrow: AtomicI64,
    value: UnsafeCell<T>,
}

// SAFETY: the value is accessed only by threads holding `token`: mutably only by the
// single exclusive holder (and then at most one `&mut` at a time, checked by
// `borrow`), shared by any number of shared holders when no exclusive holder exists.
// Token acquisition is Acquire and release is Release, so accesses by successive
// holders are ordered. Shared access from several threads needs `T: Sync`; handing
// the value between threads needs `T: Send`.
unsafe impl<T: ?Sized + Send + Sync> Sync for TokenCell<T> {}
// SAFETY: moving the cell moves the value; `T: Send` suffices.
unsafe impl<T: ?Sized + Send> Send for TokenCell<T> {}

impl<T: ?Sized> fmt::Debug for TokenCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCell").field("token", &self.token).finish_non_exhaustive()
    }
}

impl<T> TokenCell<T> {
    /// A cell protected by `token` (several cells may share one token).
    pub fn new(token: impl Into<TokenRef>, value: T) -> Self {
        TokenCell { token: token.into(), borrow: AtomicI64::new(0), value: UnsafeCell::new(value) }
    }

    /// A cell protected by a token in a static, usable in a `static` itself.
    pub const fn new_static(token: &'static Token, value: T) -> Self {
        TokenCell {
            token: TokenRef::Static(token),
            borrow: AtomicI64::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Consumes the cell, returning the value (no token needed: we own it).
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

impl<T: ?Sized> TokenCell<T> {
    /// The protecting token, for [`Ctx::get_token`].
    pub fn token(&self) -> TokenRef {
        self.token.clone()
    }

    /// Mutable access without a token: we hold the only reference.
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    fn verify(&self, held: &Held, cx: &Ctx<'_>) -> Result<bool, TokenError> {
        let (exclusive, addr) = cx.check_held(held)?;
        if addr != self.token.addr() {
            return Err(TokenError::WrongToken);
        }
        Ok(exclusive)
    }

    /// Shared access while holding the token (shared or exclusive). The guard borrows
    /// `cx`, so the thread cannot block while it is alive.
    pub fn borrow<'a>(
        &'a self,
        held: &'a Held,
        cx: &'a Ctx<'_>,
    ) -> Result<TokenGuard<'a, T>, TokenError> {
        let exclusive = self.verify(held, cx)?;
        if exclusive {
            let b = self.borrow.load(Ordering::Relaxed);
            if b < 0 {
                return Err(TokenError::Borrowed);
            }
            self.borrow.store(b + 1, Ordering::Relaxed);
        }
        Ok(TokenGuard { cell: self, counted: exclusive })
    }

    /// Exclusive access while holding the token exclusively. The guard borrows `cx`,
    /// so the thread cannot block while it is alive.
    pub fn borrow_mut<'a>(
        &'a self,
        held: &'a Held,
        cx: &'a Ctx<'_>,
    ) -> Result<TokenGuardMut<'a, T>, TokenError> {
        if !self.verify(held, cx)? {
            return Err(TokenError::NotExclusive);
        }
        if self.borrow.load(Ordering::Relaxed) != 0 {
            return Err(TokenError::Borrowed);
        }
        self.borrow.store(-1, Ordering::Relaxed);
        Ok(TokenGuardMut { cell: self })
    }
}

/// Shared access to a [`TokenCell`]'s value.
pub struct TokenGuard<'a, T: ?Sized> {
    cell: &'a TokenCell<T>,
    counted: bool,
}

impl<T: ?Sized> Deref for TokenGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the token (it
        // borrows the thread's Ctx, so no switch can release it), and no `&mut`
        // exists: an exclusive holder counted this borrow, and under a shared hold
        // no exclusive holder exists anywhere.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T: ?Sized> Drop for TokenGuard<'_, T> {
    fn drop(&mut self) {
        if self.counted {
            self.cell.borrow.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for TokenGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// Mutable access to a [`TokenCell`]'s value.
pub struct TokenGuardMut<'a, T: ?Sized> {
    cell: &'a TokenCell<T>,
}

impl<T: ?Sized> Deref for TokenGuardMut<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: as for `deref_mut`; a shared view of the unique borrow.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T: ?Sized> DerefMut for TokenGuardMut<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: this thread holds the token exclusively for the guard's whole life
        // (the guard borrows its Ctx, so it cannot switch out), and the borrow state
        // is -1, so no other guard of this cell exists.
        unsafe { &mut *self.cell.value.get() }
    }
}

impl<T: ?Sized> Drop for TokenGuardMut<'_, T> {
    fn drop(&mut self) {
        self.cell.borrow.store(0, Ordering::Relaxed);
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for TokenGuardMut<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}
