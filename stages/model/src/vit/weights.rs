//! Reading a ViT safetensors file: its configuration, identity and key/shape validation.
//!
//! The file holds the canonical (DINOv2 / DINOv3 hub) key names that `tools/convert_vit.py` writes for every
//! family. DINOv3 files hold its storage tokens as `register_tokens`, no `pos_embed`, the K third of every
//! `attn.qkv.bias` as zeros (the official `bias_mask` applied at conversion; the loader zeroes it again, see
//! `VitConfig::k_bias`) and neither `bias_mask`, `rope_embed.periods` nor `mask_token`. The
//! configuration comes from the caller, or else from the file's `mrdino.vit_config` metadata (JSON of
//! [`VitConfig`]); when both exist they must describe the same architecture (the caller may still choose
//! another position-embedding resize). From the configuration the full expected key list with shapes is
//! generated and the file must match it exactly; only `mask_token` (DINOv2's masked-image-modelling token,
//! unused by a frozen backbone) and CLIP's `proj` may be absent. The SHA-256 of the whole file is its identity
//! in every output that depends on it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mrdino_outputs::tensor_keys::check_keys;
use safetensors::tensor::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::{VitConfig, VitError};

/// Metadata key holding the JSON configuration.
pub const CONFIG_METADATA_KEY: &str = "mrdino.vit_config";
/// Metadata key naming the layout the converter read (`hub`, `hf`, `openai`, …).
pub const SOURCE_METADATA_KEY: &str = "mrdino.source_format";

/// Keys a file may omit.
const OPTIONAL_KEYS: &[&str] = &["mask_token", "proj"];

/// A validated weights file: tensors by canonical key, on the target device and in the target kind.
pub struct LoadedWeights {
    pub config: VitConfig,
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
    /// `mrdino.source_format` metadata, `unknown` when absent.
    pub source_format: String,
    pub tensors: HashMap<String, Tensor>,
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads, hashes and validates `path`; tensors are moved to `device` and cast to `kind`.
pub fn load(path: &Path, config: Option<VitConfig>, device: Device, kind: Kind) -> Result<LoadedWeights, VitError> {
    let bytes = std::fs::read(path).map_err(|source| VitError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = sha256_hex(&bytes);
    let format_error = |e: safetensors::SafeTensorError| VitError::Format {
        path: path.to_path_buf(),
        message: format!("{e:?}"),
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(format_error)?;
    let metadata: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let stored = match metadata.get(CONFIG_METADATA_KEY) {
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
    let st = SafeTensors::deserialize(&bytes).map_err(format_error)?;
    let mut found: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for name in st.names() {
        let view = st.tensor(name).map_err(format_error)?;
        found.insert(name.clone(), view.shape().iter().map(|&d| d as i64).collect());
    }

    let mut expected = config.expected_keys();
    if config.family == super::Family::Dinov2 {
        expected.push(("mask_token".to_string(), vec![1, config.embed_dim]));
    }
    check_keys(&found, &expected, OPTIONAL_KEYS).map_err(|problem| VitError::Keys {
        path: path.to_path_buf(),
        problem,
        model: format!("backbone `{}`", config.name),
    })?;

    let mut tensors = HashMap::with_capacity(expected.len());
    for (key, shape) in &expected {
        if key == "mask_token" || !found.contains_key(key) {
            continue;
        }
        let view = st.tensor(key).map_err(format_error)?;
        let source_kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => {
                return Err(VitError::Dtype {
                    path: path.to_path_buf(),
                    key: key.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::f_from_data_size(view.data(), shape, source_kind)?;
        tensors.insert(key.clone(), t.f_to_kind(kind)?.f_to_device(device)?);
    }
    Ok(LoadedWeights {
        config,
        path: path.to_path_buf(),
        sha256,
        source_format: metadata
            .get(SOURCE_METADATA_KEY)
            .cloned()
            .unwrap_or_else(|| "unknown".to_string()),
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
/// LayerScale drawn away from their defaults), drawn on libtorch's CPU generator after `tch::manual_seed(seed)`.
/// For benches and tests that need a file of the right layout.
pub fn random_tensors(config: &VitConfig, seed: i64) -> Vec<(String, Tensor)> {
    tch::manual_seed(seed);
    config
        .expected_keys()
        .into_iter()
        .map(|(key, shape)| {
            let opts = (Kind::Float, Device::Cpu);
            let t = if key.ends_with("gamma") {
                Tensor::rand(shape.as_slice(), opts) + 0.5
            } else if (key.contains("norm") || key.starts_with("ln_pre")) && key.ends_with("weight") {
                Tensor::randn(shape.as_slice(), opts) * 0.1 + 1.0
            } else if key.ends_with("bias") {
                Tensor::randn(shape.as_slice(), opts) * 0.1
            } else {
                Tensor::randn(shape.as_slice(), opts) * 0.02
            };
            (key, t)
        })
        .collect()
}
