//! One unit of work (a sequence): frames → flow → per-frame analysis → rows.
//!
//! Three stages run at once, joined by bounded channels so memory stays flat in sequence length: a decoder
//! thread reads each frame once; the flow stage ([`Producer`]) pairs it with its predecessor and estimates the flow
//! (batched when the backend batches; with `--fb-check` also the backward flow of each pair, with
//! `--photo-check` the pair's grey levels); the analysis stage ([`super::analysis`]) runs on the rayon pool,
//! several frames in parallel. Only per-frame statistics and RLE-encoded instances are kept until the sequence
//! ends, when the quasi-static runs, segments, tracks and scores — which need the whole sequence — are resolved
//! into rows ([`super::rows`]). Instances are computed for every frame that passes the corner test and has enough
//! foreground; whether it ends up labelled depends on its run and segment.

use std::path::Path;

use crossbeam_channel::{bounded, Sender};
use mrdino_datasets::{DatasetError, Frame, Sequence};
use mrdino_outputs::bookkeeping::FrameFailure;
use mrdino_stages::flow::files::{find_flow_file, kubric_flow_file, read_flow_file, read_kubric_flow};
use mrdino_stages::flow::source::FlowSource;
use mrdino_stages::flow::{FlowEstimator, FlowField};
use mrdino_stages::rules::grey;

use super::analysis::{analyse_on_pool, Analysis, FlowJob};
use super::rows::{resolve, FrameMeta, Rows};
use crate::engine::stop::StopHandle;
use crate::settings::labels::LabelsParams;

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
    pub rows: Rows,
    pub failures: Vec<FrameFailure>,
    pub decoded_frames: usize,
}

/// The flow of a frame from files: `dir` for `--flow import`, `None` for Kubric's files beside the frames.
fn imported_flow(dir: Option<&Path>, sequence: &Sequence, meta: &FrameMeta) -> Result<FlowField, String> {
    let (path, flow) = match dir {
        Some(dir) => {
            let path = find_flow_file(dir, &sequence.id, &meta.name).ok_or_else(|| {
                let stem = dir.join(&sequence.id).join(&meta.name);
                format!("{}: no flow file (.npy, .flo or .png) for this frame", stem.display())
            })?;
            let flow = read_flow_file(&path).map_err(|e| e.to_string())?;
            (path, flow)
        }
        None => {
            let scene = sequence.root.join(&sequence.id);
            let path = kubric_flow_file(&scene, &meta.name).ok_or_else(|| {
                format!("{}: no Kubric forward_flow PNG for frame {}", scene.display(), meta.name)
            })?;
            let flow = read_kubric_flow(&path).map_err(|e| e.to_string())?;
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

/// The flow stage of one unit: receives decoded frames in order and sends one [`FlowJob`] per frame that has a
/// successor.
struct Producer<'a> {
    sequence: &'a Sequence,
    params: &'a LabelsParams,
    /// To the analysis stage; `None` once every job is sent (which ends that stage).
    jobs: Option<Sender<FlowJob>>,
    metas: Vec<FrameMeta>,
    failures: Vec<FrameFailure>,
    /// The last decoded frame (estimators and `--photo-check` pair it with the next).
    previous: Option<Frame>,
    /// Frame pairs waiting for the estimator's batch: (index of the first, first, second).
    pending: Vec<(usize, Frame, Frame)>,
}

impl Producer<'_> {
    fn send(&self, job: FlowJob) -> Result<(), UnitError> {
        self.jobs
            .as_ref()
            .ok_or_else(|| UnitError::Failed("the flow stage sent a job after its last".into()))?
            .send(job)
            .map_err(|_| UnitError::Failed("analysis stage ended".into()))
    }

    fn grey_pair(&self, a: &Frame, b: &Frame) -> Option<(Vec<f32>, Vec<f32>)> {
        self.params.rules.photo_check.then(|| (grey(&a.image), grey(&b.image)))
    }

    /// Estimates the flow (and, for `--fb-check`, the backward flow) of the pending pairs.
    fn flush(&mut self, estimator: &mut dyn FlowEstimator) -> Result<(), UnitError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pairs: Vec<_> = self.pending.iter().map(|(_, a, b)| (&a.image, &b.image)).collect();
        let results: Vec<Result<FlowField, String>> = match estimator.estimate(&pairs) {
            Ok(fields) => fields.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e.to_string()); pairs.len()],
        };
        let mut backward: Vec<Option<FlowField>> = vec![None; pairs.len()];
        if self.params.rules.fb_check {
            let reversed: Vec<_> = pairs.iter().map(|(a, b)| (*b, *a)).collect();
            if let Ok(fields) = estimator.estimate(&reversed) {
                backward = fields.into_iter().map(Some).collect();
            }
        }
        let pending = std::mem::take(&mut self.pending);
        for (((index, a, b), flow), backward) in pending.into_iter().zip(results).zip(backward) {
            let grey = self.grey_pair(&a, &b);
            self.send(FlowJob {
                index,
                flow,
                backward,
                grey,
            })?;
        }
        Ok(())
    }

    /// Takes frame `index` (or its decoding error) and sends the jobs it completes.
    fn frame(&mut self, index: usize, item: Result<Frame, DatasetError>, flow: &mut FlowSource) -> Result<(), UnitError> {
        let frame = match item {
            Ok(frame) => Some(frame),
            Err(e) => {
                let path = e.path().map(|p| p.display().to_string()).unwrap_or_default();
                self.failures.push(FrameFailure {
                    frame_index: index,
                    path,
                    reason: e.to_string(),
                });
                None
            }
        };
        let sequence = self.sequence;
        self.metas.push(FrameMeta {
            name: frame.as_ref().map(|f| f.name.clone()).unwrap_or_else(|| {
                sequence
                    .image_files()
                    .and_then(|f| f.get(index))
                    .map_or(format!("{index:06}"), |f| f.name.clone())
            }),
            source_path: sequence.source_path(index),
            geometry: frame.as_ref().map(|f| f.geometry),
        });
        match flow {
            FlowSource::Import { .. } | FlowSource::Kubric => self.imported(index, frame, flow),
            FlowSource::Estimator { estimator, batch } => {
                if let (Some(prev), Some(cur)) = (self.previous.take(), frame.as_ref()) {
                    self.pending.push((index - 1, prev, cur.clone()));
                    if self.pending.len() >= (*batch).max(1) {
                        self.flush(estimator.as_mut())?;
                    }
                }
                self.previous = frame;
                Ok(())
            }
        }
    }

    /// The flow of frame t is a file; it exists for every frame but the last, which is only known once the next
    /// frame arrives.
    fn imported(&mut self, index: usize, frame: Option<Frame>, flow: &FlowSource) -> Result<(), UnitError> {
        let previous = self.previous.take();
        let prev_meta = index.checked_sub(1).and_then(|i| self.metas.get(i));
        if let Some(meta) = prev_meta.filter(|m| m.geometry.is_some()) {
            let dir = match flow {
                FlowSource::Import { dir } => Some(dir.as_path()),
                _ => None,
            };
            let flow = imported_flow(dir, self.sequence, meta);
            let grey = match (&previous, &frame) {
                (Some(a), Some(b)) => self.grey_pair(a, b),
                _ => None,
            };
            self.send(FlowJob {
                index: index - 1,
                flow,
                backward: None,
                grey,
            })?;
        }
        if self.params.rules.photo_check {
            self.previous = frame;
        }
        Ok(())
    }
}

/// Runs one sequence. `stop` is polled between frames; when it is set the unit is abandoned.
pub fn process_unit(
    sequence: &Sequence,
    params: &LabelsParams,
    flow: &mut FlowSource,
    stop: &StopHandle,
    on_frame: &(dyn Fn() + Sync),
) -> Result<UnitOutput, UnitError> {
    let frames = sequence.frames().map_err(|e| UnitError::Failed(e.to_string()))?;
    let (producer, analyses) = std::thread::scope(|scope| -> Result<(Producer<'_>, Vec<Analysis>), UnitError> {
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
        let mut producer = Producer {
            sequence,
            params,
            jobs: Some(job_tx),
            metas: Vec::new(),
            failures: Vec::new(),
            previous: None,
            pending: Vec::new(),
        };
        for (index, item) in frame_rx {
            if stop.requested() {
                break;
            }
            producer.frame(index, item, flow)?;
        }
        if let (false, FlowSource::Estimator { estimator, .. }) = (stop.requested(), &mut *flow) {
            producer.flush(estimator.as_mut())?;
        }
        producer.jobs = None;
        let analyses = analysis
            .join()
            .map_err(|_| UnitError::Failed("analysis stage panicked".into()))?;
        Ok((producer, analyses))
    })?;
    if stop.requested() {
        return Err(UnitError::Interrupted);
    }
    finish(sequence, params, producer, analyses)
}

/// Checks what the unit read and resolves its rows.
fn finish(
    sequence: &Sequence,
    params: &LabelsParams,
    producer: Producer<'_>,
    analyses: Vec<Analysis>,
) -> Result<UnitOutput, UnitError> {
    let Producer { metas, mut failures, .. } = producer;
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
                path: metas.get(a.index).map(|m| m.source_path.clone()).unwrap_or_default(),
                reason: error.clone(),
            });
        }
    }
    failures.sort_by_key(|f| f.frame_index);
    let rows = resolve(sequence, params, &metas, analyses, geometry).map_err(UnitError::Failed)?;
    Ok(UnitOutput {
        rows,
        failures,
        decoded_frames: metas.len(),
    })
}
