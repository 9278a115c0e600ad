//! `mrdino`: instance pseudo-labels of moving objects from raw video, following MR-DINOSAUR.
//!
//! The binary is the only crate that knows the command line, threads and the terminal; the computations live
//! in `mrdino-stages`, the readers in `mrdino-datasets`, the writers in `mrdino-outputs`.
//!
//! Exit codes: 0 success; 1 error (configuration, I/O); 2 usage; 3 completed, but some units or frames failed;
//! 4 stopped early (signal or `--time-budget`): run the same command again to resume.

mod batch;
mod cmd_analyze;
mod cmd_compare;
mod cmd_eval;
mod cmd_features;
mod cmd_flow;
mod cmd_infer;
mod cmd_name;
mod cmd_refine;
mod cmd_report;
mod cmd_segment;
mod cmd_synth;
mod cmd_train;
mod config;
mod flowsel;
mod identity;
mod job;
mod overlays;
mod refine_views;
mod run;
mod training;
mod unit;
mod unit_job;

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use mrdino_datasets::{DatasetKind, Processing, SourceOptions};
use mrdino_outputs::bookkeeping::Shard;
use mrdino_outputs::layout::Layout;

use config::{ConfigFile, FlowParams, Params, Preset};
use flowsel::{build_flow, FlowArgs};
use run::{plan_units, run_labels, RunOptions, STOP};

pub(crate) const EXIT_FAILURES: u8 = 3;
pub(crate) const EXIT_STOPPED: u8 = 4;

#[derive(Parser)]
#[command(name = "mrdino", version = env!("MRDINO_CODE_VERSION"), about = "Instance pseudo-labels of moving objects from raw video (MR-DINOSAUR).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Frames → flow → quasi-static selection → instances → Parquet.
    Labels(Box<LabelsArgs>),
    /// Compute forward flow and write it as files readable by `labels --flow import`.
    Flow(Box<cmd_flow::FlowCmdArgs>),
    /// Generate a small video dataset with exact flow, instance and camera-motion ground truth.
    Synth(cmd_synth::SynthArgs),
    /// List the units of a `labels` run (same arguments) and write the plan, without processing.
    Plan(Box<LabelsArgs>),
    /// Done / failed / missing units of an output directory, and the shards to rerun.
    Status(StatusArgs),
    /// Check that every planned unit is done and merge the statistics into one manifest.
    Finalize(StatusArgs),
    /// Score pseudo-labels against ground-truth masks of moving objects (F1@50, AP50, AR50, fg-/all-ARI,
    /// quasi-static retrieval); prints a table and writes JSON.
    Eval(cmd_eval::EvalArgs),
    /// One table of several `eval` results (e.g. pseudo-labels, baseline, stage 1, stage 2), also as JSON.
    Compare(cmd_compare::CompareArgs),
    /// Static HTML report of a labels run: per-sequence statistics, SVG plots, overlays and flow of sampled frames.
    Report(cmd_report::ReportArgs),
    /// Train a slot model (`train dinosaur`): reference recipe per dataset, resumable checkpoints.
    #[command(subcommand)]
    Train(cmd_train::TrainCommand),
    /// MR-DINOSAUR refinement of a DINOSAUR model with pseudo-labels: `refine stage1` (slot attention), then
    /// `refine stage2` (slot deactivation); resumable checkpoints.
    #[command(subcommand)]
    Refine(cmd_refine::RefineCommand),
    /// How much each frozen backbone's representation changes when only the foreground, the background, the
    /// centre or the border of a frame is kept: CKA, SVCCA, PWCCA, k-NN purity, an HTML report.
    Analyze(Box<cmd_analyze::AnalyzeArgs>),
    /// Frozen-backbone features of a dataset's views (or of a pseudo-label run's windows) as a resumable,
    /// shardable feature cache that training reads.
    Features(Box<cmd_features::FeaturesArgs>),
    /// Object masks of a DINOSAUR / MR-DINOSAUR model for every frame (windows, join, merge), written as
    /// `frames` + `instances` tables in the layout of `labels`; resumable and shardable.
    Infer(Box<cmd_infer::InferArgs>),
    /// Open-vocabulary names (Talk2DINO) for the instances of a labels or predictions run, as a Parquet table
    /// joinable to `instances`.
    Name(Box<cmd_name::NameArgs>),
    /// Talk2DINO's text-prompted masks of every frame of a dataset, as a labels-shaped run with a prompt column.
    Segment(Box<cmd_segment::SegmentArgs>),
}

#[derive(clap::Args)]
struct StatusArgs {
    /// Output directory of `mrdino labels`.
    #[arg(long)]
    out: PathBuf,
    /// Parameter hash to report on (needed only when OUT holds several).
    #[arg(long)]
    params: Option<String>,
    /// Number of array tasks (at least 1), to list the shards to rerun (default: from the run manifests).
    #[arg(long)]
    num_shards: Option<NonZeroU64>,
}

#[derive(clap::Args)]
#[command(after_long_help = LABELS_HELP)]
struct LabelsArgs {
    /// Dataset layout: frames, video, kitti, tri-pd, movi-e.
    #[arg(long, value_parser = parse_dataset)]
    dataset: DatasetKind,
    /// Dataset root (a directory, or a video file for `--dataset video`).
    #[arg(long)]
    root: PathBuf,
    /// Output directory (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Threshold preset (default: the dataset's own; `custom` = KITTI values, for frames and videos).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// JSON file of parameter overrides with flat keys, e.g. {"preset": "tri-pd", "corner_threshold_px": 0.8,
    /// "min_instance_px": 150} (all keys: see the README's parameter table). Flags override the file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Cameras to read (KITTI: image_02,image_03; TRI-PD: camera_01,camera_05,camera_06).
    #[arg(long, value_delimiter = ',')]
    cameras: Option<Vec<String>>,
    /// Resize every frame to WxH before flow (overrides the dataset's reference geometry).
    #[arg(long, value_parser = parse_size)]
    resize: Option<(usize, usize)>,
    #[command(flatten)]
    flow: FlowArgs,
    /// Worker threads for the CPU stages (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Process only shard I of N (I in 0..N), assigned by a stable hash of the sequence id. Defaults to
    /// SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT when those are set.
    #[arg(long, value_parser = parse_shard)]
    shard: Option<Shard>,
    /// Stop cleanly (exit code 4) before this many seconds have passed (a finite number >= 0); rerun to resume.
    #[arg(long, value_parser = parse_time_budget, allow_hyphen_values = true)]
    time_budget: Option<Duration>,
    /// Write PNG overlays of this many labelled frames to OUT/overlays.
    #[arg(long, default_value_t = 0)]
    overlays: usize,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Corner-mean threshold in px (strict <).
    #[arg(long)]
    corner_threshold_px: Option<f64>,
    /// Minimum run of consecutive quasi-static frames.
    #[arg(long)]
    min_run_frames: Option<usize>,
    /// Foreground threshold in px (strict >, after rounding to 3 decimals).
    #[arg(long)]
    fg_threshold_px: Option<f64>,
    /// Compare the raw magnitude with the foreground threshold instead of the reference's 3-decimal rounding.
    #[arg(long)]
    raw_fg_magnitude: bool,
    /// Minimum instance size in px.
    #[arg(long)]
    min_instance_px: Option<usize>,
    /// Keep the 142 KITTI raw frames that are KITTI instance-benchmark images (excluded by the kitti preset).
    #[arg(long)]
    keep_eval_overlap: bool,
    /// Exit with code 3 when more than this many units or frames failed.
    #[arg(long, default_value_t = 0)]
    max_failures: usize,
}

const LABELS_HELP: &str = "\
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

pub(crate) fn parse_dataset(s: &str) -> Result<DatasetKind, String> {
    DatasetKind::parse(s).ok_or_else(|| {
        let names: Vec<&str> = DatasetKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown dataset `{s}` (expected one of: {})", names.join(", "))
    })
}

/// The one size convention of every flag (`--resize`, `synth --size`): `WxH`, width first, both positive.
pub(crate) fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WxH (width x height), e.g. 320x128, got `{s}`"))?;
    let w: usize = w.trim().parse().map_err(|_| format!("bad width `{w}` in `{s}`"))?;
    let h: usize = h.trim().parse().map_err(|_| format!("bad height `{h}` in `{s}`"))?;
    if w == 0 || h == 0 {
        return Err(format!("width and height must be positive, got `{s}`"));
    }
    Ok((w, h))
}

pub(crate) fn parse_shard(s: &str) -> Result<Shard, String> {
    Shard::parse(s).map_err(|e| e.to_string())
}

/// `--time-budget`: seconds, finite and not negative.
pub(crate) fn parse_time_budget(s: &str) -> Result<Duration, String> {
    let seconds: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{s}` is not a finite, non-negative number of seconds"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{s}`: {e}"))
}

/// Shard from Slurm's array variables when `--shard` is absent.
pub(crate) fn shard_from_env() -> Result<Option<Shard>> {
    let (Ok(id), Ok(count)) = (
        std::env::var("SLURM_ARRAY_TASK_ID"),
        std::env::var("SLURM_ARRAY_TASK_COUNT"),
    ) else {
        return Ok(None);
    };
    let min: u64 = std::env::var("SLURM_ARRAY_TASK_MIN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let id: u64 = id
        .parse()
        .with_context(|| format!("SLURM_ARRAY_TASK_ID is not a number: {id}"))?;
    let count: u64 = count
        .parse()
        .with_context(|| format!("SLURM_ARRAY_TASK_COUNT is not a number: {count}"))?;
    let index = id
        .checked_sub(min)
        .context("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN")?;
    parse_shard(&format!("{index}/{count}"))
        .map(Some)
        .map_err(anyhow::Error::msg)
}

fn resolve_params(args: &LabelsArgs, flow: FlowParams) -> Result<Params> {
    let file: Option<ConfigFile> = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?)
        }
        None => None,
    };
    // Precedence: dataset preset < config file < flags.
    let preset = args
        .preset
        .or_else(|| file.as_ref().and_then(|f| f.preset))
        .unwrap_or(Preset::for_dataset(args.dataset));
    let mut select = preset.select();
    let mut instances = preset.instances();
    if let Some(file) = &file {
        file.apply(&mut select, &mut instances);
    }
    if let Some(v) = args.corner_threshold_px {
        select.corner_threshold_px = v;
    }
    if let Some(v) = args.min_run_frames {
        select.min_run_frames = v;
    }
    if let Some(v) = args.fg_threshold_px {
        instances.fg_threshold_px = v;
    }
    if args.raw_fg_magnitude {
        instances.fg_round_decimals = None;
    }
    if let Some(v) = args.min_instance_px {
        instances.min_instance_px = v;
    }
    let params = Params {
        dataset: args.dataset,
        preset,
        cameras: args.cameras.clone().unwrap_or_else(|| args.dataset.default_cameras()),
        processing: args
            .resize
            .map(|(width, height)| Processing::Resize { width, height })
            .unwrap_or_else(|| args.dataset.reference_processing()),
        flow,
        select,
        instances,
        exclude_eval_overlap: preset == Preset::Kitti && !args.keep_eval_overlap,
    };
    params.validate().map_err(anyhow::Error::msg)?;
    Ok(params)
}

/// What to read, as the resolved parameters say.
fn source_options(args: &LabelsArgs, params: &Params) -> SourceOptions {
    SourceOptions {
        kind: args.dataset,
        root: args.root.clone(),
        cameras: Some(params.cameras.clone()),
        processing: Some(params.processing),
    }
}

fn plan(args: &LabelsArgs) -> Result<ExitCode> {
    let built = build_flow(&args.flow)?;
    let params = resolve_params(args, built.params)?;
    let params = identity::continue_earlier_partition(
        &args.out,
        mrdino_outputs::layout::LABELS_DATA_DIRS,
        params,
        &built.weights.iter().collect::<Vec<_>>(),
        Params::hash,
    )?;
    let sequences = plan_units(&source_options(args, &params))?;
    let hash = params.hash();
    let ledger = Layout::new(&args.out, &hash).ledger();
    let plan = job::labels_plan(&hash, args.dataset.name(), &sequences);
    ledger.write_plan(&plan)?;
    ledger.write_params(&params, job::CODE_VERSION)?;
    for unit in &plan.units {
        println!(
            "{}\t{}",
            unit.id,
            unit.frames.map_or("?".to_string(), |n| n.to_string())
        );
    }
    eprintln!(
        "{} units, params {hash}; plan written to {}",
        plan.units.len(),
        ledger.plan_file().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn labels(args: &LabelsArgs) -> Result<ExitCode> {
    // The pool is sized first: the flow backend reads its size.
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
            .context("cannot size the thread pool")?;
    }
    let built = build_flow(&args.flow)?;
    let params = resolve_params(args, built.params.clone())?;
    let params = identity::continue_earlier_partition(
        &args.out,
        mrdino_outputs::layout::LABELS_DATA_DIRS,
        params,
        &built.weights.iter().collect::<Vec<_>>(),
        Params::hash,
    )?;
    let shard = match args.shard {
        Some(s) => Some(s),
        None => shard_from_env()?,
    };
    let sequences = plan_units(&source_options(args, &params))?;
    if !args.quiet {
        eprintln!(
            "{} sequences of `{}`; preset {}, flow {} on {}, params {}",
            sequences.len(),
            args.dataset.name(),
            params.preset.name(),
            params.flow.name(),
            built.device,
            params.hash()
        );
    }
    let mut flow = built.source;
    let options = RunOptions {
        out: args.out.clone(),
        shard,
        time_budget: args.time_budget,
        progress: !args.quiet,
        flow_weights_sha256: params.flow.weights_id().map(str::to_string),
        parallel_units: rayon::current_num_threads(),
    };
    let manifest = run_labels(&params, &sequences, &mut flow, &options)?;
    let t = &manifest.totals;
    eprintln!(
        "{} sequences ({} done, {} already done, {} failed, {} interrupted); {} frames, {} quasi-static, {} labelled, {} instances; {} frame failures; {:.1} s",
        t.units.planned,
        t.units.done,
        t.units.skipped,
        t.units.failed,
        t.units.interrupted,
        t.frames,
        t.quasi_static_frames,
        t.labelled_frames,
        t.instances,
        t.frame_failures,
        t.seconds
    );
    let layout = Layout::new(&args.out, &params.hash());
    eprintln!(
        "tables: {} and {}",
        layout.frames_dir().display(),
        layout.instances_dir().display()
    );
    if args.overlays > 0 && t.units.interrupted == 0 {
        let written = overlays::write_overlays(&layout, &sequences, args.overlays)?;
        eprintln!("{} overlays in {}", written.len(), args.out.join("overlays").display());
    }
    if t.units.interrupted > 0 || STOP.load(Ordering::SeqCst) {
        eprintln!(
            "stopped early: {} sequences not done; run the same command again to resume",
            t.units.interrupted
        );
        return Ok(ExitCode::from(EXIT_STOPPED));
    }
    if t.units.failed + t.frame_failures > args.max_failures {
        for unit in manifest
            .units
            .iter()
            .filter(|u| u.error.is_some() || !u.failures.is_empty())
        {
            if let Some(e) = &unit.error {
                eprintln!("failed unit {}: {e}", unit.unit);
            }
            for f in &unit.failures {
                eprintln!("failed frame {} #{}: {}", unit.unit, f.frame_index, f.reason);
            }
        }
        return Ok(ExitCode::from(EXIT_FAILURES));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    if let Err(e) = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(EXIT_STOPPED));
        }
        eprintln!("\nstopping after the current frame (press again to quit at once)…");
    }) {
        eprintln!("warning: cannot install the signal handler: {e}");
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Labels(args) => labels(args),
        Command::Flow(args) => cmd_flow::run(args),
        Command::Plan(args) => plan(args),
        Command::Synth(args) => cmd_synth::run(args).map(|()| ExitCode::SUCCESS),
        Command::Eval(args) => cmd_eval::run(args).map(|()| ExitCode::SUCCESS),
        Command::Report(args) => cmd_report::run(args).map(|()| ExitCode::SUCCESS),
        Command::Compare(args) => cmd_compare::run(args).map(|()| ExitCode::SUCCESS),
        Command::Train(command) => cmd_train::run(command),
        Command::Refine(command) => cmd_refine::run(command),
        Command::Analyze(args) => cmd_analyze::run(args).map(|()| ExitCode::SUCCESS),
        Command::Features(args) => match args.shard {
            Some(shard) => cmd_features::run(args, Some(shard)),
            None => shard_from_env().and_then(|shard| cmd_features::run(args, shard)),
        },
        Command::Name(args) => match args.shard {
            Some(shard) => cmd_name::run(args, Some(shard)),
            None => shard_from_env().and_then(|shard| cmd_name::run(args, shard)),
        },
        Command::Segment(args) => match args.shard {
            Some(shard) => cmd_segment::run(args, Some(shard)),
            None => shard_from_env().and_then(|shard| cmd_segment::run(args, shard)),
        },
        Command::Infer(args) => match args.shard {
            Some(shard) => cmd_infer::run(args, Some(shard)),
            None => shard_from_env().and_then(|shard| cmd_infer::run(args, shard)),
        },
        Command::Status(args) if cmd_infer::is_prediction_run(&args.out) => {
            cmd_infer::status(&args.out, args.params.as_deref(), args.num_shards).map(|r| {
                cmd_infer::print_status(&r);
                if r.complete() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_FAILURES)
                }
            })
        }
        Command::Status(args) if cmd_name::is_names_run(&args.out) => {
            cmd_name::status(&args.out, args.params.as_deref(), args.num_shards).map(|r| {
                cmd_name::print_status(&r);
                if r.complete() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_FAILURES)
                }
            })
        }
        Command::Status(args) if cmd_features::is_feature_cache(&args.out) => {
            cmd_features::status(&args.out, args.params.as_deref(), args.num_shards).map(|r| {
                cmd_features::print_status(&r);
                if r.complete() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_FAILURES)
                }
            })
        }
        Command::Status(args) => batch::status(&args.out, args.params.as_deref(), args.num_shards).map(|r| {
            batch::print_status(&r);
            if r.complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURES)
            }
        }),
        Command::Finalize(args) => {
            let finalized = if cmd_infer::is_prediction_run(&args.out) {
                cmd_infer::finalize(&args.out, args.params.as_deref())
            } else if cmd_name::is_names_run(&args.out) {
                cmd_name::finalize(&args.out, args.params.as_deref())
            } else if cmd_features::is_feature_cache(&args.out) {
                cmd_features::finalize(&args.out, args.params.as_deref())
            } else {
                batch::finalize(&args.out, args.params.as_deref())
            };
            finalized.map(|path| {
                println!("finalized: {}", path.display());
                ExitCode::SUCCESS
            })
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
