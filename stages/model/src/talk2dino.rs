//! Talk2DINO: CLIP text embeddings mapped into DINOv2 patch space by the learned ψ, for open-vocabulary names
//! and text-prompted masks (lorebianchi98/Talk2DINO, `src/model.py` `ProjectionLayer`, `models/dinotext/`).
//!
//! - **ψ** = `hidden_layers.0 ∘ tanh ∘ linear_layer`: Linear(512 → D) then tanh then Linear(D → D), D = 768
//!   (ViT-B) or 1024 (ViT-L); no activation after the second layer, no normalisation inside. Weights from a
//!   safetensors file with Talk2DINO's names (`tools/convert_talk2dino.py` renames the older `linear_layer2`).
//! - **Class embeddings**: each class name fills the 7 templates, the CLIP text embeddings (512-d, unnormalised)
//!   are **averaged over the templates first**, then ψ, then L2-normalised.
//! - **Masks** (`generate_masks`): DINOv2-B/14-reg patch tokens (after the final norm) L2-normalised per patch,
//!   cosine to every class embedding → `simmap` (B, N, h, w); soft mask = sigmoid(simmap). Optional background
//!   cleaning (`similarity_assignment_weighted`, λ = 0.2): from the last block's pre-softmax CLS→patch attention
//!   logits a_m (per head m; q scaled by 0.125, CLS and registers excluded) per-head embeddings
//!   e_m = normalise(mean_p a_m[p]·x[p]) of the *raw* patch tokens; per class n head weights
//!   softmax_m(t_n·e_m); the class's attention map = Σ_m w_nm a_m / Σ_m w_nm, softmax over patches, rescaled by
//!   the global min and max(max, max − min) to [min mask, max mask]; mask ← (mask + λ·map)/(1 + λ). The
//!   reference runs on one image at a time, so min/max are per image here. Then bilinear upsampling with
//!   `align_corners=True` to the image size, a constant background channel `bg_threshold` in front, argmax.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

/// The 7 prompt templates Talk2DINO averages (`sub_imagenet_template`).
pub const TEMPLATES: [&str; 7] = [
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
];

/// λ of the background cleaning.
pub const LAMBDA_BG: f64 = 0.2;

/// The attention scale Talk2DINO hard-codes when it recomputes the CLS→patch logits.
pub const ATTENTION_SCALE: f64 = 0.125;

#[derive(Debug, thiserror::Error)]
pub enum Talk2DinoError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: missing tensor `{key}`")]
    Missing { path: PathBuf, key: String },
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        key: String,
        found: Vec<i64>,
        expected: Vec<i64>,
    },
    #[error("{path}: unexpected tensor `{key}` (shape {shape:?})")]
    Unexpected {
        path: PathBuf,
        key: String,
        shape: Vec<i64>,
    },
}

/// The learned text → DINOv2 mapping ψ.
#[derive(Debug)]
pub struct Psi {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    sha256: String,
}

impl Psi {
    /// Loads ψ (`linear_layer.{weight,bias}`, `hidden_layers.0.{weight,bias}`) from safetensors.
    pub fn load(path: &Path, device: tch::Device) -> Result<Self, Talk2DinoError> {
        let bytes = std::fs::read(path).map_err(|e| Talk2DinoError::File {
            path: path.into(),
            message: e.to_string(),
        })?;
        let sha256: String = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| Talk2DinoError::File {
                path: path.into(),
                message: e.to_string(),
            })?
            .into_iter()
            .collect();
        let get = |key: &str| -> Result<Tensor, Talk2DinoError> {
            tensors
                .get(key)
                .map(|t| t.to_kind(Kind::Float).to_device(device))
                .ok_or_else(|| Talk2DinoError::Missing {
                    path: path.into(),
                    key: key.into(),
                })
        };
        let (w1, b1, w2, b2) = (
            get("linear_layer.weight")?,
            get("linear_layer.bias")?,
            get("hidden_layers.0.weight")?,
            get("hidden_layers.0.bias")?,
        );
        let d = w1.size()[0];
        for (key, t, expected) in [
            ("linear_layer.weight", &w1, vec![d, 512]),
            ("linear_layer.bias", &b1, vec![d]),
            ("hidden_layers.0.weight", &w2, vec![d, d]),
            ("hidden_layers.0.bias", &b2, vec![d]),
        ] {
            if t.size() != expected {
                return Err(Talk2DinoError::Shape {
                    path: path.into(),
                    key: key.into(),
                    found: t.size(),
                    expected,
                });
            }
        }
        let known = [
            "linear_layer.weight",
            "linear_layer.bias",
            "hidden_layers.0.weight",
            "hidden_layers.0.bias",
        ];
        let mut extra: Vec<&String> = tensors.keys().filter(|k| !known.contains(&k.as_str())).collect();
        extra.sort();
        if let Some(key) = extra.first() {
            return Err(Talk2DinoError::Unexpected {
                path: path.into(),
                key: (*key).clone(),
                shape: tensors[*key].size(),
            });
        }
        Ok(Self { w1, b1, w2, b2, sha256 })
    }

    /// The DINOv2 width ψ maps into (768 for ViT-B, 1024 for ViT-L).
    pub fn dim(&self) -> i64 {
        self.w1.size()[0]
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// ψ(t) for CLIP text embeddings (…, 512).
    pub fn forward(&self, text: &Tensor) -> Tensor {
        text.to_kind(Kind::Float)
            .linear(&self.w1, Some(&self.b1))
            .tanh()
            .linear(&self.w2, Some(&self.b2))
    }

    /// Class embeddings from CLIP text embeddings (N, T, 512) of the T templates: mean over T, ψ, L2-normalise.
    pub fn class_embeddings(&self, per_template: &Tensor) -> Tensor {
        l2_normalize(
            &self.forward(&per_template.to_kind(Kind::Float).mean_dim(1, false, Kind::Float)),
            -1,
        )
    }
}

/// `F.normalize(x, dim)`: x / max(‖x‖, 1e-12).
pub fn l2_normalize(x: &Tensor, dim: i64) -> Tensor {
    x / x.norm_scalaropt_dim(2, [dim].as_slice(), true).clamp_min(1e-12)
}

/// Cosine similarity maps (B, N, h, w) between patch tokens (B, P = h·w, C) and class embeddings (N, C).
pub fn similarity_maps(patches: &Tensor, grid: (i64, i64), classes: &Tensor) -> Tensor {
    let (b, _, _) = patches.size3().unwrap_or((0, 0, 0));
    let sim = l2_normalize(patches, -1).matmul(&classes.tr()); // (B, P, N)
    sim.permute([0, 2, 1]).reshape([b, -1, grid.0, grid.1])
}

/// Talk2DINO's background cleaning of soft masks (B, N, h, w) with the raw patch tokens (B, P, C), the last
/// block's CLS→patch attention logits (B, M, P) and the class embeddings (N, C); min/max per image.
pub fn background_clean(
    masks: &Tensor,
    patches: &Tensor,
    attention_logits: &Tensor,
    classes: &Tensor,
    lambda: f64,
) -> Tensor {
    let size = masks.size();
    let (b, n, h, w) = (size[0], size[1], size[2], size[3]);
    let mut out = Vec::with_capacity(b as usize);
    for i in 0..b {
        let mask = masks.get(i).reshape([n, h * w]);
        let attn = attention_logits.get(i); // (M, P)
        let feat = patches.get(i); // (P, C)
                                   // Per-head embeddings: mean over patches of logit · feature, normalised.
        let heads = l2_normalize(&(attn.matmul(&feat) / (h * w) as f64), -1); // (M, C)
        let weights = classes.matmul(&heads.tr()).softmax(-1, Kind::Float); // (N, M)
        let per_class = weights.matmul(&attn) / weights.sum_dim_intlist(-1, true, Kind::Float); // (N, P)
        let per_class = per_class.softmax(-1, Kind::Float);
        let (lo, hi) = (per_class.min().double_value(&[]), per_class.max().double_value(&[]));
        let hi = hi.max(hi - lo);
        let (mlo, mhi) = (mask.min(), mask.max());
        let rescaled = (per_class - lo) / hi * (&mhi - &mlo) + &mlo;
        out.push(((mask + rescaled * lambda) / (1.0 + lambda)).reshape([n, h, w]));
    }
    Tensor::stack(&out, 0)
}

/// Soft masks upsampled to (H, W) (bilinear, align_corners=True), a constant `bg_threshold` channel in front,
/// argmax: 0 = background, k = class k−1. Returns (B, H, W) int64.
pub fn label_map(soft_masks: &Tensor, size: (i64, i64), bg_threshold: f64) -> Tensor {
    let up = soft_masks.upsample_bilinear2d([size.0, size.1], true, None, None);
    let s = up.size();
    let bg = Tensor::full([s[0], 1, s[2], s[3]], bg_threshold, (Kind::Float, up.device()));
    Tensor::cat(&[bg, up], 1).argmax(1, false)
}
