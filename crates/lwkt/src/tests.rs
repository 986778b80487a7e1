//! Tests for dfly-lwkt: run-queue properties against a model, token invariants in
//! simulation and on real CPUs, lost-wakeup stress, determinism of the simulation,
//! continuations and migration, shutdown with sleepers, and bad input.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::runq::RunQueue;
use crate::*;

mod tick;

// ---- run queue -------------------------------------------------------------------

#[derive(Debug, Clone)]
enum RqOp {
    Push(u8, u8),
    Remove(u8),
    /// The rotations name a priority, which may not be the key's (or the key may
    /// not be queued): then they must change nothing.
    Rotate(u8, u8),
    RotateHead(u8, u8),
    YieldRotate(u8, u8),
}

fn rq_op() -> impl Strategy<Value = RqOp> {
    prop_oneof![
        (0u8..16, 0u8..32).prop_map(|(k, p)| RqOp::Push(k, p)),
        (0u8..16).prop_map(RqOp::Remove),
        (0u8..16, 0u8..32, any::<bool>())
            .prop_map(|(k, p, own)| RqOp::Rotate(k, if own { u8::MAX } else { p })),
        (0u8..16, 0u8..32, any::<bool>())
            .prop_map(|(k, p, own)| RqOp::RotateHead(k, if own { u8::MAX } else { p })),
        (0u8..16, 0u8..32, any::<bool>())
            .prop_map(|(k, p, own)| RqOp::YieldRotate(k, if own { u8::MAX } else { p })),
    ]
}

proptest! {
    /// The run queue orders like the obvious model: a list per priority, highest
    /// priority first, FIFO within a priority, rotation moves to the tail, and the
    /// tick's rotation moves only the head of a level with more than one entry.
    #[test]
    fn run_queue_matches_model(ops in proptest::collection::vec(rq_op(), 0..200)) {
        let mut rq = RunQueue::<u8>::new();
        let mut model: Vec<VecDeque<u8>> = vec![VecDeque::new(); 32];
        let mut prio_of = [None::<u8>; 16];
        for op in ops {
            match op {
                RqOp::Push(k, p) => {
                    if prio_of[k as usize].is_none() {
                        rq.push_back(k, Priority::new(p as u32).unwrap());
                        model[p as usize].push_back(k);
                        prio_of[k as usize] = Some(p);
                    }
                }
                RqOp::Remove(k) => {
                    if let Some(p) = prio_of[k as usize].take() {
                        prop_assert!(rq.remove(k, Priority::new(p as u32).unwrap()));
                        model[p as usize].retain(|&x| x != k);
                    } else {
                        for p in 0..32 {
                            prop_assert!(!rq.remove(k, Priority::new(p).unwrap()));
                        }
                    }
                }
                RqOp::Rotate(k, p) => {
                    // `u8::MAX` stands for the key's own priority (or 0 if unqueued).
                    let own = prio_of[k as usize];
                    let p = if p == u8::MAX { own.unwrap_or(0) } else { p };
                    rq.rotate_to_tail(k, Priority::new(p as u32).unwrap());
                    if own == Some(p) {
                        model[p as usize].retain(|&x| x != k);
                        model[p as usize].push_back(k);
                    }
                }
                RqOp::RotateHead(k, p) => {
                    let own = prio_of[k as usize];
                    let p = if p == u8::MAX { own.unwrap_or(0) } else { p };
                    let level = &mut model[p as usize];
                    let want = own == Some(p) && level.front() == Some(&k) && level.len() > 1;
                    if want {
                        level.rotate_left(1);
                    }
                    prop_assert_eq!(rq.rotate_head(k, Priority::new(p as u32).unwrap()), want);
                }
                RqOp::YieldRotate(k, p) => {
                    // Applies when `k` heads the highest queued level, at `p`, and is
                    // not alone there: then it goes to the tail and the new head is
                    // returned; otherwise nothing changes.
                    let own = prio_of[k as usize];
                    let p = if p == u8::MAX { own.unwrap_or(0) } else { p };
                    let top = (0..32).rev().find(|&q| !model[q].is_empty());
                    let level = &mut model[p as usize];
                    let applies = own == Some(p)
                        && top == Some(p as usize)
                        && level.front() == Some(&k)
                        && level.len() > 1;
                    let want = if applies {
                        level.rotate_left(1);
                        level.front().copied()
                    } else {
                        None
                    };
                    prop_assert_eq!(rq.yield_rotate(k, Priority::new(p as u32).unwrap()), want);
                }
            }
            // The links first: a broken circle would make `iter` below loop forever.
            if let Err(e) = rq.check_links() {
                prop_assert!(false, "run queue links: {}", e);
            }
            let want: Vec<(u8, u8)> = (0..32usize).rev()
                .flat_map(|p| model[p].iter().map(move |&k| (k, p as u8)))
                .collect();
            let got: Vec<(u8, u8)> = rq.iter().map(|(k, p)| (k, p.get())).collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(rq.len(), want.len());
            prop_assert_eq!(rq.head(), want.first().map(|&(k, _)| k));
            for p in 0..32u8 {
                let above = want.iter().any(|&(_, p2)| p2 > p);
                prop_assert_eq!(rq.any_above(Priority::new(p as u32).unwrap()), above);
            }
            for (k, p) in prio_of.iter().enumerate() {
                if let Some(p) = p {
                    let pr = Priority::new(*p as u32).unwrap();
                    let others = want.iter().any(|&(k2, p2)| k2 != k as u8 && p2 >= *p);
                    prop_assert_eq!(rq.other_at_or_above(k as u8, pr), others);
                }
            }
        }
    }
}

// ---- scheduling in simulation ------------------------------------------------------

#[test]
fn higher_priority_runs_first_and_equals_take_turns() {
    let mut sim = Machine::simulated(1, 1).unwrap();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    for (name, p) in [("low", 6u32), ("high", 20), ("mid", 10), ("high2", 20)] {
        let log = log.clone();
        sim.spawn(Spawn::on_cpu(0).priority(Priority::new(p).unwrap()), move |cx| {
            for i in 0..2 {
                log.lock().unwrap().push(format!("{name}{i}"));
                cx.yield_now();
            }
        })
        .unwrap();
    }
    sim.run().unwrap();
    let got = log.lock().unwrap().clone();
    assert_eq!(
        got,
        ["high0", "high20", "high1", "high21", "mid0", "mid1", "low0", "low1"],
        "strict priority, round robin among equals"
    );
}

#[test]
fn real_cpu_yields_keep_priority_order_and_round_robin() {
    // On a real CPU a yield hands the next thread to the scheduler with the
    // switch; the order must be the same as the simulation's.
    let mut m = Machine::builder().cpus(1).build().unwrap();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = log.clone();
    let parent = m
        .spawn(Spawn::on_cpu(0).priority(Priority::new(2).unwrap()), move |cx| {
            let hs: Vec<_> = [("low", 6u32), ("high", 20), ("mid", 10), ("high2", 20)]
                .into_iter()
                .map(|(name, p)| {
                    let log = l.clone();
                    cx.spawn(Spawn::on_cpu(0).priority(Priority::new(p).unwrap()), move |cx| {
                        for i in 0..3 {
                            log.lock().unwrap().push(format!("{name}{i}"));
                            cx.yield_now();
                        }
                    })
                    .unwrap()
                })
                .collect();
            for h in hs {
                cx.join(h).unwrap();
            }
        })
        .unwrap();
    parent.join_blocking().unwrap();
    m.stop().unwrap();
    let got = log.lock().unwrap().clone();
    assert_eq!(
        got,
        [
            "high0", "high20", "high1", "high21", "high2", "high22", "mid0", "mid1", "mid2",
            "low0", "low1", "low2"
        ],
        "strict priority, round robin among equals"
    );
}

#[test]
fn real_cpu_yield_loops_let_requests_in() {
    // Two threads yielding to each other keep a CPU busy; spawns, deschedules and
    // schedules sent from outside must still be handled between their turns.
    let mut m = Machine::builder().cpus(1).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hs: Vec<_> = (0..2)
        .map(|i| {
            let (stop, counts, ids) = (stop.clone(), counts.clone(), ids.clone());
            m.spawn(Spawn::on_cpu(0), move |cx| {
                ids.lock().unwrap().push((i, cx.id()));
                while !stop.load(Ordering::Relaxed) {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    cx.yield_now();
                }
            })
            .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "the yielding threads never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..200 {
        let h = m.spawn(Spawn::on_cpu(0), |cx| cx.cpu().index() + 1).unwrap();
        assert_eq!(h.join_blocking().unwrap(), 1);
    }
    let (idx, tid) = ids.lock().unwrap()[0];
    m.deschedule(tid).unwrap();
    // Once the request is handled the count stops moving.
    let settled = |c: &AtomicU64| loop {
        let a = c.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        if c.load(Ordering::Relaxed) == a {
            return a;
        }
        assert!(Instant::now() < deadline, "a descheduled thread kept running");
    };
    let frozen = settled(&counts[idx]);
    let other = counts[1 - idx].load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(counts[idx].load(Ordering::Relaxed), frozen);
    assert!(counts[1 - idx].load(Ordering::Relaxed) > other, "the other thread runs on");
    m.schedule(tid).unwrap();
    while counts[idx].load(Ordering::Relaxed) == frozen {
        assert!(Instant::now() < deadline, "a scheduled thread did not run again");
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join_blocking().unwrap();
    }
    m.stop().unwrap();
}

#[test]
fn yield_with_nothing_else_runnable_is_cheap() {
    let mut m = Machine::builder().cpus(1).build().unwrap();
    let h = m
        .spawn(Spawn::on_cpu(0), |cx| {
            for _ in 0..100 {
                cx.yield_now();
            }
        })
        .unwrap();
    h.join_blocking().unwrap();
    let t0 = Instant::now();
    let mut st = m.stats()[0];
    while st.cheap_yields < 100 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
        st = m.stats()[0];
    }
    assert_eq!(st.yields, 0, "{st:?}");
    assert_eq!(st.cheap_yields, 100);
    m.stop().unwrap();
}

fn busy_program(seed: u64) -> (u64, u64) {
    let mut sim = Machine::simulated(3, seed).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    for i in 0..6 {
        let c = counter.clone();
        sim.spawn(Spawn::on_cpu(i % 3), move |cx| {
            for j in 0..5 {
                c.fetch_add(1, Ordering::Relaxed);
                if j % 2 == 0 {
                    cx.yield_now();
                } else {
                    cx.sleep(Duration::from_micros(3 + i as u64));
                }
            }
            let child = cx.spawn(Spawn::on_cpu((i + 1) % 3), move |cx| cx.cpu().index()).unwrap();
            cx.join(child).unwrap()
        })
        .unwrap();
    }
    let rep = sim.run().unwrap();
    assert_eq!(rep.live_threads, 0);
    assert_eq!(counter.load(Ordering::Relaxed), 30);
    (sim.trace_hash(), sim.steps())
}

#[test]
fn simulation_replays_exactly_from_its_seed() {
    for seed in 0..20 {
        assert_eq!(busy_program(seed), busy_program(seed), "seed {seed}");
    }
    let distinct: std::collections::HashSet<u64> = (0..20).map(|s| busy_program(s).0).collect();
    assert!(distinct.len() > 10, "seeds should explore different orders: {}", distinct.len());
}

#[test]
fn tsleep_times_out_in_virtual_time_and_wakeup_ends_it() {
    let mut sim = Machine::simulated(2, 9).unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    let sleeper = sim
        .spawn(Spawn::on_cpu(0), move |cx| {
            let t0 = cx.now();
            let r = cx.tsleep(0x1000, Some(Duration::from_millis(5)));
            assert_eq!(r, Err(TimedOut));
            assert!(cx.now().saturating_since(t0) >= Duration::from_millis(5));
            let ident = ident_of(&*f2);
            cx.tsleep_until(ident, None, || f2.load(Ordering::SeqCst)).unwrap();
            "woken"
        })
        .unwrap();
    let f3 = flag.clone();
    sim.spawn(Spawn::on_cpu(1), move |cx| {
        cx.sleep(Duration::from_millis(20));
        f3.store(true, Ordering::SeqCst);
        cx.wakeup(ident_of(&*f3));
    })
    .unwrap();
    sim.run().unwrap();
    assert_eq!(sleeper.try_join().unwrap(), "woken");
    assert!(sim.now().as_nanos() >= 20_000_000);
}

// ---- wakeups for real --------------------------------------------------------------

/// Producer/consumer hand-offs across CPUs with interlocked sleeps: every item is
/// seen, nobody sleeps forever (the test would hang and time out, so each wait has a
/// generous timeout that counts as a failure).
#[test]
fn no_lost_wakeups_across_cpus() {
    let mut m = Machine::builder().cpus(3).build().unwrap();
    const N: u64 = 3000;
    let slot = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let timeouts = Arc::new(AtomicU64::new(0));
    let (s1, a1, t1) = (slot.clone(), acked.clone(), timeouts.clone());
    let consumer = m
        .spawn(Spawn::on_cpu(1), move |cx| {
            for i in 1..=N {
                if cx
                    .tsleep_until(ident_of(&*s1), Some(Duration::from_secs(5)), || {
                        s1.load(Ordering::SeqCst) >= i
                    })
                    .is_err()
                {
                    t1.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                a1.store(i, Ordering::SeqCst);
                cx.wakeup(ident_of(&*a1));
            }
        })
        .unwrap();
    let (s2, a2, t2) = (slot.clone(), acked.clone(), timeouts.clone());
    let producer = m
        .spawn(Spawn::on_cpu(2), move |cx| {
            for i in 1..=N {
                s2.store(i, Ordering::SeqCst);
                cx.wakeup(ident_of(&*s2));
                if cx
                    .tsleep_until(ident_of(&*a2), Some(Duration::from_secs(5)), || {
                        a2.load(Ordering::SeqCst) >= i
                    })
                    .is_err()
                {
                    t2.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        })
        .unwrap();
    producer.join_blocking().unwrap();
    consumer.join_blocking().unwrap();
    assert_eq!(timeouts.load(Ordering::Relaxed), 0);
    assert_eq!(acked.load(Ordering::SeqCst), N);
    // Counters are published when a CPU goes idle (or every 256 events).
    let t0 = Instant::now();
    let mut st = m.stats();
    while st[1].remote_wakeups + st[2].remote_wakeups == 0 && t0.elapsed() < Duration::from_secs(5)
    {
        std::thread::sleep(Duration::from_millis(5));
        st = m.stats();
    }
    assert!(st[1].remote_wakeups + st[2].remote_wakeups > 0, "{st:?}");
    m.stop().unwrap();
}

#[test]
fn no_lost_wakeups_in_simulation_under_many_seeds() {
    for seed in 0..30 {
        let mut sim = Machine::simulated(3, seed).unwrap();
        let slot = Arc::new(AtomicU64::new(0));
        let mut hs = Vec::new();
        for c in 0..3 {
            let s = slot.clone();
            hs.push(
                sim.spawn(Spawn::on_cpu(c), move |cx| {
                    cx.tsleep_until(ident_of(&*s), None, || s.load(Ordering::SeqCst) == 1)
                })
                .unwrap(),
            );
        }
        let s = slot.clone();
        sim.spawn(Spawn::on_cpu((seed % 3) as usize), move |cx| {
            cx.yield_now();
            s.store(1, Ordering::SeqCst);
            cx.wakeup(ident_of(&*s));
        })
        .unwrap();
        let rep = sim.run().unwrap();
        assert_eq!(rep.live_threads, 0, "seed {seed}: a sleeper was never woken");
        for h in hs {
            assert_eq!(h.try_join().unwrap(), Ok(()));
        }
    }
}

#[test]
fn wakeup_one_wakes_exactly_one() {
    let mut sim = Machine::simulated(3, 5).unwrap();
    let woke = Arc::new(AtomicUsize::new(0));
    const IDENT: usize = 0xabc0;
    for c in 0..3 {
        let w = woke.clone();
        sim.spawn(Spawn::on_cpu(c), move |cx| {
            if cx.tsleep(IDENT, Some(Duration::from_millis(50))).is_ok() {
                w.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    }
    sim.spawn(Spawn::on_cpu(0), |cx| {
        cx.sleep(Duration::from_millis(1));
        cx.wakeup_one(IDENT);
    })
    .unwrap();
    sim.run().unwrap();
    assert_eq!(woke.load(Ordering::SeqCst), 1);
}

// ---- tokens -----------------------------------------------------------------------

/// Per-token occupancy monitors: +1000 for an exclusive holder in its critical
/// stretch, +1 per shared holder.
struct Monitor {
    occ: Vec<AtomicU64>,
    violations: AtomicU64,
    done: AtomicU64,
}

fn token_program(cx: &mut Ctx<'_>, toks: &'static [Token], mon: &Monitor, seed: u64, rounds: u32) {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..rounds {
        // Acquire 1..=3 distinct tokens in random order and modes.
        let k = 1 + (rnd() % 3) as usize;
        let mut picked: Vec<(usize, bool)> = Vec::new();
        while picked.len() < k {
            let t = (rnd() % toks.len() as u64) as usize;
            if !picked.iter().any(|&(p, _)| p == t) {
                picked.push((t, rnd() % 3 == 0));
            }
        }
        let mut held = Vec::new();
        for &(t, shared) in &picked {
            let h = if shared { cx.get_token_shared(&toks[t]) } else { cx.get_token(&toks[t]) };
            held.push(h.unwrap());
        }
        // Twice: check occupancy, then block (all tokens released), resume (all
        // re-acquired) and check again.
        for pass in 0..2 {
            for &(t, shared) in &picked {
                let add = if shared { 1 } else { 1000 };
                let before = mon.occ[t].fetch_add(add, Ordering::SeqCst);
                let bad = if shared { before >= 1000 } else { before != 0 };
                if bad {
                    mon.violations.fetch_add(1, Ordering::SeqCst);
                }
            }
            for _ in 0..(rnd() % 50) {
                core::hint::spin_loop();
            }
            for &(t, shared) in &picked {
                mon.occ[t].fetch_sub(if shared { 1 } else { 1000 }, Ordering::SeqCst);
            }
            if pass == 0 {
                if rnd() % 2 == 0 {
                    cx.yield_now();
                } else {
                    cx.sleep(Duration::from_micros(rnd() % 20));
                }
            }
        }
        while let Some(h) = held.pop() {
            cx.release(h).unwrap();
        }
    }
    mon.done.fetch_add(1, Ordering::SeqCst);
}

static TOKS: [Token; 4] = [Token::new("a"), Token::new("b"), Token::new("c"), Token::new("d")];

fn monitor() -> Arc<Monitor> {
    Arc::new(Monitor {
        occ: (0..4).map(|_| AtomicU64::new(0)).collect(),
        violations: AtomicU64::new(0),
        done: AtomicU64::new(0),
    })
}

#[test]
fn tokens_hold_their_invariants_in_simulation() {
    for seed in 0..10 {
        let mut sim = Machine::simulated(3, seed).unwrap();
        let mon = monitor();
        for t in 0..6u64 {
            let m = mon.clone();
            sim.spawn(Spawn::on_cpu((t % 3) as usize), move |cx| {
                token_program(cx, &TOKS, &m, seed * 31 + t, 30)
            })
            .unwrap();
        }
        let rep = sim.run().unwrap();
        assert_eq!(rep.live_threads, 0);
        assert_eq!(mon.done.load(Ordering::SeqCst), 6, "seed {seed}: every program finishes");
        assert_eq!(mon.violations.load(Ordering::SeqCst), 0, "seed {seed}");
    }
}

#[test]
fn tokens_hold_their_invariants_on_real_cpus() {
    let mut m = Machine::builder().cpus(3).build().unwrap();
    for seed in 0..4u64 {
        let mon = monitor();
        let hs: Vec<_> = (0..6u64)
            .map(|t| {
                let mm = mon.clone();
                m.spawn(Spawn::on_cpu((t % 3) as usize), move |cx| {
                    token_program(cx, &TOKS, &mm, seed * 97 + t, 200)
                })
                .unwrap()
            })
            .collect();
        for h in hs {
            h.join_blocking().unwrap();
        }
        assert_eq!(mon.violations.load(Ordering::SeqCst), 0, "seed {seed}");
        assert_eq!(mon.done.load(Ordering::SeqCst), 6);
    }
    for t in &TOKS {
        assert!(!t.is_held_exclusive() && t.shared_count() == 0, "{t:?} left held");
    }
    m.stop().unwrap();
}

static CELL_TOKEN: Token = Token::new("cell");
static CELL: TokenCell<Vec<u32>> = TokenCell::new_static(&CELL_TOKEN, Vec::new());

#[test]
fn token_cells_enforce_holds_modes_and_borrows() {
    let mut sim = Machine::simulated(1, 0).unwrap();
    let h = sim
        .spawn(Spawn::on_cpu(0), |cx| {
            let held = cx.get_token(&CELL_TOKEN).unwrap();
            CELL.borrow_mut(&held, cx).unwrap().push(1);
            {
                let r1 = CELL.borrow(&held, cx).unwrap();
                assert_eq!(CELL.borrow_mut(&held, cx).unwrap_err(), TokenError::Borrowed);
                let r2 = CELL.borrow(&held, cx).unwrap();
                assert_eq!(r1.len() + r2.len(), 2);
            }
            // Recursion under the exclusive hold; LIFO release is enforced.
            let inner = cx.get_token(&CELL_TOKEN).unwrap();
            let err = cx.release(held).unwrap_err();
            assert_eq!(err.error, TokenError::OutOfOrder);
            let held = err.held;
            assert_eq!(CELL.borrow(&inner, cx).unwrap().len(), 1);
            cx.release(inner).unwrap();
            assert_eq!(cx.tokens_held(), 1);
            // Dropping a Held does not release: the thread ends holding it, and the
            // exit releases it.
            let _still_held = held;
            // A shared hold cannot mutate; an upgrade is refused.
            let other = Box::leak(Box::new(Token::new("other")));
            let sh = cx.get_token_shared(&*other).unwrap();
            assert_eq!(cx.get_token(&*other).unwrap_err(), TokenError::Upgrade);
            let cell2 = TokenCell::new(&*other, 5u32);
            assert_eq!(cell2.borrow_mut(&sh, cx).unwrap_err(), TokenError::NotExclusive);
            assert_eq!(*cell2.borrow(&sh, cx).unwrap(), 5);
            assert_eq!(CELL.borrow(&sh, cx).unwrap_err(), TokenError::WrongToken);
            cx.release(sh).unwrap();
            cx.tokens_held()
        })
        .unwrap();
    sim.run().unwrap();
    assert_eq!(h.try_join().unwrap(), 1);
    // The thread ended holding its outer hold: it is released at exit.
    assert!(!CELL_TOKEN.is_held_exclusive());
}

#[test]
fn a_hold_smuggled_to_another_thread_proves_nothing_there() {
    // Held is not Send, but two LWKT threads of one CPU share an OS thread, so a
    // thread-local can carry one across. The other thread's own first hold has
    // the same stack index and sequence number; only the thread check tells them
    // apart, and the stale hold must not open the cell.
    thread_local! {
        static SMUGGLED: std::cell::RefCell<Option<Held>> = const { std::cell::RefCell::new(None) };
    }
    let tok: &'static Token = Box::leak(Box::new(Token::new("smuggled")));
    let cell: &'static TokenCell<u32> = Box::leak(Box::new(TokenCell::new(tok, 7)));
    let mut sim = Machine::simulated(1, 0).unwrap();
    let a = sim
        .spawn(Spawn::on_cpu(0), move |cx| {
            let held = cx.get_token(tok).unwrap();
            assert_eq!(*cell.borrow(&held, cx).unwrap(), 7);
            SMUGGLED.with(|s| *s.borrow_mut() = Some(held));
            // Blocking releases the token; the thread ends without it.
            cx.sleep(Duration::from_millis(1));
        })
        .unwrap();
    let b = sim
        .spawn(Spawn::on_cpu(0), move |cx| {
            let stolen = SMUGGLED.with(|s| s.borrow_mut().take()).expect("A ran first");
            let mine = cx.get_token(tok).unwrap();
            assert_eq!(*cell.borrow(&mine, cx).unwrap(), 7);
            let refused = (
                cell.borrow(&stolen, cx).err(),
                cell.borrow_mut(&stolen, cx).err(),
                cx.release(stolen).err().map(|e| e.error),
            );
            cx.release(mine).unwrap();
            refused
        })
        .unwrap();
    sim.run().unwrap();
    a.try_join().unwrap();
    let nh = Some(TokenError::NotHeld);
    assert_eq!(b.try_join().unwrap(), (nh, nh, nh));
    assert!(!tok.is_held_exclusive());
}

#[test]
fn at_most_32_tokens() {
    let mut sim = Machine::simulated(1, 0).unwrap();
    let h = sim
        .spawn(Spawn::on_cpu(0), |cx| {
            let toks: &'static [Token] =
                Box::leak((0..33).map(|_| Token::new("t")).collect::<Vec<_>>().into_boxed_slice());
            let mut held = Vec::new();
            for t in &toks[..32] {
                held.push(cx.get_token(t).unwrap());
            }
            let err = cx.get_token(&toks[32]).unwrap_err();
            while let Some(h) = held.pop() {
                cx.release(h).unwrap();
            }
            err
        })
        .unwrap();
    sim.run().unwrap();
    assert_eq!(h.try_join().unwrap(), TokenError::TooMany);
}

/// An `Arc` token on a thread's stack keeps exactly one reference per hold: across a
/// release, a recursive hold, a blocking call (which releases the atomic hold but
/// keeps the entry) and a thread that ends still holding it.
#[test]
fn arc_tokens_are_counted_once_per_hold() {
    let tok = Arc::new(Token::new("arc"));
    let mut sim = Machine::simulated(1, 0).unwrap();
    let t = tok.clone();
    let h = sim
        .spawn(Spawn::on_cpu(0), move |cx| {
            let mut seen = Vec::new();
            let a = cx.get_token(&t).unwrap();
            seen.push(Arc::strong_count(&t));
            let b = cx.get_token(t.clone()).unwrap();
            seen.push(Arc::strong_count(&t));
            cx.sleep(Duration::from_millis(1));
            seen.push(Arc::strong_count(&t));
            assert!(t.is_held_exclusive());
            cx.release(b).unwrap();
            seen.push(Arc::strong_count(&t));
            cx.release(a).unwrap();
            seen.push(Arc::strong_count(&t));
            assert!(!t.is_held_exclusive());
            // Ends holding one: the exit gives back the hold and the reference.
            let _kept = cx.get_token(&t).unwrap();
            seen
        })
        .unwrap();
    sim.run().unwrap();
    // One reference is the test's, one the closure's `t`, one per hold.
    assert_eq!(h.try_join().unwrap(), vec![3, 4, 4, 3, 2]);
    assert_eq!(Arc::strong_count(&tok), 1);
    assert!(!tok.is_held_exclusive());
}

#[test]
fn pool_tokens_are_stable_per_address() {
    let a = 5u64;
    let b = [0u8; 64];
    assert!(core::ptr::eq(pool_token(&a), pool_token(&a)));
    let spread: std::collections::HashSet<usize> =
        (0..64).map(|i| pool_token(&b[i]) as *const Token as usize).collect();
    assert!(spread.len() >= 2);
}

// ---- continuations and migration ---------------------------------------------------

#[test]
fn continuation_blocking_gives_the_stack_back_and_resumes() {
    let mut sim = Machine::simulated(2, 4).unwrap();
    const IDENT: usize = 0x5000;
    let n = 50;
    let mut hs = Vec::new();
    for i in 0..n {
        hs.push(
            sim.spawn_flow(Spawn::on_cpu(0), move |cx| {
                cx.tsleep_interlock(IDENT);
                cx.block_with_continuation(IDENT, None, move |cx| Flow::done(i + cx.cpu().index()))
            })
            .unwrap(),
        );
    }
    sim.run().unwrap();
    let st = sim.handle().stats()[0];
    assert_eq!(st.threads_live, n as u64);
    assert_eq!(st.stacks_in_use, 0, "blocked continuations hold no stack");
    sim.spawn(Spawn::on_cpu(1), |cx| cx.wakeup(IDENT)).unwrap();
    sim.run().unwrap();
    for (i, h) in hs.into_iter().enumerate() {
        assert_eq!(h.try_join().unwrap(), i);
    }
}

#[test]
fn migration_moves_a_thread_to_another_cpu() {
    let mut m = Machine::builder().cpus(2).build().unwrap();
    let h = m
        .spawn_flow(Spawn::on_cpu(0), |cx| {
            let from = cx.cpu().index();
            let to = dfly_core::CpuId::new(1).unwrap();
            match cx.migrate(to, move |cx| Flow::done((from, cx.cpu().index()))) {
                Ok(flow) => flow,
                Err(_) => Flow::done((from, from)),
            }
        })
        .unwrap();
    assert_eq!(h.join_blocking().unwrap(), (0, 1));
    m.stop().unwrap();
}

// ---- machine lifecycle and bad input -------------------------------------------------

struct DropCount(Arc<AtomicUsize>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn stop_with_sleepers_unwinds_them_and_fails_their_joins() {
    let mut m = Machine::builder().cpus(2).build().unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..10)
        .map(|i| {
            let d = DropCount(drops.clone());
            let s = started.clone();
            m.spawn(Spawn::on_cpu(i % 2), move |cx| {
                let _d = d;
                s.fetch_add(1, Ordering::SeqCst);
                cx.tsleep(0x77, None).ok();
            })
            .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    while started.load(Ordering::SeqCst) < 10 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    m.stop().unwrap();
    assert_eq!(drops.load(Ordering::SeqCst), 10, "every sleeping stack was unwound");
    for h in hs {
        assert!(matches!(h.join_blocking(), Err(JoinError::Stopped)));
    }
    assert!(matches!(m.stop(), Err(MachineError::AlreadyStopped)));
    assert!(matches!(m.spawn(Spawn::on_cpu(0), |_| ()), Err(SpawnError::Stopped)));
}

#[test]
fn bad_input_gives_clear_errors() {
    assert!(matches!(Machine::builder().cpus(0).build(), Err(MachineError::BadCpuCount(0))));
    assert!(Priority::new(32).is_err());
    let mut m = Machine::builder().cpus(2).build().unwrap();
    assert!(matches!(m.spawn(Spawn::on_cpu(2), |_| ()), Err(SpawnError::NoSuchCpu(_))));
    // A panicking thread: the join carries the panic.
    let h = m.spawn(Spawn::on_cpu(0), |_| -> u32 { panic!("boom") }).unwrap();
    match h.join_blocking() {
        Err(JoinError::Panicked(p)) => assert_eq!(p.downcast_ref::<&str>(), Some(&"boom")),
        other => panic!("expected a panic, got {other:?}"),
    }
    // Scheduling a finished thread.
    let h = m.spawn(Spawn::on_cpu(0), |cx| cx.id()).unwrap();
    let tid = h.join_blocking().unwrap();
    let h = m.spawn(Spawn::on_cpu(0), move |cx| cx.schedule(tid)).unwrap();
    assert_eq!(h.join_blocking().unwrap(), Err(ScheduleError::NoSuchThread(tid)));
    // join_blocking on a CPU thread is refused rather than stalling the CPU.
    let h = m
        .spawn(Spawn::on_cpu(1), |cx| {
            let inner = cx.spawn(Spawn::on_cpu(0), |_| 1).unwrap();
            matches!(inner.join_blocking(), Err(JoinError::OnCpuThread))
        })
        .unwrap();
    assert!(h.join_blocking().unwrap());
    m.stop().unwrap();
}

#[test]
fn foreign_threads_spawn_wake_and_join() {
    let mut m = Machine::builder().cpus(2).build().unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let f2 = flag.clone();
    let h = m
        .spawn(Spawn::on_cpu(1), move |cx| {
            cx.tsleep_until(ident_of(&*f2), Some(Duration::from_secs(10)), || {
                f2.load(Ordering::SeqCst)
            })
        })
        .unwrap();
    let handle = m.handle();
    let f3 = flag.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        f3.store(true, Ordering::SeqCst);
        handle.wakeup(ident_of(&*f3));
    })
    .join()
    .unwrap();
    assert_eq!(h.join_blocking().unwrap(), Ok(()));
    m.stop().unwrap();
}

#[test]
fn an_idle_machine_parks() {
    let mut m = Machine::builder().cpus(2).build().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let parks: u64 = m.stats().iter().map(|s| s.parks).sum();
    // Idle CPUs park with a 100 ms cap: a handful of parks, not a busy loop.
    assert!(parks >= 2, "idle CPUs should park: {parks}");
    assert!(parks < 200, "idle CPUs should stay parked: {parks}");
    m.stop().unwrap();
}

#[test]
fn serializer_excludes_across_blocking() {
    let mut m = Machine::builder().cpus(2).build().unwrap();
    let s = Arc::new(Serializer::new());
    let inside = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..4)
        .map(|i| {
            let (s, inside, bad) = (s.clone(), inside.clone(), bad.clone());
            m.spawn(Spawn::on_cpu(i % 2), move |cx| {
                for _ in 0..50 {
                    let g = s.enter(cx);
                    if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                        bad.fetch_add(1, Ordering::SeqCst);
                    }
                    cx.sleep(Duration::from_micros(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(g);
                    cx.yield_now();
                }
            })
            .unwrap()
        })
        .collect();
    for h in hs {
        h.join_blocking().unwrap();
    }
    assert_eq!(bad.load(Ordering::SeqCst), 0);
    assert!(!s.is_held());
    m.stop().unwrap();
}

#[test]
fn stacks_are_pooled() {
    let mut sim = Machine::simulated(1, 2).unwrap();
    for _ in 0..3 {
        for _ in 0..10 {
            sim.spawn(Spawn::on_cpu(0), |cx| cx.yield_now()).unwrap();
        }
        sim.run().unwrap();
    }
    let st = sim.handle().stats()[0];
    assert_eq!(st.threads_exited, 30);
    assert!(st.stacks_created <= 10, "{st:?}");
    assert_eq!(st.stacks_in_use, 0);
}

#[test]
fn deschedule_parks_a_runnable_thread_until_scheduled() {
    let mut sim = Machine::simulated(2, 11).unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let wid = Arc::new(std::sync::Mutex::new(None));
    let (c1, s1, w1) = (count.clone(), stop.clone(), wid.clone());
    sim.spawn(Spawn::on_cpu(0), move |cx| {
        *w1.lock().unwrap() = Some(cx.id());
        while !s1.load(Ordering::SeqCst) {
            c1.fetch_add(1, Ordering::SeqCst);
            cx.yield_now();
        }
    })
    .unwrap();
    let (c2, s2, w2) = (count.clone(), stop.clone(), wid.clone());
    let boss = sim
        .spawn(Spawn::on_cpu(1), move |cx| {
            assert_eq!(dfly_core::current_cpu(), Some(cx.cpu()));
            let wid = loop {
                if let Some(w) = *w2.lock().unwrap() {
                    break w;
                }
                cx.yield_now();
            };
            cx.deschedule(wid).unwrap();
            cx.sleep(Duration::from_millis(1));
            let a = c2.load(Ordering::SeqCst);
            cx.sleep(Duration::from_millis(1));
            let b = c2.load(Ordering::SeqCst);
            cx.schedule(wid).unwrap();
            cx.sleep(Duration::from_millis(1));
            let c = c2.load(Ordering::SeqCst);
            s2.store(true, Ordering::SeqCst);
            (a, b, c)
        })
        .unwrap();
    let rep = sim.run().unwrap();
    assert_eq!(rep.live_threads, 0);
    let (a, b, c) = boss.try_join().unwrap();
    assert_eq!(a, b, "a descheduled thread does not run");
    assert!(c > b, "scheduling it again lets it run");
}

// ---- task cells -------------------------------------------------------------------------

#[test]
fn task_cells_give_each_result_once_and_drop_everything() {
    let drops = Arc::new(AtomicUsize::new(0));
    let mut sim = Machine::simulated(2, 5).unwrap();
    // Joined by try_join: once, then Taken.
    let d = drops.clone();
    let h = sim.spawn(Spawn::on_cpu(0), move |_| DropCount(d)).unwrap();
    assert!(matches!(h.try_join(), Err(JoinError::NotFinished)));
    // Detached (handle dropped before and after the thread runs), with results and
    // bodies of several cell sizes (cached classes and a large one).
    for i in 0..40usize {
        let d = drops.clone();
        let pad = [i as u8; 700];
        let big = i % 4 == 0;
        let hh = sim
            .spawn(Spawn::on_cpu(i % 2), move |cx| {
                cx.yield_now();
                if big {
                    black_box_len(&pad);
                }
                DropCount(d)
            })
            .unwrap();
        if i % 2 == 0 {
            drop(hh);
        } else {
            sim.run().unwrap();
            drop(hh);
        }
    }
    // A joiner on a CPU, across CPUs, of a thread that panics.
    let j = sim
        .spawn(Spawn::on_cpu(1), |cx| {
            let c = cx.spawn(Spawn::on_cpu(0), |_| -> u8 { panic!("cell") }).unwrap();
            matches!(cx.join(c), Err(JoinError::Panicked(_)))
        })
        .unwrap();
    sim.run().unwrap();
    assert!(j.try_join().unwrap());
    let r = h.try_join().unwrap();
    assert!(matches!(h.try_join(), Err(JoinError::Taken)));
    drop(r);
    assert_eq!(drops.load(Ordering::SeqCst), 41, "every result dropped exactly once");
    // A body that never runs is dropped when the machine stops.
    let d = drops.clone();
    let dc = DropCount(d);
    let never = sim
        .spawn(Spawn::on_cpu(0), move |_| {
            let _keep = &dc;
        })
        .unwrap();
    sim.stop();
    assert!(matches!(never.try_join(), Err(JoinError::Stopped)));
    assert_eq!(drops.load(Ordering::SeqCst), 42);
}

fn black_box_len(b: &[u8]) -> usize {
    std::hint::black_box(b).len()
}
