//! Flags of `mrdino refine stage1|stage2`. Values that mean nothing as a flag are usage errors here; the ranges
//! of the resolved parameters, config file values included, are checked by `crate::settings::refine`.

use std::path::PathBuf;

use super::groups::{BackboneArgs, DeviceArgs, MemoryArgs, RunArgs};
use super::values;

#[derive(Debug, clap::Subcommand)]
pub enum RefineCommand {
    /// Stage 1: refine the slot attention of a baseline DINOSAUR on the pseudo-labels' masks.
    Stage1(Box<RefineArgs>),
    /// Stage 2: train the slot-deactivation head on top of a stage-1 model.
    Stage2(Box<RefineArgs>),
}

#[derive(Debug, clap::Args)]
pub struct RefineArgs {
    /// The model to start from: a run directory (its checkpoint) or a model file. Stage 1: a baseline
    /// DINOSAUR (`train dinosaur`, or a converted baseline); stage 2: a stage-1 run. Another kind is refused.
    #[arg(long)]
    pub from: PathBuf,
    /// Pseudo-label run (`mrdino labels`) whose instances are the targets.
    #[arg(long)]
    pub labels: PathBuf,
    /// Run directory: checkpoint, metrics, plot. Rerunning the same command resumes. Must not be, hold or lie
    /// inside an input (the model, the labels, the feature cache, the dataset root).
    #[arg(long)]
    pub out: PathBuf,
    /// Feature cache of the labels' windows (`mrdino features --views windows --labels LABELS`).
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Dataset root, for on-the-fly features (frames are read from the paths the labels recorded).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Recipe preset: kitti, tri-pd, movi-e (default: from the labels' dataset; frame folders use kitti).
    #[arg(long)]
    pub preset: Option<String>,
    /// JSON object of parameter overrides ({"epochs": 2, "stage2": {"hidden": 512}}); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Epochs over the views (a finite number > 0; stage 1: 15; stage 2: 1).
    #[arg(long, value_parser = values::finite, allow_hyphen_values = true)]
    pub epochs: Option<f64>,
    /// Total steps (at least 1; overrides epochs and max_steps).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Views per step (at least 1, at most the number of views).
    #[arg(long, value_parser = values::count)]
    pub batch_size: Option<usize>,
    /// Learning rate (a finite number >= 0; 0 keeps the weights).
    #[arg(long, value_parser = values::finite, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    /// Seed of sampling, slot noise and (stage 2) the head's initialisation (a whole number >= 0).
    #[arg(long, value_parser = values::seed, allow_hyphen_values = true)]
    pub seed: Option<i64>,
    /// Write a checkpoint every N steps (at least 1).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Log metrics every N steps (at least 1).
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Stage 2: α, weight of the background term, in [0, 1] (0.4 KITTI, 0.2 TRI-PD and MOVi-E).
    #[arg(long, value_parser = values::finite, allow_hyphen_values = true)]
    pub background_weight: Option<f64>,
    /// Stage 2: hidden width of the slot-deactivation MLP, at least 1 (2048 KITTI/TRI-PD, 1024 MOVi-E).
    #[arg(long, allow_hyphen_values = true)]
    pub hidden: Option<i64>,
    /// Stage 2 fix: keep the K − 1 largest masks when there are ≥ K (the reference keeps the first K − 1 by id).
    #[arg(long)]
    pub keep_largest_masks: bool,
    /// Stage 2 fix: compare unmatched slots with the matched slots of the same image (the reference compares
    /// with the whole batch's).
    #[arg(long)]
    pub per_image_similarity: bool,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// On-the-fly features instead of a cache (with --root); a `--from` model file that embeds its backbone
    /// brings its own.
    #[command(flatten)]
    pub backbone: BackboneArgs,
}
