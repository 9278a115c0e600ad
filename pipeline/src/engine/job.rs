//! A unit job's bookkeeping around the driver: the code version, the input fingerprint of a unit, the plan of a
//! dataset, opening the job's ledger (directory, parameters, plan, this task's shard), the run manifest and the
//! exit code. The mechanism (files, the one rule for "done") is `mrdino_outputs::bookkeeping`; this module is
//! what every command does with it, once.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use mrdino_datasets::Sequence;
use mrdino_outputs::bookkeeping::{
    in_shard, unix_now, Ledger, Plan, PlannedUnit, RunManifest, Shard, UnitOutcome, UnitStatus,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::stop::{EXIT_FAILURES, EXIT_STOPPED};
use super::units::UnitRun;

pub const CODE_VERSION: &str = env!("MRDINO_CODE_VERSION");

/// The unit counts every job's totals begin with, flattened into them so a manifest's `totals` keeps the flat
/// keys `units_planned` … `units_interrupted`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitTally {
    #[serde(rename = "units_planned")]
    pub planned: usize,
    #[serde(rename = "units_done")]
    pub done: usize,
    #[serde(rename = "units_skipped")]
    pub skipped: usize,
    #[serde(rename = "units_failed")]
    pub failed: usize,
    #[serde(rename = "units_interrupted")]
    pub interrupted: usize,
}

impl UnitTally {
    /// Counts one unit's outcome (not `planned`).
    pub fn count(&mut self, outcome: UnitOutcome) {
        match outcome {
            UnitOutcome::Done => self.done += 1,
            UnitOutcome::Skipped => self.skipped += 1,
            UnitOutcome::Failed => self.failed += 1,
            UnitOutcome::Interrupted => self.interrupted += 1,
        }
    }
}

/// SHA-256 over the relative paths, sizes and modification times of a unit's inputs (first 16 hex digits).
pub fn input_fingerprint(sequence: &Sequence) -> String {
    let mut h = Sha256::new();
    for path in sequence.input_paths() {
        let rel = path.strip_prefix(&sequence.root).unwrap_or(path);
        h.update(rel.to_string_lossy().as_bytes());
        if let Ok(meta) = std::fs::metadata(path) {
            h.update(meta.len().to_le_bytes());
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
            h.update(mtime.map(|d| d.as_nanos()).unwrap_or(0).to_le_bytes());
        }
        h.update([0]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The plan of a job of `kind` over `sequences`.
pub fn build_plan(kind: &str, params_hash: &str, dataset: &str, sequences: &[Sequence]) -> Plan {
    let root = sequences.first().map(|s| s.root.clone()).unwrap_or_default();
    let units = sequences
        .iter()
        .map(|s| PlannedUnit::new(&s.id, s.frame_count_hint(), &input_fingerprint(s)))
        .collect();
    Plan::new(kind, params_hash, dataset, &root, CODE_VERSION, units)
}

/// A unit job opened on its output directory: the ledger of its kind and partition, with the parameters and the
/// plan written (identical bytes from every concurrent task).
pub struct OpenJob {
    pub ledger: Ledger,
    pub plan: Plan,
    pub params: serde_json::Value,
    pub shard: Option<Shard>,
    pub started_unix_s: u64,
}

impl OpenJob {
    /// Prepares `ledger`'s root (stale temporaries under it and under `data_dirs` removed), writes `params` and
    /// `plan`.
    pub fn open<P: Serialize>(
        ledger: Ledger,
        data_dirs: &[PathBuf],
        params: &P,
        plan: Plan,
        shard: Option<Shard>,
    ) -> Result<Self> {
        super::kinds::claim(ledger.root(), ledger.kind())?;
        ledger
            .prepare(data_dirs)
            .with_context(|| format!("cannot prepare output directory {}", ledger.root().display()))?;
        ledger.write_params(params, CODE_VERSION)?;
        ledger.write_plan(&plan)?;
        Ok(Self {
            ledger,
            plan,
            params: serde_json::to_value(params)?,
            shard,
            started_unix_s: unix_now(),
        })
    }

    /// The units of this task's shard, each paired with the item of `items` at the same position in the plan.
    pub fn units<T>(&self, items: impl IntoIterator<Item = T>) -> Vec<(T, &PlannedUnit)> {
        items
            .into_iter()
            .zip(&self.plan.units)
            .filter(|(_, u)| in_shard(&u.id, self.shard))
            .collect()
    }

    /// Writes the manifest of this run (this shard's, when sharded) with the job's `totals`.
    pub fn write_manifest<C: Serialize, T: Serialize>(
        &self,
        statuses: Vec<UnitStatus<C>>,
        totals: T,
    ) -> Result<RunManifest<C, T>> {
        let manifest = RunManifest {
            kind: self.ledger.kind().to_string(),
            params_hash: self.ledger.params_hash().to_string(),
            params: self.params.clone(),
            code_version: CODE_VERSION.to_string(),
            command_line: std::env::args().collect(),
            shard: self.shard.map(|s| s.to_string()),
            host: mrdino_outputs::atomic::host_name().to_string(),
            pid: std::process::id(),
            started_unix_s: self.started_unix_s,
            finished_unix_s: unix_now(),
            units: statuses,
            totals,
        };
        self.ledger.write_manifest(&manifest, self.shard)?;
        Ok(manifest)
    }

    /// Writes the manifest of `run` with `totals` and returns the exit code: 4 when a unit was interrupted (rerun
    /// to resume), 3 when more than `max_failures` units or frames failed, else success. Failed units and frames
    /// are listed on stderr.
    pub fn finish<C: Serialize, T: Serialize>(&self, run: UnitRun<C>, totals: T, max_failures: usize) -> Result<ExitCode> {
        let code = exit_code(&run, max_failures);
        if code == ExitCode::from(EXIT_FAILURES) {
            for status in &run.statuses {
                for f in &status.failures {
                    eprintln!("failed frame {} #{}: {}", status.unit, f.frame_index, f.reason);
                }
            }
        }
        if code == ExitCode::from(EXIT_STOPPED) {
            eprintln!(
                "stopped early: {} units not done; run the same command again to resume",
                run.tally.interrupted
            );
        }
        if run.statuses.is_empty() {
            eprintln!(
                "note: no units fall into shard {} of this dataset",
                self.shard.map_or_else(|| "all".to_string(), |s| s.to_string())
            );
        }
        self.write_manifest(run.statuses, totals)?;
        Ok(code)
    }
}

/// 4 when a unit was interrupted, 3 when more than `max_failures` units or frames failed, else success.
pub fn exit_code<C>(run: &UnitRun<C>, max_failures: usize) -> ExitCode {
    if run.tally.interrupted > 0 {
        ExitCode::from(EXIT_STOPPED)
    } else if run.tally.failed + run.frame_failures > max_failures {
        ExitCode::from(EXIT_FAILURES)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_keep_flat_unit_keys() {
        let mut tally = UnitTally {
            planned: 4,
            ..UnitTally::default()
        };
        for outcome in [
            UnitOutcome::Done,
            UnitOutcome::Done,
            UnitOutcome::Skipped,
            UnitOutcome::Interrupted,
        ] {
            tally.count(outcome);
        }
        let json = serde_json::to_value(tally).unwrap();
        assert_eq!(json["units_planned"], 4);
        assert_eq!(json["units_done"], 2);
        assert_eq!(json["units_skipped"], 1);
        assert_eq!(json["units_failed"], 0);
        assert_eq!(json["units_interrupted"], 1);
    }
}
