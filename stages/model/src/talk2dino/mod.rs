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
//! - **Whole images**: [`preprocess`] is Talk2DINO's square `Resize((448, 448))` of a uint8 image (bilinear,
//!   antialiased, rounded back to uint8, /255) and [`soft_masks`] the forward through a [`crate::vit::Vit`] up to
//!   the (cleaned) sigmoid masks; [`label_map`] finishes the segmentation.
//! - **Instance names** (not in Talk2DINO; how `mrdino name` uses its embeddings): an instance mask on a label
//!   grid placed in the image by an [`AxisMap`] per axis is downsampled to the patch grid by exact area fraction
//!   ([`axis_coverage`]); the instance's embedding is the coverage-weighted mean of the L2-normalised patch
//!   tokens, and its score for a class the cosine to the class embedding ([`instance_scores`], [`top_two`]).

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

/// The square side Talk2DINO resizes every image to (`Resize((448, 448))`): 32×32 patches of DINOv2-B/14.
pub const INPUT_PX: i64 = 448;

/// Talk2DINO's image preprocessing: (B, 3, H, W) RGB values in 0..=255 (any float or integer kind) →
/// (B, 3, S, S) in [0, 1], as torchvision's `Resize((S, S))` (bilinear, `align_corners=False`, antialias — the
/// default since torchvision 0.17; Talk2DINO's pinned 0.16 antialiased PIL images only, so the choice is pinned
/// here) does on a uint8 image tensor — the result rounded to integers and clamped to 0..=255 — then `/255`.
pub fn preprocess(images255: &Tensor, size_px: i64) -> Tensor {
    images255
        .to_kind(Kind::Float)
        .internal_upsample_bilinear2d_aa([size_px, size_px], false, None, None)
        .round()
        .clamp(0.0, 255.0)
        / 255.0
}

/// Soft masks (B, N, h, w) of `images01` (Talk2DINO-preprocessed, see [`preprocess`]) for the class
/// embeddings (N, C): patch tokens after the final norm, cosine to every class, sigmoid, and with
/// `with_background_clean` the cleaning of [`background_clean`] from the last block's CLS→patch attention logits,
/// scaled by [`ATTENTION_SCALE`] as Talk2DINO recomputes them.
pub fn soft_masks(
    vit: &crate::vit::Vit,
    images01: &Tensor,
    classes: &Tensor,
    with_background_clean: bool,
) -> Result<Tensor, crate::vit::VitError> {
    let tokens = vit.forward(
        &vit.normalize(images01)?,
        crate::vit::ForwardOptions {
            cls_attention_logits: with_background_clean,
            ..crate::vit::ForwardOptions::default()
        },
    )?;
    let _guard = tch::no_grad_guard();
    let classes = classes.to_device(tokens.patches.device()).to_kind(Kind::Float);
    let soft = similarity_maps(&tokens.patches, tokens.grid, &classes).sigmoid();
    Ok(match &tokens.cls_attention_logits {
        Some(attn) if with_background_clean => {
            // The ViT scales the logits by head_dim^-½; Talk2DINO recomputes them with its hard-coded 0.125 (the
            // same for ViT-B/L's 64-wide heads, not for other widths).
            let attn = attn * (ATTENTION_SCALE * (vit.config().head_dim() as f64).sqrt());
            background_clean(&soft, &tokens.patches, &attn, &classes, LAMBDA_BG)
        }
        _ => soft,
    })
}

/// How one axis of a label grid lies in the image the patches were computed on: label cell `k` covers image
/// coordinates `[offset_px + k·step_px, offset_px + (k+1)·step_px)`, in an image of `extent_px` pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AxisMap {
    pub cells: usize,
    pub offset_px: f64,
    pub step_px: f64,
    pub extent_px: f64,
}

/// (patches, cells) matrix R: R[i, k] = the length of label cell k inside patch row (or column) i, over the
/// patch's length, the image being split into `patches` equal parts. Mask coverage on the patch grid is then
/// `R_y · M · R_xᵀ`, the exact area fraction of each patch the mask covers (area downsampling).
pub fn axis_coverage(map: &AxisMap, patches: usize) -> Vec<f32> {
    let patch_px = map.extent_px / patches as f64;
    let mut out = vec![0f32; patches * map.cells];
    for k in 0..map.cells {
        let (a, b) = (
            map.offset_px + k as f64 * map.step_px,
            map.offset_px + (k + 1) as f64 * map.step_px,
        );
        let first = ((a / patch_px).floor().max(0.0) as usize).min(patches);
        let last = ((b / patch_px).ceil().max(0.0) as usize).min(patches);
        for i in first..last {
            let (lo, hi) = (i as f64 * patch_px, (i + 1) as f64 * patch_px);
            let overlap = b.min(hi) - a.max(lo);
            if overlap > 0.0 {
                out[i * map.cells + k] = (overlap / patch_px) as f32;
            }
        }
    }
    out
}

/// The names of a set of instances: best and runner-up class with their cosines, and every cosine.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceNames {
    /// (K, N) cosine of each instance's embedding to each class embedding.
    pub scores: Vec<Vec<f32>>,
    /// (K,) mask area on the patch grid, in patches (Σ of the coverage fractions).
    pub coverage_patches: Vec<f32>,
}

/// Open-vocabulary scores of K instance masks (K, h, w) (0/1, any kind) on a label grid mapped into the image by
/// (`rows`, `cols`), given the patch tokens (P = gh·gw, C) of that image and the class embeddings (N, C):
/// each instance's embedding is the coverage-weighted mean of the L2-normalised patch tokens (masks downsampled
/// to the patch grid by area, [`axis_coverage`]), and its score for a class the cosine to that class.
/// An instance that covers no patch area gets NaN scores.
pub fn instance_scores(
    masks: &Tensor,
    rows: &AxisMap,
    cols: &AxisMap,
    patches: &Tensor,
    grid: (i64, i64),
    classes: &Tensor,
) -> Result<InstanceNames, tch::TchError> {
    let _guard = tch::no_grad_guard();
    let device = patches.device();
    let k = masks.size()[0];
    let ry = Tensor::from_slice(&axis_coverage(rows, grid.0 as usize))
        .view([grid.0, rows.cells as i64])
        .to_device(device);
    let rx = Tensor::from_slice(&axis_coverage(cols, grid.1 as usize))
        .view([grid.1, cols.cells as i64])
        .to_device(device);
    let m = masks.to_device(device).to_kind(Kind::Float);
    let coverage = ry.matmul(&m).matmul(&rx.tr()).reshape([k, grid.0 * grid.1]); // (K, P)
    let total = coverage.sum_dim_intlist(-1, true, Kind::Float); // (K, 1)
    let feats = l2_normalize(&patches.to_kind(Kind::Float), -1); // (P, C)
    let embedding = l2_normalize(&(coverage.matmul(&feats) / &total), -1);
    let scores = embedding.matmul(&classes.to_device(device).to_kind(Kind::Float).tr()); // (K, N)
    let n = scores.size()[1];
    let flat = Vec::<f32>::try_from(&scores.to_device(tch::Device::Cpu).contiguous().view([-1]))?;
    let totals = Vec::<f32>::try_from(&total.to_device(tch::Device::Cpu).contiguous().view([-1]))?;
    Ok(InstanceNames {
        scores: flat
            .chunks(n.max(1) as usize)
            .map(<[f32]>::to_vec)
            .take(k as usize)
            .collect(),
        coverage_patches: totals,
    })
}

/// Index and value of the best and the second-best score (ties: the lower index first); NaNs never win.
pub fn top_two(scores: &[f32]) -> Option<((usize, f32), Option<(usize, f32)>)> {
    let mut order: Vec<usize> = (0..scores.len()).filter(|&i| !scores[i].is_nan()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let best = *order.first()?;
    Some(((best, scores[best]), order.get(1).map(|&i| (i, scores[i]))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_is_the_exact_area_fraction() {
        // 5 label rows over a 10 px image split into 4 patches of 2.5 px: row k covers [2k, 2k + 2).
        let map = AxisMap {
            cells: 5,
            offset_px: 0.0,
            step_px: 2.0,
            extent_px: 10.0,
        };
        let r = axis_coverage(&map, 4);
        let expect = [
            [0.8, 0.2, 0.0, 0.0, 0.0],
            [0.0, 0.6, 0.4, 0.0, 0.0],
            [0.0, 0.0, 0.4, 0.6, 0.0],
            [0.0, 0.0, 0.0, 0.2, 0.8],
        ];
        for (i, row) in expect.iter().enumerate() {
            for (k, &v) in row.iter().enumerate() {
                assert!((r[i * 5 + k] - v).abs() < 1e-6, "R[{i},{k}] = {}", r[i * 5 + k]);
            }
        }
        // Every patch is covered once by the whole grid; a crop offset shifts the cells.
        for i in 0..4 {
            assert!(((0..5).map(|k| r[i * 5 + k]).sum::<f32>() - 1.0).abs() < 1e-6);
        }
        let shifted = axis_coverage(
            &AxisMap {
                cells: 1,
                offset_px: 7.5,
                step_px: 2.5,
                extent_px: 10.0,
            },
            4,
        );
        assert_eq!(shifted, vec![0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn an_instance_on_one_patch_scores_that_patch() {
        let patches = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 2.0, 1.0, 1.0, -1.0, 0.0]).view([4, 2]);
        let classes = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        // A 4×4 label grid on a 2×2 patch grid; the mask is the bottom-right 2×2 block = patch 3.
        let mut mask = vec![0f32; 16];
        for (y, x) in [(2, 2), (2, 3), (3, 2), (3, 3)] {
            mask[y * 4 + x] = 1.0;
        }
        let masks = Tensor::from_slice(&mask).view([1, 4, 4]);
        let axis = AxisMap {
            cells: 4,
            offset_px: 0.0,
            step_px: 1.0,
            extent_px: 4.0,
        };
        let names = instance_scores(&masks, &axis, &axis, &patches, (2, 2), &classes).unwrap();
        assert_eq!(names.coverage_patches, vec![1.0]);
        assert!((names.scores[0][0] + 1.0).abs() < 1e-6 && names.scores[0][1].abs() < 1e-6);
        assert_eq!(
            top_two(&names.scores[0]),
            Some(((1, names.scores[0][1]), Some((0, -1.0))))
        );
        assert_eq!(top_two(&[f32::NAN, 0.5]), Some(((1, 0.5), None)));
        assert_eq!(top_two(&[]), None);
    }
}
