//! The parameters of `mrdino refine stage1|stage2`: preset (from the labels' dataset unless `--preset`) <
//! `--config FILE` (`{"epochs": 2, "stage2": {"hidden": 512}}`) < flags, resolved into one checked
//! [`RefineParams`] before any model or feature is read.
//!
//! Recipes (spec §4, §5; numbers in [`crate::settings::presets`]): stage 1 Adam 4e-6 constant, clip 1.0, batch 8,
//! 15 epochs; stage 2 Adam 4e-5, clip 1.0, batch 8, one epoch but at most 2000 steps (KITTI, TRI-PD), background
//! weight α 0.4 KITTI / 0.2 TRI-PD and MOVi-E, deactivation MLP hidden 2048 (1024 MOVi-E), similarity threshold
//! 0.99. Steps = ⌈epochs · N / batch⌉ capped by `max_steps` unless `--steps` gives them ([`RefineParams::set_steps`]).
//!
//! Ranges ([`RefineParams::validate`], every failing key named with its value): epochs finite and > 0, steps (when
//! given), max_steps, batch size, checkpoint and log cadence at least 1; lr finite and ≥ 0 (0 keeps the weights:
//! the loss of the unrefined model on the same batches); clip_grad_norm > 0; Adam β in [0, 1), ε > 0; seed ≥ 0;
//! stage 2: background_weight in [0, 1], similarity_threshold in [−1, 1] (a cosine), hidden at least 1.

use anyhow::{bail, Context, Result};
use mrdino_datasets::DatasetKind;
use mrdino_model::refine::{Stage2Options, SIMILARITY_THRESHOLD};
use mrdino_model::refined::ModelStage;
use serde::{Deserialize, Serialize};

use super::check::{Bound, Checks};
use super::presets::Preset;
use super::read_config;
use super::train::{optimiser_checks, preset_name, with_config, StepPlan};
use crate::cli::refine::RefineArgs;

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
    pub fn options(&self) -> Stage2Options {
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
    /// The step schedule of the run.
    pub fn step_plan(&self) -> StepPlan {
        StepPlan::new(self.steps, self.batch_size, self.seed, self.checkpoint_every, self.log_every)
    }

    /// The reference recipe of `stage` (stage 1 or 2) for `preset` (see `crate::settings::presets`).
    pub fn preset(stage: ModelStage, preset: &str, dataset: &str) -> Option<Self> {
        let stage2 = match stage {
            ModelStage::Stage1 => false,
            ModelStage::Stage2 => true,
            ModelStage::Baseline => return None,
        };
        let recipe = Preset::parse_model(preset)?.refine(stage2);
        let stage2 = recipe.stage2.map(|(background_weight, hidden)| Stage2Params {
            background_weight,
            similarity_threshold: SIMILARITY_THRESHOLD,
            hidden,
            keep_largest_masks: false,
            per_image_similarity: false,
        });
        Some(Self {
            stage: stage.name().to_string(),
            preset: preset.to_string(),
            dataset: dataset.to_string(),
            epochs: recipe.epochs,
            max_steps: recipe.max_steps,
            steps: 0,
            batch_size: 8,
            lr: recipe.lr,
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
    pub fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            for k in ["steps", "checkpoint_every", "log_every", "epochs", "max_steps"] {
                o.remove(k);
            }
        }
        v
    }

    /// Steps = ⌈epochs · N / batch⌉ over `n_views` views, capped by `max_steps`, unless given (`steps` > 0).
    pub fn set_steps(&mut self, n_views: usize) {
        if self.steps == 0 {
            let samples = (self.epochs * n_views as f64).ceil() as u64;
            self.steps = samples.div_ceil(self.batch_size.max(1) as u64);
            if let Some(cap) = self.max_steps {
                self.steps = self.steps.min(cap);
            }
        }
    }

    /// Checks every value against its range (see the module docs). `steps` = 0 means "from the epochs".
    pub fn validate(&self) -> Result<()> {
        let mut c = Checks::new();
        c.positive("epochs", self.epochs)
            .int("batch_size", self.batch_size, 1, None)
            .int("checkpoint_every", self.checkpoint_every, 1, None)
            .int("log_every", self.log_every, 1, None)
            .int("seed", self.seed, 0, None);
        if let Some(cap) = self.max_steps {
            c.int("max_steps", cap, 1, None);
        }
        optimiser_checks(
            &mut c,
            self.lr,
            self.clip_grad_norm,
            [self.adam_beta1, self.adam_beta2, self.adam_eps],
        );
        if let Some(s2) = &self.stage2 {
            c.float(
                "stage2.background_weight",
                s2.background_weight,
                Bound::Closed(0.0),
                Bound::Closed(1.0),
            )
            .float(
                "stage2.similarity_threshold",
                s2.similarity_threshold,
                Bound::Closed(-1.0),
                Bound::Closed(1.0),
            )
            .int("stage2.hidden", s2.hidden, 1, None);
        }
        c.finish("refinement parameters")
    }
}

/// Preset < config file < flags; `steps` stays 0 (from the epochs) unless `--steps` or the file gives it.
pub fn resolve(stage: ModelStage, args: &RefineArgs, dataset: DatasetKind) -> Result<RefineParams> {
    let file = args.config.as_deref().map(read_config).transpose()?;
    let preset = preset_name(args.preset.as_deref(), file.as_ref(), dataset);
    let base = RefineParams::preset(stage, &preset, dataset.name())
        .with_context(|| format!("unknown preset `{preset}` (expected kitti, tri-pd or movi-e)"))?;
    let mut p: RefineParams = with_config(&base, file.as_ref())?;
    p.stage = stage.name().to_string();
    p.preset = preset;
    p.dataset = dataset.name().to_string();
    if p.steps == 0 && file.as_ref().and_then(|f| f.get("steps")).is_some() {
        bail!("invalid refinement parameters: steps = 0 must be at least 1 (leave it out to train whole epochs)");
    }
    if let Some(v) = args.epochs {
        p.epochs = v;
    }
    if let Some(v) = args.steps {
        if v == 0 {
            bail!(
                "invalid refinement parameters: steps = 0 must be at least 1 (leave --steps out to train whole epochs)"
            );
        }
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
    apply_stage2_flags(&mut p, stage, args)?;
    Ok(p)
}

/// The stage-2 flags onto `p` (refused for stage 1, whose parameters carry no `stage2`).
fn apply_stage2_flags(p: &mut RefineParams, stage: ModelStage, args: &RefineArgs) -> Result<()> {
    match (&mut p.stage2, stage) {
        (Some(s2), ModelStage::Stage2) => {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_carry_the_reference_recipes() {
        let s1 = RefineParams::preset(ModelStage::Stage1, "kitti", "kitti").expect("preset");
        assert_eq!((s1.epochs, s1.batch_size, s1.lr, s1.max_steps), (15.0, 8, 4e-6, None));
        assert!(s1.stage2.is_none());
        let s2 = RefineParams::preset(ModelStage::Stage2, "kitti", "kitti").expect("preset");
        assert_eq!((s2.epochs, s2.lr, s2.max_steps), (1.0, 4e-5, Some(2000)));
        let h = s2.stage2.expect("stage 2");
        assert_eq!(
            (h.background_weight, h.hidden, h.similarity_threshold),
            (0.4, 2048, 0.99)
        );
        assert!(!h.keep_largest_masks && !h.per_image_similarity);
        let pd = RefineParams::preset(ModelStage::Stage2, "tri-pd", "tri-pd")
            .expect("preset")
            .stage2
            .expect("stage 2");
        assert_eq!((pd.background_weight, pd.hidden), (0.2, 2048));
        let movi = RefineParams::preset(ModelStage::Stage2, "movi-e", "movi-e").expect("preset");
        assert_eq!(movi.max_steps, None);
        assert_eq!(movi.stage2.expect("stage 2").hidden, 1024);
        assert!(RefineParams::preset(ModelStage::Stage1, "coco", "frames").is_none());
        assert!(RefineParams::preset(ModelStage::Baseline, "kitti", "kitti").is_none());
    }

    #[test]
    fn meaningless_values_are_refused_naming_the_key_and_value() {
        type Edit = fn(&mut RefineParams);
        let cases: [(Edit, &str); 15] = [
            (|p| p.epochs = 0.0, "epochs = 0"),
            (|p| p.epochs = f64::NAN, "epochs = NaN"),
            (|p| p.epochs = -2.0, "epochs = -2"),
            (|p| p.max_steps = Some(0), "max_steps = 0"),
            (|p| p.batch_size = 0, "batch_size = 0"),
            (|p| p.lr = -1.0, "lr = -1"),
            (|p| p.clip_grad_norm = -1.0, "clip_grad_norm = -1"),
            (|p| p.adam_beta1 = 2.0, "adam_beta1 = 2"),
            (|p| p.adam_eps = -1e-8, "adam_eps = -0.00000001"),
            (|p| p.seed = -3, "seed = -3"),
            (|p| p.log_every = 0, "log_every = 0"),
            (
                |p| p.stage2.as_mut().unwrap().background_weight = 1.5,
                "stage2.background_weight = 1.5",
            ),
            (
                |p| p.stage2.as_mut().unwrap().background_weight = -0.1,
                "stage2.background_weight = -0.1",
            ),
            (|p| p.stage2.as_mut().unwrap().hidden = 0, "stage2.hidden = 0"),
            (
                |p| p.stage2.as_mut().unwrap().similarity_threshold = 2.0,
                "stage2.similarity_threshold = 2",
            ),
        ];
        for (edit, want) in cases {
            let mut p = RefineParams::preset(ModelStage::Stage2, "kitti", "kitti").unwrap();
            edit(&mut p);
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut p = RefineParams::preset(ModelStage::Stage2, "kitti", "kitti").unwrap();
        p.lr = 0.0;
        p.stage2.as_mut().unwrap().background_weight = 0.0;
        p.validate().expect("lr 0 and background weight 0 are defined");
    }

    #[test]
    fn steps_follow_the_epochs_and_the_cap() {
        let mut p = RefineParams::preset(ModelStage::Stage2, "kitti", "kitti").unwrap();
        p.set_steps(20_000);
        assert_eq!(p.steps, 2000);
        let mut p = RefineParams::preset(ModelStage::Stage1, "kitti", "kitti").unwrap();
        p.epochs = 0.01;
        p.set_steps(5);
        assert_eq!(
            p.steps, 1,
            "any positive epochs of a non-empty set train at least one step"
        );
        p.steps = 7;
        p.set_steps(5);
        assert_eq!(p.steps, 7);
    }
}
