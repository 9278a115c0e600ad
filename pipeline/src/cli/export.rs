//! Flags of `mrdino export`.

use std::path::PathBuf;

/// The formats other tools read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// COCO instances JSON with RLE masks (detectron2, mmdetection, CutLER, FiftyOne's COCO importer).
    Coco,
    /// YouTube-VIS JSON, one video per sequence and one annotation per track (VideoMask2Former, VideoCutLER).
    YoutubeVis,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["labels", "predictions"])))]
pub struct ExportArgs {
    /// Output directory of `mrdino labels` (or of `mrdino segment`).
    #[arg(long, value_name = "RUN")]
    pub labels: Option<PathBuf>,
    /// Output directory of `mrdino infer`.
    #[arg(long, value_name = "PRED")]
    pub predictions: Option<PathBuf>,
    /// Parameter partition of the run (default: the only one, or the latest).
    #[arg(long, value_name = "HASH")]
    pub params: Option<String>,
    /// Format of the file.
    #[arg(long, value_enum)]
    pub format: Format,
    /// The JSON file to write (written atomically).
    #[arg(long, value_name = "FILE.json")]
    pub out: PathBuf,
    /// The dataset root the image paths are relative to (default: the one the run's plan records).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}
