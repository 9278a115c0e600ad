//! The flag groups every command shares, defined once. Each is flattened into a command's arguments under its
//! own help heading, and the commands list them in one order: the command's own flags, then `Input`, `Job`,
//! `Device`, `Backbone`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use mrdino_datasets::DatasetKind;
use mrdino_model::memory::{self, MemoryEstimate};
use mrdino_outputs::bookkeeping::Shard;

use super::values;

/// Where frames come from.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Input")]
pub struct DatasetArgs {
    /// Dataset layout: frames, video, kitti, tri-pd, movi-e.
    #[arg(long, value_parser = values::dataset)]
    pub dataset: DatasetKind,
    /// Dataset root (a directory, or a video file for `--dataset video`).
    #[arg(long)]
    pub root: PathBuf,
    /// Cameras to read (KITTI: image_02,image_03; TRI-PD: camera_01,camera_05,camera_06).
    #[arg(long, value_delimiter = ',')]
    pub cameras: Option<Vec<String>>,
}

impl DatasetArgs {
    /// The cameras given, or the dataset's own.
    pub fn cameras(&self) -> Vec<String> {
        self.cameras.clone().unwrap_or_else(|| self.dataset.default_cameras())
    }
}

/// How a long job stops and reports: `--time-budget`, `--quiet`.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Job")]
pub struct RunArgs {
    /// Stop cleanly (exit code 4) before this many seconds have passed (a finite number >= 0); rerun to resume.
    #[arg(long, value_parser = values::time_budget, allow_hyphen_values = true)]
    pub time_budget: Option<Duration>,
    /// No progress bars or per-unit messages.
    #[arg(long)]
    pub quiet: bool,
}

/// A job of units (sequences): shards, failures, stopping, reporting.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Job")]
pub struct JobArgs {
    /// Process only shard I of N (I in 0..N), assigned by a stable hash of the sequence id. Defaults to
    /// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT when those are set.
    #[arg(long, value_parser = values::shard)]
    pub shard: Option<Shard>,
    /// Exit with code 3 when more than this many units or frames failed.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub max_failures: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

impl JobArgs {
    /// `--shard`, else Slurm's array variables, else none.
    pub fn shard(&self) -> Result<Option<Shard>> {
        match self.shard {
            Some(s) => Ok(Some(s)),
            None => shard_from_env(),
        }
    }
}

/// Shard from Slurm's array variables.
pub fn shard_from_env() -> Result<Option<Shard>> {
    let (Ok(id), Ok(count)) = (
        std::env::var("SLURM_ARRAY_TASK_ID"),
        std::env::var("SLURM_ARRAY_TASK_COUNT"),
    ) else {
        return Ok(None);
    };
    let min: u64 = match std::env::var("SLURM_ARRAY_TASK_MIN") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SLURM_ARRAY_TASK_MIN is not a number: {v}"))?,
        Err(_) => 0,
    };
    let id: u64 = id
        .parse()
        .with_context(|| format!("SLURM_ARRAY_TASK_ID is not a number: {id}"))?;
    let count: u64 = count
        .parse()
        .with_context(|| format!("SLURM_ARRAY_TASK_COUNT is not a number: {count}"))?;
    let index = id
        .checked_sub(min)
        .context("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN")?;
    values::shard(&format!("{index}/{count}"))
        .map(Some)
        .map_err(anyhow::Error::msg)
}

/// Where libtorch runs.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Device")]
pub struct DeviceArgs {
    /// auto (CUDA when libtorch sees it), cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Threads libtorch may use on CPU (at least 1; default: libtorch's choice, all cores).
    #[arg(long, value_parser = values::torch_threads)]
    pub torch_threads: Option<i32>,
}

impl DeviceArgs {
    /// The device, with libtorch's thread count set.
    pub fn device(&self) -> Result<tch::Device> {
        if let Some(n) = self.torch_threads {
            tch::set_num_threads(n);
        }
        Ok(mrdino_model::device::parse_device(&self.device)?)
    }
}

/// How much memory a run may plan for; the commands that estimate their memory from shapes (`train`, `refine`,
/// `infer`) take it.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Device")]
pub struct MemoryArgs {
    /// The most memory the run may use, e.g. 6G or 500M (K, M, G, T are powers of 1024, as in Slurm's --mem): a
    /// configuration estimated above it is refused before it allocates. Default: what the machine, or the job's
    /// cgroup, has available (on CUDA, without a limit, unchecked).
    #[arg(long, value_name = "SIZE", value_parser = values::memory_size)]
    pub memory_limit: Option<f64>,
}

impl MemoryArgs {
    /// Refuses `estimate` when it exceeds what `device` has available (lowered to `--memory-limit`), naming both
    /// numbers and `hint`; where the available memory is unknown it says so unless `quiet`.
    pub fn check(&self, estimate: &MemoryEstimate, device: tch::Device, hint: &str, quiet: bool) -> Result<()> {
        let available = memory::limited(memory::available(device), self.memory_limit);
        if let Some(why) = memory::check_fits(estimate, &available, hint)? {
            if !quiet {
                eprintln!(
                    "note: the estimated {} of {} is not checked against the device's memory: {why}",
                    memory::human_bytes(estimate.total_bytes()),
                    estimate.what
                );
            }
        }
        Ok(())
    }
}

/// The frozen backbone.
#[derive(Clone, Debug, Default, clap::Args)]
#[command(next_help_heading = "Backbone")]
pub struct BackboneArgs {
    /// Backbone: dinov2-vitb14 (DINOSAUR's; the default), dinov2-vits14, dinov2-vitb14-reg, dino-vitb8,
    /// clip-vitb16, mae-vitb16, … or custom:… (see the README); seeded test backbones random-conv-p<PS>-c<C>[-pos]
    /// and random-colour-p<PS>-c<C>[-pos] take no weights. A model file that embeds its backbone brings its own.
    #[arg(long)]
    pub backbone: Option<String>,
    /// The backbone's weights (safetensors from tools/convert_vit.py); not needed for a model file that embeds
    /// its backbone (when given, they must be the same weights).
    #[arg(long)]
    pub backbone_weights: Option<PathBuf>,
}

/// The Talk2DINO weights every open-vocabulary command loads (`name`, `segment`).
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Talk2DINO")]
pub struct Talk2DinoArgs {
    /// DINO backbone, as Talk2DINO uses it: dinov2-vitb14-reg (the default; ViT-L: dinov2-vitl14-reg),
    /// dinov3-vitb16 / dinov3-vitl16 for a ψ converted from a DINOv3 release, custom:… for tests.
    #[arg(long, default_value = "dinov2-vitb14-reg")]
    pub backbone: String,
    /// The backbone's weights (safetensors from tools/convert_vit.py, e.g. of `dinov2_vitb14_reg`).
    #[arg(long)]
    pub backbone_weights: PathBuf,
    /// CLIP ViT-B/16 text tower (safetensors from tools/convert_clip_text.py).
    #[arg(long)]
    pub text_weights: PathBuf,
    /// Talk2DINO's ψ (safetensors from tools/convert_talk2dino.py). A ψ converted from a released file records
    /// it: its backbone's width, patch and registers are then required, and its input size is used.
    #[arg(long)]
    pub psi_weights: PathBuf,
}

impl Talk2DinoArgs {
    /// The files of the bundle, for `mrdino_model::talk2dino::Talk2Dino::load`.
    pub fn files(&self) -> mrdino_model::talk2dino::Talk2DinoFiles {
        mrdino_model::talk2dino::Talk2DinoFiles {
            backbone: self.backbone.clone(),
            backbone_weights: self.backbone_weights.clone(),
            text_weights: self.text_weights.clone(),
            psi_weights: self.psi_weights.clone(),
        }
    }
}
