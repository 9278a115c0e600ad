//! End-to-end tests: each builds a small dataset in a temporary directory, runs the real `mrdino` binary and
//! reads the Parquet tables back (in Rust, and with pyarrow, duckdb and pycocotools).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use common::{mrdino, python, run_ok};

use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_outputs::tables::{read_frames, read_instances, ExcludedReason, InstanceOrigin};
use mrdino_outputs::{FrameRow, InstanceRow};
use mrdino_stages::flow::files::encode_npy;
use mrdino_stages::flow::FlowField;
use opencv::core::{Mat, Vector};
use opencv::prelude::*;

const H: usize = 64;
const W: usize = 96;

/// A textured RGB frame (content only matters for decoding; flow is imported).
fn write_frame(path: &Path, seed: usize) {
    let mut data = Vec::with_capacity(H * W * 3);
    for r in 0..H {
        for c in 0..W {
            let v = ((r * 7 + c * 13 + seed * 31) % 251) as u8;
            data.extend([v, v.wrapping_mul(3), 255 - v]);
        }
    }
    let mat = Mat::new_rows_cols_with_data(H as i32, (W * 3) as i32, &data)
        .unwrap()
        .reshape(3, H as i32)
        .unwrap()
        .try_clone()
        .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut buf = Vector::<u8>::new();
    opencv::imgcodecs::imencode_def(".png", &mat, &mut buf).unwrap();
    std::fs::write(path, buf.as_slice()).unwrap();
}

/// What moves in one frame pair.
#[derive(Clone, Copy)]
enum Scene {
    /// The whole image moves by 3 px: camera motion.
    Pan,
    /// Static camera, nothing moves.
    Still,
    /// Static camera; a 20×15 box moves right by 4 px and a 12×12 box up by 5 px.
    TwoBoxes,
    /// Static camera; two touching boxes (u = 3 and u = 12) form one component with an interior flow step.
    Touching,
}

fn flow_for(scene: Scene) -> FlowField {
    let mut f = FlowField::zeros(H, W);
    let mut set = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, u: f32, v: f32| {
        for r in rows {
            for c in cols.clone() {
                f.uv[2 * (r * W + c)] = u;
                f.uv[2 * (r * W + c) + 1] = v;
            }
        }
    };
    match scene {
        Scene::Pan => set(0..H, 0..W, 3.0, 0.0),
        Scene::Still => {}
        Scene::TwoBoxes => {
            set(20..35, 30..50, 4.0, 0.0);
            set(10..22, 70..82, 0.0, -5.0);
        }
        Scene::Touching => {
            set(14..54, 18..48, 3.0, 0.0);
            set(14..54, 48..80, 12.0, 0.0);
        }
    }
    f
}

/// Writes a sequence: frames `root/frames/<seq>/<i>.png` and flows `root/flow/<seq>/<i>.npy`.
fn write_sequence(root: &Path, seq: &str, scenes: &[Scene]) {
    for (i, scene) in scenes.iter().enumerate() {
        write_frame(&root.join("frames").join(seq).join(format!("{i:04}.png")), i);
        let flow = root.join("flow").join(seq).join(format!("{i:04}.npy"));
        std::fs::create_dir_all(flow.parent().unwrap()).unwrap();
        std::fs::write(flow, encode_npy(&flow_for(*scene))).unwrap();
    }
    write_frame(
        &root.join("frames").join(seq).join(format!("{:04}.png", scenes.len())),
        scenes.len(),
    );
}

fn fixture(root: &Path) {
    use Scene::*;
    // cam_a: 3 panning frames, then a quasi-static run of 8 with two moving boxes.
    write_sequence(
        root,
        "cam_a",
        &[
            Pan, Pan, Pan, TwoBoxes, TwoBoxes, TwoBoxes, TwoBoxes, TwoBoxes, Touching, Touching, TwoBoxes,
        ],
    );
    // cam_b: a run of 4 (too short), a pan, then a run of 7 in which only 2 frames have enough foreground.
    write_sequence(
        root,
        "cam_b",
        &[
            TwoBoxes, TwoBoxes, TwoBoxes, TwoBoxes, Pan, TwoBoxes, TwoBoxes, Still, Still, Still, Still, Still,
        ],
    );
}

fn tables(out: &Path) -> (Vec<FrameRow>, Vec<InstanceRow>) {
    let mut frames = Vec::new();
    let mut instances = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for table in ["frames", "instances"] {
        for part in std::fs::read_dir(out.join(table)).unwrap() {
            for f in std::fs::read_dir(part.unwrap().path()).unwrap() {
                files.push(f.unwrap().path());
            }
        }
    }
    files.sort();
    for f in files {
        if f.to_string_lossy().contains("/frames/") {
            frames.extend(read_frames(&f).unwrap());
        } else {
            instances.extend(read_instances(&f).unwrap());
        }
    }
    (frames, instances)
}

/// `mrdino labels` on `frames` with flow imported from `flow_dir`.
fn import_cmd(frames: &Path, flow_dir: &Path, out: &Path) -> Command {
    let mut cmd = mrdino();
    cmd.args(["labels", "--dataset", "frames", "--quiet", "--flow", "import"])
        .arg("--root")
        .arg(frames)
        .arg("--flow-dir")
        .arg(flow_dir)
        .arg("--out")
        .arg(out);
    cmd
}

/// `import_cmd` on a fixture root holding `frames/` and `flow/`.
fn labels_cmd(root: &Path, out: &Path) -> Command {
    import_cmd(&root.join("frames"), &root.join("flow"), out)
}

#[test]
fn labels_from_imported_flow_follow_the_reference_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("data"), dir.path().join("out"));
    fixture(&root);
    run_ok(labels_cmd(&root, &out).args(["--overlays", "2"]));
    let (frames, instances) = tables(&out);

    // Overlays of labelled frames, at the frame size.
    let overlays: Vec<PathBuf> = std::fs::read_dir(out.join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(overlays.len(), 2);
    for path in &overlays {
        let image = opencv::imgcodecs::imread(path.to_str().unwrap(), opencv::imgcodecs::IMREAD_COLOR).unwrap();
        assert_eq!((image.rows(), image.cols()), (H as i32, W as i32), "{}", path.display());
    }

    // Every frame but the last of each sequence has a row, in order.
    let a: Vec<&FrameRow> = frames.iter().filter(|f| f.sequence_id == "cam_a").collect();
    let b: Vec<&FrameRow> = frames.iter().filter(|f| f.sequence_id == "cam_b").collect();
    assert_eq!(a.len(), 11);
    assert_eq!(b.len(), 12);
    assert!(a
        .iter()
        .enumerate()
        .all(|(i, f)| f.frame_index as usize == i && f.frame_name == format!("{i:04}")));
    let reasons = |rows: &[&FrameRow]| {
        rows.iter()
            .map(|f| f.excluded_reason.map(ExcludedReason::name).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(reasons(&a)[..3], ["camera_motion", "camera_motion", "camera_motion"]);
    assert!(a[3..]
        .iter()
        .all(|f| f.labelled && f.segment == Some(0) && f.quasi_static));
    assert_eq!(
        reasons(&b),
        [
            "short_run",
            "short_run",
            "short_run",
            "short_run",
            "camera_motion",
            "short_segment",
            "short_segment",
            "fg_too_small",
            "fg_too_small",
            "fg_too_small",
            "fg_too_small",
            "fg_too_small"
        ]
    );
    assert!(b[5..].iter().all(|f| f.segment == Some(0)));
    assert_eq!(a[0].corner_flow_px, Some([3.0; 4]));
    assert_eq!(
        a[3].fg_fraction,
        Some(((20 * 15 + 12 * 12) as f64 / (H * W) as f64) as f32)
    );
    assert_eq!(
        (a[0].height, a[0].width, a[0].orig_height, a[0].orig_width),
        (64, 96, 64, 96)
    );
    assert_eq!(a[0].source_path, "cam_a/0000.png");

    // Instances only for labelled frames: two boxes, in raster order of their first pixel.
    assert!(instances.iter().all(|i| i.sequence_id == "cam_a"));
    let f3: Vec<&InstanceRow> = instances.iter().filter(|i| i.frame_index == 3).collect();
    assert_eq!(f3.len(), 2);
    assert_eq!(
        (f3[0].instance_id, f3[0].area_px, f3[0].bbox_xywh),
        (1, 144, [70.0, 10.0, 12.0, 12.0])
    );
    assert_eq!(
        (f3[1].instance_id, f3[1].area_px, f3[1].bbox_xywh),
        (2, 300, [30.0, 20.0, 20.0, 15.0])
    );
    assert_eq!(f3[1].mean_flow_px, 4.0);
    assert!(f3
        .iter()
        .all(|i| i.origin == InstanceOrigin::Component && i.hdbscan_label.is_none()));
    // The touching pair has an interior flow step and goes through HDBSCAN.
    let f8: Vec<&InstanceRow> = instances.iter().filter(|i| i.frame_index == 8).collect();
    assert!(f8
        .iter()
        .all(|i| i.origin == InstanceOrigin::Hdbscan && i.component_id == 1 && i.hdbscan_label.is_some()));
    let labelled_instances: u32 = frames.iter().map(|f| f.num_instances).sum();
    assert_eq!(labelled_instances as usize, instances.len());

    // Readable by pyarrow and duckdb; pycocotools decodes every mask to exactly the instance pixels.
    let check = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/check_outputs.py"))
        .arg(&out)
        .arg("--flow-dir")
        .arg(root.join("flow"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the Python checker with {}: {e} (set MRDINO_PYTHON)",
                python().display()
            )
        });
    assert!(
        check.status.success(),
        "python check failed:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(summary["masks_checked"].as_u64().unwrap() as usize, instances.len());
}

#[test]
fn rerun_skips_done_units_and_keeps_rows_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("data"), dir.path().join("out"));
    fixture(&root);
    run_ok(&mut labels_cmd(&root, &out));
    let first = tables(&out);
    let again = run_ok(&mut labels_cmd(&root, &out));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("2 already done"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(tables(&out), first);
}

#[test]
fn bad_input_fails_before_any_output_with_the_path_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = dir.path().join("nope");
    let result = mrdino()
        .args(["labels", "--dataset", "kitti", "--quiet"])
        .arg("--root")
        .arg(&missing)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!out.exists());

    let bad_size = mrdino()
        .args(["labels", "--dataset", "frames", "--resize", "10y3"])
        .arg("--root")
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(bad_size.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_size.stderr).contains("expected WxH"));
}

#[test]
fn flow_size_mismatch_is_reported_with_both_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("data"), dir.path().join("out"));
    fixture(&root);
    let result = labels_cmd(&root, &out).args(["--resize", "48x32"]).output().unwrap();
    assert_eq!(
        result.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("0000.npy: flow is 96x64 but frames are processed at 48x32"),
        "{stderr}"
    );
}

/// Frames with real texture and a textured box moving 6 px right per frame over a static background.
fn write_moving_box_frames(dir: &Path, frames: usize, height: usize, width: usize) {
    let texture = |r: i64, c: i64, salt: i64| -> u8 {
        let (x, y) = (c as f32, r as f32);
        let v = 128.0 + 50.0 * (x * 0.23 + salt as f32).sin() * (y * 0.19).cos() + 40.0 * ((x + 2.0 * y) * 0.09).sin();
        v.clamp(0.0, 255.0) as u8
    };
    for k in 0..frames {
        let shift = 6 * k as i64;
        let mut data = Vec::with_capacity(height * width * 3);
        for r in 0..height as i64 {
            for c in 0..width as i64 {
                let inside = (40..90).contains(&r) && (20 + shift..70 + shift).contains(&c);
                let v = if inside {
                    texture(r, c - shift, 7) / 2 + 100
                } else {
                    texture(r, c, 0)
                };
                data.extend([v, v / 2 + 60, 255 - v]);
            }
        }
        let mat = Mat::new_rows_cols_with_data(height as i32, (width * 3) as i32, &data)
            .unwrap()
            .reshape(3, height as i32)
            .unwrap()
            .try_clone()
            .unwrap();
        let mut buf = Vector::<u8>::new();
        opencv::imgcodecs::imencode_def(".png", &mat, &mut buf).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{k:03}.png")), buf.as_slice()).unwrap();
    }
}

#[test]
fn dis_flow_finds_the_moving_box_and_flow_export_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("frames");
    write_moving_box_frames(&root.join("clip"), 8, 128, 160);
    let out = dir.path().join("out");
    run_ok(
        mrdino()
            .args(["labels", "--dataset", "frames", "--quiet", "--flow", "dis"])
            .arg("--root")
            .arg(&root)
            .arg("--out")
            .arg(&out),
    );
    let (frames, instances) = tables(&out);
    assert_eq!(frames.len(), 7);
    assert!(frames.iter().all(|f| f.quasi_static && f.labelled), "{frames:?}");
    for f in &frames {
        let own: Vec<&InstanceRow> = instances.iter().filter(|i| i.frame_index == f.frame_index).collect();
        let biggest = own.iter().max_by_key(|i| i.area_px).expect("an instance per frame");
        // The box is 50×50 at x = 20 + 6k; DIS finds most of it.
        let [x, y, w, h] = biggest.bbox_xywh;
        let cx = x + w / 2.0;
        let expected_cx = 45.0 + 6.0 * f.frame_index as f32;
        assert!(
            (cx - expected_cx).abs() < 12.0 && (y + h / 2.0 - 65.0).abs() < 12.0,
            "frame {}: {:?}",
            f.frame_index,
            biggest.bbox_xywh
        );
        assert!(
            biggest.area_px > 1200 && (biggest.mean_flow_px - 6.0).abs() < 1.5,
            "{biggest:?}"
        );
    }

    // Exported flow, imported back, gives the same rows.
    let flow_dir = dir.path().join("flow");
    run_ok(
        mrdino()
            .args(["flow", "--dataset", "frames", "--quiet", "--flow", "dis"])
            .arg("--root")
            .arg(&root)
            .arg("--out")
            .arg(&flow_dir),
    );
    assert_eq!(std::fs::read_dir(flow_dir.join("clip")).unwrap().count(), 7);
    let out2 = dir.path().join("out2");
    run_ok(&mut import_cmd(&root, &flow_dir, &out2));
    let (frames2, instances2) = tables(&out2);
    assert_eq!(instances2, instances);
    assert_eq!(frames2.len(), frames.len());
    assert!(frames2
        .iter()
        .zip(&frames)
        .all(|(a, b)| a.corner_flow_px == b.corner_flow_px && a.excluded_reason == b.excluded_reason));
}

/// Random-weight RAFT-small converted to safetensors with the project's converter.
fn random_raft_small(dir: &Path) -> PathBuf {
    let pth = dir.join("raft_small_random.pth");
    let out = dir.join("raft_small_random.safetensors");
    let script = format!(
        "import torch, torchvision\ntorch.manual_seed(0)\nm = torchvision.models.optical_flow.raft_small(weights=None)\ntorch.save(m.state_dict(), {:?})\n",
        pth.display().to_string()
    );
    let gen = Command::new(python())
        .args(["-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python().display()));
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    let conv = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/convert_raft.py"))
        .arg(&pth)
        .arg(&out)
        .output()
        .unwrap();
    assert!(conv.status.success(), "{}", String::from_utf8_lossy(&conv.stderr));
    out
}

#[test]
fn raft_small_with_random_weights_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("frames");
    write_moving_box_frames(&root.join("clip"), 6, 128, 160);
    let weights = random_raft_small(dir.path());
    let out = dir.path().join("out");
    let net = |cmd: &mut Command| {
        cmd.args([
            "--quiet",
            "--flow",
            "raft-small",
            "--flow-batch",
            "2",
            "--device",
            "cpu",
            "--torch-threads",
            "2",
        ])
        .arg("--weights")
        .arg(&weights)
        .arg("--root")
        .arg(&root);
    };
    let mut labels = mrdino();
    labels.args(["labels", "--dataset", "frames"]).arg("--out").arg(&out);
    net(&mut labels);
    run_ok(&mut labels);
    let (frames, instances) = tables(&out);
    assert_eq!(frames.len(), 5);
    assert!(frames
        .iter()
        .all(|f| f.corner_flow_px.is_some_and(|c| c.iter().all(|x| x.is_finite()))));
    // The weights' identity (a digest of their tensors) is part of the parameters and of every file's metadata.
    let file = std::fs::read_dir(out.join("frames"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let file = std::fs::read_dir(file).unwrap().next().unwrap().unwrap().path();
    let (_, meta) = mrdino_outputs::tables::read_parquet(&file).unwrap();
    let sha = meta
        .iter()
        .find(|(k, _)| k == "mrdino.flow_weights_sha256")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(sha.starts_with("tensors-sha256:") && sha.len() == 79, "{sha}");
    assert!(meta
        .iter()
        .any(|(k, v)| k == "mrdino.params" && v.contains(&sha) && v.contains("raft-small")));

    // The same network through `mrdino flow` and `--flow import` gives the same rows.
    let flow_dir = dir.path().join("flow");
    let mut export = mrdino();
    export.args(["flow", "--dataset", "frames"]).arg("--out").arg(&flow_dir);
    net(&mut export);
    run_ok(&mut export);
    let out2 = dir.path().join("out2");
    run_ok(&mut import_cmd(&root, &flow_dir, &out2));
    let (frames2, instances2) = tables(&out2);
    assert_eq!(instances2, instances);
    assert!(frames2
        .iter()
        .zip(&frames)
        .all(|(a, b)| a.corner_flow_px == b.corner_flow_px));

    // Weights of another architecture are refused by name.
    let wrong = mrdino()
        .args(["labels", "--dataset", "frames", "--quiet", "--flow", "smurf"])
        .arg("--weights")
        .arg(&weights)
        .arg("--root")
        .arg(&root)
        .arg("--out")
        .arg(dir.path().join("o3"))
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("holds raft-small weights, not smurf"));
}

// ---------------------------------------------------------------------------------------------------------
// Batch behaviour: resume after kill -9 and SIGTERM, shards, threads, failures, parameter changes.

/// Eight sequences of 24 frames with imported flow: boxes moving over a static background, with panning
/// stretches, so every sequence has labelled and unlabelled frames.
fn batch_fixture(root: &Path) {
    use Scene::*;
    for s in 0..8 {
        let scenes: Vec<Scene> = (0..23)
            .map(|k| match (k + s) % 12 {
                0 | 1 => Pan,
                5 | 6 => Touching,
                _ => TwoBoxes,
            })
            .collect();
        write_sequence(root, &format!("seq_{s:02}"), &scenes);
    }
}

/// `count` sequences of `frames` frames with imported flow; each has a quasi-static run of boxes and some
/// have a pan at a different place, so labelled and unlabelled frames mix.
fn many_short_sequences(root: &Path, count: usize, frames: usize) {
    use Scene::*;
    for s in 0..count {
        let scenes: Vec<Scene> = (0..frames - 1)
            .map(|k| match (k + s) % 9 {
                0 => Pan,
                4 => Touching,
                _ => TwoBoxes,
            })
            .collect();
        write_sequence(root, &format!("s{s:02}"), &scenes);
    }
}

fn sorted_tables(out: &Path) -> (Vec<FrameRow>, Vec<InstanceRow>) {
    let (mut f, mut i) = tables(out);
    f.sort_by(|a, b| (&a.sequence_id, a.frame_index).cmp(&(&b.sequence_id, b.frame_index)));
    i.sort_by(|a, b| {
        (&a.sequence_id, a.frame_index, a.instance_id).cmp(&(&b.sequence_id, b.frame_index, b.instance_id))
    });
    (f, i)
}

fn hidden_or_temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for table in ["frames", "instances"] {
        for part in std::fs::read_dir(dir.join(table)).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(part.path()).into_iter().flatten().flatten() {
                if !f.file_name().to_string_lossy().ends_with(".parquet")
                    || f.file_name().to_string_lossy().starts_with('.')
                {
                    found.push(f.path());
                }
            }
        }
    }
    found
}

#[test]
fn kill_9_at_random_moments_then_resume_gives_the_uninterrupted_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    batch_fixture(&root);
    let reference_out = dir.path().join("reference");
    run_ok(&mut labels_cmd(&root, &reference_out));
    let reference = sorted_tables(&reference_out);
    assert_eq!(reference.0.len(), 8 * 23);

    let out = dir.path().join("out");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..4 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay_ms = 30 + state % 400;
        let mut child = labels_cmd(&root, &out).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        eprintln!("round {round}: killed after {delay_ms} ms ({status:?})");
    }
    run_ok(&mut labels_cmd(&root, &out));
    assert_eq!(sorted_tables(&out), reference);
    assert!(
        hidden_or_temp_files(&out).is_empty(),
        "{:?}",
        hidden_or_temp_files(&out)
    );
}

#[test]
fn sigterm_stops_cleanly_and_the_same_command_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // Many sequences, one thread: the run is far from finished when the first unit is done.
    many_short_sequences(&root, 48, 12);
    let reference_out = dir.path().join("reference");
    run_ok(&mut labels_cmd(&root, &reference_out));

    let out = dir.path().join("out");
    let child = labels_cmd(&root, &out)
        .args(["--threads", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run is under way (the first unit is done), then ask it to stop.
    let done_dir = |out: &Path| {
        std::fs::read_dir(out.join("_done"))
            .into_iter()
            .flatten()
            .flatten()
            .next()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while done_dir(&out).is_none_or(|d| std::fs::read_dir(d.path()).map_or(true, |mut e| e.next().is_none()))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let result = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("run the same command again to resume"), "{stderr}");
    let done_after_stop = std::fs::read_dir(done_dir(&out).unwrap().path()).unwrap().count();
    assert!((1..48).contains(&done_after_stop), "{done_after_stop} units done");
    run_ok(&mut labels_cmd(&root, &out));
    assert_eq!(sorted_tables(&out), sorted_tables(&reference_out));
}

#[test]
fn three_shards_equal_one_run_and_status_and_finalize_track_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    batch_fixture(&root);
    let single = dir.path().join("single");
    run_ok(&mut labels_cmd(&root, &single));

    let out = dir.path().join("sharded");
    run_ok(labels_cmd(&root, &out).args(["--shard", "0/3"]));
    // Two shards missing: status lists them as a Slurm array expression; finalize refuses.
    let status = mrdino().arg("status").arg("--out").arg(&out).output().unwrap();
    assert_eq!(status.status.code(), Some(3));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("shards to rerun (of 3): --array=1-2"), "{text}");
    let fin = mrdino().arg("finalize").arg("--out").arg(&out).output().unwrap();
    assert_eq!(fin.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&fin.stderr).contains("not finalized"));

    // Slurm's variables select the shard when --shard is absent.
    run_ok(
        labels_cmd(&root, &out)
            .env("SLURM_ARRAY_TASK_ID", "1")
            .env("SLURM_ARRAY_TASK_COUNT", "3"),
    );
    run_ok(labels_cmd(&root, &out).args(["--shard", "2/3"]));
    assert_eq!(sorted_tables(&out), sorted_tables(&single));
    let status = run_ok(mrdino().arg("status").arg("--out").arg(&out));
    assert!(String::from_utf8_lossy(&status.stdout).contains("all shards complete"));
    let fin = run_ok(mrdino().arg("finalize").arg("--out").arg(&out));
    let path = String::from_utf8_lossy(&fin.stdout)
        .trim()
        .trim_start_matches("finalized: ")
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(manifest["units"], 8);
    assert_eq!(manifest["frames"], 8 * 23);
    let (frames, instances) = sorted_tables(&single);
    assert_eq!(
        manifest["labelled_frames"].as_u64().unwrap() as usize,
        frames.iter().filter(|f| f.labelled).count()
    );
    assert_eq!(manifest["instances"].as_u64().unwrap() as usize, instances.len());
}

#[test]
fn thread_count_does_not_change_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    batch_fixture(&root);
    let (one, two, four) = (dir.path().join("one"), dir.path().join("two"), dir.path().join("four"));
    run_ok(labels_cmd(&root, &one).args(["--threads", "1"]));
    run_ok(labels_cmd(&root, &two).args(["--threads", "2"]));
    run_ok(labels_cmd(&root, &four).args(["--threads", "4"]));
    assert_eq!(sorted_tables(&one), sorted_tables(&two));
    assert_eq!(sorted_tables(&one), sorted_tables(&four));
    // The manifest lists units in plan order whatever ran in parallel.
    let units: Vec<String> = manifest_units(&four)
        .iter()
        .map(|u| u["unit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(units, (0..8).map(|s| format!("seq_{s:02}")).collect::<Vec<_>>());

    // DIS computes several pairs (and units) at once; the rows stay the same.
    let frames = dir.path().join("boxes");
    for clip in ["a", "b", "c"] {
        write_moving_box_frames(&frames.join(clip), 7, 96, 128);
    }
    let dis = |out: &Path, threads: &str| {
        let mut cmd = mrdino();
        cmd.args([
            "labels",
            "--dataset",
            "frames",
            "--quiet",
            "--flow",
            "dis",
            "--threads",
            threads,
        ])
        .arg("--root")
        .arg(&frames)
        .arg("--out")
        .arg(out);
        run_ok(&mut cmd);
        sorted_tables(out)
    };
    let (dis_one, dis_two) = (dis(&dir.path().join("dis1"), "1"), dis(&dir.path().join("dis2"), "2"));
    assert!(dis_one.1.len() >= 3, "{:?}", dis_one.1.len());
    assert_eq!(dis_one, dis_two);
}

fn manifest_units(out: &Path) -> Vec<serde_json::Value> {
    let mut units = Vec::new();
    for part in std::fs::read_dir(out.join("_manifest")).unwrap().flatten() {
        for f in std::fs::read_dir(part.path()).unwrap().flatten() {
            let m: serde_json::Value = serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap();
            units.extend(m["units"].as_array().unwrap().iter().cloned());
        }
    }
    units
}

#[test]
fn corrupt_frames_nan_flow_and_truncated_video_are_recorded_and_the_rest_completes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    batch_fixture(&root);
    std::fs::write(root.join("frames/seq_03/0007.png"), b"not a png at all").unwrap();
    let mut nan = flow_for(Scene::TwoBoxes);
    nan.uv[2 * (10 * W + 20)] = f32::NAN;
    std::fs::write(root.join("flow/seq_05/0012.npy"), encode_npy(&nan)).unwrap();
    let out = dir.path().join("out");
    let result = labels_cmd(&root, &out).output().unwrap();
    assert_eq!(
        result.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let units = manifest_units(&out);
    assert_eq!(units.len(), 8);
    assert!(units.iter().all(|u| u["status"] == "done"));
    let failures: Vec<(String, u64, String)> = units
        .iter()
        .flat_map(|u| {
            u["failures"].as_array().unwrap().iter().map(move |f| {
                (
                    u["unit"].as_str().unwrap().to_string(),
                    f["frame_index"].as_u64().unwrap(),
                    f["reason"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures[0].0 == "seq_03" && failures[0].1 == 7 && failures[0].2.contains("0007.png"),
        "{failures:?}"
    );
    assert!(
        failures[1].0 == "seq_05"
            && failures[1].1 == 12
            && failures[1].2.contains("non-finite flow value at row 10, column 20"),
        "{failures:?}"
    );
    let (frames, _) = sorted_tables(&out);
    let reason = |seq: &str, i: u32| {
        frames
            .iter()
            .find(|f| f.sequence_id == seq && f.frame_index == i)
            .unwrap()
            .excluded_reason
            .map(ExcludedReason::name)
    };
    // With imported flow, frame 6 keeps its flow file; only the undecodable frame itself has no row data.
    assert_eq!(reason("seq_03", 6), None);
    assert_eq!(reason("seq_03", 7), Some("unreadable"));
    assert_eq!(reason("seq_05", 12), Some("unreadable"));
    assert_eq!(frames.len(), 8 * 23);

    // A truncated video beside a good one.
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    for name in ["good", "truncated"] {
        let path = videos.join(format!("{name}.avi"));
        let fourcc = opencv::videoio::VideoWriter::fourcc('M', 'J', 'P', 'G').unwrap();
        let mut writer = opencv::videoio::VideoWriter::new(
            path.to_str().unwrap(),
            fourcc,
            10.0,
            opencv::core::Size::new(96, 64),
            true,
        )
        .unwrap();
        for k in 0..30 {
            let frame = dir.path().join("tmp.png");
            write_frame(&frame, k);
            let mat = opencv::imgcodecs::imread(frame.to_str().unwrap(), opencv::imgcodecs::IMREAD_COLOR).unwrap();
            writer.write(&mat).unwrap();
        }
        writer.release().unwrap();
    }
    let truncated = videos.join("truncated.avi");
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let vout = dir.path().join("vout");
    let result = mrdino()
        .args(["labels", "--dataset", "video", "--quiet"])
        .arg("--root")
        .arg(&videos)
        .arg("--out")
        .arg(&vout)
        .output()
        .unwrap();
    assert_eq!(
        result.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let units = manifest_units(&vout);
    let good = units.iter().find(|u| u["unit"] == "good").unwrap();
    assert!(good["status"] == "done" && good["failures"].as_array().unwrap().is_empty());
    let bad = units.iter().find(|u| u["unit"] == "truncated").unwrap();
    let text = bad.to_string();
    assert!(
        text.contains("truncated.avi") && text.contains("video ended after"),
        "{text}"
    );
}

#[test]
fn changed_parameters_are_kept_apart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    fixture(&root);
    let out = dir.path().join("out");
    run_ok(&mut labels_cmd(&root, &out));
    let first = tables(&out);
    let second = run_ok(labels_cmd(&root, &out).args(["--min-instance-px", "200"]));
    assert!(String::from_utf8_lossy(&second.stderr).contains("also holds labels made with other parameters"));
    let partitions: Vec<String> = std::fs::read_dir(out.join("instances"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(partitions.len(), 2);
    // The first partition is untouched; the second has only the 300 px boxes.
    let mut parts: Vec<PathBuf> = std::fs::read_dir(out.join("instances"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    parts.sort();
    let rows_of = |part: &Path| -> Vec<InstanceRow> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(part).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        files.iter().flat_map(|f| read_instances(f).unwrap()).collect()
    };
    let (a, b) = (rows_of(&parts[0]), rows_of(&parts[1]));
    let (old, new) = if a.len() == first.1.len() { (a, b) } else { (b, a) };
    assert_eq!(old, first.1);
    assert!(new.iter().all(|i| i.area_px >= 200) && !new.is_empty() && new.len() < old.len());
    // status needs to be told which parameter set.
    let status = mrdino().arg("status").arg("--out").arg(&out).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stderr).contains("choose one with --params"));
}

#[test]
fn kitti_layout_resizes_to_the_reference_grid_and_excludes_benchmark_frames_on_both_cameras() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("kitti");
    let flow_dir = dir.path().join("flow");
    let drive = "2011_09_26_drive_0015_sync";
    // A moving 80×60 box on a static background at the processing grid 1240×376.
    let mut flow = FlowField::zeros(376, 1240);
    for r in 150..210 {
        for c in 500..580 {
            flow.uv[2 * (r * 1240 + c)] = 5.0;
        }
    }
    let npy = encode_npy(&flow);
    for camera in ["image_02", "image_03"] {
        for (k, frame) in (260..268).enumerate() {
            let mut data = Vec::with_capacity(375 * 1242 * 3);
            for r in 0..375usize {
                for c in 0..1242usize {
                    let v = ((r * 3 + c * 5 + k * 7) % 256) as u8;
                    data.extend([v, v, v]);
                }
            }
            let mat = Mat::new_rows_cols_with_data(375, 1242 * 3, &data)
                .unwrap()
                .reshape(3, 375)
                .unwrap()
                .try_clone()
                .unwrap();
            let path = root.join(format!("2011_09_26/{drive}/{camera}/data/{frame:010}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            opencv::imgcodecs::imwrite_def(path.to_str().unwrap(), &mat).unwrap();
            let f = flow_dir.join(format!("{drive}/{camera}/{frame:010}.npy"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, &npy).unwrap();
        }
    }
    let out = dir.path().join("out");
    run_ok(
        mrdino()
            .args(["labels", "--dataset", "kitti", "--quiet", "--flow", "import"])
            .arg("--root")
            .arg(&root)
            .arg("--flow-dir")
            .arg(&flow_dir)
            .arg("--out")
            .arg(&out),
    );
    let (frames, instances) = sorted_tables(&out);
    assert_eq!(frames.len(), 14);
    for f in &frames {
        assert_eq!((f.orig_width, f.orig_height, f.width, f.height), (1242, 375, 1240, 376));
        assert!(f.sequence_id == format!("{drive}/image_02") || f.sequence_id == format!("{drive}/image_03"));
        if f.frame_name == "0000000264" {
            assert_eq!(f.excluded_reason, Some(ExcludedReason::EvalOverlap), "{f:?}");
        } else {
            assert!(f.labelled, "{f:?}");
        }
    }
    assert_eq!(instances.len(), 12);
    assert!(instances
        .iter()
        .all(|i| i.area_px == 4800 && i.bbox_xywh == [500.0, 150.0, 80.0, 60.0]));
    // `--keep-eval-overlap` keeps them (a different parameter set).
    let kept = dir.path().join("kept");
    run_ok(
        mrdino()
            .args([
                "labels",
                "--dataset",
                "kitti",
                "--quiet",
                "--flow",
                "import",
                "--keep-eval-overlap",
            ])
            .arg("--root")
            .arg(&root)
            .arg("--flow-dir")
            .arg(&flow_dir)
            .arg("--out")
            .arg(&kept),
    );
    assert!(sorted_tables(&kept).0.iter().all(|f| f.labelled));
}

#[test]
fn time_budget_stops_cleanly_and_the_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    batch_fixture(&root);
    let reference_out = dir.path().join("reference");
    run_ok(&mut labels_cmd(&root, &reference_out));
    let out = dir.path().join("out");
    let first = labels_cmd(&root, &out).args(["--time-budget", "0"]).output().unwrap();
    assert_eq!(
        first.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("run the same command again to resume"));
    assert!(std::fs::read_dir(out.join("_done")).map_or(true, |d| d
        .flatten()
        .all(|p| std::fs::read_dir(p.path()).unwrap().next().is_none())));
    run_ok(&mut labels_cmd(&root, &out));
    assert_eq!(sorted_tables(&out), sorted_tables(&reference_out));
}

#[test]
fn preset_config_file_and_flags_resolve_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    fixture(&root);
    let config = dir.path().join("params.json");
    std::fs::write(
        &config,
        r#"{"preset": "tri-pd", "min_instance_px": 150, "corner_threshold_px": 0.8}"#,
    )
    .unwrap();
    let resolved = |extra: &[&str]| -> serde_json::Value {
        let out = dir.path().join(format!("out{}", extra.len()));
        let plan = run_ok(
            mrdino()
                .args(["plan", "--dataset", "frames", "--quiet"])
                .arg("--root")
                .arg(root.join("frames"))
                .arg("--out")
                .arg(&out)
                .arg("--config")
                .arg(&config)
                .args(extra),
        );
        assert!(String::from_utf8_lossy(&plan.stdout).contains("cam_a\t12"));
        let file = std::fs::read_dir(out.join("_params"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(file).unwrap()).unwrap()["params"].clone()
    };
    let from_file = resolved(&[]);
    assert_eq!(from_file["preset"], "tri-pd");
    assert_eq!(from_file["select"]["corner_threshold_px"], 0.8);
    assert_eq!(from_file["instances"]["min_instance_px"], 150);
    let with_flag = resolved(&["--corner-threshold-px", "0.3"]);
    assert_eq!(with_flag["select"]["corner_threshold_px"], 0.3);
    assert_eq!(with_flag["instances"]["min_instance_px"], 150);

    std::fs::write(&config, r#"{"corner_treshold_px": 0.8}"#).unwrap();
    let bad = mrdino()
        .args(["plan", "--dataset", "frames"])
        .arg("--root")
        .arg(root.join("frames"))
        .arg("--out")
        .arg(dir.path().join("bad"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("params.json") && stderr.contains("corner_treshold_px"),
        "{stderr}"
    );
}

#[test]
fn movi_kubric_scenes_use_their_own_flow_files() {
    let dir = tempfile::tempdir().unwrap();
    let scene = dir.path().join("movi/scene_0007");
    std::fs::create_dir_all(&scene).unwrap();
    std::fs::write(
        scene.join("data_ranges.json"),
        r#"{"forward_flow": {"min": -8.0, "max": 8.0}, "depth": {"min": 0, "max": 1}}"#,
    )
    .unwrap();
    let encode = |x: f32| (((x + 8.0) / 16.0) * 65535.0).round() as u16;
    for k in 0..8 {
        write_frame(&scene.join(format!("rgba_{k:05}.png")), k);
        // Ground truth: the box is object 5.
        let ids: Vec<u16> = (0..H * W)
            .map(|i| {
                if (20..35).contains(&(i / W)) && (30..50).contains(&(i % W)) {
                    5
                } else {
                    0
                }
            })
            .collect();
        let seg = Mat::new_rows_cols_with_data(H as i32, W as i32, &ids)
            .unwrap()
            .try_clone()
            .unwrap();
        opencv::imgcodecs::imwrite_def(scene.join(format!("segmentation_{k:05}.png")).to_str().unwrap(), &seg).unwrap();
        // A 20×15 box moving right by 4 px: the file stores (Δrow, Δcol, 0); OpenCV writes B, G, R.
        let mut px = Vec::with_capacity(H * W * 3);
        for r in 0..H {
            for c in 0..W {
                let dcol = if (20..35).contains(&r) && (30..50).contains(&c) {
                    4.0
                } else {
                    0.0
                };
                px.extend([0u16, encode(dcol), encode(0.0)]);
            }
        }
        let mat = Mat::new_rows_cols_with_data(H as i32, (W * 3) as i32, &px)
            .unwrap()
            .reshape(3, H as i32)
            .unwrap()
            .try_clone()
            .unwrap();
        opencv::imgcodecs::imwrite_def(scene.join(format!("forward_flow_{k:05}.png")).to_str().unwrap(), &mat).unwrap();
    }
    let out = dir.path().join("out");
    run_ok(
        mrdino()
            .args(["labels", "--dataset", "movi-e", "--quiet", "--flow", "kubric"])
            .arg("--root")
            .arg(dir.path().join("movi"))
            .arg("--out")
            .arg(&out),
    );
    let (frames, instances) = sorted_tables(&out);
    assert_eq!(frames.len(), 7);
    assert!(
        frames
            .iter()
            .all(|f| f.sequence_id == "scene_0007" && f.labelled && f.frame_name.starts_with("rgba_")),
        "{frames:?}"
    );
    assert_eq!(instances.len(), 7);
    assert!(instances
        .iter()
        .all(|i| i.area_px == 300 && i.bbox_xywh == [30.0, 20.0, 20.0, 15.0] && (i.mean_flow_px - 4.0).abs() < 1e-3));
    // Kubric's segmentation beside the frames scores the labels.
    let json = dir.path().join("eval.json");
    run_ok(
        mrdino()
            .args(["eval", "--gt-format", "kubric"])
            .arg("--labels")
            .arg(&out)
            .arg("--gt")
            .arg(dir.path().join("movi"))
            .arg("--json")
            .arg(&json),
    );
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(
        text.contains("\"f1_50\": 1.0") || text.contains("\"f1_50\":1.0"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Many tasks on one output directory, and bad input.

#[test]
fn sixteen_staggered_tasks_of_eight_shards_on_one_directory_equal_one_run_and_finalize() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    many_short_sequences(&root, 40, 8);
    let single = dir.path().join("single");
    run_ok(&mut labels_cmd(&root, &single));

    // Every shard of 8 is started twice over, 25 ms apart, so tasks start while others write the same
    // directories (and, for each shard, the same units).
    let out = dir.path().join("shared");
    let mut children = Vec::new();
    for task in 0..16 {
        let shard = format!("{}/8", task % 8);
        let child = labels_cmd(&root, &out)
            .args(["--shard", &shard, "--threads", "1"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        children.push((shard, child));
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    for (shard, child) in children {
        let result = child.wait_with_output().unwrap();
        assert_eq!(
            result.status.code(),
            Some(0),
            "shard {shard}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
    assert_eq!(sorted_tables(&out), sorted_tables(&single));
    assert!(
        hidden_or_temp_files(&out).is_empty(),
        "{:?}",
        hidden_or_temp_files(&out)
    );
    let status = run_ok(mrdino().arg("status").arg("--out").arg(&out));
    assert!(String::from_utf8_lossy(&status.stdout).contains("all shards complete"));
    let fin = run_ok(mrdino().arg("finalize").arg("--out").arg(&out));
    let path = String::from_utf8_lossy(&fin.stdout)
        .trim()
        .trim_start_matches("finalized: ")
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(manifest["units"], 40);
    assert_eq!(manifest["frames"], 40 * 7);
    // One run manifest per task, none lost.
    let manifests = std::fs::read_dir(out.join("_manifest"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    assert_eq!(std::fs::read_dir(manifests).unwrap().count(), 16);
}

#[test]
fn a_unit_whose_outputs_cannot_be_written_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    many_short_sequences(&root, 3, 8);
    let out = dir.path().join("out");
    run_ok(labels_cmd(&root, &out).args(["--shard", "0/1"]));
    // Make the middle unit's frames file impossible to write: a directory stands where it would go.
    let frames_dir = std::fs::read_dir(out.join("frames"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let target = std::fs::read_dir(&frames_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("s01-"))
        .unwrap();
    std::fs::remove_file(&target).unwrap();
    std::fs::create_dir_all(target.join("blocker")).unwrap();
    let result = labels_cmd(&root, &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("s01") && stderr.contains("cannot write the unit's outputs"),
        "{stderr}"
    );
    let units = manifest_units(&out);
    assert!(
        units.iter().any(|u| u["unit"] == "s01" && u["status"] == "failed"),
        "{units:?}"
    );
    assert_eq!(
        units.iter().filter(|u| u["status"] == "skipped").count(),
        2,
        "{units:?}"
    );
    let status = mrdino().arg("status").arg("--out").arg(&out).output().unwrap();
    assert_eq!(status.status.code(), Some(3));
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(printed.contains("s01: cannot write"), "{printed}");
}

#[test]
fn bad_numbers_are_usage_errors_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    many_short_sequences(&root, 1, 3);
    let out = dir.path().join("out");
    for budget in ["nan", "-1", "inf", "-inf", "soon"] {
        let result = labels_cmd(&root, &out)
            .args(["--time-budget", budget])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{budget}: {stderr}");
        assert!(
            stderr.contains(&format!("`{budget}`")) && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
    assert!(!out.exists());
    run_ok(&mut labels_cmd(&root, &out));
    let status = mrdino()
        .args(["status", "--num-shards", "0"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'0'") && stderr.contains("--num-shards") && !stderr.contains("panicked"),
        "{stderr}"
    );
    for shard in ["0/0", "3/2"] {
        let result = labels_cmd(&root, &out).args(["--shard", shard]).output().unwrap();
        assert_eq!(
            result.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

/// Writes the done marker of `unit` of the only labels partition in `out` again, so that it vouches for the unit's
/// files as they are now (tests that alter a done unit's tables on purpose).
fn rerecord_marker(out: &Path, unit: &str) {
    use mrdino_outputs::bookkeeping::{partitions, AnyPayload, Ledger};
    let hashes = partitions(out, mrdino_outputs::layout::LABELS_DATA_DIRS);
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    let ledger = Ledger::new(out, "labels", &hashes[0]);
    let marker = ledger.read_marker::<AnyPayload>(unit).unwrap().unwrap();
    ledger.write_marker(&marker).unwrap();
}

/// Rewrites a Parquet file with column `name` replaced by strings.
fn replace_column_with_strings(path: &Path, name: &str) {
    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let (batches, _) = mrdino_outputs::tables::read_parquet(path).unwrap();
    let batch = &batches[0];
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let i = fields.iter().position(|f| f.name() == name).unwrap();
    fields[i] = Field::new(name, DataType::Utf8, false);
    columns[i] = std::sync::Arc::new(StringArray::from_iter_values(
        (0..batch.num_rows()).map(|r| r.to_string()),
    ));
    let odd = RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns).unwrap();
    mrdino_outputs::tables::write_parquet(path, &odd, &[]).unwrap();
}

fn only_file_of(dir: &Path, prefix: &str) -> PathBuf {
    let part = std::fs::read_dir(dir).unwrap().flatten().next().unwrap().path();
    std::fs::read_dir(part)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap()
}


#[test]
fn eval_and_report_on_tables_with_other_column_types_or_oversized_masks_fail_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    many_short_sequences(&root, 2, 8);
    let out = dir.path().join("out");
    run_ok(&mut labels_cmd(&root, &out));
    let gt = dir.path().join("gt");
    std::fs::create_dir_all(&gt).unwrap();
    let eval = || {
        mrdino()
            .args(["eval", "--gt-format", "ids", "--labels"])
            .arg(&out)
            .arg("--gt")
            .arg(&gt)
            .output()
            .unwrap()
    };
    let report = || {
        mrdino()
            .args(["report", "--samples", "4", "--labels"])
            .arg(&out)
            .arg("--out")
            .arg(dir.path().join("report"))
            .output()
            .unwrap()
    };

    // Masks twice the frame's size: the overlay refuses them with both sizes.
    let instances = only_file_of(&out.join("instances"), "s00-");
    let mut rows = read_instances(&instances).unwrap();
    assert!(!rows.is_empty());
    for row in &mut rows {
        let pixels = row.mask.to_pixels().unwrap();
        row.mask = mrdino_outputs::CocoRle::from_pixels(&pixels, 2 * H as u32, 2 * W as u32);
    }
    let batch = mrdino_outputs::tables::instances_batch(&rows).unwrap();
    let original = std::fs::read(&instances).unwrap();
    mrdino_outputs::tables::write_parquet(&instances, &batch, &[]).unwrap();
    common::record_rewritten_outputs(&out);
    let result = report();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("is {}x{} but its frame is {W}x{H}", 2 * W, 2 * H)) && !stderr.contains("panicked"),
        "{stderr}"
    );
    std::fs::write(&instances, original).unwrap();
    rerecord_marker(&out, "s00");

    // Columns of other types.
    let frames = only_file_of(&out.join("frames"), "s01-");
    replace_column_with_strings(&frames, "frame_index");
    common::record_rewritten_outputs(&out);
    for result in [eval(), report()] {
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&frames.display().to_string())
                && stderr.contains("column `frame_index` is Utf8")
                && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
    replace_column_with_strings(&instances, "area_px");
    common::record_rewritten_outputs(&out);
    let result = report();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.code() == Some(1) && stderr.contains("column `"),
        "{stderr}"
    );
}

#[test]
fn videos_with_the_same_id_are_refused_before_any_work_listing_both() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir_all(videos.join("sub")).unwrap();
    for name in ["a.avi", "a.mkv", "sub/b.mp4"] {
        std::fs::write(videos.join(name), b"not decoded before the refusal").unwrap();
    }
    let out = dir.path().join("out");
    for command in ["labels", "plan", "flow"] {
        let result = mrdino()
            .args([command, "--dataset", "video", "--quiet"])
            .arg("--root")
            .arg(&videos)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{command}: {stderr}");
        for path in ["a.avi", "a.mkv"] {
            assert!(
                stderr.contains(&videos.join(path).display().to_string()),
                "{command}: {stderr}"
            );
        }
        assert!(!out.exists(), "{command} wrote outputs");
    }
}

#[test]
fn unreadable_sub_directories_are_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    many_short_sequences(&root, 2, 4);
    let frames = root.join("frames");
    // A link that loops cannot be read by anyone (root included).
    let looping = frames.join("zz_loop");
    std::os::unix::fs::symlink(&looping, &looping).unwrap();
    let out = dir.path().join("out");
    let result = labels_cmd(&root, &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&looping.display().to_string()) && stderr.contains("cannot read"),
        "{stderr}"
    );
    std::fs::remove_file(&looping).unwrap();

    // A directory without read permission (meaningful only when not running as root).
    let locked = frames.join("s01");
    let mode = |m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(0o000);
    let readable_anyway = std::fs::read_dir(&locked).is_ok();
    let result = labels_cmd(&root, &out).output().unwrap();
    mode(0o755);
    if !readable_anyway {
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&locked.display().to_string()), "{stderr}");
    }
}

#[test]
fn flow_export_refuses_a_directory_of_other_parameters_naming_both_values() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("frames");
    write_moving_box_frames(&root.join("clip"), 4, 64, 96);
    let flow_dir = dir.path().join("flow");
    let export = |preset: &str| {
        mrdino()
            .args([
                "flow",
                "--dataset",
                "frames",
                "--quiet",
                "--flow",
                "dis",
                "--dis-preset",
                preset,
            ])
            .arg("--root")
            .arg(&root)
            .arg("--out")
            .arg(&flow_dir)
            .output()
            .unwrap()
    };
    let first = export("ultrafast");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let again = export("ultrafast");
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 flow files written, 3 already present"));
    let other = export("medium");
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("flow.preset = \"ultrafast\" in the directory, \"medium\" in this run"),
        "{stderr}"
    );
    let resized = mrdino()
        .args(["flow", "--dataset", "frames", "--quiet", "--resize", "48x32"])
        .arg("--root")
        .arg(&root)
        .arg("--out")
        .arg(&flow_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&resized.stderr);
    assert_eq!(resized.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("processing"), "{stderr}");
    // A directory of flow files without a record is not trusted either.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(foreign.join("clip")).unwrap();
    let result = mrdino()
        .args(["flow", "--dataset", "frames", "--quiet"])
        .arg("--root")
        .arg(&root)
        .arg("--out")
        .arg(&foreign)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&result.stderr).contains("no record of the flow parameters"));
}

#[test]
fn a_truncated_deleted_or_bit_flipped_unit_is_corrupt_and_the_same_command_redoes_exactly_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    many_short_sequences(&root, 3, 8);
    let reference = dir.path().join("reference");
    run_ok(&mut labels_cmd(&root, &reference));
    let out = dir.path().join("out");
    run_ok(&mut labels_cmd(&root, &out));
    type Damage = fn(&Path);
    let truncate: Damage = |p| {
        let bytes = std::fs::read(p).unwrap();
        std::fs::write(p, &bytes[..200.min(bytes.len())]).unwrap();
    };
    let delete: Damage = |p| std::fs::remove_file(p).unwrap();
    let flip: Damage = |p| {
        let mut bytes = std::fs::read(p).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(p, &bytes).unwrap();
    };
    for (what, damage, unit, table) in [
        ("truncated", truncate, "s01-", "instances"),
        ("deleted", delete, "s02-", "frames"),
        ("bit-flipped", flip, "s00-", "instances"),
    ] {
        let file = only_file_of(&out.join(table), unit);
        damage(&file);
        let status = mrdino().arg("status").arg("--out").arg(&out).output().unwrap();
        let text = String::from_utf8_lossy(&status.stdout);
        assert_eq!(status.status.code(), Some(3), "{what}: {text}");
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            text.contains("corrupt       1") && text.contains(&name),
            "{what}: status names the corrupt unit's file\n{text}"
        );
        let fin = mrdino().arg("finalize").arg("--out").arg(&out).output().unwrap();
        let stderr = String::from_utf8_lossy(&fin.stderr);
        assert!(
            fin.status.code() == Some(1) && stderr.contains("1 corrupt"),
            "{what}: {stderr}"
        );
        let again = run_ok(&mut labels_cmd(&root, &out));
        let stderr = String::from_utf8_lossy(&again.stderr);
        assert!(
            stderr.contains("(1 done, 2 already done"),
            "{what}: the rerun redoes exactly the corrupt unit\n{stderr}"
        );
        assert_eq!(sorted_tables(&out), sorted_tables(&reference), "{what}");
        run_ok(mrdino().arg("finalize").arg("--out").arg(&out));
    }
}
