//! Flags of the flow backend (shared by `labels` and `flow`) and of `mrdino flow`.

use std::path::PathBuf;

use mrdino_stages::flow::source::{FlowChoice, FlowSpec};

use super::groups::{DatasetArgs, DeviceArgs, JobArgs};
use super::values;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowBackend {
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

impl FlowBackend {
    pub fn choice(self) -> FlowChoice {
        match self {
            FlowBackend::Dis => FlowChoice::Dis,
            FlowBackend::Farneback => FlowChoice::Farneback,
            FlowBackend::Import => FlowChoice::Import,
            FlowBackend::Kubric => FlowChoice::Kubric,
            FlowBackend::Smurf => FlowChoice::Smurf,
            FlowBackend::RaftLarge => FlowChoice::RaftLarge,
            FlowBackend::RaftSmall => FlowChoice::RaftSmall,
        }
    }
}

/// Flow options of the command line.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Flow")]
pub struct FlowArgs {
    /// Flow backend.
    #[arg(long, value_enum, default_value = "dis")]
    pub flow: FlowBackend,
    /// DIS preset: ultrafast, fast, medium.
    #[arg(long, default_value = "medium")]
    pub dis_preset: String,
    /// Directory of precomputed flow for `--flow import`.
    #[arg(long)]
    pub flow_dir: Option<PathBuf>,
    /// Safetensors weights for `--flow smurf|raft-large|raft-small` (see tools/convert_raft.py).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Frame pairs per network forward pass (at least 1).
    #[arg(long, default_value_t = 4, value_parser = values::count)]
    pub flow_batch: usize,
    /// Network precision: f32, f16, bf16 (f16/bf16 on CUDA only).
    #[arg(long, default_value = "f32")]
    pub flow_dtype: String,
    /// Refinement iterations (at least 1; default: the weights file's, SMURF 12, princeton RAFT 20).
    #[arg(long, value_parser = values::count)]
    pub flow_iterations: Option<usize>,
}

impl FlowArgs {
    /// The backend asked for, on `device`; CPU methods get `cpu_batch` pairs at once.
    pub fn spec(&self, device: tch::Device, cpu_batch: usize) -> FlowSpec {
        FlowSpec {
            choice: self.flow.choice(),
            dis_preset: self.dis_preset.clone(),
            flow_dir: self.flow_dir.clone(),
            weights: self.weights.clone(),
            device,
            batch: self.flow_batch,
            dtype: self.flow_dtype.clone(),
            iterations: self.flow_iterations,
            cpu_batch,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowFormat {
    /// float32 (H, W, 2) NumPy arrays.
    Npy,
    /// Middlebury .flo.
    Flo,
}

impl FlowFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FlowFormat::Npy => "npy",
            FlowFormat::Flo => "flo",
        }
    }
}

/// Flags of `mrdino flow`.
#[derive(Debug, clap::Args)]
pub struct FlowCmdArgs {
    /// Output directory (holds flow of one parameter set).
    #[arg(long)]
    pub out: PathBuf,
    /// Resize every frame to WxH before flow.
    #[arg(long, value_parser = values::size)]
    pub resize: Option<(usize, usize)>,
    /// File format.
    #[arg(long, value_enum, default_value = "npy")]
    pub format: FlowFormat,
    /// Worker threads for the CPU flow methods (at least 1; default: all cores).
    #[arg(long, value_parser = values::count)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub flow: FlowArgs,
    #[command(flatten)]
    pub input: DatasetArgs,
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}
