//! Loading and saving DINOSAUR weights: mrdino model files (from `tools/convert_ocl_checkpoint.py` or
//! [`Dinosaur::save`]) and training run directories (their checkpoint).
//!
//! Keys are the model's parameter names. The configuration comes from the file's `mrdino.model_config` metadata
//! when present, otherwise it is inferred from shapes ([`infer_config`]): D from `conditioning.slots_mu`, F from
//! the input LayerNorm, h from the first decoder layer, P from `object_decoder.pos_embed`, K from the reference
//! table (729 → 15, 1225 → 30, 361 → 24) unless given. Tensors under `backbone.`, `optimizer.` and the stage-2
//! `object_decoder.slot_decoder.` are not part of the slot model and are skipped; any other unknown key, a
//! missing key or a wrong shape is an error naming the file and the key ([`crate::weights`]).

use std::path::{Path, PathBuf};

use crate::weights::{WeightError, WeightSource};

use mrdino_outputs::checkpoint::{
    read_tensor_file, resolve_model_path, RawTensor, TensorFile, BACKBONE_PREFIX, META_MODEL_CONFIG, OPTIMIZER_PREFIX,
};
use mrdino_outputs::OutputError;
use tch::Device;

use super::{Dinosaur, DinosaurConfig, DinosaurError, InputProjection};
use crate::tensors::{from_tch, TensorConvError};

pub use mrdino_outputs::checkpoint::CHECKPOINT_FILE as RUN_CHECKPOINT_FILE;

/// Prefix of the stage-2 slot-deactivation MLP, which the slot model itself does not hold.
pub const SLOT_DECODER_PREFIX: &str = "object_decoder.slot_decoder.";

/// Why a model file or a parameter cannot be loaded; file errors name the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    File(#[from] OutputError),
    /// A missing, misshapen, unexpected or non-float tensor in the file.
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Model(#[from] DinosaurError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// [`Dinosaur::set_parameter`] of a name the model does not have.
    #[error("unknown key `{key}`")]
    UnknownKey { key: String },
    /// [`Dinosaur::set_parameter`] with a value of another shape.
    #[error("key `{key}`: expected shape {expected:?}, got {got:?}")]
    KeyShape {
        key: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
}

/// The configuration implied by the tensor shapes; `n_slots` overrides the reference table.
pub fn infer_config(file: &TensorFile, path: &Path, n_slots: Option<i64>) -> Result<DinosaurConfig, LoadError> {
    let source = WeightSource::wrap(file, path);
    let mu = source.require_shape("conditioning.slots_mu")?;
    let ln = source.require_shape("perceptual_grouping.positional_embedding.layers.1.0.weight")?;
    let dec0 = source.require_shape("object_decoder.decoder.0.weight")?;
    let pos = source.require_shape("object_decoder.pos_embed")?;
    let ff = source.require_shape("perceptual_grouping.slot_attention.ff_mlp.module.1.weight")?;
    let bad = |message: String| LoadError::Config {
        path: path.to_path_buf(),
        message,
    };
    let (Some(&d), Some(&f), Some(&h), Some(&p), Some(&ffh)) =
        (mu.last(), ln.first(), dec0.first(), pos.get(1), ff.first())
    else {
        return Err(bad("tensors of unexpected rank".into()));
    };
    let k = match n_slots.or_else(|| DinosaurConfig::reference_slots_for_patches(p)) {
        Some(k) => k,
        None => {
            return Err(bad(format!(
                "{p} patches match no reference preset; give the number of slots"
            )))
        }
    };
    let mut config = DinosaurConfig::custom(k, d, f, h, p);
    if d > 0 && ffh % d == 0 {
        config.ff_mlp_ratio = ffh / d;
    }
    if file
        .get("perceptual_grouping.positional_embedding.layers.1.3.weight")
        .is_none()
    {
        config.input_projection = InputProjection::SingleLinear;
    }
    config.target_projection = file.get("target_projection.weight").is_some();
    Ok(config)
}

fn is_foreign(key: &str) -> bool {
    key.starts_with(BACKBONE_PREFIX) || key.starts_with(OPTIMIZER_PREFIX) || key.starts_with(SLOT_DECODER_PREFIX)
}

/// The configuration of the model in `file` (read from `path`): its `mrdino.model_config` metadata, else inferred
/// from the shapes ([`infer_config`]; `n_slots` overrides K). Nothing is allocated.
pub fn file_config(file: &TensorFile, path: &Path, n_slots: Option<i64>) -> Result<DinosaurConfig, LoadError> {
    match file.meta(META_MODEL_CONFIG) {
        Some(json) => serde_json::from_str(json).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            message: format!("{META_MODEL_CONFIG}: {e}"),
        }),
        None => infer_config(file, path, n_slots),
    }
}

impl Dinosaur {
    /// Loads a model file, or the checkpoint of a training run directory.
    pub fn load(path: &Path, device: Device) -> Result<Self, LoadError> {
        let path = resolve_model_path(path);
        let file = read_tensor_file(&path)?;
        Self::from_tensor_file(&file, &path, None, device)
    }

    /// Builds the model from a parsed file; `n_slots` overrides K when the configuration is inferred.
    pub fn from_tensor_file(
        file: &TensorFile,
        path: &Path,
        n_slots: Option<i64>,
        device: Device,
    ) -> Result<Self, LoadError> {
        let model = Dinosaur::new(file_config(file, path, n_slots)?, device)?;
        let source = WeightSource::wrap(file, path).describing("DINOSAUR slot model");
        let params = model.named_parameters();
        for (key, param) in &params {
            model.set_parameter(key, &source.take(key, &param.size())?)?;
        }
        let known = |key: &str| params.iter().any(|(k, _)| k == key);
        source.refuse_unexpected("", known, |key| !is_foreign(key))?;
        Ok(model)
    }

    /// The parameters as raw float32 tensors, sorted by key.
    pub fn raw_parameters(&self) -> Result<Vec<RawTensor>, TensorConvError> {
        self.named_parameters().iter().map(|(k, t)| from_tch(k, t)).collect()
    }
}
