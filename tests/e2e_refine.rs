//! End-to-end test of `mrdino refine stage1|stage2` on the real binary.
//!
//! Data: `mrdino synth` frames with exact flow → `mrdino labels` (imported flow) → `mrdino features --views
//! windows` through the seeded random conv backbone (14 px patches, 32 channels: 27×27 patches per 378 px
//! window) → a tiny baseline DINOSAUR (`train dinosaur` from the cache) → stage 1 → stage 2. Checked:
//! * stage 1 changes only `perceptual_grouping.*`, every other tensor keeps the baseline's bytes; on the same
//!   batches its loss ends below the unrefined model's (a run with learning rate 0); a run killed with SIGKILL at three points and rerun each time ends with a byte-identical metrics log and bit-identical weights, moments
//!   and metrics;
//! * stage 2 keeps every DINOSAUR tensor of stage 1, adds the eight `object_decoder.slot_decoder.*` tensors,
//!   its loss ends below the initial head's on the same batches; `--time-budget 0` exits 4 and the resumed run equals an uninterrupted one; another quirk
//!   flag on the same run directory is refused;
//! * the on-the-fly path (frames → windows → backbone) sees the same windows and masks as the cache: its first
//!   loss equals the cached run's up to the cache's f16 rounding;
//! * each stage takes one kind of model (stage 1 a baseline, stage 2 a stage-1 run) and refuses another naming
//!   the kind found; `--steps 0`, `--epochs 0`, a batch larger than the windows, stage-2 values out of range,
//!   stage-2 flags on stage 1 and an `--out` inside the labels run are refused before any work.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    checkpoint_step, features_of, labels_of_synth, mean, metrics, mrdino, run_ok, start_until_checkpoint, synth, tensors,
};
use mrdino_outputs::checkpoint::{read_tensor_file, META_STAGE};

const BACKBONE: &str = "random-conv-p14-c32";

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    frames: PathBuf,
    labels: PathBuf,
    cache: PathBuf,
    baseline: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let data = dir.join("synth");
    let frames = synth(&data, "320x128", 2, 12);
    let labels = dir.join("labels");
    run_ok(&mut labels_of_synth(&data, &labels));
    let cache = dir.join("cache");
    run_ok(features_of(&frames, &cache, BACKBONE).args(["--views", "windows", "--labels"]).arg(&labels));
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
            .args(["--steps", "30", "--device", "cpu", "--torch-threads", "1", "--quiet"]),
    );
    Fixture {
        _tmp: tmp,
        dir,
        frames,
        labels,
        cache,
        baseline,
    }
}

fn refine_cmd(f: &Fixture, stage: &str, from: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = mrdino();
    cmd.args(["refine", stage, "--from"])
        .arg(from)
        .arg("--labels")
        .arg(&f.labels)
        .arg("--out")
        .arg(out)
        .args(["--device", "cpu", "--torch-threads", "1", "--log-every", "1", "--quiet"])
        .args(extra);
    if !extra.contains(&"--backbone") {
        cmd.arg("--features").arg(&f.cache);
    }
    cmd
}

fn losses(run: &Path) -> Vec<f64> {
    metrics(run).iter().map(|r| r["loss"].as_f64().unwrap()).collect()
}

fn stage_of(run: &Path) -> String {
    let file = read_tensor_file(&run.join("checkpoint.safetensors")).unwrap();
    file.meta(META_STAGE).unwrap_or("").to_string()
}

/// Model tensors (no optimiser moments) by name.
fn weights(run: &Path) -> Vec<(String, Vec<u8>)> {
    tensors(run)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("optimizer."))
        .collect()
}

#[test]
fn stage1_and_stage2_train_what_they_must_and_resume_exactly() {
    let f = fixture();
    let s1_args = ["--steps", "40", "--lr", "3e-3", "--checkpoint-every", "10"];
    let s1 = f.dir.join("stage1");
    run_ok(&mut refine_cmd(&f, "stage1", &f.baseline, &s1, &s1_args));
    assert_eq!(stage_of(&s1), "stage1");
    let l1 = losses(&s1);
    assert_eq!(l1.len(), 40);
    // The same 40 batches through the unrefined model (learning rate 0): the loss is lower where stage 1 trained.
    let frozen = f.dir.join("stage1-lr0");
    run_ok(&mut refine_cmd(
        &f,
        "stage1",
        &f.baseline,
        &frozen,
        &["--steps", "40", "--lr", "0"],
    ));
    let l0 = losses(&frozen);
    let (untrained, trained) = (mean(&l0[l0.len() - 10..]), mean(&l1[l1.len() - 10..]));
    eprintln!(
        "stage 1 loss of the last 10 batches: {trained:.4} refined vs {untrained:.4} unrefined (first batch {:.4} \
         both)",
        l1[0]
    );
    assert_eq!(l0[0], l1[0], "the first batch sees the same model in both runs");
    assert!(
        trained < 0.97 * untrained,
        "stage 1 did not lower the loss: {untrained} → {trained}"
    );
    let base = weights(&f.baseline);
    let refined = weights(&s1);
    assert_eq!(
        base.iter().map(|t| &t.0).collect::<Vec<_>>(),
        refined.iter().map(|t| &t.0).collect::<Vec<_>>()
    );
    for ((name, a), (_, b)) in base.iter().zip(&refined) {
        if name.starts_with("perceptual_grouping.") {
            if name.ends_with("to_k.weight") || name.ends_with("to_q.weight") || name.contains("gru") {
                assert_ne!(a, b, "{name} was not trained in stage 1");
            }
        } else {
            assert_eq!(a, b, "{name} changed in stage 1 although it is frozen");
        }
    }

    // SIGKILL at three points (each after a checkpoint), resuming each time: the metrics log byte-identical, the
    // weights and moments bit-identical.
    let killed = f.dir.join("stage1-kill");
    for min_step in [10, 20, 30] {
        let mut child =
            start_until_checkpoint(refine_cmd(&f, "stage1", &f.baseline, &killed, &s1_args), &killed, min_step);
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("stage 1 killed with a checkpoint at step {:?}", checkpoint_step(&killed));
    }
    run_ok(&mut refine_cmd(&f, "stage1", &f.baseline, &killed, &s1_args));
    assert!(
        std::fs::read(killed.join("metrics.jsonl")).unwrap() == std::fs::read(s1.join("metrics.jsonl")).unwrap(),
        "stage-1 metrics.jsonl after three kills and resumes is not the uninterrupted run's, byte for byte"
    );
    assert!(
        tensors(&killed) == tensors(&s1),
        "stage-1 weights or moments after kill -9 differ"
    );

    // Stage 2 on top of stage 1.
    let s2_args = [
        "--steps",
        "30",
        "--lr",
        "1e-3",
        "--hidden",
        "64",
        "--checkpoint-every",
        "10",
    ];
    let s2 = f.dir.join("stage2");
    run_ok(&mut refine_cmd(&f, "stage2", &s1, &s2, &s2_args));
    assert_eq!(stage_of(&s2), "stage2");
    let l2 = losses(&s2);
    let s2_frozen = f.dir.join("stage2-lr0");
    run_ok(&mut refine_cmd(
        &f,
        "stage2",
        &s1,
        &s2_frozen,
        &["--steps", "30", "--lr", "0", "--hidden", "64"],
    ));
    let l0 = losses(&s2_frozen);
    let (untrained, trained) = (mean(&l0[l0.len() - 10..]), mean(&l2[l2.len() - 10..]));
    eprintln!("stage 2 loss of the last 10 batches: {trained:.4} trained head vs {untrained:.4} initial head");
    assert!(
        trained < 0.97 * untrained,
        "stage 2 did not lower the loss: {untrained} → {trained}"
    );
    let with_head = weights(&s2);
    let head: Vec<&String> = with_head
        .iter()
        .map(|t| &t.0)
        .filter(|n| n.starts_with("object_decoder.slot_decoder."))
        .collect();
    assert_eq!(head.len(), 8, "{head:?}");
    for (name, bytes) in &refined {
        let now = with_head.iter().find(|t| &t.0 == name).map(|t| &t.1);
        assert_eq!(now, Some(bytes), "{name} changed in stage 2 although it is frozen");
    }

    // A zero time budget stops at once with exit 4; the resumed run equals the uninterrupted one.
    let budget = f.dir.join("stage2-budget");
    let out = refine_cmd(&f, "stage2", &s1, &budget, &s2_args)
        .args(["--time-budget", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    run_ok(&mut refine_cmd(&f, "stage2", &s1, &budget, &s2_args));
    assert!(
        tensors(&budget) == tensors(&s2),
        "stage-2 run resumed after its time budget differs"
    );

    // A quirk fix is a different run: refused on the same directory.
    let mut other = s2_args.to_vec();
    other.push("--keep-largest-masks");
    let out = refine_cmd(&f, "stage2", &s1, &s2, &other).output().unwrap();
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(message.contains("other parameters"), "{message}");
}

#[test]
fn on_the_fly_windows_equal_the_cached_windows() {
    let f = fixture();
    let cached = f.dir.join("cached");
    let args = ["--steps", "2", "--lr", "0"];
    run_ok(&mut refine_cmd(&f, "stage1", &f.baseline, &cached, &args));
    let fly = f.dir.join("fly");
    let root = f.frames.to_str().unwrap();
    let mut fly_args = args.to_vec();
    fly_args.extend(["--backbone", BACKBONE, "--root", root]);
    run_ok(&mut refine_cmd(&f, "stage1", &f.baseline, &fly, &fly_args));
    let (a, b) = (losses(&cached), losses(&fly));
    eprintln!("first losses: cached {a:?}, on the fly {b:?}");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-2 * x.abs(), "cached {x} vs on-the-fly {y}");
    }
}

/// Runs `cmd`, expecting it to fail with `code`; returns its stderr.
fn refused(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    stderr
}

#[test]
fn each_stage_takes_its_kind_of_model_and_refuses_meaningless_runs() {
    let f = fixture();
    let out = f.dir.join("refused");
    let message = refused(&mut refine_cmd(&f, "stage2", &f.baseline, &out, &["--steps", "2"]), 1);
    assert!(
        message.contains("is a baseline model") && message.contains("stage-1 run"),
        "{message}"
    );
    for (stage, extra, want) in [
        ("stage1", &["--steps", "0"][..], "steps = 0"),
        ("stage1", &["--epochs", "0"][..], "epochs = 0"),
        ("stage1", &["--batch-size", "100000"][..], "100000"),
        ("stage1", &["--background-weight", "0.5"][..], "stage-2 flags"),
        ("stage2", &["--background-weight", "1.5"][..], "stage2.background_weight = 1.5"),
        ("stage2", &["--hidden", "0"][..], "stage2.hidden = 0"),
    ] {
        let from = if stage == "stage1" { &f.baseline } else { &out };
        let message = refused(&mut refine_cmd(&f, stage, from, &out, extra), 1);
        assert!(message.contains(want), "{stage} {extra:?}: {message}");
    }
    assert!(!out.exists(), "a refused run created its directory");
    let message = refused(&mut refine_cmd(&f, "stage1", &f.baseline, &f.labels.join("run"), &["--steps", "2"]), 1);
    assert!(message.contains("lies inside the input --labels"), "{message}");
    let message = refused(&mut refine_cmd(&f, "stage1", &f.baseline, &out, &["--seed", "-1"]), 2);
    assert!(message.contains("--seed"), "{message}");

    let s1 = f.dir.join("stage1");
    run_ok(&mut refine_cmd(&f, "stage1", &f.baseline, &s1, &["--steps", "2"]));
    let message = refused(&mut refine_cmd(&f, "stage1", &s1, &out, &["--steps", "2"]), 1);
    assert!(message.contains("is a stage1 model"), "{message}");
    let s2 = f.dir.join("stage2");
    run_ok(&mut refine_cmd(&f, "stage2", &s1, &s2, &["--steps", "2", "--hidden", "16"]));
    assert_eq!(stage_of(&s2), "stage2");
    let message = refused(&mut refine_cmd(&f, "stage1", &s2, &out, &["--steps", "2"]), 1);
    assert!(message.contains("is a stage2 model"), "{message}");
    let message = refused(&mut refine_cmd(&f, "stage2", &s2, &out, &["--steps", "2"]), 1);
    assert!(message.contains("is a stage2 model"), "{message}");
}
