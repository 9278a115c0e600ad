//! Flags of `mrdino analyze`.

use std::path::PathBuf;

use mrdino_model::variants::Fill;
use mrdino_stages::ground_truth::GtFormat;

use super::groups::{DeviceArgs, RunArgs};
use super::values;

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// Output directory of `mrdino labels` (or of `mrdino infer`): frames and object masks.
    #[arg(long, value_name = "RUN")]
    pub labels: PathBuf,
    /// Parameter hash of the run (default: the only one, or the latest).
    #[arg(long, value_name = "HASH")]
    pub params: Option<String>,
    /// Take the object masks from this ground truth instead of the run's instances.
    #[arg(long, value_name = "DIR", requires = "gt_format")]
    pub gt: Option<PathBuf>,
    /// Layout of `--gt` (as `mrdino eval`: synth, kitti, ids, tri-pd, kubric or movi-e).
    #[arg(long, value_name = "FORMAT", value_parser = values::gt_format)]
    pub gt_format: Option<GtFormat>,
    /// A backbone: a ViT name (`dinov2-vitb14`, `dino-vitb16`, `clip-vitb16`, `mae-vitb16`, …, `custom:…`) or
    /// `swav-rn50`; repeat for several, each followed by its `--backbone-weights`.
    #[arg(long = "backbone", value_name = "NAME", required = true)]
    pub backbones: Vec<String>,
    /// Weights (safetensors) of each `--backbone`, in the same order.
    #[arg(long = "backbone-weights", value_name = "FILE", required = true)]
    pub backbone_weights: Vec<PathBuf>,
    /// Report directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Frames to sample (evenly, among frames with objects; at least 4).
    #[arg(long, default_value_t = 200, value_parser = values::count)]
    pub frames: usize,
    /// Fill of the removed part: mean (of the kept pixels), black, blur or blur:<sigma px>.
    #[arg(long, default_value = "mean", value_parser = Fill::parse)]
    pub fill: Fill,
    /// Radius of the centre disc as a fraction of min(H, W)/2 (a finite number > 0).
    #[arg(long, default_value_t = 0.5, value_parser = values::finite, allow_hyphen_values = true)]
    pub centre_radius: f64,
    /// Square input size of the backbones in px (rounded down to a multiple of each backbone's patch, which it
    /// must reach).
    #[arg(long, default_value_t = 224, value_parser = values::count)]
    pub size: usize,
    /// Neighbours for k-NN purity (at least 1, fewer than frames × 5 variants).
    #[arg(long, default_value_t = 10, value_parser = values::count)]
    pub k: usize,
    /// Bootstrap resamples for the intervals (at least 1).
    #[arg(long, default_value_t = 100, value_parser = values::count)]
    pub bootstrap: usize,
    /// At most this many singular directions per side for SVCCA/PWCCA (at least 1, fewer than the frames;
    /// default ⌊frames/10⌋).
    #[arg(long, value_parser = values::count)]
    pub cca_max_dims: Option<usize>,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frames per forward (at least 1).
    #[arg(long, default_value_t = 8, value_parser = values::count)]
    pub batch: usize,
    /// Frames whose variant images are written to the report.
    #[arg(long, default_value_t = 3)]
    pub examples: usize,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}
