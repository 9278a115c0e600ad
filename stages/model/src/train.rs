//! The pieces of DINOSAUR training that do not know the command line: deterministic sampling, the feature
//! sources, and one optimisation step.
//!
//! Determinism: every random choice of a run is a pure function of the seed and the global sample index
//! n = step · batch_size + b — the view drawn ([`Sampler`]: epoch e = n / N uses a Fisher–Yates permutation of
//! the N views from SplitMix64 seeded by (seed, e)), the augmentation of that sample ([`sample_rng`]) and its
//! slot noise (`slot_noise(seed, [n], 1, K, D)`). So batches do not depend on worker threads or prefetch depth,
//! and the state a resume needs is the step count (plus weights and optimiser moments); the generator state
//! recorded in a checkpoint is that of the next sample, checked on resume.
//!
//! One step is the reference's training step: forward, MSE loss, backward, `clip_grad_norm_(1.0)`, Adam with
//! the learning rate of the schedule at this step's index.

use mrdino_outputs::feature_cache::FeatureCache;
use mrdino_outputs::OutputError;
use safetensors::tensor::Dtype;
use tch::{Device, Kind, Tensor};

use crate::dinosaur::{slot_noise, Dinosaur, DinosaurError, DinosaurOutput};
use crate::optim::Adam;

/// SplitMix64 (Steele, Lea & Flood 2014): a 64-bit state, one multiply-xorshift output per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0), by rejection so every value is equally likely.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n.max(1));
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n.max(1);
            }
        }
    }
}

fn mix(a: u64, b: u64) -> u64 {
    SplitMix64::new(a ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64()
}

/// The generator of sample `n`'s augmentation (crop offset, flip), independent of every other sample.
pub fn sample_rng(seed: i64, n: u64) -> SplitMix64 {
    SplitMix64::new(mix(seed as u64 ^ 0xA5A5_A5A5_A5A5_A5A5, n))
}

/// Which view each global sample index draws: a fresh permutation of the N views per epoch.
#[derive(Debug)]
pub struct Sampler {
    seed: i64,
    n_views: usize,
    epoch: Option<u64>,
    permutation: Vec<usize>,
}

impl Sampler {
    pub fn new(seed: i64, n_views: usize) -> Self {
        Self {
            seed,
            n_views,
            epoch: None,
            permutation: Vec::new(),
        }
    }

    /// The view of sample `n` (`n_views` must be positive).
    pub fn view(&mut self, n: u64) -> usize {
        let len = self.n_views.max(1) as u64;
        let epoch = n / len;
        if self.epoch != Some(epoch) {
            let mut rng = SplitMix64::new(mix(self.seed as u64, epoch));
            let mut p: Vec<usize> = (0..self.n_views).collect();
            for i in (1..p.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                p.swap(i, j);
            }
            self.permutation = p;
            self.epoch = Some(epoch);
        }
        self.permutation[(n % len) as usize]
    }
}

/// Errors of a training step or a feature source.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] DinosaurError),
    #[error(transparent)]
    Cache(#[from] OutputError),
    #[error(transparent)]
    Loader(#[from] crate::loader::LoaderError),
    #[error("non-finite loss {loss} at step {step}")]
    NonFinite { step: u64, loss: f64 },
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Where training features come from: the cache, or images through a backbone.
pub trait FeatureSource {
    /// N, views in one epoch.
    fn n_views(&self) -> usize;
    /// P, patches per view.
    fn n_patches(&self) -> i64;
    /// C, feature channels.
    fn channels(&self) -> i64;
    /// Name of the backbone behind the features.
    fn backbone_name(&self) -> String;
    /// Identity of the backbone weights behind the features, as recorded ([`mrdino_outputs::weights_id`]).
    fn backbone_id(&self) -> String;
    /// Features (B, P, C) float32 on `device` of the samples `first_sample .. first_sample + batch_size`.
    fn batch(&mut self, first_sample: u64, batch_size: usize, device: Device) -> Result<Tensor, TrainError>;
}

/// Features read from a [`FeatureCache`], views drawn by the [`Sampler`] (no augmentation: the cache holds
/// fixed views).
#[derive(Debug)]
pub struct CacheSource {
    cache: FeatureCache,
    sampler: Sampler,
    buffer: Vec<u8>,
}

impl CacheSource {
    pub fn new(cache: FeatureCache, seed: i64) -> Self {
        let n = cache.n_views();
        Self {
            cache,
            sampler: Sampler::new(seed, n),
            buffer: Vec::new(),
        }
    }

    pub fn cache(&self) -> &FeatureCache {
        &self.cache
    }
}

impl FeatureSource for CacheSource {
    fn n_views(&self) -> usize {
        self.cache.n_views()
    }

    fn n_patches(&self) -> i64 {
        self.cache.n_patches() as i64
    }

    fn channels(&self) -> i64 {
        self.cache.channels as i64
    }

    fn backbone_name(&self) -> String {
        self.cache.meta().backbone.clone()
    }

    fn backbone_id(&self) -> String {
        self.cache.meta().backbone_sha256.clone()
    }

    fn batch(&mut self, first_sample: u64, batch_size: usize, device: Device) -> Result<Tensor, TrainError> {
        self.buffer.clear();
        for b in 0..batch_size as u64 {
            let view = self.sampler.view(first_sample + b);
            self.cache.read_view(view, &mut self.buffer)?;
        }
        let kind = if self.cache.dtype == Dtype::BF16 {
            Kind::BFloat16
        } else {
            Kind::Half
        };
        let shape = [batch_size as i64, self.n_patches(), self.channels()];
        Ok(Tensor::f_from_data_size(&self.buffer, &shape, kind)?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?)
    }
}

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepMetrics {
    pub loss: f64,
    pub lr: f64,
    /// Total gradient norm before clipping.
    pub grad_norm: f64,
    /// Mean pairwise cosine of the batch's decoder masks ([`crate::dinosaur::mask_similarity`]).
    pub mask_similarity: f64,
    /// Normalised slot-attention entropy of the batch ([`crate::dinosaur::slot_entropy`]; 1 = uniform).
    pub attention_entropy: f64,
}

impl StepMetrics {
    /// The metrics of a step whose forward gave `out`: loss, learning rate and gradient norm as measured, the
    /// collapse figures (mask similarity, attention entropy) from `out`.
    pub fn of_forward(loss: f64, lr: f64, grad_norm: f64, out: &DinosaurOutput) -> Result<Self, DinosaurError> {
        Ok(Self {
            loss,
            lr,
            grad_norm,
            mask_similarity: out.mask_similarity()?,
            attention_entropy: out.attention_entropy()?,
        })
    }
}

/// One optimisation step on `features` for the samples `first_sample ..`: noise, forward, backward, clip,
/// Adam at learning rate `lr`.
pub fn train_step(
    model: &Dinosaur,
    adam: &mut Adam,
    features: &Tensor,
    seed: i64,
    first_sample: u64,
    lr: f64,
    clip_norm: f64,
) -> Result<StepMetrics, TrainError> {
    let c = model.config();
    let b = features.size().first().copied().unwrap_or(0);
    let indices: Vec<i64> = (0..b).map(|i| first_sample as i64 + i).collect();
    let noise = slot_noise(seed, &indices, 1, c.n_slots, c.slot_dim, model.device())?;
    adam.zero_grad()?;
    let out = model.forward(features, &noise)?;
    let loss = out.loss.f_double_value(&[])?;
    if !loss.is_finite() {
        return Err(TrainError::NonFinite {
            step: first_sample,
            loss,
        });
    }
    out.loss.backward();
    let grad_norm = adam.clip_grad_norm(clip_norm)?;
    adam.step(lr)?;
    Ok(StepMetrics::of_forward(loss, lr, grad_norm, &out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs of SplitMix64 seeded with 1234567 (the reference C implementation's test vector).
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn sampler_is_a_permutation_per_epoch_and_stateless() {
        let mut s = Sampler::new(3, 7);
        let mut first: Vec<usize> = (0..7).map(|n| s.view(n)).collect();
        let second: Vec<usize> = (7..14).map(|n| s.view(n)).collect();
        assert_ne!(first, second);
        let mut fresh = Sampler::new(3, 7);
        assert_eq!(fresh.view(9), second[2]);
        first.sort();
        assert_eq!(first, (0..7).collect::<Vec<_>>());
    }
}
