//! Dataset layouts → sequences of frames.
//!
//! | dataset | layout under `--root` | sequence id | processing (reference) |
//! |---|---|---|---|
//! | `frames` | every sub-directory holding images; images directly in the root form one sequence named after it | relative directory path | native |
//! | `video` | a video file, or a directory of video files | file stem / relative path without extension | native |
//! | `kitti` | `<date>/<date>_drive_<n>_sync/image_02|image_03/data/*.png` | `<drive>_sync/image_0X` | resize to 1240×376 |
//! | `tri-pd` | `scene_*/rgb/camera_XX/*.png` | `scene_XXXXXX/camera_XX` | halve (ceil), crop top 128 rows |
//! | `movi-e` | one directory per video with PNG frames (Kubric `rgba_*.png` when present) | directory name | native |
//!
//! Listings are sorted by byte order of the names (the reference sorts file names the same way), hidden
//! entries (starting with `.`) are ignored, and nothing is ever written under the root. An entry that cannot
//! be read (no permission, a broken or looping link) is an error naming it, never skipped in silence, and two
//! inputs that would become the same unit id (`a.avi` and `a.mkv`) are refused with both paths, before any
//! work.

use std::path::{Path, PathBuf};

use opencv::prelude::*;
use opencv::videoio;

use crate::decode::{read_processed, Processing};
use crate::{DatasetError, Frame};

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "ppm", "pgm"];
const VIDEO_EXTENSIONS: &[&str] = &["avi", "mp4", "mkv", "mov", "webm", "m4v", "mpg", "mpeg", "wmv"];
/// Kubric writes these beside the RGB frames of a MOVi scene; they are not frames.
const KUBRIC_NON_FRAME_PREFIXES: &[&str] = &[
    "segmentation_",
    "forward_flow_",
    "backward_flow_",
    "depth_",
    "normal_",
    "object_coordinates_",
];

/// The TRI-PD benchmark's conversion of frames and evaluation labels (the reference's conversion scripts):
/// resize to (height, width) 608×968 (frames Pillow bilinear, labels nearest), then the top 128 rows cropped.
pub const TRI_PD_BENCHMARK_RESIZE: (usize, usize) = (608, 968);
pub const TRI_PD_BENCHMARK_TOP_CROP_PX: usize = 128;

/// The dataset layouts mrdino reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    Frames,
    Video,
    Kitti,
    TriPd,
    MoviE,
}

impl DatasetKind {
    pub const ALL: [DatasetKind; 5] = [
        DatasetKind::Frames,
        DatasetKind::Video,
        DatasetKind::Kitti,
        DatasetKind::TriPd,
        DatasetKind::MoviE,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Frames => "frames",
            DatasetKind::Video => "video",
            DatasetKind::Kitti => "kitti",
            DatasetKind::TriPd => "tri-pd",
            DatasetKind::MoviE => "movi-e",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The processing the reference applies before computing flow.
    pub fn reference_processing(self) -> Processing {
        match self {
            DatasetKind::Kitti => Processing::Resize {
                width: 1240,
                height: 376,
            },
            DatasetKind::TriPd => Processing::HalveCropTop { crop_top: 128 },
            DatasetKind::Frames | DatasetKind::Video | DatasetKind::MoviE => Processing::Native,
        }
    }

    /// Cameras read when `--cameras` is not given (only KITTI and TRI-PD have cameras).
    pub fn default_cameras(self) -> Vec<String> {
        match self {
            DatasetKind::Kitti => vec!["image_02".into(), "image_03".into()],
            DatasetKind::TriPd => vec!["camera_01".into(), "camera_05".into(), "camera_06".into()],
            _ => Vec::new(),
        }
    }
}

/// What to read and how.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    pub kind: DatasetKind,
    pub root: PathBuf,
    /// KITTI / TRI-PD cameras; `None` = the dataset's default.
    pub cameras: Option<Vec<String>>,
    /// Overrides the dataset's reference processing (`--resize WxH`).
    pub processing: Option<Processing>,
}

/// One image file of a sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// File stem; the frame's name in every output.
    pub name: String,
    pub path: PathBuf,
}

/// Where a sequence's frames come from.
#[derive(Clone, Debug)]
pub enum SequenceInput {
    Images(Vec<ImageFile>),
    Video(PathBuf),
}

/// The unit of work: one camera of one drive, scene or video, frames in order.
#[derive(Clone, Debug)]
pub struct Sequence {
    pub id: String,
    pub dataset: DatasetKind,
    pub root: PathBuf,
    pub input: SequenceInput,
    pub processing: Processing,
}

/// Lists the sequences of a dataset in sorted order of their ids.
pub fn list_sequences(options: &SourceOptions) -> Result<Vec<Sequence>, DatasetError> {
    let root = &options.root;
    if !root.exists() {
        return Err(DatasetError::layout(root, "dataset root does not exist"));
    }
    let processing = options
        .processing
        .unwrap_or_else(|| options.kind.reference_processing());
    let cameras = options
        .cameras
        .clone()
        .unwrap_or_else(|| options.kind.default_cameras());
    let make = |id: String, input: SequenceInput| Sequence {
        id,
        dataset: options.kind,
        root: root.clone(),
        input,
        processing,
    };
    let mut sequences: Vec<Sequence> = match options.kind {
        DatasetKind::Frames => frames_layout(root)?
            .into_iter()
            .map(|(id, files)| make(id, SequenceInput::Images(files)))
            .collect(),
        DatasetKind::MoviE => movi_layout(root)?
            .into_iter()
            .map(|(id, files)| make(id, SequenceInput::Images(files)))
            .collect(),
        DatasetKind::Video => video_layout(root)?
            .into_iter()
            .map(|(id, path)| make(id, SequenceInput::Video(path)))
            .collect(),
        DatasetKind::Kitti => kitti_layout(root, &cameras)?
            .into_iter()
            .map(|(id, files)| make(id, SequenceInput::Images(files)))
            .collect(),
        DatasetKind::TriPd => tri_pd_layout(root, &cameras)?
            .into_iter()
            .map(|(id, files)| make(id, SequenceInput::Images(files)))
            .collect(),
    };
    sequences.sort_by(|a, b| a.id.cmp(&b.id));
    if sequences.is_empty() {
        return Err(DatasetError::layout(
            root,
            format!(
                "no sequences found for dataset `{}` (see `mrdino labels --help` for the expected layout)",
                options.kind.name()
            ),
        ));
    }
    Ok(sequences)
}

impl Sequence {
    /// Frame names when they are known without decoding (image sequences).
    pub fn image_files(&self) -> Option<&[ImageFile]> {
        match &self.input {
            SequenceInput::Images(files) => Some(files),
            SequenceInput::Video(_) => None,
        }
    }

    /// Number of frames: exact for image sequences, the container's announced count for videos.
    pub fn frame_count_hint(&self) -> Option<usize> {
        match &self.input {
            SequenceInput::Images(files) => Some(files.len()),
            SequenceInput::Video(path) => {
                let capture = videoio::VideoCapture::from_file(path.to_str()?, videoio::CAP_ANY).ok()?;
                let count = capture.get(videoio::CAP_PROP_FRAME_COUNT).ok()?;
                (count >= 1.0).then_some(count as usize)
            }
        }
    }

    /// The files this sequence reads, for fingerprints.
    pub fn input_paths(&self) -> Vec<&Path> {
        match &self.input {
            SequenceInput::Images(files) => files.iter().map(|f| f.path.as_path()).collect(),
            SequenceInput::Video(path) => vec![path.as_path()],
        }
    }

    /// Path of a frame's source relative to the dataset root (`video.avi#12` for video frames).
    pub fn source_path(&self, index: usize) -> String {
        match &self.input {
            SequenceInput::Images(files) => relative(&self.root, &files[index].path),
            SequenceInput::Video(path) => format!("{}#{index}", relative(&self.root, path)),
        }
    }

    /// The frames at `indices`, each decoded once (image sequences read only those files; a video is read in
    /// one pass up to the last index). Indices past the end are left out.
    pub fn decode_frames(
        &self,
        indices: &std::collections::BTreeSet<usize>,
    ) -> Result<std::collections::BTreeMap<usize, Frame>, DatasetError> {
        let mut out = std::collections::BTreeMap::new();
        if let Some(files) = self.image_files() {
            for &index in indices {
                let Some(file) = files.get(index) else { continue };
                let (image, geometry) = read_processed(&file.path, &self.processing)?;
                out.insert(
                    index,
                    Frame {
                        index,
                        name: file.name.clone(),
                        image,
                        geometry,
                    },
                );
            }
            return Ok(out);
        }
        let Some(&last) = indices.iter().next_back() else {
            return Ok(out);
        };
        for (index, item) in self.frames()? {
            if indices.contains(&index) {
                out.insert(index, item?);
            }
            if index >= last {
                break;
            }
        }
        Ok(out)
    }

    /// Decodes the frames in order. Each item is one frame or the reason it could not be read; a video that
    /// cannot be decoded further ends the iteration after yielding its error.
    pub fn frames(&self) -> Result<FrameIter<'_>, DatasetError> {
        let inner = match &self.input {
            SequenceInput::Images(files) => FrameIterInner::Images { files, next: 0 },
            SequenceInput::Video(path) => {
                let open_err = |message: String| DatasetError::Video {
                    path: path.clone(),
                    frames: 0,
                    message,
                };
                let name = path
                    .to_str()
                    .ok_or_else(|| open_err("path is not valid UTF-8".into()))?;
                let capture =
                    videoio::VideoCapture::from_file(name, videoio::CAP_ANY).map_err(|e| open_err(e.to_string()))?;
                if !capture.is_opened().map_err(|e| open_err(e.to_string()))? {
                    return Err(open_err("cannot open video (missing codec or not a video)".into()));
                }
                let expected = capture.get(videoio::CAP_PROP_FRAME_COUNT).unwrap_or(0.0).max(0.0) as usize;
                FrameIterInner::Video {
                    path,
                    capture,
                    next: 0,
                    expected,
                    done: false,
                }
            }
        };
        Ok(FrameIter {
            sequence: self,
            inner,
            size: None,
        })
    }
}

enum FrameIterInner<'a> {
    Images {
        files: &'a [ImageFile],
        next: usize,
    },
    Video {
        path: &'a Path,
        capture: videoio::VideoCapture,
        next: usize,
        expected: usize,
        done: bool,
    },
}

/// Frames of one sequence, decoded once each, in order.
pub struct FrameIter<'a> {
    sequence: &'a Sequence,
    inner: FrameIterInner<'a>,
    size: Option<(usize, usize)>,
}

impl FrameIter<'_> {
    fn check_size(&mut self, frame: Frame, path: &Path) -> Result<Frame, DatasetError> {
        let got = (frame.geometry.orig_height, frame.geometry.orig_width);
        match self.size {
            None => {
                self.size = Some(got);
                Ok(frame)
            }
            Some(size) if size == got => Ok(frame),
            Some((height, width)) => Err(DatasetError::SizeChange {
                path: path.to_path_buf(),
                width,
                height,
                got_width: got.1,
                got_height: got.0,
            }),
        }
    }
}

impl Iterator for FrameIter<'_> {
    type Item = (usize, Result<Frame, DatasetError>);

    fn next(&mut self) -> Option<Self::Item> {
        let processing = self.sequence.processing;
        match &mut self.inner {
            FrameIterInner::Images { files, next } => {
                let index = *next;
                let file = files.get(index)?;
                *next += 1;
                let result = read_processed(&file.path, &processing).map(|(image, geometry)| Frame {
                    index,
                    name: file.name.clone(),
                    image,
                    geometry,
                });
                let path = file.path.clone();
                Some((index, result.and_then(|frame| self.check_size(frame, &path))))
            }
            FrameIterInner::Video {
                path,
                capture,
                next,
                expected,
                done,
            } => {
                if *done {
                    return None;
                }
                let index = *next;
                let path: PathBuf = path.to_path_buf();
                let mut bgr = opencv::core::Mat::default();
                let read = capture.read(&mut bgr);
                let ended = match read {
                    Ok(true) => bgr.empty(),
                    Ok(false) => true,
                    Err(e) => {
                        *done = true;
                        let message = e.to_string();
                        return Some((
                            index,
                            Err(DatasetError::Video {
                                path,
                                frames: index,
                                message,
                            }),
                        ));
                    }
                };
                if ended {
                    *done = true;
                    // The container announced more frames than could be decoded: a truncated or damaged file.
                    if *expected > index + 1 {
                        let message = format!("container announces {expected} frames");
                        return Some((
                            index,
                            Err(DatasetError::Video {
                                path,
                                frames: index,
                                message,
                            }),
                        ));
                    }
                    return None;
                }
                *next += 1;
                let result = processing
                    .apply(&bgr)
                    .map_err(|message| DatasetError::Decode {
                        path: path.clone(),
                        message,
                    })
                    .map(|(image, geometry)| Frame {
                        index,
                        name: format!("{index:06}"),
                        image,
                        geometry,
                    });
                Some((index, result.and_then(|frame| self.check_size(frame, &path))))
            }
        }
    }
}

fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let text = rel.to_string_lossy().into_owned();
    if text.is_empty() {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        text
    }
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Sorted, non-hidden entries of a directory; each must be readable (its metadata, through links).
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let unreadable = |path: &Path, e: std::io::Error| {
        DatasetError::layout(path, format!("cannot read this entry of the dataset: {e}"))
    };
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))? {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        std::fs::metadata(&path).map_err(|e| unreadable(&path, e))?;
        if path.is_dir() {
            std::fs::read_dir(&path).map_err(|e| unreadable(&path, e))?;
        }
        entries.push(path);
    }
    entries.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(entries)
}

fn image_files_in(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<ImageFile>, DatasetError> {
    let mut files = Vec::new();
    for path in sorted_entries(dir)? {
        if !path.is_file() || !has_extension(&path, IMAGE_EXTENSIONS) {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            return Err(DatasetError::layout(&path, "file name is not valid UTF-8"));
        };
        if keep(&name) {
            files.push(ImageFile { name, path });
        }
    }
    Ok(files)
}

fn frames_layout(root: &Path) -> Result<Vec<(String, Vec<ImageFile>)>, DatasetError> {
    if !root.is_dir() {
        return Err(DatasetError::layout(root, "the `frames` dataset needs a directory"));
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let files = image_files_in(&dir, |_| true)?;
        if !files.is_empty() {
            let id = if dir == root {
                root.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "frames".into())
            } else {
                relative(root, &dir)
            };
            out.push((id, files));
        }
        let mut subdirs: Vec<PathBuf> = sorted_entries(&dir)?.into_iter().filter(|p| p.is_dir()).collect();
        subdirs.reverse();
        stack.extend(subdirs);
    }
    Ok(out)
}

fn movi_layout(root: &Path) -> Result<Vec<(String, Vec<ImageFile>)>, DatasetError> {
    let mut out = Vec::new();
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        let all = image_files_in(&dir, |_| true)?;
        let kubric = all.iter().any(|f| f.name.starts_with("rgba_"));
        let files: Vec<ImageFile> = all
            .into_iter()
            .filter(|f| {
                if kubric {
                    f.name.starts_with("rgba_")
                } else {
                    !KUBRIC_NON_FRAME_PREFIXES.iter().any(|p| f.name.starts_with(p))
                }
            })
            .collect();
        if !files.is_empty() {
            out.push((relative(root, &dir), files));
        }
    }
    Ok(out)
}

/// Whether `path` is a directory: `false` when it does not exist, an error when it cannot be read.
fn is_readable_dir(path: &Path) -> Result<bool, DatasetError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            std::fs::read_dir(path)
                .map_err(|e| DatasetError::layout(path, format!("cannot read this directory of the dataset: {e}")))?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(DatasetError::layout(
            path,
            format!("cannot read this entry of the dataset: {e}"),
        )),
    }
}

/// Refuses two inputs with the same unit id (listing both paths).
fn refuse_duplicate_ids(root: &Path, units: &[(String, PathBuf)]) -> Result<(), DatasetError> {
    let mut seen: std::collections::BTreeMap<&str, Vec<&Path>> = std::collections::BTreeMap::new();
    for (id, path) in units {
        seen.entry(id.as_str()).or_default().push(path);
    }
    let clashes: Vec<String> = seen
        .iter()
        .filter(|(_, paths)| paths.len() > 1)
        .map(|(id, paths)| {
            let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            format!("`{id}` from {}", list.join(" and "))
        })
        .collect();
    if clashes.is_empty() {
        return Ok(());
    }
    Err(DatasetError::layout(
        root,
        format!(
            "several videos would become the same unit id, and their outputs would overwrite each other: {}; \
             rename or move one of each",
            clashes.join("; ")
        ),
    ))
}

fn video_layout(root: &Path) -> Result<Vec<(String, PathBuf)>, DatasetError> {
    if root.is_file() {
        let id = root
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "video".into());
        return Ok(vec![(id, root.to_path_buf())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for path in sorted_entries(&dir)?.into_iter().rev() {
            if path.is_dir() {
                stack.push(path);
            } else if has_extension(&path, VIDEO_EXTENSIONS) {
                let rel = relative(root, &path.with_extension(""));
                out.push((rel, path));
            }
        }
    }
    refuse_duplicate_ids(root, &out)?;
    Ok(out)
}

fn kitti_layout(root: &Path, cameras: &[String]) -> Result<Vec<(String, Vec<ImageFile>)>, DatasetError> {
    // Accept the dataset root (dates below it), one date directory, or one drive directory.
    let mut drives = Vec::new();
    let mut consider = |dir: PathBuf| {
        if dir.file_name().is_some_and(|n| n.to_string_lossy().ends_with("_sync")) {
            drives.push(dir);
        }
    };
    consider(root.to_path_buf());
    for child in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        consider(child.clone());
        for grandchild in sorted_entries(&child)?.into_iter().filter(|p| p.is_dir()) {
            consider(grandchild);
        }
    }
    let mut out = Vec::new();
    for drive in drives {
        let drive_name = drive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for camera in cameras {
            let data = drive.join(camera).join("data");
            if is_readable_dir(&drive.join(camera))? && is_readable_dir(&data)? {
                let files = image_files_in(&data, |_| true)?;
                if !files.is_empty() {
                    out.push((format!("{drive_name}/{camera}"), files));
                }
            }
        }
    }
    Ok(out)
}

fn tri_pd_layout(root: &Path, cameras: &[String]) -> Result<Vec<(String, Vec<ImageFile>)>, DatasetError> {
    let mut scenes = Vec::new();
    if is_readable_dir(&root.join("rgb"))? {
        scenes.push(root.to_path_buf());
    }
    for dir in sorted_entries(root)?.into_iter().filter(|p| p.is_dir()) {
        if is_readable_dir(&dir.join("rgb"))? {
            scenes.push(dir);
        }
    }
    let mut out = Vec::new();
    for scene in scenes {
        let scene_name = scene
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for camera in cameras {
            let dir = scene.join("rgb").join(camera);
            if is_readable_dir(&dir)? {
                let files = image_files_in(&dir, |_| true)?;
                if !files.is_empty() {
                    out.push((format!("{scene_name}/{camera}"), files));
                }
            }
        }
    }
    Ok(out)
}

/// The 142 KITTI raw frames that are images of the KITTI instance-segmentation benchmark, as
/// (`<date>_drive_<n>_sync`, frame name) pairs (from the reference's `utils/kitti_samples_removing.py`).
pub fn kitti_eval_overlap() -> std::collections::BTreeSet<(String, String)> {
    include_str!("../data/kitti_eval_overlap.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(' ').map(|(d, f)| (d.to_string(), f.trim().to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eval_overlap_list_has_142_frames() {
        let list = kitti_eval_overlap();
        assert_eq!(list.len(), 142);
        assert!(list.contains(&("2011_09_26_drive_0015_sync".to_string(), "0000000264".to_string())));
        assert!(list.contains(&("2011_10_03_drive_0047_sync".to_string(), "0000000556".to_string())));
    }

    fn touch_png(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn layouts_list_sequences_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for cam in ["image_02", "image_03", "image_00"] {
            for f in ["0000000001.png", "0000000000.png"] {
                touch_png(&root.join(format!("kitti/2011_09_26/2011_09_26_drive_0002_sync/{cam}/data/{f}")));
                touch_png(&root.join(format!("kitti/2011_09_26/2011_09_26_drive_0001_sync/{cam}/data/{f}")));
            }
        }
        let opts = |kind, sub: &str| SourceOptions {
            kind,
            root: root.join(sub),
            cameras: None,
            processing: None,
        };
        let kitti = list_sequences(&opts(DatasetKind::Kitti, "kitti")).unwrap();
        let ids: Vec<&str> = kitti.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "2011_09_26_drive_0001_sync/image_02",
                "2011_09_26_drive_0001_sync/image_03",
                "2011_09_26_drive_0002_sync/image_02",
                "2011_09_26_drive_0002_sync/image_03"
            ]
        );
        let names: Vec<&str> = kitti[0]
            .image_files()
            .unwrap()
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["0000000000", "0000000001"]);
        assert_eq!(
            kitti[0].processing,
            Processing::Resize {
                width: 1240,
                height: 376
            }
        );

        for cam in ["camera_01", "camera_04", "camera_05"] {
            touch_png(&root.join(format!("pd/scene_000002/rgb/{cam}/000000000000000005.png")));
            touch_png(&root.join(format!("pd/scene_000001/rgb/{cam}/000000000000000005.png")));
        }
        let pd = list_sequences(&opts(DatasetKind::TriPd, "pd")).unwrap();
        let ids: Vec<&str> = pd.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "scene_000001/camera_01",
                "scene_000001/camera_05",
                "scene_000002/camera_01",
                "scene_000002/camera_05"
            ]
        );

        touch_png(&root.join("frames/b/2.png"));
        touch_png(&root.join("frames/a/x/1.png"));
        touch_png(&root.join("frames/a/x/notes.txt"));
        touch_png(&root.join("frames/top.png"));
        touch_png(&root.join("frames/.hidden/1.png"));
        let frames = list_sequences(&opts(DatasetKind::Frames, "frames")).unwrap();
        let ids: Vec<&str> = frames.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a/x", "b", "frames"]);

        touch_png(&root.join("movi/video_0001/rgba_00001.png"));
        touch_png(&root.join("movi/video_0001/rgba_00000.png"));
        touch_png(&root.join("movi/video_0001/segmentation_00000.png"));
        touch_png(&root.join("movi/video_0000/00000.png"));
        touch_png(&root.join("movi/video_0000/forward_flow_00000.png"));
        let movi = list_sequences(&opts(DatasetKind::MoviE, "movi")).unwrap();
        assert_eq!(movi.len(), 2);
        assert_eq!(movi[0].image_files().unwrap().len(), 1);
        let names: Vec<&str> = movi[1].image_files().unwrap().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["rgba_00000", "rgba_00001"]);
    }

    #[test]
    fn colliding_video_ids_are_refused_with_both_paths() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.avi", "a.mkv", "b.mp4"] {
            touch_png(&dir.path().join("videos").join(name));
        }
        let options = SourceOptions {
            kind: DatasetKind::Video,
            root: dir.path().join("videos"),
            cameras: None,
            processing: None,
        };
        let err = list_sequences(&options).unwrap_err().to_string();
        assert!(
            err.contains("a.avi") && err.contains("a.mkv") && err.contains("`a`"),
            "{err}"
        );
        assert!(!err.contains("b.mp4"), "{err}");
    }

    #[test]
    fn unreadable_entries_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("frames");
        touch_png(&root.join("good/0.png"));
        std::os::unix::fs::symlink(root.join("loop"), root.join("loop")).unwrap();
        let options = |kind| SourceOptions {
            kind,
            root: root.clone(),
            cameras: None,
            processing: None,
        };
        let err = list_sequences(&options(DatasetKind::Frames)).unwrap_err().to_string();
        assert!(err.contains("loop") && err.contains("cannot read"), "{err}");
        let err = list_sequences(&options(DatasetKind::MoviE)).unwrap_err().to_string();
        assert!(err.contains("loop"), "{err}");
    }

    #[test]
    fn tri_pd_geometry_halves_and_crops() {
        let g = Processing::HalveCropTop { crop_top: 128 }.geometry(1216, 1936).unwrap();
        assert_eq!(
            (g.resized_width, g.resized_height, g.width, g.height, g.crop_top),
            (968, 608, 968, 480, 128)
        );
        let odd = Processing::HalveCropTop { crop_top: 128 }.geometry(1215, 1935).unwrap();
        assert_eq!((odd.resized_width, odd.resized_height), (968, 608));
    }
}
