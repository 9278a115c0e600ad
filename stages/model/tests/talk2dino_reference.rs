//! `mrdino_model::talk2dino` against a PyTorch re-statement of Talk2DINO's inference
//! (`tools/reference/talk2dino_fixtures.py`): ψ loaded through the converter from the old `linear_layer2`
//! layout, class embeddings, similarity maps (≤ 1e-5), sigmoid masks, background cleaning, upsampling, and the
//! argmax with a background threshold (identical on ≥ 99.9 % of pixels); and a random ψ in the layout of Talk2DINO's
//! DINOv3 release (`dinov3_vitb_mlp_infonce.pth`) converted and loaded with its variant, input size and patch grid.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_model::talk2dino::{
    background_clean, label_map, similarity_maps, Psi, Talk2DinoError, Variant, LAMBDA_BG, VARIANTS,
};
use tch::{Device, Kind, Tensor};

fn fixtures() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(generate)
}

fn generate() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("talk2dino");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/talk2dino_fixtures.py");
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

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn agreement(a: &Tensor, b: &Tensor) -> f64 {
    a.eq_tensor(b)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

#[test]
fn inference_matches_the_reference() {
    let dir = fixtures();
    let io = read_io(dir);
    let psi = Psi::load(&dir.join("psi.safetensors"), Device::Cpu).expect("converted psi loads");
    assert_eq!(psi.dim(), 48);
    assert_eq!(psi.variant(), None, "a file named after no release records no variant");
    let classes = psi.class_embeddings(&io["clip_text"]).unwrap();
    assert!(
        max_diff(&classes, &io["classes"]) <= 1e-6,
        "class embeddings {}",
        max_diff(&classes, &io["classes"])
    );

    let simmap = similarity_maps(&io["patches"], (9, 7), &classes).unwrap();
    assert!(
        max_diff(&simmap, &io["simmap"]) <= 1e-5,
        "simmap {}",
        max_diff(&simmap, &io["simmap"])
    );
    let soft = simmap.sigmoid();
    assert!(max_diff(&soft, &io["soft"]) <= 1e-5);
    let cleaned = background_clean(&soft, &io["patches"], &io["attn"], &classes, LAMBDA_BG).unwrap();
    assert!(
        max_diff(&cleaned, &io["cleaned"]) <= 1e-5,
        "cleaned {}",
        max_diff(&cleaned, &io["cleaned"])
    );

    for (masks, key) in [(&soft, "labels_plain"), (&cleaned, "labels_clean")] {
        let labels = label_map(masks, (37, 29), 0.55).unwrap();
        let share = agreement(&labels, &io[key]);
        assert!(share >= 0.999, "{key}: {share} of pixels agree");
        let classes_seen = labels.internal_unique(true, false).0.size()[0];
        assert!(
            classes_seen >= 2,
            "{key}: the test image must exercise several labels, got {classes_seen}"
        );
    }
}

fn read_io(dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn dinov3_psi_release_layout_loads_with_its_input_size() {
    let dir = fixtures();
    let io = read_io(dir);
    let dinov3 = Variant::by_proj_name("dinov3_vitb_mlp_infonce").unwrap();
    // Talk2DINO's DINOv3 config: vit_base_patch16_dinov3 at resize_dim 448 → 28×28 patches of 16 px.
    assert_eq!(dinov3.backbone, "vit_base_patch16_dinov3.lvd1689m");
    assert_eq!((dinov3.input_px, dinov3.patch_px, dinov3.grid()), (448, 16, 28));
    assert_eq!((dinov3.dim, dinov3.heads, dinov3.registers), (768, 12, 4));
    assert!(dinov3.logits_before_rope);
    assert_eq!(Variant::by_proj_name("vitb_mlp_infonce").map(Variant::grid), Some(32));
    assert_eq!(VARIANTS.len(), 4);

    for file in ["psi_dinov3.safetensors", "psi_dinov3_by_archive.safetensors"] {
        let psi = Psi::load(&dir.join(file), Device::Cpu).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(psi.dim(), 768, "{file}");
        assert_eq!(psi.variant(), Some(dinov3), "{file}");
        let mapped = psi.forward(&io["dinov3_text"]).unwrap();
        assert!(
            max_diff(&mapped, &io["dinov3_psi"]) <= 1e-5,
            "{file}: psi {}",
            max_diff(&mapped, &io["dinov3_psi"])
        );
        let classes = psi.class_embeddings(&io["dinov3_text"]).unwrap();
        assert!(
            max_diff(&classes, &io["dinov3_classes"]) <= 1e-6,
            "{file}: class embeddings"
        );
    }

    for (file, needle) in [
        ("psi_unknown_variant.safetensors", "vith_mlp_infonce"),
        ("psi_wrong_width.safetensors", "768"),
    ] {
        match Psi::load(&dir.join(file), Device::Cpu) {
            Err(e @ Talk2DinoError::Metadata { .. }) => {
                assert!(e.to_string().contains(needle), "{file}: {e}")
            }
            other => panic!("{file}: expected a metadata error, got {other:?}"),
        }
    }
}
