//! Tests for dfly-ipi: ordering and exactly-once per pair, index invariants,
//! interleaving properties with the wakeup bound, floods with nested sends and tiny
//! FIFOs, passive sends, parking stress, cpusync, critical-section deferral and bad
//! input; loom models of the ring + mask + park protocol under `--cfg loom`.
//!
//! Every multi-threaded test is bounded: loops have iteration caps and a deadline
//! after which the test fails with a message instead of hanging.

#[cfg(not(loom))]
mod normal {
    // The no-yield rule (clippy.toml) is about dfly's own wait paths; test
    // harness threads may yield while waiting for each other to attach. Loops over
    // CPU numbers use the number for more than indexing.
    #![allow(clippy::disallowed_methods, clippy::needless_range_loop)]
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier, Mutex};
    use std::time::{Duration, Instant};

    use dfly_core::crit::crit_enter;
    use dfly_core::{CpuId, CpuMask};
    use proptest::prelude::*;

    use crate::*;

    const DEADLINE: Duration = Duration::from_secs(60);

    fn c(i: usize) -> CpuId {
        CpuId::new(i).unwrap()
    }

    /// Runs `body` on every CPU of a fresh crossbar; afterwards every CPU keeps
    /// polling until `outstanding` drops to zero, then all detach together.
    fn run_machine(
        ncpus: usize,
        cap: usize,
        outstanding: &AtomicUsize,
        body: impl Fn(&Cpu) + Sync,
    ) -> Crossbar {
        let xbar = Crossbar::with_config(ncpus, Config { fifo_capacity: cap, ..Config::default() })
            .unwrap();
        let start = Barrier::new(ncpus);
        let done = AtomicUsize::new(0);
        let quiet = AtomicUsize::new(0);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for i in 0..ncpus {
                let (xbar, start, done, quiet, body) = (&xbar, &start, &done, &quiet, &body);
                s.spawn(move || {
                    let cpu = xbar.attach(i).unwrap();
                    start.wait();
                    body(&cpu);
                    done.fetch_add(1, Ordering::SeqCst);
                    while done.load(Ordering::SeqCst) < ncpus
                        || outstanding.load(Ordering::SeqCst) > 0
                    {
                        cpu.poll_or_park(Some(Duration::from_millis(2)));
                        if t0.elapsed() > Duration::from_secs(3)
                            && std::env::var_os("DFLY_DEBUG").is_some()
                        {
                            eprintln!(
                                "cpu{i} overflowed={} crit={} depth={} poll={} outstanding={}\n{}",
                                cpu.overflowed(),
                                dfly_core::crit::crit_count(),
                                cpu.ipi_depth(),
                                cpu.poll(),
                                outstanding.load(Ordering::SeqCst),
                                xbar.debug_state()
                            );
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        assert!(
                            t0.elapsed() < DEADLINE,
                            "cpu{i}: no progress before the deadline (hang)"
                        );
                    }
                    // Stay attached until everyone is done so late waits still see us.
                    quiet.fetch_add(1, Ordering::SeqCst);
                    while quiet.load(Ordering::SeqCst) < ncpus {
                        cpu.poll_or_park(Some(Duration::from_millis(1)));
                        assert!(t0.elapsed() < DEADLINE, "cpu{i}: stuck detaching");
                    }
                });
            }
        });
        xbar
    }

    // ---- per pair: exactly once, in order; index invariants -------------------

    static NEXT: AtomicU64 = AtomicU64::new(0);
    static ORDER_OK: AtomicBool = AtomicBool::new(true);
    fn in_order(_: &Cpu, seq: usize, _: usize) {
        if NEXT.fetch_add(1, Ordering::SeqCst) != seq as u64 {
            ORDER_OK.store(false, Ordering::SeqCst);
        }
    }

    #[test]
    fn pair_runs_every_function_once_in_send_order() {
        const N: usize = 200_000;
        let xbar =
            Crossbar::with_config(2, Config { fifo_capacity: 64, ..Config::default() }).unwrap();
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let (x, stop) = (&xbar, &stop);
            // Monitor: xindex <= rindex <= wnext at all times, xindex never decreases.
            s.spawn(move || {
                let mut last_x = 0u32;
                let mut samples = 0;
                while !stop.load(Ordering::SeqCst) && samples < 10_000_000 {
                    let (w, r, xi) = x.ring_indices(c(1), c(0));
                    assert!((xi.wrapping_sub(r) as i32) <= 0, "xindex {xi} passed rindex {r}");
                    assert!((r.wrapping_sub(w) as i32) <= 0, "rindex {r} passed wnext {w}");
                    assert!((xi.wrapping_sub(last_x) as i32) >= 0, "xindex decreased");
                    last_x = xi;
                    samples += 1;
                }
            });
            s.spawn(move || {
                let cpu = x.attach(1).unwrap();
                while NEXT.load(Ordering::SeqCst) < N as u64 {
                    cpu.poll_or_park(Some(Duration::from_millis(5)));
                    assert!(t0.elapsed() < DEADLINE, "receiver stuck");
                }
            });
            while !x.is_attached(1) {
                std::thread::yield_now();
            }
            let cpu = x.attach(0).unwrap();
            let mut last = None;
            for i in 0..N {
                let seq = if i % 7 == 3 {
                    cpu.send_passive(c(1), in_order, i, 0).unwrap()
                } else {
                    cpu.send(c(1), in_order, i, 0).unwrap()
                };
                if i % 10_007 == 0 {
                    cpu.wait(seq).unwrap();
                    let (w, r, xi) = x.ring_indices(c(1), c(0));
                    assert!((r.wrapping_sub(w) as i32) <= 0 && (xi.wrapping_sub(r) as i32) <= 0);
                    assert!(
                        (xi.wrapping_sub(i as u32 + 1) as i32) >= 0,
                        "wait returned before completion"
                    );
                }
                last = Some(seq);
            }
            cpu.wait(last.unwrap()).unwrap();
            stop.store(true, Ordering::SeqCst);
        });
        assert!(ORDER_OK.load(Ordering::SeqCst), "a function ran out of order or twice");
        assert_eq!(NEXT.load(Ordering::SeqCst), N as u64);
        let s0 = xbar.stats(0).unwrap();
        assert_eq!(s0.sent, N as u64);
        assert_eq!(xbar.stats(1).unwrap().received, N as u64);
        let (w, r, xi) = xbar.ring_indices(c(1), c(0));
        assert_eq!((w, r, xi), (N as u32, N as u32, N as u32));
    }

    static BATCH_NEXT: AtomicU64 = AtomicU64::new(0);
    static BATCH_OK: AtomicBool = AtomicBool::new(true);
    fn batch_order(_: &Cpu, seq: usize, _: usize) {
        if BATCH_NEXT.fetch_add(1, Ordering::SeqCst) != seq as u64 {
            BATCH_OK.store(false, Ordering::SeqCst);
        }
    }

    #[test]
    fn batches_run_once_in_order_across_full_fifos() {
        const BATCHES: usize = 2000;
        const LEN: usize = 23; // not a divisor of the capacity, so batches straddle waits
        let xbar =
            Crossbar::with_config(2, Config { fifo_capacity: 32, ..Config::default() }).unwrap();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let x = &xbar;
            s.spawn(move || {
                let cpu = x.attach(1).unwrap();
                while BATCH_NEXT.load(Ordering::SeqCst) < (BATCHES * LEN) as u64 {
                    cpu.poll_or_park(Some(Duration::from_millis(5)));
                    assert!(t0.elapsed() < DEADLINE, "receiver stuck");
                }
            });
            while !x.is_attached(1) {
                std::thread::yield_now();
            }
            let cpu = x.attach(0).unwrap();
            let mut last = None;
            for b in 0..BATCHES {
                let args: Vec<(usize, usize)> = (0..LEN).map(|i| (b * LEN + i, 0)).collect();
                last = Some(cpu.send_batch(c(1), batch_order, &args).unwrap());
            }
            cpu.wait(last.unwrap()).unwrap();
            assert!(cpu.send_batch(c(1), batch_order, &[]).unwrap().is_direct());
        });
        assert!(BATCH_OK.load(Ordering::SeqCst), "batch entries ran out of order or twice");
        assert_eq!(xbar.stats(0).unwrap().sent, (BATCHES * LEN) as u64);
    }

    static WAIT_ORDER: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    static FLOODED: AtomicBool = AtomicBool::new(false);

    fn wait_order_tag(_: &Cpu, a1: usize, _: usize) {
        WAIT_ORDER.lock().unwrap().push(a1);
    }

    /// Runs on CPU 0 while its batch waits for space in the FIFO to CPU 1: sends
    /// ten more there, past the callbacks' reserved part, so some are queued
    /// locally.
    fn flood_while_waiting(cpu: &Cpu, _: usize, _: usize) {
        for t in 100..110 {
            cpu.send(c(1), wait_order_tag, t, 0).unwrap();
        }
        assert!(cpu.overflowed() > 0, "the flood did not reach the overflow queue");
        FLOODED.store(true, Ordering::SeqCst);
    }

    /// A sender that waits for space (a batch, or single sends) runs this CPU's
    /// incoming IPIs meanwhile; sends those callbacks make to the same target
    /// (some queued locally because the FIFO is full) were sent before the rest
    /// and arrive before it.
    #[test]
    fn waiting_for_space_keeps_order_with_sends_made_during_the_wait() {
        for batch in [true, false] {
            WAIT_ORDER.lock().unwrap().clear();
            FLOODED.store(false, Ordering::SeqCst);
            send_twenty_while_flooded(batch);
        }
    }

    fn send_twenty_while_flooded(batch: bool) {
        let xbar =
            Crossbar::with_config(2, Config { fifo_capacity: 16, ..Config::default() }).unwrap();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let x = &xbar;
            s.spawn(move || {
                let cpu = x.attach(1).unwrap();
                // Wait (without polling) until CPU 0's batch fills the FIFO to its
                // limit (capacity / 2 + 1) and waits, then give CPU 0 work that
                // sends to us, and drain only once it has run.
                while x.ring_indices(c(1), c(0)).0.wrapping_sub(x.ring_indices(c(1), c(0)).1) < 9 {
                    assert!(t0.elapsed() < DEADLINE, "the batch never filled the FIFO");
                    std::thread::yield_now();
                }
                cpu.send(c(0), flood_while_waiting, 0, 0).unwrap();
                while !FLOODED.load(Ordering::SeqCst) {
                    assert!(t0.elapsed() < DEADLINE, "CPU 0 never ran the flood");
                    std::thread::yield_now();
                }
                while WAIT_ORDER.lock().unwrap().len() < 30 {
                    cpu.poll_or_park(Some(Duration::from_millis(5)));
                    assert!(t0.elapsed() < DEADLINE, "receiver stuck");
                }
            });
            while !x.is_attached(1) {
                assert!(t0.elapsed() < DEADLINE, "CPU 1 never attached");
                std::thread::yield_now();
            }
            let cpu = x.attach(0).unwrap();
            let args: Vec<(usize, usize)> = (0..20).map(|i| (i, 0)).collect();
            let last = if batch {
                cpu.send_batch(c(1), wait_order_tag, &args).unwrap()
            } else {
                let mut last = None;
                for &(a1, a2) in &args {
                    last = Some(cpu.send(c(1), wait_order_tag, a1, a2).unwrap());
                }
                last.unwrap()
            };
            cpu.wait(last).unwrap();
        });
        let want: Vec<usize> = (0..9).chain(100..110).chain(9..20).collect();
        assert_eq!(*WAIT_ORDER.lock().unwrap(), want, "batch: {batch}");
    }

    // ---- proptest of interleavings, wakeup bound -------------------------------

    #[derive(Debug, Clone)]
    enum SendOp {
        Active(u8),
        Passive(u8),
        Pause(u16),
        WaitLast,
    }

    #[derive(Debug, Clone)]
    enum RecvOp {
        Poll,
        PollOrPark(u8),
        Pause(u16),
    }

    fn send_op() -> impl Strategy<Value = SendOp> {
        prop_oneof![
            4 => (1u8..40).prop_map(SendOp::Active),
            2 => (1u8..40).prop_map(SendOp::Passive),
            1 => (0u16..300).prop_map(SendOp::Pause),
            1 => Just(SendOp::WaitLast),
        ]
    }

    fn recv_op() -> impl Strategy<Value = RecvOp> {
        prop_oneof![
            2 => Just(RecvOp::Poll),
            2 => (0u8..3).prop_map(RecvOp::PollOrPark),
            1 => (0u16..300).prop_map(RecvOp::Pause),
        ]
    }

    struct Log {
        got: Mutex<Vec<usize>>,
    }
    fn log_it(_: &Cpu, a1: usize, a2: usize) {
        // SAFETY: a2 is the address of a `Log` that outlives every send in the test.
        let log = unsafe { &*(a2 as *const Log) };
        log.got.lock().unwrap().push(a1);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Whatever the interleaving of sends, passive sends, waits, polls, parks and
        /// pauses: every message runs exactly once, in order; wake syscalls never
        /// exceed the target's parks (at most one outstanding wakeup per park).
        #[test]
        fn interleavings_deliver_once_in_order(
            sends in proptest::collection::vec(send_op(), 1..40),
            recvs in proptest::collection::vec(recv_op(), 1..40),
            cap_shift in 4u32..7,
        ) {
            let xbar = Crossbar::with_config(2, Config { fifo_capacity: 1 << cap_shift, ..Config::default() }).unwrap();
            let log = Log { got: Mutex::new(Vec::new()) };
            let la = &log as *const Log as usize;
            let sent = AtomicUsize::new(usize::MAX);
            let t0 = Instant::now();
            std::thread::scope(|s| {
                let (x, log, sent) = (&xbar, &log, &sent);
                s.spawn(move || {
                    let cpu = x.attach(1).unwrap();
                    let mut i = 0;
                    loop {
                        let total = sent.load(Ordering::SeqCst);
                        if total != usize::MAX && log.got.lock().unwrap().len() == total { break; }
                        match &recvs[i % recvs.len()] {
                            RecvOp::Poll => { cpu.poll(); }
                            RecvOp::PollOrPark(ms) => { cpu.poll_or_park(Some(Duration::from_millis(u64::from(*ms) + 1))); }
                            RecvOp::Pause(us) => std::thread::sleep(Duration::from_micros(u64::from(*us))),
                        }
                        // The scripted op decides the timing; a poll every round makes
                        // sure a script of only pauses still drains (otherwise the
                        // sender rightly waits for space forever).
                        cpu.poll();
                        i += 1;
                        assert!(t0.elapsed() < DEADLINE, "receiver stuck");
                    }
                });
                while !x.is_attached(1) { std::thread::yield_now(); }
                let cpu = x.attach(0).unwrap();
                let mut n = 0usize;
                let mut last = None;
                for op in &sends {
                    match op {
                        SendOp::Active(k) => for _ in 0..*k { last = Some(cpu.send(c(1), log_it, n, la).unwrap()); n += 1; },
                        SendOp::Passive(k) => for _ in 0..*k { last = Some(cpu.send_passive(c(1), log_it, n, la).unwrap()); n += 1; },
                        SendOp::Pause(us) => std::thread::sleep(Duration::from_micros(u64::from(*us))),
                        SendOp::WaitLast => if let Some(s) = last { cpu.wait(s).unwrap(); },
                    }
                }
                // A final active no-op makes sure passive-only tails get picked up.
                if let Some(s) = last { cpu.send(c(1), |_, _, _| {}, 0, 0).unwrap(); let _ = s; }
                sent.store(n, Ordering::SeqCst);
                // Stay attached until the receiver is done.
                while log.got.lock().unwrap().len() < n {
                    cpu.poll_or_park(Some(Duration::from_millis(1)));
                    assert!(t0.elapsed() < DEADLINE, "sender stuck");
                }
            });
            let got = log.got.into_inner().unwrap();
            let want: Vec<usize> = (0..got.len()).collect();
            prop_assert_eq!(got, want);
            let s0 = xbar.stats(0).unwrap();
            let s1 = xbar.stats(1).unwrap();
            prop_assert!(s0.wakeups <= s1.parks, "wakeups {} > parks {}", s0.wakeups, s1.parks);
        }
    }

    // ---- floods with nested sends, tiny FIFOs ----------------------------------

    struct Flood {
        outstanding: AtomicUsize,
        ran: AtomicU64,
        max_depth: AtomicU32,
        ncpus: usize,
    }

    fn flood_cb(cpu: &Cpu, ttl: usize, fa: usize) {
        // SAFETY: `fa` is the address of a `Flood` that outlives the machine.
        let f = unsafe { &*(fa as *const Flood) };
        f.ran.fetch_add(1, Ordering::SeqCst);
        f.max_depth.fetch_max(cpu.ipi_depth(), Ordering::SeqCst);
        if ttl > 0 {
            let t = (cpu.id().index() + ttl) % f.ncpus;
            f.outstanding.fetch_add(1, Ordering::SeqCst);
            cpu.send(c(t), flood_cb, ttl - 1, fa).unwrap();
        }
        f.outstanding.fetch_sub(1, Ordering::SeqCst);
    }

    #[test]
    fn all_to_all_flood_with_nested_sends_completes() {
        for &(ncpus, cap) in &[(2, 16), (4, 16), (3, 64)] {
            let f = Flood {
                outstanding: AtomicUsize::new(0),
                ran: AtomicU64::new(0),
                max_depth: AtomicU32::new(0),
                ncpus,
            };
            let fa = &f as *const Flood as usize;
            const PER_CPU: usize = 3000;
            const TTL: usize = 3;
            let xbar = run_machine(ncpus, cap, &f.outstanding, |cpu| {
                for i in 0..PER_CPU {
                    let t = (cpu.id().index() + 1 + i) % ncpus;
                    f.outstanding.fetch_add(1, Ordering::SeqCst);
                    cpu.send(c(t), flood_cb, TTL, fa).unwrap();
                }
            });
            assert_eq!(f.ran.load(Ordering::SeqCst), (ncpus * PER_CPU * (TTL + 1)) as u64);
            assert!(f.max_depth.load(Ordering::SeqCst) <= MAX_NEST + 1);
            let total = xbar.total_stats();
            assert!(total.fifo_full > 0, "the flood should have hit full FIFOs (cap {cap})");
            assert_eq!(total.received + total.self_calls, f.ran.load(Ordering::SeqCst));
        }
    }

    // ---- passive sends ------------------------------------------------------------

    static PASSIVE_RAN: AtomicUsize = AtomicUsize::new(0);
    fn passive_cb(_: &Cpu, _: usize, _: usize) {
        PASSIVE_RAN.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn passive_send_runs_at_next_tick_without_wakeup() {
        let xbar = Crossbar::new(2).unwrap();
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let x = &xbar;
            s.spawn(move || {
                let cpu = x.attach(1).unwrap();
                // A CPU that only wakes on its 20 ms tick.
                while PASSIVE_RAN.load(Ordering::SeqCst) < 1 {
                    cpu.park(Some(Duration::from_millis(20)));
                    cpu.tick();
                    assert!(t0.elapsed() < DEADLINE);
                }
            });
            let cpu = x.attach(0).unwrap();
            std::thread::sleep(Duration::from_millis(30)); // let cpu1 park
            let seq = cpu.send_passive(c(1), passive_cb, 0, 0).unwrap();
            cpu.wait(seq).unwrap();
            let st = cpu.stats();
            assert_eq!(st.wakeups, 0, "a passive send must not wake its target");
            assert_eq!(st.passive, 1);
        });
    }

    #[test]
    fn passive_sends_turn_active_at_a_quarter_full() {
        let xbar =
            Crossbar::with_config(2, Config { fifo_capacity: 64, ..Config::default() }).unwrap();
        let go = AtomicBool::new(false);
        std::thread::scope(|s| {
            let (x, go) = (&xbar, &go);
            s.spawn(move || {
                let cpu = x.attach(1).unwrap();
                while !go.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                for _ in 0..200 {
                    cpu.poll_or_park(Some(Duration::from_millis(1)));
                }
            });
            while !x.is_attached(1) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let cpu = x.attach(0).unwrap();
            for _ in 0..20 {
                cpu.send_passive(c(1), |_, _, _| {}, 0, 0).unwrap();
            }
            let st = cpu.stats();
            assert_eq!(st.passive + st.passive_promoted, 20);
            assert!(st.passive_promoted >= 20 - 16, "sends past 1/4 full (16 of 64) become active");
            go.store(true, Ordering::SeqCst);
            cpu.synchronize_all().unwrap();
        });
    }

    // ---- parking stress: no lost wakeups ------------------------------------------

    static STRESS_RAN: AtomicUsize = AtomicUsize::new(0);
    fn stress_cb(_: &Cpu, _: usize, _: usize) {
        STRESS_RAN.fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn parked_targets_are_always_woken() {
        // The receiver parks with a 10 s timeout; every message must be seen long
        // before that, so a lost wakeup shows up as a latency failure, not a hang.
        const N: usize = 3000;
        let xbar = Crossbar::new(2).unwrap();
        std::thread::scope(|s| {
            let x = &xbar;
            s.spawn(move || {
                let cpu = x.attach(1).unwrap();
                let t0 = Instant::now();
                while STRESS_RAN.load(Ordering::SeqCst) < N {
                    cpu.poll_or_park(Some(Duration::from_secs(10)));
                    assert!(t0.elapsed() < DEADLINE);
                }
            });
            while !x.is_attached(1) {
                std::thread::yield_now();
            }
            let cpu = x.attach(0).unwrap();
            let mut worst = Duration::ZERO;
            for i in 0..N {
                if i % 3 == 0 {
                    std::thread::sleep(Duration::from_micros((i % 50) as u64 * 10));
                }
                let t = Instant::now();
                let seq = cpu.send(c(1), stress_cb, 0, 0).unwrap();
                cpu.wait(seq).unwrap();
                worst = worst.max(t.elapsed());
            }
            assert!(worst < Duration::from_secs(5), "a message waited {worst:?}: lost wakeup");
            let (s0, s1) = (cpu.stats(), x.stats(1).unwrap());
            assert!(
                s0.wakeups <= s1.parks,
                "more wakeups ({}) than parks ({})",
                s0.wakeups,
                s1.parks
            );
        });
    }

    /// Both ends pinned to one core: the sender parks on a full FIFO without spinning
    /// and the receiver parks without spinning (every other CPU last ran on its
    /// core). Every message must still arrive, in order, with a bounded wait each:
    /// a lost wakeup on either side shows up as a latency failure or a deadline.
    #[test]
    fn a_stream_on_one_shared_core_parks_both_ends_and_loses_nothing() {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        static OUT_OF_ORDER: AtomicU64 = AtomicU64::new(0);
        fn in_order(_: &Cpu, a1: usize, _: usize) {
            if NEXT.fetch_add(1, Ordering::SeqCst) != a1 as u64 {
                OUT_OF_ORDER.fetch_add(1, Ordering::SeqCst);
            }
        }
        const N: u64 = 200_000;
        let pinned = dfly_core::affinity::pin_current_thread(0).is_ok();
        let xbar = Crossbar::new(2).unwrap();
        std::thread::scope(|s| {
            let x = &xbar;
            s.spawn(move || {
                if pinned {
                    dfly_core::affinity::pin_current_thread(0).unwrap();
                }
                let cpu = x.attach(1).unwrap();
                let t0 = Instant::now();
                while NEXT.load(Ordering::SeqCst) <= N {
                    cpu.poll_or_park(Some(Duration::from_secs(10)));
                    assert!(
                        t0.elapsed() < DEADLINE,
                        "receiver stuck at {}",
                        NEXT.load(Ordering::SeqCst)
                    );
                }
            });
            while !x.is_attached(1) {
                std::thread::yield_now();
            }
            let cpu = x.attach(0).unwrap();
            let t0 = Instant::now();
            for i in 0..N {
                cpu.send(c(1), in_order, i as usize, 0).unwrap();
            }
            let seq = cpu.send(c(1), in_order, N as usize, 0).unwrap();
            cpu.wait(seq).unwrap();
            assert!(t0.elapsed() < DEADLINE);
            let st = cpu.stats();
            // The FIFO filled many times; each time the sender parked or made room.
            assert!(!pinned || st.fifo_full > 0, "a one-core stream never filled the FIFO");
        });
        assert_eq!(NEXT.load(Ordering::SeqCst), N + 1);
        assert_eq!(OUT_OF_ORDER.load(Ordering::SeqCst), 0);
    }

    // ---- cpusync --------------------------------------------------------------------

    struct SyncCounts {
        per_cpu: [AtomicUsize; 4],
    }
    fn count_sync(cpu: &Cpu, arg: usize) {
        // SAFETY: arg is the address of a SyncCounts that outlives the machine.
        let s = unsafe { &*(arg as *const SyncCounts) };
        s.per_cpu[cpu.id().index()].fetch_add(1, Ordering::SeqCst);
    }

    #[test]
    fn cpusync_runs_once_per_cpu_and_concurrent_masters_complete() {
        const NCPUS: usize = 4;
        const ROUNDS: usize = 150;
        let counts = SyncCounts { per_cpu: Default::default() };
        let arg = &counts as *const SyncCounts as usize;
        let outstanding = AtomicUsize::new(0);
        run_machine(NCPUS, 256, &outstanding, |cpu| {
            for r in 0..ROUNDS {
                let all = CpuMask::all(NCPUS);
                match r % 3 {
                    0 => cpu.cpusync_simple(all, count_sync, arg).unwrap(),
                    1 => cpu.cpusync_quick(all, count_sync, arg).unwrap(),
                    _ => {
                        // A mask without the master: the master does not run func.
                        let mut m = all;
                        m.remove(cpu.id());
                        cpu.cpusync_interlock(m, count_sync, arg).unwrap().deinterlock().unwrap();
                    }
                }
            }
        });
        let masters_without_self = (ROUNDS / 3) * (NCPUS - 1); // each CPU skips itself in r%3==2 rounds
        for (i, n) in counts.per_cpu.iter().enumerate() {
            let want = NCPUS * ROUNDS - (ROUNDS / 3);
            assert_eq!(n.load(Ordering::SeqCst), want, "cpu{i}: func must run once per cpusync whose mask holds it ({masters_without_self})");
        }
    }

    static HELD_LOOPS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
    #[test]
    fn interlock_holds_targets_until_deinterlock() {
        let xbar = Crossbar::new(3).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let (x, stop) = (&xbar, &stop);
            for i in 1..3 {
                s.spawn(move || {
                    let cpu = x.attach(i).unwrap();
                    while !stop.load(Ordering::SeqCst) {
                        HELD_LOOPS[i].fetch_add(1, Ordering::SeqCst);
                        cpu.poll_or_park(Some(Duration::from_millis(1)));
                    }
                });
            }
            while !(x.is_attached(1) && x.is_attached(2)) {
                std::thread::yield_now();
            }
            let cpu = x.attach(0).unwrap();
            let guard = cpu.cpusync_interlock(CpuMask::all(3), |_, _| {}, 0).unwrap();
            let before: Vec<u64> = (1..3).map(|i| HELD_LOOPS[i].load(Ordering::SeqCst)).collect();
            std::thread::sleep(Duration::from_millis(30));
            let after: Vec<u64> = (1..3).map(|i| HELD_LOOPS[i].load(Ordering::SeqCst)).collect();
            assert_eq!(before, after, "held targets ran their own loop during the interlock");
            guard.deinterlock().unwrap();
            let t0 = Instant::now();
            while (1..3).any(|i| HELD_LOOPS[i].load(Ordering::SeqCst) == after[i - 1]) {
                cpu.poll();
                assert!(t0.elapsed() < DEADLINE, "targets not released");
            }
            stop.store(true, Ordering::SeqCst);
        });
    }

    // ---- critical sections defer polling --------------------------------------------

    static CRIT_RAN: AtomicUsize = AtomicUsize::new(0);
    #[test]
    fn poll_inside_a_critical_section_defers_to_its_end() {
        let xbar = Crossbar::new(2).unwrap();
        std::thread::scope(|s| {
            let x = &xbar;
            let sent = Arc::new(AtomicBool::new(false));
            let sent2 = sent.clone();
            s.spawn(move || {
                let cpu = x.attach(1).unwrap();
                while !sent2.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                {
                    let _cs = crit_enter();
                    assert_eq!(cpu.poll(), 0, "inside a critical section nothing runs");
                    assert_eq!(CRIT_RAN.load(Ordering::SeqCst), 0);
                }
                assert_eq!(
                    CRIT_RAN.load(Ordering::SeqCst),
                    1,
                    "the deferred poll ran at crit exit"
                );
            });
            while !x.is_attached(1) {
                std::thread::yield_now();
            }
            let cpu = x.attach(0).unwrap();
            cpu.send_passive(
                c(1),
                |_, _, _| {
                    CRIT_RAN.fetch_add(1, Ordering::SeqCst);
                },
                0,
                0,
            )
            .unwrap();
            sent.store(true, Ordering::SeqCst);
            while CRIT_RAN.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
        });
    }

    // ---- bad input ----------------------------------------------------------------

    #[test]
    fn bad_input_gives_clear_errors() {
        assert_eq!(Crossbar::new(0).unwrap_err(), BuildError::BadCpuCount(0));
        assert_eq!(Crossbar::new(100_000).unwrap_err(), BuildError::BadCpuCount(100_000));
        let bad = Config { fifo_capacity: 100, ..Config::default() };
        assert_eq!(Crossbar::with_config(2, bad).unwrap_err(), BuildError::BadCapacity(100));
        let xbar =
            Crossbar::with_config(2, Config { fifo_capacity: 16, ..Config::default() }).unwrap();
        assert!(matches!(xbar.attach(2), Err(AttachError::OutOfRange(_))));
        let cpu = xbar.attach(0).unwrap();
        assert!(matches!(xbar.attach(0), Err(AttachError::AlreadyAttached(_))));
        assert!(matches!(xbar.attach(1), Err(AttachError::ThreadIsACpu(_))));
        let other = Crossbar::new(1).unwrap();
        assert!(matches!(other.attach(0), Err(AttachError::ThreadIsACpu(_))));
        let far = CpuId::new(200).unwrap();
        assert!(matches!(cpu.send(far, |_, _, _| {}, 0, 0), Err(SendError::OutOfRange(_))));
        assert!(xbar.send_foreign(9, |_, _, _| {}, 0, 0).is_err());
        // A target nobody attached as: a wait fails instead of hanging, and so does a
        // send once the FIFO is full.
        let seq = cpu.send(c(1), |_, _, _| {}, 0, 0).unwrap();
        assert_eq!(cpu.wait(seq), Err(WaitError::NotAttached(c(1))));
        let mut res = Ok(seq);
        for _ in 0..16 {
            res = cpu.send(c(1), |_, _, _| {}, 0, 0);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(SendError::Busy(c(1))));
        assert_eq!(cpu.synchronize_all(), Err(WaitError::NotAttached(c(1))));
        assert!(cpu.cpusync_simple(CpuMask::all(2), |_, _| {}, 0).is_err());
        // Errors print something readable.
        assert!(SendError::Busy(c(1)).to_string().contains("cpu1"));
        // After shutdown: clear errors.
        xbar.shutdown();
        xbar.shutdown();
        assert_eq!(cpu.send(c(1), |_, _, _| {}, 0, 0), Err(SendError::Shutdown));
        assert_eq!(xbar.send_foreign(1, |_, _, _| {}, 0, 0), Err(SendError::Shutdown));
        drop(cpu);
        assert_eq!(xbar.attach(1).unwrap_err(), AttachError::Shutdown);
    }

    #[test]
    fn detach_and_reattach_keeps_queued_entries() {
        let xbar = Crossbar::new(2).unwrap();
        let x2 = xbar.clone();
        std::thread::spawn(move || {
            let cpu = x2.attach(0).unwrap();
            for i in 0..10 {
                cpu.send(c(1), stress_cb_local, i, 0).unwrap();
            }
        })
        .join()
        .unwrap();
        let cpu1 = xbar.attach(1).unwrap();
        assert_eq!(cpu1.poll(), 10);
        drop(cpu1);
        let cpu1 = xbar.attach(1).unwrap();
        assert_eq!(cpu1.poll(), 0);
    }
    fn stress_cb_local(_: &Cpu, _: usize, _: usize) {}

    #[test]
    fn foreign_threads_can_send() {
        static FOREIGN_RAN: AtomicUsize = AtomicUsize::new(0);
        let xbar = Crossbar::new(1).unwrap();
        let x = xbar.clone();
        let h = std::thread::spawn(move || {
            let cpu = x.attach(0).unwrap();
            let t0 = Instant::now();
            while FOREIGN_RAN.load(Ordering::SeqCst) < 100 {
                cpu.poll_or_park(Some(Duration::from_millis(50)));
                assert!(t0.elapsed() < DEADLINE);
            }
        });
        let mut sent = 0;
        let t0 = Instant::now();
        while sent < 100 {
            match xbar.send_foreign(
                0,
                |_, _, _| {
                    FOREIGN_RAN.fetch_add(1, Ordering::SeqCst);
                },
                0,
                0,
            ) {
                Ok(()) => sent += 1,
                Err(SendError::Busy(_)) => std::thread::sleep(Duration::from_micros(100)),
                Err(e) => panic!("{e}"),
            }
            assert!(t0.elapsed() < DEADLINE);
        }
        h.join().unwrap();
        assert_eq!(xbar.foreign_stats().sent, 100);
    }
}

#[cfg(loom)]
pub(crate) mod loom_models {
    use dfly_core::sync::atomic::{AtomicUsize, Ordering};
    use dfly_core::sync::{thread, Arc};
    use dfly_core::CpuId;

    use crate::{Config, Cpu, Crossbar};

    fn cfg() -> Config {
        Config { fifo_capacity: 16, foreign_capacity: 1 }
    }

    fn bump(_: &Cpu, a1: usize, _: usize) {
        // SAFETY: a1 is the address of an AtomicUsize kept alive by the model's Arc.
        let n = unsafe { &*(a1 as *const AtomicUsize) };
        n.fetch_add(1, Ordering::SeqCst);
    }

    /// Runs `body` as CPU 0 (given the crossbar, the CPU and the address of a
    /// counter for `bump`-style callbacks) while CPU 1, on a loom thread, polls and
    /// parks whenever it finds nothing until the counter reaches `want`; then
    /// checks that it did. Returns the crossbar and CPU 0 for further checks.
    fn to_parking_receiver(
        want: usize,
        body: impl FnOnce(&Crossbar, &Cpu, usize),
    ) -> (Crossbar, crate::CpuHandle) {
        let x = Crossbar::with_config(2, cfg()).unwrap();
        let n = Arc::new(AtomicUsize::new(0));
        let (x1, n1) = (x.clone(), n.clone());
        let rx = thread::spawn(move || {
            let cpu = x1.attach(1).unwrap();
            while n1.load(Ordering::SeqCst) < want {
                cpu.poll();
                if n1.load(Ordering::SeqCst) < want {
                    cpu.park(None);
                }
            }
        });
        let cpu = x.attach(0).unwrap();
        body(&x, &cpu, &*n as *const AtomicUsize as usize);
        rx.join().unwrap();
        assert_eq!(n.load(Ordering::SeqCst), want);
        (x, cpu)
    }

    /// Ring + pending mask + park word: a receiver that parks whenever it finds
    /// nothing never misses a message (loom reports a deadlock if it would sleep
    /// forever).
    #[test]
    fn loom_active_send_wakes_a_parking_receiver() {
        loom::model(|| {
            let (x, cpu) = to_parking_receiver(2, |_, cpu, a| {
                cpu.send(CpuId::new(1).unwrap(), bump, a, 0).unwrap();
                cpu.send(CpuId::new(1).unwrap(), bump, a, 0).unwrap();
            });
            // Each park consumed at most one wakeup.
            assert!(cpu.stats().wakeups <= x.stats(1).unwrap().parks);
        });
    }

    /// Counts an entry and checks it is the `a2`th (from 0) to run.
    pub(crate) fn bump_in_order(_: &Cpu, a1: usize, a2: usize) {
        // SAFETY: as in `bump`.
        let n = unsafe { &*(a1 as *const AtomicUsize) };
        assert_eq!(n.fetch_add(1, Ordering::SeqCst), a2, "entries ran out of order");
    }

    /// A batch (entries written, then stamps stored last entry first, one signal)
    /// reaches a receiver that parks whenever it finds nothing: both entries run,
    /// once each and in order. (The stamps alone are modelled in `ring.rs`.)
    #[test]
    fn loom_batch_reaches_a_parking_receiver_in_order() {
        loom::model(|| {
            to_parking_receiver(2, |_, cpu, a| {
                cpu.send_batch(CpuId::new(1).unwrap(), bump_in_order, &[(a, 0), (a, 1)]).unwrap();
            });
        });
    }

    /// The completion handshake: a sender waiting for its message to complete
    /// parks with the ring's `waiting` mark and is woken by the target's drain.
    #[test]
    fn loom_wait_for_completion_is_woken() {
        loom::model(|| {
            to_parking_receiver(1, |_, cpu, a| {
                let seq = cpu.send(CpuId::new(1).unwrap(), bump, a, 0).unwrap();
                // The receiver may detach right after running it; both outcomes are
                // fine, what must not happen is a wait that sleeps forever.
                let _ = cpu.wait(seq);
            });
        });
    }
}
