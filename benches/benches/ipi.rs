//! The ipi suite: dfly's crossbar against a reference SPSC ring, rtrb, crossbeam-queue
//! ArrayQueue, crossbeam-channel (bounded 256/1/0, and a per-CPU inbox design), std
//! `sync_channel`, flume and tokio mpsc, all in one run with the same payloads and
//! pinning. Cases: stream throughput, ping-pong round trips, oversubscription (both
//! ends on one core, with `sched_yield`/futex counts from strace), idle poll cost,
//! passive against active sends, wakeup avoidance, all-to-all request/reply.
//!
//! Record names match `xtask/src/goals.rs`. Run with `cargo xtask bench ipi`.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use dfly_benches::{median, percentile, pin, progress, refring, Mode, Recorder};
use dfly_core::CpuId;
use dfly_ipi::{Cpu, Crossbar};

const RTRB: &str = "rtrb 0.4.1";
const AQ: &str = "crossbeam-queue 0.3.14 ArrayQueue";
const CB: &str = "crossbeam-channel 0.5.17";
const STD: &str = "std sync_channel";
const FLUME: &str = "flume 0.12.0";
const TOKIO: &str = "tokio 1.54.1";

fn c(i: usize) -> CpuId {
    CpuId::new(i).unwrap()
}

// ---- payloads --------------------------------------------------------------------

/// A message the consumer "executes": u64 (added up) or a 24-byte call record.
trait Pay: Copy + Send + 'static {
    const NAME: &'static str;
    fn make(i: u64) -> Self;
    fn consume(self, acc: &mut u64);
}

impl Pay for u64 {
    const NAME: &'static str = "u64";
    #[inline(always)]
    fn make(i: u64) -> Self {
        i
    }
    #[inline(always)]
    fn consume(self, acc: &mut u64) {
        *acc = acc.wrapping_add(self);
    }
}

#[derive(Clone, Copy)]
struct Call {
    f: fn(&mut u64, usize, usize),
    a1: usize,
    a2: usize,
}

fn call_body(acc: &mut u64, a1: usize, a2: usize) {
    *acc = acc.wrapping_add((a1 ^ a2) as u64);
}

impl Pay for Call {
    const NAME: &'static str = "24B";
    #[inline(always)]
    fn make(i: u64) -> Self {
        Call { f: call_body, a1: i as usize, a2: 7 }
    }
    #[inline(always)]
    fn consume(self, acc: &mut u64) {
        (self.f)(acc, self.a1, self.a2);
    }
}

// ---- a two-thread timing harness ----------------------------------------------------

/// Runs `producer` on core `pa` and `consumer` on core `pb`; returns seconds from the
/// producer's start to the consumer's end.
fn pair<P, C>(pa: usize, pb: usize, producer: P, consumer: C) -> f64
where
    P: FnOnce() + Send,
    C: FnOnce() + Send,
{
    let go = Barrier::new(2);
    let mut t_start = None;
    let mut t_end = None;
    std::thread::scope(|s| {
        let go = &go;
        let cons = s.spawn(move || {
            pin(pb);
            go.wait();
            consumer();
            Instant::now()
        });
        let prod = s.spawn(move || {
            pin(pa);
            go.wait();
            let t = Instant::now();
            producer();
            t
        });
        t_start = Some(prod.join().unwrap());
        t_end = Some(cons.join().unwrap());
    });
    (t_end.unwrap() - t_start.unwrap()).as_secs_f64()
}

/// Median throughput in million messages per second over `reps` runs.
fn throughput(reps: usize, n: u64, mut run: impl FnMut() -> f64) -> f64 {
    let mut v: Vec<f64> = (0..reps).map(|_| n as f64 / run() / 1e6).collect();
    median(&mut v)
}

/// One measurement of `n` messages: runs it and returns the seconds it took.
type Run = (u64, Box<dyn FnMut() -> f64>);

/// [`throughput`] of several measurements in interleaved rounds (one run of each
/// per round), so a slow phase of a shared machine lands on all of them alike.
/// Returns each one's median, in order.
fn interleaved(reps: usize, runs: &mut [Run]) -> Vec<f64> {
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    for _ in 0..reps {
        for ((n, run), out) in runs.iter_mut().zip(rates.iter_mut()) {
            out.push(*n as f64 / run() / 1e6);
        }
    }
    rates.iter_mut().map(|v| median(v)).collect()
}

// ---- dfly ------------------------------------------------------------------------

thread_local! {
    static ACC: Cell<u64> = const { Cell::new(0) };
    static GOT: Cell<u64> = const { Cell::new(0) };
}

fn dfly_recv(_: &Cpu, a1: usize, a2: usize) {
    ACC.with(|a| a.set(a.get().wrapping_add((a1 ^ a2) as u64)));
    GOT.with(|g| g.set(g.get() + 1));
}

/// One step of a busy-polling dfly consumer, the same shape as the ring peers'
/// receive loops ([`spin_recv`]): poll, and pause once if nothing ran.
#[inline]
fn busy_poll(cpu: &Cpu) {
    if cpu.poll() == 0 {
        std::hint::spin_loop();
    }
}

/// dfly stream: CPU 0 sends `n` messages to CPU 1. `busy`: the consumer busy-polls
/// (as the ring peers do); otherwise it uses `poll_or_park` (spins briefly, then
/// parks). Returns (seconds, sender stats).
fn dfly_stream(
    n: u64,
    batch: usize,
    pa: usize,
    pb: usize,
    busy: bool,
) -> (f64, dfly_ipi::CpuStats) {
    let xbar = Crossbar::new(2).unwrap();
    let ready = Barrier::new(2);
    let stats = std::sync::Mutex::new(None);
    let secs = pair(
        pa,
        pb,
        || {
            let cpu = xbar.attach(0).unwrap();
            ready.wait();
            let mut i = 0u64;
            if batch == 1 {
                while i < n {
                    cpu.send(c(1), dfly_recv, i as usize, 7).unwrap();
                    i += 1;
                }
            } else {
                let mut args = vec![(0usize, 7usize); batch];
                while i < n {
                    let k = batch.min((n - i) as usize);
                    for (j, a) in args.iter_mut().take(k).enumerate() {
                        a.0 = (i + j as u64) as usize;
                    }
                    cpu.send_batch(c(1), dfly_recv, &args[..k]).unwrap();
                    i += k as u64;
                }
            }
            *stats.lock().unwrap() = Some(cpu.stats());
            // Stay attached until the consumer is done (it may wait on us).
            ready.wait();
        },
        || {
            let cpu = xbar.attach(1).unwrap();
            GOT.with(|g| g.set(0));
            ready.wait();
            while GOT.with(|g| g.get()) < n {
                if busy {
                    busy_poll(&cpu);
                } else {
                    cpu.poll_or_park(Some(Duration::from_millis(10)));
                }
            }
            black_box(ACC.with(|a| a.get()));
            ready.wait();
        },
    );
    let st = stats.into_inner().unwrap().unwrap_or_default();
    (secs, st)
}

// ---- peers: stream -------------------------------------------------------------------

/// The consumer of a busy-polled ring: pops `n` messages, spinning when empty.
fn spin_consume<P: Pay>(n: u64, mut pop: impl FnMut() -> Option<P>) {
    let mut acc = 0;
    for _ in 0..n {
        spin_recv(&mut pop).consume(&mut acc);
    }
    black_box(acc);
}

fn refring_stream<P: Pay>(n: u64, batch: usize, pa: usize, pb: usize) -> f64 {
    let (mut tx, mut rx) = refring::ring::<P>(256);
    pair(
        pa,
        pb,
        move || {
            let mut i = 0;
            let mut buf = Vec::with_capacity(batch);
            while i < n {
                if batch == 1 {
                    while !tx.push(P::make(i)) {
                        std::hint::spin_loop();
                    }
                    i += 1;
                } else {
                    buf.clear();
                    let k = batch.min((n - i) as usize);
                    buf.extend((0..k as u64).map(|j| P::make(i + j)));
                    while !tx.push_batch(&buf) {
                        std::hint::spin_loop();
                    }
                    i += k as u64;
                }
            }
        },
        move || spin_consume(n, || rx.pop()),
    )
}

fn rtrb_stream<P: Pay>(n: u64, batch: usize, pa: usize, pb: usize) -> f64 {
    let (mut tx, mut rx) = rtrb::RingBuffer::<P>::new(256);
    pair(
        pa,
        pb,
        move || {
            let mut i = 0;
            while i < n {
                if batch == 1 {
                    while tx.push(P::make(i)).is_err() {
                        std::hint::spin_loop();
                    }
                    i += 1;
                } else {
                    let k = batch.min((n - i) as usize);
                    loop {
                        if let Ok(chunk) = tx.write_chunk_uninit(k) {
                            chunk.fill_from_iter((0..k as u64).map(|j| P::make(i + j)));
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    i += k as u64;
                }
            }
        },
        move || spin_consume(n, || rx.pop().ok()),
    )
}

fn arrayqueue_stream<P: Pay>(n: u64, pa: usize, pb: usize) -> f64 {
    let q = Arc::new(crossbeam_queue::ArrayQueue::<P>::new(256));
    let q2 = q.clone();
    pair(
        pa,
        pb,
        move || {
            for i in 0..n {
                let mut v = P::make(i);
                while let Err(back) = q.push(v) {
                    v = back;
                    std::hint::spin_loop();
                }
            }
        },
        move || spin_consume(n, || q2.pop()),
    )
}

/// A stream over any blocking channel given as its two ends' operations.
fn blocking_stream_with<P: Pay>(
    n: u64,
    pa: usize,
    pb: usize,
    mut send: impl FnMut(P) + Send,
    mut recv: impl FnMut() -> P + Send,
) -> f64 {
    pair(
        pa,
        pb,
        move || {
            for i in 0..n {
                send(P::make(i));
            }
        },
        move || {
            let mut acc = 0;
            for _ in 0..n {
                recv().consume(&mut acc);
            }
            black_box(acc);
        },
    )
}

fn crossbeam_stream<P: Pay>(n: u64, cap: usize, pa: usize, pb: usize) -> f64 {
    let (tx, rx) = crossbeam_channel::bounded::<P>(cap);
    blocking_stream_with(n, pa, pb, move |v| tx.send(v).unwrap(), move || rx.recv().unwrap())
}

fn std_stream<P: Pay>(n: u64, cap: usize, pa: usize, pb: usize) -> f64 {
    let (tx, rx) = std::sync::mpsc::sync_channel::<P>(cap);
    blocking_stream_with(n, pa, pb, move |v| tx.send(v).unwrap(), move || rx.recv().unwrap())
}

fn flume_stream<P: Pay>(n: u64, cap: usize, pa: usize, pb: usize) -> f64 {
    let (tx, rx) = flume::bounded::<P>(cap);
    blocking_stream_with(n, pa, pb, move |v| tx.send(v).unwrap(), move || rx.recv().unwrap())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

fn tokio_stream<P: Pay>(n: u64, cap: usize, pa: usize, pb: usize) -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<P>(cap);
    pair(
        pa,
        pb,
        move || {
            rt().block_on(async move {
                for i in 0..n {
                    tx.send(P::make(i)).await.unwrap();
                }
            })
        },
        move || {
            rt().block_on(async move {
                let mut acc = 0;
                for _ in 0..n {
                    rx.recv().await.unwrap().consume(&mut acc);
                }
                black_box(acc);
            })
        },
    )
}

fn stream_suite<P: Pay>(rec: &mut Recorder, mode: Mode, batch: usize) -> f64 {
    let case = format!("stream/{}/batch{batch}", P::NAME);
    progress(&format!("ipi: {case}"));
    let reps = mode.reps();
    let n = mode.scale(2_000_000);
    let tp = "throughput";
    let unit = "Mmsg/s";
    let nt = n / 2;
    // dfly and the peers its goals name run in interleaved rounds, so a slow
    // phase of a shared machine lands on all of them alike.
    let names = [
        "dfly".to_string(),
        "reference-ring".to_string(),
        RTRB.to_string(),
        AQ.to_string(),
        format!("{CB} bounded(256)"),
        format!("{TOKIO} mpsc(256)"),
    ];
    let mut runs: Vec<Run> = vec![
        (n, Box::new(move || dfly_stream(n, batch, 0, 1, true).0)),
        (n, Box::new(move || refring_stream::<P>(n, batch, 0, 1))),
        (n, Box::new(move || rtrb_stream::<P>(n, batch, 0, 1))),
        (n, Box::new(move || arrayqueue_stream::<P>(n, 0, 1))),
        (n, Box::new(move || crossbeam_stream::<P>(n, 256, 0, 1))),
        (nt, Box::new(move || tokio_stream::<P>(nt, 256, 0, 1))),
    ];
    let medians = interleaved(reps, &mut runs);
    let dfly = medians[0];
    for (name, m) in names.iter().zip(medians) {
        rec.record(&case, name, tp, m, unit, false);
    }
    let v = throughput(reps, n, || std_stream::<P>(n, 256, 0, 1));
    rec.record(&case, &format!("{STD}(256)"), tp, v, unit, false);
    let v = throughput(reps, n, || flume_stream::<P>(n, 256, 0, 1));
    rec.record(&case, &format!("{FLUME} bounded(256)"), tp, v, unit, false);
    if P::NAME == "u64" && batch == 1 {
        let ns = mode.scale(200_000);
        let v = throughput(reps, ns, || crossbeam_stream::<P>(ns, 1, 0, 1));
        rec.record(&case, &format!("{CB} bounded(1)"), tp, v, unit, false);
        let v = throughput(reps, ns, || crossbeam_stream::<P>(ns, 0, 0, 1));
        rec.record(&case, &format!("{CB} bounded(0)"), tp, v, unit, false);
    }
    dfly
}

// ---- ping-pong -------------------------------------------------------------------------

thread_local! {
    static PONGS: Cell<u64> = const { Cell::new(0) };
}

fn dfly_pong(_: &Cpu, _: usize, _: usize) {
    PONGS.with(|p| p.set(p.get() + 1));
}

fn dfly_ping(cpu: &Cpu, _: usize, _: usize) {
    let _ = cpu.send(c(0), dfly_pong, 0, 0);
}

/// Round-trip samples in ns: one message in flight, both ends busy-polling.
fn dfly_pingpong(rounds: usize) -> Vec<f64> {
    let xbar = Crossbar::new(2).unwrap();
    let stop = AtomicBool::new(false);
    let ready = Barrier::new(2);
    let mut samples = Vec::with_capacity(rounds);
    std::thread::scope(|s| {
        let (x, stop, ready) = (&xbar, &stop, &ready);
        s.spawn(move || {
            pin(1);
            let cpu = x.attach(1).unwrap();
            ready.wait();
            while !stop.load(Ordering::Relaxed) {
                busy_poll(&cpu);
            }
            ready.wait();
        });
        pin(0);
        let cpu = x.attach(0).unwrap();
        ready.wait();
        PONGS.with(|p| p.set(0));
        for r in 0..rounds as u64 {
            let t = Instant::now();
            cpu.send(c(1), dfly_ping, 0, 0).unwrap();
            while PONGS.with(|p| p.get()) <= r {
                busy_poll(&cpu);
            }
            samples.push(t.elapsed().as_nanos() as f64);
        }
        stop.store(true, Ordering::Relaxed);
        ready.wait();
    });
    samples
}

/// Ping-pong over two channels given as (send, recv) closures for each direction.
fn pingpong_peer(
    rounds: usize,
    ab: (impl FnMut(u64) + Send, impl FnMut() -> u64 + Send),
    ba: (impl FnMut(u64) + Send, impl FnMut() -> u64 + Send),
) -> Vec<f64> {
    let (mut send_ab, mut recv_ab) = ab;
    let (mut send_ba, mut recv_ba) = ba;
    let ready = Barrier::new(2);
    let mut samples = Vec::with_capacity(rounds);
    std::thread::scope(|s| {
        let ready = &ready;
        s.spawn(move || {
            pin(1);
            ready.wait();
            for _ in 0..rounds {
                let v = recv_ab();
                send_ba(v);
            }
        });
        pin(0);
        ready.wait();
        for r in 0..rounds as u64 {
            let t = Instant::now();
            send_ab(r);
            black_box(recv_ba());
            samples.push(t.elapsed().as_nanos() as f64);
        }
    });
    samples
}

fn spin_recv<T>(mut f: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(v) = f() {
            return v;
        }
        std::hint::spin_loop();
    }
}

fn record_rtt(rec: &mut Recorder, imp: &str, s: Vec<f64>) -> f64 {
    record_rtt_chunks(rec, imp, vec![s])
}

/// Records the RTT percentiles of `chunks` (runs of one implementation): each
/// statistic is the median over the chunks of that chunk's figure, so a chunk
/// that fell in a slow phase of the machine moves the result no more than one
/// slow chunk should (pooling the samples would set a fast phase's p50 against a
/// slow phase's p99.9).
fn record_rtt_chunks(rec: &mut Recorder, imp: &str, mut chunks: Vec<Vec<f64>>) -> f64 {
    let mut stat =
        |q: f64| -> Vec<f64> { chunks.iter_mut().map(|s| percentile(s, q)).collect::<Vec<f64>>() };
    let (mut p50s, mut p99s, mut p999s) = (stat(0.5), stat(0.99), stat(0.999));
    let mut ratios: Vec<f64> = p999s.iter().zip(&p50s).map(|(a, b)| a / b).collect();
    let p50 = median(&mut p50s);
    rec.record("pingpong", imp, "rtt_p50", p50, "ns", true);
    rec.record("pingpong", imp, "rtt_p99", median(&mut p99s), "ns", true);
    rec.record("pingpong", imp, "rtt_p999", median(&mut p999s), "ns", true);
    rec.record("pingpong", imp, "p999_over_p50", median(&mut ratios), "x", true);
    p50
}

fn refring_pingpong(rounds: usize) -> Vec<f64> {
    let (mut a_tx, mut a_rx) = refring::ring::<u64>(2);
    let (mut b_tx, mut b_rx) = refring::ring::<u64>(2);
    pingpong_peer(
        rounds,
        (move |v| while !a_tx.push(v) {}, move || spin_recv(|| a_rx.pop())),
        (move |v| while !b_tx.push(v) {}, move || spin_recv(|| b_rx.pop())),
    )
}

fn rtrb_pingpong(rounds: usize) -> Vec<f64> {
    let (mut a_tx, mut a_rx) = rtrb::RingBuffer::<u64>::new(1);
    let (mut b_tx, mut b_rx) = rtrb::RingBuffer::<u64>::new(1);
    pingpong_peer(
        rounds,
        (move |v| while a_tx.push(v).is_err() {}, move || spin_recv(|| a_rx.pop().ok())),
        (move |v| while b_tx.push(v).is_err() {}, move || spin_recv(|| b_rx.pop().ok())),
    )
}

fn crossbeam_pingpong(rounds: usize, cap: usize) -> Vec<f64> {
    let (a_tx, a_rx) = crossbeam_channel::bounded::<u64>(cap);
    let (b_tx, b_rx) = crossbeam_channel::bounded::<u64>(cap);
    pingpong_peer(
        rounds,
        (move |v| a_tx.send(v).unwrap(), move || a_rx.recv().unwrap()),
        (move |v| b_tx.send(v).unwrap(), move || b_rx.recv().unwrap()),
    )
}

fn pingpong_suite(rec: &mut Recorder, mode: Mode) {
    progress("ipi: pingpong (one message in flight)");
    let rounds = mode.scale(100_000) as usize;
    // dfly and the peers its goals name (the two busy-polled rings and
    // crossbeam-channel bounded(1)) run in interleaved chunks, so that a slow
    // phase of a shared machine (this VM's round trips move between about 100 and
    // 600 ns from one minute to the next) lands on all of them alike and the
    // ratios compare them under the same conditions.
    let chunks = mode.reps();
    let per = (rounds / chunks).max(1);
    let (mut d, mut r, mut t, mut cb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..chunks {
        d.push(dfly_pingpong(per));
        r.push(refring_pingpong(per));
        t.push(rtrb_pingpong(per));
        cb.push(crossbeam_pingpong(per, 1));
    }
    record_rtt_chunks(rec, "dfly", d);
    record_rtt_chunks(rec, "reference-ring", r);
    record_rtt_chunks(rec, RTRB, t);
    record_rtt_chunks(rec, &format!("{CB} bounded(1)"), cb);
    record_rtt(rec, &format!("{CB} bounded(0)"), crossbeam_pingpong(rounds, 0));
    {
        let (a_tx, a_rx) = std::sync::mpsc::sync_channel::<u64>(1);
        let (b_tx, b_rx) = std::sync::mpsc::sync_channel::<u64>(1);
        let s = pingpong_peer(
            rounds,
            (move |v| a_tx.send(v).unwrap(), move || a_rx.recv().unwrap()),
            (move |v| b_tx.send(v).unwrap(), move || b_rx.recv().unwrap()),
        );
        record_rtt(rec, &format!("{STD}(1)"), s);
    }
    {
        let (a_tx, a_rx) = flume::bounded::<u64>(1);
        let (b_tx, b_rx) = flume::bounded::<u64>(1);
        let s = pingpong_peer(
            rounds,
            (move |v| a_tx.send(v).unwrap(), move || a_rx.recv().unwrap()),
            (move |v| b_tx.send(v).unwrap(), move || b_rx.recv().unwrap()),
        );
        record_rtt(rec, &format!("{FLUME} bounded(1)"), s);
    }
    {
        // tokio: each side on its own pinned current-thread runtime.
        let (a_tx, mut a_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let (b_tx, mut b_rx) = tokio::sync::mpsc::channel::<u64>(1);
        let ready = Barrier::new(2);
        let rounds_t = rounds / 2;
        let mut samples = Vec::with_capacity(rounds_t);
        std::thread::scope(|s| {
            let ready = &ready;
            s.spawn(move || {
                pin(1);
                ready.wait();
                rt().block_on(async move {
                    for _ in 0..rounds_t {
                        let v = a_rx.recv().await.unwrap();
                        b_tx.send(v).await.unwrap();
                    }
                });
            });
            pin(0);
            ready.wait();
            let samples = &mut samples;
            rt().block_on(async move {
                for r in 0..rounds_t as u64 {
                    let t = Instant::now();
                    a_tx.send(r).await.unwrap();
                    black_box(b_rx.recv().await.unwrap());
                    samples.push(t.elapsed().as_nanos() as f64);
                }
            });
        });
        record_rtt(rec, &format!("{TOKIO} mpsc(1)"), samples);
    }
}

// ---- oversubscription and syscall counts -------------------------------------------

/// One oversubscribed-capable stream run of a blocking implementation.
fn blocking_stream(imp: &str, n: u64, pa: usize, pb: usize) -> f64 {
    match imp {
        "dfly" => dfly_stream(n, 1, pa, pb, false).0,
        "crossbeam" => crossbeam_stream::<u64>(n, 256, pa, pb),
        "std" => std_stream::<u64>(n, 256, pa, pb),
        "flume" => flume_stream::<u64>(n, 256, pa, pb),
        "tokio" => tokio_stream::<u64>(n, 256, pa, pb),
        _ => f64::NAN,
    }
}

fn oversub_label(imp: &str) -> String {
    match imp {
        "dfly" => "dfly".into(),
        "crossbeam" => format!("{CB} bounded(256)"),
        "std" => format!("{STD}(256)"),
        "flume" => format!("{FLUME} bounded(256)"),
        _ => format!("{TOKIO} mpsc(256)"),
    }
}

fn strace_available() -> bool {
    let ok = || {
        std::process::Command::new("strace").arg("-V").output().is_ok_and(|o| o.status.success())
    };
    if ok() {
        return true;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        progress("ipi: installing strace (apt-get) to count syscalls per message");
        let _ = std::process::Command::new("apt-get")
            .args(["install", "-y", "-qq", "strace"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
    ok()
}

/// Runs this binary under `strace -f -c` for one oversubscribed stream and returns
/// (sched_yield, futex) call counts.
fn syscalls_of(imp: &str, n: u64) -> Option<(u64, u64)> {
    let exe = std::env::current_exe().ok()?;
    let out = std::env::temp_dir().join(format!("dfly-strace-{}-{imp}.txt", std::process::id()));
    let status = std::process::Command::new("strace")
        .args(["-f", "-c", "-e", "trace=futex,sched_yield", "-o"])
        .arg(&out)
        .arg(&exe)
        .args(["--child-oversub", imp, &n.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    let count = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.split_whitespace().last() == Some(name))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // % time, seconds, usecs/call, calls, [errors,] syscall
                f.get(3).and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    };
    Some((count("sched_yield"), count("futex")))
}

fn oversub_suite(rec: &mut Recorder, mode: Mode) {
    progress("ipi: oversubscribed stream (both ends on core 0) against two cores");
    let case = "oversub/u64/batch1";
    let reps = mode.reps();
    let n = mode.scale(500_000);
    let strace = strace_available();
    if !strace {
        progress("ipi: strace not available; syscall-per-message records are skipped");
    }
    for imp in ["dfly", "crossbeam", "std", "flume", "tokio"] {
        let label = oversub_label(imp);
        // Two-core and one-core runs alternate, so the ratio compares runs made
        // in the same phase of a shared machine.
        let mut runs: Vec<Run> = vec![
            (n, Box::new(move || blocking_stream(imp, n, 0, 1))),
            (n, Box::new(move || blocking_stream(imp, n, 0, 0))),
        ];
        let m = interleaved(reps, &mut runs);
        let (two, one) = (m[0], m[1]);
        rec.record(case, &label, "throughput_2core", two, "Mmsg/s", false);
        rec.record(case, &label, "throughput_1core", one, "Mmsg/s", false);
        rec.record(case, &label, "slowdown", two / one, "x", true);
        if strace {
            let ns = mode.scale(100_000);
            if let Some((y, f)) = syscalls_of(imp, ns) {
                rec.record(
                    case,
                    &label,
                    "sched_yield_per_msg",
                    y as f64 / ns as f64,
                    "calls",
                    true,
                );
                rec.record(case, &label, "futex_per_msg", f as f64 / ns as f64, "calls", true);
            }
        }
    }
}

// ---- idle poll -----------------------------------------------------------------------

fn idle_suite(rec: &mut Recorder, mode: Mode) {
    progress("ipi: idle poll cost, N = 2..64");
    // Many short samples rather than a few long ones: a poll is 2-3 ns, so a
    // sample of 4 million polls is 10 ms, and the median of 25 interleaved
    // samples per N is steadier on a shared machine than the median of 5.
    let iters = mode.scale(4_000_000);
    let ns_list = [2usize, 4, 8, 16, 32, 64];
    let xbars: Vec<Crossbar> = ns_list.iter().map(|&n| Crossbar::new(n).unwrap()).collect();
    // Repetitions interleaved over the CPU counts (each N polls one batch, then
    // each again), so a slow phase of a shared machine lands on all of them and
    // the spread measures the code, not the moment. A CPU is attached per batch
    // on a fresh thread pinned to core 0 (one attachment per thread).
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); ns_list.len()];
    for _ in 0..mode.reps() * 5 {
        for (xbar, out) in xbars.iter().zip(samples.iter_mut()) {
            let ns = std::thread::scope(|s| {
                s.spawn(|| {
                    pin(0);
                    let cpu = xbar.attach(0).unwrap();
                    let t = Instant::now();
                    for _ in 0..iters {
                        black_box(cpu.poll());
                    }
                    t.elapsed().as_nanos() as f64 / iters as f64
                })
                .join()
                .unwrap()
            });
            out.push(ns);
        }
    }
    let mut all = Vec::new();
    for (n, v) in ns_list.iter().zip(samples.iter_mut()) {
        let ns = median(v);
        rec.record(&format!("idle_poll/N={n}"), "dfly", "ns_per_poll", ns, "ns", true);
        all.push(ns);
    }
    let max = all.iter().cloned().fold(f64::MIN, f64::max);
    let min = all.iter().cloned().fold(f64::MAX, f64::min);
    rec.record("idle_poll/spread", "dfly", "max_over_min", max / min, "x", true);
}

// ---- passive against active ---------------------------------------------------------

fn noop(_: &Cpu, _: usize, _: usize) {}

/// Producer-side cost per send (ns, timing overhead subtracted) to a target that
/// only wakes on its 1 ms tick, and wake syscalls per send.
fn send_cost(passive: bool, m: u64) -> (f64, f64) {
    let xbar = Crossbar::new(2).unwrap();
    let stop = AtomicBool::new(false);
    let mut result = (0.0, 0.0);
    std::thread::scope(|s| {
        let (x, stop) = (&xbar, &stop);
        s.spawn(move || {
            pin(1);
            let cpu = x.attach(1).unwrap();
            while !stop.load(Ordering::Relaxed) {
                cpu.park(Some(Duration::from_millis(1)));
                cpu.tick();
            }
            while cpu.poll() > 0 {}
        });
        pin(0);
        while !x.is_attached(1) {
            std::hint::spin_loop();
        }
        let cpu = x.attach(0).unwrap();
        // 25 us apart: about 40 sends per 1 ms tick, below the 1/4-full (64)
        // point where passive sends turn active.
        let gap = Duration::from_micros(25);
        let mut acc = Duration::ZERO;
        let mut base = Duration::ZERO;
        let wakes0 = dfly_core::park::syscall_counts().wakes;
        for _ in 0..m {
            let g = Instant::now();
            while g.elapsed() < gap {
                std::hint::spin_loop();
            }
            let t = Instant::now();
            base += t.elapsed();
            let t = Instant::now();
            if passive {
                cpu.send_passive(c(1), noop, 0, 0).unwrap();
            } else {
                cpu.send(c(1), noop, 0, 0).unwrap();
            }
            acc += t.elapsed();
        }
        let wakes = dfly_core::park::syscall_counts().wakes - wakes0;
        let per = (acc.as_nanos() as f64 - base.as_nanos() as f64).max(0.0) / m as f64;
        result = (per, wakes as f64 / m as f64);
        cpu.synchronize_all().unwrap();
        stop.store(true, Ordering::Relaxed);
    });
    result
}

fn passive_suite(rec: &mut Recorder, mode: Mode) {
    progress("ipi: passive against active sends to a CPU that wakes on its tick");
    let m = mode.scale(20_000);
    let mut act = Vec::new();
    let mut pas = Vec::new();
    let mut pas_sys = Vec::new();
    let mut act_sys = Vec::new();
    for _ in 0..mode.reps().min(3) {
        let (a, asys) = send_cost(false, m);
        let (p, psys) = send_cost(true, m);
        act.push(a);
        pas.push(p);
        act_sys.push(asys);
        pas_sys.push(psys);
    }
    let (a, p) = (median(&mut act), median(&mut pas));
    rec.record("passive", "dfly", "active_ns_per_send", a, "ns", true);
    rec.record("passive", "dfly", "passive_ns_per_send", p, "ns", true);
    rec.record("passive", "dfly", "passive_over_active", p / a, "x", true);
    rec.record("passive", "dfly", "active_syscalls_per_send", median(&mut act_sys), "calls", true);
    rec.record("passive", "dfly", "syscalls_per_send", median(&mut pas_sys), "calls", true);
}

// ---- wakeups under load ----------------------------------------------------------------

fn wakeup_suite(rec: &mut Recorder, mode: Mode) {
    progress("ipi: wakeup avoidance under load");
    let n = mode.scale(2_000_000);
    // A consumer that parks when it runs dry: how many sends needed a wakeup?
    let (_, st) = dfly_stream(n, 1, 0, 1, false);
    let pct = 100.0 * st.avoided_wakeups as f64 / (st.avoided_wakeups + st.wakeups).max(1) as f64;
    rec.record("wakeups", "dfly", "avoided_pct", pct, "%", false);
    rec.record(
        "wakeups",
        "dfly",
        "wake_syscalls_per_msg",
        st.wakeups as f64 / n as f64,
        "calls",
        true,
    );
    // A consumer that never parks (awake the whole time): wake syscalls must be zero.
    let (_, st) = dfly_stream(n, 1, 0, 1, true);
    rec.record(
        "wakeups",
        "dfly",
        "wake_syscalls_per_msg_awake",
        st.wakeups as f64 / n as f64,
        "calls",
        true,
    );
}

// ---- all-to-all request/reply -----------------------------------------------------------

thread_local! {
    /// Replies this CPU's thread has received (a plain per-thread count, as the
    /// crossbeam peer's local `got`; a shared array here would put both CPUs'
    /// counters on one cache line).
    static REPLIES: Cell<u64> = const { Cell::new(0) };
}

fn a2a_reply(_: &Cpu, _: usize, _: usize) {
    REPLIES.with(|r| r.set(r.get() + 1));
}

fn a2a_request(cpu: &Cpu, from: usize, _: usize) {
    let _ = cpu.send(c(from), a2a_reply, 0, 0);
}

const WINDOW: u64 = 64;

// `me` is the CPU number (pinning, attach, the peer's id), not only an index.
#[allow(clippy::needless_range_loop)]
fn dfly_a2a(k: u64) -> f64 {
    let xbar = Crossbar::new(2).unwrap();
    let done = AtomicU64::new(0);
    let go = Barrier::new(2);
    let t = Instant::now();
    std::thread::scope(|s| {
        for me in 0..2usize {
            let (x, done, go) = (&xbar, &done, &go);
            s.spawn(move || {
                pin(me);
                let cpu = x.attach(me).unwrap();
                REPLIES.with(|r| r.set(0));
                go.wait();
                let other = c(1 - me);
                let mut sent = 0u64;
                loop {
                    let got = REPLIES.with(|r| r.get());
                    if sent < k && sent - got < WINDOW {
                        cpu.send(other, a2a_request, me, 0).unwrap();
                        sent += 1;
                    }
                    cpu.poll();
                    if got == k {
                        break;
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                while done.load(Ordering::SeqCst) < 2 {
                    cpu.poll();
                }
                go.wait();
            });
        }
    });
    t.elapsed().as_secs_f64()
}

enum Msg {
    Req(usize),
    Rep,
}

fn crossbeam_a2a(k: u64) -> f64 {
    let inboxes: Vec<_> = (0..2).map(|_| crossbeam_channel::unbounded::<Msg>()).collect();
    let done = AtomicU64::new(0);
    let go = Barrier::new(2);
    let t = Instant::now();
    std::thread::scope(|s| {
        for me in 0..2usize {
            let (inboxes, done, go) = (&inboxes, &done, &go);
            s.spawn(move || {
                pin(me);
                go.wait();
                let rx = &inboxes[me].1;
                let mut sent = 0u64;
                let mut got = 0u64;
                loop {
                    if sent < k && sent - got < WINDOW {
                        inboxes[1 - me].0.send(Msg::Req(me)).unwrap();
                        sent += 1;
                    }
                    while let Ok(m) = rx.try_recv() {
                        match m {
                            Msg::Req(from) => inboxes[from].0.send(Msg::Rep).unwrap(),
                            Msg::Rep => got += 1,
                        }
                    }
                    if got == k {
                        break;
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                while done.load(Ordering::SeqCst) < 2 {
                    while let Ok(m) = rx.try_recv() {
                        if let Msg::Req(from) = m {
                            inboxes[from].0.send(Msg::Rep).unwrap();
                        }
                    }
                }
                go.wait();
            });
        }
    });
    t.elapsed().as_secs_f64()
}

fn a2a_suite(rec: &mut Recorder, mode: Mode) {
    progress("ipi: all-to-all request/reply, N = 2");
    let k = mode.scale(500_000);
    let reps = mode.reps();
    let calls = 2 * k;
    let v = throughput(reps, calls, || dfly_a2a(k));
    rec.record("all_to_all/N=2", "dfly", "throughput", v, "Mcalls/s", false);
    let v = throughput(reps, calls, || crossbeam_a2a(k));
    rec.record("all_to_all/N=2", &format!("{CB} inbox"), "throughput", v, "Mcalls/s", false);
}

// ---- main --------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child-oversub") {
        // Child mode for syscall counting under strace: one oversubscribed run.
        let imp = args.get(i + 1).map(String::as_str).unwrap_or("dfly");
        let n: u64 = args.get(i + 2).and_then(|v| v.parse().ok()).unwrap_or(100_000);
        black_box(blocking_stream(imp, n, 0, 0));
        return;
    }
    let mode = Mode::from_args();
    let mut rec = Recorder::new("ipi");
    progress(&format!(
        "ipi suite, mode {mode:?}, {} cores",
        dfly_core::affinity::available_cores()
    ));
    // DFLY_BENCH_ONLY=stream,pingpong runs a subset (for profiling); default: all.
    let only = std::env::var("DFLY_BENCH_ONLY").unwrap_or_default();
    let want = |name: &str| only.is_empty() || only.split(',').any(|w| w == name);
    if want("stream") {
        stream_suite::<u64>(&mut rec, mode, 1);
        stream_suite::<u64>(&mut rec, mode, 16);
        stream_suite::<Call>(&mut rec, mode, 1);
        stream_suite::<Call>(&mut rec, mode, 16);
    }
    if want("pingpong") {
        pingpong_suite(&mut rec, mode);
    }
    if want("oversub") {
        oversub_suite(&mut rec, mode);
    }
    if want("idle") {
        idle_suite(&mut rec, mode);
    }
    if want("passive") {
        passive_suite(&mut rec, mode);
    }
    if want("wakeups") {
        wakeup_suite(&mut rec, mode);
    }
    if want("a2a") {
        a2a_suite(&mut rec, mode);
    }
    if only.split(',').any(|w| w == "dflystream") {
        // Profiling aid, run only when named: dfly's u64 stream alone, repeated.
        // It records under the stream case's name, so in a whole run it would
        // replace the figure measured beside the peers.
        let n = mode.scale(2_000_000);
        let v = throughput(mode.reps() * 4, n, || dfly_stream(n, 1, 0, 1, true).0);
        rec.record("stream/u64/batch1", "dfly", "throughput", v, "Mmsg/s", false);
    }
    progress(&format!("ipi suite done: {} records", rec.count()));
}
