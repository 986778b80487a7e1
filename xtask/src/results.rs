//! The results schema (overview.md, "Results schema"): the records bench binaries append
//! to `$DFLY_BENCH_OUT` as JSON lines, and `target/bench/results.json` that collects them.
//!
//! A record, one per line:
//! `{"suite":"ipi","case":"stream/u64/batch1","impl":"dfly","metric":"throughput",
//!   "value":123.4,"unit":"Mmsg/s","lower_is_better":false}`
//! where `impl` is `dfly` or a peer's crate name with version. Unknown extra fields are
//! ignored; a line that does not parse is reported with its file and line and skipped.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::machine::Machine;

/// The `impl` of our own implementation; every other `impl` is a peer.
pub const DFLY: &str = "dfly";

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Bench target that produced it (`ipi`, `lwkt`, ...).
    pub suite: String,
    /// Case within the suite, `/`-separated (`stream/u64/batch1`).
    pub case: String,
    /// `dfly` or the peer's crate name with version.
    #[serde(rename = "impl")]
    pub impl_: String,
    /// What was measured (`throughput`, `rtt_p50`, ...).
    pub metric: String,
    /// The number.
    pub value: f64,
    /// Its unit (`Mmsg/s`, `ns`, `x`, `%`).
    pub unit: String,
    /// Whether smaller values are better.
    pub lower_is_better: bool,
}

impl Record {
    /// Whether this record is about `suite`/`case`/`metric`.
    pub fn is(&self, suite: &str, case: &str, metric: &str) -> bool {
        self.suite == suite && self.case == case && self.metric == metric
    }
}

/// `target/bench/results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// What the numbers were measured on.
    pub machine: Machine,
    /// `quick` or `full`.
    pub mode: String,
    /// UTC, ISO 8601 (`date -u +%FT%TZ`).
    pub date: String,
    /// Every record, in the order the suites produced them.
    pub results: Vec<Record>,
}

impl Results {
    /// Reads `results.json`.
    pub fn load(path: &Path) -> Result<Results> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes `results.json`, pretty-printed.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// Parses JSON-lines `text` read from `origin` (a path, for messages). Returns the good
/// records and one `origin:line: why` message per skipped line.
pub fn parse_jsonl(text: &str, origin: &str) -> (Vec<Record>, Vec<String>) {
    let (mut records, mut problems) = (Vec::new(), Vec::new());
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = format!("{origin}:{}", index + 1);
        match serde_json::from_str::<Record>(line) {
            Err(err) => problems.push(format!("{at}: malformed record skipped: {err}")),
            Ok(r) if [&r.suite, &r.case, &r.impl_, &r.metric].iter().any(|s| s.is_empty()) => {
                problems.push(format!("{at}: record with an empty suite/case/impl/metric skipped"))
            }
            Ok(r) if !r.value.is_finite() => {
                problems.push(format!("{at}: record with a non-finite value skipped"))
            }
            Ok(r) => records.push(r),
        }
    }
    (records, problems)
}

/// The records of a new run merged into the previous results: records of the suites that
/// ran are replaced, records of other suites are kept (running `bench ipi` does not
/// erase `lwkt`). `old` may be empty.
pub fn merge(old: Vec<Record>, new: Vec<Record>, ran: &[String]) -> Vec<Record> {
    let mut merged: Vec<Record> = old.into_iter().filter(|r| !ran.contains(&r.suite)).collect();
    merged.extend(new);
    merged
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn rec(suite: &str, case: &str, impl_: &str, metric: &str, value: f64) -> Record {
        Record {
            suite: suite.into(),
            case: case.into(),
            impl_: impl_.into(),
            metric: metric.into(),
            value,
            unit: "ns".into(),
            lower_is_better: true,
        }
    }

    #[test]
    fn parses_good_lines_and_reports_bad_ones() {
        let text = r#"{"suite":"ipi","case":"stream/u64/batch1","impl":"dfly","metric":"throughput","value":123.4,"unit":"Mmsg/s","lower_is_better":false}

{"suite":"ipi","case":"pingpong","impl":"dfly","metric":"rtt_p50"
{"suite":"ipi","case":"pingpong","impl":"rtrb 0.4.1","metric":"rtt_p50","value":80,"unit":"ns","lower_is_better":true,"extra":1}
{"suite":"","case":"x","impl":"dfly","metric":"m","value":1,"unit":"ns","lower_is_better":true}
"#;
        let (records, problems) = parse_jsonl(text, "raw-ipi.jsonl");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].impl_, "dfly");
        assert_eq!(records[0].value, 123.4);
        assert!(!records[0].lower_is_better);
        assert_eq!(records[1].value, 80.0);
        assert_eq!(problems.len(), 2);
        assert!(problems[0].starts_with("raw-ipi.jsonl:3: malformed record"), "{problems:?}");
        assert!(problems[1].starts_with("raw-ipi.jsonl:5: "), "{problems:?}");
    }

    #[test]
    fn record_round_trips_with_impl_key() {
        let r = rec("ipi", "pingpong", "dfly", "rtt_p50", 50.0);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"impl\":\"dfly\""), "{json}");
        assert_eq!(serde_json::from_str::<Record>(&json).unwrap(), r);
    }

    #[test]
    fn merge_replaces_only_the_suites_that_ran() {
        let old = vec![rec("ipi", "a", "dfly", "m", 1.0), rec("lwkt", "b", "dfly", "m", 2.0)];
        let new = vec![rec("ipi", "a", "dfly", "m", 3.0)];
        let merged = merge(old, new, &["ipi".to_string()]);
        assert_eq!(merged, [rec("lwkt", "b", "dfly", "m", 2.0), rec("ipi", "a", "dfly", "m", 3.0)]);
    }
}
