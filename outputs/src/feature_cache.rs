//! The feature cache: frozen-backbone features of a dataset's views, one safetensors shard per unit, so
//! extraction scales out (one unit per array task) and training reads features without running the backbone.
//!
//! ```text
//! CACHE/shards/<unit_key>.safetensors   tensor `features` (N, P, C) in f16 or bf16, metadata `mrdino.feature_shard`
//! CACHE/_done/<unit_key>.json           done marker, written after the shard
//! ```
//! `<unit_key>` is [`crate::layout::unit_key`] of the unit id (a sequence), as `labels` names its files. The
//! shard metadata ([`ShardMeta`], JSON) names the backbone and its weights' SHA-256, the block whose tokens
//! were taken, the image and patch-grid sizes, the normalisation, the dtype, and the view keys
//! (sequence id, frame index, window offset) in row order. A unit without a done marker does not exist for
//! readers, so a crash during extraction never exposes a partial shard; shards are written atomically anyway.
//!
//! Readers open every done unit in sorted key order, check that all shards agree on backbone, layer, sizes and
//! dtype (naming the first shard that does not), and read single rows by file offset, so a cache larger than
//! memory trains fine. This crate does not know libtorch: rows come back as bytes plus their dtype.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorInfo};
use serde::{Deserialize, Serialize};

use crate::atomic::{write_atomic, OutputError};
use crate::checkpoint::RawTensor;
use crate::layout::unit_key;

/// Name of the feature tensor in a shard.
pub const FEATURES_TENSOR: &str = "features";
/// Metadata key of [`ShardMeta`].
pub const META_SHARD: &str = "mrdino.feature_shard";

/// One view: a frame of a sequence, or a window of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ViewKey {
    pub sequence_id: String,
    pub frame_index: u64,
    /// `[x, y]` offset in px of the window in the resized image (KITTI inference windows start at x = −126);
    /// `None` for the whole image.
    pub window: Option<[i64; 2]>,
}

/// What a shard holds; identical in every shard of a cache except `unit` and `views`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub unit: String,
    /// Backbone name as on the command line (`dinov2-vitb14`, …).
    pub backbone: String,
    /// The backbone weights' identity ([`crate::weights_id`], `tensors-sha256:…`; caches of earlier versions hold
    /// the SHA-256 of the weights file). The field keeps its name so caches stay readable.
    pub backbone_sha256: String,
    /// Index of the block whose (final-normed) patch tokens were taken.
    pub layer: i64,
    pub image_height: i64,
    pub image_width: i64,
    pub grid_height: i64,
    pub grid_width: i64,
    /// E.g. `imagenet` (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225).
    pub normalisation: String,
    /// `f16` or `bf16`.
    pub dtype: String,
    pub views: Vec<ViewKey>,
}

impl ShardMeta {
    /// The backbone's patch in pixels (view height over grid height), `None` when the grid does not divide the view.
    pub fn patch_px(&self) -> Option<i64> {
        (self.grid_height > 0 && self.image_height % self.grid_height == 0)
            .then(|| self.image_height / self.grid_height)
    }

    /// The fields every shard of one cache must share, for comparison.
    fn signature(&self) -> (String, String, i64, i64, i64, i64, i64, String, String) {
        (
            self.backbone.clone(),
            self.backbone_sha256.clone(),
            self.layer,
            self.image_height,
            self.image_width,
            self.grid_height,
            self.grid_width,
            self.normalisation.clone(),
            self.dtype.clone(),
        )
    }
}

/// The done marker of a shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardDone {
    pub unit: String,
    pub rows: usize,
    pub shard: String,
}

fn dtype_name(dtype: Dtype) -> Option<&'static str> {
    match dtype {
        Dtype::F16 => Some("f16"),
        Dtype::BF16 => Some("bf16"),
        _ => None,
    }
}

/// Writes shards into `CACHE/`.
#[derive(Clone, Debug)]
pub struct FeatureCacheWriter {
    dir: PathBuf,
}

impl FeatureCacheWriter {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    pub fn shard_file(&self, unit_id: &str) -> PathBuf {
        self.dir
            .join("shards")
            .join(format!("{}.safetensors", unit_key(unit_id)))
    }

    pub fn done_marker(&self, unit_id: &str) -> PathBuf {
        self.dir.join("_done").join(format!("{}.json", unit_key(unit_id)))
    }

    pub fn is_done(&self, unit_id: &str) -> bool {
        self.done_marker(unit_id).is_file()
    }

    /// Writes one unit's shard (features (N, P, C) in f16/bf16, N = `meta.views.len()`, P = grid h·w), then
    /// its done marker. `meta.unit` and `meta.dtype` must match the unit and the tensor.
    pub fn write_shard(&self, meta: &ShardMeta, features: &RawTensor) -> Result<PathBuf, OutputError> {
        let path = self.shard_file(&meta.unit);
        let bad = |m: String| OutputError::format(&path, m);
        let Some(dtype) = dtype_name(features.dtype) else {
            return Err(bad(format!("features must be f16 or bf16, got {:?}", features.dtype)));
        };
        if dtype != meta.dtype {
            return Err(bad(format!("metadata says dtype {}, tensor is {dtype}", meta.dtype)));
        }
        let p = (meta.grid_height * meta.grid_width) as usize;
        let ok_shape = features.shape.len() == 3 && features.shape[0] == meta.views.len() && features.shape[1] == p;
        if !ok_shape {
            return Err(bad(format!(
                "features shape {:?} does not match {} views of {p} patches",
                features.shape,
                meta.views.len()
            )));
        }
        let json = serde_json::to_string(meta).map_err(|e| bad(e.to_string()))?;
        let file = crate::checkpoint::TensorFile {
            tensors: vec![RawTensor {
                name: FEATURES_TENSOR.into(),
                ..features.clone()
            }],
            metadata: [(META_SHARD.to_string(), json)].into_iter().collect(),
        };
        crate::checkpoint::write_tensor_file(&path, &file)?;
        let done = ShardDone {
            unit: meta.unit.clone(),
            rows: meta.views.len(),
            shard: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let marker = self.done_marker(&meta.unit);
        let bytes = serde_json::to_vec_pretty(&done).map_err(|e| OutputError::format(&marker, e))?;
        write_atomic(&marker, &bytes)?;
        Ok(path)
    }
}

/// One done shard, opened for row reads.
#[derive(Debug)]
pub struct Shard {
    pub path: PathBuf,
    pub meta: ShardMeta,
    file: File,
    /// Byte offset of row 0 in the file.
    data_offset: u64,
    row_bytes: usize,
}

/// A feature cache opened for reading.
#[derive(Debug)]
pub struct FeatureCache {
    pub dir: PathBuf,
    /// Sorted by unit key.
    pub shards: Vec<Shard>,
    /// (shard, row) of every view, shards in order, rows in order.
    index: Vec<(usize, usize)>,
    pub channels: usize,
    pub dtype: Dtype,
}

impl FeatureCache {
    /// Opens every done shard of `dir`; errors name the shard that is unreadable or inconsistent.
    pub fn open(dir: &Path) -> Result<Self, OutputError> {
        let done_dir = dir.join("_done");
        let entries = std::fs::read_dir(&done_dir).map_err(|e| OutputError::io(&done_dir, e))?;
        let mut markers: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json") && !is_hidden(p))
            .collect();
        markers.sort();
        let mut shards = Vec::new();
        for marker in &markers {
            let bytes = std::fs::read(marker).map_err(|e| OutputError::io(marker, e))?;
            let done: ShardDone = serde_json::from_slice(&bytes).map_err(|e| OutputError::format(marker, e))?;
            shards.push(open_shard(&dir.join("shards").join(&done.shard), &done)?);
        }
        let Some(first) = shards.first() else {
            return Err(OutputError::format(dir, "feature cache has no done shard"));
        };
        let signature = first.meta.signature();
        let dtype = if first.meta.dtype == "bf16" {
            Dtype::BF16
        } else {
            Dtype::F16
        };
        let channels = first.row_bytes / 2 / (first.meta.grid_height * first.meta.grid_width).max(1) as usize;
        for s in &shards {
            if s.meta.signature() != signature || s.row_bytes != first.row_bytes {
                return Err(OutputError::format(
                    &s.path,
                    format!(
                        "shard disagrees with {} on backbone, layer, sizes or dtype",
                        first.path.display()
                    ),
                ));
            }
        }
        let index = shards
            .iter()
            .enumerate()
            .flat_map(|(i, s)| (0..s.meta.views.len()).map(move |r| (i, r)))
            .collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            shards,
            index,
            channels,
            dtype,
        })
    }

    pub fn n_views(&self) -> usize {
        self.index.len()
    }

    /// Patches per view (grid h · w).
    pub fn n_patches(&self) -> usize {
        self.shards
            .first()
            .map_or(0, |s| (s.meta.grid_height * s.meta.grid_width) as usize)
    }

    /// The common metadata (that of the first shard).
    pub fn meta(&self) -> &ShardMeta {
        &self.shards[0].meta
    }

    pub fn view_key(&self, view: usize) -> Option<&ViewKey> {
        let &(s, r) = self.index.get(view)?;
        self.shards[s].meta.views.get(r)
    }

    /// Bytes of one view (P · C elements of [`FeatureCache::dtype`]), appended to `out`.
    pub fn read_view(&self, view: usize, out: &mut Vec<u8>) -> Result<(), OutputError> {
        let Some(&(s, r)) = self.index.get(view) else {
            return Err(OutputError::format(
                &self.dir,
                format!("view {view} out of range 0..{}", self.n_views()),
            ));
        };
        let shard = &self.shards[s];
        let start = out.len();
        out.resize(start + shard.row_bytes, 0);
        let offset = shard.data_offset + (r * shard.row_bytes) as u64;
        shard
            .file
            .read_exact_at(&mut out[start..], offset)
            .map_err(|e| OutputError::io(&shard.path, e))
    }
}

fn is_hidden(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn open_shard(path: &Path, done: &ShardDone) -> Result<Shard, OutputError> {
    let file = File::open(path).map_err(|e| OutputError::io(path, e))?;
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0)
        .map_err(|e| OutputError::io(path, e))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > 100_000_000 {
        return Err(OutputError::format(path, "safetensors header too large"));
    }
    let mut head = vec![0u8; 8 + header_len as usize];
    file.read_exact_at(&mut head, 0).map_err(|e| OutputError::io(path, e))?;
    // Only the header is read here (the data stays on disk), so it is parsed as the JSON it is.
    let header: serde_json::Value = serde_json::from_slice(&head[8..])
        .map_err(|e| OutputError::format(path, format!("safetensors header: {e}")))?;
    let json = header
        .get("__metadata__")
        .and_then(|m| m.get(META_SHARD))
        .and_then(|v| v.as_str())
        .ok_or_else(|| OutputError::format(path, format!("no `{META_SHARD}` metadata")))?;
    let meta: ShardMeta = serde_json::from_str(json).map_err(|e| OutputError::format(path, e))?;
    let info: TensorInfo = header
        .get(FEATURES_TENSOR)
        .cloned()
        .ok_or_else(|| OutputError::format(path, format!("no `{FEATURES_TENSOR}` tensor")))
        .and_then(|v| serde_json::from_value(v).map_err(|e| OutputError::format(path, e)))?;
    let expected = dtype_name(info.dtype);
    if expected != Some(meta.dtype.as_str()) {
        return Err(OutputError::format(
            path,
            format!("tensor dtype {:?} vs metadata {}", info.dtype, meta.dtype),
        ));
    }
    let rows = info.shape.first().copied().unwrap_or(0);
    if rows != meta.views.len() || rows != done.rows || info.shape.len() != 3 {
        return Err(OutputError::format(
            path,
            format!(
                "shape {:?} does not match {} views ({} in the done marker)",
                info.shape,
                meta.views.len(),
                done.rows
            ),
        ));
    }
    let row_bytes = info.shape[1] * info.shape[2] * info.dtype.size();
    let data_offset = 8 + header_len + info.data_offsets.0 as u64;
    Ok(Shard {
        path: path.to_path_buf(),
        meta,
        file,
        data_offset,
        row_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(unit: &str, n: usize) -> ShardMeta {
        ShardMeta {
            unit: unit.into(),
            backbone: "test-conv".into(),
            backbone_sha256: "00".into(),
            layer: 0,
            image_height: 28,
            image_width: 28,
            grid_height: 2,
            grid_width: 2,
            normalisation: "imagenet".into(),
            dtype: "f16".into(),
            views: (0..n)
                .map(|i| ViewKey {
                    sequence_id: unit.into(),
                    frame_index: i as u64,
                    window: None,
                })
                .collect(),
        }
    }

    fn raw(n: usize, c: usize, base: u16) -> RawTensor {
        let data = (0..n * 4 * c).flat_map(|i| (base + i as u16).to_le_bytes()).collect();
        RawTensor {
            name: "x".into(),
            dtype: Dtype::F16,
            shape: vec![n, 4, c],
            data,
        }
    }

    #[test]
    fn write_then_read_rows_in_unit_order() {
        let dir = tempfile::tempdir().unwrap();
        let w = FeatureCacheWriter::new(dir.path());
        w.write_shard(&meta("seq_b", 2), &raw(2, 3, 100)).unwrap();
        w.write_shard(&meta("seq_a", 1), &raw(1, 3, 0)).unwrap();
        assert!(w.is_done("seq_a"));
        let cache = FeatureCache::open(dir.path()).unwrap();
        assert_eq!((cache.n_views(), cache.n_patches(), cache.channels), (3, 4, 3));
        assert_eq!(cache.view_key(0).unwrap().sequence_id, "seq_a");
        let mut row = Vec::new();
        cache.read_view(2, &mut row).unwrap();
        assert_eq!(row.len(), 4 * 3 * 2);
        assert_eq!(u16::from_le_bytes([row[0], row[1]]), 100 + 12);
        assert!(cache.read_view(3, &mut row).is_err());
    }

    #[test]
    fn inconsistent_or_wrong_shards_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let w = FeatureCacheWriter::new(dir.path());
        assert!(w.write_shard(&meta("a", 2), &raw(1, 3, 0)).is_err());
        w.write_shard(&meta("a", 1), &raw(1, 3, 0)).unwrap();
        let mut other = meta("b", 1);
        other.layer = 5;
        w.write_shard(&other, &raw(1, 3, 0)).unwrap();
        let err = FeatureCache::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("disagrees"), "{err}");
    }
}
