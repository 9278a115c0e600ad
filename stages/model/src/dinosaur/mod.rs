//! DINOSAUR: slot attention over frozen ViT features with an MLP broadcast decoder, as the reference builds it
//! (visinf/mr-dinosaur `ocl/conditioning.py` `RandomConditioning`, `ocl/perceptual_grouping.py`
//! `SlotAttentionGrouping`, `ocl/decoding.py` `PatchDecoder`, `ocl/neural_networks/convenience.py` `build_mlp`).
//!
//! Contract: [`Dinosaur::forward`] takes features (B, P, F) and the slot noise (B, K, D) explicitly — the model
//! draws no random numbers, so a forward is a pure function of weights, features and noise; [`slot_noise`]
//! draws the noise reproducibly per image. Parameters live in one `tch` var store whose names are the mrdino
//! model-file keys: the reference's state_dict keys with the `models.` prefix stripped
//! (`conditioning.slots_mu`, `perceptual_grouping.slot_attention.to_q.weight`,
//! `perceptual_grouping.positional_embedding.layers.1.0.weight`, `object_decoder.pos_embed`,
//! `object_decoder.decoder.6.bias`, …).
//!
//! Reference behaviour reproduced:
//! * slots₀ = μ + exp(log σ)·noise, μ and log σ (1, 1, D) initialised `xavier_uniform_` (bound √(3/D));
//! * input MLP LayerNorm(F) → Linear(F, F) → ReLU → Linear(F, D), biases 0, weights PyTorch's default Linear
//!   init (U(±1/√fan_in));
//! * slot attention: LayerNorm on inputs, k, v = W_k x, W_v x (no bias); `iterations` times q = W_q LN(slots),
//!   logits = q kᵀ·D^−½, softmax over the slot axis, + eps, renormalised over the inputs, updates = attn v,
//!   GRUCell(updates, slots) (PyTorch's default U(±1/√D) init of every GRU tensor), slots += MLP(LN(slots))
//!   with MLP Linear(D, 4D) → ReLU → Linear(4D, D), biases 0; LayerNorm eps 1e-5 everywhere;
//! * decoder: every slot broadcast to the P patches + `pos_embed` (1, P, D) ~ N(0, 0.02²), MLP
//!   D → h → h → h → F + 1 with ReLUs and zero biases; the last channel is the alpha logit, alpha = softmax over
//!   slots, reconstruction = Σ_slots alpha·features; masks = alpha (B, K, P);
//! * loss = MSE(reconstruction, features), mean over all elements.
//!
//! Options from the backbone study (off by default, see [`DinosaurConfig`]): channel-normalised loss, mask
//! temperature τ, a single-linear input projection, a learnable target projection on the detached features.

mod config;
mod load;
mod noise;

pub use config::{ConfigError, DinosaurConfig, InputProjection};
pub use load::{file_config, infer_config, LoadError, RUN_CHECKPOINT_FILE, SLOT_DECODER_PREFIX};
pub use noise::{seeded, slot_noise};

use tch::nn::{self, Init};
use tch::TchError;

use crate::layers::{LayerNorm, Linear};
use tch::{Device, Kind, Tensor};

/// `nn.GRUCell(dim, dim)` with PyTorch's gate layout (rows r | z | n) and init U(±1/√hidden).
#[derive(Debug)]
struct GruCell {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
}

impl GruCell {
    fn new(path: nn::Path, input: i64, hidden: i64) -> Self {
        let b = 1.0 / (hidden as f64).sqrt();
        let init = Init::Uniform { lo: -b, up: b };
        Self {
            weight_ih: path.var("weight_ih", &[3 * hidden, input], init),
            weight_hh: path.var("weight_hh", &[3 * hidden, hidden], init),
            bias_ih: path.var("bias_ih", &[3 * hidden], init),
            bias_hh: path.var("bias_hh", &[3 * hidden], init),
        }
    }

    fn forward(&self, x: &Tensor, h: &Tensor) -> Result<Tensor, TchError> {
        x.f_gru_cell(
            h,
            &self.weight_ih,
            &self.weight_hh,
            Some(&self.bias_ih),
            Some(&self.bias_hh),
        )
    }
}

#[derive(Debug)]
struct InputMlp {
    norm: LayerNorm,
    first: Linear,
    second: Option<Linear>,
}

impl InputMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor, TchError> {
        let x = self.first.forward(&self.norm.forward(x)?)?;
        match &self.second {
            Some(second) => second.forward(&x.f_relu()?),
            None => Ok(x),
        }
    }
}

#[derive(Debug)]
struct SlotAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    gru: GruCell,
    norm_input: LayerNorm,
    norm_slots: LayerNorm,
    ff_norm: LayerNorm,
    ff_1: Linear,
    ff_2: Linear,
}

/// The result of one forward.
#[derive(Debug)]
pub struct DinosaurOutput {
    /// Slots after slot attention (B, K, D).
    pub slots: Tensor,
    /// Decoder alpha masks, softmax over slots (B, K, P).
    pub masks: Tensor,
    /// Σ_slots alpha · decoded features (B, P, F).
    pub reconstruction: Tensor,
    /// What the reconstruction is compared with: the features, or their learned projection (B, P, F).
    pub target: Tensor,
    /// Slot-attention softmax of the last iteration, before the epsilon and renormalisation (B, K, P).
    pub attention: Tensor,
    /// MSE loss (scalar).
    pub loss: Tensor,
}

/// Errors of the slot model that a caller can cause (wrong shapes, bad sizes).
#[derive(Debug, thiserror::Error)]
pub enum DinosaurError {
    #[error("invalid DINOSAUR configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        what: &'static str,
        expected: String,
        got: Vec<i64>,
    },
    #[error("cannot infer a {n_patches}-patch grid for a {height}×{width} image")]
    Grid { n_patches: i64, height: i64, width: i64 },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl DinosaurOutput {
    /// The masks on the image grid: reshaped to the patch grid inferred from the image's aspect ratio
    /// (`grid_w = round(√(P / (h/w)))`, `grid_h = P / grid_w`), bilinearly upsampled to h×w with
    /// `align_corners = False`, on CPU as the reference does; returned on the masks' device. (B, K, h, w).
    pub fn masks_as_image(&self, height: i64, width: i64) -> Result<Tensor, DinosaurError> {
        masks_to_image(&self.masks, height, width)
    }

    /// Mask Similarity: mean over images of the mean pairwise cosine similarity between the K masks
    /// (vectors over P; pairs i < j; norms clamped at 1e-8). Lower means more distinct slots. 0 when K = 1.
    pub fn mask_similarity(&self) -> Result<f64, DinosaurError> {
        Ok(mask_similarity(&self.masks)?)
    }

    /// Slot-attention entropy of the last iteration, normalised: see [`slot_entropy`] of [`Self::attention`].
    /// 1 when every token attends to all slots alike (collapse), 0 when each token attends to one slot.
    pub fn attention_entropy(&self) -> Result<f64, DinosaurError> {
        Ok(slot_entropy(&self.attention)?)
    }
}

/// See [`DinosaurOutput::masks_as_image`].
pub fn masks_to_image(masks: &Tensor, height: i64, width: i64) -> Result<Tensor, DinosaurError> {
    let size = masks.size();
    let [b, k, p] = size[..] else {
        return Err(DinosaurError::Shape {
            what: "masks",
            expected: "(B, K, P)".into(),
            got: size,
        });
    };
    if height <= 0 || width <= 0 {
        return Err(DinosaurError::Grid {
            n_patches: p,
            height,
            width,
        });
    }
    let aspect = height as f64 / width as f64;
    let grid_w = ((p as f64 / aspect).sqrt()).round() as i64;
    let grid_h = if grid_w > 0 { p / grid_w } else { 0 };
    if grid_w <= 0 || grid_h * grid_w != p {
        return Err(DinosaurError::Grid {
            n_patches: p,
            height,
            width,
        });
    }
    let device = masks.device();
    let image = masks
        .f_to_device(Device::Cpu)?
        .f_reshape([b, k, grid_h, grid_w])?
        .f_upsample_bilinear2d([height, width], false, None, None)?;
    Ok(image.f_to_device(device)?)
}

/// See [`DinosaurOutput::mask_similarity`].
pub fn mask_similarity(masks: &Tensor) -> Result<f64, tch::TchError> {
    let size = masks.size();
    let [_, k, _] = size[..] else { return Ok(f64::NAN) };
    if k < 2 {
        return Ok(0.0);
    }
    tch::no_grad(|| {
        let m = masks.f_to_kind(Kind::Float)?;
        let unit = m.f_div(&m.f_norm_scalaropt_dim(2.0, [-1], true)?.f_clamp_min(1e-8)?)?;
        let cos = unit.f_matmul(&unit.f_transpose(1, 2)?)?;
        let off_diagonal = cos
            .f_sum_dim_intlist(&[1, 2][..], false, Kind::Float)?
            .f_sub(&cos.f_diagonal(0, 1, 2)?.f_sum_dim_intlist(&[1][..], false, Kind::Float)?)?
            .f_div_scalar((k * (k - 1)) as f64)?;
        off_diagonal.f_mean(Kind::Float)?.f_double_value(&[])
    })
}

/// Normalised slot entropy of weights (B, K, P) that sum to 1 over the slot axis (attention, alpha masks):
/// mean over the B·P tokens of −Σ_k w·ln w, divided by ln K (0 · ln 0 = 0), so 0 ≤ H ≤ 1 — 1 when every token
/// spreads evenly over the K slots, 0 when each token belongs to one slot. 0 when K = 1; NaN for another rank.
/// In PyTorch: `-(w * w.clamp_min(1e-30).log()).sum(1).mean() / math.log(K)`.
pub fn slot_entropy(weights: &Tensor) -> Result<f64, tch::TchError> {
    let size = weights.size();
    let [_, k, _] = size[..] else { return Ok(f64::NAN) };
    if k < 2 {
        return Ok(0.0);
    }
    tch::no_grad(|| {
        let w = weights.f_to_kind(Kind::Float)?;
        let plogp = w.f_mul(&w.f_clamp_min(1e-30)?.f_log()?)?;
        let per_token = plogp.f_sum_dim_intlist(&[1][..], false, Kind::Float)?.f_neg()?;
        Ok(per_token.f_mean(Kind::Float)?.f_double_value(&[])? / (k as f64).ln())
    })
}

/// The DINOSAUR slot model (conditioning, input MLP, slot attention, MLP broadcast decoder).
#[derive(Debug)]
pub struct Dinosaur {
    config: DinosaurConfig,
    vs: nn::VarStore,
    slots_mu: Tensor,
    slots_logsigma: Tensor,
    input_mlp: InputMlp,
    slot_attention: SlotAttention,
    pos_embed: Tensor,
    decoder: Vec<Linear>,
    target_projection: Option<Linear>,
}

impl Dinosaur {
    /// A freshly initialised model (initialisation as the reference; draws from libtorch's global generator).
    pub fn new(config: DinosaurConfig, device: Device) -> Result<Self, DinosaurError> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let c = &config;
        let (f, d, h) = (c.feature_dim, c.slot_dim, c.decoder_hidden);
        let eps = c.layer_norm_eps;

        let cond = &root / "conditioning";
        let xavier = (3.0 / d as f64).sqrt();
        let slots_mu = cond.var(
            "slots_mu",
            &[1, 1, d],
            Init::Uniform {
                lo: -xavier,
                up: xavier,
            },
        );
        let slots_logsigma = cond.var(
            "slots_logsigma",
            &[1, 1, d],
            Init::Uniform {
                lo: -xavier,
                up: xavier,
            },
        );

        let grouping = &root / "perceptual_grouping";
        let mlp = &grouping / "positional_embedding" / "layers" / 1;
        let input_mlp = match c.input_projection {
            InputProjection::TwoLayer => InputMlp {
                norm: LayerNorm::trainable(&mlp / 0, f, eps),
                first: Linear::trainable(&mlp / 1, f, f, true),
                second: Some(Linear::trainable(&mlp / 3, f, d, true)),
            },
            InputProjection::SingleLinear => InputMlp {
                norm: LayerNorm::trainable(&mlp / 0, f, eps),
                first: Linear::trainable(&mlp / 1, f, d, true),
                second: None,
            },
        };
        let sa = &grouping / "slot_attention";
        let ff = &sa / "ff_mlp" / "module";
        let slot_attention = SlotAttention {
            to_q: Linear::trainable(&sa / "to_q", d, d, false),
            to_k: Linear::trainable(&sa / "to_k", d, d, false),
            to_v: Linear::trainable(&sa / "to_v", d, d, false),
            gru: GruCell::new(&sa / "gru", d, d),
            norm_input: LayerNorm::trainable(&sa / "norm_input", d, eps),
            norm_slots: LayerNorm::trainable(&sa / "norm_slots", d, eps),
            ff_norm: LayerNorm::trainable(&ff / 0, d, eps),
            ff_1: Linear::trainable(&ff / 1, d, c.ff_mlp_ratio * d, true),
            ff_2: Linear::trainable(&ff / 3, c.ff_mlp_ratio * d, d, true),
        };

        let dec = &root / "object_decoder";
        let pos_embed = dec.var(
            "pos_embed",
            &[1, c.n_patches, d],
            Init::Randn { mean: 0.0, stdev: 0.02 },
        );
        let layers = &dec / "decoder";
        let decoder = vec![
            Linear::trainable(&layers / 0, d, h, true),
            Linear::trainable(&layers / 2, h, h, true),
            Linear::trainable(&layers / 4, h, h, true),
            Linear::trainable(&layers / 6, h, f + 1, true),
        ];
        let target_projection = c
            .target_projection
            .then(|| Linear::trainable(&root / "target_projection", f, f, true));
        Ok(Self {
            config,
            vs,
            slots_mu,
            slots_logsigma,
            input_mlp,
            slot_attention,
            pos_embed,
            decoder,
            target_projection,
        })
    }

    pub fn config(&self) -> &DinosaurConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Every parameter with its model-file key, sorted by key. The tensors share storage with the model.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Overwrites the parameter `name` with `value` (same shape; cast to float32 on the model's device).
    pub fn set_parameter(&self, name: &str, value: &Tensor) -> Result<(), load::LoadError> {
        let vars = self.vs.variables();
        let Some(var) = vars.get(name) else {
            return Err(load::LoadError::UnknownKey { key: name.to_string() });
        };
        if var.size() != value.size() {
            return Err(load::LoadError::KeyShape {
                key: name.to_string(),
                expected: var.size(),
                got: value.size(),
            });
        }
        let mut var = var.shallow_clone();
        let value = value.f_to_kind(Kind::Float)?.f_to_device(var.device())?;
        tch::no_grad(|| var.f_copy_(&value))?;
        Ok(())
    }

    /// Slots, masks, reconstruction and loss for `features` (B, P, F) and slot `noise` (B, K, D).
    pub fn forward(&self, features: &Tensor, noise: &Tensor) -> Result<DinosaurOutput, DinosaurError> {
        let c = &self.config;
        let fs = features.size();
        let ok = fs.len() == 3 && fs[1] == c.n_patches && fs[2] == c.feature_dim;
        if !ok {
            return Err(DinosaurError::Shape {
                what: "features",
                expected: format!("(B, {}, {})", c.n_patches, c.feature_dim),
                got: fs,
            });
        }
        let b = fs[0];
        let ns = noise.size();
        if ns != [b, c.n_slots, c.slot_dim] {
            return Err(DinosaurError::Shape {
                what: "slot noise",
                expected: format!("({b}, {}, {})", c.n_slots, c.slot_dim),
                got: ns,
            });
        }
        let features = features.f_to_kind(Kind::Float)?;
        let noise = noise.f_to_kind(Kind::Float)?.f_to_device(self.device())?;
        let slots = self.slots_mu.f_add(&self.slots_logsigma.f_exp()?.f_mul(&noise)?)?;
        let inputs = self.input_mlp.forward(&features)?;
        let (slots, attention) = self.group(&inputs, slots)?;
        let (masks, reconstruction) = self.decode(&slots)?;
        let target = match &self.target_projection {
            Some(projection) => projection.forward(&features.detach())?,
            None => features,
        };
        let loss = if c.channel_normalised_loss {
            let norm =
                |x: &Tensor| x.f_layer_norm([c.feature_dim], None::<Tensor>, None::<Tensor>, c.layer_norm_eps, false);
            norm(&reconstruction)?.f_mse_loss(&norm(&target)?, tch::Reduction::Mean)?
        } else {
            reconstruction.f_mse_loss(&target, tch::Reduction::Mean)?
        };
        Ok(DinosaurOutput {
            slots,
            masks,
            reconstruction,
            target,
            attention,
            loss,
        })
    }

    /// Slot attention over `inputs` (B, P, D) from the initial `slots` (B, K, D): (slots, attention of the last
    /// iteration (B, K, P)).
    fn group(&self, inputs: &Tensor, mut slots: Tensor) -> Result<(Tensor, Tensor), TchError> {
        let c = &self.config;
        let sa = &self.slot_attention;
        let (b, k, d) = (slots.size()[0], c.n_slots, c.slot_dim);
        let x = sa.norm_input.forward(inputs)?;
        let keys = sa.to_k.forward(&x)?;
        let values = sa.to_v.forward(&x)?;
        let scale = (d as f64).powf(-0.5);
        let mut attention = Tensor::f_zeros([b, k, c.n_patches], (Kind::Float, self.device()))?;
        for _ in 0..c.iterations {
            let previous = slots.shallow_clone();
            let q = sa.to_q.forward(&sa.norm_slots.forward(&slots)?)?;
            let logits = q.f_matmul(&keys.f_transpose(1, 2)?)?.f_mul_scalar(scale)?;
            let attn = logits.f_softmax(1, Kind::Float)?;
            let weights = attn.f_add_scalar(c.attention_eps)?;
            let weights = weights.f_div(&weights.f_sum_dim_intlist(&[-1][..], true, Kind::Float)?)?;
            let updates = weights.f_matmul(&values)?;
            let updated = sa
                .gru
                .forward(&updates.f_reshape([-1, d])?, &previous.f_reshape([-1, d])?)?
                .f_reshape([b, k, d])?;
            let ff = sa.ff_2.forward(&sa.ff_1.forward(&sa.ff_norm.forward(&updated)?)?.f_relu()?)?;
            slots = updated.f_add(&ff)?;
            attention = attn;
        }
        Ok((slots, attention))
    }

    /// The decoder on `slots` (B, K, D): (alpha masks (B, K, P), reconstruction (B, P, F)).
    fn decode(&self, slots: &Tensor) -> Result<(Tensor, Tensor), TchError> {
        let c = &self.config;
        let (b, k, d, p, f) = (slots.size()[0], c.n_slots, c.slot_dim, c.n_patches, c.feature_dim);
        let mut x = slots
            .f_reshape([b * k, 1, d])?
            .f_expand([b * k, p, d], false)?
            .f_add(&self.pos_embed)?;
        let last = self.decoder.len() - 1;
        for (i, layer) in self.decoder.iter().enumerate() {
            x = layer.forward(&x)?;
            if i < last {
                x = x.f_relu()?;
            }
        }
        let x = x.f_reshape([b, k, p, f + 1])?;
        let decoded = x.f_narrow(3, 0, f)?;
        let logits = x.f_narrow(3, f, 1)?;
        let logits = if c.mask_temperature == 1.0 {
            logits
        } else {
            logits.f_div_scalar(c.mask_temperature)?
        };
        let alpha = logits.f_softmax(1, Kind::Float)?;
        let reconstruction = decoded.f_mul(&alpha)?.f_sum_dim_intlist(&[1][..], false, Kind::Float)?;
        Ok((alpha.f_squeeze_dim(-1)?, reconstruction))
    }
}
