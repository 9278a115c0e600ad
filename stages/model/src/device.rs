//! Device and precision selection for the model stages: `--device auto|cpu|cuda:N` and `--precision`.
//!
//! Contract: [`parse_device`] never panics; `auto` is the first CUDA device when libtorch sees one, else the CPU;
//! `cuda:N` is refused when libtorch does not see device N (the error names how many it sees). The same rules as
//! the flow stage's `--device` in the binary, so every command reads the flag the same way.
//!
//! [`Precision`] is how a network runs on its device. CPU runs stay float32 (the parity tests and the reference
//! numbers are float32, and libtorch's CPU half kernels are slow); on CUDA `f16` runs the forward under libtorch
//! autocast (matmuls and convolutions in half, LayerNorm, softmax and reductions in float32 — what
//! `torch.autocast("cuda")` does), and `bf16` casts the weights to bfloat16 (libtorch's C API exposes no
//! autocast dtype setter, so bf16 is a cast, not an autocast; LayerNorm still accumulates in float32 on CUDA).

use tch::{Device, Kind};

/// Errors of reading a device or precision flag; the offending text is named.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}` (expected auto, cpu or cuda:N)")]
    Unknown(String),
    #[error("device `{text}` is not available (libtorch sees {count} CUDA devices)")]
    Unavailable { text: String, count: i64 },
    #[error("unknown precision `{0}` (expected f32, f16 or bf16)")]
    UnknownPrecision(String),
    #[error("precision `{precision}` needs a CUDA device; CPU runs are float32")]
    PrecisionOnCpu { precision: &'static str },
}

/// Parses `auto`, `cpu` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device, DeviceError> {
    match text {
        "auto" => Ok(if tch::Cuda::is_available() {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }),
        "cpu" => Ok(Device::Cpu),
        other => {
            let index: usize = other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| DeviceError::Unknown(other.to_string()))?;
            let count = tch::Cuda::device_count();
            if !tch::Cuda::is_available() || index as i64 >= count {
                return Err(DeviceError::Unavailable {
                    text: other.to_string(),
                    count,
                });
            }
            Ok(Device::Cuda(index))
        }
    }
}

/// The name `parse_device` accepts for `device` (`cpu`, `cuda:N`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Cpu => "cpu".to_string(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Numeric precision of a forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// float32 weights and activations (the only CPU mode).
    #[default]
    F32,
    /// float32 weights, forward under CUDA autocast (float16 matmuls and convolutions).
    F16,
    /// bfloat16 weights and activations.
    Bf16,
}

impl Precision {
    pub fn parse(text: &str) -> Result<Self, DeviceError> {
        match text {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(DeviceError::UnknownPrecision(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    /// Kind the weights are stored in.
    pub fn weight_kind(self) -> Kind {
        match self {
            Self::F32 | Self::F16 => Kind::Float,
            Self::Bf16 => Kind::BFloat16,
        }
    }

    /// Refuses reduced precision on a CPU device.
    pub fn check(self, device: Device) -> Result<(), DeviceError> {
        match (self, device) {
            (Self::F32, _) | (_, Device::Cuda(_)) => Ok(()),
            (other, _) => Err(DeviceError::PrecisionOnCpu {
                precision: other.as_str(),
            }),
        }
    }

    /// The default for `device`: f16 autocast on CUDA, f32 elsewhere.
    pub fn default_for(device: Device) -> Self {
        match device {
            Device::Cuda(_) => Self::F16,
            _ => Self::F32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_refuses_garbage() {
        assert_eq!(parse_device("cpu").ok(), Some(Device::Cpu));
        assert!(matches!(parse_device("gpu"), Err(DeviceError::Unknown(t)) if t == "gpu"));
        assert!(matches!(parse_device("cuda:x"), Err(DeviceError::Unknown(_))));
        if !tch::Cuda::is_available() {
            assert_eq!(parse_device("auto").ok(), Some(Device::Cpu));
            let err = parse_device("cuda:0").err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("cuda:0") && err.contains("0 CUDA devices"), "{err}");
        }
        assert_eq!(Precision::parse("bf16").ok(), Some(Precision::Bf16));
        assert!(Precision::F16.check(Device::Cpu).is_err());
        assert!(Precision::F32.check(Device::Cpu).is_ok());
    }
}
