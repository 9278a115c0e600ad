//! Loading a RAFT safetensors file: metadata, architecture inference and key/shape validation.
//!
//! The file holds torchvision key names (the converters in `tools/` map princeton and SMURF layouts onto them).
//! The architecture is read off the key set: a `mask_predictor` means raft-large, its absence raft-small; the
//! context encoder has BatchNorm when its running statistics are present, otherwise the `context_norm` metadata
//! decides between InstanceNorm (SMURF) and no norm (raft-small), with those as the per-arch defaults. From the
//! architecture the full expected key list with shapes is generated, and the file must match it exactly
//! (`num_batches_tracked` counters are ignored), so a mapping bug surfaces as an error naming the key
//! ([`mrdino_model::weights`], the weight source every loader reads).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mrdino_model::weights::WeightSource;
use mrdino_outputs::weights_id::Identity;
use tch::{Device, Kind, Tensor};

use super::RaftError;

/// Which of the two torchvision RAFT variants the weights describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Large,
    Small,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Large => "large",
            Arch::Small => "small",
        }
    }
}

/// Normalisation layer of an encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    /// BatchNorm in eval mode (running statistics, eps 1e-5).
    Batch,
    /// InstanceNorm without affine parameters (input statistics, biased variance, eps 1e-5).
    Instance,
    /// No normalisation.
    None,
}

impl Norm {
    pub fn as_str(self) -> &'static str {
        match self {
            Norm::Batch => "batch",
            Norm::Instance => "instance",
            Norm::None => "none",
        }
    }
}

/// How the network expects its RGB input to be scaled (`input_range` metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRange {
    /// 2·(x/255) − 1: torchvision, SMURF, and princeton weights once converted (princeton's own `forward`
    /// applies this mapping to its 0..255 input, so the converted network needs it explicitly).
    MinusOneOne,
    /// x/255.
    ZeroOne,
    /// Raw 0..255 values.
    ZeroTo255,
}

impl InputRange {
    fn parse(value: &str) -> Option<Self> {
        match value {
            "[-1,1]" => Some(Self::MinusOneOne),
            "[0,1]" => Some(Self::ZeroOne),
            "[0,255]" => Some(Self::ZeroTo255),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MinusOneOne => "[-1,1]",
            Self::ZeroOne => "[0,1]",
            Self::ZeroTo255 => "[0,255]",
        }
    }
}

/// Block type of an encoder's residual layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    Residual,
    Bottleneck,
}

/// One feature or context encoder: widths of stem, layer1..3 and the final 1×1 conv.
#[derive(Clone, Debug)]
pub struct EncoderSpec {
    pub prefix: &'static str,
    pub block: Block,
    pub widths: [i64; 5],
    pub norm: Norm,
}

impl EncoderSpec {
    /// Strides of layer1..3 (the stem has stride 2).
    pub const LAYER_STRIDES: [i64; 3] = [1, 2, 2];
}

/// Every hyper-parameter of the network, derived from the arch and the context norm.
#[derive(Clone, Debug)]
pub struct Architecture {
    pub arch: Arch,
    pub feature: EncoderSpec,
    pub context: EncoderSpec,
    pub levels: i64,
    pub radius: i64,
    pub hidden: i64,
    pub corr_layers: Vec<i64>,
    pub flow_layers: [i64; 2],
    pub motion_out: i64,
    /// (kernel, padding) of each ConvGRU step.
    pub gru: Vec<([i64; 2], [i64; 2])>,
    pub flow_head_hidden: i64,
    pub mask_predictor: bool,
}

impl Architecture {
    pub fn new(arch: Arch, context_norm: Norm) -> Self {
        match arch {
            Arch::Large => Self {
                arch,
                feature: EncoderSpec {
                    prefix: "feature_encoder",
                    block: Block::Residual,
                    widths: [64, 64, 96, 128, 256],
                    norm: Norm::Instance,
                },
                context: EncoderSpec {
                    prefix: "context_encoder",
                    block: Block::Residual,
                    widths: [64, 64, 96, 128, 256],
                    norm: context_norm,
                },
                levels: 4,
                radius: 4,
                hidden: 128,
                corr_layers: vec![256, 192],
                flow_layers: [128, 64],
                motion_out: 128,
                gru: vec![([1, 5], [0, 2]), ([5, 1], [2, 0])],
                flow_head_hidden: 256,
                mask_predictor: true,
            },
            Arch::Small => Self {
                arch,
                feature: EncoderSpec {
                    prefix: "feature_encoder",
                    block: Block::Bottleneck,
                    widths: [32, 32, 64, 96, 128],
                    norm: Norm::Instance,
                },
                context: EncoderSpec {
                    prefix: "context_encoder",
                    block: Block::Bottleneck,
                    widths: [32, 32, 64, 96, 160],
                    norm: context_norm,
                },
                levels: 4,
                radius: 3,
                hidden: 96,
                corr_layers: vec![96],
                flow_layers: [64, 32],
                motion_out: 82,
                gru: vec![([3, 3], [1, 1])],
                flow_head_hidden: 128,
                mask_predictor: false,
            },
        }
    }

    /// Channels of the correlation features: levels · (2r+1)².
    pub fn corr_channels(&self) -> i64 {
        self.levels * (2 * self.radius + 1) * (2 * self.radius + 1)
    }

    /// Context channels left after the hidden-state split.
    pub fn context_dim(&self) -> i64 {
        self.context.widths[4] - self.hidden
    }

    /// The complete list of parameter/buffer keys with their shapes, in torchvision naming.
    pub fn expected_keys(&self) -> Vec<(String, Vec<i64>)> {
        let mut keys = Vec::new();
        for enc in [&self.feature, &self.context] {
            encoder_keys(enc, &mut keys);
        }
        let me = "update_block.motion_encoder";
        let mut conv = |name: String, out: i64, inp: i64, k: [i64; 2]| {
            keys.push((format!("{name}.weight"), vec![out, inp, k[0], k[1]]));
            keys.push((format!("{name}.bias"), vec![out]));
        };
        conv(
            format!("{me}.convcorr1.0"),
            self.corr_layers[0],
            self.corr_channels(),
            [1, 1],
        );
        if let [c1, c2] = self.corr_layers[..] {
            conv(format!("{me}.convcorr2.0"), c2, c1, [3, 3]);
        }
        let corr_out = self.corr_layers[self.corr_layers.len() - 1];
        conv(format!("{me}.convflow1.0"), self.flow_layers[0], 2, [7, 7]);
        conv(
            format!("{me}.convflow2.0"),
            self.flow_layers[1],
            self.flow_layers[0],
            [3, 3],
        );
        conv(
            format!("{me}.conv.0"),
            self.motion_out - 2,
            corr_out + self.flow_layers[1],
            [3, 3],
        );
        let gru_in = self.hidden + self.motion_out + self.context_dim();
        for (i, (kernel, _)) in self.gru.iter().enumerate() {
            for gate in ["z", "r", "q"] {
                conv(
                    format!("update_block.recurrent_block.convgru{}.conv{gate}", i + 1),
                    self.hidden,
                    gru_in,
                    *kernel,
                );
            }
        }
        conv(
            "update_block.flow_head.conv1".into(),
            self.flow_head_hidden,
            self.hidden,
            [3, 3],
        );
        conv("update_block.flow_head.conv2".into(), 2, self.flow_head_hidden, [3, 3]);
        if self.mask_predictor {
            conv("mask_predictor.convrelu.0".into(), 256, self.hidden, [3, 3]);
            conv("mask_predictor.conv".into(), 8 * 8 * 9, 256, [1, 1]);
        }
        keys
    }
}

fn conv_norm_keys(name: &str, out: i64, inp: i64, k: i64, norm: Norm, keys: &mut Vec<(String, Vec<i64>)>) {
    keys.push((format!("{name}.0.weight"), vec![out, inp, k, k]));
    keys.push((format!("{name}.0.bias"), vec![out]));
    if norm == Norm::Batch {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            keys.push((format!("{name}.1.{p}"), vec![out]));
        }
    }
}

fn encoder_keys(enc: &EncoderSpec, keys: &mut Vec<(String, Vec<i64>)>) {
    let p = enc.prefix;
    let w = enc.widths;
    conv_norm_keys(&format!("{p}.convnormrelu"), w[0], 3, 7, enc.norm, keys);
    for (layer, stride) in EncoderSpec::LAYER_STRIDES.iter().enumerate() {
        let (inp, out) = (w[layer], w[layer + 1]);
        for (block, (bin, bstride)) in [(inp, *stride), (out, 1)].into_iter().enumerate() {
            let name = format!("{p}.layer{}.{block}", layer + 1);
            match enc.block {
                Block::Residual => {
                    conv_norm_keys(&format!("{name}.convnormrelu1"), out, bin, 3, enc.norm, keys);
                    conv_norm_keys(&format!("{name}.convnormrelu2"), out, out, 3, enc.norm, keys);
                }
                Block::Bottleneck => {
                    conv_norm_keys(&format!("{name}.convnormrelu1"), out / 4, bin, 1, enc.norm, keys);
                    conv_norm_keys(&format!("{name}.convnormrelu2"), out / 4, out / 4, 3, enc.norm, keys);
                    conv_norm_keys(&format!("{name}.convnormrelu3"), out, out / 4, 1, enc.norm, keys);
                }
            }
            if bstride != 1 {
                conv_norm_keys(&format!("{name}.downsample"), out, bin, 1, enc.norm, keys);
            }
        }
    }
    keys.push((format!("{p}.conv.weight"), vec![w[4], w[3], 1, 1]));
    keys.push((format!("{p}.conv.bias"), vec![w[4]]));
}

/// What the converters recorded about a weights file, plus its identity.
#[derive(Clone, Debug)]
pub struct WeightsInfo {
    pub path: PathBuf,
    /// The identity of the weights ([`mrdino_outputs::weights_id`]): a digest of the tensors.
    pub identity: Identity,
    /// `torchvision`, `princeton`, `smurf`, or `unknown` when the metadata does not say.
    pub family: String,
    pub input_range: InputRange,
    /// Default number of refinement iterations for this file.
    pub iterations: usize,
}

/// A validated weights file: tensors by torchvision key, on the target device and in the target kind.
pub struct LoadedWeights {
    pub arch: Architecture,
    pub info: WeightsInfo,
    pub tensors: HashMap<String, Tensor>,
}


fn meta_error(path: &Path, key: &str, value: &str, message: &str) -> RaftError {
    RaftError::Metadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: value.to_string(),
        message: message.to_string(),
    }
}

/// Reads, hashes and validates `path`; tensors are moved to `device` and cast to `kind` (float dtypes only).
pub fn load(path: &Path, device: Device, kind: Kind) -> Result<LoadedWeights, RaftError> {
    let source = WeightSource::open(path)?;
    let identity = source.identity("", |_| true, None)?;
    let metadata = &source.file().metadata;
    let found = source.shapes("", |name| !name.ends_with("num_batches_tracked"));

    let arch = match metadata.get("arch").map(String::as_str) {
        Some("large") => Arch::Large,
        Some("small") => Arch::Small,
        Some(other) => return Err(meta_error(path, "arch", other, "expected `large` or `small`")),
        None if found.contains_key("mask_predictor.conv.weight") => Arch::Large,
        None => Arch::Small,
    };
    let has_bn = found.contains_key("context_encoder.convnormrelu.1.running_mean");
    let context_norm = match (metadata.get("context_norm").map(String::as_str), has_bn) {
        (Some("batch"), _) | (None, true) => Norm::Batch,
        (Some("instance"), _) => Norm::Instance,
        (Some("none"), _) => Norm::None,
        (Some(other), _) => {
            return Err(meta_error(
                path,
                "context_norm",
                other,
                "expected `batch`, `instance` or `none`",
            ))
        }
        (None, false) => match arch {
            Arch::Large => Norm::Instance,
            Arch::Small => Norm::None,
        },
    };
    if let Some(order) = metadata.get("corr_order") {
        if order != "xmajor" {
            return Err(meta_error(
                path,
                "corr_order",
                order,
                "only `xmajor` is supported; convert SMURF weights with tools/convert_raft.py, which transposes convcorr1",
            ));
        }
    }
    let input_range = match metadata.get("input_range") {
        Some(v) => InputRange::parse(v)
            .ok_or_else(|| meta_error(path, "input_range", v, "expected `[-1,1]`, `[0,1]` or `[0,255]`"))?,
        None => InputRange::MinusOneOne,
    };
    let family = metadata.get("family").cloned().unwrap_or_else(|| "unknown".to_string());
    let iterations = match metadata.get("iterations") {
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return Err(meta_error(path, "iterations", v, "expected a positive integer")),
        },
        None if family == "princeton" => 20,
        None => 12,
    };

    let architecture = Architecture::new(arch, context_norm);
    let expected = architecture.expected_keys();
    let model = format!("raft-{} with context norm `{}`", arch.as_str(), context_norm.as_str());
    let source = source.describing(model);
    source.check_keys("", &expected, &[], |name| !name.ends_with("num_batches_tracked"))?;

    let mut tensors = HashMap::with_capacity(expected.len());
    for (key, shape) in &expected {
        let t = source.take(key, shape)?;
        tensors.insert(key.clone(), t.f_to_kind(kind)?.f_to_device(device)?);
    }

    Ok(LoadedWeights {
        arch: architecture,
        info: WeightsInfo {
            path: path.to_path_buf(),
            identity,
            family,
            input_range,
            iterations,
        },
        tensors,
    })
}
