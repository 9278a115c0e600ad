//! The path a researcher with the published MR-DINOSAUR checkpoints takes, end to end on the real binary:
//! `tools/convert_ocl_checkpoint.py` → `mrdino infer` → `mrdino eval`, and one identity for weights.
//!
//! Stand-ins for the published files are built at test time by `tools/reference/official_checkpoints.py`: a hub
//! `dinov2_vitb14` state dict (full ViT-B/14 size, random weights) and three reference Lightning checkpoints in
//! their exact layout with that backbone inside — KITTI stage 2, TRI-PD stage 2, MOVi-E baseline. Checked:
//! * the hub `.pth` converted by `tools/convert_vit.py` and the same tensors inside each converted checkpoint have
//!   one identity, and the checkpoint records it;
//! * `infer` runs with the model file alone (its embedded backbone) and with the separately converted hub file,
//!   and both give the same rows; `eval` scores them against generated ground truth;
//! * the same weights written as two different files (other tensor order, other metadata) have one identity, one
//!   changed value another; a `--backbone-weights` file of other weights, or another `--backbone`, is refused
//!   naming both;
//! * a model file written under the previous rule (backbone recorded as the SHA-256 of the weights file's bytes)
//!   runs with that very file and is refused, with what to do, with any other.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use common::{mrdino, python, run_ok};

use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_model::vit::Vit;
use mrdino_outputs::checkpoint::{read_tensor_file, write_tensor_file, TensorFile};
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS};
use mrdino_outputs::tables::{read_frames, read_instances};
use mrdino_outputs::weights_id::file_sha256;
use tch::Device;

fn tools() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools")
}

fn run_python(args: &[&std::ffi::OsStr]) {
    let out = Command::new(python()).args(args).output().expect("run python");
    assert!(
        out.status.success(),
        "python {:?} failed:\n{}\n{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn infer(model: &Path, frames: &Path, out: &Path, preset: &str, extra: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = mrdino();
    cmd.args(["infer", "--dataset", "frames", "--model"])
        .arg(model)
        .arg("--root")
        .arg(frames)
        .arg("--out")
        .arg(out)
        .args(["--preset", preset, "--device", "cpu", "--quiet"])
        .args(extra);
    cmd
}

/// Every row of a prediction run as text (NaN-safe), sorted.
fn rows(out: &Path) -> Vec<String> {
    let hashes = mrdino_outputs::bookkeeping::partitions(out, LABELS_DATA_DIRS);
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    let layout = Layout::new(out, &hashes[0]);
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(layout.frames_dir()).unwrap() {
        let path = entry.unwrap().path();
        for f in read_frames(&path).unwrap() {
            rows.push(format!("{f:?}"));
        }
    }
    for entry in std::fs::read_dir(layout.instances_dir()).unwrap() {
        let path = entry.unwrap().path();
        for i in read_instances(&path).unwrap() {
            rows.push(format!("{i:?}"));
        }
    }
    rows.sort();
    rows
}

fn stderr_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "expected a refusal");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn published_checkpoints_convert_infer_and_score_with_one_weights_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fixtures = dir.join("published");
    run_python(&[
        tools().join("reference/official_checkpoints.py").as_os_str(),
        fixtures.as_os_str(),
    ]);
    // The hub backbone, converted on its own.
    let hub = dir.join("dinov2-vitb14.safetensors");
    run_python(&[
        tools().join("convert_vit.py").as_os_str(),
        fixtures.join("dinov2_vitb14_pretrain.pth").as_os_str(),
        hub.as_os_str(),
    ]);
    let hub_vit = Vit::load(&hub, None, Device::Cpu).unwrap();
    let hub_id = hub_vit.identity().clone();
    drop(hub_vit);

    // Ground truth and frames: one generated sequence of two frames.
    let data = dir.join("data");
    run_ok(
        mrdino()
            .args(["synth", "--out"])
            .arg(&data)
            .args(["--sequences", "1", "--frames", "2", "--size", "160x64", "--seed", "5"]),
    );
    let frames = data.join("frames");

    let mut first_model = None;
    for (checkpoint, stage, preset) in [
        ("kitti_stage2", "stage2", "kitti"),
        ("tri-pd_stage2", "stage2", "tri-pd"),
        ("movi-e_baseline", "baseline", "movi-e"),
    ] {
        let model = dir.join(format!("{checkpoint}.safetensors"));
        let ckpt = fixtures.join(format!("{checkpoint}.ckpt"));
        let mut args = vec![
            tools().join("convert_ocl_checkpoint.py").into_os_string(),
            ckpt.clone().into_os_string(),
            model.clone().into_os_string(),
        ];
        if stage == "baseline" {
            args.extend(["--stage".into(), "baseline".into()]);
        }
        run_python(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>());
        let file = read_tensor_file(&model).unwrap();
        assert_eq!(file.meta("mrdino.stage"), Some(stage));
        // One identity: the converted hub file, the embedded tensors, and what the converter recorded.
        assert_eq!(file.meta("mrdino.backbone_sha256"), Some(hub_id.id.as_str()), "{checkpoint}");
        let embedded = Vit::load_embedded(
            &file,
            "backbone.",
            &model,
            mrdino_model::vit::VitConfig::by_name("dinov2-vitb14").unwrap(),
            Device::Cpu,
        )
        .unwrap();
        assert_eq!(embedded.identity().id, hub_id.id, "{checkpoint}");
        drop((embedded, file));

        // The file alone, and with the separately converted backbone: the same predictions.
        let alone = dir.join(format!("pred-{checkpoint}"));
        run_ok(&mut infer(&model, &frames, &alone, preset, &[]));
        let with_file = dir.join(format!("pred-{checkpoint}-hub"));
        run_ok(&mut infer(
            &model,
            &frames,
            &with_file,
            preset,
            &["--backbone".as_ref(), "dinov2-vitb14".as_ref(), "--backbone-weights".as_ref(), hub.as_os_str()],
        ));
        assert_eq!(rows(&alone), rows(&with_file), "{checkpoint}: embedded and separate backbone differ");
        let json = dir.join(format!("eval-{checkpoint}.json"));
        run_ok(
            mrdino()
                .args(["eval", "--predictions"])
                .arg(&alone)
                .arg("--gt")
                .arg(&data)
                .args(["--gt-format", "synth", "--json"])
                .arg(&json),
        );
        let result: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(result["model_kind"], stage, "{checkpoint}");
        assert_eq!(result["evaluated_frames"], 2, "{checkpoint}");
        assert!(result["metrics"]["predictions"].as_u64().unwrap() > 0, "{checkpoint}: {result}");
        if first_model.is_none() {
            first_model = Some((model, alone));
        }
    }
    let (model, predictions) = first_model.unwrap();

    // The same weights as another file: two tensors stored as float64 (safetensors orders tensors by dtype
    // first, so they move to the front of the file; the values widen exactly), other metadata.
    let hub_file = read_tensor_file(&hub).unwrap();
    let mut resaved = hub_file.clone();
    for t in resaved
        .tensors
        .iter_mut()
        .filter(|t| t.name == "cls_token" || t.name == "norm.weight")
    {
        t.data = t
            .data
            .chunks_exact(4)
            .flat_map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect();
        t.dtype = safetensors::tensor::Dtype::F64;
    }
    resaved.metadata.insert("note".into(), "re-saved".into());
    let resaved_path = dir.join("resaved.safetensors");
    write_tensor_file(&resaved_path, &resaved).unwrap();
    assert_ne!(file_sha256(&resaved_path).unwrap(), file_sha256(&hub).unwrap());
    let resaved_vit = Vit::load(&resaved_path, None, Device::Cpu).unwrap();
    assert_eq!(resaved_vit.identity().id, hub_id.id, "re-saving keeps the identity");
    drop(resaved_vit);
    // One value changed: another identity, and infer refuses the pair naming both.
    let mut changed = hub_file.clone();
    let norm = changed.tensors.iter_mut().find(|t| t.name == "norm.bias").unwrap();
    norm.data[0] ^= 1;
    let changed_path = dir.join("changed.safetensors");
    write_tensor_file(&changed_path, &changed).unwrap();
    let changed_vit = Vit::load(&changed_path, None, Device::Cpu).unwrap();
    assert_ne!(changed_vit.identity().id, hub_id.id, "one changed value changes the identity");
    drop(changed_vit);
    let refused = dir.join("pred-refused");
    let message = stderr_of(&mut infer(
        &model,
        &frames,
        &refused,
        "kitti",
        &["--backbone-weights".as_ref(), changed_path.as_os_str()],
    ));
    assert!(
        message.contains("kitti_stage2.safetensors") && message.contains("changed.safetensors"),
        "{message}"
    );
    assert!(!refused.exists(), "nothing is written for a refused run");
    let message = stderr_of(&mut infer(
        &model,
        &frames,
        &refused,
        "kitti",
        &["--backbone".as_ref(), "dinov2-vitb14-reg".as_ref()],
    ));
    assert!(message.contains("dinov2-vitb14-reg") && message.contains("`dinov2-vitb14`"), "{message}");

    // A model file of the previous rule: no embedded backbone, the backbone recorded as the hub file's SHA-256.
    let slot_model = read_tensor_file(&model).unwrap();
    let mut old = TensorFile {
        tensors: slot_model
            .tensors
            .into_iter()
            .filter(|t| !t.name.starts_with("backbone."))
            .collect(),
        metadata: slot_model.metadata,
    };
    old.metadata
        .insert("mrdino.backbone_sha256".into(), file_sha256(&hub).unwrap());
    let old_path = dir.join("old-rule.safetensors");
    write_tensor_file(&old_path, &old).unwrap();
    let accepted = dir.join("pred-old-rule");
    run_ok(&mut infer(
        &old_path,
        &frames,
        &accepted,
        "kitti",
        &["--backbone-weights".as_ref(), hub.as_os_str()],
    ));
    assert_eq!(
        rows(&accepted),
        rows(&predictions),
        "the previous rule's file, with the file it names, predicts as the converted model"
    );
    let message = stderr_of(&mut infer(
        &old_path,
        &frames,
        &dir.join("pred-old-other"),
        "kitti",
        &["--backbone-weights".as_ref(), resaved_path.as_os_str()],
    ));
    assert!(
        message.contains("old-rule.safetensors") && message.contains("earlier mrdino"),
        "{message}"
    );
}
