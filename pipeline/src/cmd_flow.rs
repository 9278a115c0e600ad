//! `mrdino flow`: forward flow t→t+1 written as files (`OUT/<sequence id>/<frame name>.npy|.flo`), readable
//! back by `labels --flow import --flow-dir OUT`.
//!
//! An export is a bookkeeping job of kind `flow` (`mrdino_outputs::bookkeeping`): its parameters — dataset,
//! cameras, frame processing (size), backend with its settings (DIS preset; network, weights SHA-256,
//! iterations, precision) and file format — are recorded in `OUT/_params/<hash>.json`, a plan lists the
//! sequences and a done marker per sequence lists its flow files. A directory holds flow of one parameter
//! set only: an export into a directory recorded with other parameters is refused before any work, naming
//! each differing value on both sides, so flow from other weights or iterations is never reused in silence.
//! Files are written atomically; a done sequence is skipped, and inside an interrupted sequence a pair whose
//! file exists is not recomputed, so an export resumes where it stopped. A sequence whose files cannot be
//! written is recorded as failed and the export goes on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mrdino_datasets::{DatasetKind, Frame, Processing, Sequence, SourceOptions};
use mrdino_outputs::bookkeeping::{
    unix_now, DoneMarker, FrameFailure, Ledger, PlannedUnit, RunManifest, UnitOutcome, UnitStatus,
};
use mrdino_outputs::write_atomic;
use mrdino_stages::flow::files::{encode_flo, encode_npy};
use mrdino_stages::flow::FlowEstimator;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::flowsel::{build_flow, FlowArgs, FlowChoice};
use crate::job::{build_plan, CODE_VERSION};
use crate::run::{plan_units, STOP};
use crate::unit::FlowSource;

/// The job kind of flow exports in the bookkeeping.
pub const FLOW_KIND: &str = "flow";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowFormat {
    /// float32 (H, W, 2) NumPy arrays.
    Npy,
    /// Middlebury .flo.
    Flo,
}

impl FlowFormat {
    fn extension(self) -> &'static str {
        match self {
            FlowFormat::Npy => "npy",
            FlowFormat::Flo => "flo",
        }
    }
}

#[derive(clap::Args)]
pub struct FlowCmdArgs {
    /// Dataset layout: frames, video, kitti, tri-pd, movi-e.
    #[arg(long, value_parser = crate::parse_dataset)]
    dataset: DatasetKind,
    /// Dataset root.
    #[arg(long)]
    root: PathBuf,
    /// Output directory (holds flow of one parameter set).
    #[arg(long)]
    out: PathBuf,
    /// Cameras to read (KITTI / TRI-PD).
    #[arg(long, value_delimiter = ',')]
    cameras: Option<Vec<String>>,
    /// Resize every frame to WxH before flow.
    #[arg(long, value_parser = crate::parse_size)]
    resize: Option<(usize, usize)>,
    #[command(flatten)]
    flow: FlowArgs,
    /// File format.
    #[arg(long, value_enum, default_value = "npy")]
    format: FlowFormat,
    /// No progress messages.
    #[arg(long)]
    quiet: bool,
}

/// What a flow sequence produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowCounts {
    pub pairs: usize,
    pub written: usize,
}

/// Totals of one export run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowTotals {
    pub units_done: usize,
    pub units_skipped: usize,
    pub units_failed: usize,
    pub files_written: usize,
    pub files_present: usize,
    pub unreadable_frames: usize,
}

/// Canonical JSON values by dotted path (`flow.iterations` → `12`).
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut std::collections::BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// `key: a (there) vs b (here)` for every value that differs.
fn differences(there: &serde_json::Value, here: &serde_json::Value) -> Vec<String> {
    let (mut a, mut b) = (Default::default(), Default::default());
    flatten("", there, &mut a);
    flatten("", here, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |m: &std::collections::BTreeMap<String, String>| m.get(k).cloned().unwrap_or("(unset)".into());
            format!("{k} = {} in the directory, {} in this run", show(&a), show(&b))
        })
        .collect()
}

/// Refuses an output directory that holds flow of other parameters (or files without a record).
fn check_directory(out: &Path, hash: &str, record: &serde_json::Value) -> Result<()> {
    let params_dir = out.join("_params");
    let mut recorded: Vec<PathBuf> = std::fs::read_dir(&params_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    recorded.sort();
    for file in recorded {
        if file.file_stem().is_some_and(|s| s == hash) {
            continue;
        }
        let other = Ledger::new(out, FLOW_KIND, &file.file_stem().unwrap_or_default().to_string_lossy());
        let there = other
            .read_params()
            .with_context(|| format!("cannot read the parameter record {}", file.display()))?
            .unwrap_or(serde_json::Value::Null);
        bail!(
            "{} holds flow made with other parameters ({}): {}; write this flow to another --out",
            out.display(),
            file.display(),
            differences(&there, record).join("; ")
        );
    }
    let has_record = params_dir.join(format!("{hash}.json")).is_file();
    let unrecorded: Vec<String> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && !n.starts_with('_'))
        .collect();
    if !has_record && !unrecorded.is_empty() {
        bail!(
            "{} already holds files ({}…) but no record of the flow parameters they were made with; write this \
             flow to another --out",
            out.display(),
            unrecorded.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Exports one sequence; returns its marker counts and files, or why it failed.
fn export_sequence(
    args: &FlowCmdArgs,
    sequence: &Sequence,
    estimator: &mut dyn FlowEstimator,
    batch: usize,
    failures: &mut Vec<FrameFailure>,
) -> Result<(FlowCounts, Vec<PathBuf>, usize)> {
    let ext = args.format.extension();
    let dir = args.out.join(&sequence.id);
    let mut files = Vec::new();
    let mut counts = FlowCounts::default();
    let mut present = 0;
    let mut previous: Option<Frame> = None;
    let mut pending: Vec<(Frame, Frame)> = Vec::new();
    let mut flush = |pending: &mut Vec<(Frame, Frame)>, files: &mut Vec<PathBuf>| -> Result<usize> {
        if pending.is_empty() {
            return Ok(0);
        }
        let pairs: Vec<_> = pending.iter().map(|(a, b)| (&a.image, &b.image)).collect();
        let fields = estimator
            .estimate(&pairs)
            .with_context(|| format!("flow of {}", sequence.id))?;
        for ((a, _), field) in pending.iter().zip(&fields) {
            let bytes = match args.format {
                FlowFormat::Npy => encode_npy(field),
                FlowFormat::Flo => encode_flo(field),
            };
            let path = dir.join(format!("{}.{ext}", a.name));
            write_atomic(&path, &bytes)?;
            files.push(path);
        }
        let n = pending.len();
        pending.clear();
        Ok(n)
    };
    for (index, item) in sequence.frames()? {
        if STOP.load(Ordering::SeqCst) {
            bail!("stopped");
        }
        let frame = match item {
            Ok(frame) => Some(frame),
            Err(e) => {
                failures.push(FrameFailure {
                    frame_index: index,
                    path: e.path().map(|p| p.display().to_string()).unwrap_or_default(),
                    reason: e.to_string(),
                });
                None
            }
        };
        if let (Some(prev), Some(cur)) = (previous.take(), frame.as_ref()) {
            counts.pairs += 1;
            let path = dir.join(format!("{}.{ext}", prev.name));
            if path.is_file() {
                present += 1;
                files.push(path);
            } else {
                pending.push((prev, cur.clone()));
                if pending.len() >= batch {
                    counts.written += flush(&mut pending, &mut files)?;
                }
            }
        }
        previous = frame;
    }
    counts.written += flush(&mut pending, &mut files)?;
    Ok((counts, files, present))
}

pub fn run(args: &FlowCmdArgs) -> Result<ExitCode> {
    if matches!(args.flow.flow, FlowChoice::Import | FlowChoice::Kubric) {
        bail!("`mrdino flow` computes flow; `--flow import` and `--flow kubric` only make sense for `labels`");
    }
    let built = build_flow(&args.flow)?;
    let FlowSource::Estimator { mut estimator, batch } = built.source else {
        bail!("`mrdino flow` needs a flow estimator");
    };
    let processing = args
        .resize
        .map(|(width, height)| Processing::Resize { width, height })
        .unwrap_or_else(|| args.dataset.reference_processing());
    let cameras = args.cameras.clone().unwrap_or_else(|| args.dataset.default_cameras());
    let source = SourceOptions {
        kind: args.dataset,
        root: args.root.clone(),
        cameras: Some(cameras.clone()),
        processing: Some(processing),
    };
    let sequences = plan_units(&source)?;
    let record = serde_json::json!({
        "dataset": args.dataset,
        "cameras": cameras,
        "processing": processing,
        "flow": built.params,
        "format": args.format.extension(),
    });
    let record_hash = |record: &serde_json::Value| -> String {
        let digest = Sha256::digest(record.to_string().as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    };
    let record = crate::identity::continue_earlier_partition(
        &args.out,
        &[],
        record,
        &built.weights.iter().collect::<Vec<_>>(),
        record_hash,
    )?;
    let hash = record_hash(&record);
    check_directory(&args.out, &hash, &record)?;
    let ledger = Ledger::new(&args.out, FLOW_KIND, &hash);
    ledger
        .prepare(&[args.out.clone()])
        .with_context(|| format!("cannot prepare output directory {}", args.out.display()))?;
    ledger.write_params(&record, CODE_VERSION)?;
    let plan = build_plan(FLOW_KIND, &hash, args.dataset.name(), &sequences);
    ledger.write_plan(&plan)?;

    let started = Instant::now();
    let started_unix_s = unix_now();
    let mut totals = FlowTotals::default();
    let mut statuses = Vec::new();
    let mut stopped = false;
    for (sequence, planned) in sequences.iter().zip(&plan.units) {
        if STOP.load(Ordering::SeqCst) {
            stopped = true;
            break;
        }
        if let Some(marker) = ledger.is_done::<FlowCounts>(planned) {
            totals.units_skipped += 1;
            totals.files_present += marker.outputs.len();
            statuses.push(unit_status(
                planned,
                UnitOutcome::Skipped,
                0.0,
                None,
                marker.failures,
                marker.payload,
            ));
            continue;
        }
        let unit_start = Instant::now();
        let mut failures = Vec::new();
        let result = export_sequence(args, sequence, estimator.as_mut(), batch.max(1), &mut failures);
        let seconds = unit_start.elapsed().as_secs_f64();
        totals.unreadable_frames += failures.len();
        for f in &failures {
            eprintln!("failed frame {} #{}: {}", sequence.id, f.frame_index, f.reason);
        }
        match result.and_then(|(counts, files, present)| {
            write_marker(&ledger, planned, &files, seconds, &failures, &counts)?;
            Ok((counts, present))
        }) {
            Ok((counts, present)) => {
                totals.units_done += 1;
                totals.files_written += counts.written;
                totals.files_present += present;
                statuses.push(unit_status(planned, UnitOutcome::Done, seconds, None, failures, counts));
                if !args.quiet {
                    eprintln!("{}: done", sequence.id);
                }
            }
            Err(_) if STOP.load(Ordering::SeqCst) => {
                stopped = true;
                statuses.push(unit_status(
                    planned,
                    UnitOutcome::Interrupted,
                    seconds,
                    None,
                    failures,
                    FlowCounts::default(),
                ));
                break;
            }
            Err(e) => {
                totals.units_failed += 1;
                eprintln!("error: {}: {e:#}", sequence.id);
                let message = format!("{e:#}");
                statuses.push(unit_status(
                    planned,
                    UnitOutcome::Failed,
                    seconds,
                    Some(message),
                    failures,
                    FlowCounts::default(),
                ));
            }
        }
    }
    let manifest = RunManifest {
        kind: FLOW_KIND.to_string(),
        params_hash: hash.clone(),
        params: record,
        code_version: CODE_VERSION.to_string(),
        command_line: std::env::args().collect(),
        shard: None,
        host: mrdino_outputs::atomic::host_name().to_string(),
        pid: std::process::id(),
        started_unix_s,
        finished_unix_s: unix_now(),
        units: statuses,
        totals: totals.clone(),
    };
    ledger.write_manifest(&manifest, None)?;
    eprintln!(
        "{} flow files written, {} already present, {} unreadable frames, {} sequences failed; {} ({:.1} s)",
        totals.files_written,
        totals.files_present,
        totals.unreadable_frames,
        totals.units_failed,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if stopped {
        eprintln!("stopped; run the same command again to resume");
        return Ok(ExitCode::from(crate::EXIT_STOPPED));
    }
    Ok(if totals.unreadable_frames + totals.units_failed > 0 {
        ExitCode::from(crate::EXIT_FAILURES)
    } else {
        ExitCode::SUCCESS
    })
}

fn unit_status(
    planned: &PlannedUnit,
    status: UnitOutcome,
    seconds: f64,
    error: Option<String>,
    failures: Vec<FrameFailure>,
    payload: FlowCounts,
) -> UnitStatus<FlowCounts> {
    UnitStatus {
        unit: planned.id.clone(),
        status,
        seconds,
        error,
        failures,
        payload,
    }
}

fn write_marker(
    ledger: &Ledger,
    planned: &PlannedUnit,
    files: &[PathBuf],
    seconds: f64,
    failures: &[FrameFailure],
    counts: &FlowCounts,
) -> Result<()> {
    if files.is_empty() {
        bail!("no flow pair could be computed");
    }
    let marker = DoneMarker::new(
        ledger,
        planned,
        files,
        CODE_VERSION,
        seconds,
        failures.to_vec(),
        counts.clone(),
    );
    ledger.write_marker(&marker)?;
    Ok(())
}
