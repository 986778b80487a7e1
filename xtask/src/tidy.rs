//! Project checks, run as `#[test]`s by `cargo test --workspace` (and by hand with
//! `cargo xtask tidy`):
//!
//! - **layering**: a crate under `crates/` depends (normal, dev, build, any target) only on
//!   the `dfly-*` crates below it in [`LAYERS`], never on itself or one above; a crate
//!   not in the table fails until it is placed in the layering;
//! - **module docs**: every `.rs` file under `crates/`, `xtask/`, `benches/` and
//!   `fuzz/fuzz_targets/` starts with a `//!` comment (its first non-blank line);
//! - **no ignored tests** under `crates/` (house style: a test that cannot run is deleted
//!   or fixed, not ignored);
//! - **workspace lints**: every workspace member's Cargo.toml has `[lints] workspace = true`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::cmd;
use crate::manifest::{self, DepKind, Manifest};

/// The layering, bottom to top: each crate (folder under `crates/`, package `dfly-<folder>`)
/// and the crates it may depend on. Arrows point down only; see ARCHITECTURE.md.
pub const LAYERS: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("ipi", &["core"]),
    ("lwkt", &["core", "ipi"]),
    ("msgport", &["core", "ipi", "lwkt"]),
    ("kcont", &["core", "lwkt"]),
    ("slaballoc", &["core", "ipi"]),
    ("namecache", &["core"]),
    ("netstack", &["core", "ipi", "lwkt", "msgport", "kcont", "slaballoc"]),
];

/// The layering violations of the crate in `crates/<folder>`.
pub fn check_crate_layering(folder: &str, manifest: &Manifest) -> Vec<String> {
    let at = format!("crates/{folder}/Cargo.toml");
    let Some((_, allowed)) = LAYERS.iter().find(|(name, _)| *name == folder) else {
        return vec![format!(
            "{at}: crate `{folder}` is not in the layering table (LAYERS in xtask/src/tidy.rs); \
             place it there, with the crates it may depend on, before adding it"
        )];
    };
    let mut errors = Vec::new();
    let expected = format!("dfly-{folder}");
    match manifest.package_name() {
        Some(name) if name == expected => {}
        other => errors.push(format!(
            "{at}: package is named {other:?}, but crates/{folder} must be `{expected}` (package names carry the dfly- prefix, folders do not)"
        )),
    }
    let rule = if allowed.is_empty() {
        format!("{expected} depends on no workspace crate")
    } else {
        let names: Vec<String> = allowed.iter().map(|a| format!("dfly-{a}")).collect();
        format!("{expected} may depend only on {}", names.join(", "))
    };
    for dep in manifest.dependencies() {
        let Some(target) = dep.name.strip_prefix("dfly-") else { continue };
        if allowed.contains(&target) {
            continue;
        }
        let table = match (&dep.target, dep.kind) {
            (Some(cfg), kind) => format!("[target.'{cfg}'.{}]", kind.table()),
            (None, kind) => format!("[{}]", kind.table()),
        };
        let what = if target == folder {
            "itself".to_string()
        } else if LAYERS.iter().any(|(name, _)| *name == target) {
            format!("`{}`, a crate above or beside it", dep.name)
        } else {
            format!("`{}`, which is not a layered crate", dep.name)
        };
        let dev = if dep.kind == DepKind::Dev { " (dev-dependencies count too)" } else { "" };
        errors.push(format!(
            "{at}:{}: {expected} depends on {what} in {table}; rule: {rule} (arrows point down only){dev}",
            dep.line
        ));
    }
    errors
}

/// Layering violations of every crate under `root/crates`.
pub fn check_layering(root: &Path) -> Result<Vec<String>> {
    let crates = manifest::workspace_crates(root)?;
    Ok(crates.iter().flat_map(|(folder, m)| check_crate_layering(folder, m)).collect())
}

/// Whether `text`'s first non-blank line is a `//!` module doc comment.
pub fn has_module_doc(text: &str) -> bool {
    text.lines().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_start().starts_with("//!"))
}

/// 1-based numbers of the lines of `text` that ignore a test (comments do not count).
pub fn ignore_attributes(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            !l.starts_with("//")
                && (l.contains("#[ignore]") || l.contains("#[ignore =") || l.contains("#[ignore("))
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// Every `.rs` file under `dir`, skipping `target` and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).display().to_string()
}

/// Files under the checked folders whose first non-blank line is not `//!`.
pub fn check_module_docs(root: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "benches", "fuzz/fuzz_targets"] {
        rust_files(&root.join(dir), &mut files)?;
    }
    files.sort();
    let mut missing = Vec::new();
    for file in files {
        if !has_module_doc(&std::fs::read_to_string(&file)?) {
            missing.push(format!(
                "{}: does not start with a `//!` module doc comment",
                relative(root, &file)
            ));
        }
    }
    Ok(missing)
}

/// Ignored tests under `crates/`.
pub fn check_no_ignored_tests(root: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files)?;
    files.sort();
    let mut found = Vec::new();
    for file in files {
        for line in ignore_attributes(&std::fs::read_to_string(&file)?) {
            found.push(format!(
                "{}:{line}: ignored test (house style: fix or delete it)",
                relative(root, &file)
            ));
        }
    }
    Ok(found)
}

/// Workspace members without `[lints] workspace = true`.
pub fn check_workspace_lints(root: &Path) -> Result<Vec<String>> {
    let mut errors = Vec::new();
    for path in manifest::member_manifests(root)? {
        if !Manifest::read(&path)?.lints_workspace() {
            errors.push(format!("{}: lacks `[lints] workspace = true`", relative(root, &path)));
        }
    }
    Ok(errors)
}

/// A tidy check: the problems it finds under the workspace root.
type Check = fn(&Path) -> Result<Vec<String>>;

/// Entry point of `cargo xtask tidy`: runs every check and lists every problem.
pub fn main(args: &[String]) -> Result<()> {
    crate::no_args("tidy", args)?;
    let root = cmd::root();
    let checks: [(&str, Check); 4] = [
        ("layering", check_layering),
        ("module docs", check_module_docs),
        ("no ignored tests", check_no_ignored_tests),
        ("workspace lints", check_workspace_lints),
    ];
    let mut failed = 0;
    for (name, check) in checks {
        let problems = check(&root)?;
        println!("tidy {name}: {}", if problems.is_empty() { "ok" } else { "FAILED" });
        for problem in &problems {
            println!("  {problem}");
        }
        failed += usize::from(!problems.is_empty());
    }
    if failed > 0 {
        bail!("{failed} of {} tidy checks failed", checks.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_clean(check: &str, problems: Vec<String>) {
        assert!(problems.is_empty(), "tidy {check} failed:\n  {}", problems.join("\n  "));
    }

    #[test]
    fn layering() {
        assert_clean("layering", check_layering(&cmd::root()).unwrap());
    }

    #[test]
    fn module_docs() {
        assert_clean("module docs", check_module_docs(&cmd::root()).unwrap());
    }

    #[test]
    fn no_ignored_tests() {
        assert_clean("no ignored tests", check_no_ignored_tests(&cmd::root()).unwrap());
    }

    #[test]
    fn workspace_lints() {
        assert_clean("workspace lints", check_workspace_lints(&cmd::root()).unwrap());
    }

    fn check(folder: &str, toml: &str) -> Vec<String> {
        check_crate_layering(folder, &Manifest::parse(toml))
    }

    #[test]
    fn layering_accepts_allowed_dependencies() {
        let toml =
            "[package]\nname = \"dfly-msgport\"\n[dependencies]\ndfly-core.workspace = true\n\
                    dfly-lwkt = { path = \"../lwkt\" }\nlibc = \"0.2\"\n";
        assert_eq!(check("msgport", toml), Vec::<String>::new());
    }

    #[test]
    fn layering_rejects_upward_self_and_unknown_dependencies() {
        let toml = "[package]\nname = \"dfly-ipi\"\n[dependencies]\ndfly-core.workspace = true\n\
                    dfly-lwkt.workspace = true\n[dev-dependencies]\ndfly-ipi = { path = \".\" }\n\
                    [target.'cfg(unix)'.dependencies]\ndfly-benches = \"0.1\"\n";
        let errors = check("ipi", toml);
        assert_eq!(errors.len(), 3, "{errors:#?}");
        assert!(
            errors[0].starts_with("crates/ipi/Cargo.toml:5: dfly-ipi depends on `dfly-lwkt`"),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("rule: dfly-ipi may depend only on dfly-core"), "{}", errors[0]);
        assert!(errors[1].contains("depends on itself in [dev-dependencies]"), "{}", errors[1]);
        assert!(
            errors[2].contains("`dfly-benches`, which is not a layered crate"),
            "{}",
            errors[2]
        );
        assert!(errors[2].contains("[target.'cfg(unix)'.dependencies]"), "{}", errors[2]);
    }

    #[test]
    fn layering_sees_renamed_dependencies_and_core_rule() {
        let toml = "[package]\nname = \"dfly-core\"\n[dependencies]\nipi = { package = \"dfly-ipi\", path = \"../ipi\" }\n";
        let errors = check("core", toml);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].contains("rule: dfly-core depends on no workspace crate"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn layering_rejects_unplaced_crates_and_bad_names() {
        let errors = check("timers", "[package]\nname = \"dfly-timers\"\n");
        assert!(errors[0].contains("`timers` is not in the layering table"), "{errors:?}");
        let errors = check("core", "[package]\nname = \"core\"\n");
        assert!(errors[0].contains("must be `dfly-core`"), "{errors:?}");
    }

    #[test]
    fn module_doc_detection() {
        assert!(has_module_doc("//! Docs.\nfn main() {}\n"));
        assert!(has_module_doc("\n\n//! Docs after blank lines.\n"));
        assert!(!has_module_doc("#![forbid(unsafe_code)]\n//! Too late.\n"));
        assert!(!has_module_doc("/// Item doc.\nfn f() {}\n"));
        assert!(!has_module_doc(""));
    }

    #[test]
    fn ignore_detection_skips_comments() {
        let text = "#[test]\n#[ignore]\nfn a() {}\n// #[ignore] in a comment\n  #[ignore = \"slow\"]\nfn b() {}\n";
        assert_eq!(ignore_attributes(text), [2, 5]);
    }
}
