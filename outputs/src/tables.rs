//! The two Parquet tables, `frames` and `instances`, and their round trip.
//!
//! `frames`: one row per frame that has a flow (every frame but the last of a sequence), including frames
//! without a label, so absence is explicit. `instances`: one row per instance of a labelled frame, the mask as
//! the pycocotools dict shape `{size: [h, w], counts: str}`. Rows are sorted by (sequence_id, frame_index,
//! instance_id); files are zstd-compressed and written atomically; each file's key/value metadata carries the
//! resolved parameters, their hash, the code version and the flow backend.
//!
//! Two `instances` columns are optional: `score` (float32, a confidence in [0, 1]) and `track_id` (uint32, the
//! object's identity across the frames of its sequence, unique within the sequence), both null until a stage
//! computes them ([`ScoreAndTrack`]). Every writer here writes them (null unless given); the readers take a
//! missing column as all null, so files written before the columns existed still read. Adding nullable columns
//! that readers may lack is a compatible change: [`SCHEMA_VERSION`] stays (it changes only when a reader of the
//! old layout would misread a new file, or the other way round).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, Int32Array, ListArray, RecordBatch,
    StringArray, StructArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Float32Type, Int32Type, Schema, UInt32Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::atomic::{AtomicFile, OutputError};
use crate::provenance::FrameGeometry;
use crate::rle::CocoRle;

/// Version of the table layout; bumped on any incompatible change (not for added nullable columns that
/// readers treat as null when absent, such as `score` and `track_id`).
pub const SCHEMA_VERSION: &str = "1";

/// Why a frame with a flow carries no label (the `excluded_reason` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExcludedReason {
    /// The frame or its flow could not be read.
    Unreadable,
    /// The corner test failed: the camera moves.
    CameraMotion,
    /// Quasi-static, but in a run shorter than the minimum.
    ShortRun,
    /// Too little foreground.
    FgTooSmall,
    /// Its segment has too few frames with enough foreground.
    ShortSegment,
    /// A KITTI benchmark image, excluded by the kitti preset.
    EvalOverlap,
}

impl ExcludedReason {
    pub const ALL: [ExcludedReason; 6] = [
        Self::Unreadable,
        Self::CameraMotion,
        Self::ShortRun,
        Self::FgTooSmall,
        Self::ShortSegment,
        Self::EvalOverlap,
    ];

    /// The value stored in the table.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::CameraMotion => "camera_motion",
            Self::ShortRun => "short_run",
            Self::FgTooSmall => "fg_too_small",
            Self::ShortSegment => "short_segment",
            Self::EvalOverlap => "eval_overlap",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl std::fmt::Display for ExcludedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How an instance was found (the `origin` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceOrigin {
    /// A connected component kept whole.
    Component,
    /// An HDBSCAN cluster of a component that failed the edge test.
    Hdbscan,
    /// A merged channel of a slot model's prediction (`mrdino infer`).
    Model,
    /// The region a text prompt wins in `mrdino segment` (Talk2DINO's argmax; `component_id` = prompt index).
    Prompt,
}

impl InstanceOrigin {
    pub const ALL: [InstanceOrigin; 4] = [Self::Component, Self::Hdbscan, Self::Model, Self::Prompt];

    pub fn name(self) -> &'static str {
        match self {
            Self::Component => "component",
            Self::Hdbscan => "hdbscan",
            Self::Model => "model",
            Self::Prompt => "prompt",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }
}

impl std::fmt::Display for InstanceOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One row of the `frames` table.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameRow {
    pub dataset: String,
    pub sequence_id: String,
    pub frame_index: u32,
    pub frame_name: String,
    pub source_path: String,
    /// Label grid.
    pub height: u32,
    pub width: u32,
    pub orig_height: u32,
    pub orig_width: u32,
    /// The frame was resized to this size, then cropped at (crop_top, crop_left) to (height, width).
    pub resized_height: u32,
    pub resized_width: u32,
    pub crop_top: u32,
    pub crop_left: u32,
    pub quasi_static: bool,
    /// Mean flow magnitude of the corners TL, TR, BL, BR; `None` when the frame has no flow.
    pub corner_flow_px: Option<[f32; 4]>,
    pub fg_fraction: Option<f32>,
    pub labelled: bool,
    pub excluded_reason: Option<ExcludedReason>,
    pub segment: Option<u32>,
    pub num_instances: u32,
}

/// Which frame a `frames` row describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameId {
    pub dataset: String,
    pub sequence_id: String,
    pub frame_index: u32,
    pub frame_name: String,
    pub source_path: String,
}

impl FrameRow {
    /// The row of frame `id` on the label grid of `geometry`: labelled, nothing measured (not quasi-static, no
    /// corner flow, no foreground fraction), no segment, no instances. A step sets what it measured with struct
    /// update syntax.
    pub fn new(id: FrameId, geometry: FrameGeometry) -> Self {
        Self {
            dataset: id.dataset,
            sequence_id: id.sequence_id,
            frame_index: id.frame_index,
            frame_name: id.frame_name,
            source_path: id.source_path,
            height: geometry.height,
            width: geometry.width,
            orig_height: geometry.orig_height,
            orig_width: geometry.orig_width,
            resized_height: geometry.resized_height,
            resized_width: geometry.resized_width,
            crop_top: geometry.crop_top,
            crop_left: geometry.crop_left,
            quasi_static: false,
            corner_flow_px: None,
            fg_fraction: None,
            labelled: true,
            excluded_reason: None,
            segment: None,
            num_instances: 0,
        }
    }
}

/// One row of the `instances` table.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceRow {
    pub dataset: String,
    pub sequence_id: String,
    pub frame_index: u32,
    pub frame_name: String,
    pub instance_id: u32,
    pub mask: CocoRle,
    pub bbox_xywh: [f32; 4],
    pub area_px: u32,
    pub origin: InstanceOrigin,
    pub component_id: u32,
    pub hdbscan_label: Option<i32>,
    pub mean_flow_px: f32,
}

/// The extra `instances` columns of a prediction run (`mrdino infer`), all nullable so one reader serves
/// pseudo-labels and predictions: which window and slot the merged channel came from, the stage-2
/// deactivation weight, and the reference's `combination_num`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PredictionColumns {
    /// Window (row-major in the preset's grid) of the merged channel that the instance is.
    pub window: u32,
    /// The channel's index within its window: 0 is the window's background channel (stage 2) or, for the
    /// baseline, its first slot (which the window merge treats as background).
    pub window_channel: u32,
    /// The slot behind the channel (stage 2: `window_channel − 1`; baseline: `window_channel`).
    pub slot: u32,
    /// Stage-2 deactivation weight w of that slot (kept slots have w > 0.5); `None` for the baseline.
    pub deactivation_weight: Option<f32>,
    /// The reference's `combination_num` (the frame's number of windows) for a stage-2 model, whose
    /// per-window background channels map to background; `None` for the baseline.
    pub combination_num: Option<u32>,
}

/// Names of the prediction columns, in order.
pub const PREDICTION_COLUMNS: [&str; 5] = [
    "window",
    "window_channel",
    "slot",
    "deactivation_weight",
    "combination_num",
];

/// The optional `instances` columns of one row: null (`None`) until a stage computes them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScoreAndTrack {
    /// Confidence of the instance, in [0, 1].
    pub score: Option<f32>,
    /// Identity of the object across the frames of its sequence; unique within the sequence, and at most one
    /// instance of a frame carries a given id.
    pub track_id: Option<u32>,
}

/// Name of the confidence column of `instances`.
pub const SCORE_COLUMN: &str = "score";
/// Name of the track column of `instances`.
pub const TRACK_ID_COLUMN: &str = "track_id";

fn field(name: &str, data_type: DataType, nullable: bool) -> Field {
    Field::new(name, data_type, nullable)
}

fn f32x4() -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), 4)
}

fn mask_fields() -> Fields {
    Fields::from(vec![
        field(
            "size",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, false))),
            false,
        ),
        field("counts", DataType::Utf8, false),
    ])
}

pub fn frames_schema() -> Schema {
    Schema::new(vec![
        field("dataset", DataType::Utf8, false),
        field("sequence_id", DataType::Utf8, false),
        field("frame_index", DataType::UInt32, false),
        field("frame_name", DataType::Utf8, false),
        field("source_path", DataType::Utf8, false),
        field("height", DataType::UInt32, false),
        field("width", DataType::UInt32, false),
        field("orig_height", DataType::UInt32, false),
        field("orig_width", DataType::UInt32, false),
        field("resized_height", DataType::UInt32, false),
        field("resized_width", DataType::UInt32, false),
        field("crop_top", DataType::UInt32, false),
        field("crop_left", DataType::UInt32, false),
        field("quasi_static", DataType::Boolean, false),
        field("corner_flow_px", f32x4(), true),
        field("fg_fraction", DataType::Float32, true),
        field("labelled", DataType::Boolean, false),
        field("excluded_reason", DataType::Utf8, true),
        field("segment", DataType::UInt32, true),
        field("num_instances", DataType::UInt32, false),
    ])
}

pub fn instances_schema() -> Schema {
    Schema::new(vec![
        field("dataset", DataType::Utf8, false),
        field("sequence_id", DataType::Utf8, false),
        field("frame_index", DataType::UInt32, false),
        field("frame_name", DataType::Utf8, false),
        field("instance_id", DataType::UInt32, false),
        field("mask", DataType::Struct(mask_fields()), false),
        field("bbox_xywh", f32x4(), false),
        field("area_px", DataType::UInt32, false),
        field("origin", DataType::Utf8, false),
        field("component_id", DataType::UInt32, false),
        field("hdbscan_label", DataType::Int32, true),
        field("mean_flow_px", DataType::Float32, false),
        field(SCORE_COLUMN, DataType::Float32, true),
        field(TRACK_ID_COLUMN, DataType::UInt32, true),
    ])
}

/// `instances` with the prediction columns appended.
pub fn prediction_instances_schema() -> Schema {
    let mut fields: Vec<Field> = instances_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend([
        field(PREDICTION_COLUMNS[0], DataType::UInt32, true),
        field(PREDICTION_COLUMNS[1], DataType::UInt32, true),
        field(PREDICTION_COLUMNS[2], DataType::UInt32, true),
        field(PREDICTION_COLUMNS[3], DataType::Float32, true),
        field(PREDICTION_COLUMNS[4], DataType::UInt32, true),
    ]);
    Schema::new(fields)
}

pub(crate) fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

pub(crate) fn u32s(values: impl Iterator<Item = u32>) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(values))
}

fn fixed4(values: &[Option<[f32; 4]>]) -> ArrayRef {
    let flat = Float32Array::from_iter_values(values.iter().flat_map(|v| v.unwrap_or([0.0; 4])));
    let nulls = values
        .iter()
        .any(Option::is_none)
        .then(|| values.iter().map(Option::is_some).collect());
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Arc::new(FixedSizeListArray::new(item, 4, Arc::new(flat), nulls))
}

pub fn frames_batch(rows: &[FrameRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.dataset.as_str())),
        strings(rows.iter().map(|r| r.sequence_id.as_str())),
        u32s(rows.iter().map(|r| r.frame_index)),
        strings(rows.iter().map(|r| r.frame_name.as_str())),
        strings(rows.iter().map(|r| r.source_path.as_str())),
        u32s(rows.iter().map(|r| r.height)),
        u32s(rows.iter().map(|r| r.width)),
        u32s(rows.iter().map(|r| r.orig_height)),
        u32s(rows.iter().map(|r| r.orig_width)),
        u32s(rows.iter().map(|r| r.resized_height)),
        u32s(rows.iter().map(|r| r.resized_width)),
        u32s(rows.iter().map(|r| r.crop_top)),
        u32s(rows.iter().map(|r| r.crop_left)),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.quasi_static)))),
        fixed4(&rows.iter().map(|r| r.corner_flow_px).collect::<Vec<_>>()),
        Arc::new(Float32Array::from_iter(rows.iter().map(|r| r.fg_fraction))),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.labelled)))),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.excluded_reason.map(ExcludedReason::name)),
        )),
        Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.segment))),
        u32s(rows.iter().map(|r| r.num_instances)),
    ];
    RecordBatch::try_new(Arc::new(frames_schema()), columns)
}

/// `instances` rows with `score` and `track_id` null.
pub fn instances_batch(rows: &[InstanceRow]) -> Result<RecordBatch, arrow::error::ArrowError> {
    instances_batch_with_scores(rows, &vec![ScoreAndTrack::default(); rows.len()])
}

/// `instances` rows, `scores[i]` belonging to `rows[i]`. A score must be a number in [0, 1].
pub fn instances_batch_with_scores(
    rows: &[InstanceRow],
    scores: &[ScoreAndTrack],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let invalid = arrow::error::ArrowError::InvalidArgumentError;
    if rows.len() != scores.len() {
        return Err(invalid(format!(
            "{} instance rows but {} score/track rows",
            rows.len(),
            scores.len()
        )));
    }
    if let Some((i, s)) = scores
        .iter()
        .enumerate()
        .find(|(_, s)| s.score.is_some_and(|v| !(0.0..=1.0).contains(&v)))
    {
        let r = &rows[i];
        return Err(invalid(format!(
            "{} frame {} instance {}: score {:?} is not in [0, 1]",
            r.sequence_id, r.frame_index, r.instance_id, s.score
        )));
    }
    let sizes = UInt32Array::from_iter_values(rows.iter().flat_map(|r| [r.mask.height, r.mask.width]));
    let size_list = ListArray::new(
        Arc::new(Field::new("item", DataType::UInt32, false)),
        OffsetBuffer::from_lengths(rows.iter().map(|_| 2)),
        Arc::new(sizes),
        None,
    );
    let mask = StructArray::new(
        mask_fields(),
        vec![
            Arc::new(size_list) as ArrayRef,
            strings(rows.iter().map(|r| r.mask.counts.as_str())),
        ],
        None,
    );
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|r| r.dataset.as_str())),
        strings(rows.iter().map(|r| r.sequence_id.as_str())),
        u32s(rows.iter().map(|r| r.frame_index)),
        strings(rows.iter().map(|r| r.frame_name.as_str())),
        u32s(rows.iter().map(|r| r.instance_id)),
        Arc::new(mask),
        fixed4(&rows.iter().map(|r| Some(r.bbox_xywh)).collect::<Vec<_>>()),
        u32s(rows.iter().map(|r| r.area_px)),
        strings(rows.iter().map(|r| r.origin.name())),
        u32s(rows.iter().map(|r| r.component_id)),
        Arc::new(Int32Array::from_iter(rows.iter().map(|r| r.hdbscan_label))),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.mean_flow_px))),
        Arc::new(Float32Array::from_iter(scores.iter().map(|s| s.score))),
        Arc::new(UInt32Array::from_iter(scores.iter().map(|s| s.track_id))),
    ];
    RecordBatch::try_new(Arc::new(instances_schema()), columns)
}

/// `instances` rows of a prediction run, `extra[i]` belonging to `rows[i]`.
pub fn prediction_instances_batch(
    rows: &[InstanceRow],
    extra: &[PredictionColumns],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if rows.len() != extra.len() {
        return Err(arrow::error::ArrowError::InvalidArgumentError(format!(
            "{} instance rows but {} prediction rows",
            rows.len(),
            extra.len()
        )));
    }
    let mut columns = instances_batch(rows)?.columns().to_vec();
    columns.extend([
        Arc::new(UInt32Array::from_iter(extra.iter().map(|e| Some(e.window)))) as ArrayRef,
        Arc::new(UInt32Array::from_iter(extra.iter().map(|e| Some(e.window_channel)))),
        Arc::new(UInt32Array::from_iter(extra.iter().map(|e| Some(e.slot)))),
        Arc::new(Float32Array::from_iter(extra.iter().map(|e| e.deactivation_weight))),
        Arc::new(UInt32Array::from_iter(extra.iter().map(|e| e.combination_num))),
    ]);
    RecordBatch::try_new(Arc::new(prediction_instances_schema()), columns)
}

/// Writes one batch as a zstd Parquet file, atomically, with key/value metadata.
pub fn write_parquet(path: &Path, batch: &RecordBatch, metadata: &[(String, String)]) -> Result<(), OutputError> {
    let kv = metadata
        .iter()
        .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone()))
        .collect();
    let zstd = ZstdLevel::try_new(3).map_err(|e| OutputError::format(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd))
        .set_key_value_metadata(Some(kv))
        .build();
    let mut file = AtomicFile::create(path)?;
    {
        let mut writer =
            ArrowWriter::try_new(&mut file, batch.schema(), Some(props)).map_err(|e| OutputError::format(path, e))?;
        writer.write(batch).map_err(|e| OutputError::format(path, e))?;
        writer.close().map_err(|e| OutputError::format(path, e))?;
    }
    file.commit()
}

/// Key/value metadata of a Parquet file.
pub type KeyValues = Vec<(String, String)>;

/// The key/value metadata of a Parquet file, from its footer alone.
pub fn read_key_values(path: &Path) -> Result<KeyValues, OutputError> {
    let file = File::open(path).map_err(|e| OutputError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| OutputError::format(path, e))?;
    Ok(key_values_of(&builder))
}

fn key_values_of<T>(builder: &parquet::arrow::arrow_reader::ArrowReaderBuilder<T>) -> KeyValues {
    builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads a whole Parquet file and its key/value metadata.
pub fn read_parquet(path: &Path) -> Result<(Vec<RecordBatch>, KeyValues), OutputError> {
    let file = File::open(path).map_err(|e| OutputError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| OutputError::format(path, e))?;
    let metadata = key_values_of(&builder);
    let reader = builder.build().map_err(|e| OutputError::format(path, e))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| OutputError::format(path, e))?;
    Ok((batches, metadata))
}

pub(crate) fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a ArrayRef, OutputError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| OutputError::format(path, format!("missing column `{name}`")))
}

pub(crate) fn wrong_type(path: &Path, name: &str, expected: &str, array: &ArrayRef) -> OutputError {
    OutputError::format(
        path,
        format!(
            "column `{name}` is {} but mrdino tables store it as {expected}",
            array.data_type()
        ),
    )
}

pub(crate) fn string_column<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a StringArray, OutputError> {
    let array = column(batch, name, path)?;
    array
        .as_string_opt::<i32>()
        .ok_or_else(|| wrong_type(path, name, "Utf8", array))
}

pub(crate) fn u32_column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a UInt32Array, OutputError> {
    let array = column(batch, name, path)?;
    array
        .as_primitive_opt::<UInt32Type>()
        .ok_or_else(|| wrong_type(path, name, "UInt32", array))
}

fn i32_column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a Int32Array, OutputError> {
    let array = column(batch, name, path)?;
    array
        .as_primitive_opt::<Int32Type>()
        .ok_or_else(|| wrong_type(path, name, "Int32", array))
}

pub(crate) fn f32_column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a Float32Array, OutputError> {
    let array = column(batch, name, path)?;
    array
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(|| wrong_type(path, name, "Float32", array))
}

fn bool_column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a BooleanArray, OutputError> {
    let array = column(batch, name, path)?;
    array
        .as_boolean_opt()
        .ok_or_else(|| wrong_type(path, name, "Boolean", array))
}

/// A `fixed_size_list<float32, 4>` column.
fn f32x4_column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a FixedSizeListArray, OutputError> {
    let array = column(batch, name, path)?;
    array
        .as_fixed_size_list_opt()
        .filter(|l| l.value_length() == 4 && l.values().data_type() == &DataType::Float32)
        .ok_or_else(|| wrong_type(path, name, "fixed_size_list<float32, 4>", array))
}

fn fixed4_at(list: &FixedSizeListArray, i: usize) -> Option<[f32; 4]> {
    if list.is_null(i) {
        return None;
    }
    let values = list.value(i);
    let v = values.as_primitive_opt::<Float32Type>()?;
    (v.len() == 4).then(|| [v.value(0), v.value(1), v.value(2), v.value(3)])
}

/// Reads `frames` rows back.
pub fn read_frames(path: &Path) -> Result<Vec<FrameRow>, OutputError> {
    let (batches, _) = read_parquet(path)?;
    let mut rows = Vec::new();
    for b in &batches {
        let s = |n: &str| string_column(b, n, path);
        let u = |n: &str| u32_column(b, n, path);
        let flag = |n: &str| bool_column(b, n, path);
        let (dataset, seq, idx, name, src) = (
            s("dataset")?,
            s("sequence_id")?,
            u("frame_index")?,
            s("frame_name")?,
            s("source_path")?,
        );
        let (h, w, oh, ow) = (u("height")?, u("width")?, u("orig_height")?, u("orig_width")?);
        let (rh, rw, ct, cl) = (
            u("resized_height")?,
            u("resized_width")?,
            u("crop_top")?,
            u("crop_left")?,
        );
        let (qs, lab) = (flag("quasi_static")?, flag("labelled")?);
        let corners = f32x4_column(b, "corner_flow_px", path)?;
        let fg = f32_column(b, "fg_fraction", path)?;
        let reason = s("excluded_reason")?;
        let (segment, n) = (u("segment")?, u("num_instances")?);
        for i in 0..b.num_rows() {
            let excluded_reason =
                if reason.is_valid(i) {
                    let text = reason.value(i);
                    Some(ExcludedReason::parse(text).ok_or_else(|| {
                        OutputError::format(path, format!("row {i}: unknown excluded_reason `{text}`"))
                    })?)
                } else {
                    None
                };
            rows.push(FrameRow {
                dataset: dataset.value(i).to_owned(),
                sequence_id: seq.value(i).to_owned(),
                frame_index: idx.value(i),
                frame_name: name.value(i).to_owned(),
                source_path: src.value(i).to_owned(),
                height: h.value(i),
                width: w.value(i),
                orig_height: oh.value(i),
                orig_width: ow.value(i),
                resized_height: rh.value(i),
                resized_width: rw.value(i),
                crop_top: ct.value(i),
                crop_left: cl.value(i),
                quasi_static: qs.value(i),
                corner_flow_px: fixed4_at(corners, i),
                fg_fraction: fg.is_valid(i).then(|| fg.value(i)),
                labelled: lab.value(i),
                excluded_reason,
                segment: segment.is_valid(i).then(|| segment.value(i)),
                num_instances: n.value(i),
            });
        }
    }
    Ok(rows)
}

/// Reads `instances` rows back.
pub fn read_instances(path: &Path) -> Result<Vec<InstanceRow>, OutputError> {
    let (batches, _) = read_parquet(path)?;
    instance_rows(&batches, path)
}

/// Reads `instances` rows back with their `score` and `track_id` (one read of the file).
pub fn read_instances_with_scores(path: &Path) -> Result<(Vec<InstanceRow>, Vec<ScoreAndTrack>), OutputError> {
    let (batches, _) = read_parquet(path)?;
    Ok((instance_rows(&batches, path)?, score_rows(&batches, path)?))
}

/// The `score` and `track_id` of every row of an `instances` file; a file without the columns (written before
/// they existed) reads as all null.
pub fn read_scores_and_tracks(path: &Path) -> Result<Vec<ScoreAndTrack>, OutputError> {
    let (batches, _) = read_parquet(path)?;
    score_rows(&batches, path)
}

fn score_rows(batches: &[RecordBatch], path: &Path) -> Result<Vec<ScoreAndTrack>, OutputError> {
    let mut rows = Vec::new();
    for b in batches {
        let score = match b.column_by_name(SCORE_COLUMN) {
            Some(_) => Some(f32_column(b, SCORE_COLUMN, path)?),
            None => None,
        };
        let track = match b.column_by_name(TRACK_ID_COLUMN) {
            Some(_) => Some(u32_column(b, TRACK_ID_COLUMN, path)?),
            None => None,
        };
        for i in 0..b.num_rows() {
            let score = score.filter(|c| c.is_valid(i)).map(|c| c.value(i));
            if let Some(v) = score.filter(|v| !(0.0..=1.0).contains(v)) {
                return Err(OutputError::format(
                    path,
                    format!("row {i}: score {v} is not in [0, 1]"),
                ));
            }
            rows.push(ScoreAndTrack {
                score,
                track_id: track.filter(|c| c.is_valid(i)).map(|c| c.value(i)),
            });
        }
    }
    Ok(rows)
}

fn instance_rows(batches: &[RecordBatch], path: &Path) -> Result<Vec<InstanceRow>, OutputError> {
    let mut rows = Vec::new();
    for b in batches {
        let s = |n: &str| string_column(b, n, path);
        let u = |n: &str| u32_column(b, n, path);
        let (dataset, seq, idx, name) = (s("dataset")?, s("sequence_id")?, u("frame_index")?, s("frame_name")?);
        let (id, area, comp) = (u("instance_id")?, u("area_px")?, u("component_id")?);
        let origin = s("origin")?;
        let mask_column = column(b, "mask", path)?;
        let mask_type = "struct<size: list<uint32>, counts: utf8>";
        let bad_mask = || wrong_type(path, "mask", mask_type, mask_column);
        let mask = mask_column.as_struct_opt().ok_or_else(bad_mask)?;
        let sizes = mask
            .column_by_name("size")
            .and_then(|c| c.as_list_opt::<i32>())
            .filter(|l| l.values().data_type() == &DataType::UInt32)
            .ok_or_else(bad_mask)?;
        let counts = mask
            .column_by_name("counts")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(bad_mask)?;
        let bbox = f32x4_column(b, "bbox_xywh", path)?;
        let label = i32_column(b, "hdbscan_label", path)?;
        let mean = f32_column(b, "mean_flow_px", path)?;
        for i in 0..b.num_rows() {
            let size = sizes.value(i);
            let size = size.as_primitive::<UInt32Type>();
            let origin_text = origin.value(i);
            let origin = InstanceOrigin::parse(origin_text).ok_or_else(|| {
                OutputError::format(path, format!("row {i}: unknown instance origin `{origin_text}`"))
            })?;
            if size.len() != 2 {
                return Err(OutputError::format(
                    path,
                    format!("row {i}: mask size has {} values", size.len()),
                ));
            }
            rows.push(InstanceRow {
                dataset: dataset.value(i).to_owned(),
                sequence_id: seq.value(i).to_owned(),
                frame_index: idx.value(i),
                frame_name: name.value(i).to_owned(),
                instance_id: id.value(i),
                mask: CocoRle {
                    height: size.value(0),
                    width: size.value(1),
                    counts: counts.value(i).to_owned(),
                },
                bbox_xywh: fixed4_at(bbox, i).unwrap_or([0.0; 4]),
                area_px: area.value(i),
                origin,
                component_id: comp.value(i),
                hdbscan_label: label.is_valid(i).then(|| label.value(i)),
                mean_flow_px: mean.value(i),
            });
        }
    }
    Ok(rows)
}

/// The prediction columns of an `instances` file, one entry per row; `None` for every row of a file without
/// them (pseudo-labels) and for rows whose `window` is null.
pub fn read_prediction_columns(path: &Path) -> Result<Vec<Option<PredictionColumns>>, OutputError> {
    let (batches, _) = read_parquet(path)?;
    let mut rows = Vec::new();
    for b in &batches {
        if b.column_by_name(PREDICTION_COLUMNS[0]).is_none() {
            rows.extend(std::iter::repeat_n(None, b.num_rows()));
            continue;
        }
        let u = |n: &str| u32_column(b, n, path);
        let (window, channel, slot, combination) = (
            u(PREDICTION_COLUMNS[0])?,
            u(PREDICTION_COLUMNS[1])?,
            u(PREDICTION_COLUMNS[2])?,
            u(PREDICTION_COLUMNS[4])?,
        );
        let weight = f32_column(b, PREDICTION_COLUMNS[3], path)?;
        for i in 0..b.num_rows() {
            if window.is_null(i) {
                rows.push(None);
                continue;
            }
            if channel.is_null(i) || slot.is_null(i) {
                return Err(OutputError::format(
                    path,
                    format!("row {i}: `window` is set but `window_channel` or `slot` is null"),
                ));
            }
            rows.push(Some(PredictionColumns {
                window: window.value(i),
                window_channel: channel.value(i),
                slot: slot.value(i),
                deactivation_weight: weight.is_valid(i).then(|| weight.value(i)),
                combination_num: combination.is_valid(i).then(|| combination.value(i)),
            }));
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: u32, labelled: bool) -> FrameRow {
        FrameRow {
            dataset: "kitti".into(),
            sequence_id: "2011_09_26_drive_0001_sync/image_02".into(),
            frame_index: i,
            frame_name: format!("{i:010}"),
            source_path: format!("2011_09_26/x/{i:010}.png"),
            height: 376,
            width: 1240,
            orig_height: 375,
            orig_width: 1242,
            resized_height: 376,
            resized_width: 1240,
            crop_top: 0,
            crop_left: 0,
            quasi_static: labelled,
            corner_flow_px: if i == 0 { None } else { Some([0.5, 1.0, 1.5, 2.0]) },
            fg_fraction: if i == 0 { None } else { Some(0.01) },
            labelled,
            excluded_reason: (!labelled).then_some(ExcludedReason::CameraMotion),
            segment: labelled.then_some(0),
            num_instances: u32::from(labelled),
        }
    }

    #[test]
    fn frames_round_trip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames/part.parquet");
        let rows = vec![frame(0, false), frame(1, true), frame(2, false)];
        let meta = vec![("mrdino.params_hash".to_string(), "abc".to_string())];
        write_parquet(&path, &frames_batch(&rows).unwrap(), &meta).unwrap();
        assert_eq!(read_frames(&path).unwrap(), rows);
        let (_, kv) = read_parquet(&path).unwrap();
        assert!(kv.contains(&meta[0]));
    }

    #[test]
    fn instances_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.parquet");
        let rows: Vec<InstanceRow> = (1..4)
            .map(|k| InstanceRow {
                dataset: "frames".into(),
                sequence_id: "s".into(),
                frame_index: 3,
                frame_name: "000003".into(),
                instance_id: k,
                mask: CocoRle::from_pixels(&[k, k + 10, 40], 6, 8),
                bbox_xywh: [1.0, 2.0, 3.0, 4.0],
                area_px: 3,
                origin: if k == 1 {
                    InstanceOrigin::Component
                } else {
                    InstanceOrigin::Hdbscan
                },
                component_id: 1,
                hdbscan_label: (k > 1).then_some(k as i32 - 2),
                mean_flow_px: 3.5,
            })
            .collect();
        write_parquet(&path, &instances_batch(&rows).unwrap(), &[]).unwrap();
        assert_eq!(read_instances(&path).unwrap(), rows);
        assert_eq!(read_prediction_columns(&path).unwrap(), vec![None; 3]);

        // The same rows as a prediction run: the instance reader sees the same rows, the extra reader the rest.
        let extra: Vec<PredictionColumns> = (0..3)
            .map(|k| PredictionColumns {
                window: k,
                window_channel: k + 1,
                slot: k,
                deactivation_weight: (k != 1).then_some(0.75),
                combination_num: (k != 2).then_some(4),
            })
            .collect();
        write_parquet(&path, &prediction_instances_batch(&rows, &extra).unwrap(), &[]).unwrap();
        assert_eq!(read_instances(&path).unwrap(), rows);
        let back: Vec<PredictionColumns> = read_prediction_columns(&path).unwrap().into_iter().flatten().collect();
        assert_eq!(back, extra);
        assert!(prediction_instances_batch(&rows, &extra[..1]).is_err());
    }

    #[test]
    fn tables_with_other_column_types_are_errors_naming_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.parquet");
        // A `frames` file whose frame_index is a string and an `instances` file whose mask is a string.
        let schema = Schema::new(vec![field("frame_index", DataType::Utf8, false)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![strings(["a"].into_iter())]).unwrap();
        write_parquet(&path, &batch, &[]).unwrap();
        let err = read_frames(&path).unwrap_err().to_string();
        assert!(err.contains("odd.parquet") && err.contains("dataset"), "{err}");
        let batch = frames_batch(&[frame(0, false)]).unwrap();
        let mut columns = batch.columns().to_vec();
        let mut fields: Vec<Field> = frames_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        columns[2] = strings(["zero"].into_iter());
        fields[2] = field("frame_index", DataType::Utf8, false);
        let odd = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        write_parquet(&path, &odd, &[]).unwrap();
        let err = read_frames(&path).unwrap_err().to_string();
        assert!(err.contains("column `frame_index` is Utf8"), "{err}");
        let row = InstanceRow {
            dataset: "frames".into(),
            sequence_id: "s".into(),
            frame_index: 0,
            frame_name: "0".into(),
            instance_id: 1,
            mask: CocoRle::from_pixels(&[1], 2, 2),
            bbox_xywh: [0.0; 4],
            area_px: 1,
            origin: InstanceOrigin::Component,
            component_id: 1,
            hdbscan_label: None,
            mean_flow_px: 1.0,
        };
        let instances = instances_batch(&[row]).unwrap();
        let mut columns = instances.columns().to_vec();
        let mut fields: Vec<Field> = instances_schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        columns[5] = strings(["not a mask"].into_iter());
        fields[5] = field("mask", DataType::Utf8, false);
        let odd = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        write_parquet(&path, &odd, &[]).unwrap();
        let err = read_instances(&path).unwrap_err().to_string();
        assert!(err.contains("column `mask` is Utf8"), "{err}");
    }

    fn instance(frame_index: u32, instance_id: u32) -> InstanceRow {
        InstanceRow {
            dataset: "frames".into(),
            sequence_id: "s".into(),
            frame_index,
            frame_name: format!("{frame_index:06}"),
            instance_id,
            mask: CocoRle::from_pixels(&[instance_id, 20], 5, 6),
            bbox_xywh: [0.0, 0.0, 3.0, 4.0],
            area_px: 2,
            origin: InstanceOrigin::Component,
            component_id: instance_id,
            hdbscan_label: None,
            mean_flow_px: 2.5,
        }
    }

    #[test]
    fn scores_and_tracks_round_trip_and_default_to_null() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.parquet");
        let rows: Vec<InstanceRow> = (1..5).map(|k| instance(k / 2, k)).collect();
        let scores = vec![
            ScoreAndTrack {
                score: Some(0.0),
                track_id: Some(7),
            },
            ScoreAndTrack {
                score: None,
                track_id: Some(0),
            },
            ScoreAndTrack {
                score: Some(1.0),
                track_id: None,
            },
            ScoreAndTrack::default(),
        ];
        write_parquet(&path, &instances_batch_with_scores(&rows, &scores).unwrap(), &[]).unwrap();
        assert_eq!(read_instances(&path).unwrap(), rows);
        assert_eq!(read_scores_and_tracks(&path).unwrap(), scores);
        assert_eq!(
            read_instances_with_scores(&path).unwrap(),
            (rows.clone(), scores.clone())
        );

        // Today's writers write both columns, null.
        write_parquet(&path, &instances_batch(&rows).unwrap(), &[]).unwrap();
        let (batches, _) = read_parquet(&path).unwrap();
        for name in [SCORE_COLUMN, TRACK_ID_COLUMN] {
            let column = batches[0].column_by_name(name).unwrap();
            assert_eq!(column.null_count(), rows.len(), "{name}");
        }
        assert_eq!(
            read_scores_and_tracks(&path).unwrap(),
            vec![ScoreAndTrack::default(); 4]
        );
        let extra = PredictionColumns {
            window: 0,
            window_channel: 1,
            slot: 0,
            deactivation_weight: None,
            combination_num: None,
        };
        write_parquet(&path, &prediction_instances_batch(&rows, &[extra; 4]).unwrap(), &[]).unwrap();
        assert_eq!(
            read_scores_and_tracks(&path).unwrap(),
            vec![ScoreAndTrack::default(); 4]
        );
        assert_eq!(read_prediction_columns(&path).unwrap(), vec![Some(extra); 4]);
    }

    #[test]
    fn files_written_before_the_score_and_track_columns_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.parquet");
        let rows: Vec<InstanceRow> = (1..3).map(|k| instance(0, k)).collect();
        // The schema-1 layout as first written: everything up to `mean_flow_px`.
        let batch = instances_batch(&rows).unwrap();
        let keep = batch.num_columns() - 2;
        let old = batch.project(&(0..keep).collect::<Vec<_>>()).unwrap();
        assert_eq!(old.schema().fields().last().unwrap().name(), "mean_flow_px");
        write_parquet(&path, &old, &[]).unwrap();
        assert_eq!(read_instances(&path).unwrap(), rows);
        assert_eq!(
            read_scores_and_tracks(&path).unwrap(),
            vec![ScoreAndTrack::default(); 2]
        );
    }

    #[test]
    fn scores_outside_the_unit_interval_are_refused_on_write_and_read() {
        let rows = vec![instance(3, 1)];
        for bad in [1.5, -0.25, f32::NAN] {
            let scores = [ScoreAndTrack {
                score: Some(bad),
                track_id: None,
            }];
            let err = instances_batch_with_scores(&rows, &scores).unwrap_err().to_string();
            assert!(
                err.contains("frame 3 instance 1") && err.contains("not in [0, 1]"),
                "{err}"
            );
        }
        assert!(instances_batch_with_scores(&rows, &[]).is_err());
        // A file written by another tool with an out-of-range score.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.parquet");
        let batch = instances_batch(&rows).unwrap();
        let mut columns = batch.columns().to_vec();
        let i = batch.schema().index_of(SCORE_COLUMN).unwrap();
        columns[i] = Arc::new(Float32Array::from(vec![Some(2.0f32)]));
        let odd = RecordBatch::try_new(batch.schema(), columns).unwrap();
        write_parquet(&path, &odd, &[]).unwrap();
        let err = read_scores_and_tracks(&path).unwrap_err().to_string();
        assert!(err.contains("odd.parquet") && err.contains("row 0: score 2"), "{err}");
    }
}
