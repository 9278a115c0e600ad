//! The binary's layering holds: a step module (`pipeline/src/steps/<step>`) never imports another step, and the
//! layers below the steps (`engine`, `settings`, `cli`) never import a step. Steps share code only through those
//! layers and the library crates, so one command's change cannot reach into another's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("{e}")).path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The code of a file without comments (line comments and doc comments).
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.split("//").next().unwrap_or("").to_string()))
        .collect()
}

/// The step a file of `steps/` belongs to (`labels` for `steps/labels/unit.rs`).
fn step_of(steps: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(steps).unwrap_or(file);
    let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

/// Every layering violation under `src` (a pipeline source tree), one line each.
fn violations(src: &Path) -> Vec<String> {
    let steps = src.join("steps");
    let mut violations = Vec::new();
    for file in rust_files(&steps) {
        let own = step_of(&steps, &file);
        if own == "mod" {
            continue;
        }
        let top_level = file.parent() == Some(steps.as_path());
        for (n, line) in code_lines(&file) {
            let mut rest = line.as_str();
            while let Some(at) = rest.find("steps::") {
                let after = &rest[at + "steps::".len()..];
                let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name != own {
                    violations.push(format!("{}:{n}: step `{own}` uses step `{name}`", file.display()));
                }
                rest = after;
            }
            // `super::` from a step's top module reaches `steps`; from a step's submodule, the step itself.
            if top_level && line.contains("super::") && !line.trim_start().starts_with("use super::*") {
                violations.push(format!("{}:{n}: a step reaches its siblings through `super::`", file.display()));
            }
        }
    }
    for layer in ["engine", "settings", "cli"] {
        let dir = src.join(layer);
        if !dir.is_dir() {
            continue;
        }
        for file in rust_files(&dir) {
            for (n, line) in code_lines(&file) {
                if line.contains("steps::") {
                    violations.push(format!("{}:{n}: layer `{layer}` uses a step", file.display()));
                }
            }
        }
    }
    violations
}

#[test]
fn no_step_imports_another_step_and_no_layer_imports_a_step() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(found.is_empty(), "layering violations:\n{}", found.join("\n"));
}

#[test]
fn a_violation_is_found_and_a_step_may_use_itself() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let src = dir.path();
    let write = |rel: &str, text: &str| {
        let path = src.join(rel);
        std::fs::create_dir_all(path.parent().unwrap_or(src)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
    };
    write("steps/mod.rs", "pub mod labels;\npub mod name;\n");
    write("steps/labels/unit.rs", "use crate::steps::labels::Totals; use super::x;\n");
    write("steps/name.rs", "// crate::steps::report in a comment is fine\nuse crate::steps::name::y;\n");
    write("engine/job.rs", "pub fn f() {}\n");
    assert!(violations(src).is_empty(), "{:?}", violations(src));
    write("steps/name.rs", "use crate::steps::report::x;\n");
    write("engine/job.rs", "use crate::steps::labels::JOB;\n");
    let found = violations(src);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("step `name` uses step `report`"), "{found:?}");
    assert!(found[1].contains("layer `engine` uses a step"), "{found:?}");
}
