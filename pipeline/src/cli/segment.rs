//! Flags of `mrdino segment`.

use std::path::PathBuf;

use super::groups::{DatasetArgs, DeviceArgs, JobArgs, Talk2DinoArgs};
use super::values;

/// Talk2DINO demo's background threshold on the sigmoid masks (values lie in [0.27, 0.73]).
pub const DEFAULT_THRESHOLD: f64 = 0.55;

/// How a frame reaches the backbone (`mrdino_model::talk2dino::View`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ViewKind {
    /// The whole frame resized to the square input (448 px): Talk2DINO's demo and Hugging Face path.
    Square,
    /// Keep-ratio resize to a 448 px short side, 448 px crops every 224 px, scores averaged: Talk2DINO's
    /// benchmark path.
    Sliding,
}

impl ViewKind {
    /// The library's name of the view.
    pub fn name(self) -> &'static str {
        match self {
            Self::Square => "square",
            Self::Sliding => "sliding",
        }
    }
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = SEGMENT_HELP)]
pub struct SegmentArgs {
    /// Text prompt (repeatable; a value may list several, "car,person"). Never read as a file: a prompt list
    /// file goes through --prompts-file.
    #[arg(long, value_name = "TEXT", required_unless_present = "prompts_file")]
    pub prompt: Vec<String>,
    /// A file with one prompt per line (`#` starts a comment; repeatable); a missing file is refused. Its prompts
    /// follow those of --prompt.
    #[arg(long, value_name = "FILE", value_parser = values::existing_file)]
    pub prompts_file: Vec<PathBuf>,
    /// Output directory (frames and instances tables, as a labels run).
    #[arg(long)]
    pub out: PathBuf,
    /// Resize every frame to WxH first (default: the dataset's reference geometry, as `labels`).
    #[arg(long, value_parser = values::size)]
    pub resize: Option<(usize, usize)>,
    /// How frames reach the backbone: square (Talk2DINO's demo path) or sliding (its benchmark path).
    #[arg(long, value_enum, default_value = "square")]
    pub view: ViewKind,
    /// Refine the upsampled masks with PAMR as Talk2DINO's demo runs it (10 iterations, dilations 1-24 px).
    #[arg(long)]
    pub pamr: bool,
    /// Talk2DINO's background cleaning with the last block's CLS attention (λ = 0.2).
    #[arg(long)]
    pub background_clean: bool,
    /// Background threshold, a number in [0, 1]: a pixel whose best prompt scores below it is background.
    #[arg(long, default_value_t = DEFAULT_THRESHOLD, value_parser = values::finite, allow_hyphen_values = true)]
    pub threshold: f64,
    /// Frames per backbone forward (at least 1).
    #[arg(long, default_value_t = 4, value_parser = values::count)]
    pub batch: usize,
    #[command(flatten)]
    pub input: DatasetArgs,
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub model: Talk2DinoArgs,
}

pub const SEGMENT_HELP: &str = "\
Prompts: --prompt takes text only (\"car\", \"car,person\", repeatable); --prompts-file takes files (one prompt per
line, `#` comments). Prompts are trimmed and must be non-empty and distinct; prompt k is instance k + 1.

Views (Talk2DINO's two inference paths):
  square   the demo / Hugging Face path: the float frame resized to 448x448 (antialiased, not rounded), soft masks
           upsampled to the frame, a constant background channel (--threshold), argmax. The default.
  sliding  the benchmark path (its mmseg configs): the uint8 frame resized keeping its aspect ratio to a 448 px
           short side (long side at most 2048, OpenCV bilinear), 448x448 crops every 224 px, each crop's scores
           with the background channel averaged over the overlaps, resized to the frame, softmax, argmax.
A psi file converted from a released Talk2DINO file uses that release's input size instead of 448.
--pamr refines the upsampled masks (before the background channel) with PAMR, 10 iterations, dilations
1, 2, 4, 8, 12, 24 px, as Talk2DINO's demo does; its benchmarks run without it (the default).

Outputs: OUT/frames/params=<hash>/*.parquet, OUT/instances/params=<hash>/*.parquet with a `prompt` column, as a
labels run (`report`, `eval`, `name`, `status` and `finalize` read it).";
