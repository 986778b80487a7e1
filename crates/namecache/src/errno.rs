//! The POSIX errors a namespace operation can return, with their Linux numbers.

use core::fmt;

/// A POSIX error from a namespace operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// No such file or directory.
    NoEnt,
    /// A path component (or a trailing-slash target) is not a directory.
    NotDir,
    /// Is a directory (where a non-directory was needed).
    IsDir,
    /// File exists.
    Exist,
    /// Directory not empty.
    NotEmpty,
    /// Invalid argument (NUL in a path, rename of a directory into itself, `.`/`..`
    /// as a rename or removal target).
    Inval,
    /// Too many levels of symbolic links.
    Loop,
    /// A component longer than 255 bytes or a path of 4096 bytes or more.
    NameTooLong,
    /// Cross-device link or rename (across mounts).
    XDev,
    /// Device or resource busy (removing a mount point or a root).
    Busy,
    /// Permission denied (a backend refusing).
    Access,
    /// Operation not permitted.
    Perm,
    /// No space left (a backend refusing to grow).
    NoSpc,
    /// An I/O error from a backend.
    Io,
    /// Try again (a stale generation seen while resolving; retried internally).
    Again,
    /// Operation not supported (a backend without file data).
    NotSup,
}

impl Errno {
    /// The Linux errno value.
    pub fn raw(self) -> i32 {
        match self {
            Errno::Perm => 1,
            Errno::NoEnt => 2,
            Errno::Io => 5,
            Errno::Again => 11,
            Errno::Access => 13,
            Errno::Busy => 16,
            Errno::Exist => 17,
            Errno::XDev => 18,
            Errno::NotDir => 20,
            Errno::IsDir => 21,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::NameTooLong => 36,
            Errno::NotEmpty => 39,
            Errno::Loop => 40,
            Errno::NotSup => 95,
        }
    }

    /// The error for a Linux errno value (`Io` for values this crate does not use).
    pub fn from_raw(e: i32) -> Errno {
        match e {
            1 => Errno::Perm,
            2 => Errno::NoEnt,
            11 => Errno::Again,
            13 => Errno::Access,
            16 => Errno::Busy,
            17 => Errno::Exist,
            18 => Errno::XDev,
            20 => Errno::NotDir,
            21 => Errno::IsDir,
            22 => Errno::Inval,
            28 => Errno::NoSpc,
            36 => Errno::NameTooLong,
            39 => Errno::NotEmpty,
            40 => Errno::Loop,
            95 => Errno::NotSup,
            _ => Errno::Io,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Errno::NoEnt => "no such file or directory",
            Errno::NotDir => "not a directory",
            Errno::IsDir => "is a directory",
            Errno::Exist => "file exists",
            Errno::NotEmpty => "directory not empty",
            Errno::Inval => "invalid argument",
            Errno::Loop => "too many levels of symbolic links",
            Errno::NameTooLong => "file name too long",
            Errno::XDev => "cross-device link",
            Errno::Busy => "device or resource busy",
            Errno::Access => "permission denied",
            Errno::Perm => "operation not permitted",
            Errno::NoSpc => "no space left on device",
            Errno::Io => "input/output error",
            Errno::Again => "resource temporarily unavailable",
            Errno::NotSup => "operation not supported",
        };
        write!(f, "{s} (errno {})", self.raw())
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for std::io::Error {
    fn from(e: Errno) -> Self {
        std::io::Error::from_raw_os_error(e.raw())
    }
}
