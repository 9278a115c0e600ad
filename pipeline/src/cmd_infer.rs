//! `mrdino infer`: a DINOSAUR or MR-DINOSAUR model's object masks for every frame of a dataset, as resumable,
//! shardable units written in the layout of `mrdino labels` (spec §3.6, §5).
//!
//! Per frame, as the reference's evaluation pipeline:
//! 1. the frame (TRI-PD: resized to 968×608 with Pillow's bilinear filter and its top 128 rows cropped, as the
//!    benchmark's conversion `convert_pd.py` does; every other layout: as decoded) is resized to the preset
//!    canvas — KITTI 378×1260, TRI-PD 490×980, MOVi-E shorter side 266 then the centre 266×266 — bicubic
//!    without antialias, clamped to [0, 1] ([`WindowGrid::resize_image`]);
//! 2. zero-padded (KITTI 126 px left and right) and cut into the preset's windows (KITTI 4, TRI-PD 2, MOVi-E 1);
//! 3. every window goes through the backbone (its own normalisation, after the zero padding) and the slot
//!    model with reproducible slot noise (below); a stage-2 model binarises its deactivation weights (w > 0.5)
//!    and gives K + 1 channels, channel 0 the window's background; the baseline gives its K alphas, and the
//!    merge takes its first slot per window for background, feature index shifted by one as the reference's
//!    baseline evaluation does; the channels are upsampled bilinearly to the window
//!    ([`RefinedModel::window_masks`]);
//! 4. the windows' channels are joined on the canvas and merged (`MergeWindows`, similarity 0.2;
//!    `--merge-chains` is the opt-in fix for objects spanning three windows), argmax per pixel.
//!
//! **Rows.** `frames`: one row per frame (`labelled` = predicted, `fg_fraction` = the share of canvas pixels in
//! an object, `quasi_static` false and no corner flow as there is no flow; `height`×`width` = the canvas, and the
//! provenance columns say how the canvas maps back to the original frame: the original was resized to
//! `resized_height`×`resized_width` and cropped at (`crop_top`, `crop_left`); for TRI-PD, whose canvas is a
//! resize of an already cropped frame, the composite is rounded to whole pixels). `instances`: one row per
//! predicted object after the merge, in canvas-channel order, `instance_id` = merged canvas channel + 1, the
//! mask as COCO RLE on the canvas, `origin` = `model`; a stage-2 model's per-window background channels are not
//! objects and have no row, so a canvas pixel covered by no row is background. Beside the columns of the
//! labels tables, `instances` carries `window`, `window_channel`, `slot`, `deactivation_weight` (stage 2) and
//! `combination_num` (stage 2: the number of windows, the reference's per-window background rule);
//! `mean_flow_px` is NaN (no flow), `component_id` the canvas channel.
//!
//! **Slot noise.** The noise of the windows of frame `i` of a sequence (its index in the sequence's frame
//! order) is `torch.manual_seed(seed + i); torch.randn(n_windows, K, D)` ([`slot_noise`]), so a frame's
//! prediction depends on its pixels, the model, the seed and its index — not on shards, resumes or how frames
//! are batched (on CPU the e2e test finds identical rows for different `--batch`) — and PyTorch reproduces the
//! noise.
//!
//! Units, markers, `--shard`, status/finalize and the exit code 4 on SIGINT/SIGTERM/`--time-budget` are those
//! of `labels` and `features` (`mrdino_outputs::bookkeeping`); a stop is checked between batches and the
//! unfinished unit is redone.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mrdino_datasets::{DatasetKind, Frame, Geometry, Processing, RgbImage, Sequence, SourceOptions};
use mrdino_model::backbone::{Backbone, BackboneRequest, LoadedBackbone};
use mrdino_model::device::parse_device;
use mrdino_model::dinosaur::slot_noise;
use mrdino_model::refined::RefinedModel;
use mrdino_model::views::pil_resize_bilinear_u8;
use mrdino_model::windows::{join_windows, merge_windows, MergeOptions, MergedCanvas, WindowGrid, WindowOffset};
use mrdino_outputs::bookkeeping::{
    choose_partition, in_shard, unix_now, FrameFailure, Ledger, PlannedUnit, Shard, Status, WhenSeveral,
};
use mrdino_outputs::checkpoint::{
    model_identity, read_tensor_file_hashed, resolve_model_path, TensorFile, META_BACKBONE_SHA256,
};
use mrdino_outputs::weights_id::{self, Identity};
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS};
use mrdino_outputs::tables::{
    frames_batch, prediction_instances_batch, write_parquet, InstanceOrigin, PredictionColumns, SCHEMA_VERSION,
};
use mrdino_outputs::{CocoRle, FrameRow, InstanceRow};
use mrdino_stages::metrics::{TRI_PD_GT_RESIZE, TRI_PD_GT_TOP_CROP_PX};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::job::{build_plan, UnitTally, CODE_VERSION};
use crate::run::STOP;
use crate::unit_job::{Stopped, UnitDone, UnitDriver};

/// Job kind of a prediction run in the bookkeeping.
pub const PREDICTIONS_KIND: &str = "predictions";

/// The window layout of the reference's evaluation configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum InferPreset {
    /// 378×1260 canvas, zero-padded to 378×1512, 4 windows of 378×378.
    Kitti,
    /// 490×980 canvas, 2 windows of 490×490.
    TriPd,
    /// Shorter side 266, centre crop 266×266, one window.
    MoviE,
}

impl InferPreset {
    pub fn grid(self) -> WindowGrid {
        match self {
            InferPreset::Kitti => WindowGrid::kitti(),
            InferPreset::TriPd => WindowGrid::tri_pd(),
            InferPreset::MoviE => WindowGrid::movi_e(),
        }
    }

    fn for_dataset(kind: DatasetKind) -> Self {
        match kind {
            DatasetKind::TriPd => InferPreset::TriPd,
            DatasetKind::MoviE => InferPreset::MoviE,
            DatasetKind::Kitti | DatasetKind::Frames | DatasetKind::Video => InferPreset::Kitti,
        }
    }
}

/// Flags of `mrdino infer`.
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// Model file (safetensors; DINOSAUR keys ± the stage-2 `object_decoder.slot_decoder.*`) or a run directory.
    #[arg(long, value_name = "RUN|FILE")]
    pub model: PathBuf,
    /// Dataset layout: frames, video, kitti, tri-pd, movi-e.
    #[arg(long, value_parser = crate::parse_dataset)]
    pub dataset: DatasetKind,
    /// Dataset root.
    #[arg(long)]
    pub root: PathBuf,
    /// Output directory (the layout of `mrdino labels`).
    #[arg(long, value_name = "PRED")]
    pub out: PathBuf,
    /// Window layout (default: tri-pd for tri-pd, movi-e for movi-e, otherwise kitti).
    #[arg(long, value_enum)]
    pub preset: Option<InferPreset>,
    /// Cameras to read (KITTI: image_02,image_03; TRI-PD: camera_01,camera_05,camera_06).
    #[arg(long, value_delimiter = ',')]
    pub cameras: Option<Vec<String>>,
    /// Seed of the slot noise (frame i of a sequence uses seed + i).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub seed: i64,
    /// Backbone the model was trained on (dinov2-vitb14, …, or a seeded random-conv-… / random-colour-…);
    /// default: the one the model file embeds (converted reference checkpoints), else dinov2-vitb14.
    #[arg(long)]
    pub backbone: Option<String>,
    /// The backbone's weights (safetensors from tools/convert_vit.py); not needed when the model file embeds
    /// its backbone (then, when given, they must be the same weights).
    #[arg(long)]
    pub backbone_weights: Option<PathBuf>,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Frames per forward (each contributes all its windows).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Process only shard I of N (stable hash of the sequence id); defaults to Slurm's array variables.
    #[arg(long, value_parser = crate::parse_shard)]
    pub shard: Option<Shard>,
    /// Stop cleanly (exit code 4) before this many seconds have passed; rerun to resume.
    #[arg(long, value_parser = crate::parse_time_budget, allow_hyphen_values = true)]
    pub time_budget: Option<Duration>,
    /// Let a channel merged away still pass its object on across the next window boundary (an object
    /// spanning three windows becomes one channel; the reference keeps two).
    #[arg(long)]
    pub merge_chains: bool,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    pub torch_threads: Option<i32>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The resolved parameters of a prediction run; their hash names the partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferParams {
    pub dataset: DatasetKind,
    pub cameras: Vec<String>,
    pub preset: InferPreset,
    /// How frames are read (TRI-PD then goes through its benchmark conversion) before the canvas resize.
    pub processing: Processing,
    pub model_sha256: String,
    /// `stage2` (deactivation head, K + 1 channels per window) or `baseline` (K channels).
    pub model_kind: String,
    pub n_slots: i64,
    pub channels_per_window: i64,
    pub windows: usize,
    /// (height, width) of the canvas.
    pub canvas: (i64, i64),
    pub backbone: String,
    pub backbone_sha256: String,
    pub seed: i64,
    pub merge_similarity: f64,
    pub merge_chains: bool,
}

impl InferParams {
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        Sha256::digest(json.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// `model_kind` of a model with the deactivation head.
pub const MODEL_STAGE2: &str = "stage2";
/// `model_kind` of a DINOSAUR model without it.
pub const MODEL_BASELINE: &str = "baseline";

/// What a unit's marker records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PredictionCounts {
    pub frames_decoded: usize,
    pub frame_rows: usize,
    pub instances: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PredictionTotals {
    #[serde(flatten)]
    pub units: UnitTally,
    pub frames: usize,
    pub instances: usize,
    pub frame_failures: usize,
    pub seconds: f64,
}

/// Everything the frames of a run share.
struct Inference<'a> {
    params: &'a InferParams,
    model: &'a RefinedModel,
    backbone: &'a dyn Backbone,
    grid: WindowGrid,
    offsets: Vec<WindowOffset>,
    merge: MergeOptions,
    device: Device,
}

/// A decoded frame on the canvas, waiting for its batch.
struct Pending {
    index: usize,
    name: String,
    source_path: String,
    geometry: Geometry,
    canvas: Tensor,
}

/// The rows of one unit.
#[derive(Default)]
struct UnitOutput {
    frames: Vec<FrameRow>,
    instances: Vec<InstanceRow>,
    extra: Vec<PredictionColumns>,
    failures: Vec<FrameFailure>,
    decoded: usize,
}

/// The provenance of the canvas: the original frame resized to `resized` and cropped at `crop` (see module
/// docs; composite of the reader's processing and the preset's resize, rounded for a cropped reader grid).
fn canvas_geometry(read: &Geometry, grid: &WindowGrid) -> Geometry {
    let (h, w) = (read.height as f64, read.width as f64);
    let (target_h, target_w) = grid.resize_target(read.height as i64, read.width as i64);
    let (sy, sx) = (target_h as f64 / h, target_w as f64 / w);
    let crop_top = ((target_h - grid.image_height_px) as f64 / 2.0).round_ties_even() as usize;
    let crop_left = ((target_w - grid.image_width_px) as f64 / 2.0).round_ties_even() as usize;
    Geometry {
        orig_height: read.orig_height,
        orig_width: read.orig_width,
        resized_height: (read.resized_height as f64 * sy).round() as usize,
        resized_width: (read.resized_width as f64 * sx).round() as usize,
        crop_top: (read.crop_top as f64 * sy).round() as usize + crop_top,
        crop_left: (read.crop_left as f64 * sx).round() as usize + crop_left,
        height: grid.image_height_px as usize,
        width: grid.image_width_px as usize,
    }
}

/// Frame (H, W, 3) uint8 → (3, H, W) float in [0, 1].
fn to_float(image: &RgbImage) -> Tensor {
    Tensor::from_slice(&image.data)
        .view([image.height as i64, image.width as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0
}

/// A decoded frame as the model saw it: the prediction canvas (the preset's resize of the frame, after the TRI-PD
/// benchmark conversion), as interleaved RGB — what prediction masks are drawn on.
pub(crate) fn canvas_image(params: &InferParams, frame: &Frame) -> Result<RgbImage> {
    let image = match params.dataset {
        DatasetKind::TriPd => tri_pd_benchmark_view(frame)?.0,
        _ => frame.image.clone(),
    };
    let canvas = params.preset.grid().resize_image(&to_float(&image))?;
    let (h, w) = (canvas.size()[1], canvas.size()[2]);
    let bytes = Vec::<u8>::try_from(
        (canvas * 255.0)
            .round()
            .clamp(0.0, 255.0)
            .to_kind(Kind::Uint8)
            .permute([1, 2, 0])
            .contiguous()
            .flatten(0, -1),
    )?;
    Ok(RgbImage::new(h as usize, w as usize, bytes))
}

/// The TRI-PD benchmark's conversion of a decoded frame: Pillow bilinear to 968×608, top 128 rows cropped
/// (968×480), with the geometry of that step.
fn tri_pd_benchmark_view(frame: &Frame) -> Result<(RgbImage, Geometry)> {
    let (height, width) = TRI_PD_GT_RESIZE;
    let image = &frame.image;
    let resized = pil_resize_bilinear_u8(&image.data, image.height, image.width, 3, height, width)?;
    let top = TRI_PD_GT_TOP_CROP_PX;
    let cropped = resized[top * width * 3..].to_vec();
    let geometry = Geometry {
        orig_height: frame.geometry.orig_height,
        orig_width: frame.geometry.orig_width,
        resized_height: height,
        resized_width: width,
        crop_top: top,
        crop_left: 0,
        height: height - top,
        width,
    };
    Ok((RgbImage::new(height - top, width, cropped), geometry))
}

impl Inference<'_> {
    /// Predicts the pending frames of `sequence` and appends their rows.
    fn flush(&self, sequence: &Sequence, pending: &mut Vec<Pending>, out: &mut UnitOutput) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        if STOP.load(Ordering::SeqCst) {
            bail!(Stopped);
        }
        let n = self.offsets.len() as i64;
        let (wh, ww) = (self.grid.window_height_px, self.grid.window_width_px);
        let canvases = Tensor::stack(&pending.iter().map(|p| p.canvas.shallow_clone()).collect::<Vec<_>>(), 0);
        let b = canvases.size()[0];
        // (n, B, 3, h, w) → (B·n, 3, h, w): the windows of one frame are consecutive, in window order.
        let windows = self
            .grid
            .extract(&canvases)?
            .transpose(0, 1)
            .reshape([b * n, 3, wh, ww])
            .to_device(self.device);
        let features = self.backbone.features(&windows).map_err(anyhow::Error::msg)?;
        let config = self.model.dinosaur.config();
        let indices: Vec<i64> = pending.iter().map(|p| p.index as i64).collect();
        let noise = slot_noise(
            self.params.seed,
            &indices,
            n,
            config.n_slots,
            config.slot_dim,
            self.device,
        );
        let predicted = self.model.window_masks(&features, &noise, wh, ww)?;
        let masks = predicted.masks.to_device(Device::Cpu);
        let slots = predicted.slots.to_device(Device::Cpu);
        let weights = match &predicted.weights {
            Some(w) => Some(Vec::<f32>::try_from(
                w.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1),
            )?),
            None => None,
        };
        let canvas = (self.grid.image_height_px, self.grid.image_width_px);
        for (j, frame) in pending.drain(..).enumerate() {
            let rows = j as i64 * n;
            let joined = join_windows(&masks.narrow(0, rows, n), &self.offsets, canvas)?;
            let merged = merge_windows(&joined, &slots.narrow(0, rows, n), &self.offsets, (wh, ww), &self.merge)?;
            let frame_weights = weights.as_ref().map(|w| {
                let k = config.n_slots as usize;
                &w[j * n as usize * k..(j + 1) * n as usize * k]
            });
            self.push_rows(sequence, &frame, &merged, frame_weights, out);
        }
        Ok(())
    }

    /// The frame row and the instance rows of one merged canvas.
    fn push_rows(
        &self,
        sequence: &Sequence,
        frame: &Pending,
        merged: &MergedCanvas,
        weights: Option<&[f32]>,
        out: &mut UnitOutput,
    ) {
        let (height, width) = (merged.height as u32, merged.width as u32);
        let k = self.model.dinosaur.config().n_slots as usize;
        let objects = channel_objects(merged, self.model.is_stage2(), k, weights);
        let dataset = sequence.dataset.name().to_string();
        let count = objects.len() as u32;
        let foreground: usize = objects.iter().map(|o| o.pixels.len()).sum();
        for object in objects {
            let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
            for &p in &object.pixels {
                let (y, x) = (p / width, p % width);
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
            out.instances.push(InstanceRow {
                dataset: dataset.clone(),
                sequence_id: sequence.id.clone(),
                frame_index: frame.index as u32,
                frame_name: frame.name.clone(),
                instance_id: object.channel + 1,
                mask: CocoRle::from_pixels(&object.pixels, height, width),
                bbox_xywh: [x0 as f32, y0 as f32, (x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32],
                area_px: object.pixels.len() as u32,
                origin: InstanceOrigin::Model,
                component_id: object.channel,
                hdbscan_label: None,
                mean_flow_px: f32::NAN,
            });
            out.extra.push(object.columns);
        }
        let g = frame.geometry;
        out.frames.push(FrameRow {
            dataset,
            sequence_id: sequence.id.clone(),
            frame_index: frame.index as u32,
            frame_name: frame.name.clone(),
            source_path: frame.source_path.clone(),
            height,
            width,
            orig_height: g.orig_height as u32,
            orig_width: g.orig_width as u32,
            resized_height: g.resized_height as u32,
            resized_width: g.resized_width as u32,
            crop_top: g.crop_top as u32,
            crop_left: g.crop_left as u32,
            quasi_static: false,
            corner_flow_px: None,
            fg_fraction: Some(foreground as f32 / (height as f32 * width as f32)),
            labelled: true,
            excluded_reason: None,
            segment: None,
            num_instances: count,
        });
    }

    /// Predicts every frame of a sequence. A frame that cannot be read is recorded (a failure, and a row
    /// with `excluded_reason = unreadable`); the others go on.
    fn unit(&self, sequence: &Sequence, batch: usize, budget: Option<(Instant, Duration)>) -> Result<UnitOutput> {
        let mut out = UnitOutput::default();
        let mut pending = Vec::new();
        for (index, item) in sequence.frames()? {
            if budget.is_some_and(|(started, b)| started.elapsed() >= b) {
                STOP.store(true, Ordering::SeqCst);
            }
            match item {
                Ok(frame) => {
                    out.decoded += 1;
                    let (image, read) = match self.params.dataset {
                        DatasetKind::TriPd => tri_pd_benchmark_view(&frame)?,
                        _ => (frame.image.clone(), frame.geometry),
                    };
                    let canvas = self.grid.resize_image(&to_float(&image))?;
                    pending.push(Pending {
                        index,
                        name: frame.name.clone(),
                        source_path: sequence.source_path(index),
                        geometry: canvas_geometry(&read, &self.grid),
                        canvas,
                    });
                    if pending.len() >= batch {
                        self.flush(sequence, &mut pending, &mut out)?;
                    }
                }
                Err(e) => {
                    self.flush(sequence, &mut pending, &mut out)?;
                    let name = sequence
                        .image_files()
                        .and_then(|f| f.get(index))
                        .map_or_else(|| format!("{index}"), |f| f.name.clone());
                    out.failures.push(FrameFailure {
                        frame_index: index,
                        path: sequence.source_path(index),
                        reason: e.to_string(),
                    });
                    out.frames.push(unreadable_row(sequence, index, &name, &self.grid));
                }
            }
        }
        self.flush(sequence, &mut pending, &mut out)?;
        Ok(out)
    }
}

/// One predicted object of a merged canvas: a non-empty merged channel that is not a stage-2 window's
/// background channel.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelObject {
    /// Merged canvas channel (window · channels per window + channel in the window).
    pub channel: u32,
    /// Row-major canvas pixels, ascending.
    pub pixels: Vec<u32>,
    pub columns: PredictionColumns,
}

/// The objects of a merged canvas in channel order (see the module docs). `weights` are the frame's
/// deactivation weights (windows · K, window-major) of a stage-2 model.
pub fn channel_objects(
    merged: &MergedCanvas,
    stage2: bool,
    n_slots: usize,
    weights: Option<&[f32]>,
) -> Vec<ChannelObject> {
    let mut pixels: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (p, &c) in merged.channel_of_pixel.iter().enumerate() {
        pixels.entry(c).or_default().push(p as u32);
    }
    pixels
        .into_iter()
        .filter_map(|(channel, pixels)| {
            let (window, window_channel) = merged.window_channel(channel as usize);
            if stage2 && window_channel == 0 {
                return None;
            }
            let slot = if stage2 { window_channel - 1 } else { window_channel };
            Some(ChannelObject {
                channel,
                pixels,
                columns: PredictionColumns {
                    window: window as u32,
                    window_channel: window_channel as u32,
                    slot: slot as u32,
                    deactivation_weight: weights.and_then(|w| w.get(window * n_slots + slot).copied()),
                    combination_num: stage2.then_some(merged.windows as u32),
                },
            })
        })
        .collect()
}

fn unreadable_row(sequence: &Sequence, index: usize, name: &str, grid: &WindowGrid) -> FrameRow {
    FrameRow {
        dataset: sequence.dataset.name().to_string(),
        sequence_id: sequence.id.clone(),
        frame_index: index as u32,
        frame_name: name.to_string(),
        source_path: sequence.source_path(index),
        height: grid.image_height_px as u32,
        width: grid.image_width_px as u32,
        orig_height: 0,
        orig_width: 0,
        resized_height: 0,
        resized_width: 0,
        crop_top: 0,
        crop_left: 0,
        quasi_static: false,
        corner_flow_px: None,
        fg_fraction: None,
        labelled: false,
        excluded_reason: Some(mrdino_outputs::tables::ExcludedReason::Unreadable),
        segment: None,
        num_instances: 0,
    }
}

/// A model file (or a run directory's checkpoint) with the identity of the model it holds.
pub(crate) fn read_model_file(path: &Path) -> Result<(PathBuf, TensorFile, Identity)> {
    let path = resolve_model_path(path);
    let (file, file_sha256) =
        read_tensor_file_hashed(&path).with_context(|| format!("cannot read model {}", path.display()))?;
    let identity = model_identity(&file, file_sha256).with_context(|| format!("model {}", path.display()))?;
    Ok((path, file, identity))
}

fn file_metadata(params: &InferParams) -> Vec<(String, String)> {
    vec![
        ("mrdino.schema_version".to_string(), SCHEMA_VERSION.to_string()),
        ("mrdino.code_version".to_string(), CODE_VERSION.to_string()),
        ("mrdino.kind".to_string(), PREDICTIONS_KIND.to_string()),
        ("mrdino.params_hash".to_string(), params.hash()),
        (
            "mrdino.params".to_string(),
            serde_json::to_string(params).unwrap_or_default(),
        ),
    ]
}

/// `mrdino infer`.
pub fn run(args: &InferArgs, shard: Option<Shard>) -> Result<ExitCode> {
    let started = Instant::now();
    let started_unix_s = unix_now();
    ensure!(args.batch > 0, "--batch must be positive");
    if let Some(n) = args.torch_threads {
        tch::set_num_threads(n.max(1));
    }
    let device = parse_device(&args.device)?;
    let (model_path, file, model_identity) = read_model_file(&args.model)?;
    let model = RefinedModel::from_tensor_file(&file, &model_path, device)
        .with_context(|| format!("cannot load model {}", model_path.display()))?;
    let request = BackboneRequest {
        name: args.backbone.as_deref(),
        weights: args.backbone_weights.as_deref(),
        model: Some((&file, &model_path)),
    };
    let backbone = LoadedBackbone::load(request, device)?.into_backbone();
    if let Some(trained) = file.meta(META_BACKBONE_SHA256) {
        ensure!(
            backbone.identity().matches(trained),
            "{} was trained on backbone weights {}, but `{}` has {}{}",
            model_path.display(),
            weights_id::short(trained),
            backbone.name(),
            backbone.identity().short(),
            weights_id::mismatch_hint(trained)
        );
    }
    let preset = args.preset.unwrap_or(InferPreset::for_dataset(args.dataset));
    let grid = preset.grid();
    let offsets = grid.offsets()?;
    let config = model.dinosaur.config();
    let ps = backbone.patch_size();
    let (wh, ww) = (grid.window_height_px, grid.window_width_px);
    let preset_name = serde_json::to_value(preset)?.as_str().unwrap_or_default().to_string();
    ensure!(
        wh % ps == 0 && ww % ps == 0,
        "the {preset_name} preset's {ww}x{wh} windows are not a multiple of the backbone's {ps} px patch"
    );
    ensure!(
        (wh / ps) * (ww / ps) == config.n_patches,
        "the {preset_name} preset's {ww}x{wh} windows give {} patches of {ps} px, but the model has {} patches",
        (wh / ps) * (ww / ps),
        config.n_patches
    );
    ensure!(
        backbone.feature_dim() == config.feature_dim,
        "the backbone gives {}-channel features, the model expects {}",
        backbone.feature_dim(),
        config.feature_dim
    );
    // Frames are read as they are; TRI-PD's benchmark conversion is applied per frame (see module docs).
    let processing = Processing::Native;
    let params = InferParams {
        dataset: args.dataset,
        cameras: args.cameras.clone().unwrap_or_else(|| args.dataset.default_cameras()),
        preset,
        processing,
        model_sha256: model_identity.id.clone(),
        model_kind: if model.is_stage2() {
            MODEL_STAGE2
        } else {
            MODEL_BASELINE
        }
        .to_string(),
        n_slots: config.n_slots,
        channels_per_window: model.channels_per_window(),
        windows: offsets.len(),
        canvas: (grid.image_height_px, grid.image_width_px),
        backbone: args.backbone.clone().unwrap_or_else(|| backbone.name().to_string()),
        backbone_sha256: backbone.identity().id.clone(),
        seed: args.seed,
        merge_similarity: MergeOptions::default().similarity,
        merge_chains: args.merge_chains,
    };
    let sequences = mrdino_datasets::list_sequences(&SourceOptions {
        kind: args.dataset,
        root: args.root.clone(),
        cameras: Some(params.cameras.clone()),
        processing: Some(processing),
    })
    .with_context(|| {
        format!(
            "cannot list dataset `{}` at {}",
            args.dataset.name(),
            args.root.display()
        )
    })?;
    let params = crate::identity::continue_earlier_partition(
        &args.out,
        LABELS_DATA_DIRS,
        params,
        &[&model_identity, backbone.identity()],
        InferParams::hash,
    )?;
    let hash = params.hash();
    let layout = Layout::new(&args.out, &hash);
    let ledger = Ledger::new(&args.out, PREDICTIONS_KIND, &hash);
    ledger.prepare(&[layout.frames_dir(), layout.instances_dir()])?;
    ledger.write_params(&params, CODE_VERSION)?;
    let plan = build_plan(PREDICTIONS_KIND, &hash, args.dataset.name(), &sequences);
    ledger.write_plan(&plan)?;
    let metadata = file_metadata(&params);
    let inference = Inference {
        params: &params,
        model: &model,
        backbone: backbone.as_ref(),
        grid,
        offsets,
        merge: MergeOptions {
            merge_chains: args.merge_chains,
            ..MergeOptions::default()
        },
        device,
    };
    let units: Vec<(&Sequence, &PlannedUnit)> = sequences
        .iter()
        .zip(&plan.units)
        .filter(|(s, _)| in_shard(&s.id, shard))
        .collect();
    if !args.quiet {
        eprintln!(
            "{} sequences of `{}`; {} model (K = {}), preset {}, {} windows, params {hash}",
            units.len(),
            args.dataset.name(),
            params.model_kind,
            params.n_slots,
            preset_name,
            params.windows
        );
    }
    let bar = if args.quiet {
        ProgressBar::with_draw_target(Some(units.len() as u64), ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new(units.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix("sequences");
    let driver = UnitDriver {
        ledger: &ledger,
        started,
        time_budget: args.time_budget,
        bar: Some(&bar),
        quiet: args.quiet,
    };
    let run = driver.run(
        units,
        |sequence, planned| {
            let output = inference.unit(sequence, args.batch, args.time_budget.map(|b| (started, b)))?;
            let [frames_path, instances_path] = layout.unit_outputs(&planned.id);
            write_parquet(&frames_path, &frames_batch(&output.frames)?, &metadata)?;
            write_parquet(
                &instances_path,
                &prediction_instances_batch(&output.instances, &output.extra)?,
                &metadata,
            )?;
            Ok(UnitDone {
                counts: PredictionCounts {
                    frames_decoded: output.decoded,
                    frame_rows: output.frames.len(),
                    instances: output.instances.len(),
                },
                files: vec![frames_path, instances_path],
                failures: output.failures,
            })
        },
        |c| format!("{} frames, {} instances", c.frame_rows, c.instances),
    );
    let totals = PredictionTotals {
        units: run.tally,
        frames: run.done_counts().map(|c| c.frame_rows).sum(),
        instances: run.done_counts().map(|c| c.instances).sum(),
        frame_failures: run.frame_failures,
        seconds: started.elapsed().as_secs_f64(),
    };
    let exit = run.finish(
        &ledger,
        &hash,
        serde_json::to_value(&params)?,
        shard,
        started_unix_s,
        &totals,
    )?;
    eprintln!(
        "infer: {} units done ({} frames, {} instances), {} already done, {} failed, {} interrupted, {} frame \
         failures in {:.1} s → {}",
        totals.units.done,
        totals.frames,
        totals.instances,
        totals.units.skipped,
        totals.units.failed,
        totals.units.interrupted,
        totals.frame_failures,
        totals.seconds,
        args.out.display()
    );
    Ok(exit)
}

/// The job kind recorded in the plans of `out` (`None` when it holds none).
pub fn job_kind(out: &Path) -> Option<String> {
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

/// Whether `out` holds a prediction run.
pub fn is_prediction_run(out: &Path) -> bool {
    job_kind(out).as_deref() == Some(PREDICTIONS_KIND)
}

/// Done / failed / missing units of a prediction run.
pub fn status(out: &Path, params: Option<&str>, num_shards: Option<NonZeroU64>) -> Result<Status<PredictionCounts>> {
    let choice = choose_partition(out, LABELS_DATA_DIRS, params, WhenSeveral::Refuse)?;
    Ok(Ledger::new(out, PREDICTIONS_KIND, &choice.params_hash).status(num_shards)?)
}

pub fn print_status(status: &Status<PredictionCounts>) {
    let frames: usize = status.done.values().map(|m| m.payload.frame_rows).sum();
    let instances: usize = status.done.values().map(|m| m.payload.instances).sum();
    let totals = format!("{frames} frames, {instances} instances");
    crate::batch::print_job_status("predictions ", status, &totals);
}

/// Checks every planned unit is done and writes the merged manifest.
pub fn finalize(out: &Path, params: Option<&str>) -> Result<PathBuf> {
    let report = status(out, params, None)?;
    let markers = crate::batch::require_complete(&report, print_status)?;
    let ledger = Ledger::new(out, PREDICTIONS_KIND, &report.plan.params_hash);
    let manifest = serde_json::json!({
        "kind": PREDICTIONS_KIND,
        "params_hash": report.plan.params_hash,
        "params": ledger.read_params()?.unwrap_or(serde_json::Value::Null),
        "units": markers.len(),
        "frames": markers.iter().map(|m| m.payload.frame_rows).sum::<usize>(),
        "instances": markers.iter().map(|m| m.payload.instances).sum::<usize>(),
        "seconds": markers.iter().map(|m| m.seconds).sum::<f64>(),
        "per_unit": markers,
    });
    Ok(ledger.write_final_manifest(&manifest)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canvas_provenance_composes_the_reader_and_the_preset() {
        // KITTI: a native 375×1242 frame resized to the 378×1260 canvas.
        let g = canvas_geometry(&Geometry::native(375, 1242), &WindowGrid::kitti());
        assert_eq!(
            (
                g.resized_height,
                g.resized_width,
                g.crop_top,
                g.crop_left,
                g.height,
                g.width
            ),
            (378, 1260, 0, 0, 378, 1260)
        );
        // MOVi-E: 128×192 → shorter side 266 (266×399) → centre crop at x = 66.
        let g = canvas_geometry(&Geometry::native(128, 192), &WindowGrid::movi_e());
        assert_eq!(
            (
                g.resized_height,
                g.resized_width,
                g.crop_top,
                g.crop_left,
                g.height,
                g.width
            ),
            (266, 399, 0, 66, 266, 266)
        );
        // TRI-PD: 1216×1936 resized to 608×968, top 128 rows cropped (480×968), then 490×980.
        let frame = Frame {
            index: 0,
            name: "0".into(),
            image: RgbImage::new(1216, 1936, vec![7; 1216 * 1936 * 3]),
            geometry: Geometry::native(1216, 1936),
        };
        let (image, read) = tri_pd_benchmark_view(&frame).unwrap();
        assert_eq!((image.height, image.width, image.data.len()), (480, 968, 480 * 968 * 3));
        assert!(image.data.iter().all(|&v| v == 7));
        let g = canvas_geometry(&read, &WindowGrid::tri_pd());
        assert_eq!(
            (
                g.orig_height,
                g.resized_height,
                g.resized_width,
                g.crop_top,
                g.crop_left
            ),
            (1216, 621, 980, 131, 0)
        );
    }
}
