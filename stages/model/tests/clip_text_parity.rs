//! Parity of `mrdino_model::clip_text` with transformers' `CLIPTextModelWithProjection` and open_clip's
//! OpenAI-architecture text tower, on CPU in float32, and the class-embedding chain against a PyTorch
//! re-statement.
//!
//! `tools/reference/clip_text_fixtures.py` (run with `MRDINO_PYTHON`, default `$HOME/.cache/mrdino/venv/bin/python`)
//! builds a tiny (width 64, 2 layers, 2 heads) and a real-width (512 / MLP 2048 / 8 heads, 2 layers) text
//! tower with every parameter re-randomised, converts them with `tools/convert_clip_text.py` from transformers'
//! layout (and the tiny one also from OpenAI's, as a TorchScript archive, a plain state dict and an fp16 archive), and
//! records
//! `text_embeds` for open_clip token ids of lengths 3, 10 and 77 (truncated), the class embeddings of 3 classes ×
//! 7 templates through a random ψ, and the converter's messages for unknown and missing keys.
//!
//! `MRDINO_CLIP_TEXT_FIXTURES=<dir>` reuses fixtures the script wrote to `<dir>` earlier.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mrdino_model::clip_text::ClipText;
use mrdino_model::clip_tokenizer::ClipTokenizer;
use mrdino_model::talk2dino::{Psi, TEMPLATES};
use tch::{Device, Tensor};

/// Text embeddings (max |ref| ≈ 4).
const TOLERANCE: f64 = 1e-4;
/// L2-normalised class embeddings.
const CLASS_TOLERANCE: f64 = 1e-5;

fn python() -> PathBuf {
    match std::env::var_os("MRDINO_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/mrdino/venv/bin/python"),
    }
}

/// Generates the fixtures once per test binary, under cargo's per-target temporary directory.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tch::set_num_threads(1);
        if let Some(dir) = std::env::var_os("MRDINO_CLIP_TEXT_FIXTURES") {
            return PathBuf::from(dir);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clip_text_parity");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/clip_text_fixtures.py");
        let py = python();
        let output = Command::new(&py).arg(&script).arg(&dir).output().unwrap_or_else(|e| {
            panic!(
                "cannot run the CLIP text fixture generator with {} ({e}); set MRDINO_PYTHON to a python with torch \
                 2.13, transformers, open-clip-torch and safetensors (`make venv` creates one)",
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

fn io() -> HashMap<String, Tensor> {
    let path = fixtures().join("io.safetensors");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// A JSON list of strings from io.safetensors' metadata.
fn metadata_list(key: &str) -> Vec<String> {
    let path = fixtures().join("io.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap_or_else(|e| panic!("{e:?}"));
    let json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(key).cloned())
        .unwrap_or_else(|| panic!("io.safetensors has no `{key}` metadata"));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn load(name: &str) -> ClipText {
    let path = fixtures().join(format!("{name}.safetensors"));
    ClipText::load(&path, Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

fn max_abs(a: &Tensor, b: &Tensor, what: &str) -> f64 {
    assert_eq!(a.size(), b.size(), "{what}: shape");
    (a - b).abs().max().double_value(&[])
}

fn check(model: &ClipText, reference: &str) {
    let io = io();
    let out = model.encode(&io["ids"]).unwrap_or_else(|e| panic!("{e}"));
    let err = max_abs(&out, &io[reference], reference);
    let scale = io[reference].abs().max().double_value(&[]);
    eprintln!("{reference}: max |Δ| {err:.2e} (max |ref| {scale:.2})");
    assert!(err <= TOLERANCE, "{reference}: max |Δ| {err:.3e} > {TOLERANCE:e}");
}

#[test]
fn tiny_matches_transformers_and_open_clip() {
    let model = load("tiny");
    assert_eq!(model.source_format(), "hf");
    assert_eq!(
        model.config().name,
        "custom:width=64,layers=2,heads=2,mlp=256,embed=512,context=77,vocab=49408"
    );
    check(&model, "tiny.text_embeds");
    check(&model, "tiny.open_clip");
}

#[test]
fn real_widths_match_transformers() {
    let model = load("base2");
    let c = model.config();
    assert_eq!(
        (c.width, c.heads, c.mlp_dim, c.embed_dim, c.layers),
        (512, 8, 2048, 512, 2)
    );
    check(&model, "base2.text_embeds");
}

#[test]
fn openai_layouts_convert_to_the_same_tensors() {
    let read = |name: &str| -> Vec<(String, Tensor)> {
        let path = fixtures().join(format!("{name}.safetensors"));
        let mut t = Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let hf = read("tiny");
    for name in ["tiny_openai_ts", "tiny_openai_plain"] {
        let openai = read(name);
        let names = |t: &[(String, Tensor)]| t.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(names(&openai), names(&hf), "{name}: key sets differ");
        for ((key, a), (_, b)) in openai.iter().zip(&hf) {
            assert!(a.equal(b), "{name}: `{key}` differs from the transformers conversion");
        }
        let model = load(name);
        assert_eq!(model.source_format(), "openai");
        assert_eq!(model.config(), load("tiny").config());
        check(&model, "tiny.text_embeds");
    }
}

#[test]
fn fp16_openai_archive_widens_to_the_same_values() {
    let read = |name: &str| -> Vec<(String, Tensor)> {
        let path = fixtures().join(format!("{name}.safetensors"));
        let mut t = Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (half, full) = (read("tiny_openai_fp16"), read("tiny"));
    assert_eq!(half.len(), full.len());
    for ((key, a), (other, b)) in half.iter().zip(&full) {
        assert_eq!(key, other);
        assert_eq!(a.kind(), tch::Kind::Float, "{key}: stored as {:?}", a.kind());
        let rounded = b.to_kind(tch::Kind::Half).to_kind(tch::Kind::Float);
        assert!(a.equal(&rounded), "{key}: not the fp16 value widened");
    }
    let model = load("tiny_openai_fp16");
    let io = io();
    let err = max_abs(
        &model.encode(&io["ids"]).unwrap_or_else(|e| panic!("{e}")),
        &io["tiny.text_embeds"],
        "fp16",
    );
    eprintln!("fp16 weights: max |Δ| {err:.2e} from the float32 reference");
    assert!(err < 0.05, "fp16-rounded weights moved the embedding by {err}");
}

#[test]
fn rust_tokenizer_gives_the_reference_ids() {
    let io = io();
    let tokenizer = ClipTokenizer::new();
    let texts = metadata_list("texts");
    let classes = metadata_list("classes");
    let prompts: Vec<String> = classes
        .iter()
        .flat_map(|c| TEMPLATES.iter().map(move |t| t.replace("{}", c)))
        .collect();
    for (strings, key) in [(&texts, "ids"), (&prompts, "chain.ids")] {
        let ids: Vec<i64> = strings
            .iter()
            .flat_map(|s| {
                let mut row = tokenizer.tokenize(s, 77);
                row.resize(77, 0);
                row
            })
            .collect();
        let ids = Tensor::from_slice(&ids).reshape([strings.len() as i64, 77]);
        assert!(
            ids.equal(&io[key]),
            "{key}: the Rust tokenizer's ids differ from open_clip's"
        );
    }
}

#[test]
fn class_embeddings_match_the_restatement() {
    let io = io();
    let model = load("tiny");
    let psi = Psi::load(&fixtures().join("psi.safetensors"), Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let per_template = model.encode(&io["chain.ids"]).unwrap_or_else(|e| panic!("{e}"));
    let err_text = max_abs(
        &per_template.reshape([-1, 7, 512]),
        &io["chain.per_template"],
        "chain.per_template",
    );
    let classes = metadata_list("classes");
    let names: Vec<&str> = classes.iter().map(String::as_str).collect();
    let embeddings = model
        .class_embeddings(&ClipTokenizer::new(), &psi, &names)
        .unwrap_or_else(|e| panic!("{e}"));
    let err = max_abs(&embeddings, &io["chain.classes"], "chain.classes");
    eprintln!("class chain: per-template max |Δ| {err_text:.2e}, class embeddings max |Δ| {err:.2e}");
    assert!(err_text <= TOLERANCE, "per-template embeddings: {err_text:.3e}");
    assert!(
        err <= CLASS_TOLERANCE,
        "class embeddings: max |Δ| {err:.3e} > {CLASS_TOLERANCE:e}"
    );
    let empty = model
        .class_embeddings(&ClipTokenizer::new(), &psi, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(empty.size(), [0, 48]);
}

#[test]
fn converter_names_unknown_and_missing_keys() {
    let path = fixtures().join("refusals.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let messages: HashMap<String, String> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    for (case, expected) in [
        ("openai_unknown", "unknown key: transformer.resblocks.1.attn.extra"),
        ("openai_missing", "missing key: ln_final.bias"),
        (
            "hf_unknown",
            "unknown key: text_model.encoder.layers.0.self_attn.rotary.weight",
        ),
        (
            "hf_missing",
            "missing key: text_model.encoder.layers.1.self_attn.k_proj.weight",
        ),
    ] {
        let message = messages.get(case).map(String::as_str).unwrap_or("");
        assert!(message.starts_with(expected), "{case}: converter said `{message}`");
    }
}
