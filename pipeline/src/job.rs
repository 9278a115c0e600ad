//! The `labels` job in the bookkeeping (`mrdino_outputs::bookkeeping`): the code version, the input
//! fingerprint of a unit, the plan of a dataset, and what a marker and a manifest record per unit and per run.
//! `run` (which writes them) and `batch` (which reads them for `status` and `finalize`) both build on this
//! module and not on each other.

use std::time::SystemTime;

use mrdino_datasets::Sequence;
use mrdino_outputs::bookkeeping::{DoneMarker, Plan, PlannedUnit, RunManifest, UnitOutcome, UnitStatus};
use mrdino_outputs::layout::LABELS_KIND;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const CODE_VERSION: &str = env!("MRDINO_CODE_VERSION");

/// What a labels unit produced, recorded in its marker and in run manifests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LabelCounts {
    pub frames_decoded: usize,
    pub frame_rows: usize,
    pub quasi_static_frames: usize,
    pub labelled_frames: usize,
    pub instances: usize,
}

pub type LabelsMarker = DoneMarker<LabelCounts>;
pub type LabelsUnitStatus = UnitStatus<LabelCounts>;
pub type LabelsManifest = RunManifest<LabelCounts, Totals>;

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

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    #[serde(flatten)]
    pub units: UnitTally,
    pub frames: usize,
    pub quasi_static_frames: usize,
    pub labelled_frames: usize,
    pub instances: usize,
    pub frame_failures: usize,
    pub seconds: f64,
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

/// The plan of the labels job.
pub fn labels_plan(params_hash: &str, dataset: &str, sequences: &[Sequence]) -> Plan {
    build_plan(LABELS_KIND, params_hash, dataset, sequences)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_keep_flat_unit_keys_and_round_trip() {
        let mut totals = Totals::default();
        totals.units.planned = 4;
        for outcome in [
            UnitOutcome::Done,
            UnitOutcome::Done,
            UnitOutcome::Skipped,
            UnitOutcome::Interrupted,
        ] {
            totals.units.count(outcome);
        }
        totals.instances = 7;
        let json = serde_json::to_value(&totals).unwrap();
        assert_eq!(json["units_planned"], 4);
        assert_eq!(json["units_done"], 2);
        assert_eq!(json["units_skipped"], 1);
        assert_eq!(json["units_failed"], 0);
        assert_eq!(json["units_interrupted"], 1);
        assert_eq!(json["instances"], 7);
        assert!(json.get("units").is_none(), "{json}");
        let back: Totals = serde_json::from_value(json).unwrap();
        assert_eq!(back, totals);
    }
}
