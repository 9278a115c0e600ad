//! `mrdino refine stage1|stage2`: MR-DINOSAUR's refinement of a DINOSAUR model with pseudo-labels (spec §4, §5).
//!
//! * **Stage 1** (`refine stage1 --from BASELINE --labels LABELS --out RUN`): the baseline's weights, everything
//!   frozen except the perceptual grouping; the matched weighted BCE of the decoder alphas at the window's pixels
//!   against the pseudo masks (`mrdino_model::refine_train`).
//! * **Stage 2** (`refine stage2 --from STAGE1_RUN --labels LABELS --out RUN`): everything frozen; the
//!   slot-deactivation MLP is trained with the NLL loss and the background weight α. The reference's quirks are
//!   the defaults, each fix a flag: `--keep-largest-masks`, `--per-image-similarity`.
//!
//! Each stage takes one kind of model (`mrdino.stage` of the `--from` file, `mrdino_model::refined::ModelStage`):
//! stage 1 a baseline DINOSAUR (a `train dinosaur` run, which records no stage, or a converted baseline), stage 2
//! a stage-1 run; any other is refused naming the kind found. Parameters: `crate::settings::refine` (`--steps 0`
//! and `--epochs 0` are refused, so every run that exits 0 leaves a checkpoint).
//!
//! Views are the pseudo-label run's training windows (`mrdino_model::refine_views`): KITTI 378×378 windows of
//! the 1260×378 frame, TRI-PD 490×490 halves of 980×490, MOVi-E the 266 centre crop. Their features come from a
//! feature cache of those windows (`mrdino features --views windows --labels LABELS`, the default way: an epoch
//! costs no backbone forward) or from the frames through the backbone (`--backbone NAME --root ROOT`).
//!
//! An epoch is N samples, N the number of views; sample n draws view `Sampler(seed).view(n)` (a fresh
//! permutation per epoch) and slot noise `slot_noise(seed, [n])`, so batches do not depend on threads and a
//! resumed run continues exactly (as `train dinosaur`). Batches are always full: the last batch of an epoch
//! takes its remaining samples from the next epoch's permutation (the reference's data loader ends an epoch
//! with a smaller batch instead). A batch larger than N, an `--out` among the inputs, or a step whose estimated
//! memory exceeds what the machine has are refused before the model is allocated (`crate::engine::training`).
//!
//! Files in `RUN/` as for `train dinosaur`: `params.json`, `checkpoint.safetensors` (all DINOSAUR weights,
//! stage 2 also `object_decoder.slot_decoder.{0,2,4,6}.{weight,bias}`, Adam moments of the trained tensors,
//! step and generator state; `mrdino.stage` = `stage1` or `stage2`), `metrics.jsonl`, `loss.svg`; SIGINT,
//! SIGTERM or `--time-budget` checkpoint and exit with code 4; the same command resumes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use mrdino_datasets::DatasetKind;
use mrdino_model::backbone::{Backbone, BackboneRequest, LoadedBackbone};
use mrdino_model::collapse::Verdict;
use mrdino_model::dinosaur::{file_config, Dinosaur, DinosaurConfig};
use mrdino_model::memory::{self, MemoryEstimate, StepKind};
use mrdino_model::optim::{Adam, AdamConfig};
use mrdino_model::patch_scale::{token_grid_text, PRESET_PATCH_PX};
use mrdino_model::refine_train::{refine_step, trained_parameters, RefineStep, TrainableHead};
use mrdino_model::refine_views::{CachedViews, ImageViews, LabelIndex, ViewSource};
use mrdino_model::refined::ModelStage;
use mrdino_model::train::StepMetrics;
use mrdino_outputs::checkpoint::{read_model_file, read_tensor_file, RunLayout, TensorFile, TrainState};
use mrdino_outputs::checkpoint::{META_BACKBONE, META_BACKBONE_SHA256, META_STAGE};
use mrdino_outputs::feature_cache::FeatureCache;
use mrdino_outputs::weights_id::{self, Identity};
use mrdino_outputs::write_atomic;
use tch::Device;

use crate::cli::refine::{RefineArgs, RefineCommand};
use crate::engine::job::CODE_VERSION;
use crate::engine::runs::read_label_tables;
use crate::engine::stop::StopHandle;
use crate::engine::training::{
    check_batch, check_saved_params, initial_state, prepare_run_dir,
    restore_training_state, run_steps, write_checkpoint, CheckpointMeta, LoopSettings, StepRunner,
};
use crate::settings::presets::Preset;
use crate::settings::refine::{self as settings, RefineParams};

pub fn run(command: &RefineCommand, stop: &StopHandle) -> Result<ExitCode> {
    match command {
        RefineCommand::Stage1(args) => refine(ModelStage::Stage1, args, stop),
        RefineCommand::Stage2(args) => refine(ModelStage::Stage2, args, stop),
    }
}

/// Every input of the run, for the `--out` check.
fn inputs(args: &RefineArgs) -> Vec<(&'static str, &Path)> {
    let mut inputs = vec![("--from", args.from.as_path()), ("--labels", args.labels.as_path())];
    if let Some(p) = &args.features {
        inputs.push(("--features", p.as_path()));
    }
    if let Some(p) = &args.root {
        inputs.push(("--root", p.as_path()));
    }
    inputs
}

/// What each stage starts from, for messages.
fn accepted(stage: ModelStage) -> &'static str {
    match stage {
        ModelStage::Stage2 => "a stage-1 run (`mrdino refine stage1`)",
        _ => "a baseline DINOSAUR (`mrdino train dinosaur`, or a converted baseline checkpoint)",
    }
}

/// The `--from` model: path, contents, identity; refused unless it is of the stage `stage` refines.
fn read_from(stage: ModelStage, args: &RefineArgs) -> Result<(PathBuf, TensorFile, Identity)> {
    let (from, file, identity) =
        read_model_file(&args.from).with_context(|| format!("cannot read model {}", args.from.display()))?;
    let found = ModelStage::of_file(&file, &from)?;
    if Some(found) != stage.refined_from() {
        let recorded = file
            .meta(META_STAGE)
            .map_or("no `mrdino.stage`, and the stage-2 head's tensors".to_string(), |s| {
                format!("`{META_STAGE}` = {s}")
            });
        bail!(
            "refine {stage} --from takes {}; {} is a {found} model ({recorded})",
            accepted(stage),
            from.display()
        );
    }
    Ok((from, file, identity))
}

/// Where the refinement's features come from, opened before the windows are cut (their pixels depend on the
/// backbone's patch).
enum ViewInput {
    Cache(FeatureCache),
    Frames(Box<dyn Backbone>, PathBuf),
}

impl ViewInput {
    /// The backbone's patch: the cache's (view over grid), else DINOv2's; the backbone's own.
    fn patch_px(&self) -> i64 {
        match self {
            ViewInput::Cache(cache) => cache.meta().patch_px().unwrap_or(PRESET_PATCH_PX),
            ViewInput::Frames(backbone, _) => backbone.patch_size(),
        }
    }
}

/// The cache of the labels' windows, or the frames through the backbone.
fn open_input(args: &RefineArgs, from: (&TensorFile, &Path), device: Device) -> Result<ViewInput> {
    Ok(match (&args.features, &args.backbone.backbone) {
        (Some(dir), None) => ViewInput::Cache(
            FeatureCache::open(dir).with_context(|| format!("cannot open feature cache {}", dir.display()))?,
        ),
        (None, Some(name)) => {
            let root = args
                .root
                .as_deref()
                .context("--backbone computes features from the frames: give the dataset --root the labels read")?;
            let request = BackboneRequest {
                name: Some(name),
                weights: args.backbone.backbone_weights.as_deref(),
                model: Some(from),
            };
            ViewInput::Frames(LoadedBackbone::load(request, device)?.into_backbone(), root.to_path_buf())
        }
        (Some(_), Some(_)) => bail!("give either --features or --backbone, not both"),
        (None, None) => bail!("give --features CACHE (the labels' windows) or --backbone NAME"),
    })
}

/// The views of `labels` with their features from `input`.
fn open_views(input: ViewInput, labels: LabelIndex, seed: i64) -> Result<Box<dyn ViewSource>> {
    Ok(match input {
        ViewInput::Cache(cache) => Box::new(CachedViews::new(cache, labels, seed)?),
        ViewInput::Frames(backbone, root) => Box::new(ImageViews::new(backbone, &root, labels, seed)?),
    })
}

/// Refuses views whose backbone is not the one the model was trained on, or whose shapes it does not take.
/// `window` is the side of the views in pixels and the backbone's patch, for the message.
fn check_views(
    from_file: &TensorFile,
    from: &Path,
    config: &DinosaurConfig,
    source: &dyn ViewSource,
    window: (i64, i64),
) -> Result<()> {
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
    ensure!(
        config.n_patches == source.n_patches() && config.feature_dim == source.channels(),
        "{} expects {} patches ({}) of {} channels, the refinement views give {} ({}: {} px windows, patch {}) of {}",
        from.display(),
        config.n_patches,
        token_grid_text(config.n_patches),
        config.feature_dim,
        source.n_patches(),
        token_grid_text(source.n_patches()),
        window.0,
        window.1,
        source.channels()
    );
    Ok(())
}

/// One step's memory: the refinement step at the windows' pixels, and with frames the backbone's forward.
fn step_memory(
    params: &RefineParams,
    config: &DinosaurConfig,
    view_px: i64,
    max_masks: i64,
    images: bool,
) -> MemoryEstimate {
    let batch = params.batch_size as u64;
    let kind = match &params.stage2 {
        Some(s2) => StepKind::Stage2 {
            view_px,
            max_masks,
            hidden: s2.hidden,
        },
        None => StepKind::Stage1 { view_px, max_masks },
    };
    let mut estimate = memory::training_step(config, batch, kind);
    if images {
        estimate.add("window images", 3.0 * (batch as f64) * (view_px * view_px) as f64 * 4.0);
        estimate.add(
            "backbone forward",
            memory::backbone_forward(batch, config.n_patches, config.feature_dim),
        );
    }
    estimate
}

/// Everything a refinement run needs, read and checked, before anything is allocated for training.
struct Prepared {
    params: RefineParams,
    from: PathBuf,
    from_file: TensorFile,
    from_identity: Identity,
    config: DinosaurConfig,
    source: Box<dyn ViewSource>,
    n_views: usize,
}

fn prepare(stage: ModelStage, args: &RefineArgs, device: Device) -> Result<Prepared> {
    let tables = read_label_tables(&args.labels, None)?;
    let labels_params = tables.layout.params_hash.clone();
    let dataset = tables
        .frames
        .first()
        .and_then(|f| DatasetKind::parse(&f.dataset))
        .with_context(|| format!("{}: the labels run has no frames", args.labels.display()))?;
    let mut params = settings::resolve(stage, args, dataset)?;
    params.validate()?;
    crate::engine::paths::check_outputs(&inputs(args), &[("--out", &args.out)])?;
    let (from, from_file, from_identity) = read_from(stage, args)?;
    let input = open_input(args, (&from_file, &from), device)?;
    let patch_px = input.patch_px();
    let labels = LabelIndex::new(tables, Preset::for_dataset(dataset).window_layout(patch_px));
    let (view_px, max_masks) = (labels.layout.view_px() as i64, i64::from(labels.max_instances()));
    let source = open_views(input, labels, params.seed)?;
    let n_views = source.n_views();
    ensure!(
        n_views > 0,
        "{}: no training windows (no labelled frame with instances)",
        args.labels.display()
    );
    check_batch(params.batch_size, n_views, "the labels' training windows")?;
    params.set_steps(n_views);
    params.from_sha256 = from_identity.id.clone();
    params.labels_params = labels_params;
    params.validate()?;
    let config = file_config(&from_file, &from, None)?;
    check_views(&from_file, &from, &config, source.as_ref(), (view_px, patch_px))?;
    let estimate = step_memory(&params, &config, view_px, max_masks, args.features.is_none());
    args.memory.check(&estimate, device, "lower --batch-size", args.run.quiet)?;
    Ok(Prepared {
        params,
        from,
        from_file,
        from_identity,
        config,
        source,
        n_views,
    })
}

fn refine(stage: ModelStage, args: &RefineArgs, stop: &StopHandle) -> Result<ExitCode> {
    let device = args.device.device()?;
    let Prepared {
        params,
        from,
        from_file,
        from_identity,
        config,
        mut source,
        n_views,
    } = prepare(stage, args, device)?;
    let model = Dinosaur::from_tensor_file(&from_file, &from, None, device)?;
    drop(from_file);
    let mut trained = trained_parameters(&model, stage)?;
    let head = params
        .stage2
        .as_ref()
        .map(|s2| TrainableHead::new(config.slot_dim, s2.hidden, params.seed, device))
        .transpose()?;
    if let Some(head) = &head {
        trained.extend(head.named_parameters());
    }
    let adam_config = AdamConfig {
        beta1: params.adam_beta1,
        beta2: params.adam_beta2,
        eps: params.adam_eps,
    };
    let mut adam = Adam::new(trained, adam_config);
    let layout = prepare_run_dir(&args.out)?;
    let checkpoint = layout.checkpoint_file();
    let mut state = initial_state(params.seed);
    if checkpoint.is_file() {
        state = restore(&checkpoint, &params, &from_identity, &model, head.as_ref(), &mut adam)?;
        if !args.run.quiet {
            eprintln!("resuming {} at step {}", layout.dir.display(), state.step);
        }
    }
    let backbone = source.backbone();
    write_params(&layout, args, &from, n_views, &backbone, &params)?;
    let stop = stop.with_budget(args.run.time_budget);
    let what = match stage {
        ModelStage::Stage1 => "refined (stage 1)",
        _ => "refined (stage 2)",
    };
    let settings = LoopSettings {
        n_slots: model.config().n_slots,
        ..LoopSettings::new(&layout, &stop, params.step_plan(), args.run.quiet, what)
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

fn write_params(
    layout: &RunLayout,
    args: &RefineArgs,
    from: &Path,
    n_views: usize,
    backbone: &(String, String),
    params: &RefineParams,
) -> Result<()> {
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
    Ok(())
}

struct RefineRunner<'a> {
    params: &'a RefineParams,
    model: Dinosaur,
    head: Option<TrainableHead>,
    adam: Adam,
    source: &'a mut dyn ViewSource,
    device: Device,
    checkpoint: PathBuf,
    backbone: (String, String),
}

impl StepRunner for RefineRunner<'_> {
    fn step(&mut self, _step: u64, first_sample: u64) -> Result<StepMetrics> {
        let p = self.params;
        let (features, masks) = self.source.batch(first_sample, p.batch_size, self.device)?;
        let head = match (&self.head, &p.stage2) {
            (Some(head), Some(s2)) => Some((head, s2.options())),
            _ => None,
        };
        let step = RefineStep {
            model: &self.model,
            head,
            seed: p.seed,
            lr: p.lr,
            clip_grad_norm: p.clip_grad_norm,
        };
        Ok(refine_step(&step, &mut self.adam, &features, &masks, first_sample)?)
    }

    fn save(&self, state: &TrainState, collapse: Option<&Verdict>) -> Result<()> {
        let mut tensors = self.model.raw_parameters()?;
        if let Some(head) = &self.head {
            tensors.extend(head.raw_parameters()?);
        }
        let meta = CheckpointMeta {
            stage: Some(&self.params.stage),
            model_config: serde_json::to_string(self.model.config())?,
            params: serde_json::to_string(self.params)?,
            backbone: &self.backbone,
            collapse,
        };
        write_checkpoint(&self.checkpoint, tensors, &self.adam, state, meta)
    }
}

fn restore(
    path: &Path,
    params: &RefineParams,
    from: &Identity,
    model: &Dinosaur,
    head: Option<&TrainableHead>,
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
        head.restore(&file, path)?;
    }
    restore_training_state(&file, path, params.seed, model, adam)
}
