//! The `labels` run: plan the units, skip the done ones, process the rest, write rows, markers and manifest.
//!
//! Each unit's two Parquet files are written atomically, then its done marker; a unit without a marker is
//! redone from scratch by the next run, so a crash at any moment loses at most the units in progress and never
//! leaves a partial or duplicated row behind. Whether a unit is done is decided by the bookkeeping's one rule
//! (`Ledger::is_done`), the same that `status`, `finalize`, `eval` and `report` apply.
//!
//! Any number of tasks may run on one output directory at once (array jobs, several hosts): a task removes only
//! temporaries whose writer is gone, writes only files of its own units plus identical plan and parameter
//! files, and names its run manifest uniquely. A unit whose outputs cannot be written (disk full, permissions)
//! is recorded as that unit's failure and the task goes on with the next one.
//!
//! Units run in parallel when the flow source can be forked (imported flow, Kubric files, DIS, Farnebäck):
//! up to one unit per thread of the pool, each streaming through bounded channels, so memory grows with the
//! number of threads, not with the dataset. Network flow runs one unit at a time (the network batches frame
//! pairs instead). Rows do not depend on the number of units or threads in flight; the manifest lists units
//! in plan order.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mrdino_datasets::{list_sequences, Sequence, SourceOptions};
use mrdino_outputs::bookkeeping::{
    in_shard, partitions, unix_now, DoneMarker, Ledger, PlannedUnit, Shard, UnitOutcome, UnitStatus,
};
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS};
use mrdino_outputs::tables::{frames_batch, instances_batch, write_parquet, SCHEMA_VERSION};

use crate::config::Params;
use crate::job::{labels_plan, LabelCounts, LabelsManifest, LabelsUnitStatus, Totals, CODE_VERSION};
use crate::unit::{process_unit, FlowSource, UnitError, UnitOutput};
use crate::unit_job::write_run_manifest;

/// Set by SIGINT/SIGTERM or the time budget; polled between frames.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Options that do not change rows.
pub struct RunOptions {
    pub out: PathBuf,
    pub shard: Option<Shard>,
    pub time_budget: Option<Duration>,
    pub progress: bool,
    /// Extra provenance for the file metadata (e.g. flow weights' SHA-256).
    pub flow_weights_sha256: Option<String>,
    /// Units processed at once (at least 1; 1 when the flow source cannot be forked).
    pub parallel_units: usize,
}

fn file_metadata(params: &Params, options: &RunOptions) -> Vec<(String, String)> {
    let mut kv = vec![
        ("mrdino.schema_version".to_string(), SCHEMA_VERSION.to_string()),
        ("mrdino.code_version".to_string(), CODE_VERSION.to_string()),
        ("mrdino.params_hash".to_string(), params.hash()),
        ("mrdino.params".to_string(), params.to_json()),
        ("mrdino.flow".to_string(), params.flow.name()),
    ];
    if let Some(sha) = &options.flow_weights_sha256 {
        kv.push(("mrdino.flow_weights_sha256".to_string(), sha.clone()));
    }
    kv
}

/// Lists the units of a dataset (configuration errors surface here, before any output is written).
pub fn plan_units(source: &SourceOptions) -> Result<Vec<Sequence>> {
    list_sequences(source).with_context(|| format!("cannot list dataset `{}`", source.kind.name()))
}

fn progress_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// What every unit of a run shares.
struct RunContext<'a> {
    params: &'a Params,
    layout: Layout,
    ledger: Ledger,
    metadata: Vec<(String, String)>,
    multi: MultiProgress,
    unit_bar: ProgressBar,
    frame_bar: ProgressBar,
}

fn status(unit: &str, outcome: UnitOutcome, seconds: f64, error: Option<String>) -> LabelsUnitStatus {
    UnitStatus {
        unit: unit.to_string(),
        status: outcome,
        seconds,
        error,
        failures: Vec::new(),
        payload: LabelCounts::default(),
    }
}

/// Writes a unit's tables, then its marker. An error here is the unit's failure, not the run's.
fn write_unit(
    ctx: &RunContext<'_>,
    planned: &PlannedUnit,
    output: &UnitOutput,
    counts: &LabelCounts,
    seconds: f64,
) -> Result<()> {
    let [frames_path, instances_path] = ctx.layout.unit_outputs(&planned.id);
    write_parquet(&frames_path, &frames_batch(&output.frames)?, &ctx.metadata)?;
    write_parquet(&instances_path, &instances_batch(&output.instances)?, &ctx.metadata)?;
    let marker = DoneMarker::new(
        &ctx.ledger,
        planned,
        &[frames_path, instances_path],
        CODE_VERSION,
        seconds,
        output.failures.clone(),
        counts.clone(),
    );
    ctx.ledger.write_marker(&marker)?;
    Ok(())
}

/// Skips, processes or records the failure of one unit.
fn run_unit(
    ctx: &RunContext<'_>,
    sequence: &Sequence,
    planned: &PlannedUnit,
    flow: &mut FlowSource,
) -> LabelsUnitStatus {
    if let Some(marker) = ctx.ledger.is_done::<LabelCounts>(planned) {
        ctx.frame_bar.inc(marker.payload.frame_rows as u64);
        ctx.unit_bar.inc(1);
        return UnitStatus {
            unit: sequence.id.clone(),
            status: UnitOutcome::Skipped,
            seconds: 0.0,
            error: None,
            failures: marker.failures,
            payload: marker.payload,
        };
    }
    let unit_start = Instant::now();
    let on_frame = || ctx.frame_bar.inc(1);
    let result = process_unit(sequence, ctx.params, flow, &STOP, &on_frame);
    let seconds = unit_start.elapsed().as_secs_f64();
    let outcome = match result {
        Ok(output) => {
            let counts = LabelCounts {
                frames_decoded: output.decoded_frames,
                frame_rows: output.frames.len(),
                quasi_static_frames: output.frames.iter().filter(|f| f.quasi_static).count(),
                labelled_frames: output.frames.iter().filter(|f| f.labelled).count(),
                instances: output.instances.len(),
            };
            match write_unit(ctx, planned, &output, &counts, seconds) {
                Ok(()) => UnitStatus {
                    unit: sequence.id.clone(),
                    status: UnitOutcome::Done,
                    seconds,
                    error: None,
                    failures: output.failures,
                    payload: counts,
                },
                Err(e) => {
                    let message = format!("cannot write the unit's outputs: {e:#}");
                    ctx.multi.suspend(|| eprintln!("error: {}: {message}", sequence.id));
                    status(&sequence.id, UnitOutcome::Failed, seconds, Some(message))
                }
            }
        }
        Err(UnitError::Interrupted) => status(&sequence.id, UnitOutcome::Interrupted, seconds, None),
        Err(UnitError::Failed(message)) => {
            ctx.multi.suspend(|| eprintln!("error: {}: {message}", sequence.id));
            status(&sequence.id, UnitOutcome::Failed, seconds, Some(message))
        }
    };
    ctx.unit_bar.inc(1);
    outcome
}

/// Runs `labels`. Returns the manifest of this run.
pub fn run_labels(
    params: &Params,
    sequences: &[Sequence],
    flow: &mut FlowSource,
    options: &RunOptions,
) -> Result<LabelsManifest> {
    let started = Instant::now();
    let started_unix_s = unix_now();
    let params_hash = params.hash();
    let layout = Layout::new(&options.out, &params_hash);
    let ledger = layout.ledger();
    ledger
        .prepare(&[layout.frames_dir(), layout.instances_dir()])
        .with_context(|| format!("cannot prepare output directory {}", options.out.display()))?;
    ledger.write_params(params, CODE_VERSION)?;
    let plan = labels_plan(&params_hash, params.dataset.name(), sequences);
    ledger.write_plan(&plan)?;
    let others: Vec<String> = partitions(&options.out, LABELS_DATA_DIRS)
        .into_iter()
        .filter(|h| *h != params_hash)
        .collect();
    if !others.is_empty() {
        eprintln!(
            "note: {} also holds labels made with other parameters (params={}); they stay in their own partitions",
            options.out.display(),
            others.join(", params=")
        );
    }

    let units: Vec<(&Sequence, &PlannedUnit)> = sequences
        .iter()
        .zip(&plan.units)
        .filter(|(s, _)| in_shard(&s.id, options.shard))
        .collect();
    let total_frames: u64 = units
        .iter()
        .map(|(_, u)| u.frames.map_or(0, |n| n.saturating_sub(1) as u64))
        .sum();
    let multi = MultiProgress::with_draw_target(if options.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let unit_bar = multi.add(ProgressBar::new(units.len() as u64));
    unit_bar.set_style(progress_style("{prefix:>9} [{bar:30}] {pos}/{len}"));
    unit_bar.set_prefix("sequences");
    let frame_bar = multi.add(ProgressBar::new(total_frames));
    frame_bar.set_style(progress_style("{prefix:>9} [{bar:30}] {pos}/{len} {per_sec} eta {eta}"));
    frame_bar.set_prefix("frames");
    let ctx = RunContext {
        params,
        metadata: file_metadata(params, options),
        layout,
        ledger,
        multi,
        unit_bar,
        frame_bar,
    };

    // Workers: the caller's flow source, plus forks of it when it can be forked.
    let mut forks: Vec<FlowSource> = Vec::new();
    for _ in 1..options.parallel_units.max(1).min(units.len()) {
        match flow.fork() {
            Some(f) => forks.push(f),
            None => break,
        }
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, LabelsUnitStatus)>> = Mutex::new(Vec::with_capacity(units.len()));
    let finished = AtomicBool::new(false);
    let work = |flow: &mut FlowSource| loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let Some((sequence, planned)) = units.get(i) else { break };
        let budget_spent = options.time_budget.is_some_and(|b| started.elapsed() >= b);
        let outcome = if budget_spent || STOP.load(Ordering::SeqCst) {
            STOP.store(true, Ordering::SeqCst);
            status(&sequence.id, UnitOutcome::Interrupted, 0.0, None)
        } else {
            let guarded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_unit(&ctx, sequence, planned, flow)));
            guarded.unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown panic");
                let message = format!("internal error while processing the unit: {message}");
                ctx.multi.suspend(|| eprintln!("error: {}: {message}", sequence.id));
                status(&sequence.id, UnitOutcome::Failed, 0.0, Some(message))
            })
        };
        if let Ok(mut r) = results.lock() {
            r.push((i, outcome));
        }
    };
    let work = &work;
    std::thread::scope(|scope| {
        if let Some(budget) = options.time_budget {
            let finished = &finished;
            scope.spawn(move || {
                while !finished.load(Ordering::SeqCst) {
                    if started.elapsed() >= budget {
                        STOP.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        let workers: Vec<_> = forks
            .into_iter()
            .map(|mut fork| scope.spawn(move || work(&mut fork)))
            .collect();
        work(flow);
        for worker in workers {
            // A worker only ends by finishing its loop: a unit's panic is recorded as its failure.
            let _ = worker.join();
        }
        finished.store(true, Ordering::SeqCst);
    });
    ctx.unit_bar.finish_and_clear();
    ctx.frame_bar.finish_and_clear();

    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(i, _)| *i);
    let statuses: Vec<LabelsUnitStatus> = results.into_iter().map(|(_, s)| s).collect();
    let mut totals = Totals::default();
    totals.units.planned = units.len();
    for s in &statuses {
        totals.units.count(s.status);
        if s.status == UnitOutcome::Done {
            totals.frames += s.payload.frame_rows;
            totals.quasi_static_frames += s.payload.quasi_static_frames;
            totals.labelled_frames += s.payload.labelled_frames;
            totals.instances += s.payload.instances;
            totals.frame_failures += s.failures.len();
        }
    }
    totals.seconds = started.elapsed().as_secs_f64();
    let manifest = write_run_manifest(
        &ctx.ledger,
        &params_hash,
        serde_json::to_value(params)?,
        options.shard,
        started_unix_s,
        statuses,
        totals,
    )?;
    if manifest.units.is_empty() {
        eprintln!(
            "note: no units fall into shard {} of this dataset",
            options.shard.map_or_else(|| "all".to_string(), |s| s.to_string())
        );
    }
    Ok(manifest)
}
