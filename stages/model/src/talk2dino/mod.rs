//! Talk2DINO: CLIP text embeddings mapped into DINO patch space by the learned ψ, for open-vocabulary names and
//! text-prompted masks (lorebianchi98/Talk2DINO: `src/model.py` `ProjectionLayer`,
//! `src/open_vocabulary_segmentation/models/dinotext/{dinotext,masker,pamr}.py`, the mmseg evaluation in
//! `segmentation/evaluation/dinotext_seg.py` and its dataset configs). Every number below is read from that code.
//!
//! - **ψ** = `hidden_layers.0 ∘ tanh ∘ linear_layer`: Linear(512 → D) then tanh then Linear(D → D), D = 768
//!   (ViT-B) or 1024 (ViT-L); no activation after the second layer, no normalisation inside. Weights from a
//!   safetensors file with Talk2DINO's names (`tools/convert_talk2dino.py` renames the older `linear_layer2` and
//!   records which released file it was, [`Variant`]). The DINOv3 files (`dinov3_vit{b,l}_mlp_infonce.pth`) have
//!   the same four keys and shapes as the DINOv2 ones; only the backbone and its patch grid differ.
//! - **Class embeddings**: each class name fills the 7 templates, the CLIP text embeddings (512-d, unnormalised)
//!   are **averaged over the templates first**, then ψ, then L2-normalised (`build_text_embedding`).
//! - **Masks** (`generate_masks`): the backbone's patch tokens after the final norm, L2-normalised per patch,
//!   cosine to every class embedding → `simmap` (B, N, h, w); soft mask = sigmoid(simmap). Optional background
//!   cleaning (`similarity_assignment_weighted`, λ = 0.2): from the last block's pre-softmax CLS→patch attention
//!   logits a_m (per head m; q scaled by 0.125, CLS and registers excluded) per-head embeddings
//!   e_m = normalise(mean_p a_m[p]·x[p]) of the *raw* patch tokens; per class n head weights
//!   softmax_m(t_n·e_m); the class's attention map = Σ_m w_nm a_m / Σ_m w_nm, softmax over patches, rescaled by
//!   the global min and max(max, max − min) to [min mask, max mask]; mask ← (mask + λ·map)/(1 + λ). The
//!   reference runs on one image at a time, so min/max are per image here. Then bilinear upsampling with
//!   `align_corners=True` to the image size, optionally PAMR ([`pamr`]), a constant background channel
//!   `bg_threshold` in front, argmax.
//! - **Preprocessing** ([`resize_square`]): Talk2DINO's `T.Resize((448, 448))` runs on a
//!   **float** tensor of 0..255 values (`read_image(...).float()` in the demo, `FloatImage` in the mmseg
//!   pipeline) and divides by 255 afterwards: the resized values keep their fractions and are never rounded.
//! - **Whole images** ([`segment`]): the two inference paths of Talk2DINO's code, chosen by [`View`]: the square
//!   resize of the demo and Hugging Face path (default), or the sliding window of its benchmarks (keep-ratio
//!   resize, 448 px crops at stride 224, scores averaged over the overlaps).
//! - **Instance names** (not in Talk2DINO; how `mrdino name` uses its embeddings): an instance mask on a label
//!   grid placed in the image by an [`AxisMap`] per axis is downsampled to the patch grid by exact area fraction
//!   ([`axis_coverage`]); the instance's embedding is the coverage-weighted mean of the L2-normalised patch
//!   tokens, and its score for a class the cosine to the class embedding ([`instance_scores`], [`top_two`]).
//!
//! - **The bundle** ([`Talk2Dino`], `models.rs`): backbone, text tower, ψ and tokenizer loaded and checked
//!   against each other (ψ's release fixes the backbone's width, patch and registers, and the input size);
//!   **frames and tables** (`frames.rs`): decoded frames as tensors, instance masks of the pipeline's tables
//!   on the patch grid, label maps as regions.
//!
//! The ψ and mask code is backbone-agnostic: it takes the patch tokens, the patch grid and the CLS→patch logits
//! of whatever [`crate::vit::Vit`] runs; [`Variant`] records what each released ψ file expects of it.

mod frames;
mod models;
mod pamr;
mod segment;

pub use frames::{
    frame_instance_scores, frame_tensor, instance_masks, label_axes, regions, segment_frames, FrameRegions,
    PromptRegion,
};
pub use models::{Talk2Dino, Talk2DinoFiles, WeightsIdentity};
pub use pamr::{pamr, PamrConfig};
pub use segment::{keep_ratio_resize, segment, SegmentOptions, Segmentation, SlidingWindow, View};

use crate::input::InputError;
use crate::weights::{WeightError, WeightSource};
use mrdino_outputs::weights_id::Identity;
use std::path::{Path, PathBuf};

use tch::{Kind, TchError, Tensor};

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

/// λ of the background cleaning (`generate_masks(lambda_bg=0.2)`).
pub const LAMBDA_BG: f64 = 0.2;

/// The attention scale Talk2DINO hard-codes when it recomputes the CLS→patch logits (`self.scale = 0.125`).
pub const ATTENTION_SCALE: f64 = 0.125;

/// The square side Talk2DINO resizes every image to (`resize_dim: 448` in every model config, DINOv2 and DINOv3).
pub const INPUT_PX: i64 = 448;

/// Safetensors metadata key under which `tools/convert_talk2dino.py` records the released file's name
/// ([`Variant::proj_name`]).
pub const VARIANT_METADATA_KEY: &str = "talk2dino.proj_name";

#[derive(Debug, thiserror::Error)]
pub enum Talk2DinoError {
    /// A ψ file that cannot be read, or whose keys, shapes or dtypes are not ψ's.
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("{path}: metadata `{key}` = `{value}`: {message}")]
    Metadata {
        path: PathBuf,
        key: String,
        value: String,
        message: String,
    },
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("sliding window: every size must be positive, got {window:?}")]
    BadWindow { window: SlidingWindow },
    #[error("unknown view `{name}` (expected one of {})", View::NAMES.join(", "))]
    UnknownView { name: String },
    #[error("background threshold {value} is not finite")]
    Threshold { value: f64 },
    #[error("{view}: {px} px is not a positive multiple of the backbone's patch {patch_px} px")]
    ViewPatch {
        view: &'static str,
        px: i64,
        patch_px: i64,
    },
    #[error("the square resize needs a positive size, got {size_px} px")]
    SquareSize { size_px: i64 },
    #[error("frame {frame}: {bytes} bytes for a {width}x{height} RGB image")]
    FrameBytes {
        frame: String,
        bytes: usize,
        height: usize,
        width: usize,
    },
    #[error("PAMR: dilations must be ≥ 1 px, got {dilations_px:?}")]
    Dilations { dilations_px: Vec<i64> },
    #[error("keep-ratio resize of a {height}×{width} image to {new_height}×{new_width} (OpenCV): {message}")]
    Resize {
        height: i64,
        width: i64,
        new_height: i64,
        new_width: i64,
        message: String,
    },
    #[error("{sequence} frame {frame}: {message}")]
    Frame {
        sequence: String,
        frame: String,
        message: String,
    },
    #[error("cannot load the backbone {}", path.display())]
    Backbone {
        path: PathBuf,
        #[source]
        source: Box<crate::vit::VitError>,
    },
    #[error("cannot load the text tower {}", path.display())]
    TextTower {
        path: PathBuf,
        #[source]
        source: Box<crate::clip_text::ClipTextError>,
    },
    /// ψ maps into another width than the backbone's.
    #[error(
        "ψ ({}) maps into {psi_dim} dimensions but the backbone `{backbone}` ({}) has {backbone_dim}",
        psi.display(),
        backbone_path.display()
    )]
    PsiWidth {
        psi: PathBuf,
        psi_dim: i64,
        backbone: String,
        backbone_path: PathBuf,
        backbone_dim: i64,
    },
    /// ψ records the Talk2DINO release it belongs to, made for another backbone.
    #[error(transparent)]
    PsiRelease(Box<ReleaseMismatch>),
    #[error(transparent)]
    ClipText(#[from] crate::clip_text::ClipTextError),
    #[error(transparent)]
    Vit(#[from] crate::vit::VitError),
    #[error(transparent)]
    Torch(#[from] TchError),
}

/// A ψ made for another backbone than the one given: the width, patch and registers of both.
#[derive(Debug, thiserror::Error)]
#[error(
    "ψ ({}) is Talk2DINO's `{proj_name}`, made for {made_for} (width {}, patch {} px, {} registers), but the \
     backbone `{backbone}` ({}) has width {}, patch {} px, {} registers",
    psi.display(), made_for_shape.0, made_for_shape.1, made_for_shape.2, backbone_path.display(), shape.0,
    shape.1, shape.2
)]
pub struct ReleaseMismatch {
    pub psi: PathBuf,
    pub proj_name: String,
    pub made_for: String,
    /// (width, patch px, registers) of the backbone ψ was made for.
    pub made_for_shape: (i64, i64, i64),
    pub backbone: String,
    pub backbone_path: PathBuf,
    /// (width, patch px, registers) of the backbone given.
    pub shape: (i64, i64, i64),
}

/// One of Talk2DINO's released ψ files and what its backbone configuration (`configs/*.yaml` for ψ,
/// `src/open_vocabulary_segmentation/configs/*/dinotext_*.yml` for the model) and `DINOText.__init__` fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// The file's name in Talk2DINO's `weights/` without `.pth` (`proj_name` in its configs); what the converter
    /// stores under [`VARIANT_METADATA_KEY`].
    pub proj_name: &'static str,
    /// The backbone as Talk2DINO loads it (`model_name`: a torch-hub name for DINOv2, a timm name for DINOv3).
    pub backbone: &'static str,
    /// Width of the backbone's tokens = ψ's output width (`dino_embed_dim`).
    pub dim: i64,
    /// Attention heads of the backbone's last block (`num_attn_heads`).
    pub heads: i64,
    /// Patch side of the backbone, px.
    pub patch_px: i64,
    /// Register tokens; with the CLS token they are the `num_global_tokens` (5) skipped before the patches.
    pub registers: i64,
    /// Square input side (`resize_dim`), px; also the sliding-window crop of the benchmarks.
    pub input_px: i64,
    /// True when Talk2DINO's CLS→patch logits for background cleaning come from the `attn.qkv` projection
    /// *before* the backbone applies rotary position embeddings (timm's DINOv3 applies RoPE after `qkv`, and
    /// Talk2DINO hooks the `qkv` output), so a backbone with RoPE must hand [`soft_masks`] the logits of q and
    /// k without it. False for DINOv2, which has no RoPE.
    pub logits_before_rope: bool,
}

impl Variant {
    /// Patch grid side of the square input (32 for DINOv2-/14, 28 for DINOv3-/16 at 448 px).
    pub fn grid(&self) -> i64 {
        self.input_px / self.patch_px
    }

    /// The released variant named `proj_name` (`vitb_mlp_infonce`, `dinov3_vitb_mlp_infonce`, …).
    pub fn by_proj_name(proj_name: &str) -> Option<&'static Variant> {
        VARIANTS.iter().find(|v| v.proj_name == proj_name)
    }
}

/// Talk2DINO's released ψ files (its `weights/` directory), with their backbones.
pub const VARIANTS: [Variant; 4] = [
    Variant {
        proj_name: "vitb_mlp_infonce",
        backbone: "dinov2_vitb14_reg",
        dim: 768,
        heads: 12,
        patch_px: 14,
        registers: 4,
        input_px: INPUT_PX,
        logits_before_rope: false,
    },
    Variant {
        proj_name: "vitl_mlp_infonce",
        backbone: "dinov2_vitl14_reg",
        dim: 1024,
        heads: 16,
        patch_px: 14,
        registers: 4,
        input_px: INPUT_PX,
        logits_before_rope: false,
    },
    Variant {
        proj_name: "dinov3_vitb_mlp_infonce",
        backbone: "vit_base_patch16_dinov3.lvd1689m",
        dim: 768,
        heads: 12,
        patch_px: 16,
        registers: 4,
        input_px: INPUT_PX,
        logits_before_rope: true,
    },
    Variant {
        proj_name: "dinov3_vitl_mlp_infonce",
        backbone: "vit_large_patch16_dinov3.lvd1689m",
        dim: 1024,
        heads: 16,
        patch_px: 16,
        registers: 4,
        input_px: INPUT_PX,
        logits_before_rope: true,
    },
];

/// The learned text → DINO mapping ψ.
#[derive(Debug)]
pub struct Psi {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    identity: Identity,
    variant: Option<&'static Variant>,
}

/// ψ's tensors, in the order [`Psi`] holds them.
const PSI_KEYS: [&str; 4] = [
    "linear_layer.weight",
    "linear_layer.bias",
    "hidden_layers.0.weight",
    "hidden_layers.0.bias",
];

impl Psi {
    /// Loads ψ (`linear_layer.{weight,bias}`, `hidden_layers.0.{weight,bias}`) from safetensors, with the
    /// released variant when the converter recorded it ([`VARIANT_METADATA_KEY`]; files converted before it did
    /// have none). A recorded variant must be known and match the file's width.
    pub fn load(path: &Path, device: tch::Device) -> Result<Self, Talk2DinoError> {
        let source = WeightSource::open(path)?.describing("Talk2DINO ψ");
        let identity = source.identity("", |_| true, None)?;
        let proj_name = source.meta(VARIANT_METADATA_KEY).map(str::to_string);
        let d = source.require_shape(PSI_KEYS[0])?.first().copied().unwrap_or(0);
        let shapes = [vec![d, 512], vec![d], vec![d, d], vec![d]];
        let expected: Vec<(String, Vec<i64>)> = PSI_KEYS
            .iter()
            .zip(&shapes)
            .map(|(key, shape)| (key.to_string(), shape.clone()))
            .collect();
        source.check_keys("", &expected, &[], |_| true)?;
        let take = |i: usize| -> Result<Tensor, Talk2DinoError> {
            Ok(source.take(PSI_KEYS[i], &shapes[i])?.f_to_kind(Kind::Float)?.f_to_device(device)?)
        };
        let (w1, b1, w2, b2) = (take(0)?, take(1)?, take(2)?, take(3)?);
        let variant = match proj_name {
            None => None,
            Some(name) => {
                let metadata_error = |message: String| Talk2DinoError::Metadata {
                    path: path.into(),
                    key: VARIANT_METADATA_KEY.into(),
                    value: name.clone(),
                    message,
                };
                let variant = Variant::by_proj_name(&name).ok_or_else(|| {
                    metadata_error(format!(
                        "not a released Talk2DINO ψ (known: {})",
                        VARIANTS.map(|v| v.proj_name).join(", ")
                    ))
                })?;
                if variant.dim != d {
                    return Err(metadata_error(format!(
                        "that variant maps to width {}, the file's ψ to {d}",
                        variant.dim
                    )));
                }
                Some(variant)
            }
        };
        Ok(Self {
            w1,
            b1,
            w2,
            b2,
            identity,
            variant,
        })
    }

    /// The DINO width ψ maps into (768 for ViT-B, 1024 for ViT-L).
    pub fn dim(&self) -> i64 {
        self.w1.size().first().copied().unwrap_or(0)
    }

    /// The identity of the weights (a digest of the tensors, see [`mrdino_outputs::weights_id`]).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The released Talk2DINO file this ψ was converted from, when the converter recorded it: its backbone, patch
    /// grid and input size ([`Variant::input_px`] is the image size the pipeline must use with it).
    pub fn variant(&self) -> Option<&'static Variant> {
        self.variant
    }

    /// ψ(t) for CLIP text embeddings (…, 512); another width is an error.
    pub fn forward(&self, text: &Tensor) -> Result<Tensor, TchError> {
        text.f_to_kind(Kind::Float)?
            .f_linear(&self.w1, Some(&self.b1))?
            .f_tanh()?
            .f_linear(&self.w2, Some(&self.b2))
    }

    /// Class embeddings from CLIP text embeddings (N, T, 512) of the T templates: mean over T, ψ, L2-normalise.
    pub fn class_embeddings(&self, per_template: &Tensor) -> Result<Tensor, TchError> {
        let mean = per_template.f_to_kind(Kind::Float)?.f_mean_dim(1, false, Kind::Float)?;
        l2_normalize(&self.forward(&mean)?, -1)
    }
}

/// `F.normalize(x, dim)`: x / max(‖x‖, 1e-12).
fn l2_normalize(x: &Tensor, dim: i64) -> Result<Tensor, TchError> {
    x.f_div(&x.f_norm_scalaropt_dim(2, [dim].as_slice(), true)?.f_clamp_min(1e-12)?)
}

/// Cosine similarity maps (B, N, h, w) between patch tokens (B, P = h·w, C) and class embeddings (N, C)
/// (`DINOTextMasker.forward_seg`).
pub fn similarity_maps(patches: &Tensor, grid: (i64, i64), classes: &Tensor) -> Result<Tensor, Talk2DinoError> {
    let (b, p, c) = patches.size3()?;
    let (_, c_classes) = classes.size2()?;
    if p != grid.0 * grid.1 || c != c_classes {
        return Err(InputError::Disagree {
            operation: "cosine maps",
            shapes: vec![
                ("patch tokens", patches.size()),
                ("patch grid", vec![grid.0, grid.1]),
                ("class embeddings", classes.size()),
            ],
        }
        .into());
    }
    let sim = l2_normalize(patches, -1)?.f_matmul(&classes.f_tr()?)?; // (B, P, N)
    Ok(sim.f_permute([0, 2, 1])?.f_reshape([b, -1, grid.0, grid.1])?)
}

/// Talk2DINO's background cleaning of soft masks (B, N, h, w) with the raw patch tokens (B, P, C), the last
/// block's CLS→patch attention logits (B, M, P) and the class embeddings (N, C); min/max per image
/// (`similarity_assignment_weighted`, which assumes a batch of one).
pub fn background_clean(
    masks: &Tensor,
    patches: &Tensor,
    attention_logits: &Tensor,
    classes: &Tensor,
    lambda: f64,
) -> Result<Tensor, Talk2DinoError> {
    let (b, n, h, w) = masks.size4()?;
    let (b_attn, _, p) = attention_logits.size3()?;
    let (b_patches, p_patches, _) = patches.size3()?;
    if b_attn != b || b_patches != b || p != h * w || p_patches != h * w {
        return Err(InputError::disagree(
            "background cleaning",
            &[("masks", masks), ("patch tokens", patches), ("attention logits", attention_logits)],
        )
        .into());
    }
    let mut out = Vec::with_capacity(b as usize);
    for i in 0..b {
        let mask = masks.f_get(i)?.f_reshape([n, h * w])?;
        let attn = attention_logits.f_get(i)?; // (M, P)
        let feat = patches.f_get(i)?; // (P, C)

        // Per-head embeddings: the mean over patches of logit · feature, normalised.
        let heads = l2_normalize(&attn.f_matmul(&feat)?.f_div_scalar((h * w) as f64)?, -1)?; // (M, C)
        let weights = classes.f_matmul(&heads.f_tr()?)?.f_softmax(-1, Kind::Float)?; // (N, M)
        let per_class = weights
            .f_matmul(&attn)?
            .f_div(&weights.f_sum_dim_intlist(-1, true, Kind::Float)?)?
            .f_softmax(-1, Kind::Float)?; // (N, P)
        let (lo, hi) = (
            per_class.f_min()?.f_double_value(&[])?,
            per_class.f_max()?.f_double_value(&[])?,
        );
        let hi = hi.max(hi - lo);
        let (mlo, mhi) = (mask.f_min()?, mask.f_max()?);
        let rescaled = per_class
            .f_sub_scalar(lo)?
            .f_div_scalar(hi)?
            .f_mul(&mhi.f_sub(&mlo)?)?
            .f_add(&mlo)?;
        out.push(
            mask.f_add(&rescaled.f_mul_scalar(lambda)?)?
                .f_div_scalar(1.0 + lambda)?
                .f_reshape([n, h, w])?,
        );
    }
    Ok(Tensor::f_stack(&out, 0)?)
}

/// Soft masks upsampled to (H, W) (bilinear, align_corners=True), a constant `bg_threshold` channel in front,
/// argmax: 0 = background, k = class k−1. Returns (B, H, W) int64. (The square view without PAMR; [`segment`]
/// runs every view.)
pub fn label_map(soft_masks: &Tensor, size: (i64, i64), bg_threshold: f64) -> Result<Tensor, tch::TchError> {
    let up = soft_masks.f_upsample_bilinear2d([size.0, size.1], true, None, None)?;
    let (b, _, h, w) = up.size4()?;
    let bg = Tensor::f_full([b, 1, h, w], bg_threshold, (Kind::Float, up.device()))?;
    Tensor::f_cat(&[bg, up], 1)?.f_argmax(1, false)
}

/// Checks (B, 3, H, W) with B, H, W > 0; `what` names the images in the error.
fn check_images(images: &Tensor, what: &'static str) -> Result<(i64, i64, i64), Talk2DinoError> {
    match images.size().as_slice() {
        &[b, 3, h, w] if b > 0 && h > 0 && w > 0 => Ok((b, h, w)),
        _ => Err(InputError::tensor(what, "(B, 3, H, W), B, H, W > 0", images).into()),
    }
}

/// Talk2DINO's image preprocessing, `T.Resize((S, S))` then `/ 255`: (B, 3, H, W) RGB values in 0..=255 (any
/// float or integer kind) → (B, 3, S, S) float32 in [0, 1]. The resize runs on the float values (bilinear,
/// `align_corners=False`) and is **not rounded**: the values keep their fractions, as in Talk2DINO's
/// `generate_masks`, whose input is a float tensor. An image already S×S is returned as is (torchvision's
/// `resize` does the same). `antialias`: torchvision's default for tensors, true from torchvision 0.17 (the
/// unpinned demo / Hugging Face environment), false in 0.16 (the pinned mmseg benchmark environment); the two
/// differ only when the image is shrunk.
pub fn resize_square(images255: &Tensor, size_px: i64, antialias: bool) -> Result<Tensor, Talk2DinoError> {
    let (_, h, w) = check_images(images255, "images to resize square")?;
    if size_px <= 0 {
        return Err(Talk2DinoError::SquareSize { size_px });
    }
    let x = images255.f_to_kind(Kind::Float)?;
    let resized = if (h, w) == (size_px, size_px) {
        x
    } else if antialias {
        x.f_internal_upsample_bilinear2d_aa([size_px, size_px], false, None, None)?
    } else {
        x.f_upsample_bilinear2d([size_px, size_px], false, None, None)?
    };
    Ok(resized.f_div_scalar(255.0)?)
}

/// Soft masks (B, N, h, w) of `images01` (Talk2DINO-preprocessed, see [`resize_square`]) for the class
/// embeddings (N, C): patch tokens after the final norm, cosine to every class, sigmoid, and with
/// `with_background_clean` the cleaning of [`background_clean`] from the last block's CLS→patch attention logits,
/// scaled by [`ATTENTION_SCALE`] as Talk2DINO recomputes them.
pub fn soft_masks(
    vit: &crate::vit::Vit,
    images01: &Tensor,
    classes: &Tensor,
    with_background_clean: bool,
) -> Result<Tensor, Talk2DinoError> {
    let tokens = vit.forward(
        &vit.normalize(images01)?,
        crate::vit::ForwardOptions {
            cls_attention_logits: with_background_clean,
            ..crate::vit::ForwardOptions::default()
        },
    )?;
    let _guard = tch::no_grad_guard();
    let classes = classes.f_to_device(tokens.patches.device())?.f_to_kind(Kind::Float)?;
    let soft = similarity_maps(&tokens.patches, tokens.grid, &classes)?.f_sigmoid()?;
    Ok(match &tokens.cls_attention_logits {
        Some(attn) if with_background_clean => {
            // The ViT scales the logits by head_dim^-½; Talk2DINO recomputes them with its hard-coded 0.125 (the
            // same for ViT-B/L's 64-wide heads, not for other widths).
            let attn = attn.f_mul_scalar(ATTENTION_SCALE * (vit.config().head_dim() as f64).sqrt())?;
            background_clean(&soft, &tokens.patches, &attn, &classes, LAMBDA_BG)?
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
    let (k, _, _) = masks.size3()?;
    let ry = Tensor::f_from_slice(&axis_coverage(rows, grid.0 as usize))?
        .f_view([grid.0, rows.cells as i64])?
        .f_to_device(device)?;
    let rx = Tensor::f_from_slice(&axis_coverage(cols, grid.1 as usize))?
        .f_view([grid.1, cols.cells as i64])?
        .f_to_device(device)?;
    let m = masks.f_to_device(device)?.f_to_kind(Kind::Float)?;
    let coverage = ry.f_matmul(&m)?.f_matmul(&rx.f_tr()?)?.f_reshape([k, grid.0 * grid.1])?; // (K, P)
    let total = coverage.f_sum_dim_intlist(-1, true, Kind::Float)?; // (K, 1)
    let feats = l2_normalize(&patches.f_to_kind(Kind::Float)?, -1)?; // (P, C)
    let embedding = l2_normalize(&coverage.f_matmul(&feats)?.f_div(&total)?, -1)?;
    let classes = classes.f_to_device(device)?.f_to_kind(Kind::Float)?;
    let scores = embedding.f_matmul(&classes.f_tr()?)?; // (K, N)
    let (_, n) = scores.size2()?;
    let flat = Vec::<f32>::try_from(&scores.f_to_device(tch::Device::Cpu)?.f_contiguous()?.f_view([-1])?)?;
    let totals = Vec::<f32>::try_from(&total.f_to_device(tch::Device::Cpu)?.f_contiguous()?.f_view([-1])?)?;
    Ok(InstanceNames {
        scores: flat
            .chunks(n.max(1) as usize)
            .map(<[f32]>::to_vec)
            .take(k as usize)
            .collect(),
        coverage_patches: totals,
    })
}

/// A class index and its score.
pub type Ranked = (usize, f32);

/// Index and value of the best and the second-best score (ties: the lower index first); NaNs never win.
pub fn top_two(scores: &[f32]) -> Option<(Ranked, Option<Ranked>)> {
    let mut order: Vec<usize> = (0..scores.len()).filter(|&i| !scores[i].is_nan()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let best = *order.first()?;
    Some(((best, scores[best]), order.get(1).map(|&i| (i, scores[i]))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_are_typed_errors_naming_the_argument_and_value() {
        let cpu = (Kind::Float, tch::Device::Cpu);
        let chw = Tensor::zeros([3, 8, 8], cpu);
        match resize_square(&chw, 4, true) {
            Err(Talk2DinoError::Input(InputError::Tensor { argument, shape, kind, .. })) => {
                assert_eq!((argument, shape, kind), ("images to resize square", vec![3, 8, 8], Kind::Float))
            }
            other => panic!("{other:?}"),
        }
        let bchw = Tensor::zeros([1, 3, 8, 8], cpu);
        assert!(matches!(resize_square(&bchw, 0, true), Err(Talk2DinoError::SquareSize { size_px: 0 })));
        assert!(matches!(View::by_name("tiles", 448), Err(Talk2DinoError::UnknownView { name }) if name == "tiles"));
        let (patches, classes) = (Tensor::zeros([1, 6, 8], cpu), Tensor::zeros([2, 8], cpu));
        match similarity_maps(&patches, (2, 2), &classes) {
            Err(Talk2DinoError::Input(InputError::Disagree { operation, shapes })) => {
                assert_eq!(operation, "cosine maps");
                assert_eq!(shapes[1], ("patch grid", vec![2, 2]));
            }
            other => panic!("{other:?}"),
        }
        let window = SlidingWindow { stride_px: 0, ..SlidingWindow::TALK2DINO };
        let frame = Tensor::zeros([1, 3, 8, 8], (Kind::Uint8, tch::Device::Cpu));
        assert!(matches!(
            keep_ratio_resize(&frame, &window),
            Err(Talk2DinoError::BadWindow { window: w }) if w.stride_px == 0
        ));
    }

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
