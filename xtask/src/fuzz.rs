//! `cargo xtask fuzz <target> [--seconds N] [-- libfuzzer-args...]` and
//! `cargo xtask fuzz --list`.
//!
//! `fuzz/` is a cargo-fuzz package outside the workspace; its targets are the `[[bin]]`
//! names of `fuzz/Cargo.toml`. A run is
//! `cargo +nightly fuzz run <target> -- -max_total_time=N` inside `fuzz/` (default 60 s),
//! after installing cargo-fuzz with `cargo install cargo-fuzz --locked` if it is missing.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::manifest::Manifest;

/// Seconds of fuzzing when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// What the command line asked for.
#[derive(Debug, PartialEq)]
struct Options {
    list: bool,
    target: Option<String>,
    seconds: u64,
    libfuzzer_args: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut opts =
        Options { list: false, target: None, seconds: DEFAULT_SECONDS, libfuzzer_args: Vec::new() };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let seconds = match arg.as_str() {
            "--list" => {
                opts.list = true;
                continue;
            }
            "--" => {
                opts.libfuzzer_args.extend(iter.by_ref().cloned());
                break;
            }
            "--seconds" => iter.next().context("--seconds needs a number")?.as_str(),
            other => match other.strip_prefix("--seconds=") {
                Some(n) => n,
                None if other.starts_with('-') => bail!("unknown flag `{other}`"),
                None if opts.target.is_some() => bail!("one target at a time (got `{other}` too)"),
                None => {
                    opts.target = Some(other.to_string());
                    continue;
                }
            },
        };
        opts.seconds =
            seconds.parse().with_context(|| format!("--seconds: `{seconds}` is not a number"))?;
    }
    Ok(opts)
}

/// The fuzz targets: `[[bin]] name = ...` in `fuzz/Cargo.toml` (empty if it is absent).
fn targets() -> Result<Vec<String>> {
    let path = cmd::root().join("fuzz").join("Cargo.toml");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    Ok(Manifest::read(&path)?.array_table_values("bin", "name"))
}

/// A `cargo +nightly ...` command run in `fuzz/`, with the environment of the stable
/// cargo that runs xtask removed so every nested tool is nightly's.
fn nightly_cargo(args: &[&str]) -> Command {
    let mut command = Command::new("cargo");
    command
        .arg("+nightly")
        .args(args)
        .current_dir(cmd::root().join("fuzz"))
        .env("RUSTUP_TOOLCHAIN", "nightly")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC");
    command
}

/// Entry point of `cargo xtask fuzz`.
pub fn main(args: &[String]) -> Result<()> {
    let opts = parse_args(args)?;
    let targets = targets()?;
    if opts.list {
        if targets.is_empty() {
            println!("no fuzz targets yet (no [[bin]] in fuzz/Cargo.toml)");
        }
        for target in &targets {
            println!("{target}");
        }
        return Ok(());
    }
    let Some(target) = opts.target else {
        bail!(
            "which target? `cargo xtask fuzz <target> [--seconds N]`; targets: {}",
            list(&targets)
        );
    };
    if !targets.contains(&target) {
        bail!("unknown fuzz target `{target}`; targets: {}", list(&targets));
    }
    if !cmd::succeeds(&mut nightly_cargo(&["--version"])) {
        bail!("cargo-fuzz needs a nightly toolchain: `rustup toolchain install nightly`");
    }
    if !cmd::succeeds(&mut nightly_cargo(&["fuzz", "--version"])) {
        println!(
            "cargo-fuzz is missing; installing it with `cargo install cargo-fuzz --locked`..."
        );
        cmd::run(&mut cmd::cargo(["install", "cargo-fuzz", "--locked"]))
            .context("installing cargo-fuzz")?;
    }
    let max_time = format!("-max_total_time={}", opts.seconds);
    let mut command = nightly_cargo(&["fuzz", "run", &target, "--", &max_time]);
    command.args(&opts.libfuzzer_args);
    cmd::run(&mut command)
}

fn list(targets: &[String]) -> String {
    if targets.is_empty() {
        "none yet (no [[bin]] in fuzz/Cargo.toml)".to_string()
    } else {
        targets.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_target_seconds_and_passthrough() {
        let opts = parse(&["wire", "--seconds", "5", "--", "-jobs=2"]).unwrap();
        assert_eq!(
            opts,
            Options {
                list: false,
                target: Some("wire".into()),
                seconds: 5,
                libfuzzer_args: vec!["-jobs=2".into()]
            }
        );
        assert_eq!(parse(&["--seconds=7", "wire"]).unwrap().seconds, 7);
        assert_eq!(parse(&["wire"]).unwrap().seconds, DEFAULT_SECONDS);
        assert!(parse(&["--list"]).unwrap().list);
        assert!(parse(&["wire", "--seconds", "x"]).is_err());
        assert!(parse(&["wire", "other"]).is_err());
        assert!(parse(&["--forever"]).is_err());
    }
}
