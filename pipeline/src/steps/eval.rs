//! `mrdino eval`: pseudo-labels (`--labels`) or a model's predictions (`--predictions`, from `mrdino infer`)
//! against ground-truth masks, with the paper's metrics.
//!
//! The numbers are those of `mrdino_stages::metrics` (F1@50, "AP50", "AR50", fg-ARI, all-ARI exactly as the
//! reference evaluation computes them) and the ground truth is read by `mrdino_stages::ground_truth` (the
//! layouts of `--gt-format`, and how ground truth at the original frame size meets the label grid); this module
//! only finds, for every labelled frame of a run, its prediction (the frame's instance masks painted into one
//! id map at the label grid) and its ground truth, and reports the totals per sequence and over the run.
//!
//! Predictions: an instance's id is its merged canvas channel + 1 and a stage-2 model's per-window background
//! channels have no row, so the painted canvas is the reference's argmax with `combination_num` (background
//! channels → 0). How a prediction run is scored (the first-id rule, the resolution, the canvas compared as it
//! is or mapped back to the original frame through the provenance columns with
//! `mrdino_outputs::provenance::FrameGeometry::to_original`) is `crate::settings::eval::PredictionScoring`.
//! With `synth` ground truth a labels run also gets its quasi-static selection scored against the generator's
//! static-camera flags (per-frame corner test and membership of a long-enough run).
//!
//! When every instance of the run has a confidence `score`, the same IoU > 0.5 matches are ranked by it: AP50
//! the VOC/COCO way (area under the interpolated precision–recall curve) with the curve itself, next to the
//! reference's fixed-set precision and recall. When the instances have a `track_id` and the ground truth's ids
//! persist over frames (`synth`, `kubric`), the labelled frames of each segment are scored as a video: MOTSA,
//! IDF1, identity switches, fragmentations and the share of consecutive matched pairs that keep their track.
//!
//! Before any work the JSON output is checked against the inputs (the run's tables and bookkeeping, the ground
//! truth): it may not overwrite, lie inside or contain any of them. A unit of the run whose done marker no
//! longer matches its files (corrupt) is refused, naming the unit and the file: a partial score is never
//! reported as the run's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use mrdino_outputs::layout::LABELS_DATA_DIRS;
use mrdino_outputs::provenance::FrameGeometry;
use mrdino_outputs::runs::{RunKind, RunTables};
use mrdino_outputs::tables::{read_prediction_columns, ScoreAndTrack};
use mrdino_outputs::{write_atomic, FrameRow, InstanceRow};
use mrdino_stages::ground_truth::{GroundTruth, GtFormat};
use mrdino_stages::metrics::{
    instance_map, match_prediction_ids, quasi_static_retrieval, ranked_average_precision, tracking_counts,
    EvalPreset, Evaluator, LabelMap, MetricsReport, PredictionRule, RankedAp, RetrievalScores, ScoredPrediction,
    TrackingCounts, TrackingFrame, TrackingReport,
};
use serde::Serialize;

use crate::cli::eval::EvalArgs;
use crate::engine::paths::{check_outputs, job_inputs};
use crate::engine::progress::print_stdout;
use crate::engine::runs::read_label_tables;
use crate::settings::eval::PredictionScoring;

/// Quasi-static retrieval against the synth camera: the per-frame corner test and membership of a run.
#[derive(Clone, Debug, Serialize)]
pub struct QuasiStaticScores {
    /// `quasi_static` of the frames table (corner test of the frame alone).
    pub corner_test: RetrievalScores,
    /// Frames in a run long enough for the quasi-static rule (a segment).
    pub in_run: RetrievalScores,
}

#[derive(Clone, Debug, Serialize)]
pub struct SequenceMetrics {
    pub sequence_id: String,
    pub metrics: MetricsReport,
}

/// The JSON written by `mrdino eval`.
#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// The run evaluated (labels or predictions).
    pub labels: PathBuf,
    /// `labels` or `predictions`.
    pub kind: String,
    /// Predictions only: `stage2` or `baseline`, and how they were scored.
    pub model_kind: Option<String>,
    pub scoring: PredictionScoring,
    pub params_hash: String,
    pub gt: PathBuf,
    pub gt_format: GtFormat,
    pub resolution: EvalPreset,
    pub labelled_frames: usize,
    pub evaluated_frames: usize,
    /// Labelled frames skipped for lack of a ground-truth file (`--skip-missing-gt`).
    pub missing_gt_frames: usize,
    pub metrics: MetricsReport,
    pub per_sequence: Vec<SequenceMetrics>,
    /// Only with `--gt-format synth`.
    pub quasi_static: Option<QuasiStaticScores>,
    /// AP50 with the instances ranked by their `score` (only when every instance has one).
    pub ranked: Option<RankedAp>,
    /// Tracking over the labelled frames of each segment (only with track ids and persistent ground-truth ids).
    pub tracking: Option<TrackingReport>,
}

/// A prediction canvas brought back to the original frame through the provenance columns (nearest at pixel
/// centres; pixels outside the canvas are background), as `FrameGeometry::to_original` defines it.
fn canvas_to_original(canvas: &LabelMap, frame: &FrameRow) -> Result<LabelMap> {
    let labels = FrameGeometry::of(frame)
        .to_original(&canvas.labels, 0)
        .map_err(|e| anyhow!("frame {} of {}: {e}", frame.frame_name, frame.sequence_id))?;
    Ok(LabelMap::new(
        frame.orig_height as usize,
        frame.orig_width as usize,
        labels,
    )?)
}

/// The model kind of a prediction run (`None` for labels), refusing a run of the other kind than its flag says.
fn model_kind(args: &EvalArgs, run: &Path, tables: &RunTables) -> Result<Option<String>> {
    match (args.predictions.is_some(), tables.kind == RunKind::Predictions) {
        (true, true) => Ok(Some(
            tables.params["model_kind"]
                .as_str()
                .with_context(|| format!("{}: the run's parameters name no model_kind", run.display()))?
                .to_string(),
        )),
        (false, false) => Ok(None),
        (true, false) => bail!("{} holds pseudo-labels, not predictions: use --labels", run.display()),
        (false, true) => bail!(
            "{} holds predictions of `mrdino infer`: use --predictions",
            run.display()
        ),
    }
}

/// Refuses a run with a corrupt unit (a done marker whose files no longer match), naming the unit and the file.
fn refuse_corrupt(run: &Path, tables: &RunTables) -> Result<()> {
    let Some(first) = tables.corrupt_units.first() else {
        return Ok(());
    };
    bail!(
        "{}: unit {} is corrupt ({}){}; rerun the command that made the run (it redoes corrupt units), then \
         evaluate again",
        run.display(),
        first.unit,
        first.corruption,
        match tables.corrupt_units.len() {
            1 => String::new(),
            n => format!(", and {} more units are", n - 1),
        }
    )
}

/// Checks that every instance file of a prediction run has the prediction columns (the painted ids assume
/// `instance_id` = canvas channel + 1 and no background rows).
fn check_prediction_columns(tables: &RunTables) -> Result<()> {
    let units: BTreeSet<&str> = tables.frames.iter().map(|f| f.sequence_id.as_str()).collect();
    for unit in units {
        let path = tables.layout.instances_file(unit);
        if read_prediction_columns(&path)?.iter().any(Option::is_none) {
            bail!(
                "{}: instance rows without prediction columns (window, window_channel, slot); not written by \
                 `mrdino infer`?",
                path.display()
            );
        }
    }
    Ok(())
}

/// The metrics of the frames scored so far, over the run and per sequence.
struct Scores<'a> {
    overall: Evaluator,
    per_sequence: BTreeMap<&'a str, Evaluator>,
    labelled: usize,
    missing: usize,
    /// Every counted instance with its score and match (`None` once an instance has no score).
    ranked: Option<Vec<ScoredPrediction>>,
    ground_truth_objects: usize,
    /// The labelled frames of each (sequence, segment), in order (`None` when tracking is not scored).
    videos: Option<BTreeMap<(&'a str, u32), Vec<TrackingFrame>>>,
}

/// What scoring a run needs besides its tables.
struct Scoring<'g> {
    gt: &'g mut GroundTruth,
    scoring: PredictionScoring,
    resolution: EvalPreset,
    predictions: bool,
    skip_missing_gt: bool,
    /// Ground-truth ids persist over the frames of a sequence.
    persistent_ids: bool,
}

impl Scoring<'_> {
    /// The prediction and the ground truth of one labelled frame at the same grid, or `None` when its
    /// ground-truth file is missing and `--skip-missing-gt` was given.
    fn pair(&mut self, frame: &FrameRow, instances: &[&InstanceRow]) -> Result<Option<(LabelMap, LabelMap)>> {
        let loaded = if self.predictions {
            self.gt.load_decoded(frame)?.map(|(map, _)| map)
        } else {
            self.gt.load(frame)?
        };
        let Some(truth) = loaded else {
            if self.skip_missing_gt {
                return Ok(None);
            }
            bail!(
                "no ground truth for labelled frame {} of {}: {} does not exist (--skip-missing-gt evaluates only \
                 the frames that have it)",
                frame.frame_name,
                frame.sequence_id,
                self.gt.file(frame).display()
            );
        };
        let prediction = instance_map(frame, instances)?;
        if !self.scoring.to_original {
            return Ok(Some((prediction, truth)));
        }
        let back = canvas_to_original(&prediction, frame)?;
        if (back.height, back.width) != (truth.height, truth.width) {
            bail!(
                "{}: ground truth is {}x{} (HxW) but frame {} of {} was {}x{}",
                self.gt.file(frame).display(),
                truth.height,
                truth.width,
                frame.frame_name,
                frame.sequence_id,
                back.height,
                back.width
            );
        }
        Ok(Some((back, truth)))
    }

    /// Adds one frame's matches, by instance, to the ranking and the tracking.
    fn add_matches<'t>(
        &self,
        scores: &mut Scores<'t>,
        frame: &'t FrameRow,
        maps: (&LabelMap, &LabelMap),
        instances: &[(&InstanceRow, ScoreAndTrack)],
    ) -> Result<()> {
        if scores.ranked.is_none() && scores.videos.is_none() {
            return Ok(());
        }
        let (prediction, truth) = self.resolution.to_eval_resolution(maps.0, maps.1)?;
        let matches = match_prediction_ids(&prediction.labels, &truth.labels, self.scoring.rule)?;
        let of = |id: u32| instances.iter().find(|(row, _)| row.instance_id == id).map(|(_, st)| *st);
        scores.ground_truth_objects += matches.ground_truth_ids.len();
        if let Some(ranked) = &mut scores.ranked {
            let scored: Option<Vec<ScoredPrediction>> = matches
                .predictions
                .iter()
                .map(|m| {
                    of(m.prediction_id).and_then(|st| st.score).map(|score| ScoredPrediction {
                        score: f64::from(score),
                        true_positive: m.ground_truth_id.is_some(),
                    })
                })
                .collect();
            match scored {
                Some(scored) => ranked.extend(scored),
                None => scores.ranked = None,
            }
        }
        if let (Some(videos), Some(segment)) = (&mut scores.videos, frame.segment) {
            let mut tracked = TrackingFrame {
                ground_truth_ids: matches.ground_truth_ids.clone(),
                ..TrackingFrame::default()
            };
            for m in &matches.predictions {
                let Some(track) = of(m.prediction_id).and_then(|st| st.track_id) else {
                    scores.videos = None;
                    return Ok(());
                };
                tracked.track_ids.push(track);
                if let Some(gt) = m.ground_truth_id {
                    tracked.matches.push((gt, track));
                }
            }
            videos.entry((frame.sequence_id.as_str(), segment)).or_default().push(tracked);
        }
        Ok(())
    }

    /// Scores every labelled frame of `tables`.
    fn score<'t>(&mut self, tables: &'t RunTables) -> Result<Scores<'t>> {
        let mut by_frame: BTreeMap<(&str, u32), Vec<(&InstanceRow, ScoreAndTrack)>> = BTreeMap::new();
        for (i, inst) in tables.instances.iter().enumerate() {
            by_frame
                .entry((inst.sequence_id.as_str(), inst.frame_index))
                .or_default()
                .push((inst, tables.scores.get(i).copied().unwrap_or_default()));
        }
        let (resolution, rule) = (self.resolution, self.scoring.rule);
        let evaluator = move || Evaluator::new(resolution).with_rule(rule);
        let mut scores = Scores {
            overall: evaluator(),
            per_sequence: BTreeMap::new(),
            labelled: 0,
            missing: 0,
            ranked: (!tables.instances.is_empty()).then(Vec::new),
            ground_truth_objects: 0,
            videos: self.persistent_ids.then(BTreeMap::new),
        };
        for frame in tables.frames.iter().filter(|f| f.labelled) {
            scores.labelled += 1;
            let key = (frame.sequence_id.as_str(), frame.frame_index);
            let instances = by_frame.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            let rows: Vec<&InstanceRow> = instances.iter().map(|(row, _)| *row).collect();
            let Some((prediction, truth)) = self.pair(frame, &rows)? else {
                scores.missing += 1;
                continue;
            };
            self.add_matches(&mut scores, frame, (&prediction, &truth), instances)?;
            let context = || format!("frame {} of {}", frame.frame_name, frame.sequence_id);
            scores.overall.add_image(&prediction, &truth).with_context(context)?;
            scores
                .per_sequence
                .entry(frame.sequence_id.as_str())
                .or_insert_with(evaluator)
                .add_image(&prediction, &truth)
                .with_context(context)?;
        }
        Ok(scores)
    }
}

/// Evaluates and returns the result (nothing printed or written).
pub fn evaluate(args: &EvalArgs) -> Result<EvalResult> {
    let (_, run) = args.run_dir()?;
    let tables = read_label_tables(run, args.params.as_deref())?;
    refuse_corrupt(run, &tables)?;
    let model_kind = model_kind(args, run, &tables)?;
    let scoring = PredictionScoring::new(model_kind.as_deref(), args.gt_format);
    let resolution = args
        .resolution
        .unwrap_or_else(|| PredictionScoring::default_resolution(model_kind.as_deref(), args.gt_format));
    if model_kind.is_some() {
        check_prediction_columns(&tables)?;
    }
    for file in &tables.incomplete_units {
        eprintln!(
            "warning: {} is not done (unfinished unit or changed inputs); left out",
            file.display()
        );
    }
    let mut gt = GroundTruth::new(&args.gt, args.gt_format)?;
    let scores = Scoring {
        gt: &mut gt,
        scoring,
        resolution,
        predictions: model_kind.is_some(),
        skip_missing_gt: args.skip_missing_gt,
        persistent_ids: matches!(args.gt_format, GtFormat::Synth | GtFormat::Kubric),
    }
    .score(&tables)?;
    let ranked = scores
        .ranked
        .as_ref()
        .map(|ranked| ranked_average_precision(ranked, scores.ground_truth_objects));
    let tracking = scores.videos.as_ref().map(|videos| {
        let mut counts = TrackingCounts::default();
        for frames in videos.values() {
            counts += tracking_counts(frames);
        }
        counts.report()
    });
    let quasi_static = if args.gt_format == GtFormat::Synth && tables.kind == RunKind::Labels {
        Some(retrieval(&tables.frames, &mut gt)?)
    } else {
        None
    };
    Ok(EvalResult {
        labels: run.to_path_buf(),
        kind: tables.kind.name().to_string(),
        model_kind,
        scoring,
        params_hash: tables.layout.params_hash.clone(),
        gt: args.gt.clone(),
        gt_format: args.gt_format,
        resolution,
        labelled_frames: scores.labelled,
        evaluated_frames: scores.overall.report().images,
        missing_gt_frames: scores.missing,
        metrics: scores.overall.report(),
        per_sequence: scores
            .per_sequence
            .into_iter()
            .map(|(id, e)| SequenceMetrics {
                sequence_id: id.to_string(),
                metrics: e.report(),
            })
            .collect(),
        quasi_static,
        ranked,
        tracking,
    })
}

fn retrieval(frames: &[FrameRow], gt: &mut GroundTruth) -> Result<QuasiStaticScores> {
    let (mut corner, mut in_run, mut truth) = (Vec::new(), Vec::new(), Vec::new());
    for frame in frames {
        if let Some(is_static) = gt.camera_static(frame)? {
            corner.push(frame.quasi_static);
            in_run.push(frame.segment.is_some());
            truth.push(is_static);
        }
    }
    Ok(QuasiStaticScores {
        corner_test: quasi_static_retrieval(&corner, &truth)?,
        in_run: quasi_static_retrieval(&in_run, &truth)?,
    })
}

fn option3(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.3}"))
}

/// The first lines of the table: what was compared with what, and how.
fn format_header(result: &EvalResult) -> String {
    let mut out = format!(
        "{} (params {}) vs {} ground truth {}; resolution {}\n",
        result.labels.display(),
        result.params_hash,
        result.gt_format.name(),
        result.gt.display(),
        serde_json::to_value(result.resolution)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    );
    if let Some(kind) = &result.model_kind {
        out.push_str(&format!(
            "predictions of a {kind} model; {}{}\n",
            match result.scoring.rule {
                PredictionRule::DiscardFirst =>
                    "per-window background channels are background and the first remaining id is discarded",
                PredictionRule::KeepAll => "every non-empty channel is a prediction",
            },
            if result.scoring.to_original {
                "; canvas mapped back to the original frame"
            } else {
                ""
            }
        ));
    }
    out.push_str(&format!(
        "{} labelled frames, {} evaluated, {} without ground truth\n\n",
        result.labelled_frames, result.evaluated_frames, result.missing_gt_frames
    ));
    out
}

/// The metrics per sequence and over the run.
fn format_metrics(result: &EvalResult) -> String {
    let mut out = format!(
        "{:<24} {:>6} {:>14} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
        "sequence", "images", "TP/pred/GT", "AP50", "AR50", "F1@50", "fg-ARI", "all-ARI"
    );
    let line = |name: &str, m: &MetricsReport| {
        format!(
            "{:<24} {:>6} {:>14} {:>7.3} {:>7.3} {:>7.3} {:>7} {:>7}\n",
            name,
            m.images,
            format!("{}/{}/{}", m.true_positives, m.predictions, m.ground_truth_objects),
            m.ap50,
            m.ar50,
            m.f1_50,
            option3(m.fg_ari),
            option3(m.all_ari)
        )
    };
    for s in &result.per_sequence {
        out.push_str(&line(&s.sequence_id, &s.metrics));
    }
    out.push_str(&line("all", &result.metrics));
    out.push_str(&format!(
        "(ARI over the {} images with at least 2 ground-truth objects)\n",
        result.metrics.ari_images
    ));
    out
}

/// The quasi-static retrieval table.
fn format_retrieval(q: &QuasiStaticScores) -> String {
    let mut out = format!(
        "\nquasi-static retrieval ({} frames; positive = quasi-static, truth = static camera to the next frame)\n",
        q.corner_test.frames
    );
    out.push_str(&format!(
        "{:<24} {:>5} {:>5} {:>5} {:>5} {:>9} {:>9} {:>7}\n",
        "selection", "TP", "FP", "FN", "TN", "accuracy", "precision", "recall"
    ));
    for (name, s) in [
        ("corner test (per frame)", &q.corner_test),
        ("in a run (segment)", &q.in_run),
    ] {
        out.push_str(&format!(
            "{:<24} {:>5} {:>5} {:>5} {:>5} {:>9.3} {:>9.3} {:>7.3}\n",
            name,
            s.true_positives,
            s.false_positives,
            s.false_negatives,
            s.true_negatives,
            s.accuracy,
            s.precision,
            s.recall
        ));
    }
    out
}

/// The terminal table.
pub fn format_table(result: &EvalResult) -> String {
    let mut out = format_header(result) + &format_metrics(result);
    if let Some(q) = &result.quasi_static {
        out.push_str(&format_retrieval(q));
    }
    if let Some(r) = &result.ranked {
        out.push_str(&format!(
            "\nranked by score: AP50 {:.3} ({} instances, {} true positives, {} objects); the fixed set: precision \
             {:.3} × recall {:.3} = {:.3}\n",
            r.ap50,
            r.predictions,
            r.true_positives,
            r.ground_truth,
            r.precision_at_full,
            r.recall_at_full,
            r.precision_at_full * r.recall_at_full
        ));
    }
    if let Some(t) = &result.tracking {
        out.push_str(&format!(
            "tracking (labelled frames of each segment): MOTSA {:.3}, IDF1 {:.3}, {} identity switches, {} \
             fragmentations; {:.1} % of {} consecutive matched pairs keep their track\n",
            t.motsa,
            t.idf1,
            t.counts.id_switches,
            t.counts.fragmentations,
            100.0 * t.same_track_fraction,
            t.counts.consecutive_pairs
        ));
    }
    out
}

/// Refuses a `--json` that is, lies inside or contains an input (the run's tables and bookkeeping, the ground
/// truth).
fn check_paths(args: &EvalArgs) -> Result<()> {
    let Some(json) = &args.json else {
        return Ok(());
    };
    let (flag, run) = args.run_dir()?;
    let run_inputs = job_inputs(run, LABELS_DATA_DIRS);
    let mut inputs: Vec<(&str, &Path)> = run_inputs.iter().map(|p| (flag, p.as_path())).collect();
    inputs.push(("--gt", &args.gt));
    check_outputs(&inputs, &[("--json", json)])
}

pub fn run(args: &EvalArgs) -> Result<()> {
    check_paths(args)?;
    let result = evaluate(args)?;
    if result.evaluated_frames == 0 {
        eprintln!("warning: no labelled frame was evaluated; every metric is 0");
    }
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| result.labels.join(format!("_eval-{}.json", result.params_hash)));
    print_stdout(&format_table(&result))?;
    write_atomic(&json, &serde_json::to_vec_pretty(&result)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    print_stdout(&format!("JSON: {}\n", json.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::infer::{MODEL_BASELINE, MODEL_STAGE2};
    use mrdino_model::predict::channel_objects;
    use mrdino_model::windows::MergedCanvas;
    use mrdino_outputs::tables::InstanceOrigin;
    use mrdino_outputs::CocoRle;
    use mrdino_stages::metrics::prediction_ids;
    use mrdino_stages::frame_rows::test_frame as frame;

    /// What `mrdino infer` stores for a merged canvas, painted back the way `eval --predictions` paints it.
    fn stored_and_painted(merged: &MergedCanvas, stage2: bool) -> LabelMap {
        let row = frame(merged.height as u32, merged.width as u32);
        let rows: Vec<InstanceRow> = channel_objects(merged, stage2, merged.channels_per_window, None)
            .into_iter()
            .map(|o| InstanceRow {
                dataset: row.dataset.clone(),
                sequence_id: row.sequence_id.clone(),
                frame_index: 0,
                frame_name: row.frame_name.clone(),
                instance_id: o.channel + 1,
                mask: CocoRle::from_pixels(&o.pixels, row.height, row.width),
                bbox_xywh: [0.0; 4],
                area_px: o.pixels.len() as u32,
                origin: InstanceOrigin::Model,
                component_id: o.channel,
                hdbscan_label: None,
                mean_flow_px: f32::NAN,
            })
            .collect();
        instance_map(&row, &rows.iter().collect::<Vec<_>>()).unwrap()
    }

    /// 4×8 canvas of two 4×4 windows; `owner(y, x)` is the merged channel of each pixel.
    fn canvas(channels_per_window: usize, owner: impl Fn(usize, usize) -> u32) -> MergedCanvas {
        MergedCanvas {
            height: 4,
            width: 8,
            windows: 2,
            channels_per_window,
            channel_of_pixel: (0..4)
                .flat_map(|y| (0..8).map(move |x| (y, x)))
                .map(|(y, x)| owner(y, x))
                .collect(),
            merges: Vec::new(),
        }
    }

    fn ground_truth() -> LabelMap {
        // Objects 1 (columns 0-1), 2 (rows 2-3 of columns 2-3) and 3 (columns 6-7); background elsewhere.
        let labels = (0..4)
            .flat_map(|y| (0..8).map(move |x| (y, x)))
            .map(|(y, x)| match (y, x) {
                (_, 0..=1) => 1,
                (2..=3, 2..=3) => 2,
                (_, 6..=7) => 3,
                _ => 0,
            })
            .collect();
        LabelMap::new(4, 8, labels).unwrap()
    }

    fn report(prediction: &LabelMap, rule: PredictionRule) -> MetricsReport {
        let mut e = Evaluator::new(EvalPreset::Native).with_rule(rule);
        e.add_image(prediction, &ground_truth()).unwrap();
        e.report()
    }

    #[test]
    fn stage2_predictions_score_as_the_reference_with_combination_num() {
        let scoring = PredictionScoring::new(Some(MODEL_STAGE2), GtFormat::Synth);
        assert_eq!(scoring.rule, PredictionRule::DiscardFirst);
        // K = 2, channels per window 3 (background, slot 0, slot 1): background channels 0 and 3.
        let merged = canvas(3, |y, x| match (y, x) {
            (_, 0..=1) => 1,
            (0..=1, 2..=3) => 0,
            (_, 2..=3) => 2,
            (_, 4..=5) => 3,
            _ => 5,
        });
        let reference = LabelMap::new(4, 8, prediction_ids(&merged.channel_of_pixel, 6, Some(2)).unwrap()).unwrap();
        let ours = stored_and_painted(&merged, true);
        let want = report(&reference, PredictionRule::DiscardFirst);
        assert_eq!(report(&ours, scoring.rule), want);
        // Both background channels are background; the three object channels are the predictions, all hits.
        assert_eq!(
            (want.predictions, want.true_positives, want.ground_truth_objects),
            (3, 3, 3)
        );
        assert_eq!(want.f1_50, 1.0);

        // No background pixel: the reference discards its first real prediction, and so does the stored form.
        let merged = canvas(3, |_, x| if x < 4 { 1 } else { 5 });
        let reference = LabelMap::new(4, 8, prediction_ids(&merged.channel_of_pixel, 6, Some(2)).unwrap()).unwrap();
        let want = report(&reference, PredictionRule::DiscardFirst);
        assert_eq!(report(&stored_and_painted(&merged, true), scoring.rule), want);
        assert_eq!(want.predictions, 1);
    }

    #[test]
    fn baseline_predictions_keep_every_channel_including_each_windows_first_slot() {
        let scoring = PredictionScoring::new(Some(MODEL_BASELINE), GtFormat::Synth);
        assert_eq!(scoring.rule, PredictionRule::KeepAll);
        assert!(scoring.to_original);
        // K = 2 channels per window, no background channel: channel 0 (window 0, slot 0) is an object too.
        let merged = canvas(2, |y, x| match (y, x) {
            (_, 0..=1) => 0,
            (_, 2..=3) => 1,
            (_, 4..=5) => 2,
            _ => 3,
        });
        let reference = LabelMap::new(4, 8, prediction_ids(&merged.channel_of_pixel, 4, None).unwrap()).unwrap();
        let ours = stored_and_painted(&merged, false);
        let want = report(&reference, PredictionRule::KeepAll);
        assert_eq!(report(&ours, scoring.rule), want);
        assert_eq!((want.predictions, want.true_positives), (4, 2));
        // Scored as a stage-2 model would be, the first channel would be lost: the rules differ here.
        assert_ne!(
            report(&ours, PredictionRule::DiscardFirst).predictions,
            want.predictions
        );
    }

    #[test]
    fn the_canvas_maps_back_to_the_original_frame_through_the_provenance() {
        // Original 2×4 resized to 4×10 and cropped at column 1 to the 4×8 canvas.
        let mut row = frame(4, 8);
        (row.orig_height, row.orig_width) = (2, 4);
        (row.resized_height, row.resized_width, row.crop_left) = (4, 10, 1);
        let canvas = LabelMap::new(4, 8, (0..32).collect()).unwrap();
        let back = canvas_to_original(&canvas, &row).unwrap();
        // Rows ⌊(y + ½)·2⌋ = 1, 3; columns ⌊(x + ½)·2.5⌋ − 1 = 0, 2, 5, 7.
        assert_eq!((back.height, back.width), (2, 4));
        assert_eq!(back.labels, vec![8, 10, 13, 15, 24, 26, 29, 31]);
        // A crop the canvas does not cover is background.
        row.crop_left = 3;
        let back = canvas_to_original(&canvas, &row).unwrap();
        assert_eq!(back.labels[..4], [0, 8, 11, 13]);
        row.orig_height = 0;
        assert!(canvas_to_original(&canvas, &row).is_err());
    }
}
