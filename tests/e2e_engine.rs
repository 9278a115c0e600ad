//! The engine's contract, on the real binary, for every unit job it drives:
//! * a unit whose work panics is recorded as that unit's failure (in the run manifest, with the panic's message)
//!   and every other unit completes; the job exits 3 (`labels`, `flow`, `features`, `infer`; `name` and `segment`
//!   in e2e_talk2dino.rs);
//! * `flow` across three shards run at once equals one run, and a `--time-budget` stop exits 4 and the resumed
//!   export equals an uninterrupted one;
//! * every command's `--help` lists the shared flag groups in one order, each group's flags in one order.
//!
//! The panic comes from the engine's fault hook (`MRDINO_FAULT_PANIC_UNIT=<unit id>`), which panics inside the
//! unit's work, where a libtorch or OpenCV panic would surface.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use common::{features_of, labels_of_synth, mrdino, run_ok, synth};

use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_model::vit::{write_random_weights, VitConfig};

const FAULT: &str = "MRDINO_FAULT_PANIC_UNIT";
const BACKBONE: &str = "custom:family=dinov2,depth=1,dim=16,heads=2,patch=14,pos_grid=4";

/// The units of the latest run manifest under `out` (a unit job's bookkeeping), as JSON.
fn manifest_units(out: &Path) -> Vec<serde_json::Value> {
    let mut manifests: Vec<PathBuf> = walk(&out.join("_manifest"));
    manifests.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let last = manifests.last().unwrap_or_else(|| panic!("no run manifest under {}", out.display()));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(last).unwrap()).unwrap();
    manifest["units"].as_array().unwrap().clone()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    out
}

/// Runs `cmd` with a panic injected into unit `unit` and checks the job's report of it.
fn panics_only_its_unit(what: &str, mut cmd: Command, out: &Path, unit: &str, units: usize) {
    let result = cmd.env(FAULT, unit).output().unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(3), "{what}: {stderr}");
    assert!(
        stderr.contains(unit) && stderr.contains("internal error while processing the unit"),
        "{what}: the failure is reported with the unit\n{stderr}"
    );
    let statuses = manifest_units(out);
    assert_eq!(statuses.len(), units, "{what}: {statuses:?}");
    for s in &statuses {
        let expected = if s["unit"] == unit { "failed" } else { "done" };
        assert_eq!(s["status"], expected, "{what}: {s}");
    }
    let failed = statuses.iter().find(|s| s["unit"] == unit).unwrap();
    assert!(
        failed["error"].as_str().unwrap_or_default().contains("fault injected"),
        "{what}: the panic's message is recorded: {failed}"
    );
    // The next run without the fault does the failed unit and only it.
    let result = cmd.env_remove(FAULT).output().unwrap();
    assert!(result.status.success(), "{what}: {}", String::from_utf8_lossy(&result.stderr));
    let statuses = manifest_units(out);
    assert_eq!(statuses.iter().filter(|s| s["status"] == "done").count(), 1, "{what}: {statuses:?}");
}

#[test]
fn a_unit_whose_work_panics_fails_alone_in_every_unit_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let frames = synth(&data, "96x64", 3, 5);
    let labels = dir.path().join("labels");
    panics_only_its_unit("labels", labels_of_synth(&data, &labels), &labels, "seq001", 3);

    let flow = dir.path().join("flow");
    let mut flow_cmd = mrdino();
    flow_cmd
        .args(["flow", "--dataset", "frames", "--quiet", "--flow", "dis", "--dis-preset", "ultrafast"])
        .arg("--root")
        .arg(&frames)
        .arg("--out")
        .arg(&flow);
    panics_only_its_unit("flow", flow_cmd, &flow, "seq002", 3);

    let weights = dir.path().join("vit.safetensors");
    write_random_weights(&weights, &VitConfig::by_name(BACKBONE).unwrap(), 3).unwrap();
    let cache = dir.path().join("cache");
    let mut features = features_of(&frames, &cache, BACKBONE);
    features.arg("--backbone-weights").arg(&weights).args(["--size", "28x28"]);
    panics_only_its_unit("features", features, &cache, "seq000", 3);

    // A tiny model on 28×28 views (2×2 patches of 14 px), predicting with the MOVi-E preset's one window would
    // need 19×19 patches; a model of 729 patches fits the KITTI windows: train one briefly on 378×378 views.
    let views = dir.path().join("views");
    run_ok(features_of(&frames, &views, BACKBONE).arg("--backbone-weights").arg(&weights).args(["--size", "378x378"]));
    let config = dir.path().join("tiny.json");
    std::fs::write(
        &config,
        r#"{"model": {"n_slots": 3, "slot_dim": 8, "decoder_hidden": 16}, "batch_size": 2, "warmup_steps": 1}"#,
    )
    .unwrap();
    let run = dir.path().join("run");
    run_ok(
        mrdino()
            .args(["train", "dinosaur", "--dataset", "frames", "--quiet", "--device", "cpu"])
            .args(["--steps", "2", "--torch-threads", "1", "--config"])
            .arg(&config)
            .arg("--features")
            .arg(&views)
            .arg("--out")
            .arg(&run),
    );
    let predictions = dir.path().join("predictions");
    let mut infer = mrdino();
    infer
        .args(["infer", "--dataset", "frames", "--quiet", "--device", "cpu", "--torch-threads", "1"])
        .args(["--backbone", BACKBONE, "--backbone-weights"])
        .arg(&weights)
        .arg("--model")
        .arg(&run)
        .arg("--root")
        .arg(&frames)
        .arg("--out")
        .arg(&predictions);
    panics_only_its_unit("infer", infer, &predictions, "seq002", 3);
}

/// Every flow file under `dir` (relative path → bytes), sorted.
fn flow_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('_') || name.starts_with('.') || !entry.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(entry.path()).unwrap().flatten() {
            let file = f.file_name().to_string_lossy().into_owned();
            if !file.starts_with('.') {
                files.push((format!("{name}/{file}"), std::fs::read(f.path()).unwrap()));
            }
        }
    }
    files.sort();
    files
}

fn flow_cmd(frames: &Path, out: &Path) -> Command {
    let mut cmd = mrdino();
    cmd.args(["flow", "--dataset", "frames", "--quiet", "--flow", "dis", "--threads", "1"])
        .arg("--root")
        .arg(frames)
        .arg("--out")
        .arg(out);
    cmd
}

#[test]
fn flow_shards_at_once_equal_one_run_and_a_stopped_export_resumes_to_the_same_files() {
    let dir = tempfile::tempdir().unwrap();
    let frames = synth(&dir.path().join("data"), "96x64", 5, 6);
    let single = dir.path().join("single");
    run_ok(&mut flow_cmd(&frames, &single));
    let reference = flow_files(&single);
    assert_eq!(reference.len(), 5 * 5, "one file per frame pair");

    // Three shards, started together on one directory.
    let sharded = dir.path().join("sharded");
    let children: Vec<_> = (0..3)
        .map(|i| {
            flow_cmd(&frames, &sharded)
                .args(["--shard", &format!("{i}/3")])
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(flow_files(&sharded), reference);
    let status = run_ok(mrdino().arg("status").arg("--out").arg(&sharded));
    assert!(String::from_utf8_lossy(&status.stdout).contains("all shards complete"));
    run_ok(mrdino().arg("finalize").arg("--out").arg(&sharded));

    // A time budget of zero stops before any unit (exit 4); the same command then completes the export.
    let stopped = dir.path().join("stopped");
    let first = flow_cmd(&frames, &stopped).args(["--time-budget", "0"]).output().unwrap();
    assert_eq!(first.status.code(), Some(4), "{}", String::from_utf8_lossy(&first.stderr));
    let status = mrdino().arg("status").arg("--out").arg(&stopped).output().unwrap();
    assert_eq!(status.status.code(), Some(3), "the stopped export is incomplete");
    run_ok(&mut flow_cmd(&frames, &stopped));
    assert_eq!(flow_files(&stopped), reference);
}

/// The shared flag groups in their order, each with its flags in their order (a command shows a subsequence).
const SHARED_GROUPS: [(&str, &[&str]); 5] = [
    ("Input", &["--dataset", "--root", "--cameras"]),
    ("Job", &["--shard", "--max-failures", "--time-budget", "--quiet"]),
    ("Device", &["--device", "--torch-threads", "--memory-limit"]),
    ("Backbone", &["--backbone", "--backbone-weights"]),
    ("Talk2DINO", &["--backbone", "--backbone-weights", "--text-weights", "--psi-weights"]),
];

/// The shared groups of a `--help` text: each heading of [`SHARED_GROUPS`] with the flags listed under it.
fn shared_groups(help: &str) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in help.lines() {
        if let Some(heading) = line.strip_suffix(':').filter(|h| h.starts_with(|c: char| c.is_ascii_uppercase())) {
            current = None;
            if SHARED_GROUPS.iter().any(|(name, _)| *name == heading) {
                groups.push((heading.to_string(), Vec::new()));
                current = Some(groups.len() - 1);
            }
            continue;
        }
        // A flag's own line: `      --name …` or `  -x, --name …` (wrapped descriptions are indented deeper).
        let flag = line
            .strip_prefix("      --")
            .or_else(|| line.strip_prefix("  -").and_then(|r| r.get(3..)).and_then(|r| r.strip_prefix("--")));
        if let (Some(i), Some(rest)) = (current, flag) {
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            groups[i].1.push(format!("--{name}"));
        }
    }
    groups
}

#[test]
fn every_command_lists_the_shared_flag_groups_in_one_order() {
    let dataset_readers = ["labels", "flow", "plan", "features", "infer", "segment"];
    let whole_job = ["labels", "flow", "plan", "features", "infer", "name", "segment"];
    let commands = [
        "labels", "flow", "plan", "synth", "train dinosaur", "refine stage1", "refine stage2", "analyze", "features",
        "infer", "name", "segment",
    ];
    for command in commands {
        let out = run_ok(mrdino().args(command.split(' ')).arg("--help"));
        let groups = shared_groups(&String::from_utf8_lossy(&out.stdout));
        let rank = |heading: &str| SHARED_GROUPS.iter().position(|(name, _)| *name == heading).unwrap();
        let ranks: Vec<usize> = groups.iter().map(|(h, _)| rank(h)).collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{command}: groups out of order: {groups:?}");
        for (heading, flags) in &groups {
            let mut order = SHARED_GROUPS[rank(heading)].1.iter();
            assert!(
                flags.iter().all(|flag| order.any(|o| o == flag)),
                "{command}: the {heading} flags {flags:?} are not in the order {:?}",
                SHARED_GROUPS[rank(heading)].1
            );
        }
        let group = |heading: &str| groups.iter().find(|(h, _)| h == heading).map(|(_, f)| f.clone());
        let job = group("Job").unwrap_or_else(|| panic!("{command}: no Job group"));
        let expected_job: &[&str] = match whole_job.contains(&command) {
            true => SHARED_GROUPS[1].1,
            false => &["--time-budget", "--quiet"],
        };
        assert_eq!(job, expected_job, "{command}: Job group");
        if dataset_readers.contains(&command) {
            assert_eq!(group("Input").unwrap_or_default(), SHARED_GROUPS[0].1, "{command}: Input group");
        }
        if command != "synth" {
            let device = group("Device").unwrap_or_else(|| panic!("{command}: no Device group"));
            assert_eq!(device[..2], ["--device", "--torch-threads"], "{command}: Device group");
        }
    }
}
