//! `cargo xtask test`: the project's test command (`.ci/run` calls exactly this).
//!
//! Phases, in order, stopping at the first failure:
//! 1. `cargo test --workspace` (includes xtask's tidy tests: layering, module docs, no
//!    `#[ignore]`, workspace lints);
//! 2. the loom models with CI-sized bounds (`LOOM_MAX_PREEMPTIONS=2` unless set), see
//!    [`crate::loom`];
//! 3. the system tests that need root, see [`crate::systest`].
//!
//! Each phase prints a `==> name` header; a summary with each phase's elapsed time ends
//! the run.

use anyhow::Result;

use crate::cmd::{self, Phases};
use crate::{loom, systest};

/// Runs the test phases into `phases` (shared with `cargo xtask ci`).
pub fn phases(phases: &mut Phases) -> Result<()> {
    phases.run("workspace tests", || cmd::run(&mut cmd::cargo(["test", "--workspace"])))?;
    phases.run(
        &format!("loom models (LOOM_MAX_PREEMPTIONS={} unless set)", loom::CI_PREEMPTIONS),
        || loom::run(&loom::loom_crates()?, loom::CI_PREEMPTIONS),
    )?;
    phases.run("system tests", systest::run_all)
}

/// Entry point of `cargo xtask test`.
pub fn main(args: &[String]) -> Result<()> {
    crate::no_args("test", args)?;
    Phases::run_all(phases)
}
