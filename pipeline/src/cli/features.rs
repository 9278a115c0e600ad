//! Flags of `mrdino features`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::groups::{BackboneArgs, DatasetArgs, DeviceArgs, JobArgs};
use super::values;

/// Which views of the dataset are cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ViewsKind {
    /// Every frame resized to `--size`.
    Resize,
    /// The refinement windows of a pseudo-label run (`--labels`).
    Windows,
}

#[derive(Debug, clap::Args)]
pub struct FeaturesArgs {
    /// Cache directory (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Which views: resize (every frame at --size) or windows (the refinement windows of --labels).
    #[arg(long, value_enum, default_value = "resize")]
    pub views: ViewsKind,
    /// View size WxH for `--views resize` (multiples of the patch; default 266x266 for movi-e, else 224x224).
    #[arg(long, value_parser = values::size)]
    pub size: Option<(usize, usize)>,
    /// Pseudo-label run whose labelled frames give the windows (`--views windows`).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Block whose tokens are cached (0-based; default the last), after the final norm.
    #[arg(long)]
    pub layer: Option<usize>,
    /// Storage type of the cached features.
    #[arg(long, default_value = "f16", value_parser = ["f16", "bf16"])]
    pub dtype: String,
    /// Views per backbone forward (at least 1).
    #[arg(long, default_value_t = 8, value_parser = values::count)]
    pub batch: usize,
    #[command(flatten)]
    pub input: DatasetArgs,
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub backbone: BackboneArgs,
}
