//! `status` and `finalize` of the `labels` job (and the status printing and completeness check every unit job
//! shares): what the bookkeeping says, printed for people and merged.
//!
//! Every array task rebuilds the same deterministic unit list, so the plan (`OUT/_plan/params=<hash>.json`)
//! is the contract between shards: `status` asks the bookkeeping which planned units are done (its one rule),
//! which failed last time and which are missing, and prints the shards to rerun as a Slurm `--array`
//! expression; `finalize` checks that every planned unit is done and merges the per-unit statistics into one
//! manifest (`OUT/_manifest-<hash>.json`).

use std::collections::BTreeSet;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use mrdino_outputs::bookkeeping::{choose_partition, DoneMarker, Status, WhenSeveral};
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS};
use serde::Serialize;

use crate::job::{LabelCounts, LabelsMarker};

/// Compact Slurm array expression: `0-3,5,7-9`.
pub fn array_expression(indices: &BTreeSet<u64>) -> String {
    let mut parts = Vec::new();
    let mut iter = indices.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// Done / failed / missing units of the labels plan in `out`.
pub fn status(out: &Path, params: Option<&str>, num_shards: Option<NonZeroU64>) -> Result<Status<LabelCounts>> {
    let choice = choose_partition(out, LABELS_DATA_DIRS, params, WhenSeveral::Refuse)?;
    let ledger = Layout::new(out, &choice.params_hash).ledger();
    Ok(ledger.status(num_shards)?)
}

/// Prints a status for people.
pub fn print_status(status: &Status<LabelCounts>) {
    let done = status.done.values().map(|m| &m.payload);
    let (frames, labelled, instances) = done.fold((0, 0, 0), |(f, l, i), c| {
        (f + c.frame_rows, l + c.labelled_frames, i + c.instances)
    });
    let frame_failures: usize = status.done.values().map(|m| m.failures.len()).sum();
    print_job_status(
        "",
        status,
        &format!("{frames} frames, {labelled} labelled, {instances} instances, {frame_failures} frame failures"),
    );
}

/// Prints the status of any unit job for people: `job` names it before the parameter hash (`features `,
/// `predictions `, …; empty for labels) and `done_totals` says what the done units hold.
pub fn print_job_status<P>(job: &str, status: &Status<P>, done_totals: &str) {
    println!(
        "{job}params {} ({}) — {} units planned",
        status.plan.params_hash,
        status.plan.dataset,
        status.plan.units.len()
    );
    println!("  done     {:>6}  ({done_totals})", status.done.len());
    println!("  failed   {:>6}", status.failed.len());
    for (unit, error) in &status.failed {
        println!("    {unit}: {error}");
    }
    println!("  missing  {:>6}", status.missing.len());
    for unit in status.missing.iter().take(10) {
        println!("    {unit}");
    }
    if status.missing.len() > 10 {
        println!("    … and {} more", status.missing.len() - 10);
    }
    for problem in &status.unreadable_manifests {
        println!("  unreadable run manifest: {problem}");
    }
    match status.shards_to_rerun() {
        Some(shards) if !shards.is_empty() => {
            println!(
                "  shards to rerun (of {}): --array={}",
                status.num_shards.map_or(0, NonZeroU64::get),
                array_expression(&shards)
            );
        }
        Some(_) => println!("  all shards complete; next: mrdino finalize --out …"),
        None if status.complete() => println!("  complete; next: mrdino finalize --out …"),
        None => println!("  (pass --num-shards N to list the shards to rerun)"),
    }
}

/// Refuses an incomplete job (printing its status with `print`), else the done units' markers in plan order.
pub fn require_complete<'a, P>(report: &'a Status<P>, print: impl Fn(&Status<P>)) -> Result<Vec<&'a DoneMarker<P>>> {
    if !report.complete() {
        print(report);
        bail!(
            "not finalized: {} of {} planned units are not done ({} failed, {} missing)",
            report.failed.len() + report.missing.len(),
            report.plan.units.len(),
            report.failed.len(),
            report.missing.len()
        );
    }
    Ok(report.done_in_plan_order())
}

/// Merged manifest of a finished dataset.
#[derive(Serialize)]
struct FinalManifest<'a> {
    params_hash: &'a str,
    dataset: &'a str,
    params: serde_json::Value,
    code_versions: BTreeSet<String>,
    units: usize,
    frames: usize,
    labelled_frames: usize,
    instances: usize,
    frame_failures: usize,
    seconds: f64,
    per_unit: Vec<&'a LabelsMarker>,
}

pub fn finalize(out: &Path, params: Option<&str>) -> Result<PathBuf> {
    let report = status(out, params, None)?;
    let markers = require_complete(&report, print_status)?;
    let ledger = Layout::new(out, &report.plan.params_hash).ledger();
    let manifest = FinalManifest {
        params_hash: &report.plan.params_hash,
        dataset: &report.plan.dataset,
        params: ledger.read_params()?.unwrap_or(serde_json::Value::Null),
        code_versions: markers.iter().map(|m| m.code_version.clone()).collect(),
        units: markers.len(),
        frames: markers.iter().map(|m| m.payload.frame_rows).sum(),
        labelled_frames: markers.iter().map(|m| m.payload.labelled_frames).sum(),
        instances: markers.iter().map(|m| m.payload.instances).sum(),
        frame_failures: markers.iter().map(|m| m.failures.len()).sum(),
        seconds: markers.iter().map(|m| m.seconds).sum(),
        per_unit: markers,
    };
    Ok(ledger.write_final_manifest(&manifest)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_expressions_are_compact() {
        let set: BTreeSet<u64> = [0, 1, 2, 3, 5, 7, 8, 9, 12].into_iter().collect();
        assert_eq!(array_expression(&set), "0-3,5,7-9,12");
        assert_eq!(array_expression(&BTreeSet::new()), "");
    }
}
