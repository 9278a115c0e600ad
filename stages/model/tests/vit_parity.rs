//! Parity of `mrdino_model::vit` with the PyTorch references, on CPU in float32, and the loader's refusals.
//!
//! `tools/reference/vit_fixtures.py` (run with `MRDINO_PYTHON`, default `$HOME/.cache/mrdino/venv/bin/python`)
//! builds transformers Dinov2Model, Dinov2WithRegistersModel, ViTModel (DINOv1 settings), ViTMAEModel (no
//! masking) and CLIPVisionModel with every parameter re-randomised, saves them in their native layouts, converts
//! them with `tools/convert_vit.py`, and records their features for [0,1] images at 224×224, 378×378 and
//! 224×378 (patch 14) or 224×224, 384×384 and 160×320 (patch 16), with HF's resize and with the hub DINOv2 /
//! DINOv1 resize re-stated; plus one 224×224 forward of a depth-2 model with the real ViT-B/14 widths. DINOv3:
//! DINOv3ViTModel at depth 2 with the widths of each preset (S, S+ with SwiGLU, B, L) at 224×224, 160×320 and
//! 432×432 (27×27, the refinement window), converted from the transformers layouts and (S, S+) from an official
//! facebookresearch/dinov3 `.pth` layout, which the script checks against its own re-statement of the official
//! forward (the official code is not pip-installable, so transformers is the reference here). Every
//! comparison must reach [`TOLERANCE`] max abs; position embeddings [`POS_TOLERANCE`], RoPE tables
//! [`ROPE_TOLERANCE`].
//!
//! `MRDINO_VIT_FIXTURES=<dir>` reuses fixtures the script wrote to `<dir>` earlier instead of regenerating them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mrdino_model::vit::{rope_tables, ForwardOptions, PosInterp, Vit, VitConfig, VitError};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;
const POS_TOLERANCE: f64 = 1e-6;
/// transformers multiplies by inverse frequencies where the official code (and mrdino) divides by periods: the
/// tables differ in the last bits.
const ROPE_TOLERANCE: f64 = 1e-5;

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
        if let Some(dir) = std::env::var_os("MRDINO_VIT_FIXTURES") {
            return PathBuf::from(dir);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vit_parity");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/vit_fixtures.py");
        let py = python();
        let output = Command::new(&py).arg(&script).arg(&dir).output().unwrap_or_else(|e| {
            panic!(
                "cannot run the ViT fixture generator with {} ({e}); set MRDINO_PYTHON to a python with torch \
                 2.13, transformers and safetensors (`make venv` creates one)",
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
        dir
    })
}

struct Io {
    tensors: Vec<(String, Tensor)>,
}

impl Io {
    /// Read per test: tensors are not `Sync`, and the file takes well under a second to read.
    fn get() -> Io {
        let path = fixtures().join("io.safetensors");
        let tensors = Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Io { tensors }
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("io.safetensors has no `{name}`"))
    }
}

fn max_abs(a: &Tensor, b: &Tensor, what: &str) -> f64 {
    assert_eq!(a.size(), b.size(), "{what}: shape");
    if a.numel() == 0 {
        return 0.0;
    }
    (a - b).abs().max().double_value(&[])
}

fn load(model: &str, config: Option<VitConfig>) -> Vit {
    let path = fixtures().join(format!("{model}.safetensors"));
    Vit::load(&path, config, Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

/// The file's own configuration with another resize.
fn load_with_interp(model: &str, interp: PosInterp) -> Vit {
    let mut vit = load(model, None);
    vit.set_pos_interp(interp);
    vit
}

/// Compares patches, CLS, registers and the block-0 features of `vit` with `<model>.<mode>.<H>x<W>.*`.
fn check(vit: &Vit, model: &str, mode: &str, sizes: &[(i64, i64)]) -> f64 {
    let io = &Io::get();
    let mut worst = 0.0f64;
    for &(h, w) in sizes {
        let images = io.tensor(&format!("{model}.images.{h}x{w}"));
        let x = vit.normalize(images).unwrap_or_else(|e| panic!("{e}"));
        let tokens = vit.forward_tokens(&x, None).unwrap_or_else(|e| panic!("{e}"));
        let key = format!("{model}.{mode}.{h}x{w}");
        let p = vit.patch_size();
        assert_eq!(tokens.grid, (h / p, w / p), "{key}: grid");
        let mut errs = vec![
            max_abs(&tokens.patches, io.tensor(&format!("{key}.patches")), &key),
            max_abs(&tokens.cls, io.tensor(&format!("{key}.cls")), &key),
            max_abs(&tokens.registers, io.tensor(&format!("{key}.registers")), &key),
            max_abs(
                &vit.features(&x, Some(0)).unwrap_or_else(|e| panic!("{e}")),
                io.tensor(&format!("{key}.layer0")),
                &key,
            ),
        ];
        let raw = ForwardOptions {
            norm: false,
            ..ForwardOptions::default()
        };
        let prenorm = vit.forward(&x, raw).unwrap_or_else(|e| panic!("{e}")).patches;
        errs.push(max_abs(&prenorm, io.tensor(&format!("{key}.prenorm")), &key));
        let features = vit.features(&x, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            features.equal(&tokens.patches),
            "{key}: features() differs from forward_tokens()"
        );
        let scale = io.tensor(&format!("{key}.patches")).abs().max().double_value(&[]);
        eprintln!(
            "{key}: max |Δ| patches {:.2e} cls {:.2e} registers {:.2e} layer0 {:.2e} prenorm {:.2e} (max |ref| \
             {scale:.2})",
            errs[0], errs[1], errs[2], errs[3], errs[4]
        );
        for (err, what) in errs.iter().zip(["patches", "cls", "registers", "layer0", "prenorm"]) {
            assert!(*err <= TOLERANCE, "{key}.{what}: max |Δ| {err:.3e} > {TOLERANCE:e}");
        }
        worst = worst.max(errs.iter().cloned().fold(0.0, f64::max));
    }
    worst
}

const SIZES14: &[(i64, i64)] = &[(224, 224), (378, 378), (224, 378)];
const SIZES16: &[(i64, i64)] = &[(224, 224), (384, 384), (160, 320)];

#[test]
fn dinov2_matches_transformers_and_the_hub_resize() {
    let hub = load("dinov2", None);
    assert_eq!(hub.config().pos_interp, PosInterp::HubOffset, "DINOv2 default resize");
    check(&hub, "dinov2", "hub-offset", SIZES14);
    check(&load_with_interp("dinov2", PosInterp::Size), "dinov2", "size", SIZES14);
    // The hub resize really differs from HF's: the test above would not pass with the wrong one.
    let io = Io::get();
    let x = hub
        .normalize(io.tensor("dinov2.images.378x378"))
        .unwrap_or_else(|e| panic!("{e}"));
    let f = hub.features(&x, None).unwrap_or_else(|e| panic!("{e}"));
    let gap = max_abs(&f, io.tensor("dinov2.size.378x378.patches"), "hub vs HF");
    eprintln!("dinov2: hub vs HF resize at 378² differ by {gap:.2e}");
    assert!(
        gap > 100.0 * TOLERANCE,
        "hub and HF resize should differ, got {gap:.2e}"
    );
}

#[test]
fn dinov2_position_embedding_resizes() {
    let io = Io::get();
    let mut vit = load("dinov2", None);
    for mode in [PosInterp::HubOffset, PosInterp::Size, PosInterp::SizeAntialias] {
        vit.set_pos_interp(mode);
        for (h0, w0) in [(16, 16), (27, 27), (16, 27), (37, 20), (37, 37), (4, 40)] {
            let got = vit.resized_pos_embed((h0, w0)).unwrap_or_else(|e| panic!("{e}"));
            let key = format!("dinov2.pos.{}.{h0}x{w0}", mode.as_str());
            let err = max_abs(&got, io.tensor(&key), &key);
            assert!(err <= POS_TOLERANCE, "{key}: max |Δ| {err:.3e}");
        }
    }
    vit.set_pos_interp(PosInterp::None);
    assert!(matches!(
        vit.resized_pos_embed((16, 16)),
        Err(VitError::NoResize { native: 37, .. })
    ));
    assert!(vit.resized_pos_embed((37, 37)).is_ok());
}

#[test]
fn dinov2_converted_layouts_load_identically() {
    // 4.x on-disk names, transformers-5 in-memory names and the hub layout give one canonical file content.
    let a = load("dinov2", None);
    let b = load("dinov2_v5", None);
    assert_eq!(a.parameter_names(), b.parameter_names());
    let expected: Vec<(String, Vec<i64>)> = {
        let mut keys = a.config().expected_keys();
        keys.sort();
        keys
    };
    assert_eq!(
        a.parameter_names(),
        expected,
        "VarStore paths are the canonical key names"
    );
    assert_eq!(a.source_format(), "hf-dinov2");
    assert_eq!(
        a.identity().id,
        b.identity().id,
        "one set of weights in two layouts has one identity"
    );
    assert!(a.identity().id.starts_with("tensors-sha256:"));
    assert_eq!(VitConfig::by_name(&a.config().name).ok().as_ref(), Some(a.config()));
}

#[test]
fn dinov2_registers_and_attention_logits() {
    let vit = load("dinov2_reg", None);
    assert_eq!(vit.config().pos_interp, PosInterp::SizeAntialias);
    check(&vit, "dinov2_reg", "size-antialias", SIZES14);
    check(&vit, "dinov2_reg", "hub", SIZES14);
    let io = Io::get();
    for &(h, w) in SIZES14 {
        let x = vit
            .normalize(io.tensor(&format!("dinov2_reg.images.{h}x{w}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let options = ForwardOptions {
            cls_attention_logits: true,
            ..ForwardOptions::default()
        };
        let tokens = vit.forward(&x, options).unwrap_or_else(|e| panic!("{e}"));
        let logits = tokens.cls_attention_logits.unwrap_or_else(|| panic!("no logits"));
        let key = format!("dinov2_reg.attn_logits.{h}x{w}");
        let err = max_abs(&logits, io.tensor(&key), &key);
        assert!(err <= TOLERANCE, "{key}: max |Δ| {err:.3e}");
    }
}

#[test]
fn dino_v1_matches_transformers_and_the_hub_resize() {
    let vit = load("dino", None);
    assert_eq!(vit.config().pos_interp, PosInterp::HubOffset);
    check(&vit, "dino", "hub-offset", SIZES16);
    check(&load_with_interp("dino", PosInterp::Size), "dino", "size", SIZES16);
}

#[test]
fn mae_matches_transformers() {
    check(&load("mae", None), "mae", "size", SIZES16);
    assert_eq!(
        load("mae_pth", None).parameter_names(),
        load("mae", None).parameter_names()
    );
}

#[test]
fn clip_matches_transformers_and_openai_layout() {
    let io = Io::get();
    for model in ["clip", "clip_openai"] {
        let vit = load(model, None);
        assert_eq!(vit.config().pos_interp, PosInterp::Size);
        for &(h, w) in SIZES16 {
            let key = format!("clip.size.{h}x{w}");
            let x = vit
                .normalize(io.tensor(&format!("clip.images.{h}x{w}")))
                .unwrap_or_else(|e| panic!("{e}"));
            let tokens = vit.forward_tokens(&x, None).unwrap_or_else(|e| panic!("{e}"));
            let projected = vit
                .project(&tokens.cls)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no proj"));
            let errs = [
                max_abs(&tokens.patches, io.tensor(&format!("{key}.patches")), &key),
                max_abs(&tokens.cls, io.tensor(&format!("{key}.pooled")), &key),
                max_abs(&projected, io.tensor(&format!("{key}.projected")), &key),
                max_abs(
                    &vit.features(&x, Some(0)).unwrap_or_else(|e| panic!("{e}")),
                    io.tensor(&format!("{key}.layer0")),
                    &key,
                ),
            ];
            eprintln!(
                "{model} {key}: patches {:.2e} pooled {:.2e} projected {:.2e} layer0 {:.2e}",
                errs[0], errs[1], errs[2], errs[3]
            );
            assert!(errs.iter().all(|e| *e <= TOLERANCE), "{model} {key}: {errs:?}");
        }
    }
    // OpenAI CLIP has no resize: off the native grid the `none` mode refuses.
    let mut vit = load("clip", None);
    vit.set_pos_interp(PosInterp::None);
    let x = Tensor::zeros([1, 3, 160, 320], (Kind::Float, Device::Cpu));
    assert!(matches!(vit.features(&x, None), Err(VitError::NoResize { .. })));
}

/// CUDA runs the same comparison when libtorch sees a device: float32 to the CPU tolerance, f16 autocast and
/// bf16 weights to 5e-2 (features have max |x| ≈ 5). On a machine without CUDA only the CPU refusal is checked.
#[test]
fn reduced_precision_needs_cuda_and_matches_on_it() {
    use mrdino_model::device::Precision;
    let path = fixtures().join("dinov2.safetensors");
    let err = Vit::load_with_precision(&path, None, Device::Cpu, Precision::F16)
        .err()
        .map(|e| e.to_string());
    assert!(err.unwrap_or_default().contains("needs a CUDA device"));
    if !tch::Cuda::is_available() {
        return;
    }
    let io = Io::get();
    let want = io.tensor("dinov2.hub-offset.378x378.patches");
    for (precision, tolerance) in [
        (Precision::F32, TOLERANCE),
        (Precision::F16, 5e-2),
        (Precision::Bf16, 5e-2),
    ] {
        let vit = Vit::load_with_precision(&path, None, Device::Cuda(0), precision).unwrap_or_else(|e| panic!("{e}"));
        let x = vit
            .normalize(io.tensor("dinov2.images.378x378"))
            .unwrap_or_else(|e| panic!("{e}"));
        let got = vit
            .features(&x, None)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_device(Device::Cpu);
        let err = max_abs(&got, want, precision.as_str());
        eprintln!("cuda {}: max |Δ| {err:.2e}", precision.as_str());
        assert!(
            err <= tolerance,
            "cuda {}: max |Δ| {err:.3e} > {tolerance:e}",
            precision.as_str()
        );
    }
}

#[test]
fn vit_can_move_to_a_worker_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Vit>();
}

#[test]
fn real_vitb14_widths() {
    let vit = load("vitb14", None);
    assert_eq!(
        (vit.embed_dim(), vit.config().heads, vit.config().mlp_dim),
        (768, 12, 3072)
    );
    check(&vit, "vitb14", "hub-offset", &[(224, 224)]);
}

#[test]
fn bad_inputs_are_refused() {
    let vit = load("dinov2", None);
    let bad = Tensor::zeros([1, 3, 224, 230], (Kind::Float, Device::Cpu));
    let err = vit
        .features(&bad, None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("224×230") && err.contains("14"), "{err}");
    let x = Tensor::zeros([1, 3, 28, 28], (Kind::Float, Device::Cpu));
    assert!(matches!(
        vit.features(&x, Some(2)),
        Err(VitError::Layer { layer: 2, depth: 2, .. })
    ));
    assert!(matches!(vit.features(&x.squeeze(), None), Err(VitError::Input(_))));
    assert!(matches!(
        vit.features(&x.to_kind(Kind::Uint8), None),
        Err(VitError::Input(_))
    ));
}

/// Writes `tensors` without metadata, so the loader relies on the named configuration.
fn write_plain(path: &Path, tensors: &[(String, Tensor)]) {
    Tensor::write_safetensors(tensors, path).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn wrong_keys_and_shapes_are_refused_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = VitConfig::by_name("custom:family=dinov2,depth=2,dim=32,heads=2,patch=14,registers=4,pos_grid=4")
        .unwrap_or_else(|e| panic!("{e}"));
    let good = mrdino_model::vit::weights::random_tensors(&config, 7).unwrap();

    let path = dir.path().join("shape.safetensors");
    let mut tensors: Vec<(String, Tensor)> = good.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    for (k, t) in tensors.iter_mut() {
        if k == "blocks.1.mlp.fc1.weight" {
            *t = Tensor::zeros([100, 32], (Kind::Float, Device::Cpu));
        }
    }
    write_plain(&path, &tensors);
    let err = Vit::load(&path, Some(config.clone()), Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("blocks.1.mlp.fc1.weight") && err.contains("[100, 32]") && err.contains("[128, 32]"),
        "{err}"
    );

    let path = dir.path().join("missing.safetensors");
    let tensors: Vec<(String, Tensor)> = good
        .iter()
        .filter(|(k, _)| k != "register_tokens")
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    write_plain(&path, &tensors);
    let err = Vit::load(&path, Some(config.clone()), Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("missing key `register_tokens`") && err.contains("[1, 4, 32]"),
        "{err}"
    );

    let path = dir.path().join("extra.safetensors");
    let mut tensors: Vec<(String, Tensor)> = good.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect();
    tensors.push((
        "head.weight".into(),
        Tensor::zeros([10, 32], (Kind::Float, Device::Cpu)),
    ));
    write_plain(&path, &tensors);
    let err = Vit::load(&path, Some(config.clone()), Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("unexpected key `head.weight`") && err.contains("[10, 32]"),
        "{err}"
    );

    // No metadata and no name: refused, naming what to pass.
    let err = Vit::load(&path, None, Device::Cpu)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("mrdino.vit_config") && err.contains("dinov2-vitb14"),
        "{err}"
    );

    // A self-describing file loads without a name, and a contradicting name is refused.
    let path = dir.path().join("good.safetensors");
    mrdino_model::vit::write_random_weights(&path, &config, 7).unwrap_or_else(|e| panic!("{e}"));
    let vit = Vit::load(&path, None, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(vit.config(), &config);
    let other = VitConfig::by_name("dinov2-vits14").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        Vit::load(&path, Some(other), Device::Cpu),
        Err(VitError::ConfigMismatch { .. })
    ));
    let x = Tensor::rand([2, 3, 28, 42], (Kind::Float, Device::Cpu));
    let f = vit.features(&x, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.size(), [2, 6, 32]);
}

// ------------------------------------------------------------------------------------------------------- DINOv3

const SIZES_V3: &[(i64, i64)] = &[(224, 224), (160, 320), (432, 432)];

/// A depth-2 DINOv3 fixture must be its preset with another depth, and match transformers at every size.
fn dinov3_preset_width(model: &str, preset: &str) {
    let vit = load(model, None);
    let want = VitConfig::by_name(preset).unwrap_or_else(|e| panic!("{e}"));
    let got = vit.config();
    assert_eq!(
        got,
        &VitConfig {
            name: got.name.clone(),
            depth: 2,
            ..want
        },
        "{model}: the fixture has the widths and switches of {preset}"
    );
    assert_eq!(vit.source_format(), "hf-dinov3");
    let worst = check(&vit, model, "hf", SIZES_V3);
    eprintln!("{model} ({preset} widths): worst max |Δ| {worst:.2e}");
}

#[test]
fn dinov3_vits16_matches_transformers() {
    dinov3_preset_width("dinov3_s", "dinov3-vits16");
}

#[test]
fn dinov3_vits16plus_swiglu_matches_transformers() {
    dinov3_preset_width("dinov3_splus", "dinov3-vits16plus");
}

#[test]
fn dinov3_vitb16_matches_transformers() {
    dinov3_preset_width("dinov3_b", "dinov3-vitb16");
}

#[test]
fn dinov3_vitl16_matches_transformers() {
    dinov3_preset_width("dinov3_l", "dinov3-vitl16");
}

#[test]
fn dinov3_official_and_transformers_layouts_load_identically() {
    for model in ["dinov3_s", "dinov3_splus"] {
        let hf = load(model, None);
        let official = load(&format!("{model}_official"), None);
        let v5 = load(&format!("{model}_v5"), None);
        assert_eq!(official.source_format(), "hub-dinov3");
        assert_eq!(official.config(), hf.config());
        assert_eq!(v5.config(), hf.config());
        let mut expected = hf.config().expected_keys();
        expected.sort();
        assert_eq!(
            hf.parameter_names(),
            expected,
            "VarStore paths are the canonical key names"
        );
        assert_eq!(official.parameter_names(), expected);
        // The official file's forward against transformers' on the same weights (its K bias was random and
        // masked; the converter wrote zeros).
        check(&official, model, "hf", &[(160, 320), (432, 432)]);
    }
}

#[test]
fn dinov3_rope_tables_match_transformers() {
    let io = Io::get();
    for (h0, w0) in [(10, 20), (27, 27)] {
        let prefix = 5;
        let (cos, sin) = rope_tables((h0, w0), 64, 100.0, prefix, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cos.size(), [1, 1, prefix + h0 * w0, 64]);
        for (name, table, prefix_value) in [("cos", &cos, 1.0), ("sin", &sin, 0.0)] {
            let key = format!("dinov3.rope.{name}.{h0}x{w0}");
            let patches = table.narrow(2, prefix, h0 * w0).squeeze_dim(0).squeeze_dim(0);
            let err = max_abs(&patches, io.tensor(&key), &key);
            assert!(err <= ROPE_TOLERANCE, "{key}: max |Δ| {err:.3e}");
            let head = table.narrow(2, 0, prefix);
            assert!(head.eq(prefix_value).all().int64_value(&[]) == 1, "{key}: prefix rows");
        }
    }
    assert!(
        rope_tables((2, 2), 30, 100.0, 1, Device::Cpu).is_err(),
        "head_dim 30 is not divisible by 4"
    );
}

#[test]
fn dinov3_parity_test_catches_an_interleaved_rope() {
    // References made with pairs (2i, 2i+1) rotated instead of the halves: mrdino's features are far from them,
    // so an interleaved implementation would fail the parity above by the same margin.
    let io = Io::get();
    let vit = load("dinov3_s", None);
    for &(h, w) in SIZES_V3 {
        let x = vit
            .normalize(io.tensor(&format!("dinov3_s.images.{h}x{w}")))
            .unwrap_or_else(|e| panic!("{e}"));
        let f = vit.features(&x, None).unwrap_or_else(|e| panic!("{e}"));
        let right = max_abs(&f, io.tensor(&format!("dinov3_s.hf.{h}x{w}.patches")), "rotate-half");
        let wrong = max_abs(
            &f,
            io.tensor(&format!("dinov3_s.interleaved.{h}x{w}.patches")),
            "interleaved",
        );
        eprintln!("dinov3_s {h}x{w}: rotate-half reference {right:.2e}, interleaved reference {wrong:.2e}");
        assert!(right <= TOLERANCE);
        assert!(
            wrong > 100.0 * TOLERANCE,
            "{h}x{w}: the interleaved RoPE gives nearly the same features ({wrong:.2e})"
        );
    }
}

#[test]
fn dinov3_k_bias_in_a_file_never_reaches_the_forward() {
    // The same weights with a random K third in every qkv bias: identical features under DINOv3's switch
    // (k_bias false), different ones when the switch is turned on.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let vit = load("dinov3_s", None);
    let config = vit.config().clone();
    let path = fixtures().join("dinov3_s.safetensors");
    let mut tensors = Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{e}"));
    let d = config.embed_dim;
    tch::manual_seed(3);
    for (key, t) in tensors.iter_mut() {
        if key.ends_with("attn.qkv.bias") {
            assert!(
                t.narrow(0, d, d).eq(0.0).all().int64_value(&[]) == 1,
                "{key}: K bias written as zeros"
            );
            let k = Tensor::randn([d], (Kind::Float, Device::Cpu));
            *t = Tensor::cat(&[t.narrow(0, 0, d), k, t.narrow(0, 2 * d, d)], 0);
        }
    }
    let noisy = dir.path().join("k_bias.safetensors");
    mrdino_model::vit::weights::save(&noisy, &config, &tensors).unwrap_or_else(|e| panic!("{e}"));
    let x = Tensor::rand([1, 3, 64, 96], (Kind::Float, Device::Cpu));
    let want = vit.features(&x, None).unwrap_or_else(|e| panic!("{e}"));
    let masked = Vit::load(&noisy, None, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert!(masked.features(&x, None).unwrap_or_else(|e| panic!("{e}")).equal(&want));
    let unmasked_config = VitConfig {
        k_bias: true,
        ..config.clone()
    };
    let unmasked_path = dir.path().join("k_bias_on.safetensors");
    mrdino_model::vit::weights::save(&unmasked_path, &unmasked_config, &tensors).unwrap_or_else(|e| panic!("{e}"));
    let unmasked = Vit::load(&unmasked_path, None, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let gap = max_abs(
        &unmasked.features(&x, None).unwrap_or_else(|e| panic!("{e}")),
        &want,
        "k bias on",
    );
    assert!(
        gap > 100.0 * TOLERANCE,
        "a K bias should change the features, got {gap:.2e}"
    );
}

#[test]
fn dinov3_takes_any_multiple_of_16_and_names_other_sizes() {
    let vit = load("dinov3_splus", None);
    for (h, w) in [(16, 16), (48, 80), (432, 160)] {
        let x = Tensor::rand([1, 3, h, w], (Kind::Float, Device::Cpu));
        let tokens = vit.forward_tokens(&x, None).unwrap_or_else(|e| panic!("{h}×{w}: {e}"));
        assert_eq!(tokens.grid, (h / 16, w / 16));
        assert_eq!(tokens.patches.size(), [1, (h / 16) * (w / 16), 384]);
        assert_eq!(tokens.registers.size(), [1, 4, 384]);
    }
    for (h, w) in [(224, 230), (100, 96)] {
        let x = Tensor::zeros([1, 3, h, w], (Kind::Float, Device::Cpu));
        let err = vit.features(&x, None).err();
        assert!(
            matches!(
                err,
                Some(VitError::ImageSize {
                    height_px,
                    width_px,
                    patch_px: 16
                }) if (height_px, width_px) == (h, w)
            ),
            "{h}×{w}: {err:?}"
        );
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains(&format!("{h}×{w} px")) && message.contains("16"),
            "{message}"
        );
    }
    assert!(matches!(
        vit.resized_pos_embed((4, 4)),
        Err(VitError::NoPosEmbed { .. })
    ));
}

#[test]
fn converter_presets_agree_with_vit_config() {
    // tools/convert_vit.py writes the JSON the loader reads: every preset and a few custom specs must give the
    // configuration `VitConfig::by_name` gives.
    let path = fixtures().join("presets.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    for name in VitConfig::names() {
        assert!(all.contains_key(*name), "convert_vit.py has no preset {name}");
    }
    for (name, json) in &all {
        let python = VitConfig::from_json(&json.to_string()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let rust = VitConfig::by_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(python, rust, "{name}");
    }
}
