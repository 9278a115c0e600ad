//! RAFT optical flow in libtorch (through `tch`): one implementation for torchvision `raft_large` /
//! `raft_small`, princeton-vl RAFT and SMURF, as MR-DINOSAUR uses them to find moving objects.
//!
//! Why one network: the three families share torchvision's architecture and differ only in weights layout,
//! the context-encoder norm and SMURF's y-major correlation order. The converters in `tools/`
//! (`convert_raft.py`, `convert_smurf_tf.py`) move every family onto torchvision key names, transpose SMURF's
//! `convcorr1` 9×9 blocks so the runtime has a single x-major lookup, and record `family`, `arch`,
//! `context_norm`, `corr_order`, `input_range` and `iterations` in the safetensors metadata. The loader infers
//! the architecture from the key set (see [`weights`]) and refuses any missing, unexpected or mis-shaped key.
//!
//! Reference behaviour reproduced (see [`net`] for the forward pass):
//! - input scaling from the file's `input_range`: `[-1,1]` (2·(x/255) − 1) for torchvision, SMURF and converted
//!   princeton weights (princeton's model maps its 0..255 input to [-1,1] itself, so once converted it needs the
//!   same explicit mapping);
//! - sizes not divisible by 8 are padded like princeton's `InputPadder`: edge pixels replicated, padding split
//!   evenly with the odd pixel at the bottom / right; the flow is cropped back, not resized (mr-dinosaur's RAFT
//!   path resizes the padded flow instead, which shifts it by a fraction of a pixel near the borders);
//! - padded sizes below 128 px are refused: the 4-level correlation pyramid needs 1/8-resolution feature maps of
//!   at least 16 px, smaller inputs give NaNs in the reference;
//! - the output is the last iteration's flow in pixels, channel 0 = u (x), channel 1 = v (y).
//!
//! Threads are the caller's business: call `tch::set_num_threads` once (1 when other work shares the cores,
//! since libtorch's OpenMP collapses under contention).
//!
//! ```no_run
//! use mrdino_stages::flow::raft::RaftFlow;
//! let raft = RaftFlow::load("smurf_kitti.safetensors", tch::Device::Cpu)?.with_iterations(12)?;
//! # Ok::<(), mrdino_stages::flow::raft::RaftError>(())
//! ```

pub mod net;
pub mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mrdino_datasets::RgbImage;
use tch::{Device, Kind, Tensor};

use super::{FlowError, FlowEstimator, FlowField};
pub use weights::{Arch, Architecture, InputRange, Norm, WeightsInfo};

/// Smallest padded input side the network accepts (feature maps of 16 px at 1/8 resolution).
pub const MIN_SIDE: i64 = 128;

/// Errors of loading or running RAFT; file errors name the path and the offending key.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    /// A weights file that cannot be read, or whose keys, shapes or dtypes are not the architecture's.
    #[error(transparent)]
    Weights(#[from] mrdino_model::weights::WeightError),
    #[error("{path}: metadata `{key}` = `{value}`: {message}")]
    Metadata {
        path: PathBuf,
        key: String,
        value: String,
        message: String,
    },
    #[error("compute kind {kind:?} is not supported on {device:?} (use Float, or Half/BFloat16 on CUDA)")]
    Kind { kind: Kind, device: Device },
    #[error("iterations must be at least 1")]
    Iterations,
    #[error("input {height}x{width} pads to {padded_height}x{padded_width}, below the minimum {MIN_SIDE}x{MIN_SIDE} of RAFT")]
    TooSmall {
        height: i64,
        width: i64,
        padded_height: i64,
        padded_width: i64,
    },
    #[error("input shape mismatch: {message}")]
    Input { message: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl From<RaftError> for FlowError {
    fn from(e: RaftError) -> Self {
        match &e {
            RaftError::Metadata { path, .. } => FlowError::File {
                path: path.clone(),
                message: e.to_string(),
            },
            RaftError::Weights(w) => FlowError::File {
                path: w.path().to_path_buf(),
                message: e.to_string(),
            },
            _ => FlowError::Backend(e.to_string()),
        }
    }
}

/// Replicate padding that brings (h, w) to multiples of 8: (left, right, top, bottom), odd pixel right/bottom.
pub fn padding_for(height: i64, width: i64) -> [i64; 4] {
    let pad_h = (8 - height % 8) % 8;
    let pad_w = (8 - width % 8) % 8;
    [pad_w / 2, pad_w - pad_w / 2, pad_h / 2, pad_h - pad_h / 2]
}

/// A loaded RAFT network; implements [`FlowEstimator`].
pub struct RaftFlow {
    arch: Architecture,
    info: WeightsInfo,
    tensors: HashMap<String, Tensor>,
    device: Device,
    kind: Kind,
    iterations: usize,
    max_batch: usize,
}

impl RaftFlow {
    /// Loads a converted safetensors file onto `device` in float32, with the file's default iterations
    /// (metadata `iterations`; 20 for princeton weights, 12 otherwise) and batches of up to 4 pairs.
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self, RaftError> {
        Self::load_with_kind(path, device, Kind::Float)
    }

    /// As [`RaftFlow::load`], computing in `kind`: `Float` anywhere, `Half` or `BFloat16` on CUDA only. Weights
    /// and inputs are cast; the correlation volume and the flow accumulator stay in float32.
    pub fn load_with_kind(path: impl AsRef<Path>, device: Device, kind: Kind) -> Result<Self, RaftError> {
        let supported = match kind {
            Kind::Float => true,
            Kind::Half | Kind::BFloat16 => device.is_cuda(),
            _ => false,
        };
        if !supported {
            return Err(RaftError::Kind { kind, device });
        }
        let loaded = weights::load(path.as_ref(), device, kind)?;
        Ok(Self {
            iterations: loaded.info.iterations,
            arch: loaded.arch,
            info: loaded.info,
            tensors: loaded.tensors,
            device,
            kind,
            max_batch: 4,
        })
    }

    /// Sets the number of refinement iterations (SMURF uses 12, mr-dinosaur's RAFT path 20).
    pub fn with_iterations(mut self, iterations: usize) -> Result<Self, RaftError> {
        if iterations == 0 {
            return Err(RaftError::Iterations);
        }
        self.iterations = iterations;
        Ok(self)
    }

    /// Largest number of pairs run in one forward by [`FlowEstimator::estimate`] (memory: the correlation
    /// pyramid of a 376×1240 pair is about 283 MB). Values below 1 are treated as 1.
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// Path, identity, family, input range and default iterations of the weights file.
    pub fn weights_info(&self) -> &WeightsInfo {
        &self.info
    }

    /// The identity of the weights (a digest of the tensors, see [`mrdino_outputs::weights_id`]).
    pub fn identity(&self) -> &mrdino_outputs::weights_id::Identity {
        &self.info.identity
    }

    pub fn iterations(&self) -> usize {
        self.iterations
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Flow for a batch of pairs: `image1`, `image2` are (B, 3, H, W) RGB with values in 0..255 (any float or
    /// integer kind, any device). Returns (B, 2, H, W) float32 flow on the model's device.
    pub fn forward(&self, image1: &Tensor, image2: &Tensor) -> Result<Tensor, RaftError> {
        let s1 = image1.size();
        let s2 = image2.size();
        if s1.len() != 4 || s1[1] != 3 || s1 != s2 {
            return Err(RaftError::Input {
                message: format!("expected two (B, 3, H, W) tensors of the same shape, got {s1:?} and {s2:?}"),
            });
        }
        let (height, width) = (s1[2], s1[3]);
        let [left, right, top, bottom] = padding_for(height, width);
        let (ph, pw) = (height + top + bottom, width + left + right);
        if ph < MIN_SIDE || pw < MIN_SIDE {
            return Err(RaftError::TooSmall {
                height,
                width,
                padded_height: ph,
                padded_width: pw,
            });
        }
        let prepare = |img: &Tensor| -> Result<Tensor, tch::TchError> {
            let x = img.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
            let x = match self.info.input_range {
                InputRange::MinusOneOne => (x / 255.0) * 2.0 - 1.0,
                InputRange::ZeroOne => x / 255.0,
                InputRange::ZeroTo255 => x,
            };
            let x = if left + right + top + bottom > 0 {
                x.f_replication_pad2d([left, right, top, bottom])?
            } else {
                x
            };
            x.f_to_kind(self.kind)
        };
        let flow = tch::no_grad(|| -> Result<Tensor, tch::TchError> {
            let (a, b) = (prepare(image1)?, prepare(image2)?);
            let net = net::Net {
                arch: &self.arch,
                w: &self.tensors,
            };
            let flow = net.forward(&a, &b, self.iterations)?;
            flow.f_narrow(2, top, height)?.f_narrow(3, left, width)?.f_contiguous()
        })?;
        Ok(flow)
    }

    fn estimate_batch(&self, pairs: &[(&RgbImage, &RgbImage)]) -> Result<Vec<FlowField>, RaftError> {
        let (h, w) = (pairs[0].0.height, pairs[0].0.width);
        let to_tensor = |img: &RgbImage| -> Result<Tensor, tch::TchError> {
            Tensor::f_from_slice(&img.data)?
                .f_view([h as i64, w as i64, 3])?
                .f_permute([2, 0, 1])
        };
        let mut first = Vec::with_capacity(pairs.len());
        let mut second = Vec::with_capacity(pairs.len());
        for (a, b) in pairs {
            first.push(to_tensor(a)?);
            second.push(to_tensor(b)?);
        }
        let flow = self.forward(&Tensor::f_stack(&first, 0)?, &Tensor::f_stack(&second, 0)?)?;
        let flow = flow.f_permute([0, 2, 3, 1])?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let values = Vec::<f32>::try_from(flow.f_flatten(0, -1)?)?;
        let per_pair = h * w * 2;
        Ok(values
            .chunks_exact(per_pair)
            .map(|uv| FlowField::new(h, w, uv.to_vec()))
            .collect())
    }
}

impl FlowEstimator for RaftFlow {
    fn name(&self) -> String {
        match self.info.family.as_str() {
            "smurf" => "smurf".to_string(),
            _ => format!("raft-{}", self.arch.arch.as_str()),
        }
    }

    /// Runs consecutive pairs of equal size together, at most `max_batch` at a time.
    fn estimate(&mut self, pairs: &[(&RgbImage, &RgbImage)]) -> Result<Vec<FlowField>, FlowError> {
        for (i, (a, b)) in pairs.iter().enumerate() {
            if (a.height, a.width) != (b.height, b.width) {
                return Err(RaftError::Input {
                    message: format!(
                        "pair {i}: frames are {}x{} and {}x{}",
                        a.height, a.width, b.height, b.width
                    ),
                }
                .into());
            }
        }
        let mut out = Vec::with_capacity(pairs.len());
        let mut start = 0;
        while start < pairs.len() {
            let size = (pairs[start].0.height, pairs[start].0.width);
            let mut end = start + 1;
            while end < pairs.len() && end - start < self.max_batch && (pairs[end].0.height, pairs[end].0.width) == size
            {
                end += 1;
            }
            out.extend(self.estimate_batch(&pairs[start..end])?);
            start = end;
        }
        Ok(out)
    }
}
