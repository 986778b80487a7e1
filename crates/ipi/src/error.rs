//! Error types, one per operation family. Every variant says what went wrong; none
//! of them is a panic.

use core::fmt;

use dfly_core::current::AlreadyACpu;
use dfly_core::{CpuId, CpuOutOfRange};

/// Why a crossbar could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// `ncpus` was 0 or above [`dfly_core::MAX_CPUS`].
    BadCpuCount(usize),
    /// The FIFO capacity was not a power of two in `16..=65536`.
    BadCapacity(usize),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::BadCpuCount(n) => {
                write!(f, "a crossbar needs 1..={} cpus, not {n}", dfly_core::MAX_CPUS)
            }
            BuildError::BadCapacity(c) => {
                write!(f, "fifo capacity must be a power of two in 16..=65536, not {c}")
            }
        }
    }
}

impl std::error::Error for BuildError {}

/// Why a thread could not attach as a CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachError {
    /// No such CPU in this crossbar.
    OutOfRange(CpuOutOfRange),
    /// Another thread is attached as this CPU.
    AlreadyAttached(CpuId),
    /// This thread already runs as a CPU (of this or another machine).
    ThreadIsACpu(AlreadyACpu),
    /// The crossbar was shut down.
    Shutdown,
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachError::OutOfRange(e) => write!(f, "cannot attach: {e}"),
            AttachError::AlreadyAttached(c) => write!(f, "cannot attach: {c} is already attached"),
            AttachError::ThreadIsACpu(e) => write!(f, "cannot attach: {e}"),
            AttachError::Shutdown => write!(f, "cannot attach: the crossbar is shut down"),
        }
    }
}

impl std::error::Error for AttachError {}

/// Why a send failed. The message was not queued and will not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// No such target CPU.
    OutOfRange(CpuOutOfRange),
    /// The crossbar was shut down.
    Shutdown,
    /// The target's FIFO is full and no thread is attached as the target to drain
    /// it (or, for sends from foreign threads, its foreign inbox is full).
    Busy(CpuId),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::OutOfRange(e) => write!(f, "cannot send: {e}"),
            SendError::Shutdown => write!(f, "cannot send: the crossbar is shut down"),
            SendError::Busy(c) => {
                write!(f, "cannot send: the fifo to {c} is full and nothing is draining it")
            }
        }
    }
}

impl std::error::Error for SendError {}

/// Why a wait or a cpusync ended without its condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The crossbar was shut down while waiting.
    Shutdown,
    /// The CPU waited on is not attached, so it will never make progress.
    NotAttached(CpuId),
    /// The sequence number belongs to a send from another CPU.
    ForeignSeq,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Shutdown => write!(f, "wait ended: the crossbar is shut down"),
            WaitError::NotAttached(c) => write!(f, "wait ended: {c} is not attached"),
            WaitError::ForeignSeq => {
                write!(f, "cannot wait: the sequence number came from another cpu's send")
            }
        }
    }
}

impl std::error::Error for WaitError {}

impl From<SendError> for WaitError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Busy(c) => WaitError::NotAttached(c),
            SendError::OutOfRange(e) => {
                WaitError::NotAttached(CpuId::new(e.cpu).unwrap_or(CpuId::ZERO))
            }
            SendError::Shutdown => WaitError::Shutdown,
        }
    }
}
