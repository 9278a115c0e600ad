//! Flags of `mrdino labels` (and `mrdino plan`, which takes the same).

use std::path::PathBuf;

use mrdino_stages::rules::RuleOptions;

use crate::settings::presets::Preset;

use super::flow::FlowArgs;
use super::groups::{DatasetArgs, DeviceArgs, JobArgs};
use super::values;

#[derive(Debug, clap::Args)]
#[command(after_long_help = LABELS_HELP)]
pub struct LabelsArgs {
    /// Output directory (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Threshold preset (default: the dataset's own; `custom` = KITTI values, for frames and videos).
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// JSON file of parameter overrides with flat keys, e.g. {"preset": "tri-pd", "corner_threshold_px": 0.8,
    /// "min_instance_px": 150} (all keys: see the README's parameter table). Flags override the file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Resize every frame to WxH before flow (overrides the dataset's reference geometry).
    #[arg(long, value_parser = values::size)]
    pub resize: Option<(usize, usize)>,
    /// Worker threads for the CPU stages (at least 1; default: all cores).
    #[arg(long, value_parser = values::count)]
    pub threads: Option<usize>,
    /// Write PNG overlays of this many labelled frames to OUT/overlays.
    #[arg(long, default_value_t = 0)]
    pub overlays: usize,
    /// Corner-mean threshold in px (strict <; a finite number > 0).
    #[arg(long, value_parser = values::finite, allow_hyphen_values = true)]
    pub corner_threshold_px: Option<f64>,
    /// Minimum run of consecutive quasi-static frames (at least 1).
    #[arg(long, value_parser = values::count)]
    pub min_run_frames: Option<usize>,
    /// Foreground threshold in px (strict >, after rounding to 3 decimals; a finite number >= 0).
    #[arg(long, value_parser = values::finite, allow_hyphen_values = true)]
    pub fg_threshold_px: Option<f64>,
    /// Compare the raw magnitude with the foreground threshold instead of the reference's 3-decimal rounding.
    #[arg(long)]
    pub raw_fg_magnitude: bool,
    /// Minimum instance size in px.
    #[arg(long)]
    pub min_instance_px: Option<usize>,
    /// Keep the 142 KITTI raw frames that are KITTI instance-benchmark images (excluded by the kitti preset).
    #[arg(long)]
    pub keep_eval_overlap: bool,
    /// Label rules: `reference` (the published code's, the default) or `improved` (= --photo-check
    /// --flow-split, the measured best on generated scenes with DIS flow; see the README's ablation table).
    #[arg(long, value_enum, default_value = "reference")]
    pub label_rules: LabelRules,
    /// Keep only foreground pixels whose forward flow the backward flow of the next frame undoes (one more
    /// flow pass per pair; needs a flow method that computes flow).
    #[arg(long)]
    pub fb_check: bool,
    /// Keep only foreground pixels whose flow explains the next frame better than no motion.
    #[arg(long)]
    pub photo_check: bool,
    /// Split components where two motions meet (watershed on the flow gradient) before the reference's split.
    #[arg(long)]
    pub flow_split: bool,
    #[command(flatten)]
    pub flow: FlowArgs,
    #[command(flatten)]
    pub input: DatasetArgs,
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The label rules of `--label-rules`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelRules {
    /// The published code's rules, exactly.
    Reference,
    /// The photometric check and the flow-edge split.
    Improved,
}

impl LabelsArgs {
    /// The opt-in rules the flags select: `--label-rules improved` and each rule's own flag add up.
    pub fn rules(&self) -> RuleOptions {
        let base = match self.label_rules {
            LabelRules::Reference => RuleOptions::default(),
            LabelRules::Improved => RuleOptions::improved(),
        };
        RuleOptions {
            fb_check: base.fb_check || self.fb_check,
            photo_check: base.photo_check || self.photo_check,
            flow_split: base.flow_split || self.flow_split,
        }
    }
}

pub const LABELS_HELP: &str = "\
Presets (reference defaults, visinf/mr-dinosaur):
  kitti   corner threshold 1.7 px; frames resized to 1240x376 (bilinear)
  tri-pd  corner threshold 0.5 px; frames halved (ceil) and the top 128 rows cropped (968x480)
  movi-e  corner threshold 1.7 px; native resolution
  custom  the KITTI thresholds, native resolution (frames, video)
Shared by all presets: corners 15% of H and W, 3 of 4 corners below the threshold, runs of >= 5 frames;
foreground |flow| rounded to 3 decimals > 2.5 px; frames with < 0.05% foreground and segments with < 3 such
frames carry no label; 8-connected components; a component with a horizontal Sobel flow edge > 20 at an
interior pixel (radius-10 disk) is split by HDBSCAN (min cluster size 30, min samples 30) on
[u, v, 60 row, 60 col, 100 direction bin of 16]; HDBSCAN noise is background; instances < 100 px dropped.

Layouts:
  frames  ROOT/<sequence>/*.png|jpg (any depth; images directly in ROOT form one sequence)
  video   ROOT = a video file, or a directory of video files
  kitti   ROOT/<date>/<date>_drive_<n>_sync/image_0X/data/*.png
  tri-pd  ROOT/scene_*/rgb/camera_XX/*.png
  movi-e  ROOT/<video>/*.png (Kubric rgba_*.png when present)

Outputs: OUT/frames/params=<hash>/*.parquet, OUT/instances/params=<hash>/*.parquet (zstd; masks as COCO RLE).";
