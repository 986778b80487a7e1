//! The lwkt suite: dfly-lwkt's scheduler against corosensei raw switches, tokio
//! (current-thread and multi-thread runtimes; the workloads of tokio's own runtime
//! benches: spawn_many, yield_many, ping_pong, chained_spawn), OS threads and raw
//! futex wakes, all in the same run. Also: uncontended tokens against a std Mutex,
//! resident memory of 100,000 blocked threads (stackful, continuation, tokio task),
//! and the CPU time an idle machine burns.
//!
//! Run with `cargo xtask bench lwkt` (or `cargo bench -p dfly-benches --bench lwkt --
//! --quick`). `DFLY_BENCH_ONLY=switch,wake,spawn,rt,token,blocked,idle` runs a subset;
//! `DFLY_BENCH_ONLY=chained` runs only the spawn/chained cases.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use corosensei::{Coroutine, CoroutineResult};
use dfly_benches::{cores, median, percentile, pin, progress, Mode, Recorder};
use dfly_core::Futex;
use dfly_lwkt::{ident_of, Flow, Machine, Spawn, Token};

const COROSENSEI: &str = "corosensei 0.3.4";
const TOKIO_CT: &str = "tokio 1.54.1 current_thread";
const TOKIO_MT: &str = "tokio 1.54.1 multi_thread(2)";
const FUTEX: &str = "futex(2) raw";
const STD_THREAD: &str = "std::thread";

fn machine(ncpus: usize) -> Machine {
    Machine::builder().cpus(ncpus).pin(true).build().expect("machine")
}

fn ct_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio")
}

fn mt_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

fn med_of(reps: usize, mut f: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..reps).map(|_| f()).collect();
    median(&mut v)
}

// ---- local switch --------------------------------------------------------------------

fn dfly_switch(n: u64) -> f64 {
    let mut m = machine(1);
    let go = Arc::new(AtomicBool::new(false));
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let go = go.clone();
            m.spawn(Spawn::on_cpu(0), move |cx| {
                while !go.load(Ordering::Acquire) {
                    cx.yield_now();
                }
                let t = Instant::now();
                for _ in 0..n {
                    cx.yield_now();
                }
                t.elapsed()
            })
            .unwrap()
        })
        .collect();
    go.store(true, Ordering::Release);
    let el: Vec<Duration> = hs.into_iter().map(|h| h.join_blocking().unwrap()).collect();
    m.stop().unwrap();
    // Both threads yield n times: 2n handoffs in the longer thread's span.
    el.iter().max().unwrap().as_nanos() as f64 / (2 * n) as f64
}

fn corosensei_switch(n: u64) -> f64 {
    let mk = || {
        Coroutine::new(move |y, ()| loop {
            y.suspend(());
        })
    };
    let mut a: Coroutine<(), (), ()> = mk();
    let mut b: Coroutine<(), (), ()> = mk();
    let t = Instant::now();
    for _ in 0..n {
        if let CoroutineResult::Return(()) = a.resume(()) {
            break;
        }
        if let CoroutineResult::Return(()) = b.resume(()) {
            break;
        }
    }
    t.elapsed().as_nanos() as f64 / (2 * n) as f64
}

fn switch_suite(rec: &mut Recorder, mode: Mode) {
    progress("lwkt: switch/local");
    let n = mode.scale(2_000_000);
    pin(0);
    let v = med_of(mode.reps(), || dfly_switch(n));
    rec.record("switch/local", "dfly", "ns_per_switch", v, "ns", true);
    let v = med_of(mode.reps(), || corosensei_switch(n));
    rec.record("switch/local", COROSENSEI, "ns_per_switch", v, "ns", true);
}

// ---- cross-CPU wake to run -------------------------------------------------------------

/// Ping-pong between a thread on CPU 0 and one on CPU 1: each wakes the other and
/// sleeps. One-way wake-to-run = half a round trip.
fn dfly_wake(rounds: usize) -> Vec<f64> {
    let mut m = machine(2);
    let turn = Arc::new(AtomicU64::new(0));
    let t1 = turn.clone();
    let other = m
        .spawn(Spawn::on_cpu(1), move |cx| {
            let id = ident_of(&*t1);
            for i in 0..rounds as u64 {
                let _ = cx.tsleep_until(id, Some(Duration::from_secs(5)), || {
                    t1.load(Ordering::SeqCst) == 2 * i + 1
                });
                t1.store(2 * i + 2, Ordering::SeqCst);
                cx.wakeup(id);
            }
        })
        .unwrap();
    let t0 = turn.clone();
    let me = m
        .spawn(Spawn::on_cpu(0), move |cx| {
            let id = ident_of(&*t0);
            let mut v = Vec::with_capacity(rounds);
            for i in 0..rounds as u64 {
                let s = Instant::now();
                t0.store(2 * i + 1, Ordering::SeqCst);
                cx.wakeup(id);
                let _ = cx.tsleep_until(id, Some(Duration::from_secs(5)), || {
                    t0.load(Ordering::SeqCst) == 2 * i + 2
                });
                v.push(s.elapsed().as_nanos() as f64 / 2.0);
            }
            v
        })
        .unwrap();
    let v = me.join_blocking().unwrap();
    other.join_blocking().unwrap();
    m.stop().unwrap();
    v
}

/// The same ping-pong between two pinned OS threads with a bare futex word each.
fn futex_wake(rounds: usize) -> Vec<f64> {
    let turn = Arc::new(Futex::new(0));
    let go = Arc::new(Barrier::new(2));
    let (t1, g1) = (turn.clone(), go.clone());
    let other = std::thread::spawn(move || {
        pin(1);
        g1.wait();
        for i in 0..rounds as u32 {
            while t1.word().load(Ordering::SeqCst) != 2 * i + 1 {
                t1.wait(2 * i, Some(Duration::from_secs(5)));
            }
            t1.word().store(2 * i + 2, Ordering::SeqCst);
            t1.wake_one();
        }
    });
    pin(0);
    go.wait();
    let mut v = Vec::with_capacity(rounds);
    for i in 0..rounds as u32 {
        let s = Instant::now();
        turn.word().store(2 * i + 1, Ordering::SeqCst);
        turn.wake_one();
        while turn.word().load(Ordering::SeqCst) != 2 * i + 2 {
            turn.wait(2 * i + 1, Some(Duration::from_secs(5)));
        }
        v.push(s.elapsed().as_nanos() as f64 / 2.0);
    }
    other.join().unwrap();
    v
}

fn wake_suite(rec: &mut Recorder, mode: Mode) {
    progress("lwkt: wake/cross_cpu");
    if cores() < 2 {
        progress("lwkt: wake/cross_cpu needs 2 cores; skipped");
        return;
    }
    let rounds = mode.scale(20_000) as usize;
    for (imp, mut v) in [("dfly", dfly_wake(rounds)), (FUTEX, futex_wake(rounds))] {
        let p50 = percentile(&mut v, 0.5);
        let p99 = percentile(&mut v, 0.99);
        rec.record("wake/cross_cpu", imp, "p50_ns", p50, "ns", true);
        rec.record("wake/cross_cpu", imp, "p99_ns", p99, "ns", true);
    }
}

// ---- spawn / runtime workloads ----------------------------------------------------------

fn dfly_chained(ncpus: usize, n: usize) -> f64 {
    fn link(cx: &mut dfly_lwkt::Ctx<'_>, left: usize, done: mpsc::SyncSender<()>) {
        if left == 0 {
            let _ = done.send(());
        } else {
            let cpu = cx.cpu().index();
            let _ = cx.spawn(Spawn::on_cpu(cpu), move |cx| link(cx, left - 1, done));
        }
    }
    let mut m = machine(ncpus);
    let (tx, rx) = mpsc::sync_channel(1);
    let t = Instant::now();
    m.spawn(Spawn::on_cpu(0), move |cx| link(cx, n, tx)).unwrap();
    rx.recv().unwrap();
    let el = t.elapsed();
    m.stop().unwrap();
    el.as_nanos() as f64 / n as f64
}

fn tokio_chained(rt: &tokio::runtime::Runtime, n: usize) -> f64 {
    // As tokio's own chained_spawn bench, with an async completion signal so the
    // current-thread runtime keeps running tasks while it waits.
    fn link(left: usize, done: tokio::sync::oneshot::Sender<()>) {
        if left == 0 {
            let _ = done.send(());
        } else {
            tokio::spawn(async move { link(left - 1, done) });
        }
    }
    let t = Instant::now();
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move { link(n, tx) });
        rx.await.unwrap();
    });
    t.elapsed().as_nanos() as f64 / n as f64
}

/// spawn+run+join of a trivial thread, one after another, from a thread.
fn dfly_spawn_join(n: usize) -> f64 {
    let mut m = machine(1);
    let h = m
        .spawn(Spawn::on_cpu(0), move |cx| {
            let t = Instant::now();
            for i in 0..n {
                let c = cx.spawn(Spawn::on_cpu(0), move |_| i).unwrap();
                black_box(cx.join(c).unwrap());
            }
            t.elapsed()
        })
        .unwrap();
    let el = h.join_blocking().unwrap();
    m.stop().unwrap();
    el.as_nanos() as f64 / n as f64
}

fn tokio_spawn_join(rt: &tokio::runtime::Runtime, n: usize) -> f64 {
    rt.block_on(async move {
        let t = Instant::now();
        for i in 0..n {
            black_box(tokio::spawn(async move { i }).await.unwrap());
        }
        t.elapsed().as_nanos() as f64 / n as f64
    })
}

fn std_spawn_join(n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        black_box(std::thread::spawn(move || i).join().unwrap());
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn dfly_spawn_many(ncpus: usize, n: usize) -> f64 {
    let mut m = machine(ncpus);
    let left = Arc::new(AtomicUsize::new(n));
    let (tx, rx) = mpsc::sync_channel(1);
    let t = Instant::now();
    let l2 = left.clone();
    m.spawn(Spawn::on_cpu(0), move |cx| {
        for i in 0..n {
            let l = l2.clone();
            let tx = tx.clone();
            let _ = cx.spawn(Spawn::on_cpu(i % ncpus), move |_| {
                if l.fetch_sub(1, Ordering::AcqRel) == 1 {
                    let _ = tx.send(());
                }
            });
        }
    })
    .unwrap();
    rx.recv().unwrap();
    let el = t.elapsed();
    m.stop().unwrap();
    el.as_nanos() as f64 / n as f64
}

fn tokio_spawn_many(rt: &tokio::runtime::Runtime, n: usize) -> f64 {
    let left = Arc::new(AtomicUsize::new(n));
    let t = Instant::now();
    rt.block_on(async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        for _ in 0..n {
            let l = left.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if l.fetch_sub(1, Ordering::AcqRel) == 1 {
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
            });
        }
        rx.await.unwrap();
    });
    t.elapsed().as_nanos() as f64 / n as f64
}

fn dfly_yield_many(ncpus: usize, tasks: usize, yields: usize) -> f64 {
    let mut m = machine(ncpus);
    let t = Instant::now();
    let hs: Vec<_> = (0..tasks)
        .map(|i| {
            m.spawn(Spawn::on_cpu(i % ncpus), move |cx| {
                for _ in 0..yields {
                    cx.yield_now();
                }
            })
            .unwrap()
        })
        .collect();
    for h in hs {
        h.join_blocking().unwrap();
    }
    let el = t.elapsed();
    m.stop().unwrap();
    el.as_nanos() as f64 / (tasks * yields) as f64
}

fn tokio_yield_many(rt: &tokio::runtime::Runtime, tasks: usize, yields: usize) -> f64 {
    let t = Instant::now();
    rt.block_on(async move {
        let hs: Vec<_> = (0..tasks)
            .map(|_| {
                tokio::spawn(async move {
                    for _ in 0..yields {
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for h in hs {
            h.await.unwrap();
        }
    });
    t.elapsed().as_nanos() as f64 / (tasks * yields) as f64
}

/// Two threads on one CPU hand a token back and forth with sleep/wakeup.
fn dfly_ping_pong(ncpus: usize, n: u64) -> f64 {
    let mut m = machine(ncpus);
    let turn = Arc::new(AtomicU64::new(0));
    let mk = |me: u64, cpu: usize| {
        let turn = turn.clone();
        m.spawn(Spawn::on_cpu(cpu), move |cx| {
            let id = ident_of(&*turn);
            for i in 0..n {
                let want = 2 * i + me;
                let _ = cx.tsleep_until(id, Some(Duration::from_secs(5)), || {
                    turn.load(Ordering::SeqCst) == want
                });
                turn.store(want + 1, Ordering::SeqCst);
                cx.wakeup(id);
            }
        })
        .unwrap()
    };
    let t = Instant::now();
    let a = mk(0, 0);
    let b = mk(1, (ncpus - 1).min(1));
    a.join_blocking().unwrap();
    b.join_blocking().unwrap();
    let el = t.elapsed();
    m.stop().unwrap();
    el.as_nanos() as f64 / (2 * n) as f64
}

fn tokio_ping_pong(rt: &tokio::runtime::Runtime, n: u64) -> f64 {
    let t = Instant::now();
    rt.block_on(async move {
        let (a_tx, mut a_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let (b_tx, mut b_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let pong = tokio::spawn(async move {
            while let Some(v) = a_rx.recv().await {
                if b_tx.send(v + 1).await.is_err() {
                    break;
                }
            }
        });
        for i in 0..n {
            a_tx.send(i).await.unwrap();
            black_box(b_rx.recv().await.unwrap());
        }
        drop(a_tx);
        pong.await.unwrap();
    });
    t.elapsed().as_nanos() as f64 / (2 * n) as f64
}

fn spawn_suite(rec: &mut Recorder, mode: Mode, chained_only: bool) {
    progress("lwkt: spawn/chained, spawn/join");
    let reps = mode.reps();
    let n = mode.scale(100_000) as usize;
    let ct = ct_rt();
    let mt = mt_rt();
    let unit = "ns";
    let v = med_of(reps, || dfly_chained(1, n));
    rec.record("spawn/chained", "dfly", "ns_per_spawn", v, unit, true);
    let v = med_of(reps, || tokio_chained(&ct, n));
    rec.record("spawn/chained", TOKIO_CT, "ns_per_spawn", v, unit, true);
    let v = med_of(reps, || tokio_chained(&mt, n));
    rec.record("spawn/chained", TOKIO_MT, "ns_per_spawn", v, unit, true);
    if chained_only {
        return;
    }
    let v = med_of(reps, || dfly_spawn_join(n));
    rec.record("spawn/join", "dfly", "ns_per_spawn", v, unit, true);
    let v = med_of(reps, || tokio_spawn_join(&ct, n));
    rec.record("spawn/join", TOKIO_CT, "ns_per_spawn", v, unit, true);
    let v = med_of(reps, || tokio_spawn_join(&mt, n));
    rec.record("spawn/join", TOKIO_MT, "ns_per_spawn", v, unit, true);
    let ns = (n / 20).max(50);
    let v = med_of(reps, || std_spawn_join(ns));
    rec.record("spawn/join", STD_THREAD, "ns_per_spawn", v, unit, true);

    progress("lwkt: rt/spawn_many, rt/yield_many, rt/ping_pong");
    let two = cores().min(2);
    let v = med_of(reps, || dfly_spawn_many(1, n));
    rec.record("rt/spawn_many", "dfly", "ns_per_task", v, unit, true);
    let v = med_of(reps, || dfly_spawn_many(two, n));
    rec.record("rt/spawn_many", "dfly 2cpu", "ns_per_task", v, unit, true);
    let v = med_of(reps, || tokio_spawn_many(&ct, n));
    rec.record("rt/spawn_many", TOKIO_CT, "ns_per_task", v, unit, true);
    let v = med_of(reps, || tokio_spawn_many(&mt, n));
    rec.record("rt/spawn_many", TOKIO_MT, "ns_per_task", v, unit, true);
    let (tasks, yields) = (200, (mode.scale(1_000) as usize).max(10));
    let v = med_of(reps, || dfly_yield_many(1, tasks, yields));
    rec.record("rt/yield_many", "dfly", "ns_per_yield", v, unit, true);
    let v = med_of(reps, || dfly_yield_many(two, tasks, yields));
    rec.record("rt/yield_many", "dfly 2cpu", "ns_per_yield", v, unit, true);
    let v = med_of(reps, || tokio_yield_many(&ct, tasks, yields));
    rec.record("rt/yield_many", TOKIO_CT, "ns_per_yield", v, unit, true);
    let v = med_of(reps, || tokio_yield_many(&mt, tasks, yields));
    rec.record("rt/yield_many", TOKIO_MT, "ns_per_yield", v, unit, true);
    let pn = mode.scale(100_000);
    let v = med_of(reps, || dfly_ping_pong(1, pn));
    rec.record("rt/ping_pong", "dfly", "ns_per_hop", v, unit, true);
    let v = med_of(reps, || dfly_ping_pong(two, pn));
    rec.record("rt/ping_pong", "dfly 2cpu", "ns_per_hop", v, unit, true);
    let v = med_of(reps, || tokio_ping_pong(&ct, pn));
    rec.record("rt/ping_pong", TOKIO_CT, "ns_per_hop", v, unit, true);
    let v = med_of(reps, || tokio_ping_pong(&mt, pn));
    rec.record("rt/ping_pong", TOKIO_MT, "ns_per_hop", v, unit, true);
}

// ---- tokens --------------------------------------------------------------------------

static BENCH_TOKEN: Token = Token::new("bench");

fn token_suite(rec: &mut Recorder, mode: Mode) {
    progress("lwkt: token/uncontended");
    let n = mode.scale(10_000_000);
    let mut m = machine(1);
    let v = med_of(mode.reps(), || {
        m.spawn(Spawn::on_cpu(0), move |cx| {
            let t = Instant::now();
            for _ in 0..n {
                let h = cx.get_token(&BENCH_TOKEN).unwrap();
                cx.release(black_box(h)).unwrap();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .unwrap()
        .join_blocking()
        .unwrap()
    });
    m.stop().unwrap();
    rec.record("token/uncontended", "dfly", "ns_per_pair", v, "ns", true);
    let mu = std::sync::Mutex::new(0u64);
    let v = med_of(mode.reps(), || {
        let t = Instant::now();
        for _ in 0..n {
            *black_box(&mu).lock().unwrap() += 1;
        }
        t.elapsed().as_nanos() as f64 / n as f64
    });
    rec.record("token/uncontended", "std Mutex", "ns_per_pair", v, "ns", true);
    // The floor under any token or lock: one compare-and-swap to take it and one
    // release store to give it back, nothing else. On some machines this alone is
    // close to the 10 ns goal, so the report shows it beside dfly's pair.
    let word = AtomicU64::new(0);
    let v = med_of(mode.reps(), || {
        let t = Instant::now();
        for _ in 0..n {
            let w = black_box(&word);
            let _ = w.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed);
            w.store(0, Ordering::Release);
        }
        t.elapsed().as_nanos() as f64 / n as f64
    });
    rec.record("token/uncontended", "raw CAS + release store", "ns_per_pair", v, "ns", true);
}

// ---- preemption point --------------------------------------------------------------------

/// The cost of a preemption point in a loop with nothing else to run: dfly's
/// `maybe_yield` (it reads the clock every 16 calls) against tokio's cooperative
/// budget (`consume_budget`, which yields to the runtime once the task's budget of
/// 128 is spent) on a current-thread runtime.
fn preempt_suite(rec: &mut Recorder, mode: Mode) {
    progress("lwkt: preempt/noop");
    let n = mode.scale(20_000_000);
    let mut m = machine(1);
    let v = med_of(mode.reps(), || {
        m.spawn(Spawn::on_cpu(0), move |cx| {
            let t = Instant::now();
            for _ in 0..n {
                cx.maybe_yield();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .unwrap()
        .join_blocking()
        .unwrap()
    });
    m.stop().unwrap();
    rec.record("preempt/noop", "dfly", "ns_per_call", v, "ns", true);
    let rt = ct_rt();
    let v = med_of(mode.reps(), || {
        rt.block_on(async move {
            let t = Instant::now();
            for _ in 0..n {
                tokio::task::coop::consume_budget().await;
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
    });
    rec.record("preempt/noop", TOKIO_CT, "ns_per_call", v, "ns", true);
}

// ---- memory of blocked threads ----------------------------------------------------------

fn resident_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// Each stack is two mappings (guard + usable); make room for `n` of them.
fn ensure_map_count(n: usize) -> bool {
    let path = "/proc/sys/vm/max_map_count";
    let cur: usize =
        std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let need = 2 * n + 65_536;
    if cur >= need {
        return true;
    }
    std::fs::write(path, need.to_string()).is_ok()
}

const BLOCK_IDENT: usize = 0xB10C;

fn blocked_dfly(n: usize, continuation: bool) -> f64 {
    let mut m = Machine::builder().cpus(1).stack_size(64 * 1024).build().unwrap();
    let asleep = Arc::new(AtomicUsize::new(0));
    // Warm up allocator and stack pool paths so they are not billed to the threads.
    m.spawn(Spawn::on_cpu(0), |_| ()).unwrap().join_blocking().unwrap();
    let before = resident_bytes();
    let mut hs = Vec::with_capacity(n);
    for _ in 0..n {
        let a = asleep.clone();
        let h = if continuation {
            m.spawn_flow(Spawn::on_cpu(0), move |cx| {
                cx.tsleep_interlock(BLOCK_IDENT);
                a.fetch_add(1, Ordering::SeqCst);
                cx.block_with_continuation(BLOCK_IDENT, None, |_| Flow::done(()))
            })
        } else {
            m.spawn(Spawn::on_cpu(0), move |cx| {
                cx.tsleep_interlock(BLOCK_IDENT);
                a.fetch_add(1, Ordering::SeqCst);
                let _ = cx.tsleep(BLOCK_IDENT, None);
            })
        };
        hs.push(h.unwrap());
    }
    let t0 = Instant::now();
    while asleep.load(Ordering::SeqCst) < n && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Let the CPU file the last continuation.
    std::thread::sleep(Duration::from_millis(20));
    let after = resident_bytes();
    m.wakeup(BLOCK_IDENT);
    for h in hs {
        let _ = h.join_blocking();
    }
    m.stop().unwrap();
    (after.saturating_sub(before)) as f64 / n as f64
}

fn blocked_tokio(n: usize) -> f64 {
    let rt = ct_rt();
    let notify = Arc::new(tokio::sync::Notify::new());
    let waiting = Arc::new(AtomicUsize::new(0));
    let before = resident_bytes();
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let (nf, w) = (notify.clone(), waiting.clone());
            rt.spawn(async move {
                let mut f = std::pin::pin!(nf.notified());
                f.as_mut().enable();
                w.fetch_add(1, Ordering::SeqCst);
                f.await
            })
        })
        .collect();
    let w = waiting.clone();
    rt.block_on(async move {
        while w.load(Ordering::SeqCst) < n {
            tokio::task::yield_now().await;
        }
    });
    let after = resident_bytes();
    notify.notify_waiters();
    rt.block_on(async {
        for h in hs {
            let _ = h.await;
        }
    });
    (after.saturating_sub(before)) as f64 / n as f64
}

fn blocked_suite(rec: &mut Recorder, mode: Mode) {
    let n = if mode == Mode::Test { 1000 } else { 100_000 };
    progress(&format!("lwkt: blocked/{n} (resident bytes per blocked thread)"));
    let case = format!("blocked/{n}");
    let stackful = if ensure_map_count(n) {
        Some(blocked_dfly(n, false))
    } else {
        progress("lwkt: cannot raise vm.max_map_count (not root?): stackful case skipped");
        None
    };
    if let Some(v) = stackful {
        rec.record(&case, "dfly stackful tsleep", "resident_bytes_per_thread", v, "B", true);
    }
    let v = blocked_dfly(n, true);
    rec.record(&case, "dfly", "resident_bytes_per_thread", v, "B", true);
    let v = blocked_tokio(n);
    rec.record(&case, TOKIO_CT, "resident_bytes_per_thread", v, "B", true);
}

// ---- idle -----------------------------------------------------------------------------

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn idle_suite(rec: &mut Recorder, mode: Mode) {
    progress("lwkt: idle/2cpu (CPU time of an idle machine)");
    let secs = if mode == Mode::Test { 0.1 } else { 1.0 };
    let mut m = machine(2);
    std::thread::sleep(Duration::from_millis(50));
    let c0 = cpu_time();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let used = cpu_time() - c0;
    let wall = t0.elapsed().as_secs_f64();
    m.stop().unwrap();
    rec.record("idle/2cpu", "dfly", "cpu_ms_per_s", used.as_secs_f64() * 1e3 / wall, "ms", true);
}

fn main() {
    let mode = Mode::from_args();
    let mut rec = Recorder::new("lwkt");
    progress(&format!("lwkt suite, mode {mode:?}, {} cores", cores()));
    let only = std::env::var("DFLY_BENCH_ONLY").unwrap_or_default();
    let want = |name: &str| only.is_empty() || only.split(',').any(|w| w == name);
    if want("switch") {
        switch_suite(&mut rec, mode);
    }
    if want("wake") {
        wake_suite(&mut rec, mode);
    }
    if want("spawn") || want("rt") || want("chained") {
        spawn_suite(&mut rec, mode, !want("spawn") && !want("rt"));
    }
    if want("token") {
        token_suite(&mut rec, mode);
    }
    if want("preempt") {
        preempt_suite(&mut rec, mode);
    }
    if want("blocked") {
        blocked_suite(&mut rec, mode);
    }
    if want("idle") {
        idle_suite(&mut rec, mode);
    }
    progress(&format!("lwkt suite done: {} records", rec.count()));
}
