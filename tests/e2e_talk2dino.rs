//! End-to-end tests of the Talk2DINO commands on the real binary.
//!
//! - `mrdino segment` on one fixed image against a PyTorch re-statement of Talk2DINO's whole inference
//!   (`tools/reference/talk2dino_segment_fixtures.py`: random DINOv2-with-registers, CLIP text tower and ψ with
//!   re-randomised norms and biases, converted by the repository's converters), with and without background
//!   cleaning: the argmax of every pixel read back from the `instances` table agrees on ≥ 99.9 % of the pixels,
//!   and on every pixel whose top-2 margin in the reference is at least 1e-4.
//! - `mrdino synth` → `mrdino labels` → `mrdino name` with random weights: one row per instance, joined by
//!   pyarrow and duckdb to `instances` (`tools/check_names.py`); a rerun skips every unit; `status` and
//!   `finalize` read the names job; a spent `--time-budget` exits 4 and the rerun completes it; `--predictions`
//!   reads the same layout; `segment` on the synth frames is a labels-shaped run (`status`, `name` read it) whose
//!   two shards give the rows of one run; `report --names` shows the per-name counts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use common::{labels_of_synth, mrdino, python, run_ok};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_model::clip_text::{self, ClipTextConfig};
use mrdino_model::vit::{write_random_weights, VitConfig};
use mrdino_outputs::names::read_names;
use mrdino_outputs::tables::{read_instances, InstanceOrigin};
use tch::{Kind, Tensor};

const VIT_SPEC: &str = "custom:family=dinov2,depth=2,dim=64,heads=2,patch=14,registers=4,pos_grid=37";

/// Every Parquet file under `dir` (recursively), sorted.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn model_args(cmd: &mut Command, dir: &Path) {
    cmd.args(["--backbone", VIT_SPEC, "--backbone-weights"])
        .arg(dir.join("backbone.safetensors"))
        .arg("--text-weights")
        .arg(dir.join("text.safetensors"))
        .arg("--psi-weights")
        .arg(dir.join("psi.safetensors"))
        .args(["--device", "cpu", "--quiet"]);
}

/// The random-weight fixture: a tiny DINOv2-with-registers backbone, a one-layer CLIP text tower and a ψ into
/// its 64 dimensions, written to `dir/weights` (the files `model_args` passes).
fn random_weights(dir: &Path) -> PathBuf {
    let weights = dir.join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    write_random_weights(
        &weights.join("backbone.safetensors"),
        &VitConfig::by_name(VIT_SPEC).unwrap(),
        3,
    )
    .unwrap();
    clip_text::write_random_weights(
        &weights.join("text.safetensors"),
        &ClipTextConfig::by_name("custom:width=32,layers=1,heads=2,embed=512").unwrap(),
        4,
    )
    .unwrap();
    tch::manual_seed(5);
    let psi = [
        (
            "linear_layer.weight",
            Tensor::randn([64, 512], (Kind::Float, tch::Device::Cpu)) * 0.05,
        ),
        (
            "linear_layer.bias",
            Tensor::randn([64], (Kind::Float, tch::Device::Cpu)) * 0.1,
        ),
        (
            "hidden_layers.0.weight",
            Tensor::randn([64, 64], (Kind::Float, tch::Device::Cpu)) * 0.2,
        ),
        (
            "hidden_layers.0.bias",
            Tensor::randn([64], (Kind::Float, tch::Device::Cpu)) * 0.1,
        ),
    ];
    Tensor::write_safetensors(&psi[..], weights.join("psi.safetensors")).unwrap();
    weights
}

#[test]
fn segment_matches_talk2dino_inference() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = tmp.path().join("fixtures");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tools/reference/talk2dino_segment_fixtures.py"
    );
    run_ok(Command::new(python()).arg(script).arg(&fixtures));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(fixtures.join("meta.json")).unwrap()).unwrap();
    let prompts: Vec<String> = serde_json::from_str(meta["prompts"].as_str().unwrap()).unwrap();
    let io: BTreeMap<String, Tensor> = Tensor::read_safetensors(fixtures.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    for mode in ["plain", "clean"] {
        let out = tmp.path().join(format!("segment-{mode}"));
        let mut cmd = mrdino();
        cmd.args(["segment", "--dataset", "frames", "--root"])
            .arg(fixtures.join("frames"))
            .arg("--out")
            .arg(&out)
            .args(["--threshold", meta[format!("threshold_{mode}")].as_str().unwrap()]);
        for p in &prompts {
            cmd.args(["--prompt", p]);
        }
        if mode == "clean" {
            cmd.arg("--background-clean");
        }
        model_args(&mut cmd, &fixtures);
        run_ok(&mut cmd);

        let reference = &io[&format!("labels_{mode}")];
        let (h, w) = reference.size2().unwrap();
        let mut labels = vec![0i64; (h * w) as usize];
        let files = parquet_files(&out.join("instances"));
        assert_eq!(files.len(), 1, "one unit, one instances file");
        let rows = read_instances(&files[0]).unwrap();
        assert!(
            rows.len() >= 2,
            "{mode}: several prompts must win somewhere, got {}",
            rows.len()
        );
        for row in &rows {
            assert_eq!(row.origin, InstanceOrigin::Prompt);
            assert_eq!((row.mask.height as i64, row.mask.width as i64), (h, w));
            assert_eq!(row.component_id + 1, row.instance_id);
            for p in row.mask.to_pixels().unwrap() {
                labels[p as usize] = i64::from(row.instance_id);
            }
        }
        let ours = Tensor::from_slice(&labels).view([h, w]);
        let same = ours.eq_tensor(reference);
        let share = same.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        eprintln!("{mode}: {share} of the pixels agree");
        assert!(share >= 0.999, "{mode}: {share} of the pixels agree");
        let confident = io[&format!("margin_{mode}")].ge(1e-4);
        let wrong_confident = confident
            .logical_and(&same.logical_not())
            .sum(Kind::Int64)
            .int64_value(&[]);
        assert_eq!(wrong_confident, 0, "{mode}: pixels with a top-2 margin ≥ 1e-4 disagree");
        let seen = reference.internal_unique(true, false).0.size()[0];
        assert!(
            seen >= 3,
            "{mode}: the reference must exercise background and several prompts"
        );
    }
}

#[test]
fn name_labels_joins_instances_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    run_ok(mrdino().arg("synth").arg("--out").arg(&data).args([
        "--sequences",
        "2",
        "--frames",
        "8",
        "--size",
        "160x96",
    ]));
    let labels = dir.join("labels");
    run_ok(&mut labels_of_synth(&data, &labels));
    let instances: usize = parquet_files(&labels.join("instances"))
        .iter()
        .map(|f| read_instances(f).unwrap().len())
        .sum();
    assert!(instances > 0, "the synth labels must have instances");

    let weights = random_weights(dir);

    let names = dir.join("names");
    let name_cmd = |out: &Path| {
        let mut cmd = mrdino();
        cmd.arg("name")
            .arg("--labels")
            .arg(&labels)
            .args(["--classes", "car,person,tree,road"])
            .arg("--out")
            .arg(out);
        model_args(&mut cmd, &weights);
        cmd
    };
    let first = run_ok(&mut name_cmd(&names));
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("2 units done"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let rows: Vec<_> = parquet_files(&names.join("names"))
        .iter()
        .flat_map(|f| read_names(f).unwrap())
        .collect();
    assert_eq!(rows.len(), instances, "one names row per instance");
    assert!(rows
        .iter()
        .all(|r| r.scores.len() == 4 && r.runner_up.is_some() && r.coverage_patches > 0.0));

    let check = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../tools/check_names.py"))
        .arg(&labels)
        .arg(&names)
        .output()
        .unwrap_or_else(|e| panic!("cannot run check_names.py with {}: {e}", python().display()));
    assert!(
        check.status.success(),
        "python check failed:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(summary["duckdb_joined"].as_u64(), Some(instances as u64));

    // A rerun skips every unit and leaves the rows as they were.
    let again = run_ok(&mut name_cmd(&names));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 units done (0 instances), 2 already done"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let rerun: Vec<_> = parquet_files(&names.join("names"))
        .iter()
        .flat_map(|f| read_names(f).unwrap())
        .collect();
    assert_eq!(rerun, rows);
    run_ok(mrdino().arg("status").arg("--out").arg(&names));
    run_ok(mrdino().arg("finalize").arg("--out").arg(&names));

    // A spent time budget stops with exit code 4 and nothing done; the same command then completes the job.
    let stopped = dir.join("names-stopped");
    let mut cmd = name_cmd(&stopped);
    cmd.args(["--time-budget", "0"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let status = mrdino().arg("status").arg("--out").arg(&stopped).output().unwrap();
    assert_eq!(
        status.status.code(),
        Some(3),
        "an interrupted names job is not complete"
    );
    run_ok(&mut name_cmd(&stopped));
    let resumed: Vec<_> = parquet_files(&stopped.join("names"))
        .iter()
        .flat_map(|f| read_names(f).unwrap())
        .collect();
    assert_eq!(resumed, rows);

    // A predictions run has the labels layout: `--predictions` reads it the same way.
    let from_predictions = dir.join("names-pred");
    let mut cmd = mrdino();
    cmd.arg("name")
        .arg("--predictions")
        .arg(&labels)
        .args(["--classes", "car,person,tree,road"])
        .arg("--out")
        .arg(&from_predictions);
    model_args(&mut cmd, &weights);
    run_ok(&mut cmd);
    let predicted: Vec<_> = parquet_files(&from_predictions.join("names"))
        .iter()
        .flat_map(|f| read_names(f).unwrap())
        .collect();
    assert_eq!(predicted, rows);

    // `segment` writes a labels-shaped run: `status` reads it, `name` names its prompt regions, and two shards
    // give the rows of one run.
    let segment_cmd = |out: &Path, extra: &[&str]| {
        let mut cmd = mrdino();
        cmd.args([
            "segment",
            "--dataset",
            "frames",
            "--prompt",
            "car,road",
            "--threshold",
            "0.5",
            "--root",
        ])
        .arg(data.join("frames"))
        .arg("--out")
        .arg(out)
        .args(extra);
        model_args(&mut cmd, &weights);
        cmd
    };
    let segmented = dir.join("segment");
    run_ok(&mut segment_cmd(&segmented, &[]));
    run_ok(mrdino().arg("status").arg("--out").arg(&segmented));
    let sharded = dir.join("segment-sharded");
    for shard in ["0/2", "1/2"] {
        run_ok(&mut segment_cmd(&sharded, &["--shard", shard]));
    }
    let regions = |root: &Path| -> Vec<_> {
        parquet_files(&root.join("instances"))
            .iter()
            .flat_map(|f| read_instances(f).unwrap())
            .map(|i| (i.sequence_id, i.frame_index, i.instance_id, i.mask))
            .collect()
    };
    let whole = regions(&segmented);
    assert!(!whole.is_empty(), "the prompts must win some pixels");
    assert_eq!(regions(&sharded), whole);
    let segment_names = dir.join("segment-names");
    let mut cmd = mrdino();
    cmd.arg("name")
        .arg("--labels")
        .arg(&segmented)
        .args(["--classes", "car,road"])
        .arg("--out")
        .arg(&segment_names);
    model_args(&mut cmd, &weights);
    run_ok(&mut cmd);
    let segment_rows: usize = parquet_files(&segment_names.join("names"))
        .iter()
        .map(|f| read_names(f).unwrap().len())
        .sum();
    assert_eq!(segment_rows, whole.len(), "one name per prompt region");

    // The report shows the names on the overlays and counts them.
    let report = dir.join("report");
    run_ok(
        mrdino()
            .arg("report")
            .arg("--labels")
            .arg(&labels)
            .arg("--names")
            .arg(&names)
            .arg("--out")
            .arg(&report)
            .args(["--samples", "2"]),
    );
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("id=\"names\""), "no per-name table in the report");
    let counted: usize = ["car", "person", "tree", "road"]
        .iter()
        .filter_map(|name| {
            let cell = format!("<tr><td>{name}</td><td>");
            html.find(&cell).map(|at| {
                html[at + cell.len()..]
                    .split('<')
                    .next()
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0)
            })
        })
        .sum();
    assert_eq!(counted, instances, "the per-name counts add up to the instances");
}

/// The parameters of the only partition of a run in `out` (`OUT/_params/<hash>.json`), with the hash.
fn only_params(out: &Path) -> (String, serde_json::Value) {
    let files: Vec<PathBuf> = std::fs::read_dir(out.join("_params"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{}: one partition expected, got {files:?}", out.display());
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    (value["params_hash"].as_str().unwrap().to_string(), value["params"].clone())
}

/// (sequence, frame, instance, mask) of every prompt region of a segment run.
fn regions(root: &Path) -> Vec<(String, u32, u32, mrdino_outputs::CocoRle)> {
    parquet_files(&root.join("instances"))
        .iter()
        .flat_map(|f| read_instances(f).unwrap())
        .map(|i| (i.sequence_id, i.frame_index, i.instance_id, i.mask))
        .collect()
}

/// `mrdino segment` on `frames` with the random weights of `weights`.
fn segment_cmd(frames: &Path, weights: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = mrdino();
    cmd.args(["segment", "--dataset", "frames", "--root"])
        .arg(frames)
        .arg("--out")
        .arg(out)
        .args(extra);
    model_args(&mut cmd, weights);
    cmd
}

/// Runs `cmd`, expecting exit code `code` and `needle` in its stderr.
fn refused(cmd: &mut Command, code: i32, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(needle), "`{needle}` not in:\n{stderr}");
}

#[test]
fn class_and_prompt_files_come_through_their_own_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let frames = common::synth(&data, "160x96", 2, 8);
    let labels = dir.join("labels");
    run_ok(&mut labels_of_synth(&data, &labels));
    let weights = random_weights(dir);
    let name_cmd = |out: &Path, extra: &[&str]| {
        let mut cmd = mrdino();
        cmd.arg("name").arg("--labels").arg(&labels).arg("--out").arg(out).args(extra);
        model_args(&mut cmd, &weights);
        cmd
    };
    let names = |out: &Path| -> Vec<_> {
        parquet_files(&out.join("names"))
            .iter()
            .flat_map(|f| read_names(f).unwrap())
            .collect()
    };

    // A class list file gives the names (and the partition) of the same list as text.
    let classes = dir.join("classes.txt");
    std::fs::write(&classes, "# road users\ncar\nperson\n\ntree  # plants\nroad\n").unwrap();
    let (from_text, from_file) = (dir.join("names-text"), dir.join("names-file"));
    run_ok(&mut name_cmd(&from_text, &["--classes", "car,person", "--classes", "tree,road"]));
    run_ok(&mut name_cmd(&from_file, &["--classes-file", classes.to_str().unwrap()]));
    let rows = names(&from_text);
    assert!(!rows.is_empty(), "the synth labels must have instances");
    assert_eq!(names(&from_file), rows);
    assert_eq!(only_params(&from_file).0, only_params(&from_text).0);
    assert_eq!(
        only_params(&from_file).1["classes"],
        serde_json::json!(["car", "person", "tree", "road"])
    );
    // A mistyped path is refused, naming it, before any work; as text it would have been a class name.
    let missing = dir.join("names-missing");
    refused(&mut name_cmd(&missing, &["--classes-file", "nosuch.txt"]), 2, "nosuch.txt");
    assert!(!missing.exists(), "nothing may be written for a refused command");

    // The same for prompts.
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "car\nroad # the ground\n").unwrap();
    let (seg_text, seg_file) = (dir.join("segment-text"), dir.join("segment-file"));
    run_ok(&mut segment_cmd(&frames, &weights, &seg_text, &["--prompt", "car,road", "--threshold", "0"]));
    let file_args = ["--prompts-file", prompts.to_str().unwrap(), "--threshold", "0"];
    run_ok(&mut segment_cmd(&frames, &weights, &seg_file, &file_args));
    assert!(!regions(&seg_text).is_empty(), "the prompts must win some pixels");
    assert_eq!(regions(&seg_file), regions(&seg_text));
    assert_eq!(only_params(&seg_file).0, only_params(&seg_text).0);
    let seg_missing = dir.join("segment-missing");
    refused(
        &mut segment_cmd(&frames, &weights, &seg_missing, &["--prompts-file", "nosuch.txt"]),
        2,
        "nosuch.txt",
    );
    assert!(!seg_missing.exists());

    // `--prompt car` is the prompt "car", even with a file `./car` (listing other prompts) in the working directory.
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(cwd.join("car"), "road\nsky\n").unwrap();
    let seg_car = dir.join("segment-car");
    run_ok(segment_cmd(&frames, &weights, &seg_car, &["--prompt", "car", "--threshold", "0"]).current_dir(&cwd));
    assert_eq!(only_params(&seg_car).1["prompts"], serde_json::json!(["car"]));
    let car = regions(&seg_car);
    assert!(!car.is_empty() && car.iter().all(|r| r.2 == 1), "one prompt, instance id 1");
}

#[test]
fn segment_sliding_view_and_pamr_run_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let frames = common::synth(&dir.join("data"), "160x96", 1, 2);
    let weights = random_weights(dir);
    let mut hashes = Vec::new();
    let mut any_region = false;
    for (case, extra) in [
        ("square", &[][..]),
        ("sliding", &["--view", "sliding"][..]),
        ("pamr", &["--pamr"][..]),
        ("sliding-pamr", &["--view", "sliding", "--pamr", "--background-clean"][..]),
    ] {
        let out = dir.join(case);
        let mut args = vec!["--prompt", "car,road", "--threshold", "0"];
        args.extend(extra);
        run_ok(&mut segment_cmd(&frames, &weights, &out, &args));
        run_ok(mrdino().arg("status").arg("--out").arg(&out));
        let (hash, params) = only_params(&out);
        hashes.push(hash);
        let sliding = case.starts_with("sliding");
        match &params["view"] {
            serde_json::Value::Null => assert!(!sliding, "{case}: {params}"),
            view => {
                assert!(sliding, "{case}: {params}");
                assert_eq!(view["view"], "sliding");
                assert_eq!((view["crop_px"].as_i64(), view["stride_px"].as_i64()), (Some(448), Some(224)));
            }
        }
        assert_eq!(params["pamr"].is_null(), !case.ends_with("pamr"), "{case}: {params}");
        if case.ends_with("pamr") {
            assert_eq!(params["pamr"]["iterations"], 10);
            assert_eq!(params["pamr"]["dilations_px"], serde_json::json!([1, 2, 4, 8, 12, 24]));
        }
        let frame_rows: Vec<_> = parquet_files(&out.join("frames"))
            .iter()
            .flat_map(|f| mrdino_outputs::tables::read_frames(f).unwrap())
            .collect();
        assert_eq!(frame_rows.len(), 2, "{case}: one row per frame");
        assert!(frame_rows.iter().all(|f| f.labelled && (f.height, f.width) == (96, 160)));
        let rows: Vec<_> = parquet_files(&out.join("instances"))
            .iter()
            .flat_map(|f| read_instances(f).unwrap())
            .collect();
        for row in &rows {
            assert_eq!(row.origin, InstanceOrigin::Prompt);
            assert_eq!((row.mask.height, row.mask.width), (96, 160), "{case}");
            assert!((1..=2).contains(&row.instance_id) && row.component_id + 1 == row.instance_id);
            assert_eq!(row.area_px as usize, row.mask.to_pixels().unwrap().len());
        }
        any_region |= !rows.is_empty();
    }
    assert!(any_region, "the prompts must win some pixels in some view");
    let distinct: std::collections::BTreeSet<_> = hashes.iter().collect();
    assert_eq!(distinct.len(), hashes.len(), "every view / PAMR choice is its own partition: {hashes:?}");
}

#[test]
fn meaningless_segment_and_name_values_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No dataset and no weights exist: a refusal must come before they are looked at.
    let (frames, weights, out) = (dir.join("no-frames"), dir.join("no-weights"), dir.join("out"));
    for (value, code, needle) in [
        ("-1", 1, "threshold = -1 must be a finite number >= 0 and <= 1"),
        ("2", 1, "threshold = 2 must be a finite number >= 0 and <= 1"),
        ("1.5", 1, "threshold = 1.5 must be"),
        ("nan", 2, "`nan` is not a finite number"),
        ("inf", 2, "`inf` is not a finite number"),
    ] {
        refused(
            &mut segment_cmd(&frames, &weights, &out, &["--prompt", "car", "--threshold", value]),
            code,
            needle,
        );
        assert!(!out.exists(), "--threshold {value}: nothing may be written");
    }
    refused(&mut segment_cmd(&frames, &weights, &out, &["--prompt", "car", "--batch", "0"]), 2, "--batch");
    refused(&mut segment_cmd(&frames, &weights, &out, &["--prompt", "car,,road"]), 1, "empty name");
    let mut name = mrdino();
    name.arg("name").arg("--labels").arg(dir.join("no-run")).arg("--out").arg(&out).args(["--batch", "0"]);
    model_args(&mut name, &weights);
    refused(&mut name, 2, "--batch");
    assert!(!out.exists());
}
