//! `tools/convert_smurf_tf.py` against `tools/convert_raft.py` on the same random SMURF weights.
//!
//! `tools/reference/smurf_tf_fixture.py` writes a genuine TF object-based checkpoint with SMURF's 94 variable
//! keys (TensorFlow interpreter from `MRDINO_TF_PYTHON`, default `$HOME/.cache/mrdino/venv-tf/bin/python`,
//! `make venv-tf`) and the same tensors as the PyTorch port's `.pt` (torch interpreter from `MRDINO_PYTHON`,
//! default `$HOME/.cache/mrdino/venv/bin/python`). Each file goes through its converter; the two safetensors
//! files must hold the same keys, dtypes, shapes and bytes and the same metadata apart from `source*`, and
//! `RaftFlow` must load the TF-converted file and give exactly the flow of the `.pt`-converted one.
//!
//! The TF converter is otherwise untested here (no real checkpoint), so a missing interpreter fails the test
//! instead of skipping it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mrdino_datasets::RgbImage;
use mrdino_stages::flow::raft::RaftFlow;
use mrdino_stages::flow::FlowEstimator;
use safetensors::SafeTensors;
use tch::Device;

const PREFIX: &str = "smurf-fixture-ckpt-1";

fn interpreter(var: &str, default_in_home: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(default_in_home),
    }
}

/// Runs `python script args…` (script relative to `tools/`), panicking with the interpreter, `hint` (which
/// interpreter is needed) and the script's output on any failure.
fn run(python: &Path, hint: &str, script: &str, args: &[&OsStr]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools").join(script);
    let output = Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {} ({hint}): {e}", python.display());
        });
    assert!(
        output.status.success(),
        "{} {} failed ({}; {hint}):\n{}\n{}",
        python.display(),
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fixture and both conversions, once per test binary: (TF-converted, `.pt`-converted) safetensors paths.
fn converted() -> &'static (PathBuf, PathBuf) {
    static FILES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    FILES.get_or_init(|| {
        let tf_python = interpreter("MRDINO_TF_PYTHON", ".cache/mrdino/venv-tf/bin/python");
        let torch_python = interpreter("MRDINO_PYTHON", ".cache/mrdino/venv/bin/python");
        let tf_hint = "set MRDINO_TF_PYTHON to a python with tensorflow-cpu 2.21, numpy and safetensors; \
                          `make venv-tf` creates one";
        let torch_hint = "set MRDINO_PYTHON to a python with torch 2.13, torchvision, numpy and safetensors; \
                             `make venv` creates one";
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smurf_tf_converter");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        let prefix = dir.join(PREFIX);
        let (from_tf, from_pt) = (dir.join("from_tf.safetensors"), dir.join("from_pt.safetensors"));

        let fixture = "reference/smurf_tf_fixture.py";
        run(&tf_python, tf_hint, fixture, &[OsStr::new("tf"), dir.as_os_str()]);
        run(&torch_python, torch_hint, fixture, &[OsStr::new("pt"), dir.as_os_str()]);
        run(
            &tf_python,
            tf_hint,
            "convert_smurf_tf.py",
            &[prefix.as_os_str(), from_tf.as_os_str()],
        );
        let port = dir.join("smurf_port.pt");
        run(
            &torch_python,
            torch_hint,
            "convert_raft.py",
            &[port.as_os_str(), from_pt.as_os_str()],
        );
        (from_tf, from_pt)
    })
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn metadata(bytes: &[u8], path: &Path) -> BTreeMap<String, String> {
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    header.metadata().clone().unwrap_or_default().into_iter().collect()
}

#[test]
fn tf_conversion_equals_port_conversion() {
    let (from_tf, from_pt) = converted();
    let (tf_bytes, pt_bytes) = (read(from_tf), read(from_pt));
    let tf = SafeTensors::deserialize(&tf_bytes).unwrap_or_else(|e| panic!("{}: {e:?}", from_tf.display()));
    let pt = SafeTensors::deserialize(&pt_bytes).unwrap_or_else(|e| panic!("{}: {e:?}", from_pt.display()));

    let mut tf_names = tf.names();
    let mut pt_names = pt.names();
    tf_names.sort();
    pt_names.sort();
    assert_eq!(tf_names, pt_names, "key sets differ");
    assert_eq!(tf_names.len(), 94, "SMURF has 94 tensors");
    for name in tf_names {
        let (a, b) = (tf.tensor(name).unwrap(), pt.tensor(name).unwrap());
        assert_eq!(a.dtype(), b.dtype(), "{name}: dtype");
        assert_eq!(a.shape(), b.shape(), "{name}: shape");
        assert!(a.data() == b.data(), "{name}: values differ");
    }

    let mut tf_meta = metadata(&tf_bytes, from_tf);
    let mut pt_meta = metadata(&pt_bytes, from_pt);
    assert_eq!(tf_meta.get("source").map(String::as_str), Some(PREFIX));
    assert_eq!(tf_meta.get("source_sha256").map(String::len), Some(64));
    for key in ["source", "source_sha256"] {
        tf_meta.remove(key);
        pt_meta.remove(key);
    }
    assert_eq!(tf_meta, pt_meta, "metadata differs apart from source*");
}

/// Smooth 128×160 texture; the second frame is the first moved by (3, 2) px.
fn pair() -> (RgbImage, RgbImage) {
    let (h, w) = (128usize, 160usize);
    let frame = |dx: f32, dy: f32| {
        let mut data = Vec::with_capacity(h * w * 3);
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f32 - dx, y as f32 - dy);
                for c in 0..3 {
                    let s = (0.13 * u + 0.05 * v + c as f32).sin() + (0.04 * u - 0.11 * v + 2.0 * c as f32).cos();
                    data.push((127.5 + 60.0 * s).round() as u8);
                }
            }
        }
        RgbImage::new(h, w, data)
    };
    (frame(0.0, 0.0), frame(3.0, 2.0))
}

#[test]
fn raft_loads_tf_conversion_with_port_flow() {
    tch::set_num_threads(1);
    let (from_tf, from_pt) = converted();
    let (img1, img2) = pair();
    let flows: Vec<_> = [from_tf, from_pt]
        .into_iter()
        .map(|path| {
            let mut raft = RaftFlow::load(path, Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(raft.weights_info().family, "smurf");
            assert_eq!(raft.iterations(), 12);
            let mut flow = raft
                .estimate(&[(&img1, &img2)])
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            flow.remove(0)
        })
        .collect();
    let (tf, pt) = (&flows[0], &flows[1]);
    assert_eq!((tf.height, tf.width), (128, 160));
    assert!(tf.uv.iter().all(|v| v.is_finite()), "non-finite flow");
    let mean = tf.uv.iter().map(|v| v.abs()).sum::<f32>() / tf.uv.len() as f32;
    assert!(mean > 1e-3, "flow is zero everywhere (mean |component| {mean})");
    let max_diff = tf
        .uv
        .iter()
        .zip(&pt.uv)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("TF-converted vs .pt-converted SMURF: mean |flow component| {mean:.3} px, max |Δ| {max_diff:e}");
    assert!(tf.uv == pt.uv, "flows differ, max |Δ| {max_diff} px");
}
