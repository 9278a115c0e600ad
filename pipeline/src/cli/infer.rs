//! Flags of `mrdino infer`.

use std::path::PathBuf;

use crate::settings::presets::Preset;

use super::groups::{BackboneArgs, DatasetArgs, DeviceArgs, MemoryArgs, JobArgs};
use super::values;

#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// Model file (safetensors; DINOSAUR keys ± the stage-2 `object_decoder.slot_decoder.*`, ± an embedded
    /// `backbone.*`) or a run directory.
    #[arg(long, value_name = "RUN|FILE")]
    pub model: PathBuf,
    /// Output directory (the layout of `mrdino labels`).
    #[arg(long, value_name = "PRED")]
    pub out: PathBuf,
    /// Window layout (default: tri-pd for tri-pd, movi-e for movi-e, otherwise kitti; custom = kitti).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Seed of the slot noise (a whole number >= 0; frame i of a sequence uses seed + i).
    #[arg(long, default_value_t = 0, value_parser = values::seed, allow_hyphen_values = true)]
    pub seed: i64,
    /// Frames per forward (each contributes all its windows; at least 1).
    #[arg(long, default_value_t = 4, value_parser = values::count)]
    pub batch: usize,
    /// Let a channel merged away still pass its object on across the next window boundary (an object
    /// spanning three windows becomes one channel; the reference keeps two).
    #[arg(long)]
    pub merge_chains: bool,
    #[command(flatten)]
    pub input: DatasetArgs,
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
    #[command(flatten)]
    pub backbone: BackboneArgs,
}
