//! Bad input: each fault runs in a forked child whose stderr is captured; the child
//! must abort with the message naming the fault (or, for what every build ignores,
//! exit cleanly). Faults that only the `debug` feature catches are tested under it
//! (`cargo xtask test` runs this crate's tests with `--features debug` too).

use std::time::{Duration, Instant};

use super::layout;
use crate::Slab;

/// Runs `f` in a forked child with stderr captured. Returns (exit status, stderr).
fn in_child(f: impl FnOnce()) -> (i32, String) {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid two-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only runs `f` (which uses the allocator under test and raw
    // memory) and `_exit`s; the parent only reads the pipe and waits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: plain descriptor operations in the child.
        unsafe {
            libc::dup2(fds[1], 2);
            libc::close(fds[0]);
        }
        f();
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        // SAFETY: reading into our buffer; returns 0 at EOF (the child exited).
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fds[0]) };
    let start = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("child hung");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (status, String::from_utf8_lossy(&out).into_owned())
}

fn assert_aborts_with(status: i32, err: &str, what: &str) {
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
        "expected an abort for {what}, status {status:#x}, stderr {err:?}"
    );
    assert!(
        err.starts_with(&format!("dfly-slaballoc: {what}")) && err.contains(" at 0x"),
        "stderr {err:?}"
    );
}

#[test]
fn double_free_aborts_with_a_message() {
    static HEAP: Slab = Slab::new();
    // 8 bytes: caught because the chunk is still the free list's head (or, with the
    // debug feature, by the in-use bitmap); 16 and more: by the free key too.
    for size in [8, 16, 64, 1000, 9000] {
        let (status, err) = in_child(|| {
            let p = HEAP.alloc(layout(size, 8));
            let keep = HEAP.alloc(layout(size, 8)); // the zone stays live
                                                    // SAFETY: the first free is valid; the second is the fault under test.
            unsafe {
                HEAP.dealloc(p);
                HEAP.dealloc(p);
            }
            std::hint::black_box(keep);
        });
        let what =
            if cfg!(feature = "debug") { "double free (chunk not in use)" } else { "double free" };
        assert_aborts_with(status, &err, what);
    }
}

#[test]
fn double_free_on_another_thread_aborts() {
    static HEAP: Slab = Slab::new();
    let (status, err) = in_child(|| {
        let p = HEAP.alloc(layout(128, 8)) as usize;
        let keep = HEAP.alloc(layout(128, 8));
        std::thread::spawn(move || {
            // SAFETY: a valid remote free, then the fault under test.
            unsafe {
                HEAP.dealloc(p as *mut u8);
                HEAP.dealloc(p as *mut u8);
            }
        })
        .join()
        .ok();
        std::hint::black_box(keep);
    });
    assert_aborts_with(status, &err, "double free");
}

#[test]
fn double_free_of_a_cached_large_block_aborts() {
    static HEAP: Slab = Slab::new();
    let (status, err) = in_child(|| {
        let p = HEAP.alloc(layout(300_000, 8));
        // SAFETY: a valid free (the mapping goes to the cache), then the fault.
        unsafe {
            HEAP.dealloc(p);
            HEAP.dealloc(p);
        }
    });
    assert_aborts_with(status, &err, "double free of a large block");
}

#[test]
fn interior_pointer_into_a_large_block_aborts() {
    static HEAP: Slab = Slab::new();
    let (status, err) = in_child(|| {
        let p = HEAP.alloc(layout(100_000, 8));
        // SAFETY: the fault under test (an address inside the block).
        unsafe { HEAP.dealloc(p.add(64)) };
    });
    assert_aborts_with(status, &err, "free of an interior pointer into a large block");
}

#[test]
fn a_foreign_pointer_is_ignored_or_reported() {
    static HEAP: Slab = Slab::new();
    let (status, err) = in_child(|| {
        // A zone-sized, zone-aligned mapping that is not ours (all zeros: no magic).
        let m = crate::os::map_aligned(256 * 1024, crate::class::ZONE_SIZE, 0).unwrap().0;
        let before = HEAP.stats();
        // SAFETY: the fault under test: a pointer this heap never returned.
        unsafe { HEAP.dealloc(m.as_ptr().add(4096 + 64)) };
        assert_eq!(HEAP.stats(), before, "a foreign free changed the heap");
    });
    if cfg!(feature = "debug") {
        assert_aborts_with(status, &err, "free of a pointer this allocator does not own");
    } else {
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{status:#x} {err}");
    }
}

#[cfg(feature = "debug")]
mod debug_only {
    use super::*;

    #[test]
    fn interior_pointer_aborts() {
        static HEAP: Slab = Slab::new();
        let (status, err) = in_child(|| {
            let p = HEAP.alloc(layout(64, 8));
            // SAFETY: the fault under test.
            unsafe { HEAP.dealloc(p.add(8)) };
        });
        assert_aborts_with(status, &err, "free of an interior pointer");
    }

    #[test]
    fn wild_pointer_aborts_instead_of_crashing() {
        static HEAP: Slab = Slab::new();
        let (status, err) = in_child(|| {
            // An address with nothing mapped (a fresh mapping, unmapped again).
            let m = crate::os::map(crate::class::ZONE_SIZE * 2).unwrap();
            // SAFETY: our own mapping, unmapped and never touched again.
            unsafe { crate::os::unmap(m, crate::class::ZONE_SIZE * 2) };
            // SAFETY: the fault under test.
            unsafe { HEAP.dealloc(m.as_ptr().add(64)) };
        });
        assert_aborts_with(
            status,
            &err,
            "free of a pointer this allocator does not own (unmapped)",
        );
    }

    #[test]
    fn write_after_free_is_reported_on_reuse() {
        static HEAP: Slab = Slab::new();
        let (status, err) = in_child(|| {
            let p = HEAP.alloc(layout(64, 8));
            let keep = HEAP.alloc(layout(64, 8));
            // SAFETY: a valid free, then the fault under test: a write after free.
            unsafe {
                HEAP.dealloc(p);
                p.add(40).write(1);
            }
            // LIFO reuse hands the same chunk out again.
            let q = HEAP.alloc(layout(64, 8));
            std::hint::black_box((q, keep));
        });
        assert_aborts_with(status, &err, "write after free (poison overwritten)");
    }

    #[test]
    fn freed_memory_is_poisoned() {
        static HEAP: Slab = Slab::new();
        let p = HEAP.alloc(layout(256, 8));
        let keep = HEAP.alloc(layout(256, 8));
        // SAFETY: a valid free; then reading freed memory, which the allocator keeps
        // mapped (the zone holds `keep`), only to check the poison.
        unsafe {
            HEAP.dealloc(p);
            for i in 16..256 {
                assert_eq!(p.add(i).read(), crate::debug::POISON);
            }
            HEAP.dealloc(keep);
        }
    }
}
