//! Conversion between `tch` tensors and the raw tensors of `mrdino_outputs` (dtype, shape, little-endian bytes).
//!
//! The outputs crate knows files, not libtorch; this module is the only bridge. Conversions copy; a tensor
//! goes to CPU and becomes contiguous before its bytes are read. Supported dtypes: f32, f64, f16, bf16, i64,
//! i32, u8, bool.

use mrdino_outputs::checkpoint::RawTensor;
use safetensors::tensor::Dtype;
use tch::{Device, Kind, Tensor};

/// A dtype that has no libtorch equivalent here, or data whose length does not match the shape.
#[derive(Debug, thiserror::Error)]
pub enum TensorConvError {
    #[error("tensor `{name}`: unsupported dtype {dtype}")]
    Dtype { name: String, dtype: String },
    #[error("tensor `{name}`: {bytes} bytes do not hold shape {shape:?} of {dtype}")]
    Length {
        name: String,
        bytes: usize,
        shape: Vec<usize>,
        dtype: String,
    },
    #[error("tensor `{name}`: {source}")]
    Torch { name: String, source: tch::TchError },
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

fn dtype_of(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// The raw tensor as a `tch` tensor on `device`.
pub fn to_tch(raw: &RawTensor, device: Device) -> Result<Tensor, TensorConvError> {
    let kind = kind_of(raw.dtype).ok_or_else(|| TensorConvError::Dtype {
        name: raw.name.clone(),
        dtype: format!("{:?}", raw.dtype),
    })?;
    let numel: usize = raw.shape.iter().product();
    if numel * raw.dtype.size() != raw.data.len() {
        return Err(TensorConvError::Length {
            name: raw.name.clone(),
            bytes: raw.data.len(),
            shape: raw.shape.clone(),
            dtype: format!("{:?}", raw.dtype),
        });
    }
    let shape: Vec<i64> = raw.shape.iter().map(|&d| d as i64).collect();
    let torch = |source| TensorConvError::Torch {
        name: raw.name.clone(),
        source,
    };
    Tensor::f_from_data_size(&raw.data, &shape, kind)
        .and_then(|t| t.f_to_device(device))
        .map_err(torch)
}

/// The tensor's bytes under `name` (its own dtype).
pub fn from_tch(name: &str, tensor: &Tensor) -> Result<RawTensor, TensorConvError> {
    let kind = tensor.kind();
    let dtype = dtype_of(kind).ok_or_else(|| TensorConvError::Dtype {
        name: name.to_string(),
        dtype: format!("{kind:?}"),
    })?;
    let torch = |source| TensorConvError::Torch {
        name: name.to_string(),
        source,
    };
    let t = tensor
        .f_detach()
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * dtype.size()];
    t.f_copy_data_u8(&mut data, numel).map_err(torch)?;
    Ok(RawTensor {
        name: name.to_string(),
        dtype,
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data,
    })
}
