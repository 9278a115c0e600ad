//! `mrdino features`: frozen-backbone features of a dataset's views, as resumable, shardable units.
//!
//! A unit is a sequence, as for `labels`: its views go through the backbone in batches and the unit's shard
//! (`CACHE/shards/<unit>.safetensors`, f16 or bf16, see `mrdino_outputs::feature_cache`) is written, then its
//! done marker; a rerun skips done units, `--shard I/N` (or Slurm's array variables) picks a stable subset, and
//! SIGINT/SIGTERM/`--time-budget` stop between batches with exit code 4 (the unfinished unit is redone).
//!
//! Views:
//! - `resize` (default): every frame resized to `--size WxH` (bicubic, `align_corners=False`, no antialias,
//!   clamped to [0, 1] — what the reference's tensor `Resize` does under torchvision 0.15), one view per frame.
//!   Default size per dataset: MOVi-E 266×266 (DINOSAUR's MOVi-E input), otherwise 224×224.
//! - `windows` (with `--labels RUN`): the refinement's training views of a pseudo-label run — each labelled frame
//!   at the label grid, resized to the preset canvas (KITTI 1260×378, TRI-PD 980×490; PIL bilinear for the image,
//!   PIL nearest for the ids, as the reference's conversion scripts), cut into its windows (KITTI x = 0, 294,
//!   588, 882; TRI-PD 0, 490); windows without instance pixels (KITTI) or with one id (TRI-PD) are skipped, as the
//!   reference skips them. The view key records the window's x offset.
//!
//! The features are the patch tokens of `--layer` (default the last block) after the final norm, CLS and
//! registers dropped; the shard metadata names the backbone, its weights' identity, the layer, the view size, the
//! grid, the normalisation and the dtype, so training refuses a cache made with another backbone.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mrdino_datasets::{DatasetKind, Processing, Sequence, SourceOptions};
use mrdino_model::backbone::{BackboneRequest, LoadedBackbone};
use mrdino_model::device::parse_device;
use mrdino_model::tensors::from_tch;
use mrdino_outputs::bookkeeping::{
    choose_partition, in_shard, partitions, unix_now, Ledger, PlannedUnit, Shard, Status, WhenSeveral,
};
use mrdino_outputs::feature_cache::{FeatureCacheWriter, ShardMeta, ViewKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::cmd_eval::{prediction_map, read_label_tables, LabelTables};
use crate::job::{build_plan, UnitTally, CODE_VERSION};
use crate::refine_views::{frame_views, WindowLayout};
use crate::run::STOP;
use crate::unit_job::{Stopped, UnitDone, UnitDriver};

/// Job kind of the feature cache in the bookkeeping.
pub const FEATURES_KIND: &str = "features";
/// Data directories of a feature cache (for the choice of partition).
pub const FEATURES_DATA_DIRS: &[&str] = &["shards"];

/// Which views of the dataset are cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ViewsKind {
    /// Every frame resized to `--size`.
    Resize,
    /// The refinement windows of a pseudo-label run (`--labels`).
    Windows,
}

/// Flags of `mrdino features`.
#[derive(Debug, clap::Args)]
pub struct FeaturesArgs {
    /// Dataset layout: frames, video, kitti, tri-pd, movi-e.
    #[arg(long, value_parser = crate::parse_dataset)]
    pub dataset: DatasetKind,
    /// Dataset root.
    #[arg(long)]
    pub root: PathBuf,
    /// Cache directory (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Cameras to read (KITTI: image_02,image_03; TRI-PD: camera_01,camera_05,camera_06).
    #[arg(long, value_delimiter = ',')]
    pub cameras: Option<Vec<String>>,
    /// Backbone: dinov2-vitb14 (DINOSAUR's), dinov2-vits14, dinov2-vitb14-reg, dino-vitb8, clip-vitb16,
    /// mae-vitb16, … or custom:… (see the README).
    #[arg(long, default_value = "dinov2-vitb14")]
    pub backbone: String,
    /// The backbone's weights (safetensors from tools/convert_vit.py; none for the seeded
    /// `random-conv-p<PS>-c<C>[-pos]` and `random-colour-p<PS>-c<C>[-pos]` test backbones).
    #[arg(long)]
    pub backbone_weights: Option<PathBuf>,
    /// Which views: resize (every frame at --size) or windows (the refinement windows of --labels).
    #[arg(long, value_enum, default_value = "resize")]
    pub views: ViewsKind,
    /// View size WxH for `--views resize` (multiples of the patch; default 266x266 for movi-e, else 224x224).
    #[arg(long, value_parser = crate::parse_size)]
    pub size: Option<(usize, usize)>,
    /// Pseudo-label run whose labelled frames give the windows (`--views windows`).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Block whose tokens are cached (0-based; default the last), after the final norm.
    #[arg(long)]
    pub layer: Option<usize>,
    /// Storage type of the cached features.
    #[arg(long, default_value = "f16", value_parser = ["f16", "bf16"])]
    pub dtype: String,
    /// Views per backbone forward.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Process only shard I of N (stable hash of the sequence id); defaults to Slurm's array variables.
    #[arg(long, value_parser = crate::parse_shard)]
    pub shard: Option<Shard>,
    /// Stop cleanly (exit code 4) before this many seconds have passed; rerun to resume.
    #[arg(long, value_parser = crate::parse_time_budget, allow_hyphen_values = true)]
    pub time_budget: Option<Duration>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The resolved parameters of a feature cache; their hash names the partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeaturesParams {
    pub dataset: DatasetKind,
    pub cameras: Vec<String>,
    pub backbone: String,
    pub backbone_sha256: String,
    pub layer: i64,
    pub views: ViewsKind,
    /// (height, width) of one view.
    pub view_size: (i64, i64),
    /// The labels partition the windows come from (`--views windows`).
    pub labels_params: Option<String>,
    pub normalisation: String,
    pub dtype: String,
}

impl FeaturesParams {
    pub fn hash(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        Sha256::digest(json.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// What a unit's marker records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FeatureCounts {
    pub frames: usize,
    pub views: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureTotals {
    #[serde(flatten)]
    pub units: UnitTally,
    pub views: usize,
    pub seconds: f64,
}

/// One view to encode: its key and its pixels (3, H, W) in [0, 1].
struct View {
    key: ViewKey,
    image: Tensor,
}

/// Frame (H, W, 3) uint8 → (3, H, W) float in [0, 1].
fn to_float(data: &[u8], height: usize, width: usize) -> Tensor {
    Tensor::from_slice(data)
        .view([height as i64, width as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0
}

/// The views of one sequence (streamed frame by frame into `sink`).
fn for_each_view(
    sequence: &Sequence,
    params: &FeaturesParams,
    labels: Option<&LabelTables>,
    mut sink: impl FnMut(View) -> Result<()>,
) -> Result<usize> {
    let mut frames = 0;
    match params.views {
        ViewsKind::Resize => {
            for item in sequence.frames()? {
                let (_, frame) = item;
                let frame = frame?;
                frames += 1;
                let image = to_float(&frame.image.data, frame.image.height, frame.image.width)
                    .unsqueeze(0)
                    .upsample_bicubic2d([params.view_size.0, params.view_size.1], false, None, None)
                    .clamp(0.0, 1.0)
                    .squeeze_dim(0);
                sink(View {
                    key: ViewKey {
                        sequence_id: sequence.id.clone(),
                        frame_index: frame.index as u64,
                        window: None,
                    },
                    image,
                })?;
            }
        }
        ViewsKind::Windows => {
            let tables = labels.context("--views windows needs --labels")?;
            let layout = WindowLayout::for_dataset(params.dataset);
            let labelled: BTreeMap<usize, &mrdino_outputs::FrameRow> = tables
                .frames
                .iter()
                .filter(|f| f.sequence_id == sequence.id && f.labelled && f.num_instances > 0)
                .map(|f| (f.frame_index as usize, f))
                .collect();
            if labelled.is_empty() {
                return Ok(0);
            }
            for item in sequence.frames()? {
                let (index, frame) = item;
                let Some(row) = labelled.get(&index) else { continue };
                let frame = frame?;
                frames += 1;
                let instances: Vec<_> = tables
                    .instances
                    .iter()
                    .filter(|i| i.sequence_id == sequence.id && i.frame_index as usize == index)
                    .collect();
                let ids = prediction_map(row, &instances)?;
                if (ids.height, ids.width) != (frame.image.height, frame.image.width) {
                    bail!(
                        "{} frame {}: the labels' grid is {}x{} but the frame reads as {}x{} (other processing?)",
                        sequence.id,
                        frame.name,
                        ids.width,
                        ids.height,
                        frame.image.width,
                        frame.image.height
                    );
                }
                for v in frame_views(layout, Some(&frame.image.data), &ids)? {
                    sink(View {
                        key: ViewKey {
                            sequence_id: sequence.id.clone(),
                            frame_index: index as u64,
                            window: Some(v.window),
                        },
                        image: v.image.context("a view without pixels")?,
                    })?;
                }
            }
        }
    }
    Ok(frames)
}

/// Encodes views in batches; returns the unit's features (N, P, C) in the storage kind.
struct Encoder<'a> {
    backbone: &'a LoadedBackbone,
    layer: Option<usize>,
    kind: Kind,
    batch: usize,
    pending: Vec<View>,
    keys: Vec<ViewKey>,
    features: Vec<Tensor>,
}

impl Encoder<'_> {
    fn push(&mut self, view: View) -> Result<()> {
        self.pending.push(view);
        if self.pending.len() >= self.batch {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if STOP.load(Ordering::SeqCst) {
            bail!(Stopped);
        }
        let images = Tensor::stack(
            &self.pending.iter().map(|v| v.image.shallow_clone()).collect::<Vec<_>>(),
            0,
        );
        let features = self.backbone.encode(&images, self.layer)?;
        self.features.push(features.to_device(Device::Cpu).to_kind(self.kind));
        self.keys.extend(self.pending.drain(..).map(|v| v.key));
        Ok(())
    }
}

fn resolve(args: &FeaturesArgs, backbone: &LoadedBackbone) -> Result<(FeaturesParams, Option<LabelTables>)> {
    let patch = backbone.backbone().patch_size();
    let labels = match (&args.labels, args.views) {
        (Some(path), _) => Some(read_label_tables(path, None)?),
        (None, ViewsKind::Windows) => bail!("--views windows needs --labels RUN (the pseudo-label run)"),
        (None, ViewsKind::Resize) => None,
    };
    let view_size = match args.views {
        ViewsKind::Resize => {
            let (w, h) = args.size.unwrap_or(if args.dataset == DatasetKind::MoviE {
                (266, 266)
            } else {
                (224, 224)
            });
            (h as i64, w as i64)
        }
        ViewsKind::Windows => {
            if args.size.is_some() {
                bail!("--size applies to --views resize; the windows have the preset's size");
            }
            let px = WindowLayout::for_dataset(args.dataset).view_px();
            (px as i64, px as i64)
        }
    };
    if view_size.0 % patch != 0 || view_size.1 % patch != 0 {
        bail!(
            "view size {}x{} is not a multiple of the backbone's patch {patch}",
            view_size.1,
            view_size.0
        );
    }
    let depth = backbone.depth();
    if let Some(layer) = args.layer {
        match depth {
            Some(depth) if layer >= depth => bail!("--layer {layer}: the backbone has blocks 0..{}", depth - 1),
            None => bail!("--layer: backbone `{}` has no blocks to choose from", args.backbone),
            _ => {}
        }
    }
    if args.batch == 0 {
        bail!("--batch must be positive");
    }
    let params = FeaturesParams {
        dataset: args.dataset,
        cameras: args.cameras.clone().unwrap_or_else(|| args.dataset.default_cameras()),
        backbone: args.backbone.clone(),
        backbone_sha256: backbone.backbone().identity().id.clone(),
        layer: args.layer.map_or(depth.map_or(0, |d| d as i64 - 1), |l| l as i64),
        views: args.views,
        view_size,
        labels_params: labels.as_ref().map(|t| t.layout.params_hash.clone()),
        normalisation: backbone.normalisation(),
        dtype: args.dtype.clone(),
    };
    Ok((params, labels))
}

/// `mrdino features`.
pub fn run(args: &FeaturesArgs, shard: Option<Shard>) -> Result<ExitCode> {
    let started = Instant::now();
    let started_unix_s = unix_now();
    let device = parse_device(&args.device)?;
    let backbone = LoadedBackbone::load(
        BackboneRequest {
            name: Some(&args.backbone),
            weights: args.backbone_weights.as_deref(),
            model: None,
        },
        device,
    )?;
    let (params, labels) = resolve(args, &backbone)?;
    let params = crate::identity::continue_earlier_partition(
        &args.out,
        FEATURES_DATA_DIRS,
        params,
        &[backbone.backbone().identity()],
        FeaturesParams::hash,
    )?;
    let patch = backbone.backbone().patch_size();
    let processing = match params.views {
        // The windows are cut from the frames as the labels saw them.
        ViewsKind::Windows => args.dataset.reference_processing(),
        ViewsKind::Resize => Processing::Native,
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
    let hash = params.hash();
    let others: Vec<String> = partitions(&args.out, FEATURES_DATA_DIRS)
        .into_iter()
        .filter(|h| *h != hash)
        .collect();
    if !others.is_empty() {
        bail!(
            "{} holds features made with other parameters (params={}); a cache holds one backbone, layer and view \
             geometry: choose another --out",
            args.out.display(),
            others.join(", params=")
        );
    }
    let ledger = Ledger::new(&args.out, FEATURES_KIND, &hash);
    let writer = FeatureCacheWriter::new(&args.out);
    ledger.prepare(&[args.out.join("shards")])?;
    ledger.write_params(&params, CODE_VERSION)?;
    let plan = build_plan(FEATURES_KIND, &hash, args.dataset.name(), &sequences);
    ledger.write_plan(&plan)?;
    let units: Vec<(&Sequence, &PlannedUnit)> = sequences
        .iter()
        .zip(&plan.units)
        .filter(|(s, _)| in_shard(&s.id, shard))
        .collect();
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
    let kind = if params.dtype == "bf16" {
        Kind::BFloat16
    } else {
        Kind::Half
    };
    let driver = UnitDriver {
        ledger: &ledger,
        started,
        time_budget: args.time_budget,
        bar: Some(&bar),
        quiet: args.quiet,
    };
    let budget = args.time_budget;
    let run = driver.run(
        units,
        |sequence, _planned| {
            let mut encoder = Encoder {
                backbone: &backbone,
                layer: args.layer,
                kind,
                batch: args.batch,
                pending: Vec::new(),
                keys: Vec::new(),
                features: Vec::new(),
            };
            let frames = for_each_view(sequence, &params, labels.as_ref(), |view| {
                if budget.is_some_and(|b| started.elapsed() >= b) {
                    STOP.store(true, Ordering::SeqCst);
                }
                encoder.push(view)
            })?;
            encoder.flush()?;
            let n = encoder.keys.len();
            let (grid_h, grid_w) = (params.view_size.0 / patch, params.view_size.1 / patch);
            let features = if n == 0 {
                Tensor::zeros(
                    [0, grid_h * grid_w, backbone.backbone().feature_dim()],
                    (kind, Device::Cpu),
                )
            } else {
                Tensor::cat(&encoder.features, 0)
            };
            let meta = ShardMeta {
                unit: sequence.id.clone(),
                backbone: params.backbone.clone(),
                backbone_sha256: params.backbone_sha256.clone(),
                layer: params.layer,
                image_height: params.view_size.0,
                image_width: params.view_size.1,
                grid_height: grid_h,
                grid_width: grid_w,
                normalisation: params.normalisation.clone(),
                dtype: params.dtype.clone(),
                views: std::mem::take(&mut encoder.keys),
            };
            let raw = from_tch(mrdino_outputs::feature_cache::FEATURES_TENSOR, &features)?;
            let shard_file = writer.write_shard(&meta, &raw)?;
            Ok(UnitDone {
                counts: FeatureCounts { frames, views: n },
                files: vec![shard_file],
                failures: Vec::new(),
            })
        },
        |c| format!("{} views", c.views),
    );
    let totals = FeatureTotals {
        units: run.tally,
        views: run.done_counts().map(|c| c.views).sum(),
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
        "features: {} units done ({} views), {} already done, {} failed, {} interrupted in {:.1} s → {}",
        totals.units.done,
        totals.views,
        totals.units.skipped,
        totals.units.failed,
        totals.units.interrupted,
        totals.seconds,
        args.out.display()
    );
    Ok(exit)
}

/// Whether `out` holds a feature cache: a plan of the features job is in its bookkeeping.
pub fn is_feature_cache(out: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(out.join("_plan")) else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read(e.path())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|plan| plan["kind"] == FEATURES_KIND)
    })
}

/// Done / failed / missing units of a feature cache.
pub fn status(out: &Path, params: Option<&str>, num_shards: Option<NonZeroU64>) -> Result<Status<FeatureCounts>> {
    let choice = choose_partition(out, FEATURES_DATA_DIRS, params, WhenSeveral::Refuse)?;
    Ok(Ledger::new(out, FEATURES_KIND, &choice.params_hash).status(num_shards)?)
}

pub fn print_status(status: &Status<FeatureCounts>) {
    let views: usize = status.done.values().map(|m| m.payload.views).sum();
    let totals = format!("{views} views");
    crate::batch::print_job_status("features ", status, &totals);
}

/// Checks every planned unit is done and writes the merged manifest.
pub fn finalize(out: &Path, params: Option<&str>) -> Result<PathBuf> {
    let report = status(out, params, None)?;
    let markers = crate::batch::require_complete(&report, print_status)?;
    let ledger = Ledger::new(out, FEATURES_KIND, &report.plan.params_hash);
    let manifest = serde_json::json!({
        "kind": FEATURES_KIND,
        "params_hash": report.plan.params_hash,
        "params": ledger.read_params()?.unwrap_or(serde_json::Value::Null),
        "units": markers.len(),
        "views": markers.iter().map(|m| m.payload.views).sum::<usize>(),
        "seconds": markers.iter().map(|m| m.seconds).sum::<f64>(),
        "per_unit": markers,
    });
    Ok(ledger.write_final_manifest(&manifest)?)
}
