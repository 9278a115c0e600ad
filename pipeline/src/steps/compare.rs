//! `mrdino compare`: one table of the metrics of several `mrdino eval` results, in the order given (e.g. the
//! pseudo-labels, the baseline, stage 1 and stage 2, as the paper's ablation tables list them), also written as
//! JSON. The JSON output may not be (or lie inside, or contain) one of the `--eval` files: that is refused
//! before anything is read.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mrdino_outputs::write_atomic;
use serde::Serialize;

use crate::cli::compare::CompareArgs;
use crate::engine::paths::check_outputs;
use crate::engine::progress::print_stdout;

/// One row of the comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompareRow {
    pub name: String,
    pub source: PathBuf,
    pub f1_50: f64,
    pub ap50: f64,
    pub ar50: f64,
    pub fg_ari: Option<f64>,
    pub all_ari: Option<f64>,
    pub images: u64,
}

/// `NAME=FILE` of `--eval`.
fn parse_spec(spec: &str) -> Result<(&str, PathBuf)> {
    let Some((name, file)) = spec.split_once('=') else {
        bail!("--eval {spec}: expected NAME=FILE");
    };
    Ok((name, PathBuf::from(file)))
}

fn read_row(spec: &str) -> Result<CompareRow> {
    let (name, path) = parse_spec(spec)?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let metrics = json
        .get("metrics")
        .with_context(|| format!("{}: no `metrics` object (not written by mrdino eval?)", path.display()))?;
    let number = |key: &str| -> Result<f64> {
        metrics
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("{}: metrics.{key} is missing or not a number", path.display()))
    };
    Ok(CompareRow {
        name: name.to_string(),
        f1_50: number("f1_50")?,
        ap50: number("ap50")?,
        ar50: number("ar50")?,
        fg_ari: metrics.get("fg_ari").and_then(serde_json::Value::as_f64),
        all_ari: metrics.get("all_ari").and_then(serde_json::Value::as_f64),
        images: metrics.get("images").and_then(serde_json::Value::as_u64).unwrap_or(0),
        source: path,
    })
}

/// The table as text (metrics in percent, as the paper prints them).
pub fn format_rows(rows: &[CompareRow]) -> String {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let pct = |v: f64| format!("{:>7.1}", 100.0 * v);
    let opt = |v: Option<f64>| v.map_or_else(|| format!("{:>7}", "–"), pct);
    let mut s = format!(
        "{:<width$}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}  {:>7}\n",
        "step", "F1@50", "AP50", "AR50", "fg-ARI", "all-ARI", "images"
    );
    for r in rows {
        s.push_str(&format!(
            "{:<width$}  {}  {}  {}  {}  {}  {:>7}\n",
            r.name,
            pct(r.f1_50),
            pct(r.ap50),
            pct(r.ar50),
            opt(r.fg_ari),
            opt(r.all_ari),
            r.images
        ));
    }
    s
}

pub fn run(args: &CompareArgs) -> Result<()> {
    if let Some(json) = &args.json {
        let files = args.evals.iter().map(|s| parse_spec(s)).collect::<Result<Vec<_>>>()?;
        let inputs: Vec<(&str, &Path)> = files.iter().map(|(_, file)| ("--eval", file.as_path())).collect();
        check_outputs(&inputs, &[("--json", json)])?;
    }
    let rows = args.evals.iter().map(|s| read_row(s)).collect::<Result<Vec<_>>>()?;
    print_stdout(&format_rows(&rows))?;
    if let Some(path) = &args.json {
        write_atomic(path, &serde_json::to_vec_pretty(&rows)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_from_eval_json_and_bad_files_are_named() {
        let dir = tempfile::tempdir().expect("tmp");
        let good = dir.path().join("a.json");
        std::fs::write(
            &good,
            r#"{"metrics": {"f1_50": 0.5, "ap50": 0.25, "ar50": 1.0, "fg_ari": null, "all_ari": 0.75, "images": 3}}"#,
        )
        .expect("write");
        let row = read_row(&format!("stage 2={}", good.display())).expect("row");
        assert_eq!(
            (row.name.as_str(), row.f1_50, row.fg_ari, row.images),
            ("stage 2", 0.5, None, 3)
        );
        let table = format_rows(&[row]);
        assert!(table.contains("   50.0") && table.contains("   75.0"), "{table}");
        let bad = dir.path().join("b.json");
        std::fs::write(&bad, r#"{"metrics": {"f1_50": "x"}}"#).expect("write");
        let e = read_row(&format!("x={}", bad.display())).expect_err("bad").to_string();
        assert!(e.contains("b.json") && e.contains("f1_50"), "{e}");
        assert!(read_row("no-equals").is_err());
    }
}
