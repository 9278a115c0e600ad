//! Flags of `mrdino name`.

use std::path::PathBuf;

use mrdino_datasets::DatasetKind;

use super::groups::{DeviceArgs, JobArgs, Talk2DinoArgs};
use super::values;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["labels", "predictions"])))]
#[command(after_long_help = NAME_HELP)]
pub struct NameArgs {
    /// Output directory of `mrdino labels` (or `mrdino segment`).
    #[arg(long, value_name = "RUN")]
    pub labels: Option<PathBuf>,
    /// Output directory of `mrdino infer` (same layout as a labels run).
    #[arg(long, value_name = "PRED")]
    pub predictions: Option<PathBuf>,
    /// Parameter partition of the source run (default: the latest).
    #[arg(long, value_name = "HASH")]
    pub params: Option<String>,
    /// Class names as text (repeatable; a value may list several, "car,traffic light"). Never read as a file:
    /// a class list file goes through --classes-file. Default (without either flag): a class list for driving
    /// scenes.
    #[arg(long, value_name = "TEXT")]
    pub classes: Vec<String>,
    /// A file with one class name per line (`#` starts a comment; repeatable); a missing file is refused. Its
    /// classes follow those of --classes.
    #[arg(long, value_name = "FILE", value_parser = values::existing_file)]
    pub classes_file: Vec<PathBuf>,
    /// Output directory of the names table (created if needed).
    #[arg(long)]
    pub out: PathBuf,
    /// Dataset root of the source frames (default: the one in the source run's plan).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Dataset layout of the source frames (default: the one in the source run's plan).
    #[arg(long, value_parser = values::dataset)]
    pub dataset: Option<DatasetKind>,
    /// Frames per backbone forward (at least 1).
    #[arg(long, default_value_t = 4, value_parser = values::count)]
    pub batch: usize,
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub model: Talk2DinoArgs,
}

pub const NAME_HELP: &str = "\
Class names: --classes takes text only (\"car\", \"car,bus\", repeatable); --classes-file takes files (one name per
line, `#` comments). Names are trimmed and must be non-empty and distinct; the class order (--classes first, then
each file in turn) is the order of the `scores` column.

Each frame with instances is re-read at its original size, resized to Talk2DINO's square input (448 px, or the
input size of the release a ψ file records) and encoded by the backbone; an instance's embedding is the mean of the
patch tokens weighted by the mask's exact area on the patch grid, and its name the class of highest cosine.

Outputs: OUT/names/params=<hash>/*.parquet, one row per instance, joinable to `instances`.";
