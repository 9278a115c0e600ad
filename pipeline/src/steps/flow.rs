//! `mrdino flow`: forward flow t→t+1 written as files (`OUT/<sequence id>/<frame name>.npy|.flo`), readable back
//! by `labels --flow import --flow-dir OUT`, as a unit job of the engine (shards, time budget, resume).
//!
//! An export is a job of kind `flow`: its parameters — dataset, cameras, frame processing (size), backend with its
//! settings (DIS preset; network, weights identity, iterations, precision) and file format — are recorded in
//! `OUT/_params/<hash>.json`, a plan lists the sequences and a done marker per sequence lists its flow files. A
//! directory holds flow of one parameter set only: an export into a directory recorded with other parameters is
//! refused before any work, naming each differing value on both sides, so flow from other weights or iterations
//! is never reused in silence. Files are written atomically; a done sequence is skipped, and inside an
//! interrupted sequence a pair whose file exists is not recomputed, so an export resumes where it stopped. Any
//! number of tasks (`--shard I/N`, Slurm arrays) may export into one directory at once; CPU methods export one
//! sequence per thread at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mrdino_datasets::{list_sequences, Frame, Processing, Sequence, SourceOptions};
use mrdino_outputs::bookkeeping::{FrameFailure, Ledger, PlannedUnit, UnitOutcome};
use mrdino_outputs::write_atomic;
use mrdino_stages::flow::files::{encode_flo, encode_npy};
use mrdino_stages::flow::source::{self, FlowSource};
use mrdino_stages::flow::FlowEstimator;
use serde::{Deserialize, Serialize};

use crate::cli::flow::{FlowCmdArgs, FlowFormat};
use crate::engine::job::{build_plan, OpenJob, UnitTally};
use crate::engine::progress;
use crate::engine::status::JobKind;
use crate::engine::stop::{StopHandle, Stopped};
use crate::engine::units::{Driver, UnitDone};
use crate::settings::identity::continue_earlier_partition;
use crate::settings::params_hash;

/// The job kind of flow exports in the bookkeeping.
pub const FLOW_KIND: &str = "flow";

/// The flow job for `status` and `finalize`.
pub const JOB: JobKind = JobKind {
    kind: FLOW_KIND,
    label: "flow ",
    data_dirs: &[],
    totals: &[("pairs", "pairs", "pairs"), ("files_written", "written", "written")],
    frame_failures: true,
};

/// What a flow sequence produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowCounts {
    pub pairs: usize,
    pub written: usize,
}

/// Totals of one export run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowTotals {
    #[serde(flatten)]
    pub units: UnitTally,
    pub files_written: usize,
    pub files_present: usize,
    pub unreadable_frames: usize,
}

/// Canonical JSON values by dotted path (`flow.iterations` → `12`).
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
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
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", there, &mut a);
    flatten("", here, &mut b);
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |m: &BTreeMap<String, String>| m.get(k).cloned().unwrap_or("(unset)".into());
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

/// What one sequence's export needs.
struct Export<'a> {
    out: &'a Path,
    format: FlowFormat,
    stop: &'a StopHandle,
}

impl Export<'_> {
    /// Computes the pending pairs' flow and writes their files.
    fn flush(
        &self,
        estimator: &mut dyn FlowEstimator,
        sequence: &Sequence,
        pending: &mut Vec<(Frame, Frame)>,
        files: &mut Vec<PathBuf>,
    ) -> Result<usize> {
        if pending.is_empty() {
            return Ok(0);
        }
        let pairs: Vec<_> = pending.iter().map(|(a, b)| (&a.image, &b.image)).collect();
        let fields = estimator
            .estimate(&pairs)
            .with_context(|| format!("flow of {}", sequence.id))?;
        for ((a, _), field) in pending.iter().zip(&fields) {
            let bytes = match self.format {
                FlowFormat::Npy => encode_npy(field),
                FlowFormat::Flo => encode_flo(field),
            };
            let path = self.file(sequence, &a.name);
            write_atomic(&path, &bytes)?;
            files.push(path);
        }
        let n = pending.len();
        pending.clear();
        Ok(n)
    }

    fn file(&self, sequence: &Sequence, frame: &str) -> PathBuf {
        self.out
            .join(&sequence.id)
            .join(format!("{frame}.{}", self.format.extension()))
    }

    /// Exports one sequence: its counts, files (new and present) and unreadable frames.
    fn sequence(
        &self,
        sequence: &Sequence,
        estimator: &mut dyn FlowEstimator,
        batch: usize,
    ) -> Result<UnitDone<FlowCounts>> {
        let (mut files, mut failures) = (Vec::new(), Vec::new());
        let mut counts = FlowCounts::default();
        let mut previous: Option<Frame> = None;
        let mut pending: Vec<(Frame, Frame)> = Vec::new();
        for (index, item) in sequence.frames()? {
            if self.stop.requested() {
                bail!(Stopped);
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
                let path = self.file(sequence, &prev.name);
                if path.is_file() {
                    files.push(path);
                } else {
                    pending.push((prev, cur.clone()));
                    if pending.len() >= batch {
                        counts.written += self.flush(estimator, sequence, &mut pending, &mut files)?;
                    }
                }
            }
            previous = frame;
        }
        counts.written += self.flush(estimator, sequence, &mut pending, &mut files)?;
        if files.is_empty() {
            bail!("no flow pair could be computed");
        }
        Ok(UnitDone { counts, files, failures })
    }
}

/// `mrdino flow`.
pub fn run(args: &FlowCmdArgs, stop: &StopHandle) -> Result<ExitCode> {
    crate::engine::kinds::refuse_other_kind(&args.out, FLOW_KIND)?;
    crate::engine::paths::check_out_dir(
        &args.out,
        &[
            ("--root", Some(&args.input.root)),
            ("--flow-dir", args.flow.flow_dir.as_deref()),
            ("--weights", args.flow.weights.as_deref()),
        ],
    )?;
    if !args.flow.flow.choice().computes() {
        bail!("`mrdino flow` computes flow; `--flow import` and `--flow kubric` only make sense for `labels`");
    }
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("cannot size the thread pool")?;
    }
    let device = args.device.device()?;
    let built = source::build(&args.flow.spec(device, rayon::current_num_threads()))?;
    let processing = args
        .resize
        .map(|(width, height)| Processing::Resize { width, height })
        .unwrap_or_else(|| args.input.dataset.reference_processing());
    let cameras = args.input.cameras();
    let sequences = list_sequences(&SourceOptions {
        kind: args.input.dataset,
        root: args.input.root.clone(),
        cameras: Some(cameras.clone()),
        processing: Some(processing),
    })
    .with_context(|| format!("cannot list dataset `{}`", args.input.dataset.name()))?;
    let record = serde_json::json!({
        "dataset": args.input.dataset,
        "cameras": cameras,
        "processing": processing,
        "flow": built.params,
        "format": args.format.extension(),
    });
    let weights: Vec<_> = built.weights.iter().collect();
    let record = continue_earlier_partition(&args.out, &[], record, &weights, |r| {
        params_hash(r).unwrap_or_default()
    })?;
    let hash = params_hash(&record)?;
    check_directory(&args.out, &hash, &record)?;
    let plan = build_plan(FLOW_KIND, &hash, args.input.dataset.name(), &sequences);
    let ledger = Ledger::new(&args.out, FLOW_KIND, &hash);
    let job = OpenJob::open(ledger, std::slice::from_ref(&args.out), &record, plan, args.job.shard()?)?;
    let stop = stop.with_budget(args.job.run.time_budget);
    export(args, &job, &sequences, built.source, &stop)
}

fn export(
    args: &FlowCmdArgs,
    job: &OpenJob,
    sequences: &[Sequence],
    flow: FlowSource,
    stop: &StopHandle,
) -> Result<ExitCode> {
    let started = Instant::now();
    let units = job.units(sequences);
    let bar = progress::units(units.len() as u64, "sequences", args.job.run.quiet);
    let mut workers = Vec::new();
    for _ in 1..rayon::current_num_threads().max(1).min(units.len()) {
        match flow.fork() {
            Some(f) => workers.push(f),
            None => break,
        }
    }
    workers.push(flow);
    let exporter = Export {
        out: &args.out,
        format: args.format,
        stop,
    };
    let describe = |c: &FlowCounts| format!("{} pairs, {} written", c.pairs, c.written);
    let driver = Driver {
        ledger: &job.ledger,
        stop,
        bar: &bar,
        quiet: args.job.run.quiet,
        describe: Some(&describe),
        on_skip: None,
    };
    let work = |flow: &mut FlowSource, sequence: &Sequence, _: &PlannedUnit| match flow {
        FlowSource::Estimator { estimator, batch } => exporter.sequence(sequence, estimator.as_mut(), *batch),
        _ => bail!("`mrdino flow` needs a flow estimator"),
    };
    let run = driver.run(units, workers, &work);
    let mut totals = FlowTotals {
        units: run.tally,
        ..FlowTotals::default()
    };
    totals.unreadable_frames = run.frame_failures;
    for status in &run.statuses {
        match status.status {
            UnitOutcome::Done => {
                totals.files_written += status.payload.written;
                totals.files_present += status.payload.pairs.saturating_sub(status.payload.written);
            }
            UnitOutcome::Skipped => totals.files_present += status.payload.pairs,
            UnitOutcome::Failed | UnitOutcome::Interrupted => {}
        }
    }
    eprintln!(
        "{} flow files written, {} already present, {} unreadable frames, {} sequences failed, {} interrupted; {} \
         ({:.1} s)",
        totals.files_written,
        totals.files_present,
        totals.unreadable_frames,
        totals.units.failed,
        totals.units.interrupted,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    job.finish(run, &totals, args.job.max_failures)
}
