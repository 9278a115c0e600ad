//! The one error of a function handed a tensor it does not take: which argument, what it must be, and the shape
//! and kind it has. Every model module that checks its tensor arguments reports with it, so a caller can match
//! on the argument and read the shape instead of parsing a message.

use tch::{Kind, Tensor};

/// A tensor argument that is not what the function takes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// One tensor of a shape or kind the function does not take.
    #[error("{argument}: expected {expected}, got {kind:?} of shape {shape:?}")]
    Tensor {
        /// The argument, e.g. "ViT input images".
        argument: &'static str,
        /// What it must be, e.g. "(B, 3, H, W) float".
        expected: String,
        shape: Vec<i64>,
        kind: Kind,
    },
    /// Tensors each of a fine shape, whose shapes do not fit together.
    #[error("{operation}: the shapes {} do not fit together", list(shapes))]
    Disagree {
        operation: &'static str,
        /// Every argument and its shape.
        shapes: Vec<(&'static str, Vec<i64>)>,
    },
}

impl InputError {
    /// `tensor`, the argument `argument`, is not `expected`.
    pub fn tensor(argument: &'static str, expected: impl Into<String>, tensor: &Tensor) -> Self {
        Self::Tensor {
            argument,
            expected: expected.into(),
            shape: tensor.size(),
            kind: tensor.kind(),
        }
    }

    /// The arguments `tensors` of `operation` do not fit together.
    pub fn disagree(operation: &'static str, tensors: &[(&'static str, &Tensor)]) -> Self {
        Self::Disagree {
            operation,
            shapes: tensors.iter().map(|(name, t)| (*name, t.size())).collect(),
        }
    }
}

fn list(shapes: &[(&'static str, Vec<i64>)]) -> String {
    shapes
        .iter()
        .map(|(name, shape)| format!("{name} {shape:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn the_error_names_the_argument_and_the_shape_and_kind_given() {
        let t = Tensor::zeros([2, 5], (Kind::Uint8, Device::Cpu));
        let e = InputError::tensor("token ids", "(N, L) integers", &t);
        assert_eq!(
            e,
            InputError::Tensor {
                argument: "token ids",
                expected: "(N, L) integers".into(),
                shape: vec![2, 5],
                kind: Kind::Uint8
            }
        );
        assert_eq!(e.to_string(), "token ids: expected (N, L) integers, got Uint8 of shape [2, 5]");
        let m = Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu));
        let e = InputError::disagree("PAMR", &[("images", &t), ("masks", &m)]);
        assert_eq!(e.to_string(), "PAMR: the shapes images [2, 5], masks [1, 3, 4, 4] do not fit together");
    }
}
