//! COCO instances and YouTube-VIS JSON from a run's tables, at the original frame resolution.
//!
//! # What is written
//!
//! Both formats take the **labelled frames** of the done units ([`crate::runs::read_run`]); a frame without a
//! label carries no statement about its objects (the camera moved, too little motion, …), so it is left out
//! rather than written as a frame without objects. A labelled frame without instances is kept (it says "no
//! moving object here"). Masks go from the label grid to the original frame through the provenance columns
//! ([`FrameGeometry::mask_to_original`], the rule of `mrdino eval`) and are re-encoded as compressed RLE, one
//! instance at a time: `{"size": [h, w], "counts": "<pycocotools string>"}`, column-major, counts starting
//! with background, `iscrowd` 0 as CutLER writes RLE pseudo-labels. `area` and `bbox` ([x, y, w, h] in
//! pixels, the tight box) are those of the mapped mask, as pycocotools' `area` and `toBbox` compute them. An
//! instance whose mapped mask is empty (thinner than the sampling step of an upscaled grid) is left out and
//! counted in [`ExportSummary::empty_at_original`]. Every object has one category ([`Category`], by default
//! id 1 `object`): the labels find moving objects, not classes.
//!
//! `file_name` is the frame's `source_path`, relative to the dataset root the run was made from (recorded in
//! `info.dataset_root`; detectron2's `image_root`). A video frame's `source_path` (`clips/a.avi#12`) names no
//! image file, so its `file_name` is `clips/a/000012.png`: the video's path without extension, then the
//! frame name and `.png`, the files `ffmpeg -i clips/a.avi -fps_mode passthrough -start_number 0
//! clips/a/%06d.png` writes. Images also carry `sequence_id`, `frame_index` and `source_path`.
//!
//! ## COCO
//!
//! `images` in (sequence_id, frame_index) order with ids 1, 2, …; `annotations` in image order, then
//! `instance_id` order, with ids 1, 2, …, each with the extra fields `instance_id` (the row of the
//! `instances` table), and `score` / `track_id` when the table has them.
//!
//! ## YouTube-VIS
//!
//! One video per sequence with at least one labelled frame, ids 1, 2, … in sequence_id order; its
//! `file_names` are the labelled frames in frame order (loaders take every listed frame as annotated, and a
//! `null` segmentation as "the object is absent", so unlabelled frames are not listed; `frame_indices` gives
//! their positions in the sequence, gaps included). `width` and `height` are the original frame size, which
//! must be the same for all frames of a sequence. One annotation per track: instances sharing a `track_id`
//! within a sequence form one track (ascending track id), and an instance without a track id is a track of
//! its own (after the tracked ones, in frame then `instance_id` order). `segmentations`, `areas` and `bboxes`
//! hold one entry per video frame, `null` where the track is absent; `length` is the video's length,
//! `height` and `width` the frame size (TrackEval reads them); `instance_ids` gives each frame's row of the
//! `instances` table (or `null`); `score` is the mean of the track's scores when any is present; `track_id`
//! when tracked.
//!
//! Both files open with an `info` block carrying the provenance: run kind, parameter hash and parameters,
//! the done units' code versions, flow backend, table schema version, dataset and root, and how many unit
//! tables were left out as not done.
//!
//! # Memory
//!
//! The JSON is written to any [`Write`] as it is produced; a decoded mask lives only while its instance is
//! mapped, and one annotation (one track for YouTube-VIS) is built at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::atomic::{AtomicFile, OutputError};
use crate::provenance::{FrameGeometry, OriginalMask, ProvenanceError};
use crate::runs::RunTables;
use crate::tables::{FrameRow, InstanceRow, ScoreAndTrack};

/// The two formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExportFormat {
    /// COCO instances JSON (detectron2, mmdetection, CutLER).
    Coco,
    /// YouTube-VIS JSON (VideoMask2Former, VideoCutLER).
    YoutubeVis,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 2] = [Self::Coco, Self::YoutubeVis];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Coco => "coco",
            Self::YoutubeVis => "youtube-vis",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

impl std::fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The one category of every object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Category {
    pub id: u32,
    pub name: String,
    pub supercategory: String,
}

impl Default for Category {
    fn default() -> Self {
        Self {
            id: 1,
            name: "object".into(),
            supercategory: "object".into(),
        }
    }
}

/// Choices of an export.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// The dataset root the file names are relative to, recorded in `info`; default: the plan's root.
    pub dataset_root: Option<PathBuf>,
    pub category: Category,
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// COCO images, or YouTube-VIS videos.
    pub images_or_videos: usize,
    /// Frames listed (COCO: = images; YouTube-VIS: frames over all videos).
    pub frames: usize,
    /// COCO annotations (instances), or YouTube-VIS annotations (tracks).
    pub annotations: usize,
    /// Instance masks written.
    pub masks: usize,
    /// Frames of done units without a label, left out.
    pub unlabelled_frames: usize,
    /// Instances whose mask is empty at the original resolution, left out.
    pub empty_at_original: usize,
    /// Unit tables left out because their unit is not done.
    pub incomplete_units: usize,
}

/// Errors of an export; each names the sequence, frame, instance or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{sequence_id} frame {frame_name}: {source}")]
    Provenance {
        sequence_id: String,
        frame_name: String,
        source: ProvenanceError,
    },
    #[error("{sequence_id} frame {frame_index} appears twice in the frames tables")]
    DuplicateFrame { sequence_id: String, frame_index: u32 },
    #[error("{sequence_id} frame {frame_index}: instance {instance_id} has no labelled frame in the frames tables")]
    OrphanInstance {
        sequence_id: String,
        frame_index: u32,
        instance_id: u32,
    },
    #[error("{sequence_id} frame {frame_index}: two instances carry track {track_id}")]
    TrackTwiceInFrame {
        sequence_id: String,
        frame_index: u32,
        track_id: u32,
    },
    #[error(
        "{sequence_id}: frame {frame_index} is {width}x{height} but the sequence's first labelled frame is \
         {first_width}x{first_height}; a YouTube-VIS video has one size"
    )]
    VideoSizeChanges {
        sequence_id: String,
        frame_index: u32,
        width: u32,
        height: u32,
        first_width: u32,
        first_height: u32,
    },
    #[error("{first} and {second} would both be written as image `{file_name}`")]
    DuplicateFileName {
        file_name: String,
        first: String,
        second: String,
    },
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    #[error(transparent)]
    Output(#[from] OutputError),
}

impl From<serde_json::Error> for ExportError {
    fn from(e: serde_json::Error) -> Self {
        Self::Write(e.into())
    }
}

/// The image file of a frame, relative to the dataset root (see the module doc for video frames).
pub fn image_file_name(frame: &FrameRow) -> String {
    match frame.source_path.rsplit_once('#') {
        Some((video, index)) if index == frame.frame_index.to_string() => {
            let stem = match video.rsplit_once('.') {
                Some((stem, ext)) if !ext.contains('/') && !stem.is_empty() && !stem.ends_with('/') => stem,
                _ => video,
            };
            format!("{stem}/{}.png", frame.frame_name)
        }
        _ => frame.source_path.clone(),
    }
}

/// The run's rows arranged for export: labelled frames in (sequence_id, frame_index) order, each with its
/// instances in `instance_id` order.
struct Arranged<'a> {
    frames: Vec<&'a FrameRow>,
    /// Indices into the run's instances, per frame of `frames`.
    instances: Vec<Vec<usize>>,
    unlabelled: usize,
}

fn arrange(run: &RunTables) -> Result<Arranged<'_>, ExportError> {
    let mut by_key: BTreeMap<(&str, u32), &FrameRow> = BTreeMap::new();
    let mut unlabelled = 0;
    for frame in &run.frames {
        if !frame.labelled {
            unlabelled += 1;
            continue;
        }
        if by_key
            .insert((frame.sequence_id.as_str(), frame.frame_index), frame)
            .is_some()
        {
            return Err(ExportError::DuplicateFrame {
                sequence_id: frame.sequence_id.clone(),
                frame_index: frame.frame_index,
            });
        }
    }
    let position: BTreeMap<(&str, u32), usize> = by_key.keys().enumerate().map(|(i, k)| (*k, i)).collect();
    let mut instances = vec![Vec::new(); position.len()];
    for (i, inst) in run.instances.iter().enumerate() {
        let slot = position
            .get(&(inst.sequence_id.as_str(), inst.frame_index))
            .ok_or_else(|| ExportError::OrphanInstance {
                sequence_id: inst.sequence_id.clone(),
                frame_index: inst.frame_index,
                instance_id: inst.instance_id,
            })?;
        instances[*slot].push(i);
    }
    for list in &mut instances {
        list.sort_by_key(|&i| run.instances[i].instance_id);
    }
    Ok(Arranged {
        frames: by_key.into_values().collect(),
        instances,
        unlabelled,
    })
}

/// An instance's mask at the original resolution.
fn map_instance(frame: &FrameRow, instance: &InstanceRow) -> Result<OriginalMask, ExportError> {
    FrameGeometry::of(frame)
        .mask_to_original(&instance.mask)
        .map_err(|source| ExportError::Provenance {
            sequence_id: frame.sequence_id.clone(),
            frame_name: frame.frame_name.clone(),
            source,
        })
}

#[derive(Serialize)]
struct Segmentation<'a> {
    size: [u32; 2],
    counts: &'a str,
}

impl<'a> From<&'a OriginalMask> for Segmentation<'a> {
    fn from(mask: &'a OriginalMask) -> Self {
        Self {
            size: [mask.rle.height, mask.rle.width],
            counts: &mask.rle.counts,
        }
    }
}

/// The `info` block of both formats.
fn info(run: &RunTables, options: &ExportOptions, format: ExportFormat) -> serde_json::Value {
    let root = options.dataset_root.as_deref().unwrap_or(&run.dataset_root);
    let meta = |key: &str| run.file_metadata.get(key).cloned();
    serde_json::json!({
        "description": format!("mrdino {} ({}), masks at the original frame resolution", run.kind, format),
        "version": run.code_versions.join(", "),
        "kind": run.kind.name(),
        "params_hash": run.params_hash(),
        "params": run.params,
        "code_versions": run.code_versions,
        "flow": meta("mrdino.flow"),
        "flow_weights_sha256": meta("mrdino.flow_weights_sha256"),
        "schema_version": meta("mrdino.schema_version"),
        "dataset": run.dataset,
        "dataset_root": root.to_string_lossy(),
        "incomplete_units_left_out": run.incomplete_units.len(),
    })
}

/// Writes `"key":` then the value.
fn field<W: Write, T: Serialize + ?Sized>(out: &mut W, key: &str, value: &T) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, key)?;
    out.write_all(b":")?;
    serde_json::to_writer(&mut *out, value)?;
    Ok(())
}

/// Writes the elements of a JSON array, comma-separated, one per line.
struct ArrayWriter {
    first: bool,
}

impl ArrayWriter {
    fn open<W: Write>(out: &mut W, key: &str) -> Result<Self, ExportError> {
        serde_json::to_writer(&mut *out, key)?;
        out.write_all(b":[")?;
        Ok(Self { first: true })
    }

    fn push<W: Write, T: Serialize>(&mut self, out: &mut W, value: &T) -> Result<(), ExportError> {
        out.write_all(if self.first { b"\n" } else { b",\n" })?;
        self.first = false;
        serde_json::to_writer(&mut *out, value)?;
        Ok(())
    }

    fn close<W: Write>(self, out: &mut W) -> Result<(), ExportError> {
        out.write_all(b"]")?;
        Ok(())
    }
}

#[derive(Serialize)]
struct CocoImage<'a> {
    id: usize,
    file_name: String,
    width: u32,
    height: u32,
    sequence_id: &'a str,
    frame_index: u32,
    source_path: &'a str,
}

#[derive(Serialize)]
struct CocoAnnotation<'a> {
    id: usize,
    image_id: usize,
    category_id: u32,
    segmentation: Segmentation<'a>,
    area: u64,
    bbox: [u32; 4],
    iscrowd: u8,
    instance_id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    track_id: Option<u32>,
}

/// Refuses two frames that would share an image file name.
fn check_file_names<'a>(frames: impl Iterator<Item = (&'a FrameRow, String)>) -> Result<(), ExportError> {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (frame, name) in frames {
        let who = format!("{} frame {}", frame.sequence_id, frame.frame_index);
        if let Some(first) = seen.insert(name.clone(), who.clone()) {
            return Err(ExportError::DuplicateFileName {
                file_name: name,
                first,
                second: who,
            });
        }
    }
    Ok(())
}

/// Writes the COCO instances JSON of a run (see the module doc).
pub fn write_coco<W: Write>(
    run: &RunTables,
    options: &ExportOptions,
    mut out: W,
) -> Result<ExportSummary, ExportError> {
    let arranged = arrange(run)?;
    check_file_names(arranged.frames.iter().map(|f| (*f, image_file_name(f))))?;
    let mut summary = ExportSummary {
        unlabelled_frames: arranged.unlabelled,
        incomplete_units: run.incomplete_units.len(),
        ..ExportSummary::default()
    };
    out.write_all(b"{")?;
    field(&mut out, "info", &info(run, options, ExportFormat::Coco))?;
    out.write_all(b",\n")?;
    let mut images = ArrayWriter::open(&mut out, "images")?;
    for (i, frame) in arranged.frames.iter().enumerate() {
        images.push(
            &mut out,
            &CocoImage {
                id: i + 1,
                file_name: image_file_name(frame),
                width: frame.orig_width,
                height: frame.orig_height,
                sequence_id: &frame.sequence_id,
                frame_index: frame.frame_index,
                source_path: &frame.source_path,
            },
        )?;
    }
    images.close(&mut out)?;
    out.write_all(b",\n")?;
    let mut annotations = ArrayWriter::open(&mut out, "annotations")?;
    for (i, (frame, members)) in arranged.frames.iter().zip(&arranged.instances).enumerate() {
        for &k in members {
            let instance = &run.instances[k];
            let mask = map_instance(frame, instance)?;
            let Some(bbox) = mask.bbox_xywh else {
                summary.empty_at_original += 1;
                continue;
            };
            let ScoreAndTrack { score, track_id } = run.scores.get(k).copied().unwrap_or_default();
            summary.annotations += 1;
            annotations.push(
                &mut out,
                &CocoAnnotation {
                    id: summary.annotations,
                    image_id: i + 1,
                    category_id: options.category.id,
                    segmentation: Segmentation::from(&mask),
                    area: mask.area_px,
                    bbox,
                    iscrowd: 0,
                    instance_id: instance.instance_id,
                    score,
                    track_id,
                },
            )?;
        }
    }
    annotations.close(&mut out)?;
    out.write_all(b",\n")?;
    field(&mut out, "categories", &[&options.category])?;
    out.write_all(b"}\n")?;
    out.flush()?;
    summary.images_or_videos = arranged.frames.len();
    summary.frames = arranged.frames.len();
    summary.masks = summary.annotations;
    Ok(summary)
}

#[derive(Serialize)]
struct VisVideo<'a> {
    id: usize,
    width: u32,
    height: u32,
    length: usize,
    file_names: Vec<String>,
    sequence_id: &'a str,
    frame_indices: Vec<u32>,
}

#[derive(Serialize)]
struct VisAnnotation<'a> {
    id: usize,
    video_id: usize,
    category_id: u32,
    segmentations: Vec<Option<Segmentation<'a>>>,
    areas: Vec<Option<u64>>,
    bboxes: Vec<Option<[u32; 4]>>,
    iscrowd: u8,
    length: usize,
    height: u32,
    width: u32,
    instance_ids: Vec<Option<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    track_id: Option<u32>,
}

/// One track of a video: (position of the frame in the video, instance index) pairs in frame order.
struct Track {
    track_id: Option<u32>,
    members: Vec<(usize, usize)>,
}

/// The tracks of one video, tracked first (ascending id), then one per untracked instance.
fn tracks_of(run: &RunTables, frames: &[&FrameRow], instances: &[Vec<usize>]) -> Result<Vec<Track>, ExportError> {
    let mut tracked: BTreeMap<u32, Vec<(usize, usize)>> = BTreeMap::new();
    let mut untracked = Vec::new();
    for (position, members) in instances.iter().enumerate() {
        let mut in_frame = BTreeSet::new();
        for &k in members {
            match run.scores.get(k).and_then(|s| s.track_id) {
                Some(id) => {
                    if !in_frame.insert(id) {
                        return Err(ExportError::TrackTwiceInFrame {
                            sequence_id: frames[position].sequence_id.clone(),
                            frame_index: frames[position].frame_index,
                            track_id: id,
                        });
                    }
                    tracked.entry(id).or_default().push((position, k));
                }
                None => untracked.push(Track {
                    track_id: None,
                    members: vec![(position, k)],
                }),
            }
        }
    }
    let mut tracks: Vec<Track> = tracked
        .into_iter()
        .map(|(id, members)| Track {
            track_id: Some(id),
            members,
        })
        .collect();
    tracks.extend(untracked);
    Ok(tracks)
}

/// Writes the YouTube-VIS JSON of a run (see the module doc).
pub fn write_youtube_vis<W: Write>(
    run: &RunTables,
    options: &ExportOptions,
    mut out: W,
) -> Result<ExportSummary, ExportError> {
    let arranged = arrange(run)?;
    check_file_names(arranged.frames.iter().map(|f| (*f, image_file_name(f))))?;
    // Videos: runs of consecutive arranged frames with one sequence id.
    let mut videos: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, frame) in arranged.frames.iter().enumerate() {
        match videos.last_mut() {
            Some(v) if arranged.frames[v.start].sequence_id == frame.sequence_id => v.end = i + 1,
            _ => videos.push(i..i + 1),
        }
    }
    for video in &videos {
        let first = arranged.frames[video.start];
        if let Some(other) = arranged.frames[video.clone()]
            .iter()
            .find(|f| (f.orig_width, f.orig_height) != (first.orig_width, first.orig_height))
        {
            return Err(ExportError::VideoSizeChanges {
                sequence_id: other.sequence_id.clone(),
                frame_index: other.frame_index,
                width: other.orig_width,
                height: other.orig_height,
                first_width: first.orig_width,
                first_height: first.orig_height,
            });
        }
    }
    let mut summary = ExportSummary {
        images_or_videos: videos.len(),
        frames: arranged.frames.len(),
        unlabelled_frames: arranged.unlabelled,
        incomplete_units: run.incomplete_units.len(),
        ..ExportSummary::default()
    };
    out.write_all(b"{")?;
    field(&mut out, "info", &info(run, options, ExportFormat::YoutubeVis))?;
    out.write_all(b",\n")?;
    let mut list = ArrayWriter::open(&mut out, "videos")?;
    for (v, video) in videos.iter().enumerate() {
        let frames = &arranged.frames[video.clone()];
        list.push(
            &mut out,
            &VisVideo {
                id: v + 1,
                width: frames[0].orig_width,
                height: frames[0].orig_height,
                length: frames.len(),
                file_names: frames.iter().map(|f| image_file_name(f)).collect(),
                sequence_id: &frames[0].sequence_id,
                frame_indices: frames.iter().map(|f| f.frame_index).collect(),
            },
        )?;
    }
    list.close(&mut out)?;
    out.write_all(b",\n")?;
    let mut list = ArrayWriter::open(&mut out, "annotations")?;
    for (v, video) in videos.iter().enumerate() {
        let frames = &arranged.frames[video.clone()];
        let length = frames.len();
        for track in tracks_of(run, frames, &arranged.instances[video.clone()])? {
            let mut masks: Vec<Option<OriginalMask>> = vec![None; length];
            let mut instance_ids = vec![None; length];
            let mut scores = Vec::new();
            for &(position, k) in &track.members {
                let mask = map_instance(frames[position], &run.instances[k])?;
                if mask.area_px == 0 {
                    summary.empty_at_original += 1;
                    continue;
                }
                scores.extend(run.scores.get(k).and_then(|s| s.score));
                masks[position] = Some(mask);
                instance_ids[position] = Some(run.instances[k].instance_id);
            }
            let present = masks.iter().flatten().count();
            if present == 0 {
                continue;
            }
            summary.masks += present;
            summary.annotations += 1;
            let score =
                (!scores.is_empty()).then(|| scores.iter().map(|&s| f64::from(s)).sum::<f64>() / scores.len() as f64);
            list.push(
                &mut out,
                &VisAnnotation {
                    id: summary.annotations,
                    video_id: v + 1,
                    category_id: options.category.id,
                    segmentations: masks.iter().map(|m| m.as_ref().map(Segmentation::from)).collect(),
                    areas: masks.iter().map(|m| m.as_ref().map(|m| m.area_px)).collect(),
                    bboxes: masks.iter().map(|m| m.as_ref().and_then(|m| m.bbox_xywh)).collect(),
                    iscrowd: 0,
                    length,
                    height: frames[0].orig_height,
                    width: frames[0].orig_width,
                    instance_ids,
                    score,
                    track_id: track.track_id,
                },
            )?;
        }
    }
    list.close(&mut out)?;
    out.write_all(b",\n")?;
    field(&mut out, "categories", &[&options.category])?;
    out.write_all(b"}\n")?;
    out.flush()?;
    Ok(summary)
}

/// Writes a run's export to `path` atomically (a reader never sees a partial file).
pub fn export_file(
    run: &RunTables,
    format: ExportFormat,
    options: &ExportOptions,
    path: &Path,
) -> Result<ExportSummary, ExportError> {
    let mut file = AtomicFile::create(path)?;
    let summary = match format {
        ExportFormat::Coco => write_coco(run, options, &mut file),
        ExportFormat::YoutubeVis => write_youtube_vis(run, options, &mut file),
    }
    .map_err(|e| match e {
        ExportError::Write(source) => ExportError::Output(OutputError::io(path, source)),
        other => other,
    })?;
    file.commit()?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::runs::tests::{frame_row, instance_row};
    use crate::runs::RunKind;

    fn run_of(frames: Vec<FrameRow>, instances: Vec<InstanceRow>, scores: Vec<ScoreAndTrack>) -> RunTables {
        RunTables {
            layout: Layout::new(Path::new("/out"), "h"),
            kind: RunKind::Labels,
            params: serde_json::json!({"k": 1}),
            dataset: "frames".into(),
            dataset_root: PathBuf::from("/data"),
            code_versions: vec!["v1".into()],
            file_metadata: [("mrdino.flow".to_string(), "dis".to_string())].into_iter().collect(),
            frames,
            instances,
            scores,
            incomplete_units: Vec::new(),
            corrupt_units: Vec::new(),
            passed_over: Vec::new(),
        }
    }

    fn export(run: &RunTables, format: ExportFormat) -> Result<serde_json::Value, ExportError> {
        let mut bytes = Vec::new();
        match format {
            ExportFormat::Coco => write_coco(run, &ExportOptions::default(), &mut bytes)?,
            ExportFormat::YoutubeVis => write_youtube_vis(run, &ExportOptions::default(), &mut bytes)?,
        };
        Ok(serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn video_frames_get_the_file_names_ffmpeg_writes() {
        let mut f = frame_row("clips/a", 12, true);
        f.source_path = "clips/a.avi#12".into();
        assert_eq!(image_file_name(&f), "clips/a/000012.png");
        f.source_path = "dir.v2/clip#12".into();
        assert_eq!(image_file_name(&f), "dir.v2/clip/000012.png");
        // Not this frame's index: an image file whose name holds a `#`.
        f.source_path = "shots/take#3.png".into();
        assert_eq!(image_file_name(&f), "shots/take#3.png");
        assert_eq!(image_file_name(&frame_row("s", 4, true)), "s/000004.png");
    }

    #[test]
    fn ids_follow_sequence_frame_and_instance_order_and_the_output_is_deterministic() {
        // Frames and instances given out of order, as two units in plan order could be.
        let frames = vec![
            frame_row("b", 1, true),
            frame_row("a", 2, true),
            frame_row("a", 1, false),
            frame_row("a", 0, true),
        ];
        let instances = vec![
            instance_row("b", 1, 1, &[0]),
            instance_row("a", 2, 2, &[1]),
            instance_row("a", 2, 1, &[14, 15]),
            instance_row("a", 0, 1, &[21]),
        ];
        let scores = vec![
            ScoreAndTrack::default(),
            ScoreAndTrack {
                score: Some(0.5),
                track_id: Some(9),
            },
            ScoreAndTrack::default(),
            ScoreAndTrack {
                score: Some(0.25),
                track_id: Some(9),
            },
        ];
        let run = run_of(frames, instances, scores);
        let coco = export(&run, ExportFormat::Coco).unwrap();
        let images: Vec<(u64, &str, u64)> = coco["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["id"].as_u64().unwrap(),
                    i["sequence_id"].as_str().unwrap(),
                    i["frame_index"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(images, [(1, "a", 0), (2, "a", 2), (3, "b", 1)]);
        let anns: Vec<(u64, u64, u64)> = coco["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["id"].as_u64().unwrap(),
                    a["image_id"].as_u64().unwrap(),
                    a["instance_id"].as_u64().unwrap(),
                )
            })
            .collect();
        // Grid pixel 0 (row 0, column 0) is cropped away by the test geometry: "b" frame 1 has no annotation.
        assert_eq!(anns, [(1, 1, 1), (2, 2, 1), (3, 2, 2)]);
        assert_eq!(coco["annotations"][2]["score"], 0.5);
        assert_eq!(coco["annotations"][2]["track_id"], 9);
        assert!(coco["annotations"][1].get("score").is_none() && coco["annotations"][1].get("track_id").is_none());
        assert_eq!(coco["info"]["params_hash"], "h");
        assert_eq!(coco["info"]["flow"], "dis");
        assert_eq!(coco["info"]["dataset_root"], "/data");
        assert_eq!(
            coco["categories"],
            serde_json::json!([{"id": 1, "name": "object", "supercategory": "object"}])
        );

        let vis = export(&run, ExportFormat::YoutubeVis).unwrap();
        let videos = vis["videos"].as_array().unwrap();
        assert_eq!(videos.len(), 2);
        assert_eq!(
            videos[0]["file_names"],
            serde_json::json!(["a/000000.png", "a/000002.png"])
        );
        assert_eq!(videos[0]["frame_indices"], serde_json::json!([0, 2]));
        // Video "a": track 9 (frames 0 and 2, score the mean), then the untracked instance 1 of frame 2.
        let track = &vis["annotations"][0];
        assert_eq!(
            (track["video_id"].as_u64(), track["track_id"].as_u64()),
            (Some(1), Some(9))
        );
        assert_eq!(track["instance_ids"], serde_json::json!([1, 2]));
        assert_eq!(track["score"], 0.375);
        assert_eq!(track["length"], 2);
        let single = &vis["annotations"][1];
        assert_eq!(single["instance_ids"], serde_json::json!([null, 1]));
        assert_eq!(single["segmentations"][0], serde_json::Value::Null);
        assert_eq!(vis["annotations"].as_array().unwrap().len(), 2);

        let bytes = |run: &RunTables| {
            let mut out = Vec::new();
            write_youtube_vis(run, &ExportOptions::default(), &mut out).unwrap();
            out
        };
        assert_eq!(bytes(&run), bytes(&run));
    }

    #[test]
    fn inconsistent_runs_are_errors_naming_the_frame() {
        let tracked = ScoreAndTrack {
            score: None,
            track_id: Some(4),
        };
        let twice = run_of(
            vec![frame_row("s", 1, true)],
            vec![instance_row("s", 1, 1, &[7]), instance_row("s", 1, 2, &[8])],
            vec![tracked; 2],
        );
        let err = export(&twice, ExportFormat::YoutubeVis).unwrap_err();
        assert_eq!(err.to_string(), "s frame 1: two instances carry track 4");
        assert!(export(&twice, ExportFormat::Coco).is_ok());

        let mut bigger = frame_row("s", 2, true);
        bigger.orig_width += 1;
        let sizes = run_of(vec![frame_row("s", 1, true), bigger], Vec::new(), Vec::new());
        let err = export(&sizes, ExportFormat::YoutubeVis).unwrap_err().to_string();
        assert!(err.contains("s: frame 2 is 8x5") && err.contains("7x5"), "{err}");

        let orphan = run_of(
            vec![frame_row("s", 1, false)],
            vec![instance_row("s", 1, 3, &[7])],
            vec![ScoreAndTrack::default()],
        );
        let err = export(&orphan, ExportFormat::Coco).unwrap_err().to_string();
        assert_eq!(err, "s frame 1: instance 3 has no labelled frame in the frames tables");

        let twice = run_of(
            vec![frame_row("s", 1, true), frame_row("s", 1, true)],
            Vec::new(),
            Vec::new(),
        );
        assert!(matches!(
            export(&twice, ExportFormat::Coco),
            Err(ExportError::DuplicateFrame { .. })
        ));

        let mut unreadable = frame_row("s", 1, true);
        unreadable.orig_height = 0;
        let run = run_of(
            vec![unreadable],
            vec![instance_row("s", 1, 1, &[7])],
            vec![ScoreAndTrack::default()],
        );
        let err = export(&run, ExportFormat::Coco).unwrap_err().to_string();
        assert!(err.starts_with("s frame 000001: no provenance"), "{err}");
    }
}
