//! `status` and `finalize` for any job kind, from what the bookkeeping says.
//!
//! Every array task rebuilds the same deterministic unit list, so the plan (`OUT/_plan/params=<hash>.json`) is the
//! contract between shards: `status` asks the bookkeeping which planned units are done (its one rule), which
//! failed last time and which are missing, and prints the shards to rerun as a Slurm `--array` expression;
//! A unit whose files no longer match what its marker recorded (size, XXH3-128) is *corrupt*: listed with the file
//! and why, not complete, and redone by the next run of the same command. `finalize` checks that every planned
//! unit is done and merges the per-unit statistics into one manifest
//! (`OUT/_manifest-<hash>.json`). The kind of job in a directory is read from its plans; each kind is described by
//! a [`JobKind`] (its data directories and which marker counts it totals), so one implementation serves them all.

use std::collections::BTreeSet;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use mrdino_outputs::bookkeeping::{choose_partition, AnyPayload, DoneMarker, Ledger, Status, WhenSeveral};

/// What `status` and `finalize` need to know of a job kind.
#[derive(Clone, Copy, Debug)]
pub struct JobKind {
    /// The kind recorded in the bookkeeping (`labels`, `flow`, `features`, …).
    pub kind: &'static str,
    /// Word printed before the parameter hash (`features `, …; empty for labels).
    pub label: &'static str,
    /// Directories holding `params=<hash>` partitions (for the choice of partition).
    pub data_dirs: &'static [&'static str],
    /// Totals over the done units: (final-manifest key, marker payload field, word in the status line).
    pub totals: &'static [(&'static str, &'static str, &'static str)],
    /// Whether frame failures are part of the status line.
    pub frame_failures: bool,
}

/// The job kind recorded in the plans of `out` (`None` when it holds none).
pub fn recorded_kind(out: &Path) -> Option<String> {
    let entries = std::fs::read_dir(out.join("_plan")).ok()?;
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths.into_iter().find_map(|p| {
        std::fs::read(&p)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|plan| plan["kind"].as_str().map(str::to_string))
    })
}

/// The kind of the job in `out` among `kinds` (the first, labels, when `out` records none).
pub fn kind_of<'a>(out: &Path, kinds: &'a [JobKind]) -> Result<&'a JobKind> {
    let recorded = recorded_kind(out);
    match recorded.as_deref() {
        None => kinds.first().ok_or_else(|| anyhow::anyhow!("no job kinds")),
        Some(k) => match kinds.iter().find(|j| j.kind == k) {
            Some(kind) => Ok(kind),
            None => bail!("{} holds a job of kind `{k}`, which has no status", out.display()),
        },
    }
}

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

/// Done / failed / missing units of the job of `kind` in `out`.
pub fn status(
    kind: &JobKind,
    out: &Path,
    params: Option<&str>,
    num_shards: Option<NonZeroU64>,
) -> Result<Status<AnyPayload>> {
    let choice = choose_partition(out, kind.data_dirs, params, WhenSeveral::Refuse)?;
    Ok(Ledger::new(out, kind.kind, &choice.params_hash).status(num_shards)?)
}

/// The sum of payload field `field` over `markers`.
fn sum_field<'a>(markers: impl Iterator<Item = &'a DoneMarker<AnyPayload>>, field: &str) -> u64 {
    markers
        .map(|m| m.payload.get(field).and_then(serde_json::Value::as_u64).unwrap_or(0))
        .sum()
}

/// Prints a status for people.
pub fn print_status(kind: &JobKind, status: &Status<AnyPayload>) {
    let mut totals: Vec<String> = kind
        .totals
        .iter()
        .map(|(_, field, word)| format!("{} {word}", sum_field(status.done.values(), field)))
        .collect();
    if kind.frame_failures {
        let failures: usize = status.done.values().map(|m| m.failures.len()).sum();
        totals.push(format!("{failures} frame failures"));
    }
    println!(
        "{}params {} ({}) — {} units planned",
        kind.label,
        status.plan.params_hash,
        status.plan.dataset,
        status.plan.units.len()
    );
    println!("  done     {:>6}  ({})", status.done.len(), totals.join(", "));
    if status.unchecked_done() > 0 {
        println!(
            "    {} of them with markers of an earlier mrdino, which vouch for the files' existence only",
            status.unchecked_done()
        );
    }
    println!("  corrupt  {:>6}", status.corrupt.len());
    for (unit, corruption) in &status.corrupt {
        println!("    {unit}: {corruption}");
    }
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

/// Checks that every planned unit of the job in `out` is done (else prints its status and fails) and writes the
/// merged manifest; returns its path.
pub fn finalize(kind: &JobKind, out: &Path, params: Option<&str>) -> Result<PathBuf> {
    let report = status(kind, out, params, None)?;
    if !report.complete() {
        print_status(kind, &report);
        bail!(
            "not finalized: {} of {} planned units are not done ({} corrupt, {} failed, {} missing)",
            report.not_done(),
            report.plan.units.len(),
            report.corrupt.len(),
            report.failed.len(),
            report.missing.len()
        );
    }
    let markers = report.done_in_plan_order();
    let ledger = Ledger::new(out, kind.kind, &report.plan.params_hash);
    let mut manifest = serde_json::Map::new();
    manifest.insert("kind".into(), kind.kind.into());
    manifest.insert("params_hash".into(), report.plan.params_hash.clone().into());
    manifest.insert("dataset".into(), report.plan.dataset.clone().into());
    manifest.insert("params".into(), ledger.read_params()?.unwrap_or(serde_json::Value::Null));
    let versions: BTreeSet<&str> = markers.iter().map(|m| m.code_version.as_str()).collect();
    manifest.insert("code_versions".into(), serde_json::to_value(versions)?);
    manifest.insert("units".into(), markers.len().into());
    for (key, field, _) in kind.totals {
        manifest.insert((*key).into(), sum_field(markers.iter().copied(), field).into());
    }
    let failures: usize = markers.iter().map(|m| m.failures.len()).sum();
    manifest.insert("frame_failures".into(), failures.into());
    manifest.insert("seconds".into(), markers.iter().map(|m| m.seconds).sum::<f64>().into());
    manifest.insert("per_unit".into(), serde_json::to_value(&markers)?);
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
