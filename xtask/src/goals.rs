//! The goals from the design briefs as data, and their evaluation against the records of
//! one run.
//!
//! Two kinds of goal:
//! - [`Goal::Ratio`]: the figure is `value(dfly) / value(peer)` for the same suite, case
//!   and metric, taken in the same run. For a higher-is-better metric the bound is a floor
//!   (`>= 3x ArrayQueue`), for a lower-is-better one a ceiling (`<= 1.15x the reference`).
//! - [`Goal::Absolute`]: the figure is one implementation's value (`p999_over_p50 <= 4`).
//!
//! A case ending in `*` matches every case with that prefix that has a record of the
//! goal's metric (one outcome per matched case); peer names match exactly. A record the
//! goal needs but the run did not produce makes the outcome `missing`: it is reported,
//! never dropped. Goals are a report: they never make a command fail.
//!
//! To add a subsystem's goals, write a table like [`IPI`] and list it in [`TABLES`].

use crate::report::{fmt_ratio, fmt_with_unit};
use crate::results::{Record, DFLY};

/// Which side of the bound the figure must be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// figure >= bound.
    AtLeast,
    /// figure <= bound.
    AtMost,
}

impl Cmp {
    /// `>=` or `<=`.
    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::AtLeast => ">=",
            Cmp::AtMost => "<=",
        }
    }

    /// Whether `figure` satisfies the bound (NaN never does).
    pub fn holds(self, figure: f64, bound: f64) -> bool {
        match self {
            Cmp::AtLeast => figure >= bound,
            Cmp::AtMost => figure <= bound,
        }
    }
}

/// One goal from a design brief.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// `value(dfly) / value(peer_impl) cmp bound`.
    Ratio {
        /// Bench suite.
        suite: &'static str,
        /// Case, or a prefix ending in `*`.
        case: &'static str,
        /// Metric.
        metric: &'static str,
        /// The peer's `impl` string, matched exactly.
        peer_impl: &'static str,
        /// Direction.
        cmp: Cmp,
        /// The bound on the ratio.
        bound: f64,
        /// Short human name.
        label: &'static str,
    },
    /// `value(impl_) cmp bound`.
    Absolute {
        /// Bench suite.
        suite: &'static str,
        /// Case, or a prefix ending in `*`.
        case: &'static str,
        /// Metric.
        metric: &'static str,
        /// Whose value (`dfly`).
        impl_: &'static str,
        /// Direction.
        cmp: Cmp,
        /// The bound on the value, in the record's unit.
        bound: f64,
        /// Short human name.
        label: &'static str,
    },
}

use Cmp::{AtLeast, AtMost};

/// A ratio goal (argument order reads like the brief: label, where, direction, bound, peer).
const fn ratio(
    label: &'static str,
    suite: &'static str,
    case: &'static str,
    metric: &'static str,
    cmp: Cmp,
    bound: f64,
    peer_impl: &'static str,
) -> Goal {
    Goal::Ratio { suite, case, metric, peer_impl, cmp, bound, label }
}

/// An absolute goal on dfly's own value.
const fn absolute(
    label: &'static str,
    suite: &'static str,
    case: &'static str,
    metric: &'static str,
    cmp: Cmp,
    bound: f64,
) -> Goal {
    Goal::Absolute { suite, case, metric, impl_: DFLY, cmp, bound, label }
}

/// Every goal table, in report order. Add a suite's table here.
pub const TABLES: &[&[Goal]] = &[IPI, LWKT, NAMECACHE, SLABALLOC];

/// dfly-ipi's goals (core-ipi.md, "Benchmarks and goals"), named as the ipi bench emits.
pub const IPI: &[Goal] = &[
    // Stream throughput, u64 and 24-byte payloads, batch 1 and 16 (higher is better).
    ratio(
        "stream vs reference ring",
        "ipi",
        "stream/*",
        "throughput",
        AtLeast,
        0.9,
        "reference-ring",
    ),
    ratio("stream vs rtrb", "ipi", "stream/*", "throughput", AtLeast, 1.0, "rtrb 0.4.1"),
    ratio(
        "stream vs ArrayQueue",
        "ipi",
        "stream/*",
        "throughput",
        AtLeast,
        3.0,
        "crossbeam-queue 0.3.14 ArrayQueue",
    ),
    ratio(
        "stream vs crossbeam-channel",
        "ipi",
        "stream/*",
        "throughput",
        AtLeast,
        4.0,
        "crossbeam-channel 0.5.17 bounded(256)",
    ),
    ratio(
        "stream vs tokio mpsc",
        "ipi",
        "stream/*",
        "throughput",
        AtLeast,
        8.0,
        "tokio 1.54.1 mpsc(256)",
    ),
    // Ping-pong round trip, busy-poll (lower is better).
    ratio(
        "pingpong p50 vs reference ring",
        "ipi",
        "pingpong",
        "rtt_p50",
        AtMost,
        1.15,
        "reference-ring",
    ),
    ratio(
        "pingpong p50 vs crossbeam bounded(1)",
        "ipi",
        "pingpong",
        "rtt_p50",
        AtMost,
        0.5,
        "crossbeam-channel 0.5.17 bounded(1)",
    ),
    absolute("pingpong p99.9 over own p50", "ipi", "pingpong", "p999_over_p50", AtMost, 4.0),
    // Oversubscribed: both ends on one core.
    absolute("oversubscribed slowdown", "ipi", "oversub/u64/batch1", "slowdown", AtMost, 2.0),
    absolute(
        "oversubscribed sched_yield",
        "ipi",
        "oversub/u64/batch1",
        "sched_yield_per_msg",
        AtMost,
        0.0,
    ),
    // Idle poll with nothing pending; the wildcard only matches records of `ns_per_poll`,
    // so it does not catch `idle_poll/spread` (metric `max_over_min`).
    absolute("idle poll cost", "ipi", "idle_poll/*", "ns_per_poll", AtMost, 5.0),
    absolute("idle poll flat in N", "ipi", "idle_poll/spread", "max_over_min", AtMost, 1.10),
    // Passive send.
    absolute("passive send cost", "ipi", "passive", "passive_over_active", AtMost, 0.3),
    absolute("passive send syscalls", "ipi", "passive", "syscalls_per_send", AtMost, 0.0),
    // Wakeups.
    absolute("sends avoiding a wakeup", "ipi", "wakeups", "avoided_pct", AtLeast, 99.0),
    absolute(
        "wake syscalls while awake",
        "ipi",
        "wakeups",
        "wake_syscalls_per_msg_awake",
        AtMost,
        0.0,
    ),
    // All-to-all request/reply.
    ratio(
        "all-to-all vs crossbeam inbox",
        "ipi",
        "all_to_all/N=2",
        "throughput",
        AtLeast,
        3.0,
        "crossbeam-channel 0.5.17 inbox",
    ),
];

/// dfly-lwkt's goals (lwkt.md, "Benchmarks and goals"; the idle line is the issue's
/// "an idle machine uses no CPU", read as at most 1% of one core).
pub const LWKT: &[Goal] = &[
    ratio(
        "local switch vs corosensei",
        "lwkt",
        "switch/local",
        "ns_per_switch",
        AtMost,
        2.0,
        "corosensei 0.3.4",
    ),
    ratio(
        "cross-CPU wake-to-run p50 vs futex",
        "lwkt",
        "wake/cross_cpu",
        "p50_ns",
        AtMost,
        1.2,
        "futex(2) raw",
    ),
    // ">= 2x faster" is a time ratio of at most 0.5.
    ratio(
        "spawn+run vs tokio chained_spawn",
        "lwkt",
        "spawn/chained",
        "ns_per_spawn",
        AtMost,
        0.5,
        "tokio 1.54.1 current_thread",
    ),
    ratio(
        "continuation blocking memory",
        "lwkt",
        "blocked/*",
        "resident_bytes_per_thread",
        AtMost,
        1.0 / 6.0,
        "dfly stackful tsleep",
    ),
    absolute("uncontended token", "lwkt", "token/uncontended", "ns_per_pair", AtMost, 10.0),
    absolute("idle machine CPU", "lwkt", "idle/2cpu", "cpu_ms_per_s", AtMost, 10.0),
];

/// dfly-namecache's goals (namecache.md, "Benchmarks and goals"; "4.5x faster than
/// fstatat" is a time ratio of at most 1/4.5).
pub const NAMECACHE: &[Goal] = &[
    absolute(
        "cached 6-component lookup, 10K",
        "namecache",
        "lookup/10k/depth6",
        "ns_per_lookup",
        AtMost,
        250.0,
    ),
    ratio(
        "6-component lookup vs fstatat",
        "namecache",
        "lookup/10k/depth6",
        "ns_per_lookup",
        AtMost,
        1.0 / 4.5,
        "fstatat(2)",
    ),
    ratio(
        "6-component lookup vs full-path HashMap",
        "namecache",
        "lookup/10k/depth6",
        "ns_per_lookup",
        AtMost,
        1.0,
        "RwLock<HashMap<PathBuf>>",
    ),
    absolute(
        "cached 6-component lookup, 1M",
        "namecache",
        "lookup/1m/depth6",
        "ns_per_lookup",
        AtMost,
        600.0,
    ),
    ratio(
        "negative hit vs positive hit",
        "namecache",
        "negative/10k/depth6",
        "ns_per_lookup",
        AtMost,
        1.1,
        "dfly positive hit",
    ),
    absolute("rename at any subtree size", "namecache", "rename/*", "us_per_rename", AtMost, 2.0),
    absolute("bytes per entry", "namecache", "memory/*", "bytes_per_entry", AtMost, 128.0),
    absolute(
        "negatives within cap + slack",
        "namecache",
        "negflood",
        "max_resident_over_bound",
        AtMost,
        1.0,
    ),
    // "Longest chain <= 8 after 10^7 create/rename-over iterations": the index is open
    // addressed, so its chain is the longest probe a hit needs.
    absolute(
        "longest index probe after 10^7 create/rename-over",
        "namecache",
        "churn",
        "longest_probe",
        AtMost,
        8.0,
    ),
];

/// dfly-slaballoc's goals (slaballoc.md, "Benchmarks and goals"), named as the slaballoc
/// bench emits. `dfly` is `SlabAlloc`, the process-wide instance in its default
/// configuration (per-zone remote free); the bench also records `dfly-perzone` and
/// `dfly-batched` in the cross-thread cases, to choose the default by. ">= 2x faster
/// than mimalloc" is a time ratio of at most 0.5.
pub const SLABALLOC: &[Goal] = &[
    ratio(
        "hot pair 64 B vs mimalloc",
        "slaballoc",
        "hot_pair/64",
        "ns_per_pair",
        AtMost,
        1.1,
        "mimalloc 0.1.52",
    ),
    ratio(
        "hot pair 64 B vs snmalloc",
        "slaballoc",
        "hot_pair/64",
        "ns_per_pair",
        AtMost,
        1.1,
        "snmalloc-rs 0.7.6",
    ),
    ratio(
        "hot pair 64 B vs glibc",
        "slaballoc",
        "hot_pair/64",
        "ns_per_pair",
        AtMost,
        0.75,
        "glibc (std System)",
    ),
    ratio(
        "producer/consumer 64 B vs snmalloc",
        "slaballoc",
        "prodcons/64",
        "ns_per_object",
        AtMost,
        2.2,
        "snmalloc-rs 0.7.6",
    ),
    ratio(
        "producer/consumer 64 B vs mimalloc",
        "slaballoc",
        "prodcons/64",
        "ns_per_object",
        AtMost,
        0.5,
        "mimalloc 0.1.52",
    ),
    absolute(
        "retain: freed memory returned within 1 s",
        "slaballoc",
        "retain",
        "returned_frac_1s",
        AtLeast,
        0.9,
    ),
    ratio(
        "single-thread peak RSS vs glibc",
        "slaballoc",
        "peak_rss",
        "peak_rss_mb",
        AtMost,
        1.25,
        "glibc (std System)",
    ),
    absolute("metadata, small classes", "slaballoc", "metadata/*", "meta_frac", AtMost, 0.005),
];

impl Goal {
    /// (label, suite, case pattern, metric, cmp, bound).
    fn parts(&self) -> (&'static str, &'static str, &'static str, &'static str, Cmp, f64) {
        match *self {
            Goal::Ratio { label, suite, case, metric, cmp, bound, .. }
            | Goal::Absolute { label, suite, case, metric, cmp, bound, .. } => {
                (label, suite, case, metric, cmp, bound)
            }
        }
    }

    /// The implementations whose records this goal reads.
    fn impls(&self) -> Vec<&'static str> {
        match *self {
            Goal::Ratio { peer_impl, .. } => vec![DFLY, peer_impl],
            Goal::Absolute { impl_, .. } => vec![impl_],
        }
    }

    /// The concrete cases this goal applies to. A wildcard that matches nothing yields the
    /// pattern itself, so the goal is reported as missing.
    fn cases(&self, records: &[Record]) -> Vec<String> {
        let (_, suite, case, metric, ..) = self.parts();
        let Some(prefix) = case.strip_suffix('*') else { return vec![case.to_string()] };
        let impls = self.impls();
        let mut cases: Vec<String> = Vec::new();
        for r in records {
            let relevant = r.suite == suite
                && r.metric == metric
                && r.case.starts_with(prefix)
                && impls.contains(&r.impl_.as_str());
            if relevant && !cases.contains(&r.case) {
                cases.push(r.case.clone());
            }
        }
        if cases.is_empty() {
            cases.push(case.to_string());
        }
        cases
    }
}

/// Met, not met, or a record missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The figure is on the right side of the bound.
    Met,
    /// It is not.
    NotMet,
    /// A record the goal needs is absent.
    Missing,
}

impl Status {
    /// `met`, `NOT MET`, `missing`.
    pub fn word(self) -> &'static str {
        match self {
            Status::Met => "met",
            Status::NotMet => "NOT MET",
            Status::Missing => "missing",
        }
    }
}

/// One implementation's value in an outcome, if its record exists.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    /// The `impl` string.
    pub impl_: String,
    /// Value and unit, or `None` when the record is missing.
    pub value: Option<(f64, String)>,
}

impl Side {
    fn lookup(records: &[Record], suite: &str, case: &str, metric: &str, impl_: &str) -> Side {
        let found = records.iter().rev().find(|r| r.is(suite, case, metric) && r.impl_ == impl_);
        Side { impl_: impl_.to_string(), value: found.map(|r| (r.value, r.unit.clone())) }
    }

    /// `dfly 12.3ns`, or `dfly missing`.
    pub fn render(&self) -> String {
        match &self.value {
            Some((v, unit)) => format!("{} {}", self.impl_, fmt_with_unit(*v, unit)),
            None => format!("{} missing", self.impl_),
        }
    }
}

/// A goal evaluated for one case.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The goal's label.
    pub label: String,
    /// Suite.
    pub suite: String,
    /// The concrete case (or the unmatched pattern).
    pub case: String,
    /// Metric.
    pub metric: String,
    /// dfly's value (or the absolute goal's implementation).
    pub subject: Side,
    /// The peer, for ratio goals.
    pub peer: Option<Side>,
    /// The ratio or the absolute value, when computable.
    pub figure: Option<f64>,
    /// Direction.
    pub cmp: Cmp,
    /// Bound.
    pub bound: f64,
    /// Verdict.
    pub status: Status,
}

impl Outcome {
    /// `>= 0.9x` for ratio goals, `<= 5ns` for absolute ones.
    pub fn goal_text(&self) -> String {
        match (&self.peer, &self.subject.value) {
            (Some(_), _) => format!("{} {}x", self.cmp.symbol(), self.bound),
            (None, Some((_, unit))) => {
                format!("{} {}", self.cmp.symbol(), fmt_with_unit(self.bound, unit))
            }
            (None, None) => format!("{} {}", self.cmp.symbol(), self.bound),
        }
    }

    /// `0.95x`, or `-` when not computable (ratio goals only).
    pub fn ratio_text(&self) -> String {
        self.figure.map_or_else(|| "-".to_string(), fmt_ratio)
    }

    /// The terminal line:
    /// `GOAL <label> | <case> <metric> | dfly <v> | <peer> <v> | ratio <r>x | goal >= 1x | met`
    /// (absolute goals have no peer and ratio parts).
    pub fn line(&self) -> String {
        let mut parts = vec![
            format!("GOAL {}", self.label),
            format!("{} {}", self.case, self.metric),
            self.subject.render(),
        ];
        if let Some(peer) = &self.peer {
            parts.push(peer.render());
            parts.push(format!("ratio {}", self.ratio_text()));
        }
        parts.push(format!("goal {}", self.goal_text()));
        parts.push(self.status.word().to_string());
        parts.join(" | ")
    }
}

/// Evaluates every goal of `tables` against `records`: one outcome per goal and matched case.
pub fn evaluate(tables: &[&[Goal]], records: &[Record]) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for goal in tables.iter().flat_map(|table| table.iter()) {
        let (label, suite, _, metric, cmp, bound) = goal.parts();
        for case in goal.cases(records) {
            let (subject, peer) = match *goal {
                Goal::Ratio { peer_impl, .. } => (
                    Side::lookup(records, suite, &case, metric, DFLY),
                    Some(Side::lookup(records, suite, &case, metric, peer_impl)),
                ),
                Goal::Absolute { impl_, .. } => {
                    (Side::lookup(records, suite, &case, metric, impl_), None)
                }
            };
            let own = subject.value.as_ref().map(|(v, _)| *v);
            let figure = match &peer {
                Some(peer) => own.zip(peer.value.as_ref().map(|(v, _)| *v)).map(|(a, b)| a / b),
                None => own,
            };
            let status = match figure {
                None => Status::Missing,
                Some(f) if cmp.holds(f, bound) => Status::Met,
                Some(_) => Status::NotMet,
            };
            outcomes.push(Outcome {
                label: label.to_string(),
                suite: suite.to_string(),
                case,
                metric: metric.to_string(),
                subject,
                peer,
                figure,
                cmp,
                bound,
                status,
            });
        }
    }
    outcomes
}

/// `goals: X met, Y not met, Z missing`.
pub fn summary(outcomes: &[Outcome]) -> String {
    let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    format!(
        "goals: {} met, {} not met, {} missing",
        count(Status::Met),
        count(Status::NotMet),
        count(Status::Missing)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::tests::rec;

    fn throughput(case: &str, impl_: &str, value: f64) -> Record {
        Record {
            unit: "Mmsg/s".into(),
            lower_is_better: false,
            ..rec("ipi", case, impl_, "throughput", value)
        }
    }

    #[test]
    fn ratio_wildcard_matches_each_case_and_reports_missing_peers() {
        let records = vec![
            throughput("stream/u64/batch1", "dfly", 100.0),
            throughput("stream/u64/batch1", "rtrb 0.4.1", 80.0),
            throughput("stream/24B/batch1", "dfly", 50.0),
            throughput("stream/24B/batch1", "rtrb 0.4.1", 60.0),
            throughput("stream/u64/batch16", "dfly", 300.0),
            throughput("pingpong", "dfly", 1.0),
        ];
        let table = [ratio("vs rtrb", "ipi", "stream/*", "throughput", AtLeast, 1.0, "rtrb 0.4.1")];
        let out = evaluate(&[&table], &records);
        let got: Vec<(&str, Status)> = out.iter().map(|o| (o.case.as_str(), o.status)).collect();
        assert_eq!(
            got,
            [
                ("stream/u64/batch1", Status::Met),
                ("stream/24B/batch1", Status::NotMet),
                ("stream/u64/batch16", Status::Missing),
            ]
        );
        assert_eq!(out[0].figure, Some(1.25));
        assert_eq!(
            out[0].line(),
            "GOAL vs rtrb | stream/u64/batch1 throughput | dfly 100 Mmsg/s | rtrb 0.4.1 80 Mmsg/s \
             | ratio 1.25x | goal >= 1x | met"
        );
        assert_eq!(
            out[2].line(),
            "GOAL vs rtrb | stream/u64/batch16 throughput | dfly 300 Mmsg/s | rtrb 0.4.1 missing \
             | ratio - | goal >= 1x | missing"
        );
        assert_eq!(summary(&out), "goals: 1 met, 1 not met, 1 missing");
    }

    #[test]
    fn absolute_goals_and_wildcards_filter_by_metric() {
        let records = vec![
            rec("ipi", "idle_poll/N=2", "dfly", "ns_per_poll", 3.0),
            rec("ipi", "idle_poll/N=64", "dfly", "ns_per_poll", 6.5),
            Record {
                unit: "x".into(),
                ..rec("ipi", "idle_poll/spread", "dfly", "max_over_min", 1.05)
            },
            rec("ipi", "idle_poll/N=2", "reference-ring", "ns_per_poll", 1.0),
        ];
        let table = [
            absolute("idle cost", "ipi", "idle_poll/*", "ns_per_poll", AtMost, 5.0),
            absolute("flat", "ipi", "idle_poll/spread", "max_over_min", AtMost, 1.10),
        ];
        let out = evaluate(&[&table], &records);
        let got: Vec<(&str, Status)> = out.iter().map(|o| (o.case.as_str(), o.status)).collect();
        assert_eq!(
            got,
            [
                ("idle_poll/N=2", Status::Met),
                ("idle_poll/N=64", Status::NotMet),
                ("idle_poll/spread", Status::Met),
            ]
        );
        assert_eq!(
            out[0].line(),
            "GOAL idle cost | idle_poll/N=2 ns_per_poll | dfly 3ns | goal <= 5ns | met"
        );
        assert_eq!(out[2].goal_text(), "<= 1.1x");
    }

    #[test]
    fn unmatched_wildcard_and_zero_bounds() {
        let records = vec![rec("ipi", "passive", "dfly", "syscalls_per_send", 0.0)];
        let table = [
            absolute("syscalls", "ipi", "passive", "syscalls_per_send", AtMost, 0.0),
            absolute("idle", "ipi", "idle_poll/*", "ns_per_poll", AtMost, 5.0),
            ratio("a2a", "ipi", "all_to_all/N=2", "throughput", AtLeast, 3.0, "inbox"),
        ];
        let out = evaluate(&[&table], &records);
        assert_eq!(out[0].status, Status::Met);
        assert_eq!((out[1].case.as_str(), out[1].status), ("idle_poll/*", Status::Missing));
        assert_eq!(
            out[1].line(),
            "GOAL idle | idle_poll/* ns_per_poll | dfly missing | goal <= 5 | missing"
        );
        assert_eq!(out[2].status, Status::Missing);
    }

    #[test]
    fn lookup_uses_the_last_duplicate() {
        let records = vec![
            rec("ipi", "pingpong", "dfly", "p999_over_p50", 9.0),
            rec("ipi", "pingpong", "dfly", "p999_over_p50", 3.0),
        ];
        let table = [absolute("tail", "ipi", "pingpong", "p999_over_p50", AtMost, 4.0)];
        assert_eq!(evaluate(&[&table], &records)[0].status, Status::Met);
    }

    #[test]
    fn the_ipi_table_is_well_formed() {
        for goal in TABLES.iter().flat_map(|t| t.iter()) {
            let (label, suite, case, metric, _, bound) = goal.parts();
            assert!(!label.contains('|') && !label.is_empty(), "{goal:?}");
            assert!(!suite.is_empty() && !case.is_empty() && !metric.is_empty(), "{goal:?}");
            assert!(bound.is_finite(), "{goal:?}");
        }
        assert_eq!(IPI.len(), 17);
    }

    #[test]
    fn slaballoc_goals_name_what_the_bench_emits() {
        let bench = std::fs::read_to_string(
            crate::cmd::root().join("benches").join("benches").join("slaballoc.rs"),
        )
        .unwrap();
        for goal in SLABALLOC {
            let (label, suite, case, metric, ..) = goal.parts();
            assert_eq!(suite, "slaballoc", "{label}");
            let stem = case.trim_end_matches('*').split('/').next().unwrap();
            assert!(bench.contains(stem), "{label}: the bench has no case {case}");
            assert!(bench.contains(&format!("\"{metric}")), "{label}: no metric {metric}");
            if let Goal::Ratio { peer_impl, .. } = goal {
                assert!(
                    bench.contains(&format!("\"{peer_impl}\"")),
                    "{label}: no peer {peer_impl}"
                );
            }
        }
    }
}
