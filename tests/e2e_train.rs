//! End-to-end test of `mrdino train dinosaur` on the real binary.
//!
//! Data: `mrdino synth` frames (textured objects on textured backgrounds) pushed through a fixed random
//! convolutional patch embedding (`ConvPatchBackbone`, 16 px patches, 32 channels, LayerNorm) and written as a
//! feature cache with the cache writer — structured features without a pretrained ViT. A tiny slot model
//! (F = 32, D = 16, K = 4, h = 64) trains for 300 steps from the cache (no augmentation):
//! * the reconstruction loss falls clearly (mean of the last 50 logged losses < 0.5 × mean of the first 10);
//! * a run killed with SIGKILL at three points (each after a checkpoint) and rerun each time has a `metrics.jsonl`
//!   byte-identical to the uninterrupted run's and ends with bit-identical weights and optimiser moments;
//! * SIGTERM stops a run with exit code 4 after writing a checkpoint, and the rerun completes identically.
//!
//! A second, short test runs the on-the-fly path (frames decoded, resized, cropped, flipped on CPU threads,
//! the same random conv backbone) and checks that it trains and resumes identically too. A third checks the
//! refusals before any work: `--steps 0`, a batch larger than the cache's views, config values out of range, a
//! model whose step cannot fit the machine's available memory, an `--out` inside the feature cache, and flag
//! values that mean nothing (usage errors, exit 2).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{checkpoint_step, mean, metrics, mrdino, run_ok, start_until_checkpoint, tensors};

use mrdino_datasets::decode::read_processed;
use mrdino_datasets::{list_sequences, DatasetKind, Processing, SourceOptions};
use mrdino_model::backbone::{Backbone, ConvPatchBackbone};
use mrdino_model::tensors::from_tch;
use mrdino_outputs::feature_cache::{FeatureCacheWriter, ShardMeta, ViewKey};
use tch::{Device, Kind, Tensor};

const STEPS: u64 = 300;

fn synth(dir: &Path, size: &str) -> PathBuf {
    common::synth(dir, size, 2, 16)
}

/// Feature cache of every synth frame through the random conv backbone, one shard per sequence.
fn build_cache(frames: &Path, cache: &Path) {
    let backbone = ConvPatchBackbone::new(16, 32, 0, Device::Cpu).unwrap();
    let sequences = list_sequences(&SourceOptions {
        kind: DatasetKind::Frames,
        root: frames.to_path_buf(),
        cameras: None,
        processing: Some(Processing::Native),
    })
    .unwrap();
    let writer = FeatureCacheWriter::new(cache);
    for s in &sequences {
        let files = s.image_files().unwrap();
        let mut images = Vec::new();
        let (mut h, mut w) = (0, 0);
        for f in files {
            let (rgb, _) = read_processed(&f.path, &Processing::Native).unwrap();
            (h, w) = (rgb.height as i64, rgb.width as i64);
            images.push(
                Tensor::from_data_size(&rgb.data, &[h, w, 3], Kind::Uint8)
                    .permute([2, 0, 1])
                    .to_kind(Kind::Float)
                    / 255.0,
            );
        }
        let features = backbone
            .features(&Tensor::stack(&images, 0))
            .unwrap()
            .to_kind(Kind::Half);
        let meta = ShardMeta {
            unit: s.id.clone(),
            backbone: backbone.name().into(),
            backbone_sha256: backbone.identity().id.clone(),
            layer: 0,
            image_height: h,
            image_width: w,
            grid_height: h / 16,
            grid_width: w / 16,
            normalisation: "imagenet".into(),
            dtype: "f16".into(),
            views: (0..files.len())
                .map(|i| ViewKey {
                    sequence_id: s.id.clone(),
                    frame_index: i as u64,
                    window: None,
                })
                .collect(),
        };
        writer
            .write_shard(&meta, &from_tch("features", &features).unwrap())
            .unwrap();
    }
}

fn tiny_config(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.json");
    let config = serde_json::json!({
        "model": {"n_slots": 4, "slot_dim": 16, "decoder_hidden": 64},
        "batch_size": 8,
        "lr": 2e-3,
        "warmup_steps": 20,
        "lr_decay_steps": 1000,
        "seed": 5
    });
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}

fn train_cmd(config: &Path, source: &[&str], out: &Path, steps: u64) -> Command {
    let mut cmd = mrdino();
    cmd.args(["train", "dinosaur", "--dataset", "frames", "--config"])
        .arg(config)
        .args(source)
        .arg("--out")
        .arg(out)
        .args([
            "--steps",
            &steps.to_string(),
            "--checkpoint-every",
            "50",
            "--log-every",
            "1",
        ])
        .args(["--device", "cpu", "--torch-threads", "1", "--workers", "2", "--quiet"]);
    cmd
}

#[test]
fn trains_from_the_cache_and_resumes_exactly_after_kill_and_term() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = synth(&tmp.path().join("synth"), "64x160");
    let cache = tmp.path().join("cache");
    build_cache(&frames, &cache);
    let config = tiny_config(tmp.path());
    let cache_arg = ["--features", cache.to_str().unwrap()];

    let reference = tmp.path().join("run-ref");
    let t0 = Instant::now();
    run_ok(&mut train_cmd(&config, &cache_arg, &reference, STEPS));
    let seconds = t0.elapsed().as_secs_f64();
    let rows = metrics(&reference);
    assert_eq!(rows.len(), STEPS as usize);
    let losses: Vec<f64> = rows.iter().map(|r| r["loss"].as_f64().unwrap()).collect();
    let (first, last) = (mean(&losses[..10]), mean(&losses[losses.len() - 50..]));
    eprintln!(
        "{STEPS} steps in {seconds:.1} s; loss first-10 mean {first:.4}, last-50 mean {last:.4}, ratio {:.3}",
        last / first
    );
    assert!(
        last < 0.5 * first,
        "loss did not fall clearly: first-10 {first}, last-50 {last}"
    );
    assert!(reference.join("loss.svg").is_file() && reference.join("params.json").is_file());
    let want = tensors(&reference);

    // SIGKILL at three points, each after a checkpoint (the killed process has usually logged rows past it), each
    // time resuming the same run; the last resume runs to the end.
    let killed = tmp.path().join("run-kill");
    for min_step in [50, 100, 150] {
        let mut child = start_until_checkpoint(train_cmd(&config, &cache_arg, &killed, STEPS), &killed, min_step);
        child.kill().unwrap();
        child.wait().unwrap();
        eprintln!("killed with a checkpoint at step {}", checkpoint_step(&killed).unwrap());
    }
    run_ok(&mut train_cmd(&config, &cache_arg, &killed, STEPS));
    assert!(
        std::fs::read(killed.join("metrics.jsonl")).unwrap() == std::fs::read(reference.join("metrics.jsonl")).unwrap(),
        "metrics.jsonl after three kills and resumes is not the uninterrupted run's, byte for byte"
    );
    assert!(
        tensors(&killed) == want,
        "weights or moments after kill -9 and resume differ"
    );

    // SIGTERM: exit code 4 with a checkpoint, then resume.
    let termed = tmp.path().join("run-term");
    let child = start_until_checkpoint(train_cmd(&config, &cache_arg, &termed, STEPS), &termed, 50);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    if out.status.code() == Some(0) {
        eprintln!("run finished before SIGTERM arrived; exit code not checked");
    } else {
        assert_eq!(
            out.status.code(),
            Some(4),
            "SIGTERM must exit 4:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stopped = checkpoint_step(&termed).unwrap();
        assert!(stopped < STEPS, "stopped at {stopped}");
        eprintln!("SIGTERM stopped at step {stopped}");
    }
    run_ok(&mut train_cmd(&config, &cache_arg, &termed, STEPS));
    assert_eq!(metrics(&termed), rows, "metrics after SIGTERM and resume differ");
    assert!(tensors(&termed) == want, "weights after SIGTERM and resume differ");
}

#[test]
fn trains_on_the_fly_through_the_cpu_pipeline_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = synth(&tmp.path().join("synth"), "64x96");
    let config = tmp.path().join("fly.json");
    let c = serde_json::json!({
        "model": {"n_slots": 3, "slot_dim": 8, "decoder_hidden": 32},
        "batch_size": 4, "lr": 1e-3, "warmup_steps": 5, "seed": 2,
        "augment": {"resize_height": 64, "resize_width": 128, "crop_height": 64, "crop_width": 64, "random_flip": true}
    });
    std::fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();
    let root = frames.to_str().unwrap();
    let source = ["--root", root, "--backbone", "random-conv-p16-c24"];
    let full = tmp.path().join("fly-full");
    run_ok(&mut train_cmd(&config, &source, &full, 60));
    let rows = metrics(&full);
    assert_eq!(rows.len(), 60);
    let first = rows[0]["loss"].as_f64().unwrap();
    assert!(first.is_finite() && first > 0.0);

    let part = tmp.path().join("fly-part");
    let out = train_cmd(&config, &source, &part, 60)
        .args(["--time-budget", "0"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "a zero time budget stops at once with exit 4"
    );
    run_ok(&mut train_cmd(&config, &source, &part, 30));
    run_ok(&mut train_cmd(&config, &source, &part, 60));
    assert_eq!(metrics(&part), rows, "a run resumed at step 30 differs");
    assert!(
        tensors(&part) == tensors(&full),
        "weights of the resumed on-the-fly run differ"
    );
}

/// Runs `cmd`, expecting it to fail with `code`; returns its stderr.
fn refused(cmd: &mut Command, code: i32) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    stderr
}

#[test]
fn meaningless_oversized_or_misplaced_runs_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let frames = synth(&tmp.path().join("synth"), "64x160");
    let cache = tmp.path().join("cache");
    build_cache(&frames, &cache);
    let config = tiny_config(tmp.path());
    let cache_arg = ["--features", cache.to_str().unwrap()];
    let out = tmp.path().join("run");

    let message = refused(&mut train_cmd(&config, &cache_arg, &out, 0), 1);
    assert!(message.contains("steps = 0"), "{message}");
    let message = refused(train_cmd(&config, &cache_arg, &out, 5).args(["--batch-size", "1000000"]), 1);
    assert!(message.contains("1000000") && message.contains("32 views"), "{message}");
    for (key, value, want) in [
        ("adam_beta1", serde_json::json!(2), "adam_beta1 = 2"),
        ("clip_grad_norm", serde_json::json!(-1), "clip_grad_norm = -1"),
        ("lr_decay_rate", serde_json::json!(0), "lr_decay_rate = 0"),
    ] {
        let bad = tmp.path().join(format!("{key}.json"));
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        c[key] = value;
        std::fs::write(&bad, serde_json::to_vec(&c).unwrap()).unwrap();
        let message = refused(&mut train_cmd(&bad, &cache_arg, &out, 5), 1);
        assert!(message.contains(want), "{want}: {message}");
    }
    // A model too large for the machine is refused from its shapes, naming both numbers.
    let huge = tmp.path().join("huge.json");
    let c = serde_json::json!({"model": {"n_slots": 4, "slot_dim": 16, "decoder_hidden": 4_000_000}, "batch_size": 8});
    std::fs::write(&huge, serde_json::to_vec(&c).unwrap()).unwrap();
    let message = refused(&mut train_cmd(&huge, &cache_arg, &out, 5), 1);
    assert!(message.contains("one training step needs about") && message.contains("is available"), "{message}");
    assert!(!out.exists(), "a refused run created its directory");

    let message = refused(&mut train_cmd(&config, &cache_arg, &cache.join("run"), 5), 1);
    assert!(message.contains("lies inside the input --features"), "{message}");
    assert!(!cache.join("run").exists());
    let message = refused(train_cmd(&config, &cache_arg, &out, 5).args(["--seed", "-1"]), 2);
    assert!(message.contains("--seed"), "{message}");
    let message = refused(train_cmd(&config, &cache_arg, &out, 5).args(["--lr", "NaN"]), 2);
    assert!(message.contains("--lr"), "{message}");
    let mut zero = mrdino();
    zero.args(["train", "dinosaur", "--dataset", "frames", "--config"])
        .arg(&config)
        .args(cache_arg)
        .arg("--out")
        .arg(&out)
        .args(["--workers", "0", "--quiet"]);
    let message = refused(&mut zero, 2);
    assert!(message.contains("--workers"), "{message}");
    assert!(!out.exists(), "a refused run created its directory");
}

/// `--candidates 3`: three restarts train 100 steps each, the choice follows the recorded figures, the continued
/// run equals a single run of the chosen seed (metrics byte for byte, weights and moments bit for bit), and kill -9
/// during the candidates (twice) reaches the same choice and the same final weights.
#[test]
fn restarts_are_chosen_from_their_collapse_figures_and_resume_to_the_same_choice() {
    const STEPS: u64 = 200;
    let tmp = tempfile::tempdir().unwrap();
    let frames = synth(&tmp.path().join("synth"), "64x160");
    let cache = tmp.path().join("cache");
    build_cache(&frames, &cache);
    let config = tiny_config(tmp.path());
    let cache_arg = ["--features", cache.to_str().unwrap()];
    let restarts = ["--candidates", "3", "--candidate-steps", "100"];

    let run = tmp.path().join("run");
    run_ok(train_cmd(&config, &cache_arg, &run, STEPS).args(restarts));
    let choice: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("candidates/choice.json")).unwrap()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&choice).unwrap());
    let assessed = choice["assessed"].as_array().unwrap();
    let seeds: Vec<i64> = assessed.iter().map(|c| c["seed"].as_i64().unwrap()).collect();
    assert_eq!(seeds, [5, 6, 7], "seeds from the config's seed on");
    // Each verdict is the mean of the candidate's own logged figures over steps 1..=100.
    for c in assessed {
        let rows = metrics(&run.join(format!("candidates/seed-{}", c["seed"])));
        assert_eq!(rows.len(), 100, "a candidate stops at --candidate-steps");
        let sims: Vec<f64> = rows.iter().map(|r| r["mask_similarity"].as_f64().unwrap()).collect();
        let verdict_sim = c["verdict"]["mask_similarity"].as_f64().unwrap();
        assert!((verdict_sim - mean(&sims)).abs() < 1e-12, "{verdict_sim} vs {}", mean(&sims));
        assert!(rows.iter().all(|r| r["attention_entropy"].as_f64().is_some_and(|h| (0.0..=1.0).contains(&h))));
    }
    // The chosen one: not collapsed when any is not, then the lowest mask similarity.
    let key = |c: &serde_json::Value| {
        (
            c["verdict"]["collapsed"].as_bool().unwrap(),
            c["verdict"]["mask_similarity"].as_f64().unwrap(),
        )
    };
    let best = assessed.iter().min_by(|a, b| key(a).partial_cmp(&key(b)).unwrap()).unwrap();
    assert_eq!(choice["chosen_seed"], best["seed"]);
    let chosen = choice["chosen_seed"].as_i64().unwrap();

    // The continued run is the single run of the chosen seed, byte for byte.
    let single = tmp.path().join("single");
    run_ok(train_cmd(&config, &cache_arg, &single, STEPS).args(["--seed", &chosen.to_string()]));
    assert!(
        std::fs::read(run.join("metrics.jsonl")).unwrap() == std::fs::read(single.join("metrics.jsonl")).unwrap(),
        "metrics.jsonl of the continued candidate differs from a single --seed {chosen} run"
    );
    assert!(tensors(&run) == tensors(&single), "weights or moments differ from a single --seed {chosen} run");
    // Rows carry verdicts at the fixed check steps (500, 1,500, …) only; the last step's is in the checkpoint.
    assert!(metrics(&run).iter().all(|r| r.get("collapse").is_none()));
    let file = mrdino_outputs::checkpoint::read_tensor_file(&run.join("checkpoint.safetensors")).unwrap();
    let last: serde_json::Value = serde_json::from_str(file.meta("mrdino.collapse").unwrap()).unwrap();
    assert_eq!(last["step"], 200);
    // status says where the run is, its verdict and the choice; a candidate stopped at 100 is not complete.
    let out = mrdino().args(["status", "--out"]).arg(&run).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let word = if last["collapsed"].as_bool().unwrap() { "COLLAPSED" } else { "not collapsed" };
    assert!(text.contains("step 200 of 200") && text.contains(&format!("collapse check at step 200: {word}")), "{text}");
    assert!(text.contains(&format!("restarts: continued seed {chosen}")), "{text}");
    let out = mrdino().args(["status", "--out"]).arg(run.join("candidates/seed-5")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("step 100 of 200") && text.contains("not checked yet (first check at step 200)"), "{text}");

    // kill -9 in the second candidate, then in the third; the same command resumes to the same choice and weights.
    let killed = tmp.path().join("killed");
    for (candidate, min_step) in [("seed-6", 50), ("seed-7", 50)] {
        let dir = killed.join("candidates").join(candidate);
        let mut cmd = train_cmd(&config, &cache_arg, &killed, STEPS);
        cmd.args(restarts);
        let mut child = start_until_checkpoint(cmd, &dir, min_step);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!killed.join("candidates/choice.json").exists());
    }
    run_ok(train_cmd(&config, &cache_arg, &killed, STEPS).args(restarts));
    assert_eq!(
        std::fs::read(killed.join("candidates/choice.json")).unwrap(),
        std::fs::read(run.join("candidates/choice.json")).unwrap()
    );
    assert!(tensors(&killed) == tensors(&run), "weights after kill -9 during the candidates differ");

    // Other restart flags on a run with a recorded choice, and candidates that leave no steps, are refused.
    let message = refused(train_cmd(&config, &cache_arg, &run, STEPS).args(["--candidates", "2", "--candidate-steps", "100"]), 1);
    assert!(message.contains("--candidates 3") && message.contains("--candidates 2"), "{message}");
    let fresh = tmp.path().join("fresh");
    let message = refused(train_cmd(&config, &cache_arg, &fresh, STEPS).args(["--candidates", "2", "--candidate-steps", "200"]), 1);
    assert!(message.contains("--candidate-steps 200") && message.contains("steps = 200"), "{message}");
}
