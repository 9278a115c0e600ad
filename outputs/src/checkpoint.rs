//! Model files, training checkpoints and the layout of a training run: the one module that knows how they are
//! written (policy — when to save — belongs to the trainer).
//!
//! Format: one safetensors file holding named raw tensors (dtype, shape, little-endian bytes) and a string
//! metadata map. A model file holds the model's parameters under their mrdino keys (optionally the frozen
//! backbone under `backbone.*`); a training checkpoint is a model file that also holds the optimiser moments
//! under [`OPTIMIZER_PREFIX`] and the training state ([`TrainState`], JSON under [`META_TRAIN_STATE`]), so the
//! whole state of a run is one file and a run directory can be given wherever a model file is expected.
//!
//! Invariant: a checkpoint is written to a temporary file in its directory, synced, then renamed over the
//! previous one ([`crate::write_atomic`]), so a `kill -9` at any moment leaves either the old or the new
//! checkpoint, never a mixture. Tensors are written sorted by name (safetensors sorts them anyway), so the bytes
//! of a file depend only on its contents. This crate does not know libtorch: conversion to and from tensors is
//! the model crate's business.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use crate::atomic::{write_atomic, OutputError};
use crate::weights_id::{weights_id, Identity, TensorBytes, WeightsIdError};

/// The checkpoint of a training run, inside the run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Prefix of the optimiser tensors in a checkpoint (`optimizer.exp_avg.<key>`, `optimizer.exp_avg_sq.<key>`).
pub const OPTIMIZER_PREFIX: &str = "optimizer.";
/// Prefix of the frozen backbone's tensors in a complete model file (`backbone.blocks.0.attn.qkv.weight`, …).
pub const BACKBONE_PREFIX: &str = "backbone.";

/// Metadata keys.
pub const META_FORMAT: &str = "mrdino.format";
pub const META_MODEL_CONFIG: &str = "mrdino.model_config";
pub const META_PARAMS: &str = "mrdino.params";
pub const META_CODE_VERSION: &str = "mrdino.code_version";
pub const META_BACKBONE: &str = "mrdino.backbone";
pub const META_BACKBONE_SHA256: &str = "mrdino.backbone_sha256";
pub const META_STAGE: &str = "mrdino.stage";
pub const META_TRAIN_STATE: &str = "mrdino.train_state";
pub const META_SOURCE: &str = "mrdino.source";
/// The latest collapse verdict of a training checkpoint (JSON), once the run has reached a check step.
pub const META_COLLAPSE: &str = "mrdino.collapse";

/// `mrdino.format` values.
pub const FORMAT_MODEL: &str = "mrdino-model-v1";
pub const FORMAT_CHECKPOINT: &str = "mrdino-checkpoint-v1";

/// One tensor as bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Little-endian element bytes, row-major; `len = product(shape) · dtype.size()`.
    pub data: Vec<u8>,
}

/// The contents of a model file or checkpoint.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// Sorted by name.
    pub tensors: Vec<RawTensor>,
    pub metadata: BTreeMap<String, String>,
}

impl TensorFile {
    pub fn get(&self, name: &str) -> Option<&RawTensor> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.tensors[i])
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The tensors whose names start with `prefix`, with the prefix removed, in name order.
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a RawTensor)> + 'a {
        self.tensors
            .iter()
            .filter_map(move |t| t.name.strip_prefix(prefix).map(|name| (name, t)))
    }

    /// The weights identity ([`crate::weights_id`]) of the tensors under `prefix` (named without it) for which
    /// `counts` is true.
    pub fn weights_id(&self, prefix: &str, counts: impl Fn(&str) -> bool) -> Result<String, WeightsIdError> {
        weights_id(
            self.under(prefix)
                .filter(|(name, _)| counts(name))
                .map(|(name, t)| TensorBytes {
                    name,
                    dtype: t.dtype,
                    shape: &t.shape,
                    data: &t.data,
                }),
        )
    }
}

/// State of a training run besides weights and moments, stored as JSON in the checkpoint's metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps done.
    pub step: u64,
    /// Samples drawn so far (`step · batch_size`); the next sample's index.
    pub next_sample: u64,
    /// The state of the run's own random generator (SplitMix64) after `step` steps.
    pub rng_state: u64,
    /// Per-parameter Adam step counts, by parameter key.
    pub optimizer_steps: BTreeMap<String, u64>,
    /// Seconds of training so far (over all resumed runs).
    pub elapsed_s: f64,
}

/// The identity of the model in a model file or checkpoint: its tensors without the optimiser state and without
/// an embedded backbone (which has an identity of its own); `file_sha256` is the earlier rule's value.
pub fn model_identity(file: &TensorFile, file_sha256: String) -> Result<Identity, WeightsIdError> {
    let id = file.weights_id("", |name| {
        !name.starts_with(OPTIMIZER_PREFIX) && !name.starts_with(BACKBONE_PREFIX)
    })?;
    Ok(Identity::new(id, Some(file_sha256)))
}

/// Writes `file` atomically to `path` (tensors sorted by name).
pub fn write_tensor_file(path: &Path, file: &TensorFile) -> Result<(), OutputError> {
    let mut sorted: Vec<&RawTensor> = file.tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut views = Vec::with_capacity(sorted.len());
    for t in &sorted {
        let view = TensorView::new(t.dtype, t.shape.clone(), &t.data)
            .map_err(|e| OutputError::format(path, format!("tensor `{}`: {e:?}", t.name)))?;
        views.push((t.name.clone(), view));
    }
    let metadata: HashMap<String, String> = file.metadata.clone().into_iter().collect();
    let bytes =
        safetensors::serialize(views, &Some(metadata)).map_err(|e| OutputError::format(path, format!("{e:?}")))?;
    write_atomic(path, &bytes)
}

/// Reads a safetensors file with its metadata.
pub fn read_tensor_file(path: &Path) -> Result<TensorFile, OutputError> {
    let bytes = std::fs::read(path).map_err(|e| OutputError::io(path, e))?;
    parse_tensor_file(path, &bytes)
}

/// [`read_tensor_file`], also returning the SHA-256 of the file's bytes (the weights identity of earlier
/// versions, see [`crate::weights_id`]).
pub fn read_tensor_file_hashed(path: &Path) -> Result<(TensorFile, String), OutputError> {
    let bytes = std::fs::read(path).map_err(|e| OutputError::io(path, e))?;
    let sha = crate::weights_id::hex(&Sha256::digest(&bytes));
    Ok((parse_tensor_file(path, &bytes)?, sha))
}

/// Parses safetensors bytes; `path` only names the source in errors.
pub fn parse_tensor_file(path: &Path, bytes: &[u8]) -> Result<TensorFile, OutputError> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| OutputError::format(path, format!("not a safetensors file: {e:?}")))?;
    let metadata: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let st = SafeTensors::deserialize(bytes).map_err(|e| OutputError::format(path, format!("{e:?}")))?;
    let mut tensors: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| RawTensor {
            name,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(TensorFile { tensors, metadata })
}

/// The files of a training run directory.
#[derive(Clone, Debug)]
pub struct RunLayout {
    pub dir: PathBuf,
}

impl RunLayout {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// Weights, moments and state: the file a resume reads and `--model RUN` loads.
    pub fn checkpoint_file(&self) -> PathBuf {
        self.dir.join(CHECKPOINT_FILE)
    }

    /// One JSON object per logging step.
    pub fn metrics_file(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// The loss curve, rewritten at each checkpoint.
    pub fn loss_plot_file(&self) -> PathBuf {
        self.dir.join("loss.svg")
    }

    /// The resolved parameters of the run (JSON).
    pub fn params_file(&self) -> PathBuf {
        self.dir.join("params.json")
    }
}

/// A model file (or a run directory's checkpoint): its path, contents and the identity of the model it holds.
pub fn read_model_file(path: &Path) -> Result<(PathBuf, TensorFile, Identity), OutputError> {
    let path = resolve_model_path(path);
    let (file, file_sha256) = read_tensor_file_hashed(&path)?;
    let identity = model_identity(&file, file_sha256).map_err(|e| OutputError::format(&path, e))?;
    Ok((path, file, identity))
}

/// The model file behind `path`: the file itself, or the checkpoint of a run directory.
pub fn resolve_model_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        RunLayout::new(path).checkpoint_file()
    } else {
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CHECKPOINT_FILE);
        let mut file = TensorFile::default();
        file.tensors.push(RawTensor {
            name: "b".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            data: [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        file.tensors.push(RawTensor {
            name: "a".into(),
            dtype: Dtype::U8,
            shape: vec![3],
            data: vec![1, 2, 3],
        });
        file.metadata.insert(META_FORMAT.into(), FORMAT_CHECKPOINT.into());
        write_tensor_file(&path, &file).unwrap();
        let back = read_tensor_file(&path).unwrap();
        assert_eq!(back.tensors[0].name, "a");
        assert_eq!(back.get("b").unwrap().data, file.tensors[0].data);
        assert_eq!(back.meta(META_FORMAT), Some(FORMAT_CHECKPOINT));
        file.tensors[1].data = vec![9, 9, 9];
        write_tensor_file(&path, &file).unwrap();
        assert_eq!(read_tensor_file(&path).unwrap().get("a").unwrap().data, vec![9, 9, 9]);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporaries left: {names:?}");
        assert_eq!(resolve_model_path(dir.path()), path);
    }

    #[test]
    fn bad_view_is_an_error_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mut file = TensorFile::default();
        file.tensors.push(RawTensor {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            data: vec![0; 3],
        });
        let err = write_tensor_file(&path, &file).unwrap_err().to_string();
        assert!(err.contains("`w`"), "{err}");
        assert!(read_tensor_file(&dir.path().join("missing")).is_err());
    }
}
