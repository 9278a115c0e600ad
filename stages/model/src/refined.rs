//! A model as inference sees it: the DINOSAUR slot model and, for an MR-DINOSAUR (stage-2) model, its
//! slot-deactivation head (spec §5), loaded from one model file.
//!
//! A model file holds the DINOSAUR keys ([`crate::dinosaur`]) and optionally the eight stage-2 tensors
//! `object_decoder.slot_decoder.{0,2,4,6}.{weight,bias}`; the head's hidden size h comes from the shape of
//! `object_decoder.slot_decoder.0.weight` (h, D). A file with some but not all of the eight tensors, or with
//! shapes that do not chain D → h → h → h → 1, is an error naming the key.
//!
//! [`RefinedModel::window_masks`] is the per-window inference of the reference's evaluation, on the decoder
//! alphas (B, K, P):
//! * stage 2: w binarised at > 0.5 and the K + 1 channels [1 − Σ_k w_k α_k, w_1 α_1, …, w_K α_K]
//!   ([`crate::refine::deactivated_masks`]) on the patches, then upsampled bilinearly to the window
//!   ([`crate::dinosaur::masks_to_image`]), in the reference's order; channel 0 of every window is its
//!   background;
//! * baseline: the K alphas upsampled; the window merge takes the first slot of every window for background
//!   (the reference's evaluation does so for the baseline too, spec §3.6).
//!
//! [`ModelStage`] says which step of the pipeline a model file comes from (baseline DINOSAUR, refinement stage
//! 1, stage 2), so a step can refuse a model of the wrong stage naming the one it found.

use std::path::{Path, PathBuf};

use mrdino_outputs::checkpoint::{read_tensor_file, resolve_model_path, TensorFile, META_STAGE};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::dinosaur::{masks_to_image, Dinosaur, DinosaurError, LoadError};
use crate::refine::{deactivated_masks, RefineError, SlotDeactivation};
use crate::weights::{WeightError, WeightSource};

/// Which step of the pipeline a model comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelStage {
    /// DINOSAUR as `train dinosaur` (or the reference's first training) leaves it.
    Baseline,
    /// After refinement stage 1 (the slot attention refined on pseudo-labels).
    Stage1,
    /// After refinement stage 2 (with the slot-deactivation head).
    Stage2,
}

/// A model file whose stage cannot be told.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{path}: unknown `{key}` = `{found}` (expected baseline, stage1 or stage2)", key = META_STAGE)]
    Unknown { path: PathBuf, found: String },
    #[error(
        "{path}: `{key}` says {recorded} but the file {holds} the stage-2 head's tensors \
         (`object_decoder.slot_decoder.*`)",
        key = META_STAGE,
        holds = if *has_head { "holds" } else { "lacks" }
    )]
    Inconsistent { path: PathBuf, recorded: String, has_head: bool },
}

impl ModelStage {
    /// The name recorded in `mrdino.stage`.
    pub fn name(self) -> &'static str {
        match self {
            ModelStage::Baseline => "baseline",
            ModelStage::Stage1 => "stage1",
            ModelStage::Stage2 => "stage2",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "baseline" => Some(ModelStage::Baseline),
            "stage1" => Some(ModelStage::Stage1),
            "stage2" => Some(ModelStage::Stage2),
            _ => None,
        }
    }

    /// The stage a refinement stage starts from: stage 1 from a baseline, stage 2 from a stage-1 model.
    pub fn refined_from(self) -> Option<Self> {
        match self {
            ModelStage::Baseline => None,
            ModelStage::Stage1 => Some(ModelStage::Baseline),
            ModelStage::Stage2 => Some(ModelStage::Stage1),
        }
    }

    /// The stage of a model file (read from `path`): its `mrdino.stage` (converted reference checkpoints and
    /// refinement runs record it); without one, stage 2 when it holds the deactivation head, else a baseline
    /// (`train dinosaur` records no stage). A recorded stage that contradicts the head's presence is an error.
    pub fn of_file(file: &TensorFile, path: &Path) -> Result<Self, StageError> {
        let has_head = file
            .tensors
            .iter()
            .any(|t| t.name.starts_with(crate::dinosaur::SLOT_DECODER_PREFIX));
        let Some(recorded) = file.meta(META_STAGE) else {
            return Ok(if has_head { ModelStage::Stage2 } else { ModelStage::Baseline });
        };
        let stage = Self::parse(recorded).ok_or_else(|| StageError::Unknown {
            path: path.to_path_buf(),
            found: recorded.to_string(),
        })?;
        if has_head != (stage == ModelStage::Stage2) {
            return Err(StageError::Inconsistent {
                path: path.to_path_buf(),
                recorded: recorded.to_string(),
                has_head,
            });
        }
        Ok(stage)
    }
}

impl std::fmt::Display for ModelStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Layers of the slot-deactivation MLP as the reference's `nn.Sequential` numbers them.
pub const SLOT_DECODER_LAYERS: [&str; 4] = ["0", "2", "4", "6"];

/// Errors of loading or running a refined model.
#[derive(Debug, thiserror::Error)]
pub enum RefinedError {
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A missing, misshapen, unexpected or non-float tensor of the head (boxed: the error stays small).
    #[error(transparent)]
    Weights(Box<WeightError>),
    #[error("{path}: {message}")]
    Head { path: String, message: String },
    #[error(transparent)]
    Model(#[from] DinosaurError),
    #[error(transparent)]
    Refine(#[from] RefineError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl From<WeightError> for RefinedError {
    fn from(e: WeightError) -> Self {
        Self::Weights(Box::new(e))
    }
}

/// The slot-deactivation head with the var store that owns its weights.
#[derive(Debug)]
pub struct DeactivationHead {
    _vs: nn::VarStore,
    pub mlp: SlotDeactivation,
    pub hidden: i64,
}

/// DINOSAUR plus, for a stage-2 model, the deactivation head.
#[derive(Debug)]
pub struct RefinedModel {
    pub dinosaur: Dinosaur,
    pub deactivation: Option<DeactivationHead>,
}

/// What one forward gives per window.
#[derive(Debug)]
pub struct WindowMasks {
    /// (B, C, h, w): C = K + 1 for stage 2 (channel 0 background), K for the baseline.
    pub masks: Tensor,
    /// Slots after slot attention (B, K, D): the features the window merge compares.
    pub slots: Tensor,
    /// Deactivation weights w (B, K) of a stage-2 model.
    pub weights: Option<Tensor>,
}

fn slot_decoder_key(layer: &str, tensor: &str) -> String {
    format!("{}{layer}.{tensor}", crate::dinosaur::SLOT_DECODER_PREFIX)
}

impl DeactivationHead {
    /// The head stored in `file`, `None` when it holds none of its tensors.
    pub fn from_tensor_file(
        file: &TensorFile,
        path: &Path,
        slot_dim: i64,
        device: Device,
    ) -> Result<Option<Self>, RefinedError> {
        let keys: Vec<String> = SLOT_DECODER_LAYERS
            .iter()
            .flat_map(|l| [slot_decoder_key(l, "weight"), slot_decoder_key(l, "bias")])
            .collect();
        let present: Vec<&String> = keys.iter().filter(|k| file.get(k).is_some()).collect();
        if present.is_empty() {
            return Ok(None);
        }
        let bad = |message: String| RefinedError::Head {
            path: path.display().to_string(),
            message,
        };
        if let Some(missing) = keys.iter().find(|k| file.get(k).is_none()) {
            return Err(bad(format!(
                "has {} of the 8 stage-2 tensors but not `{missing}`",
                present.len()
            )));
        }
        let source = WeightSource::wrap(file, path).describing("stage-2 slot-deactivation head");
        source.refuse_unexpected(
            crate::dinosaur::SLOT_DECODER_PREFIX,
            |key| SLOT_DECODER_LAYERS.iter().any(|l| key == format!("{l}.weight") || key == format!("{l}.bias")),
            |_| true,
        )?;
        let first = file.get(&keys[0]).map(|t| t.shape.clone()).unwrap_or_default();
        let hidden = match first[..] {
            [h, d] if d as i64 == slot_dim && h > 0 => h as i64,
            _ => {
                return Err(bad(format!(
                    "`{}` has shape {first:?}; expected (h, {slot_dim}) for slots of size {slot_dim}",
                    keys[0]
                )))
            }
        };
        let vs = nn::VarStore::new(device);
        let prefix = crate::dinosaur::SLOT_DECODER_PREFIX.trim_end_matches('.');
        let mut root = vs.root();
        for part in prefix.split('.') {
            root = &root / part;
        }
        let mlp = SlotDeactivation::new(&root, slot_dim, hidden)?;
        let vars = vs.variables();
        for key in &keys {
            let Some(var) = vars.get(key) else {
                return Err(bad(format!("no variable for `{key}`")));
            };
            let value = source.take(key, &var.size())?.f_to_kind(Kind::Float)?.f_to_device(device)?;
            let mut var = var.shallow_clone();
            tch::no_grad(|| var.f_copy_(&value))?;
        }
        Ok(Some(Self { _vs: vs, mlp, hidden }))
    }
}

impl RefinedModel {
    /// Loads a model file, or the checkpoint of a run directory.
    pub fn load(path: &Path, device: Device) -> Result<Self, RefinedError> {
        let path = resolve_model_path(path);
        let file = read_tensor_file(&path).map_err(LoadError::from)?;
        Self::from_tensor_file(&file, &path, device)
    }

    pub fn from_tensor_file(file: &TensorFile, path: &Path, device: Device) -> Result<Self, RefinedError> {
        let dinosaur = Dinosaur::from_tensor_file(file, path, None, device)?;
        let deactivation = DeactivationHead::from_tensor_file(file, path, dinosaur.config().slot_dim, device)?;
        Ok(Self { dinosaur, deactivation })
    }

    /// Whether this is a stage-2 model (channel 0 of every window is background).
    pub fn is_stage2(&self) -> bool {
        self.deactivation.is_some()
    }

    /// Mask channels per window: K + 1 for stage 2, K for the baseline.
    pub fn channels_per_window(&self) -> i64 {
        self.dinosaur.config().n_slots + i64::from(self.is_stage2())
    }

    /// Masks of windows of `height`×`width` pixels from their features (B, P, F) and slot noise (B, K, D).
    pub fn window_masks(
        &self,
        features: &Tensor,
        noise: &Tensor,
        height: i64,
        width: i64,
    ) -> Result<WindowMasks, RefinedError> {
        tch::no_grad(|| {
            let out = self.dinosaur.forward(features, noise)?;
            match &self.deactivation {
                Some(head) => {
                    let weights = head.mlp.weights(&out.slots)?;
                    let patches = deactivated_masks(&out.masks, &weights)?;
                    Ok(WindowMasks {
                        masks: masks_to_image(&patches, height, width)?,
                        slots: out.slots,
                        weights: Some(weights),
                    })
                }
                None => Ok(WindowMasks {
                    masks: masks_to_image(&out.masks, height, width)?,
                    slots: out.slots,
                    weights: None,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dinosaur::DinosaurConfig;
    use crate::tensors::from_tch;

    const K: i64 = 3;
    const D: i64 = 8;

    /// A random DINOSAUR's tensors, with the stage-2 head of hidden size `hidden` when given.
    fn model_file(hidden: Option<i64>) -> TensorFile {
        let config = DinosaurConfig::custom(K, D, 6, 16, 4);
        let mut tensors = crate::dinosaur::seeded(4, || {
            let model = Dinosaur::new(config.clone(), Device::Cpu).unwrap();
            let mut tensors = model.raw_parameters().unwrap();
            if let Some(h) = hidden {
                for (layer, fan_in, fan_out) in [("0", D, h), ("2", h, h), ("4", h, h), ("6", h, 1)] {
                    let w = Tensor::randn([fan_out, fan_in], (Kind::Float, Device::Cpu));
                    let b = Tensor::randn([fan_out], (Kind::Float, Device::Cpu));
                    tensors.push(from_tch(&slot_decoder_key(layer, "weight"), &w).unwrap());
                    tensors.push(from_tch(&slot_decoder_key(layer, "bias"), &b).unwrap());
                }
            }
            tensors
        });
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let json = serde_json::to_string(&config).unwrap();
        TensorFile {
            tensors,
            metadata: [(mrdino_outputs::checkpoint::META_MODEL_CONFIG.to_string(), json)].into(),
        }
    }

    fn inputs() -> (Tensor, Tensor) {
        crate::dinosaur::seeded(9, || {
            (
                Tensor::randn([2, 4, 6], (Kind::Float, Device::Cpu)),
                Tensor::randn([2, K, D], (Kind::Float, Device::Cpu)),
            )
        })
    }

    #[test]
    fn a_stage2_file_gives_k_plus_one_channels_as_the_reference_orders_them() {
        let path = Path::new("stage2.safetensors");
        let model = RefinedModel::from_tensor_file(&model_file(Some(5)), path, Device::Cpu).unwrap();
        assert!(model.is_stage2());
        assert_eq!(model.deactivation.as_ref().unwrap().hidden, 5);
        assert_eq!(model.channels_per_window(), K + 1);
        let (features, noise) = inputs();
        let got = model.window_masks(&features, &noise, 6, 6).unwrap();
        assert_eq!(got.masks.size(), [2, K + 1, 6, 6]);
        // The same as: forward, the head's weights, masks on the patches, then the bilinear upsampling.
        let out = model.dinosaur.forward(&features, &noise).unwrap();
        let weights = model.deactivation.as_ref().unwrap().mlp.weights(&out.slots).unwrap();
        let want = masks_to_image(&deactivated_masks(&out.masks, &weights).unwrap(), 6, 6).unwrap();
        assert!(got.masks.allclose(&want, 0.0, 0.0, false));
        assert!(got.weights.unwrap().allclose(&weights, 0.0, 0.0, false));
        // Channels still sum to one per pixel.
        let sums = got.masks.sum_dim_intlist([1].as_slice(), false, Kind::Float);
        assert!(sums.allclose(&Tensor::ones_like(&sums), 1e-5, 1e-5, false));
    }

    #[test]
    fn a_file_without_the_head_is_the_baseline_with_k_channels() {
        let model = RefinedModel::from_tensor_file(&model_file(None), Path::new("m"), Device::Cpu).unwrap();
        assert!(!model.is_stage2());
        assert_eq!(model.channels_per_window(), K);
        let (features, noise) = inputs();
        let got = model.window_masks(&features, &noise, 6, 6).unwrap();
        let out = model.dinosaur.forward(&features, &noise).unwrap();
        assert!(got
            .masks
            .allclose(&masks_to_image(&out.masks, 6, 6).unwrap(), 0.0, 0.0, false));
        assert!(got.weights.is_none());
    }

    #[test]
    fn incomplete_or_misshaped_heads_are_errors_naming_the_key() {
        let path = Path::new("bad.safetensors");
        let mut file = model_file(Some(5));
        file.tensors.retain(|t| t.name != slot_decoder_key("4", "bias"));
        let err = RefinedModel::from_tensor_file(&file, path, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("slot_decoder.4.bias"),
            "{err}"
        );

        let mut file = model_file(Some(5));
        let first = slot_decoder_key("0", "weight");
        let wrong = from_tch(&first, &Tensor::zeros([5, D + 1], (Kind::Float, Device::Cpu))).unwrap();
        file.tensors.retain(|t| t.name != first);
        file.tensors.push(wrong);
        file.tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let err = RefinedModel::from_tensor_file(&file, path, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("slot_decoder.0.weight") && err.contains("(h, 8)"), "{err}");

        let mut file = model_file(Some(5));
        let key = slot_decoder_key("2", "weight");
        let wrong = from_tch(&key, &Tensor::zeros([4, 5], (Kind::Float, Device::Cpu))).unwrap();
        file.tensors.retain(|t| t.name != key);
        file.tensors.push(wrong);
        file.tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let err = RefinedModel::from_tensor_file(&file, path, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("slot_decoder.2.weight"), "{err}");

        let mut file = model_file(Some(5));
        file.tensors.push(
            from_tch(
                "object_decoder.slot_decoder.8.weight",
                &Tensor::zeros([1], (Kind::Float, Device::Cpu)),
            )
            .unwrap(),
        );
        file.tensors.sort_by(|a, b| a.name.cmp(&b.name));
        let err = RefinedModel::from_tensor_file(&file, path, Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("slot_decoder.8.weight"), "{err}");
    }

    #[test]
    fn the_stage_of_a_file_is_recorded_or_told_by_the_head() {
        let path = Path::new("m.safetensors");
        let stage = |file: &TensorFile| ModelStage::of_file(file, path);
        assert_eq!(stage(&model_file(None)).unwrap(), ModelStage::Baseline);
        assert_eq!(stage(&model_file(Some(5))).unwrap(), ModelStage::Stage2);
        let tagged = |hidden, name: &str| {
            let mut file = model_file(hidden);
            file.metadata.insert(META_STAGE.into(), name.into());
            file
        };
        assert_eq!(stage(&tagged(None, "stage1")).unwrap(), ModelStage::Stage1);
        assert_eq!(stage(&tagged(None, "baseline")).unwrap(), ModelStage::Baseline);
        assert_eq!(stage(&tagged(Some(5), "stage2")).unwrap(), ModelStage::Stage2);
        let err = stage(&tagged(None, "stage3")).unwrap_err().to_string();
        assert!(err.contains("m.safetensors") && err.contains("`stage3`"), "{err}");
        let err = stage(&tagged(Some(5), "stage1")).unwrap_err().to_string();
        assert!(err.contains("says stage1") && err.contains("holds"), "{err}");
        let err = stage(&tagged(None, "stage2")).unwrap_err().to_string();
        assert!(err.contains("lacks"), "{err}");
        assert_eq!(ModelStage::Stage2.refined_from(), Some(ModelStage::Stage1));
        assert_eq!(ModelStage::Stage1.refined_from(), Some(ModelStage::Baseline));
        assert_eq!(ModelStage::Baseline.refined_from(), None);
    }
}
