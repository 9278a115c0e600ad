//! `mrdino infer`: a DINOSAUR or MR-DINOSAUR model's object masks for every frame of a dataset, as a unit job of
//! the engine written in the layout of `mrdino labels` (spec §3.6, §5).
//!
//! Per frame, as the reference's evaluation pipeline (`mrdino_model::predict`): the frame (TRI-PD: the
//! benchmark's conversion first) resized to the preset canvas — KITTI 378×1260, TRI-PD 490×980, MOVi-E shorter
//! side 266 then the centre 266×266; a patch-16 backbone gets the same token grids, KITTI 432×1440, TRI-PD
//! 560×1120, MOVi-E 304, `Preset::window_grid`) — cut into the preset's windows (a model whose token grid differs
//! from the windows' is refused, naming both), the windows through the backbone and the
//! slot model with reproducible slot noise, joined and merged (`--merge-chains` is the opt-in fix for objects
//! spanning three windows), argmax per pixel. The model file's embedded backbone is used when it has one.
//!
//! **Rows.** `frames`: one row per frame (`labelled` = predicted, `fg_fraction` = the share of canvas pixels in
//! an object, `quasi_static` false and no corner flow; `height`×`width` = the canvas, and the provenance columns
//! say how the canvas maps back to the original frame; for TRI-PD the composite is rounded to whole pixels).
//! `instances`: one row per predicted object after the merge, in canvas-channel order, `instance_id` = merged
//! canvas channel + 1, the mask as COCO RLE on the canvas, `origin` = `model`; a stage-2 model's per-window
//! background channels have no row, so a canvas pixel covered by no row is background. Beside the columns of the
//! labels tables, `instances` carries `window`, `window_channel`, `slot`, `deactivation_weight` (stage 2) and
//! `combination_num` (stage 2: the number of windows); `mean_flow_px` is NaN, `component_id` the canvas channel.
//!
//! A frame that cannot be read is recorded (a failure, and a row with `excluded_reason = unreadable`); a stop is
//! checked between batches and the unfinished unit is redone.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use mrdino_datasets::{list_sequences, Geometry, Processing, Sequence, SourceOptions};
use mrdino_model::backbone::{BackboneRequest, LoadedBackbone};
use mrdino_model::memory::{window_inference, InferenceBatch, MemoryEstimate};
use mrdino_model::predict::{check_token_grid, frame_canvas, FramePrediction, WindowPredictor};
use mrdino_model::refined::RefinedModel;
use mrdino_model::windows::{MergeOptions, WindowGrid};
use mrdino_outputs::bookkeeping::{FrameFailure, Ledger, PlannedUnit};
use mrdino_outputs::checkpoint::{read_model_file, META_BACKBONE, META_BACKBONE_SHA256};
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS, PREDICTIONS_KIND};
use mrdino_outputs::tables::{
    frames_batch, prediction_instances_batch, write_parquet, ExcludedReason, FrameId, InstanceOrigin,
    PredictionColumns, SCHEMA_VERSION,
};
use mrdino_outputs::provenance::FrameGeometry;
use mrdino_stages::frame_rows::frame_row;
use mrdino_outputs::weights_id::{self, Identity};
use mrdino_outputs::{CocoRle, FrameRow, InstanceRow};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::cli::infer::InferArgs;
use crate::engine::job::{build_plan, OpenJob, UnitTally, CODE_VERSION};
use crate::engine::progress;
use crate::engine::status::JobKind;
use crate::engine::stop::{StopHandle, Stopped};
use crate::engine::units::{Driver, UnitDone, UnitRun};
use crate::settings::identity::continue_earlier_partition;
use crate::settings::infer::{InferParams, MODEL_BASELINE, MODEL_STAGE2};
use crate::settings::presets::Preset;

/// The prediction job for `status` and `finalize`.
pub const JOB: JobKind = JobKind {
    kind: PREDICTIONS_KIND,
    label: "predictions ",
    data_dirs: LABELS_DATA_DIRS,
    totals: &[("frames", "frame_rows", "frames"), ("instances", "instances", "instances")],
    frame_failures: false,
};

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

/// Everything a unit needs.
struct Inference<'a> {
    params: &'a InferParams,
    predictor: WindowPredictor<'a>,
    batch: usize,
    stop: &'a StopHandle,
}

impl Inference<'_> {
    /// Predicts the pending frames of `sequence` and appends their rows.
    fn flush(&self, sequence: &Sequence, pending: &mut Vec<Pending>, out: &mut UnitOutput) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        if self.stop.requested() {
            bail!(Stopped);
        }
        let canvases: Vec<Tensor> = pending.iter().map(|p| p.canvas.shallow_clone()).collect();
        let indices: Vec<i64> = pending.iter().map(|p| p.index as i64).collect();
        let predictions = self.predictor.predict(&canvases, &indices)?;
        for (frame, prediction) in pending.drain(..).zip(predictions) {
            push_rows(sequence, &frame, prediction, out);
        }
        Ok(())
    }

    /// Predicts every frame of a sequence (see the module docs).
    fn unit(&self, sequence: &Sequence) -> Result<UnitOutput> {
        let mut out = UnitOutput::default();
        let mut pending = Vec::new();
        let grid = &self.predictor.grid;
        for (index, item) in sequence.frames()? {
            match item {
                Ok(frame) => {
                    out.decoded += 1;
                    let (canvas, geometry) = frame_canvas(&frame, grid, self.params.tri_pd_view())?;
                    pending.push(Pending {
                        index,
                        name: frame.name.clone(),
                        source_path: sequence.source_path(index),
                        geometry,
                        canvas,
                    });
                    if pending.len() >= self.batch {
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
                    out.frames.push(unreadable_row(sequence, index, &name, grid));
                }
            }
        }
        self.flush(sequence, &mut pending, &mut out)?;
        Ok(out)
    }
}

/// The frame row and the instance rows of one predicted frame.
fn push_rows(sequence: &Sequence, frame: &Pending, prediction: FramePrediction, out: &mut UnitOutput) {
    let merged = &prediction.merged;
    let (height, width) = (merged.height as u32, merged.width as u32);
    let dataset = sequence.dataset.name().to_string();
    let count = prediction.objects.len() as u32;
    let foreground: usize = prediction.objects.iter().map(|o| o.pixels.len()).sum();
    for object in prediction.objects {
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
    let id = FrameId {
        dataset,
        sequence_id: sequence.id.clone(),
        frame_index: frame.index as u32,
        frame_name: frame.name.clone(),
        source_path: frame.source_path.clone(),
    };
    out.frames.push(FrameRow {
        height,
        width,
        fg_fraction: Some(foreground as f32 / (height as f32 * width as f32)),
        num_instances: count,
        ..frame_row(id, &g)
    });
}

fn unreadable_row(sequence: &Sequence, index: usize, name: &str, grid: &WindowGrid) -> FrameRow {
    let id = FrameId {
        dataset: sequence.dataset.name().to_string(),
        sequence_id: sequence.id.clone(),
        frame_index: index as u32,
        frame_name: name.to_string(),
        source_path: sequence.source_path(index),
    };
    // The frame could not be read, so nothing is known of its original size: no provenance.
    let grid = FrameGeometry {
        height: grid.image_height_px as u32,
        width: grid.image_width_px as u32,
        orig_height: 0,
        orig_width: 0,
        resized_height: 0,
        resized_width: 0,
        crop_top: 0,
        crop_left: 0,
    };
    FrameRow {
        labelled: false,
        excluded_reason: Some(ExcludedReason::Unreadable),
        ..FrameRow::new(id, grid)
    }
}

fn file_metadata(params: &InferParams) -> Result<Vec<(String, String)>> {
    Ok(vec![
        ("mrdino.schema_version".to_string(), SCHEMA_VERSION.to_string()),
        ("mrdino.code_version".to_string(), CODE_VERSION.to_string()),
        ("mrdino.kind".to_string(), PREDICTIONS_KIND.to_string()),
        ("mrdino.params_hash".to_string(), params.hash()),
        ("mrdino.params".to_string(), serde_json::to_string(params)?),
    ])
}

/// The model, its backbone and the resolved parameters; refuses a backbone the model was not trained on.
fn load(args: &InferArgs, device: Device) -> Result<(RefinedModel, Box<dyn mrdino_model::backbone::Backbone>, InferParams, Identity)> {
    let (model_path, file, model_id) =
        read_model_file(&args.model).with_context(|| format!("cannot read model {}", args.model.display()))?;
    let model = RefinedModel::from_tensor_file(&file, &model_path, device)
        .with_context(|| format!("cannot load model {}", model_path.display()))?;
    let request = BackboneRequest {
        name: args.backbone.backbone.as_deref(),
        weights: args.backbone.backbone_weights.as_deref(),
        model: Some((&file, &model_path)),
    };
    let backbone = LoadedBackbone::load(request, device)?.into_backbone();
    let dataset = args.input.dataset;
    let preset = args.preset.unwrap_or(Preset::for_dataset(dataset)).model();
    let grid = preset.window_grid(backbone.patch_size());
    let trained_on = file.meta(META_BACKBONE).filter(|n| !n.is_empty());
    check_token_grid(model.dinosaur.config().n_patches, trained_on, backbone.as_ref(), &grid)
        .with_context(|| format!("{}: the {} preset", model_path.display(), preset.name()))?;
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
    let config = model.dinosaur.config();
    let params = InferParams {
        dataset,
        cameras: args.input.cameras(),
        preset,
        // Frames are read as they are; TRI-PD's benchmark conversion is applied per frame.
        processing: Processing::Native,
        model_sha256: model_id.id.clone(),
        model_kind: if model.is_stage2() { MODEL_STAGE2 } else { MODEL_BASELINE }.to_string(),
        n_slots: config.n_slots,
        channels_per_window: model.channels_per_window(),
        windows: grid.offsets()?.len(),
        canvas: (grid.image_height_px, grid.image_width_px),
        backbone: args.backbone.backbone.clone().unwrap_or_else(|| backbone.name().to_string()),
        backbone_sha256: backbone.identity().id.clone(),
        seed: args.seed,
        merge_similarity: MergeOptions::default().similarity,
        merge_chains: args.merge_chains,
    };
    Ok((model, backbone, params, model_id))
}

/// Refuses an `--out` that is, holds or lies inside an input.
fn check_paths(args: &InferArgs) -> Result<()> {
    crate::engine::paths::check_out_dir(
        &args.out,
        &[
            ("--root", Some(&args.input.root)),
            ("--model", Some(&args.model)),
            ("--backbone-weights", args.backbone.backbone_weights.as_deref()),
        ],
    )
}

/// The job's totals, printed.
fn summary(run: &UnitRun<PredictionCounts>, started: Instant, out: &std::path::Path) -> PredictionTotals {
    let totals = PredictionTotals {
        units: run.tally,
        frames: run.done_counts().map(|c| c.frame_rows).sum(),
        instances: run.done_counts().map(|c| c.instances).sum(),
        frame_failures: run.frame_failures,
        seconds: started.elapsed().as_secs_f64(),
    };
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
        out.display()
    );
    totals
}

/// The memory of one forward batch: `--batch` frames, but never more than the longest sequence holds (a batch does
/// not span sequences; a video's length is not known before decoding, so it counts as `--batch`).
fn batch_memory(batch: usize, sequences: &[Sequence], model: &RefinedModel, grid: &WindowGrid) -> Result<MemoryEstimate> {
    let longest = sequences
        .iter()
        .map(|s| s.frame_count_hint().unwrap_or(batch))
        .max()
        .unwrap_or(0);
    let (canvas_h, canvas_w) = grid.padded_size();
    let shapes = InferenceBatch {
        frames: batch.min(longest) as u64,
        windows: grid.offsets()?.len() as i64,
        window_px: (grid.window_height_px, grid.window_width_px),
        canvas_px: (canvas_h, canvas_w),
        head_hidden: model.deactivation.as_ref().map(|h| h.hidden),
    };
    Ok(window_inference(model.dinosaur.config(), &shapes))
}

/// `mrdino infer`.
pub fn run(args: &InferArgs, stop: &StopHandle) -> Result<ExitCode> {
    check_paths(args)?;
    let started = Instant::now();
    let device = args.device.device()?;
    let (model, backbone, params, model_id) = load(args, device)?;
    let merge = MergeOptions {
        merge_chains: args.merge_chains,
        ..MergeOptions::default()
    };
    let grid = params.preset.window_grid(backbone.patch_size());
    let dataset = args.input.dataset;
    let sequences = list_sequences(&SourceOptions {
        kind: dataset,
        root: args.input.root.clone(),
        cameras: Some(params.cameras.clone()),
        processing: Some(params.processing),
    })
    .with_context(|| format!("cannot list dataset `{}` at {}", dataset.name(), args.input.root.display()))?;
    let estimate = batch_memory(args.batch, &sequences, &model, &grid)?;
    args.memory.check(&estimate, device, "lower --batch", args.job.run.quiet)?;
    let predictor = WindowPredictor::new(&model, backbone.as_ref(), grid, merge, device, params.seed)
        .with_context(|| format!("the {} preset", params.preset.name()))?;
    let identities = [&model_id, backbone.identity()];
    let params = continue_earlier_partition(&args.out, LABELS_DATA_DIRS, params, &identities, InferParams::hash)?;
    let hash = params.hash();
    let layout = Layout::new(&args.out, &hash);
    let plan = build_plan(PREDICTIONS_KIND, &hash, dataset.name(), &sequences);
    let ledger = Ledger::new(&args.out, PREDICTIONS_KIND, &hash);
    let data_dirs = [layout.frames_dir(), layout.instances_dir()];
    let job = OpenJob::open(ledger, &data_dirs, &params, plan, args.job.shard()?)?;
    let units = job.units(&sequences);
    if !args.job.run.quiet {
        eprintln!(
            "{} sequences of `{}`; {} model (K = {}), preset {}, {} windows, params {hash}",
            units.len(),
            dataset.name(),
            params.model_kind,
            params.n_slots,
            params.preset.name(),
            params.windows
        );
    }
    let stop = stop.with_budget(args.job.run.time_budget);
    let inference = Inference {
        params: &params,
        predictor,
        batch: args.batch,
        stop: &stop,
    };
    let metadata = file_metadata(&params)?;
    let bar = progress::units(units.len() as u64, "sequences", args.job.run.quiet);
    let describe = |c: &PredictionCounts| format!("{} frames, {} instances", c.frame_rows, c.instances);
    let driver = Driver {
        ledger: &job.ledger,
        stop: &stop,
        bar: &bar,
        quiet: args.job.run.quiet,
        describe: Some(&describe),
        on_skip: None,
    };
    let run = driver.run_each(units, |sequence: &Sequence, planned: &PlannedUnit| {
        let output = inference.unit(sequence)?;
        let [frames_path, instances_path] = layout.unit_outputs(&planned.id);
        write_parquet(&frames_path, &frames_batch(&output.frames)?, &metadata)?;
        let instances = prediction_instances_batch(&output.instances, &output.extra)?;
        write_parquet(&instances_path, &instances, &metadata)?;
        Ok(UnitDone {
            counts: PredictionCounts {
                frames_decoded: output.decoded,
                frame_rows: output.frames.len(),
                instances: output.instances.len(),
            },
            files: vec![frames_path, instances_path],
            failures: output.failures,
        })
    });
    let totals = summary(&run, started, &args.out);
    job.finish(run, &totals, args.job.max_failures)
}
