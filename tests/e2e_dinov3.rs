//! End-to-end test of MR-DINOSAUR on a DINOv3 backbone (16 px patches), on the real binary.
//!
//! Data: `mrdino synth` frames (320×128) with exact flow → `mrdino labels` (imported flow) → a random-weight
//! two-block DINOv3 (`custom:family=dinov3,…`: RoPE, 4 storage tokens, 16 px patches) → `features --views resize`
//! (the preset's resize view at patch 16: 256 px) and `features --views windows` (the KITTI training windows at
//! patch 16: 432 px at x = 0, 336, 672, 1008 of a 1440×432 frame, 27×27 tokens as DINOv2's 378 px) → `train
//! dinosaur` (300 steps on the windows) → `refine stage1` → `refine stage2` → `infer` (the KITTI inference windows
//! at patch 16: four 432 px windows on a 432×1440 canvas) → `eval --predictions`. Checked: the loss decreases in
//! training, each stage writes its checkpoint with its stage, the caches, the prediction rows and their window
//! indices have the patch-16 geometry, eval gives finite metrics; a model of 27×27 tokens is refused on the MOVi-E
//! preset's 304 px windows (19×19 tokens), and one of 16×16 tokens by the refinement's 27×27 windows, both grids
//! named.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use std::path::Path;

use common::{features_of, labels_of_synth, mean, metrics, mrdino, run_ok, synth};
use mrdino_model::vit::{write_random_weights, VitConfig};
use mrdino_outputs::checkpoint::{read_tensor_file, META_STAGE};
use mrdino_outputs::feature_cache::FeatureCache;
use mrdino_outputs::bookkeeping::Ledger;
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS, PREDICTIONS_KIND};
use mrdino_outputs::tables::{read_frames, read_prediction_columns};
use serde_json::Value;

/// A random-weight two-block DINOv3 with 16 px patches (4 storage tokens by the family's default).
const BACKBONE: &str = "custom:family=dinov3,depth=2,dim=32,heads=2,patch=16";

fn stage_of(run: &Path) -> String {
    let file = read_tensor_file(&run.join("checkpoint.safetensors")).unwrap();
    file.meta(META_STAGE).unwrap_or("").to_string()
}

fn losses(run: &Path) -> Vec<f64> {
    metrics(run).iter().map(|r| r["loss"].as_f64().unwrap()).collect()
}

fn features(frames: &Path, weights: &Path, out: &Path, extra: &[&str]) {
    run_ok(features_of(frames, out, BACKBONE).arg("--backbone-weights").arg(weights).args(extra));
}

fn refine(stage: &str, from: &Path, labels: &Path, cache: &Path, out: &Path) {
    run_ok(
        mrdino()
            .args(["refine", stage, "--from"])
            .arg(from)
            .arg("--labels")
            .arg(labels)
            .arg("--features")
            .arg(cache)
            .arg("--out")
            .arg(out)
            .args(["--steps", "20", "--checkpoint-every", "10", "--log-every", "1"])
            .args(["--device", "cpu", "--torch-threads", "1", "--quiet"]),
    );
}

#[test]
fn dinov3_runs_features_train_refine_infer_eval_on_the_patch_16_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("synth");
    let frames = synth(&data, "320x128", 2, 12);
    let labels = dir.join("labels");
    run_ok(&mut labels_of_synth(&data, &labels));
    let weights = dir.join("dinov3.safetensors");
    write_random_weights(&weights, &VitConfig::by_name(BACKBONE).unwrap(), 5).unwrap();

    // The resize view of the preset at patch 16: 224 px (16 tokens at patch 14) → 256 px, 16×16 tokens.
    let resized = dir.join("resized");
    features(&frames, &weights, &resized, &[]);
    let meta = FeatureCache::open(&resized).unwrap().meta().clone();
    assert_eq!((meta.image_height, meta.image_width, meta.grid_height, meta.grid_width), (256, 256, 16, 16));

    // The KITTI training windows at patch 16: 432 px, 27×27 tokens, at the patch-14 token offsets 0, 21, 42, 63.
    let cache = dir.join("windows");
    features(&frames, &weights, &cache, &["--views", "windows", "--labels", labels.to_str().unwrap()]);
    let windows = FeatureCache::open(&cache).unwrap();
    let meta = windows.meta();
    assert_eq!((meta.image_height, meta.image_width, meta.grid_height, meta.grid_width), (432, 432, 27, 27));
    assert!(windows.n_views() > 0);
    for v in 0..windows.n_views() {
        let window = windows.view_key(v).unwrap().window.unwrap();
        assert!([0, 336, 672, 1008].contains(&window[0]) && window[1] == 0, "window at {window:?}");
    }

    // DINOSAUR on the windows: a few hundred steps, the loss goes down.
    let config = dir.join("tiny.json");
    let tiny = serde_json::json!({
        "model": {"n_slots": 5, "slot_dim": 16, "decoder_hidden": 64},
        "batch_size": 8, "lr": 2e-3, "warmup_steps": 10, "seed": 1
    });
    std::fs::write(&config, serde_json::to_vec(&tiny).unwrap()).unwrap();
    let baseline = dir.join("baseline");
    run_ok(
        mrdino()
            .args(["train", "dinosaur", "--dataset", "frames", "--features"])
            .arg(&cache)
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&baseline)
            .args(["--steps", "300", "--log-every", "1", "--checkpoint-every", "100"])
            .args(["--device", "cpu", "--torch-threads", "1", "--quiet"]),
    );
    let loss = losses(&baseline);
    assert_eq!(loss.len(), 300);
    let (first, last) = (mean(&loss[..30]), mean(&loss[270..]));
    assert!(loss.iter().all(|l| l.is_finite()));
    assert!(last < first, "training loss did not decrease: first 30 steps {first}, last 30 {last}");
    let trained = read_tensor_file(&baseline.join("checkpoint.safetensors")).unwrap();
    assert!(!trained.tensors.is_empty());

    // Stage 1 from the baseline, stage 2 from stage 1, on the same windows.
    let stage1 = dir.join("stage1");
    refine("stage1", &baseline, &labels, &cache, &stage1);
    assert_eq!(stage_of(&stage1), "stage1");
    assert_eq!(losses(&stage1).len(), 20);
    let stage2 = dir.join("stage2");
    refine("stage2", &stage1, &labels, &cache, &stage2);
    assert_eq!(stage_of(&stage2), "stage2");
    assert!(losses(&stage2).iter().all(|l| l.is_finite()));

    // A model trained on the 256 px resize views (16×16 tokens) is refused on the windows, naming both grids.
    let on_resized = dir.join("on-resized");
    run_ok(
        mrdino()
            .args(["train", "dinosaur", "--dataset", "frames", "--features"])
            .arg(&resized)
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&on_resized)
            .args(["--steps", "2", "--device", "cpu", "--torch-threads", "1", "--quiet"]),
    );
    let refused_out = dir.join("refused");
    let refused = mrdino()
        .args(["refine", "stage1", "--from"])
        .arg(&on_resized)
        .arg("--labels")
        .arg(&labels)
        .arg("--features")
        .arg(&cache)
        .arg("--out")
        .arg(&refused_out)
        .args(["--steps", "2", "--device", "cpu", "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("expects 256 patches (16×16)") && stderr.contains("729 (27×27: 432 px windows, patch 16)"),
        "{stderr}"
    );
    assert!(!refused_out.exists());

    // Inference on the KITTI windows at patch 16: rows on the 432×1440 canvas, channels from four windows.
    let infer = |out: &Path, extra: &[&str]| {
        let mut cmd = mrdino();
        cmd.args(["infer", "--dataset", "frames", "--model"])
            .arg(&stage2)
            .arg("--root")
            .arg(&frames)
            .arg("--out")
            .arg(out)
            .args(["--backbone", BACKBONE, "--backbone-weights"])
            .arg(&weights)
            .args(["--device", "cpu", "--torch-threads", "1", "--quiet"])
            .args(extra);
        cmd
    };
    let predictions = dir.join("predictions");
    run_ok(&mut infer(&predictions, &[]));
    let partitions = mrdino_outputs::bookkeeping::partitions(&predictions, LABELS_DATA_DIRS);
    assert_eq!(partitions.len(), 1);
    let layout = Layout::new(&predictions, &partitions[0]);
    let mut rows = Vec::new();
    let mut extra = Vec::new();
    for unit in ["seq000", "seq001"] {
        rows.extend(read_frames(&layout.frames_file(unit)).unwrap());
        extra.extend(read_prediction_columns(&layout.instances_file(unit)).unwrap());
    }
    assert_eq!(rows.len(), 24);
    assert!(
        rows.iter().all(|f| (f.height, f.width) == (432, 1440) && (f.orig_height, f.orig_width) == (128, 320)),
        "frames not on the patch-16 KITTI canvas"
    );
    assert!(!extra.is_empty() && extra.iter().all(|e| e.is_some_and(|e| e.window < 4)));
    // The run's parameters record the patch-16 canvas and its four windows.
    let ledger = Ledger::new(&predictions, PREDICTIONS_KIND, &partitions[0]);
    let params = ledger.read_params().unwrap().unwrap();
    assert_eq!(params["canvas"], serde_json::json!([432, 1440]), "{params}");
    assert_eq!(params["windows"], 4, "{params}");
    assert_eq!(params["preset"], "kitti", "{params}");

    // Scored against the generator's ground truth: finite metrics.
    let json = dir.join("eval.json");
    run_ok(
        mrdino()
            .args(["eval", "--predictions"])
            .arg(&predictions)
            .arg("--gt")
            .arg(&data)
            .args(["--gt-format", "synth", "--json"])
            .arg(&json),
    );
    let result: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(result["model_kind"], "stage2");
    assert_eq!(result["evaluated_frames"], 24);
    for key in ["ap50", "ar50", "f1_50"] {
        let v = result["metrics"][key].as_f64().unwrap();
        assert!(v.is_finite() && (0.0..=1.0).contains(&v), "{key} = {v}");
    }

    // The model's 27×27 tokens against the MOVi-E preset's 304 px windows of the patch-16 backbone (19×19).
    let wrong_out = dir.join("wrong");
    let wrong = infer(&wrong_out, &["--preset", "movi-e"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("304x304 windows give 361 patches of 16 px (19×19)")
            && stderr.contains("729 patches (27×27")
            && stderr.contains(BACKBONE),
        "{stderr}"
    );
    assert!(!wrong_out.exists());
}
