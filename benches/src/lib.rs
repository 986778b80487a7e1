//! Shared harness for dfly's side-by-side benchmarks.
//!
//! Each bench binary (`benches/benches/<suite>.rs`, `harness = false`) measures dfly
//! and its peers in the same process run and appends result records, one JSON object
//! per line, to the file named by `DFLY_BENCH_OUT` (or prints them when unset).
//! `cargo xtask bench` collects them into `target/bench/results.json` and checks the
//! goals. Progress goes to stderr.
//!
//! Also here: the run mode from the command line, medians and percentiles, thread
//! pinning, and [`refring`], the minimal reference SPSC ring that stands for the
//! hardware floor.

pub mod refring;

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

/// How long to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `--test`: every case once, tiny sizes, only to prove the benches run.
    Test,
    /// `--quick` (default): the whole suite in a few minutes.
    Quick,
    /// `--full`: longer runs and more repetitions.
    Full,
}

impl Mode {
    /// Reads the mode from the process arguments (cargo adds `--bench`; unknown
    /// arguments are ignored).
    pub fn from_args() -> Mode {
        let args: Vec<String> = std::env::args().collect();
        if args.iter().any(|a| a == "--test") {
            Mode::Test
        } else if args.iter().any(|a| a == "--full") {
            Mode::Full
        } else {
            Mode::Quick
        }
    }

    /// Scales a quick-mode count: `test` is tiny, `full` is 3x.
    pub fn scale(self, quick: u64) -> u64 {
        match self {
            Mode::Test => (quick / 1000).max(64),
            Mode::Quick => quick,
            Mode::Full => quick * 3,
        }
    }

    /// Repetitions per case (the median is reported).
    pub fn reps(self) -> usize {
        match self {
            Mode::Test => 1,
            Mode::Quick => 5,
            Mode::Full => 15,
        }
    }
}

/// Writes result records.
#[derive(Debug)]
pub struct Recorder {
    suite: &'static str,
    out: Option<std::fs::File>,
    count: usize,
}

impl Recorder {
    /// A recorder for `suite`, appending to `$DFLY_BENCH_OUT` if set.
    pub fn new(suite: &'static str) -> Recorder {
        let out = std::env::var_os("DFLY_BENCH_OUT").map(|p| {
            std::fs::OpenOptions::new().create(true).append(true).open(&p).unwrap_or_else(|e| {
                panic!("cannot open DFLY_BENCH_OUT {}: {e}", p.to_string_lossy())
            })
        });
        Recorder { suite, out, count: 0 }
    }

    /// Records one measurement.
    pub fn record(
        &mut self,
        case: &str,
        imp: &str,
        metric: &str,
        value: f64,
        unit: &str,
        lower_is_better: bool,
    ) {
        let mut line = String::new();
        let _ = write!(
            line,
            "{{\"suite\":{},\"case\":{},\"impl\":{},\"metric\":{},\"value\":{},\"unit\":{},\"lower_is_better\":{}}}",
            json_str(self.suite),
            json_str(case),
            json_str(imp),
            json_str(metric),
            if value.is_finite() { value } else { -1.0 },
            json_str(unit),
            lower_is_better
        );
        match &mut self.out {
            Some(f) => {
                let _ = writeln!(f, "{line}");
            }
            None => println!("{line}"),
        }
        self.count += 1;
        eprintln!("    {case:<28} {imp:<42} {metric:<28} {value:>12.3} {unit}");
    }

    /// Records written so far.
    pub fn count(&self) -> usize {
        self.count
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Prints a progress line to stderr.
pub fn progress(msg: &str) {
    eprintln!("[{:>7.1}s] {msg}", started().elapsed().as_secs_f64());
}

fn started() -> Instant {
    static T: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *T.get_or_init(Instant::now)
}

/// The median of `v` (sorted in place). NaN if empty.
pub fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

/// The `q` quantile of `v` (sorted in place; nearest rank). NaN if empty.
pub fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The machine's core count, read once at the first call. Call it before pinning
/// any thread: afterwards the OS reports only the pinned thread's cores.
pub fn cores() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(dfly_core::affinity::available_cores)
}

/// Pins the calling thread to `core` modulo [`cores`]; ignores errors (an unpinned
/// run is still a valid, noisier run).
pub fn pin(core: usize) {
    let _ = dfly_core::affinity::pin_current_thread(core % cores().max(1));
}

/// Nanoseconds since an arbitrary process epoch (benchmarks may read the OS clock
/// directly; library crates may not).
#[inline]
pub fn now_ns() -> u64 {
    u64::try_from(started().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(median(&mut v), 3.0);
        assert_eq!(percentile(&mut v, 1.0), 5.0);
        assert_eq!(percentile(&mut v, 0.0), 1.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn json_escaping() {
        assert_eq!(json_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
