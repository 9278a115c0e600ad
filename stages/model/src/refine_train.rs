//! One optimisation step of MR-DINOSAUR's refinement (spec §4, §5) and what each stage trains, on plain tensors.
//!
//! * **Stage 1** trains the perceptual grouping (`perceptual_grouping.*`: input MLP and slot attention), every
//!   other DINOSAUR tensor frozen: forward, the decoder alphas upsampled bilinearly to the window's pixels, the
//!   matched weighted BCE ([`crate::refine::stage1_loss`]).
//! * **Stage 2** trains only the slot-deactivation head ([`TrainableHead`], keys `object_decoder.slot_decoder.*`,
//!   drawn from libtorch's generator right after `manual_seed(seed)`): DINOSAUR's forward under `no_grad`, the
//!   head's weights, the soft weighted masks at pixels and the NLL ([`crate::refine::stage2_loss`]).
//!
//! A step ([`refine_step`]) is the reference's: slot noise of the samples `slot_noise(seed, [n])`, zero the
//! gradients, the loss, backward, `clip_grad_norm_` and Adam at a constant learning rate; a non-finite loss stops
//! the run before the update.

use std::path::Path;

use mrdino_outputs::checkpoint::{RawTensor, TensorFile};
use tch::nn;
use tch::{Device, Tensor};

use crate::dinosaur::{masks_to_image, slot_noise, Dinosaur, DinosaurError};
use crate::optim::Adam;
use crate::refine::{
    stage1_loss, stage2_loss, weighted_masks, RefineError, SlotDeactivation, Stage2Inputs, Stage2Options,
};
use crate::refined::ModelStage;
use crate::tensors::{from_tch, TensorConvError};
use crate::weights::{WeightError, WeightSource};
use crate::train::StepMetrics;

/// Key prefix of the tensors stage 1 trains.
pub const GROUPING_PREFIX: &str = "perceptual_grouping.";

/// Errors of a refinement step or of its trained tensors, naming the key or the sample.
#[derive(Debug, thiserror::Error)]
pub enum RefineTrainError {
    #[error(transparent)]
    Model(#[from] DinosaurError),
    #[error(transparent)]
    Refine(#[from] RefineError),
    #[error(transparent)]
    Convert(#[from] TensorConvError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("{stage} is not a refinement stage")]
    NotRefinement { stage: ModelStage },
    #[error("non-finite loss {loss} at sample {sample}")]
    NonFinite { loss: f64, sample: u64 },
}

/// The stage-2 head being trained, with its own variable store (keys `object_decoder.slot_decoder.*`).
pub struct TrainableHead {
    vs: nn::VarStore,
    pub mlp: SlotDeactivation,
}

impl TrainableHead {
    /// A fresh head for slots of `slot_dim` and `hidden` units: PyTorch's default Linear init, zero biases,
    /// drawn right after `manual_seed(seed)`.
    pub fn new(slot_dim: i64, hidden: i64, seed: i64, device: Device) -> Result<Self, RefineError> {
        crate::dinosaur::seeded(seed, || {
            let vs = nn::VarStore::new(device);
            let mlp = SlotDeactivation::new(&(vs.root() / "object_decoder" / "slot_decoder"), slot_dim, hidden)?;
            Ok(Self { vs, mlp })
        })
    }

    /// Every tensor with its model-file key, sorted by key; they share storage with the head.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The tensors as a model file holds them.
    pub fn raw_parameters(&self) -> Result<Vec<RawTensor>, TensorConvError> {
        self.named_parameters()
            .iter()
            .map(|(name, t)| from_tch(name, t))
            .collect()
    }

    /// Overwrites the head with the tensors of checkpoint `file` (read from `path`), each of the same shape,
    /// read through the one weight check ([`WeightSource::take`]).
    pub fn restore(&self, file: &TensorFile, path: &Path) -> Result<(), RefineTrainError> {
        let source = WeightSource::wrap(file, path).describing("the stage-2 head being trained");
        for (name, mut var) in self.named_parameters() {
            let value = source.take(&name, &var.size())?;
            tch::no_grad(|| var.f_copy_(&value))?;
        }
        Ok(())
    }
}

/// The DINOSAUR tensors refinement `stage` trains (stage 1: the grouping; stage 2: none); every other one stops
/// requiring a gradient.
pub fn trained_parameters(model: &Dinosaur, stage: ModelStage) -> Result<Vec<(String, Tensor)>, RefineTrainError> {
    let prefix = match stage {
        ModelStage::Stage1 => Some(GROUPING_PREFIX),
        ModelStage::Stage2 => None,
        ModelStage::Baseline => return Err(RefineTrainError::NotRefinement { stage }),
    };
    let mut trained = Vec::new();
    for (name, t) in model.named_parameters() {
        if prefix.is_some_and(|p| name.starts_with(p)) {
            trained.push((name, t));
        } else {
            let _ = t.f_set_requires_grad(false)?;
        }
    }
    Ok(trained)
}

/// What a refinement step runs on.
pub struct RefineStep<'a> {
    pub model: &'a Dinosaur,
    /// Stage 2: the head and the loss's options; stage 1: `None`.
    pub head: Option<(&'a TrainableHead, Stage2Options)>,
    /// Seed of the slot noise.
    pub seed: i64,
    pub lr: f64,
    pub clip_grad_norm: f64,
}

/// One step on `features` (B, P, F) and pseudo masks (B, C, S, S) of the samples `first_sample ..`.
pub fn refine_step(
    step: &RefineStep<'_>,
    adam: &mut Adam,
    features: &Tensor,
    masks: &Tensor,
    first_sample: u64,
) -> Result<StepMetrics, RefineTrainError> {
    let c = step.model.config();
    let size = masks.size();
    let (b, h, w) = match size[..] {
        [b, _, h, w] => (b, h, w),
        _ => {
            return Err(RefineError::Shape {
                what: "masks",
                expected: "(B, C, H, W)".into(),
                actual: size,
            }
            .into())
        }
    };
    let indices: Vec<i64> = (0..b).map(|i| first_sample as i64 + i).collect();
    let noise = slot_noise(step.seed, &indices, 1, c.n_slots, c.slot_dim, step.model.device())?;
    adam.zero_grad()?;
    let (loss, mask_similarity, attention_entropy) = match &step.head {
        None => {
            let out = step.model.forward(features, &noise)?;
            let alpha = masks_to_image(&out.masks, h, w)?;
            (stage1_loss(&alpha, masks)?.loss, out.mask_similarity()?, out.attention_entropy()?)
        }
        Some((head, options)) => {
            let out = tch::no_grad(|| step.model.forward(features, &noise))?;
            let weights = head.mlp.weights(&out.slots)?;
            let soft = weighted_masks(&out.masks, &weights)?;
            let inputs = Stage2Inputs {
                slots: &out.slots,
                alpha: &masks_to_image(&out.masks, h, w)?,
                weighted_alpha: &masks_to_image(&soft.weighted_alpha, h, w)?,
                foreground: &masks_to_image(&soft.foreground, h, w)?,
                masks,
            };
            (stage2_loss(&inputs, options)?.loss, out.mask_similarity()?, out.attention_entropy()?)
        }
    };
    let value = loss.f_double_value(&[])?;
    if !value.is_finite() {
        return Err(RefineTrainError::NonFinite {
            loss: value,
            sample: first_sample,
        });
    }
    loss.f_backward()?;
    let grad_norm = adam.clip_grad_norm(step.clip_grad_norm)?;
    adam.step(step.lr)?;
    Ok(StepMetrics {
        loss: value,
        lr: step.lr,
        grad_norm,
        mask_similarity,
        attention_entropy,
    })
}
