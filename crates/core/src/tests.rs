//! Unit and property tests for dfly-core (one test module per crate, through the
//! public seams), plus the loom model of the parker under `--cfg loom`.

#[cfg(not(loom))]
mod normal {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use proptest::prelude::*;

    use crate::crit::{crit_count, crit_enter, pending_requests, run_pending, ReqFlag, MAX_ROUNDS};
    use crate::*;

    fn c(i: usize) -> CpuId {
        CpuId::new(i).unwrap()
    }

    #[derive(Debug, Clone)]
    enum MaskOp {
        Insert(usize),
        Remove(usize),
    }

    fn mask_op() -> impl Strategy<Value = MaskOp> {
        prop_oneof![(0..MAX_CPUS).prop_map(MaskOp::Insert), (0..MAX_CPUS).prop_map(MaskOp::Remove)]
    }

    proptest! {
        /// CpuMask behaves as a set of integers (model: BTreeSet).
        #[test]
        fn mask_matches_set_model(ops in proptest::collection::vec(mask_op(), 0..200), after in 0..MAX_CPUS) {
            let mut m = CpuMask::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    MaskOp::Insert(i) => prop_assert_eq!(m.insert(c(i)), model.insert(i)),
                    MaskOp::Remove(i) => prop_assert_eq!(m.remove(c(i)), model.remove(&i)),
                }
            }
            prop_assert_eq!(m.count(), model.len());
            prop_assert_eq!(m.is_empty(), model.is_empty());
            let got: Vec<usize> = m.iter().map(|c| c.index()).collect();
            let want: Vec<usize> = model.iter().copied().collect();
            prop_assert_eq!(&got, &want);
            // iter_after: members > after ascending, then members <= after ascending.
            let got: Vec<usize> = m.iter_after(c(after)).map(|c| c.index()).collect();
            let mut want: Vec<usize> = model.iter().copied().filter(|&i| i > after).collect();
            want.extend(model.iter().copied().filter(|&i| i <= after));
            prop_assert_eq!(got, want);
            // atomic mask round trip
            let a = AtomicCpuMask::new();
            for x in &m { a.set(x, Ordering::Relaxed); }
            prop_assert_eq!(a.load(Ordering::Relaxed), m);
            prop_assert_eq!(a.take(Ordering::Relaxed), m);
            prop_assert!(a.load(Ordering::Relaxed).is_empty());
        }

        /// Set algebra agrees with the model.
        #[test]
        fn mask_algebra(a in proptest::collection::btree_set(0..MAX_CPUS, 0..64), b in proptest::collection::btree_set(0..MAX_CPUS, 0..64)) {
            let ma: CpuMask = a.iter().map(|&i| c(i)).collect();
            let mb: CpuMask = b.iter().map(|&i| c(i)).collect();
            let idx = |m: CpuMask| m.iter().map(|c| c.index()).collect::<BTreeSet<_>>();
            prop_assert_eq!(idx(ma.union(&mb)), a.union(&b).copied().collect::<BTreeSet<_>>());
            prop_assert_eq!(idx(ma.intersection(&mb)), a.intersection(&b).copied().collect::<BTreeSet<_>>());
            prop_assert_eq!(idx(ma.difference(&mb)), a.difference(&b).copied().collect::<BTreeSet<_>>());
        }

        /// Counters sum exactly whatever the mix of per-CPU and shared adds.
        #[test]
        fn counter_sum_is_exact(adds in proptest::collection::vec((0..9usize, -1000i64..1000), 0..300)) {
            let ctr = Counter::new(8).unwrap();
            let mut want = 0i64;
            for (cpu, n) in adds {
                if cpu == 8 { ctr.add_shared(n) } else { ctr.add(c(cpu), n) }
                want += n;
            }
            prop_assert_eq!(ctr.sum(), want);
            prop_assert_eq!(ctr.snapshot().sum(), want);
        }
    }

    #[test]
    fn cpu_ids_reject_out_of_range() {
        assert_eq!(CpuId::new(MAX_CPUS).unwrap_err().limit, MAX_CPUS);
        assert_eq!(CpuId::checked(4, 4).unwrap_err(), CpuOutOfRange { cpu: 4, limit: 4 });
        assert_eq!(CpuId::checked(3, 4).unwrap().index(), 3);
        assert!(PerCpu::new(0, |_| ()).is_err());
        assert!(PerCpu::new(MAX_CPUS + 1, |_| ()).is_err());
        let p = PerCpu::new(2, |c| c.index()).unwrap();
        assert_eq!(p.get(c(5)), None);
        assert_eq!(p[c(1)], 1);
        assert!(CpuId::new(7).unwrap().to_string().contains('7'));
    }

    #[test]
    fn per_cpu_slots_do_not_share_lines() {
        let p = PerCpu::new(4, |_| 0u8).unwrap();
        let addrs: Vec<usize> = p.iter().map(|r| r as *const u8 as usize).collect();
        for w in addrs.windows(2) {
            assert!(w[1] - w[0] >= pad::CACHE_LINE);
        }
    }

    #[test]
    fn current_cpu_is_per_thread_and_exclusive() {
        assert_eq!(current_cpu(), None);
        let g = set_current_cpu(c(3)).unwrap();
        assert_eq!(set_current_cpu(c(4)).unwrap_err().current, c(3));
        std::thread::spawn(|| assert_eq!(current_cpu(), None)).join().unwrap();
        drop(g);
        assert_eq!(current_cpu(), None);
    }

    static DEFERRED_RUNS: AtomicU32 = AtomicU32::new(0);
    fn count_deferred() {
        assert_eq!(crit_count(), 0, "handlers run outside critical sections");
        DEFERRED_RUNS.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn deferred_work_runs_once_at_outermost_exit() {
        let flag = ReqFlag::register("test-count", count_deferred).unwrap();
        let before = DEFERRED_RUNS.load(Ordering::Relaxed);
        {
            let _a = crit_enter();
            {
                let _b = crit_enter();
                flag.raise();
                flag.raise();
                assert!(flag.is_pending());
            }
            // inner exit: still inside the outer section, nothing ran
            assert_eq!(DEFERRED_RUNS.load(Ordering::Relaxed), before);
            flag.raise();
        }
        assert_eq!(DEFERRED_RUNS.load(Ordering::Relaxed), before + 1);
        assert!(!flag.is_pending(), "the outermost exit consumed the request");
        assert_eq!(pending_requests() & (1 << 31), 0, "no unregistered bit was set");
        // Outside a critical section a raise runs at once.
        flag.raise();
        assert_eq!(DEFERRED_RUNS.load(Ordering::Relaxed), before + 2);
        // `request` defers even outside, until run_pending.
        flag.request();
        assert_eq!(DEFERRED_RUNS.load(Ordering::Relaxed), before + 2);
        assert_eq!(run_pending(), 1);
        assert_eq!(DEFERRED_RUNS.load(Ordering::Relaxed), before + 3);
    }

    static REARM: std::sync::OnceLock<ReqFlag> = std::sync::OnceLock::new();
    static REARM_RUNS: AtomicU32 = AtomicU32::new(0);
    fn rearm() {
        REARM_RUNS.fetch_add(1, Ordering::Relaxed);
        REARM.get().unwrap().raise(); // never re-enters; defers to the next round
    }

    #[test]
    fn a_handler_that_always_rearms_is_bounded() {
        let f = *REARM.get_or_init(|| ReqFlag::register("test-rearm", rearm).unwrap());
        {
            let _cs = crit_enter();
            f.raise();
        }
        assert_eq!(REARM_RUNS.load(Ordering::Relaxed), MAX_ROUNDS);
        assert!(f.is_pending(), "the last round's raise stays pending for the next exit");
    }

    #[test]
    fn virtual_clock_moves_only_forward() {
        let v = VirtualClock::new();
        assert_eq!(v.now(), Timestamp::ZERO);
        let t = v.advance(Duration::from_micros(3));
        assert_eq!(t.as_nanos(), 3000);
        assert!(v.advance_to(Timestamp::from_nanos(10)).is_err());
        v.advance_to(Timestamp::from_nanos(5000)).unwrap();
        assert_eq!(v.now() - Timestamp::from_nanos(1000), Duration::from_nanos(4000));
        assert_eq!(Timestamp::from_nanos(1) - Timestamp::from_nanos(5), Duration::ZERO);
        let c: &dyn Clock = &RealClock;
        let a = c.now();
        assert!(c.now() >= a);
    }

    #[test]
    fn backoff_is_bounded() {
        let mut b = Backoff::new();
        let mut n = 0;
        while !b.is_completed() {
            b.spin();
            n += 1;
            assert!(n < 100);
        }
        b.reset();
        assert!(!b.is_completed());
    }

    #[test]
    fn parker_token_before_and_after_park() {
        let p = Parker::new();
        p.unpark();
        p.park(); // token consumed without sleeping
        assert!(!p.park_timeout(Duration::from_millis(1)));
        p.unpark();
        assert!(p.park_timeout(Duration::from_millis(1)));
    }

    /// No lost wakeup: a ping-pong of tokens between two threads through two parkers
    /// completes for a bounded number of rounds (a lost wakeup would hang; the test
    /// harness time limit is not relied on: each park has a generous timeout and a
    /// timeout counts as a failure).
    #[test]
    fn parker_ping_pong_loses_no_wakeup() {
        let a = Arc::new(Parker::new());
        let b = Arc::new(Parker::new());
        let (a2, b2) = (a.clone(), b.clone());
        const ROUNDS: usize = 20_000;
        let t = std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                assert!(a2.park_timeout(Duration::from_secs(10)), "lost wakeup");
                b2.unpark();
            }
        });
        for _ in 0..ROUNDS {
            a.unpark();
            assert!(b.park_timeout(Duration::from_secs(10)), "lost wakeup");
        }
        t.join().unwrap();
    }

    #[test]
    fn counter_from_many_threads_sums_exactly() {
        let ctr = Arc::new(Counter::new(4).unwrap());
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let ctr = ctr.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        ctr.add(c(i), 1);
                        ctr.add_shared(-1);
                        ctr.add_shared(2);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(ctr.sum(), 4 * 10_000 * 2);
    }

    #[test]
    fn pinning_to_a_nonexistent_core_is_an_error() {
        assert!(affinity::pin_current_thread(1 << 20).is_err());
        assert!(affinity::available_cores() >= 1);
    }

    #[test]
    fn current_core_follows_pinning() {
        // On a fresh thread so the test runner's thread keeps its affinity. Pin to
        // the core we are on (any core the process may use) and read it back.
        let (pinned, seen) = std::thread::spawn(|| {
            let core = affinity::current_core().expect("sched_getcpu works on Linux");
            affinity::pin_current_thread(core).unwrap();
            (core, affinity::current_core())
        })
        .join()
        .unwrap();
        assert_eq!(seen, Some(pinned));
    }
}

#[cfg(loom)]
mod loom_models {
    use crate::park::Parker;
    use crate::sync::{thread, Arc};

    /// loom: an unpark racing with a park is never lost.
    #[test]
    fn loom_parker_no_lost_wakeup() {
        loom::model(|| {
            let p = Arc::new(Parker::new());
            let q = p.clone();
            let t = thread::spawn(move || q.unpark());
            p.park();
            t.join().unwrap();
        });
    }
}
