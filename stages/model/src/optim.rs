//! Adam, gradient-norm clipping and the learning-rate schedule of the reference, with exportable state.
//!
//! `tch`'s optimisers keep their moments inside libtorch where they cannot be saved, so a resumed run could
//! not continue exactly; this module owns them instead.
//!
//! * [`Adam`] reproduces `torch.optim.Adam` with its CPU default path (single-tensor, not fused, no foreach,
//!   no weight decay, no amsgrad), in float32: per parameter with a gradient, `step += 1`,
//!   `m ← lerp(m, g, 1−β₁)`, `v ← β₂ v + (1−β₂) g²`, then with the bias corrections computed in double
//!   precision `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`. Moments are created as zeros at a
//!   parameter's first step, as PyTorch does lazily; parameters without a gradient are skipped.
//! * [`clip_grad_norm`] is `torch.nn.utils.clip_grad_norm_(params, max_norm)` (what Lightning's
//!   `gradient_clip_val` calls): total = ‖(‖g₁‖₂, …, ‖gₙ‖₂)‖₂, coefficient = reciprocal(total + 1e-6) · max_norm
//!   clamped at 1, every gradient multiplied by it (also when it is 1).
//! * [`LrSchedule`] is `ocl.scheduling.exponential_decay_after_optional_warmup` under `LambdaLR` with
//!   `interval: step`: the update with index s (0-based; the first update is s = 0) uses
//!   `base · min(1, s / warmup)` while s < warmup and `base · 0.5^((s − warmup) / decay_steps)` after, so the
//!   very first update has learning rate 0 (it still moves the moments).

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

/// Adam hyper-parameters (PyTorch defaults: β = (0.9, 0.999), ε = 1e-8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// The moments of one parameter.
#[derive(Debug)]
pub struct AdamState {
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    pub step: u64,
}

/// Errors when importing optimiser state.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("optimiser state for unknown parameter `{0}`")]
    UnknownParameter(String),
    #[error("optimiser state `{key}`: expected shape {expected:?}, got {got:?}")]
    Shape {
        key: String,
        expected: Vec<i64>,
        got: Vec<i64>,
    },
    #[error("optimiser state for `{0}` lacks exp_avg or exp_avg_sq")]
    Incomplete(String),
    #[error("optimiser: {0}")]
    Torch(#[from] tch::TchError),
}

/// Adam over named parameters (see the module docs for the exact update).
#[derive(Debug)]
pub struct Adam {
    config: AdamConfig,
    params: Vec<(String, Tensor)>,
    state: BTreeMap<String, AdamState>,
}

impl Adam {
    /// `params`: the trainable tensors (with `requires_grad`) and their keys.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamConfig) -> Self {
        Self {
            config,
            params,
            state: BTreeMap::new(),
        }
    }

    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    pub fn state(&self) -> &BTreeMap<String, AdamState> {
        &self.state
    }

    /// Clears every gradient (`Tensor::zero_grad`: detach and zero a defined gradient).
    pub fn zero_grad(&mut self) -> Result<(), OptimError> {
        for (_, p) in &mut self.params {
            let mut grad = p.f_grad()?;
            if grad.defined() {
                let _ = grad.f_detach_()?.f_zero_()?;
            }
        }
        Ok(())
    }

    /// Clips the gradients of all parameters to a total 2-norm of `max_norm`; returns the norm before clipping.
    pub fn clip_grad_norm(&self, max_norm: f64) -> Result<f64, OptimError> {
        clip_grad_norm(self.params.iter().map(|(_, p)| p), max_norm)
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) -> Result<(), OptimError> {
        let config = self.config;
        tch::no_grad(|| {
            for (name, p) in &self.params {
                let grad = p.f_grad()?;
                if !grad.defined() {
                    continue;
                }
                let state = match self.state.entry(name.clone()) {
                    std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::btree_map::Entry::Vacant(entry) => entry.insert(AdamState {
                        exp_avg: p.f_zeros_like()?,
                        exp_avg_sq: p.f_zeros_like()?,
                        step: 0,
                    }),
                };
                adam_update(p, &grad, state, &config, lr)?;
            }
            Ok(())
        })
    }

    /// The moments as named tensors (`exp_avg.<key>`, `exp_avg_sq.<key>`) and the step count per key.
    pub fn export_state(&self) -> (Vec<(String, Tensor)>, BTreeMap<String, u64>) {
        let mut tensors = Vec::new();
        let mut steps = BTreeMap::new();
        for (name, s) in &self.state {
            tensors.push((format!("exp_avg.{name}"), s.exp_avg.shallow_clone()));
            tensors.push((format!("exp_avg_sq.{name}"), s.exp_avg_sq.shallow_clone()));
            steps.insert(name.clone(), s.step);
        }
        (tensors, steps)
    }

    /// Restores what [`Adam::export_state`] produced (tensors are copied to the parameters' device as f32).
    pub fn import_state(
        &mut self,
        tensors: &[(String, Tensor)],
        steps: &BTreeMap<String, u64>,
    ) -> Result<(), OptimError> {
        let find = |key: &str| tensors.iter().find(|(n, _)| n == key).map(|(_, t)| t);
        for (name, _) in tensors {
            let key = name
                .strip_prefix("exp_avg_sq.")
                .or_else(|| name.strip_prefix("exp_avg."))
                .unwrap_or(name);
            if !steps.contains_key(key) {
                return Err(OptimError::UnknownParameter(key.to_string()));
            }
        }
        let mut state = BTreeMap::new();
        for (key, &step) in steps {
            let Some((_, p)) = self.params.iter().find(|(n, _)| n == key) else {
                return Err(OptimError::UnknownParameter(key.clone()));
            };
            let (Some(m), Some(v)) = (find(&format!("exp_avg.{key}")), find(&format!("exp_avg_sq.{key}"))) else {
                return Err(OptimError::Incomplete(key.clone()));
            };
            for (what, t) in [("exp_avg", m), ("exp_avg_sq", v)] {
                if t.size() != p.size() {
                    return Err(OptimError::Shape {
                        key: format!("{what}.{key}"),
                        expected: p.size(),
                        got: t.size(),
                    });
                }
            }
            // `Tensor::copy`: a fresh tensor (zeros_like, then copy_) that shares no storage with the file's.
            let copy = |t: &Tensor| -> Result<Tensor, tch::TchError> {
                let t = t.f_to_kind(Kind::Float)?.f_to_device(p.device())?;
                let mut fresh = t.f_zeros_like()?;
                fresh.f_copy_(&t)?;
                Ok(fresh)
            };
            state.insert(
                key.clone(),
                AdamState {
                    exp_avg: copy(m)?,
                    exp_avg_sq: copy(v)?,
                    step,
                },
            );
        }
        self.state = state;
        Ok(())
    }
}

/// One Adam update of parameter `p` with gradient `grad` (see the module docs), in place.
fn adam_update(
    p: &Tensor,
    grad: &Tensor,
    state: &mut AdamState,
    config: &AdamConfig,
    lr: f64,
) -> Result<(), OptimError> {
    let AdamConfig { beta1, beta2, eps } = *config;
    state.step += 1;
    let _ = state.exp_avg.f_lerp_(grad, 1.0 - beta1)?;
    let _ = state.exp_avg_sq.f_mul_scalar_(beta2)?;
    let _ = state.exp_avg_sq.f_addcmul_(&grad.f_mul_scalar(1.0 - beta2)?, grad)?;
    let t = state.step as f64;
    let bias_correction1 = 1.0 - beta1.powf(t);
    let bias_correction2 = 1.0 - beta2.powf(t);
    let step_size = lr / bias_correction1;
    let denom = state
        .exp_avg_sq
        .f_sqrt()?
        .f_div_scalar(bias_correction2.sqrt())?
        .f_add_scalar(eps)?;
    let mut p = p.shallow_clone();
    let _ = p.f_add_(&state.exp_avg.f_div(&denom)?.f_mul_scalar(-step_size)?)?;
    Ok(())
}

/// `torch.nn.utils.clip_grad_norm_` over the gradients of `params` (those without a gradient are ignored);
/// returns the total norm before clipping (0 when no parameter has a gradient).
pub fn clip_grad_norm<'a>(params: impl Iterator<Item = &'a Tensor>, max_norm: f64) -> Result<f64, OptimError> {
    tch::no_grad(|| {
        let mut grads = Vec::new();
        for p in params {
            let g = p.f_grad()?;
            if g.defined() {
                grads.push(g);
            }
        }
        if grads.is_empty() {
            return Ok(0.0);
        }
        let norms: Vec<Tensor> = grads.iter().map(Tensor::f_norm).collect::<Result<_, _>>()?;
        let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
        let coef = total
            .f_add_scalar(1e-6)?
            .f_reciprocal()?
            .f_mul_scalar(max_norm)?
            .f_clamp_max(1.0)?;
        for g in &grads {
            let mut g = g.shallow_clone();
            let _ = g.f_mul_(&coef)?;
        }
        Ok(total.f_double_value(&[])?)
    })
}

/// Linear warm-up then exponential decay (see the module docs for the exact step convention).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub decay_rate: f64,
    pub decay_steps: u64,
}

impl LrSchedule {
    /// The factor of `ocl.scheduling._exp_decay_after_warmup_fn` at scheduler step `step`.
    pub fn factor(&self, step: u64) -> f64 {
        let warmup = if self.warmup_steps > 0 {
            (step as f64 / self.warmup_steps as f64).min(1.0)
        } else {
            1.0
        };
        if step < self.warmup_steps {
            warmup
        } else {
            warmup
                * self
                    .decay_rate
                    .powf((step - self.warmup_steps) as f64 / self.decay_steps.max(1) as f64)
        }
    }

    /// The learning rate of the update with 0-based index `step`.
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_the_reference_formula() {
        let s = LrSchedule {
            base_lr: 4e-4,
            warmup_steps: 10_000,
            decay_rate: 0.5,
            decay_steps: 100_000,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5_000) - 2e-4).abs() < 1e-15);
        assert!((s.lr(10_000) - 4e-4).abs() < 1e-15);
        assert!((s.lr(110_000) - 2e-4).abs() < 1e-15);
        let none = LrSchedule { warmup_steps: 0, ..s };
        assert!((none.lr(0) - 4e-4).abs() < 1e-15);
    }
}
