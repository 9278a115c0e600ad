//! Flags of `mrdino train dinosaur`. Values that mean nothing as a flag (a negative seed, a batch of 0, a
//! non-number learning rate) are usage errors here; the ranges of the resolved parameters, config file values
//! included, are checked by `crate::settings::train`.

use std::path::PathBuf;

use super::groups::{BackboneArgs, DeviceArgs, MemoryArgs, RunArgs};
use super::values;

#[derive(Debug, clap::Subcommand)]
pub enum TrainCommand {
    /// Baseline DINOSAUR (slot attention + MLP decoder on frozen features), the reference recipe per dataset.
    Dinosaur(Box<DinosaurTrainArgs>),
}

#[derive(Debug, clap::Args)]
pub struct DinosaurTrainArgs {
    /// Dataset layout: kitti, tri-pd, movi-e, frames.
    #[arg(long)]
    pub dataset: String,
    /// Dataset root (needed when features are computed from images).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Run directory: checkpoint, metrics, plot. Rerunning the same command resumes. Must not be, hold or lie
    /// inside an input (the dataset root, the feature cache).
    #[arg(long)]
    pub out: PathBuf,
    /// Recipe preset: kitti, tri-pd, movi-e (default: the dataset's; `frames` uses kitti).
    #[arg(long)]
    pub preset: Option<String>,
    /// JSON object of parameter overrides, e.g. {"steps": 1000, "model": {"n_slots": 7}}. Flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Train from this feature cache (written by `mrdino features`) instead of running a backbone.
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Optimisation steps (at least 1).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Views per step (at least 1, at most the number of views of the data).
    #[arg(long, value_parser = values::count)]
    pub batch_size: Option<usize>,
    /// Base learning rate after warm-up (a finite number >= 0; 0 keeps the initial weights).
    #[arg(long, value_parser = values::finite, allow_hyphen_values = true)]
    pub lr: Option<f64>,
    /// Linear warm-up steps (0 = none).
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// Write a checkpoint every N steps (at least 1).
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Log metrics every N steps (at least 1).
    #[arg(long)]
    pub log_every: Option<u64>,
    /// Seed of sampling, augmentation, slot noise and initialisation (a whole number >= 0).
    #[arg(long, value_parser = values::seed, allow_hyphen_values = true)]
    pub seed: Option<i64>,
    /// Restarts to choose among without ground truth: train this many candidates from seeds seed, seed + 1, …
    /// for --candidate-steps steps each (in RUN/candidates/), keep the one whose slots split best (not collapsed,
    /// then the lowest Mask Similarity) and continue only it to --steps. 1 = no restarts.
    #[arg(long, default_value_t = 1, value_parser = values::count)]
    pub candidates: usize,
    /// Steps each candidate trains before the choice (at least 1, fewer than the run's steps; default 500, the
    /// first collapse check step).
    #[arg(long, value_parser = values::count, requires = "candidates")]
    pub candidate_steps: Option<usize>,
    /// Threads decoding and augmenting images (at least 1; default: all cores).
    #[arg(long, value_parser = values::count)]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// On-the-fly features instead of a cache: a ViT with its weights, or a seeded backbone without
    /// (`random-conv-p<PS>-c<C>[-pos]`, `random-colour-p<PS>-c<C>[-pos]`; for smoke runs and the demo).
    #[command(flatten)]
    pub backbone: BackboneArgs,
}
