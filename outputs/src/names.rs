//! The open-vocabulary outputs of Talk2DINO: the `names` table of `mrdino name` and the prompt column that
//! `mrdino segment` adds to an `instances` table.
//!
//! ```text
//! OUT/names/params=<hash>/<unit>.parquet   one file per unit (sequence of the labels run), zstd
//! OUT/_done, _params, _manifest, _plan     bookkeeping of the `names` job (see `crate::bookkeeping`)
//! ```
//!
//! `names` has one row per instance of the labels (or predictions) run, keyed like `instances` by
//! (dataset, sequence_id, frame_index, instance_id), sorted by it, so `instances JOIN names USING (…)` is a
//! one-to-one join. Columns: `frame_name` (provenance), `name` and `score` (the best class and its cosine),
//! `runner_up` and `runner_up_score` (null with a single class), `scores` (the cosine to every class, in the
//! order of the class list in the file metadata) and `coverage_patches` (the mask's area on the patch grid, in
//! patches: small values mean the embedding rests on few patches).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, ListArray, RecordBatch, StringArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Float32Type, Schema};

use crate::atomic::OutputError;
use crate::bookkeeping::{choose_partition, partitions, AnyPayload, BookkeepingError, Ledger, WhenSeveral};
use crate::layout::unit_key;
use crate::tables::{
    column, f32_column, instances_batch, read_parquet, string_column, strings, u32_column, u32s, wrong_type,
};
use crate::InstanceRow;

/// The job kind of `mrdino name` in the bookkeeping.
pub const NAMES_KIND: &str = "names";
/// The data directory of a names root.
pub const NAMES_DATA_DIRS: &[&str] = &["names"];
/// Metadata keys of a names file (besides the `mrd.*` keys every table carries).
pub const CLASSES_KEY: &str = "mrdino.classes";
pub const TEMPLATES_KEY: &str = "mrdino.templates";

/// One row of the `names` table.
#[derive(Clone, Debug, PartialEq)]
pub struct NameRow {
    pub dataset: String,
    pub sequence_id: String,
    pub frame_index: u32,
    pub frame_name: String,
    pub instance_id: u32,
    pub name: String,
    pub score: f32,
    pub runner_up: Option<String>,
    pub runner_up_score: Option<f32>,
    pub scores: Vec<f32>,
    pub coverage_patches: f32,
}

fn f32_list_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Float32, false))
}

pub fn names_schema() -> Schema {
    Schema::new(vec![
        Field::new("dataset", DataType::Utf8, false),
        Field::new("sequence_id", DataType::Utf8, false),
        Field::new("frame_index", DataType::UInt32, false),
        Field::new("frame_name", DataType::Utf8, false),
        Field::new("instance_id", DataType::UInt32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("runner_up", DataType::Utf8, true),
        Field::new("runner_up_score", DataType::Float32, true),
        Field::new("scores", DataType::List(f32_list_field()), false),
        Field::new("coverage_patches", DataType::Float32, false),
    ])
}

pub fn names_batch(rows: &[NameRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let scores = ListArray::new(
        f32_list_field(),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.scores.len())),
        Arc::new(Float32Array::from_iter_values(
            rows.iter().flat_map(|r| r.scores.iter().copied()),
        )),
        None,
    );
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.dataset.as_str())),
        strings(rows.iter().map(|r| r.sequence_id.as_str())),
        u32s(rows.iter().map(|r| r.frame_index)),
        strings(rows.iter().map(|r| r.frame_name.as_str())),
        u32s(rows.iter().map(|r| r.instance_id)),
        strings(rows.iter().map(|r| r.name.as_str())),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.score))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.runner_up.as_deref()))),
        Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.runner_up_score))),
        Arc::new(scores),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.coverage_patches))),
    ];
    RecordBatch::try_new(Arc::new(names_schema()), columns)
}

/// Reads `names` rows back.
pub fn read_names(path: &Path) -> Result<Vec<NameRow>, OutputError> {
    let (batches, _) = read_parquet(path)?;
    let mut rows = Vec::new();
    for b in &batches {
        let s = |n: &str| string_column(b, n, path);
        let u = |n: &str| u32_column(b, n, path);
        let f = |n: &str| f32_column(b, n, path);
        let (dataset, seq, idx, frame_name, id) = (
            s("dataset")?,
            s("sequence_id")?,
            u("frame_index")?,
            s("frame_name")?,
            u("instance_id")?,
        );
        let (name, score, runner, runner_score, coverage) = (
            s("name")?,
            f("score")?,
            s("runner_up")?,
            f("runner_up_score")?,
            f("coverage_patches")?,
        );
        let scores_column = column(b, "scores", path)?;
        let scores = scores_column
            .as_list_opt::<i32>()
            .filter(|l| l.values().data_type() == &DataType::Float32)
            .ok_or_else(|| wrong_type(path, "scores", "list<float32>", scores_column))?;
        for i in 0..b.num_rows() {
            let values = scores.value(i);
            rows.push(NameRow {
                dataset: dataset.value(i).to_owned(),
                sequence_id: seq.value(i).to_owned(),
                frame_index: idx.value(i),
                frame_name: frame_name.value(i).to_owned(),
                instance_id: id.value(i),
                name: name.value(i).to_owned(),
                score: score.value(i),
                runner_up: runner.is_valid(i).then(|| runner.value(i).to_owned()),
                runner_up_score: runner_score.is_valid(i).then(|| runner_score.value(i)),
                scores: values.as_primitive::<Float32Type>().values().to_vec(),
                coverage_patches: coverage.value(i),
            });
        }
    }
    Ok(rows)
}

/// Paths of a names root for one parameter hash.
#[derive(Clone, Debug)]
pub struct NamesLayout {
    pub root: PathBuf,
    pub params_hash: String,
}

impl NamesLayout {
    pub fn new(root: &Path, params_hash: &str) -> Self {
        Self {
            root: root.to_path_buf(),
            params_hash: params_hash.to_string(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join("names").join(format!("params={}", self.params_hash))
    }

    pub fn file(&self, unit_id: &str) -> PathBuf {
        self.dir().join(format!("{}.parquet", unit_key(unit_id)))
    }

    pub fn ledger(&self) -> Ledger {
        Ledger::new(&self.root, NAMES_KIND, &self.params_hash)
    }
}

/// Errors of reading a names run; each names the directory or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    #[error(transparent)]
    Bookkeeping(#[from] BookkeepingError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("{root} holds no names of the labels partition params={source_params} (names partitions: {present})")]
    NoNamesOf {
        root: PathBuf,
        source_params: String,
        present: String,
    },
}

/// The names of one partition of a names root, keyed like instances: (sequence_id, frame_index, instance_id).
pub type NameMap = BTreeMap<(String, u32, u32), NameRow>;

/// The names of a names root's done units, and the partition they come from: `params` when given (it must be
/// present), else the latest partition (parameters written last; ties to the greatest hash) made from the source
/// partition `source_params` (a names root may hold several class lists, or names of several labels partitions).
/// A unit is read when [`Ledger::is_done`] says it is done, in plan order.
pub fn read_names_run(root: &Path, params: Option<&str>, source_params: &str) -> Result<(String, NameMap), NamesError> {
    let hash = match params {
        Some(hash) => choose_partition(root, NAMES_DATA_DIRS, Some(hash), WhenSeveral::Latest)?.params_hash,
        None => latest_names_of(root, source_params)?,
    };
    let layout = NamesLayout::new(root, &hash);
    let ledger = layout.ledger();
    let plan = ledger.read_plan()?;
    let mut names = NameMap::new();
    for unit in &plan.units {
        if ledger.is_done::<AnyPayload>(unit).is_none() {
            continue;
        }
        for row in read_names(&layout.file(&unit.id))? {
            names.insert((row.sequence_id.clone(), row.frame_index, row.instance_id), row);
        }
    }
    Ok((hash, names))
}

/// The latest names partition of `root` whose parameters record `source_params` as their source partition.
fn latest_names_of(root: &Path, source_params: &str) -> Result<String, NamesError> {
    let all = partitions(root, NAMES_DATA_DIRS);
    let written = |hash: &str| {
        std::fs::metadata(Ledger::new(root, NAMES_KIND, hash).params_file())
            .and_then(|m| m.modified())
            .ok()
    };
    all.iter()
        .filter(|h| {
            Ledger::new(root, NAMES_KIND, h)
                .read_params()
                .ok()
                .flatten()
                .is_some_and(|p| p["source_params_hash"] == source_params)
        })
        .max_by_key(|h| (written(h.as_str()), h.as_str()))
        .cloned()
        .ok_or_else(|| NamesError::NoNamesOf {
            root: root.to_path_buf(),
            source_params: source_params.to_string(),
            present: if all.is_empty() { "none".to_string() } else { all.join(", ") },
        })
}

/// An `instances` batch with a `prompt` column (the text prompt whose region each row is) appended.
pub fn prompted_instances_batch(
    rows: &[InstanceRow],
    prompts: &[&str],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if rows.len() != prompts.len() {
        return Err(arrow::error::ArrowError::InvalidArgumentError(format!(
            "{} instance rows but {} prompts",
            rows.len(),
            prompts.len()
        )));
    }
    let base = instances_batch(rows)?;
    let mut fields: Vec<Field> = base.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("prompt", DataType::Utf8, false));
    let mut columns: Vec<ArrayRef> = base.columns().to_vec();
    columns.push(strings(prompts.iter().copied()));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bookkeeping::{DoneMarker, Plan, PlannedUnit};
    use crate::tables::write_parquet;

    fn row(sequence_id: &str, instance_id: u32, name: &str) -> NameRow {
        NameRow {
            dataset: "frames".into(),
            sequence_id: sequence_id.into(),
            frame_index: 0,
            frame_name: "00000".into(),
            instance_id,
            name: name.into(),
            score: 0.5,
            runner_up: None,
            runner_up_score: None,
            scores: vec![0.5],
            coverage_patches: 1.0,
        }
    }

    /// A names partition `hash` of labels partition `source` with units a (done) and b (written, not done).
    fn names_partition(root: &Path, hash: &str, source: &str, name: &str) {
        let layout = NamesLayout::new(root, hash);
        let ledger = layout.ledger();
        ledger.prepare(&[layout.dir()]).unwrap();
        ledger
            .write_params(&serde_json::json!({ "source_params_hash": source }), "v-test")
            .unwrap();
        let units: Vec<PlannedUnit> = ["a", "b"].iter().map(|id| PlannedUnit::new(id, Some(1), id)).collect();
        ledger
            .write_plan(&Plan::new(NAMES_KIND, hash, "frames", root, "v-test", units.clone()))
            .unwrap();
        for unit in &units {
            let file = layout.file(&unit.id);
            write_parquet(&file, &names_batch(&[row(&unit.id, 1, name)]).unwrap(), &[]).unwrap();
            if unit.id == "a" {
                let marker = DoneMarker::new(&ledger, unit, &[file], "v-test", 0.0, Vec::new(), AnyPayload::new());
                ledger.write_marker(&marker).unwrap();
            }
        }
    }

    #[test]
    fn a_names_run_is_read_by_its_source_partition_done_units_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        names_partition(root, "1111", "labels-x", "car");
        names_partition(root, "2222", "labels-y", "bus");
        let (hash, names) = read_names_run(root, None, "labels-y").unwrap();
        assert_eq!(hash, "2222");
        assert_eq!(names.len(), 1, "unit b is not done");
        assert_eq!(names[&("a".to_string(), 0, 1)].name, "bus");
        let (hash, names) = read_names_run(root, Some("1111"), "ignored").unwrap();
        assert_eq!((hash.as_str(), names[&("a".to_string(), 0, 1)].name.as_str()), ("1111", "car"));
        let err = read_names_run(root, None, "labels-z").unwrap_err().to_string();
        assert!(err.contains("params=labels-z") && err.contains("1111, 2222"), "{err}");
        assert!(read_names_run(root, Some("3333"), "labels-x").is_err());
    }

    #[test]
    fn names_round_trip_with_nulls() {
        let rows = vec![
            NameRow {
                dataset: "frames".into(),
                sequence_id: "seq000".into(),
                frame_index: 3,
                frame_name: "00003".into(),
                instance_id: 1,
                name: "car".into(),
                score: 0.25,
                runner_up: Some("bus".into()),
                runner_up_score: Some(0.125),
                scores: vec![0.25, 0.125],
                coverage_patches: 2.5,
            },
            NameRow {
                dataset: "frames".into(),
                sequence_id: "seq000".into(),
                frame_index: 4,
                frame_name: "00004".into(),
                instance_id: 2,
                name: "car".into(),
                score: -0.5,
                runner_up: None,
                runner_up_score: None,
                scores: vec![-0.5],
                coverage_patches: 0.75,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.parquet");
        write_parquet(&path, &names_batch(&rows).unwrap(), &[]).unwrap();
        assert_eq!(read_names(&path).unwrap(), rows);
    }
}
