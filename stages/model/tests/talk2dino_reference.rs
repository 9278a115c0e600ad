//! `mrdino_model::talk2dino` against a PyTorch re-statement of Talk2DINO's inference
//! (`tools/reference/talk2dino_fixtures.py`): ψ loaded through the converter from the old `linear_layer2`
//! layout, class embeddings, similarity maps (≤ 1e-5), sigmoid masks, background cleaning, upsampling, and the
//! argmax with a background threshold (identical on ≥ 99.9 % of pixels).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_model::talk2dino::{background_clean, label_map, similarity_maps, Psi, LAMBDA_BG};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
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
    let io: HashMap<String, Tensor> = Tensor::read_safetensors(dir.join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let psi = Psi::load(&dir.join("psi.safetensors"), Device::Cpu).expect("converted psi loads");
    assert_eq!(psi.dim(), 48);
    let classes = psi.class_embeddings(&io["clip_text"]);
    assert!(
        max_diff(&classes, &io["classes"]) <= 1e-6,
        "class embeddings {}",
        max_diff(&classes, &io["classes"])
    );

    let simmap = similarity_maps(&io["patches"], (9, 7), &classes);
    assert!(
        max_diff(&simmap, &io["simmap"]) <= 1e-5,
        "simmap {}",
        max_diff(&simmap, &io["simmap"])
    );
    let soft = simmap.sigmoid();
    assert!(max_diff(&soft, &io["soft"]) <= 1e-5);
    let cleaned = background_clean(&soft, &io["patches"], &io["attn"], &classes, LAMBDA_BG);
    assert!(
        max_diff(&cleaned, &io["cleaned"]) <= 1e-5,
        "cleaned {}",
        max_diff(&cleaned, &io["cleaned"])
    );

    for (masks, key) in [(&soft, "labels_plain"), (&cleaned, "labels_clean")] {
        let labels = label_map(masks, (37, 29), 0.55);
        let share = agreement(&labels, &io[key]);
        assert!(share >= 0.999, "{key}: {share} of pixels agree");
        let classes_seen = labels.internal_unique(true, false).0.size()[0];
        assert!(
            classes_seen >= 2,
            "{key}: the test image must exercise several labels, got {classes_seen}"
        );
    }
}
