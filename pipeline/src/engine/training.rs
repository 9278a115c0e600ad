//! The training step loop every training command runs on (`train dinosaur`, `refine stage1`, `refine stage2`):
//! the metrics log, the loss plot, checkpoint cadence and writing, resuming, and the stop rules.
//!
//! [`run_steps`] runs steps until `steps`; it appends a [`MetricsRow`] every `log_every` steps to `metrics.jsonl`
//! (and the wall-clock time to `timing.jsonl`), writes the checkpoint (through the [`StepRunner`]) and `loss.svg`
//! every `checkpoint_every` steps and at the end, and when the stop handle says so (signal, time budget) writes
//! them and returns exit code 4. The metrics log is append-only: on resume the rows up to the checkpoint's step are
//! kept byte for byte and the file is cut right after them (rows a killed run logged after its last checkpoint,
//! and a partial last line, are dropped and logged again), so the log of a resumed run equals an uninterrupted
//! one's byte for byte. Wall-clock time is not in it for that reason.
//!
//! Before a run allocates or writes anything, its step checks: the run directory against its inputs
//! (`super::paths::check_outputs`), [`check_batch`] (a batch is not larger than the data's views) and
//! `cli::groups::MemoryArgs::check` (the step's memory, estimated from shapes by `mrdino_model::memory`, fits what
//! the machine has available, or `--memory-limit`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mrdino_model::collapse::{self, Choice, Figures, Verdict};
use mrdino_model::dinosaur::Dinosaur;
use mrdino_model::optim::Adam;
use mrdino_model::tensors::{from_tch, to_tch};
use mrdino_model::train::{sample_rng, StepMetrics};
use mrdino_outputs::checkpoint::{
    write_tensor_file, RawTensor, RunLayout, TensorFile, TrainState, FORMAT_CHECKPOINT, META_BACKBONE, META_COLLAPSE,
    META_BACKBONE_SHA256, META_CODE_VERSION, META_FORMAT, META_MODEL_CONFIG, META_PARAMS, META_STAGE, META_TRAIN_STATE,
    OPTIMIZER_PREFIX,
};
use mrdino_outputs::weights_id::Identity;
use mrdino_outputs::write_atomic;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::settings::train::StepPlan;
use super::job::CODE_VERSION;
use super::stop::{StopHandle, EXIT_STOPPED};

/// One row of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub mask_similarity: f64,
    /// Normalised slot-attention entropy (absent in logs written before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_entropy: Option<f64>,
    /// The collapse verdict, on the rows of check steps (`mrdino_model::collapse::check_steps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse: Option<Verdict>,
}

impl MetricsRow {
    /// The collapse figures of this row; a row without the entropy has none.
    pub fn figures(&self) -> Option<Figures> {
        Some(Figures {
            step: self.step,
            mask_similarity: self.mask_similarity,
            attention_entropy: self.attention_entropy?,
        })
    }
}

/// The collapse verdict a metrics row carries: at the fixed check steps (`collapse::check_steps` of an unbounded
/// run: 500, 1,500, 2,500, …), from the logged `rows` of a model with `n_slots` slots, when rows with both figures
/// lie in the window. The run's last step is assessed too ([`final_verdict`]), but into the checkpoint only, so that
/// a row does not depend on how many steps the run was asked for (a run extended by a larger `--steps` keeps the
/// rows an uninterrupted longer run writes).
pub fn collapse_verdict(rows: &[MetricsRow], n_slots: i64, step: u64) -> Option<Verdict> {
    if !collapse::is_check_step(step) {
        return None;
    }
    final_verdict(rows, n_slots, step)
}

/// The collapse verdict at `step` from `rows`, whatever the step.
pub fn final_verdict(rows: &[MetricsRow], n_slots: i64, step: u64) -> Option<Verdict> {
    let figures: Vec<Figures> = rows.iter().filter_map(MetricsRow::figures).collect();
    collapse::assess(&figures, n_slots, step)
}

/// One row of `timing.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TimingRow {
    step: u64,
    elapsed_s: f64,
}

/// The rows of the metrics log at `path` up to `max_step` and the byte length they take: complete lines only, up
/// to the first that is not a row (a partial last line of a killed run).
fn kept_rows(path: &Path, max_step: u64) -> Result<(Vec<MetricsRow>, u64)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let (mut rows, mut length) = (Vec::new(), 0u64);
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        match serde_json::from_str::<MetricsRow>(line.trim_end()) {
            Ok(row) if row.step <= max_step => {
                rows.push(row);
                length += line.len() as u64;
            }
            _ => break,
        }
    }
    Ok((rows, length))
}

/// The rows of a run's metrics log (complete rows only; none when there is no log yet).
pub fn logged_rows(layout: &RunLayout) -> Result<Vec<MetricsRow>> {
    Ok(kept_rows(&layout.metrics_file(), u64::MAX)?.0)
}

/// Opens the log at `path` for appending after its first `length` bytes (cutting what follows).
fn append_after(path: &Path, length: u64) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.set_len(length)
        .with_context(|| format!("cannot cut {} after its checkpointed rows", path.display()))?;
    Ok(file)
}

/// The run's plot, a self-contained SVG: the loss over steps (log scale) on top; below, the collapse figures
/// (Mask Similarity and attention entropy, 0–1) with their thresholds dashed and the latest verdict in words.
pub fn loss_svg(rows: &[MetricsRow], verdict: Option<&Verdict>) -> String {
    let (w, h, m) = (640.0, 600.0, 50.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let loss: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.loss > 0.0)
        .map(|r| (r.step as f64, r.loss.log10()))
        .collect();
    let x_range = loss.first().zip(loss.last()).map(|(a, b)| (a.0, b.0.max(a.0 + 1.0)));
    if let Some((x0, x1)) = x_range {
        let px = |x: f64| m + (x - x0) / (x1 - x0) * (w - 2.0 * m);
        let lo = loss.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = loss.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max).max(lo + 1e-6);
        let py = |y: f64| 310.0 - (y - lo) / (hi - lo) * 260.0;
        s.push_str(&polyline(loss.iter().map(|&(x, y)| (px(x), py(y))), "#1f77b4", ""));
        s.push_str(&format!(
            "<text x=\"{m}\" y=\"330\">step {x0:.0}</text><text x=\"{:.0}\" y=\"330\" text-anchor=\"end\">step {x1:.0}</text>\n",
            w - m
        ));
        s.push_str(&format!(
            "<text x=\"5\" y=\"{m}\">{:.4}</text><text x=\"5\" y=\"310\">{:.4}</text>\n",
            10f64.powf(hi),
            10f64.powf(lo)
        ));
        // The collapse panel: y from 0 (at 560) to 1 (at 400).
        let fy = |v: f64| 560.0 - v.clamp(0.0, 1.0) * 160.0;
        let sim = rows.iter().map(|r| (px(r.step as f64), fy(r.mask_similarity)));
        s.push_str(&polyline(sim, "#d62728", ""));
        let entropy = rows.iter().filter_map(|r| Some((px(r.step as f64), fy(r.attention_entropy?))));
        s.push_str(&polyline(entropy, "#2ca02c", ""));
        for (threshold, colour) in [
            (collapse::MASK_SIMILARITY_COLLAPSED, "#d62728"),
            (collapse::ATTENTION_ENTROPY_COLLAPSED, "#2ca02c"),
        ] {
            s.push_str(&polyline([(m, fy(threshold)), (w - m, fy(threshold))].into_iter(), colour, "4 3"));
        }
        s.push_str(&format!(
            "<text x=\"5\" y=\"404\">1</text><text x=\"5\" y=\"560\">0</text>\n<text x=\"{m}\" y=\"390\">\
             <tspan fill=\"#d62728\">mask similarity</tspan>, <tspan fill=\"#2ca02c\">attention entropy</tspan>; \
             dashed: collapse thresholds</text>\n"
        ));
        let verdict = verdict.map_or("no collapse check yet".to_string(), |v| {
            format!("step {}: {}", v.step, if v.collapsed { "COLLAPSED" } else { "slots split" })
        });
        s.push_str(&format!("<text x=\"{m}\" y=\"585\">{verdict}</text>\n"));
    }
    s.push_str(&format!(
        "<text x=\"{:.0}\" y=\"20\" text-anchor=\"middle\">reconstruction loss (log scale)</text>\n</svg>\n",
        w / 2.0
    ));
    s
}

/// An SVG polyline through `points` (pixels), dashed when `dash` is not empty.
fn polyline(points: impl Iterator<Item = (f64, f64)>, colour: &str, dash: &str) -> String {
    let points: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    if points.is_empty() {
        return String::new();
    }
    let dash = if dash.is_empty() { String::new() } else { format!(" stroke-dasharray=\"{dash}\"") };
    format!(
        "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"{dash} points=\"{}\"/>\n",
        points.join(" ")
    )
}

/// One training run's steps: what the loop calls.
pub trait StepRunner {
    /// One optimisation step on the samples `first_sample .. first_sample + batch_size`.
    fn step(&mut self, step: u64, first_sample: u64) -> Result<StepMetrics>;
    /// Writes the checkpoint of `state` atomically, with the run's latest collapse verdict in its metadata.
    fn save(&self, state: &TrainState, collapse: Option<&Verdict>) -> Result<()>;
}

/// How a run's loop is driven.
pub struct LoopSettings<'a> {
    pub layout: &'a RunLayout,
    /// The run's step schedule; its `steps` is the run's length (the learning-rate schedule and the check steps
    /// follow it).
    pub plan: StepPlan,
    /// Stop (with a checkpoint, successfully) after this many steps instead: a restart candidate.
    pub stop_at: Option<u64>,
    /// K, for the collapse verdicts.
    pub n_slots: i64,
    /// Signals and the time budget.
    pub stop: &'a StopHandle,
    pub quiet: bool,
    /// Word for the finishing message, e.g. "trained" or "refined (stage 1)".
    pub what: &'a str,
}

impl<'a> LoopSettings<'a> {
    /// A run of `plan` in `layout`, stopped by `stop`, to its last step (not a candidate), with no collapse
    /// verdicts until `n_slots` is set.
    pub fn new(layout: &'a RunLayout, stop: &'a StopHandle, plan: StepPlan, quiet: bool, what: &'a str) -> Self {
        Self { layout, plan, stop_at: None, n_slots: 0, stop, quiet, what }
    }
}

/// A fresh run's state.
pub fn initial_state(seed: i64) -> TrainState {
    TrainState {
        step: 0,
        next_sample: 0,
        rng_state: sample_rng(seed, 0).state,
        optimizer_steps: Default::default(),
        elapsed_s: 0.0,
    }
}

fn step_bar(settings: &LoopSettings<'_>, position: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(settings.plan.steps),
        if settings.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix("steps");
    bar.set_position(position);
    bar
}

/// The run's two logs, opened for appending after the rows of steps up to `step`.
struct Logs {
    rows: Vec<MetricsRow>,
    metrics: std::fs::File,
    timing: std::fs::File,
}

/// The latest collapse verdict among `rows`.
fn latest_verdict(rows: &[MetricsRow]) -> Option<&Verdict> {
    rows.iter().rev().find_map(|r| r.collapse.as_ref())
}

impl Logs {
    fn open(layout: &RunLayout, step: u64) -> Result<Self> {
        let (rows, length) = kept_rows(&layout.metrics_file(), step)?;
        let metrics = append_after(&layout.metrics_file(), length)?;
        let timing_path = layout.dir.join("timing.jsonl");
        let timing_length = timing_prefix(&timing_path, step)?;
        let timing = append_after(&timing_path, timing_length)?;
        Ok(Self { rows, metrics, timing })
    }

    /// Logs step `step`'s metrics `m`, with the collapse verdict when `step` is a check step.
    fn log_step(&mut self, settings: &LoopSettings<'_>, step: u64, m: &StepMetrics, elapsed_s: f64) -> Result<()> {
        self.rows.push(MetricsRow {
            step,
            loss: m.loss,
            lr: m.lr,
            grad_norm: m.grad_norm,
            mask_similarity: m.mask_similarity,
            attention_entropy: Some(m.attention_entropy),
            collapse: None,
        });
        let verdict = collapse_verdict(&self.rows, settings.n_slots, step);
        if let (Some(v), false) = (&verdict, settings.quiet) {
            if v.collapsed {
                eprintln!("warning: step {step}: {}", v.reason);
            }
        }
        let Some(row) = self.rows.last_mut() else {
            bail!("no row to log at step {step}");
        };
        row.collapse = verdict;
        writeln!(self.metrics, "{}", serde_json::to_string(&row)?)?;
        self.metrics.flush()?;
        let timing = TimingRow { step, elapsed_s };
        writeln!(self.timing, "{}", serde_json::to_string(&timing)?)?;
        Ok(())
    }
}

/// The byte length of the timing log's rows up to `step`.
fn timing_prefix(path: &Path, step: u64) -> Result<u64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(0);
    };
    let mut length = 0u64;
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        match serde_json::from_str::<TimingRow>(line.trim_end()) {
            Ok(row) if row.step <= step => length += line.len() as u64,
            _ => break,
        }
    }
    Ok(length)
}

/// The progress line's message: the loss, and the latest collapse verdict once there is one.
fn progress_message(m: &StepMetrics, verdict: Option<&Verdict>) -> String {
    match verdict {
        Some(v) if v.collapsed => format!("loss {:.4} COLLAPSED at step {} (mask sim {:.3})", m.loss, v.step, v.mask_similarity),
        Some(v) => format!("loss {:.4} slots split (mask sim {:.3} at step {})", m.loss, v.mask_similarity, v.step),
        None => format!("loss {:.4}", m.loss),
    }
}

/// Runs the steps from `state` on (see the module docs). Returns success or exit code 4 (stopped).
pub fn run_steps(settings: &LoopSettings<'_>, mut state: TrainState, runner: &mut dyn StepRunner) -> Result<ExitCode> {
    let layout = settings.layout;
    let mut logs = Logs::open(layout, state.step)?;
    let bar = step_bar(settings, state.step);
    let (started, elapsed_before) = (Instant::now(), state.elapsed_s);
    let save = |runner: &dyn StepRunner, state: &TrainState, rows: &[MetricsRow]| -> Result<()> {
        let verdict = match state.step == settings.plan.steps {
            true => final_verdict(rows, settings.n_slots, state.step),
            false => latest_verdict(rows).cloned(),
        };
        runner.save(state, verdict.as_ref())?;
        write_atomic(&layout.loss_plot_file(), loss_svg(rows, verdict.as_ref()).as_bytes())?;
        Ok(())
    };
    let batch = settings.plan.batch_size;
    let end = settings.stop_at.map_or(settings.plan.steps, |s| s.min(settings.plan.steps));
    while state.step < end {
        if settings.stop.requested() {
            save(runner, &state, &logs.rows)?;
            bar.abandon();
            eprintln!(
                "stopped at step {}; checkpoint written, run the same command again to resume",
                state.step
            );
            return Ok(ExitCode::from(EXIT_STOPPED));
        }
        let m = runner.step(state.step, state.step * batch)?;
        if !m.loss.is_finite() {
            bail!("non-finite loss {} at step {}", m.loss, state.step);
        }
        state.step += 1;
        state.next_sample = state.step * batch;
        state.rng_state = sample_rng(settings.plan.seed, state.next_sample).state;
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        // Rows follow the run's cadence, not `stop_at`, so a candidate's log is the prefix of its full run's.
        if state.step.is_multiple_of(settings.plan.log_every) || state.step == settings.plan.steps {
            logs.log_step(settings, state.step, &m, state.elapsed_s)?;
            bar.set_message(progress_message(&m, latest_verdict(&logs.rows)));
        }
        if state.step.is_multiple_of(settings.plan.checkpoint_every) || state.step == end {
            save(runner, &state, &logs.rows)?;
        }
        bar.set_position(state.step);
    }
    bar.finish_and_clear();
    if !settings.quiet {
        let last = logs.rows.last().map_or(f64::NAN, |r| r.loss);
        eprintln!(
            "{} {} steps; last loss {last:.5}; checkpoint {}",
            settings.what,
            state.step,
            layout.checkpoint_file().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses a batch larger than the data: every batch would draw some views twice, and memory would grow with a
/// number the data does not bound.
pub fn check_batch(batch_size: usize, n_views: usize, what: &str) -> Result<()> {
    ensure!(
        batch_size <= n_views,
        "batch_size = {batch_size} is more than the {n_views} views of {what}; give --batch-size {n_views} or less"
    );
    Ok(())
}

/// The run directory, created, with stale temporaries of dead writers removed.
pub fn prepare_run_dir(dir: &Path) -> Result<RunLayout> {
    let layout = RunLayout::new(dir);
    super::kinds::claim(dir, super::kinds::TRAINING_KIND)?;
    mrdino_outputs::atomic::remove_stale_temporaries(&layout.dir)?;
    Ok(layout)
}

/// What a training checkpoint records beside its tensors.
pub struct CheckpointMeta<'a> {
    /// `refine` stage (`stage1`, `stage2`); `None` for `train dinosaur`.
    pub stage: Option<&'a str>,
    pub model_config: String,
    pub params: String,
    /// Backbone name and the identity of its weights.
    pub backbone: &'a (String, String),
    /// The run's latest collapse verdict.
    pub collapse: Option<&'a Verdict>,
}

/// Writes a checkpoint atomically: `tensors` (the weights), the Adam moments under [`OPTIMIZER_PREFIX`], the
/// metadata and `state` with the optimiser's per-parameter step counts.
pub fn write_checkpoint(
    path: &Path,
    tensors: Vec<RawTensor>,
    adam: &Adam,
    state: &TrainState,
    meta: CheckpointMeta<'_>,
) -> Result<()> {
    let mut file = TensorFile {
        tensors,
        ..TensorFile::default()
    };
    let (moments, steps) = adam.export_state();
    for (name, t) in &moments {
        file.tensors.push(from_tch(&format!("{OPTIMIZER_PREFIX}{name}"), t)?);
    }
    let mut state = state.clone();
    state.optimizer_steps = steps;
    let m = &mut file.metadata;
    m.insert(META_FORMAT.into(), FORMAT_CHECKPOINT.into());
    if let Some(stage) = meta.stage {
        m.insert(META_STAGE.into(), stage.into());
    }
    m.insert(META_MODEL_CONFIG.into(), meta.model_config);
    m.insert(META_PARAMS.into(), meta.params);
    m.insert(META_CODE_VERSION.into(), CODE_VERSION.into());
    m.insert(META_BACKBONE.into(), meta.backbone.0.clone());
    m.insert(META_BACKBONE_SHA256.into(), meta.backbone.1.clone());
    m.insert(META_TRAIN_STATE.into(), serde_json::to_string(&state)?);
    if let Some(v) = meta.collapse {
        m.insert(META_COLLAPSE.into(), serde_json::to_string(v)?);
    }
    write_tensor_file(path, &file)?;
    Ok(())
}

/// Refuses checkpoint `file` (read from `path`) unless the identity of its saved parameters (what must not change
/// across a resume) equals that of `current`; an identity of `weights` recorded by an earlier version counts as
/// theirs (see `crate::settings::identity`). `inputs` names what else, besides the flags, is part of that identity
/// (e.g. the model refined), for the message.
pub fn check_saved_params<P: DeserializeOwned>(
    file: &TensorFile,
    path: &Path,
    identity: impl Fn(&P) -> serde_json::Value,
    current: &P,
    weights: &[&Identity],
    what: &str,
    inputs: &str,
) -> Result<()> {
    let saved: P = serde_json::from_str(file.meta(META_PARAMS).context("checkpoint lacks parameters")?)
        .with_context(|| format!("{}: unreadable parameters (not a {what} checkpoint?)", path.display()))?;
    let saved = crate::settings::identity::canonical_ids(&identity(&saved), weights);
    let now = crate::settings::identity::canonical_ids(&identity(current), weights);
    if saved != now {
        bail!(
            "{} holds a {what} run with other parameters{inputs}; use another --out or the same parameters\n \
             saved: {}\n now:   {}",
            path.display(),
            serde_json::to_string(&saved)?,
            serde_json::to_string(&now)?
        );
    }
    Ok(())
}

/// Resumes from checkpoint `file`: its training state (the sample generator must be where `seed` puts it), the
/// DINOSAUR weights into `model` and the Adam moments into `adam`. Extra trained tensors (a stage-2 head) are the
/// caller's.
pub fn restore_training_state(
    file: &TensorFile,
    path: &Path,
    seed: i64,
    model: &Dinosaur,
    adam: &mut Adam,
) -> Result<TrainState> {
    let state: TrainState = serde_json::from_str(file.meta(META_TRAIN_STATE).context("checkpoint lacks train state")?)
        .with_context(|| format!("{}: unreadable train state", path.display()))?;
    ensure!(
        state.rng_state == sample_rng(seed, state.next_sample).state,
        "{}: generator state does not match seed {seed} at sample {}",
        path.display(),
        state.next_sample
    );
    let loaded = Dinosaur::from_tensor_file(file, path, None, model.device())?;
    for (name, t) in loaded.named_parameters() {
        model.set_parameter(&name, &t)?;
    }
    let mut moments = Vec::new();
    for raw in file.tensors.iter().filter(|t| t.name.starts_with(OPTIMIZER_PREFIX)) {
        moments.push((
            raw.name[OPTIMIZER_PREFIX.len()..].to_string(),
            to_tch(raw, model.device())?,
        ));
    }
    adam.import_state(&moments, &state.optimizer_steps)?;
    Ok(state)
}

/// What `mrdino status` says of a training or refinement run: its step of its steps, the last loss, the latest
/// collapse verdict (or that none has been reached), and the restarts' choice when there was one. `Ok(true)` when
/// the run has reached its steps.
pub fn print_run_status(dir: &Path) -> Result<bool> {
    let layout = RunLayout::new(dir);
    let path = layout.checkpoint_file();
    let file = mrdino_outputs::checkpoint::read_tensor_file(&path)
        .with_context(|| format!("{} holds a training run without a checkpoint yet", dir.display()))?;
    let state: TrainState = serde_json::from_str(file.meta(META_TRAIN_STATE).context("checkpoint lacks train state")?)
        .with_context(|| format!("{}: unreadable train state", path.display()))?;
    let params: serde_json::Value = serde_json::from_str(file.meta(META_PARAMS).unwrap_or("{}"))
        .with_context(|| format!("{}: unreadable parameters", path.display()))?;
    let steps = params["steps"].as_u64().unwrap_or(state.step);
    let what = file.meta(META_STAGE).map_or("DINOSAUR training".to_string(), |s| format!("refinement {s}"));
    println!("{what} — step {} of {steps}", state.step);
    let rows = logged_rows(&layout)?;
    if let Some(last) = rows.iter().rev().find(|r| r.step <= state.step) {
        let entropy = last.attention_entropy.map_or("not logged".to_string(), |h| format!("{h:.3}"));
        println!(
            "  last logged step {}: loss {:.5}, mask similarity {:.3}, attention entropy {entropy}",
            last.step, last.loss, last.mask_similarity
        );
    }
    match file.meta(META_COLLAPSE) {
        Some(json) => {
            let v: Verdict = serde_json::from_str(json).with_context(|| format!("{}: unreadable verdict", path.display()))?;
            let word = if v.collapsed { "COLLAPSED" } else { "not collapsed" };
            println!("  collapse check at step {}: {word} — {}", v.step, v.reason);
        }
        None => {
            let next = collapse::check_steps(steps).into_iter().find(|&s| s > state.step);
            println!(
                "  collapse: not checked yet{}",
                next.map_or(String::new(), |s| format!(" (first check at step {s})"))
            );
        }
    }
    if let Some(choice) = read_choice(&dir.join("candidates").join("choice.json"))? {
        println!("  restarts: continued seed {} — {}", choice.chosen_seed, choice.reason);
    }
    Ok(state.step >= steps)
}

/// The restarts' choice recorded at `path`, `None` when there is none yet.
pub fn read_choice(path: &Path) -> Result<Option<Choice>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("{}: not a candidates choice", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_among_the_inputs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(cache.join("shard")).unwrap();
        assert!(check_batch(23, 23, "the cache").is_ok());
        let err = check_batch(1_000_000, 23, "the cache").unwrap_err().to_string();
        assert!(err.contains("1000000") && err.contains("23 views"), "{err}");
    }

    #[test]
    fn resuming_keeps_the_checkpointed_rows_byte_for_byte_and_cuts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let row = |step: u64| MetricsRow {
            step,
            loss: 0.1 + 1.0 / 3.0 * step as f64,
            lr: 1e-3 / 7.0,
            grad_norm: 2f64.sqrt(),
            mask_similarity: 0.3,
            attention_entropy: Some(0.1 + 1.0 / 7.0 * step as f64),
            collapse: None,
        };
        let mut text = String::new();
        for step in 1..=5 {
            text.push_str(&serde_json::to_string(&row(step)).unwrap());
            text.push('\n');
        }
        let kept_len = text.lines().take(3).map(|l| l.len() + 1).sum::<usize>();
        text.push_str("{\"step\": 6, \"lo"); // a partial line of a killed run
        std::fs::write(&path, &text).unwrap();
        let (rows, length) = kept_rows(&path, 3).unwrap();
        assert_eq!(rows, vec![row(1), row(2), row(3)]);
        assert_eq!(length as usize, kept_len);
        let mut file = append_after(&path, length).unwrap();
        writeln!(file, "{}", serde_json::to_string(&row(4)).unwrap()).unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        let expected: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
        assert_eq!(after, expected, "the first rows are untouched bytes");
        assert_eq!(kept_rows(&dir.path().join("none.jsonl"), 9).unwrap().1, 0);
    }

    #[test]
    fn verdicts_come_at_check_steps_from_the_rows_with_both_figures() {
        let row = |step: u64, entropy: Option<f64>| MetricsRow {
            step,
            loss: 0.5,
            lr: 1e-4,
            grad_norm: 1.0,
            mask_similarity: 0.995,
            attention_entropy: entropy,
            collapse: None,
        };
        let rows: Vec<MetricsRow> = (1..=50).map(|i| row(10 * i, Some(0.99))).collect();
        assert!(collapse_verdict(&rows, 4, 490).is_none(), "490 is not a check step");
        assert!(final_verdict(&rows, 4, 490).is_some(), "a run's last step is assessed for its checkpoint");
        let v = collapse_verdict(&rows, 4, 500).unwrap();
        assert!(v.collapsed && v.rows == 10, "{v:?}");
        // A log written before the entropy was measured has no figures: no verdict, not a false one.
        let old: Vec<MetricsRow> = (1..=50).map(|i| row(10 * i, None)).collect();
        assert!(collapse_verdict(&old, 4, 500).is_none());
        let line = serde_json::to_string(&row(10, None)).unwrap();
        assert!(!line.contains("attention_entropy") && !line.contains("collapse"), "{line}");
        let parsed: MetricsRow = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed, row(10, None));
    }
}
