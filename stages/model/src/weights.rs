//! The one source of weights every model loader reads: a safetensors file (opened here, or already read as a
//! [`TensorFile`], as a model file is) and the one key/shape/dtype check.
//!
//! Contract: a loader names what it expects — a key and its shape ([`WeightSource::take`]), or the whole key set
//! under a prefix ([`WeightSource::check_keys`]) — and gets a tensor or a [`WeightError`] that names the file, the
//! key and both shapes (missing key, wrong shape, unexpected key, non-float dtype, bytes that do not hold the
//! shape). Tensors come out on the CPU in their stored float kind; the loader casts and moves them. Nothing here
//! panics on a file's contents. The identity of the weights ([`mrdino_outputs::weights_id`]) is computed from the
//! same tensors; a file opened here also carries the SHA-256 of its bytes (the earlier identity rule).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mrdino_outputs::checkpoint::{parse_tensor_file, RawTensor, TensorFile};
use mrdino_outputs::tensor_keys::check_keys;
pub use mrdino_outputs::tensor_keys::KeyProblem;
use mrdino_outputs::weights_id::{hex, Identity};
use mrdino_outputs::OutputError;
use safetensors::tensor::Dtype;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

/// Why weights cannot be read from a file: every variant names the file, and the key where one is at fault.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Not a readable safetensors file, or tensors whose identity cannot be computed.
    #[error("{}: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// A missing, misshapen or unexpected key; `model` names what the file was checked against (may be empty).
    #[error("{}: {problem}{}", path.display(), in_model(model))]
    Key {
        path: PathBuf,
        problem: KeyProblem,
        model: String,
    },
    /// A key the loader reads a size from is not there.
    #[error("{}: missing key `{key}`", path.display())]
    Absent { path: PathBuf, key: String },
    #[error("{}: key `{key}` has dtype {dtype}; expected a float type", path.display())]
    Dtype { path: PathBuf, key: String, dtype: String },
    #[error("{}: key `{key}`: {source}", path.display())]
    Tensor {
        path: PathBuf,
        key: String,
        source: tch::TchError,
    },
}

fn in_model(model: &str) -> String {
    if model.is_empty() {
        String::new()
    } else {
        format!(" ({model})")
    }
}

impl WeightError {
    /// The file at fault.
    pub fn path(&self) -> &Path {
        match self {
            Self::Io { path, .. }
            | Self::Format { path, .. }
            | Self::Key { path, .. }
            | Self::Absent { path, .. }
            | Self::Dtype { path, .. }
            | Self::Tensor { path, .. } => path,
        }
    }

    /// The key problem, for a missing, misshapen or unexpected key.
    pub fn key_problem(&self) -> Option<&KeyProblem> {
        match self {
            Self::Key { problem, .. } => Some(problem),
            _ => None,
        }
    }
}

/// The libtorch kind of a float dtype; `None` for every other dtype.
pub fn float_kind(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

/// Shape as signed dimensions, as libtorch takes them.
fn dims(raw: &RawTensor) -> Vec<i64> {
    raw.shape.iter().map(|&d| d as i64).collect()
}

/// Weights read from one file, checked key by key.
#[derive(Debug)]
pub struct WeightSource<'a> {
    path: PathBuf,
    file: Cow<'a, TensorFile>,
    file_sha256: Option<String>,
    model: String,
}

impl WeightSource<'static> {
    /// Reads and parses the safetensors file `path`, keeping the SHA-256 of its bytes.
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let sha = hex(&Sha256::digest(&bytes));
        let file = parse_tensor_file(path, &bytes).map_err(|e| WeightError::Format {
            path: path.to_path_buf(),
            message: match e {
                OutputError::Format { message, .. } => message,
                other => other.to_string(),
            },
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Cow::Owned(file),
            file_sha256: Some(sha),
            model: String::new(),
        })
    }
}

impl<'a> WeightSource<'a> {
    /// The weights of an already-read file (a model file), read from `path`.
    pub fn wrap(file: &'a TensorFile, path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: Cow::Borrowed(file),
            file_sha256: None,
            model: String::new(),
        }
    }

    /// Names the model the keys are checked against in key errors (`backbone \`dinov2_vits14\``).
    pub fn describing(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &TensorFile {
        &self.file
    }

    /// SHA-256 of the file's bytes, for a file opened here.
    pub fn file_sha256(&self) -> Option<&str> {
        self.file_sha256.as_deref()
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.file.meta(key)
    }

    /// The stored shape of `key`, `None` when absent.
    pub fn shape(&self, key: &str) -> Option<Vec<i64>> {
        self.file.get(key).map(dims)
    }

    /// Whether the file holds `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.file.get(key).is_some()
    }

    fn key_error(&self, problem: KeyProblem) -> WeightError {
        WeightError::Key {
            path: self.path.clone(),
            problem,
            model: self.model.clone(),
        }
    }

    /// The error for a missing `key` of `expected` shape.
    pub fn missing(&self, key: &str, expected: &[i64]) -> WeightError {
        self.key_error(KeyProblem::Missing {
            key: key.to_string(),
            expected: expected.to_vec(),
        })
    }

    /// The keys under `prefix` (without it) for which `counts` is true, with their shapes.
    pub fn shapes(&self, prefix: &str, counts: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<i64>> {
        self.file
            .under(prefix)
            .filter(|(name, _)| counts(name))
            .map(|(name, t)| (name.to_string(), dims(t)))
            .collect()
    }

    /// The keys under `prefix` for which `counts` is true must be exactly `expected` with their shapes (keys in
    /// `optional` may be absent): the first wrong key is named.
    pub fn check_keys(
        &self,
        prefix: &str,
        expected: &[(String, Vec<i64>)],
        optional: &[&str],
        counts: impl Fn(&str) -> bool,
    ) -> Result<(), WeightError> {
        check_keys(&self.shapes(prefix, counts), expected, optional).map_err(|p| self.key_error(p))
    }

    /// No key under `prefix` for which `counts` is true may lie outside `known`; the first such key (in name
    /// order) is named.
    pub fn refuse_unexpected(
        &self,
        prefix: &str,
        known: impl Fn(&str) -> bool,
        counts: impl Fn(&str) -> bool,
    ) -> Result<(), WeightError> {
        match self.file.under(prefix).find(|(name, _)| counts(name) && !known(name)) {
            Some((name, t)) => Err(self.key_error(KeyProblem::Unexpected {
                key: format!("{prefix}{name}"),
                found: dims(t),
            })),
            None => Ok(()),
        }
    }

    /// The tensor `key` of shape `expected`, on the CPU in its stored float kind.
    pub fn take(&self, key: &str, expected: &[i64]) -> Result<Tensor, WeightError> {
        let raw = self.file.get(key).ok_or_else(|| self.missing(key, expected))?;
        let found = dims(raw);
        if found != expected {
            return Err(self.key_error(KeyProblem::Shape {
                key: key.to_string(),
                expected: expected.to_vec(),
                found,
            }));
        }
        self.tensor(key, raw)
    }

    /// The stored shape of `key`, which must be there: for a loader that reads a size off the file.
    pub fn require_shape(&self, key: &str) -> Result<Vec<i64>, WeightError> {
        self.shape(key).ok_or_else(|| WeightError::Absent {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn tensor(&self, key: &str, raw: &RawTensor) -> Result<Tensor, WeightError> {
        let kind = float_kind(raw.dtype).ok_or_else(|| WeightError::Dtype {
            path: self.path.clone(),
            key: key.to_string(),
            dtype: format!("{:?}", raw.dtype),
        })?;
        Tensor::f_from_data_size(&raw.data, &dims(raw), kind).map_err(|source| WeightError::Tensor {
            path: self.path.clone(),
            key: key.to_string(),
            source,
        })
    }

    /// The identity of the tensors under `prefix` (named without it) for which `counts` is true; its earlier
    /// value is `earlier`, else the SHA-256 of the file's bytes when the file was opened here.
    pub fn identity(
        &self,
        prefix: &str,
        counts: impl Fn(&str) -> bool,
        earlier: Option<String>,
    ) -> Result<Identity, WeightError> {
        let id = self.file.weights_id(prefix, counts).map_err(|e| WeightError::Format {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        Ok(Identity::new(id, earlier.or_else(|| self.file_sha256.clone())))
    }
}

/// How one tensor of a random-weight file is drawn (the writers of files with a model's key set, for tests and
/// benches).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RandomInit {
    /// `mean + std · N(0, 1)`.
    Normal { mean: f64, std: f64 },
    /// `low + U[0, 1)`.
    Uniform { low: f64 },
}

/// A float32 CPU tensor for every `(key, shape)` of `keys`, drawn as `init(key)` says on libtorch's generator
/// right after `manual_seed(seed)`, in the order of `keys`, holding the generator's lock
/// ([`crate::dinosaur::seeded`]).
pub fn random_tensors(
    keys: Vec<(String, Vec<i64>)>,
    seed: i64,
    init: impl Fn(&str) -> RandomInit,
) -> Result<Vec<(String, Tensor)>, tch::TchError> {
    let opts = (Kind::Float, tch::Device::Cpu);
    crate::dinosaur::seeded(seed, || {
        keys.into_iter()
            .map(|(key, shape)| {
                let t = match init(&key) {
                    RandomInit::Normal { mean, std } => {
                        let t = Tensor::f_randn(shape.as_slice(), opts)?.f_mul_scalar(std)?;
                        // No `+ 0.0`, which would turn a drawn −0.0 into +0.0.
                        if mean == 0.0 { t } else { t.f_add_scalar(mean)? }
                    }
                    RandomInit::Uniform { low } => Tensor::f_rand(shape.as_slice(), opts)?.f_add_scalar(low)?,
                };
                Ok((key, t))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, shape: &[usize], dtype: Dtype) -> RawTensor {
        let n: usize = shape.iter().product();
        RawTensor {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            data: vec![0; n * dtype.size()],
        }
    }

    fn file() -> TensorFile {
        TensorFile {
            tensors: vec![
                raw("a.weight", &[2, 3], Dtype::F32),
                raw("a.z", &[1], Dtype::F32),
                raw("ids", &[4], Dtype::I64),
            ],
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn take_names_the_file_the_key_and_both_shapes() {
        let f = file();
        let source = WeightSource::wrap(&f, Path::new("m.safetensors")).describing("test model");
        assert_eq!(source.take("a.weight", &[2, 3]).unwrap().size(), [2, 3]);
        let shape = source.take("a.weight", &[3, 2]).unwrap_err().to_string();
        assert_eq!(
            shape,
            "m.safetensors: key `a.weight` has shape [2, 3], expected [3, 2] (test model)"
        );
        let missing = source.take("b", &[4]).unwrap_err().to_string();
        assert_eq!(missing, "m.safetensors: missing key `b` (expected shape [4]) (test model)");
        let dtype = source.take("ids", &[4]).unwrap_err().to_string();
        assert_eq!(dtype, "m.safetensors: key `ids` has dtype I64; expected a float type");
    }

    #[test]
    fn unexpected_keys_are_named_under_their_prefix() {
        let f = file();
        let source = WeightSource::wrap(&f, Path::new("m.safetensors"));
        let err = source
            .refuse_unexpected("a.", |k| k == "weight", |_| true)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "m.safetensors: unexpected key `a.z` with shape [1]");
        assert!(source.refuse_unexpected("a.", |k| k == "weight", |k| k != "z").is_ok());
        let expected = vec![("weight".to_string(), vec![2, 3])];
        assert!(source.check_keys("a.", &expected, &[], |k| k != "z").is_ok());
        assert!(source.check_keys("a.", &expected, &[], |_| true).is_err());
    }

    #[test]
    fn a_file_that_is_not_safetensors_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, b"not a file").unwrap();
        let err = WeightSource::open(&path).unwrap_err().to_string();
        assert!(err.contains("x.safetensors") && err.contains("not a safetensors file"), "{err}");
        let gone = WeightSource::open(&dir.path().join("gone.safetensors")).unwrap_err().to_string();
        assert!(gone.contains("gone.safetensors"), "{gone}");
    }
}
