//! Loom model checking: `cargo xtask loom [crate ...]`, and the CI-sized loom phase of
//! `cargo xtask test`.
//!
//! Loom models are `#[cfg(loom)]` test modules whose test names contain `loom`, next to
//! the code they check. They run as
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=<n> cargo test --release
//!  --target-dir target/loom -p <crate>... --lib loom`;
//! the separate target directory keeps the `--cfg loom` build from invalidating the
//! normal one. The crates with models are those whose manifest has a `cfg(loom)` target
//! dependency on `loom` (today dfly-core and dfly-ipi). A `LOOM_MAX_PREEMPTIONS` the user
//! set wins over the default bound.

use anyhow::{bail, Result};

use crate::cmd;
use crate::manifest::{self, Manifest};

/// Preemption bound for `cargo xtask test` / CI: exhaustive enough to catch ordering bugs
/// in the rings and masks, small enough for 2 cores.
pub const CI_PREEMPTIONS: u32 = 2;
/// Preemption bound for `cargo xtask loom`.
pub const DEEP_PREEMPTIONS: u32 = 3;

/// Whether a crate's manifest declares loom under `cfg(loom)`, i.e. has loom models.
fn has_loom_models(manifest: &Manifest) -> bool {
    manifest
        .dependencies()
        .iter()
        .any(|d| d.name == "loom" && d.target.as_deref().is_some_and(|t| t.contains("loom")))
}

/// The package names of the workspace crates that have loom models.
pub fn loom_crates() -> Result<Vec<String>> {
    Ok(manifest::workspace_crates(&cmd::root())?
        .into_iter()
        .filter(|(_, m)| has_loom_models(m))
        .filter_map(|(_, m)| m.package_name())
        .collect())
}

/// Maps `core` or `dfly-core` to the package name of a workspace crate.
fn resolve(name: &str, crates: &[(String, Manifest)]) -> Result<(String, bool)> {
    for (folder, manifest) in crates {
        let package = manifest.package_name().unwrap_or_default();
        if name == folder || name == package {
            return Ok((package, has_loom_models(manifest)));
        }
    }
    let names: Vec<&str> = crates.iter().map(|(folder, _)| folder.as_str()).collect();
    bail!("unknown crate `{name}`; the crates are: {}", names.join(", "))
}

/// Runs the loom models of `packages` with `preemptions` as the default bound.
pub fn run(packages: &[String], preemptions: u32) -> Result<()> {
    if packages.is_empty() {
        println!("no crate has loom models (a `[target.'cfg(loom)'.dependencies] loom` entry)");
        return Ok(());
    }
    let mut command = cmd::cargo(["test", "--release", "--target-dir", "target/loom"]);
    for package in packages {
        command.args(["-p", package]);
    }
    command.args(["--lib", "loom"]);
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} --cfg loom"),
        _ => "--cfg loom".to_string(),
    };
    command.env("RUSTFLAGS", rustflags);
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        command.env("LOOM_MAX_PREEMPTIONS", preemptions.to_string());
    }
    cmd::run(&mut command)
}

/// Entry point of `cargo xtask loom [crate ...]`.
pub fn main(args: &[String]) -> Result<()> {
    if let Some(flag) = args.iter().find(|a| a.starts_with('-')) {
        bail!("`cargo xtask loom` takes crate names only (got `{flag}`); set LOOM_MAX_PREEMPTIONS to change the bound");
    }
    let packages = if args.is_empty() {
        loom_crates()?
    } else {
        let crates = manifest::workspace_crates(&cmd::root())?;
        let mut packages = Vec::new();
        for name in args {
            let (package, models) = resolve(name, &crates)?;
            if !models {
                eprintln!("warning: {package} has no cfg(loom) dependency on loom, so probably no loom models");
            }
            if !packages.contains(&package) {
                packages.push(package);
            }
        }
        packages
    };
    cmd::Phases::run_all(|phases| {
        phases.run(
            &format!("loom models (LOOM_MAX_PREEMPTIONS={DEEP_PREEMPTIONS} unless set)"),
            || run(&packages, DEEP_PREEMPTIONS),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_crates_with_models() {
        let with = Manifest::parse("[target.'cfg(loom)'.dependencies]\nloom.workspace = true\n");
        let without = Manifest::parse("[dev-dependencies]\nloom = \"0.7\"\n");
        assert!(has_loom_models(&with));
        assert!(!has_loom_models(&without));
        let crates = loom_crates().unwrap();
        assert!(crates.contains(&"dfly-core".to_string()), "{crates:?}");
    }

    #[test]
    fn resolves_folder_and_package_names() {
        let crates = vec![(
            "ipi".to_string(),
            Manifest::parse("[package]\nname = \"dfly-ipi\"\n[target.'cfg(loom)'.dependencies]\nloom = \"0.7\"\n"),
        )];
        assert_eq!(resolve("ipi", &crates).unwrap(), ("dfly-ipi".to_string(), true));
        assert_eq!(resolve("dfly-ipi", &crates).unwrap(), ("dfly-ipi".to_string(), true));
        assert!(resolve("nope", &crates).unwrap_err().to_string().contains("ipi"));
    }
}
