//! `mrdino_model::clip_tokenizer` against CLIP's own tokenizer (OpenAI's SimpleTokenizer as open_clip ships it,
//! with ftfy) on >= 1,000 strings (`tools/reference/clip_tokenizer_fixtures.py`): identical 77-id rows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;

use mrdino_model::clip_tokenizer::{ClipTokenizer, CONTEXT_LENGTH};

#[derive(serde::Deserialize)]
struct Row {
    text: String,
    ids: Vec<i64>,
}

#[test]
fn ids_equal_clip_tokenize_on_the_corpus() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("clip_tokenizer.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/clip_tokenizer_fixtures.py");
    let py = std::env::var_os("MRDINO_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/mrdino/venv/bin/python")
    });
    let run = Command::new(&py).arg(&script).arg(&out).output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} with {} ({e}); `make venv` creates the venv",
            script.display(),
            py.display()
        )
    });
    assert!(
        run.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let rows: Vec<Row> = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert!(rows.len() >= 1000, "{} strings", rows.len());
    let tokenizer = ClipTokenizer::new();
    let mismatches: Vec<String> = rows
        .iter()
        .filter_map(|row| {
            let ids = tokenizer.tokenize(&row.text, CONTEXT_LENGTH);
            (ids != row.ids).then(|| format!("{:?}\n  mrdino {:?}\n  clip   {:?}", row.text, ids, row.ids))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        rows.len(),
        mismatches.join("\n")
    );
    assert!(
        rows.iter().any(|r| r.ids[76] == 49407),
        "the corpus has over-long prompts"
    );
}
