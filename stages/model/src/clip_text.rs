//! The OpenAI CLIP text tower (ViT-B/16's: width 512, 8 heads, 12 layers, MLP 2048, 77 positions, 49,408 ids,
//! output 512), as Talk2DINO embeds its prompts, and the class-embedding chain built on it.
//!
//! Contract: [`ClipText::encode`] maps (N, L) token ids (L ≤ the context length, 77; from
//! [`ClipTokenizer::tokenize`]) to (N, E) float32 text embeddings, **unnormalised** — what OpenAI's
//! `CLIP.encode_text` returns and what transformers' `CLIPTextModelWithProjection` calls `text_embeds`:
//! 1. `token_embedding[ids] + positional_embedding[:L]`;
//! 2. `layers` pre-LN residual blocks with causal self-attention (token i attends to tokens j ≤ i), fused
//!    [q|k|v] weights and QuickGELU x·σ(1.702·x), LayerNorm eps 1e-5 — the ViT's [`crate::vit`] block with its
//!    causal switch on. SDPA's `is_causal` gives bit-identical numbers to CLIP's `build_attention_mask` (−inf
//!    strictly above the diagonal, added to the logits); a unit test checks it;
//! 3. `ln_final` (stored as `norm`) on every token, then the token at the end-of-text position, found as the
//!    **argmax of the ids** (49407 is the largest id; the first one wins, as in torch), and
//!    `x @ text_projection`, a (width, E) matrix stored (in, out) as OpenAI stores it (HF's
//!    `text_projection.weight` is its transpose; `tools/convert_clip_text.py` transposes it).
//!
//! Because of the causal mask, tokens after the end-of-text token never reach the pooled vector: padding with
//! 0 (`clip.tokenize`) or with 49407 (HF's tokenizer) gives the same embedding.
//!
//! [`ClipText::class_embeddings`] is Talk2DINO's text side: every class fills the 7 [`TEMPLATES`], the 7
//! prompts are tokenised and encoded, the embeddings are **averaged over the templates in CLIP space**, then
//! ψ, then L2-normalised ([`Psi::class_embeddings`]).
//!
//! Weights file (written by `tools/convert_clip_text.py` from OpenAI's `.pt` or transformers' safetensors):
//! float tensors `token_embedding.weight` (V, W), `positional_embedding` (C, W),
//! `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}` (qkv (3W, W) in q, k, v order),
//! `norm.{weight,bias}` (`ln_final`) and `text_projection` (W, E), with the JSON [`ClipTextConfig`] in the
//! metadata key [`CONFIG_METADATA_KEY`]. Every key and shape is checked; a digest of the tensors is its identity
//! ([`mrdino_outputs::weights_id`]).
//! The forward runs in float32 without autograd; the weights never change after loading.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::clip_tokenizer::ClipTokenizer;
use crate::talk2dino::{Psi, TEMPLATES};
use crate::weights::{RandomInit, WeightError, WeightSource};
use mrdino_outputs::weights_id::Identity;
use crate::layers::{LayerNorm, Weights};
use crate::vit::{Activation, Block, BlockSpec};

/// Metadata key holding the JSON configuration.
pub const CONFIG_METADATA_KEY: &str = "mrdino.clip_text_config";
/// Metadata key naming the layout the converter read (`openai`, `hf`, `mrdino`).
pub const SOURCE_METADATA_KEY: &str = "mrdino.source_format";
/// The preset of OpenAI CLIP ViT-B/16's text tower (ViT-B/32's is the same architecture).
pub const VITB16_TEXT: &str = "clip-vitb16-text";

/// Sequences per forward in [`ClipText::class_embeddings`] (bounds the attention memory).
const CHUNK: i64 = 64;

/// Errors of loading or running the text tower; file errors name the path and the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ClipTextError {
    /// A weights file that cannot be read, or whose keys, shapes or dtypes are not the text tower's.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// Weights that cannot be written.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: metadata `{key}`: {message}")]
    Metadata {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: the file has no `{CONFIG_METADATA_KEY}` metadata; convert it with tools/convert_clip_text.py")]
    NoConfig { path: PathBuf },
    #[error("unknown text tower `{name}` (expected {VITB16_TEXT} or custom:width=…,layers=…,heads=…)")]
    UnknownModel { name: String },
    #[error("bad text tower spec `{spec}`: {message}")]
    BadSpec { spec: String, message: String },
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    #[error("token sequences of {length} tokens: the text tower reads 1 to {context}")]
    Length { length: i64, context: i64 },
    #[error("token ids range over {lo}..={hi}, outside the vocabulary 0..{vocab}")]
    IdRange { lo: i64, hi: i64, vocab: i64 },
    #[error("ψ reads 512-d CLIP embeddings, but the text tower `{name}` outputs {dim}")]
    EmbedDim { name: String, dim: i64 },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Every hyper-parameter of a CLIP text tower; serialised as JSON into the weights' metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    /// [`VITB16_TEXT`] or the canonical `custom:` spec.
    pub name: String,
    pub vocab_size: i64,
    /// Rows of the position embedding (77): the longest id sequence.
    pub context_length: i64,
    pub width: i64,
    pub heads: i64,
    pub layers: i64,
    pub mlp_dim: i64,
    /// Output width E of `text_projection` (512 for ViT-B/16).
    pub embed_dim: i64,
    pub ln_eps: f64,
    pub activation: Activation,
}

impl ClipTextConfig {
    /// [`VITB16_TEXT`], or `custom:width=W,layers=N,heads=H[,mlp=M][,embed=E][,context=C][,vocab=V]` (defaults
    /// MLP 4·W, E = W, C = 77, V = 49,408; QuickGELU and eps 1e-5 always, as in every OpenAI text tower).
    pub fn by_name(name: &str) -> Result<Self, ClipTextError> {
        if name == VITB16_TEXT {
            return Ok(Self::custom_parts(VITB16_TEXT, 512, 12, 8, 2048, 512, 77, 49408));
        }
        let Some(spec) = name.strip_prefix("custom:") else {
            return Err(ClipTextError::UnknownModel { name: name.to_string() });
        };
        let bad = |message: String| ClipTextError::BadSpec {
            spec: name.to_string(),
            message,
        };
        let mut fields: BTreeMap<&str, i64> = BTreeMap::new();
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("`{item}` is not key=value")))?;
            if !["width", "layers", "heads", "mlp", "embed", "context", "vocab"].contains(&key) {
                return Err(bad(format!(
                    "unknown key `{key}` (expected width, layers, heads, mlp, embed, context, vocab)"
                )));
            }
            match value.parse::<i64>() {
                Ok(v) if v > 0 => fields.insert(key, v),
                _ => return Err(bad(format!("`{key}` must be a positive integer, got `{value}`"))),
            };
        }
        let need = |key: &str| {
            fields
                .get(key)
                .copied()
                .ok_or_else(|| bad(format!("`{key}` is required")))
        };
        let (width, layers, heads) = (need("width")?, need("layers")?, need("heads")?);
        if width % heads != 0 {
            return Err(bad(format!("width {width} is not a multiple of heads {heads}")));
        }
        let get = |key: &str, default: i64| fields.get(key).copied().unwrap_or(default);
        let (mlp, embed, context, vocab) = (
            get("mlp", 4 * width),
            get("embed", width),
            get("context", 77),
            get("vocab", 49408),
        );
        let canonical =
            format!("custom:width={width},layers={layers},heads={heads},mlp={mlp},embed={embed},context={context},")
                + &format!("vocab={vocab}");
        Ok(Self::custom_parts(
            &canonical, width, layers, heads, mlp, embed, context, vocab,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn custom_parts(
        name: &str,
        width: i64,
        layers: i64,
        heads: i64,
        mlp_dim: i64,
        embed_dim: i64,
        context_length: i64,
        vocab_size: i64,
    ) -> Self {
        Self {
            name: name.to_string(),
            vocab_size,
            context_length,
            width,
            heads,
            layers,
            mlp_dim,
            embed_dim,
            ln_eps: 1e-5,
            activation: Activation::QuickGelu,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain numbers and strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Every canonical key with its shape, in file order.
    pub fn expected_keys(&self) -> Vec<(String, Vec<i64>)> {
        let (w, m) = (self.width, self.mlp_dim);
        let mut keys = vec![
            ("token_embedding.weight".to_string(), vec![self.vocab_size, w]),
            ("positional_embedding".to_string(), vec![self.context_length, w]),
        ];
        for i in 0..self.layers {
            let mut push = |name: &str, shape: Vec<i64>| keys.push((format!("blocks.{i}.{name}"), shape));
            push("norm1.weight", vec![w]);
            push("norm1.bias", vec![w]);
            push("attn.qkv.weight", vec![3 * w, w]);
            push("attn.qkv.bias", vec![3 * w]);
            push("attn.proj.weight", vec![w, w]);
            push("attn.proj.bias", vec![w]);
            push("norm2.weight", vec![w]);
            push("norm2.bias", vec![w]);
            push("mlp.fc1.weight", vec![m, w]);
            push("mlp.fc1.bias", vec![m]);
            push("mlp.fc2.weight", vec![w, m]);
            push("mlp.fc2.bias", vec![w]);
        }
        keys.push(("norm.weight".to_string(), vec![w]));
        keys.push(("norm.bias".to_string(), vec![w]));
        keys.push(("text_projection".to_string(), vec![w, self.embed_dim]));
        keys
    }

    fn block_spec(&self) -> BlockSpec {
        BlockSpec {
            dim: self.width,
            heads: self.heads,
            ln_eps: self.ln_eps,
            activation: self.activation,
            gated_mlp: false,
            k_bias: true,
            layer_scale: false,
            causal: true,
        }
    }
}

/// A loaded, frozen CLIP text tower.
pub struct ClipText {
    config: ClipTextConfig,
    identity: Identity,
    source_format: String,
    device: Device,
    _vs: nn::VarStore,
    token_embedding: Tensor,
    positional_embedding: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    text_projection: Tensor,
}

impl ClipText {
    /// Loads `path` (canonical keys, configuration from the metadata), validating every key and shape; float32.
    pub fn load(path: &Path, device: Device) -> Result<Self, ClipTextError> {
        let (config, identity, source_format, tensors) = read_weights(path, device)?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let mut w = Weights { tensors, error: None };
        let token_embedding = w.var(&(&root / "token_embedding"), "weight");
        let positional_embedding = w.var(&root, "positional_embedding");
        let spec = config.block_spec();
        let blocks_path = &root / "blocks";
        let blocks = (0..config.layers)
            .map(|i| Block::new(&(&blocks_path / i), &mut w, &spec))
            .collect();
        let norm = LayerNorm::from_weights(&(&root / "norm"), &mut w, config.width, config.ln_eps);
        let text_projection = w.var(&root, "text_projection");
        if let Some(e) = w.error {
            return Err(e.into());
        }
        let mut vs = vs;
        vs.freeze();
        Ok(Self {
            config,
            identity,
            source_format,
            device,
            _vs: vs,
            token_embedding,
            positional_embedding,
            blocks,
            norm,
            text_projection,
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// The identity of the weights (a digest of the tensors, see [`mrdino_outputs::weights_id`]).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The converter's `mrdino.source_format` (`openai`, `hf`, `mrdino`), `unknown` when absent.
    pub fn source_format(&self) -> &str {
        &self.source_format
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Output width E.
    pub fn embed_dim(&self) -> i64 {
        self.config.embed_dim
    }

    /// (N, L) integer token ids, 1 ≤ L ≤ the context length, every id < the vocabulary size → (N, E) float32
    /// on the model's device, unnormalised (OpenAI `encode_text`).
    pub fn encode(&self, ids: &Tensor) -> Result<Tensor, ClipTextError> {
        let integer = matches!(
            ids.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
        );
        let (n, l) = match ids.size().as_slice() {
            [n, l] if integer => (*n, *l),
            _ => return Err(crate::input::InputError::tensor("token ids", "(N, L) integers", ids).into()),
        };
        if l < 1 || l > self.config.context_length {
            return Err(ClipTextError::Length {
                length: l,
                context: self.config.context_length,
            });
        }
        let e = self.config.embed_dim;
        if n == 0 {
            return Ok(Tensor::f_zeros([0, e], (Kind::Float, self.device))?);
        }
        let ids = ids.f_to_kind(Kind::Int64)?.f_to_device(self.device)?;
        let (lo, hi) = (ids.f_min()?.f_int64_value(&[])?, ids.f_max()?.f_int64_value(&[])?);
        if lo < 0 || hi >= self.config.vocab_size {
            return Err(ClipTextError::IdRange {
                lo,
                hi,
                vocab: self.config.vocab_size,
            });
        }
        let _guard = tch::no_grad_guard();
        let w = self.config.width;
        let mut x = self
            .token_embedding
            .f_index_select(0, &ids.f_reshape([-1])?)?
            .f_reshape([n, l, w])?
            .f_add(&self.positional_embedding.f_narrow(0, 0, l)?)?;
        for block in &self.blocks {
            x = block.forward(&x, None, false)?.0;
        }
        let x = self.norm.forward(&x)?;
        let eot = ids
            .f_argmax(-1, false)?
            .f_reshape([n, 1, 1])?
            .f_expand([n, 1, w], false)?;
        let pooled = x.f_gather(1, &eot, false)?.f_squeeze_dim(1)?;
        Ok(pooled.f_matmul(&self.text_projection)?)
    }

    /// Talk2DINO's class embeddings: each class fills the 7 [`TEMPLATES`] (`{}` replaced), the prompts are
    /// tokenised (truncated to the context length) and encoded, averaged over the templates, mapped by ψ and
    /// L2-normalised → (N, ψ's width). ψ must live on the model's device; the text tower must output 512-d.
    pub fn class_embeddings(
        &self,
        tokenizer: &ClipTokenizer,
        psi: &Psi,
        classes: &[&str],
    ) -> Result<Tensor, ClipTextError> {
        if self.config.embed_dim != 512 {
            return Err(ClipTextError::EmbedDim {
                name: self.config.name.clone(),
                dim: self.config.embed_dim,
            });
        }
        let context = self.config.context_length;
        let t = TEMPLATES.len() as i64;
        let mut ids = Vec::with_capacity(classes.len() * TEMPLATES.len() * context as usize);
        for class in classes {
            for template in TEMPLATES {
                let mut row = tokenizer.tokenize(&template.replace("{}", class), context as usize);
                row.resize(context as usize, 0);
                ids.extend(row);
            }
        }
        let n = classes.len() as i64;
        if n == 0 {
            return Ok(Tensor::f_zeros([0, psi.dim()], (Kind::Float, self.device))?);
        }
        let ids = Tensor::f_from_slice(&ids)?.f_reshape([n * t, context])?;
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < n * t {
            let len = CHUNK.min(n * t - start);
            chunks.push(self.encode(&ids.f_narrow(0, start, len)?)?);
            start += len;
        }
        let per_template = Tensor::f_cat(&chunks, 0)?.f_reshape([n, t, self.config.embed_dim])?;
        let _guard = tch::no_grad_guard();
        Ok(psi.class_embeddings(&per_template)?)
    }
}

/// Reads, identifies and validates `path`: (configuration, identity, source format, tensors on `device` in f32).
fn read_weights(
    path: &Path,
    device: Device,
) -> Result<(ClipTextConfig, Identity, String, HashMap<String, Tensor>), ClipTextError> {
    let source = WeightSource::open(path)?;
    let json = source.meta(CONFIG_METADATA_KEY).ok_or_else(|| ClipTextError::NoConfig {
        path: path.to_path_buf(),
    })?;
    let config = ClipTextConfig::from_json(json).map_err(|e| ClipTextError::Metadata {
        path: path.to_path_buf(),
        key: CONFIG_METADATA_KEY.to_string(),
        message: e.to_string(),
    })?;
    let positive = [
        config.vocab_size,
        config.context_length,
        config.width,
        config.heads,
        config.layers,
    ];
    if positive.iter().any(|&v| v <= 0) || config.width % config.heads != 0 {
        return Err(ClipTextError::Metadata {
            path: path.to_path_buf(),
            key: CONFIG_METADATA_KEY.to_string(),
            message: format!("inconsistent sizes in `{}`", config.name),
        });
    }
    let source = source.describing(format!("text tower `{}`", config.name));
    let identity = source.identity("", |_| true, None)?;
    let expected = config.expected_keys();
    source.check_keys("", &expected, &[], |_| true)?;
    let mut tensors = HashMap::with_capacity(expected.len());
    for (key, shape) in &expected {
        let t = source.take(key, shape)?;
        tensors.insert(key.clone(), t.f_to_kind(Kind::Float)?.f_to_device(device)?);
    }
    let source_format = source.meta(SOURCE_METADATA_KEY).unwrap_or("unknown").to_string();
    Ok((config, identity, source_format, tensors))
}

/// Random weights with the key set of `config` (weights N(0, 0.02), embeddings N(0, 0.1), LayerNorm weights
/// 1 + N(0, 0.1), biases N(0, 0.1)), drawn by [`crate::weights::random_tensors`] from `seed`.
pub fn random_tensors(config: &ClipTextConfig, seed: i64) -> Result<Vec<(String, Tensor)>, tch::TchError> {
    crate::weights::random_tensors(config.expected_keys(), seed, |key| {
        if key.contains("norm") && key.ends_with("weight") {
            RandomInit::Normal { mean: 1.0, std: 0.1 }
        } else if key.ends_with("bias") || key.contains("embedding") {
            RandomInit::Normal { mean: 0.0, std: 0.1 }
        } else {
            RandomInit::Normal { mean: 0.0, std: 0.02 }
        }
    })
}

/// Writes random weights of `config` to `path` with the configuration in the metadata (tests, benches).
pub fn write_random_weights(path: &Path, config: &ClipTextConfig, seed: i64) -> Result<(), ClipTextError> {
    save(path, config, &random_tensors(config, seed)?)
}

/// Writes `tensors` (canonical names, any float kind, stored as float32) with the configuration in the metadata.
pub fn save(path: &Path, config: &ClipTextConfig, tensors: &[(String, Tensor)]) -> Result<(), ClipTextError> {
    let format_error = |message: String| ClipTextError::Format {
        path: path.to_path_buf(),
        message,
    };
    let mut metadata = HashMap::new();
    metadata.insert(CONFIG_METADATA_KEY.to_string(), config.to_json());
    metadata.insert(SOURCE_METADATA_KEY.to_string(), "mrdino".to_string());
    let mut data: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let numel = t.numel();
        let mut values = vec![0f32; numel];
        t.f_copy_data(&mut values, numel)?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        data.push((
            name.clone(),
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            shape,
        ));
    }
    let views = data
        .iter()
        .map(|(name, bytes, shape)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| format_error(format!("{name}: {e:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    safetensors::tensor::serialize_to_file(views, &Some(metadata), path).map_err(|e| format_error(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> ClipTextConfig {
        match ClipTextConfig::by_name("custom:width=64,layers=2,heads=2,context=16,vocab=49408") {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn causal_sdpa_equals_clips_additive_mask() {
        for (b, h, n, d) in [(3, 8, 77, 64), (2, 2, 10, 32), (1, 8, 3, 64)] {
            let (q, k, v) = crate::dinosaur::seeded(3, || {
                let draw = || Tensor::randn([b, h, n, d], (Kind::Float, Device::Cpu));
                (draw(), draw(), draw())
            });
            // CLIP's build_attention_mask: fill −inf, keep the part strictly above the diagonal.
            let mask = Tensor::full([n, n], f64::NEG_INFINITY, (Kind::Float, Device::Cpu)).triu(1);
            let causal = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, false);
            let additive = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, false);
            assert!(
                causal.equal(&additive),
                "({b},{h},{n},{d}): is_causal differs from the additive mask"
            );
            let explicit = ((q.matmul(&k.transpose(-1, -2)) * (d as f64).powf(-0.5)) + &mask)
                .softmax(-1, Kind::Float)
                .matmul(&v);
            let err = (&causal - explicit).abs().max().double_value(&[]);
            assert!(err < 1e-6, "({b},{h},{n},{d}): {err}");
        }
    }

    #[test]
    fn specs_parse_and_round_trip() {
        let base = ClipTextConfig::by_name(VITB16_TEXT).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                base.width,
                base.heads,
                base.layers,
                base.mlp_dim,
                base.embed_dim,
                base.context_length,
                base.vocab_size
            ),
            (512, 8, 12, 2048, 512, 77, 49408)
        );
        assert_eq!(base.expected_keys().len(), 2 + 12 * 12 + 3);
        let c = tiny();
        assert_eq!(
            c.name,
            "custom:width=64,layers=2,heads=2,mlp=256,embed=64,context=16,vocab=49408"
        );
        assert_eq!(ClipTextConfig::by_name(&c.name).ok(), Some(c.clone()));
        assert_eq!(ClipTextConfig::from_json(&c.to_json()).ok(), Some(c));
        for bad in [
            "custom:width=64,layers=2,heads=3",
            "custom:width=64,layers=2",
            "custom:width=64,layers=0,heads=2",
            "custom:width=64,layers=2,heads=2,colour=red",
            "clip-vitl14-text",
        ] {
            assert!(ClipTextConfig::by_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn padding_after_the_end_token_does_not_matter_and_bad_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("text.safetensors");
        write_random_weights(&path, &tiny(), 5).unwrap_or_else(|e| panic!("{e}"));
        let model = ClipText::load(&path, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let zeros = Tensor::from_slice(&[49406i64, 320, 1125, 49407, 0, 0, 0, 0]).reshape([1, 8]);
        let eots = Tensor::from_slice(&[49406i64, 320, 1125, 49407, 49407, 49407, 49407, 49407]).reshape([1, 8]);
        let short = Tensor::from_slice(&[49406i64, 320, 1125, 49407]).reshape([1, 4]);
        let a = model.encode(&zeros).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.size(), [1, 64]);
        for other in [&eots, &short] {
            let b = model.encode(other).unwrap_or_else(|e| panic!("{e}"));
            let err = (&a - b).abs().max().double_value(&[]);
            assert!(err < 1e-5, "padding changed the embedding by {err}");
        }
        for bad in [
            Tensor::from_slice(&[49408i64, 1]).reshape([1, 2]),
            Tensor::from_slice(&[-1i64, 1]).reshape([1, 2]),
            Tensor::from_slice(&[1i64; 17]).reshape([1, 17]),
            Tensor::from_slice(&[1i64, 2]),
            Tensor::from_slice(&[1.0f32, 2.0]).reshape([1, 2]),
        ] {
            assert!(model.encode(&bad).is_err(), "{:?} accepted", bad.size());
        }
        assert_eq!(
            model
                .encode(&Tensor::zeros([0, 4], (Kind::Int64, Device::Cpu)))
                .map(|t| t.size())
                .ok(),
            Some(vec![0, 64])
        );
    }

    #[test]
    fn loader_names_the_offending_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = tiny();
        let mut tensors = random_tensors(&config, 1).unwrap();
        let path = dir.path().join("bad.safetensors");
        tensors[1].1 = Tensor::zeros([15, 64], (Kind::Float, Device::Cpu));
        save(&path, &config, &tensors).unwrap_or_else(|e| panic!("{e}"));
        let message = ClipText::load(&path, Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains("positional_embedding") && message.contains("[15, 64]") && message.contains("[16, 64]"),
            "{message}"
        );
        let mut tensors = random_tensors(&config, 1).unwrap();
        tensors.push((
            "blocks.2.norm1.weight".to_string(),
            Tensor::zeros([64], (Kind::Float, Device::Cpu)),
        ));
        save(&path, &config, &tensors).unwrap_or_else(|e| panic!("{e}"));
        let message = ClipText::load(&path, Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("unexpected key `blocks.2.norm1.weight`"), "{message}");
        let tensors: Vec<_> = random_tensors(&config, 1)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k != "text_projection")
            .collect();
        save(&path, &config, &tensors).unwrap_or_else(|e| panic!("{e}"));
        let message = ClipText::load(&path, Device::Cpu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("missing key `text_projection`"), "{message}");
    }
}
