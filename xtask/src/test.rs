//! `cargo xtask test`: the project's test command (`.ci/run` calls exactly this).
//!
//! Phases, in order, stopping at the first failure:
//! 1. `cargo test --workspace` (includes xtask's tidy tests: layering, module docs, no
//!    `#[ignore]`, workspace lints);
//! 2. the loom models with CI-sized bounds (`LOOM_MAX_PREEMPTIONS=2` unless set), see
//!    [`crate::loom`];
//! 3. the tests of crates with a checking feature, run again with it on
//!    ([`FEATURE_TESTS`]);
//! 4. the system tests that need root, see [`crate::systest`].
//!
//! Each phase prints a `==> name` header; a summary with each phase's elapsed time ends
//! the run.

use anyhow::Result;

use crate::cmd::{self, Phases};
use crate::{loom, systest};

/// Crates whose own tests run a second time with a feature on: `(package, feature)`.
/// dfly-slaballoc's `debug` feature adds fault checks that its tests exercise.
pub const FEATURE_TESTS: &[(&str, &str)] = &[("dfly-slaballoc", "debug")];

/// Runs the test phases into `phases` (shared with `cargo xtask ci`).
pub fn phases(phases: &mut Phases) -> Result<()> {
    phases.run("workspace tests", || cmd::run(&mut cmd::cargo(["test", "--workspace"])))?;
    phases.run(
        &format!("loom models (LOOM_MAX_PREEMPTIONS={} unless set)", loom::CI_PREEMPTIONS),
        || loom::run(&loom::loom_crates()?, loom::CI_PREEMPTIONS),
    )?;
    phases.run("feature tests", || {
        for (package, feature) in FEATURE_TESTS {
            cmd::run(&mut cmd::cargo(["test", "-p", package, "--features", feature]))?;
        }
        Ok(())
    })?;
    phases.run("system tests", systest::run_all)
}

/// Entry point of `cargo xtask test`.
pub fn main(args: &[String]) -> Result<()> {
    crate::no_args("test", args)?;
    Phases::run_all(phases)
}
