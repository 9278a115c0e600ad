//! [`VitConfig`]: every hyper-parameter of one ViT backbone, with the official models as named presets.
//!
//! The presets are data, not branches: the forward reads switches (`layer_scale`, `patch_bias`, `ln_pre`,
//! `activation`, `ln_eps`, `registers`, `pos_interp`, …) and never the family name. The family only fixes the
//! defaults of a custom size and the image statistics. Values are those of the official implementations
//! (models.md §3–4):
//!
//! | name | D | heads | depth | MLP | patch | native grid | registers | extras |
//! |---|---|---|---|---|---|---|---|---|
//! | `dinov2-vits14` / `-vitb14` / `-vitl14` | 384 / 768 / 1024 | 6 / 12 / 16 | 12 / 12 / 24 | 4·D | 14 | 37 (518 px) | 0 | LayerScale, LN eps 1e-6 |
//! | `dinov2-vit{s,b,l}14-reg` | same | | | | 14 | 37 | 4 | registers after the pos add |
//! | `dino-vits16` / `-vits8` / `-vitb16` / `-vitb8` | 384 / 384 / 768 / 768 | 6 / 6 / 12 / 12 | 12 | 4·D | 16 / 8 / 16 / 8 | 14 / 28 / 14 / 28 (224 px) | 0 | LN eps 1e-6 |
//! | `clip-vitb16` | 768 | 12 | 12 | 3072 | 16 | 14 | 0 | no conv bias, `ln_pre`, QuickGELU, LN eps 1e-5, `proj` 768→512 |
//! | `mae-vitb16` | 768 | 12 | 12 | 3072 | 16 | 14 | 0 | LN eps 1e-6 |
//!
//! Position-embedding resize defaults ([`PosInterp`]) are what each official implementation does: hub DINOv2
//! without registers and DINOv1 [`PosInterp::HubOffset`], hub `_reg` [`PosInterp::SizeAntialias`], CLIP and MAE
//! [`PosInterp::Size`] (identity at the native grid, HF's / MAE's `interpolate_pos_embed` resize elsewhere).
//!
//! Custom sizes (tests, small runs) are written
//! `custom:family=F,depth=N,dim=D,heads=H,patch=P[,registers=R][,pos_grid=M][,mlp=N][,proj=N][,interp=I]`:
//! `family` is `dinov2`, `dino`, `clip` or `mae`; the other switches come from that family; `registers`
//! defaults to 0, `pos_grid` to the family's native image size over the patch (518 px for DINOv2, 224 px
//! otherwise), `mlp` to 4·dim, `proj` (CLIP's output projection width) to none, `interp` to the family
//! default (one of [`PosInterp::names`]).

use serde::{Deserialize, Serialize};

use super::VitError;

/// ImageNet statistics (DINOv1, DINOv2, MAE) on [0,1] RGB.
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
}

impl Family {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "dinov2" => Some(Self::Dinov2),
            "dino" | "dinov1" => Some(Self::Dino),
            "clip" => Some(Self::Clip),
            "mae" => Some(Self::Mae),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dinov2 => "dinov2",
            Self::Dino => "dino",
            Self::Clip => "clip",
            Self::Mae => "mae",
        }
    }

    /// Image side (px) the position embedding was trained for.
    pub fn native_image_px(self) -> i64 {
        match self {
            Self::Dinov2 => 518,
            Self::Dino | Self::Clip | Self::Mae => 224,
        }
    }

    /// Default position-embedding resize of the family's official implementation.
    pub fn default_interp(self, registers: i64) -> PosInterp {
        match (self, registers) {
            (Self::Dinov2, 0) | (Self::Dino, _) => PosInterp::HubOffset,
            (Self::Dinov2, _) => PosInterp::SizeAntialias,
            (Self::Clip | Self::Mae, _) => PosInterp::Size,
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
    /// Side M of the learned position-embedding grid (pos_embed has 1 + M² rows).
    pub pos_grid: i64,
    /// Register tokens, inserted between CLS and the patches after the position embedding is added.
    pub registers: i64,
    /// LayerScale `ls1.gamma` / `ls2.gamma` on both residual branches.
    pub layer_scale: bool,
    /// The patch-embedding conv has a bias.
    pub patch_bias: bool,
    /// `ln_pre` LayerNorm after the position add (CLIP).
    pub ln_pre: bool,
    pub ln_eps: f64,
    pub activation: Activation,
    /// Width of CLIP's output projection `proj` (D, proj_dim), applied to the normed CLS token; none elsewhere.
    pub proj_dim: Option<i64>,
    pub pos_interp: PosInterp,
    pub mean: [f64; 3],
    pub std: [f64; 3],
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
];

/// Shape of a custom model, before the family fills in the rest.
#[derive(Clone, Copy, Debug)]
pub struct VitSize {
    pub depth: i64,
    pub embed_dim: i64,
    pub heads: i64,
    pub patch_size: i64,
    pub registers: i64,
    pub pos_grid: i64,
}

impl VitConfig {
    /// The preset names accepted by [`VitConfig::by_name`] (besides `custom:…`), in a fixed order.
    pub fn names() -> &'static [&'static str] {
        PRESETS
    }

    /// A model of `family` with the given size and the family's switches (MLP 4·D, no projection).
    pub fn family(family: Family, name: &str, size: VitSize) -> Self {
        let (layer_scale, patch_bias, ln_pre, ln_eps, activation, mean, std) = match family {
            Family::Dinov2 => (true, true, false, 1e-6, Activation::Gelu, IMAGENET_MEAN, IMAGENET_STD),
            Family::Dino | Family::Mae => (false, true, false, 1e-6, Activation::Gelu, IMAGENET_MEAN, IMAGENET_STD),
            Family::Clip => (false, false, true, 1e-5, Activation::QuickGelu, CLIP_MEAN, CLIP_STD),
        };
        Self {
            name: name.to_string(),
            family,
            depth: size.depth,
            embed_dim: size.embed_dim,
            heads: size.heads,
            mlp_dim: 4 * size.embed_dim,
            patch_size: size.patch_size,
            pos_grid: size.pos_grid,
            registers: size.registers,
            layer_scale,
            patch_bias,
            ln_pre,
            ln_eps,
            activation,
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
        let (mut registers, mut pos_grid, mut mlp, mut proj, mut interp) = (0, None, None, None, None);
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
                    family =
                        Some(Family::parse(value).ok_or_else(|| {
                            bad(format!("unknown family `{value}` (expected dinov2, dino, clip or mae)"))
                        })?)
                }
                "depth" => depth = Some(int()?),
                "dim" => dim = Some(int()?),
                "heads" => heads = Some(int()?),
                "patch" => patch = Some(int()?),
                "registers" => registers = int()?,
                "pos_grid" => pos_grid = Some(int()?),
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
                        "unknown key `{other}` (expected family, depth, dim, heads, patch, registers, pos_grid, mlp, \
                         proj, interp)"
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
        if family != Family::Dinov2 && registers != 0 {
            return Err(bad(format!(
                "registers exist only in the dinov2 family, got {registers}"
            )));
        }
        if family != Family::Clip && proj.is_some() {
            return Err(bad("`proj` exists only in the clip family".into()));
        }
        let pos_grid = pos_grid.unwrap_or(family.native_image_px() / patch).max(1);
        let mut canonical = format!(
            "custom:family={},depth={depth},dim={dim},heads={heads},patch={patch},registers={registers},\
             pos_grid={pos_grid}",
            family.as_str()
        );
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
        config.proj_dim = proj;
        if let Some(i) = interp {
            config.pos_interp = i;
        }
        Ok(config)
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
        arch(self) == arch(other)
    }

    /// The complete list of parameter keys with their shapes, in the canonical (DINOv2 hub) naming. `proj` is
    /// listed when `proj_dim` is set; the loader treats it, like `mask_token`, as optional.
    pub fn expected_keys(&self) -> Vec<(String, Vec<i64>)> {
        let d = self.embed_dim;
        let mut keys = vec![
            ("cls_token".to_string(), vec![1, 1, d]),
            ("pos_embed".to_string(), vec![1, 1 + self.pos_grid * self.pos_grid, d]),
        ];
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
            push("mlp.fc1.weight", vec![self.mlp_dim, d]);
            push("mlp.fc1.bias", vec![self.mlp_dim]);
            push("mlp.fc2.weight", vec![d, self.mlp_dim]);
            push("mlp.fc2.bias", vec![d]);
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
            "dinov3-vitb16",
        ] {
            assert!(VitConfig::by_name(bad).is_err(), "{bad} accepted");
        }
    }
}
