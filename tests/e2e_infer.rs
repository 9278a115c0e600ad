//! End-to-end tests of `mrdino infer` and `mrdino eval --predictions` on the real binary.
//!
//! Data: `mrdino synth` frames, their pseudo-labels (`mrdino labels` with the generator's exact flow), and a
//! tiny DINOSAUR (K = 4, D = 16) trained for a few steps by `mrdino train dinosaur` on a `mrdino features`
//! cache of 378×378 views through a random-weight two-block ViT (14 px patches, so a KITTI window is a 27×27
//! grid). A stage-2 model is that checkpoint plus a random slot-deactivation head. Checked:
//! * the prediction tables read back in Rust (through the same reader as pseudo-labels) and with pyarrow and
//!   duckdb, every mask decoded by pycocotools (`tools/check_outputs.py --predictions`): disjoint masks on the
//!   378×1260 canvas, a baseline's covering it, a stage-2 model's only kept, non-background slots;
//! * the same seed gives the same rows (also with another `--batch`), another seed other rows; two shards
//!   equal one run; a rerun skips done units; `--time-budget 0` exits 4 and the resumed run equals the
//!   uninterrupted one; status and finalize;
//! * `eval --predictions` writes the metrics JSON with the stage-2 or the baseline rule against synth, id,
//!   KITTI-encoded and TRI-PD ground truth, and refuses a labels run given as predictions;
//! * the TRI-PD (two 490 windows on a 980×490 canvas) and MOVi-E (one 266 window) presets, each with a model
//!   trained on views of its window size, predict and score end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use common::{features_of, labels_of_synth, mrdino, python, run_ok};

use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_model::tensors::from_tch;
use mrdino_model::vit::{write_random_weights, VitConfig};
use mrdino_outputs::checkpoint::{read_tensor_file, write_tensor_file};
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS};
use mrdino_outputs::tables::{read_frames, read_instances, read_prediction_columns};
use serde_json::Value;

/// A random-weight two-block ViT with 14 px patches: a KITTI window is a 27×27 grid.
const BACKBONE: &str = "custom:family=dinov2,depth=2,dim=32,heads=2,patch=14,pos_grid=4";

/// Synth data, its pseudo-labels and a briefly trained tiny DINOSAUR run directory (on 378×378 views).
fn fixture(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    fixture_for_views(dir, "378x378")
}

/// As [`fixture`], the DINOSAUR trained on views of `view_size` (WxH), so its patch count fits a preset's windows.
fn fixture_for_views(dir: &Path, view_size: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let data = dir.join("data");
    run_ok(
        mrdino()
            .args(["synth", "--out"])
            .arg(&data)
            .args(["--sequences", "3", "--frames", "4", "--size", "96x64"]),
    );
    let labels = dir.join("labels");
    run_ok(&mut labels_of_synth(&data, &labels));
    let weights = dir.join("vit.safetensors");
    write_random_weights(&weights, &VitConfig::by_name(BACKBONE).unwrap(), 7).unwrap();
    let cache = dir.join("cache");
    run_ok(
        features_of(&data.join("frames"), &cache, BACKBONE)
            .arg("--backbone-weights")
            .arg(&weights)
            .args(["--size", view_size]),
    );
    let config = dir.join("tiny.json");
    let c = serde_json::json!({
        "model": {"n_slots": 4, "slot_dim": 16, "decoder_hidden": 32},
        "batch_size": 2, "lr": 1e-3, "warmup_steps": 2, "seed": 3
    });
    std::fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();
    let run = dir.join("dinosaur");
    run_ok(
        mrdino()
            .args(["train", "dinosaur", "--dataset", "frames", "--config"])
            .arg(&config)
            .arg("--features")
            .arg(&cache)
            .arg("--out")
            .arg(&run)
            .args(["--steps", "6", "--checkpoint-every", "6", "--log-every", "1"])
            .args(["--device", "cpu", "--torch-threads", "1", "--quiet"]),
    );
    (data, labels, run, weights)
}

/// The trained checkpoint plus a slot-deactivation head with seeded random weights (hidden size 8).
fn stage2_model(run: &Path, path: &Path) {
    let mut file = read_tensor_file(&run.join("checkpoint.safetensors")).unwrap();
    tch::manual_seed(11);
    let d = 16;
    for (layer, fan_in, fan_out) in [("0", d, 8), ("2", 8, 8), ("4", 8, 8), ("6", 8, 1)] {
        let weight = tch::Tensor::randn([fan_out, fan_in], (tch::Kind::Float, tch::Device::Cpu)) * 1.5;
        let bias = tch::Tensor::randn([fan_out], (tch::Kind::Float, tch::Device::Cpu)) * 0.5;
        for (tensor, value) in [("weight", weight), ("bias", bias)] {
            let name = format!("object_decoder.slot_decoder.{layer}.{tensor}");
            file.tensors.push(from_tch(&name, &value).unwrap());
        }
    }
    file.tensors.sort_by(|a, b| a.name.cmp(&b.name));
    write_tensor_file(path, &file).unwrap();
}

/// `eval --predictions PRED --gt GT --gt-format FORMAT --json JSON`; returns JSON's path.
fn eval_predictions(predictions: &Path, gt: &Path, format: &str, json: &Path) -> PathBuf {
    run_ok(
        mrdino()
            .args(["eval", "--predictions"])
            .arg(predictions)
            .arg("--gt")
            .arg(gt)
            .args(["--gt-format", format, "--json"])
            .arg(json),
    );
    json.to_path_buf()
}

fn infer(model: &Path, weights: &Path, frames: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = mrdino();
    cmd.args(["infer", "--dataset", "frames", "--model"])
        .arg(model)
        .arg("--root")
        .arg(frames)
        .arg("--out")
        .arg(out)
        .args(["--backbone", BACKBONE, "--backbone-weights"])
        .arg(weights)
        .args(["--device", "cpu", "--torch-threads", "1", "--quiet"])
        .args(extra);
    cmd
}

/// Every row of a prediction run as text (mean_flow_px is NaN, which `==` would never match), sorted.
fn rows(out: &Path) -> Vec<String> {
    let partition = only_partition(out);
    let layout = Layout::new(out, &partition);
    let mut rows = Vec::new();
    for dir in [layout.frames_dir(), layout.instances_dir()] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        files.sort();
        for f in files {
            if dir == layout.frames_dir() {
                rows.extend(read_frames(&f).unwrap().iter().map(|r| format!("{r:?}")));
            } else {
                let extra = read_prediction_columns(&f).unwrap();
                let instances = read_instances(&f).unwrap();
                assert_eq!(extra.len(), instances.len());
                rows.extend(instances.iter().zip(&extra).map(|(r, e)| format!("{r:?} {e:?}")));
            }
        }
    }
    rows
}

fn only_partition(out: &Path) -> String {
    let parts = mrdino_outputs::bookkeeping::partitions(out, LABELS_DATA_DIRS);
    assert_eq!(parts.len(), 1, "{parts:?}");
    parts[0].clone()
}

fn python_check(out: &Path) -> Value {
    let check = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/check_outputs.py"))
        .arg(out)
        .arg("--predictions")
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
    serde_json::from_slice(&check.stdout).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// (width, height) of a PNG from its IHDR chunk.
fn imagesize(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG", "{} is not a PNG", path.display());
    let be = |o: usize| u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    (be(16), be(20))
}

#[test]
fn predictions_are_tables_like_labels_resumable_shardable_reproducible_and_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, labels, run, weights) = fixture(tmp.path());
    let frames = data.join("frames");
    let stage2 = tmp.path().join("stage2.safetensors");
    stage2_model(&run, &stage2);

    // Stage 2: one run, checked in Rust and by pyarrow / duckdb / pycocotools.
    let full = tmp.path().join("pred-full");
    run_ok(&mut infer(&stage2, &weights, &frames, &full, &[]));
    let want = rows(&full);
    let partition = only_partition(&full);
    let layout = Layout::new(&full, &partition);
    let mut frame_rows = Vec::new();
    let mut instances = Vec::new();
    let mut extra = Vec::new();
    for unit in ["seq000", "seq001", "seq002"] {
        frame_rows.extend(read_frames(&layout.frames_file(unit)).unwrap());
        instances.extend(read_instances(&layout.instances_file(unit)).unwrap());
        extra.extend(read_prediction_columns(&layout.instances_file(unit)).unwrap());
    }
    assert_eq!(frame_rows.len(), 12, "every frame has a row");
    assert!(frame_rows
        .iter()
        .all(|f| f.labelled && (f.height, f.width) == (378, 1260) && (f.orig_height, f.orig_width) == (64, 96)));
    assert!(frame_rows
        .iter()
        .all(|f| (f.resized_height, f.resized_width, f.crop_top, f.crop_left) == (378, 1260, 0, 0)));
    assert!(!instances.is_empty(), "the stage-2 model keeps some slots");
    assert!(extra.iter().all(|e| e.is_some_and(|e| e.combination_num == Some(4)
        && e.window < 4
        && e.window_channel >= 1
        && e.deactivation_weight.is_some_and(|w| w > 0.5))));
    let summary = python_check(&full);
    assert_eq!(summary["masks_checked"].as_u64().unwrap() as usize, instances.len());

    // The report draws the predictions on the model's canvas (378×1260), without flow.
    let report = tmp.path().join("pred-report");
    run_ok(
        mrdino()
            .args(["report", "--labels"])
            .arg(&full)
            .arg("--out")
            .arg(&report),
    );
    let overlays: Vec<PathBuf> = std::fs::read_dir(report.join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!overlays.is_empty(), "no prediction overlays");
    let size = imagesize(&overlays[0]);
    assert_eq!(size, (1260, 378), "overlay not on the canvas");
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(
        html.contains("canvas; no flow") && !report.join("flow").exists(),
        "{html}"
    );

    // The same seed again: the same rows; another seed: other rows.
    let again = tmp.path().join("pred-again");
    run_ok(&mut infer(&stage2, &weights, &frames, &again, &["--batch", "2"]));
    assert_eq!(rows(&again), want, "same seed, other batching, other rows");
    let other = tmp.path().join("pred-seed");
    run_ok(&mut infer(&stage2, &weights, &frames, &other, &["--seed", "7"]));
    assert_ne!(rows(&other), want, "the seed does not reach the slot noise");

    // Two shards equal one run; status and finalize track them.
    let sharded = tmp.path().join("pred-shards");
    run_ok(&mut infer(&stage2, &weights, &frames, &sharded, &["--shard", "0/2"]));
    let status = mrdino().args(["status", "--out"]).arg(&sharded).output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("predictions params"));
    run_ok(&mut infer(&stage2, &weights, &frames, &sharded, &["--shard", "1/2"]));
    assert_eq!(rows(&sharded), want, "two shards differ from one run");
    run_ok(mrdino().args(["status", "--out"]).arg(&sharded));
    run_ok(mrdino().args(["finalize", "--out"]).arg(&sharded));
    assert!(sharded.join(format!("_manifest-{partition}.json")).is_file());

    // A rerun skips every done unit.
    let rerun = run_ok(&mut infer(&stage2, &weights, &frames, &full, &[]));
    assert!(
        String::from_utf8_lossy(&rerun.stderr).contains("0 units done")
            && String::from_utf8_lossy(&rerun.stderr).contains("3 already done"),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    assert_eq!(rows(&full), want);

    // A zero time budget stops with exit 4 before any unit; the resumed run equals the uninterrupted one.
    let budget = tmp.path().join("pred-budget");
    let stopped = infer(&stage2, &weights, &frames, &budget, &["--time-budget", "0"])
        .output()
        .unwrap();
    assert_eq!(
        stopped.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    run_ok(&mut infer(&stage2, &weights, &frames, &budget, &[]));
    assert_eq!(rows(&budget), want, "the resumed run differs");

    // Metrics: stage-2 rule against the synth ground truth (canvas mapped back to the 96×64 frames) and ids.
    let json = eval_predictions(&full, &data, "synth", &tmp.path().join("eval-stage2.json"));
    let result = read_json(&json);
    assert_eq!(result["kind"], "predictions");
    assert_eq!(result["model_kind"], "stage2");
    assert_eq!(result["scoring"]["rule"], "discard-first");
    assert_eq!(result["scoring"]["to_original"], true);
    assert_eq!(result["evaluated_frames"], 12);
    for key in ["ap50", "ar50", "f1_50"] {
        let v = result["metrics"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    let ids_json = eval_predictions(&full, &data.join("instances"), "ids", &tmp.path().join("eval-ids.json"));
    assert_eq!(read_json(&ids_json)["evaluated_frames"], 12);
    // KITTI-style ground truth (class 26 · 256 + id, 16-bit) of the same objects: compared on the canvas at
    // 95×315, as the reference does, by default.
    let kitti_gt = tmp.path().join("kitti-gt");
    let script = r#"
import sys, pathlib, numpy as np
from PIL import Image
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for png in sorted(src.glob("*/*.png")):
    ids = np.array(Image.open(png)).astype(np.uint16)
    out = np.where(ids > 0, 26 * 256 + ids, 0).astype(np.uint16)
    (dst / png.parent.name).mkdir(parents=True, exist_ok=True)
    Image.fromarray(out).save(dst / png.parent.name / png.name)
"#;
    let made = Command::new(python())
        .args(["-c", script])
        .arg(data.join("instances"))
        .arg(&kitti_gt)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let kitti_json = eval_predictions(&full, &kitti_gt, "kitti", &tmp.path().join("eval-kitti.json"));
    let result = read_json(&kitti_json);
    assert_eq!(result["resolution"], "kitti");
    assert_eq!(result["scoring"]["to_original"], false);
    assert_eq!(result["evaluated_frames"], 12);
    assert_eq!(
        result["metrics"]["ari_images"],
        read_json(&ids_json)["metrics"]["ari_images"],
        "the same objects count for ARI in both formats"
    );
    // TRI-PD ground truth goes through the reference's conversion (968×608, top 128 rows cropped, ids under
    // 500 px removed) and is compared at 123×245.
    let tri_pd_json = eval_predictions(
        &full,
        &data.join("instances"),
        "tri-pd",
        &tmp.path().join("eval-tri-pd.json"),
    );
    let result = read_json(&tri_pd_json);
    assert_eq!(
        (result["resolution"].as_str(), result["evaluated_frames"].as_u64()),
        (Some("tri-pd"), Some(12))
    );
    // A labels run is not predictions (and predictions are not labels).
    let wrong = mrdino()
        .args(["eval", "--predictions"])
        .arg(&labels)
        .arg("--gt")
        .arg(&data)
        .args(["--gt-format", "synth"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("use --labels"));

    // A preset whose windows do not fit the model is refused before any output.
    let wrong_out = tmp.path().join("pred-wrong");
    let wrong = infer(&run, &weights, &frames, &wrong_out, &["--preset", "movi-e"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && stderr.contains("266x266 windows give 361 patches") && stderr.contains("729"),
        "{stderr}"
    );
    assert!(!wrong_out.exists());

    // A corrupt frame is recorded (a failure in the manifest, a row with excluded_reason = unreadable, exit 3)
    // and the other frames are predicted as before.
    let damaged = tmp.path().join("damaged");
    for seq in ["seq000", "seq001", "seq002"] {
        std::fs::create_dir_all(damaged.join(seq)).unwrap();
        for entry in std::fs::read_dir(frames.join(seq)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, damaged.join(seq).join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(damaged.join("seq001/000002.png"), b"not a png").unwrap();
    let damaged_out = tmp.path().join("pred-damaged");
    let partial = infer(&stage2, &weights, &damaged, &damaged_out, &[]).output().unwrap();
    assert_eq!(
        partial.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&partial.stderr)
    );
    let layout = Layout::new(&damaged_out, &only_partition(&damaged_out));
    let seq1 = read_frames(&layout.frames_file("seq001")).unwrap();
    assert_eq!(seq1.len(), 4);
    let bad = &seq1[2];
    assert!(
        !bad.labelled && bad.excluded_reason.is_some() && bad.num_instances == 0,
        "{bad:?}"
    );
    let good: Vec<String> = rows(&damaged_out)
        .into_iter()
        .filter(|r| !r.contains("\"000002\"") || !r.contains("seq001"))
        .collect();
    let want_good: Vec<String> = want
        .iter()
        .filter(|r| !r.contains("\"000002\"") || !r.contains("seq001"))
        .cloned()
        .collect();
    assert_eq!(good, want_good, "a corrupt frame changed the predictions of the others");

    // Baseline (the checkpoint itself): K channels, masks cover the canvas, all channels are predictions.
    let baseline = tmp.path().join("pred-baseline");
    run_ok(&mut infer(&run, &weights, &frames, &baseline, &["--merge-chains"]));
    let summary = python_check(&baseline);
    assert!(summary["masks_checked"].as_u64().unwrap() >= 12);
    let json = eval_predictions(&baseline, &data, "synth", &tmp.path().join("eval-baseline.json"));
    let result = read_json(&json);
    assert_eq!(result["model_kind"], "baseline");
    assert_eq!(result["scoring"]["rule"], "keep-all");
    let predictions = result["metrics"]["predictions"].as_u64().unwrap();
    assert!(
        predictions >= 12,
        "every frame has at least one predicted channel: {predictions}"
    );
}

/// The other presets' windows end to end: TRI-PD (980×490 canvas, two 490 windows joined and merged) and MOVi-E
/// (one 266 window), each with a DINOSAUR trained on views of its window size; tables on the preset's canvas,
/// masks checked by pycocotools, metrics against the synth ground truth mapped back to the original frames.
#[test]
fn tri_pd_and_movi_e_windows_predict_and_score() {
    for (preset, view, canvas, windows) in [
        ("tri-pd", "490x490", (490, 980), 2),
        ("movi-e", "266x266", (266, 266), 1),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (data, _labels, run, weights) = fixture_for_views(tmp.path(), view);
        let out = tmp.path().join("pred");
        run_ok(&mut infer(
            &run,
            &weights,
            &data.join("frames"),
            &out,
            &["--preset", preset],
        ));
        let layout = Layout::new(&out, &only_partition(&out));
        let mut frames = Vec::new();
        let mut extra = Vec::new();
        for unit in ["seq000", "seq001", "seq002"] {
            frames.extend(read_frames(&layout.frames_file(unit)).unwrap());
            extra.extend(read_prediction_columns(&layout.instances_file(unit)).unwrap());
        }
        assert_eq!(frames.len(), 12, "{preset}: every frame has a row");
        assert!(
            frames
                .iter()
                .all(|f| (f.height, f.width) == canvas && (f.orig_height, f.orig_width) == (64, 96)),
            "{preset}: frames not on the {canvas:?} canvas"
        );
        assert!(
            extra.iter().all(|e| e.is_some_and(|e| e.window < windows)),
            "{preset}: a channel from a window that does not exist"
        );
        let summary = python_check(&out);
        assert!(summary["masks_checked"].as_u64().unwrap() >= 12, "{preset}: {summary}");
        let json = eval_predictions(&out, &data, "synth", &tmp.path().join("eval.json"));
        let result = read_json(&json);
        assert_eq!(result["model_kind"], "baseline", "{preset}");
        assert_eq!(result["evaluated_frames"], 12, "{preset}");
        assert_eq!(result["scoring"]["to_original"], true, "{preset}");
    }
}

#[test]
fn bad_models_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let not_a_model = tmp.path().join("model.safetensors");
    std::fs::write(&not_a_model, b"not safetensors").unwrap();
    let out = infer(&not_a_model, &frames, &frames, &tmp.path().join("pred"), &[])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("model.safetensors"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
