//! The frozen feature extractor as the slot model sees it: images in [0, 1] → patch features (B, P, C).
//!
//! [`Backbone`] is what the ViT family implements; training and inference only talk to this trait, so any
//! backbone plugs into `mrdino train` and into the feature cache. [`ConvPatchBackbone`] is a real, small
//! backbone made of libtorch layers — ImageNet normalisation, one strided convolution (a ViT's patch embedding
//! without the transformer), optionally a fixed 2-D sine–cosine position code (`-pos`: patch tokens then say
//! where they are, as a ViT's do, so slots can carry positions), and a LayerNorm without affine — with weights
//! drawn deterministically from a seed.
//! It is not a pretrained model and gives no useful objects on real images; it exists so the data pipeline,
//! the cache writer and the trainer can be exercised end to end without downloading weights (tests, smoke runs).
//! [`ColourFourierBackbone`] (`random-colour-p<PS>-c<C>[-pos]`) is the other seeded backbone: random Fourier
//! features of each patch's mean colour, optionally plus a randomly projected Fourier code of the patch position.
//! On scenes of flat-coloured surfaces (`mrdino synth --texture flat`) its tokens say which surface a patch is on
//! and roughly where, which is what a slot model needs to find such objects in minutes (`make demo-refine`); a
//! ViT with random weights, or the convolution above, does not give that (the README's baseline attempts).

use std::path::{Path, PathBuf};

use mrdino_outputs::checkpoint::{TensorFile, BACKBONE_PREFIX, META_BACKBONE};
use mrdino_outputs::weights_id::{weights_id_f32, Identity};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, TchError, Tensor};

use crate::train::SplitMix64;
use crate::vit::weights::has_embedded;
use crate::vit::{Vit, VitConfig, VitError};

/// ImageNet mean and standard deviation of the RGB channels (DINOv2's normalisation).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// A frozen feature extractor.
pub trait Backbone: Send {
    /// Name as on the command line (`dinov2-vitb14`, `random-conv-p14-c64`, …).
    fn name(&self) -> &str;
    /// The identity of the weights ([`mrdino_outputs::weights_id`]), recorded in checkpoints and caches.
    fn identity(&self) -> &Identity;
    /// Pixels per patch side.
    fn patch_size(&self) -> i64;
    /// C, channels of the features.
    fn feature_dim(&self) -> i64;
    fn device(&self) -> Device;
    /// `images01` (B, 3, H, W) float in [0, 1] (any device) → features (B, (H/ps)·(W/ps), C) float32 on the
    /// backbone's device, patches in row-major order; no gradient. Errors name what is wrong with the input.
    fn features(&self, images01: &Tensor) -> Result<Tensor, FeatureError>;
}

/// See the module docs: normalisation, a strided Conv2d(3, C, ps, ps), the optional position code and a
/// LayerNorm without affine.
#[derive(Debug)]
pub struct ConvPatchBackbone {
    name: String,
    identity: Identity,
    patch: i64,
    channels: i64,
    position_code: bool,
    weight: Tensor,
    bias: Tensor,
    device: Device,
}

impl ConvPatchBackbone {
    /// Weights U(±1/√(3·ps²)) and biases U(±0.5) drawn from SplitMix64(`seed`), independent of libtorch's
    /// generator. The identity is that of the tensors `patch_embed.weight` (C, 3, ps, ps) and `patch_embed.bias`
    /// (C); earlier versions recorded the SHA-256 of the float32 weight and bias bytes, which stays its earlier
    /// value. Sizes that are not positive, or that would draw more than [`MAX_SEEDED_WEIGHTS`] weights, are a
    /// [`FeatureError::SeededSize`] before anything is drawn.
    pub fn new(patch: i64, channels: i64, seed: u64, device: Device) -> Result<Self, FeatureError> {
        let name = format!("random-conv-p{patch}-c{channels}");
        let count = seeded_weight_count(&name, &[channels, 3, patch, patch])?;
        let mut rng = SplitMix64::new(seed);
        let fan_in = 3 * patch * patch;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let w: Vec<f32> = (0..count)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let b: Vec<f32> = (0..channels).map(|_| (rng.next_f64() - 0.5) as f32).collect();
        let shape = [channels as usize, 3, patch as usize, patch as usize];
        let id = weights_id_f32([
            ("patch_embed.weight", &shape[..], w.as_slice()),
            ("patch_embed.bias", &shape[..1], b.as_slice()),
        ]);
        let identity = Identity::new(id, Some(sha256_f32(w.iter().chain(&b))));
        Ok(Self {
            name,
            identity,
            patch,
            channels,
            position_code: false,
            weight: Tensor::f_from_slice(&w)?
                .f_reshape([channels, 3, patch, patch])?
                .f_to_device(device)?,
            bias: Tensor::f_from_slice(&b)?.f_to_device(device)?,
            device,
        })
    }

    /// The same backbone with the position code added to the convolution's output (name suffix `-pos`; the
    /// weights, and so their identity, are unchanged). Needs C divisible by 4.
    pub fn with_position_code(mut self) -> Option<Self> {
        if self.channels % 4 != 0 {
            return None;
        }
        self.position_code = true;
        self.name.push_str("-pos");
        Some(self)
    }

    /// Parses `random-conv-p<PS>-c<C>` and `random-conv-p<PS>-c<C>-pos` (seed 0); `Ok(None)` for another name
    /// or a `-pos` with C not divisible by 4, an error when the weights cannot be made ([`Self::new`]).
    pub fn from_name(name: &str, device: Device) -> Result<Option<Self>, FeatureError> {
        let Some((p, c, pos)) = parse_seeded_name(name, "random-conv-p") else {
            return Ok(None);
        };
        let backbone = Self::new(p, c, 0, device)?;
        Ok(if pos {
            backbone.with_position_code()
        } else {
            Some(backbone)
        })
    }
}

/// The fixed 2-D sine–cosine position code as MAE builds it, (C, gh, gw): the first C/2 channels
/// code the column, the last C/2 the row, each as sin then cos of the patch index times the frequencies
/// 1 / 10000^(k / (C/4)), k = 0 … C/4 − 1.
pub fn sincos_position_code(channels: i64, grid_h: i64, grid_w: i64, device: Device) -> Result<Tensor, TchError> {
    let quarter = channels / 4;
    let omega = Tensor::f_arange(quarter, (Kind::Float, device))?
        .f_divide_scalar(quarter as f64)?
        .f_multiply_scalar(-(10000f64.ln()))?
        .f_exp()?;
    let code = |n: i64| -> Result<Tensor, TchError> {
        let angles = Tensor::f_arange(n, (Kind::Float, device))?
            .f_unsqueeze(1)?
            .f_mul(&omega.f_unsqueeze(0)?)?;
        Tensor::f_cat(&[angles.f_sin()?, angles.f_cos()?], 1)
    };
    let (cols, rows) = (code(grid_w)?, code(grid_h)?); // (gw, C/2), (gh, C/2)
    let cols = cols
        .f_transpose(0, 1)?
        .f_unsqueeze(1)?
        .f_expand([2 * quarter, grid_h, grid_w], false)?;
    let rows = rows
        .f_transpose(0, 1)?
        .f_unsqueeze(2)?
        .f_expand([2 * quarter, grid_h, grid_w], false)?;
    Tensor::f_cat(&[cols, rows], 0)
}

impl Backbone for ConvPatchBackbone {
    fn name(&self) -> &str {
        &self.name
    }

    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn patch_size(&self) -> i64 {
        self.patch
    }

    fn feature_dim(&self) -> i64 {
        self.channels
    }

    fn device(&self) -> Device {
        self.device
    }

    fn features(&self, images01: &Tensor) -> Result<Tensor, FeatureError> {
        check_patch_images(images01, self.patch)?;
        Ok(tch::no_grad(|| -> Result<Tensor, tch::TchError> {
            let x = images01.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
            let stat = |values: &[f64; 3]| {
                Tensor::f_from_slice(values)?
                    .f_to_kind(Kind::Float)?
                    .f_reshape([1, 3, 1, 1])?
                    .f_to_device(self.device)
            };
            let x = x.f_sub(&stat(&IMAGENET_MEAN)?)?.f_div(&stat(&IMAGENET_STD)?)?;
            let y = x.f_conv2d(
                &self.weight,
                Some(&self.bias),
                [self.patch, self.patch],
                [0, 0],
                [1, 1],
                1,
            )?;
            let y = if self.position_code {
                let (_, _, grid_h, grid_w) = y.size4()?;
                y.f_add(&sincos_position_code(self.channels, grid_h, grid_w, self.device)?.f_unsqueeze(0)?)?
            } else {
                y
            };
            let y = y.f_flatten(2, 3)?.f_transpose(1, 2)?;
            y.f_layer_norm([self.channels], None::<Tensor>, None::<Tensor>, 1e-5, false)
        })?)
    }
}

/// A backbone generated from a seed, by name: `random-conv-p<PS>-c<C>[-pos]` ([`ConvPatchBackbone`]) or
/// `random-colour-p<PS>-c<C>[-pos]` ([`ColourFourierBackbone`]); `Ok(None)` for any other name, an error when
/// the named sizes cannot be made ([`FeatureError::SeededSize`]).
pub fn seeded_backbone(name: &str, device: Device) -> Result<Option<Box<dyn Backbone>>, FeatureError> {
    if let Some(b) = ConvPatchBackbone::from_name(name, device)? {
        return Ok(Some(Box::new(b)));
    }
    Ok(ColourFourierBackbone::from_name(name, device)?.map(|b| Box::new(b) as Box<dyn Backbone>))
}

/// Most weights a seeded backbone draws (2^28 float32 values, 1 GiB); a name asking for more is refused before
/// anything is allocated.
pub const MAX_SEEDED_WEIGHTS: i64 = 1 << 28;

/// The number of weights of a seeded tensor of `shape`, every side positive and the product at most
/// [`MAX_SEEDED_WEIGHTS`].
fn seeded_weight_count(name: &str, shape: &[i64]) -> Result<usize, FeatureError> {
    shape
        .iter()
        .try_fold(1i64, |count, &side| if side > 0 { count.checked_mul(side) } else { None })
        .filter(|&count| count <= MAX_SEEDED_WEIGHTS)
        .and_then(|count| usize::try_from(count).ok())
        .ok_or_else(|| FeatureError::SeededSize {
            name: name.to_string(),
            shape: shape.to_vec(),
        })
}

/// `<prefix><PS>-c<C>[-pos]` → (PS, C, position code), both sizes positive.
fn parse_seeded_name(name: &str, prefix: &str) -> Option<(i64, i64, bool)> {
    let rest = name.strip_prefix(prefix)?;
    let (rest, pos) = match rest.strip_suffix("-pos") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (p, c) = rest.split_once("-c")?;
    let (p, c): (i64, i64) = (p.parse().ok()?, c.parse().ok()?);
    (p > 0 && c > 0).then_some((p, c, pos))
}

/// Lower-case hex SHA-256 of the little-endian float32 bytes of `values`, in order: the identity earlier versions
/// recorded for the seeded backbones.
fn sha256_f32<'a>(values: impl Iterator<Item = &'a f32>) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    h.finalize().iter().map(|x| format!("{x:02x}")).collect()
}

/// Why a backbone could not encode a batch of images.
#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    /// The images are not what the backbone takes.
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    #[error("a {height}×{width} image is smaller than one {patch} px patch")]
    ImageTooSmall { height: i64, width: i64, patch: i64 },
    #[error(transparent)]
    Vit(Box<VitError>),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A seeded backbone's sizes are not positive or give more than [`MAX_SEEDED_WEIGHTS`] weights.
    #[error(
        "backbone `{name}`: a weight tensor of shape {shape:?} needs positive sides and at most \
         {MAX_SEEDED_WEIGHTS} values"
    )]
    SeededSize { name: String, shape: Vec<i64> },
}

impl From<VitError> for FeatureError {
    fn from(e: VitError) -> Self {
        Self::Vit(Box::new(e))
    }
}

/// Why a backbone cannot be loaded; every variant names the value or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error(transparent)]
    Vit(#[from] VitError),
    #[error("backbone `{name}` is generated from a seed and takes no weights file")]
    SeededWithWeights { name: String },
    #[error("backbone `{name}` needs --backbone-weights FILE.safetensors")]
    NeedsWeights { name: String },
    #[error("{message} (or {SEEDED_BACKBONE_NAMES}, seeded test backbones without weights)")]
    Unknown { message: String },
    #[error("{model} embeds a backbone but its metadata `{key}` does not name it", key = META_BACKBONE)]
    Unnamed { model: PathBuf },
    #[error("{model} embeds backbone `{embedded}`, but --backbone {given} was given; leave --backbone out or give `{embedded}`")]
    NameMismatch {
        model: PathBuf,
        embedded: String,
        given: String,
    },
    #[error(
        "{model} embeds backbone weights {embedded}, but {weights} holds other weights ({given}); leave \
         --backbone-weights out to use the embedded ones, or give the file they were converted from"
    )]
    WeightsMismatch {
        model: PathBuf,
        embedded: String,
        weights: PathBuf,
        given: String,
    },
    #[error("backbone input: {0}")]
    Features(#[from] FeatureError),
}

/// Where a command's backbone comes from: the `--backbone` name, the `--backbone-weights` file, and the model file
/// the command runs (whose embedded `backbone.*` tensors are used when present).
#[derive(Clone, Copy, Debug, Default)]
pub struct BackboneRequest<'a> {
    pub name: Option<&'a str>,
    pub weights: Option<&'a Path>,
    /// The model file (read) and its path.
    pub model: Option<(&'a TensorFile, &'a Path)>,
}

/// The patch size of the backbone `name` names (a seeded backbone or a ViT architecture), without any weights;
/// `None` for a name no backbone has.
pub fn patch_size_of(name: &str) -> Option<i64> {
    match seeded_backbone(name, Device::Cpu) {
        Ok(Some(b)) => Some(b.patch_size()),
        Ok(None) => VitConfig::by_name(name).ok().map(|c| c.patch_size),
        // A seeded name whose sizes are refused: loading it reports why.
        Err(_) => None,
    }
}

/// The backbone names a command uses when `--backbone` is absent and no model embeds one.
pub const DEFAULT_BACKBONE: &str = "dinov2-vitb14";

/// A loaded backbone: a ViT (whose blocks a `--layer` can choose from) or a seeded backbone.
#[allow(clippy::large_enum_variant, reason = "one per command, never moved in a loop")]
pub enum LoadedBackbone {
    Vit(Vit),
    Seeded(Box<dyn Backbone>),
}

impl LoadedBackbone {
    /// Loads what `request` names. A model file with `backbone.*` tensors brings its own backbone: its
    /// `mrdino.backbone` names the architecture (a `--backbone` must agree), and `--backbone-weights`, when given,
    /// must hold the same weights (same identity), else the command is refused naming both. Without an embedded
    /// backbone: the seeded backbones take no weights, a ViT needs `--backbone-weights`.
    pub fn load(request: BackboneRequest<'_>, device: Device) -> Result<Self, BackboneError> {
        if let Some((file, path)) = request.model.filter(|(file, _)| has_embedded(file, BACKBONE_PREFIX)) {
            return Self::embedded(request, file, path, device);
        }
        let name = request.name.unwrap_or(DEFAULT_BACKBONE);
        if let Some(b) = seeded_backbone(name, device)? {
            if request.weights.is_some() {
                return Err(BackboneError::SeededWithWeights { name: name.to_string() });
            }
            return Ok(Self::Seeded(b));
        }
        let config = VitConfig::by_name(name).map_err(|e| BackboneError::Unknown {
            message: e.to_string(),
        })?;
        let weights = request.weights.ok_or_else(|| BackboneError::NeedsWeights { name: name.to_string() })?;
        Ok(Self::Vit(Vit::load(weights, Some(config), device)?))
    }

    fn embedded(
        request: BackboneRequest<'_>,
        file: &TensorFile,
        path: &Path,
        device: Device,
    ) -> Result<Self, BackboneError> {
        let embedded = file
            .meta(META_BACKBONE)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| BackboneError::Unnamed { model: path.to_path_buf() })?;
        if let Some(given) = request.name.filter(|given| *given != embedded) {
            return Err(BackboneError::NameMismatch {
                model: path.to_path_buf(),
                embedded: embedded.to_string(),
                given: given.to_string(),
            });
        }
        let config = VitConfig::by_name(embedded).map_err(|e| BackboneError::Unknown {
            message: format!("{}: {e}", path.display()),
        })?;
        let vit = Vit::load_embedded(file, BACKBONE_PREFIX, path, config.clone(), device)?;
        if let Some(weights) = request.weights {
            let other = Vit::load(weights, Some(config), Device::Cpu)?;
            if other.identity().id != vit.identity().id {
                return Err(BackboneError::WeightsMismatch {
                    model: path.to_path_buf(),
                    embedded: vit.identity().short(),
                    weights: weights.to_path_buf(),
                    given: other.identity().short(),
                });
            }
        }
        Ok(Self::Vit(vit))
    }

    /// The backbone alone, for callers that need no `--layer`.
    pub fn into_backbone(self) -> Box<dyn Backbone> {
        match self {
            Self::Vit(v) => Box::new(v),
            Self::Seeded(b) => b,
        }
    }

    pub fn backbone(&self) -> &dyn Backbone {
        match self {
            Self::Vit(v) => v,
            Self::Seeded(b) => b.as_ref(),
        }
    }

    /// Blocks a `--layer` can choose from (none for a backbone without blocks).
    pub fn depth(&self) -> Option<usize> {
        match self {
            Self::Vit(v) => Some(v.config().depth as usize),
            Self::Seeded(_) => None,
        }
    }

    /// The image statistics the backbone normalises with, as recorded in feature caches.
    pub fn normalisation(&self) -> String {
        match self {
            Self::Vit(v) => format!("mean {:?} std {:?}", v.config().mean, v.config().std),
            Self::Seeded(_) => format!("mean {IMAGENET_MEAN:?} std {IMAGENET_STD:?}"),
        }
    }

    /// Patch features (B, P, C) of images in [0, 1], from block `layer` (ViT only; default the last).
    pub fn encode(&self, images01: &Tensor, layer: Option<usize>) -> Result<Tensor, BackboneError> {
        match self {
            Self::Vit(v) => {
                let normalised = v.normalize(images01)?;
                Ok(tch::no_grad(|| v.features(&normalised, layer))?)
            }
            Self::Seeded(b) => Ok(b.features(images01)?),
        }
    }
}

/// What the names of the seeded backbones look like, for error messages.
pub const SEEDED_BACKBONE_NAMES: &str = "random-conv-p<PS>-c<C>[-pos] or random-colour-p<PS>-c<C>[-pos]";

/// Frequencies of the position code of [`ColourFourierBackbone`]: k·π/2 for k = 1 … 4 on coordinates in [−1, 1].
const POSITION_FREQUENCIES: [f64; 4] = [
    std::f64::consts::FRAC_PI_2,
    std::f64::consts::PI,
    3.0 * std::f64::consts::FRAC_PI_2,
    2.0 * std::f64::consts::PI,
];

/// Standard deviation of the colour frequencies of [`ColourFourierBackbone`] (colours in [0, 1]).
const COLOUR_FREQUENCY_STD: f64 = 6.0;

/// Random Fourier features of patch colours: the mean RGB `m` ∈ [0, 1]³ of each ps×ps patch (no normalisation),
/// tokens `[sin(m·B), cos(m·B)]` with B (3, C/2) ~ N(0, 6²); with `-pos`, plus `Q·p` where p (16) is
/// `[sin(f_k y), cos(f_k y), sin(f_k x), cos(f_k x)]` for f_k = kπ/2, k = 1 … 4, of the patch centre's row and
/// column mapped linearly to [−1, 1] over the grid (first patch −1, last +1), and Q (C, 16) ~ N(0, 1/16). B and Q
/// are drawn from SplitMix64(0) by Box–Muller; no LayerNorm. Patches of one flat surface share a token up to
/// the position term, different colours give nearly orthogonal tokens.
#[derive(Debug)]
pub struct ColourFourierBackbone {
    name: String,
    identity: Identity,
    patch: i64,
    channels: i64,
    /// (3, C/2)
    colour_frequencies: Tensor,
    /// (16, C) when the position code is on.
    position_projection: Option<Tensor>,
    device: Device,
}

impl ColourFourierBackbone {
    /// Needs an even C. The identity is that of the tensors `colour_frequencies` B (3, C/2) and, when present,
    /// `position_projection` Q (16, C); earlier versions recorded the SHA-256 of the float32 bytes of B, then Q.
    /// `Ok(None)` for sizes that are not positive or an odd C; more than [`MAX_SEEDED_WEIGHTS`] weights in B or Q
    /// is a [`FeatureError::SeededSize`].
    pub fn new(
        patch: i64,
        channels: i64,
        position_code: bool,
        seed: u64,
        device: Device,
    ) -> Result<Option<Self>, FeatureError> {
        if patch <= 0 || channels <= 0 || channels % 2 != 0 {
            return Ok(None);
        }
        let suffix = if position_code { "-pos" } else { "" };
        let name = format!("random-colour-p{patch}-c{channels}{suffix}");
        seeded_weight_count(&name, &[3, channels / 2])?;
        if position_code {
            seeded_weight_count(&name, &[16, channels])?;
        }
        let mut rng = SplitMix64::new(seed);
        let mut normal = move || {
            // Box–Muller; 1 − u keeps the logarithm finite.
            let (u, v) = (1.0 - rng.next_f64(), rng.next_f64());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        };
        let half = channels / 2;
        let b: Vec<f32> = (0..3 * half)
            .map(|_| (normal() * COLOUR_FREQUENCY_STD) as f32)
            .collect();
        let q: Option<Vec<f32>> = position_code.then(|| (0..16 * channels).map(|_| (normal() / 4.0) as f32).collect());
        let (b_shape, q_shape) = ([3, half as usize], [16, channels as usize]);
        let mut named = vec![("colour_frequencies", &b_shape[..], b.as_slice())];
        if let Some(q) = &q {
            named.push(("position_projection", &q_shape[..], q.as_slice()));
        }
        let identity = Identity::new(weights_id_f32(named), Some(sha256_f32(b.iter().chain(q.iter().flatten()))));
        let position_projection = match q {
            Some(q) => Some(Tensor::f_from_slice(&q)?.f_reshape([16, channels])?.f_to_device(device)?),
            None => None,
        };
        Ok(Some(Self {
            name,
            identity,
            patch,
            channels,
            colour_frequencies: Tensor::f_from_slice(&b)?.f_reshape([3, half])?.f_to_device(device)?,
            position_projection,
            device,
        }))
    }

    /// Parses `random-colour-p<PS>-c<C>[-pos]` (seed 0); `Ok(None)` for another name or an odd C.
    pub fn from_name(name: &str, device: Device) -> Result<Option<Self>, FeatureError> {
        let Some((p, c, pos)) = parse_seeded_name(name, "random-colour-p") else {
            return Ok(None);
        };
        Self::new(p, c, pos, 0, device)
    }
}

/// `[sin(f_k y), cos(f_k y), sin(f_k x), cos(f_k x)]` per patch (gh·gw, 16), row-major, coordinates in [−1, 1].
fn fourier_position_code(grid_h: i64, grid_w: i64, device: Device) -> Result<Tensor, TchError> {
    let opts = (Kind::Float, device);
    let axis = |n: i64| -> Result<Tensor, TchError> {
        let t = if n > 1 {
            Tensor::f_linspace(-1.0, 1.0, n, opts)?
        } else {
            Tensor::f_zeros([n], opts)?
        };
        let frequencies = Tensor::f_from_slice(&POSITION_FREQUENCIES.map(|f| f as f32))?.f_to_device(device)?;
        let angles = t.f_unsqueeze(1)?.f_mul(&frequencies)?;
        Tensor::f_cat(&[angles.f_sin()?, angles.f_cos()?], 1) // (n, 8)
    };
    let (rows, cols) = (axis(grid_h)?, axis(grid_w)?);
    let rows = rows.f_unsqueeze(1)?.f_expand([grid_h, grid_w, 8], false)?;
    let cols = cols.f_unsqueeze(0)?.f_expand([grid_h, grid_w, 8], false)?;
    Tensor::f_cat(&[rows, cols], 2)?.f_reshape([grid_h * grid_w, 16])
}

impl Backbone for ColourFourierBackbone {
    fn name(&self) -> &str {
        &self.name
    }

    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn patch_size(&self) -> i64 {
        self.patch
    }

    fn feature_dim(&self) -> i64 {
        self.channels
    }

    fn device(&self) -> Device {
        self.device
    }

    fn features(&self, images01: &Tensor) -> Result<Tensor, FeatureError> {
        let (grid_h, grid_w) = check_patch_images(images01, self.patch)?;
        Ok(tch::no_grad(|| -> Result<Tensor, tch::TchError> {
            let x = images01.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
            let means = x
                .f_avg_pool2d(
                    [self.patch, self.patch],
                    [self.patch, self.patch],
                    [0, 0],
                    false,
                    true,
                    None,
                )?
                .f_flatten(2, 3)?
                .f_transpose(1, 2)?; // (B, P, 3)
            let phase = means.f_matmul(&self.colour_frequencies)?;
            let tokens = Tensor::f_cat(&[phase.f_sin()?, phase.f_cos()?], 2)?;
            match &self.position_projection {
                Some(q) => tokens.f_add(
                    &fourier_position_code(grid_h, grid_w, self.device)?
                        .f_matmul(q)?
                        .f_unsqueeze(0)?,
                ),
                None => Ok(tokens),
            }
        })?)
    }
}

/// Images (B, 3, H, W) of at least one `patch` px patch: their patch grid (⌊H/patch⌋, ⌊W/patch⌋).
fn check_patch_images(images01: &Tensor, patch: i64) -> Result<(i64, i64), FeatureError> {
    let size = images01.size();
    let [_, 3, height, width] = size[..] else {
        return Err(crate::input::InputError::tensor("backbone input images", "(B, 3, H, W)", images01).into());
    };
    let (grid_h, grid_w) = (height / patch, width / patch);
    if grid_h == 0 || grid_w == 0 {
        return Err(FeatureError::ImageTooSmall { height, width, patch });
    }
    Ok((grid_h, grid_w))
}

/// The ViT backbones as DINOSAUR's feature extractor: normalisation of the family, then the patch tokens of the
/// last block after the final norm (`get_intermediate_layers(x, [last], norm=True)`).
impl Backbone for crate::vit::Vit {
    fn name(&self) -> &str {
        &self.config().name
    }

    fn identity(&self) -> &Identity {
        crate::vit::Vit::identity(self)
    }

    fn patch_size(&self) -> i64 {
        crate::vit::Vit::patch_size(self)
    }

    fn feature_dim(&self) -> i64 {
        self.embed_dim()
    }

    fn device(&self) -> Device {
        crate::vit::Vit::device(self)
    }

    fn features(&self, images01: &Tensor) -> Result<Tensor, FeatureError> {
        let images = self.normalize(&images01.f_to_kind(Kind::Float)?)?;
        Ok(tch::no_grad(|| crate::vit::Vit::features(self, &images, None))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_code_codes_columns_then_rows_with_decreasing_frequencies() {
        let code = sincos_position_code(8, 3, 5, Device::Cpu).unwrap();
        assert_eq!(code.size(), [8, 3, 5]);
        let at = |c: i64, r: i64, x: i64| code.double_value(&[c, r, x]);
        for (r, x) in [(0, 0), (1, 4), (2, 3)] {
            // C/4 = 2 frequencies: 1 and 1/100.
            for (k, omega) in [(0, 1.0f64), (1, 0.01)] {
                assert!((at(k, r, x) - (x as f64 * omega).sin()).abs() < 1e-6);
                assert!((at(2 + k, r, x) - (x as f64 * omega).cos()).abs() < 1e-6);
                assert!((at(4 + k, r, x) - (r as f64 * omega).sin()).abs() < 1e-6);
                assert!((at(6 + k, r, x) - (r as f64 * omega).cos()).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn seeded_names_parse_to_positive_sizes_and_an_optional_position_code() {
        assert_eq!(
            parse_seeded_name("random-conv-p14-c64", "random-conv-p"),
            Some((14, 64, false))
        );
        assert_eq!(
            parse_seeded_name("random-colour-p42-c64-pos", "random-colour-p"),
            Some((42, 64, true))
        );
        for bad in [
            "random-conv-p0-c8",
            "random-conv-p4-c0",
            "random-conv-p-4-c8",
            "random-conv-p4",
            "random-conv-p4-c8-po",
        ] {
            assert_eq!(parse_seeded_name(bad, "random-conv-p"), None, "{bad}");
        }
        assert_eq!(parse_seeded_name("random-colour-p4-c8", "random-conv-p"), None);
        // The digest of the little-endian float32 bytes: the empty input gives SHA-256 of nothing.
        assert_eq!(
            sha256_f32([].iter()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn seeded_sizes_beyond_the_weight_limit_are_refused_before_drawing() {
        for name in [
            "random-conv-p100000-c100000",
            "random-colour-p4-c4000000000-pos",
            "random-conv-p4611686018427387904-c8",
        ] {
            let refused = seeded_backbone(name, Device::Cpu).err().expect(name);
            assert!(matches!(refused, FeatureError::SeededSize { .. }), "{name}: {refused}");
            assert!(refused.to_string().contains(name), "{refused}");
            assert_eq!(patch_size_of(name), None, "{name}");
        }
        assert!(matches!(
            ConvPatchBackbone::new(0, 8, 0, Device::Cpu),
            Err(FeatureError::SeededSize { .. })
        ));
        assert!(matches!(
            ConvPatchBackbone::new(4, -8, 0, Device::Cpu),
            Err(FeatureError::SeededSize { .. })
        ));
    }

    #[test]
    fn the_pos_variant_has_the_same_weights_and_features_that_depend_on_position() {
        let plain = ConvPatchBackbone::from_name("random-conv-p4-c8", Device::Cpu).unwrap().unwrap();
        let pos = ConvPatchBackbone::from_name("random-conv-p4-c8-pos", Device::Cpu).unwrap().unwrap();
        assert_eq!(pos.name(), "random-conv-p4-c8-pos");
        assert_eq!(plain.identity(), pos.identity());
        assert!(ConvPatchBackbone::from_name("random-conv-p4-c6-pos", Device::Cpu).unwrap().is_none());
        // A flat grey image: every patch of the plain backbone is the same token, the position code tells them apart.
        let image = Tensor::full([1, 3, 8, 8], 0.5, (Kind::Float, Device::Cpu));
        let (a, b) = (plain.features(&image).unwrap(), pos.features(&image).unwrap());
        assert_eq!(b.size(), [1, 4, 8]);
        let spread = |t: &Tensor| (t - t.mean_dim(1, true, Kind::Float)).abs().max().double_value(&[]);
        assert!(spread(&a) < 1e-5, "{}", spread(&a));
        assert!(spread(&b) > 0.1, "{}", spread(&b));
    }

    #[test]
    fn colour_tokens_tell_surfaces_apart_and_the_pos_variant_adds_where() {
        let plain = ColourFourierBackbone::from_name("random-colour-p4-c32", Device::Cpu).unwrap().unwrap();
        let pos = ColourFourierBackbone::from_name("random-colour-p4-c32-pos", Device::Cpu).unwrap().unwrap();
        assert_eq!(pos.name(), "random-colour-p4-c32-pos");
        assert_ne!(plain.identity(), pos.identity());
        assert!(ColourFourierBackbone::from_name("random-colour-p4-c31", Device::Cpu).unwrap().is_none());
        assert!(seeded_backbone("random-colour-p4-c32", Device::Cpu).unwrap().is_some());
        assert!(seeded_backbone("random-conv-p4-c8", Device::Cpu).unwrap().is_some());
        assert!(seeded_backbone("dinov2-vitb14", Device::Cpu).unwrap().is_none());
        // Left half one flat colour, right half another: 2×4 patches of 4 px.
        let left = Tensor::from_slice(&[0.8f32, 0.3, 0.1])
            .reshape([1, 3, 1, 1])
            .expand([1, 3, 8, 8], false);
        let right = Tensor::from_slice(&[0.2f32, 0.5, 0.7])
            .reshape([1, 3, 1, 1])
            .expand([1, 3, 8, 8], false);
        let image = Tensor::cat(&[left, right], 3);
        let a = plain.features(&image).unwrap();
        assert_eq!(a.size(), [1, 8, 32]);
        let token = |t: &Tensor, p: i64| t.get(0).get(p);
        let cos = |x: &Tensor, y: &Tensor| {
            (x * y).sum(Kind::Float).double_value(&[]) / (x.norm().double_value(&[]) * y.norm().double_value(&[]))
        };
        // Patches 0, 1, 4, 5 lie in the left half, 2, 3, 6, 7 in the right one.
        assert!((token(&a, 0) - token(&a, 5)).abs().max().double_value(&[]) < 1e-6);
        assert!(
            cos(&token(&a, 0), &token(&a, 3)) < 0.5,
            "{}",
            cos(&token(&a, 0), &token(&a, 3))
        );
        // Every token of the plain variant has norm √(C/2) (sin² + cos² = 1 per frequency).
        assert!((token(&a, 2).norm().double_value(&[]) - 4.0).abs() < 1e-4);
        let b = pos.features(&image).unwrap();
        assert!((token(&b, 0) - token(&b, 5)).abs().max().double_value(&[]) > 0.1);
        let code = fourier_position_code(2, 4, Device::Cpu).unwrap();
        assert_eq!(code.size(), [8, 16]);
        // Patch (row 1, col 3) sits at y = +1, x = +1: sin(π/2·1) = 1 in the first row and column channels.
        assert!((code.double_value(&[7, 0]) - 1.0).abs() < 1e-6);
        assert!((code.double_value(&[7, 8]) - 1.0).abs() < 1e-6);
        assert!((code.double_value(&[0, 0]) + 1.0).abs() < 1e-6);
        assert!(pos
            .features(&Tensor::zeros([1, 3, 2, 2], (Kind::Float, Device::Cpu)))
            .is_err());
    }
}
