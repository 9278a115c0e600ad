//! The model crate's one `Linear` and one `LayerNorm`, built either from loaded weights (frozen backbones: ViT,
//! CLIP's text tower) or as trainable parameters with PyTorch's default initialisation (DINOSAUR), and
//! [`Weights`], which hands loaded tensors out as variables of a `VarStore`.
//!
//! Contract: every forward is fallible (`f_` tch calls), so a tensor of the wrong shape is an error, never a
//! panic. The layers compute exactly what `torch.nn.Linear` / `torch.nn.LayerNorm` compute; a `LayerNorm` keeps
//! the cuDNN flag its constructor chose (`true` for loaded weights, `false` for trainable ones, as each model
//! has always called it), so results are bit-identical to the two copies these replace.

use std::collections::HashMap;

use tch::nn::{self, Init};
use tch::{TchError, Tensor};

/// Hands out the loaded tensors as variables of a `VarStore`, so every parameter lives at the `nn::Path` that
/// names it in the file. A tensor that is missing or cannot become a variable is recorded in `error` (the first
/// one) and replaced by a placeholder; the caller checks `error` once every layer is built.
pub(crate) struct Weights {
    pub(crate) tensors: HashMap<String, Tensor>,
    pub(crate) error: Option<TchError>,
}

impl Weights {
    pub(crate) fn var(&mut self, path: &nn::Path, name: &str) -> Tensor {
        let key = match path.components().next() {
            Some(_) => format!("{}.{name}", path.components().collect::<Vec<_>>().join(".")),
            None => name.to_string(),
        };
        match self.tensors.remove(&key) {
            Some(t) => match path.f_var_copy(name, &t) {
                Ok(v) => v,
                Err(e) => {
                    self.error.get_or_insert(e);
                    path.zeros_no_train(name, &[1])
                }
            },
            None => {
                self.error
                    .get_or_insert_with(|| TchError::Kind(format!("weight `{key}` was not loaded")));
                path.zeros_no_train(name, &[1])
            }
        }
    }
}

/// `y = x Wᵀ + b` over the last dimension.
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// From the loaded `{path}.weight` (and `{path}.bias` when `bias`).
    pub(crate) fn from_weights(path: &nn::Path, w: &mut Weights, bias: bool) -> Self {
        Self {
            weight: w.var(path, "weight"),
            bias: bias.then(|| w.var(path, "bias")),
        }
    }

    /// Trainable, with PyTorch's default weight initialisation U(±1/√in_dim); the bias (when present) starts at
    /// zero, as the DINOSAUR reference initialises it.
    pub(crate) fn trainable(path: nn::Path, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let weight = path.var("weight", &[out_dim, in_dim], Init::Uniform { lo: -bound, up: bound });
        let bias = bias.then(|| path.var("bias", &[out_dim], Init::Const(0.0)));
        Self { weight, bias }
    }

    /// The bias, when the layer has one.
    pub(crate) fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_linear(&self.weight, self.bias.as_ref())
    }
}

/// Layer normalisation over the last dimension, with a learned scale and shift.
#[derive(Debug)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    dim: i64,
    eps: f64,
    cudnn_enable: bool,
}

impl LayerNorm {
    /// From the loaded `{path}.weight` and `{path}.bias`.
    pub(crate) fn from_weights(path: &nn::Path, w: &mut Weights, dim: i64, eps: f64) -> Self {
        Self {
            weight: w.var(path, "weight"),
            bias: w.var(path, "bias"),
            dim,
            eps,
            cudnn_enable: true,
        }
    }

    /// Trainable, starting at scale 1 and shift 0 (PyTorch's default).
    pub(crate) fn trainable(path: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: path.var("weight", &[dim], Init::Const(1.0)),
            bias: path.var("bias", &[dim], Init::Const(0.0)),
            dim,
            eps,
            cudnn_enable: false,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        x.f_layer_norm([self.dim], Some(&self.weight), Some(&self.bias), self.eps, self.cudnn_enable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_wrong_input_width_is_an_error_not_a_panic() {
        let vs = nn::VarStore::new(Device::Cpu);
        let linear = Linear::trainable(vs.root() / "l", 4, 3, true);
        let norm = LayerNorm::trainable(vs.root() / "n", 4, 1e-5);
        let good = Tensor::ones([2, 4], (Kind::Float, Device::Cpu));
        let bad = Tensor::ones([2, 5], (Kind::Float, Device::Cpu));
        assert_eq!(linear.forward(&good).unwrap().size(), [2, 3]);
        assert_eq!(norm.forward(&good).unwrap().size(), [2, 4]);
        assert!(linear.forward(&bad).is_err());
        assert!(norm.forward(&bad).is_err());
    }

    #[test]
    fn loaded_layers_compute_what_torch_does() {
        let vs = nn::VarStore::new(Device::Cpu);
        let opts = (Kind::Float, Device::Cpu);
        let weight = Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.]).reshape([2, 3]);
        let mut w = Weights {
            tensors: [
                ("l.weight".to_string(), weight.shallow_clone()),
                ("l.bias".to_string(), Tensor::from_slice(&[0.5f32, -0.5])),
                ("n.weight".to_string(), Tensor::ones([3], opts)),
                ("n.bias".to_string(), Tensor::zeros([3], opts)),
            ]
            .into(),
            error: None,
        };
        let linear = Linear::from_weights(&(vs.root() / "l"), &mut w, true);
        let norm = LayerNorm::from_weights(&(vs.root() / "n"), &mut w, 3, 1e-5);
        assert!(w.error.is_none() && w.tensors.is_empty());
        let x = Tensor::from_slice(&[1f32, 0., -1.]).reshape([1, 3]);
        let y = linear.forward(&x).unwrap();
        assert_eq!(Vec::<f32>::try_from(y.reshape([-1])).unwrap(), [-1.5, -2.5]);
        let n = norm.forward(&x).unwrap();
        assert!(n.allclose(&(x.layer_norm([3], None::<Tensor>, None::<Tensor>, 1e-5, true)), 0.0, 0.0, false));
        let mut missing = Weights {
            tensors: HashMap::new(),
            error: None,
        };
        let _ = Linear::from_weights(&(vs.root() / "m"), &mut missing, false);
        assert!(missing.error.is_some_and(|e| e.to_string().contains("m.weight")));
    }
}
