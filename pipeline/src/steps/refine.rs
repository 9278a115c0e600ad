//! `mrdino refine stage1|stage2`: MR-DINOSAUR's refinement of a DINOSAUR model with pseudo-labels (spec §4, §5).
//!
//! * **Stage 1** (`refine stage1 --from BASELINE --labels LABELS --out RUN`): the baseline's weights, everything
//!   frozen except the perceptual grouping (input MLP and slot attention: `perceptual_grouping.*`); per batch
//!   the decoder alphas are upsampled bilinearly to the window's pixels, matched to the non-empty pseudo masks
//!   by the Hungarian algorithm on the mean BCE cost, and the weighted BCE of the matched pairs is minimised
//!   (`mrdino_model::refine::stage1_loss`). Adam 4e-6 constant, gradient-norm clip 1.0, batch 8, 15 epochs.
//! * **Stage 2** (`refine stage2 --from STAGE1_RUN --labels LABELS --out RUN`): everything frozen; the
//!   slot-deactivation MLP (hidden 2048 KITTI/TRI-PD, 1024 MOVi-E; PyTorch's default Linear init, zero biases)
//!   is trained with the NLL loss and the background weight α (0.4 KITTI, 0.2 TRI-PD and MOVi-E), drop
//!   threshold 0.99. Adam 4e-5 constant, clip 1.0, batch 8, one epoch but at most 2000 steps (KITTI, TRI-PD) or
//!   one epoch (MOVi-E). The reference's quirks are the defaults, each fix a flag: `--keep-largest-masks` (keep
//!   the K − 1 largest masks instead of the first K − 1 in id order), `--per-image-similarity` (compare an
//!   unmatched slot with its own image's matched slots instead of the whole batch's). An all-foreground window,
//!   whose background term the reference divides 0 by 0, contributes no background term.
//!
//! Views are the pseudo-label run's training windows ([`crate::refine_views`]): KITTI 378×378 windows of the
//! 1260×378 frame, TRI-PD 490×490 halves of 980×490, MOVi-E the 266 centre crop. Their features come from a
//! feature cache of those windows (`mrdino features --views windows --labels LABELS`, the default way: an epoch
//! costs no backbone forward) or from the frames through the backbone (`--backbone NAME --root ROOT`). The
//! instance masks are the windows' distinct non-zero ids in ascending order, one binary map each; ids above 255
//! stay distinct (the reference's uint8 window labels merge them).
//!
//! An epoch is N samples, N the number of views; sample n draws view `Sampler(seed).view(n)` (a fresh
//! permutation per epoch) and slot noise `slot_noise(seed, [n])`, so batches do not depend on threads and a
//! resumed run continues exactly (as `train dinosaur`). Batches are always full: the last batch of an epoch
//! takes its remaining samples from the next epoch's permutation (the reference's data loader ends an epoch
//! with a smaller batch instead). Steps = ⌈epochs · N / batch⌉, capped by `max_steps`.
//!
//! Files in `RUN/` as for `train dinosaur`: `params.json`, `checkpoint.safetensors` (all DINOSAUR weights,
//! stage 2 also `object_decoder.slot_decoder.{0,2,4,6}.{weight,bias}`, Adam moments of the trained tensors,
//! step and generator state; `mrdino.stage` = `stage1` or `stage2`), `metrics.jsonl`, `loss.svg`; SIGINT,
//! SIGTERM or `--time-budget` checkpoint and exit with code 4; the same command resumes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use mrdino_datasets::decode::read_processed;
use mrdino_datasets::DatasetKind;
use mrdino_model::backbone::{Backbone, BackboneRequest, LoadedBackbone};
use mrdino_model::dinosaur::{masks_to_image, slot_noise, Dinosaur};
use mrdino_model::optim::{Adam, AdamConfig};
use mrdino_model::refine::{
    stage1_loss, stage2_loss, weighted_masks, SlotDeactivation, Stage2Inputs, Stage2Options, SIMILARITY_THRESHOLD,
};
use mrdino_model::tensors::{from_tch, to_tch};
use mrdino_model::train::{CacheSource, FeatureSource, Sampler, StepMetrics};
use mrdino_model::views::{batch_instance_masks, instance_masks};
use mrdino_outputs::checkpoint::{
    read_tensor_file, TrainState, META_BACKBONE, META_BACKBONE_SHA256,
};
use mrdino_outputs::feature_cache::{FeatureCache, ViewKey};
use mrdino_outputs::weights_id::{self, Identity};
use mrdino_outputs::write_atomic;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::engine::job::CODE_VERSION;
use crate::engine::runs::read_label_tables;
use crate::engine::stop::StopHandle;
use crate::engine::training::{
    check_saved_params, initial_state, prepare_run_dir, restore_training_state, run_steps, write_checkpoint,
    CheckpointMeta, LoopSettings, StepRunner,
};
use crate::settings::presets::Preset;
use crate::settings::{merge, read_config};
use mrdino_model::refine_views::LabelIndex;
use mrdino_outputs::checkpoint::read_model_file;

/// Stage tags in checkpoints (`mrdino.stage`).
pub const STAGE1: &str = "stage1";
pub const STAGE2: &str = "stage2";
/// Key prefix of the trainable tensors of stage 1.
const GROUPING_PREFIX: &str = "perceptual_grouping.";

#[derive(Debug, clap::Subcommand)]
pub enum RefineCommand {
    /// Stage 1: refine the slot attention of a baseline DINOSAUR on the pseudo-labels' masks.
    Stage1(Box<RefineArgs>),
    /// Stage 2: train the slot-deactivation head on top of a stage-1 model.
    Stage2(Box<RefineArgs>),
}

#[derive(Debug, clap::Args)]
pub struct RefineArgs {
    /// The model to start from: a run directory (its checkpoint) or a model file. Stage 1: a baseline
    /// DINOSAUR; stage 2: a stage-1 run.
    #[arg(long)]
    pub from: PathBuf,
    /// Pseudo-label run (`mrdino labels`) whose instances are the targets.
    #[arg(long)]
    pub labels: PathBuf,
    /// Run directory: checkpoint, metrics, plot. Rerunning the same command resumes.
    #[arg(long)]
    pub out: PathBuf,
    /// Feature cache of the labels' windows (`mrdino features --views windows --labels LABELS`).
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Dataset root, for on-the-fly features (frames are read from the paths the labels recorded).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Recipe preset: kitti, tri-pd, movi-e (default: from the labels' dataset; frame folders use kitti).
    #[arg(long)]
    pub preset: Option<String>,
    /// JSON object of parameter overrides ({"epochs": 2, "stage2": {"hidden": 512}}); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Epochs over the views (stage 1: 15; stage 2: 1).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Total steps (overrides epochs and max_steps).
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of sampling, slot noise and (stage 2) the head's initialisation.
    #[arg(long)]
    pub seed: Option<i64>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Stage 2: α, weight of the background term (0.4 KITTI, 0.2 TRI-PD and MOVi-E).
    #[arg(long)]
    pub background_weight: Option<f64>,
    /// Stage 2: hidden width of the slot-deactivation MLP (2048 KITTI/TRI-PD, 1024 MOVi-E).
    #[arg(long)]
    pub hidden: Option<i64>,
    /// Stage 2 fix: keep the K − 1 largest masks when there are ≥ K (the reference keeps the first K − 1 by id).
    #[arg(long)]
    pub keep_largest_masks: bool,
    /// Stage 2 fix: compare unmatched slots with the matched slots of the same image (the reference compares
    /// with the whole batch's).
    #[arg(long)]
    pub per_image_similarity: bool,
    #[command(flatten)]
    pub run: crate::cli::groups::RunArgs,
    #[command(flatten)]
    pub device: crate::cli::groups::DeviceArgs,
    /// On-the-fly features instead of a cache (with --root); a `--from` model file that embeds its backbone
    /// brings its own.
    #[command(flatten)]
    pub backbone: crate::cli::groups::BackboneArgs,
}

/// Stage-2 settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage2Params {
    pub background_weight: f64,
    pub similarity_threshold: f64,
    pub hidden: i64,
    pub keep_largest_masks: bool,
    pub per_image_similarity: bool,
}

impl Stage2Params {
    fn options(&self) -> Stage2Options {
        Stage2Options {
            background_weight: self.background_weight,
            similarity_threshold: self.similarity_threshold,
            keep_largest_masks: self.keep_largest_masks,
            per_image_similarity: self.per_image_similarity,
        }
    }
}

/// Everything that determines a refinement run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefineParams {
    pub stage: String,
    pub preset: String,
    pub dataset: String,
    pub epochs: f64,
    /// Cap on the steps of the epochs (stage 2 KITTI/TRI-PD: 2000).
    pub max_steps: Option<u64>,
    /// Resolved from epochs, views and max_steps unless given.
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub clip_grad_norm: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub seed: i64,
    pub checkpoint_every: u64,
    pub log_every: u64,
    /// Identity of the model the run started from (`mrdino_outputs::weights_id`; the field keeps its name).
    pub from_sha256: String,
    /// Partition (parameter hash) of the labels run.
    pub labels_params: String,
    pub stage2: Option<Stage2Params>,
}

impl RefineParams {
    /// The reference recipe of `stage` for `preset` (see `crate::settings::presets`).
    pub fn preset(stage: &str, preset: &str, dataset: &str) -> Option<Self> {
        let stage2 = match stage {
            STAGE1 => false,
            STAGE2 => true,
            _ => return None,
        };
        let recipe = Preset::parse_model(preset)?.refine(stage2);
        let (epochs, max_steps, lr) = (recipe.epochs, recipe.max_steps, recipe.lr);
        let stage2 = recipe.stage2.map(|(background_weight, hidden)| Stage2Params {
            background_weight,
            similarity_threshold: SIMILARITY_THRESHOLD,
            hidden,
            keep_largest_masks: false,
            per_image_similarity: false,
        });
        Some(Self {
            stage: stage.to_string(),
            preset: preset.to_string(),
            dataset: dataset.to_string(),
            epochs,
            max_steps,
            steps: 0,
            batch_size: 8,
            lr,
            clip_grad_norm: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            seed: 0,
            checkpoint_every: 500,
            log_every: 10,
            from_sha256: String::new(),
            labels_params: String::new(),
            stage2,
        })
    }

    /// The parameters a resumed run must share with its checkpoint.
    fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for k in ["steps", "checkpoint_every", "log_every", "epochs", "max_steps"] {
                o.remove(k);
            }
        }
        v
    }

    fn validate(&self) -> Result<()> {
        ensure!(self.batch_size > 0, "batch_size must be positive");
        ensure!(
            self.checkpoint_every > 0 && self.log_every > 0,
            "checkpoint_every and log_every must be positive"
        );
        ensure!(
            self.lr >= 0.0 && self.lr.is_finite(),
            "lr must be a finite non-negative number"
        );
        ensure!(
            self.epochs >= 0.0 && self.epochs.is_finite(),
            "epochs must be a finite non-negative number"
        );
        if let Some(s2) = &self.stage2 {
            ensure!(s2.hidden > 0, "stage2.hidden must be positive");
            ensure!(
                s2.background_weight.is_finite() && s2.background_weight >= 0.0,
                "stage2.background_weight must be a finite non-negative number"
            );
        }
        Ok(())
    }
}

/// Preset < config file < flags; `steps` stays 0 until the number of views is known.
fn resolve_params(stage: &str, args: &RefineArgs, dataset: DatasetKind) -> Result<RefineParams> {
    let file = args.config.as_deref().map(read_config).transpose()?;
    let preset = args
        .preset
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.get("preset")).and_then(|p| p.as_str()).map(str::to_string))
        .unwrap_or_else(|| Preset::for_dataset(dataset).model().name().to_string());
    let base = RefineParams::preset(stage, &preset, dataset.name())
        .with_context(|| format!("unknown preset `{preset}` (expected kitti, tri-pd or movi-e)"))?;
    let mut value = serde_json::to_value(&base)?;
    if let Some(file) = &file {
        merge(&mut value, file);
    }
    let mut p: RefineParams = serde_json::from_value(value).context("invalid config file")?;
    p.stage = stage.to_string();
    p.preset = preset;
    p.dataset = dataset.name().to_string();
    if let Some(v) = args.epochs {
        p.epochs = v;
    }
    if let Some(v) = args.steps {
        p.steps = v;
        p.max_steps = None;
    }
    if let Some(v) = args.batch_size {
        p.batch_size = v;
    }
    if let Some(v) = args.lr {
        p.lr = v;
    }
    if let Some(v) = args.seed {
        p.seed = v;
    }
    if let Some(v) = args.checkpoint_every {
        p.checkpoint_every = v;
    }
    if let Some(v) = args.log_every {
        p.log_every = v;
    }
    match (&mut p.stage2, stage) {
        (Some(s2), STAGE2) => {
            if let Some(v) = args.background_weight {
                s2.background_weight = v;
            }
            if let Some(v) = args.hidden {
                s2.hidden = v;
            }
            s2.keep_largest_masks |= args.keep_largest_masks;
            s2.per_image_similarity |= args.per_image_similarity;
        }
        _ => {
            if args.background_weight.is_some()
                || args.hidden.is_some()
                || args.keep_largest_masks
                || args.per_image_similarity
            {
                bail!(
                    "--background-weight, --hidden, --keep-largest-masks and --per-image-similarity are stage-2 flags"
                );
            }
            p.stage2 = None;
        }
    }
    Ok(p)
}

pub fn run(command: &RefineCommand, stop: &StopHandle) -> Result<ExitCode> {
    match command {
        RefineCommand::Stage1(args) => refine(STAGE1, args, stop),
        RefineCommand::Stage2(args) => refine(STAGE2, args, stop),
    }
}

/// Where a refinement batch comes from: features (B, P, C) and instance masks (B, C_max, S, S).
trait ViewSource {
    fn n_views(&self) -> usize;
    fn n_patches(&self) -> i64;
    fn channels(&self) -> i64;
    fn backbone(&self) -> (String, String);
    /// The identity of the backbone's weights when they are at hand (not for cached features).
    fn backbone_identity(&self) -> Option<&Identity>;
    fn batch(&mut self, first_sample: u64, batch_size: usize, device: Device) -> Result<(Tensor, Tensor)>;
}

/// The masks of a batch of views, zero-padded to the largest instance count.
fn batch_masks(labels: &LabelIndex, keys: &[&ViewKey]) -> Result<Tensor> {
    let px = labels.layout.view_px();
    let masks: Vec<Tensor> = keys
        .par_iter()
        .map(|key| {
            let view = labels.view(key, None)?;
            Ok(instance_masks(&view.ids, px, px)?.1)
        })
        .collect::<Result<_>>()?;
    Ok(batch_instance_masks(&masks)?)
}

/// Features of the windows from a feature cache (read as `train dinosaur` reads it; the masks of the same
/// views from the labels).
struct CachedViews {
    source: CacheSource,
    sampler: Sampler,
    labels: LabelIndex,
}

impl CachedViews {
    fn new(cache: FeatureCache, labels: LabelIndex, seed: i64) -> Result<Self> {
        let px = labels.layout.view_px() as i64;
        let meta = cache.meta();
        ensure!(
            (meta.image_height, meta.image_width) == (px, px),
            "the feature cache holds {}x{} views, the refinement windows of this dataset are {px}x{px} (make the \
             cache with `mrdino features --views windows --labels …`)",
            meta.image_width,
            meta.image_height
        );
        // Every cached view must be a window of a labelled frame of this run (checked by lookup here; the
        // window's masks are computed when a batch draws it).
        for v in 0..cache.n_views() {
            let key = cache.view_key(v).context("feature cache view without a key")?;
            if key.window.is_none() || labels.frame(&key.sequence_id, key.frame_index).is_none() {
                bail!(
                    "the feature cache does not match the labels run: view {} frame {} ({:?}) is not a training \
                     window of a labelled frame",
                    key.sequence_id,
                    key.frame_index,
                    key.window
                );
            }
        }
        Ok(Self {
            sampler: Sampler::new(seed, cache.n_views()),
            source: CacheSource::new(cache, seed),
            labels,
        })
    }
}

impl ViewSource for CachedViews {
    fn n_views(&self) -> usize {
        self.source.n_views()
    }

    fn n_patches(&self) -> i64 {
        self.source.n_patches()
    }

    fn channels(&self) -> i64 {
        self.source.channels()
    }

    fn backbone(&self) -> (String, String) {
        (self.source.backbone_name(), self.source.backbone_id())
    }

    fn backbone_identity(&self) -> Option<&Identity> {
        None
    }

    fn batch(&mut self, first_sample: u64, batch_size: usize, device: Device) -> Result<(Tensor, Tensor)> {
        let features = self.source.batch(first_sample, batch_size, device)?;
        let cache = self.source.cache();
        let keys = (0..batch_size as u64)
            .map(|b| cache.view_key(self.sampler.view(first_sample + b)).context("view key"))
            .collect::<Result<Vec<_>>>()?;
        let masks = batch_masks(&self.labels, &keys)?.to_device(device);
        Ok((features, masks))
    }
}

/// Features of the windows computed from the frames through the backbone.
struct ImageViews {
    backbone: Box<dyn Backbone>,
    /// The dataset root the labels' `source_path`s are relative to.
    root: PathBuf,
    keys: Vec<ViewKey>,
    sampler: Sampler,
    labels: LabelIndex,
}

impl ImageViews {
    fn new(backbone: Box<dyn Backbone>, root: &Path, labels: LabelIndex, seed: i64) -> Result<Self> {
        let px = labels.layout.view_px() as i64;
        ensure!(
            px % backbone.patch_size() == 0,
            "{px} px windows are not a multiple of the backbone's patch {}",
            backbone.patch_size()
        );
        let keys = labels.all_views()?;
        Ok(Self {
            sampler: Sampler::new(seed, keys.len()),
            backbone,
            root: root.to_path_buf(),
            keys,
            labels,
        })
    }
}

/// The pixels of one window (3, S, S) in [0, 1], read from the frame the labels recorded.
fn window_image(labels: &LabelIndex, root: &Path, key: &ViewKey) -> Result<Tensor> {
    let (row, _) = labels.id_map(&key.sequence_id, key.frame_index)?;
    let kind = DatasetKind::parse(&row.dataset)
        .with_context(|| format!("{}: unknown dataset `{}` in the labels", row.sequence_id, row.dataset))?;
    let path = &root.join(&row.source_path);
    let (rgb, _) = read_processed(path, &kind.reference_processing()).with_context(|| {
        format!(
            "{} frame {}: cannot read {} as an image (video input needs a feature cache: `mrdino features \
                 --views windows`)",
            row.sequence_id,
            row.frame_name,
            path.display()
        )
    })?;
    ensure!(
        (rgb.height, rgb.width) == (row.height as usize, row.width as usize),
        "{}: reads as {}x{}, the labels' grid is {}x{}",
        path.display(),
        rgb.width,
        rgb.height,
        row.width,
        row.height
    );
    labels
        .view(key, Some(&rgb.data))?
        .image
        .context("a view without pixels")
}

impl ViewSource for ImageViews {
    fn n_views(&self) -> usize {
        self.keys.len()
    }

    fn n_patches(&self) -> i64 {
        let g = self.labels.layout.view_px() as i64 / self.backbone.patch_size();
        g * g
    }

    fn channels(&self) -> i64 {
        self.backbone.feature_dim()
    }

    fn backbone(&self) -> (String, String) {
        (self.backbone.name().to_string(), self.backbone.identity().id.clone())
    }

    fn backbone_identity(&self) -> Option<&Identity> {
        Some(self.backbone.identity())
    }

    fn batch(&mut self, first_sample: u64, batch_size: usize, device: Device) -> Result<(Tensor, Tensor)> {
        let keys: Vec<&ViewKey> = (0..batch_size as u64)
            .map(|b| &self.keys[self.sampler.view(first_sample + b)])
            .collect();
        let images: Vec<Tensor> = keys
            .par_iter()
            .map(|k| window_image(&self.labels, &self.root, k))
            .collect::<Result<_>>()?;
        let features = self
            .backbone
            .features(&Tensor::stack(&images, 0))
            .map_err(anyhow::Error::msg)?
            .to_kind(Kind::Float)
            .to_device(device);
        let masks = batch_masks(&self.labels, &keys)?.to_device(device);
        Ok((features, masks))
    }
}

/// The stage-2 head with its own variable store (keys `object_decoder.slot_decoder.*`).
struct Head {
    vs: nn::VarStore,
    mlp: SlotDeactivation,
}

impl Head {
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

fn refine(stage: &str, args: &RefineArgs, stop: &StopHandle) -> Result<ExitCode> {
    let device = args.device.device()?;
    let tables = read_label_tables(&args.labels, None)?;
    let labels_params = tables.layout.params_hash.clone();
    let dataset = tables
        .frames
        .first()
        .and_then(|f| DatasetKind::parse(&f.dataset))
        .with_context(|| format!("{}: the labels run has no frames", args.labels.display()))?;
    let mut params = resolve_params(stage, args, dataset)?;
    let (from, from_file, from_identity) =
        read_model_file(&args.from).with_context(|| format!("cannot read model {}", args.from.display()))?;
    let labels = LabelIndex::new(tables, Preset::for_dataset(dataset).window_layout());
    let mut source: Box<dyn ViewSource> = match (&args.features, &args.backbone.backbone) {
        (Some(dir), None) => {
            let cache =
                FeatureCache::open(dir).with_context(|| format!("cannot open feature cache {}", dir.display()))?;
            Box::new(CachedViews::new(cache, labels, params.seed)?)
        }
        (None, Some(name)) => {
            let root = args
                .root
                .as_deref()
                .context("--backbone computes features from the frames: give the dataset --root the labels read")?;
            let request = BackboneRequest {
                name: Some(name),
                weights: args.backbone.backbone_weights.as_deref(),
                model: Some((&from_file, &from)),
            };
            let backbone = LoadedBackbone::load(request, device)?.into_backbone();
            Box::new(ImageViews::new(backbone, root, labels, params.seed)?)
        }
        (Some(_), Some(_)) => bail!("give either --features or --backbone, not both"),
        (None, None) => bail!("give --features CACHE (the labels' windows) or --backbone NAME"),
    };
    let n_views = source.n_views();
    ensure!(
        n_views > 0,
        "{}: no training windows (no labelled frame with instances)",
        args.labels.display()
    );
    if args.steps.is_none() && params.steps == 0 {
        let samples = (params.epochs * n_views as f64).ceil() as u64;
        params.steps = samples.div_ceil(params.batch_size.max(1) as u64);
        if let Some(cap) = params.max_steps {
            params.steps = params.steps.min(cap);
        }
    }
    params.from_sha256 = from_identity.id.clone();
    params.labels_params = labels_params;
    params.validate()?;

    let backbone = source.backbone();
    if let Some(recorded) = from_file.meta(META_BACKBONE_SHA256).filter(|s| !s.is_empty()) {
        let same = match source.backbone_identity() {
            Some(identity) => identity.matches(recorded),
            None => recorded == backbone.1,
        };
        ensure!(
            same,
            "{} was trained on features of backbone {} (weights {}), the refinement features come from {} \
             (weights {}){}",
            from.display(),
            from_file.meta(META_BACKBONE).unwrap_or("?"),
            weights_id::short(recorded),
            backbone.0,
            weights_id::short(&backbone.1),
            if weights_id::is_earlier_rule(recorded) || weights_id::is_earlier_rule(&backbone.1) {
                "; one of them was recorded by an earlier mrdino as a file's SHA-256: redo the older of the two \
                 (`mrdino features` into a new --out, or `train`) with this mrdino, or refine from images with \
                 --backbone and the weights file"
            } else {
                ""
            }
        );
    }
    let model = Dinosaur::from_tensor_file(&from_file, &from, None, device)?;
    let c = model.config().clone();
    ensure!(
        c.n_patches == source.n_patches() && c.feature_dim == source.channels(),
        "{} expects {} patches of {} channels, the refinement views give {} of {}",
        from.display(),
        c.n_patches,
        c.feature_dim,
        source.n_patches(),
        source.channels()
    );
    let trainable_prefix = (stage == STAGE1).then_some(GROUPING_PREFIX);
    let mut trainable = Vec::new();
    for (name, t) in model.named_parameters() {
        if trainable_prefix.is_some_and(|p| name.starts_with(p)) {
            trainable.push((name, t));
        } else {
            let _ = t.set_requires_grad(false);
        }
    }
    let head = match &params.stage2 {
        Some(s2) => {
            tch::manual_seed(params.seed);
            let vs = nn::VarStore::new(device);
            let mlp = SlotDeactivation::new(&(vs.root() / "object_decoder" / "slot_decoder"), c.slot_dim, s2.hidden);
            let head = Head { vs, mlp };
            trainable.extend(head.named_parameters());
            Some(head)
        }
        None => None,
    };
    let mut adam = Adam::new(
        trainable,
        AdamConfig {
            beta1: params.adam_beta1,
            beta2: params.adam_beta2,
            eps: params.adam_eps,
        },
    );

    let layout = prepare_run_dir(&args.out)?;
    let checkpoint = layout.checkpoint_file();
    let mut state = initial_state(params.seed);
    if checkpoint.is_file() {
        state = restore(&checkpoint, &params, &from_identity, &model, head.as_ref(), &mut adam)?;
        if !args.run.quiet {
            eprintln!("resuming {} at step {}", layout.dir.display(), state.step);
        }
    }
    write_atomic(
        &layout.params_file(),
        &serde_json::to_vec_pretty(&serde_json::json!({
            "code_version": CODE_VERSION,
            "from": from,
            "labels": args.labels,
            "views": n_views,
            "backbone": backbone.0,
            "backbone_sha256": backbone.1,
            "params": params,
        }))?,
    )?;
    let settings = LoopSettings {
        layout: &layout,
        steps: params.steps,
        batch_size: params.batch_size as u64,
        seed: params.seed,
        checkpoint_every: params.checkpoint_every,
        log_every: params.log_every,
        stop: &stop.with_budget(args.run.time_budget),
        quiet: args.run.quiet,
        what: if stage == STAGE1 {
            "refined (stage 1)"
        } else {
            "refined (stage 2)"
        },
    };
    let mut runner = RefineRunner {
        params: &params,
        model,
        head,
        adam,
        source: source.as_mut(),
        device,
        checkpoint,
        backbone,
    };
    run_steps(&settings, state, &mut runner)
}

struct RefineRunner<'a> {
    params: &'a RefineParams,
    model: Dinosaur,
    head: Option<Head>,
    adam: Adam,
    source: &'a mut dyn ViewSource,
    device: Device,
    checkpoint: PathBuf,
    backbone: (String, String),
}

impl StepRunner for RefineRunner<'_> {
    fn step(&mut self, _step: u64, first_sample: u64) -> Result<StepMetrics> {
        let p = self.params;
        let c = self.model.config();
        let (features, masks) = self.source.batch(first_sample, p.batch_size, self.device)?;
        let size = masks.size();
        let (h, w) = (size[2], size[3]);
        let indices: Vec<i64> = (0..p.batch_size as i64).map(|i| first_sample as i64 + i).collect();
        let noise = slot_noise(p.seed, &indices, 1, c.n_slots, c.slot_dim, self.device);
        self.adam.zero_grad();
        let (loss, mask_similarity) = match &self.head {
            None => {
                let out = self.model.forward(&features, &noise)?;
                let alpha = masks_to_image(&out.masks, h, w)?;
                (stage1_loss(&alpha, &masks)?.loss, out.mask_similarity())
            }
            Some(head) => {
                let out = tch::no_grad(|| self.model.forward(&features, &noise))?;
                let s2 = p.stage2.as_ref().context("stage-2 parameters")?;
                let weights = head.mlp.weights(&out.slots)?;
                let soft = weighted_masks(&out.masks, &weights)?;
                let alpha = masks_to_image(&out.masks, h, w)?;
                let weighted_alpha = masks_to_image(&soft.weighted_alpha, h, w)?;
                let foreground = masks_to_image(&soft.foreground, h, w)?;
                let inputs = Stage2Inputs {
                    slots: &out.slots,
                    alpha: &alpha,
                    weighted_alpha: &weighted_alpha,
                    foreground: &foreground,
                    masks: &masks,
                };
                (stage2_loss(&inputs, &s2.options())?.loss, out.mask_similarity())
            }
        };
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            bail!("non-finite loss {value} at sample {first_sample}");
        }
        loss.backward();
        let grad_norm = self.adam.clip_grad_norm(p.clip_grad_norm);
        self.adam.step(p.lr);
        Ok(StepMetrics {
            loss: value,
            lr: p.lr,
            grad_norm,
            mask_similarity,
        })
    }

    fn save(&self, state: &TrainState) -> Result<()> {
        let mut tensors = self.model.raw_parameters()?;
        if let Some(head) = &self.head {
            for (name, t) in head.named_parameters() {
                tensors.push(from_tch(&name, &t)?);
            }
        }
        let meta = CheckpointMeta {
            stage: Some(&self.params.stage),
            model_config: serde_json::to_string(self.model.config())?,
            params: serde_json::to_string(self.params)?,
            backbone: &self.backbone,
        };
        write_checkpoint(&self.checkpoint, tensors, &self.adam, state, meta)
    }
}

fn restore(
    path: &Path,
    params: &RefineParams,
    from: &Identity,
    model: &Dinosaur,
    head: Option<&Head>,
    adam: &mut Adam,
) -> Result<TrainState> {
    let file = read_tensor_file(path)?;
    check_saved_params(
        &file,
        path,
        RefineParams::identity,
        params,
        &[from],
        "refinement",
        " or from another model",
    )?;
    if let Some(head) = head {
        for (name, mut var) in head.named_parameters() {
            let raw = file
                .get(&name)
                .with_context(|| format!("{}: stage-2 checkpoint lacks {name}", path.display()))?;
            let value = to_tch(raw, model.device())?;
            ensure!(
                value.size() == var.size(),
                "{}: {name} has shape {:?}, expected {:?}",
                path.display(),
                value.size(),
                var.size()
            );
            tch::no_grad(|| var.copy_(&value));
        }
    }
    restore_training_state(&file, path, params.seed, model, adam)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_carry_the_reference_recipes() {
        let s1 = RefineParams::preset(STAGE1, "kitti", "kitti").expect("preset");
        assert_eq!((s1.epochs, s1.batch_size, s1.lr, s1.max_steps), (15.0, 8, 4e-6, None));
        assert!(s1.stage2.is_none());
        let s2 = RefineParams::preset(STAGE2, "kitti", "kitti").expect("preset");
        assert_eq!((s2.epochs, s2.lr, s2.max_steps), (1.0, 4e-5, Some(2000)));
        let h = s2.stage2.expect("stage 2");
        assert_eq!(
            (h.background_weight, h.hidden, h.similarity_threshold),
            (0.4, 2048, 0.99)
        );
        assert!(!h.keep_largest_masks && !h.per_image_similarity);
        let pd = RefineParams::preset(STAGE2, "tri-pd", "tri-pd")
            .expect("preset")
            .stage2
            .expect("stage 2");
        assert_eq!((pd.background_weight, pd.hidden), (0.2, 2048));
        let movi = RefineParams::preset(STAGE2, "movi-e", "movi-e").expect("preset");
        assert_eq!(movi.max_steps, None);
        assert_eq!(movi.stage2.expect("stage 2").hidden, 1024);
        assert!(RefineParams::preset(STAGE1, "coco", "frames").is_none());
    }
}
