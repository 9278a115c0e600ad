//! Parity of `mrdino_stages::flow::raft` with the PyTorch references, on CPU in float32.
//!
//! `tools/reference/raft_fixtures.py` (run with `MRDINO_PYTHON`, default `$HOME/.cache/mrdino/venv/bin/python`)
//! builds torchvision raft_small / raft_large, a princeton-layout raft_large and a SMURF-layout raft_large
//! (InstanceNorm context encoder, y-major correlation window) with re-randomised weights, converts them with
//! `tools/convert_raft.py` and records their last-iteration flows for uint8 frame pairs at 128×160 (batch of
//! 3) and 131×165 (padded like princeton's InputPadder, cropped back). Each model must match to 1e-3 px, and
//! the batch of 3 must equal the 3 pairs run one by one.
//!
//! `MRDINO_RAFT_FIXTURES=<dir>` reuses fixtures the script wrote to `<dir>` earlier instead of regenerating them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mrdino_datasets::RgbImage;
use mrdino_stages::flow::raft::{RaftError, RaftFlow};
use mrdino_stages::flow::{FlowEstimator, FlowField};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f32 = 1e-3;

fn python() -> PathBuf {
    match std::env::var_os("MRDINO_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/mrdino/venv/bin/python")
        }
    }
}

/// Generates the fixtures once per test binary, under cargo's per-target temporary directory.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tch::set_num_threads(1);
        if let Some(dir) = std::env::var_os("MRDINO_RAFT_FIXTURES") {
            return PathBuf::from(dir);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("raft_parity");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/reference/raft_fixtures.py");
        let py = python();
        let output = Command::new(&py).arg(&script).arg(&dir).output().unwrap_or_else(|e| {
            panic!(
                "cannot run the RAFT fixture generator with {} ({e}); set MRDINO_PYTHON to a python with \
                 torch 2.13, torchvision, safetensors and numpy (`make venv` creates one)",
                py.display()
            )
        });
        assert!(
            output.status.success(),
            "{} {} failed ({}):\n{}\n{}",
            py.display(),
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        dir
    })
}

struct Io {
    tensors: Vec<(String, Tensor)>,
}

impl Io {
    fn load() -> Self {
        let path = fixtures().join("io.safetensors");
        let tensors = Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { tensors }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("io.safetensors has no `{name}`"))
    }

    /// (B, H, W, 3) uint8 → images.
    fn images(&self, name: &str) -> Vec<RgbImage> {
        let t = self.get(name);
        let (b, h, w, _) = t.size4().expect("image tensor is 4-d");
        (0..b)
            .map(|i| {
                let data = Vec::<u8>::try_from(t.get(i).flatten(0, -1)).expect("uint8 image");
                RgbImage::new(h as usize, w as usize, data)
            })
            .collect()
    }

    /// (B, 2, H, W) float32 → flow fields.
    fn flows(&self, name: &str) -> Vec<FlowField> {
        let t = self.get(name);
        let (b, _, h, w) = t.size4().expect("flow tensor is 4-d");
        (0..b)
            .map(|i| {
                let uv =
                    Vec::<f32>::try_from(t.get(i).permute([1, 2, 0]).contiguous().flatten(0, -1)).expect("float flow");
                FlowField::new(h as usize, w as usize, uv)
            })
            .collect()
    }
}

fn max_abs_diff(a: &[FlowField], b: &[FlowField]) -> f32 {
    assert_eq!(a.len(), b.len(), "number of flow fields");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!((x.height, x.width), (y.height, y.width), "flow size");
            x.uv.iter()
                .zip(&y.uv)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max)
        })
        .fold(0.0f32, f32::max)
}

fn check_model(model: &str) {
    let io = Io::load();
    let path = fixtures().join(format!("{model}.safetensors"));
    let mut raft = RaftFlow::load(&path, Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_max_batch(3);

    let (a1, a2) = (io.images("a.img1"), io.images("a.img2"));
    let pairs: Vec<(&RgbImage, &RgbImage)> = a1.iter().zip(&a2).collect();
    let batched = raft.estimate(&pairs).unwrap_or_else(|e| panic!("{model}: {e}"));
    let err_a = max_abs_diff(&batched, &io.flows(&format!("{model}.a.flow")));

    let mut singles = Vec::new();
    for pair in &pairs {
        singles.extend(
            raft.estimate(std::slice::from_ref(pair))
                .unwrap_or_else(|e| panic!("{model}: {e}")),
        );
    }
    let err_batch = max_abs_diff(&batched, &singles);

    let (b1, b2) = (io.images("b.img1"), io.images("b.img2"));
    let pairs_b: Vec<(&RgbImage, &RgbImage)> = b1.iter().zip(&b2).collect();
    let flows_b = raft.estimate(&pairs_b).unwrap_or_else(|e| panic!("{model}: {e}"));
    let err_b = max_abs_diff(&flows_b, &io.flows(&format!("{model}.b.flow")));

    eprintln!(
        "{model} ({} iterations): max|Δflow| 128x160 batch {err_a:.2e} px, 131x165 {err_b:.2e} px, \
         batch vs single {err_batch:.2e} px",
        raft.iterations()
    );
    assert!(
        err_a <= TOLERANCE,
        "{model}: 128x160 max|Δflow| {err_a} px > {TOLERANCE}"
    );
    assert!(
        err_b <= TOLERANCE,
        "{model}: 131x165 max|Δflow| {err_b} px > {TOLERANCE}"
    );
    assert!(
        err_batch <= TOLERANCE,
        "{model}: batch of 3 differs from single pairs by {err_batch} px"
    );
}

#[test]
fn parity_raft_small() {
    check_model("raft_small");
}

#[test]
fn parity_raft_large() {
    check_model("raft_large");
}

#[test]
fn parity_princeton_converted() {
    check_model("princeton");
}

#[test]
fn parity_smurf_converted() {
    check_model("smurf");
}

#[test]
fn metadata_and_identity() {
    let cases = [
        ("raft_small", "raft-small", "torchvision", 12),
        ("raft_large", "raft-large", "torchvision", 12),
        ("princeton", "raft-large", "princeton", 20),
        ("princeton_small", "raft-small", "princeton", 20),
        ("smurf", "smurf", "smurf", 12),
    ];
    for (file, name, family, iterations) in cases {
        let raft = RaftFlow::load(fixtures().join(format!("{file}.safetensors")), Device::Cpu)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(raft.name(), name);
        assert_eq!(raft.weights_info().family, family);
        assert_eq!(raft.iterations(), iterations);
        assert!(raft.identity().id.starts_with("tensors-sha256:"), "{}", raft.identity());
        assert_eq!(raft.identity().earlier.as_ref().map(String::len), Some(64));
    }
}

#[test]
fn refuses_inputs_below_minimum() {
    let raft = RaftFlow::load(fixtures().join("raft_small.safetensors"), Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let small = Tensor::zeros([1, 3, 120, 200], (Kind::Float, Device::Cpu));
    match raft.forward(&small, &small) {
        Err(RaftError::TooSmall {
            padded_height: 120,
            padded_width: 200,
            ..
        }) => {}
        other => panic!("expected TooSmall, got {:?}", other.map(|t| t.size())),
    }
    // 121 rows pad to 128 and are accepted.
    let ok = Tensor::zeros([1, 3, 121, 130], (Kind::Float, Device::Cpu));
    let flow = raft.forward(&ok, &ok).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(flow.size(), vec![1, 2, 121, 130]);
}

#[test]
fn names_missing_and_misshaped_keys() {
    let src = fixtures().join("raft_small.safetensors");
    let tensors = Tensor::read_safetensors(&src).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");

    let missing: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| n != "update_block.flow_head.conv2.bias")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let path = dir.path().join("missing.safetensors");
    Tensor::write_safetensors(&missing, &path).expect("write");
    let err = RaftFlow::load(&path, Device::Cpu)
        .err()
        .expect("missing key must fail")
        .to_string();
    assert!(
        err.contains("update_block.flow_head.conv2.bias") && err.contains("[2]"),
        "{err}"
    );

    let misshaped: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let t = if n == "update_block.flow_head.conv2.weight" {
                t.narrow(1, 0, 64)
            } else {
                t.shallow_clone()
            };
            (n.clone(), t.contiguous())
        })
        .collect();
    let path = dir.path().join("misshaped.safetensors");
    Tensor::write_safetensors(&misshaped, &path).expect("write");
    let err = RaftFlow::load(&path, Device::Cpu)
        .err()
        .expect("shape mismatch must fail")
        .to_string();
    assert!(
        err.contains("update_block.flow_head.conv2.weight")
            && err.contains("[2, 64, 3, 3]")
            && err.contains("[2, 128, 3, 3]"),
        "{err}"
    );

    let mut extra: Vec<(String, Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
    extra.push((
        "update_block.bogus.weight".to_string(),
        Tensor::zeros([3], (Kind::Float, Device::Cpu)),
    ));
    let path = dir.path().join("extra.safetensors");
    Tensor::write_safetensors(&extra, &path).expect("write");
    let err = RaftFlow::load(&path, Device::Cpu)
        .err()
        .expect("unexpected key must fail")
        .to_string();
    assert!(err.contains("update_block.bogus.weight"), "{err}");
}
