//! `mrdino train dinosaur`: baseline DINOSAUR training with the reference recipe, resumable.
//!
//! Parameters resolve in two phases as for `labels`: dataset preset < `--config FILE` (a JSON object with any
//! subset of the [`TrainParams`] keys; nested `model` / `augment` objects merge key by key) < flags. The
//! presets are the reference recipes (spec §3.5): KITTI 100k steps, batch 64, LR 4e-4, resize 378×1260,
//! random 378 crop, flip; TRI-PD 500k, 16, 1e-4, 490×980, 490 crop, flip; MOVi-E 500k, 64, 4e-4, 266×266, no
//! crop or flip; all with Adam (0.9, 0.999, 1e-8), linear warm-up over 10k steps then ×0.5 per 100k steps,
//! gradient-norm clip 1.0. `frames` uses the KITTI recipe.
//!
//! Features come from a feature cache (`--features CACHE`; the views are fixed, so no augmentation) or from
//! images through a frozen backbone (`--backbone NAME`): frames are decoded, resized (libtorch bicubic,
//! `align_corners = False`, no antialias, clamped to [0, 1] — torchvision 0.15 on tensors), randomly cropped
//! and flipped on CPU threads, batches handed to the device thread through a bounded channel. With a cache,
//! F and P come from the cache.
//!
//! Files in `RUN/` ([`RunLayout`]): `params.json`, `checkpoint.safetensors` (weights, Adam moments, step,
//! generator state; written atomically every `checkpoint_every` steps, at the end, and when stopped by
//! SIGINT/SIGTERM or `--time-budget`, which then exits with code 4), `metrics.jsonl` (one row per logging
//! step: step, loss, lr, grad_norm, mask_similarity, elapsed_s) and `loss.svg` (rewritten at each checkpoint).
//! Running the same command again resumes from the checkpoint: on CPU the continued run is identical to an
//! uninterrupted one, step for step (see `mrdino_model::train` for why). Metrics rows logged after the last
//! checkpoint of a killed run are dropped on resume and logged again.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use crossbeam_channel::{bounded, Receiver};
use mrdino_datasets::decode::read_processed;
use mrdino_datasets::{list_sequences, DatasetKind, Processing, SourceOptions};
use mrdino_model::backbone::{Backbone, BackboneRequest, LoadedBackbone};
use mrdino_model::dinosaur::{Dinosaur, DinosaurConfig};
use mrdino_model::optim::{Adam, AdamConfig, LrSchedule};
use mrdino_model::train::{sample_rng, train_step, CacheSource, FeatureSource, Sampler, StepMetrics, TrainError};
use mrdino_outputs::checkpoint::{read_tensor_file, TrainState};
use mrdino_outputs::feature_cache::FeatureCache;
use mrdino_outputs::write_atomic;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::engine::job::CODE_VERSION;
use crate::engine::stop::StopHandle;
use crate::engine::training::{
    check_saved_params, initial_state, prepare_run_dir, restore_training_state, run_steps, write_checkpoint,
    CheckpointMeta, LoopSettings, StepRunner,
};
use crate::settings::presets::Preset;
use crate::settings::{merge, read_config};

#[derive(Debug, clap::Subcommand)]
pub enum TrainCommand {
    /// Baseline DINOSAUR (slot attention + MLP decoder on frozen features), the reference recipe per dataset.
    Dinosaur(Box<DinosaurTrainArgs>),
}

#[derive(Debug, clap::Args)]
pub struct DinosaurTrainArgs {
    /// Dataset layout: kitti, tri-pd, movi-e, frames.
    #[arg(long)]
    pub dataset: String,
    /// Dataset root (needed when features are computed from images).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Run directory: checkpoint, metrics, plot. Rerunning the same command resumes.
    #[arg(long)]
    pub out: PathBuf,
    /// Recipe preset: kitti, tri-pd, movi-e (default: the dataset's; `frames` uses kitti).
    #[arg(long)]
    pub preset: Option<String>,
    /// JSON object of parameter overrides, e.g. {"steps": 1000, "model": {"n_slots": 7}}. Flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Train from this feature cache (written by `mrdino features`) instead of running a backbone.
    #[arg(long)]
    pub features: Option<PathBuf>,
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Base learning rate (after warm-up).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Write a checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Log metrics every N steps.
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Seed of sampling, augmentation, slot noise and initialisation.
    #[arg(long)]
    pub seed: Option<i64>,
    /// Threads decoding and augmenting images (at least 1; default: all cores).
    #[arg(long, value_parser = crate::cli::values::count)]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub run: crate::cli::groups::RunArgs,
    #[command(flatten)]
    pub device: crate::cli::groups::DeviceArgs,
    /// On-the-fly features instead of a cache: a ViT with its weights, or a seeded backbone without
    /// (`random-conv-p<PS>-c<C>[-pos]`, `random-colour-p<PS>-c<C>[-pos]`; for smoke runs and the demo).
    #[command(flatten)]
    pub backbone: crate::cli::groups::BackboneArgs,
}

/// Image preparation before the backbone (ignored with a feature cache).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentParams {
    pub resize_height: i64,
    pub resize_width: i64,
    /// Random crop size; equal to the resize size = no crop.
    pub crop_height: i64,
    pub crop_width: i64,
    pub random_flip: bool,
}

/// Everything that determines a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    pub preset: String,
    pub dataset: String,
    pub model: DinosaurConfig,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub lr_decay_rate: f64,
    pub lr_decay_steps: u64,
    pub clip_grad_norm: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub seed: i64,
    pub augment: AugmentParams,
    pub checkpoint_every: u64,
    pub log_every: u64,
}

impl TrainParams {
    /// The reference recipe of `preset` (`kitti`, `tri-pd`, `movi-e`; see `crate::settings::presets`).
    pub fn preset(preset: &str, dataset: &str) -> Option<Self> {
        let recipe = Preset::parse_model(preset)?.train();
        Some(Self {
            preset: preset.to_string(),
            dataset: dataset.to_string(),
            model: recipe.model,
            steps: recipe.steps,
            batch_size: recipe.batch_size,
            lr: recipe.lr,
            warmup_steps: 10_000,
            lr_decay_rate: 0.5,
            lr_decay_steps: 100_000,
            clip_grad_norm: 1.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            seed: 0,
            augment: AugmentParams {
                resize_height: recipe.resize.0,
                resize_width: recipe.resize.1,
                crop_height: recipe.crop.0,
                crop_width: recipe.crop.1,
                random_flip: recipe.random_flip,
            },
            checkpoint_every: 1000,
            log_every: 10,
        })
    }

    fn schedule(&self) -> LrSchedule {
        LrSchedule {
            base_lr: self.lr,
            warmup_steps: self.warmup_steps,
            decay_rate: self.lr_decay_rate,
            decay_steps: self.lr_decay_steps,
        }
    }

    /// The parameters a resumed run must share with the checkpoint (steps, logging and checkpoint cadence may
    /// change between runs).
    fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for k in ["steps", "checkpoint_every", "log_every"] {
                o.remove(k);
            }
        }
        v
    }

    fn validate(&self) -> Result<()> {
        self.model.validate().map_err(anyhow::Error::msg)?;
        ensure!(self.batch_size > 0, "batch_size must be positive");
        ensure!(
            self.checkpoint_every > 0 && self.log_every > 0,
            "checkpoint_every and log_every must be positive"
        );
        ensure!(
            self.lr >= 0.0 && self.lr.is_finite(),
            "lr must be a finite non-negative number"
        );
        let a = &self.augment;
        ensure!(
            a.crop_height > 0 && a.crop_width > 0 && a.crop_height <= a.resize_height && a.crop_width <= a.resize_width,
            "crop {}x{} must be positive and fit the resize {}x{}",
            a.crop_height,
            a.crop_width,
            a.resize_height,
            a.resize_width
        );
        Ok(())
    }
}

/// Preset < config file < flags.
pub fn resolve_params(args: &DinosaurTrainArgs) -> Result<TrainParams> {
    let kind = DatasetKind::parse(&args.dataset)
        .filter(|k| {
            matches!(
                k,
                DatasetKind::Kitti | DatasetKind::TriPd | DatasetKind::MoviE | DatasetKind::Frames
            )
        })
        .with_context(|| {
            format!(
                "unknown dataset `{}` (expected kitti, tri-pd, movi-e or frames)",
                args.dataset
            )
        })?;
    let file = args.config.as_deref().map(read_config).transpose()?;
    let preset = args
        .preset
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.get("preset")).and_then(|p| p.as_str()).map(str::to_string))
        .unwrap_or_else(|| Preset::for_dataset(kind).model().name().to_string());
    let base = TrainParams::preset(&preset, kind.name())
        .with_context(|| format!("unknown preset `{preset}` (expected kitti, tri-pd or movi-e)"))?;
    let mut value = serde_json::to_value(&base)?;
    if let Some(file) = &file {
        merge(&mut value, file);
    }
    let mut p: TrainParams = serde_json::from_value(value).context("invalid config file")?;
    p.preset = preset;
    p.dataset = kind.name().to_string();
    if let Some(v) = args.steps {
        p.steps = v;
    }
    if let Some(v) = args.batch_size {
        p.batch_size = v;
    }
    if let Some(v) = args.lr {
        p.lr = v;
    }
    if let Some(v) = args.warmup_steps {
        p.warmup_steps = v;
    }
    if let Some(v) = args.checkpoint_every {
        p.checkpoint_every = v;
    }
    if let Some(v) = args.log_every {
        p.log_every = v;
    }
    if let Some(v) = args.seed {
        p.seed = v;
    }
    Ok(p)
}

pub fn run(command: &TrainCommand, stop: &StopHandle) -> Result<std::process::ExitCode> {
    match command {
        TrainCommand::Dinosaur(args) => train_dinosaur(args, stop),
    }
}

pub(crate) fn build_backbone(name: &str, weights: Option<&Path>, device: Device) -> Result<Box<dyn Backbone>> {
    let request = BackboneRequest {
        name: Some(name),
        weights,
        model: None,
    };
    Ok(LoadedBackbone::load(request, device)?.into_backbone())
}

fn train_dinosaur(args: &DinosaurTrainArgs, stop: &StopHandle) -> Result<std::process::ExitCode> {
    let mut params = resolve_params(args)?;
    let device = args.device.device()?;
    let source: Box<dyn FeatureSource> = match (&args.features, &args.backbone.backbone) {
        (Some(dir), None) => {
            let cache =
                FeatureCache::open(dir).with_context(|| format!("cannot open feature cache {}", dir.display()))?;
            Box::new(CacheSource::new(cache, params.seed))
        }
        (None, Some(name)) => {
            let root = args
                .root
                .as_ref()
                .context("--root is needed to compute features from images")?;
            let backbone = build_backbone(name, args.backbone.backbone_weights.as_deref(), device)?;
            Box::new(ImageSource::new(&params, root, backbone, args.workers)?)
        }
        (Some(_), Some(_)) => bail!("give either --features or --backbone, not both"),
        (None, None) => bail!("give --features CACHE or --backbone NAME"),
    };
    ensure!(source.n_views() > 0, "no training views");
    // The data fixes F and P.
    params.model.feature_dim = source.channels();
    params.model.n_patches = source.n_patches();
    params.validate()?;

    let layout = prepare_run_dir(&args.out)?;
    tch::manual_seed(params.seed);
    let model = Dinosaur::new(params.model.clone(), device)?;
    let mut adam = Adam::new(
        model.named_parameters(),
        AdamConfig {
            beta1: params.adam_beta1,
            beta2: params.adam_beta2,
            eps: params.adam_eps,
        },
    );
    let backbone = (source.backbone_name(), source.backbone_id());
    let mut state = initial_state(params.seed);
    let checkpoint = layout.checkpoint_file();
    if checkpoint.is_file() {
        state = restore(&checkpoint, &params, &model, &mut adam)?;
        if !args.run.quiet {
            eprintln!("resuming {} at step {}", layout.dir.display(), state.step);
        }
    }
    write_atomic(
        &layout.params_file(),
        &serde_json::to_vec_pretty(&serde_json::json!({
            "code_version": CODE_VERSION,
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
        what: "trained",
    };
    let mut runner = DinosaurRunner {
        params: &params,
        model,
        adam,
        source,
        device,
        checkpoint,
        backbone,
    };
    run_steps(&settings, state, &mut runner)
}

/// One baseline step: features of the batch, noise, forward, MSE, backward, clip, Adam.
struct DinosaurRunner<'a> {
    params: &'a TrainParams,
    model: Dinosaur,
    adam: Adam,
    source: Box<dyn FeatureSource>,
    device: Device,
    checkpoint: PathBuf,
    backbone: (String, String),
}

impl StepRunner for DinosaurRunner<'_> {
    fn step(&mut self, step: u64, first_sample: u64) -> Result<StepMetrics> {
        let p = self.params;
        let features = self.source.batch(first_sample, p.batch_size, self.device)?;
        let lr = p.schedule().lr(step);
        train_step(
            &self.model,
            &mut self.adam,
            &features,
            p.seed,
            first_sample,
            lr,
            p.clip_grad_norm,
        )
        .map_err(|e| match e {
            TrainError::NonFinite { loss, .. } => anyhow::anyhow!("non-finite loss {loss} at step {step}"),
            e => e.into(),
        })
    }

    fn save(&self, state: &TrainState) -> Result<()> {
        save_checkpoint(
            &self.checkpoint,
            self.params,
            &self.backbone,
            &self.model,
            &self.adam,
            state,
        )
    }
}

fn save_checkpoint(
    path: &Path,
    params: &TrainParams,
    backbone: &(String, String),
    model: &Dinosaur,
    adam: &Adam,
    state: &TrainState,
) -> Result<()> {
    let meta = CheckpointMeta {
        stage: None,
        model_config: serde_json::to_string(&params.model)?,
        params: serde_json::to_string(params)?,
        backbone,
    };
    write_checkpoint(path, model.raw_parameters()?, adam, state, meta)
}

fn restore(path: &Path, params: &TrainParams, model: &Dinosaur, adam: &mut Adam) -> Result<TrainState> {
    let file = read_tensor_file(path)?;
    check_saved_params(&file, path, TrainParams::identity, params, &[], "DINOSAUR training", "")?;
    restore_training_state(&file, path, params.seed, model, adam)
}

/// On-the-fly features: frames → resize (bicubic, no antialias, clamped) → random crop → flip on CPU threads
/// (per-sample randomness from the seed), batches through a bounded channel to the backbone on the device.
struct ImageSource {
    backbone: Box<dyn Backbone>,
    n_views: usize,
    n_patches: i64,
    receiver: Option<(u64, Receiver<(u64, Result<Tensor, String>)>)>,
    /// The decoding thread; joined before a new one starts and when the source is dropped, so no decode is
    /// still inside OpenCV or libtorch while the process exits (that crashed with SIGSEGV at exit).
    producer: Option<std::thread::JoinHandle<()>>,
    paths: std::sync::Arc<Vec<PathBuf>>,
    augment: AugmentParams,
    seed: i64,
    workers: Option<usize>,
}

impl ImageSource {
    fn new(params: &TrainParams, root: &Path, backbone: Box<dyn Backbone>, workers: Option<usize>) -> Result<Self> {
        let kind = DatasetKind::parse(&params.dataset).context("dataset")?;
        let sequences = list_sequences(&SourceOptions {
            kind,
            root: root.to_path_buf(),
            cameras: None,
            processing: Some(Processing::Native),
        })
        .with_context(|| format!("cannot list {}", root.display()))?;
        let mut paths = Vec::new();
        for s in &sequences {
            let files = s
                .image_files()
                .with_context(|| format!("{}: video input is not supported for training", s.id))?;
            paths.extend(files.iter().map(|f| f.path.clone()));
        }
        let a = &params.augment;
        let ps = backbone.patch_size();
        ensure!(
            a.crop_height % ps == 0 && a.crop_width % ps == 0,
            "crop {}x{} is not a multiple of the patch size {ps}",
            a.crop_height,
            a.crop_width
        );
        Ok(Self {
            n_patches: (a.crop_height / ps) * (a.crop_width / ps),
            n_views: paths.len(),
            backbone,
            receiver: None,
            producer: None,
            paths: std::sync::Arc::new(paths),
            augment: a.clone(),
            seed: params.seed,
            workers,
        })
    }

    /// Stops the decoding thread: dropping the receiver makes its next send fail, then it is joined.
    fn stop(&mut self) {
        self.receiver = None;
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }

    fn start(&mut self, first_sample: u64, batch_size: usize) -> Result<()> {
        self.stop();
        let (tx, rx) = bounded(2);
        let paths = self.paths.clone();
        let augment = self.augment.clone();
        let seed = self.seed;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.workers.unwrap_or(0))
            .build()
            .context("cannot start the decoding threads")?;
        self.producer = Some(std::thread::spawn(move || {
            let mut sampler = Sampler::new(seed, paths.len());
            let mut first = first_sample;
            loop {
                let views: Vec<usize> = (0..batch_size as u64).map(|b| sampler.view(first + b)).collect();
                let images: Vec<Result<Tensor, String>> = pool.install(|| {
                    use rayon::prelude::*;
                    views
                        .par_iter()
                        .enumerate()
                        .map(|(b, &v)| prepare_image(&paths[v], &augment, seed, first + b as u64))
                        .collect()
                });
                let batch = images
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map(|v| Tensor::stack(&v, 0));
                if tx.send((first, batch)).is_err() {
                    return;
                }
                first += batch_size as u64;
            }
        }));
        self.receiver = Some((first_sample, rx));
        Ok(())
    }
}

/// One training image: decode, resize to the preset size (bicubic, `align_corners = False`, no antialias),
/// clamp to [0, 1], crop at a random offset, flip with probability ½. (3, crop_h, crop_w) float32.
fn prepare_image(path: &Path, a: &AugmentParams, seed: i64, sample: u64) -> Result<Tensor, String> {
    let (rgb, _) = read_processed(path, &Processing::Native).map_err(|e| e.to_string())?;
    let img = Tensor::from_data_size(&rgb.data, &[rgb.height as i64, rgb.width as i64, 3], Kind::Uint8)
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0;
    let img = img
        .unsqueeze(0)
        .upsample_bicubic2d([a.resize_height, a.resize_width], false, None, None)
        .clamp(0.0, 1.0)
        .squeeze_dim(0);
    let mut rng = sample_rng(seed, sample);
    let y = rng.below((a.resize_height - a.crop_height + 1) as u64) as i64;
    let x = rng.below((a.resize_width - a.crop_width + 1) as u64) as i64;
    let img = img.narrow(1, y, a.crop_height).narrow(2, x, a.crop_width);
    let flip = a.random_flip && rng.next_f64() < 0.5;
    Ok(if flip { img.flip([2]) } else { img.contiguous() })
}

impl Drop for ImageSource {
    fn drop(&mut self) {
        self.stop();
    }
}

impl FeatureSource for ImageSource {
    fn n_views(&self) -> usize {
        self.n_views
    }

    fn n_patches(&self) -> i64 {
        self.n_patches
    }

    fn channels(&self) -> i64 {
        self.backbone.feature_dim()
    }

    fn backbone_name(&self) -> String {
        self.backbone.name().to_string()
    }

    fn backbone_id(&self) -> String {
        self.backbone.identity().id.clone()
    }

    fn batch(&mut self, first_sample: u64, batch_size: usize, device: Device) -> Result<Tensor, TrainError> {
        let fresh = !matches!(&self.receiver, Some((next, _)) if *next == first_sample);
        if fresh {
            self.start(first_sample, batch_size)
                .map_err(|e| TrainError::Source(format!("{e:#}")))?;
        }
        let Some((next, rx)) = &mut self.receiver else {
            return Err(TrainError::Source("data pipeline not started".into()));
        };
        let (first, images) = rx
            .recv()
            .map_err(|_| TrainError::Source("data pipeline stopped".into()))?;
        if first != first_sample {
            return Err(TrainError::Source(format!(
                "expected batch at sample {first_sample}, got {first}"
            )));
        }
        *next = first_sample + batch_size as u64;
        let images = images.map_err(TrainError::Source)?;
        let features = self.backbone.features(&images).map_err(TrainError::Source)?;
        Ok(features.to_kind(Kind::Float).to_device(device))
    }
}
