//! Tests of the scheduler tick and the preemption point [`Ctx::maybe_yield`]: round
//! robin among equals at a tick on a real CPU, no switch when alone, a higher
//! priority thread running at the next preemption point, busy-waits under
//! simulation (across CPUs and on one CPU), and stop with a looping thread.
//!
//! Nothing here asserts on timing: every wait has a generous deadline that only a
//! broken scheduler reaches.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::*;

/// Bound for anything that should take milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

/// CPU 0's stats once `done` says they are complete (a CPU publishes when it
/// parks, so an idle CPU's snapshot is up to date).
fn settled_stats(m: &Machine, done: impl Fn(&SchedStats) -> bool) -> SchedStats {
    let t0 = Instant::now();
    loop {
        let st = m.stats()[0];
        if done(&st) || t0.elapsed() > PATIENCE {
            return st;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn zero_tick_is_refused() {
    let r = Machine::builder().cpus(1).tick(Duration::ZERO).build();
    assert!(matches!(r, Err(MachineError::ZeroTick)), "{r:?}");
}

#[test]
fn equal_priority_loops_take_turns_at_each_tick() {
    // Three threads of one priority on one CPU, each looping on maybe_yield until
    // it has seen both others make progress during its own loop: only the tick's
    // rotation can let them (maybe_yield never hands the CPU to an equal before).
    const N: usize = 3;
    let mut m = Machine::builder().cpus(1).tick(Duration::from_millis(1)).build().unwrap();
    let counts: Arc<[AtomicU64; N]> = Arc::new(Default::default());
    // One deadline for all, so a failure costs PATIENCE once.
    let t0 = Instant::now();
    let parent = m
        .spawn(Spawn::on_cpu(0).priority(Priority::KERNEL), move |cx| {
            let hs: Vec<_> = (0..N)
                .map(|i| {
                    let counts = counts.clone();
                    cx.spawn(Spawn::on_cpu(0), move |cx| {
                        let start: Vec<u64> =
                            counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
                        let mut calls = 0u64;
                        loop {
                            counts[i].fetch_add(1, Ordering::Relaxed);
                            let seen = (0..N)
                                .filter(|&j| j != i)
                                .all(|j| counts[j].load(Ordering::Relaxed) != start[j]);
                            if seen {
                                return Ok(calls);
                            }
                            if calls % 1024 == 0 && t0.elapsed() > PATIENCE {
                                return Err(format!("thread {i} never saw the others run"));
                            }
                            cx.maybe_yield();
                            calls += 1;
                        }
                    })
                    .unwrap()
                })
                .collect();
            hs.into_iter().map(|h| cx.join(h).unwrap()).collect::<Vec<_>>()
        })
        .unwrap();
    for r in parent.join_blocking().unwrap() {
        r.unwrap();
    }
    // Each thread saw the others mid-loop, so the CPU went round at least once
    // past the first thread: two rotations at the very least.
    let st = settled_stats(&m, |s| s.tick_rotations >= 2);
    assert!(st.tick_rotations >= 2, "{st:?}");
    assert!(st.ticks >= st.tick_rotations, "{st:?}");
    m.stop().unwrap();
}

#[test]
fn maybe_yield_alone_never_switches() {
    let mut m = Machine::builder().cpus(1).tick(Duration::from_millis(1)).build().unwrap();
    let h = m
        .spawn(Spawn::on_cpu(0), |cx| {
            // Long enough for several ticks, none of which has anyone to rotate to.
            let t0 = Instant::now();
            let mut calls = 0u64;
            while t0.elapsed() < Duration::from_millis(20) {
                for _ in 0..64 {
                    cx.maybe_yield();
                }
                calls += 64;
            }
            calls
        })
        .unwrap();
    assert!(h.join_blocking().unwrap() > 0);
    let st = settled_stats(&m, |s| s.threads_exited == 1);
    assert_eq!(st.threads_exited, 1, "{st:?}");
    assert_eq!(st.preempts, 0, "{st:?}");
    assert_eq!(st.tick_rotations, 0, "{st:?}");
    assert_eq!(st.switches, 1, "resumed once, never switched away: {st:?}");
    m.stop().unwrap();
}

#[test]
fn a_spawned_higher_priority_thread_runs_at_the_next_preemption_point() {
    let mut m = Machine::builder().cpus(1).build().unwrap();
    let h = m
        .spawn(Spawn::on_cpu(0), |cx| {
            let progress = Arc::new(AtomicU64::new(0));
            let mut high = None;
            for i in 1..=5000 {
                progress.store(i, Ordering::Relaxed);
                if i == 1000 {
                    let p = progress.clone();
                    let opts = Spawn::on_cpu(0).priority(Priority::SOFT);
                    high = Some(cx.spawn(opts, move |_| p.load(Ordering::Relaxed)).unwrap());
                }
                cx.maybe_yield();
            }
            cx.join(high.unwrap()).unwrap()
        })
        .unwrap();
    assert_eq!(h.join_blocking().unwrap(), 1000, "the high thread ran at the next point");
    m.stop().unwrap();
}

#[test]
fn a_woken_higher_priority_thread_runs_while_a_lower_one_loops() {
    // The high thread sleeps; a foreign thread wakes it once the low thread is
    // looping. The low thread loops until it sees the high one has run, so it
    // finishes only if maybe_yield let the woken thread in.
    let mut m = Machine::builder().cpus(1).build().unwrap();
    let flag = Arc::new(AtomicBool::new(false));
    let high_ran = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let (f, hr, p) = (flag.clone(), high_ran.clone(), progress.clone());
    let high = m
        .spawn(Spawn::on_cpu(0).priority(Priority::SOFT), move |cx| {
            cx.tsleep_until(ident_of(&*f), Some(PATIENCE), || f.load(Ordering::SeqCst)).unwrap();
            hr.store(true, Ordering::SeqCst);
            p.load(Ordering::Relaxed)
        })
        .unwrap();
    let (hr, p) = (high_ran.clone(), progress.clone());
    let low = m
        .spawn(Spawn::on_cpu(0), move |cx| {
            let t0 = Instant::now();
            let mut i = 0u64;
            while !hr.load(Ordering::SeqCst) {
                i += 1;
                p.store(i, Ordering::Relaxed);
                if i % 1024 == 0 && t0.elapsed() > PATIENCE {
                    return Err("the woken thread never ran");
                }
                cx.maybe_yield();
            }
            Ok(i)
        })
        .unwrap();
    let t0 = Instant::now();
    while progress.load(Ordering::Relaxed) == 0 {
        assert!(t0.elapsed() < PATIENCE, "the low thread never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    flag.store(true, Ordering::SeqCst);
    m.wakeup(ident_of(&*flag));
    let seen_by_high = high.join_blocking().unwrap();
    let low_end = low.join_blocking().unwrap().unwrap();
    assert!(seen_by_high >= 1 && seen_by_high <= low_end, "{seen_by_high} vs {low_end}");
    m.stop().unwrap();
}

/// CPU 0 busy-waits on a flag that a thread on CPU 1 sets after a virtual sleep;
/// returns the trace hash and the step count.
fn busy_wait_across_cpus(seed: u64) -> (u64, u64) {
    let mut sim = Machine::simulated(2, seed).unwrap();
    sim.set_step_limit(1_000_000);
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let waiter = sim
        .spawn(Spawn::on_cpu(0), move |cx| {
            let mut spins = 0u64;
            while !f.load(Ordering::SeqCst) {
                cx.maybe_yield();
                spins += 1;
            }
            spins
        })
        .unwrap();
    let f = flag.clone();
    sim.spawn(Spawn::on_cpu(1), move |cx| {
        cx.sleep(Duration::from_micros(50));
        f.store(true, Ordering::SeqCst);
    })
    .unwrap();
    let rep = sim.run().unwrap();
    assert_eq!(rep.live_threads, 0);
    assert!(waiter.try_join().unwrap() > 0, "the waiter should have spun");
    (sim.trace_hash(), sim.steps())
}

#[test]
fn simulated_busy_wait_on_another_cpus_flag_completes_deterministically() {
    for seed in 0..4 {
        assert_eq!(busy_wait_across_cpus(seed), busy_wait_across_cpus(seed), "seed {seed}");
    }
}

#[test]
fn simulated_busy_wait_on_an_equal_of_the_same_cpu_is_rotated_at_a_tick() {
    // The waiter runs first and never blocks; the setter, of the same priority on
    // the same CPU, gets the CPU only when a tick (10 ms of virtual time) rotates
    // the waiter behind it.
    let run = |seed| {
        let mut sim = Machine::simulated(1, seed).unwrap();
        sim.set_step_limit(1_000_000);
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        sim.spawn(Spawn::on_cpu(0), move |cx| {
            while !f.load(Ordering::SeqCst) {
                cx.maybe_yield();
            }
        })
        .unwrap();
        let f = flag.clone();
        sim.spawn(Spawn::on_cpu(0), move |_| f.store(true, Ordering::SeqCst)).unwrap();
        let rep = sim.run().unwrap();
        assert_eq!(rep.live_threads, 0);
        assert!(rep.now.as_nanos() >= DEFAULT_TICK.as_nanos() as u64, "{rep:?}");
        (sim.trace_hash(), rep.steps, sim.handle().stats()[0].tick_rotations)
    };
    let a = run(3);
    assert_eq!(a, run(3));
    assert_eq!(a.2, 1, "one rotation lets the setter in");
}

#[test]
fn stop_ends_a_thread_looping_on_maybe_yield() {
    let mut m = Machine::builder().cpus(1).build().unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let h = m
        .spawn(Spawn::on_cpu(0), move |cx| loop {
            s.store(true, Ordering::SeqCst);
            cx.maybe_yield();
        })
        .unwrap();
    let t0 = Instant::now();
    while !started.load(Ordering::SeqCst) {
        assert!(t0.elapsed() < PATIENCE, "the looping thread never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    m.stop().unwrap();
    assert!(matches!(h.join_blocking(), Err(JoinError::Stopped)));
}

#[test]
fn slow_loops_are_rotated_too() {
    // Each iteration spins ~200 us, so 16 calls (one clock read) span more than
    // three 1 ms ticks: the tick must still rotate a thread that reads the clock
    // that rarely, or the other never runs.
    let mut m = Machine::builder().cpus(1).tick(Duration::from_millis(1)).build().unwrap();
    let counts: Arc<[AtomicU64; 2]> = Arc::new(Default::default());
    let t0 = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|i| {
            let counts = counts.clone();
            m.spawn(Spawn::on_cpu(0), move |cx| {
                let other = counts[1 - i].load(Ordering::Relaxed);
                loop {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                    if counts[1 - i].load(Ordering::Relaxed) != other {
                        return Ok(());
                    }
                    if t0.elapsed() > PATIENCE {
                        return Err(format!("thread {i} never saw the other run"));
                    }
                    let spin = Instant::now();
                    while spin.elapsed() < Duration::from_micros(200) {
                        core::hint::spin_loop();
                    }
                    cx.maybe_yield();
                }
            })
            .unwrap()
        })
        .collect();
    for h in hs {
        h.join_blocking().unwrap().unwrap();
    }
    m.stop().unwrap();
}
