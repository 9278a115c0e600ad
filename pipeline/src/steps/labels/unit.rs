//! One unit of work (a sequence): frames → flow → per-frame analysis → rows.
//!
//! Three stages run at once, joined by bounded channels so memory stays flat in sequence length:
//! a decoder thread reads each frame once; the flow stage pairs it with its predecessor and estimates the
//! flow (batched when the backend batches); the analysis stage (corner means, foreground, instances, RLE)
//! runs on the rayon pool, several frames in parallel. Only per-frame statistics and RLE-encoded instances are
//! kept until the sequence ends, when the quasi-static runs and segments — which need the whole sequence — are
//! resolved into rows. Instances are computed for every frame that passes the corner test and has enough
//! foreground; whether it ends up labelled depends on its run and segment.

use std::path::Path;

use crossbeam_channel::bounded;
use mrdino_datasets::{DatasetError, Frame, Geometry, Sequence};
use mrdino_outputs::bookkeeping::FrameFailure;
use mrdino_outputs::tables::{ExcludedReason, InstanceOrigin};
use mrdino_outputs::{CocoRle, FrameRow, InstanceRow};
use mrdino_stages::flow::files::{find_flow_file, kubric_flow_file, read_flow_file, read_kubric_flow};
use mrdino_stages::flow::source::FlowSource;
use mrdino_stages::flow::{FlowError, FlowField};
use mrdino_stages::instances::{separate_instances, Origin};
use mrdino_stages::select::{corner_means_of_magnitude, CornerMeans};

use crate::engine::stop::StopHandle;
use crate::settings::labels::LabelsParams as Params;

/// The table's name for how a stage found an instance.
fn table_origin(origin: Origin) -> InstanceOrigin {
    match origin {
        Origin::Component => InstanceOrigin::Component,
        Origin::Hdbscan => InstanceOrigin::Hdbscan,
    }
}

/// Why a unit stopped without output.
#[derive(Debug)]
pub enum UnitError {
    /// Stop requested (signal or time budget); nothing of the unit was written.
    Interrupted,
    /// The unit as a whole cannot be processed.
    Failed(String),
}

/// Everything a unit produces.
pub struct UnitOutput {
    pub frames: Vec<FrameRow>,
    pub instances: Vec<InstanceRow>,
    pub failures: Vec<FrameFailure>,
    pub decoded_frames: usize,
}

struct FrameMeta {
    name: String,
    source_path: String,
    geometry: Option<Geometry>,
}

struct FlowJob {
    index: usize,
    flow: Result<FlowField, String>,
}

struct InstanceRecord {
    rle: CocoRle,
    area_px: u32,
    bbox_xywh: [u32; 4],
    origin: InstanceOrigin,
    component: u32,
    hdbscan_label: Option<i32>,
    mean_flow_px: f32,
}

struct Analysis {
    index: usize,
    corners: Option<CornerMeans>,
    passes: bool,
    fg_fraction: Option<f32>,
    enough_fg: bool,
    instances: Vec<InstanceRecord>,
    error: Option<String>,
}

impl Analysis {
    fn failed(index: usize, error: String) -> Self {
        Analysis {
            index,
            corners: None,
            passes: false,
            fg_fraction: None,
            enough_fg: false,
            instances: Vec::new(),
            error: Some(error),
        }
    }
}

/// [`analyse`], with a panic inside a stage turned into a recorded frame failure instead of ending the run.
fn analyse_guarded(job: FlowJob, params: &Params) -> Analysis {
    let index = job.index;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| analyse(job, params))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        Analysis::failed(index, format!("internal error while analysing the frame: {message}"))
    })
}

/// Frames analysed at once per thread of the pool: enough to keep every thread busy while the flow stage
/// produces the next, few enough that memory stays flat in sequence length.
const IN_FLIGHT_PER_THREAD: usize = 2;

/// Analyses the flow jobs of one unit on the rayon pool, several frames at once, in any order.
///
/// The jobs are received on this (non-pool) thread and spawned into the pool, so no pool thread ever waits
/// on the channel: the flow stage may itself use the pool (CPU flow computes pairs in parallel) without
/// starving, with any number of units in flight. At most `IN_FLIGHT_PER_THREAD` × threads frames are queued
/// or being analysed at a time.
fn analyse_on_pool(
    jobs: crossbeam_channel::Receiver<FlowJob>,
    params: &Params,
    on_frame: &(dyn Fn() + Sync),
) -> Vec<Analysis> {
    let limit = IN_FLIGHT_PER_THREAD * rayon::current_num_threads().max(1);
    let (slot_tx, slot_rx) = bounded::<()>(limit);
    let results = std::sync::Mutex::new(Vec::new());
    rayon::in_place_scope(|scope| {
        for job in jobs {
            if slot_tx.send(()).is_err() {
                break;
            }
            let (results, slot_rx) = (&results, &slot_rx);
            scope.spawn(move |_| {
                let analysis = analyse_guarded(job, params);
                on_frame();
                if let Ok(mut r) = results.lock() {
                    r.push(analysis);
                }
                let _ = slot_rx.recv();
            });
        }
    });
    let mut analyses = results.into_inner().unwrap_or_default();
    analyses.sort_by_key(|a| a.index);
    analyses
}

fn analyse(job: FlowJob, params: &Params) -> Analysis {
    let flow = match job.flow {
        Ok(flow) => flow,
        Err(error) => return Analysis::failed(job.index, error),
    };
    let (h, w) = (flow.height, flow.width);
    let magnitude = flow.magnitude();
    let corners = corner_means_of_magnitude(&magnitude, h, w, params.select.corner_fraction);
    let passes = params.select.passes(&corners);
    let (fg, fg_count) = params.instances.foreground_test().mask(&magnitude);
    let enough_fg = params.instances.enough_foreground(fg_count, h, w);
    let instances = if passes && enough_fg {
        separate_instances(&flow, &fg, &params.instances)
            .into_iter()
            .map(|inst| InstanceRecord {
                rle: CocoRle::from_pixels(&inst.pixels, h as u32, w as u32),
                area_px: inst.pixels.len() as u32,
                bbox_xywh: inst.bbox_xywh,
                origin: table_origin(inst.origin),
                component: inst.component,
                hdbscan_label: inst.hdbscan_label,
                mean_flow_px: inst.mean_flow_px,
            })
            .collect()
    } else {
        Vec::new()
    };
    Analysis {
        index: job.index,
        corners: Some(corners),
        passes,
        fg_fraction: Some((fg_count as f64 / (h * w) as f64) as f32),
        enough_fg,
        instances,
        error: None,
    }
}

fn flow_error_text(e: FlowError) -> String {
    e.to_string()
}

/// The flow of a frame from files: `dir` for `--flow import`, `None` for Kubric's files beside the frames.
fn imported_flow(dir: Option<&Path>, sequence: &Sequence, meta: &FrameMeta) -> Result<FlowField, String> {
    let (path, flow) = match dir {
        Some(dir) => {
            let path = find_flow_file(dir, &sequence.id, &meta.name).ok_or_else(|| {
                let stem = dir.join(&sequence.id).join(&meta.name);
                format!("{}: no flow file (.npy, .flo or .png) for this frame", stem.display())
            })?;
            let flow = read_flow_file(&path).map_err(flow_error_text)?;
            (path, flow)
        }
        None => {
            let scene = sequence.root.join(&sequence.id);
            let path = kubric_flow_file(&scene, &meta.name).ok_or_else(|| {
                format!(
                    "{}: no Kubric forward_flow PNG for frame {}",
                    scene.display(),
                    meta.name
                )
            })?;
            let flow = read_kubric_flow(&path).map_err(flow_error_text)?;
            (path, flow)
        }
    };
    if let Some(g) = meta.geometry {
        if (flow.height, flow.width) != (g.height, g.width) {
            return Err(format!(
                "{}: flow is {}x{} but frames are processed at {}x{} (check --resize)",
                path.display(),
                flow.width,
                flow.height,
                g.width,
                g.height
            ));
        }
    }
    Ok(flow)
}

/// Runs one sequence. `stop` is polled between frames; when it is set the unit is abandoned.
pub fn process_unit(
    sequence: &Sequence,
    params: &Params,
    flow: &mut FlowSource,
    stop: &StopHandle,
    on_frame: &(dyn Fn() + Sync),
) -> Result<UnitOutput, UnitError> {
    let frames = sequence.frames().map_err(|e| UnitError::Failed(e.to_string()))?;
    let mut metas: Vec<FrameMeta> = Vec::new();
    let mut failures: Vec<FrameFailure> = Vec::new();
    let mut interrupted = false;

    let analyses = std::thread::scope(|scope| -> Result<Vec<Analysis>, UnitError> {
        let (frame_tx, frame_rx) = bounded::<(usize, Result<Frame, DatasetError>)>(4);
        scope.spawn(move || {
            for item in frames {
                if stop.requested() || frame_tx.send(item).is_err() {
                    break;
                }
            }
        });
        let (job_tx, job_rx) = bounded::<FlowJob>(4);
        let analysis = scope.spawn(move || analyse_on_pool(job_rx, params, on_frame));

        // Frames whose image is available, waiting to be paired: (index, frame).
        let mut previous: Option<Frame> = None;
        let mut pending: Vec<(usize, Frame, Frame)> = Vec::new();
        let flush = |pending: &mut Vec<(usize, Frame, Frame)>, flow: &mut FlowSource| -> Result<(), UnitError> {
            if pending.is_empty() {
                return Ok(());
            }
            let FlowSource::Estimator { estimator, .. } = flow else {
                return Err(UnitError::Failed("only an estimator batches frame pairs".into()));
            };
            let pairs: Vec<_> = pending.iter().map(|(_, a, b)| (&a.image, &b.image)).collect();
            let results: Vec<Result<FlowField, String>> = match estimator.estimate(&pairs) {
                Ok(fields) => fields.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(flow_error_text(e)); pending.len()],
            };
            for ((index, _, _), flow) in pending.drain(..).zip(results) {
                job_tx
                    .send(FlowJob { index, flow })
                    .map_err(|_| UnitError::Failed("analysis stage ended".into()))?;
            }
            Ok(())
        };

        for (index, item) in frame_rx {
            if stop.requested() {
                interrupted = true;
                break;
            }
            let frame = match item {
                Ok(frame) => Some(frame),
                Err(e) => {
                    let path = e.path().map(|p| p.display().to_string()).unwrap_or_default();
                    failures.push(FrameFailure {
                        frame_index: index,
                        path,
                        reason: e.to_string(),
                    });
                    None
                }
            };
            metas.push(FrameMeta {
                name: frame.as_ref().map(|f| f.name.clone()).unwrap_or_else(|| {
                    sequence
                        .image_files()
                        .and_then(|f| f.get(index))
                        .map(|f| f.name.clone())
                        .unwrap_or(format!("{index:06}"))
                }),
                source_path: sequence.source_path(index),
                geometry: frame.as_ref().map(|f| f.geometry),
            });
            match flow {
                FlowSource::Import { .. } | FlowSource::Kubric => {
                    // The flow of frame t is a file; it exists for every frame but the last, which is
                    // only known once the next frame arrives.
                    if index > 0 && metas[index - 1].geometry.is_some() {
                        let dir = match flow {
                            FlowSource::Import { dir } => Some(dir.as_path()),
                            _ => None,
                        };
                        let job = FlowJob {
                            index: index - 1,
                            flow: imported_flow(dir, sequence, &metas[index - 1]),
                        };
                        job_tx
                            .send(job)
                            .map_err(|_| UnitError::Failed("analysis stage ended".into()))?;
                    }
                }
                FlowSource::Estimator { batch, .. } => {
                    let batch = *batch;
                    if let (Some(prev), Some(cur)) = (previous.take(), frame.as_ref()) {
                        pending.push((index - 1, prev, cur.clone()));
                        if pending.len() >= batch.max(1) {
                            flush(&mut pending, flow)?;
                        }
                    }
                }
            }
            if matches!(flow, FlowSource::Estimator { .. }) {
                previous = frame;
            }
        }
        if !interrupted {
            flush(&mut pending, flow)?;
        }
        drop(job_tx);
        analysis
            .join()
            .map_err(|_| UnitError::Failed("analysis stage panicked".into()))
    })?;
    if interrupted || stop.requested() {
        return Err(UnitError::Interrupted);
    }
    if metas.len() < 2 {
        return Err(UnitError::Failed(format!(
            "sequence has {} readable frame(s); at least 2 are needed",
            metas.len()
        )));
    }
    let Some(geometry) = metas.iter().find_map(|m| m.geometry) else {
        return Err(UnitError::Failed("no frame of the sequence could be decoded".into()));
    };
    for a in &analyses {
        if let Some(error) = &a.error {
            failures.push(FrameFailure {
                frame_index: a.index,
                path: metas[a.index].source_path.clone(),
                reason: error.clone(),
            });
        }
    }
    failures.sort_by_key(|f| f.frame_index);
    let (frames, instances) = resolve(sequence, params, &metas, analyses, geometry);
    Ok(UnitOutput {
        frames,
        instances,
        failures,
        decoded_frames: metas.len(),
    })
}

static EVAL_OVERLAP: std::sync::LazyLock<std::collections::BTreeSet<(String, String)>> =
    std::sync::LazyLock::new(mrdino_datasets::kitti_eval_overlap);

/// Whether a KITTI frame (`<drive>_sync/image_0X`, frame name) is a benchmark image.
fn in_eval_overlap(sequence_id: &str, frame_name: &str) -> bool {
    let drive = sequence_id.split('/').next().unwrap_or_default();
    EVAL_OVERLAP.contains(&(drive.to_string(), frame_name.to_string()))
}

/// Applies the sequence-level rules (runs, segments) and builds the rows.
fn resolve(
    sequence: &Sequence,
    params: &Params,
    metas: &[FrameMeta],
    analyses: Vec<Analysis>,
    geometry: Geometry,
) -> (Vec<FrameRow>, Vec<InstanceRow>) {
    let n = metas.len() - 1; // frames with a flow
    let mut by_index: Vec<Option<Analysis>> = (0..n).map(|_| None).collect();
    for a in analyses {
        if a.index < n {
            let slot = a.index;
            by_index[slot] = Some(a);
        }
    }
    let passes: Vec<bool> = by_index.iter().map(|a| a.as_ref().is_some_and(|a| a.passes)).collect();
    let segments = params.select.segments(&passes);
    let mut labelled_per_segment = std::collections::BTreeMap::<u32, usize>::new();
    for (a, seg) in by_index.iter().zip(&segments) {
        if let (Some(a), Some(seg)) = (a, seg) {
            if a.enough_fg {
                *labelled_per_segment.entry(*seg).or_default() += 1;
            }
        }
    }
    let dataset = sequence.dataset.name().to_string();
    let mut frames = Vec::with_capacity(n);
    let mut instances = Vec::new();
    for (i, (analysis, segment)) in by_index.into_iter().zip(segments).enumerate() {
        let meta = &metas[i];
        let g = meta.geometry.unwrap_or(geometry);
        let reason: Option<ExcludedReason> = match (&analysis, segment) {
            (None, _) => Some(ExcludedReason::Unreadable),
            (Some(a), _) if a.error.is_some() => Some(ExcludedReason::Unreadable),
            (Some(a), None) if !a.passes => Some(ExcludedReason::CameraMotion),
            (Some(_), None) => Some(ExcludedReason::ShortRun),
            (Some(a), Some(_)) if !a.enough_fg => Some(ExcludedReason::FgTooSmall),
            (Some(_), Some(seg))
                if labelled_per_segment.get(&seg).copied().unwrap_or(0) < params.instances.min_segment_frames =>
            {
                Some(ExcludedReason::ShortSegment)
            }
            (Some(_), Some(_)) => None,
        };
        let reason = if params.exclude_eval_overlap && in_eval_overlap(&sequence.id, &meta.name) {
            Some(ExcludedReason::EvalOverlap)
        } else {
            reason
        };
        let labelled = reason.is_none();
        let mut num_instances = 0;
        if labelled {
            if let Some(a) = &analysis {
                num_instances = a.instances.len() as u32;
                for (k, inst) in a.instances.iter().enumerate() {
                    instances.push(InstanceRow {
                        dataset: dataset.clone(),
                        sequence_id: sequence.id.clone(),
                        frame_index: i as u32,
                        frame_name: meta.name.clone(),
                        instance_id: k as u32 + 1,
                        mask: inst.rle.clone(),
                        bbox_xywh: inst.bbox_xywh.map(|v| v as f32),
                        area_px: inst.area_px,
                        origin: inst.origin,
                        component_id: inst.component,
                        hdbscan_label: inst.hdbscan_label,
                        mean_flow_px: inst.mean_flow_px,
                    });
                }
            }
        }
        frames.push(FrameRow {
            dataset: dataset.clone(),
            sequence_id: sequence.id.clone(),
            frame_index: i as u32,
            frame_name: meta.name.clone(),
            source_path: meta.source_path.clone(),
            height: g.height as u32,
            width: g.width as u32,
            orig_height: g.orig_height as u32,
            orig_width: g.orig_width as u32,
            resized_height: g.resized_height as u32,
            resized_width: g.resized_width as u32,
            crop_top: g.crop_top as u32,
            crop_left: g.crop_left as u32,
            quasi_static: analysis.as_ref().is_some_and(|a| a.passes),
            corner_flow_px: analysis.as_ref().and_then(|a| a.corners),
            fg_fraction: analysis.as_ref().and_then(|a| a.fg_fraction),
            labelled,
            excluded_reason: reason,
            segment,
            num_instances,
        });
    }
    (frames, instances)
}
