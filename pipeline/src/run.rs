//! The `labels` run: plan the units, skip the done ones, process the rest, write rows, markers and manifest.
//!
//! Each unit's two Parquet files are written atomically, then its done marker; a unit without a marker is
//! redone from scratch by the next run, so a crash at any moment loses at most the unit in progress and never
//! leaves a partial or duplicated row behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mrdino_datasets::{list_sequences, Sequence, SourceOptions};
use mrdino_outputs::atomic::remove_stale_temporaries;
use mrdino_outputs::layout::{stable_hash64, Layout};
use mrdino_outputs::tables::{frames_batch, instances_batch, write_parquet, SCHEMA_VERSION};
use mrdino_outputs::write_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Params;
use crate::unit::{process_unit, FlowSource, FrameFailure, UnitError};

pub const CODE_VERSION: &str = env!("MRDINO_CODE_VERSION");

/// Set by SIGINT/SIGTERM or the time budget; polled between frames.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Options that do not change rows.
pub struct RunOptions {
    pub out: PathBuf,
    pub shard: Option<(u64, u64)>,
    pub time_budget: Option<Duration>,
    pub progress: bool,
    /// Extra provenance for the file metadata (e.g. flow weights' SHA-256).
    pub flow_weights_sha256: Option<String>,
}

/// The done marker of a unit, written after its Parquet files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DoneMarker {
    pub unit: String,
    pub params_hash: String,
    pub code_version: String,
    pub input_fingerprint: String,
    pub frames_decoded: usize,
    pub frame_rows: usize,
    pub labelled_frames: usize,
    pub instances: usize,
    pub seconds: f64,
    pub failures: Vec<FrameFailure>,
}

/// Outcome per unit in a run manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitStatus {
    pub unit: String,
    /// `done`, `skipped` (already done), `failed`, `interrupted`.
    pub status: String,
    pub seconds: f64,
    pub frames: usize,
    pub labelled_frames: usize,
    pub instances: usize,
    pub error: Option<String>,
    pub failures: Vec<FrameFailure>,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Totals {
    pub units_planned: usize,
    pub units_done: usize,
    pub units_skipped: usize,
    pub units_failed: usize,
    pub units_interrupted: usize,
    pub frames: usize,
    pub quasi_static_frames: usize,
    pub labelled_frames: usize,
    pub instances: usize,
    pub frame_failures: usize,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunManifest {
    pub params_hash: String,
    pub params: serde_json::Value,
    pub code_version: String,
    pub command_line: Vec<String>,
    pub shard: Option<String>,
    pub started_unix_s: u64,
    pub finished_unix_s: u64,
    pub units: Vec<UnitStatus>,
    pub totals: Totals,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SHA-256 over the relative paths, sizes and modification times of a unit's inputs (first 16 hex digits).
pub fn input_fingerprint(sequence: &Sequence) -> String {
    let mut h = Sha256::new();
    for path in sequence.input_paths() {
        let rel = path.strip_prefix(&sequence.root).unwrap_or(path);
        h.update(rel.to_string_lossy().as_bytes());
        if let Ok(meta) = std::fs::metadata(path) {
            h.update(meta.len().to_le_bytes());
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
            h.update(mtime.map(|d| d.as_nanos()).unwrap_or(0).to_le_bytes());
        }
        h.update([0]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Whether `unit` belongs to shard `index` of `count` (stable FNV-1a hash of the unit id).
pub fn in_shard(unit: &str, shard: Option<(u64, u64)>) -> bool {
    shard.is_none_or(|(index, count)| stable_hash64(unit) % count == index)
}

fn read_marker(path: &Path) -> Option<DoneMarker> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
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

/// Writes `OUT/_params/<hash>.json`: the resolved parameters with their hash and the code version.
pub fn write_params(layout: &Layout, params: &Params) -> Result<()> {
    let json = serde_json::to_vec_pretty(&serde_json::json!({
        "params_hash": layout.params_hash,
        "code_version": CODE_VERSION,
        "params": params,
    }))?;
    write_atomic(&layout.params_file(), &json)?;
    Ok(())
}

/// Lists the units of a dataset (configuration errors surface here, before any output is written).
pub fn plan_units(source: &SourceOptions) -> Result<Vec<Sequence>> {
    list_sequences(source).with_context(|| format!("cannot list dataset `{}`", source.kind.name()))
}

fn progress_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Runs `labels`. Returns the manifest of this run.
pub fn run_labels(
    params: &Params,
    sequences: &[Sequence],
    flow: &mut FlowSource,
    options: &RunOptions,
) -> Result<RunManifest> {
    let started = Instant::now();
    let started_unix_s = unix_now();
    let params_hash = params.hash();
    let layout = Layout::new(&options.out, &params_hash);
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("cannot create output directory {}", options.out.display()))?;
    let probe = options.out.join(format!(".mrdino-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("output directory {} is not writable", options.out.display()))?;
    let _ = std::fs::remove_file(&probe);
    for dir in [layout.frames_dir(), layout.instances_dir(), layout.done_dir()] {
        remove_stale_temporaries(&dir)?;
    }
    write_params(&layout, params)?;
    let root = sequences.first().map(|s| s.root.clone()).unwrap_or_default();
    let plan = crate::batch::build_plan(&params_hash, params.dataset.name(), &root, sequences);
    crate::batch::write_plan(&layout, &plan)?;
    let fingerprints: std::collections::BTreeMap<&str, &str> = plan
        .units
        .iter()
        .map(|u| (u.id.as_str(), u.input_fingerprint.as_str()))
        .collect();
    let others: Vec<String> = Layout::existing_partitions(&options.out)
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

    let units: Vec<&Sequence> = sequences.iter().filter(|s| in_shard(&s.id, options.shard)).collect();
    let total_frames: u64 = units
        .iter()
        .map(|s| s.frame_count_hint().map_or(0, |n| n.saturating_sub(1) as u64))
        .sum();
    let multi = MultiProgress::with_draw_target(if options.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let unit_bar = multi.add(ProgressBar::new(units.len() as u64));
    unit_bar.set_style(progress_style("{prefix:>9} [{bar:30}] {pos}/{len} {msg}"));
    unit_bar.set_prefix("sequences");
    let frame_bar = multi.add(ProgressBar::new(total_frames));
    frame_bar.set_style(progress_style("{prefix:>9} [{bar:30}] {pos}/{len} {per_sec} eta {eta}"));
    frame_bar.set_prefix("frames");

    let metadata = file_metadata(params, options);
    let mut statuses = Vec::new();
    let mut totals = Totals {
        units_planned: units.len(),
        ..Totals::default()
    };
    for sequence in units {
        if let Some(budget) = options.time_budget {
            if started.elapsed() >= budget {
                STOP.store(true, Ordering::SeqCst);
            }
        }
        if STOP.load(Ordering::SeqCst) {
            statuses.push(status(&sequence.id, "interrupted", 0.0, None));
            totals.units_interrupted += 1;
            continue;
        }
        unit_bar.set_message(sequence.id.clone());
        let fingerprint = fingerprints
            .get(sequence.id.as_str())
            .map_or_else(|| input_fingerprint(sequence), |f| f.to_string());
        let marker_path = layout.done_marker(&sequence.id);
        if let Some(marker) = read_marker(&marker_path) {
            if marker.params_hash == params_hash
                && marker.input_fingerprint == fingerprint
                && layout.frames_file(&sequence.id).is_file()
                && layout.instances_file(&sequence.id).is_file()
            {
                frame_bar.inc(marker.frame_rows as u64);
                unit_bar.inc(1);
                totals.units_skipped += 1;
                statuses.push(UnitStatus {
                    unit: sequence.id.clone(),
                    status: "skipped".into(),
                    seconds: 0.0,
                    frames: marker.frame_rows,
                    labelled_frames: marker.labelled_frames,
                    instances: marker.instances,
                    error: None,
                    failures: marker.failures,
                });
                continue;
            }
        }
        let unit_start = Instant::now();
        let on_frame = || frame_bar.inc(1);
        let budget_stop = StopWithBudget {
            started,
            budget: options.time_budget,
        };
        let result = budget_stop.guard(|| process_unit(sequence, params, flow, &STOP, &on_frame));
        let seconds = unit_start.elapsed().as_secs_f64();
        match result {
            Ok(output) => {
                let frames_path = layout.frames_file(&sequence.id);
                let instances_path = layout.instances_file(&sequence.id);
                write_parquet(&frames_path, &frames_batch(&output.frames)?, &metadata)?;
                write_parquet(&instances_path, &instances_batch(&output.instances)?, &metadata)?;
                let labelled = output.frames.iter().filter(|f| f.labelled).count();
                let marker = DoneMarker {
                    unit: sequence.id.clone(),
                    params_hash: params_hash.clone(),
                    code_version: CODE_VERSION.to_string(),
                    input_fingerprint: fingerprint,
                    frames_decoded: output.decoded_frames,
                    frame_rows: output.frames.len(),
                    labelled_frames: labelled,
                    instances: output.instances.len(),
                    seconds,
                    failures: output.failures.clone(),
                };
                write_atomic(&marker_path, &serde_json::to_vec_pretty(&marker)?)?;
                totals.units_done += 1;
                totals.frames += output.frames.len();
                totals.quasi_static_frames += output.frames.iter().filter(|f| f.quasi_static).count();
                totals.labelled_frames += labelled;
                totals.instances += output.instances.len();
                totals.frame_failures += output.failures.len();
                statuses.push(UnitStatus {
                    unit: sequence.id.clone(),
                    status: "done".into(),
                    seconds,
                    frames: output.frames.len(),
                    labelled_frames: labelled,
                    instances: output.instances.len(),
                    error: None,
                    failures: output.failures,
                });
            }
            Err(UnitError::Interrupted) => {
                totals.units_interrupted += 1;
                statuses.push(status(&sequence.id, "interrupted", seconds, None));
            }
            Err(UnitError::Failed(message)) => {
                totals.units_failed += 1;
                multi.suspend(|| eprintln!("error: {}: {message}", sequence.id));
                statuses.push(status(&sequence.id, "failed", seconds, Some(message)));
            }
        }
        unit_bar.inc(1);
    }
    unit_bar.finish_and_clear();
    frame_bar.finish_and_clear();
    totals.seconds = started.elapsed().as_secs_f64();
    let manifest = RunManifest {
        params_hash: params_hash.clone(),
        params: serde_json::to_value(params)?,
        code_version: CODE_VERSION.to_string(),
        command_line: std::env::args().collect(),
        shard: options.shard.map(|(i, n)| format!("{i}/{n}")),
        started_unix_s,
        finished_unix_s: unix_now(),
        units: statuses,
        totals,
    };
    let shard_name = options
        .shard
        .map(|(i, n)| format!("shard-{i}-of-{n}"))
        .unwrap_or_else(|| "all".into());
    let manifest_path = layout
        .manifest_dir()
        .join(format!("{shard_name}-{started_unix_s}-{}.json", std::process::id()));
    write_atomic(&manifest_path, &serde_json::to_vec_pretty(&manifest)?)?;
    if manifest.units.is_empty() {
        bail!("no units to process in this shard");
    }
    Ok(manifest)
}

fn status(unit: &str, status: &str, seconds: f64, error: Option<String>) -> UnitStatus {
    UnitStatus {
        unit: unit.to_string(),
        status: status.to_string(),
        seconds,
        frames: 0,
        labelled_frames: 0,
        instances: 0,
        error,
        failures: Vec::new(),
    }
}

/// Sets [`STOP`] when the time budget runs out while a unit is being processed.
struct StopWithBudget {
    started: Instant,
    budget: Option<Duration>,
}

impl StopWithBudget {
    fn guard<T>(&self, work: impl FnOnce() -> T) -> T {
        let Some(budget) = self.budget else { return work() };
        let remaining = budget.saturating_sub(self.started.elapsed());
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let deadline = Instant::now() + remaining;
                while !done.load(Ordering::SeqCst) {
                    if Instant::now() >= deadline {
                        STOP.store(true, Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
            let result = work();
            done.store(true, Ordering::SeqCst);
            result
        })
    }
}
