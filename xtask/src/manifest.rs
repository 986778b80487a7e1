//! A tiny line-based scanner for the subset of TOML that this workspace's Cargo manifests
//! use: `[table]` and `[[array]]` headers (dotted, with quoted segments such as
//! `[target.'cfg(loom)'.dependencies]`), `key = value` and dotted keys
//! (`dfly-core.workspace = true`), `#` comments, arrays spanning several lines.
//!
//! Values are kept as raw text; helpers unquote strings, read string arrays and look up a
//! key in an inline table. This is not a TOML parser: it is enough to answer "which
//! `dfly-*` crates does this manifest depend on", "what are the `[[bench]]` names" and
//! "is `[lints] workspace = true` set", without a dependency.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One `key = value` line, with the table header it sits under.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The segments of the enclosing table header; empty at the top level.
    pub table: Vec<String>,
    /// Counts table headers; distinguishes two `[[bench]]` instances.
    pub table_index: usize,
    /// Whether the enclosing header is an array of tables (`[[...]]`).
    pub array: bool,
    /// The segments of the (possibly dotted) key.
    pub key: Vec<String>,
    /// The raw value text, comment removed, continuation lines joined.
    pub value: String,
    /// 1-based line number of the key.
    pub line: usize,
}

/// The entries of one manifest, in file order.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// Every `key = value` line.
    pub entries: Vec<Entry>,
}

/// Which dependency table a dependency is declared in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepKind {
    /// `[dependencies]`.
    Normal,
    /// `[dev-dependencies]`.
    Dev,
    /// `[build-dependencies]`.
    Build,
}

impl DepKind {
    /// The table name as written in a manifest.
    pub fn table(self) -> &'static str {
        match self {
            DepKind::Normal => "dependencies",
            DepKind::Dev => "dev-dependencies",
            DepKind::Build => "build-dependencies",
        }
    }

    fn from_table(name: &str) -> Option<DepKind> {
        match name {
            "dependencies" => Some(DepKind::Normal),
            "dev-dependencies" | "dev_dependencies" => Some(DepKind::Dev),
            "build-dependencies" | "build_dependencies" => Some(DepKind::Build),
            _ => None,
        }
    }
}

/// A dependency: the package it names (after `package = "..."` renames).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    /// The package name.
    pub name: String,
    /// Normal, dev or build.
    pub kind: DepKind,
    /// The `cfg(...)` or triple of a `[target.X.dependencies]` table.
    pub target: Option<String>,
    /// Line where the dependency is first named.
    pub line: usize,
}

impl Manifest {
    /// Scans `text`; lines that are neither headers nor keys are ignored.
    pub fn parse(text: &str) -> Manifest {
        let mut entries = Vec::new();
        let (mut table, mut table_index, mut array) = (Vec::new(), 0, false);
        let mut lines = text.lines().enumerate();
        while let Some((index, raw)) = lines.next() {
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(inner) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
                (table, array) = (split_dotted(inner), true);
                table_index += 1;
                continue;
            }
            if let Some(inner) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                (table, array) = (split_dotted(inner), false);
                table_index += 1;
                continue;
            }
            let Some(eq) = find_unquoted(line, '=') else { continue };
            let key = split_dotted(&line[..eq]);
            let mut value = line[eq + 1..].trim().to_string();
            if value.starts_with('[') {
                while bracket_depth(&value) > 0 {
                    let Some((_, next)) = lines.next() else { break };
                    value.push(' ');
                    value.push_str(strip_comment(next).trim());
                }
            }
            for delim in ["\"\"\"", "'''"] {
                if value.starts_with(delim) && value.matches(delim).count() == 1 {
                    for (_, next) in lines.by_ref() {
                        value.push('\n');
                        value.push_str(next);
                        if next.contains(delim) {
                            break;
                        }
                    }
                }
            }
            let (table, array) = (table.clone(), array);
            entries.push(Entry { table, table_index, array, key, value, line: index + 1 });
        }
        Manifest { entries }
    }

    /// Reads and scans the manifest at `path`.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Manifest::parse(&text))
    }

    /// The raw value of `key` (dot-separated) in `[table]`; `table` "" is the top level.
    pub fn get(&self, table: &str, key: &str) -> Option<&str> {
        let (table, key) = (split_dotted(table), split_dotted(key));
        self.entries.iter().find(|e| e.table == table && e.key == key).map(|e| e.value.as_str())
    }

    /// `[package] name`.
    pub fn package_name(&self) -> Option<String> {
        self.get("package", "name").and_then(unquote)
    }

    /// The string values of `key` in every `[[table]]` instance, e.g. the `[[bench]]` names.
    pub fn array_table_values(&self, table: &str, key: &str) -> Vec<String> {
        let (table, key) = (split_dotted(table), split_dotted(key));
        self.entries
            .iter()
            .filter(|e| e.array && e.table == table && e.key == key)
            .filter_map(|e| unquote(&e.value))
            .collect()
    }

    /// Whether the manifest opts into the workspace lints (`[lints] workspace = true`, or
    /// the dotted / inline forms of the same).
    pub fn lints_workspace(&self) -> bool {
        self.get("lints", "workspace") == Some("true")
            || self.get("", "lints.workspace") == Some("true")
            || self.get("", "lints").and_then(|v| inline_table_get(v, "workspace")).as_deref()
                == Some("true")
    }

    /// `[workspace] members`.
    pub fn workspace_members(&self) -> Vec<String> {
        self.get("workspace", "members").map(string_array).unwrap_or_default()
    }

    /// Every dependency in `[dependencies]`, `[dev-dependencies]`, `[build-dependencies]`
    /// and their `[target.X.*]` forms, including `[dependencies.name]` tables.
    pub fn dependencies(&self) -> Vec<Dep> {
        // (table index, alias) -> position in `deps`, so dotted keys of one dependency
        // (`x.workspace = true`, `x.package = "y"`) make one entry.
        let mut seen: Vec<(usize, String)> = Vec::new();
        let mut deps: Vec<Dep> = Vec::new();
        for e in &self.entries {
            let (kind, target, rest) = match e.table.as_slice() {
                [t, cfg, kind, rest @ ..] if t == "target" => (kind, Some(cfg.clone()), rest),
                [kind, rest @ ..] => (kind, None, rest),
                [] => continue,
            };
            let Some(kind) = DepKind::from_table(kind) else { continue };
            // Which alias this line is about, and whether it renames the package.
            let (alias, package) = match rest {
                [] => {
                    let alias = e.key[0].clone();
                    let package = match e.key.as_slice() {
                        [_] => inline_table_get(&e.value, "package"),
                        [_, field] if field == "package" => unquote(&e.value),
                        _ => None,
                    };
                    (alias, package)
                }
                [alias] => {
                    let package = (e.key == ["package"]).then(|| unquote(&e.value)).flatten();
                    (alias.clone(), package)
                }
                _ => continue,
            };
            let id = (e.table_index, alias.clone());
            match seen.iter().position(|s| *s == id) {
                Some(i) => {
                    if let Some(package) = package {
                        deps[i].name = package;
                    }
                }
                None => {
                    seen.push(id);
                    let name = package.unwrap_or(alias);
                    deps.push(Dep { name, kind, target, line: e.line });
                }
            }
        }
        deps
    }
}

/// The Cargo.toml paths of the workspace members listed in the root manifest, expanding
/// trailing `dir/*` globs to the subdirectories that hold a Cargo.toml.
pub fn member_manifests(root: &Path) -> Result<Vec<PathBuf>> {
    let workspace = Manifest::read(&root.join("Cargo.toml"))?;
    let mut out = Vec::new();
    for member in workspace.workspace_members() {
        if let Some(dir) = member.strip_suffix("/*") {
            let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
                .with_context(|| format!("listing {dir}"))?
                .filter_map(|entry| entry.ok().map(|e| e.path().join("Cargo.toml")))
                .filter(|path| path.is_file())
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(root.join(member).join("Cargo.toml"));
        }
    }
    Ok(out)
}

/// The crates under `crates/`: (folder name, manifest), sorted by folder.
pub fn workspace_crates(root: &Path) -> Result<Vec<(String, Manifest)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).context("listing crates/")? {
        let path = entry?.path();
        let manifest_path = path.join("Cargo.toml");
        if manifest_path.is_file() {
            let folder = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            out.push((folder, Manifest::read(&manifest_path)?));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The text of a string value without its quotes; `None` if `value` is not a string.
pub fn unquote(value: &str) -> Option<String> {
    let value = value.trim();
    for quote in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(quote) && value.ends_with(quote) {
            let inner = &value[1..value.len() - 1];
            return Some(if quote == '"' { inner.replace("\\\"", "\"") } else { inner.into() });
        }
    }
    None
}

/// The strings in an array value such as `["crates/*", "xtask"]`.
pub fn string_array(value: &str) -> Vec<String> {
    let value = value.trim();
    let inner = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
    split_unquoted(inner, ',').iter().filter_map(|item| unquote(item)).collect()
}

/// The value of `key` in an inline table such as `{ package = "x", version = "1" }`,
/// unquoted if it is a string.
pub fn inline_table_get(value: &str, key: &str) -> Option<String> {
    let inner = value.trim().strip_prefix('{')?.strip_suffix('}')?;
    split_unquoted(inner, ',').iter().find_map(|pair| {
        let eq = find_unquoted(pair, '=')?;
        (split_dotted(&pair[..eq]) == [key]).then(|| {
            let v = pair[eq + 1..].trim();
            unquote(v).unwrap_or_else(|| v.to_string())
        })
    })
}

/// `line` up to its first `#` that is not inside a string.
fn strip_comment(line: &str) -> &str {
    find_unquoted(line, '#').map_or(line, |i| &line[..i])
}

/// Byte offset of the first `target` character outside quoted strings.
fn find_unquoted(s: &str, target: char) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == target => return Some(i),
            None => {}
        }
    }
    None
}

/// Splits `s` at `sep` outside quotes and outside brackets and braces; trims each part.
fn split_unquoted(s: &str, sep: char) -> Vec<String> {
    let (mut parts, mut current) = (Vec::new(), String::new());
    let (mut quote, mut depth): (Option<char>, i32) = (None, 0);
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '[' || c == '{' => depth += 1,
            None if c == ']' || c == '}' => depth -= 1,
            None if c == sep && depth == 0 => {
                parts.push(current.trim().to_string());
                current.clear();
                continue;
            }
            None => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        parts.push(current.trim().to_string());
    }
    parts
}

/// The segments of a dotted key or header, quotes removed: `target.'cfg(loom)'.dependencies`
/// gives `["target", "cfg(loom)", "dependencies"]`.
fn split_dotted(s: &str) -> Vec<String> {
    split_unquoted(s, '.').into_iter().map(|seg| unquote(&seg).unwrap_or(seg)).collect()
}

/// Open `[` minus closing `]` outside strings.
fn bracket_depth(s: &str) -> i32 {
    let (mut quote, mut depth): (Option<char>, i32) = (None, 0);
    for c in s.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '[' => depth += 1,
            None if c == ']' => depth -= 1,
            None => {}
        }
    }
    depth
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[package]
name = "dfly-ipi" # the crossbar
description = "a # in a string"

[dependencies]
dfly-core.workspace = true
renamed = { package = "dfly-lwkt", path = "../lwkt" }
plain = "1"
aliased.package = "dfly-msgport"
aliased.workspace = true

[target.'cfg(loom)'.dependencies]
loom.workspace = true

[dev-dependencies.dfly-kcont]
path = "../kcont"

[[bench]]
name = "ipi"
harness = false

[[bench]]
name = "lwkt"

[workspace]
members = [
    "crates/*", # all crates
    "xtask",
]

[lints]
workspace = true
"#;

    #[test]
    fn scans_keys_tables_and_comments() {
        let m = Manifest::parse(SAMPLE);
        assert_eq!(m.package_name().as_deref(), Some("dfly-ipi"));
        assert_eq!(m.get("package", "description"), Some("\"a # in a string\""));
        assert_eq!(m.array_table_values("bench", "name"), ["ipi", "lwkt"]);
        assert_eq!(m.workspace_members(), ["crates/*", "xtask"]);
        assert!(m.lints_workspace());
        assert!(!Manifest::parse("[lints]\nworkspace = false\n").lints_workspace());
        assert!(Manifest::parse("lints.workspace = true\n").lints_workspace());
    }

    #[test]
    fn finds_every_dependency_form() {
        let deps = Manifest::parse(SAMPLE).dependencies();
        let names: Vec<(&str, DepKind, Option<&str>)> =
            deps.iter().map(|d| (d.name.as_str(), d.kind, d.target.as_deref())).collect();
        assert_eq!(
            names,
            [
                ("dfly-core", DepKind::Normal, None),
                ("dfly-lwkt", DepKind::Normal, None),
                ("plain", DepKind::Normal, None),
                ("dfly-msgport", DepKind::Normal, None),
                ("loom", DepKind::Normal, Some("cfg(loom)")),
                ("dfly-kcont", DepKind::Dev, None),
            ]
        );
        assert_eq!(deps[0].line, 7);
    }

    #[test]
    fn value_helpers() {
        assert_eq!(unquote("'x'").as_deref(), Some("x"));
        assert_eq!(unquote("true"), None);
        assert_eq!(inline_table_get("{ a = 1, b = \"c,d\" }", "b").as_deref(), Some("c,d"));
        assert_eq!(inline_table_get("{ a = [1, 2] }", "a").as_deref(), Some("[1, 2]"));
        assert_eq!(string_array("[\"a\", 'b',]"), ["a", "b"]);
    }
}
