//! One Vision Transformer for every frozen backbone of the model half: DINOv2 (with and without registers),
//! DINOv1, the OpenAI CLIP image tower, the MAE encoder and DINOv3, selected by a [`VitConfig`] (presets by
//! name, or a custom size of any family).
//!
//! Contract: [`Vit::features`] returns the tokens of one block (0-based, default the last) passed through the
//! final LayerNorm with CLS and register (DINOv3: storage) tokens dropped, as (B, P, C) with
//! P = (H/patch)·(W/patch) in row-major patch order — what hub DINOv2's and DINOv3's
//! `get_intermediate_layers(x, n=[layer], norm=True)` return and what MR-DINOSAUR's feature extractor uses
//! (ViT-B/14, layer 11). H and W must be multiples of the patch size (else [`VitError::ImageSize`]); models
//! with a learned position embedding resize it to any such grid, DINOv3's RoPE needs no resize. The forward
//! runs without autograd (the backbone is frozen); weights never change after loading.
//!
//! Token pipeline (models.md §3.1, §4; exports-dinov3.md §2), each step switched by the configuration, never by
//! the family name:
//! 1. patch conv (stride = patch, bias unless CLIP), flattened to (B, h0·w0, D);
//! 2. CLS prepended; when `pos_grid` > 0 the position embedding — resized to (h0, w0) by [`PosInterp`], CLS row
//!    untouched — added;
//! 3. registers inserted between CLS and the patches, after the position add (they get no position);
//! 4. `ln_pre` (CLIP);
//! 5. pre-norm blocks: x += ls1 ⊙ proj(attn(norm1(x))), x += ls2 ⊙ mlp(norm2(x)), with fused [q|k|v] weights
//!    split by heads and `scaled_dot_product_attention` (scale head_dim^-½); LayerScale in DINOv2 and DINOv3;
//!    mlp = fc2(act(fc1·)) with GELU (erf) or QuickGELU (CLIP), or DINOv3-S+'s SwiGLU w3(SiLU(w1·) ⊙ w2·);
//!    DINOv3's K bias is zero (`k_bias` false: zeroed once at load, as the reference multiplies it by its
//!    `bias_mask`); with `rope_base` set, q and k of the patch tokens (not CLS, not registers) are rotated
//!    ([`rope_tables`]) before the attention;
//! 6. the final LayerNorm `norm` (CLIP's `ln_post`, applied here to every token; the official CLIP applies it to
//!    the CLS token only, which [`VitTokens::cls`] reproduces, and [`Vit::project`] applies CLIP's `proj`).
//!
//! DINOv3's RoPE (facebookresearch/dinov3 `dinov3/layers/rope_position_encoding.py` `RopePositionEmbedding`,
//! `dinov3/layers/attention.py` `rope_apply`; transformers `DINOv3ViTRopePositionEmbedding`): patch centres
//! (i + 0.5)/h0 and (j + 0.5)/w0 mapped to [−1, 1] per axis (`normalize_coords="separate"`), periods
//! base^(4k/head_dim) for k < head_dim/4, angles 2π·coord/period laid out [y-angles, x-angles] and tiled twice
//! to head_dim, then x·cos + rotate_half(x)·sin with rotate_half(x) = [−x₂, x₁] (halves, not interleaved
//! pairs), in float32. The training-time coordinate shift, jitter and rescale are off at inference.
//!
//! The position-embedding trap (models.md §3.3): hub DINOv2 without registers and DINOv1 resize with
//! `scale_factor = (h0+0.1)/M` (sampling ratio M/(h0+0.1), not M/h0), which differs by about 1 % from the
//! size-based resize transformers uses. The default of each preset is the official implementation's; the other
//! modes are selectable for parity with transformers or a custom choice.
//!
//! Precision: CPU runs in float32. On CUDA, [`Precision::F16`] runs the forward under autocast and
//! [`Precision::Bf16`] casts the weights (see [`crate::device`]); the position-embedding resize is always done
//! in float32, as the references do, and outputs are returned as float32.
//!
//! ```no_run
//! use mrdino_model::vit::{Vit, VitConfig};
//! let config = VitConfig::by_name("dinov2-vitb14")?;
//! let vit = Vit::load("dinov2_vitb14.safetensors".as_ref(), Some(config), tch::Device::Cpu)?;
//! let images01 = tch::Tensor::rand([1, 3, 378, 378], (tch::Kind::Float, tch::Device::Cpu));
//! let features = vit.features(&vit.normalize(&images01)?, None)?; // (1, 729, 768)
//! # Ok::<(), mrdino_model::vit::VitError>(())
//! ```

pub mod config;
pub mod weights;

use std::path::{Path, PathBuf};

use tch::{nn, Device, Kind, Tensor};
use mrdino_outputs::checkpoint::TensorFile;
use mrdino_outputs::weights_id::Identity;

pub use config::{Activation, Family, PosInterp, VitConfig, VitSize};
pub use weights::{CONFIG_METADATA_KEY, SOURCE_METADATA_KEY};

use crate::device::{DeviceError, Precision};
use crate::layers::{LayerNorm, Linear, Weights};

type TResult<T> = Result<T, tch::TchError>;

/// Errors of loading or running a ViT; file errors name the path and the offending key.
#[derive(Debug, thiserror::Error)]
pub enum VitError {
    /// A weights file that cannot be read, or whose keys, shapes or dtypes are not the backbone's.
    #[error(transparent)]
    Weights(#[from] crate::weights::WeightError),
    /// Weights that cannot be written.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: metadata `{key}`: {message}")]
    Metadata {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "{path}: the file has no `mrdino.vit_config` metadata, so the backbone must be named (one of {known}, or \
         custom:…)",
        known = VitConfig::names().join(", ")
    )]
    NoConfig { path: PathBuf },
    #[error("{path}: the backbone was given as `{given}` but the file describes `{stored}`")]
    ConfigMismatch {
        path: PathBuf,
        given: String,
        stored: String,
    },
    #[error("unknown backbone `{name}` (expected one of {known}, or custom:family=…,depth=…,dim=…,heads=…,patch=…)")]
    UnknownBackbone { name: String, known: String },
    #[error("bad backbone spec `{spec}`: {message}")]
    BadSpec { spec: String, message: String },
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    #[error("RoPE needs a positive head width divisible by 4, got {head_dim}")]
    RopeHeadDim { head_dim: i64 },
    #[error("input images: {height_px}×{width_px} px is not a multiple of the patch size {patch_px} px")]
    ImageSize {
        height_px: i64,
        width_px: i64,
        patch_px: i64,
    },
    #[error("`{name}` has no learned position embedding (it uses RoPE); there is nothing to resize")]
    NoPosEmbed { name: String },
    #[error("layer {layer} does not exist; `{name}` has blocks 0..{depth}")]
    Layer { layer: usize, depth: i64, name: String },
    #[error(
        "position-embedding resize `none` needs the native grid {native}×{native}, got {h0}×{w0} patches; choose \
         another resize (size, size-antialias, hub-offset)"
    )]
    NoResize { native: i64, h0: i64, w0: i64 },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// What one forward returns; every token tensor is float32 on the model's device.
pub struct VitTokens {
    /// (B, C) CLS token of the chosen block (after the final norm when the forward normalises).
    pub cls: Tensor,
    /// (B, R, C) register tokens (R = 0 without registers).
    pub registers: Tensor,
    /// (B, P, C) patch tokens in row-major grid order.
    pub patches: Tensor,
    /// Patch grid (h0, w0) = (H/patch, W/patch).
    pub grid: (i64, i64),
    /// (B, heads, P) pre-softmax CLS→patch attention logits of the chosen block, q_cls·k_p·head_dim^-½ with the
    /// CLS and register keys excluded (what Talk2DINO recomputes from the last block's qkv), when requested. With
    /// RoPE (DINOv3) the keys are the rotated ones the attention used; the CLS query is never rotated.
    pub cls_attention_logits: Option<Tensor>,
}

/// Choices of one forward.
#[derive(Clone, Copy, Debug)]
pub struct ForwardOptions {
    /// Block whose output is returned, 0-based; `None` = the last.
    pub layer: Option<usize>,
    /// Apply the final LayerNorm (`get_intermediate_layers(norm=True)`); false gives the raw block output, as
    /// the original DINOSAUR's timm hooks (`vit_block12`) read it.
    pub norm: bool,
    /// Also return [`VitTokens::cls_attention_logits`] of the chosen block.
    pub cls_attention_logits: bool,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self {
            layer: None,
            norm: true,
            cls_attention_logits: false,
        }
    }
}

struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: i64,
    causal: bool,
}

/// RoPE tables of one forward, (1, 1, N, head_dim) float32 each, over all N tokens: cos = 1 and sin = 0 on the
/// prefix (CLS, registers), so rotating every row leaves the prefix bit-for-bit unchanged.
pub(crate) struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    /// x·cos + rotate_half(x)·sin on (B, heads, N, head_dim), computed in float32 and returned in x's kind.
    fn apply(&self, x: &Tensor) -> TResult<Tensor> {
        let kind = x.kind();
        let x = x.f_to_kind(Kind::Float)?;
        let halves = x.f_chunk(2, -1)?;
        let (x1, x2) = match halves.as_slice() {
            [a, b] => (a, b),
            _ => return Err(tch::TchError::Shape(format!("RoPE: cannot halve {:?}", x.size()))),
        };
        let rotated = Tensor::f_cat(&[x2.f_neg()?, x1.shallow_clone()], -1)?;
        x.f_mul(&self.cos)?.f_add(&rotated.f_mul(&self.sin)?)?.f_to_kind(kind)
    }
}

/// q, k, v of one block, each (B, heads, N, head_dim).
pub(crate) struct Qkv {
    q: Tensor,
    k: Tensor,
    v: Tensor,
}

impl Attention {
    /// q, k, v of `x`; with `rope`, q and k come rotated (what the attention uses).
    fn qkv(&self, x: &Tensor, rope: Option<&Rope>) -> TResult<Qkv> {
        let (b, n, d) = x.size3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .f_reshape([b, n, 3, self.heads, d / self.heads])?
            .f_permute([2, 0, 3, 1, 4])?;
        let (q, k) = (qkv.f_get(0)?, qkv.f_get(1)?);
        let (q, k) = match rope {
            Some(r) => (r.apply(&q)?, r.apply(&k)?),
            None => (q, k),
        };
        Ok(Qkv { q, k, v: qkv.f_get(2)? })
    }

    fn forward(&self, x: &Tensor, qkv: &Qkv) -> TResult<Tensor> {
        let (b, n, d) = x.size3()?;
        let out = Tensor::f_scaled_dot_product_attention(
            &qkv.q,
            &qkv.k,
            &qkv.v,
            None::<Tensor>,
            0.0,
            self.causal,
            None::<f64>,
            false,
        )?;
        self.proj.forward(&out.f_transpose(1, 2)?.f_reshape([b, n, d])?)
    }
}

/// What a pre-norm block needs besides its weights; the ViT's blocks and the CLIP text tower's share it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockSpec {
    pub(crate) dim: i64,
    pub(crate) heads: i64,
    pub(crate) ln_eps: f64,
    pub(crate) activation: Activation,
    /// `mlp.w1/w2/w3` gated MLP instead of `mlp.fc1/fc2`.
    pub(crate) gated_mlp: bool,
    /// False: the K third of `attn.qkv.bias` is zeroed at load (DINOv3's masked K bias).
    pub(crate) k_bias: bool,
    pub(crate) layer_scale: bool,
    /// Token i attends to tokens j ≤ i only (SDPA `is_causal`, which gives the same numbers as CLIP's additive
    /// mask of −inf above the diagonal); false for every ViT.
    pub(crate) causal: bool,
}

impl BlockSpec {
    fn of(config: &VitConfig) -> Self {
        Self {
            dim: config.embed_dim,
            heads: config.heads,
            ln_eps: config.ln_eps,
            activation: config.activation,
            gated_mlp: config.gated_mlp,
            k_bias: config.k_bias,
            layer_scale: config.layer_scale,
            causal: false,
        }
    }
}

/// The feed-forward half of a block.
enum Mlp {
    /// fc2(act(fc1·x)).
    Plain { fc1: Linear, fc2: Linear },
    /// w3(act(w1·x) ⊙ w2·x) (DINOv3's `SwiGLUFFN` with SiLU).
    Gated { w1: Linear, w2: Linear, w3: Linear },
}

fn activate(h: &Tensor, activation: Activation) -> TResult<Tensor> {
    match activation {
        Activation::Gelu => h.f_gelu("none"),
        Activation::QuickGelu => h.f_mul(&h.f_mul_scalar(1.702)?.f_sigmoid()?),
        Activation::Silu => h.f_silu(),
    }
}

pub(crate) struct Block {
    norm1: LayerNorm,
    attn: Attention,
    ls1: Option<Tensor>,
    norm2: LayerNorm,
    mlp: Mlp,
    ls2: Option<Tensor>,
    activation: Activation,
}

impl Block {
    pub(crate) fn new(path: &nn::Path, w: &mut Weights, spec: &BlockSpec) -> Self {
        let ls = |name: &str, w: &mut Weights| spec.layer_scale.then(|| w.var(&(path / name), "gamma"));
        let attn = path / "attn";
        let mlp = path / "mlp";
        let qkv = Linear::from_weights(&(&attn / "qkv"), w, true);
        if !spec.k_bias {
            if let Some(bias) = qkv.bias() {
                let zeroed = tch::no_grad(|| bias.f_narrow(0, spec.dim, spec.dim).and_then(|mut k| k.f_zero_()));
                if let Err(e) = zeroed {
                    w.error.get_or_insert(e);
                }
            }
        }
        let norm1 = LayerNorm::from_weights(&(path / "norm1"), w, spec.dim, spec.ln_eps);
        Self {
            norm1,
            attn: Attention {
                qkv,
                proj: Linear::from_weights(&(&attn / "proj"), w, true),
                heads: spec.heads,
                causal: spec.causal,
            },
            ls1: ls("ls1", w),
            norm2: LayerNorm::from_weights(&(path / "norm2"), w, spec.dim, spec.ln_eps),
            mlp: if spec.gated_mlp {
                Mlp::Gated {
                    w1: Linear::from_weights(&(&mlp / "w1"), w, true),
                    w2: Linear::from_weights(&(&mlp / "w2"), w, true),
                    w3: Linear::from_weights(&(&mlp / "w3"), w, true),
                }
            } else {
                Mlp::Plain {
                    fc1: Linear::from_weights(&(&mlp / "fc1"), w, true),
                    fc2: Linear::from_weights(&(&mlp / "fc2"), w, true),
                }
            },
            ls2: ls("ls2", w),
            activation: spec.activation,
        }
    }

    /// One block; `rope` rotates q and k (DINOv3); with `want_qkv` also returns this block's q/k/v.
    pub(crate) fn forward(&self, x: &Tensor, rope: Option<&Rope>, want_qkv: bool) -> TResult<(Tensor, Option<Qkv>)> {
        let qkv = self.attn.qkv(&self.norm1.forward(x)?, rope)?;
        let a = self.attn.forward(x, &qkv)?;
        let a = match &self.ls1 {
            Some(g) => a.f_mul(g)?,
            None => a,
        };
        let x = x.f_add(&a)?;
        let h = self.norm2.forward(&x)?;
        let m = match &self.mlp {
            Mlp::Plain { fc1, fc2 } => fc2.forward(&activate(&fc1.forward(&h)?, self.activation)?)?,
            Mlp::Gated { w1, w2, w3 } => {
                let gate = activate(&w1.forward(&h)?, self.activation)?;
                w3.forward(&gate.f_mul(&w2.forward(&h)?)?)?
            }
        };
        let m = match &self.ls2 {
            Some(g) => m.f_mul(g)?,
            None => m,
        };
        Ok((x.f_add(&m)?, want_qkv.then_some(qkv)))
    }
}

/// A loaded, frozen ViT backbone.
pub struct Vit {
    config: VitConfig,
    identity: Identity,
    source_format: String,
    device: Device,
    precision: Precision,
    vs: nn::VarStore,
    cls_token: Tensor,
    /// None without a learned position embedding (`pos_grid` 0, DINOv3).
    pos_embed: Option<Tensor>,
    register_tokens: Option<Tensor>,
    patch_embed: (Tensor, Option<Tensor>),
    ln_pre: Option<LayerNorm>,
    blocks: Vec<Block>,
    norm: LayerNorm,
    proj: Option<Tensor>,
}

impl Vit {
    /// Loads `path` (canonical key names). `config` names the architecture; when `None`, the file's
    /// `mrdino.vit_config` metadata must. Every key and shape is validated (see [`weights`]). Float32.
    pub fn load(path: &Path, config: Option<VitConfig>, device: Device) -> Result<Self, VitError> {
        Self::load_with_precision(path, config, device, Precision::F32)
    }

    /// [`Vit::load`] with a precision (reduced precision only on CUDA).
    pub fn load_with_precision(
        path: &Path,
        config: Option<VitConfig>,
        device: Device,
        precision: Precision,
    ) -> Result<Self, VitError> {
        precision.check(device)?;
        Self::from_loaded(weights::load(path, config, device, Kind::Float)?, device, precision)
    }

    /// The ViT embedded under `prefix` (`backbone.`) in the model file `file` read from `path`, float32; see
    /// [`weights::load_embedded`].
    pub fn load_embedded(
        file: &TensorFile,
        prefix: &str,
        path: &Path,
        config: VitConfig,
        device: Device,
    ) -> Result<Self, VitError> {
        let loaded = weights::load_embedded(file, prefix, path, config, device, Kind::Float)?;
        Self::from_loaded(loaded, device, Precision::F32)
    }

    fn from_loaded(loaded: weights::LoadedWeights, device: Device, precision: Precision) -> Result<Self, VitError> {
        let config = loaded.config;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut w = Weights {
            tensors: loaded.tensors,
            error: None,
        };
        let patch = &root / "patch_embed" / "proj";
        let patch_embed = (
            w.var(&patch, "weight"),
            config.patch_bias.then(|| w.var(&patch, "bias")),
        );
        let cls_token = w.var(&root, "cls_token");
        let pos_embed = (config.pos_grid > 0).then(|| w.var(&root, "pos_embed"));
        let register_tokens = (config.registers > 0).then(|| w.var(&root, "register_tokens"));
        let ln_pre = config
            .ln_pre
            .then(|| LayerNorm::from_weights(&(&root / "ln_pre"), &mut w, config.embed_dim, config.ln_eps));
        let blocks_path = &root / "blocks";
        let blocks = (0..config.depth)
            .map(|i| Block::new(&(&blocks_path / i), &mut w, &BlockSpec::of(&config)))
            .collect();
        let norm = LayerNorm::from_weights(&(&root / "norm"), &mut w, config.embed_dim, config.ln_eps);
        let proj = w.tensors.contains_key("proj").then(|| w.var(&root, "proj"));
        if let Some(e) = w.error {
            return Err(e.into());
        }
        let mut vs = vs;
        vs.freeze();
        if precision == Precision::Bf16 {
            vs.bfloat16();
        }
        Ok(Self {
            config,
            identity: loaded.identity,
            source_format: loaded.source_format,
            device,
            precision,
            vs,
            cls_token,
            pos_embed,
            register_tokens,
            patch_embed,
            ln_pre,
            blocks,
            norm,
            proj,
        })
    }

    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The identity of the weights ([`mrdino_outputs::weights_id`]).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The converter's `mrdino.source_format` (`hub`, `hf`, `openai`, …), `unknown` when absent.
    pub fn source_format(&self) -> &str {
        &self.source_format
    }

    pub fn patch_size(&self) -> i64 {
        self.config.patch_size
    }

    pub fn embed_dim(&self) -> i64 {
        self.config.embed_dim
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Selects another position-embedding resize for later forwards.
    pub fn set_pos_interp(&mut self, pos_interp: PosInterp) {
        self.config.pos_interp = pos_interp;
    }

    /// Every parameter name with its shape, sorted (the canonical key names).
    pub fn parameter_names(&self) -> Vec<(String, Vec<i64>)> {
        let mut names: Vec<(String, Vec<i64>)> = self.vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect();
        names.sort();
        names
    }

    /// (B, 3, H, W) RGB in [0, 1] → the family's normalisation, (x − mean) / std per channel, on the model's
    /// device in float32.
    pub fn normalize(&self, images01: &Tensor) -> Result<Tensor, VitError> {
        check_images(images01)?;
        let opts = (Kind::Float, self.device);
        let mean = Tensor::f_from_slice(&self.config.mean)?
            .f_to_kind(Kind::Float)?
            .f_view([1, 3, 1, 1])?;
        let std = Tensor::f_from_slice(&self.config.std)?
            .f_to_kind(Kind::Float)?
            .f_view([1, 3, 1, 1])?;
        let x = images01.f_to_device(opts.1)?.f_to_kind(opts.0)?;
        Ok(x.f_sub(&mean.f_to_device(opts.1)?)?.f_div(&std.f_to_device(opts.1)?)?)
    }

    /// Patch tokens of block `layer` (0-based, default the last) after the final norm, CLS and registers
    /// dropped: (B, P, C) float32. `images` are normalised (see [`Vit::normalize`]), (B, 3, H, W) with H and W
    /// multiples of the patch size.
    pub fn features(&self, images: &Tensor, layer: Option<usize>) -> Result<Tensor, VitError> {
        Ok(self.forward_tokens(images, layer)?.patches)
    }

    /// All tokens of block `layer` after the final norm.
    pub fn forward_tokens(&self, images: &Tensor, layer: Option<usize>) -> Result<VitTokens, VitError> {
        self.forward(
            images,
            ForwardOptions {
                layer,
                ..ForwardOptions::default()
            },
        )
    }

    /// The forward with every choice explicit.
    pub fn forward(&self, images: &Tensor, options: ForwardOptions) -> Result<VitTokens, VitError> {
        check_images(images)?;
        let (_, _, h, w) = images.size4()?;
        let patch = self.config.patch_size;
        if h % patch != 0 || w % patch != 0 {
            return Err(VitError::ImageSize {
                height_px: h,
                width_px: w,
                patch_px: patch,
            });
        }
        let last = self.blocks.len().saturating_sub(1);
        let layer = options.layer.unwrap_or(last);
        if layer > last || self.blocks.is_empty() {
            return Err(VitError::Layer {
                layer,
                depth: self.config.depth,
                name: self.config.name.clone(),
            });
        }
        let grid = (h / patch, w / patch);
        let pos = match self.pos_embed {
            Some(_) => Some(self.resized_pos_embed(grid)?),
            None => None,
        };
        let rope = match self.config.rope_base {
            Some(base) => {
                let (cos, sin) = rope_tables(
                    grid,
                    self.config.head_dim(),
                    base,
                    1 + self.config.registers,
                    self.device,
                )?;
                Some(Rope { cos, sin })
            }
            None => None,
        };
        let run = || -> Result<VitTokens, VitError> {
            let _guard = tch::no_grad_guard();
            let x = images
                .f_to_device(self.device)?
                .f_to_kind(self.precision.weight_kind())?;
            self.tokens(&x, pos.as_ref(), rope.as_ref(), grid, layer, options)
        };
        match self.precision {
            Precision::F16 => tch::autocast(true, run),
            Precision::F32 | Precision::Bf16 => run(),
        }
    }

    /// CLIP's output projection of a (B, C) normed CLS token → (B, proj_dim); `None` when the file has no `proj`.
    pub fn project(&self, cls: &Tensor) -> Result<Option<Tensor>, VitError> {
        match &self.proj {
            Some(p) => Ok(Some(
                cls.f_to_device(self.device)?
                    .f_to_kind(p.kind())?
                    .f_matmul(p)?
                    .f_to_kind(Kind::Float)?,
            )),
            None => Ok(None),
        }
    }

    /// The position embedding for a (h0, w0) grid, (1, 1 + h0·w0, C), in the weights' kind;
    /// [`VitError::NoPosEmbed`] for a model without one (DINOv3).
    pub fn resized_pos_embed(&self, grid: (i64, i64)) -> Result<Tensor, VitError> {
        let Some(pos_embed) = &self.pos_embed else {
            return Err(VitError::NoPosEmbed {
                name: self.config.name.clone(),
            });
        };
        let _guard = tch::no_grad_guard();
        let pe = pos_embed.f_to_kind(Kind::Float)?;
        let out = interpolate_pos_embed(&pe, grid, self.config.pos_grid, self.config.pos_interp)?;
        Ok(out.f_to_kind(pos_embed.kind())?)
    }

    fn tokens(
        &self,
        images: &Tensor,
        pos: Option<&Tensor>,
        rope: Option<&Rope>,
        grid: (i64, i64),
        layer: usize,
        options: ForwardOptions,
    ) -> Result<VitTokens, VitError> {
        let (weight, bias) = &self.patch_embed;
        let p = self.config.patch_size;
        let x = images.f_conv2d(weight, bias.as_ref(), [p, p], [0, 0], [1, 1], 1)?;
        let b = x.size()[0];
        let x = x.f_flatten(2, 3)?.f_transpose(1, 2)?;
        let cls = self.cls_token.f_expand([b, -1, -1], false)?;
        let mut x = Tensor::f_cat(&[cls, x], 1)?;
        if let Some(pos) = pos {
            x = x.f_add(pos)?;
        }
        let r = self.config.registers;
        if let Some(reg) = &self.register_tokens {
            let reg = reg.f_expand([b, -1, -1], false)?;
            x = Tensor::f_cat(&[x.f_narrow(1, 0, 1)?, reg, x.f_narrow(1, 1, grid.0 * grid.1)?], 1)?;
        }
        if let Some(ln) = &self.ln_pre {
            x = ln.forward(&x)?;
        }
        let mut qkv = None;
        for (i, block) in self.blocks[..=layer].iter().enumerate() {
            let want = options.cls_attention_logits && i == layer;
            let (next, q) = block.forward(&x, rope, want)?;
            x = next;
            if q.is_some() {
                qkv = q;
            }
        }
        if options.norm {
            x = self.norm.forward(&x)?;
        }
        let n = grid.0 * grid.1;
        let float = |t: Tensor| t.f_to_kind(Kind::Float);
        let cls_attention_logits = match qkv {
            Some(Qkv { q, k, .. }) => {
                let scale = (self.config.head_dim() as f64).powf(-0.5);
                let logits = q
                    .f_narrow(2, 0, 1)?
                    .f_matmul(&k.f_narrow(2, 1 + r, n)?.f_transpose(-1, -2)?)?
                    .f_mul_scalar(scale)?
                    .f_squeeze_dim(2)?;
                Some(float(logits)?)
            }
            None => None,
        };
        Ok(VitTokens {
            cls: float(x.f_select(1, 0)?)?,
            registers: float(x.f_narrow(1, 1, r)?)?,
            patches: float(x.f_narrow(1, 1 + r, n)?)?,
            grid,
            cls_attention_logits,
        })
    }
}

fn check_images(images: &Tensor) -> Result<(), VitError> {
    match images.size().as_slice() {
        [_, 3, h, w] if *h > 0 && *w > 0 && images.is_floating_point() => Ok(()),
        _ => Err(crate::input::InputError::tensor("ViT input images", "(B, 3, H, W) float, H, W > 0", images).into()),
    }
}

/// Resizes a (1, 1 + M², C) float32 position embedding to a (h0, w0) grid with `mode`; the CLS row is kept.
/// Like every reference, returns the embedding unchanged when h0 = w0 and h0·w0 = M².
pub fn interpolate_pos_embed(
    pos_embed: &Tensor,
    grid: (i64, i64),
    pos_grid: i64,
    mode: PosInterp,
) -> Result<Tensor, VitError> {
    let (h0, w0) = grid;
    let m = pos_grid;
    if h0 == w0 && h0 * w0 == m * m {
        return Ok(pos_embed.shallow_clone());
    }
    let c = pos_embed.size()[2];
    let cls = pos_embed.f_narrow(1, 0, 1)?;
    let patches = pos_embed
        .f_narrow(1, 1, m * m)?
        .f_reshape([1, m, m, c])?
        .f_permute([0, 3, 1, 2])?;
    let resized = match mode {
        PosInterp::HubOffset => {
            let scale_h = (h0 as f64 + 0.1) / m as f64;
            let scale_w = (w0 as f64 + 0.1) / m as f64;
            patches.f_upsample_bicubic2d([h0, w0], false, Some(scale_h), Some(scale_w))?
        }
        PosInterp::Size => patches.f_upsample_bicubic2d([h0, w0], false, None::<f64>, None::<f64>)?,
        PosInterp::SizeAntialias => {
            patches.f_internal_upsample_bicubic2d_aa([h0, w0], false, None::<f64>, None::<f64>)?
        }
        PosInterp::None => return Err(VitError::NoResize { native: m, h0, w0 }),
    };
    let resized = resized.f_permute([0, 2, 3, 1])?.f_reshape([1, h0 * w0, c])?;
    Ok(Tensor::f_cat(&[cls, resized], 1)?)
}

/// DINOv3's axial RoPE tables for a (h0, w0) patch grid behind `prefix` tokens: (cos, sin), each
/// (1, 1, prefix + h0·w0, head_dim) float32 on `device`, with cos = 1 and sin = 0 on the prefix rows.
///
/// Patch row r = i·w0 + j has coordinates y = 2(i + 0.5)/h0 − 1 and x = 2(j + 0.5)/w0 − 1; with periods
/// p_k = base^(2k/(head_dim/2)), k < head_dim/4 (the reference's `periods` buffer), its angles are
/// [2π·y/p_0 … 2π·y/p_{K−1}, 2π·x/p_0 … 2π·x/p_{K−1}] repeated twice (`angles.tile(2)`), all float32 in the
/// reference's order of operations (`rope_position_encoding.py`, `RopePositionEmbedding.forward`).
pub fn rope_tables(
    grid: (i64, i64),
    head_dim: i64,
    base: f64,
    prefix: i64,
    device: Device,
) -> Result<(Tensor, Tensor), VitError> {
    let (h0, w0) = grid;
    if head_dim % 4 != 0 || head_dim <= 0 {
        return Err(VitError::RopeHeadDim { head_dim });
    }
    let opts = (Kind::Float, device);
    let axis = |n: i64| -> TResult<Tensor> {
        Tensor::f_arange_start(0.5, n as f64, opts)?
            .f_div_scalar(n as f64)?
            .f_mul_scalar(2.0)?
            .f_sub_scalar(1.0)
    };
    let mesh = Tensor::f_meshgrid_indexing(&[axis(h0)?, axis(w0)?], "ij")?;
    let coords = Tensor::f_stack(&mesh, -1)?.f_reshape([h0 * w0, 2])?;
    let quarter = head_dim / 4;
    let exponents = Tensor::f_arange(quarter, opts)?
        .f_mul_scalar(2.0)?
        .f_div_scalar((head_dim / 2) as f64)?;
    let periods = Tensor::f_pow_scalar(base, &exponents)?;
    let angles = coords
        .f_unsqueeze(-1)?
        .f_mul_scalar(2.0 * std::f64::consts::PI)?
        .f_div(&periods.f_view([1, 1, quarter])?)?
        .f_reshape([h0 * w0, 2 * quarter])?
        .f_tile([1, 2])?;
    let pad = |value: f64, table: Tensor| -> TResult<Tensor> {
        let head = Tensor::f_full([prefix, head_dim], value, opts)?;
        Tensor::f_cat(&[head, table], 0)?.f_view([1, 1, prefix + h0 * w0, head_dim])
    };
    Ok((pad(1.0, angles.f_cos()?)?, pad(0.0, angles.f_sin()?)?))
}

/// Writes random weights of `config` to `path` with the configuration in the metadata (benches, tests).
pub fn write_random_weights(path: &Path, config: &VitConfig, seed: i64) -> Result<(), VitError> {
    weights::save(path, config, &weights::random_tensors(config, seed)?)
}
