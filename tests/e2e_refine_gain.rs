//! End-to-end test that the refinement pays off: generated data → `labels` → window features → a baseline
//! DINOSAUR → stage 1 → stage 2, each model through `infer` and `eval` against the generated ground truth.
//!
//! The scenes are flat-coloured (`synth --texture flat --object-size 40`), the backbone is the seeded
//! `random-colour-p42-c64-pos` (mean-colour Fourier features plus a position code, 9×9 patches per 378 px
//! window), the baseline is K = 4 slots of 32 dimensions trained 5,000 steps from the cache, continuing the best of
//! four restarts of 500 steps (`--candidates 4`; the continued one must not be collapsed). On this machine the
//! metrics are (the README's demo-refine table is the same recipe):
//!
//! | model     | F1@50 | AP50  | AR50  | all-ARI |
//! |-----------|-------|-------|-------|---------|
//! | baseline  | 0.053 | 0.035 | 0.107 | 0.066   |
//! | + stage 1 | 0.071 | 0.047 | 0.142 | 0.079   |
//! | + stage 2 | 0.125 | 0.096 | 0.180 | 0.251   |
//!
//! Asserted, with room for another CPU's rounding: stage 2's F1@50 is at least 1.6× the baseline's and its AP50
//! at least 2×, stage 1's AR50 is above the baseline's, and stage 2 predicts fewer objects than the baseline
//! (its deactivation drops background slots).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use std::path::{Path, PathBuf};

use common::{mrdino, run_ok};
use serde_json::Value;

const BACKBONE: &str = "random-colour-p42-c64-pos";

fn eval(dir: &Path, data: &Path, frames: &Path, model: &Path, name: &str) -> Value {
    let predictions = dir.join(format!("predictions-{name}"));
    run_ok(
        mrdino()
            .args(["infer", "--preset", "kitti", "--dataset", "frames", "--model"])
            .arg(model)
            .arg("--root")
            .arg(frames)
            .args([
                "--backbone",
                BACKBONE,
                "--device",
                "cpu",
                "--torch-threads",
                "1",
                "--quiet",
                "--out",
            ])
            .arg(&predictions),
    );
    let json = dir.join(format!("eval-{name}.json"));
    run_ok(
        mrdino()
            .args(["eval", "--gt-format", "synth", "--predictions"])
            .arg(&predictions)
            .arg("--gt")
            .arg(data)
            .arg("--json")
            .arg(&json),
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    v["metrics"].clone()
}

fn metric(m: &Value, key: &str) -> f64 {
    m[key].as_f64().unwrap_or_else(|| panic!("no {key} in {m}"))
}

#[test]
fn stage2_scores_clearly_above_the_baseline_on_generated_scenes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("synth");
    run_ok(mrdino().args(["synth", "--out"]).arg(&data).args([
        "--sequences",
        "4",
        "--frames",
        "24",
        "--seed",
        "3",
        "--texture",
        "flat",
        "--object-size",
        "40",
    ]));
    let frames = data.join("frames");
    let labels = dir.join("labels");
    run_ok(
        mrdino()
            .args([
                "labels",
                "--dataset",
                "frames",
                "--quiet",
                "--flow",
                "import",
                "--flow-dir",
            ])
            .arg(data.join("flow"))
            .arg("--root")
            .arg(&frames)
            .arg("--out")
            .arg(&labels),
    );
    let cache = dir.join("features");
    run_ok(
        mrdino()
            .args([
                "features",
                "--dataset",
                "frames",
                "--views",
                "windows",
                "--quiet",
                "--device",
                "cpu",
            ])
            .args(["--backbone", BACKBONE, "--root"])
            .arg(&frames)
            .arg("--labels")
            .arg(&labels)
            .arg("--out")
            .arg(&cache),
    );
    let config = dir.join("dinosaur.json");
    let recipe = serde_json::json!({
        "model": {"n_slots": 4, "slot_dim": 32, "decoder_hidden": 128},
        "batch_size": 8, "lr": 1e-3, "warmup_steps": 50, "lr_decay_steps": 20000
    });
    std::fs::write(&config, serde_json::to_vec(&recipe).unwrap()).unwrap();
    let baseline = dir.join("baseline");
    run_ok(
        mrdino()
            .args([
                "train",
                "dinosaur",
                "--dataset",
                "frames",
                "--steps",
                "5000",
                "--seed",
                "0",
                "--candidates",
                "4",
                "--candidate-steps",
                "500",
                "--quiet",
            ])
            .args(["--device", "cpu", "--torch-threads", "1", "--features"])
            .arg(&cache)
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&baseline),
    );
    // Some restarts of this recipe collapse (3 of 4 seeds at step 500 on this machine); the one continued must not.
    let choice: Value = serde_json::from_slice(&std::fs::read(baseline.join("candidates/choice.json")).unwrap()).unwrap();
    eprintln!("restarts: {}", choice["reason"]);
    let chosen = choice["assessed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["seed"] == choice["chosen_seed"])
        .unwrap();
    assert_eq!(chosen["verdict"]["collapsed"], false, "{choice}");
    let refine = |stage: &str, from: &Path, out: &PathBuf, extra: &[&str]| {
        run_ok(
            mrdino()
                .args([
                    "refine",
                    stage,
                    "--lr",
                    "1e-3",
                    "--device",
                    "cpu",
                    "--torch-threads",
                    "1",
                    "--quiet",
                ])
                .args(extra)
                .arg("--from")
                .arg(from)
                .arg("--labels")
                .arg(&labels)
                .arg("--features")
                .arg(&cache)
                .arg("--out")
                .arg(out),
        );
    };
    let stage1 = dir.join("stage1");
    refine("stage1", &baseline, &stage1, &["--epochs", "15"]);
    let stage2 = dir.join("stage2");
    refine("stage2", &stage1, &stage2, &["--epochs", "5", "--hidden", "128"]);

    let base = eval(dir, &data, &frames, &baseline, "baseline");
    let s1 = eval(dir, &data, &frames, &stage1, "stage1");
    let s2 = eval(dir, &data, &frames, &stage2, "stage2");
    for (name, m) in [("baseline", &base), ("+ stage 1", &s1), ("+ stage 2", &s2)] {
        eprintln!(
            "{name:>10}: F1@50 {:.3} AP50 {:.3} AR50 {:.3} fg-ARI {:.3} all-ARI {:.3} ({} of {} predictions true, {} \
             objects)",
            metric(m, "f1_50"),
            metric(m, "ap50"),
            metric(m, "ar50"),
            metric(m, "fg_ari"),
            metric(m, "all_ari"),
            m["true_positives"],
            m["predictions"],
            m["ground_truth_objects"]
        );
    }
    let (f1_base, f1_s2) = (metric(&base, "f1_50"), metric(&s2, "f1_50"));
    assert!(
        f1_base > 0.0 && f1_s2 >= 1.6 * f1_base,
        "stage 2 F1@50 {f1_s2:.3} is not clearly above the baseline's {f1_base:.3}"
    );
    assert!(
        metric(&s2, "ap50") >= 2.0 * metric(&base, "ap50"),
        "stage 2 AP50 {} vs baseline {}",
        metric(&s2, "ap50"),
        metric(&base, "ap50")
    );
    assert!(
        metric(&s1, "ar50") > metric(&base, "ar50"),
        "stage 1 AR50 {} not above the baseline's {}",
        metric(&s1, "ar50"),
        metric(&base, "ar50")
    );
    assert!(
        s2["predictions"].as_u64() < base["predictions"].as_u64(),
        "stage 2 should drop background slots: {} vs {} predictions",
        s2["predictions"],
        base["predictions"]
    );
}
