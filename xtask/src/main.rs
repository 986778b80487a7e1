//! `cargo xtask`: the project's one entry point (the alias lives in `.cargo/config.toml`).
//!
//! One module per subcommand, few dependencies, arguments parsed by hand:
//!
//! | command | module | what it does |
//! |---|---|---|
//! | `test`  | [`mod@test`]  | workspace tests, loom models (CI bounds), root-only system tests |
//! | `ci`    | [`ci`]    | fmt, clippy, doc with warnings denied, `test`, benches in test mode |
//! | `bench` | [`mod@bench`] | the side-by-side benchmarks, `target/bench/{results.json,report.md,*.svg}` |
//! | `loom`  | [`loom`]  | loom models with deeper bounds |
//! | `fuzz`  | [`fuzz`]  | one cargo-fuzz target for N seconds (nightly) |
//! | `tidy`  | [`tidy`]  | layering, module docs, no `#[ignore]`, workspace lints |
//!
//! Shared pieces: [`cmd`] (running children, phases), [`manifest`] (a tiny Cargo.toml
//! scanner), [`machine`] (the machine line), [`results`] (the results schema),
//! [`goals`] (the goal table and its evaluation) and [`report`] (terminal table,
//! markdown, SVG).

mod bench;
mod ci;
mod cmd;
mod fuzz;
mod goals;
mod loom;
mod machine;
mod manifest;
mod report;
mod results;
mod systest;
mod test;
mod tidy;

use std::process::ExitCode;

/// The help text: one line per command.
const HELP: &str = "\
cargo xtask <command> [args]

commands:
  test                         workspace tests, loom models (CI bounds), system tests (root)
  ci                           fmt --check, clippy -D warnings, doc -D warnings, test, benches --test
  bench [--full] [suite ...]   run benchmark suites against their peers; writes target/bench/
  bench --report-only          regenerate report.md, SVGs and goal lines from results.json
  loom [crate ...]             loom models with deeper bounds (LOOM_MAX_PREEMPTIONS=3)
  fuzz <target> [--seconds N]  run one cargo-fuzz target for N seconds (default 60, nightly)
  fuzz --list                  list the fuzz targets
  tidy                         project checks: layering, module docs, no #[ignore], lints
  help                         this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the subcommand named by `args[0]` with the remaining arguments.
fn dispatch(args: &[String]) -> anyhow::Result<()> {
    let Some((command, rest)) = args.split_first() else {
        print!("{HELP}");
        return Ok(());
    };
    match command.as_str() {
        "test" => test::main(rest),
        "ci" => ci::main(rest),
        "bench" => bench::main(rest),
        "loom" => loom::main(rest),
        "fuzz" => fuzz::main(rest),
        "tidy" => tidy::main(rest),
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }
        other => {
            eprint!("{HELP}");
            anyhow::bail!("unknown command `{other}` (see the list above)")
        }
    }
}

/// Fails with a clear message when a command that takes no arguments got some.
fn no_args(command: &str, args: &[String]) -> anyhow::Result<()> {
    match args.first() {
        None => Ok(()),
        Some(arg) if arg == "--help" || arg == "-h" => {
            print!("{HELP}");
            std::process::exit(0)
        }
        Some(arg) => anyhow::bail!("`cargo xtask {command}` takes no arguments (got `{arg}`)"),
    }
}
