//! [`VitConfig`]: every hyper-parameter of one ViT backbone, with the official models as named presets.
//!
//! The presets are data, not branches: the forward reads switches (`layer_scale`, `patch_bias`, `ln_pre`,
//! `activation`, `gated_mlp`, `ln_eps`, `registers`, `pos_grid`, `pos_interp`, `rope_base`, `k_bias`, …) and
//! never the family name. The family only fixes the defaults of a custom size and the image statistics. Values
//! are those of the official implementations (models.md §3–4, exports-dinov3.md §2):
//!
//! | name | D | heads | depth | MLP | patch | native grid | registers | extras |
//! |---|---|---|---|---|---|---|---|---|
//! | `dinov2-vits14` / `-vitb14` / `-vitl14` | 384 / 768 / 1024 | 6 / 12 / 16 | 12 / 12 / 24 | 4·D | 14 | 37 (518 px) | 0 | LayerScale, LN eps 1e-6 |
//! | `dinov2-vit{s,b,l}14-reg` | same | | | | 14 | 37 | 4 | registers after the pos add |
//! | `dino-vits16` / `-vits8` / `-vitb16` / `-vitb8` | 384 / 384 / 768 / 768 | 6 / 6 / 12 / 12 | 12 | 4·D | 16 / 8 / 16 / 8 | 14 / 28 / 14 / 28 (224 px) | 0 | LN eps 1e-6 |
//! | `clip-vitb16` | 768 | 12 | 12 | 3072 | 16 | 14 | 0 | no conv bias, `ln_pre`, QuickGELU, LN eps 1e-5, `proj` 768→512 |
//! | `mae-vitb16` | 768 | 12 | 12 | 3072 | 16 | 14 | 0 | LN eps 1e-6 |
//! | `dinov3-vits16` / `-vitb16` / `-vitl16` | 384 / 768 / 1024 | 6 / 12 / 16 | 12 / 12 / 24 | 4·D, GELU | 16 | none (RoPE) | 4 storage | LayerScale, K bias masked, LN eps 1e-5 |
//! | `dinov3-vits16plus` | 384 | 6 | 12 | SwiGLU 1536 | 16 | none (RoPE) | 4 storage | as above |
//!
//! DINOv3 (facebookresearch/dinov3 `dinov3/hub/backbones.py`, `dinov3_vit{s16,s16plus,b16,l16}`; transformers
//! `DINOv3ViTConfig`): no learned position embedding (`pos_grid` 0) but axial RoPE with base 100 on the q and k
//! of the patch tokens ([`VitConfig::rope_base`]); 4 storage tokens, held in the `registers` switch since they
//! sit where DINOv2's registers sit ([CLS, storage, patches]); `norm_layer="layernormbf16"`, i.e. LayerNorm eps
//! 1e-5; `layerscale_init` set, so LayerScale; `mask_k_bias=True` ([`VitConfig::k_bias`] false); `ffn_layer`
//! `mlp` (GELU) for S/B/L and `swiglu` for S+ (`ffn_ratio` 6, hidden `int(6·D·2/3)` rounded up to 8 = 4·D =
//! 1536, transformers' `intermediate_size`), which is [`VitConfig::gated_mlp`] with SiLU. Images use the
//! ImageNet statistics of the web-image (LVD-1689M) weights; the satellite (SAT-493M) weights use other
//! statistics and are not a preset.
//!
//! Position-embedding resize defaults ([`PosInterp`]) are what each official implementation does: hub DINOv2
//! without registers and DINOv1 [`PosInterp::HubOffset`], hub `_reg` [`PosInterp::SizeAntialias`], CLIP and MAE
//! [`PosInterp::Size`] (identity at the native grid, HF's / MAE's `interpolate_pos_embed` resize elsewhere);
//! DINOv3 has nothing to resize ([`PosInterp::None`], never consulted).
//!
//! Custom sizes (tests, small runs) are written
//! `custom:family=F,depth=N,dim=D,heads=H,patch=P[,registers=R][,pos_grid=M][,ffn=K][,mlp=N][,proj=N][,interp=I]`:
//! `family` is `dinov2`, `dino`, `clip`, `mae` or `dinov3`; the other switches come from that family;
//! `registers` defaults to 4 for `dinov3` and 0 otherwise (only `dinov2` and `dinov3` have them); `pos_grid`
//! defaults to the family's native image size over the patch (518 px for DINOv2, 224 px otherwise; `dinov3`
//! has none and refuses `pos_grid` and `interp`); `ffn` is `mlp` (default: fc1 → activation → fc2) or `swiglu`
//! (`dinov3` only: w3(SiLU(w1·x) ⊙ w2·x), the "plus" models); `mlp` is the hidden width of either, default 4·dim;
//! `proj` (CLIP's output projection width) defaults to none; `interp` to the family default (one of
//! [`PosInterp::names`]). `dinov3` needs head_dim = dim/heads divisible by 4 (RoPE splits it into two axes of
//! sine/cosine pairs). Example: `custom:family=dinov3,depth=2,dim=64,heads=2,patch=16,registers=4,ffn=swiglu`.

use serde::{Deserialize, Serialize};

use super::VitError;

/// ImageNet statistics (DINOv1, DINOv2, MAE, DINOv3 web-image weights) on [0,1] RGB.
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];
/// OpenAI CLIP statistics on [0,1] RGB.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

/// Which official implementation the weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Dinov2,
    Dino,
    Clip,
    Mae,
    Dinov3,
}

impl Family {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "dinov2" => Some(Self::Dinov2),
            "dino" | "dinov1" => Some(Self::Dino),
            "clip" => Some(Self::Clip),
            "mae" => Some(Self::Mae),
            "dinov3" => Some(Self::Dinov3),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dinov2 => "dinov2",
            Self::Dino => "dino",
            Self::Clip => "clip",
            Self::Mae => "mae",
            Self::Dinov3 => "dinov3",
        }
    }

    /// Image side (px) the position embedding was trained for (DINOv3: its training crop; it has no learned
    /// position embedding).
    pub fn native_image_px(self) -> i64 {
        match self {
            Self::Dinov2 => 518,
            Self::Dino | Self::Clip | Self::Mae | Self::Dinov3 => 224,
        }
    }

    /// Whether the family has a learned position embedding (all but DINOv3, which uses RoPE).
    pub fn learned_positions(self) -> bool {
        self != Self::Dinov3
    }

    /// Register (DINOv3: storage) tokens of a custom size unless given.
    pub fn default_registers(self) -> i64 {
        match self {
            Self::Dinov3 => 4,
            Self::Dinov2 | Self::Dino | Self::Clip | Self::Mae => 0,
        }
    }

    /// Default position-embedding resize of the family's official implementation.
    pub fn default_interp(self, registers: i64) -> PosInterp {
        match (self, registers) {
            (Self::Dinov2, 0) | (Self::Dino, _) => PosInterp::HubOffset,
            (Self::Dinov2, _) => PosInterp::SizeAntialias,
            (Self::Clip | Self::Mae, _) => PosInterp::Size,
            (Self::Dinov3, _) => PosInterp::None,
        }
    }
}

/// MLP activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact (erf) GELU.
    Gelu,
    /// x·σ(1.702·x) (OpenAI CLIP).
    QuickGelu,
    /// x·σ(x), the gate of DINOv3's SwiGLU (`F.silu`).
    Silu,
}

/// How the learned position embedding (a square grid of `pos_grid`² rows plus the CLS row) is resized to an
/// input grid of (h0, w0) patches. Every mode is bicubic with A = −0.75 and align_corners=False, computed in
/// float32; the CLS row is never resized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PosInterp {
    /// facebookresearch/dinov2 hub without registers and facebookresearch/dino: `scale_factor = ((h0+0.1)/M,
    /// (w0+0.1)/M)`, no antialias, applied whenever h0·w0 ≠ M² or h0 ≠ w0 (so an axis that keeps M rows is
    /// still resampled with ratio M/(M+0.1)).
    HubOffset,
    /// Size-based, no antialias: transformers Dinov2Model / ViTModel / ViTMAEModel / CLIPVisionModel, MAE's
    /// `interpolate_pos_embed`. Identity at the native grid.
    Size,
    /// Size-based with antialias: hub DINOv2 `_reg` models (interpolate_offset 0, antialias) and transformers
    /// Dinov2WithRegistersModel.
    SizeAntialias,
    /// No resize: inputs must have the native grid (OpenAI CLIP).
    None,
}

impl PosInterp {
    pub fn names() -> &'static [&'static str] {
        &["hub-offset", "size", "size-antialias", "none"]
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "hub-offset" => Some(Self::HubOffset),
            "size" => Some(Self::Size),
            "size-antialias" => Some(Self::SizeAntialias),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HubOffset => "hub-offset",
            Self::Size => "size",
            Self::SizeAntialias => "size-antialias",
            Self::None => "none",
        }
    }
}

/// Every hyper-parameter of a ViT backbone. Serialised as JSON into the safetensors metadata
/// (`mrdino.vit_config`) by `tools/convert_vit.py`, so a weights file describes itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Preset name (`dinov2-vitb14`, …) or the canonical custom spec.
    pub name: String,
    pub family: Family,
    pub depth: i64,
    pub embed_dim: i64,
    pub heads: i64,
    pub mlp_dim: i64,
    pub patch_size: i64,
    /// Side M of the learned position-embedding grid (pos_embed has 1 + M² rows); 0 = no learned position
    /// embedding (DINOv3).
    pub pos_grid: i64,
    /// Register tokens (DINOv3: storage tokens), inserted between CLS and the patches after the position
    /// embedding is added; they get no position (no embedding row, no RoPE).
    pub registers: i64,
    /// LayerScale `ls1.gamma` / `ls2.gamma` on both residual branches.
    pub layer_scale: bool,
    /// The patch-embedding conv has a bias.
    pub patch_bias: bool,
    /// `ln_pre` LayerNorm after the position add (CLIP).
    pub ln_pre: bool,
    pub ln_eps: f64,
    /// MLP activation; with [`VitConfig::gated_mlp`] the gate's.
    pub activation: Activation,
    /// Gated MLP `mlp.w3(act(mlp.w1·x) ⊙ mlp.w2·x)` (DINOv3's SwiGLU, `mlp_dim` = the width of w1 and w2)
    /// instead of `mlp.fc2(act(mlp.fc1·x))`. Absent from older JSON: false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gated_mlp: bool,
    /// Axial rotary position embedding on the q and k of the patch tokens with periods
    /// `base^(4i/head_dim)`, i < head_dim/4 (DINOv3's `RopePositionEmbedding`, base 100); none elsewhere.
    /// Absent from older JSON: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_base: Option<f64>,
    /// The K third of `attn.qkv.bias` takes part. False for DINOv3, whose `LinearKMaskedBias` multiplies it by
    /// a zero `bias_mask` (transformers: `key_bias=False`); the converter writes it as zeros and the loader
    /// zeroes it again, so a file's K bias never reaches the forward. Absent from older JSON: true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub k_bias: bool,
    /// Width of CLIP's output projection `proj` (D, proj_dim), applied to the normed CLS token; none elsewhere.
    pub proj_dim: Option<i64>,
    pub pos_interp: PosInterp,
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

fn is_false(value: &bool) -> bool {
    !*value
}

const PRESETS: &[&str] = &[
    "dinov2-vits14",
    "dinov2-vitb14",
    "dinov2-vitl14",
    "dinov2-vits14-reg",
    "dinov2-vitb14-reg",
    "dinov2-vitl14-reg",
    "dino-vits16",
    "dino-vits8",
    "dino-vitb16",
    "dino-vitb8",
    "clip-vitb16",
    "mae-vitb16",
    "dinov3-vits16",
    "dinov3-vits16plus",
    "dinov3-vitb16",
    "dinov3-vitl16",
];

/// Shape of a custom model, before the family fills in the rest.
#[derive(Clone, Copy, Debug)]
pub struct VitSize {
    pub depth: i64,
    pub embed_dim: i64,
    pub heads: i64,
    pub patch_size: i64,
    pub registers: i64,
    /// Side of the learned position-embedding grid; ignored by families without one (DINOv3).
    pub pos_grid: i64,
}

impl VitConfig {
    /// The preset names accepted by [`VitConfig::by_name`] (besides `custom:…`), in a fixed order.
    pub fn names() -> &'static [&'static str] {
        PRESETS
    }

    /// A model of `family` with the given size and the family's switches (plain MLP 4·D, no projection).
    pub fn family(family: Family, name: &str, size: VitSize) -> Self {
        let (layer_scale, patch_bias, ln_pre, ln_eps, activation, mean, std) = match family {
            Family::Dinov2 => (true, true, false, 1e-6, Activation::Gelu, IMAGENET_MEAN, IMAGENET_STD),
            Family::Dino | Family::Mae => (false, true, false, 1e-6, Activation::Gelu, IMAGENET_MEAN, IMAGENET_STD),
            Family::Clip => (false, false, true, 1e-5, Activation::QuickGelu, CLIP_MEAN, CLIP_STD),
            Family::Dinov3 => (true, true, false, 1e-5, Activation::Gelu, IMAGENET_MEAN, IMAGENET_STD),
        };
        let rope = family == Family::Dinov3;
        Self {
            name: name.to_string(),
            family,
            depth: size.depth,
            embed_dim: size.embed_dim,
            heads: size.heads,
            mlp_dim: 4 * size.embed_dim,
            patch_size: size.patch_size,
            pos_grid: if family.learned_positions() { size.pos_grid } else { 0 },
            registers: size.registers,
            layer_scale,
            patch_bias,
            ln_pre,
            ln_eps,
            activation,
            gated_mlp: false,
            rope_base: rope.then_some(100.0),
            k_bias: !rope,
            proj_dim: None,
            pos_interp: family.default_interp(size.registers),
            mean,
            std,
        }
    }

    /// A preset by name, or a `custom:…` spec (see the module docs).
    pub fn by_name(name: &str) -> Result<Self, VitError> {
        if let Some(spec) = name.strip_prefix("custom:") {
            return Self::custom(spec);
        }
        let size = |depth, embed_dim, heads, patch_size, registers, pos_grid| VitSize {
            depth,
            embed_dim,
            heads,
            patch_size,
            registers,
            pos_grid,
        };
        let config = match name {
            "dinov2-vits14" => Self::family(Family::Dinov2, name, size(12, 384, 6, 14, 0, 37)),
            "dinov2-vitb14" => Self::family(Family::Dinov2, name, size(12, 768, 12, 14, 0, 37)),
            "dinov2-vitl14" => Self::family(Family::Dinov2, name, size(24, 1024, 16, 14, 0, 37)),
            "dinov2-vits14-reg" => Self::family(Family::Dinov2, name, size(12, 384, 6, 14, 4, 37)),
            "dinov2-vitb14-reg" => Self::family(Family::Dinov2, name, size(12, 768, 12, 14, 4, 37)),
            "dinov2-vitl14-reg" => Self::family(Family::Dinov2, name, size(24, 1024, 16, 14, 4, 37)),
            "dino-vits16" => Self::family(Family::Dino, name, size(12, 384, 6, 16, 0, 14)),
            "dino-vits8" => Self::family(Family::Dino, name, size(12, 384, 6, 8, 0, 28)),
            "dino-vitb16" => Self::family(Family::Dino, name, size(12, 768, 12, 16, 0, 14)),
            "dino-vitb8" => Self::family(Family::Dino, name, size(12, 768, 12, 8, 0, 28)),
            "clip-vitb16" => Self {
                proj_dim: Some(512),
                ..Self::family(Family::Clip, name, size(12, 768, 12, 16, 0, 14))
            },
            "mae-vitb16" => Self::family(Family::Mae, name, size(12, 768, 12, 16, 0, 14)),
            "dinov3-vits16" => Self::family(Family::Dinov3, name, size(12, 384, 6, 16, 4, 0)),
            "dinov3-vits16plus" => Self::family(Family::Dinov3, name, size(12, 384, 6, 16, 4, 0)).swiglu(1536),
            "dinov3-vitb16" => Self::family(Family::Dinov3, name, size(12, 768, 12, 16, 4, 0)),
            "dinov3-vitl16" => Self::family(Family::Dinov3, name, size(24, 1024, 16, 16, 4, 0)),
            other => {
                return Err(VitError::UnknownBackbone {
                    name: other.to_string(),
                    known: PRESETS.join(", "),
                })
            }
        };
        Ok(config)
    }

    /// Parses the body of a `custom:` spec.
    fn custom(spec: &str) -> Result<Self, VitError> {
        let bad = |message: String| VitError::BadSpec {
            spec: format!("custom:{spec}"),
            message,
        };
        let mut family = None;
        let (mut depth, mut dim, mut heads, mut patch) = (None, None, None, None);
        let (mut registers, mut pos_grid, mut mlp, mut proj, mut interp) = (None, None, None, None, None);
        let mut swiglu = false;
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("`{item}` is not key=value")))?;
            let int = || -> Result<i64, VitError> {
                match value.parse::<i64>() {
                    Ok(v) if v > 0 || (key == "registers" && v == 0) => Ok(v),
                    _ => Err(bad(format!("`{key}` must be a positive integer, got `{value}`"))),
                }
            };
            match key {
                "family" => {
                    family = Some(Family::parse(value).ok_or_else(|| {
                        bad(format!(
                            "unknown family `{value}` (expected dinov2, dino, clip, mae or dinov3)"
                        ))
                    })?)
                }
                "depth" => depth = Some(int()?),
                "dim" => dim = Some(int()?),
                "heads" => heads = Some(int()?),
                "patch" => patch = Some(int()?),
                "registers" => registers = Some(int()?),
                "pos_grid" => pos_grid = Some(int()?),
                "ffn" => {
                    swiglu = match value {
                        "mlp" => false,
                        "swiglu" => true,
                        _ => return Err(bad(format!("unknown ffn `{value}` (expected mlp or swiglu)"))),
                    }
                }
                "mlp" => mlp = Some(int()?),
                "proj" => proj = Some(int()?),
                "interp" => {
                    interp = Some(PosInterp::parse(value).ok_or_else(|| {
                        bad(format!(
                            "unknown interp `{value}` (expected one of {})",
                            PosInterp::names().join(", ")
                        ))
                    })?)
                }
                other => {
                    return Err(bad(format!(
                        "unknown key `{other}` (expected family, depth, dim, heads, patch, registers, pos_grid, ffn, \
                         mlp, proj, interp)"
                    )))
                }
            }
        }
        let need = |v: Option<i64>, key: &str| v.ok_or_else(|| bad(format!("`{key}` is required")));
        let family = family.ok_or_else(|| bad("`family` is required".into()))?;
        let (depth, dim, heads, patch) = (
            need(depth, "depth")?,
            need(dim, "dim")?,
            need(heads, "heads")?,
            need(patch, "patch")?,
        );
        if dim % heads != 0 {
            return Err(bad(format!("dim {dim} is not a multiple of heads {heads}")));
        }
        let registers = registers.unwrap_or(family.default_registers());
        if !matches!(family, Family::Dinov2 | Family::Dinov3) && registers != 0 {
            return Err(bad(format!(
                "registers exist only in the dinov2 and dinov3 families, got {registers}"
            )));
        }
        if family != Family::Clip && proj.is_some() {
            return Err(bad("`proj` exists only in the clip family".into()));
        }
        if family != Family::Dinov3 && swiglu {
            return Err(bad("`ffn=swiglu` exists only in the dinov3 family".into()));
        }
        if !family.learned_positions() {
            if pos_grid.is_some() || interp.is_some() {
                return Err(bad(format!(
                    "the {} family has no learned position embedding (RoPE), so `pos_grid` and `interp` do not apply",
                    family.as_str()
                )));
            }
            if (dim / heads) % 4 != 0 {
                return Err(bad(format!(
                    "RoPE needs head_dim = dim/heads divisible by 4, got {dim}/{heads} = {}",
                    dim / heads
                )));
            }
        }
        let pos_grid = pos_grid.unwrap_or(family.native_image_px() / patch).max(1);
        let mut canonical = format!(
            "custom:family={},depth={depth},dim={dim},heads={heads},patch={patch},registers={registers}",
            family.as_str()
        );
        if family.learned_positions() {
            canonical.push_str(&format!(",pos_grid={pos_grid}"));
        }
        if swiglu {
            canonical.push_str(",ffn=swiglu");
        }
        if let Some(m) = mlp {
            canonical.push_str(&format!(",mlp={m}"));
        }
        if let Some(p) = proj {
            canonical.push_str(&format!(",proj={p}"));
        }
        if let Some(i) = interp {
            canonical.push_str(&format!(",interp={}", i.as_str()));
        }
        let size = VitSize {
            depth,
            embed_dim: dim,
            heads,
            patch_size: patch,
            registers,
            pos_grid,
        };
        let mut config = Self::family(family, &canonical, size);
        config.mlp_dim = mlp.unwrap_or(4 * dim);
        if swiglu {
            let hidden = config.mlp_dim;
            config = config.swiglu(hidden);
        }
        config.proj_dim = proj;
        if let Some(i) = interp {
            config.pos_interp = i;
        }
        Ok(config)
    }

    /// The same model with DINOv3's SwiGLU feed-forward of hidden width `hidden`.
    fn swiglu(mut self, hidden: i64) -> Self {
        self.gated_mlp = true;
        self.activation = Activation::Silu;
        self.mlp_dim = hidden;
        self
    }

    /// The same model with another position-embedding resize.
    pub fn with_pos_interp(mut self, pos_interp: PosInterp) -> Self {
        self.pos_interp = pos_interp;
        self
    }

    pub fn head_dim(&self) -> i64 {
        self.embed_dim / self.heads
    }

    /// JSON for the `mrdino.vit_config` metadata entry.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// True when `other` has the same weights layout (everything but the name, resize mode and statistics).
    pub fn same_architecture(&self, other: &Self) -> bool {
        let arch = |c: &Self| {
            (
                c.family,
                c.depth,
                c.embed_dim,
                c.heads,
                c.mlp_dim,
                c.patch_size,
                c.pos_grid,
                c.registers,
                c.layer_scale,
                c.patch_bias,
                c.ln_pre,
                c.proj_dim,
            )
        };
        let switches = |c: &Self| (c.gated_mlp, c.rope_base.map(f64::to_bits), c.k_bias);
        arch(self) == arch(other) && switches(self) == switches(other)
    }

    /// The complete list of parameter keys with their shapes, in the canonical (DINOv2 / DINOv3 hub) naming.
    /// `pos_embed` is listed when `pos_grid` > 0; `proj` when `proj_dim` is set (the loader treats it, like
    /// `mask_token`, as optional). A gated MLP has `mlp.w1`, `mlp.w2`, `mlp.w3` (DINOv3 hub names) in place of
    /// `mlp.fc1`, `mlp.fc2`. DINOv3's storage tokens are `register_tokens`; its `bias_mask` buffers and RoPE
    /// `periods` are no weights (see [`VitConfig::k_bias`], [`VitConfig::rope_base`]).
    pub fn expected_keys(&self) -> Vec<(String, Vec<i64>)> {
        let d = self.embed_dim;
        let mut keys = vec![("cls_token".to_string(), vec![1, 1, d])];
        if self.pos_grid > 0 {
            keys.push(("pos_embed".to_string(), vec![1, 1 + self.pos_grid * self.pos_grid, d]));
        }
        if self.registers > 0 {
            keys.push(("register_tokens".to_string(), vec![1, self.registers, d]));
        }
        keys.push((
            "patch_embed.proj.weight".to_string(),
            vec![d, 3, self.patch_size, self.patch_size],
        ));
        if self.patch_bias {
            keys.push(("patch_embed.proj.bias".to_string(), vec![d]));
        }
        if self.ln_pre {
            keys.push(("ln_pre.weight".to_string(), vec![d]));
            keys.push(("ln_pre.bias".to_string(), vec![d]));
        }
        for i in 0..self.depth {
            let mut push = |name: &str, shape: Vec<i64>| keys.push((format!("blocks.{i}.{name}"), shape));
            push("norm1.weight", vec![d]);
            push("norm1.bias", vec![d]);
            push("attn.qkv.weight", vec![3 * d, d]);
            push("attn.qkv.bias", vec![3 * d]);
            push("attn.proj.weight", vec![d, d]);
            push("attn.proj.bias", vec![d]);
            if self.layer_scale {
                push("ls1.gamma", vec![d]);
            }
            push("norm2.weight", vec![d]);
            push("norm2.bias", vec![d]);
            if self.gated_mlp {
                push("mlp.w1.weight", vec![self.mlp_dim, d]);
                push("mlp.w1.bias", vec![self.mlp_dim]);
                push("mlp.w2.weight", vec![self.mlp_dim, d]);
                push("mlp.w2.bias", vec![self.mlp_dim]);
                push("mlp.w3.weight", vec![d, self.mlp_dim]);
                push("mlp.w3.bias", vec![d]);
            } else {
                push("mlp.fc1.weight", vec![self.mlp_dim, d]);
                push("mlp.fc1.bias", vec![self.mlp_dim]);
                push("mlp.fc2.weight", vec![d, self.mlp_dim]);
                push("mlp.fc2.bias", vec![d]);
            }
            if self.layer_scale {
                push("ls2.gamma", vec![d]);
            }
        }
        keys.push(("norm.weight".to_string(), vec![d]));
        keys.push(("norm.bias".to_string(), vec![d]));
        if let Some(p) = self.proj_dim {
            keys.push(("proj".to_string(), vec![d, p]));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_round_trips_through_json() {
        for name in VitConfig::names() {
            let config = VitConfig::by_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(config.name, *name);
            assert_eq!(config.head_dim(), 64, "{name}");
            let back = VitConfig::from_json(&config.to_json()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(back, config);
        }
        let b14 = VitConfig::by_name("dinov2-vitb14").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b14.pos_interp, PosInterp::HubOffset);
        assert_eq!(b14.expected_keys().len(), 4 + 12 * 14 + 2);
        let reg = VitConfig::by_name("dinov2-vitb14-reg").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((reg.registers, reg.pos_interp), (4, PosInterp::SizeAntialias));
        let clip = VitConfig::by_name("clip-vitb16").unwrap_or_else(|e| panic!("{e}"));
        assert!(clip.ln_pre && !clip.patch_bias && clip.ln_eps == 1e-5 && clip.activation == Activation::QuickGelu);
    }

    #[test]
    fn dinov3_presets_are_the_official_sizes() {
        let get = |name: &str| VitConfig::by_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (name, depth, dim, heads, mlp, gated) in [
            ("dinov3-vits16", 12, 384, 6, 1536, false),
            ("dinov3-vits16plus", 12, 384, 6, 1536, true),
            ("dinov3-vitb16", 12, 768, 12, 3072, false),
            ("dinov3-vitl16", 24, 1024, 16, 4096, false),
        ] {
            let c = get(name);
            assert_eq!(
                (c.family, c.depth, c.embed_dim, c.heads, c.mlp_dim, c.gated_mlp),
                (Family::Dinov3, depth, dim, heads, mlp, gated),
                "{name}"
            );
            assert_eq!((c.patch_size, c.registers, c.pos_grid), (16, 4, 0), "{name}");
            assert_eq!((c.rope_base, c.k_bias, c.ln_eps), (Some(100.0), false, 1e-5), "{name}");
            assert!(
                c.layer_scale && c.patch_bias && !c.ln_pre && c.proj_dim.is_none(),
                "{name}"
            );
            let act = if gated { Activation::Silu } else { Activation::Gelu };
            assert_eq!(c.activation, act, "{name}");
            assert_eq!((c.mean, c.std), (IMAGENET_MEAN, IMAGENET_STD), "{name}");
            let keys = c.expected_keys();
            assert!(
                keys.iter().all(|(k, _)| k != "pos_embed"),
                "{name}: no learned position embedding"
            );
            assert!(
                keys.contains(&("register_tokens".to_string(), vec![1, 4, dim])),
                "{name}"
            );
            let per_block = if gated { 16 } else { 14 };
            assert_eq!(keys.len() as i64, 4 + depth * per_block + 2, "{name}");
        }
        let plus = get("dinov3-vits16plus");
        assert!(plus
            .expected_keys()
            .contains(&("blocks.11.mlp.w3.weight".to_string(), vec![384, 1536])));
        assert!(!plus.same_architecture(&get("dinov3-vits16")));
    }

    #[test]
    fn older_families_serialise_as_before() {
        // The DINOv3 switches are left out of the JSON at their defaults, so existing files and their metadata
        // keep their bytes, and JSON written before the switches existed still reads.
        for name in VitConfig::names().iter().filter(|n| !n.starts_with("dinov3")) {
            let config = VitConfig::by_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            let json = config.to_json();
            for key in ["rope_base", "k_bias", "gated_mlp"] {
                assert!(!json.contains(key), "{name}: {json}");
            }
            assert!(config.k_bias && !config.gated_mlp && config.rope_base.is_none());
        }
        let old = r#"{"name":"dinov2-vitb14","family":"dinov2","depth":12,"embed_dim":768,"heads":12,"mlp_dim":3072,"patch_size":14,"pos_grid":37,"registers":0,"layer_scale":true,"patch_bias":true,"ln_pre":false,"ln_eps":1e-6,"activation":"gelu","proj_dim":null,"pos_interp":"hub-offset","mean":[0.485,0.456,0.406],"std":[0.229,0.224,0.225]}"#;
        let parsed = VitConfig::from_json(old).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Some(parsed), VitConfig::by_name("dinov2-vitb14").ok());
    }

    #[test]
    fn custom_specs() {
        let c = VitConfig::by_name("custom:family=dinov2,depth=2,dim=64,heads=2,patch=14,registers=4,pos_grid=4")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.depth, c.embed_dim, c.heads, c.mlp_dim, c.registers, c.pos_grid),
            (2, 64, 2, 256, 4, 4)
        );
        assert_eq!(c.pos_interp, PosInterp::SizeAntialias);
        assert_eq!(VitConfig::by_name(&c.name).ok(), Some(c.clone()));
        let d = VitConfig::by_name("custom:family=dino,depth=1,dim=32,heads=1,patch=8,interp=size")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.pos_grid, d.pos_interp), (28, PosInterp::Size));
        for bad in [
            "custom:family=dinov2,depth=2,dim=64,heads=3,patch=14",
            "custom:family=dino,depth=2,dim=64,heads=2,patch=14,registers=4",
            "custom:family=vit,depth=2,dim=64,heads=2,patch=14",
            "custom:family=dinov2,depth=2,dim=64,patch=14",
            "custom:family=dinov2,depth=0,dim=64,heads=2,patch=14",
            "custom:family=dinov2,depth=2,dim=64,heads=2,patch=14,colour=red",
            "dinov3-vitg16",
            "custom:family=dinov3,depth=2,dim=64,heads=2,patch=16,pos_grid=14",
            "custom:family=dinov3,depth=2,dim=64,heads=2,patch=16,interp=size",
            "custom:family=dinov3,depth=2,dim=36,heads=2,patch=16",
            "custom:family=dinov3,depth=2,dim=64,heads=2,patch=16,ffn=geglu",
            "custom:family=dinov2,depth=2,dim=64,heads=2,patch=14,ffn=swiglu",
        ] {
            assert!(VitConfig::by_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn custom_dinov3_specs() {
        let get = |name: &str| VitConfig::by_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let c = get("custom:family=dinov3,depth=2,dim=64,heads=2,patch=16");
        assert_eq!(
            c.name,
            "custom:family=dinov3,depth=2,dim=64,heads=2,patch=16,registers=4"
        );
        assert_eq!(
            (c.registers, c.pos_grid, c.mlp_dim, c.gated_mlp, c.rope_base, c.k_bias),
            (4, 0, 256, false, Some(100.0), false)
        );
        assert_eq!(get(&c.name), c);
        let s = get("custom:family=dinov3,depth=2,dim=64,heads=2,patch=16,ffn=swiglu,registers=0");
        assert_eq!(
            s.name,
            "custom:family=dinov3,depth=2,dim=64,heads=2,patch=16,registers=0,ffn=swiglu"
        );
        assert_eq!(
            (s.registers, s.mlp_dim, s.gated_mlp, s.activation),
            (0, 256, true, Activation::Silu)
        );
        assert_eq!(get(&s.name), s);
        let w = get("custom:family=dinov3,depth=1,dim=32,heads=1,patch=8,mlp=40,ffn=swiglu");
        assert_eq!(
            w.name,
            "custom:family=dinov3,depth=1,dim=32,heads=1,patch=8,registers=4,ffn=swiglu,mlp=40"
        );
        assert_eq!((w.mlp_dim, w.gated_mlp), (40, true));
        assert_eq!(get(&w.name), w);
        // The plus preset is reachable as a custom spec with the same layout.
        let plus = get("custom:family=dinov3,depth=12,dim=384,heads=6,patch=16,ffn=swiglu");
        assert!(plus.same_architecture(&get("dinov3-vits16plus")));
    }
}
