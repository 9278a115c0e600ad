//! ResNet-50 as a frozen backbone for the robustness analysis (SwaV's self-supervised ResNet-50).
//!
//! The network is `tch::vision::resnet::resnet50_no_final_layer`, whose module tree and parameter names are
//! torchvision's (`conv1`, `bn1`, `layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.{0,1}}`, stride on
//! the 3×3 convolution, BatchNorm eps 1e-5 in eval mode), so a torchvision-layout state dict loads by name. SwaV's
//! official checkpoint is such a state dict behind a `module.` prefix with its projection head and prototypes;
//! `tools/convert_resnet.py` strips those. The file must hold exactly the expected tensors with their shapes
//! (`num_batches_tracked` counters are ignored); anything else is refused naming the key and both shapes.
//!
//! The representation is the global average pool of the last stage, (B, 2048): a ResNet has no class token, so
//! for the analysis its "CLS" and "mean-pooled" representations are the same vector. Input normalisation is
//! ImageNet's mean/std on [0, 1] RGB, as SwaV trains with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use mrdino_outputs::weights_id::{file_identity, Identity};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// ImageNet normalisation used by SwaV (and torchvision's ResNets).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, thiserror::Error)]
pub enum ResnetError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: missing tensor `{key}` (expected shape {expected:?})")]
    Missing {
        path: PathBuf,
        key: String,
        expected: Vec<i64>,
    },
    #[error("{path}: unexpected tensor `{key}` (shape {shape:?}); is this a torchvision-layout ResNet-50?")]
    Unexpected {
        path: PathBuf,
        key: String,
        shape: Vec<i64>,
    },
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        key: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error("{path}: tensor `{key}`: {message}")]
    Tensor {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A frozen ResNet-50 in eval mode.
pub struct Resnet50 {
    // Owns the parameters the module borrows by name.
    _vs: nn::VarStore,
    net: Box<dyn ModuleT>,
    device: Device,
    identity: Identity,
}

impl std::fmt::Debug for Resnet50 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resnet50")
            .field("device", &self.device)
            .field("identity", &self.identity.id)
            .finish()
    }
}

impl Resnet50 {
    /// Loads torchvision-layout ResNet-50 weights from safetensors onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self, ResnetError> {
        let bytes = std::fs::read(path).map_err(|source| ResnetError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let identity = file_identity(path, &bytes, |name| !name.ends_with("num_batches_tracked")).map_err(|e| {
            ResnetError::Format {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| ResnetError::Format {
            path: path.to_path_buf(),
            message: format!("{e:?}"),
        })?;
        let mut vs = nn::VarStore::new(device);
        let net = tch::vision::resnet::resnet50_no_final_layer(&vs.root());
        let mut expected: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let mut found = BTreeMap::new();
        for name in file.names() {
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let view = file.tensor(name).map_err(|e| ResnetError::Format {
                path: path.to_path_buf(),
                message: format!("{e:?}"),
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let Some(var) = expected.get(name.as_str()) else {
                return Err(ResnetError::Unexpected {
                    path: path.to_path_buf(),
                    key: name.clone(),
                    shape,
                });
            };
            if var.size() != shape {
                return Err(ResnetError::Shape {
                    path: path.to_path_buf(),
                    key: name.clone(),
                    found: shape,
                    expected: var.size(),
                });
            }
            let kind = match view.dtype() {
                safetensors::Dtype::F32 => Kind::Float,
                safetensors::Dtype::F16 => Kind::Half,
                safetensors::Dtype::BF16 => Kind::BFloat16,
                safetensors::Dtype::F64 => Kind::Double,
                other => {
                    return Err(ResnetError::Tensor {
                        path: path.to_path_buf(),
                        key: name.clone(),
                        message: format!("unsupported dtype {other:?}"),
                    })
                }
            };
            let value = Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| ResnetError::Tensor {
                path: path.to_path_buf(),
                key: name.clone(),
                message: e.to_string(),
            })?;
            found.insert(name.clone(), value);
        }
        for (name, var) in &expected {
            if !found.contains_key(name) {
                return Err(ResnetError::Missing {
                    path: path.to_path_buf(),
                    key: name.clone(),
                    expected: var.size(),
                });
            }
        }
        tch::no_grad(|| {
            for (name, var) in expected.iter_mut() {
                var.copy_(&found[name].to_kind(Kind::Float));
            }
        });
        vs.freeze();
        Ok(Self {
            _vs: vs,
            net: Box::new(net),
            device,
            identity,
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// ImageNet normalisation of (B, 3, H, W) RGB in [0, 1].
    pub fn normalize(&self, images01: &Tensor) -> Tensor {
        let mean = Tensor::from_slice(&IMAGENET_MEAN)
            .to_kind(Kind::Float)
            .view([1, 3, 1, 1])
            .to_device(self.device);
        let std = Tensor::from_slice(&IMAGENET_STD)
            .to_kind(Kind::Float)
            .view([1, 3, 1, 1])
            .to_device(self.device);
        (images01.to_device(self.device).to_kind(Kind::Float) - mean) / std
    }

    /// Global-average-pooled features (B, 2048) of normalised images (B, 3, H, W).
    pub fn pooled(&self, images: &Tensor) -> Tensor {
        tch::no_grad(|| self.net.forward_t(&images.to_device(self.device), false))
    }
}
