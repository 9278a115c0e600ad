//! The sequence-level rules and the rows of a unit, once every frame is analysed: quasi-static runs and segments,
//! which frames carry a label (and why the others do not), the instance rows, and for each instance its track id
//! (linking instances of consecutive labelled frames of a segment, `mrdino_stages::tracks`) and its confidence
//! score (`mrdino_stages::score`: flow coherence, forward–backward consistency when computed, persistence along
//! its track).

use std::collections::BTreeMap;

use mrdino_datasets::{Geometry, Sequence};
use mrdino_outputs::tables::{ExcludedReason, FrameId, ScoreAndTrack};
use mrdino_stages::frame_rows::frame_row;
use mrdino_outputs::{FrameRow, InstanceRow};
use mrdino_stages::score::instance_score;
use mrdino_stages::tracks::{assign_tracks, TrackFrame, TrackParams, TrackedInstance};

use super::analysis::Analysis;
use crate::settings::labels::LabelsParams;

/// What a unit keeps of each decoded (or undecodable) frame.
pub struct FrameMeta {
    pub name: String,
    pub source_path: String,
    pub geometry: Option<Geometry>,
}

/// The rows of a unit: frames, instances and, parallel to the instances, their scores and track ids.
pub struct Rows {
    pub frames: Vec<FrameRow>,
    pub instances: Vec<InstanceRow>,
    pub scores: Vec<ScoreAndTrack>,
}

static EVAL_OVERLAP: std::sync::LazyLock<std::collections::BTreeSet<(String, String)>> =
    std::sync::LazyLock::new(mrdino_datasets::kitti_eval_overlap);

/// Whether a KITTI frame (`<drive>_sync/image_0X`, frame name) is a benchmark image.
fn in_eval_overlap(sequence_id: &str, frame_name: &str) -> bool {
    let drive = sequence_id.split('/').next().unwrap_or_default();
    EVAL_OVERLAP.contains(&(drive.to_string(), frame_name.to_string()))
}

/// Why each frame with a flow carries no label (`None`: labelled), and its segment.
fn exclusions(
    sequence: &Sequence,
    params: &LabelsParams,
    metas: &[FrameMeta],
    by_index: &[Option<Analysis>],
) -> Vec<(Option<ExcludedReason>, Option<u32>)> {
    let passes: Vec<bool> = by_index.iter().map(|a| a.as_ref().is_some_and(|a| a.passes)).collect();
    let segments = params.select.segments(&passes);
    let mut labelled_per_segment = BTreeMap::<u32, usize>::new();
    for (a, seg) in by_index.iter().zip(&segments) {
        if let (Some(a), Some(seg)) = (a, seg) {
            if a.enough_fg {
                *labelled_per_segment.entry(*seg).or_default() += 1;
            }
        }
    }
    let short = |seg: u32| labelled_per_segment.get(&seg).copied().unwrap_or(0) < params.instances.min_segment_frames;
    by_index
        .iter()
        .zip(segments)
        .zip(metas)
        .map(|((analysis, segment), meta)| {
            let reason = match (analysis, segment) {
                (None, _) => Some(ExcludedReason::Unreadable),
                (Some(a), _) if a.error.is_some() => Some(ExcludedReason::Unreadable),
                (Some(a), None) if !a.passes => Some(ExcludedReason::CameraMotion),
                (Some(_), None) => Some(ExcludedReason::ShortRun),
                (Some(a), Some(_)) if !a.enough_fg => Some(ExcludedReason::FgTooSmall),
                (Some(_), Some(seg)) if short(seg) => Some(ExcludedReason::ShortSegment),
                (Some(_), Some(_)) => None,
            };
            let overlap = params.exclude_eval_overlap && in_eval_overlap(&sequence.id, &meta.name);
            (if overlap { Some(ExcludedReason::EvalOverlap) } else { reason }, segment)
        })
        .collect()
}

/// Track ids and scores of the instances of the labelled frames, in row order (frame, then instance).
fn tracks_and_scores(
    by_index: &[Option<Analysis>],
    labels: &[(Option<ExcludedReason>, Option<u32>)],
    geometry: &Geometry,
) -> Result<Vec<ScoreAndTrack>, String> {
    let mut frames = Vec::new();
    for (i, (analysis, (reason, segment))) in by_index.iter().zip(labels).enumerate() {
        let (Some(a), None, Some(segment)) = (analysis, reason, segment) else {
            continue;
        };
        let mut instances = Vec::with_capacity(a.instances.len());
        for inst in &a.instances {
            let decode = |rle: &mrdino_outputs::CocoRle| rle.to_pixels().map_err(|e| e.to_string());
            instances.push(TrackedInstance {
                pixels: decode(&inst.rle)?,
                warped: decode(&inst.warped)?,
                median_flow_px: inst.median_flow_px,
            });
        }
        frames.push(TrackFrame {
            frame_index: i as u32,
            segment: *segment,
            height: geometry.height,
            width: geometry.width,
            instances,
        });
    }
    let tracks = assign_tracks(&frames, &TrackParams::default());
    let mut out = Vec::new();
    for (frame, tracked) in frames.iter().zip(&tracks) {
        let Some(a) = by_index.get(frame.frame_index as usize).and_then(Option::as_ref) else {
            continue;
        };
        for (k, inst) in a.instances.iter().enumerate() {
            out.push(ScoreAndTrack {
                score: Some(instance_score(&inst.signals, tracked.persistence(k))),
                track_id: tracked.track_ids.get(k).copied(),
            });
        }
    }
    Ok(out)
}

/// Applies the sequence-level rules and builds the rows (see the module docs).
pub fn resolve(
    sequence: &Sequence,
    params: &LabelsParams,
    metas: &[FrameMeta],
    analyses: Vec<Analysis>,
    geometry: Geometry,
) -> Result<Rows, String> {
    let n = metas.len().saturating_sub(1); // frames with a flow
    let mut by_index: Vec<Option<Analysis>> = (0..n).map(|_| None).collect();
    for a in analyses {
        if let Some(slot) = by_index.get_mut(a.index) {
            *slot = Some(a);
        }
    }
    let labels = exclusions(sequence, params, metas, &by_index);
    let scores = tracks_and_scores(&by_index, &labels, &geometry)?;
    let dataset = sequence.dataset.name().to_string();
    let mut rows = Rows {
        frames: Vec::with_capacity(n),
        instances: Vec::new(),
        scores,
    };
    for (i, ((analysis, (reason, segment)), meta)) in by_index.iter().zip(labels).zip(metas).enumerate() {
        let labelled = reason.is_none();
        let instances = analysis.as_ref().filter(|_| labelled).map_or(&[][..], |a| &a.instances[..]);
        for (k, inst) in instances.iter().enumerate() {
            rows.instances.push(InstanceRow {
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
        let g = meta.geometry.unwrap_or(geometry);
        let id = FrameId {
            dataset: dataset.clone(),
            sequence_id: sequence.id.clone(),
            frame_index: i as u32,
            frame_name: meta.name.clone(),
            source_path: meta.source_path.clone(),
        };
        rows.frames.push(FrameRow {
            quasi_static: analysis.as_ref().is_some_and(|a| a.passes),
            corner_flow_px: analysis.as_ref().and_then(|a| a.corners),
            fg_fraction: analysis.as_ref().and_then(|a| a.fg_fraction),
            labelled,
            excluded_reason: reason,
            segment,
            num_instances: instances.len() as u32,
            ..frame_row(id, &g)
        });
    }
    Ok(rows)
}
