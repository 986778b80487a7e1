//! Turning results into something to read: the comparison table on the terminal, the goal
//! lines, `target/bench/report.md` and one SVG bar chart per case and metric.
//!
//! Ratios are always `dfly / peer` from numbers of the same run: for a higher-is-better
//! metric above 1 means dfly is ahead, for a lower-is-better one below 1 does. The SVG is
//! written by hand (no dependency); all text in it is XML-escaped.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::goals::{self, Outcome};
use crate::results::{Record, Results, DFLY};

/// The records of one suite/case/metric, dfly first, then peers in run order.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    /// Suite.
    pub suite: &'a str,
    /// Case.
    pub case: &'a str,
    /// Metric.
    pub metric: &'a str,
    /// One record per impl (the last one if an impl reported twice).
    pub rows: Vec<&'a Record>,
}

impl Group<'_> {
    /// dfly's record, if the run has one.
    pub fn dfly(&self) -> Option<&Record> {
        self.rows.iter().copied().find(|r| r.impl_ == DFLY)
    }

    /// The unit (dfly's, else the first row's).
    pub fn unit(&self) -> &str {
        self.dfly().or(self.rows.first().copied()).map_or("", |r| r.unit.as_str())
    }

    /// Whether lower is better (as dfly's record says, else the first row).
    pub fn lower_is_better(&self) -> bool {
        self.dfly().or(self.rows.first().copied()).is_some_and(|r| r.lower_is_better)
    }

    /// `dfly / row` when both exist and the division means something.
    pub fn ratio(&self, row: &Record) -> Option<f64> {
        let ratio = self.dfly()?.value / row.value;
        ratio.is_finite().then_some(ratio)
    }

    /// `(Mmsg/s, higher is better)`.
    pub fn direction(&self) -> String {
        let better = if self.lower_is_better() { "lower" } else { "higher" };
        match self.unit() {
            "" => format!("({better} is better)"),
            unit => format!("({unit}, {better} is better)"),
        }
    }

    /// The chart's file name: `<suite>-<sanitized case>-<metric>.svg`.
    pub fn svg_name(&self) -> String {
        format!("{}-{}-{}.svg", sanitize(self.suite), sanitize(self.case), sanitize(self.metric))
    }
}

/// Groups records by suite, case and metric in order of first appearance.
pub fn groups(records: &[Record]) -> Vec<Group<'_>> {
    let mut out: Vec<Group<'_>> = Vec::new();
    for r in records {
        let index = match out.iter().position(|g| r.is(g.suite, g.case, g.metric)) {
            Some(i) => i,
            None => {
                out.push(Group {
                    suite: &r.suite,
                    case: &r.case,
                    metric: &r.metric,
                    rows: Vec::new(),
                });
                out.len() - 1
            }
        };
        let rows = &mut out[index].rows;
        match rows.iter().position(|row| row.impl_ == r.impl_) {
            Some(i) => rows[i] = r,
            None => rows.push(r),
        }
    }
    for g in &mut out {
        g.rows.sort_by_key(|r| r.impl_ != DFLY); // stable: dfly first, peers in run order
    }
    out
}

/// Four significant digits, trailing zeros trimmed, no exponent: `123.4`, `0.9512`, `5`.
pub fn fmt_value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (3 - magnitude).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A ratio: `0.95x`, `12.34x`.
pub fn fmt_ratio(r: f64) -> String {
    if r.abs() >= 0.01 || r == 0.0 {
        format!("{r:.2}x")
    } else {
        format!("{}x", fmt_value(r))
    }
}

/// A value with its unit: symbols stick to the number (`12ns`, `1.1x`, `99.5%`), words
/// get a space (`123.4 Mmsg/s`).
pub fn fmt_with_unit(v: f64, unit: &str) -> String {
    let glued = ["", "ns", "us", "µs", "ms", "s", "x", "%", "B", "KiB", "MiB"];
    let sep = if glued.contains(&unit) { "" } else { " " };
    format!("{}{sep}{unit}", fmt_value(v))
}

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A file-name-safe form: anything but `[A-Za-z0-9._-]` becomes `_`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect()
}

/// A markdown table; `right` marks right-aligned columns. Pipes and newlines in cells are
/// escaped so a cell cannot break the table.
pub fn md_table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out =
        format!("| {} |\n|", headers.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | "));
    for i in 0..headers.len() {
        out.push_str(if right.get(i).copied().unwrap_or(false) { "---:|" } else { "---|" });
    }
    out.push('\n');
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// A horizontal bar chart of one group: one bar per impl, dfly highlighted, value labels.
pub fn svg_chart(g: &Group<'_>) -> String {
    const WIDTH: usize = 800;
    const LABEL_W: usize = 300;
    const BAR_X: usize = LABEL_W + 10;
    const BAR_MAX: usize = WIDTH - BAR_X - 130;
    const ROW_H: usize = 26;
    const TOP: usize = 56;
    let height = TOP + g.rows.len() * ROW_H + 16;
    let max = g.rows.iter().map(|r| r.value).fold(0.0_f64, f64::max);
    let title = format!("{} {} {}", g.case, g.metric, g.direction());
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(svg, "<title>{}</title>", xml_escape(&title));
    let _ = writeln!(svg, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        svg,
        r#"<text x="12" y="24" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(&title)
    );
    let subtitle = format!("suite {}; the orange bar is dfly", g.suite);
    let _ = writeln!(
        svg,
        r##"<text x="12" y="44" font-size="12" fill="#555555">{}</text>"##,
        xml_escape(&subtitle)
    );
    for (i, r) in g.rows.iter().enumerate() {
        let y = TOP + i * ROW_H;
        let width =
            if max > 0.0 { (r.value.max(0.0) / max * BAR_MAX as f64).round() as usize } else { 0 };
        let (fill, weight) =
            if r.impl_ == DFLY { ("#e8590c", "bold") } else { ("#4c6ef5", "normal") };
        let _ = writeln!(
            svg,
            r#"<text x="{LABEL_W}" y="{}" text-anchor="end" font-weight="{weight}">{}</text>"#,
            y + 17,
            xml_escape(&r.impl_)
        );
        let _ = writeln!(
            svg,
            r#"<rect x="{BAR_X}" y="{}" width="{width}" height="{}" fill="{fill}"/>"#,
            y + 4,
            ROW_H - 8
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            BAR_X + width + 6,
            y + 17,
            xml_escape(&fmt_with_unit(r.value, &r.unit))
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The comparison table for the terminal.
pub fn terminal_table(records: &[Record]) -> String {
    let groups = groups(records);
    let width = records.iter().map(|r| r.impl_.len()).max().unwrap_or(4).max(4);
    let mut out = String::new();
    let mut suite = "";
    for g in &groups {
        if g.suite != suite {
            suite = g.suite;
            let _ = writeln!(out, "\nsuite {suite}  (ratio = dfly/peer, same run)");
        }
        let _ = writeln!(out, "  {} {} {}", g.case, g.metric, g.direction());
        for r in &g.rows {
            let value = fmt_with_unit(r.value, &r.unit);
            let mut line = format!("    {:<width$}  {value:>14}", r.impl_);
            if r.impl_ != DFLY {
                if let Some(ratio) = g.ratio(r) {
                    let ahead = if g.lower_is_better() { ratio < 1.0 } else { ratio > 1.0 };
                    let verdict = if ratio == 1.0 {
                        "even"
                    } else if ahead {
                        "dfly ahead"
                    } else {
                        "dfly behind"
                    };
                    let _ = write!(line, "  {:>8}  {verdict}", fmt_ratio(ratio));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    out
}

/// `target/bench/report.md`.
pub fn markdown(results: &Results, outcomes: &[Outcome]) -> String {
    let mut out = String::from("# dfly benchmark report\n\n");
    let _ = writeln!(out, "- {}", results.machine.line());
    let _ = writeln!(out, "- mode: {}", results.mode);
    let _ = writeln!(out, "- date: {}\n", results.date);
    out.push_str(
        "Every ratio is dfly / peer, computed from numbers taken in the same run. For a \
         higher-is-better metric a ratio above 1 means dfly is ahead; for a lower-is-better \
         metric, below 1 does.\n",
    );
    let groups = groups(&results.results);
    let mut suite = "";
    for g in &groups {
        if g.suite != suite {
            suite = g.suite;
            let _ = writeln!(out, "\n## Suite `{suite}`");
        }
        let _ = writeln!(out, "\n### {} — {} {}\n", g.case, g.metric, g.direction());
        let _ = writeln!(out, "![{} {}]({})\n", g.case, g.metric, g.svg_name());
        let rows: Vec<Vec<String>> = g
            .rows
            .iter()
            .map(|r| {
                let name =
                    if r.impl_ == DFLY { format!("**{}**", r.impl_) } else { r.impl_.clone() };
                let ratio = if r.impl_ == DFLY {
                    "-".into()
                } else {
                    g.ratio(r).map_or("-".into(), fmt_ratio)
                };
                vec![name, fmt_value(r.value), r.unit.clone(), ratio]
            })
            .collect();
        out.push_str(&md_table(
            &["impl", "value", "unit", "ratio vs dfly"],
            &[false, true, false, true],
            &rows,
        ));
    }
    let _ = writeln!(out, "\n## Goals\n\n{}\n", goals::summary(outcomes));
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            let dfly =
                o.subject.value.as_ref().map_or("missing".into(), |(v, u)| fmt_with_unit(*v, u));
            let peer = o.peer.as_ref().map_or("-".into(), |p| p.render());
            let ratio = if o.peer.is_some() { o.ratio_text() } else { "-".into() };
            let status = match o.status {
                goals::Status::Met => "met".to_string(),
                other => format!("**{}**", other.word()),
            };
            vec![
                o.label.clone(),
                o.case.clone(),
                o.metric.clone(),
                dfly,
                peer,
                ratio,
                o.goal_text(),
                status,
            ]
        })
        .collect();
    out.push_str(&md_table(
        &["goal", "case", "metric", "dfly", "peer", "ratio", "goal", "status"],
        &[false, false, false, true, false, true, false, false],
        &rows,
    ));
    out
}

/// Prints the comparison table and goal lines, and writes `report.md` and the SVGs into
/// `dir` (replacing SVGs of earlier reports).
pub fn write_all(results: &Results, dir: &Path) -> Result<()> {
    print!("{}", terminal_table(&results.results));
    let outcomes = goals::evaluate(goals::TABLES, &results.results);
    println!();
    for outcome in &outcomes {
        println!("{}", outcome.line());
    }
    println!("{}", goals::summary(&outcomes));

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "svg") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let groups = groups(&results.results);
    for g in &groups {
        let path = dir.join(g.svg_name());
        std::fs::write(&path, svg_chart(g))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let report = dir.join("report.md");
    std::fs::write(&report, markdown(results, &outcomes))
        .with_context(|| format!("writing {}", report.display()))?;
    println!("\nwrote {} and {} charts in {}", report.display(), groups.len(), dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Machine;
    use crate::results::tests::rec;

    #[test]
    fn values_and_ratios_read_well() {
        assert_eq!(fmt_value(123.4), "123.4");
        assert_eq!(fmt_value(123456.7), "123457");
        assert_eq!(fmt_value(0.95123), "0.9512");
        assert_eq!(fmt_value(5.0), "5");
        assert_eq!(fmt_value(0.0), "0");
        assert_eq!(fmt_value(-2.5), "-2.5");
        assert_eq!(fmt_ratio(0.9512), "0.95x");
        assert_eq!(fmt_ratio(0.00123), "0.00123x");
        assert_eq!(fmt_with_unit(12.0, "ns"), "12ns");
        assert_eq!(fmt_with_unit(12.0, "Mmsg/s"), "12 Mmsg/s");
    }

    #[test]
    fn escapes_xml_and_file_names() {
        assert_eq!(xml_escape(r#"a<b>&"c"'d'"#), "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;");
        assert_eq!(sanitize("all_to_all/N=2"), "all_to_all_N_2");
    }

    #[test]
    fn markdown_table_escapes_pipes() {
        let rows = vec![vec!["a|b".to_string(), "1".to_string()]];
        assert_eq!(
            md_table(&["impl", "value"], &[false, true], &rows),
            "| impl | value |\n|---|---:|\n| a\\|b | 1 |\n"
        );
    }

    fn sample() -> Vec<Record> {
        vec![
            rec("ipi", "pingpong", "reference-ring", "rtt_p50", 100.0),
            rec("ipi", "pingpong", "dfly", "rtt_p50", 50.0),
            rec("ipi", "pingpong", "<peer & co>", "rtt_p50", 200.0),
            rec("ipi", "pingpong", "dfly", "rtt_p50", 40.0),
        ]
    }

    #[test]
    fn groups_put_dfly_first_and_keep_the_last_duplicate() {
        let records = sample();
        let gs = groups(&records);
        assert_eq!(gs.len(), 1);
        let impls: Vec<&str> = gs[0].rows.iter().map(|r| r.impl_.as_str()).collect();
        assert_eq!(impls, ["dfly", "reference-ring", "<peer & co>"]);
        assert_eq!(gs[0].dfly().map(|r| r.value), Some(40.0));
        assert_eq!(gs[0].ratio(gs[0].rows[1]), Some(0.4));
        assert_eq!(gs[0].svg_name(), "ipi-pingpong-rtt_p50.svg");
        assert_eq!(gs[0].direction(), "(ns, lower is better)");
    }

    #[test]
    fn svg_escapes_and_highlights_dfly() {
        let records = sample();
        let svg = svg_chart(&groups(&records)[0]);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("&lt;peer &amp; co&gt;"));
        assert!(!svg.contains("<peer"));
        assert!(svg.contains("lower is better"));
        assert_eq!(svg.matches("#e8590c").count(), 1);
        assert_eq!(svg.matches("<rect x=").count(), 3);
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn terminal_and_markdown_reports() {
        let records = sample();
        let table = terminal_table(&records);
        assert!(table.contains("reference-ring"), "{table}");
        assert!(table.contains("0.40x  dfly ahead"), "{table}");
        let results = Results {
            machine: Machine { cpu: "cpu".into(), nproc: 2, kernel: "k".into(), rustc: "r".into() },
            mode: "quick".into(),
            date: "2026-01-01T00:00:00Z".into(),
            results: records,
        };
        let outcomes = goals::evaluate(goals::TABLES, &results.results);
        let md = markdown(&results, &outcomes);
        assert!(md.contains("- machine: cpu | nproc 2 | k | r"));
        assert!(md.contains("## Suite `ipi`"));
        assert!(md.contains("![pingpong rtt_p50](ipi-pingpong-rtt_p50.svg)"));
        assert!(md.contains("| reference-ring | 100 | ns | 0.40x |"), "{md}");
        assert!(
            md.contains("| pingpong p50 vs reference ring | pingpong | rtt_p50 | 40ns |"),
            "{md}"
        );
    }
}
