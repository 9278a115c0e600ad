//! `mrdino_model::resnet::Resnet50` against torchvision's `resnet50` with the same re-randomised weights and
//! BatchNorm statistics, loaded through `tools/convert_resnet.py` from a SwaV-layout checkpoint
//! (`tools/reference/resnet_fixtures.py`, run with `MRDINO_PYTHON`). Pooled features must agree to 1e-4.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_model::resnet::{Resnet50, ResnetError};
use mrdino_model::weights::{KeyProblem, WeightError};
use tch::{Device, Tensor};

fn fixtures() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("resnet_parity");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/resnet_fixtures.py");
    let py = std::env::var_os("MRDINO_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/mrdino/venv/bin/python")
    });
    let out = Command::new(&py).arg(&script).arg(&dir).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} with {} ({e}); `make venv` creates the venv",
            script.display(),
            py.display()
        )
    });
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn swav_resnet50_matches_torchvision() {
    tch::set_num_threads(2);
    let dir = fixtures();
    let model = Resnet50::load(&dir.join("resnet50.safetensors"), Device::Cpu).expect("converted weights load");
    let io: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let pooled = model.pooled(&io["images"]).unwrap();
    assert_eq!(pooled.size(), vec![2, 2048]);
    let diff = (&pooled - &io["pooled"]).abs().max().double_value(&[]);
    let scale = io["pooled"].abs().max().double_value(&[]);
    assert!(diff <= 1e-4, "max |Δ| {diff:e} (features up to {scale})");
    assert!(model.identity().id.starts_with("tensors-sha256:"));

    // The same file with one tensor of the wrong shape.
    let mut tensors = Tensor::read_safetensors(dir.join("resnet50.safetensors")).unwrap();
    for (name, tensor) in tensors.iter_mut() {
        if name == "layer1.0.conv1.weight" {
            *tensor = Tensor::zeros([32, 64, 1, 1], (tch::Kind::Float, Device::Cpu));
        }
    }
    let bad = dir.join("bad.safetensors");
    Tensor::write_safetensors(&tensors, &bad).unwrap();
    match Resnet50::load(&bad, Device::Cpu) {
        Err(ResnetError::Weights(WeightError::Key {
            problem: KeyProblem::Shape { key, found, expected },
            ..
        })) => {
            assert_eq!(key, "layer1.0.conv1.weight");
            assert_eq!(found, vec![32, 64, 1, 1]);
            assert_eq!(expected, vec![64, 64, 1, 1]);
        }
        other => panic!("a wrong shape must be refused naming the key and both shapes, got {other:?}"),
    }
}
