//! Reading a labels run (`mrdino labels`, `mrdino segment`) or a prediction run (`mrdino infer`) back: the
//! rows of one parameter partition, done units only.
//!
//! Contract (the behaviour of `read_label_tables` in pipeline/src/cmd_eval.rs, which `eval`, `report` and
//! `refine` use):
//! * the partition is the one given, else the only one, else the one whose run started last
//!   ([`choose_partition`] with [`WhenSeveral::Latest`]); when several were present and none was given, the
//!   passed-over hashes are returned ([`RunTables::several_partitions_note`] words the note the binary prints);
//! * the job kind, `labels` or `predictions`, is the one the partition's plan records (the binary asks the
//!   first plan of the root instead; the two agree on every root holding one kind, and this one also reads a
//!   root where a labels and a prediction partition live side by side); another kind is an error;
//! * a unit is read when [`Ledger::check`] says it is done — the bookkeeping's one rule — in plan order; a
//!   unit it finds corrupt (a done marker whose files no longer match) is listed in [`RunTables::corrupt_units`]
//!   with the file at fault, so a reader can refuse rather than silently score a part of the run;
//! * the `frames` files of the partition that belong to no done unit (an interrupted or running job, changed
//!   inputs) are listed, sorted, in [`RunTables::incomplete_units`], and left out.
//!
//! Beyond the binary's reader it returns each instance's `score` and `track_id`, the dataset and root the plan
//! records, the code versions of the done units' markers and the key/value metadata of the first done unit's
//! `frames` file (flow backend, schema version), which exports carry as provenance.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::atomic::OutputError;
use crate::bookkeeping::{
    choose_partition, AnyPayload, BookkeepingError, Corruption, Ledger, Plan, UnitCheck, WhenSeveral,
};
use crate::layout::{Layout, LABELS_DATA_DIRS, LABELS_KIND, PREDICTIONS_KIND};
use crate::tables::{read_frames, read_instances_with_scores, read_key_values, FrameRow, InstanceRow, ScoreAndTrack};

/// What made a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunKind {
    /// Pseudo-labels: `mrdino labels` (and `mrdino segment`, which records the same kind).
    Labels,
    /// A model's predictions: `mrdino infer`.
    Predictions,
}

impl RunKind {
    /// The job kind recorded in the bookkeeping.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Labels => LABELS_KIND,
            Self::Predictions => PREDICTIONS_KIND,
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        [Self::Labels, Self::Predictions].into_iter().find(|k| k.name() == kind)
    }
}

impl std::fmt::Display for RunKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of reading a run; each names the file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bookkeeping(#[from] BookkeepingError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{path} belongs to a `{kind}` job, which is neither a labels nor a prediction run")]
    NotARun { path: PathBuf, kind: String },
    #[error("{sequence} frame {frame}: instance {instance}: {message}")]
    Mask {
        sequence: String,
        frame: String,
        instance: u32,
        message: String,
    },
    #[error("cannot list {dir} (no tables for params={params_hash}?): {source}")]
    NoTables {
        dir: PathBuf,
        params_hash: String,
        source: std::io::Error,
    },
}

/// A planned unit whose done marker no longer matches its files ([`Ledger::check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptUnit {
    pub unit: String,
    /// The file at fault (relative to the run's root) and what is wrong with it.
    pub corruption: Corruption,
}

/// The rows of one parameter partition of a labels or prediction run: done units only, in plan order.
#[derive(Clone, Debug)]
pub struct RunTables {
    pub layout: Layout,
    pub kind: RunKind,
    /// The run's resolved parameters (`OUT/_params/<hash>.json`), `null` when absent.
    pub params: serde_json::Value,
    /// The dataset kind and root the plan records (`source_path`s are relative to the root).
    pub dataset: String,
    pub dataset_root: PathBuf,
    /// Code versions recorded by the done units' markers, sorted, without repeats.
    pub code_versions: Vec<String>,
    /// Key/value metadata of the first done unit's `frames` file (`mrdino.flow`, `mrdino.schema_version`, …);
    /// empty when no unit is done.
    pub file_metadata: BTreeMap<String, String>,
    pub frames: Vec<FrameRow>,
    pub instances: Vec<InstanceRow>,
    /// `scores[i]` belongs to `instances[i]`.
    pub scores: Vec<ScoreAndTrack>,
    /// Tables of units that are not done, left out.
    pub incomplete_units: Vec<PathBuf>,
    /// Planned units whose done marker no longer matches their files (left out, and their tables, if any, listed
    /// in `incomplete_units` too), in plan order.
    pub corrupt_units: Vec<CorruptUnit>,
    /// The other partitions present when none was given (empty when the hash was given or was the only one).
    pub passed_over: Vec<String>,
}

impl RunTables {
    pub fn params_hash(&self) -> &str {
        &self.layout.params_hash
    }

    /// The note a command prints when it took the latest of several partitions.
    pub fn several_partitions_note(&self) -> Option<String> {
        (!self.passed_over.is_empty()).then(|| {
            format!(
                "{} holds labels of several parameter sets (params={}, params={}); using the latest run, \
                 params={} (choose with --params)",
                self.layout.root.display(),
                self.params_hash(),
                self.passed_over.join(", params="),
                self.params_hash()
            )
        })
    }
}

/// The plan of a partition and the kind it records.
fn read_kind_and_plan(root: &Path, params_hash: &str) -> Result<(RunKind, Ledger, Plan), RunError> {
    let labels = Ledger::new(root, LABELS_KIND, params_hash);
    match labels.read_plan() {
        Ok(plan) => Ok((RunKind::Labels, labels, plan)),
        Err(BookkeepingError::WrongKind { path, found, .. }) => match RunKind::parse(&found) {
            Some(kind) => {
                let ledger = Ledger::new(root, kind.name(), params_hash);
                let plan = ledger.read_plan()?;
                Ok((kind, ledger, plan))
            }
            None => Err(RunError::NotARun { path, kind: found }),
        },
        Err(e) => Err(e.into()),
    }
}

/// Reads every done unit of the run under `root` (see the module doc).
pub fn read_run(root: &Path, params_hash: Option<&str>) -> Result<RunTables, RunError> {
    let choice = choose_partition(root, LABELS_DATA_DIRS, params_hash, WhenSeveral::Latest)?;
    let passed_over = if params_hash.is_none() {
        choice.others
    } else {
        Vec::new()
    };
    let layout = Layout::new(root, &choice.params_hash);
    let (kind, ledger, plan) = read_kind_and_plan(root, &choice.params_hash)?;
    let params = ledger.read_params()?.unwrap_or(serde_json::Value::Null);
    let (mut frames, mut instances, mut scores) = (Vec::new(), Vec::new(), Vec::new());
    let (mut code_versions, mut done_files) = (BTreeSet::new(), BTreeSet::new());
    let mut file_metadata = BTreeMap::new();
    let mut corrupt_units = Vec::new();
    for unit in &plan.units {
        let marker = match ledger.check::<AnyPayload>(unit) {
            UnitCheck::Done(marker) => marker,
            UnitCheck::Corrupt(corruption) => {
                corrupt_units.push(CorruptUnit {
                    unit: unit.id.clone(),
                    corruption,
                });
                continue;
            }
            UnitCheck::NotDone => continue,
        };
        code_versions.insert(marker.code_version);
        let [frames_file, instances_file] = layout.unit_outputs(&unit.id);
        if done_files.is_empty() {
            file_metadata = read_key_values(&frames_file)?.into_iter().collect();
        }
        frames.extend(read_frames(&frames_file)?);
        let (rows, unit_scores) = read_instances_with_scores(&instances_file)?;
        instances.extend(rows);
        scores.extend(unit_scores);
        done_files.insert(frames_file);
    }
    let dir = layout.frames_dir();
    let entries = std::fs::read_dir(&dir).map_err(|source| RunError::NoTables {
        dir: dir.clone(),
        params_hash: choice.params_hash.clone(),
        source,
    })?;
    let mut incomplete_units: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter(|p| !done_files.contains(p))
        .collect();
    incomplete_units.sort();
    Ok(RunTables {
        layout,
        kind,
        params,
        dataset: plan.dataset,
        dataset_root: plan.root,
        code_versions: code_versions.into_iter().collect(),
        file_metadata,
        frames,
        instances,
        scores,
        incomplete_units,
        corrupt_units,
        passed_over,
    })
}

/// The instance ids of one frame: its instances' masks painted into an id map at the frame's label grid
/// (row-major, `height × width`, 0 = background, the pixel of a later instance over an earlier one).
pub fn instance_ids(frame: &FrameRow, instances: &[&InstanceRow]) -> Result<Vec<u32>, RunError> {
    let (height, width) = (frame.height as usize, frame.width as usize);
    let mut ids = vec![0u32; height * width];
    let bad = |instance: u32, message: String| RunError::Mask {
        sequence: frame.sequence_id.clone(),
        frame: frame.frame_name.clone(),
        instance,
        message,
    };
    for inst in instances {
        if (inst.mask.height, inst.mask.width) != (frame.height, frame.width) {
            return Err(bad(
                inst.instance_id,
                format!(
                    "a {}x{} mask on a {}x{} label grid",
                    inst.mask.height, inst.mask.width, frame.height, frame.width
                ),
            ));
        }
        let pixels = inst.mask.to_pixels().map_err(|e| bad(inst.instance_id, e.to_string()))?;
        for p in pixels {
            if let Some(id) = ids.get_mut(p as usize) {
                *id = inst.instance_id;
            }
        }
    }
    Ok(ids)
}

/// Up to `count` labelled frames, evenly spaced, preferring frames with instances.
pub fn sample_frames(frames: &[FrameRow], count: usize) -> Vec<&FrameRow> {
    let with_instances: Vec<&FrameRow> = frames.iter().filter(|f| f.labelled && f.num_instances > 0).collect();
    let candidates = if with_instances.is_empty() {
        frames.iter().filter(|f| f.labelled).collect()
    } else {
        with_instances
    };
    if candidates.len() <= count {
        return candidates;
    }
    (0..count).map(|k| candidates[k * candidates.len() / count]).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bookkeeping::{DoneMarker, PlannedUnit};
    use crate::rle::CocoRle;
    use crate::tables::{frames_batch, instances_batch_with_scores, write_parquet, InstanceOrigin};

    pub(crate) fn frame_row(sequence_id: &str, frame_index: u32, labelled: bool) -> FrameRow {
        FrameRow {
            dataset: "frames".into(),
            sequence_id: sequence_id.into(),
            frame_index,
            frame_name: format!("{frame_index:06}"),
            source_path: format!("{sequence_id}/{frame_index:06}.png"),
            height: 4,
            width: 6,
            orig_height: 5,
            orig_width: 7,
            resized_height: 6,
            resized_width: 9,
            crop_top: 1,
            crop_left: 2,
            quasi_static: labelled,
            corner_flow_px: Some([0.1; 4]),
            fg_fraction: Some(0.5),
            labelled,
            excluded_reason: (!labelled).then_some(crate::tables::ExcludedReason::CameraMotion),
            segment: labelled.then_some(0),
            num_instances: u32::from(labelled),
        }
    }

    pub(crate) fn instance_row(sequence_id: &str, frame_index: u32, instance_id: u32, pixels: &[u32]) -> InstanceRow {
        InstanceRow {
            dataset: "frames".into(),
            sequence_id: sequence_id.into(),
            frame_index,
            frame_name: format!("{frame_index:06}"),
            instance_id,
            mask: CocoRle::from_pixels(pixels, 4, 6),
            bbox_xywh: [0.0; 4],
            area_px: pixels.len() as u32,
            origin: InstanceOrigin::Component,
            component_id: instance_id,
            hdbscan_label: None,
            mean_flow_px: 3.0,
        }
    }

    /// Writes one unit's tables and, when `done`, its marker (the way `mrdino labels` does).
    pub(crate) fn write_unit(
        ledger: &Ledger,
        layout: &Layout,
        unit: &PlannedUnit,
        frames: &[FrameRow],
        instances: &[InstanceRow],
        scores: &[ScoreAndTrack],
        done: bool,
    ) {
        let [frames_file, instances_file] = layout.unit_outputs(&unit.id);
        let meta = vec![
            ("mrdino.flow".to_string(), "import".to_string()),
            (
                "mrdino.schema_version".to_string(),
                crate::tables::SCHEMA_VERSION.to_string(),
            ),
        ];
        write_parquet(&frames_file, &frames_batch(frames).unwrap(), &meta).unwrap();
        write_parquet(
            &instances_file,
            &instances_batch_with_scores(instances, scores).unwrap(),
            &meta,
        )
        .unwrap();
        if done {
            let outputs = [frames_file, instances_file];
            let marker = DoneMarker::new(ledger, unit, &outputs, "v-test", 0.0, Vec::new(), AnyPayload::new());
            ledger.write_marker(&marker).unwrap();
        }
    }

    /// A run of `kind` with units a (done), b (tables written, not done) and c (done), planned as c, a, b.
    fn run(root: &Path, kind: &str, hash: &str) {
        let ledger = Ledger::new(root, kind, hash);
        let layout = Layout::new(root, hash);
        ledger.prepare(&[]).unwrap();
        ledger
            .write_params(&serde_json::json!({"threshold": 1.7}), "v-test")
            .unwrap();
        let units: Vec<PlannedUnit> = ["c", "a", "b"]
            .iter()
            .map(|id| PlannedUnit::new(id, Some(2), id))
            .collect();
        ledger
            .write_plan(&Plan::new(
                kind,
                hash,
                "frames",
                Path::new("/data/set"),
                "v-test",
                units.clone(),
            ))
            .unwrap();
        for unit in &units {
            let frames = [frame_row(&unit.id, 0, false), frame_row(&unit.id, 1, true)];
            let instances = [instance_row(&unit.id, 1, 1, &[0, 7])];
            let scores = [ScoreAndTrack {
                score: Some(0.5),
                track_id: Some(3),
            }];
            write_unit(&ledger, &layout, unit, &frames, &instances, &scores, unit.id != "b");
        }
    }

    #[test]
    fn done_units_are_read_in_plan_order_and_the_rest_listed() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), LABELS_KIND, "h1");
        let tables = read_run(dir.path(), None).unwrap();
        assert_eq!(tables.kind, RunKind::Labels);
        assert_eq!(tables.params_hash(), "h1");
        assert_eq!(tables.params, serde_json::json!({"threshold": 1.7}));
        assert_eq!(
            (tables.dataset.as_str(), tables.dataset_root.as_path()),
            ("frames", Path::new("/data/set"))
        );
        assert_eq!(tables.code_versions, ["v-test"]);
        assert_eq!(
            tables.file_metadata.get("mrdino.flow").map(String::as_str),
            Some("import")
        );
        let order: Vec<(&str, u32)> = tables
            .frames
            .iter()
            .map(|f| (f.sequence_id.as_str(), f.frame_index))
            .collect();
        assert_eq!(order, [("c", 0), ("c", 1), ("a", 0), ("a", 1)]);
        assert_eq!(tables.instances.len(), 2);
        assert_eq!(
            tables.scores,
            vec![
                ScoreAndTrack {
                    score: Some(0.5),
                    track_id: Some(3)
                };
                2
            ]
        );
        assert_eq!(tables.incomplete_units, [tables.layout.frames_file("b")]);
        assert!(tables.passed_over.is_empty() && tables.several_partitions_note().is_none());

        assert!(tables.corrupt_units.is_empty());
        // A marker whose listed output is gone is not done (the bookkeeping's rule): the unit is corrupt.
        std::fs::remove_file(tables.layout.instances_file("a")).unwrap();
        let tables = read_run(dir.path(), Some("h1")).unwrap();
        assert_eq!(tables.frames.len(), 2);
        assert_eq!(tables.incomplete_units.len(), 2);
        assert_eq!(tables.corrupt_units.len(), 1);
        let corrupt = &tables.corrupt_units[0];
        assert_eq!(corrupt.unit, "a");
        assert!(corrupt.corruption.to_string().contains("instances/params=h1/"), "{:?}", corrupt);
    }

    #[test]
    fn the_partition_is_given_only_or_latest_and_the_kind_comes_from_its_plan() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), LABELS_KIND, "aaa");
        std::thread::sleep(std::time::Duration::from_millis(20));
        run(dir.path(), PREDICTIONS_KIND, "bbb");
        let latest = read_run(dir.path(), None).unwrap();
        assert_eq!((latest.params_hash(), latest.kind), ("bbb", RunKind::Predictions));
        assert_eq!(latest.passed_over, ["aaa"]);
        let note = latest.several_partitions_note().unwrap();
        assert!(
            note.contains("params=bbb, params=aaa") && note.contains("--params"),
            "{note}"
        );
        let given = read_run(dir.path(), Some("aaa")).unwrap();
        assert_eq!((given.kind, given.passed_over.len()), (RunKind::Labels, 0));
        assert!(matches!(
            read_run(dir.path(), Some("zzz")),
            Err(RunError::Bookkeeping(BookkeepingError::UnknownPartition { .. }))
        ));
        // Another job kind (a flow export) is refused, naming its plan.
        let flow = Ledger::new(dir.path(), "flow", "ccc");
        flow.write_plan(&Plan::new("flow", "ccc", "frames", Path::new("/d"), "v", Vec::new()))
            .unwrap();
        let err = read_run(dir.path(), Some("ccc")).unwrap_err();
        assert!(
            matches!(&err, RunError::NotARun { kind, .. } if kind == "flow"),
            "{err}"
        );
        assert!(err.to_string().contains("params=ccc.json"), "{err}");
    }

    #[test]
    fn a_partition_without_tables_or_plan_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_run(dir.path(), None),
            Err(RunError::Bookkeeping(BookkeepingError::NoPartition { .. }))
        ));
        Ledger::new(dir.path(), LABELS_KIND, "h").write_params(&1, "v").unwrap();
        assert!(matches!(
            read_run(dir.path(), None),
            Err(RunError::Bookkeeping(BookkeepingError::NoPlan { .. }))
        ));
        Ledger::new(dir.path(), LABELS_KIND, "h")
            .write_plan(&Plan::new(LABELS_KIND, "h", "frames", Path::new("/d"), "v", Vec::new()))
            .unwrap();
        let err = read_run(dir.path(), None).unwrap_err();
        assert!(matches!(err, RunError::NoTables { .. }), "{err}");
    }
}
