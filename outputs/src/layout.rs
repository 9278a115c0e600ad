//! Where the labels tables go under `--out OUT`, and the stable hash and file keys of unit ids.
//!
//! ```text
//! OUT/frames/params=<hash>/<unit>.parquet       one file per unit (sequence), hive partition = parameter hash
//! OUT/instances/params=<hash>/<unit>.parquet
//! OUT/_done, _params, _manifest, _plan          bookkeeping of the `labels` job (see `crate::bookkeeping`)
//! ```
//! Labels made with different parameters live in different partitions and are never mixed; readers that
//! open `OUT/frames` as a hive dataset see a `params` column to tell them apart. Names of non-data files start
//! with `_` or `.`, which pandas, pyarrow, polars and duckdb skip.

use std::path::{Path, PathBuf};

use crate::bookkeeping::Ledger;

/// The job kind of `mrdino labels` in the bookkeeping.
pub const LABELS_KIND: &str = "labels";

/// The job kind of `mrdino infer` (prediction runs share the labels layout).
pub const PREDICTIONS_KIND: &str = "predictions";

/// The data directories of a labels root (each holds `params=<hash>` partitions).
pub const LABELS_DATA_DIRS: &[&str] = &["frames", "instances"];

/// What a unit of a labels-layout run (`labels`, `segment`) produced: the payload of its done marker and of its
/// entry in run manifests.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LabelCounts {
    pub frames_decoded: usize,
    pub frame_rows: usize,
    pub quasi_static_frames: usize,
    pub labelled_frames: usize,
    pub instances: usize,
}

/// 64-bit FNV-1a of a string: stable across Rust versions, platforms and runs (unlike `DefaultHasher`).
pub fn stable_hash64(text: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// File-name-safe key of a unit id: readable part plus 8 hex digits of its hash, so distinct ids never
/// collide after sanitising (`2011_09_26_drive_0001_sync/image_02` → `2011_09_26_drive_0001_sync__image_02-1a2b3c4d`).
pub fn unit_key(unit_id: &str) -> String {
    let readable: String = unit_id
        .replace('/', "__")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let readable = readable.trim_start_matches(['.', '_']);
    let readable: String = readable.chars().take(120).collect();
    format!("{readable}-{:08x}", stable_hash64(unit_id) as u32)
}

/// Paths of one output root for one parameter hash.
#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
    pub params_hash: String,
}

impl Layout {
    pub fn new(root: &Path, params_hash: &str) -> Self {
        Self {
            root: root.to_path_buf(),
            params_hash: params_hash.to_string(),
        }
    }

    fn partition(&self) -> String {
        format!("params={}", self.params_hash)
    }

    pub fn frames_dir(&self) -> PathBuf {
        self.root.join("frames").join(self.partition())
    }

    pub fn instances_dir(&self) -> PathBuf {
        self.root.join("instances").join(self.partition())
    }

    pub fn frames_file(&self, unit_id: &str) -> PathBuf {
        self.frames_dir().join(format!("{}.parquet", unit_key(unit_id)))
    }

    pub fn instances_file(&self, unit_id: &str) -> PathBuf {
        self.instances_dir().join(format!("{}.parquet", unit_key(unit_id)))
    }

    /// The bookkeeping of this partition.
    pub fn ledger(&self) -> Ledger {
        Ledger::new(&self.root, LABELS_KIND, &self.params_hash)
    }

    /// The unit's two tables.
    pub fn unit_outputs(&self, unit_id: &str) -> [PathBuf; 2] {
        [self.frames_file(unit_id), self.instances_file(unit_id)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash64(""), 0xcbf29ce484222325);
        assert_eq!(stable_hash64("a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn unit_keys_are_safe_and_distinct() {
        let a = unit_key("2011_09_26_drive_0001_sync/image_02");
        assert!(a.starts_with("2011_09_26_drive_0001_sync__image_02-"));
        assert_ne!(unit_key("a/b"), unit_key("a__b"));
        assert!(!unit_key(".hidden").starts_with('.'));
        assert!(unit_key("x=1;y")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
    }
}
