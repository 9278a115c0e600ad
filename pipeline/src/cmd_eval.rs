//! `mrdino eval`: pseudo-labels against ground-truth masks of moving objects, with the paper's metrics.
//!
//! The numbers are those of `mrdino_stages::metrics` (F1@50, "AP50", "AR50", fg-ARI, all-ARI exactly as the
//! reference evaluation computes them); this module only finds, for every labelled frame of a labels run, its
//! prediction (the frame's instance masks painted into one id map at the label grid) and its ground truth, and
//! reports the totals per sequence and over the run.
//!
//! Ground truth formats (`--gt-format`):
//! * `synth` — a `mrdino synth` directory: `instances/<seq>/<frame>.png` restricted to the objects that
//!   `meta/<seq>.json` marks as moving from that frame to the next. Pseudo-labels claim only moving objects,
//!   so a parked object counts as background, not as a missed instance. The metadata's static-camera flags
//!   also score the quasi-static selection (per-frame corner test and membership of a long-enough run).
//! * `kitti` — KITTI instance-benchmark PNGs (`class·256 + instance`, decoded by
//!   [`decode_kitti_instances`]) at `DIR/<sequence_id>/<frame_name>.png`.
//! * `ids` — any single-channel 8- or 16-bit id PNG (0 = background) at `DIR/<sequence_id>/<frame_name>.png`.
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
use mrdino_outputs::bookkeeping::{choose_partition, WhenSeveral};
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS};
use mrdino_outputs::tables::{read_frames, read_instances};
use mrdino_outputs::{write_atomic, FrameRow, InstanceRow};
use mrdino_stages::metrics::{
    decode_kitti_instances, quasi_static_retrieval, EvalPreset, Evaluator, LabelMap, MetricsReport, RetrievalScores,
};
use opencv::core::CV_16U;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use crate::job::LabelCounts;

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
    /// Kubric (MOVi) scenes: `segmentation_XXXXX.png` beside each `rgba_XXXXX.png` frame (all objects,
    /// moving or not; DIR = the dataset root given to `labels`).
    Kubric,
}

/// Flags of `mrdino eval`.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Output directory of `mrdino labels`.
    #[arg(long, value_name = "OUT")]
    pub labels: PathBuf,
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
    #[arg(long, default_value = "native", value_parser = parse_preset)]
    pub resolution: EvalPreset,
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

/// The rows of one parameter partition of a labels run: done units only.
pub struct LabelTables {
    pub layout: Layout,
    pub frames: Vec<FrameRow>,
    pub instances: Vec<InstanceRow>,
    /// Tables of units that are not done (an interrupted or running job, or changed inputs), left out.
    pub incomplete_units: Vec<PathBuf>,
}

/// Reads every done unit of `labels` (the bookkeeping's one rule for "done") in plan order. The partition is
/// the one given, the only one, or else the one whose labels run started last, so that `make demo` keeps
/// working after a parameter change.
pub fn read_label_tables(labels: &Path, params: Option<&str>) -> Result<LabelTables> {
    let choice = choose_partition(labels, LABELS_DATA_DIRS, params, WhenSeveral::Latest)?;
    if params.is_none() && !choice.others.is_empty() {
        eprintln!(
            "note: {} holds labels of several parameter sets (params={}, params={}); using the latest run, \
             params={} (choose with --params)",
            labels.display(),
            choice.params_hash,
            choice.others.join(", params="),
            choice.params_hash
        );
    }
    let layout = Layout::new(labels, &choice.params_hash);
    let ledger = layout.ledger();
    let plan = ledger.read_plan()?;
    let (mut frames, mut instances) = (Vec::new(), Vec::new());
    let mut done_files = std::collections::BTreeSet::new();
    for unit in &plan.units {
        if ledger.is_done::<LabelCounts>(unit).is_none() {
            continue;
        }
        let [frames_file, instances_file] = layout.unit_outputs(&unit.id);
        frames.extend(read_frames(&frames_file)?);
        instances.extend(read_instances(&instances_file)?);
        done_files.insert(frames_file);
    }
    let dir = layout.frames_dir();
    let mut incomplete_units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| {
            format!(
                "cannot list {} (no labels for params={}?)",
                dir.display(),
                choice.params_hash
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .filter(|p| !done_files.contains(p))
        .collect();
    incomplete_units.sort();
    Ok(LabelTables {
        layout,
        frames,
        instances,
        incomplete_units,
    })
}

/// The prediction of one frame: its instance masks painted into an id map at the label grid.
pub(crate) fn prediction_map(frame: &FrameRow, instances: &[&InstanceRow]) -> Result<LabelMap> {
    let (height, width) = (frame.height as usize, frame.width as usize);
    let mut labels = vec![0u32; height * width];
    for inst in instances {
        if (inst.mask.height, inst.mask.width) != (frame.height, frame.width) {
            bail!(
                "{} frame {}: instance {} has a {}x{} mask on a {}x{} label grid",
                frame.sequence_id,
                frame.frame_name,
                inst.instance_id,
                inst.mask.height,
                inst.mask.width,
                frame.height,
                frame.width
            );
        }
        let pixels = inst.mask.to_pixels().with_context(|| {
            format!(
                "{} frame {}: instance {}",
                frame.sequence_id, frame.frame_name, inst.instance_id
            )
        })?;
        for p in pixels {
            labels[p as usize] = inst.instance_id;
        }
    }
    Ok(LabelMap::new(height, width, labels)?)
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
            GtFormat::Kitti | GtFormat::Ids | GtFormat::Kubric => self.dir.clone(),
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

    /// The ground-truth id map of a frame as loaded (before any resize), or `None` when its file is missing.
    pub(crate) fn load(&mut self, frame: &FrameRow) -> Result<Option<LabelMap>> {
        let path = self.file(frame);
        if !path.is_file() {
            return Ok(None);
        }
        let (height, width, values) = read_id_png(&path)?;
        let labels: Vec<u32> = match self.format {
            GtFormat::Kitti => decode_kitti_instances(&values),
            GtFormat::Ids | GtFormat::Kubric => values.into_iter().map(u32::from).collect(),
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
        Ok(Some(to_label_frame(map, frame, &path)?))
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
    pub labels: PathBuf,
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
    let tables = read_label_tables(&args.labels, args.params.as_deref())?;
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
    let mut overall = Evaluator::new(args.resolution);
    let mut per_sequence: BTreeMap<&str, Evaluator> = BTreeMap::new();
    let (mut labelled, mut missing) = (0, 0);
    for frame in tables.frames.iter().filter(|f| f.labelled) {
        labelled += 1;
        let Some(truth) = gt.load(frame)? else {
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
        let context = || format!("frame {} of {}", frame.frame_name, frame.sequence_id);
        overall.add_image(&prediction, &truth).with_context(context)?;
        per_sequence
            .entry(frame.sequence_id.as_str())
            .or_insert_with(|| Evaluator::new(args.resolution))
            .add_image(&prediction, &truth)
            .with_context(context)?;
    }
    let quasi_static = if args.gt_format == GtFormat::Synth {
        Some(retrieval(&tables.frames, &mut gt)?)
    } else {
        None
    };
    Ok(EvalResult {
        labels: args.labels.clone(),
        params_hash: tables.layout.params_hash.clone(),
        gt: args.gt.clone(),
        gt_format: args.gt_format,
        resolution: args.resolution,
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
        .unwrap_or_else(|| args.labels.join(format!("_eval-{}.json", result.params_hash)));
    write_atomic(&json, &serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!("JSON: {}", json.display());
    Ok(())
}
