//! A generator of short synthetic videos with exact ground truth: frames, forward flow, instance maps and
//! per-frame motion metadata.
//!
//! Real datasets cannot be shipped with the project, yet every stage of the pipeline (flow import,
//! quasi-static selection, the 2.5 px foreground threshold, instance separation, the metrics) needs inputs
//! whose answer is known. This module renders them.
//!
//! # Scene model
//! Everything lives on one world plane. A sequence has a procedural background texture (smooth value noise
//! plus sinusoidal stripes, so that flow is observable everywhere) and a few textured objects (rectangles,
//! ellipses, star polygons) with a fixed depth order. Each object has one pose per frame (position, angle,
//! scale); moving objects translate by 4.5–7.5 px per frame, some also rotate or scale, some pause, some
//! enter or leave the frame, one pair starts touching and one pair starts overlapping. The camera is a
//! similarity (translation + zoom about the image centre) whose per-pair motion follows a schedule of static
//! segments of 6–10 pairs (long enough for the reference's quasi-static rule: runs of ≥ 5 frames whose
//! corner flow is below 1.7 px) alternating with pan, zoom or shake segments of 3–5 pairs whose corner flow
//! is 2.5–6 px.
//!
//! # Rendering and flow
//! Frames are rendered by inverse mapping: for the centre of every pixel of frame t the front-most surface is
//! found (objects in depth order, then the background), its colour is the surface texture at the surface
//! point, and the forward flow t → t+1 is exactly where that surface point lands in frame t+1 given the
//! object's next pose and the next camera, minus the pixel position. Flow therefore also exists for points
//! that become occluded or leave the frame (as in flow benchmarks without occlusion masks). Photometric noise
//! (uniform, ±[`NOISE_AMPLITUDE`] grey levels per channel, from a hash of the pixel coordinates) is added
//! after rendering. Pixel (row, col) has its centre at world-image coordinates (x = col, y = row).
//!
//! # Files
//! ```text
//! DIR/synth.json                       the record: format version, parameters, sequence names, complete
//! DIR/frames/<seq>/<frame:06>.png      RGB frames (8-bit)
//! DIR/flow/<seq>/<frame:06>.npy        forward flow t → t+1, float32 (H, W, 2), C order, [u = Δcol, v = Δrow]
//! DIR/instances/<seq>/<frame:06>.png   16-bit instance ids, 0 = background, ids stable across the sequence
//! DIR/meta/<seq>.json                  per frame: camera motion to the next frame, visible objects and whether
//!                                      each of them moves to the next frame
//! ```
//! The last frame of a sequence has no flow file and no "to the next frame" motion (JSON `null`), mirroring
//! the reference pipeline where the last frame can never receive a label.
//!
//! The same parameters give byte-identical files: the random generator is a SplitMix64 seeded from the
//! parameters, the per-pixel noise is a hash, and nothing depends on iteration order of hash maps or on thread
//! scheduling. (Transcendental functions come from the platform's libm, so bytes are guaranteed identical on one
//! platform; across platforms a rare last-bit difference could flip a rounding.)
//!
//! # Stopping, resuming, refusing
//!
//! `synth.json` is written first, with `"complete": false`, and rewritten with `true` after the last
//! sequence; a record without the key (written by versions that wrote it last) counts as complete. Every file
//! is written atomically (a uniquely named hidden temporary in the destination directory, then a rename; atomic
//! against the writer's death, not against power loss), and a sequence's `meta/<seq>.json` is written after
//! all its frames: a sequence is complete when its meta file and every frame file exist.
//!
//! [`generate_stoppable`] asks `should_stop` before every frame and returns [`SynthRun::Stopped`] when told
//! to. A rerun with the same parameters into the same directory keeps the complete sequences, removes the
//! temporaries left by a killed run and regenerates the incomplete sequences from their first frame, so a
//! stopped-and-resumed directory is byte-identical to one written in one go. A directory whose record holds
//! other parameters (or another format version), or that holds anything but no record, is refused with the
//! differences named: datasets are never mixed. One generator at a time per directory.
//!
//! # Bounds
//!
//! Measured with `mrdino synth` (release build, 2-core AMD EPYC VM under load ≈ 5, textured scenes;
//! `/usr/bin/time` and `du -sb`): rendering and encoding take ≈ 0.55 µs per pixel on one core (7.3 s for 12
//! frames of 1024x1024, 18 s for 2 frames of 4096x4096, start-up of 1.2 s subtracted), i.e. ≈ 23 ms per 320x128
//! frame. On disk a frame takes ≈ 9.8 bytes per pixel: float32 flow 8, RGB PNG ≈ 1.75, 16-bit instance PNG
//! ≤ 0.04. A frame in flight adds ≈ 13 bytes per pixel to the peak memory (0.81 GB peak RSS at 4096x4096
//! against 0.59 GB at 32x32).
//!
//! | parameter | bound | why |
//! |---|---|---|
//! | `height`, `width` | [`MIN_SIDE_PX`]..=[`MAX_SIDE_PX`] px | smaller leaves no room for the objects; a 4096x4096 frame adds ≈ 0.2 GB of memory in flight and takes ≈ 165 MB on disk |
//! | `frames` | 2..=[`MAX_FRAMES`] | a pair is needed for flow; six-digit frame names sort in order; a sequence's poses and meta stay < 50 MB in memory |
//! | `sequences` | 1..=[`MAX_SEQUENCES`] | three-digit sequence names sort in generation order (`seq000`…`seq999`) |
//! | all pixels, sequences × frames × height × width | ≤ [`MAX_TOTAL_PIXELS`] (10¹⁰) | ≈ 100 GB on disk and ≈ 1.5 h of one core at the rates above; beyond that a typo, not a test set |
//! | `object_size_percent` | 1..=100 | of the frame's shorter side |
//! | objects per sequence | 4–7, drawn by the generator | not a parameter; ids fit the 16-bit instance maps |
//!
//! A stop costs at most the partly written sequence: `frames` frames at the rates above.

use std::collections::BTreeSet;
use std::f64::consts::PI;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;
use opencv::core::{Mat, ToInputArray, Vec3b, Vector};
use opencv::imgcodecs;
use serde::Serialize;

/// Version of the file layout written by [`generate`]; recorded in `synth.json`.
pub const SYNTH_FORMAT_VERSION: u32 = 1;

/// Half-width of the uniform photometric noise added to every channel, in grey levels.
pub const NOISE_AMPLITUDE: f64 = 3.0;

/// Number of consecutive static-camera pairs a static segment has at least (when the sequence is long enough).
pub const MIN_STATIC_SEGMENT_PAIRS: usize = 6;

/// Smallest frame side, px.
pub const MIN_SIDE_PX: usize = 32;
/// Largest frame side, px.
pub const MAX_SIDE_PX: usize = 4096;
/// Most frames per sequence.
pub const MAX_FRAMES: usize = 100_000;
/// Most sequences (names `seq000`…`seq999`).
pub const MAX_SEQUENCES: usize = 1000;
/// Most pixels over all frames of all sequences (see the module docs for the disk and time this means).
pub const MAX_TOTAL_PIXELS: u64 = 10_000_000_000;

/// The record of a generated directory.
pub const RECORD_FILE: &str = "synth.json";

/// How surfaces are coloured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TextureStyle {
    /// Two colours mixed by value noise and stripes (see the module docs): flow is observable everywhere,
    /// so estimated flow (DIS, RAFT) works, but a patch's colour says little about which surface it is on.
    #[default]
    Textured,
    /// One colour per surface (a random point between the same two colours), plus the photometric noise.
    /// Estimated flow fails inside flat regions, so labels need the exact flow (`--flow import`); a patch's
    /// colour says which surface it is on.
    Flat,
}

impl std::str::FromStr for TextureStyle {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "textured" => Ok(Self::Textured),
            "flat" => Ok(Self::Flat),
            _ => Err(format!("unknown texture style {text:?} (textured or flat)")),
        }
    }
}

/// What to generate. Sizes are of the rendered frames, in pixels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SynthParams {
    pub seed: u64,
    pub sequences: usize,
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub texture: TextureStyle,
    /// Base object size as a percentage of the frame's shorter side: rectangles are 1–2 times this wide,
    /// ellipses 0.9–1.8 times, stars 1.4–2 times. The default 20 gives objects of 26–51 px on 128 px tall frames; larger
    /// objects fill more of each model window (see `make demo-refine`).
    pub object_size_percent: u32,
}

impl Default for SynthParams {
    fn default() -> Self {
        Self {
            seed: 0,
            sequences: 3,
            frames: 24,
            height: 128,
            width: 320,
            texture: TextureStyle::Textured,
            object_size_percent: 20,
        }
    }
}

impl SynthParams {
    /// Refuses parameters outside the documented bounds, naming the bound.
    pub fn validate(&self) -> Result<(), SynthError> {
        let invalid = |message: String| Err(SynthError::InvalidParams { message });
        if !(1..=MAX_SEQUENCES).contains(&self.sequences) {
            return invalid(format!(
                "sequences must be in 1..={MAX_SEQUENCES} (three-digit names), got {}",
                self.sequences
            ));
        }
        if !(2..=MAX_FRAMES).contains(&self.frames) {
            return invalid(format!(
                "frames must be in 2..={MAX_FRAMES} (a pair is needed for flow), got {}",
                self.frames
            ));
        }
        for (name, side) in [("height", self.height), ("width", self.width)] {
            if !(MIN_SIDE_PX..=MAX_SIDE_PX).contains(&side) {
                return invalid(format!(
                    "{name} must be in {MIN_SIDE_PX}..={MAX_SIDE_PX} px, got {side}"
                ));
            }
        }
        if !(1..=100).contains(&self.object_size_percent) {
            return invalid(format!(
                "object size must be 1..=100 % of the shorter side, got {}",
                self.object_size_percent
            ));
        }
        let total_pixels = [self.sequences, self.frames, self.height, self.width]
            .iter()
            .map(|&n| n as u64)
            .product::<u64>();
        if total_pixels > MAX_TOTAL_PIXELS {
            return invalid(format!(
                "sequences × frames × height × width must be at most {MAX_TOTAL_PIXELS} pixels (≈ 100 GB), \
                 got {} × {} × {} × {} = {total_pixels}",
                self.sequences, self.frames, self.height, self.width
            ));
        }
        Ok(())
    }
}

/// Errors of the generator, each naming the offending path where there is one.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("invalid synth parameters: {message}")]
    InvalidParams { message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: encoding failed: {message}")]
    Encode { path: PathBuf, message: String },
    #[error(
        "{dir} holds a synthetic dataset of other parameters ({differences}); use another directory, or the \
         recorded parameters to complete it"
    )]
    OtherDataset { dir: PathBuf, differences: String },
    #[error(
        "{dir} holds {entries} but no readable {RECORD_FILE}: not a directory of `synth`; use an empty or new one"
    )]
    NotSynthDirectory { dir: PathBuf, entries: String },
    #[error("{path}: unreadable record: {message}")]
    Record { path: PathBuf, message: String },
}

impl SynthError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct SynthSummary {
    pub out_dir: PathBuf,
    pub params: SynthParams,
    pub sequences: Vec<SequenceSummary>,
    /// Writes of `synth.json` by this run (0 when a complete directory was found, else 1 or 2).
    pub records_written: usize,
}

impl SynthSummary {
    /// Number of files this run wrote, `synth.json` included.
    pub fn files_written(&self) -> usize {
        self.records_written + self.sequences.iter().map(|s| s.files_written).sum::<usize>()
    }

    /// Sequences found complete and kept.
    pub fn sequences_kept(&self) -> usize {
        self.sequences.iter().filter(|s| s.kept).count()
    }
}

/// One sequence of the dataset.
#[derive(Clone, Debug, Serialize)]
pub struct SequenceSummary {
    pub name: String,
    pub frames: usize,
    pub objects: usize,
    pub moving_objects: usize,
    pub static_camera_pairs: usize,
    pub moving_camera_pairs: usize,
    /// Files this run wrote for the sequence (0 when kept).
    pub files_written: usize,
    /// Whether the sequence was complete from an earlier run and kept as it was.
    pub kept: bool,
}

/// How [`generate_stoppable`] ended.
#[derive(Clone, Debug)]
pub enum SynthRun {
    /// Every sequence is complete and the record says so.
    Complete(SynthSummary),
    /// `should_stop` said stop before the dataset was complete; a rerun with the same parameters resumes.
    Stopped(SynthStopped),
}

/// Where a stopped run left its directory.
#[derive(Clone, Debug, Serialize)]
pub struct SynthStopped {
    pub out_dir: PathBuf,
    /// Complete sequences (kept or written), in generation order from the first.
    pub sequences_complete: usize,
    pub sequences_planned: usize,
    /// Files this run wrote for the complete sequences, `synth.json` included (the stopped sequence's files are
    /// rewritten by the rerun and not counted).
    pub files_written: usize,
}

/// How the camera moves between frame t and t+1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraMotion {
    Static,
    Pan,
    Zoom,
    Shake,
}

/// How an object moves in the world (the camera motion comes on top).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectMotion {
    Static,
    Translate,
    TranslateRotate,
    TranslateScale,
}

/// Name of frame `index` in every per-frame file.
pub fn frame_name(index: usize) -> String {
    format!("{index:06}")
}

/// Name of sequence `index`.
pub fn sequence_name(index: usize) -> String {
    format!("seq{index:03}")
}

/// Renders `params.sequences` sequences into `out_dir` without stopping: [`generate_stoppable`] with a
/// `should_stop` that never says stop.
pub fn generate(params: &SynthParams, out_dir: &Path) -> Result<SynthSummary, SynthError> {
    match generate_stoppable(params, out_dir, &|| false)? {
        SynthRun::Complete(summary) => Ok(summary),
        // Not reached (nothing asks to stop); kept as an error rather than a panic.
        SynthRun::Stopped(stopped) => Err(SynthError::Io {
            path: stopped.out_dir,
            source: std::io::Error::new(std::io::ErrorKind::Interrupted, "generation stopped"),
        }),
    }
}

/// Renders `params.sequences` sequences into `out_dir` (created if missing), asking `should_stop` before every
/// frame. Resumes a directory of the same parameters and refuses any other non-empty directory (see the
/// module docs).
pub fn generate_stoppable(
    params: &SynthParams,
    out_dir: &Path,
    should_stop: &dyn Fn() -> bool,
) -> Result<SynthRun, SynthError> {
    params.validate()?;
    fs::create_dir_all(out_dir).map_err(|e| SynthError::io(out_dir, e))?;
    let record_path = out_dir.join(RECORD_FILE);
    let recorded_complete = check_directory(params, out_dir)?;
    remove_temporaries(out_dir)?;
    remove_temporaries(&out_dir.join("meta"))?;

    // Scenes are built one at a time: all of them at once could hold gigabytes of poses at the bounds.
    let kept: Vec<bool> = (0..params.sequences)
        .map(|index| sequence_complete(out_dir, index, params.frames))
        .collect();
    let mut records_written = 0;
    let all_kept = kept.iter().all(|&k| k);
    if recorded_complete != Some(true) || !all_kept {
        write_json(&record_path, &SynthJson::new(params, false))?;
        records_written += 1;
    }
    let mut sequences = Vec::with_capacity(params.sequences);
    for (index, kept) in kept.into_iter().enumerate() {
        let scene = &Scene::new(params, index);
        let summary = if kept {
            scene.summary(0, true)
        } else {
            match write_sequence(scene, out_dir, should_stop)? {
                Some(summary) => summary,
                None => {
                    let files_written = records_written
                        + sequences
                            .iter()
                            .map(|s: &SequenceSummary| s.files_written)
                            .sum::<usize>();
                    return Ok(SynthRun::Stopped(SynthStopped {
                        out_dir: out_dir.to_path_buf(),
                        sequences_complete: sequences.len(),
                        sequences_planned: params.sequences,
                        files_written,
                    }));
                }
            }
        };
        sequences.push(summary);
    }
    if records_written > 0 {
        write_json(&record_path, &SynthJson::new(params, true))?;
        records_written += 1;
    }
    Ok(SynthRun::Complete(SynthSummary {
        out_dir: out_dir.to_path_buf(),
        params: params.clone(),
        sequences,
        records_written,
    }))
}

/// Refuses a directory that holds another dataset or anything but a dataset of `synth`. Returns whether its
/// record says complete (`None` for an empty directory).
fn check_directory(params: &SynthParams, out_dir: &Path) -> Result<Option<bool>, SynthError> {
    let record_path = out_dir.join(RECORD_FILE);
    let bytes = match fs::read(&record_path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries: Vec<String> = fs::read_dir(out_dir)
                .map_err(|e| SynthError::io(out_dir, e))?
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !is_temporary(name))
                .collect();
            if entries.is_empty() {
                return Ok(None);
            }
            entries.sort();
            let shown = entries.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            let more = entries.len().saturating_sub(3);
            return Err(SynthError::NotSynthDirectory {
                dir: out_dir.to_path_buf(),
                entries: if more > 0 {
                    format!("{shown} and {more} more")
                } else {
                    shown
                },
            });
        }
        Err(e) => return Err(SynthError::io(&record_path, e)),
    };
    let record: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| SynthError::Record {
        path: record_path.clone(),
        message: e.to_string(),
    })?;
    let wanted = serde_json::to_value(SynthJson::new(params, false)).map_err(|e| SynthError::Record {
        path: record_path.clone(),
        message: e.to_string(),
    })?;
    let mut differences = Vec::new();
    if record.get("format_version") != wanted.get("format_version") {
        differences.push(format!(
            "format_version: recorded {}, this run {SYNTH_FORMAT_VERSION}",
            shown(record.get("format_version"))
        ));
    }
    let (found, expected) = (record.get("params"), wanted.get("params"));
    let keys: BTreeSet<&String> = [found, expected]
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_object)
        .flat_map(serde_json::Map::keys)
        .collect();
    for key in keys {
        let (recorded, this_run) = (found.and_then(|p| p.get(key)), expected.and_then(|p| p.get(key)));
        if recorded != this_run {
            differences.push(format!(
                "{key}: recorded {}, this run {}",
                shown(recorded),
                shown(this_run)
            ));
        }
    }
    if !differences.is_empty() {
        return Err(SynthError::OtherDataset {
            dir: out_dir.to_path_buf(),
            differences: differences.join("; "),
        });
    }
    // Records of versions that wrote them last have no `complete`: their presence meant complete.
    Ok(Some(
        record
            .get("complete")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(true),
    ))
}

fn shown(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(|| "absent".to_string(), ToString::to_string)
}

/// Whether every file of the sequence exists, its meta file (written last) included.
fn sequence_complete(out_dir: &Path, index: usize, frame_count: usize) -> bool {
    let name = sequence_name(index);
    out_dir.join("meta").join(format!("{name}.json")).is_file()
        && (0..frame_count).all(|t| {
            let stem = frame_name(t);
            out_dir.join("frames").join(&name).join(format!("{stem}.png")).is_file()
                && out_dir
                    .join("instances")
                    .join(&name)
                    .join(format!("{stem}.png"))
                    .is_file()
                && (t + 1 == frame_count || out_dir.join("flow").join(&name).join(format!("{stem}.npy")).is_file())
        })
}

#[derive(Serialize)]
struct SynthJson {
    format_version: u32,
    params: SynthParams,
    sequences: Vec<String>,
    complete: bool,
}

impl SynthJson {
    fn new(params: &SynthParams, complete: bool) -> Self {
        Self {
            format_version: SYNTH_FORMAT_VERSION,
            params: params.clone(),
            sequences: (0..params.sequences).map(sequence_name).collect(),
            complete,
        }
    }
}

#[derive(Serialize)]
struct SequenceMeta {
    sequence: String,
    height: usize,
    width: usize,
    frames: Vec<FrameMeta>,
    objects: Vec<ObjectInfo>,
}

#[derive(Serialize)]
struct ObjectInfo {
    id: u16,
    shape: &'static str,
    motion: ObjectMotion,
    /// 0 = front-most.
    depth_rank: usize,
}

#[derive(Serialize)]
struct FrameMeta {
    frame: String,
    /// Camera motion from this frame to the next; `null` on the last frame.
    camera: Option<CameraMeta>,
    /// Objects with at least one visible pixel in this frame, by id.
    objects: Vec<VisibleObject>,
}

#[derive(Serialize)]
struct CameraMeta {
    motion: CameraMotion,
    #[serde(rename = "static")]
    is_static: bool,
}

#[derive(Serialize)]
struct VisibleObject {
    id: u16,
    visible_px: usize,
    /// Whether the object's world pose changes from this frame to the next; `null` on the last frame.
    moving: Option<bool>,
}

/// Writes every frame of the sequence, then its meta file; `None` when `should_stop` said stop before a frame
/// (the files written so far stay, and the sequence is incomplete until a rerun rewrites it).
fn write_sequence(
    scene: &Scene,
    out_dir: &Path,
    should_stop: &dyn Fn() -> bool,
) -> Result<Option<SequenceSummary>, SynthError> {
    let name = sequence_name(scene.index);
    let frames_dir = out_dir.join("frames").join(&name);
    let flow_dir = out_dir.join("flow").join(&name);
    let instances_dir = out_dir.join("instances").join(&name);
    let meta_dir = out_dir.join("meta");
    for dir in [&frames_dir, &flow_dir, &instances_dir, &meta_dir] {
        fs::create_dir_all(dir).map_err(|e| SynthError::io(dir, e))?;
        remove_temporaries(dir)?;
    }

    let frame_count = scene.cameras.len();
    let mut files_written = 0;
    let mut frames = Vec::with_capacity(frame_count);
    for t in 0..frame_count {
        if should_stop() {
            return Ok(None);
        }
        let rendered = scene.render(t);
        let stem = frame_name(t);
        write_png_rgb(
            &frames_dir.join(format!("{stem}.png")),
            scene.height,
            scene.width,
            &rendered.rgb,
        )?;
        write_png_u16(
            &instances_dir.join(format!("{stem}.png")),
            scene.height,
            scene.width,
            &rendered.ids,
        )?;
        files_written += 2;
        if let Some(flow) = &rendered.flow_uv {
            write_flow_npy(&flow_dir.join(format!("{stem}.npy")), scene.height, scene.width, flow)?;
            files_written += 1;
        }
        frames.push(scene.frame_meta(t, &rendered.ids));
    }

    let objects = scene
        .objects
        .iter()
        .map(|o| ObjectInfo {
            id: o.id,
            shape: o.shape.name(),
            motion: o.motion,
            depth_rank: o.depth_rank,
        })
        .collect();
    let meta = SequenceMeta {
        sequence: name.clone(),
        height: scene.height,
        width: scene.width,
        frames,
        objects,
    };
    write_json(&meta_dir.join(format!("{name}.json")), &meta)?;
    files_written += 1;
    Ok(Some(scene.summary(files_written, false)))
}

// ---------------------------------------------------------------------------------------------------------
// Randomness and procedural texture

/// SplitMix64: tiny, fast, and the same on every platform.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        finalize(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in lo..=hi.
    fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    fn sign(&mut self) -> f64 {
        if self.chance(0.5) {
            1.0
        } else {
            -1.0
        }
    }
}

/// The SplitMix64 output function, used as a 64-bit integer hash.
fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash(parts: &[u64]) -> u64 {
    parts.iter().fold(0x243F_6A88_85A3_08D3, |acc, &p| {
        finalize(acc ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    })
}

fn hash_unit(parts: &[u64]) -> f64 {
    (hash(parts) >> 11) as f64 / (1u64 << 53) as f64
}

/// Value noise on an integer lattice with quintic fade: continuous with continuous first derivatives, in [0, 1].
fn value_noise(seed: u64, x: f64, y: f64) -> f64 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (fade(x - x0), fade(y - y0));
    let (ix, iy) = (x0 as i64 as u64, y0 as i64 as u64);
    let corner = |dx: u64, dy: u64| hash_unit(&[seed, ix.wrapping_add(dx), iy.wrapping_add(dy)]);
    let top = corner(0, 0) + (corner(1, 0) - corner(0, 0)) * fx;
    let bottom = corner(0, 1) + (corner(1, 1) - corner(0, 1)) * fx;
    top + (bottom - top) * fy
}

fn fade(t: f64) -> f64 {
    t * t * t * (t * (t * 6.0 - 15.0) + 10.0)
}

/// A procedural colour texture in surface coordinates (px): two colours mixed by three octaves of value noise
/// and two families of sinusoidal stripes.
struct Texture {
    dark: [f64; 3],
    light: [f64; 3],
    noise_seed: u64,
    noise_cell_px: f64,
    stripes: [Stripes; 2],
    /// `Some(mix)`: [`TextureStyle::Flat`], one colour everywhere.
    flat_mix: Option<f64>,
}

struct Stripes {
    /// Unit direction divided by the period, so that phase = 2π (x·kx + y·ky).
    kx: f64,
    ky: f64,
    weight: f64,
}

impl Texture {
    /// The same draws from `rng` whatever the style, so a flat scene has the textured scene's geometry and motion.
    fn random(rng: &mut SplitMix64, noise_cell_px: f64, style: TextureStyle) -> Self {
        let dark = [rng.range(10.0, 110.0), rng.range(10.0, 110.0), rng.range(10.0, 110.0)];
        let light = [
            rng.range(140.0, 245.0),
            rng.range(140.0, 245.0),
            rng.range(140.0, 245.0),
        ];
        let mut stripes = || {
            let angle = rng.range(0.0, PI);
            let period_px = rng.range(9.0, 16.0);
            Stripes {
                kx: angle.cos() / period_px,
                ky: angle.sin() / period_px,
                weight: rng.range(0.15, 0.3),
            }
        };
        let stripes = [stripes(), stripes()];
        let noise_seed = rng.next_u64();
        let flat_mix = (style == TextureStyle::Flat).then(|| hash_unit(&[noise_seed]));
        Self {
            dark,
            light,
            noise_seed,
            noise_cell_px,
            stripes,
            flat_mix,
        }
    }

    fn color(&self, x: f64, y: f64) -> [f64; 3] {
        if let Some(mix) = self.flat_mix {
            return std::array::from_fn(|c| self.dark[c] + (self.light[c] - self.dark[c]) * mix);
        }
        let mut mix = 0.0;
        let mut cell = self.noise_cell_px;
        for (octave, amplitude) in [0.5, 0.3, 0.2].into_iter().enumerate() {
            mix += amplitude * value_noise(self.noise_seed.wrapping_add(octave as u64), x / cell, y / cell);
            cell *= 0.5;
        }
        mix *= 0.6;
        for s in &self.stripes {
            mix += s.weight * 0.5 * (1.0 + (2.0 * PI * (x * s.kx + y * s.ky)).sin());
        }
        let mix = mix.clamp(0.0, 1.0);
        std::array::from_fn(|c| self.dark[c] + (self.light[c] - self.dark[c]) * mix)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Geometry: shapes, poses, camera

enum Shape {
    Rect {
        half_width_px: f64,
        half_height_px: f64,
    },
    Ellipse {
        radius_x_px: f64,
        radius_y_px: f64,
    },
    /// A closed polygon (even-odd rule), vertices in surface coordinates.
    Polygon {
        vertices: Vec<(f64, f64)>,
    },
}

impl Shape {
    fn name(&self) -> &'static str {
        match self {
            Shape::Rect { .. } => "rectangle",
            Shape::Ellipse { .. } => "ellipse",
            Shape::Polygon { .. } => "polygon",
        }
    }

    fn contains(&self, x: f64, y: f64) -> bool {
        match self {
            Shape::Rect {
                half_width_px,
                half_height_px,
            } => x.abs() <= *half_width_px && y.abs() <= *half_height_px,
            Shape::Ellipse {
                radius_x_px,
                radius_y_px,
            } => (x / radius_x_px).powi(2) + (y / radius_y_px).powi(2) <= 1.0,
            Shape::Polygon { vertices } => {
                let mut inside = false;
                let mut previous = vertices[vertices.len() - 1];
                for &current in vertices {
                    let ((x0, y0), (x1, y1)) = (previous, current);
                    if (y0 > y) != (y1 > y) && x < x0 + (y - y0) * (x1 - x0) / (y1 - y0) {
                        inside = !inside;
                    }
                    previous = current;
                }
                inside
            }
        }
    }

    /// Distance from the origin to the farthest point of the shape.
    fn radius_px(&self) -> f64 {
        match self {
            Shape::Rect {
                half_width_px,
                half_height_px,
            } => half_width_px.hypot(*half_height_px),
            Shape::Ellipse {
                radius_x_px,
                radius_y_px,
            } => radius_x_px.max(*radius_y_px),
            Shape::Polygon { vertices } => vertices.iter().map(|(x, y)| x.hypot(*y)).fold(0.0, f64::max),
        }
    }

    /// Extent along x of the axis-aligned shape (used to place touching objects).
    fn half_width_px(&self) -> f64 {
        match self {
            Shape::Rect { half_width_px, .. } => *half_width_px,
            Shape::Ellipse { radius_x_px, .. } => *radius_x_px,
            Shape::Polygon { vertices } => vertices.iter().map(|(x, _)| x.abs()).fold(0.0, f64::max),
        }
    }
}

/// Object pose in the world: surface point l maps to position + scale · R(angle) · l.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pose {
    x: f64,
    y: f64,
    angle_rad: f64,
    scale: f64,
}

impl Pose {
    fn to_surface(self, wx: f64, wy: f64) -> (f64, f64) {
        let (sin, cos) = self.angle_rad.sin_cos();
        let (dx, dy) = (wx - self.x, wy - self.y);
        ((cos * dx + sin * dy) / self.scale, (-sin * dx + cos * dy) / self.scale)
    }

    fn to_world(self, sx: f64, sy: f64) -> (f64, f64) {
        let (sin, cos) = self.angle_rad.sin_cos();
        (
            self.x + self.scale * (cos * sx - sin * sy),
            self.y + self.scale * (sin * sx + cos * sy),
        )
    }
}

/// Camera of one frame: image point = zoom · (world − centre_world) + image centre.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Camera {
    centre_x: f64,
    centre_y: f64,
    zoom: f64,
    image_centre_x: f64,
    image_centre_y: f64,
}

impl Camera {
    fn to_world(self, x: f64, y: f64) -> (f64, f64) {
        (
            self.centre_x + (x - self.image_centre_x) / self.zoom,
            self.centre_y + (y - self.image_centre_y) / self.zoom,
        )
    }

    fn to_image(self, wx: f64, wy: f64) -> (f64, f64) {
        (
            self.zoom * (wx - self.centre_x) + self.image_centre_x,
            self.zoom * (wy - self.centre_y) + self.image_centre_y,
        )
    }
}

struct Object {
    /// Instance id in the instance maps (≥ 1).
    id: u16,
    shape: Shape,
    texture: Texture,
    motion: ObjectMotion,
    /// 0 = front-most.
    depth_rank: usize,
    /// One pose per frame.
    poses: Vec<Pose>,
}

impl Object {
    fn moves_after(&self, t: usize) -> Option<bool> {
        Some(self.poses.get(t + 1)? != &self.poses[t])
    }
}

// ---------------------------------------------------------------------------------------------------------
// Scene construction

struct Scene {
    index: usize,
    seed: u64,
    height: usize,
    width: usize,
    background: Texture,
    /// Sorted front to back.
    objects: Vec<Object>,
    /// One camera per frame.
    cameras: Vec<Camera>,
    /// One motion per pair (frame t → t+1).
    camera_motions: Vec<CameraMotion>,
}

/// A frame rendered in memory.
struct Rendered {
    /// RGB, interleaved, row-major.
    rgb: Vec<u8>,
    ids: Vec<u16>,
    /// Forward flow (u, v) interleaved; `None` for the last frame.
    flow_uv: Option<Vec<f32>>,
}

impl Scene {
    fn new(params: &SynthParams, index: usize) -> Self {
        let seed = hash(&[params.seed, index as u64]);
        let mut rng = SplitMix64(seed);
        let (height, width) = (params.height, params.width);
        let pairs = params.frames - 1;

        let background_cell_px = rng.range(18.0, 30.0);
        let background = Texture::random(&mut rng, background_cell_px, params.texture);
        let camera_motions = camera_schedule(&mut rng, pairs, index);
        let cameras = camera_path(&mut rng, &camera_motions, height, width);
        let objects = make_objects(&mut rng, params);
        Self {
            index,
            seed,
            height,
            width,
            background,
            objects,
            cameras,
            camera_motions,
        }
    }

    fn render(&self, t: usize) -> Rendered {
        let (height, width) = (self.height, self.width);
        let camera = &self.cameras[t];
        let next_camera = self.cameras.get(t + 1);
        let mut rgb = Vec::with_capacity(height * width * 3);
        let mut ids = Vec::with_capacity(height * width);
        let mut flow_uv = next_camera.map(|_| Vec::with_capacity(height * width * 2));

        // Bounding circles in world coordinates, to skip objects far from a pixel.
        let bounds: Vec<(f64, f64, f64)> = self
            .objects
            .iter()
            .map(|o| {
                let pose = o.poses[t];
                (pose.x, pose.y, pose.scale * o.shape.radius_px() + 1.0)
            })
            .collect();

        for row in 0..height {
            for col in 0..width {
                let (wx, wy) = camera.to_world(col as f64, row as f64);
                let hit = self.objects.iter().zip(&bounds).find_map(|(object, &(cx, cy, r))| {
                    if (wx - cx).powi(2) + (wy - cy).powi(2) > r * r {
                        return None;
                    }
                    let (sx, sy) = object.poses[t].to_surface(wx, wy);
                    object.shape.contains(sx, sy).then_some((object, sx, sy))
                });
                // The surface point in world coordinates now and at t+1. Mapping both through the cameras
                // (instead of subtracting the pixel position) makes the flow exactly zero when neither the
                // surface nor the camera moves, free of round-off from the inverse mapping.
                let (color, id, world, next_world) = match hit {
                    Some((object, sx, sy)) => {
                        let next = object.poses.get(t + 1).map(|p| p.to_world(sx, sy));
                        (
                            object.texture.color(sx, sy),
                            object.id,
                            object.poses[t].to_world(sx, sy),
                            next,
                        )
                    }
                    None => (self.background.color(wx, wy), 0, (wx, wy), Some((wx, wy))),
                };
                for (channel, value) in color.iter().enumerate() {
                    let noise = (2.0 * hash_unit(&[self.seed, t as u64, row as u64, col as u64, channel as u64]) - 1.0)
                        * NOISE_AMPLITUDE;
                    rgb.push((value + noise).round().clamp(0.0, 255.0) as u8);
                }
                ids.push(id);
                if let (Some(flow), Some(next_camera), Some((nwx, nwy))) = (flow_uv.as_mut(), next_camera, next_world) {
                    let (x0, y0) = camera.to_image(world.0, world.1);
                    let (x1, y1) = next_camera.to_image(nwx, nwy);
                    flow.push((x1 - x0) as f32);
                    flow.push((y1 - y0) as f32);
                }
            }
        }
        Rendered { rgb, ids, flow_uv }
    }

    fn frame_meta(&self, t: usize, ids: &[u16]) -> FrameMeta {
        let camera = self.camera_motions.get(t).map(|&motion| CameraMeta {
            motion,
            is_static: motion == CameraMotion::Static,
        });
        let mut objects: Vec<VisibleObject> = self
            .objects
            .iter()
            .map(|o| VisibleObject {
                id: o.id,
                visible_px: ids.iter().filter(|&&i| i == o.id).count(),
                moving: o.moves_after(t),
            })
            .filter(|o| o.visible_px > 0)
            .collect();
        objects.sort_by_key(|o| o.id);
        FrameMeta {
            frame: frame_name(t),
            camera,
            objects,
        }
    }
}

impl Scene {
    fn summary(&self, files_written: usize, kept: bool) -> SequenceSummary {
        let static_camera_pairs = self
            .camera_motions
            .iter()
            .filter(|m| **m == CameraMotion::Static)
            .count();
        SequenceSummary {
            name: sequence_name(self.index),
            frames: self.cameras.len(),
            objects: self.objects.len(),
            moving_objects: self.objects.iter().filter(|o| o.motion != ObjectMotion::Static).count(),
            static_camera_pairs,
            moving_camera_pairs: self.camera_motions.len() - static_camera_pairs,
            files_written,
            kept,
        }
    }
}

/// Alternating static segments (6–10 pairs) and moving segments (3–5 pairs) whose kind cycles through pan,
/// zoom and shake, starting at a kind that depends on the sequence index so short runs still see all kinds.
fn camera_schedule(rng: &mut SplitMix64, pairs: usize, sequence_index: usize) -> Vec<CameraMotion> {
    const MOVING: [CameraMotion; 3] = [CameraMotion::Pan, CameraMotion::Zoom, CameraMotion::Shake];
    let mut kind = sequence_index % MOVING.len();
    // Short sequences start static so that they still hold one full static segment.
    let mut is_static = pairs < 2 * MIN_STATIC_SEGMENT_PAIRS || rng.chance(0.5);
    let mut schedule = Vec::with_capacity(pairs);
    while schedule.len() < pairs {
        let (motion, length) = if is_static {
            (
                CameraMotion::Static,
                rng.int(MIN_STATIC_SEGMENT_PAIRS, MIN_STATIC_SEGMENT_PAIRS + 4),
            )
        } else {
            kind += 1;
            (MOVING[(kind - 1) % MOVING.len()], rng.int(3, 5))
        };
        schedule.extend(std::iter::repeat_n(motion, length.min(pairs - schedule.len())));
        is_static = !is_static;
    }
    schedule
}

/// Integrates the schedule into one camera per frame. Pan moves the image by 3–6 px per frame (direction
/// mostly horizontal, alternating between segments so the camera does not drift away), zoom scales about the
/// image centre so that the corner regions move by 3.5–5 px per frame, shake jumps 2.5–4 px in a random
/// direction every frame.
fn camera_path(rng: &mut SplitMix64, motions: &[CameraMotion], height: usize, width: usize) -> Vec<Camera> {
    let image_centre_x = (width as f64 - 1.0) / 2.0;
    let image_centre_y = (height as f64 - 1.0) / 2.0;
    let mut camera = Camera {
        centre_x: image_centre_x,
        centre_y: image_centre_y,
        zoom: 1.0,
        image_centre_x,
        image_centre_y,
    };
    // Distance from the image centre to the middle of a 15 % corner region.
    let corner_distance_px = 0.425 * (width as f64).hypot(height as f64);
    let mut pan_sign = rng.sign();
    let mut previous = CameraMotion::Static;
    let mut pan_velocity = (0.0, 0.0);
    let mut zoom_step = 1.0;
    let mut path = Vec::with_capacity(motions.len() + 1);
    path.push(camera);
    for &motion in motions {
        let segment_start = motion != previous;
        match motion {
            CameraMotion::Static => {}
            CameraMotion::Pan => {
                if segment_start {
                    let speed_px = rng.range(3.0, 6.0);
                    let angle = rng.range(-0.5, 0.5);
                    pan_velocity = (pan_sign * speed_px * angle.cos(), speed_px * angle.sin());
                    pan_sign = -pan_sign;
                }
                camera.centre_x -= pan_velocity.0 / camera.zoom;
                camera.centre_y -= pan_velocity.1 / camera.zoom;
            }
            CameraMotion::Zoom => {
                if segment_start {
                    // Zoom in when the camera is zoomed out and vice versa, so the zoom stays near 1.
                    let direction = if camera.zoom < 1.0 {
                        1.0
                    } else if camera.zoom > 1.0 {
                        -1.0
                    } else {
                        rng.sign()
                    };
                    zoom_step = 1.0 + direction * rng.range(3.5, 5.0) / corner_distance_px;
                }
                camera.zoom *= zoom_step;
            }
            CameraMotion::Shake => {
                let jump_px = rng.range(2.5, 4.0);
                let angle = rng.range(0.0, 2.0 * PI);
                camera.centre_x -= jump_px * angle.cos() / camera.zoom;
                camera.centre_y -= jump_px * angle.sin() / camera.zoom;
            }
        }
        previous = motion;
        path.push(camera);
    }
    path
}

/// Objects of one sequence: object 1 is a moving rectangle, object 2 a static rectangle touching it at
/// frame 0, object 3 (if any) starts overlapping object 1 with another velocity; the rest are random, some
/// entering the frame from outside. Every moving object translates by 4.5–7.5 px per frame; rotation and
/// scaling add at most 40 % of that at the object's rim, so every point of a moving object moves by more than
/// 2.7 px in the world.
fn make_objects(rng: &mut SplitMix64, params: &SynthParams) -> Vec<Object> {
    let (frames, height, width) = (params.frames, params.height, params.width);
    let (h, w) = (height as f64, width as f64);
    let count = rng.int(4, 7);
    let base_px = (h.min(w) * f64::from(params.object_size_percent) / 100.0).max(8.0);
    let mut objects: Vec<Object> = Vec::with_capacity(count);
    let mut depth_ranks: Vec<usize> = (0..count).collect();
    for i in (1..count).rev() {
        depth_ranks.swap(i, rng.int(0, i));
    }

    for (index, &depth_rank) in depth_ranks.iter().enumerate() {
        let shape = match index {
            0 | 1 => random_rect(rng, base_px),
            _ => match rng.int(0, 2) {
                0 => random_rect(rng, base_px),
                1 => Shape::Ellipse {
                    radius_x_px: base_px * rng.range(0.45, 0.9),
                    radius_y_px: base_px * rng.range(0.45, 0.9),
                },
                _ => random_polygon(rng, base_px),
            },
        };
        let motion = match index {
            0 => ObjectMotion::Translate,
            1 => ObjectMotion::Static,
            _ if rng.chance(0.3) => ObjectMotion::Static,
            _ => [
                ObjectMotion::Translate,
                ObjectMotion::TranslateRotate,
                ObjectMotion::TranslateScale,
            ][rng.int(0, 2)],
        };
        let speed_px = rng.range(4.5, 7.5);
        let heading = rng.range(-0.6, 0.6) + if rng.chance(0.5) { 0.0 } else { PI };
        let mut velocity = (speed_px * heading.cos(), speed_px * heading.sin());
        let radius_px = shape.radius_px();

        let (start_x, start_y) = match index {
            0 => (rng.range(0.3, 0.5) * w, rng.range(0.35, 0.65) * h),
            1 => {
                let first = &objects[0];
                let touching_x = first.poses[0].x + first.shape.half_width_px() + shape.half_width_px();
                (touching_x, first.poses[0].y + rng.range(-0.3, 0.3) * base_px)
            }
            2 if motion != ObjectMotion::Static => {
                let first = &objects[0];
                (first.poses[0].x + 0.5 * radius_px, first.poses[0].y + 0.4 * radius_px)
            }
            _ if motion != ObjectMotion::Static && rng.chance(0.4) => {
                // Enter from the left or right edge, heading into the frame.
                let from_left = velocity.0 > 0.0;
                let x = if from_left {
                    -0.8 * radius_px
                } else {
                    w - 1.0 + 0.8 * radius_px
                };
                (x, rng.range(0.25, 0.75) * h)
            }
            _ => (rng.range(0.1, 0.9) * w, rng.range(0.2, 0.8) * h),
        };
        if index == 2 && motion != ObjectMotion::Static {
            // Overlapping object 1 but heading roughly the opposite way.
            let first = &objects[0];
            let (first_dx, first_dy) = (first.poses[1].x - first.poses[0].x, first.poses[1].y - first.poses[0].y);
            let opposite = first_dy.atan2(first_dx) + PI + rng.range(-0.5, 0.5);
            velocity = (speed_px * opposite.cos(), speed_px * opposite.sin());
        }

        let rotation_rad = match motion {
            ObjectMotion::TranslateRotate => rng.sign() * rng.range(0.2, 0.4) * speed_px / radius_px,
            _ => 0.0,
        };
        let scale_rate = match motion {
            ObjectMotion::TranslateScale => rng.range(0.2, 0.4) * speed_px / radius_px,
            _ => 0.0,
        };
        // A quarter of the moving objects (never object 1) stop for a few frames.
        let pause = (index > 0 && motion != ObjectMotion::Static && rng.chance(0.25) && frames > 8).then(|| {
            let length = rng.int(3, 5);
            let start = rng.int(1, frames.saturating_sub(length + 1).max(1));
            start..start + length
        });

        let mut pose = Pose {
            x: start_x,
            y: start_y,
            angle_rad: rng.range(-0.3, 0.3),
            scale: 1.0,
        };
        if index <= 1 {
            pose.angle_rad = 0.0;
        }
        let mut scale_direction = rng.sign();
        let mut poses = Vec::with_capacity(frames);
        poses.push(pose);
        for t in 0..frames - 1 {
            let paused = pause.as_ref().is_some_and(|p| p.contains(&t));
            if motion != ObjectMotion::Static && !paused {
                pose.x += velocity.0;
                pose.y += velocity.1;
                pose.angle_rad += rotation_rad;
                if scale_rate > 0.0 {
                    if (pose.scale > 1.5 && scale_direction > 0.0) || (pose.scale < 0.7 && scale_direction < 0.0) {
                        scale_direction = -scale_direction;
                    }
                    pose.scale *= 1.0 + scale_direction * scale_rate / pose.scale.max(1.0);
                }
            }
            poses.push(pose);
        }

        let noise_cell_px = rng.range(8.0, 14.0);
        objects.push(Object {
            id: (index + 1) as u16,
            shape,
            texture: Texture::random(rng, noise_cell_px, params.texture),
            motion,
            depth_rank,
            poses,
        });
    }
    objects.sort_by_key(|o| o.depth_rank);
    objects
}

fn random_rect(rng: &mut SplitMix64, base_px: f64) -> Shape {
    Shape::Rect {
        half_width_px: base_px * rng.range(0.5, 1.0),
        half_height_px: base_px * rng.range(0.4, 0.8),
    }
}

fn random_polygon(rng: &mut SplitMix64, base_px: f64) -> Shape {
    let corners = rng.int(5, 8);
    let radius_px = base_px * rng.range(0.7, 1.0);
    let vertices = (0..corners)
        .map(|k| {
            let angle = 2.0 * PI * (k as f64 + rng.range(-0.2, 0.2)) / corners as f64;
            let r = radius_px * if k % 2 == 0 { 1.0 } else { rng.range(0.55, 0.9) };
            (r * angle.cos(), r * angle.sin())
        })
        .collect();
    Shape::Polygon { vertices }
}

// ---------------------------------------------------------------------------------------------------------
// Atomic file output

/// Between a file's name and the random part in the names of temporaries: `.<name>.tmp-<random>`.
const TEMP_TAG: &str = ".tmp-";

fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_TAG)
}

/// Removes the temporaries a killed run left in `dir` (one generator at a time per directory).
fn remove_temporaries(dir: &Path) -> Result<(), SynthError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SynthError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| SynthError::io(dir, e))?;
        if is_temporary(&entry.file_name().to_string_lossy()) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| SynthError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to a uniquely named hidden temporary beside `path`, then renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{file_name}{TEMP_TAG}");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    // Readable as `fs::write` would make it (0666 less the umask), not tempfile's owner-only default.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let mut temporary = builder.tempfile_in(dir).map_err(|e| SynthError::io(dir, e))?;
    temporary
        .write_all(bytes)
        .map_err(|e| SynthError::io(temporary.path(), e))?;
    temporary.persist(path).map_err(|e| SynthError::io(path, e.error))?;
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SynthError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| SynthError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

fn encode_png(path: &Path, mat: &impl ToInputArray) -> Result<Vec<u8>, SynthError> {
    let encode_error = |message: String| SynthError::Encode {
        path: path.to_path_buf(),
        message,
    };
    let mut buffer = Vector::<u8>::new();
    let params = Vector::<i32>::from_slice(&[imgcodecs::IMWRITE_PNG_COMPRESSION, 3]);
    match imgcodecs::imencode(".png", mat, &mut buffer, &params) {
        Ok(true) => Ok(buffer.iter().collect()),
        Ok(false) => Err(encode_error("OpenCV refused to encode the image as PNG".into())),
        Err(e) => Err(encode_error(e.to_string())),
    }
}

fn write_png_rgb(path: &Path, height: usize, width: usize, rgb: &[u8]) -> Result<(), SynthError> {
    let bgr: Vec<Vec3b> = rgb.chunks_exact(3).map(|p| Vec3b::from([p[2], p[1], p[0]])).collect();
    let mat = Mat::new_rows_cols_with_data(height as i32, width as i32, &bgr).map_err(|e| SynthError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &encode_png(path, &mat)?)
}

fn write_png_u16(path: &Path, height: usize, width: usize, ids: &[u16]) -> Result<(), SynthError> {
    let mat = Mat::new_rows_cols_with_data(height as i32, width as i32, ids).map_err(|e| SynthError::Encode {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &encode_png(path, &mat)?)
}

fn write_flow_npy(path: &Path, height: usize, width: usize, flow_uv: &[f32]) -> Result<(), SynthError> {
    let io_error = |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::with_capacity(flow_uv.len() * 4 + 128);
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[height as u64, width as u64, 2])
        .writer(&mut bytes)
        .begin_nd()
        .map_err(io_error)?;
    writer.extend(flow_uv.iter().copied()).map_err(io_error)?;
    writer.finish().map_err(io_error)?;
    write_atomic(path, &bytes)
}
