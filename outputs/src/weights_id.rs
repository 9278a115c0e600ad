//! The identity of a set of weights: one function of the tensors, never of the file that holds them.
//!
//! Every output that depends on weights (flow parameters of a labels run or flow export, a feature cache, a
//! training or refinement run, a converted checkpoint, predictions, names) records the weights by this
//! identity, and every reader compares by it. Because it is computed from the tensors, converting the same
//! weights again, re-saving them with another tensor order or other metadata, or embedding them in a model file
//! (`backbone.*`) keeps the identity; changing any value changes it.
//!
//! # Definition (`tensors-sha256`)
//!
//! SHA-256 over the tensors sorted by name; for each tensor: the name's UTF-8 bytes, a 0 byte, one class byte
//! (`f` for floating point, `i` for integer and boolean), the rank as u64 little-endian, each dimension as u64
//! little-endian, then every element in row-major order — floating-point values as float32 little-endian
//! (f16, bf16 widen exactly; f64 is rounded to float32), integers and booleans as i64 little-endian. The
//! identity is written `tensors-sha256:<64 lower-case hex digits>`. Which tensors count is the model's business:
//! the tensors it reads, under their canonical names without a container prefix (a ViT's identity leaves out
//! DINOv2's unused `mask_token`). `tools/weights_id.py` computes the same value in Python for the converters.
//!
//! # Identities recorded by earlier versions
//!
//! Earlier versions recorded the SHA-256 of the weights *file's bytes* (64 hex digits without a scheme; seeded
//! test backbones: the SHA-256 of their float32 values). [`Identity`] carries that earlier value beside the
//! current one for the weights at hand, and [`Identity::matches`] accepts a recorded earlier value when it is the
//! one the weights at hand give under the earlier rule — the same file, byte for byte. Runs, caches and model
//! files written by earlier versions therefore keep working with the very weights file they were made with; with
//! any other file the reader refuses, naming both values.

use std::fmt;
use std::path::Path;

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};

/// Prefix of every identity written by this rule.
pub const SCHEME: &str = "tensors-sha256:";

/// A tensor as the identity sees it: name, element type, shape and little-endian element bytes.
#[derive(Clone, Copy, Debug)]
pub struct TensorBytes<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

/// Why a tensor cannot be part of an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WeightsIdError {
    #[error("tensor `{name}` has element type {dtype}, which weights cannot have")]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}` holds {found} bytes, but its shape {shape:?} of {dtype} needs {expected}")]
    Size {
        name: String,
        dtype: String,
        shape: Vec<usize>,
        expected: usize,
        found: usize,
    },
    #[error("tensor `{name}` appears twice")]
    Duplicate { name: String },
}

/// How an element type is hashed.
enum Class {
    Float,
    Int,
}

fn class(dtype: Dtype) -> Option<(Class, usize)> {
    Some(match dtype {
        Dtype::F16 | Dtype::BF16 => (Class::Float, 2),
        Dtype::F32 => (Class::Float, 4),
        Dtype::F64 => (Class::Float, 8),
        Dtype::BOOL | Dtype::U8 | Dtype::I8 => (Class::Int, 1),
        Dtype::I16 | Dtype::U16 => (Class::Int, 2),
        Dtype::I32 | Dtype::U32 => (Class::Int, 4),
        Dtype::I64 | Dtype::U64 => (Class::Int, 8),
        _ => return None,
    })
}

/// Element `chunk` (little-endian bytes of `dtype`) as float32 or i64 bytes.
fn normalised(dtype: Dtype, chunk: &[u8], out: &mut Vec<u8>) {
    let b = |n: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(&chunk[..n]);
        a
    };
    match dtype {
        Dtype::F16 => out.extend_from_slice(&f16_to_f32(u16::from_le_bytes([chunk[0], chunk[1]])).to_le_bytes()),
        Dtype::BF16 => {
            out.extend_from_slice(&f32::from_bits(u32::from(u16::from_le_bytes([chunk[0], chunk[1]])) << 16).to_le_bytes())
        }
        Dtype::F32 => out.extend_from_slice(&chunk[..4]),
        Dtype::F64 => out.extend_from_slice(&(f64::from_le_bytes(b(8)) as f32).to_le_bytes()),
        Dtype::BOOL | Dtype::U8 => out.extend_from_slice(&i64::from(chunk[0]).to_le_bytes()),
        Dtype::I8 => out.extend_from_slice(&i64::from(chunk[0] as i8).to_le_bytes()),
        Dtype::I16 => out.extend_from_slice(&i64::from(i16::from_le_bytes([chunk[0], chunk[1]])).to_le_bytes()),
        Dtype::U16 => out.extend_from_slice(&i64::from(u16::from_le_bytes([chunk[0], chunk[1]])).to_le_bytes()),
        Dtype::I32 => out.extend_from_slice(&i64::from(i32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])).to_le_bytes()),
        Dtype::U32 => out.extend_from_slice(&i64::from(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])).to_le_bytes()),
        // i64 and u64 keep their bits.
        _ => out.extend_from_slice(&b(8)),
    }
}

/// IEEE half → single, exact.
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: normalise.
            let shift = m.leading_zeros() - 21;
            let m = (m << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// The identity of `tensors` (any order; names must be unique).
pub fn weights_id<'a>(tensors: impl IntoIterator<Item = TensorBytes<'a>>) -> Result<String, WeightsIdError> {
    let mut sorted: Vec<TensorBytes<'a>> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(b.name));
    if let Some(w) = sorted.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(WeightsIdError::Duplicate {
            name: w[0].name.to_string(),
        });
    }
    let mut hasher = Sha256::new();
    let mut buffer = Vec::new();
    for t in &sorted {
        let dtype_name = format!("{:?}", t.dtype);
        let Some((class, size)) = class(t.dtype) else {
            return Err(WeightsIdError::Dtype {
                name: t.name.to_string(),
                dtype: dtype_name,
            });
        };
        let expected = t.shape.iter().product::<usize>() * size;
        if t.data.len() != expected {
            return Err(WeightsIdError::Size {
                name: t.name.to_string(),
                dtype: dtype_name,
                shape: t.shape.to_vec(),
                expected,
                found: t.data.len(),
            });
        }
        hasher.update(t.name.as_bytes());
        hasher.update([0, if matches!(class, Class::Float) { b'f' } else { b'i' }]);
        hasher.update((t.shape.len() as u64).to_le_bytes());
        for &d in t.shape {
            hasher.update((d as u64).to_le_bytes());
        }
        // Normalise in bounded chunks so a large tensor never needs a second full copy.
        for block in t.data.chunks(size * 65_536) {
            buffer.clear();
            for chunk in block.chunks_exact(size) {
                normalised(t.dtype, chunk, &mut buffer);
            }
            hasher.update(&buffer);
        }
    }
    Ok(format!("{SCHEME}{}", hex(&hasher.finalize())))
}

/// The identity of float32 tensors given as values (seeded test backbones, tensors built in memory). The caller
/// builds shapes and values together, so they are hashed as given.
pub fn weights_id_f32<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>) -> String {
    let mut sorted: Vec<(&str, &[usize], &[f32])> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = Sha256::new();
    for (name, shape, values) in sorted {
        hasher.update(name.as_bytes());
        hasher.update([0, b'f']);
        hasher.update((shape.len() as u64).to_le_bytes());
        for &d in shape {
            hasher.update((d as u64).to_le_bytes());
        }
        for v in values {
            hasher.update(v.to_le_bytes());
        }
    }
    format!("{SCHEME}{}", hex(&hasher.finalize()))
}

/// The identity of the weights in the safetensors file `bytes` (read from `path`), counting the tensors for which
/// `reads` is true, with the SHA-256 of the bytes as the earlier rule's value.
pub fn file_identity(path: &Path, bytes: &[u8], reads: impl Fn(&str) -> bool) -> Result<Identity, FileIdentityError> {
    let format = |message: String| FileIdentityError::Format {
        path: path.to_path_buf(),
        message,
    };
    let st = SafeTensors::deserialize(bytes).map_err(|e| format(format!("not a safetensors file: {e:?}")))?;
    let mut views = Vec::new();
    for name in st.names() {
        if !reads(name) {
            continue;
        }
        let view = st.tensor(name).map_err(|e| format(format!("tensor `{name}`: {e:?}")))?;
        views.push((name.as_str(), view));
    }
    let id = weights_id(views.iter().map(|(name, view)| TensorBytes {
        name,
        dtype: view.dtype(),
        shape: view.shape(),
        data: view.data(),
    }))
    .map_err(|e| format(e.to_string()))?;
    Ok(Identity::new(id, Some(hex(&Sha256::digest(bytes)))))
}

/// A weights file whose identity cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileIdentityError {
    #[error("{path}: {message}")]
    Format { path: std::path::PathBuf, message: String },
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's bytes, the identity rule of earlier versions.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Whether `recorded` is an identity of the earlier rule (a bare SHA-256: 64 hex digits, no scheme).
pub fn is_earlier_rule(recorded: &str) -> bool {
    recorded.len() == 64 && recorded.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The identity of the weights at hand, with the value the earlier rule gives for them when it is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `tensors-sha256:…`.
    pub id: String,
    /// What earlier versions recorded for these weights (the SHA-256 of the file they were read from, or of a
    /// seeded backbone's values); `None` for weights that no earlier version could have recorded.
    pub earlier: Option<String>,
}

impl Identity {
    pub fn new(id: String, earlier: Option<String>) -> Self {
        Self { id, earlier }
    }

    /// Whether `recorded` names these weights: the identity itself, or the earlier rule's value for them.
    pub fn matches(&self, recorded: &str) -> bool {
        recorded == self.id || (is_earlier_rule(recorded) && self.earlier.as_deref() == Some(recorded))
    }

    /// Short form for messages: the scheme and the first 12 hex digits.
    pub fn short(&self) -> String {
        short(&self.id)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// `tensors-sha256:9cb1fc2d0a1b…` or, for an earlier-rule value, `file sha256 9cb1fc2d0a1b…`.
pub fn short(recorded: &str) -> String {
    match recorded.strip_prefix(SCHEME) {
        Some(hex) => format!("{SCHEME}{}…", &hex[..hex.len().min(12)]),
        None if is_earlier_rule(recorded) => format!("file sha256 {}…", &recorded[..12]),
        None => recorded.to_string(),
    }
}

/// Why a recorded identity is not the one of the weights at hand, for messages: says what to do when the
/// recorded value is of the earlier rule.
pub fn mismatch_hint(recorded: &str) -> &'static str {
    if is_earlier_rule(recorded) {
        " (recorded by an earlier mrdino as the SHA-256 of the weights file's bytes: give the very file it was made \
         with, or redo that step with this mrdino to record the tensor identity)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn order_and_storage_type_do_not_change_the_identity_but_values_names_and_shapes_do() {
        let a = f32_bytes(&[1.0, -2.5, 0.125, 3.0]);
        let b = f32_bytes(&[7.0]);
        let t = |name, shape, data| TensorBytes {
            name,
            dtype: Dtype::F32,
            shape,
            data,
        };
        let one = weights_id([t("w", &[2, 2], &a), t("b", &[1], &b)]).unwrap();
        let two = weights_id([t("b", &[1], &b), t("w", &[2, 2], &a)]).unwrap();
        assert_eq!(one, two);
        assert!(one.starts_with(SCHEME) && one.len() == SCHEME.len() + 64);
        // The same values as f16, bf16 and f64 give the same identity (all exactly representable).
        let half: Vec<u8> = [0x3c00u16, 0xc100, 0x3000, 0x4200].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf: Vec<u8> = [1.0f32, -2.5, 0.125, 3.0]
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let double: Vec<u8> = [1.0f64, -2.5, 0.125, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        for (dtype, data) in [(Dtype::F16, &half), (Dtype::BF16, &bf), (Dtype::F64, &double)] {
            let other = weights_id([
                TensorBytes {
                    name: "w",
                    dtype,
                    shape: &[2, 2],
                    data,
                },
                t("b", &[1], &b),
            ])
            .unwrap();
            assert_eq!(other, one, "{dtype:?}");
        }
        let changed = f32_bytes(&[1.0, -2.5, 0.125, 3.0000002]);
        assert_ne!(weights_id([t("w", &[2, 2], &changed), t("b", &[1], &b)]).unwrap(), one);
        assert_ne!(weights_id([t("w", &[4], &a), t("b", &[1], &b)]).unwrap(), one);
        assert_ne!(weights_id([t("v", &[2, 2], &a), t("b", &[1], &b)]).unwrap(), one);
        assert!(matches!(
            weights_id([t("w", &[3], &a)]),
            Err(WeightsIdError::Size { .. })
        ));
        assert!(matches!(
            weights_id([t("w", &[2, 2], &a), t("w", &[2, 2], &a)]),
            Err(WeightsIdError::Duplicate { .. })
        ));
        assert_eq!(
            weights_id_f32([("w", &[2usize, 2][..], &[1.0f32, -2.5, 0.125, 3.0][..]), ("b", &[1][..], &[7.0][..])]),
            one
        );
    }

    #[test]
    fn half_precision_widens_exactly() {
        for bits in 0..=u16::MAX {
            let exp = (bits >> 10) & 0x1f;
            let ours = f16_to_f32(bits);
            // Reference: decode by the definition of binary16.
            let sign = if bits >> 15 == 1 { -1.0f64 } else { 1.0 };
            let mant = f64::from(bits & 0x3ff);
            let expected = match exp {
                0 => sign * mant * 2f64.powi(-24),
                0x1f if mant == 0.0 => sign * f64::INFINITY,
                0x1f => f64::NAN,
                e => sign * (1.0 + mant / 1024.0) * 2f64.powi(i32::from(e) - 15),
            };
            if expected.is_nan() {
                assert!(ours.is_nan());
            } else {
                assert_eq!(f64::from(ours), expected, "{bits:#06x}");
            }
        }
    }

    #[test]
    fn earlier_values_match_only_the_weights_they_were_made_from() {
        let file = "ab".repeat(32);
        let id = Identity::new(format!("{SCHEME}{}", "cd".repeat(32)), Some(file.clone()));
        assert!(id.matches(&id.id));
        assert!(id.matches(&file));
        assert!(!id.matches(&"ef".repeat(32)));
        assert!(!Identity::new(id.id.clone(), None).matches(&file));
        assert!(is_earlier_rule(&file) && !is_earlier_rule(&id.id));
        assert_eq!(short(&file), format!("file sha256 {}…", "ab".repeat(6)));
        assert!(id.short().starts_with("tensors-sha256:cdcd"));
    }
}
