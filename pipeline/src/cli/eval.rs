//! Flags of `mrdino eval`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use mrdino_stages::ground_truth::GtFormat;
use mrdino_stages::metrics::{EvalPreset, MetricsError};

use super::values;

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Output directory of `mrdino labels`.
    #[arg(
        long,
        value_name = "OUT",
        required_unless_present = "predictions",
        conflicts_with = "predictions"
    )]
    pub labels: Option<PathBuf>,
    /// Output directory of `mrdino infer`.
    #[arg(long, value_name = "PRED")]
    pub predictions: Option<PathBuf>,
    /// Parameter hash to evaluate (default: the only one, or the latest run when OUT holds several).
    #[arg(long, value_name = "HASH")]
    pub params: Option<String>,
    /// Ground-truth directory.
    #[arg(long, value_name = "DIR")]
    pub gt: PathBuf,
    /// Layout of the ground truth: synth (a `mrdino synth` directory), kitti (KITTI instance-benchmark PNGs,
    /// class·256 + instance, at DIR/<sequence_id>/<frame_name>.png), ids (8- or 16-bit id PNGs, 0 = background,
    /// same paths), tri-pd (TRI-PD evaluation label PNGs, same paths; the reference's conversion), kubric or
    /// movi-e (`segmentation_XXXXX.png` beside each `rgba_XXXXX.png`; DIR = the dataset root).
    #[arg(long, value_name = "FORMAT", value_parser = values::gt_format)]
    pub gt_format: GtFormat,
    /// Evaluation resolution: kitti (95x315, GT via the 378x1260 canvas), tri-pd (123x245), native (the GT's).
    /// Default: native, except for predictions against kitti / tri-pd ground truth (kitti / tri-pd).
    #[arg(long, value_parser = eval_preset)]
    pub resolution: Option<EvalPreset>,
    /// Where to write the metrics as JSON (default OUT/_eval-<hash>.json).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Evaluate only the labelled frames that have ground truth (default: a missing file is an error).
    #[arg(long)]
    pub skip_missing_gt: bool,
}

impl EvalArgs {
    /// The run given by `--labels` or `--predictions`, with its flag.
    pub fn run_dir(&self) -> Result<(&'static str, &Path)> {
        match (&self.labels, &self.predictions) {
            (Some(dir), None) => Ok(("--labels", dir)),
            (None, Some(dir)) => Ok(("--predictions", dir)),
            _ => bail!("give --labels OUT or --predictions PRED"),
        }
    }
}

/// `--resolution`.
fn eval_preset(text: &str) -> Result<EvalPreset, String> {
    text.parse().map_err(|e: MetricsError| e.to_string())
}
