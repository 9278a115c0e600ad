//! Same outputs as an earlier build: runs the jobs of `make demo`, `synth`, `labels` (imported and DIS flow),
//! `features` (resized and window views), `train dinosaur`, `infer` and `name` with this build and with a baseline
//! binary on the same inputs, and compares what they wrote: every Parquet column the baseline wrote (rows and
//! values), every tensor of every safetensors file, every JSON record and Parquet/safetensors metadata entry with the
//! code version (and wall-clock fields) left out, every other file byte for byte. The intended changes are named
//! (`INTENDED_COLUMNS`, `INTENDED_KEYS`); new columns and the directory-kind record are the only other additions.
//!
//! Not part of `make test` (it needs the baseline binary): `make same-outputs BASELINE=path/to/old/mrdino`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_model::clip_text::{self, ClipTextConfig};
use mrdino_model::vit::{write_random_weights, VitConfig};
use mrdino_outputs::checkpoint::read_tensor_file;
use mrdino_outputs::tables::read_parquet;
use serde_json::Value;

const BACKBONE: &str = "custom:family=dinov2,depth=2,dim=32,heads=2,patch=14,registers=4,pos_grid=37";
const DEMO_VIDEO: &str = "/usr/share/doc/opencv-doc/examples/data/vtest.avi";
/// Files of bookkeeping that carry times, hosts or process ids (their content is checked by the engine's tests).
const SKIPPED: [&str; 3] = ["_manifest", "_done", "_kind.json"];
/// What this version adds on purpose: the instances' `score` and `track_id` (null before, filled now), the
/// synth record's `complete` flag (synth became resumable), the training metrics' attention entropy and collapse
/// verdict (and the verdict in the checkpoint's metadata), and the collapse panel of `loss.svg`.
const INTENDED_COLUMNS: [&str; 2] = ["score", "track_id"];
const INTENDED_KEYS: [&str; 4] = ["complete", "attention_entropy", "collapse", "mrdino.collapse"];
const INTENDED_FILES: [&str; 1] = ["loss.svg"];
/// Record fields that differ between any two runs.
const VOLATILE: [&str; 5] = ["code_version", "elapsed_s", "wall_s", "started", "finished"];

/// Runs `args` with `program`, asserting success.
fn run(program: &Path, args: &[&str], paths: &[(&str, &Path)]) {
    let mut cmd = Command::new(program);
    for arg in args {
        let mut arg = arg.to_string();
        for (name, path) in paths {
            arg = arg.replace(&format!("{{{name}}}"), &path.display().to_string());
        }
        cmd.arg(arg);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{} {}\n{}",
        program.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strip(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in VOLATILE {
                map.remove(key);
            }
            map.values_mut().for_each(strip);
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        Value::String(text) => {
            if let Ok(mut inner) = serde_json::from_str::<Value>(text) {
                if inner.is_object() || inner.is_array() {
                    strip(&mut inner);
                    *text = inner.to_string();
                }
            }
        }
        _ => {}
    }
}

fn stripped_json(bytes: &[u8]) -> Option<Value> {
    let mut value: Value = serde_json::from_slice(bytes).ok()?;
    strip(&mut value);
    Some(value)
}

/// Metadata entries with volatile fields removed (the code version itself is an entry in some files).
fn stripped_meta(entries: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, Value> {
    entries
        .into_iter()
        .filter(|(k, _)| !VOLATILE.iter().any(|v| k.ends_with(v)) && !INTENDED_KEYS.contains(&k.as_str()))
        .map(|(k, v)| {
            let mut value = serde_json::from_str::<Value>(&v).unwrap_or(Value::String(v));
            strip(&mut value);
            (k, value)
        })
        .collect()
}

fn compare_parquet(old: &Path, new: &Path, differences: &mut Vec<String>) {
    let (old_batches, old_meta) = read_parquet(old).unwrap();
    let (new_batches, new_meta) = read_parquet(new).unwrap();
    if stripped_meta(old_meta) != stripped_meta(new_meta) {
        differences.push(format!("{}: metadata", new.display()));
    }
    let old_rows: usize = old_batches.iter().map(|b| b.num_rows()).sum();
    let new_rows: usize = new_batches.iter().map(|b| b.num_rows()).sum();
    if old_rows != new_rows {
        differences.push(format!("{}: {old_rows} rows before, {new_rows} now", new.display()));
        return;
    }
    let Some(schema) = old_batches.first().map(|b| b.schema()) else { return };
    for field in schema.fields().iter().filter(|f| !INTENDED_COLUMNS.contains(&f.name().as_str())) {
        let column = |batches: &[arrow::array::RecordBatch]| {
            let parts: Option<Vec<_>> = batches.iter().map(|b| b.column_by_name(field.name()).cloned()).collect();
            parts.and_then(|p| arrow::compute::concat(&p.iter().map(|a| a.as_ref()).collect::<Vec<_>>()).ok())
        };
        match (column(&old_batches), column(&new_batches)) {
            (Some(a), Some(b)) if a.as_ref() == b.as_ref() => {}
            (_, None) => differences.push(format!("{}: column `{}` is gone", new.display(), field.name())),
            _ => differences.push(format!("{}: column `{}` differs", new.display(), field.name())),
        }
    }
}

fn compare_tensors(old: &Path, new: &Path, differences: &mut Vec<String>) {
    let a = read_tensor_file(old).unwrap();
    let b = read_tensor_file(new).unwrap();
    if stripped_meta(a.metadata.clone()) != stripped_meta(b.metadata.clone()) {
        differences.push(format!("{}: metadata", new.display()));
    }
    let names = |f: &mrdino_outputs::checkpoint::TensorFile| f.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    if names(&a) != names(&b) {
        differences.push(format!("{}: tensor names", new.display()));
    }
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        if x.shape != y.shape || x.data != y.data {
            differences.push(format!("{}: tensor `{}`", new.display(), x.name));
        }
    }
}

fn compare_file(old: &Path, new: &Path, differences: &mut Vec<String>) {
    match old.extension().and_then(|e| e.to_str()) {
        Some("parquet") => compare_parquet(old, new, differences),
        Some("safetensors") => compare_tensors(old, new, differences),
        Some("json") | Some("jsonl") => {
            let (a, b) = (std::fs::read(old).unwrap(), std::fs::read(new).unwrap());
            let lines = |bytes: &[u8]| -> Vec<Option<Value>> {
                let without_intended = |mut v: Value| {
                    if let Some(map) = v.as_object_mut() {
                        map.retain(|k, _| !INTENDED_KEYS.contains(&k.as_str()));
                    }
                    v
                };
                String::from_utf8_lossy(bytes)
                    .lines()
                    .map(|l| stripped_json(l.as_bytes()).map(without_intended))
                    .collect()
            };
            let same = match (stripped_json(&a), stripped_json(&b)) {
                (Some(x), Some(mut y)) => {
                    if let Some(map) = y.as_object_mut() {
                        map.retain(|k, _| !INTENDED_KEYS.contains(&k.as_str()) || x.get(k).is_some());
                    }
                    x == y
                }
                _ => lines(&a) == lines(&b),
            };
            if !same {
                differences.push(format!("{}: record", new.display()));
            }
        }
        _ => {
            if std::fs::read(old).unwrap() != std::fs::read(new).unwrap() {
                differences.push(format!("{}: bytes", new.display()));
            }
        }
    }
}

/// Every difference between the tree the baseline wrote and this build's.
fn compare_trees(old: &Path, new: &Path) -> Vec<String> {
    let mut differences = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(old.join(&rel)).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if SKIPPED.contains(&name.as_str())
                || INTENDED_FILES.contains(&name.as_str())
                || name.ends_with(".png") && name.starts_with("metrics")
            {
                continue;
            }
            let path = rel.join(&name);
            if entry.path().is_dir() {
                stack.push(path);
            } else if !new.join(&path).is_file() {
                differences.push(format!("{}: missing", new.join(&path).display()));
            } else {
                compare_file(&old.join(&path), &new.join(&path), &mut differences);
            }
        }
    }
    differences
}

#[test]
#[ignore = "needs a baseline binary: make same-outputs BASELINE=path/to/old/mrdino"]
fn outputs_are_the_same_as_the_baseline() {
    let baseline = PathBuf::from(std::env::var_os("MRDINO_BASELINE").expect("MRDINO_BASELINE=path/to/old/mrdino"));
    let current = PathBuf::from(env!("CARGO_BIN_EXE_mrdino"));
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let weights = d.join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    let vit = weights.join("vit.safetensors");
    write_random_weights(&vit, &VitConfig::by_name(BACKBONE).unwrap(), 3).unwrap();
    let text = weights.join("text.safetensors");
    clip_text::write_random_weights(&text, &ClipTextConfig::by_name("custom:width=32,layers=1,heads=2,embed=512").unwrap(), 4).unwrap();
    tch::manual_seed(5);
    let cpu = (tch::Kind::Float, tch::Device::Cpu);
    let psi = [
        ("linear_layer.weight", tch::Tensor::randn([32, 512], cpu) * 0.05),
        ("linear_layer.bias", tch::Tensor::randn([32], cpu) * 0.1),
        ("hidden_layers.0.weight", tch::Tensor::randn([32, 32], cpu) * 0.2),
        ("hidden_layers.0.bias", tch::Tensor::randn([32], cpu) * 0.1),
    ];
    let psi_file = weights.join("psi.safetensors");
    tch::Tensor::write_safetensors(&psi[..], &psi_file).unwrap();
    let tiny = weights.join("tiny.json");
    std::fs::write(&tiny, br#"{"model": {"n_slots": 4, "slot_dim": 16, "decoder_hidden": 32}, "batch_size": 2}"#).unwrap();

    // The jobs, in the order of the data flow; `{o}` is the binary's own output directory, `{n}` this build's
    // (inputs a later job reads come from this build's outputs, so that each job is compared on the same input).
    let mut jobs: Vec<(&str, Vec<&str>)> = vec![
        ("data", vec!["synth", "--out", "{o}/data", "--sequences", "3", "--frames", "8", "--size", "160x96"]),
        ("labels-import", vec!["labels", "--dataset", "frames", "--root", "{n}/data/frames", "--flow", "import", "--flow-dir", "{n}/data/flow", "--out", "{o}/labels-import", "--quiet"]),
        ("labels-dis", vec!["labels", "--dataset", "frames", "--root", "{n}/data/frames", "--flow", "dis", "--threads", "2", "--out", "{o}/labels-dis", "--quiet", "--overlays", "2"]),
        ("features", vec!["features", "--dataset", "frames", "--root", "{n}/data/frames", "--size", "378x378", "--backbone", BACKBONE, "--backbone-weights", "{vit}", "--device", "cpu", "--out", "{o}/features", "--quiet"]),
        ("windows", vec!["features", "--dataset", "frames", "--root", "{n}/data/frames", "--views", "windows", "--labels", "{n}/labels-import", "--backbone", BACKBONE, "--backbone-weights", "{vit}", "--device", "cpu", "--out", "{o}/windows", "--quiet"]),
        ("train", vec!["train", "dinosaur", "--dataset", "frames", "--features", "{n}/features", "--config", "{tiny}", "--steps", "4", "--device", "cpu", "--torch-threads", "1", "--out", "{o}/train", "--quiet"]),
        ("infer", vec!["infer", "--dataset", "frames", "--root", "{n}/data/frames", "--model", "{n}/train", "--backbone", BACKBONE, "--backbone-weights", "{vit}", "--device", "cpu", "--torch-threads", "1", "--out", "{o}/infer", "--quiet"]),
        ("name", vec!["name", "--labels", "{n}/labels-import", "--root", "{n}/data/frames", "--classes", "car,person,tree", "--backbone", BACKBONE, "--backbone-weights", "{vit}", "--text-weights", "{text}", "--psi-weights", "{psi}", "--device", "cpu", "--out", "{o}/name", "--quiet"]),
    ];
    if Path::new(DEMO_VIDEO).is_file() {
        jobs.push(("demo", vec!["labels", "--dataset", "video", "--root", DEMO_VIDEO, "--out", "{o}/demo", "--overlays", "6", "--quiet"]));
    }
    let (old, new) = (d.join("old"), d.join("new"));
    let mut differences = Vec::new();
    for (name, args) in &jobs {
        for (program, own) in [(&current, &new), (&baseline, &old)] {
            let paths = [("o", own.as_path()), ("n", new.as_path()), ("vit", &vit), ("text", &text), ("psi", &psi_file), ("tiny", &tiny)];
            run(program, args, &paths);
        }
        let found = compare_trees(&old.join(name), &new.join(name));
        eprintln!("{name}: {} differences", found.len());
        differences.extend(found);
    }
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
}
