//! The bad-input corpus: every command, given a value that means nothing (NaN, negative, infinite, zero where it
//! must be positive, out of the range the method defines), a missing, empty or wrong-kind path, a truncated or
//! corrupt safetensors/Parquet/PNG/JSON file, the weights of another model, a cache of another backbone or a shard
//! I ≥ N, must answer with a clear error naming the value or the file, never panic, and write nothing: the output
//! path it was given does not exist afterwards and no input changed.
//!
//! The case table is also the documentation: `docs/bad-input.md` is rendered from it together with the first
//! error line each case prints. The test fails when the file differs; `MRDINO_BLESS=1` rewrites it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use common::{features_of, labels_of_synth, mrdino, run_ok, synth};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mrdino_model::vit::{write_random_weights, VitConfig};

const BACKBONE: &str = "custom:family=dinov2,depth=1,dim=16,heads=2,patch=14,pos_grid=4";
const OTHER_BACKBONE: &str = "custom:family=dinov2,depth=2,dim=16,heads=2,patch=14,pos_grid=4";
const V3_BACKBONE: &str = "custom:family=dinov3,depth=1,dim=16,heads=2,patch=16";

/// One bad input and the answer it must get.
struct Case {
    /// The command, as the docs group it.
    command: &'static str,
    /// What is wrong, in words.
    input: &'static str,
    /// Arguments, separated by spaces; `{name}` is replaced by a fixture path (see [`Fixture::paths`]).
    args: String,
    /// A part of the error output that names the value or file at fault (placeholders allowed).
    expect: &'static str,
    /// The exit code: 2 for a usage error (a flag's value), 1 for a refused input.
    exit: i32,
}

const LABELS: &str = "labels --dataset frames --quiet --flow import --flow-dir {flow} --root {root} --out {out}";
const FEATURES: &str =
    "features --dataset frames --quiet --device cpu --size 28x28 --backbone {backbone} --root {root} --out {out}";
const INFER: &str =
    "infer --dataset frames --quiet --device cpu --backbone {backbone} --backbone-weights {vit} --root {root} --out {out}";
const TRAIN_ANY_CONFIG: &str = "train dinosaur --dataset frames --quiet --device cpu --steps 2 --features {views} --out {out}";
const TRAIN: &str =
    "train dinosaur --dataset frames --quiet --device cpu --steps 2 --config {tiny} --features {views} --out {out}";
const STAGE1: &str = "refine stage1 --quiet --device cpu --steps 2 --from {run} --labels {labels} --root {root} \
                      --features {windows} --out {out}";
const T2D: &str = "--quiet --device cpu --backbone {backbone} --backbone-weights {vit} --text-weights {vit} --psi-weights {vit}";

macro_rules! case {
    ($command:literal, $input:literal, [$($part:expr),+], $expect:literal, $exit:literal) => {
        Case { command: $command, input: $input, args: [$($part),+].join(" "), expect: $expect, exit: $exit }
    };
}

fn cases() -> Vec<Case> {
    vec![
        // labels (plan shares its arguments)
        case!("labels", "`--time-budget nan`", [LABELS, "--time-budget nan"], "`nan`", 2),
        case!("labels", "`--time-budget=-1`", [LABELS, "--time-budget=-1"], "`-1`", 2),
        case!("labels", "`--time-budget inf`", [LABELS, "--time-budget inf"], "`inf`", 2),
        case!("labels", "`--threads 0`", [LABELS, "--threads 0"], "--threads", 2),
        case!("labels", "`--torch-threads 0`", [LABELS, "--torch-threads 0"], "--torch-threads", 2),
        case!("labels", "`--max-failures -1`", [LABELS, "--max-failures -1"], "-1", 2),
        case!("labels", "`--corner-threshold-px nan`", [LABELS, "--corner-threshold-px nan"], "corner", 2),
        case!("labels", "`--fg-threshold-px=-1`", [LABELS, "--fg-threshold-px=-1"], "fg_threshold_px = -1", 1),
        case!("labels", "`--min-instance-px 4294967296`", [LABELS, "--min-instance-px 4294967296"], "4294967296", 1),
        case!("labels", "`--min-run-frames 0`", [LABELS, "--min-run-frames 0"], "min", 2),
        case!("labels", "`--resize 0x64`", [LABELS, "--resize 0x64"], "0x64", 2),
        case!("labels", "`--shard 3/2` (I ≥ N)", [LABELS, "--shard 3/2"], "3/2", 2),
        case!("labels", "`--shard 0/0`", [LABELS, "--shard 0/0"], "0/0", 2),
        case!("labels", "`--flow dis --flow-batch 0`", [LABELS, "--flow-batch 0"], "--flow-batch", 2),
        case!("labels", "missing `--root`", [LABELS, "--root {missing}"], "nosuch", 1),
        case!("labels", "`--root` is a file", [LABELS, "--root {vit}"], "vit.safetensors", 1),
        case!("labels", "`--root` is empty", [LABELS, "--root {empty_dir}"], "empty_dir", 1),
        case!("labels", "missing `--flow-dir`", [LABELS, "--flow-dir {missing}"], "nosuch", 1),
        case!("labels", "truncated JSON `--config`", [LABELS, "--config {bad_json}"], "bad.json", 1),
        case!("labels", "SMURF `--weights` truncated", [LABELS, "--flow smurf --weights {bad_st}"], "bad.safetensors", 1),
        case!("labels", "SMURF `--weights` of a ViT", [LABELS, "--flow smurf --weights {vit}"], "vit.safetensors", 1),
        case!("labels", "`--out` holds predictions", [LABELS, "--out {predictions}"], "predictions", 1),
        case!("plan", "`--corner-threshold-px nan`", [LABELS, "--corner-threshold-px nan"], "corner", 2),
        // flow
        case!("flow", "`--flow-batch 0`", ["flow --dataset frames --quiet --root {root} --out {out} --flow-batch 0"], "--flow-batch", 2),
        case!("flow", "`--threads 0`", ["flow --dataset frames --quiet --root {root} --out {out} --threads 0"], "--threads", 2),
        case!("flow", "`--shard 2/2`", ["flow --dataset frames --quiet --root {root} --out {out} --shard 2/2"], "2/2", 2),
        case!("flow", "`--time-budget nan`", ["flow --dataset frames --quiet --root {root} --out {out} --time-budget nan"], "`nan`", 2),
        case!("flow", "`--out` is a labels run", ["flow --dataset frames --quiet --root {root} --out {labels}"], "labels", 1),
        // synth
        case!("synth", "`--frames 1`", ["synth --out {out} --frames 1"], "frames must be in 2..", 1),
        case!("synth", "`--size 0x64`", ["synth --out {out} --size 0x64"], "0x64", 2),
        case!("synth", "`--seed -1`", ["synth --out {out} --seed -1"], "-1", 2),
        case!("synth", "`--sequences 0`", ["synth --out {out} --sequences 0"], "sequences must be in 1..", 1),
        case!("synth", "`--out` holds another dataset", ["synth --out {data} --seed 7"], "data", 1),
        // status, finalize
        case!("status", "`--num-shards 0`", ["status --out {labels} --num-shards 0"], "--num-shards", 2),
        case!("status", "missing `--out`", ["status --out {missing}"], "nosuch", 1),
        case!("status", "`--out` is a file", ["status --out {vit}"], "vit.safetensors", 1),
        case!("finalize", "missing `--out`", ["finalize --out {missing}"], "nosuch", 1),
        case!("finalize", "unknown `--params`", ["finalize --out {labels} --params 0123abcd"], "0123abcd", 1),
        // eval, compare, report, export
        case!("eval", "missing `--labels`", ["eval --labels {missing} --gt {data} --gt-format synth --json {out}"], "nosuch", 1),
        case!("eval", "truncated Parquet in `--labels`", ["eval --labels {bad_labels} --gt {data} --gt-format synth --json {out}"], "seq000", 1),
        case!("eval", "`--json` inside the labels run", ["eval --labels {labels} --gt {data} --gt-format synth --json {labels}/instances/x.json"], "lies inside the input", 1),
        case!("eval", "missing `--gt`", ["eval --labels {labels} --gt {missing} --gt-format synth --json {out}"], "nosuch", 1),
        case!("compare", "truncated JSON `--eval`", ["compare --eval a={bad_json} --json {out}"], "bad.json", 1),
        case!("compare", "`--eval` without a name", ["compare --eval {bad_json} --json {out}"], "NAME=FILE", 1),
        case!("compare", "`--json` is its input", ["compare --eval a={eval_json} --json {eval_json}"], "eval.json", 1),
        case!("report", "`--out` is the labels run", ["report --labels {labels} --out {labels}"], "labels", 1),
        case!("report", "flow of another size", ["report --labels {labels} --out {out} --flow-dir {small_flow}"], "small_flow", 1),
        case!("export", "missing `--labels`", ["export --labels {missing} --format coco --out {out}"], "nosuch", 1),
        case!("export", "`--format` unknown", ["export --labels {labels} --format voc --out {out}"], "voc", 2),
        case!("export", "`--out` inside the labels run", ["export --labels {labels} --format coco --out {labels}/frames/coco.json"], "lies inside the input", 1),
        // features
        case!("features", "`--batch 0`", [FEATURES, "--backbone-weights {vit} --batch 0"], "--batch", 2),
        case!("features", "`--size 0x28`", [FEATURES, "--backbone-weights {vit} --size 0x28"], "0x28", 2),
        case!("features", "`--torch-threads 0`", [FEATURES, "--backbone-weights {vit} --torch-threads 0"], "--torch-threads", 2),
        case!("features", "`--shard 5/4`", [FEATURES, "--backbone-weights {vit} --shard 5/4"], "5/4", 2),
        case!("features", "truncated safetensors", [FEATURES, "--backbone-weights {bad_st}"], "bad.safetensors", 1),
        case!("features", "empty weights file", [FEATURES, "--backbone-weights {empty}"], "empty.safetensors", 1),
        case!("features", "weights of another ViT", [FEATURES, "--backbone-weights {vit2}"], "vit2.safetensors", 1),
        case!("features", "`--out` is the frames", [FEATURES, "--backbone-weights {vit} --out {root}"], "frames", 1),
        // train, refine
        case!("train", "`--time-budget nan`", [TRAIN, "--time-budget nan"], "`nan`", 2),
        case!("train", "`--time-budget=-1`", [TRAIN, "--time-budget=-1"], "`-1`", 2),
        case!("train", "`--steps 0`", [TRAIN, "--steps 0"], "steps = 0", 1),
        case!("train", "`--workers 0`", [TRAIN, "--workers 0"], "--workers", 2),
        case!("train", "`--batch-size 0`", [TRAIN, "--batch-size 0"], "--batch-size", 2),
        case!("train", "`--lr nan`", [TRAIN, "--lr nan"], "--lr", 2),
        case!("train", "`--seed -1`", [TRAIN, "--seed -1"], "-1", 2),
        case!("train", "config `adam_beta1: 2`", [TRAIN_ANY_CONFIG, "--config {beta_json}"], "adam_beta1", 1),
        case!("train", "config `clip_grad_norm: -1`", [TRAIN_ANY_CONFIG, "--config {clip_json}"], "clip_grad_norm", 1),
        case!("train", "missing `--features`", [TRAIN, "--features {missing}"], "nosuch", 1),
        case!("train", "`--out` is the cache", [TRAIN, "--out {views}"], "views", 1),
        case!("train", "`--memory-limit 0`", [TRAIN, "--memory-limit 0"], "`0`", 2),
        case!("train", "`--memory-limit 6X`", [TRAIN, "--memory-limit 6X"], "`X`", 2),
        case!("train", "a step above `--memory-limit 1K`", [TRAIN, "--memory-limit 1K"], "one training step needs about", 1),
        case!("refine", "`--time-budget nan`", [STAGE1, "--time-budget nan"], "`nan`", 2),
        case!("refine", "`--epochs 0`", [STAGE1, "--epochs 0"], "epochs = 0", 1),
        case!("refine", "stage 2 `--background-weight 2`", ["refine stage2", &STAGE1["refine stage1".len()..], "--background-weight 2"], "background_weight = 2", 1),
        case!("refine", "stage 2 from a baseline", ["refine stage2", &STAGE1["refine stage1".len()..]], "baseline", 1),
        case!("refine", "`--from` a ViT's weights", [STAGE1, "--from {vit}"], "vit.safetensors", 1),
        case!("refine", "cache of another backbone", [STAGE1, "--features {windows2}"], "backbone", 1),
        case!("refine", "a step above `--memory-limit 1K`", [STAGE1, "--memory-limit 1K"], "--memory-limit 1 KiB", 1),
        // infer
        case!("infer", "`--seed -1`", [INFER, "--model {run} --seed -1"], "-1", 2),
        case!("infer", "`--batch 0`", [INFER, "--model {run} --batch 0"], "--batch", 2),
        case!("infer", "`--model` missing", [INFER, "--model {missing}"], "nosuch", 1),
        case!("infer", "`--model` truncated", [INFER, "--model {bad_st}"], "bad.safetensors", 1),
        case!("infer", "`--model` is a ViT", [INFER, "--model {vit}"], "vit.safetensors", 1),
        case!("infer", "`--backbone` of another model", ["infer --dataset frames --quiet --device cpu --backbone {other_backbone} --backbone-weights {vit2} --root {root} --out {out} --model {run}"], "depth=", 1),
        case!("infer", "`--out` is the labels run", [INFER, "--model {run} --out {labels}"], "labels", 1),
        case!("infer", "`--memory-limit nan`", [INFER, "--model {run} --memory-limit nan"], "nan", 2),
        case!("infer", "a batch above `--memory-limit 1M`", [INFER, "--model {run} --memory-limit 1M"], "one inference batch needs about", 1),
        case!("infer", "a preset whose windows give another token grid", [INFER, "--model {run} --preset movi-e"], "27×27", 1),
        case!("infer", "a DINOv3 `--backbone` for a DINOv2 model", ["infer --dataset frames --quiet --device cpu --backbone {v3_backbone} --backbone-weights {vit3} --root {root} --out {out} --model {run}"], "family=dinov3", 1),
        // analyze
        case!("analyze", "`--k 1000` on a few points", ["analyze --labels {labels} --gt {data} --gt-format synth --backbone {backbone} --backbone-weights {vit} --out {out} --device cpu --k 1000"], "--k", 1),
        case!("analyze", "`--frames 0`", ["analyze --labels {labels} --gt {data} --gt-format synth --backbone {backbone} --backbone-weights {vit} --out {out} --frames 0"], "--frames", 2),
        case!("analyze", "truncated weights", ["analyze --labels {labels} --gt {data} --gt-format synth --backbone {backbone} --backbone-weights {bad_st} --out {out} --device cpu"], "bad.safetensors", 1),
        // name, segment
        case!("name", "`--batch 0`", ["name --labels {labels} --root {root} --classes car --out {out} --batch 0", T2D], "--batch", 2),
        case!("name", "missing `--classes-file`", ["name --labels {labels} --root {root} --classes-file {missing} --out {out}", T2D], "nosuch", 2),
        case!("name", "truncated text weights", ["name --labels {labels} --root {root} --classes car --out {out} --quiet --device cpu --backbone {backbone} --backbone-weights {vit} --text-weights {bad_st} --psi-weights {vit}"], "bad.safetensors", 1),
        case!("segment", "`--threshold -1`", ["segment --dataset frames --root {root} --prompt car --out {out} --threshold -1", T2D], "threshold = -1", 1),
        case!("segment", "`--threshold nan`", ["segment --dataset frames --root {root} --prompt car --out {out} --threshold nan", T2D], "threshold", 2),
        case!("segment", "`--batch 0`", ["segment --dataset frames --root {root} --prompt car --out {out} --batch 0", T2D], "--batch", 2),
        case!("segment", "missing `--prompts-file`", ["segment --dataset frames --root {root} --prompts-file {missing} --out {out}", T2D], "nosuch", 2),
    ]
}

/// The inputs the cases point at, built once.
struct Fixture {
    dir: tempfile::TempDir,
    paths: BTreeMap<&'static str, String>,
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.display().to_string()
}

impl Fixture {
    fn build() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("data");
        let frames = synth(&data, "160x96", 2, 8);
        let labels = d.join("labels");
        run_ok(&mut labels_of_synth(&data, &labels));
        let vit = d.join("vit.safetensors");
        write_random_weights(&vit, &VitConfig::by_name(BACKBONE).unwrap(), 3).unwrap();
        let vit2 = d.join("vit2.safetensors");
        write_random_weights(&vit2, &VitConfig::by_name(OTHER_BACKBONE).unwrap(), 4).unwrap();
        let vit3 = d.join("vit3.safetensors");
        write_random_weights(&vit3, &VitConfig::by_name(V3_BACKBONE).unwrap(), 5).unwrap();
        let views = d.join("views");
        run_ok(features_of(&frames, &views, BACKBONE).arg("--backbone-weights").arg(&vit).args(["--size", "378x378"]));
        let windows_of = |name: &str, spec: &str, weights: &Path| {
            let out = d.join(name);
            run_ok(features_of(&frames, &out, spec).arg("--backbone-weights").arg(weights)
                .args(["--views", "windows", "--labels"]).arg(&labels));
            out
        };
        let windows = windows_of("windows", BACKBONE, &vit);
        let windows2 = windows_of("windows2", OTHER_BACKBONE, &vit2);
        let tiny = d.join("tiny.json");
        std::fs::write(&tiny, br#"{"model": {"n_slots": 3, "slot_dim": 8, "decoder_hidden": 16}, "batch_size": 2}"#).unwrap();
        let run = d.join("run");
        run_ok(mrdino().args(["train", "dinosaur", "--dataset", "frames", "--quiet", "--device", "cpu", "--steps", "2"])
            .args(["--torch-threads", "1", "--config"]).arg(&tiny)
            .arg("--features").arg(&views).arg("--out").arg(&run));
        let predictions = d.join("predictions");
        run_ok(mrdino().args(["infer", "--dataset", "frames", "--quiet", "--device", "cpu", "--torch-threads", "1"])
            .args(["--backbone", BACKBONE, "--backbone-weights"]).arg(&vit)
            .arg("--model").arg(&run).arg("--root").arg(&frames).arg("--out").arg(&predictions));
        let eval_json = d.join("eval.json");
        run_ok(mrdino().arg("eval").arg("--labels").arg(&labels).arg("--gt").arg(&data)
            .args(["--gt-format", "synth", "--json"]).arg(&eval_json));

        // A copy of the labels run whose first instances table is cut in half.
        let bad_labels = d.join("bad_labels");
        copy_tree(&labels, &bad_labels);
        let table = find_file(&bad_labels.join("instances"), "seq000").expect("an instances table of seq000");
        let bytes = std::fs::read(&table).unwrap();
        std::fs::write(&table, &bytes[..bytes.len() / 2]).unwrap();
        // Flow of another frame size than the labels' frames.
        let small_flow = d.join("small_flow");
        run_ok(mrdino().args(["synth", "--sequences", "2", "--frames", "4", "--size", "64x48", "--out"]).arg(d.join("small")));
        std::fs::rename(d.join("small").join("flow"), &small_flow).unwrap();

        let st = std::fs::read(&vit).unwrap();
        let empty_dir = d.join("empty_dir");
        std::fs::create_dir(&empty_dir).unwrap();
        let mut paths = BTreeMap::new();
        paths.insert("data", data.display().to_string());
        paths.insert("root", frames.display().to_string());
        paths.insert("flow", data.join("flow").display().to_string());
        paths.insert("labels", labels.display().to_string());
        paths.insert("bad_labels", bad_labels.display().to_string());
        paths.insert("predictions", predictions.display().to_string());
        paths.insert("views", views.display().to_string());
        paths.insert("windows", windows.display().to_string());
        paths.insert("windows2", windows2.display().to_string());
        paths.insert("run", run.display().to_string());
        paths.insert("vit", vit.display().to_string());
        paths.insert("vit2", vit2.display().to_string());
        paths.insert("vit3", vit3.display().to_string());
        paths.insert("eval_json", eval_json.display().to_string());
        paths.insert("small_flow", small_flow.display().to_string());
        paths.insert("empty_dir", empty_dir.display().to_string());
        paths.insert("missing", d.join("nosuch").display().to_string());
        paths.insert("bad_st", write(&d.join("bad.safetensors"), &st[..st.len() / 3]));
        paths.insert("empty", write(&d.join("empty.safetensors"), b""));
        paths.insert("bad_json", write(&d.join("bad.json"), br#"{"corner_threshold_px": 1.5, "#));
        // The tiny model of the fixture, so that a case that is wrongly accepted ends quickly.
        let model = r#""model": {"n_slots": 3, "slot_dim": 8, "decoder_hidden": 16}, "batch_size": 2"#;
        paths.insert("beta_json", write(&d.join("beta.json"), format!("{{{model}, \"adam_beta1\": 2}}").as_bytes()));
        paths.insert("clip_json", write(&d.join("clip.json"), format!("{{{model}, \"clip_grad_norm\": -1}}").as_bytes()));
        paths.insert("tiny", tiny.display().to_string());
        paths.insert("backbone", BACKBONE.to_string());
        paths.insert("other_backbone", OTHER_BACKBONE.to_string());
        paths.insert("v3_backbone", V3_BACKBONE.to_string());
        Fixture { dir, paths }
    }

    fn substitute(&self, text: &str, out: &Path) -> String {
        let mut text = text.replace("{out}", &out.display().to_string());
        for (name, value) in &self.paths {
            text = text.replace(&format!("{{{name}}}"), value);
        }
        text
    }

    /// Every file under the fixture directory with its bytes, to show that no case changed an input.
    fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.starts_with(self.dir.path().join("outs")) {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = std::fs::read(&path).unwrap();
                    files.insert(path, bytes);
                }
            }
        }
        files
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The first `.parquet` file under `dir` whose path contains `part`.
fn find_file(dir: &Path, part: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, part) {
                return Some(found);
            }
        } else if path.extension().is_some_and(|e| e == "parquet") && path.display().to_string().contains(part) {
            return Some(path);
        }
    }
    None
}

/// The words of `args`, where a flag given again with a value replaces its earlier value (a case states only what
/// it changes in the command it starts from).
fn last_value_wins(args: &str) -> Vec<String> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        let takes_value = word.starts_with("--") && words.get(i + 1).is_some_and(|v| !v.starts_with("--"));
        if takes_value {
            if let Some(at) = out.iter().position(|w| w == word) {
                out.drain(at..at + 2);
            }
            out.push(word.to_string());
            out.push(words[i + 1].to_string());
            i += 2;
        } else {
            out.push(word.to_string());
            i += 1;
        }
    }
    out
}

/// A refusal comes before any work: a case still running after this long was accepted (and is killed).
const CASE_SECONDS: u64 = 90;

/// Runs `cmd`, killing it after `seconds`; its standard error goes through a file (no pipe to fill).
fn output_within(cmd: &mut std::process::Command, seconds: u64) -> (std::process::ExitStatus, String) {
    use std::process::Stdio;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = cmd.stdout(Stdio::null()).stderr(log.reopen().unwrap()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    (status, std::fs::read_to_string(log.path()).unwrap_or_default())
}

/// The first line of `stderr` that says what is wrong, with the fixture's directory replaced by `…`.
fn error_line(stderr: &str, fixture: &Path) -> String {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or_default();
    mask_file_sizes(&line.replace(&fixture.display().to_string(), "…")).replace('|', "\\|")
}

/// `line` with byte counts ("3348 bytes", "records 6697") shown as `N`: a Parquet file's size depends on the length
/// of the code version it records (a build from a tree with uncommitted changes records a longer one).
fn mask_file_sizes(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let is_count = |w: &str| !w.is_empty() && w.trim_end_matches([')', ';', ',']).chars().all(|c| c.is_ascii_digit());
    let masked: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let next = words.get(i + 1).map(|n| n.trim_end_matches([')', ';', ',']));
            let sized = next == Some("bytes") || (i > 0 && words[i - 1] == "records");
            if sized && is_count(w) && w.starts_with(|c: char| c.is_ascii_digit()) {
                format!("N{}", w.trim_start_matches(|c: char| c.is_ascii_digit()))
            } else {
                (*w).to_string()
            }
        })
        .collect();
    masked.join(" ")
}

fn render(rows: &[(String, String, i32, String)]) -> String {
    let mut doc = String::from(
        "# Bad input: what each command answers\n\n\
         Every row is a case of `tests/e2e_bad_input.rs`, run against the real binary by `make test`: the command \
         exits with the code shown, prints the error shown (its first line; `…` is the test's scratch directory, `N` a file size), \
         does not panic, writes nothing and changes no input. The table is rendered from the test and checked \
         against it (`MRDINO_BLESS=1 cargo test --release --workspace --test e2e_bad_input` rewrites it).\n\n\
         Exit codes: 2 = a flag's value is refused while parsing; 1 = an input (file, directory, configuration) is \
         refused before any work.\n\n\
         | command | bad input | exit | error |\n|---|---|---|---|\n",
    );
    for (command, input, exit, line) in rows {
        doc.push_str(&format!("| {command} | {input} | {exit} | `{}` |\n", line.replace('`', "'")));
    }
    doc
}

#[test]
fn every_command_refuses_bad_input_clearly_without_writing() {
    let fixture = Fixture::build();
    let before = fixture.snapshot();
    let outs = fixture.dir.path().join("outs");
    std::fs::create_dir(&outs).unwrap();
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let out = outs.join(format!("out{i:03}"));
        let args = last_value_wins(&fixture.substitute(&case.args, &out));
        let expect = fixture.substitute(case.expect, &out);
        let (status, stderr) = output_within(mrdino().args(&args), CASE_SECONDS);
        let line = error_line(&stderr, fixture.dir.path());
        let mut wrong = Vec::new();
        if status.code() != Some(case.exit) {
            wrong.push(format!("exit {:?}, expected {}", status.code(), case.exit));
        }
        if stderr.contains("panicked") {
            wrong.push("panicked".to_string());
        }
        if !stderr.contains(&expect) {
            wrong.push(format!("the error does not name `{expect}`"));
        }
        if out.exists() {
            wrong.push(format!("{} was written", out.display()));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{} — {}: {}\n    mrdino {}\n    {}",
                case.command,
                case.input,
                wrong.join("; "),
                args.join(" "),
                stderr.trim().replace('\n', "\n    ")
            ));
        }
        rows.push((case.command.to_string(), case.input.to_string(), case.exit, line));
    }
    let after = fixture.snapshot();
    let changed: Vec<_> = before
        .iter()
        .filter(|(path, digest)| after.get(*path) != Some(digest))
        .map(|(path, _)| path.display().to_string())
        .chain(after.keys().filter(|p| !before.contains_key(*p)).map(|p| p.display().to_string()))
        .collect();
    assert!(failures.is_empty(), "{} of {} cases fail:\n{}", failures.len(), rows.len(), failures.join("\n"));
    assert!(changed.is_empty(), "inputs changed or written into: {changed:?}");

    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bad-input.md");
    let doc = render(&rows);
    if std::env::var_os("MRDINO_BLESS").is_some() {
        std::fs::write(&doc_path, &doc).unwrap();
    }
    let on_disk = std::fs::read_to_string(&doc_path).unwrap_or_default();
    assert!(
        on_disk == doc,
        "docs/bad-input.md is not the rendering of this test's cases; rerun with MRDINO_BLESS=1"
    );
}
