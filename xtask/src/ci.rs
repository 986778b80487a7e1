//! `cargo xtask ci`: everything `cargo xtask test` does, plus the checks that keep the
//! tree clean, plus a short run of every benchmark so the benches cannot rot:
//!
//! 1. `cargo fmt --all -- --check`
//! 2. `cargo clippy --workspace --all-targets -- -D warnings`
//! 3. `cargo doc --workspace --no-deps` with `RUSTDOCFLAGS="-D warnings"`
//! 4. the phases of [`crate::test`]
//! 5. `cargo bench -p dfly-benches -- --test` (every bench binary runs each case once)

use anyhow::Result;

use crate::cmd::{self, Phases};

/// Entry point of `cargo xtask ci`.
pub fn main(args: &[String]) -> Result<()> {
    crate::no_args("ci", args)?;
    Phases::run_all(|phases| {
        phases.run("fmt", || cmd::run(&mut cmd::cargo(["fmt", "--all", "--", "--check"])))?;
        phases.run("clippy", || {
            cmd::run(&mut cmd::cargo([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
        phases.run("doc", || {
            let mut doc = cmd::cargo(["doc", "--workspace", "--no-deps"]);
            let flags = match std::env::var("RUSTDOCFLAGS") {
                Ok(flags) if !flags.trim().is_empty() => format!("{flags} -D warnings"),
                _ => "-D warnings".to_string(),
            };
            cmd::run(doc.env("RUSTDOCFLAGS", flags))
        })?;
        crate::test::phases(phases)?;
        phases.run("benches in test mode", || {
            cmd::run(&mut cmd::cargo(["bench", "-p", "dfly-benches", "--", "--test"]))
        })
    })
}
