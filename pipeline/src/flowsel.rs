//! Choosing and building the flow backend from the command line (shared by `labels` and `flow`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use mrdino_stages::flow::raft::RaftFlow;
use mrdino_stages::flow::{DisFlow, DisPreset, FarnebackFlow, FlowEstimator};
use mrdino_outputs::weights_id::Identity;
use tch::{Device, Kind};

use crate::config::FlowParams;
use crate::unit::FlowSource;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowChoice {
    /// OpenCV DIS (CPU; the default).
    Dis,
    /// OpenCV Farnebäck (CPU).
    Farneback,
    /// Flow computed elsewhere: `--flow-dir DIR` holds DIR/<sequence id>/<frame name>.{npy,flo,png}.
    Import,
    /// MOVi / Kubric scenes: the `forward_flow_XXXXX.png` files (with `data_ranges.json`) beside the frames.
    Kubric,
    /// SMURF (RAFT-large with InstanceNorm context encoder), `--weights` converted by tools/convert_raft.py.
    Smurf,
    /// torchvision / princeton RAFT-large weights.
    RaftLarge,
    /// torchvision RAFT-small weights.
    RaftSmall,
}

impl FlowChoice {
    fn model_name(self) -> &'static str {
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
}

/// Flow options of the command line.
#[derive(Clone, Debug, clap::Args)]
pub struct FlowArgs {
    /// Flow backend.
    #[arg(long, value_enum, default_value = "dis")]
    pub flow: FlowChoice,
    /// DIS preset: ultrafast, fast, medium.
    #[arg(long, default_value = "medium")]
    pub dis_preset: String,
    /// Directory of precomputed flow for `--flow import`.
    #[arg(long)]
    pub flow_dir: Option<PathBuf>,
    /// Safetensors weights for `--flow smurf|raft-large|raft-small` (see tools/convert_raft.py).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Device for the flow network: auto (CUDA when libtorch sees it), cpu, cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Frame pairs per network forward pass.
    #[arg(long, default_value_t = 4)]
    pub flow_batch: usize,
    /// Network precision: f32, f16, bf16 (f16/bf16 on CUDA only).
    #[arg(long, default_value = "f32")]
    pub flow_dtype: String,
    /// Refinement iterations (default: the weights file's, SMURF 12, princeton RAFT 20).
    #[arg(long)]
    pub flow_iterations: Option<usize>,
    /// Threads libtorch may use on CPU (default: all cores).
    #[arg(long)]
    pub torch_threads: Option<i32>,
}

/// Parses `--device`.
pub fn parse_device(text: &str) -> Result<Device> {
    match text {
        "auto" => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        other => {
            let index: usize = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("unknown device `{other}` (expected auto, cpu or cuda:N)"))?;
            if !tch::Cuda::is_available() || index >= tch::Cuda::device_count() as usize {
                bail!(
                    "device `{other}` is not available (libtorch sees {} CUDA devices)",
                    tch::Cuda::device_count()
                );
            }
            Ok(Device::Cuda(index))
        }
    }
}

fn parse_kind(text: &str) -> Result<Kind> {
    match text {
        "f32" => Ok(Kind::Float),
        "f16" => Ok(Kind::Half),
        "bf16" => Ok(Kind::BFloat16),
        other => bail!("unknown --flow-dtype `{other}` (expected f32, f16 or bf16)"),
    }
}

/// Frame pairs handed at once to a CPU flow method: one per thread of the pool, which computes them in
/// parallel (results do not depend on it).
fn cpu_flow_batch() -> usize {
    rayon::current_num_threads().max(1)
}

/// The flow backend, built and checked, with the parameters it contributes to the hash.
pub struct BuiltFlow {
    pub source: FlowSource,
    pub params: FlowParams,
    /// The network's weights, for the migration rule of earlier identities (see `crate::identity`).
    pub weights: Option<Identity>,
    pub device: String,
}

pub fn build_flow(args: &FlowArgs) -> Result<BuiltFlow> {
    let simple = |source: FlowSource, params: FlowParams| BuiltFlow {
        source,
        params,
        weights: None,
        device: "cpu".into(),
    };
    match args.flow {
        FlowChoice::Dis => {
            let preset = DisPreset::parse(&args.dis_preset).with_context(|| {
                format!(
                    "unknown DIS preset `{}` (expected ultrafast, fast or medium)",
                    args.dis_preset
                )
            })?;
            let estimator: Box<dyn FlowEstimator> = Box::new(DisFlow::new(preset)?);
            Ok(simple(
                FlowSource::Estimator {
                    estimator,
                    batch: cpu_flow_batch(),
                },
                FlowParams::Dis {
                    preset: args.dis_preset.clone(),
                },
            ))
        }
        FlowChoice::Farneback => Ok(simple(
            FlowSource::Estimator {
                estimator: Box::new(FarnebackFlow),
                batch: cpu_flow_batch(),
            },
            FlowParams::Farneback,
        )),
        FlowChoice::Import => {
            let dir = args.flow_dir.clone().context("--flow import needs --flow-dir DIR")?;
            if !dir.is_dir() {
                bail!("flow directory {} does not exist", dir.display());
            }
            Ok(simple(FlowSource::Import { dir }, FlowParams::Import))
        }
        FlowChoice::Kubric => Ok(simple(FlowSource::Kubric, FlowParams::Kubric)),
        FlowChoice::Smurf | FlowChoice::RaftLarge | FlowChoice::RaftSmall => {
            let weights = args
                .weights
                .clone()
                .with_context(|| format!("--flow {} needs --weights FILE", args.flow.model_name()))?;
            let device = parse_device(&args.device)?;
            let kind = parse_kind(&args.flow_dtype)?;
            let threads = args
                .torch_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as i32));
            tch::set_num_threads(threads.max(1));
            let mut raft = RaftFlow::load_with_kind(&weights, device, kind)
                .with_context(|| format!("cannot load flow weights {}", weights.display()))?
                .with_max_batch(args.flow_batch.max(1));
            if let Some(n) = args.flow_iterations {
                raft = raft.with_iterations(n)?;
            }
            let model = raft.name();
            if model != args.flow.model_name() {
                bail!(
                    "{} holds {model} weights, not {}",
                    weights.display(),
                    args.flow.model_name()
                );
            }
            let identity = raft.identity().clone();
            let params = FlowParams::Network {
                model,
                weights_sha256: identity.id.clone(),
                iterations: raft.iterations(),
                dtype: args.flow_dtype.clone(),
            };
            let device_name = format!("{device:?}");
            Ok(BuiltFlow {
                source: FlowSource::Estimator {
                    estimator: Box::new(raft),
                    batch: args.flow_batch.max(1),
                },
                params,
                weights: Some(identity),
                device: device_name,
            })
        }
    }
}
