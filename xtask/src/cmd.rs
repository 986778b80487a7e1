//! Running child processes: the workspace root, `cargo` commands, echoing each command
//! before it runs, and timing named phases for the end-of-run summary.
//!
//! Children inherit stdio, so the user sees cargo's and the benches' progress live.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The workspace root: the directory holding the virtual manifest, one level above xtask.
pub fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// A `cargo` command with `args`, run from the workspace root by the same cargo binary
/// that runs xtask (`$CARGO`), so the toolchain does not change under us.
pub fn cargo<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root()).args(args);
    cmd
}

/// A command line as the user would type it: explicitly set environment variables first,
/// the program by file name, arguments quoted when they contain spaces.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(&value.to_string_lossy())));
        }
    }
    let program = Path::new(cmd.get_program());
    let name = program.file_name().unwrap_or(program.as_os_str());
    parts.push(name.to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    parts.join(" ")
}

/// Quotes `s` for display when it is empty or contains shell-significant characters.
fn quote(s: &str) -> String {
    let plain =
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%*^".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Runs `cmd` with inherited stdio after echoing it; fails if it does not exit with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    println!("$ {shown}");
    let status = cmd.status().with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({})", describe(status));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its trimmed stdout; fails if it does not exit with 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!("`{shown}` failed ({})", describe(out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs `cmd` with all output discarded and reports whether it exited with 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// "exit status 101" or "killed by signal 9".
pub fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Whether the environment variable `name` is set to a true value (`true`, `1`, `yes`).
pub fn env_is_true(name: &str) -> bool {
    std::env::var(name)
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// A duration as a person reads it: `850ms`, `12.3s`, `4m05s`, `1h02m`.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if d.as_millis() >= 1000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Named phases run one after another, stopping at the first failure, with a summary of
/// each phase's outcome and elapsed time.
#[derive(Debug)]
pub struct Phases {
    start: Instant,
    done: Vec<(String, Duration, bool)>,
}

impl Phases {
    /// An empty list; the total time counts from now.
    pub fn new() -> Self {
        Phases { start: Instant::now(), done: Vec::new() }
    }

    /// Prints the `==> name` header, runs `f`, records its time and outcome.
    pub fn run(&mut self, name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        println!("\n==> {name}");
        let start = Instant::now();
        let result = f();
        self.done.push((name.to_string(), start.elapsed(), result.is_ok()));
        result.with_context(|| format!("phase `{name}` failed"))
    }

    /// Prints one line per phase that ran, and the total.
    pub fn print_summary(&self) {
        let width = self.done.iter().map(|(name, ..)| name.len()).max().unwrap_or(0).max(5);
        println!("\n==> summary");
        for (name, elapsed, ok) in &self.done {
            let status = if *ok { "ok" } else { "FAILED" };
            println!("  {name:<width$}  {status:<6}  {:>7}", fmt_duration(*elapsed));
        }
        println!("  {:<width$}  {:<6}  {:>7}", "total", "", fmt_duration(self.start.elapsed()));
    }

    /// Runs `body` (which calls [`Phases::run`] for each phase), then prints the summary
    /// whether or not a phase failed.
    pub fn run_all(body: impl FnOnce(&mut Phases) -> Result<()>) -> Result<()> {
        let mut phases = Phases::new();
        let result = body(&mut phases);
        phases.print_summary();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(fmt_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(fmt_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(fmt_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn display_shows_env_and_quotes() {
        let mut cmd = Command::new("/usr/bin/cargo");
        cmd.env("RUSTFLAGS", "--cfg loom").args(["test", "--lib", "a b"]);
        assert_eq!(display(&cmd), "RUSTFLAGS=\"--cfg loom\" cargo test --lib \"a b\"");
    }

    #[test]
    fn root_holds_the_workspace_manifest() {
        assert!(root().join("Cargo.toml").is_file());
        assert!(root().join("xtask").is_dir());
    }
}
