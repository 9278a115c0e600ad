//! The command line: every command's arguments, and the flag groups they share ([`groups`]), defined once.
//! Parsing only; what a command does is its step's (`crate::steps`).

pub mod analyze;
pub mod compare;
pub mod eval;
pub mod export;
pub mod features;
pub mod flow;
pub mod groups;
pub mod infer;
pub mod labels;
pub mod name;
pub mod refine;
pub mod report;
pub mod segment;
pub mod synth;
pub mod train;
pub mod values;

use std::num::NonZeroU64;
use std::path::PathBuf;

use clap::{Parser, Subcommand};


#[derive(Parser)]
#[command(name = "mrdino", version = env!("MRDINO_CODE_VERSION"), about = "Instance pseudo-labels of moving objects from raw video (MR-DINOSAUR).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Frames → flow → quasi-static selection → instances → Parquet.
    Labels(Box<labels::LabelsArgs>),
    /// Compute forward flow and write it as files readable by `labels --flow import`.
    Flow(Box<flow::FlowCmdArgs>),
    /// Generate a small video dataset with exact flow, instance and camera-motion ground truth; stops cleanly on
    /// a signal or `--time-budget` (exit code 4) and the same command completes it.
    Synth(synth::SynthArgs),
    /// List the units of a `labels` run (same arguments) and write the plan, without processing.
    Plan(Box<labels::LabelsArgs>),
    /// Done / failed / missing units of an output directory (any job kind), and the shards to rerun.
    Status(StatusArgs),
    /// Check that every planned unit is done and merge the statistics into one manifest.
    Finalize(StatusArgs),
    /// Score pseudo-labels against ground-truth masks of moving objects (F1@50, AP50, AR50, fg-/all-ARI,
    /// quasi-static retrieval); prints a table and writes JSON.
    Eval(eval::EvalArgs),
    /// One table of several `eval` results (e.g. pseudo-labels, baseline, stage 1, stage 2), also as JSON.
    Compare(compare::CompareArgs),
    /// Static HTML report of a labels run: per-sequence statistics, SVG plots, overlays and flow of sampled frames.
    Report(report::ReportArgs),
    /// Train a slot model (`train dinosaur`): reference recipe per dataset, resumable checkpoints.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// MR-DINOSAUR refinement of a DINOSAUR model with pseudo-labels: `refine stage1` (slot attention), then
    /// `refine stage2` (slot deactivation); resumable checkpoints.
    #[command(subcommand)]
    Refine(refine::RefineCommand),
    /// How much each frozen backbone's representation changes when only the foreground, the background, the
    /// centre or the border of a frame is kept: CKA, SVCCA, PWCCA, k-NN purity, an HTML report.
    Analyze(Box<analyze::AnalyzeArgs>),
    /// Frozen-backbone features of a dataset's views (or of a pseudo-label run's windows) as a resumable,
    /// shardable feature cache that training reads.
    Features(Box<features::FeaturesArgs>),
    /// Object masks of a DINOSAUR / MR-DINOSAUR model for every frame (windows, join, merge), written as
    /// `frames` + `instances` tables in the layout of `labels`; resumable and shardable.
    Infer(Box<infer::InferArgs>),
    /// Open-vocabulary names (Talk2DINO) for the instances of a labels or predictions run, as a Parquet table
    /// joinable to `instances`.
    Name(Box<name::NameArgs>),
    /// Talk2DINO's text-prompted masks of every frame of a dataset, as a labels-shaped run with a prompt column.
    Segment(Box<segment::SegmentArgs>),
    /// A labels or prediction run as COCO instances or YouTube-VIS JSON (masks at the original resolution, scores
    /// and track ids), for the tools other teams train and browse with.
    Export(Box<export::ExportArgs>),
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Output directory of a unit job (labels, flow, features, infer, name, segment).
    #[arg(long)]
    pub out: PathBuf,
    /// Parameter hash to report on (needed only when OUT holds several).
    #[arg(long)]
    pub params: Option<String>,
    /// Number of array tasks (at least 1), to list the shards to rerun (default: from the run manifests).
    #[arg(long, value_parser = values::shard_count)]
    pub num_shards: Option<NonZeroU64>,
}
