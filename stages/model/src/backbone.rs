//! The frozen feature extractor as the slot model sees it: images in [0, 1] → patch features (B, P, C).
//!
//! [`Backbone`] is what the ViT family implements; training and inference only talk to this trait, so any
//! backbone plugs into `mrdino train` and into the feature cache. [`ConvPatchBackbone`] is a real, small
//! backbone made of libtorch layers — ImageNet normalisation, one strided convolution (a ViT's patch embedding
//! without the transformer) and a LayerNorm without affine — with weights drawn deterministically from a seed.
//! It is not a pretrained model and gives no useful objects on real images; it exists so the data pipeline,
//! the cache writer and the trainer can be exercised end to end without downloading weights (tests, smoke runs).

use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use crate::train::SplitMix64;

/// ImageNet mean and standard deviation of the RGB channels (DINOv2's normalisation).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// A frozen feature extractor.
pub trait Backbone: Send {
    /// Name as on the command line (`dinov2-vitb14`, `random-conv-p14-c64`, …).
    fn name(&self) -> &str;
    /// SHA-256 of the weights, recorded in checkpoints and caches.
    fn weights_sha256(&self) -> &str;
    /// Pixels per patch side.
    fn patch_size(&self) -> i64;
    /// C, channels of the features.
    fn feature_dim(&self) -> i64;
    fn device(&self) -> Device;
    /// `images01` (B, 3, H, W) float in [0, 1] (any device) → features (B, (H/ps)·(W/ps), C) float32 on the
    /// backbone's device, patches in row-major order; no gradient. Errors name what is wrong with the input.
    fn features(&self, images01: &Tensor) -> Result<Tensor, String>;
}

/// See the module docs: normalisation, a strided Conv2d(3, C, ps, ps) and a LayerNorm without affine.
#[derive(Debug)]
pub struct ConvPatchBackbone {
    name: String,
    sha256: String,
    patch: i64,
    channels: i64,
    weight: Tensor,
    bias: Tensor,
    device: Device,
}

impl ConvPatchBackbone {
    /// Weights U(±1/√(3·ps²)) and biases U(±0.5) drawn from SplitMix64(`seed`), independent of libtorch's
    /// generator; the SHA-256 is that of the float32 weight and bias bytes.
    pub fn new(patch: i64, channels: i64, seed: u64, device: Device) -> Self {
        let mut rng = SplitMix64::new(seed);
        let fan_in = 3 * patch * patch;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let w: Vec<f32> = (0..channels * fan_in)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let b: Vec<f32> = (0..channels).map(|_| (rng.next_f64() - 0.5) as f32).collect();
        let mut h = Sha256::new();
        for v in w.iter().chain(&b) {
            h.update(v.to_le_bytes());
        }
        let sha256 = h.finalize().iter().map(|x| format!("{x:02x}")).collect();
        Self {
            name: format!("random-conv-p{patch}-c{channels}"),
            sha256,
            patch,
            channels,
            weight: Tensor::from_slice(&w)
                .reshape([channels, 3, patch, patch])
                .to_device(device),
            bias: Tensor::from_slice(&b).to_device(device),
            device,
        }
    }

    /// Parses `random-conv-p<PS>-c<C>` (seed 0).
    pub fn from_name(name: &str, device: Device) -> Option<Self> {
        let rest = name.strip_prefix("random-conv-p")?;
        let (p, c) = rest.split_once("-c")?;
        let (p, c): (i64, i64) = (p.parse().ok()?, c.parse().ok()?);
        (p > 0 && c > 0).then(|| Self::new(p, c, 0, device))
    }
}

impl Backbone for ConvPatchBackbone {
    fn name(&self) -> &str {
        &self.name
    }

    fn weights_sha256(&self) -> &str {
        &self.sha256
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

    fn features(&self, images01: &Tensor) -> Result<Tensor, String> {
        Ok(tch::no_grad(|| {
            let x = images01.to_device(self.device).to_kind(Kind::Float);
            let mean = Tensor::from_slice(&IMAGENET_MEAN)
                .to_kind(Kind::Float)
                .reshape([1, 3, 1, 1])
                .to_device(self.device);
            let std = Tensor::from_slice(&IMAGENET_STD)
                .to_kind(Kind::Float)
                .reshape([1, 3, 1, 1])
                .to_device(self.device);
            let x = (x - mean) / std;
            let y = x.conv2d(
                &self.weight,
                Some(&self.bias),
                [self.patch, self.patch],
                [0, 0],
                [1, 1],
                1,
            );
            let y = y.flatten(2, 3).transpose(1, 2);
            y.layer_norm([self.channels], None::<Tensor>, None::<Tensor>, 1e-5, false)
        }))
    }
}

/// The ViT backbones as DINOSAUR's feature extractor: normalisation of the family, then the patch tokens of the
/// last block after the final norm (`get_intermediate_layers(x, [last], norm=True)`).
impl Backbone for crate::vit::Vit {
    fn name(&self) -> &str {
        &self.config().name
    }

    fn weights_sha256(&self) -> &str {
        self.sha256()
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

    fn features(&self, images01: &Tensor) -> Result<Tensor, String> {
        let images = self.normalize(&images01.to_kind(Kind::Float)).map_err(|e| e.to_string())?;
        tch::no_grad(|| crate::vit::Vit::features(self, &images, None)).map_err(|e| e.to_string())
    }
}
