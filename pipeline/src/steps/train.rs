//! `mrdino train dinosaur`: baseline DINOSAUR training with the reference recipe, resumable.
//!
//! Parameters: `crate::settings::train` (preset < `--config FILE` < flags, every value checked before any work).
//! Features come from a feature cache (`--features CACHE`; the views are fixed, so no augmentation) or from images
//! through a frozen backbone (`--backbone NAME`, `mrdino_model::loader::ImageSource`: frames decoded, resized,
//! randomly cropped and flipped on CPU threads). The data fixes F and P.
//!
//! Before the model is allocated the run is refused when `--out` is, holds or lies inside an input, when the
//! batch is larger than the data's views, or when one step's estimated memory exceeds what the machine has
//! available (`crate::engine::training`).
//!
//! Files in `RUN/` ([`RunLayout`](mrdino_outputs::checkpoint::RunLayout)): `params.json`,
//! `checkpoint.safetensors` (weights, Adam moments, step, generator state; no `mrdino.stage`, i.e. a baseline;
//! written atomically every `checkpoint_every` steps, at the end, and when stopped by SIGINT/SIGTERM or
//! `--time-budget`, which then exits with code 4), `metrics.jsonl` (one row per logging step: step, loss, lr,
//! grad_norm, mask_similarity, attention_entropy, and at the collapse check steps the verdict) and `loss.svg`
//! (rewritten at each checkpoint). Running the same command again resumes from the checkpoint: on CPU the
//! continued run is identical to an uninterrupted one, step for step (see `mrdino_model::train` for why).
//!
//! `--candidates N` first trains N restarts and continues the one whose slots split best ([`candidates`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use mrdino_datasets::DatasetKind;
use mrdino_model::backbone::{patch_size_of, BackboneRequest, LoadedBackbone};
use mrdino_model::collapse::Verdict;
use mrdino_model::patch_scale::PRESET_PATCH_PX;
use mrdino_model::dinosaur::{seeded, Dinosaur};
use mrdino_model::loader::ImageSource;
use mrdino_model::memory::{self, StepKind};
use mrdino_model::optim::{Adam, AdamConfig};
use mrdino_model::train::{train_step, CacheSource, FeatureSource, StepMetrics, TrainError};
use mrdino_outputs::checkpoint::{read_tensor_file, RunLayout, TrainState};
use mrdino_outputs::feature_cache::FeatureCache;
use mrdino_outputs::write_atomic;
use tch::Device;

use crate::cli::train::{DinosaurTrainArgs, TrainCommand};
use crate::engine::job::CODE_VERSION;
use crate::engine::stop::StopHandle;
use crate::engine::training::{
    check_batch, check_saved_params, initial_state, prepare_run_dir,
    restore_training_state, run_steps, write_checkpoint, CheckpointMeta, LoopSettings, StepRunner,
};
use crate::settings::train::{self as settings, TrainParams};

mod candidates;

pub fn run(command: &TrainCommand, stop: &StopHandle) -> Result<ExitCode> {
    match command {
        TrainCommand::Dinosaur(args) => train_dinosaur(args, stop),
    }
}

/// Every input of the run, for the `--out` check.
fn inputs(args: &DinosaurTrainArgs) -> Vec<(&'static str, &Path)> {
    let mut inputs = Vec::new();
    if let Some(p) = &args.features {
        inputs.push(("--features", p.as_path()));
    }
    if let Some(p) = &args.root {
        inputs.push(("--root", p.as_path()));
    }
    inputs
}

/// The feature cache or the images through the backbone.
fn open_source(args: &DinosaurTrainArgs, params: &TrainParams, device: Device) -> Result<Box<dyn FeatureSource>> {
    Ok(match (&args.features, &args.backbone.backbone) {
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
            let request = BackboneRequest {
                name: Some(name),
                weights: args.backbone.backbone_weights.as_deref(),
                model: None,
            };
            let backbone = LoadedBackbone::load(request, device)?.into_backbone();
            let kind = DatasetKind::parse(&params.dataset).context("dataset")?;
            Box::new(ImageSource::new(
                kind,
                root,
                backbone,
                &params.augment,
                params.seed,
                args.workers,
            )?)
        }
        (Some(_), Some(_)) => bail!("give either --features or --backbone, not both"),
        (None, None) => bail!("give --features CACHE or --backbone NAME"),
    })
}

/// One step's memory: the slot model's step, and with images the loader's batches and the backbone's forward.
fn step_memory(args: &DinosaurTrainArgs, params: &TrainParams) -> memory::MemoryEstimate {
    let batch = params.batch_size as u64;
    let mut estimate = memory::training_step(&params.model, batch, StepKind::Baseline);
    if args.backbone.backbone.is_some() {
        let a = &params.augment;
        let workers = args
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let crop = (a.crop_height, a.crop_width);
        let resize = (a.resize_height, a.resize_width);
        estimate.add(
            "decoded image batches",
            memory::image_batches(batch, crop, resize, workers),
        );
        let (p, c) = (params.model.n_patches, params.model.feature_dim);
        estimate.add("backbone forward", memory::backbone_forward(batch, p, c));
    }
    estimate
}

/// The patch of the features' backbone, which scales the preset's image geometry: the `--backbone`'s, the
/// cache's (its errors are reported when the cache is opened), else DINOv2's.
fn source_patch_px(args: &DinosaurTrainArgs) -> i64 {
    let from_cache = || {
        let dir = args.features.as_ref()?;
        FeatureCache::open(dir).ok()?.meta().patch_px()
    };
    args.backbone
        .backbone
        .as_deref()
        .and_then(patch_size_of)
        .or_else(from_cache)
        .unwrap_or(PRESET_PATCH_PX)
}

fn train_dinosaur(args: &DinosaurTrainArgs, stop: &StopHandle) -> Result<ExitCode> {
    let mut params = settings::resolve(args, source_patch_px(args))?;
    params.validate()?;
    crate::engine::paths::check_outputs(&inputs(args), &[("--out", &args.out)])?;
    let device = args.device.device()?;
    let source = open_source(args, &params, device)?;
    let what = match &args.features {
        Some(dir) => format!("the feature cache {}", dir.display()),
        None => "the dataset".to_string(),
    };
    anyhow::ensure!(source.n_views() > 0, "{what}: no training views");
    check_batch(params.batch_size, source.n_views(), &what)?;
    params.model.feature_dim = source.channels();
    params.model.n_patches = source.n_patches();
    params.validate()?;
    args.memory.check(
        &step_memory(args, &params),
        device,
        "lower --batch-size or the model's sizes",
        args.run.quiet,
    )?;

    let layout = prepare_run_dir(&args.out)?;
    let stop = stop.with_budget(args.run.time_budget);
    let mut source = source;
    if args.candidates > 1 {
        if let Some(stopped) = candidates::choose(args, &mut params, &layout, device, &stop)? {
            return Ok(stopped);
        }
        source = open_source(args, &params, device)?;
    }
    train_run(args, &params, &layout, source, device, &stop, None)
}

/// Trains (or resumes) the run in `layout` with `params` to its end, or to `stop_at` steps (a restart candidate).
fn train_run(
    args: &DinosaurTrainArgs,
    params: &TrainParams,
    layout: &RunLayout,
    source: Box<dyn FeatureSource>,
    device: Device,
    stop: &StopHandle,
    stop_at: Option<u64>,
) -> Result<ExitCode> {
    let model = seeded(params.seed, || Dinosaur::new(params.model.clone(), device))?;
    let config = AdamConfig {
        beta1: params.adam_beta1,
        beta2: params.adam_beta2,
        eps: params.adam_eps,
    };
    let mut adam = Adam::new(model.named_parameters(), config);
    let backbone = (source.backbone_name(), source.backbone_id());
    let mut state = initial_state(params.seed);
    let checkpoint = layout.checkpoint_file();
    if checkpoint.is_file() {
        state = restore(&checkpoint, params, &model, &mut adam)?;
        if !args.run.quiet {
            eprintln!("resuming {} at step {}", layout.dir.display(), state.step);
        }
    }
    write_params(layout, params, &backbone)?;
    let mut runner = DinosaurRunner {
        params,
        model,
        adam,
        source,
        device,
        checkpoint,
        backbone,
    };
    let settings = LoopSettings {
        stop_at,
        n_slots: params.model.n_slots,
        ..LoopSettings::new(layout, stop, params.step_plan(), args.run.quiet, "trained")
    };
    run_steps(&settings, state, &mut runner)
}

fn write_params(layout: &RunLayout, params: &TrainParams, backbone: &(String, String)) -> Result<()> {
    write_atomic(
        &layout.params_file(),
        &serde_json::to_vec_pretty(&serde_json::json!({
            "code_version": CODE_VERSION,
            "backbone": backbone.0,
            "backbone_sha256": backbone.1,
            "params": params,
        }))?,
    )?;
    Ok(())
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

    fn save(&self, state: &TrainState, collapse: Option<&Verdict>) -> Result<()> {
        let meta = CheckpointMeta {
            stage: None,
            model_config: serde_json::to_string(&self.params.model)?,
            params: serde_json::to_string(self.params)?,
            backbone: &self.backbone,
            collapse,
        };
        write_checkpoint(&self.checkpoint, self.model.raw_parameters()?, &self.adam, state, meta)
    }
}

fn restore(path: &Path, params: &TrainParams, model: &Dinosaur, adam: &mut Adam) -> Result<TrainState> {
    let file = read_tensor_file(path)?;
    check_saved_params(&file, path, TrainParams::identity, params, &[], "DINOSAUR training", "")?;
    restore_training_state(&file, path, params.seed, model, adam)
}
