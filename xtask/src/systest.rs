//! System tests: tests that need root (a TUN device in a private network namespace, a
//! FUSE mount) and system packages. They are listed in [`SYSTEM_TESTS`] with the crate
//! that owns them, the apt packages they need and the command that runs them.
//!
//! Policy (xtask-bench.md): as root, missing packages are installed with apt-get
//! (`apt-get update` once, then `apt-get install -y`) and every test runs; without root
//! the tests are skipped and listed with the reason, unless `CI=true`, where skipping is a
//! failure (CI must not pass by not testing).

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// One test that needs root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemTest {
    /// Short name, shown in skip lists and failures.
    pub name: &'static str,
    /// The crate (and issue) that owns it.
    pub owner: &'static str,
    /// Debian/Ubuntu packages it needs (`dpkg -s` names).
    pub packages: &'static [&'static str],
    /// Why it needs root, for the skip message.
    pub needs_root_for: &'static str,
    /// The command, run from the workspace root; a leading `cargo` is the cargo that runs
    /// xtask.
    pub command: &'static [&'static str],
}

/// The registry. Empty until the crates that need it exist: netstack's TUN interop test
/// (in a private network namespace) and namecache's FUSE mount test. An entry looks like
/// `SystemTest { name: "namecache-fuse", owner: "dfly-namecache", packages: &["fuse3"],
/// needs_root_for: "mounting FUSE", command: &["cargo", "test", "-p", "dfly-namecache",
/// "--test", "fuse", "--", "--include-ignored"] }`.
pub const SYSTEM_TESTS: &[SystemTest] = &[];

/// What to do with the registered tests, given who we are.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan<'a> {
    /// Nothing is registered.
    Nothing,
    /// Not root and not CI: skip these, saying why.
    Skip(Vec<&'a SystemTest>),
    /// Not root under `CI=true`: fail, naming these.
    Fail(Vec<&'a SystemTest>),
    /// Root: install what is missing and run these.
    Run(Vec<&'a SystemTest>),
}

/// Decides what to do with `tests`.
pub fn plan(tests: &[SystemTest], is_root: bool, ci: bool) -> Plan<'_> {
    let all: Vec<&SystemTest> = tests.iter().collect();
    match (all.is_empty(), is_root, ci) {
        (true, ..) => Plan::Nothing,
        (false, true, _) => Plan::Run(all),
        (false, false, true) => Plan::Fail(all),
        (false, false, false) => Plan::Skip(all),
    }
}

/// The packages `tests` need that `installed` says are absent, each once.
pub fn missing_packages(
    tests: &[&SystemTest],
    installed: impl Fn(&str) -> bool,
) -> Vec<&'static str> {
    let mut missing: Vec<&'static str> = Vec::new();
    for package in tests.iter().flat_map(|t| t.packages.iter().copied()) {
        if !missing.contains(&package) && !installed(package) {
            missing.push(package);
        }
    }
    missing
}

/// Whether this process runs as root (`id -u` is 0).
fn is_root() -> bool {
    cmd::output(Command::new("id").arg("-u")).is_ok_and(|uid| uid == "0")
}

/// Whether a Debian package is installed.
fn dpkg_installed(package: &str) -> bool {
    cmd::succeeds(Command::new("dpkg").args(["-s", package]))
}

/// One line per test: name, owner, and why it was not run.
fn describe(tests: &[&SystemTest], why: &str) -> String {
    tests
        .iter()
        .map(|t| format!("  {} ({}): needs root for {}; {why}", t.name, t.owner, t.needs_root_for))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The system-test phase of `cargo xtask test`.
pub fn run_all() -> Result<()> {
    let tests = match plan(SYSTEM_TESTS, is_root(), cmd::env_is_true("CI")) {
        Plan::Nothing => {
            println!("system tests: none registered (the namecache FUSE test runs with the workspace tests, failing under CI if it cannot mount; netstack TUN arrives with that crate)");
            return Ok(());
        }
        Plan::Skip(tests) => {
            println!(
                "system tests: SKIPPED {} (not root):\n{}",
                tests.len(),
                describe(&tests, "skipped")
            );
            println!("run `sudo -E cargo xtask test` to include them");
            return Ok(());
        }
        Plan::Fail(tests) => {
            bail!(
                "CI=true but not root, so these system tests cannot run:\n{}",
                describe(&tests, "CI may not skip them")
            );
        }
        Plan::Run(tests) => tests,
    };

    let missing = missing_packages(&tests, dpkg_installed);
    if !missing.is_empty() {
        println!("installing missing packages: {}", missing.join(" "));
        cmd::run(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("installing the system tests' packages")?;
    }

    let mut failed = Vec::new();
    for (i, test) in tests.iter().enumerate() {
        println!("[{}/{}] system test {} ({})", i + 1, tests.len(), test.name, test.owner);
        let Some((program, args)) = test.command.split_first() else {
            failed.push(format!("{}: empty command", test.name));
            continue;
        };
        let mut command = if *program == "cargo" {
            cmd::cargo(args)
        } else {
            let mut command = Command::new(program);
            command.args(args).current_dir(cmd::root());
            command
        };
        if let Err(err) = cmd::run(&mut command) {
            failed.push(format!("{}: {err:#}", test.name));
        }
    }
    if !failed.is_empty() {
        bail!("system tests failed:\n  {}", failed.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FUSE: SystemTest = SystemTest {
        name: "namecache-fuse",
        owner: "dfly-namecache",
        packages: &["fuse3", "libfuse3-dev"],
        needs_root_for: "mounting FUSE",
        command: &["true"],
    };
    const TUN: SystemTest = SystemTest {
        name: "netstack-tun",
        owner: "dfly-netstack",
        packages: &["iproute2", "fuse3"],
        needs_root_for: "a TUN device in a network namespace",
        command: &["true"],
    };

    #[test]
    fn plan_follows_root_and_ci() {
        let tests = [FUSE, TUN];
        assert_eq!(plan(&[], false, true), Plan::Nothing);
        assert_eq!(plan(&tests, true, true), Plan::Run(vec![&FUSE, &TUN]));
        assert_eq!(plan(&tests, false, true), Plan::Fail(vec![&FUSE, &TUN]));
        assert_eq!(plan(&tests, false, false), Plan::Skip(vec![&FUSE, &TUN]));
    }

    #[test]
    fn missing_packages_are_listed_once() {
        let missing = missing_packages(&[&FUSE, &TUN], |p| p == "iproute2");
        assert_eq!(missing, ["fuse3", "libfuse3-dev"]);
    }

    #[test]
    fn skip_message_names_test_owner_and_reason() {
        let text = describe(&[&TUN], "skipped");
        assert_eq!(text, "  netstack-tun (dfly-netstack): needs root for a TUN device in a network namespace; skipped");
    }

    #[test]
    fn registry_entries_are_complete() {
        for t in SYSTEM_TESTS {
            assert!(!t.name.is_empty() && !t.owner.is_empty() && !t.command.is_empty(), "{t:?}");
        }
    }
}
