//! Sizes and options of a DINOSAUR model, with the reference presets as data.
//!
//! The presets are the instantiated reference configurations (visinf/mr-dinosaur,
//! `configs/experiment/projects/mr_dinosaur/dinosaur_dinov2_*`): KITTI K = 15, D = 32, decoder hidden 2048,
//! P = 729 (27×27 patches of a 378 px window); TRI-PD 30, 32, 2048, 1225 (35×35, 490 px); MOVi-E 24, 128, 1024,
//! 361 (19×19, 266 px); features of DINOv2 ViT-B/14 (768 channels) in all three. The options from the backbone
//! study are off in every preset, so a preset is the reference model and nothing else.

use serde::{Deserialize, Serialize};

/// How the backbone features are projected to the slot dimension before slot attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputProjection {
    /// The reference: LayerNorm(F) → Linear(F, F) → ReLU → Linear(F, D)
    /// (`positional_embedding.layers.1.{0,1,3}`).
    TwoLayer,
    /// LayerNorm(F) → Linear(F, D) (`positional_embedding.layers.1.{0,1}`).
    SingleLinear,
}

/// A configuration value the slot model cannot use (the first one found).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be positive, got {value}")]
    NotPositive { field: &'static str, value: i64 },
    #[error("mask_temperature must be positive, got {0}")]
    MaskTemperature(f64),
    #[error("attention_eps must be >= 0 and layer_norm_eps > 0 (got {attention_eps} and {layer_norm_eps})")]
    Epsilons { attention_eps: f64, layer_norm_eps: f64 },
}

/// Every size and constant of the slot model. `Default` is not provided on purpose: pick a preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DinosaurConfig {
    /// K, slots per image (window).
    pub n_slots: i64,
    /// D, slot dimension (also the key/query/value dimension of slot attention).
    pub slot_dim: i64,
    /// F, channels of the backbone features.
    pub feature_dim: i64,
    /// h, hidden width of the MLP broadcast decoder (three hidden layers).
    pub decoder_hidden: i64,
    /// P, patches per image; rows of the decoder's learned position embedding.
    pub n_patches: i64,
    /// Slot-attention iterations (reference 3).
    pub iterations: i64,
    /// Added to the attention after the softmax over slots, before the weighted mean (reference 1e-8).
    pub attention_eps: f64,
    /// Epsilon of every LayerNorm of the slot side (PyTorch default 1e-5).
    pub layer_norm_eps: f64,
    /// Hidden width of the slot-attention residual MLP as a multiple of D (reference 4).
    pub ff_mlp_ratio: i64,
    /// Input projection (reference: two layers).
    pub input_projection: InputProjection,
    /// τ: alpha = softmax over slots of logits / τ (reference 1, i.e. no temperature).
    pub mask_temperature: f64,
    /// LayerNorm without affine over the channels of each position, applied to target and reconstruction
    /// before the MSE (reference off).
    pub channel_normalised_loss: bool,
    /// A learnable Linear(F, F) (`target_projection`) applied to the detached features; its output is the
    /// reconstruction target (reference off). Slot attention still reads the raw features.
    pub target_projection: bool,
}

impl DinosaurConfig {
    /// The reference model with the given sizes and every option off.
    pub fn custom(n_slots: i64, slot_dim: i64, feature_dim: i64, decoder_hidden: i64, n_patches: i64) -> Self {
        Self {
            n_slots,
            slot_dim,
            feature_dim,
            decoder_hidden,
            n_patches,
            iterations: 3,
            attention_eps: 1e-8,
            layer_norm_eps: 1e-5,
            ff_mlp_ratio: 4,
            input_projection: InputProjection::TwoLayer,
            mask_temperature: 1.0,
            channel_normalised_loss: false,
            target_projection: false,
        }
    }

    /// `dinosaur_dinov2_kitti/kitti_config.yaml`.
    pub fn kitti() -> Self {
        Self::custom(15, 32, 768, 2048, 729)
    }

    /// `dinosaur_dinov2_pd/pd_config.yaml`.
    pub fn tri_pd() -> Self {
        Self::custom(30, 32, 768, 2048, 1225)
    }

    /// `dinosaur_dinov2_movi_e/movi_e_config.yaml`.
    pub fn movi_e() -> Self {
        Self::custom(24, 128, 768, 1024, 361)
    }

    /// A preset by name (`kitti`, `tri-pd`, `movi-e`).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "kitti" => Some(Self::kitti()),
            "tri-pd" => Some(Self::tri_pd()),
            "movi-e" => Some(Self::movi_e()),
            _ => None,
        }
    }

    /// The reference's slot count for a decoder of `n_patches` rows (729 → 15, 1225 → 30, 361 → 24).
    pub fn reference_slots_for_patches(n_patches: i64) -> Option<i64> {
        match n_patches {
            729 => Some(15),
            1225 => Some(30),
            361 => Some(24),
            _ => None,
        }
    }

    /// Checks that every size is positive and every constant usable; names the first offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("n_slots", self.n_slots),
            ("slot_dim", self.slot_dim),
            ("feature_dim", self.feature_dim),
            ("decoder_hidden", self.decoder_hidden),
            ("n_patches", self.n_patches),
            ("iterations", self.iterations),
            ("ff_mlp_ratio", self.ff_mlp_ratio),
        ];
        for (name, v) in sizes {
            if v <= 0 {
                return Err(ConfigError::NotPositive { field: name, value: v });
            }
        }
        if !(self.mask_temperature.is_finite() && self.mask_temperature > 0.0) {
            return Err(ConfigError::MaskTemperature(self.mask_temperature));
        }
        if !(self.attention_eps >= 0.0 && self.layer_norm_eps > 0.0) {
            return Err(ConfigError::Epsilons {
                attention_eps: self.attention_eps,
                layer_norm_eps: self.layer_norm_eps,
            });
        }
        Ok(())
    }
}
