//! Batch bookkeeping: the plan, `status` and `finalize`.
//!
//! Every array task rebuilds the same deterministic unit list, so the plan (`OUT/_plan/params=<hash>.json`)
//! is the contract between shards: `status` compares it with the done markers and the run manifests and
//! prints what is missing as a Slurm `--array` expression; `finalize` checks that every planned unit is done
//! and merges the per-unit statistics into one manifest (`OUT/_manifest-<hash>.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mrdino_datasets::Sequence;
use mrdino_outputs::layout::{stable_hash64, unit_key, Layout};
use mrdino_outputs::write_atomic;
use serde::{Deserialize, Serialize};

use crate::run::{input_fingerprint, DoneMarker, RunManifest, CODE_VERSION};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlannedUnit {
    pub id: String,
    pub key: String,
    /// Frames, when known without decoding (image sequences).
    pub frames: Option<usize>,
    pub input_fingerprint: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub params_hash: String,
    pub dataset: String,
    pub root: PathBuf,
    pub code_version: String,
    pub units: Vec<PlannedUnit>,
}

pub fn build_plan(params_hash: &str, dataset: &str, root: &Path, sequences: &[Sequence]) -> Plan {
    Plan {
        params_hash: params_hash.to_string(),
        dataset: dataset.to_string(),
        root: root.to_path_buf(),
        code_version: CODE_VERSION.to_string(),
        units: sequences
            .iter()
            .map(|s| PlannedUnit {
                id: s.id.clone(),
                key: unit_key(&s.id),
                frames: s.frame_count_hint(),
                input_fingerprint: input_fingerprint(s),
            })
            .collect(),
    }
}

pub fn write_plan(layout: &Layout, plan: &Plan) -> Result<()> {
    write_atomic(&layout.plan_file(), &serde_json::to_vec_pretty(plan)?)?;
    Ok(())
}

/// The parameter partition to report on: the one given, or the only one present.
pub fn choose_params(out: &Path, given: Option<&str>) -> Result<String> {
    let present = Layout::existing_partitions(out);
    let planned: Vec<String> = std::fs::read_dir(out.join("_plan"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("params=")
                .and_then(|n| n.strip_suffix(".json"))
                .map(str::to_string)
        })
        .collect();
    let all: BTreeSet<String> = present.into_iter().chain(planned).collect();
    match given {
        Some(h) if all.contains(h) => Ok(h.to_string()),
        Some(h) => bail!(
            "{} has no outputs or plan for params={h} (present: {:?})",
            out.display(),
            all
        ),
        None => match all.len() {
            0 => bail!("{} holds no mrdino plan or outputs", out.display()),
            1 => Ok(all.into_iter().next().unwrap_or_default()),
            _ => bail!(
                "{} holds several parameter sets ({:?}); choose one with --params",
                out.display(),
                all
            ),
        },
    }
}

fn read_plan(layout: &Layout) -> Result<Plan> {
    let path = layout.plan_file();
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "no plan at {} (run `mrdino plan` or `mrdino labels` first)",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not a valid plan", path.display()))
}

fn read_marker(layout: &Layout, unit: &str) -> Option<DoneMarker> {
    let marker: DoneMarker = serde_json::from_slice(&std::fs::read(layout.done_marker(unit)).ok()?).ok()?;
    let complete = marker.params_hash == layout.params_hash
        && layout.frames_file(unit).is_file()
        && layout.instances_file(unit).is_file();
    complete.then_some(marker)
}

/// Run manifests, oldest first.
fn read_manifests(layout: &Layout) -> Vec<RunManifest> {
    let mut manifests: Vec<RunManifest> = std::fs::read_dir(layout.manifest_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    manifests.sort_by_key(|m| (m.started_unix_s, m.finished_unix_s));
    manifests
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

/// Done / failed / missing units of a plan.
pub struct StatusReport {
    pub plan: Plan,
    pub done: BTreeMap<String, DoneMarker>,
    pub failed: BTreeMap<String, String>,
    pub missing: Vec<String>,
    pub num_shards: Option<u64>,
}

pub fn status(out: &Path, params: Option<&str>, num_shards: Option<u64>) -> Result<StatusReport> {
    let hash = choose_params(out, params)?;
    let layout = Layout::new(out, &hash);
    let plan = read_plan(&layout)?;
    let manifests = read_manifests(&layout);
    let mut last_error: BTreeMap<String, String> = BTreeMap::new();
    for m in &manifests {
        for u in &m.units {
            match (&u.status[..], &u.error) {
                ("failed", Some(e)) => {
                    last_error.insert(u.unit.clone(), e.clone());
                }
                ("done" | "skipped", _) => {
                    last_error.remove(&u.unit);
                }
                _ => {}
            }
        }
    }
    let shards_from_manifests = manifests.iter().rev().find_map(|m| {
        m.shard
            .as_deref()
            .and_then(|s| s.split_once('/'))
            .and_then(|(_, n)| n.parse().ok())
    });
    let mut done = BTreeMap::new();
    let mut failed = BTreeMap::new();
    let mut missing = Vec::new();
    for unit in &plan.units {
        if let Some(marker) = read_marker(&layout, &unit.id) {
            done.insert(unit.id.clone(), marker);
        } else if let Some(e) = last_error.get(&unit.id) {
            failed.insert(unit.id.clone(), e.clone());
        } else {
            missing.push(unit.id.clone());
        }
    }
    Ok(StatusReport {
        plan,
        done,
        failed,
        missing,
        num_shards: num_shards.or(shards_from_manifests),
    })
}

impl StatusReport {
    /// Shard indices holding a unit that is not done.
    pub fn shards_to_rerun(&self) -> Option<BTreeSet<u64>> {
        let n = self.num_shards?;
        Some(
            self.failed
                .keys()
                .chain(&self.missing)
                .map(|u| stable_hash64(u) % n)
                .collect(),
        )
    }

    pub fn print(&self) {
        let frames: usize = self.done.values().map(|m| m.frame_rows).sum();
        let labelled: usize = self.done.values().map(|m| m.labelled_frames).sum();
        let instances: usize = self.done.values().map(|m| m.instances).sum();
        let frame_failures: usize = self.done.values().map(|m| m.failures.len()).sum();
        println!(
            "params {} ({}) — {} units planned",
            self.plan.params_hash,
            self.plan.dataset,
            self.plan.units.len()
        );
        println!("  done     {:>6}  ({frames} frames, {labelled} labelled, {instances} instances, {frame_failures} frame failures)", self.done.len());
        println!("  failed   {:>6}", self.failed.len());
        for (unit, error) in &self.failed {
            println!("    {unit}: {error}");
        }
        println!("  missing  {:>6}", self.missing.len());
        for unit in self.missing.iter().take(10) {
            println!("    {unit}");
        }
        if self.missing.len() > 10 {
            println!("    … and {} more", self.missing.len() - 10);
        }
        match self.shards_to_rerun() {
            Some(shards) if !shards.is_empty() => {
                println!(
                    "  shards to rerun (of {}): --array={}",
                    self.num_shards.unwrap_or(0),
                    array_expression(&shards)
                );
            }
            Some(_) => println!("  all shards complete; next: mrdino finalize --out …"),
            None if self.failed.is_empty() && self.missing.is_empty() => {
                println!("  complete; next: mrdino finalize --out …")
            }
            None => println!("  (pass --num-shards N to list the shards to rerun)"),
        }
    }
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
    per_unit: Vec<&'a DoneMarker>,
}

pub fn finalize(out: &Path, params: Option<&str>) -> Result<PathBuf> {
    let report = status(out, params, None)?;
    if !report.failed.is_empty() || !report.missing.is_empty() {
        report.print();
        bail!(
            "not finalized: {} of {} planned units are not done ({} failed, {} missing)",
            report.failed.len() + report.missing.len(),
            report.plan.units.len(),
            report.failed.len(),
            report.missing.len()
        );
    }
    let layout = Layout::new(out, &report.plan.params_hash);
    let params_json: serde_json::Value = std::fs::read(layout.params_file())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let markers: Vec<&DoneMarker> = report
        .plan
        .units
        .iter()
        .filter_map(|u| report.done.get(&u.id))
        .collect();
    let manifest = FinalManifest {
        params_hash: &report.plan.params_hash,
        dataset: &report.plan.dataset,
        params: params_json,
        code_versions: markers.iter().map(|m| m.code_version.clone()).collect(),
        units: markers.len(),
        frames: markers.iter().map(|m| m.frame_rows).sum(),
        labelled_frames: markers.iter().map(|m| m.labelled_frames).sum(),
        instances: markers.iter().map(|m| m.instances).sum(),
        frame_failures: markers.iter().map(|m| m.failures.len()).sum(),
        seconds: markers.iter().map(|m| m.seconds).sum(),
        per_unit: markers,
    };
    let path = layout.final_manifest();
    write_atomic(&path, &serde_json::to_vec_pretty(&manifest)?)?;
    Ok(path)
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
