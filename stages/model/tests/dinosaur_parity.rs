//! Parity of `mrdino_model::dinosaur` and `mrdino_model::optim` with a PyTorch re-statement, on CPU in float32.
//!
//! `tools/reference/dinosaur_fixtures.py` (run with `MRDINO_PYTHON`, default `$HOME/.cache/mrdino/venv/bin/python`)
//! builds the slot model with every parameter re-randomised (LayerNorm weights and biases, every bias, μ, log σ,
//! pos_embed), draws the slot noise with `torch.manual_seed(S + i); torch.randn(…)`, and records slots, alpha
//! masks, reconstruction, loss, attention, masks on image grids, Mask Similarity, the normalised slot entropy
//! of the attention and of the masks (`torch.special.entr`), and the parameters and Adam moments after two
//! `torch.optim.Adam` updates with `clip_grad_norm_(…, 1.0)` and the warm-up/decay schedule (scheduler steps 3
//! and 4). Sizes: F = 64, D = 16, K = 4, P = 16, h = 64, batch 2; every option of the
//! backbone study at once on a second model; one forward at the real KITTI sizes (F = 768, D = 32, K = 15,
//! P = 729, h = 2048), batch 1, whose configuration the loader infers from the shapes.
//!
//! `MRDINO_DINOSAUR_FIXTURES=<dir>` reuses fixtures written earlier.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mrdino_model::dinosaur::{slot_entropy, slot_noise, Dinosaur};
use mrdino_model::optim::{Adam, AdamConfig, LrSchedule};
use tch::{Device, Tensor};

const TOLERANCE: f64 = 1e-5;

fn python() -> PathBuf {
    match std::env::var_os("MRDINO_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/mrdino/venv/bin/python"),
    }
}

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tch::set_num_threads(1);
        if let Some(dir) = std::env::var_os("MRDINO_DINOSAUR_FIXTURES") {
            return PathBuf::from(dir);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dinosaur_parity");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/dinosaur_fixtures.py");
        let py = python();
        let output = Command::new(&py).arg(&script).arg(&dir).output().unwrap_or_else(|e| {
            panic!(
                "cannot run the DINOSAUR fixture generator {} with {} ({e}); set MRDINO_PYTHON to a python with \
                 torch 2.13 and safetensors (`make venv` creates one)",
                script.display(),
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

struct Io(Vec<(String, Tensor)>);

impl Io {
    fn load() -> Self {
        let path = fixtures().join("io.safetensors");
        Self(Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }

    fn get(&self, name: &str) -> &Tensor {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .unwrap_or_else(|| panic!("fixture tensor `{name}` missing"))
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

fn check(what: &str, got: &Tensor, want: &Tensor) -> f64 {
    let d = max_abs(got, want);
    eprintln!("{what}: max abs diff {d:.3e}");
    assert!(d <= TOLERANCE, "{what}: max abs diff {d:e} > {TOLERANCE:e}");
    d
}

/// A scalar figure against the fixture's (a one-element tensor), within [`TOLERANCE`].
fn check_scalar(what: &str, got: f64, io: &Io, key: &str) {
    let want = io.get(key).double_value(&[0]);
    eprintln!("{what}: {got} vs {want}");
    assert!(
        got.is_finite() && (got - want).abs() <= TOLERANCE,
        "{what}: {got} vs PyTorch {want}"
    );
}

fn model(name: &str) -> Dinosaur {
    let path = fixtures().join(format!("{name}.safetensors"));
    Dinosaur::load(&path, Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn slot_noise_equals_torch_manual_seed_randn() {
    let io = Io::load();
    let noise = slot_noise(1234, &[0, 1, 5], 2, 4, 16, Device::Cpu).unwrap();
    let want = io.get("noise.seed1234.idx0_1_5.views2");
    assert_eq!(noise.size(), [6, 4, 16]);
    assert_eq!(max_abs(&noise, want), 0.0, "noise must be bit-identical to torch's");
}

#[test]
fn forward_matches_pytorch() {
    let io = Io::load();
    let m = model("small");
    let noise = slot_noise(1234, &[0, 1], 1, 4, 16, Device::Cpu).unwrap();
    assert_eq!(max_abs(&noise, io.get("small.noise")), 0.0);
    let out = m.forward(io.get("small.features"), &noise).unwrap();
    check("slots", &out.slots, io.get("small.slots"));
    check("masks", &out.masks, io.get("small.masks"));
    check("reconstruction", &out.reconstruction, io.get("small.reconstruction"));
    check("attention", &out.attention, io.get("small.attention"));
    check("loss", &out.loss.reshape([1]), io.get("small.loss"));
    check(
        "masks_as_image 12x12",
        &out.masks_as_image(12, 12).unwrap(),
        io.get("small.masks_image_12x12"),
    );
    check(
        "masks_as_image 6x24",
        &out.masks_as_image(6, 24).unwrap(),
        io.get("small.masks_image_6x24"),
    );
    let similarity = out.mask_similarity().unwrap();
    let want = io.get("small.mask_similarity").double_value(&[0]);
    assert!(
        (similarity - want).abs() <= TOLERANCE,
        "mask similarity {similarity} vs {want}"
    );
    check_scalar("attention entropy", out.attention_entropy().unwrap(), &io, "small.attention_entropy");
    check_scalar("mask entropy", slot_entropy(&out.masks).unwrap(), &io, "small.mask_entropy");
    assert!(
        out.masks_as_image(5, 7).is_err(),
        "16 patches form no grid of aspect 5:7"
    );
}

#[test]
fn two_clipped_adam_steps_match_torch_optim_adam() {
    let io = Io::load();
    let m = model("small");
    let features = io.get("small.features");
    let noise = io.get("small.noise");
    let schedule = LrSchedule {
        base_lr: 1e-3,
        warmup_steps: 10,
        decay_rate: 0.5,
        decay_steps: 100,
    };
    let mut adam = Adam::new(m.named_parameters(), AdamConfig::default());
    for (update, scheduler_step) in [(1u32, 3u64), (2, 4)] {
        adam.zero_grad().unwrap();
        let out = m.forward(features, noise).unwrap();
        check(
            &format!("step {update} loss"),
            &out.loss.reshape([1]),
            io.get(&format!("step{update}.loss")),
        );
        out.loss.backward();
        let norm = adam.clip_grad_norm(1.0).unwrap();
        let want_norm = io.get(&format!("step{update}.grad_norm")).double_value(&[0]);
        assert!(
            (norm - want_norm).abs() <= 1e-5 * want_norm.max(1.0),
            "grad norm {norm} vs {want_norm}"
        );
        assert!(norm > 1.0, "the clip must be active in this test (norm {norm})");
        let lr = schedule.lr(scheduler_step);
        let want_lr = io.get(&format!("step{update}.lr")).double_value(&[0]);
        assert!((lr - want_lr).abs() <= 1e-15, "lr {lr} vs {want_lr}");
        adam.step(lr).unwrap();
        let mut worst = 0.0f64;
        for (name, p) in m.named_parameters() {
            let want = io.get(&format!("step{update}.param.{name}"));
            if name == "object_decoder.decoder.6.bias" {
                // The alpha-logit bias (last element) is shared by all slots, and the softmax over slots is
                // invariant to it: its gradient is exactly 0 in exact arithmetic, rounding noise (~1e-9) in
                // float32, and what Adam makes of noise below eps differs between any two implementations.
                // Every other element is compared tightly; this one only within Adam's bound on a step.
                let f = p.size()[0] - 1;
                check(
                    &format!("step {update} {name}[..F]"),
                    &p.narrow(0, 0, f),
                    &want.narrow(0, 0, f),
                );
                let d = max_abs(&p.narrow(0, f, 1), &want.narrow(0, f, 1));
                eprintln!("step {update} alpha-logit bias: diff {d:.3e}");
                assert!(d <= 2.0 * lr * f64::from(update), "alpha-logit bias moved {d:e}");
                continue;
            }
            if name == "perceptual_grouping.slot_attention.norm_slots.bias" {
                // Also gradient-free in exact arithmetic: the bias shifts every query by W_q b, which adds the
                // same (W_q b)·k_j to the logits of all slots for input j — the softmax over slots ignores it.
                let d = max_abs(&p, want);
                eprintln!("step {update} norm_slots bias: diff {d:.3e}");
                assert!(d <= 2.0 * lr * f64::from(update), "norm_slots bias moved {d:e}");
                continue;
            }
            worst = worst.max(check(&format!("step {update} {name}"), &p, want));
        }
        eprintln!("step {update}: worst parameter diff {worst:.3e}");
    }
    let (moments, steps) = adam.export_state();
    for (name, t) in &moments {
        let want = io.get(&format!("step2.{name}"));
        if name.ends_with("object_decoder.decoder.6.bias") {
            let f = t.size()[0] - 1;
            check(name, &t.narrow(0, 0, f), &want.narrow(0, 0, f));
            continue;
        }
        check(name, t, want);
    }
    assert!(steps.values().all(|&s| s == 2));
}

#[test]
fn study_options_match_pytorch() {
    let io = Io::load();
    let m = model("options");
    let out = m.forward(io.get("small.features"), io.get("small.noise")).unwrap();
    check("options slots", &out.slots, io.get("options.slots"));
    check("options masks", &out.masks, io.get("options.masks"));
    check(
        "options reconstruction",
        &out.reconstruction,
        io.get("options.reconstruction"),
    );
    check("options loss", &out.loss.reshape([1]), io.get("options.loss"));
}

#[test]
fn kitti_sizes_forward_matches_pytorch() {
    let io = Io::load();
    let m = model("kitti");
    let c = m.config();
    assert_eq!(
        (c.n_slots, c.slot_dim, c.feature_dim, c.decoder_hidden, c.n_patches),
        (15, 32, 768, 2048, 729)
    );
    let noise = slot_noise(1234, &[3], 1, 15, 32, Device::Cpu).unwrap();
    assert_eq!(max_abs(&noise, io.get("kitti.noise")), 0.0);
    let out = tch::no_grad(|| m.forward(io.get("kitti.features"), &noise)).unwrap();
    check("kitti slots", &out.slots, io.get("kitti.slots"));
    check("kitti masks", &out.masks, io.get("kitti.masks"));
    check(
        "kitti reconstruction",
        &out.reconstruction,
        io.get("kitti.reconstruction"),
    );
    check("kitti loss", &out.loss.reshape([1]), io.get("kitti.loss"));
    check_scalar("kitti attention entropy", out.attention_entropy().unwrap(), &io, "kitti.attention_entropy");
    check_scalar("kitti mask similarity", out.mask_similarity().unwrap(), &io, "kitti.mask_similarity");
}

#[test]
fn bad_shapes_are_errors() {
    let m = model("small");
    let noise = Tensor::zeros([2, 4, 16], (tch::Kind::Float, Device::Cpu));
    let wrong = Tensor::zeros([2, 15, 64], (tch::Kind::Float, Device::Cpu));
    assert!(m.forward(&wrong, &noise).is_err());
    let features = Tensor::zeros([2, 16, 64], (tch::Kind::Float, Device::Cpu));
    assert!(m.forward(&features, &noise.narrow(1, 0, 3)).is_err());
}

fn convert(input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/convert_ocl_checkpoint.py");
    Command::new(python())
        .arg(&script)
        .arg(input)
        .arg(output)
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
}

#[test]
fn converted_lightning_checkpoint_gives_the_pytorch_forward() {
    let io = Io::load();
    let dir = fixtures();
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dinosaur_convert");
    std::fs::create_dir_all(&out_dir).unwrap();
    let converted = out_dir.join("small_stage2.safetensors");
    let out = convert(&dir.join("lightning.ckpt"), &converted, &["--n-slots", "4"]);
    assert!(
        out.status.success(),
        "converter failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = mrdino_outputs::checkpoint::read_tensor_file(&converted).unwrap();
    assert_eq!(file.meta("mrdino.stage"), Some("stage2"));
    assert!(file.get("backbone.blocks.1.attn.qkv.weight").is_some());
    assert!(file.get("object_decoder.slot_decoder.6.bias").is_some());
    assert_eq!(
        file.meta("mrdino.backbone_sha256").map(str::to_string),
        Some(file.weights_id("backbone.", |name| name != "mask_token").unwrap()),
        "the converter records the tensor identity of the embedded backbone as Rust computes it"
    );
    let m = Dinosaur::load(&converted, Device::Cpu).unwrap();
    let out = m.forward(io.get("small.features"), io.get("small.noise")).unwrap();
    check("converted slots", &out.slots, io.get("small.slots"));
    check("converted masks", &out.masks, io.get("small.masks"));
    check(
        "converted reconstruction",
        &out.reconstruction,
        io.get("small.reconstruction"),
    );

    let rejected = out_dir.join("bad.safetensors");
    let out = convert(&dir.join("lightning_bad.ckpt"), &rejected, &["--n-slots", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("models.object_decoder.extra.weight"),
        "{stderr}"
    );
    assert!(!rejected.exists());
}

#[test]
fn loader_names_missing_and_unknown_keys() {
    let dir = fixtures();
    let mut file = mrdino_outputs::checkpoint::read_tensor_file(&dir.join("small.safetensors")).unwrap();
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dinosaur_keys");
    let mut unknown = file.clone();
    let mut extra = unknown.tensors[0].clone();
    extra.name = "object_decoder.decoder.8.weight".into();
    unknown.tensors.push(extra);
    unknown.tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let path = out_dir.join("unknown.safetensors");
    mrdino_outputs::checkpoint::write_tensor_file(&path, &unknown).unwrap();
    let err = Dinosaur::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("object_decoder.decoder.8.weight"), "{err}");
    file.tensors
        .retain(|t| t.name != "perceptual_grouping.slot_attention.gru.bias_hh");
    let path = out_dir.join("missing.safetensors");
    mrdino_outputs::checkpoint::write_tensor_file(&path, &file).unwrap();
    let err = Dinosaur::load(&path, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("perceptual_grouping.slot_attention.gru.bias_hh"), "{err}");
}
