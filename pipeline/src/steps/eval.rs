//! `mrdino eval`: pseudo-labels (`--labels`) or a model's predictions (`--predictions`, from `mrdino infer`)
//! against ground-truth masks, with the paper's metrics.
//!
//! The numbers are those of `mrdino_stages::metrics` (F1@50, "AP50", "AR50", fg-ARI, all-ARI exactly as the
//! reference evaluation computes them); this module only finds, for every labelled frame of a run, its
//! prediction (the frame's instance masks painted into one id map at the label grid) and its ground truth, and
//! reports the totals per sequence and over the run.
//!
//! Predictions: an instance's id is its merged canvas channel + 1 and a stage-2 model's per-window background
//! channels have no row, so the painted canvas is the reference's argmax with `combination_num` (background
//! channels → 0). A stage-2 run is scored with [`PredictionRule::DiscardFirst`] (the first remaining non-empty
//! id is discarded as background), a baseline run with [`PredictionRule::KeepAll`] (no `combination_num`), and
//! MOVi-E ground truth (`kubric`/`movi-e`) with `KeepAll` for both, as the reference's MOVi-E configs do. With
//! `kitti` and `tri-pd` ground truth the canvas is compared as the reference does (default resolutions 95×315
//! and 123×245, legacy nearest); with the other formats the canvas is first mapped back to the original frame
//! through the provenance columns (nearest, pixel centres; pixels the canvas does not cover are background).
//!
//! Ground truth formats (`--gt-format`):
//! * `synth` — a `mrdino synth` directory: `instances/<seq>/<frame>.png` restricted to the objects that
//!   `meta/<seq>.json` marks as moving from that frame to the next. Pseudo-labels claim only moving objects,
//!   so a parked object counts as background, not as a missed instance. The metadata's static-camera flags
//!   also score the quasi-static selection (per-frame corner test and membership of a long-enough run).
//! * `kitti` — KITTI instance-benchmark PNGs (`class·256 + instance`, decoded by
//!   [`decode_kitti_instances`]) at `DIR/<sequence_id>/<frame_name>.png`.
//! * `ids` — any single-channel 8- or 16-bit id PNG (0 = background) at `DIR/<sequence_id>/<frame_name>.png`.
//! * `tri-pd` — TRI-PD evaluation label PNGs at `DIR/<sequence_id>/<frame_name>.png`, converted as the
//!   reference converts them ([`tri_pd_ground_truth`]: 968×608 nearest, top 128 rows cropped, ids below 500 px
//!   removed, renumbered).
//! * `kubric` (alias `movi-e`) — `segmentation_XXXXX.png` beside each `rgba_XXXXX.png` frame.
//!
//! Ground truth and labels can live at different resolutions. Ground truth at the label grid is used as is;
//! ground truth at the original frame size is used as is when the labels only resized the frame (the
//! `--resolution` preset brings both to the evaluation resolution as the reference does), and goes through the
//! same resize (legacy nearest) and crop as the frames when the labels cropped them (TRI-PD), so both cover
//! the same pixels. Any other size is an error naming the file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mrdino_datasets::decode::read_unchanged;
use mrdino_outputs::tables::read_prediction_columns;
use mrdino_outputs::{write_atomic, FrameRow, InstanceRow};
use mrdino_stages::metrics::{
    decode_kitti_instances, nearest_exact_indices, quasi_static_retrieval, tri_pd_ground_truth, EvalPreset, Evaluator,
    LabelMap, MetricsReport, PredictionRule, RetrievalScores,
};
use opencv::core::CV_16U;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use crate::settings::infer::MODEL_STAGE2;
use mrdino_outputs::runs::RunKind;

/// Ground-truth layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GtFormat {
    /// A `mrdino synth` directory (instances/ restricted to moving objects, meta/ for the camera).
    Synth,
    /// KITTI instance-benchmark PNGs (class·256 + instance) at DIR/<sequence_id>/<frame_name>.png.
    Kitti,
    /// 8- or 16-bit id PNGs (0 = background) at DIR/<sequence_id>/<frame_name>.png.
    Ids,
    /// TRI-PD evaluation label PNGs at DIR/<sequence_id>/<frame_name>.png (the reference's conversion:
    /// 968x608 nearest, top 128 rows cropped, ids under 500 px removed).
    #[value(name = "tri-pd")]
    #[serde(rename = "tri-pd")]
    TriPd,
    /// Kubric (MOVi) scenes: `segmentation_XXXXX.png` beside each `rgba_XXXXX.png` frame (all objects,
    /// moving or not; DIR = the dataset root given to `labels`).
    #[value(alias = "movi-e")]
    Kubric,
}

/// Flags of `mrdino eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Output directory of `mrdino labels`.
    #[arg(
        long,
        value_name = "OUT",
        required_unless_present = "predictions",
        conflicts_with = "predictions"
    )]
    pub labels: Option<PathBuf>,
    /// Output directory of `mrdino infer`.
    #[arg(long, value_name = "PRED")]
    pub predictions: Option<PathBuf>,
    /// Parameter hash to evaluate (default: the only one, or the latest run when OUT holds several).
    #[arg(long, value_name = "HASH")]
    pub params: Option<String>,
    /// Ground-truth directory.
    #[arg(long, value_name = "DIR")]
    pub gt: PathBuf,
    /// Layout of the ground truth.
    #[arg(long, value_enum)]
    pub gt_format: GtFormat,
    /// Evaluation resolution: kitti (95x315, GT via the 378x1260 canvas), tri-pd (123x245), native (the GT's).
    /// Default: native, except for predictions against kitti / tri-pd ground truth (kitti / tri-pd).
    #[arg(long, value_parser = parse_preset)]
    pub resolution: Option<EvalPreset>,
    /// Where to write the metrics as JSON (default OUT/_eval-<hash>.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Evaluate only the labelled frames that have ground truth (default: a missing file is an error).
    #[arg(long)]
    pub skip_missing_gt: bool,
}

fn parse_preset(text: &str) -> Result<EvalPreset, String> {
    text.parse()
        .map_err(|e: mrdino_stages::metrics::MetricsError| e.to_string())
}

/// The rows of a labels or prediction run (see `mrdino_outputs::runs`).
pub use mrdino_outputs::runs::RunTables as LabelTables;
pub use crate::engine::runs::read_label_tables;

/// The prediction of one frame: its instance masks painted into an id map at the label grid.
pub(crate) fn prediction_map(frame: &FrameRow, instances: &[&InstanceRow]) -> Result<LabelMap> {
    Ok(mrdino_stages::metrics::instance_map(frame, instances)?)
}

/// Reads a single-channel 8- or 16-bit PNG as (height, width, values).
fn read_id_png(path: &Path) -> Result<(usize, usize, Vec<u16>)> {
    let mat = read_unchanged(path)?;
    if mat.channels() != 1 {
        bail!(
            "{}: {} channels; ground-truth id images must have one",
            path.display(),
            mat.channels()
        );
    }
    let (height, width) = (mat.rows() as usize, mat.cols() as usize);
    let mat = if mat.is_continuous() { mat } else { mat.try_clone()? };
    let values: Vec<u16> = match mat.depth() {
        opencv::core::CV_8U => mat.data_typed::<u8>()?.iter().map(|&v| u16::from(v)).collect(),
        CV_16U => mat.data_typed::<u16>()?.to_vec(),
        other => bail!(
            "{}: pixel depth {other} is neither 8- nor 16-bit unsigned",
            path.display()
        ),
    };
    Ok((height, width, values))
}

/// What `meta/<seq>.json` of a synth directory says about one frame.
#[derive(Deserialize)]
struct SynthMeta {
    frames: Vec<SynthFrameMeta>,
}

#[derive(Deserialize)]
struct SynthFrameMeta {
    frame: String,
    camera: Option<SynthCamera>,
    objects: Vec<SynthObject>,
}

#[derive(Deserialize)]
struct SynthCamera {
    #[serde(rename = "static")]
    is_static: bool,
}

#[derive(Deserialize)]
struct SynthObject {
    id: u32,
    moving: Option<bool>,
}

/// Ground-truth source with its per-sequence caches.
pub(crate) struct GroundTruth {
    dir: PathBuf,
    format: GtFormat,
    synth_meta: HashMap<String, BTreeMap<String, SynthFrameMeta>>,
}

impl GroundTruth {
    pub(crate) fn new(dir: &Path, format: GtFormat) -> Result<Self> {
        if !dir.is_dir() {
            bail!("ground-truth directory {} does not exist", dir.display());
        }
        if format == GtFormat::Synth && !dir.join("meta").is_dir() {
            bail!("{} is not a `mrdino synth` directory (no meta/ inside)", dir.display());
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            format,
            synth_meta: HashMap::new(),
        })
    }

    fn file(&self, frame: &FrameRow) -> PathBuf {
        let base = match self.format {
            GtFormat::Synth => self.dir.join("instances"),
            GtFormat::Kitti | GtFormat::Ids | GtFormat::TriPd | GtFormat::Kubric => self.dir.clone(),
        };
        let name = match self.format {
            GtFormat::Kubric => {
                let number = frame.frame_name.strip_prefix("rgba_").unwrap_or(&frame.frame_name);
                format!("segmentation_{number}.png")
            }
            _ => format!("{}.png", frame.frame_name),
        };
        base.join(&frame.sequence_id).join(name)
    }

    /// The synth metadata of a sequence, frames by name.
    fn meta(&mut self, sequence_id: &str) -> Result<&BTreeMap<String, SynthFrameMeta>> {
        if !self.synth_meta.contains_key(sequence_id) {
            let path = self.dir.join("meta").join(format!("{sequence_id}.json"));
            let bytes = std::fs::read(&path).with_context(|| {
                format!(
                    "no synth metadata for sequence {sequence_id}: cannot read {}",
                    path.display()
                )
            })?;
            let meta: SynthMeta =
                serde_json::from_slice(&bytes).with_context(|| format!("{}: not synth metadata", path.display()))?;
            let by_name = meta.frames.into_iter().map(|f| (f.frame.clone(), f)).collect();
            self.synth_meta.insert(sequence_id.to_string(), by_name);
        }
        Ok(&self.synth_meta[sequence_id])
    }

    fn frame_meta(&mut self, frame: &FrameRow) -> Result<&SynthFrameMeta> {
        let meta = self.meta(&frame.sequence_id)?;
        meta.get(&frame.frame_name).with_context(|| {
            format!(
                "synth metadata of {} has no frame {}",
                frame.sequence_id, frame.frame_name
            )
        })
    }

    /// The ground-truth id map of a frame in the label grid's frame of reference, or `None` when its file is
    /// missing.
    pub(crate) fn load(&mut self, frame: &FrameRow) -> Result<Option<LabelMap>> {
        let Some((map, path)) = self.load_decoded(frame)? else {
            return Ok(None);
        };
        Ok(Some(to_label_frame(map, frame, &path)?))
    }

    /// The ground-truth id map of a frame as decoded (TRI-PD: after the reference's conversion), before any
    /// resize to a label grid, with its file; `None` when the file is missing.
    pub(crate) fn load_decoded(&mut self, frame: &FrameRow) -> Result<Option<(LabelMap, PathBuf)>> {
        let path = self.file(frame);
        if !path.is_file() {
            return Ok(None);
        }
        let (height, width, values) = read_id_png(&path)?;
        let labels: Vec<u32> = match self.format {
            GtFormat::Kitti => decode_kitti_instances(&values),
            GtFormat::Ids | GtFormat::Kubric | GtFormat::TriPd => values.into_iter().map(u32::from).collect(),
            GtFormat::Synth => {
                let meta = self.frame_meta(frame)?;
                let moving: Vec<u32> = meta
                    .objects
                    .iter()
                    .filter(|o| o.moving == Some(true))
                    .map(|o| o.id)
                    .collect();
                values
                    .into_iter()
                    .map(|v| {
                        if moving.contains(&u32::from(v)) {
                            u32::from(v)
                        } else {
                            0
                        }
                    })
                    .collect()
            }
        };
        let map = LabelMap::new(height, width, labels)?;
        let map = if self.format == GtFormat::TriPd {
            tri_pd_ground_truth(&map).with_context(|| format!("{}: TRI-PD conversion", path.display()))?
        } else {
            map
        };
        Ok(Some((map, path)))
    }

    /// Whether the camera is static from this frame to the next (synth only; `None` on the last frame).
    fn camera_static(&mut self, frame: &FrameRow) -> Result<Option<bool>> {
        Ok(self.frame_meta(frame)?.camera.as_ref().map(|c| c.is_static))
    }
}

/// Brings ground truth loaded at its own size into the label grid's frame of reference (see module docs).
fn to_label_frame(gt: LabelMap, frame: &FrameRow, path: &Path) -> Result<LabelMap> {
    let size = (gt.height as u32, gt.width as u32);
    if size == (frame.height, frame.width) {
        return Ok(gt);
    }
    if size != (frame.orig_height, frame.orig_width) {
        bail!(
            "{}: ground truth is {}x{} (HxW) but frame {} of {} is {}x{} (labels {}x{})",
            path.display(),
            gt.height,
            gt.width,
            frame.frame_name,
            frame.sequence_id,
            frame.orig_height,
            frame.orig_width,
            frame.height,
            frame.width
        );
    }
    let cropped = (frame.resized_height, frame.resized_width) != (frame.height, frame.width)
        || frame.crop_top != 0
        || frame.crop_left != 0;
    if !cropped {
        return Ok(gt);
    }
    let resized = gt.resize_legacy_nearest(frame.resized_height as usize, frame.resized_width as usize)?;
    let (top, left) = (frame.crop_top as usize, frame.crop_left as usize);
    let (height, width) = (frame.height as usize, frame.width as usize);
    if top + height > resized.height || left + width > resized.width {
        bail!(
            "{}: the crop of frame {} of {} lies outside the resized frame",
            path.display(),
            frame.frame_name,
            frame.sequence_id
        );
    }
    let labels = (top..top + height)
        .flat_map(|r| {
            resized.labels[r * resized.width + left..r * resized.width + left + width]
                .iter()
                .copied()
        })
        .collect();
    Ok(LabelMap::new(height, width, labels)?)
}

/// A prediction canvas brought back to the original frame through the provenance columns: original pixel
/// (y, x) takes the canvas pixel at (⌊(y + ½)·resized_height / orig_height⌋ − crop_top, same for x), nearest
/// at pixel centres; pixels outside the canvas are background (0).
pub(crate) fn canvas_to_original(canvas: &LabelMap, frame: &FrameRow) -> Result<LabelMap> {
    let (oh, ow) = (frame.orig_height as usize, frame.orig_width as usize);
    let (rh, rw) = (frame.resized_height as usize, frame.resized_width as usize);
    if oh == 0 || ow == 0 || rh == 0 || rw == 0 {
        bail!(
            "frame {} of {} has no provenance (original {ow}x{oh}, resized {rw}x{rh})",
            frame.frame_name,
            frame.sequence_id
        );
    }
    let rows = nearest_exact_indices(rh, oh);
    let cols = nearest_exact_indices(rw, ow);
    let (top, left) = (frame.crop_top as usize, frame.crop_left as usize);
    let mut labels = Vec::with_capacity(oh * ow);
    for &r in &rows {
        let row = r.checked_sub(top).filter(|&y| y < canvas.height);
        for &c in &cols {
            let value = match (row, c.checked_sub(left).filter(|&x| x < canvas.width)) {
                (Some(y), Some(x)) => canvas.labels[y * canvas.width + x],
                _ => 0,
            };
            labels.push(value);
        }
    }
    Ok(LabelMap::new(oh, ow, labels)?)
}

/// How the predictions of a run are scored: the rule for the first predicted id and whether the canvas is
/// compared as it is or mapped back to the original frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PredictionScoring {
    pub rule: PredictionRule,
    /// The canvas is mapped back to the original frame before the comparison.
    pub to_original: bool,
}

impl PredictionScoring {
    /// See the module docs. `model_kind` is the prediction run's (`stage2` or `baseline`), `None` for labels.
    pub fn new(model_kind: Option<&str>, format: GtFormat) -> Self {
        match model_kind {
            None => Self {
                rule: PredictionRule::DiscardFirst,
                to_original: false,
            },
            Some(kind) => Self {
                rule: if kind == MODEL_STAGE2 && format != GtFormat::Kubric {
                    PredictionRule::DiscardFirst
                } else {
                    PredictionRule::KeepAll
                },
                to_original: !matches!(format, GtFormat::Kitti | GtFormat::TriPd),
            },
        }
    }

    /// The evaluation resolution when `--resolution` is not given.
    pub fn default_resolution(model_kind: Option<&str>, format: GtFormat) -> EvalPreset {
        match (model_kind, format) {
            (Some(_), GtFormat::Kitti) => EvalPreset::Kitti,
            (Some(_), GtFormat::TriPd) => EvalPreset::TriPd,
            _ => EvalPreset::Native,
        }
    }
}

/// Quasi-static retrieval against the synth camera: the per-frame corner test and membership of a run.
#[derive(Clone, Debug, Serialize)]
pub struct QuasiStaticScores {
    /// `quasi_static` of the frames table (corner test of the frame alone).
    pub corner_test: RetrievalScores,
    /// Frames in a run long enough for the quasi-static rule (a segment).
    pub in_run: RetrievalScores,
}

#[derive(Clone, Debug, Serialize)]
pub struct SequenceMetrics {
    pub sequence_id: String,
    pub metrics: MetricsReport,
}

/// The JSON written by `mrdino eval`.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// The run evaluated (labels or predictions).
    pub labels: PathBuf,
    /// `labels` or `predictions`.
    pub kind: String,
    /// Predictions only: `stage2` or `baseline`, and how they were scored.
    pub model_kind: Option<String>,
    pub scoring: PredictionScoring,
    pub params_hash: String,
    pub gt: PathBuf,
    pub gt_format: GtFormat,
    pub resolution: EvalPreset,
    pub labelled_frames: usize,
    pub evaluated_frames: usize,
    /// Labelled frames skipped for lack of a ground-truth file (`--skip-missing-gt`).
    pub missing_gt_frames: usize,
    pub metrics: MetricsReport,
    pub per_sequence: Vec<SequenceMetrics>,
    /// Only with `--gt-format synth`.
    pub quasi_static: Option<QuasiStaticScores>,
}

/// Evaluates and returns the result (nothing printed or written).
pub fn evaluate(args: &EvalArgs) -> Result<EvalResult> {
    let run = args.run_dir()?;
    let tables = read_label_tables(run, args.params.as_deref())?;
    let model_kind = match (
        args.predictions.is_some(),
        tables.kind == RunKind::Predictions,
    ) {
        (true, true) => Some(
            tables.params["model_kind"]
                .as_str()
                .with_context(|| format!("{}: the run's parameters name no model_kind", run.display()))?
                .to_string(),
        ),
        (false, false) => None,
        (true, false) => bail!("{} holds pseudo-labels, not predictions: use --labels", run.display()),
        (false, true) => bail!(
            "{} holds predictions of `mrdino infer`: use --predictions",
            run.display()
        ),
    };
    let scoring = PredictionScoring::new(model_kind.as_deref(), args.gt_format);
    let resolution = args
        .resolution
        .unwrap_or_else(|| PredictionScoring::default_resolution(model_kind.as_deref(), args.gt_format));
    if model_kind.is_some() {
        check_prediction_columns(&tables)?;
    }
    for file in &tables.incomplete_units {
        eprintln!(
            "warning: {} is not done (unfinished unit or changed inputs); left out",
            file.display()
        );
    }
    let mut gt = GroundTruth::new(&args.gt, args.gt_format)?;
    let mut by_frame: BTreeMap<(&str, u32), Vec<&InstanceRow>> = BTreeMap::new();
    for inst in &tables.instances {
        by_frame
            .entry((inst.sequence_id.as_str(), inst.frame_index))
            .or_default()
            .push(inst);
    }
    let mut overall = Evaluator::new(resolution).with_rule(scoring.rule);
    let mut per_sequence: BTreeMap<&str, Evaluator> = BTreeMap::new();
    let (mut labelled, mut missing) = (0, 0);
    for frame in tables.frames.iter().filter(|f| f.labelled) {
        labelled += 1;
        let loaded = if model_kind.is_some() {
            gt.load_decoded(frame)?.map(|(map, _)| map)
        } else {
            gt.load(frame)?
        };
        let Some(truth) = loaded else {
            if args.skip_missing_gt {
                missing += 1;
                continue;
            }
            bail!(
                "no ground truth for labelled frame {} of {}: {} does not exist (--skip-missing-gt evaluates only \
                 the frames that have it)",
                frame.frame_name,
                frame.sequence_id,
                gt.file(frame).display()
            );
        };
        let instances = by_frame
            .get(&(frame.sequence_id.as_str(), frame.frame_index))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let prediction = prediction_map(frame, instances)?;
        let prediction = if scoring.to_original {
            let back = canvas_to_original(&prediction, frame)?;
            if (back.height, back.width) != (truth.height, truth.width) {
                bail!(
                    "{}: ground truth is {}x{} (HxW) but frame {} of {} was {}x{}",
                    gt.file(frame).display(),
                    truth.height,
                    truth.width,
                    frame.frame_name,
                    frame.sequence_id,
                    back.height,
                    back.width
                );
            }
            back
        } else {
            prediction
        };
        let context = || format!("frame {} of {}", frame.frame_name, frame.sequence_id);
        overall.add_image(&prediction, &truth).with_context(context)?;
        per_sequence
            .entry(frame.sequence_id.as_str())
            .or_insert_with(|| Evaluator::new(resolution).with_rule(scoring.rule))
            .add_image(&prediction, &truth)
            .with_context(context)?;
    }
    let quasi_static = if args.gt_format == GtFormat::Synth && tables.kind == RunKind::Labels {
        Some(retrieval(&tables.frames, &mut gt)?)
    } else {
        None
    };
    Ok(EvalResult {
        labels: run.to_path_buf(),
        kind: tables.kind.name().to_string(),
        model_kind,
        scoring,
        params_hash: tables.layout.params_hash.clone(),
        gt: args.gt.clone(),
        gt_format: args.gt_format,
        resolution,
        labelled_frames: labelled,
        evaluated_frames: overall.report().images,
        missing_gt_frames: missing,
        metrics: overall.report(),
        per_sequence: per_sequence
            .into_iter()
            .map(|(id, e)| SequenceMetrics {
                sequence_id: id.to_string(),
                metrics: e.report(),
            })
            .collect(),
        quasi_static,
    })
}

impl EvalArgs {
    /// The run given by `--labels` or `--predictions`.
    pub fn run_dir(&self) -> Result<&Path> {
        match (&self.labels, &self.predictions) {
            (Some(dir), None) | (None, Some(dir)) => Ok(dir),
            _ => bail!("give --labels OUT or --predictions PRED"),
        }
    }
}

/// Checks that every instance file of a prediction run has the prediction columns (the painted ids assume
/// `instance_id` = canvas channel + 1 and no background rows).
fn check_prediction_columns(tables: &LabelTables) -> Result<()> {
    let units: std::collections::BTreeSet<&str> = tables.frames.iter().map(|f| f.sequence_id.as_str()).collect();
    for unit in units {
        let path = tables.layout.instances_file(unit);
        if read_prediction_columns(&path)?.iter().any(Option::is_none) {
            bail!(
                "{}: instance rows without prediction columns (window, window_channel, slot); not written by                  `mrdino infer`?",
                path.display()
            );
        }
    }
    Ok(())
}

fn retrieval(frames: &[FrameRow], gt: &mut GroundTruth) -> Result<QuasiStaticScores> {
    let (mut corner, mut in_run, mut truth) = (Vec::new(), Vec::new(), Vec::new());
    for frame in frames {
        if let Some(is_static) = gt.camera_static(frame)? {
            corner.push(frame.quasi_static);
            in_run.push(frame.segment.is_some());
            truth.push(is_static);
        }
    }
    Ok(QuasiStaticScores {
        corner_test: quasi_static_retrieval(&corner, &truth)?,
        in_run: quasi_static_retrieval(&in_run, &truth)?,
    })
}

fn option3(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.3}"))
}

/// The terminal table.
pub fn format_table(result: &EvalResult) -> String {
    let mut out = format!(
        "{} (params {}) vs {} ground truth {}; resolution {}\n",
        result.labels.display(),
        result.params_hash,
        serde_json::to_value(result.gt_format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        result.gt.display(),
        serde_json::to_value(result.resolution)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    );
    if let Some(kind) = &result.model_kind {
        out.push_str(&format!(
            "predictions of a {kind} model; {}{}\n",
            match result.scoring.rule {
                PredictionRule::DiscardFirst =>
                    "per-window background channels are background and the first remaining id is discarded",
                PredictionRule::KeepAll => "every non-empty channel is a prediction",
            },
            if result.scoring.to_original {
                "; canvas mapped back to the original frame"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!(
        "{} labelled frames, {} evaluated, {} without ground truth\n\n",
        result.labelled_frames, result.evaluated_frames, result.missing_gt_frames
    ));
    let header = format!(
        "{:<24} {:>6} {:>14} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
        "sequence", "images", "TP/pred/GT", "AP50", "AR50", "F1@50", "fg-ARI", "all-ARI"
    );
    out.push_str(&header);
    let line = |name: &str, m: &MetricsReport| {
        format!(
            "{:<24} {:>6} {:>14} {:>7.3} {:>7.3} {:>7.3} {:>7} {:>7}\n",
            name,
            m.images,
            format!("{}/{}/{}", m.true_positives, m.predictions, m.ground_truth_objects),
            m.ap50,
            m.ar50,
            m.f1_50,
            option3(m.fg_ari),
            option3(m.all_ari)
        )
    };
    for s in &result.per_sequence {
        out.push_str(&line(&s.sequence_id, &s.metrics));
    }
    out.push_str(&line("all", &result.metrics));
    out.push_str(&format!(
        "(ARI over the {} images with at least 2 ground-truth objects)\n",
        result.metrics.ari_images
    ));
    if let Some(q) = &result.quasi_static {
        out.push_str(&format!(
            "\nquasi-static retrieval ({} frames; positive = quasi-static, truth = static camera to the next frame)\n",
            q.corner_test.frames
        ));
        out.push_str(&format!(
            "{:<24} {:>5} {:>5} {:>5} {:>5} {:>9} {:>9} {:>7}\n",
            "selection", "TP", "FP", "FN", "TN", "accuracy", "precision", "recall"
        ));
        for (name, s) in [
            ("corner test (per frame)", &q.corner_test),
            ("in a run (segment)", &q.in_run),
        ] {
            out.push_str(&format!(
                "{:<24} {:>5} {:>5} {:>5} {:>5} {:>9.3} {:>9.3} {:>7.3}\n",
                name,
                s.true_positives,
                s.false_positives,
                s.false_negatives,
                s.true_negatives,
                s.accuracy,
                s.precision,
                s.recall
            ));
        }
    }
    out
}

pub fn run(args: &EvalArgs) -> Result<()> {
    let result = evaluate(args)?;
    if result.evaluated_frames == 0 {
        eprintln!("warning: no labelled frame was evaluated; every metric is 0");
    }
    print!("{}", format_table(&result));
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| result.labels.join(format!("_eval-{}.json", result.params_hash)));
    write_atomic(&json, &serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!("JSON: {}", json.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrdino_model::predict::channel_objects;
    use crate::settings::infer::MODEL_BASELINE;
    use mrdino_model::windows::MergedCanvas;
    use mrdino_outputs::tables::InstanceOrigin;
    use mrdino_outputs::CocoRle;
    use mrdino_stages::metrics::prediction_ids;

    fn frame(height: u32, width: u32) -> FrameRow {
        FrameRow {
            dataset: "frames".into(),
            sequence_id: "s".into(),
            frame_index: 0,
            frame_name: "000000".into(),
            source_path: "s/000000.png".into(),
            height,
            width,
            orig_height: height,
            orig_width: width,
            resized_height: height,
            resized_width: width,
            crop_top: 0,
            crop_left: 0,
            quasi_static: false,
            corner_flow_px: None,
            fg_fraction: None,
            labelled: true,
            excluded_reason: None,
            segment: None,
            num_instances: 0,
        }
    }

    /// What `mrdino infer` stores for a merged canvas, painted back the way `eval --predictions` paints it.
    fn stored_and_painted(merged: &MergedCanvas, stage2: bool) -> LabelMap {
        let row = frame(merged.height as u32, merged.width as u32);
        let rows: Vec<InstanceRow> = channel_objects(merged, stage2, merged.channels_per_window, None)
            .into_iter()
            .map(|o| InstanceRow {
                dataset: row.dataset.clone(),
                sequence_id: row.sequence_id.clone(),
                frame_index: 0,
                frame_name: row.frame_name.clone(),
                instance_id: o.channel + 1,
                mask: CocoRle::from_pixels(&o.pixels, row.height, row.width),
                bbox_xywh: [0.0; 4],
                area_px: o.pixels.len() as u32,
                origin: InstanceOrigin::Model,
                component_id: o.channel,
                hdbscan_label: None,
                mean_flow_px: f32::NAN,
            })
            .collect();
        prediction_map(&row, &rows.iter().collect::<Vec<_>>()).unwrap()
    }

    /// 4×8 canvas of two 4×4 windows; `owner(y, x)` is the merged channel of each pixel.
    fn canvas(channels_per_window: usize, owner: impl Fn(usize, usize) -> u32) -> MergedCanvas {
        MergedCanvas {
            height: 4,
            width: 8,
            windows: 2,
            channels_per_window,
            channel_of_pixel: (0..4)
                .flat_map(|y| (0..8).map(move |x| (y, x)))
                .map(|(y, x)| owner(y, x))
                .collect(),
            merges: Vec::new(),
        }
    }

    fn ground_truth() -> LabelMap {
        // Objects 1 (columns 0-1), 2 (rows 2-3 of columns 2-3) and 3 (columns 6-7); background elsewhere.
        let labels = (0..4)
            .flat_map(|y| (0..8).map(move |x| (y, x)))
            .map(|(y, x)| match (y, x) {
                (_, 0..=1) => 1,
                (2..=3, 2..=3) => 2,
                (_, 6..=7) => 3,
                _ => 0,
            })
            .collect();
        LabelMap::new(4, 8, labels).unwrap()
    }

    fn report(prediction: &LabelMap, rule: PredictionRule) -> MetricsReport {
        let mut e = Evaluator::new(EvalPreset::Native).with_rule(rule);
        e.add_image(prediction, &ground_truth()).unwrap();
        e.report()
    }

    #[test]
    fn stage2_predictions_score_as_the_reference_with_combination_num() {
        let scoring = PredictionScoring::new(Some(MODEL_STAGE2), GtFormat::Synth);
        assert_eq!(scoring.rule, PredictionRule::DiscardFirst);
        // K = 2, channels per window 3 (background, slot 0, slot 1): background channels 0 and 3.
        let merged = canvas(3, |y, x| match (y, x) {
            (_, 0..=1) => 1,
            (0..=1, 2..=3) => 0,
            (_, 2..=3) => 2,
            (_, 4..=5) => 3,
            _ => 5,
        });
        let reference = LabelMap::new(4, 8, prediction_ids(&merged.channel_of_pixel, 6, Some(2)).unwrap()).unwrap();
        let ours = stored_and_painted(&merged, true);
        let want = report(&reference, PredictionRule::DiscardFirst);
        assert_eq!(report(&ours, scoring.rule), want);
        // Both background channels are background; the three object channels are the predictions, all hits.
        assert_eq!(
            (want.predictions, want.true_positives, want.ground_truth_objects),
            (3, 3, 3)
        );
        assert_eq!(want.f1_50, 1.0);

        // No background pixel: the reference discards its first real prediction, and so does the stored form.
        let merged = canvas(3, |_, x| if x < 4 { 1 } else { 5 });
        let reference = LabelMap::new(4, 8, prediction_ids(&merged.channel_of_pixel, 6, Some(2)).unwrap()).unwrap();
        let want = report(&reference, PredictionRule::DiscardFirst);
        assert_eq!(report(&stored_and_painted(&merged, true), scoring.rule), want);
        assert_eq!(want.predictions, 1);
    }

    #[test]
    fn baseline_predictions_keep_every_channel_including_each_windows_first_slot() {
        let scoring = PredictionScoring::new(Some(MODEL_BASELINE), GtFormat::Synth);
        assert_eq!(scoring.rule, PredictionRule::KeepAll);
        assert!(scoring.to_original);
        // K = 2 channels per window, no background channel: channel 0 (window 0, slot 0) is an object too.
        let merged = canvas(2, |y, x| match (y, x) {
            (_, 0..=1) => 0,
            (_, 2..=3) => 1,
            (_, 4..=5) => 2,
            _ => 3,
        });
        let reference = LabelMap::new(4, 8, prediction_ids(&merged.channel_of_pixel, 4, None).unwrap()).unwrap();
        let ours = stored_and_painted(&merged, false);
        let want = report(&reference, PredictionRule::KeepAll);
        assert_eq!(report(&ours, scoring.rule), want);
        assert_eq!((want.predictions, want.true_positives), (4, 2));
        // Scored as a stage-2 model would be, the first channel would be lost: the rules differ here.
        assert_ne!(
            report(&ours, PredictionRule::DiscardFirst).predictions,
            want.predictions
        );
    }

    #[test]
    fn movi_and_label_runs_use_their_own_rules_and_resolutions() {
        assert_eq!(
            PredictionScoring::new(Some(MODEL_STAGE2), GtFormat::Kubric).rule,
            PredictionRule::KeepAll
        );
        let labels = PredictionScoring::new(None, GtFormat::Synth);
        assert_eq!((labels.rule, labels.to_original), (PredictionRule::DiscardFirst, false));
        assert!(!PredictionScoring::new(Some(MODEL_STAGE2), GtFormat::Kitti).to_original);
        assert_eq!(
            PredictionScoring::default_resolution(Some(MODEL_STAGE2), GtFormat::Kitti),
            EvalPreset::Kitti
        );
        assert_eq!(
            PredictionScoring::default_resolution(Some(MODEL_BASELINE), GtFormat::TriPd),
            EvalPreset::TriPd
        );
        assert_eq!(
            PredictionScoring::default_resolution(None, GtFormat::Kitti),
            EvalPreset::Native
        );
    }

    #[test]
    fn the_canvas_maps_back_to_the_original_frame_through_the_provenance() {
        // Original 2×4 resized to 4×10 and cropped at column 1 to the 4×8 canvas.
        let mut row = frame(4, 8);
        (row.orig_height, row.orig_width) = (2, 4);
        (row.resized_height, row.resized_width, row.crop_left) = (4, 10, 1);
        let canvas = LabelMap::new(4, 8, (0..32).collect()).unwrap();
        let back = canvas_to_original(&canvas, &row).unwrap();
        // Rows ⌊(y + ½)·2⌋ = 1, 3; columns ⌊(x + ½)·2.5⌋ − 1 = 0, 2, 5, 7.
        assert_eq!((back.height, back.width), (2, 4));
        assert_eq!(back.labels, vec![8, 10, 13, 15, 24, 26, 29, 31]);
        // A crop the canvas does not cover is background.
        row.crop_left = 3;
        let back = canvas_to_original(&canvas, &row).unwrap();
        assert_eq!(back.labels[..4], [0, 8, 11, 13]);
        row.orig_height = 0;
        assert!(canvas_to_original(&canvas, &row).is_err());
    }
}
