//! Ground truth of moving objects, read as `mrdino eval` (and `mrdino analyze --gt`) compares it with a run's
//! frames: where each layout keeps the id map of a frame, how its values become instance ids, and how a map at
//! the original frame size is brought to the label grid.
//!
//! Layouts ([`GtFormat`]; the serde names are the names of `--gt-format` and of the `gt_format` field of
//! `eval`'s JSON):
//! * `synth` — a `mrdino synth` directory: `instances/<seq>/<frame>.png` restricted to the objects that
//!   `meta/<seq>.json` marks as moving from that frame to the next. Pseudo-labels claim only moving objects,
//!   so a parked object counts as background, not as a missed instance. The metadata's static-camera flags
//!   ([`GroundTruth::camera_static`]) also score the quasi-static selection.
//! * `kitti` — KITTI instance-benchmark PNGs (`class·256 + instance`, decoded by
//!   [`decode_kitti_instances`]) at `DIR/<sequence_id>/<frame_name>.png`.
//! * `ids` — any single-channel 8- or 16-bit id PNG (0 = background) at `DIR/<sequence_id>/<frame_name>.png`.
//! * `tri-pd` — TRI-PD evaluation label PNGs at `DIR/<sequence_id>/<frame_name>.png`, converted as the
//!   reference converts them ([`tri_pd_ground_truth`]: 968×608 nearest, top 128 rows cropped, ids below 500 px
//!   removed, renumbered).
//! * `kubric` (alias `movi-e` on the command line) — `segmentation_XXXXX.png` beside each `rgba_XXXXX.png`
//!   frame (all objects, moving or not; DIR = the dataset root).
//!
//! Ground truth and labels can live at different resolutions ([`to_label_frame`]). Ground truth at the label
//! grid is used as is; ground truth at the original frame size is used as is when the labels only resized the
//! frame (an evaluation preset brings both to the evaluation resolution as the reference does), and goes
//! through the same resize (legacy nearest) and crop as the frames when the labels cropped them (TRI-PD), so
//! both cover the same pixels. Any other size is an error naming the file.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mrdino_datasets::decode::read_unchanged;
use mrdino_datasets::DatasetError;
use mrdino_outputs::FrameRow;
use opencv::core::{CV_16U, CV_8U};
use opencv::prelude::*;
use serde::{Deserialize, Serialize};

use crate::metrics::{decode_kitti_instances, tri_pd_ground_truth, LabelMap, MetricsError};

/// Ground-truth layouts (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GtFormat {
    Synth,
    Kitti,
    Ids,
    #[serde(rename = "tri-pd")]
    TriPd,
    Kubric,
}

impl GtFormat {
    pub const ALL: [GtFormat; 5] = [Self::Synth, Self::Kitti, Self::Ids, Self::TriPd, Self::Kubric];

    /// The name of the format (its serde name).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Synth => "synth",
            Self::Kitti => "kitti",
            Self::Ids => "ids",
            Self::TriPd => "tri-pd",
            Self::Kubric => "kubric",
        }
    }

    /// A format by its name, or `movi-e` (Kubric's MOVi-E scenes).
    pub fn parse(name: &str) -> Option<Self> {
        if name == "movi-e" {
            return Some(Self::Kubric);
        }
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Errors of reading ground truth, each naming the file or directory at fault.
#[derive(Debug, thiserror::Error)]
pub enum GroundTruthError {
    #[error("ground-truth directory {0} does not exist")]
    NoDirectory(PathBuf),
    #[error("{0} is not a `mrdino synth` directory (no meta/ inside)")]
    NotSynth(PathBuf),
    #[error("no synth metadata for sequence {sequence}: cannot read {path}: {source}")]
    NoMeta {
        sequence: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not synth metadata: {message}")]
    BadMeta { path: PathBuf, message: String },
    #[error("synth metadata of {sequence} has no frame {frame}")]
    NoMetaFrame { sequence: String, frame: String },
    #[error(transparent)]
    Read(#[from] DatasetError),
    #[error("{path}: {channels} channels; ground-truth id images must have one")]
    Channels { path: PathBuf, channels: i32 },
    #[error("{path}: pixel depth {depth} is neither 8- nor 16-bit unsigned")]
    Depth { path: PathBuf, depth: i32 },
    #[error("{path}: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Map { path: PathBuf, source: MetricsError },
    #[error(
        "{path}: ground truth is {gt_height}x{gt_width} (HxW) but frame {frame} of {sequence} is \
         {orig_height}x{orig_width} (labels {height}x{width})"
    )]
    Size {
        path: PathBuf,
        gt_height: usize,
        gt_width: usize,
        frame: String,
        sequence: String,
        orig_height: u32,
        orig_width: u32,
        height: u32,
        width: u32,
    },
    #[error("{path}: the crop of frame {frame} of {sequence} lies outside the resized frame")]
    Crop {
        path: PathBuf,
        frame: String,
        sequence: String,
    },
}

/// What `meta/<seq>.json` of a synth directory says about the frames of a sequence.
#[derive(Deserialize)]
struct SynthMeta {
    frames: Vec<SynthFrameMeta>,
}

/// What the synth metadata says about one frame.
#[derive(Deserialize)]
pub struct SynthFrameMeta {
    pub frame: String,
    /// The camera's motion to the next frame (`None` on the last frame).
    pub camera: Option<SynthCamera>,
    pub objects: Vec<SynthObject>,
}

#[derive(Deserialize)]
pub struct SynthCamera {
    #[serde(rename = "static")]
    pub is_static: bool,
}

#[derive(Deserialize)]
pub struct SynthObject {
    pub id: u32,
    /// Whether the object moves to the next frame (`None` on the last frame).
    pub moving: Option<bool>,
}

/// A single-channel 8- or 16-bit PNG as (height, width, values).
pub fn read_id_png(path: &Path) -> Result<(usize, usize, Vec<u16>), GroundTruthError> {
    let mat = read_unchanged(path)?;
    if mat.channels() != 1 {
        return Err(GroundTruthError::Channels {
            path: path.to_path_buf(),
            channels: mat.channels(),
        });
    }
    let decode = |e: opencv::Error| GroundTruthError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let (height, width) = (mat.rows() as usize, mat.cols() as usize);
    let mat = if mat.is_continuous() { mat } else { mat.try_clone().map_err(decode)? };
    let values: Vec<u16> = match mat.depth() {
        CV_8U => mat.data_typed::<u8>().map_err(decode)?.iter().map(|&v| u16::from(v)).collect(),
        CV_16U => mat.data_typed::<u16>().map_err(decode)?.to_vec(),
        depth => {
            return Err(GroundTruthError::Depth {
                path: path.to_path_buf(),
                depth,
            })
        }
    };
    Ok((height, width, values))
}

/// A ground-truth directory of one layout, with the synth metadata read so far (per sequence).
pub struct GroundTruth {
    dir: PathBuf,
    format: GtFormat,
    synth_meta: HashMap<String, BTreeMap<String, SynthFrameMeta>>,
}

impl GroundTruth {
    /// Refuses a directory that does not exist, and a synth layout without `meta/`.
    pub fn new(dir: &Path, format: GtFormat) -> Result<Self, GroundTruthError> {
        if !dir.is_dir() {
            return Err(GroundTruthError::NoDirectory(dir.to_path_buf()));
        }
        if format == GtFormat::Synth && !dir.join("meta").is_dir() {
            return Err(GroundTruthError::NotSynth(dir.to_path_buf()));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            format,
            synth_meta: HashMap::new(),
        })
    }

    pub fn format(&self) -> GtFormat {
        self.format
    }

    /// The file holding the ground truth of `frame` (whether it exists or not).
    pub fn file(&self, frame: &FrameRow) -> PathBuf {
        let base = match self.format {
            GtFormat::Synth => self.dir.join("instances"),
            GtFormat::Kitti | GtFormat::Ids | GtFormat::TriPd | GtFormat::Kubric => self.dir.clone(),
        };
        let name = match self.format {
            GtFormat::Kubric => {
                let number = frame.frame_name.strip_prefix("rgba_").unwrap_or(&frame.frame_name);
                format!("segmentation_{number}.png")
            }
            _ => format!("{}.png", frame.frame_name),
        };
        base.join(&frame.sequence_id).join(name)
    }

    /// The synth metadata of a sequence, frames by name (read once per sequence).
    fn meta(&mut self, sequence_id: &str) -> Result<&BTreeMap<String, SynthFrameMeta>, GroundTruthError> {
        let entry = match self.synth_meta.entry(sequence_id.to_string()) {
            Entry::Occupied(entry) => return Ok(entry.into_mut()),
            Entry::Vacant(entry) => entry,
        };
        let path = self.dir.join("meta").join(format!("{sequence_id}.json"));
        let bytes = std::fs::read(&path).map_err(|source| GroundTruthError::NoMeta {
            sequence: sequence_id.to_string(),
            path: path.clone(),
            source,
        })?;
        let meta: SynthMeta = serde_json::from_slice(&bytes).map_err(|e| GroundTruthError::BadMeta {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(entry.insert(meta.frames.into_iter().map(|f| (f.frame.clone(), f)).collect()))
    }

    /// The synth metadata of one frame.
    pub fn frame_meta(&mut self, frame: &FrameRow) -> Result<&SynthFrameMeta, GroundTruthError> {
        let meta = self.meta(&frame.sequence_id)?;
        meta.get(&frame.frame_name).ok_or_else(|| GroundTruthError::NoMetaFrame {
            sequence: frame.sequence_id.clone(),
            frame: frame.frame_name.clone(),
        })
    }

    /// The ground-truth id map of a frame in the label grid's frame of reference ([`to_label_frame`]), or `None`
    /// when its file is missing.
    pub fn load(&mut self, frame: &FrameRow) -> Result<Option<LabelMap>, GroundTruthError> {
        let Some((map, path)) = self.load_decoded(frame)? else {
            return Ok(None);
        };
        Ok(Some(to_label_frame(map, frame, &path)?))
    }

    /// The ground-truth id map of a frame as decoded (TRI-PD: after the reference's conversion), before any
    /// resize to a label grid, with its file; `None` when the file is missing.
    pub fn load_decoded(&mut self, frame: &FrameRow) -> Result<Option<(LabelMap, PathBuf)>, GroundTruthError> {
        let path = self.file(frame);
        if !path.is_file() {
            return Ok(None);
        }
        let (height, width, values) = read_id_png(&path)?;
        let labels: Vec<u32> = match self.format {
            GtFormat::Kitti => decode_kitti_instances(&values),
            GtFormat::Ids | GtFormat::Kubric | GtFormat::TriPd => values.into_iter().map(u32::from).collect(),
            GtFormat::Synth => {
                let meta = self.frame_meta(frame)?;
                let moving: Vec<u32> = meta
                    .objects
                    .iter()
                    .filter(|o| o.moving == Some(true))
                    .map(|o| o.id)
                    .collect();
                values
                    .into_iter()
                    .map(|v| if moving.contains(&u32::from(v)) { u32::from(v) } else { 0 })
                    .collect()
            }
        };
        let in_file = |source: MetricsError| GroundTruthError::Map {
            path: path.clone(),
            source,
        };
        let map = LabelMap::new(height, width, labels).map_err(in_file)?;
        let map = if self.format == GtFormat::TriPd {
            tri_pd_ground_truth(&map).map_err(in_file)?
        } else {
            map
        };
        Ok(Some((map, path)))
    }

    /// Whether the camera is static from this frame to the next (synth only; `None` on the last frame).
    pub fn camera_static(&mut self, frame: &FrameRow) -> Result<Option<bool>, GroundTruthError> {
        Ok(self.frame_meta(frame)?.camera.as_ref().map(|c| c.is_static))
    }
}

/// Brings ground truth loaded at its own size (from `path`) into the label grid's frame of reference (see the
/// module docs).
pub fn to_label_frame(gt: LabelMap, frame: &FrameRow, path: &Path) -> Result<LabelMap, GroundTruthError> {
    let size = (gt.height as u32, gt.width as u32);
    if size == (frame.height, frame.width) {
        return Ok(gt);
    }
    if size != (frame.orig_height, frame.orig_width) {
        return Err(GroundTruthError::Size {
            path: path.to_path_buf(),
            gt_height: gt.height,
            gt_width: gt.width,
            frame: frame.frame_name.clone(),
            sequence: frame.sequence_id.clone(),
            orig_height: frame.orig_height,
            orig_width: frame.orig_width,
            height: frame.height,
            width: frame.width,
        });
    }
    let cropped = (frame.resized_height, frame.resized_width) != (frame.height, frame.width)
        || frame.crop_top != 0
        || frame.crop_left != 0;
    if !cropped {
        return Ok(gt);
    }
    let in_file = |source: MetricsError| GroundTruthError::Map {
        path: path.to_path_buf(),
        source,
    };
    let resized = gt
        .resize_legacy_nearest(frame.resized_height as usize, frame.resized_width as usize)
        .map_err(in_file)?;
    let (top, left) = (frame.crop_top as usize, frame.crop_left as usize);
    let (height, width) = (frame.height as usize, frame.width as usize);
    if top + height > resized.height || left + width > resized.width {
        return Err(GroundTruthError::Crop {
            path: path.to_path_buf(),
            frame: frame.frame_name.clone(),
            sequence: frame.sequence_id.clone(),
        });
    }
    let labels = (top..top + height)
        .flat_map(|r| resized.labels[r * resized.width + left..r * resized.width + left + width].iter().copied())
        .collect();
    LabelMap::new(height, width, labels).map_err(in_file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame_rows::test_frame as frame;

    #[test]
    fn formats_keep_their_names_and_movi_e_is_kubric() {
        for format in GtFormat::ALL {
            assert_eq!(GtFormat::parse(format.name()), Some(format));
            assert_eq!(serde_json::to_value(format).unwrap(), format.name());
        }
        assert_eq!(GtFormat::parse("movi-e"), Some(GtFormat::Kubric));
        assert_eq!(GtFormat::parse("coco"), None);
    }

    #[test]
    fn ground_truth_is_cropped_like_the_frames_and_other_sizes_are_refused() {
        // Original 4×6 resized to 8×12 and cropped at (2, 3) to the 4×5 label grid.
        let mut row = frame(4, 5);
        (row.orig_height, row.orig_width) = (4, 6);
        (row.resized_height, row.resized_width, row.crop_top, row.crop_left) = (8, 12, 2, 3);
        let gt = LabelMap::new(4, 6, (0..24).collect()).unwrap();
        let path = Path::new("gt/s/000000.png");
        let mapped = to_label_frame(gt.clone(), &row, path).unwrap();
        // Legacy nearest doubles: label-grid pixel (y, x) is original ((y + 2) / 2, (x + 3) / 2).
        assert_eq!((mapped.height, mapped.width), (4, 5));
        assert_eq!(mapped.labels[..5], [7, 8, 8, 9, 9]);
        let other = LabelMap::new(3, 6, vec![0; 18]).unwrap();
        let err = to_label_frame(other, &row, path).unwrap_err().to_string();
        assert!(err.contains("gt/s/000000.png") && err.contains("3x6"), "{err}");
        // At the label grid it is used as is.
        let grid = LabelMap::new(4, 6, vec![1; 24]).unwrap();
        assert_eq!(to_label_frame(grid.clone(), &frame(4, 6), path).unwrap(), grid);
    }

    #[test]
    fn a_missing_directory_or_synth_metadata_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = GroundTruth::new(&missing, GtFormat::Ids).err().unwrap().to_string();
        assert!(err.contains("nope"), "{err}");
        let err = GroundTruth::new(dir.path(), GtFormat::Synth).err().unwrap().to_string();
        assert!(err.contains("meta/"), "{err}");
        let mut gt = GroundTruth::new(dir.path(), GtFormat::Ids).unwrap();
        assert!(gt.load(&frame(2, 2)).unwrap().is_none());
        assert_eq!(gt.file(&frame(2, 2)), dir.path().join("s").join("000000.png"));
    }
}
