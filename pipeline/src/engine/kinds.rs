//! What kind of output a directory holds, recorded on its first write (`OUT/_kind.json`), so that no command writes
//! one kind of output into another's directory: `infer --out <a labels run>` would mix predictions into the labels
//! tables (readers would then pick the wrong partition), `train --out <a feature cache>` would write a checkpoint
//! among the shards.
//!
//! The kinds are the unit jobs' (`labels`, `flow`, `features`, `predictions`, `names`) and `training` (a run of
//! `train` or `refine`). A directory written before kinds were recorded is recognised by its contents: the kinds
//! in its plans, or a training checkpoint.

use std::path::Path;

use anyhow::{bail, Context, Result};
use mrdino_outputs::checkpoint::CHECKPOINT_FILE;
use mrdino_outputs::write_atomic;

use super::status::recorded_kind;

/// The file recording a directory's kind.
pub const KIND_FILE: &str = "_kind.json";
/// The kind of a training or refinement run directory.
pub const TRAINING_KIND: &str = "training";

/// The kind `dir` holds: its record, else what its contents say (`None` for a new or empty directory).
pub fn kind_of_directory(dir: &Path) -> Result<Option<String>> {
    let record = dir.join(KIND_FILE);
    match std::fs::read(&record) {
        Ok(bytes) => {
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).with_context(|| format!("{}: not a kind record", record.display()))?;
            let kind = value["kind"]
                .as_str()
                .with_context(|| format!("{}: no `kind`", record.display()))?;
            return Ok(Some(kind.to_string()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", record.display())),
    }
    if let Some(kind) = recorded_kind(dir) {
        return Ok(Some(kind));
    }
    Ok(dir.join(CHECKPOINT_FILE).is_file().then(|| TRAINING_KIND.to_string()))
}

/// Refuses `dir` when it holds another kind of output than `kind`, without writing anything (a job calls it
/// before its own checks of the directory, so that the kind is what the message names).
pub fn refuse_other_kind(dir: &Path, kind: &str) -> Result<()> {
    match kind_of_directory(dir)? {
        Some(found) if found != kind => bail!(
            "{} holds `{found}` output, not `{kind}`: write to another directory",
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// Refuses `dir` when it holds another kind of output than `kind`; records `kind` on the first write.
pub fn claim(dir: &Path, kind: &str) -> Result<()> {
    match kind_of_directory(dir)? {
        Some(found) if found != kind => bail!(
            "{} holds `{found}` output, not `{kind}`: write to another directory",
            dir.display()
        ),
        Some(_) if dir.join(KIND_FILE).is_file() => Ok(()),
        _ => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let json = serde_json::to_vec(&serde_json::json!({ "kind": kind }))?;
            write_atomic(&dir.join(KIND_FILE), &json)?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_keeps_the_kind_of_its_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        assert_eq!(kind_of_directory(&out).unwrap(), None);
        claim(&out, "labels").unwrap();
        claim(&out, "labels").unwrap();
        let err = claim(&out, "predictions").unwrap_err().to_string();
        assert!(err.contains("holds `labels` output, not `predictions`"), "{err}");
        // A training run of an earlier version: a checkpoint, no record.
        let old = dir.path().join("old");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join(CHECKPOINT_FILE), b"x").unwrap();
        assert_eq!(kind_of_directory(&old).unwrap().as_deref(), Some(TRAINING_KIND));
        assert!(claim(&old, "features").is_err());
        claim(&old, TRAINING_KIND).unwrap();
    }
}
