//! The synthetic generator's contract, checked on its own files: same seed → same bytes; the flow explains the
//! frames (backward warping with it reproduces frame t far better than zero flow); static-camera pairs have
//! zero background flow in the corners and pass the reference's quasi-static corner rule while moving-camera
//! pairs fail it; moving objects move by more than the 2.5 px foreground threshold everywhere. A stopped run
//! resumes to the bytes of one uninterrupted run; another dataset's directory and parameters beyond the
//! documented bounds are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use mrdino_datasets::synth::{
    frame_name, generate, generate_stoppable, sequence_name, SynthError, SynthParams, SynthRun, TextureStyle,
    MAX_FRAMES, MAX_SEQUENCES, MAX_SIDE_PX, MAX_TOTAL_PIXELS,
};
use opencv::core::{Mat, MatTraitConst, MatTraitConstManual};
use opencv::imgcodecs;
use serde_json::Value;

const FG_THRESHOLD_PX: f32 = 2.5;
const CORNER_THRESHOLD_PX: f32 = 1.7;
const CORNER_FRACTION: f64 = 0.15;

struct Pair {
    frame: Vec<u8>,
    next_frame: Vec<u8>,
    ids: Vec<u16>,
    next_ids: Vec<u16>,
    flow_uv: Vec<f32>,
    camera_motion: String,
}

fn read_rgb(path: &Path) -> Vec<u8> {
    let mat = imgcodecs::imread(path.to_str().expect("utf-8 path"), imgcodecs::IMREAD_COLOR).expect("imread");
    assert_eq!(mat.typ(), opencv::core::CV_8UC3, "{}", path.display());
    mat.data_bytes().expect("continuous").to_vec()
}

fn read_ids(path: &Path) -> Vec<u16> {
    let mat: Mat = imgcodecs::imread(path.to_str().expect("utf-8 path"), imgcodecs::IMREAD_UNCHANGED).expect("imread");
    assert_eq!(
        mat.typ(),
        opencv::core::CV_16UC1,
        "{} is not 16-bit single channel",
        path.display()
    );
    mat.data_typed::<u16>().expect("continuous").to_vec()
}

fn read_flow(path: &Path, height: usize, width: usize) -> Vec<f32> {
    let bytes = fs::read(path).expect("read flow");
    let npy = npyz::NpyFile::new(&bytes[..]).expect("npy header");
    assert_eq!(npy.shape(), &[height as u64, width as u64, 2], "{}", path.display());
    assert_eq!(npy.order(), npyz::Order::C);
    npy.into_vec::<f32>().expect("float32 flow")
}

fn read_meta(dir: &Path, sequence: &str) -> Value {
    let text = fs::read_to_string(dir.join("meta").join(format!("{sequence}.json"))).expect("meta json");
    serde_json::from_str(&text).expect("valid json")
}

fn load_pairs(dir: &Path, params: &SynthParams, sequence: usize) -> Vec<Pair> {
    let name = sequence_name(sequence);
    let meta = read_meta(dir, &name);
    let (h, w) = (params.height, params.width);
    (0..params.frames - 1)
        .map(|t| {
            let (stem, next) = (frame_name(t), frame_name(t + 1));
            let png = |kind: &str, stem: &str| dir.join(kind).join(&name).join(format!("{stem}.png"));
            Pair {
                frame: read_rgb(&png("frames", &stem)),
                next_frame: read_rgb(&png("frames", &next)),
                ids: read_ids(&png("instances", &stem)),
                next_ids: read_ids(&png("instances", &next)),
                flow_uv: read_flow(&dir.join("flow").join(&name).join(format!("{stem}.npy")), h, w),
                camera_motion: meta["frames"][t]["camera"]["motion"]
                    .as_str()
                    .expect("camera motion")
                    .to_string(),
            }
        })
        .collect()
}

fn all_files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(root).expect("under root").to_path_buf();
                files.insert(relative, fs::read(&path).expect("read"));
            }
        }
    }
    files
}

fn generated(params: &SynthParams) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    generate(params, dir.path()).expect("generate");
    dir
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_does_not() {
    let params = SynthParams {
        seed: 11,
        sequences: 2,
        frames: 9,
        height: 48,
        width: 80,
        texture: TextureStyle::Textured,
        object_size_percent: 20,
    };
    let (a, b) = (generated(&params), generated(&params));
    let (files_a, files_b) = (all_files(a.path()), all_files(b.path()));
    assert_eq!(
        files_a.len(),
        1 + 2 * (9 + 9 + 8 + 1),
        "synth.json + per sequence frames, instances, flows, meta"
    );
    assert_eq!(files_a.keys().collect::<Vec<_>>(), files_b.keys().collect::<Vec<_>>());
    for (path, bytes) in &files_a {
        assert!(
            bytes == &files_b[path],
            "{} differs between two runs with the same seed",
            path.display()
        );
    }
    assert!(
        files_a.keys().all(|p| !p.to_string_lossy().contains(".tmp")),
        "temporary files left behind"
    );

    let other = generated(&SynthParams { seed: 12, ..params });
    let files_other = all_files(other.path());
    let frame = PathBuf::from("frames/seq000/000000.png");
    assert_ne!(
        files_a[&frame], files_other[&frame],
        "another seed must give another scene"
    );
}

#[test]
fn invalid_parameters_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    for params in [
        SynthParams {
            frames: 1,
            ..SynthParams::default()
        },
        SynthParams {
            sequences: 0,
            ..SynthParams::default()
        },
        SynthParams {
            height: 8,
            ..SynthParams::default()
        },
        SynthParams {
            object_size_percent: 0,
            ..SynthParams::default()
        },
        SynthParams {
            object_size_percent: 101,
            ..SynthParams::default()
        },
    ] {
        assert!(generate(&params, dir.path()).is_err(), "{params:?} accepted");
    }
}

#[test]
fn object_size_scales_the_objects_and_keeps_the_scene() {
    let small = SynthParams {
        seed: 4,
        sequences: 1,
        frames: 3,
        height: 96,
        width: 160,
        texture: TextureStyle::Flat,
        object_size_percent: 20,
    };
    let large = SynthParams {
        object_size_percent: 40,
        ..small.clone()
    };
    let (a, b) = (generated(&small), generated(&large));
    let instances = |dir: &Path| {
        dir.join("instances")
            .join(sequence_name(0))
            .join(format!("{}.png", frame_name(0)))
    };
    let areas = |ids: &[u16]| {
        let mut area: BTreeMap<u16, usize> = BTreeMap::new();
        for &id in ids.iter().filter(|&&id| id != 0) {
            *area.entry(id).or_default() += 1;
        }
        area
    };
    let (small_areas, large_areas) = (
        areas(&read_ids(&instances(a.path()))),
        areas(&read_ids(&instances(b.path()))),
    );
    let (small_total, large_total): (usize, usize) = (small_areas.values().sum(), large_areas.values().sum());
    // Twice the linear size: about four times the area where objects do not overlap or leave the frame.
    assert!(large_total > 2 * small_total, "{small_total} px → {large_total} px");
    // The same objects (ids, shapes, motions, depth order): the size changes no random draw.
    let meta = |dir: &Path| read_meta(dir, &sequence_name(0))["objects"].clone();
    assert_eq!(meta(a.path()), meta(b.path()));
    assert!(!meta(a.path()).as_array().expect("objects").is_empty());
}

fn bilinear(image: &[u8], width: usize, x: f32, y: f32, channel: usize) -> f32 {
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |r: usize, c: usize| image[(r * width + c) * 3 + channel] as f32;
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
    let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Mean absolute photometric error of frame t against frame t+1 backward-warped with the flow, and against
/// frame t+1 unwarped, over pixels whose flow is at least 1 px and whose target stays in the frame on the same
/// surface (all four bilinear neighbours carry the pixel's instance id in t+1).
fn warp_errors(pair: &Pair, height: usize, width: usize) -> (f64, f64, usize) {
    let (mut warped, mut unwarped, mut count) = (0.0f64, 0.0f64, 0usize);
    for row in 0..height {
        for col in 0..width {
            let p = row * width + col;
            let (u, v) = (pair.flow_uv[2 * p], pair.flow_uv[2 * p + 1]);
            if u.hypot(v) < 1.0 {
                continue;
            }
            let (x, y) = (col as f32 + u, row as f32 + v);
            if !(x >= 0.0 && y >= 0.0 && x < (width - 1) as f32 && y < (height - 1) as f32) {
                continue;
            }
            let (x0, y0) = (x.floor() as usize, y.floor() as usize);
            let same_surface = [(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)]
                .iter()
                .all(|&(r, c)| pair.next_ids[r * width + c] == pair.ids[p]);
            if !same_surface {
                continue;
            }
            for channel in 0..3 {
                let reference = pair.frame[p * 3 + channel] as f32;
                warped += (reference - bilinear(&pair.next_frame, width, x, y, channel)).abs() as f64;
                unwarped += (reference - pair.next_frame[p * 3 + channel] as f32).abs() as f64;
            }
            count += 1;
        }
    }
    (
        warped / (3 * count.max(1)) as f64,
        unwarped / (3 * count.max(1)) as f64,
        count,
    )
}

#[test]
fn flow_explains_the_frames_by_backward_warping() {
    let params = SynthParams::default();
    let dir = generated(&params);
    let mut per_motion: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    for sequence in 0..params.sequences {
        for (t, pair) in load_pairs(dir.path(), &params, sequence).iter().enumerate() {
            let (warped, unwarped, count) = warp_errors(pair, params.height, params.width);
            if count < 200 {
                continue;
            }
            assert!(
                warped < 0.25 * unwarped,
                "seq {sequence} pair {t} ({}): warp error {warped:.2} vs zero-flow error {unwarped:.2} over {count} px",
                pair.camera_motion
            );
            let entry = per_motion.entry(pair.camera_motion.clone()).or_default();
            entry.0 += warped * count as f64;
            entry.1 += unwarped * count as f64;
            entry.2 += count;
        }
    }
    for (motion, (warped, unwarped, count)) in &per_motion {
        let n = *count as f64;
        println!(
            "{motion:>6}: warp error {:.2}, zero-flow error {:.2} (grey levels, {count} px)",
            warped / n,
            unwarped / n
        );
    }
    for motion in ["static", "pan", "zoom", "shake"] {
        assert!(
            per_motion.contains_key(motion),
            "no {motion} pair with moving pixels was generated"
        );
    }
}

/// Means of the flow magnitude over the four corner regions, as the reference computes its corner statistics.
fn corner_means(flow_uv: &[f32], height: usize, width: usize) -> [f32; 4] {
    let (ch, cw) = (
        (height as f64 * CORNER_FRACTION) as usize,
        (width as f64 * CORNER_FRACTION) as usize,
    );
    let mean = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
        let mut sum = 0.0f64;
        for r in rows.clone() {
            for c in cols.clone() {
                let p = r * width + c;
                sum += flow_uv[2 * p].hypot(flow_uv[2 * p + 1]) as f64;
            }
        }
        (sum / (rows.len() * cols.len()) as f64) as f32
    };
    [
        mean(0..ch, 0..cw),
        mean(0..ch, width - cw..width),
        mean(height - ch..height, 0..cw),
        mean(height - ch..height, width - cw..width),
    ]
}

#[test]
fn camera_motion_is_visible_in_the_corners_exactly_when_the_camera_moves() {
    let params = SynthParams::default();
    let dir = generated(&params);
    let (h, w) = (params.height, params.width);
    for sequence in 0..params.sequences {
        let pairs = load_pairs(dir.path(), &params, sequence);
        let mut longest_static_run = 0;
        let mut run = 0;
        for (t, pair) in pairs.iter().enumerate() {
            let passing = corner_means(&pair.flow_uv, h, w)
                .iter()
                .filter(|&&m| m < CORNER_THRESHOLD_PX)
                .count();
            if pair.camera_motion == "static" {
                run += 1;
                longest_static_run = longest_static_run.max(run);
                assert!(
                    passing >= 3,
                    "seq {sequence} pair {t}: static camera but only {passing} quiet corners"
                );
                let (ch, cw) = (
                    (h as f64 * CORNER_FRACTION) as usize,
                    (w as f64 * CORNER_FRACTION) as usize,
                );
                for r in (0..ch).chain(h - ch..h) {
                    for c in (0..cw).chain(w - cw..w) {
                        let p = r * w + c;
                        if pair.ids[p] == 0 {
                            assert_eq!(
                                (pair.flow_uv[2 * p], pair.flow_uv[2 * p + 1]),
                                (0.0, 0.0),
                                "background flow at {r},{c}"
                            );
                        }
                    }
                }
            } else {
                run = 0;
                assert!(
                    passing < 3,
                    "seq {sequence} pair {t}: camera {} but {passing} quiet corners",
                    pair.camera_motion
                );
            }
        }
        assert!(
            longest_static_run >= 6,
            "seq {sequence}: longest static-camera run is {longest_static_run} pairs"
        );
    }
}

#[test]
fn moving_objects_exceed_the_foreground_threshold_and_static_ones_do_not_move() {
    let params = SynthParams::default();
    let dir = generated(&params);
    let (mut moving_checked, mut static_checked) = (0, 0);
    let (mut entered, mut left) = (false, false);
    for sequence in 0..params.sequences {
        let meta = read_meta(dir.path(), &sequence_name(sequence));
        let frames = meta["frames"].as_array().expect("frames");
        let visible_ids = |t: usize| -> Vec<u64> {
            frames[t]["objects"]
                .as_array()
                .expect("objects")
                .iter()
                .map(|o| o["id"].as_u64().expect("id"))
                .collect()
        };
        for t in 1..frames.len() {
            let (before, now) = (visible_ids(t - 1), visible_ids(t));
            entered |= now.iter().any(|id| !before.contains(id));
            left |= before.iter().any(|id| !now.contains(id));
        }
        for (t, pair) in load_pairs(dir.path(), &params, sequence).iter().enumerate() {
            for object in frames[t]["objects"].as_array().expect("objects") {
                let id = object["id"].as_u64().expect("id") as u16;
                let pixels: Vec<usize> = (0..pair.ids.len()).filter(|&p| pair.ids[p] == id).collect();
                assert_eq!(pixels.len() as u64, object["visible_px"].as_u64().expect("visible_px"));
                let magnitudes = pixels
                    .iter()
                    .map(|&p| pair.flow_uv[2 * p].hypot(pair.flow_uv[2 * p + 1]));
                if pair.camera_motion != "static" {
                    continue;
                }
                if object["moving"].as_bool().expect("moving") {
                    let slowest = magnitudes.fold(f32::INFINITY, f32::min);
                    assert!(
                        slowest > FG_THRESHOLD_PX,
                        "seq {sequence} frame {t} object {id}: {slowest} px"
                    );
                    moving_checked += 1;
                } else {
                    let fastest = magnitudes.fold(0.0, f32::max);
                    assert_eq!(fastest, 0.0, "seq {sequence} frame {t}: static object {id} has flow");
                    static_checked += 1;
                }
            }
        }
    }
    assert!(
        moving_checked > 10 && static_checked > 10,
        "{moving_checked} moving, {static_checked} static checked"
    );
    assert!(
        entered && left,
        "objects should enter ({entered}) and leave ({left}) the frame"
    );
}

#[test]
fn flat_scenes_share_the_textured_geometry_and_give_each_surface_one_colour() {
    let textured = SynthParams {
        seed: 5,
        sequences: 1,
        frames: 4,
        height: 64,
        width: 96,
        texture: TextureStyle::Textured,
        object_size_percent: 20,
    };
    let flat = SynthParams {
        texture: TextureStyle::Flat,
        ..textured.clone()
    };
    let (a, b) = (generated(&textured), generated(&flat));
    let (files_a, files_b) = (all_files(a.path()), all_files(b.path()));
    for (path, bytes) in &files_a {
        let text = path.to_string_lossy();
        if text.starts_with("instances") || text.starts_with("flow") || text.starts_with("meta") {
            assert!(
                bytes == &files_b[path],
                "{text}: the style changed the geometry or the motion"
            );
        }
    }
    let json: Value = serde_json::from_slice(&files_b[&PathBuf::from("synth.json")]).expect("synth.json");
    assert_eq!(json["params"]["texture"], "flat");

    // Per surface (id) and channel, the spread of the pixel values is the photometric noise (±3, so ≤ 6),
    // except where a pixel's centre is on one surface and the colour is rounded; the textured scene spreads far.
    let spread = |dir: &Path| -> u8 {
        let name = sequence_name(0);
        let mut worst = 0;
        for t in 0..4 {
            let stem = frame_name(t);
            let rgb = read_rgb(&dir.join("frames").join(&name).join(format!("{stem}.png")));
            let ids = read_ids(&dir.join("instances").join(&name).join(format!("{stem}.png")));
            let mut range: BTreeMap<(u16, usize), (u8, u8)> = BTreeMap::new();
            for (p, &id) in ids.iter().enumerate() {
                for c in 0..3 {
                    let v = rgb[3 * p + c];
                    let e = range.entry((id, c)).or_insert((v, v));
                    *e = (e.0.min(v), e.1.max(v));
                }
            }
            worst = worst.max(range.values().map(|(lo, hi)| hi - lo).max().expect("pixels"));
        }
        worst
    };
    assert!(spread(b.path()) <= 7, "flat surfaces spread {}", spread(b.path()));
    assert!(
        spread(a.path()) > 60,
        "textured surfaces spread only {}",
        spread(a.path())
    );
}

/// Three sequences of seven frames, small.
fn resumable() -> SynthParams {
    SynthParams {
        seed: 5,
        sequences: 3,
        frames: 7,
        height: 32,
        width: 48,
        texture: TextureStyle::Textured,
        object_size_percent: 30,
    }
}

/// A `should_stop` that lets `frames` frames through, then says stop.
fn stop_after(frames: usize) -> impl Fn() -> bool {
    let asked = Cell::new(0);
    move || {
        asked.set(asked.get() + 1);
        asked.get() > frames
    }
}

fn record(dir: &Path) -> Value {
    serde_json::from_slice(&fs::read(dir.join("synth.json")).expect("synth.json")).expect("json")
}

#[test]
fn a_stopped_run_resumes_to_the_bytes_of_one_uninterrupted_run() {
    let params = resumable();
    let whole = generated(&params);
    let expected = all_files(whole.path());
    assert_eq!(record(whole.path())["complete"], true);

    // Stops before the first frame, inside sequence 0, at the boundary to sequence 1, inside sequence 2; then
    // twice in a row (two interruptions) before the run that completes.
    for stops in [vec![0], vec![3], vec![7], vec![17], vec![2, 9]] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut complete_before = 0;
        for &frames in &stops {
            match generate_stoppable(&params, dir.path(), &stop_after(frames)).expect("generate") {
                SynthRun::Stopped(stopped) => {
                    // Complete sequences are kept; the incomplete one restarts at its first frame.
                    assert_eq!(stopped.sequences_complete, complete_before + frames / 7, "{stops:?}");
                    complete_before = stopped.sequences_complete;
                    assert_eq!(stopped.sequences_planned, 3);
                }
                SynthRun::Complete(_) => panic!("{stops:?}: not stopped"),
            }
            assert_eq!(record(dir.path())["complete"], false, "{stops:?}");
        }
        // A run killed while writing leaves a temporary behind; the rerun removes it.
        let frames_dir = dir.path().join("frames").join(sequence_name(complete_before));
        fs::create_dir_all(&frames_dir).expect("dir");
        fs::write(frames_dir.join(".000001.png.tmp-Ab3dEf"), b"half a png").expect("temporary");

        let summary = generate(&params, dir.path()).expect("resume");
        assert_eq!(summary.sequences_kept(), complete_before, "{stops:?}");
        let files = all_files(dir.path());
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{stops:?}"
        );
        for (path, bytes) in &files {
            assert!(
                bytes == &expected[path],
                "{stops:?}: {} differs from one run's",
                path.display()
            );
        }
    }

    // A complete directory is kept as it is.
    let modified = |dir: &Path| {
        fs::metadata(dir.join("synth.json"))
            .expect("meta")
            .modified()
            .expect("mtime")
    };
    let before = modified(whole.path());
    let again = generate(&params, whole.path()).expect("rerun");
    assert_eq!((again.files_written(), again.sequences_kept()), (0, 3));
    assert_eq!(modified(whole.path()), before);
    assert_eq!(all_files(whole.path()), expected);
}

#[test]
fn a_directory_of_another_dataset_or_of_other_files_is_refused() {
    let params = resumable();
    let dir = generated(&params);
    let before = all_files(dir.path());
    let longer = SynthParams {
        frames: 9,
        seed: 6,
        ..params.clone()
    };
    let err = generate(&longer, dir.path()).expect_err("another dataset's directory accepted");
    assert!(matches!(err, SynthError::OtherDataset { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("(frames: recorded 7, this run 9; seed: recorded 5, this run 6)"),
        "{text}"
    );
    assert_eq!(all_files(dir.path()), before, "a refused run changed the directory");

    let foreign = tempfile::tempdir().expect("tempdir");
    fs::create_dir(foreign.path().join("frames")).expect("dir");
    fs::write(foreign.path().join("notes.txt"), b"mine").expect("file");
    let err = generate(&params, foreign.path()).expect_err("a foreign directory accepted");
    assert!(matches!(err, SynthError::NotSynthDirectory { .. }), "{err}");
    assert!(err.to_string().contains("frames, notes.txt"), "{err}");
    assert!(!foreign.path().join("synth.json").exists());

    // A record written by earlier versions (last, without `complete`) counts as complete.
    let mut old = record(dir.path());
    old.as_object_mut().expect("object").remove("complete");
    fs::write(
        dir.path().join("synth.json"),
        serde_json::to_vec_pretty(&old).expect("json"),
    )
    .expect("write");
    let kept = generate(&params, dir.path()).expect("old record");
    assert_eq!((kept.files_written(), kept.sequences_kept()), (0, 3));
}

#[test]
fn parameters_beyond_the_documented_bounds_are_refused_naming_the_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = SynthParams::default();
    for (params, bound) in [
        (
            SynthParams {
                sequences: MAX_SEQUENCES + 1,
                ..base.clone()
            },
            format!("1..={MAX_SEQUENCES}"),
        ),
        (
            SynthParams {
                frames: MAX_FRAMES + 1,
                ..base.clone()
            },
            format!("2..={MAX_FRAMES}"),
        ),
        (
            SynthParams {
                width: MAX_SIDE_PX + 1,
                ..base.clone()
            },
            format!("..={MAX_SIDE_PX} px"),
        ),
        (
            SynthParams {
                sequences: MAX_SEQUENCES,
                frames: MAX_FRAMES,
                ..base.clone()
            },
            format!("at most {MAX_TOTAL_PIXELS} pixels"),
        ),
    ] {
        let err = generate(&params, dir.path()).expect_err("beyond a bound");
        assert!(err.to_string().contains(&bound), "{err} does not name {bound}");
    }
    assert_eq!(
        fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "a refused run wrote files"
    );
}
