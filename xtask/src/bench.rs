//! `cargo xtask bench [--quick|--full] [suite ...]` and `cargo xtask bench --report-only`.
//!
//! The suites are the `[[bench]]` targets of `benches/Cargo.toml`. The run:
//! 1. prints the machine line, then builds every bench in release once;
//! 2. runs each suite as `cargo bench -p dfly-benches --bench <suite> -- --quick|--full`
//!    with `DFLY_BENCH_OUT=<abs>/target/bench/raw-<suite>.jsonl`, streaming its output;
//!    the bench appends one JSON record per line (see [`crate::results`]);
//! 3. collects the records into `target/bench/results.json`, replacing the records of the
//!    suites that ran and keeping those of the others when only some suites ran;
//! 4. prints the comparison table and the goal lines and writes `report.md` and the SVGs.
//!
//! A suite that fails is reported and the others still run; the command then exits
//! non-zero. Goals not met never fail the command: they are a report.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, fmt_duration};
use crate::machine::Machine;
use crate::manifest::Manifest;
use crate::report;
use crate::results::{self, Record, Results};

/// The package that holds the bench targets.
const BENCH_PACKAGE: &str = "dfly-benches";

/// What the command line asked for.
#[derive(Debug, Default, PartialEq)]
struct Options {
    full: bool,
    report_only: bool,
    suites: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut opts = Options::default();
    for arg in args {
        match arg.as_str() {
            "--full" => opts.full = true,
            "--quick" => opts.full = false,
            "--report-only" => opts.report_only = true,
            flag if flag.starts_with('-') => {
                bail!("unknown flag `{flag}` (bench takes --quick, --full, --report-only and suite names)")
            }
            suite => {
                if !opts.suites.iter().any(|s| s == suite) {
                    opts.suites.push(suite.to_string());
                }
            }
        }
    }
    if opts.report_only && (opts.full || !opts.suites.is_empty()) {
        bail!(
            "--report-only reads target/bench/results.json as it is; it takes no suites or --full"
        );
    }
    Ok(opts)
}

/// The suite names: `[[bench]] name = ...` in `benches/Cargo.toml`.
pub fn suites(root: &Path) -> Result<Vec<String>> {
    let manifest = Manifest::read(&root.join("benches").join("Cargo.toml"))?;
    let names = manifest.array_table_values("bench", "name");
    if names.is_empty() {
        bail!("benches/Cargo.toml declares no [[bench]] targets");
    }
    Ok(names)
}

/// The requested suites in the order given, or all of them; unknown names are an error
/// that lists the valid ones.
fn select(available: &[String], requested: &[String]) -> Result<Vec<String>> {
    if requested.is_empty() {
        return Ok(available.to_vec());
    }
    let unknown: Vec<&String> = requested.iter().filter(|s| !available.contains(s)).collect();
    if !unknown.is_empty() {
        let unknown: Vec<String> = unknown.iter().map(|s| format!("`{s}`")).collect();
        bail!(
            "unknown suite {}; the suites are: {} ([[bench]] targets in benches/Cargo.toml)",
            unknown.join(", "),
            available.join(", ")
        );
    }
    Ok(requested.to_vec())
}

/// Entry point of `cargo xtask bench`.
pub fn main(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let root = cmd::root();
    let dir = root.join("target").join("bench");
    let results_path = dir.join("results.json");

    if opts.report_only {
        let results = Results::load(&results_path)
            .context("--report-only needs the results.json of an earlier `cargo xtask bench`")?;
        println!("{}", results.machine.line());
        println!(
            "mode: {} | date: {} | from {}",
            results.mode,
            results.date,
            results_path.display()
        );
        return report::write_all(&results, &dir);
    }

    let available = suites(&root)?;
    let selected = select(&available, &opts.suites)?;
    let machine = Machine::detect();
    println!("{}", machine.line());
    let mode = if opts.full { "full" } else { "quick" };
    println!("mode: {mode} | suites: {}", selected.join(", "));

    println!("building benches in release (first build takes a few minutes)...");
    let start = Instant::now();
    cmd::run(&mut cmd::cargo(["bench", "-p", BENCH_PACKAGE, "--no-run"]))
        .context("building the benches")?;
    println!("built in {}", fmt_duration(start.elapsed()));

    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut records = Vec::new();
    let mut failed = Vec::new();
    for (i, suite) in selected.iter().enumerate() {
        let progress = format!("[{}/{}] suite {suite}", i + 1, selected.len());
        println!("\n{progress}");
        let start = Instant::now();
        let (got, failure) = run_suite(&dir, suite, mode);
        let verdict = match &failure {
            None => "ok".to_string(),
            Some(why) => format!("FAILED ({why})"),
        };
        println!(
            "{progress}: {verdict}, {} records in {}",
            got.len(),
            fmt_duration(start.elapsed())
        );
        if let Some(why) = failure {
            failed.push(format!("{suite} ({why})"));
        }
        records.extend(got);
    }

    // Keep the records of suites that did not run, when only some did.
    let old = if selected.len() < available.len() {
        previous_records(&results_path, &machine, &selected)
    } else {
        Vec::new()
    };
    let results = Results {
        machine,
        mode: mode.to_string(),
        date: utc_now(),
        results: results::merge(old, records, &selected),
    };
    results.save(&results_path)?;
    println!("\nwrote {}", results_path.display());
    report::write_all(&results, &dir)?;

    if !failed.is_empty() {
        bail!("{} of {} suites failed: {}", failed.len(), selected.len(), failed.join("; "));
    }
    Ok(())
}

/// Runs one suite and reads what it wrote. Returns its records and, if it failed, why.
fn run_suite(dir: &Path, suite: &str, mode: &str) -> (Vec<Record>, Option<String>) {
    let raw = dir.join(format!("raw-{suite}.jsonl"));
    if raw.exists() {
        if let Err(err) = std::fs::remove_file(&raw) {
            return (Vec::new(), Some(format!("cannot remove stale {}: {err}", raw.display())));
        }
    }
    let mut command = cmd::cargo(["bench", "-p", BENCH_PACKAGE, "--bench", suite, "--"]);
    command.arg(format!("--{mode}")).env("DFLY_BENCH_OUT", &raw);
    let mut failure = cmd::run(&mut command).err().map(|err| format!("{err:#}"));

    let text = std::fs::read_to_string(&raw).unwrap_or_default();
    let (records, problems) = results::parse_jsonl(&text, &raw.display().to_string());
    for problem in &problems {
        eprintln!("warning: {problem}");
    }
    let foreign = records.iter().filter(|r| r.suite != suite).count();
    if foreign > 0 {
        eprintln!("warning: suite {suite} wrote {foreign} records naming another suite; they are kept as written");
    }
    if records.is_empty() && failure.is_none() {
        failure = Some(format!("it wrote no records to DFLY_BENCH_OUT ({})", raw.display()));
    }
    (records, failure)
}

/// The records of the previous `results.json` (if any) for suites other than `ran`,
/// with a note of what is kept and a warning if they come from another machine.
fn previous_records(path: &Path, machine: &Machine, ran: &[String]) -> Vec<Record> {
    if !path.exists() {
        return Vec::new();
    }
    let previous = match Results::load(path) {
        Ok(previous) => previous,
        Err(err) => {
            eprintln!("warning: ignoring the previous results: {err:#}");
            return Vec::new();
        }
    };
    let kept: Vec<Record> =
        previous.results.into_iter().filter(|r| !ran.contains(&r.suite)).collect();
    if !kept.is_empty() {
        let mut suites: Vec<&str> = kept.iter().map(|r| r.suite.as_str()).collect();
        suites.dedup();
        println!(
            "keeping {} records of suites {} from the previous run ({}, {})",
            kept.len(),
            suites.join(", "),
            previous.mode,
            previous.date
        );
        if previous.machine != *machine {
            eprintln!(
                "warning: those records were measured on another machine: {}",
                previous.machine.line()
            );
        }
    }
    kept
}

/// The current UTC time, ISO 8601 (`date -u +%FT%TZ`).
fn utc_now() -> String {
    cmd::output(Command::new("date").args(["-u", "+%FT%TZ"])).unwrap_or_else(|_| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        format!("@{secs}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_flags_and_suites() {
        let opts = parse_args(&strings(&["--full", "ipi", "lwkt", "ipi"])).unwrap();
        assert_eq!(
            opts,
            Options { full: true, report_only: false, suites: strings(&["ipi", "lwkt"]) }
        );
        assert!(parse_args(&strings(&["--report-only"])).unwrap().report_only);
        assert!(parse_args(&strings(&["--report-only", "ipi"])).is_err());
        assert!(parse_args(&strings(&["--fast"])).is_err());
    }

    #[test]
    fn unknown_suites_list_the_valid_ones() {
        let available = strings(&["ipi", "lwkt"]);
        assert_eq!(select(&available, &[]).unwrap(), available);
        assert_eq!(select(&available, &strings(&["lwkt"])).unwrap(), ["lwkt"]);
        let err = select(&available, &strings(&["ipi", "nope"])).unwrap_err().to_string();
        assert!(err.contains("`nope`") && err.contains("ipi, lwkt"), "{err}");
    }

    #[test]
    fn the_workspace_has_an_ipi_suite() {
        assert!(suites(&cmd::root()).unwrap().contains(&"ipi".to_string()));
    }
}
