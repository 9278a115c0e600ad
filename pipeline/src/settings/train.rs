//! The parameters of `mrdino train dinosaur`: preset < `--config FILE` (a JSON object with any subset of the
//! [`TrainParams`] keys; nested `model` / `augment` objects merge key by key) < flags, resolved into one checked
//! [`TrainParams`] before any input is read or output written.
//!
//! The presets are the reference recipes (spec §3.5, the numbers in [`crate::settings::presets`]): KITTI 100k
//! steps, batch 64, LR 4e-4, resize 378×1260, random 378 crop, flip; TRI-PD 500k, 16, 1e-4, 490×980, 490 crop,
//! flip; MOVi-E 500k, 64, 4e-4, 266×266, no crop or flip; all with Adam (0.9, 0.999, 1e-8), linear warm-up over
//! 10k steps then ×0.5 per 100k steps, gradient-norm clip 1.0. `frames` uses the KITTI recipe. The resize and crop
//! are patch-14 pixels; a backbone whose patch does not tile the preset's window gets them scaled to the same token
//! grid (`Preset::train`; patch 16: KITTI 432×1440 and 432, TRI-PD 560×1120 and 560, MOVi-E 304).
//!
//! Ranges ([`TrainParams::validate`], every failing key named with its value): steps, batch size, checkpoint and
//! log cadence, LR decay steps and every model size at least 1; lr finite and ≥ 0 (0 is allowed and means the
//! weights stay as initialised: the run then measures the loss of the initial model on the same batches, as the
//! refinement tests use it); warm-up steps ≥ 0 (0 = no warm-up); lr_decay_rate in (0, 1]; clip_grad_norm finite
//! and > 0; Adam β₁, β₂ in [0, 1) and ε > 0; seed ≥ 0; the crop positive and within the resize.

use anyhow::{Context, Result};
use mrdino_datasets::DatasetKind;
use mrdino_model::dinosaur::DinosaurConfig;
use mrdino_model::loader::AugmentParams;
use mrdino_model::optim::LrSchedule;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::check::{Bound, Checks};
use super::presets::Preset;
use super::{merge, read_config};
use crate::cli::train::DinosaurTrainArgs;

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

/// The step schedule of a training or refinement run: what the engine's step loop takes from its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPlan {
    pub steps: u64,
    pub batch_size: u64,
    pub seed: i64,
    pub checkpoint_every: u64,
    pub log_every: u64,
}

impl StepPlan {
    /// The schedule of a run of `steps` steps of `batch_size` samples drawn from `seed`, with a checkpoint every
    /// `checkpoint_every` steps and a metrics row every `log_every`.
    pub fn new(steps: u64, batch_size: usize, seed: i64, checkpoint_every: u64, log_every: u64) -> Self {
        Self { steps, batch_size: batch_size as u64, seed, checkpoint_every, log_every }
    }
}

impl TrainParams {
    /// The step schedule of the run.
    pub fn step_plan(&self) -> StepPlan {
        StepPlan::new(self.steps, self.batch_size, self.seed, self.checkpoint_every, self.log_every)
    }

    /// The reference recipe of `preset` (`kitti`, `tri-pd`, `movi-e`; see `crate::settings::presets`) for a
    /// backbone of `patch_px` (the resize and crop scaled as the windows are).
    pub fn preset(preset: &str, dataset: &str, patch_px: i64) -> Option<Self> {
        let recipe = Preset::parse_model(preset)?.train(patch_px);
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

    /// The learning-rate schedule.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            base_lr: self.lr,
            warmup_steps: self.warmup_steps,
            decay_rate: self.lr_decay_rate,
            decay_steps: self.lr_decay_steps,
        }
    }

    /// The parameters a resumed run must share with the checkpoint (steps, logging and checkpoint cadence may
    /// change between runs).
    pub fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for k in ["steps", "checkpoint_every", "log_every"] {
                o.remove(k);
            }
        }
        v
    }

    /// Checks every value against its range (see the module docs); all failures are reported together.
    pub fn validate(&self) -> Result<()> {
        let mut c = Checks::new();
        c.int("steps", self.steps, 1, None)
            .int("batch_size", self.batch_size, 1, None)
            .int("checkpoint_every", self.checkpoint_every, 1, None)
            .int("log_every", self.log_every, 1, None)
            .int("lr_decay_steps", self.lr_decay_steps, 1, None)
            .float(
                "lr_decay_rate",
                self.lr_decay_rate,
                Bound::Open(0.0),
                Bound::Closed(1.0),
            )
            .int("seed", self.seed, 0, None);
        optimiser_checks(
            &mut c,
            self.lr,
            self.clip_grad_norm,
            [self.adam_beta1, self.adam_beta2, self.adam_eps],
        );
        model_checks(&mut c, &self.model);
        let a = &self.augment;
        c.int("augment.resize_height", a.resize_height, 1, None)
            .int("augment.resize_width", a.resize_width, 1, None)
            .int("augment.crop_height", a.crop_height, 1, Some(a.resize_height.max(1)))
            .int("augment.crop_width", a.crop_width, 1, Some(a.resize_width.max(1)));
        c.finish("training parameters")
    }
}

/// The optimiser's ranges, shared by `train` and `refine`: lr finite ≥ 0, clip > 0, β in [0, 1), ε > 0.
pub fn optimiser_checks(c: &mut Checks, lr: f64, clip_grad_norm: f64, [beta1, beta2, eps]: [f64; 3]) {
    c.non_negative("lr", lr)
        .positive("clip_grad_norm", clip_grad_norm)
        .float("adam_beta1", beta1, Bound::Closed(0.0), Bound::Open(1.0))
        .float("adam_beta2", beta2, Bound::Closed(0.0), Bound::Open(1.0))
        .positive("adam_eps", eps);
}

/// The slot model's sizes (each at least 1) and constants, named `model.<key>`.
fn model_checks(c: &mut Checks, m: &DinosaurConfig) {
    c.int("model.n_slots", m.n_slots, 1, None)
        .int("model.slot_dim", m.slot_dim, 1, None)
        .int("model.feature_dim", m.feature_dim, 1, None)
        .int("model.decoder_hidden", m.decoder_hidden, 1, None)
        .int("model.n_patches", m.n_patches, 1, None)
        .int("model.iterations", m.iterations, 1, None)
        .int("model.ff_mlp_ratio", m.ff_mlp_ratio, 1, None)
        .non_negative("model.attention_eps", m.attention_eps)
        .positive("model.layer_norm_eps", m.layer_norm_eps)
        .positive("model.mask_temperature", m.mask_temperature);
}

/// `base` with the config file's values merged in, each key the file sets checked for its type: an error names
/// the first key whose value does not fit (e.g. `steps` = -1 for a count) or that is unknown.
pub fn with_config<T: Serialize + DeserializeOwned>(base: &T, file: Option<&serde_json::Value>) -> Result<T> {
    let base = serde_json::to_value(base)?;
    let mut value = base.clone();
    let Some(file) = file else {
        return Ok(serde_json::from_value(value)?);
    };
    merge(&mut value, file);
    serde_json::from_value(value).or_else(|e| {
        for (key, leaf) in leaves(file, String::new()) {
            let mut single = base.clone();
            merge(&mut single, &leaf);
            if let Err(e) = serde_json::from_value::<T>(single) {
                anyhow::bail!("invalid config file: `{key}`: {e}");
            }
        }
        Err(e).context("invalid config file")
    })
}

/// Every leaf of a JSON object as (dotted key, an object holding just that leaf at its path).
fn leaves(value: &serde_json::Value, prefix: String) -> Vec<(String, serde_json::Value)> {
    let Some(object) = value.as_object().filter(|o| !o.is_empty()) else {
        return vec![(prefix, value.clone())];
    };
    let mut out = Vec::new();
    for (k, v) in object {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        for (path, leaf) in leaves(v, key) {
            out.push((path, serde_json::json!({ k: leaf })));
        }
    }
    out
}

/// The preset named by the flag, else by the config file, else the dataset's.
pub fn preset_name(flag: Option<&str>, file: Option<&serde_json::Value>, dataset: DatasetKind) -> String {
    flag.map(str::to_string)
        .or_else(|| {
            file.and_then(|f| f.get("preset"))
                .and_then(|p| p.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| Preset::for_dataset(dataset).model().name().to_string())
}

/// Preset < config file < flags, the preset's image geometry for a backbone of `patch_px`. The model's F and P are
/// the data's, set once the source is open; checks run then ([`TrainParams::validate`]).
pub fn resolve(args: &DinosaurTrainArgs, patch_px: i64) -> Result<TrainParams> {
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
    let preset = preset_name(args.preset.as_deref(), file.as_ref(), kind);
    let base = TrainParams::preset(&preset, kind.name(), patch_px)
        .with_context(|| format!("unknown preset `{preset}` (expected kitti, tri-pd or movi-e)"))?;
    let mut p: TrainParams = with_config(&base, file.as_ref())?;
    p.preset = preset;
    p.dataset = kind.name().to_string();
    let set = |target: &mut u64, flag: Option<u64>| {
        if let Some(v) = flag {
            *target = v;
        }
    };
    set(&mut p.steps, args.steps);
    set(&mut p.warmup_steps, args.warmup_steps);
    set(&mut p.checkpoint_every, args.checkpoint_every);
    set(&mut p.log_every, args.log_every);
    if let Some(v) = args.batch_size {
        p.batch_size = v;
    }
    if let Some(v) = args.lr {
        p.lr = v;
    }
    if let Some(v) = args.seed {
        p.seed = v;
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kitti() -> TrainParams {
        TrainParams::preset("kitti", "kitti", 14).unwrap()
    }

    #[test]
    fn presets_are_valid_and_carry_the_recipe() {
        for preset in ["kitti", "tri-pd", "movi-e"] {
            TrainParams::preset(preset, preset, 14).unwrap().validate().unwrap();
        }
        let p = kitti();
        assert_eq!(
            (p.steps, p.batch_size, p.lr, p.warmup_steps),
            (100_000, 64, 4e-4, 10_000)
        );
        assert!(TrainParams::preset("coco", "frames", 14).is_none());
    }

    #[test]
    fn meaningless_values_are_refused_naming_the_key_and_value() {
        type Edit = fn(&mut TrainParams);
        let cases: [(Edit, &str); 24] = [
            (|p| p.steps = 0, "steps = 0"),
            (|p| p.batch_size = 0, "batch_size = 0"),
            (|p| p.lr = f64::NAN, "lr = NaN"),
            (|p| p.lr = -1e-3, "lr = -0.001"),
            (|p| p.lr = f64::INFINITY, "lr = inf"),
            (|p| p.lr_decay_rate = 0.0, "lr_decay_rate = 0"),
            (|p| p.lr_decay_rate = 1.5, "lr_decay_rate = 1.5"),
            (|p| p.lr_decay_steps = 0, "lr_decay_steps = 0"),
            (|p| p.clip_grad_norm = -1.0, "clip_grad_norm = -1"),
            (|p| p.clip_grad_norm = 0.0, "clip_grad_norm = 0"),
            (|p| p.clip_grad_norm = f64::NAN, "clip_grad_norm = NaN"),
            (|p| p.adam_beta1 = 2.0, "adam_beta1 = 2"),
            (|p| p.adam_beta1 = -0.1, "adam_beta1 = -0.1"),
            (|p| p.adam_beta2 = 1.0, "adam_beta2 = 1"),
            (|p| p.adam_eps = 0.0, "adam_eps = 0"),
            (|p| p.seed = -1, "seed = -1"),
            (|p| p.checkpoint_every = 0, "checkpoint_every = 0"),
            (|p| p.log_every = 0, "log_every = 0"),
            (|p| p.model.n_slots = 0, "model.n_slots = 0"),
            (|p| p.model.slot_dim = -4, "model.slot_dim = -4"),
            (|p| p.model.decoder_hidden = 0, "model.decoder_hidden = 0"),
            (|p| p.model.iterations = 0, "model.iterations = 0"),
            (|p| p.augment.crop_height = 400, "augment.crop_height = 400"),
            (|p| p.augment.resize_width = 0, "augment.resize_width = 0"),
        ];
        for (edit, want) in cases {
            let mut p = kitti();
            edit(&mut p);
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut p = kitti();
        p.lr = 0.0;
        p.warmup_steps = 0;
        p.lr_decay_rate = 1.0;
        p.adam_beta1 = 0.0;
        p.validate()
            .expect("lr 0, no warm-up, no decay and beta1 0 are defined");
    }

    #[test]
    fn a_config_value_of_the_wrong_type_is_named() {
        let base = kitti();
        let file = serde_json::json!({"lr": 1e-3, "model": {"n_slots": 7, "slot_dim": "x"}});
        let err = with_config(&base, Some(&file)).unwrap_err().to_string();
        assert!(err.contains("`model.slot_dim`"), "{err}");
        let err = with_config(&base, Some(&serde_json::json!({"steps": -1})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`steps`") && err.contains("-1"), "{err}");
        let err = with_config(&base, Some(&serde_json::json!({"stpes": 1})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stpes"), "{err}");
        let p = with_config(&base, Some(&serde_json::json!({"model": {"n_slots": 7}}))).unwrap();
        assert_eq!((p.model.n_slots, p.model.slot_dim), (7, 32));
    }
}
