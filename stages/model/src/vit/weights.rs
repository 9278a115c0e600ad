//! Reading ViT weights: their configuration, identity and key/shape validation.
//!
//! The weights hold the canonical (DINOv2 / DINOv3 hub) key names that `tools/convert_vit.py` writes for every
//! family, either as a file of their own or embedded in a model file under a prefix (`backbone.*`, as
//! `tools/convert_ocl_checkpoint.py` writes the reference checkpoints' frozen DINOv2). DINOv3 weights hold its
//! storage tokens as `register_tokens`, no `pos_embed`, the K third of every `attn.qkv.bias` as zeros (the official
//! `bias_mask` applied at conversion; the loader zeroes it again, see `VitConfig::k_bias`) and neither
//! `bias_mask`, `rope_embed.periods` nor `mask_token`. The configuration comes from the caller, or else from the
//! file's `mrdino.vit_config` metadata (JSON of [`VitConfig`]); when both exist they must describe the same
//! architecture (the caller may still choose another position-embedding resize). From the configuration the full
//! expected key list with shapes is generated and the weights must match it exactly; only `mask_token` (DINOv2's
//! masked-image-modelling token, unused by a frozen backbone) and CLIP's `proj` may be absent. The identity of
//! the weights ([`mrdino_outputs::weights_id`]) is computed from the tensors the ViT reads (so `mask_token` is
//! left out): a hub checkpoint converted on its own and the same tensors embedded in a converted reference
//! checkpoint have one identity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mrdino_outputs::checkpoint::TensorFile;
use mrdino_outputs::weights_id::{hex, Identity};
use safetensors::tensor::Dtype;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::{VitConfig, VitError};
use crate::weights::{RandomInit, WeightSource};

/// Metadata key holding the JSON configuration.
pub const CONFIG_METADATA_KEY: &str = "mrdino.vit_config";
/// Metadata key naming the layout the converter read (`hub`, `hf`, `openai`, …).
pub const SOURCE_METADATA_KEY: &str = "mrdino.source_format";

/// Keys the weights may omit.
const OPTIONAL_KEYS: &[&str] = &["mask_token", "proj"];
/// Keys the ViT never reads: not loaded and not part of the identity.
pub const UNUSED_KEYS: &[&str] = &["mask_token"];

/// Validated weights: tensors by canonical key, on the target device and in the target kind.
pub struct LoadedWeights {
    pub config: VitConfig,
    /// The file the weights come from (the model file, for embedded weights).
    pub path: PathBuf,
    pub identity: Identity,
    /// `mrdino.source_format` metadata, `unknown` when absent (`embedded` for weights inside a model file).
    pub source_format: String,
    pub tensors: HashMap<String, Tensor>,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Reads and validates the weights file `path`; tensors are moved to `device` and cast to `kind`. The earlier
/// identity of the weights is the SHA-256 of the file's bytes.
pub fn load(path: &Path, config: Option<VitConfig>, device: Device, kind: Kind) -> Result<LoadedWeights, VitError> {
    let source = WeightSource::open(path)?;
    let stored = match source.meta(CONFIG_METADATA_KEY) {
        Some(json) => Some(VitConfig::from_json(json).map_err(|e| VitError::Metadata {
            path: path.to_path_buf(),
            key: CONFIG_METADATA_KEY.to_string(),
            message: e.to_string(),
        })?),
        None => None,
    };
    let config = match (config, stored) {
        (Some(given), Some(stored)) if !given.same_architecture(&stored) => {
            return Err(VitError::ConfigMismatch {
                path: path.to_path_buf(),
                given: given.name,
                stored: stored.name,
            })
        }
        (Some(given), _) => given,
        (None, Some(stored)) => stored,
        (None, None) => {
            return Err(VitError::NoConfig {
                path: path.to_path_buf(),
            })
        }
    };
    let source_format = source.meta(SOURCE_METADATA_KEY).unwrap_or("unknown").to_string();
    validated(source, "", config, device, kind, None, source_format)
}

/// Whether `file` embeds ViT weights under `prefix`.
pub fn has_embedded(file: &TensorFile, prefix: &str) -> bool {
    file.under(prefix).next().is_some()
}

/// The ViT weights embedded in the model file `file` (read from `path`) under `prefix`, validated against
/// `config`. Their earlier identity is the digest the reference-checkpoint converter of earlier versions recorded
/// ([`earlier_converter_digest`]), so model files converted then keep running on their own backbone.
pub fn load_embedded(
    file: &TensorFile,
    prefix: &str,
    path: &Path,
    config: VitConfig,
    device: Device,
    kind: Kind,
) -> Result<LoadedWeights, VitError> {
    let earlier = earlier_converter_digest(file, prefix);
    let source = WeightSource::wrap(file, path);
    validated(source, prefix, config, device, kind, Some(earlier), "embedded".to_string())
}

/// What `tools/convert_ocl_checkpoint.py` of earlier versions recorded as `mrdino.backbone_sha256`: SHA-256 over
/// the embedded tensors sorted by name (every one, `mask_token` included), each as its name's bytes followed by
/// its float32 little-endian values.
pub fn earlier_converter_digest(file: &TensorFile, prefix: &str) -> String {
    let mut h = Sha256::new();
    for (name, t) in file.under(prefix) {
        h.update(name.as_bytes());
        if t.dtype == Dtype::F32 {
            h.update(&t.data);
        }
    }
    hex(&h.finalize())
}

/// Checks the keys under `prefix` against `config` and reads them. The earlier identity is `earlier`, else the
/// SHA-256 of the file's bytes.
fn validated(
    source: WeightSource<'_>,
    prefix: &str,
    config: VitConfig,
    device: Device,
    kind: Kind,
    earlier: Option<String>,
    source_format: String,
) -> Result<LoadedWeights, VitError> {
    let source = source.describing(format!("backbone `{}`", config.name));
    let mut expected = config.expected_keys();
    if config.family == super::Family::Dinov2 {
        expected.push(("mask_token".to_string(), vec![1, config.embed_dim]));
    }
    source.check_keys(prefix, &expected, OPTIONAL_KEYS, |_| true)?;
    let identity = source.identity(prefix, |name| !UNUSED_KEYS.contains(&name), earlier)?;
    let mut tensors = HashMap::with_capacity(expected.len());
    for (key, shape) in &expected {
        let full = format!("{prefix}{key}");
        if UNUSED_KEYS.contains(&key.as_str()) || !source.contains(&full) {
            continue;
        }
        let t = source.take(&full, shape)?;
        tensors.insert(key.clone(), t.f_to_kind(kind)?.f_to_device(device)?);
    }
    Ok(LoadedWeights {
        config,
        path: source.path().to_path_buf(),
        identity,
        source_format,
        tensors,
    })
}

/// Writes `tensors` (canonical names) with the configuration in the metadata, so the file loads without a name.
/// For tests, benches and exporting a model built in Rust.
pub fn save(path: &Path, config: &VitConfig, tensors: &[(String, Tensor)]) -> Result<(), VitError> {
    let mut metadata = HashMap::new();
    metadata.insert(CONFIG_METADATA_KEY.to_string(), config.to_json());
    metadata.insert(SOURCE_METADATA_KEY.to_string(), "mrdino".to_string());
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let numel = t.numel();
        let mut values = vec![0f32; numel];
        t.f_copy_data(&mut values, numel)?;
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), bytes, shape));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(name, bytes, shape)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| VitError::Format {
                    path: path.to_path_buf(),
                    message: format!("{name}: {e:?}"),
                })
        })
        .collect::<Result<_, _>>()?;
    safetensors::tensor::serialize_to_file(views, &Some(metadata), path).map_err(|e| VitError::Format {
        path: path.to_path_buf(),
        message: format!("{e:?}"),
    })
}

/// Random weights with the key set of `config` (weights N(0, 0.02), LayerNorm weights 1 + N(0, 0.1), biases and
/// LayerScale drawn away from their defaults), drawn by [`crate::weights::random_tensors`] from `seed`. For
/// benches and tests that need a file of the right layout.
pub fn random_tensors(config: &VitConfig, seed: i64) -> Result<Vec<(String, Tensor)>, tch::TchError> {
    crate::weights::random_tensors(config.expected_keys(), seed, |key| {
        if key.ends_with("gamma") {
            RandomInit::Uniform { low: 0.5 }
        } else if (key.contains("norm") || key.starts_with("ln_pre")) && key.ends_with("weight") {
            RandomInit::Normal { mean: 1.0, std: 0.1 }
        } else if key.ends_with("bias") {
            RandomInit::Normal { mean: 0.0, std: 0.1 }
        } else {
            RandomInit::Normal { mean: 0.0, std: 0.02 }
        }
    })
}
