//! `mrdino labels` (and `mrdino plan`): frames → flow → quasi-static selection → instances → Parquet, as a unit
//! job of the engine.
//!
//! Each unit (a sequence, see [`unit`]) writes its two Parquet files atomically, then the engine writes its done
//! marker; a unit without a marker is redone from scratch by the next run, so a crash at any moment loses at most
//! the units in progress and never leaves a partial or duplicated row behind. Any number of tasks may run on one
//! output directory at once (array jobs, several hosts).
//!
//! Units run in parallel when the flow source can be forked (imported flow, Kubric files, DIS, Farnebäck): up to
//! one unit per thread of the pool, each streaming through bounded channels, so memory grows with the number of
//! threads, not with the dataset. Network flow runs one unit at a time (the network batches frame pairs
//! instead). Rows do not depend on the number of units or threads in flight.

pub mod analysis;
pub mod overlays;
pub mod rows;
pub mod unit;

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use mrdino_datasets::{list_sequences, Sequence};
use mrdino_outputs::bookkeeping::{partitions, PlannedUnit};
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS, LABELS_KIND};
use mrdino_outputs::tables::{frames_batch, instances_batch_with_scores, write_parquet, SCHEMA_VERSION};
use mrdino_stages::flow::source::{self, BuiltFlow, FlowSource};
use serde::{Deserialize, Serialize};

use crate::cli::labels::LabelsArgs;
use crate::engine::job::{build_plan, OpenJob, UnitTally, CODE_VERSION};
use crate::engine::progress;
use crate::engine::status::JobKind;
use crate::engine::stop::StopHandle;
use crate::engine::units::{Driver, UnitDone};
use crate::settings::identity::continue_earlier_partition;
use crate::settings::labels::LabelsParams;
use unit::{process_unit, UnitError};

/// The labels job for `status` and `finalize`.
pub const JOB: JobKind = JobKind {
    kind: LABELS_KIND,
    label: "",
    data_dirs: LABELS_DATA_DIRS,
    totals: &[
        ("frames", "frame_rows", "frames"),
        ("labelled_frames", "labelled_frames", "labelled"),
        ("instances", "instances", "instances"),
    ],
    frame_failures: true,
};

pub use mrdino_outputs::layout::LabelCounts;

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    #[serde(flatten)]
    pub units: UnitTally,
    pub frames: usize,
    pub quasi_static_frames: usize,
    pub labelled_frames: usize,
    pub instances: usize,
    pub frame_failures: usize,
    pub seconds: f64,
}

/// The flow backend and the resolved parameters of a labels (or plan) invocation.
fn resolve(args: &LabelsArgs) -> Result<(BuiltFlow, LabelsParams)> {
    let device = args.device.device()?;
    let built = source::build(&args.flow.spec(device, rayon::current_num_threads()))?;
    let params = LabelsParams::resolve(args, built.params.clone())?;
    let weights: Vec<_> = built.weights.iter().collect();
    let params = continue_earlier_partition(&args.out, LABELS_DATA_DIRS, params, &weights, LabelsParams::hash)?;
    Ok((built, params))
}

/// Lists the units of a dataset (configuration errors surface here, before any output is written).
fn list(params: &LabelsParams, root: &Path) -> Result<Vec<Sequence>> {
    list_sequences(&params.source(root)).with_context(|| format!("cannot list dataset `{}`", params.dataset.name()))
}

/// `mrdino plan`: lists the units and writes the plan, without processing.
pub fn plan(args: &LabelsArgs) -> Result<ExitCode> {
    let (_, params) = resolve(args)?;
    let sequences = list(&params, &args.input.root)?;
    let hash = params.hash();
    let ledger = Layout::new(&args.out, &hash).ledger();
    let plan = build_plan(LABELS_KIND, &hash, params.dataset.name(), &sequences);
    ledger.write_plan(&plan)?;
    ledger.write_params(&params, CODE_VERSION)?;
    for unit in &plan.units {
        println!("{}\t{}", unit.id, unit.frames.map_or("?".to_string(), |n| n.to_string()));
    }
    eprintln!(
        "{} units, params {hash}; plan written to {}",
        plan.units.len(),
        ledger.plan_file().display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `mrdino labels`.
pub fn run(args: &LabelsArgs, stop: &StopHandle) -> Result<ExitCode> {
    crate::engine::paths::check_out_dir(
        &args.out,
        &[
            ("--root", Some(&args.input.root)),
            ("--flow-dir", args.flow.flow_dir.as_deref()),
            ("--weights", args.flow.weights.as_deref()),
            ("--config", args.config.as_deref()),
        ],
    )?;
    // The pool is sized first: the flow backend reads its size.
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot size the thread pool")?;
    }
    let (built, params) = resolve(args)?;
    let shard = args.job.shard()?;
    let sequences = list(&params, &args.input.root)?;
    let quiet = args.job.run.quiet;
    if !quiet {
        eprintln!(
            "{} sequences of `{}`; preset {}, flow {} on {}, params {}",
            sequences.len(),
            params.dataset.name(),
            params.preset.name(),
            params.flow.name(),
            built.device,
            params.hash()
        );
    }
    let stop = stop.with_budget(args.job.run.time_budget);
    let (totals, exit) = label_units(&params, &sequences, built.source, args, shard, &stop)?;
    print_summary(&totals);
    let layout = Layout::new(&args.out, &params.hash());
    eprintln!(
        "tables: {} and {}",
        layout.frames_dir().display(),
        layout.instances_dir().display()
    );
    if args.overlays > 0 && totals.units.interrupted == 0 {
        let written = overlays::write_overlays(&layout, &sequences, args.overlays)?;
        eprintln!("{} overlays in {}", written.len(), args.out.join("overlays").display());
    }
    Ok(exit)
}

fn print_summary(t: &Totals) {
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
}

/// The file metadata of every table of the run.
fn file_metadata(params: &LabelsParams) -> Result<Vec<(String, String)>> {
    let mut kv = vec![
        ("mrdino.schema_version".to_string(), SCHEMA_VERSION.to_string()),
        ("mrdino.code_version".to_string(), CODE_VERSION.to_string()),
        ("mrdino.params_hash".to_string(), params.hash()),
        ("mrdino.params".to_string(), params.to_json()?),
        ("mrdino.flow".to_string(), params.flow.name()),
    ];
    if let Some(id) = params.flow.weights_id() {
        kv.push(("mrdino.flow_weights_sha256".to_string(), id.to_string()));
    }
    Ok(kv)
}

/// Opens the job, runs every unit of this shard on the engine's driver and writes the run manifest.
fn label_units(
    params: &LabelsParams,
    sequences: &[Sequence],
    flow: FlowSource,
    args: &LabelsArgs,
    shard: Option<mrdino_outputs::bookkeeping::Shard>,
    stop: &StopHandle,
) -> Result<(Totals, ExitCode)> {
    let started = Instant::now();
    let hash = params.hash();
    let layout = Layout::new(&args.out, &hash);
    let plan = build_plan(LABELS_KIND, &hash, params.dataset.name(), sequences);
    let data_dirs = [layout.frames_dir(), layout.instances_dir()];
    let job = OpenJob::open(layout.ledger(), &data_dirs, params, plan, shard)?;
    note_other_partitions(&args.out, &hash);
    let units = job.units(sequences);
    let metadata = file_metadata(params)?;
    let multi = MultiProgress::with_draw_target(if args.job.run.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    let unit_bar = multi.add(progress::counter(units.len() as u64, "sequences"));
    let frames: u64 = units
        .iter()
        .map(|(_, u)| u.frames.map_or(0, |n| n.saturating_sub(1) as u64))
        .sum();
    let frame_bar = multi.add(progress::rate(frames, "frames"));
    // Workers: the flow source, plus forks of it when it can be forked.
    let mut workers = Vec::new();
    for _ in 1..rayon::current_num_threads().max(1).min(units.len()) {
        match flow.fork() {
            Some(f) => workers.push(f),
            None => break,
        }
    }
    workers.push(flow);
    let on_skip = |c: &LabelCounts| frame_bar.inc(c.frame_rows as u64);
    let driver = Driver {
        ledger: &job.ledger,
        stop,
        bar: &unit_bar,
        quiet: true,
        describe: None,
        on_skip: Some(&on_skip),
    };
    let work = |flow: &mut FlowSource, sequence: &Sequence, planned: &PlannedUnit| {
        label_unit(params, sequence, planned, flow, stop, &layout, &metadata, &frame_bar)
    };
    let run = driver.run(units, workers, &work);
    frame_bar.finish_and_clear();
    let mut totals = Totals {
        units: run.tally,
        frame_failures: run.frame_failures,
        ..Totals::default()
    };
    for c in run.done_counts() {
        totals.frames += c.frame_rows;
        totals.quasi_static_frames += c.quasi_static_frames;
        totals.labelled_frames += c.labelled_frames;
        totals.instances += c.instances;
    }
    totals.seconds = started.elapsed().as_secs_f64();
    let exit = job.finish(run, &totals, args.job.max_failures)?;
    Ok((totals, exit))
}

fn note_other_partitions(out: &Path, hash: &str) {
    let others: Vec<String> = partitions(out, LABELS_DATA_DIRS)
        .into_iter()
        .filter(|h| h != hash)
        .collect();
    if !others.is_empty() {
        eprintln!(
            "note: {} also holds labels made with other parameters (params={}); they stay in their own partitions",
            out.display(),
            others.join(", params=")
        );
    }
}

/// One unit: process the sequence, write its two tables.
#[allow(clippy::too_many_arguments)]
fn label_unit(
    params: &LabelsParams,
    sequence: &Sequence,
    planned: &PlannedUnit,
    flow: &mut FlowSource,
    stop: &StopHandle,
    layout: &Layout,
    metadata: &[(String, String)],
    frame_bar: &ProgressBar,
) -> Result<UnitDone<LabelCounts>> {
    let on_frame = || frame_bar.inc(1);
    let output = match process_unit(sequence, params, flow, stop, &on_frame) {
        Ok(output) => output,
        Err(UnitError::Interrupted) => return Err(crate::engine::stop::Stopped.into()),
        Err(UnitError::Failed(message)) => anyhow::bail!(message),
    };
    let rows = &output.rows;
    let counts = LabelCounts {
        frames_decoded: output.decoded_frames,
        frame_rows: rows.frames.len(),
        quasi_static_frames: rows.frames.iter().filter(|f| f.quasi_static).count(),
        labelled_frames: rows.frames.iter().filter(|f| f.labelled).count(),
        instances: rows.instances.len(),
    };
    let [frames_path, instances_path] = layout.unit_outputs(&planned.id);
    let write = || -> Result<()> {
        write_parquet(&frames_path, &frames_batch(&rows.frames)?, metadata)?;
        let instances = instances_batch_with_scores(&rows.instances, &rows.scores)?;
        write_parquet(&instances_path, &instances, metadata)?;
        Ok(())
    };
    write().context("cannot write the unit's outputs")?;
    Ok(UnitDone {
        counts,
        files: vec![frames_path, instances_path],
        failures: output.failures,
    })
}
