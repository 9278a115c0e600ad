//! Where a job's flow comes from, chosen once from the command line and shared by `labels` (which analyses the
//! flow) and `flow` (which exports it): an estimator (OpenCV DIS or Farnebäck, RAFT/SMURF on libtorch), files
//! computed elsewhere (`import`), or Kubric's own flow files (`kubric`).
//!
//! [`FlowSpec`] is what the user asked for; [`build`] checks it (a missing weights file or flow directory, an
//! unknown DIS preset, weights of another network are refused naming the value) and returns the [`FlowSource`]
//! with the [`FlowParams`] it contributes to the parameters (and so to the partition hash) and the identity of a
//! network's weights. A network's weights are identified by their tensors (`mrdino_outputs::weights_id`), so
//! labels from different checkpoints never share a partition.

use std::path::PathBuf;

use mrdino_outputs::weights_id::Identity;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use super::classic::{DisFlow, DisPreset, FarnebackFlow};
use super::raft::RaftFlow;
use super::{FlowError, FlowEstimator};

/// The flow backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowChoice {
    Dis,
    Farneback,
    Import,
    Kubric,
    Smurf,
    RaftLarge,
    RaftSmall,
}

impl FlowChoice {
    /// The backend's name on the command line and in the outputs.
    pub fn name(self) -> &'static str {
        match self {
            FlowChoice::Smurf => "smurf",
            FlowChoice::RaftLarge => "raft-large",
            FlowChoice::RaftSmall => "raft-small",
            FlowChoice::Dis => "dis",
            FlowChoice::Farneback => "farneback",
            FlowChoice::Import => "import",
            FlowChoice::Kubric => "kubric",
        }
    }

    /// Whether the backend computes flow (as opposed to reading files).
    pub fn computes(self) -> bool {
        !matches!(self, FlowChoice::Import | FlowChoice::Kubric)
    }
}

/// Which flow backend, with its settings: what a run records and hashes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum FlowParams {
    Dis {
        preset: String,
    },
    Farneback,
    Import,
    Kubric,
    /// A RAFT-family network (`smurf`, `raft-large`, `raft-small`); `weights_sha256` holds the identity of its
    /// weights (`mrdino_outputs::weights_id`; the field keeps its name).
    Network {
        model: String,
        weights_sha256: String,
        iterations: usize,
        dtype: String,
    },
}

impl FlowParams {
    pub fn name(&self) -> String {
        match self {
            FlowParams::Dis { preset } => format!("dis-{preset}"),
            FlowParams::Farneback => "farneback".into(),
            FlowParams::Import => "import".into(),
            FlowParams::Kubric => "kubric".into(),
            FlowParams::Network { model, .. } => model.clone(),
        }
    }

    /// Whether the backend computes flow (and so can compute the backward flow too), rather than reading files.
    pub fn computes(&self) -> bool {
        !matches!(self, FlowParams::Import | FlowParams::Kubric)
    }

    /// The recorded identity of the network's weights (`None` without a network).
    pub fn weights_id(&self) -> Option<&str> {
        match self {
            FlowParams::Network { weights_sha256, .. } => Some(weights_sha256),
            _ => None,
        }
    }
}

/// What the command line asked for.
#[derive(Clone, Debug)]
pub struct FlowSpec {
    pub choice: FlowChoice,
    /// DIS preset name (`ultrafast`, `fast`, `medium`).
    pub dis_preset: String,
    /// Directory of precomputed flow (`import`).
    pub flow_dir: Option<PathBuf>,
    /// Network weights (safetensors).
    pub weights: Option<PathBuf>,
    pub device: Device,
    /// Frame pairs per network forward (at least 1).
    pub batch: usize,
    /// Network precision: `f32`, `f16`, `bf16`.
    pub dtype: String,
    /// Refinement iterations (default: the weights file's).
    pub iterations: Option<usize>,
    /// Pairs handed at once to a CPU method (one per thread of the pool computing them).
    pub cpu_batch: usize,
}

/// Where flow comes from.
pub enum FlowSource {
    Estimator {
        estimator: Box<dyn FlowEstimator>,
        batch: usize,
    },
    Import {
        dir: PathBuf,
    },
    /// Kubric's `forward_flow_XXXXX.png` beside each `rgba_XXXXX.png` (MOVi scenes).
    Kubric,
}

impl FlowSource {
    /// An independent copy for another unit running at the same time (`None` when the estimator cannot be
    /// forked, e.g. a network).
    pub fn fork(&self) -> Option<FlowSource> {
        match self {
            FlowSource::Estimator { estimator, batch } => Some(FlowSource::Estimator {
                estimator: estimator.fork()?,
                batch: *batch,
            }),
            FlowSource::Import { dir } => Some(FlowSource::Import { dir: dir.clone() }),
            FlowSource::Kubric => Some(FlowSource::Kubric),
        }
    }
}

/// The flow backend, built and checked, with the parameters it contributes to the hash.
pub struct BuiltFlow {
    pub source: FlowSource,
    pub params: FlowParams,
    /// The network's weights, for the migration rule of earlier identities.
    pub weights: Option<Identity>,
    /// Where it runs (`cpu`, `Cuda(0)`, …).
    pub device: String,
}

fn bad(message: String) -> FlowError {
    FlowError::Backend(message)
}

fn parse_kind(text: &str) -> Result<Kind, FlowError> {
    match text {
        "f32" => Ok(Kind::Float),
        "f16" => Ok(Kind::Half),
        "bf16" => Ok(Kind::BFloat16),
        other => Err(bad(format!("unknown --flow-dtype `{other}` (expected f32, f16 or bf16)"))),
    }
}

/// Builds the backend `spec` names (see the module docs).
pub fn build(spec: &FlowSpec) -> Result<BuiltFlow, FlowError> {
    let simple = |source: FlowSource, params: FlowParams| BuiltFlow {
        source,
        params,
        weights: None,
        device: "cpu".into(),
    };
    match spec.choice {
        FlowChoice::Dis => {
            let preset = DisPreset::parse(&spec.dis_preset).ok_or_else(|| {
                bad(format!(
                    "unknown DIS preset `{}` (expected ultrafast, fast or medium)",
                    spec.dis_preset
                ))
            })?;
            let estimator: Box<dyn FlowEstimator> = Box::new(DisFlow::new(preset)?);
            Ok(simple(
                FlowSource::Estimator {
                    estimator,
                    batch: spec.cpu_batch.max(1),
                },
                FlowParams::Dis {
                    preset: spec.dis_preset.clone(),
                },
            ))
        }
        FlowChoice::Farneback => Ok(simple(
            FlowSource::Estimator {
                estimator: Box::new(FarnebackFlow),
                batch: spec.cpu_batch.max(1),
            },
            FlowParams::Farneback,
        )),
        FlowChoice::Import => {
            let dir = spec
                .flow_dir
                .clone()
                .ok_or_else(|| bad("--flow import needs --flow-dir DIR".into()))?;
            if !dir.is_dir() {
                return Err(bad(format!("flow directory {} does not exist", dir.display())));
            }
            Ok(simple(FlowSource::Import { dir }, FlowParams::Import))
        }
        FlowChoice::Kubric => Ok(simple(FlowSource::Kubric, FlowParams::Kubric)),
        FlowChoice::Smurf | FlowChoice::RaftLarge | FlowChoice::RaftSmall => network(spec),
    }
}

fn network(spec: &FlowSpec) -> Result<BuiltFlow, FlowError> {
    let wanted = spec.choice.name();
    let weights = spec
        .weights
        .clone()
        .ok_or_else(|| bad(format!("--flow {wanted} needs --weights FILE")))?;
    let kind = parse_kind(&spec.dtype)?;
    let mut raft = RaftFlow::load_with_kind(&weights, spec.device, kind)?.with_max_batch(spec.batch.max(1));
    if let Some(n) = spec.iterations {
        raft = raft.with_iterations(n)?;
    }
    let model = raft.name();
    if model != wanted {
        return Err(bad(format!("{} holds {model} weights, not {wanted}", weights.display())));
    }
    let identity = raft.identity().clone();
    let params = FlowParams::Network {
        model,
        weights_sha256: identity.id.clone(),
        iterations: raft.iterations(),
        dtype: spec.dtype.clone(),
    };
    let device = format!("{:?}", spec.device);
    Ok(BuiltFlow {
        source: FlowSource::Estimator {
            estimator: Box::new(raft),
            batch: spec.batch.max(1),
        },
        params,
        weights: Some(identity),
        device,
    })
}
