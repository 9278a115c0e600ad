//! ResNet-50 as a frozen backbone for the robustness analysis (SwaV's self-supervised ResNet-50).
//!
//! The network is `tch::vision::resnet::resnet50_no_final_layer`, whose module tree and parameter names are
//! torchvision's (`conv1`, `bn1`, `layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.{0,1}}`, stride on
//! the 3×3 convolution, BatchNorm eps 1e-5 in eval mode), so a torchvision-layout state dict loads by name. SwaV's
//! official checkpoint is such a state dict behind a `module.` prefix with its projection head and prototypes;
//! `tools/convert_resnet.py` strips those. The file must hold exactly the expected tensors with their shapes
//! (`num_batches_tracked` counters are ignored); anything else is refused naming the key and both shapes
//! ([`crate::weights`]).
//!
//! The representation is the global average pool of the last stage, (B, 2048): a ResNet has no class token, so
//! for the analysis its "CLS" and "mean-pooled" representations are the same vector. Input normalisation is
//! ImageNet's mean/std on [0, 1] RGB, as SwaV trains with.

use std::collections::BTreeMap;
use std::path::Path;

use crate::weights::{WeightError, WeightSource};
use mrdino_outputs::weights_id::Identity;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// ImageNet normalisation used by SwaV (and torchvision's ResNets).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// Weights that cannot be loaded (the file, and the key with both shapes where one is at fault), or input
/// images of the wrong shape.
#[derive(Debug, thiserror::Error)]
pub enum ResnetError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Input(#[from] crate::input::InputError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// A frozen ResNet-50 in eval mode.
pub struct Resnet50 {
    // Owns the parameters the module borrows by name.
    _vs: nn::VarStore,
    net: Box<dyn ModuleT>,
    device: Device,
    identity: Identity,
}

impl std::fmt::Debug for Resnet50 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resnet50")
            .field("device", &self.device)
            .field("identity", &self.identity.id)
            .finish()
    }
}

impl Resnet50 {
    /// Loads torchvision-layout ResNet-50 weights from safetensors onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self, ResnetError> {
        let source = WeightSource::open(path)?.describing("torchvision-layout ResNet-50");
        let counts = |name: &str| !name.ends_with("num_batches_tracked");
        let identity = source.identity("", counts, None)?;
        let mut vs = nn::VarStore::new(device);
        let net = tch::vision::resnet::resnet50_no_final_layer(&vs.root());
        let variables: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let expected: Vec<(String, Vec<i64>)> = variables.iter().map(|(k, v)| (k.clone(), v.size())).collect();
        source.check_keys("", &expected, &[], counts)?;
        let mut values = Vec::with_capacity(expected.len());
        for (key, shape) in &expected {
            values.push(source.take(key, shape)?.f_to_kind(Kind::Float)?);
        }
        tch::no_grad(|| -> Result<(), tch::TchError> {
            for ((_, var), value) in variables.iter().zip(&values) {
                let mut var = var.shallow_clone();
                var.f_copy_(value)?;
            }
            Ok(())
        })?;
        vs.freeze();
        Ok(Self {
            _vs: vs,
            net: Box::new(net),
            device,
            identity,
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// ImageNet normalisation of (B, 3, H, W) RGB in [0, 1].
    pub fn normalize(&self, images01: &Tensor) -> Result<Tensor, ResnetError> {
        check_images(images01, false)?;
        let stat = |values: &[f64; 3]| {
            Tensor::f_from_slice(values)?
                .f_to_kind(Kind::Float)?
                .f_view([1, 3, 1, 1])?
                .f_to_device(self.device)
        };
        let images = images01.f_to_device(self.device)?.f_to_kind(Kind::Float)?;
        Ok(images.f_sub(&stat(&IMAGENET_MEAN)?)?.f_div(&stat(&IMAGENET_STD)?)?)
    }

    /// Global-average-pooled features (B, 2048) of normalised images (B, 3, H, W).
    pub fn pooled(&self, images: &Tensor) -> Result<Tensor, ResnetError> {
        check_images(images, true)?;
        let images = images.f_to_device(self.device)?;
        Ok(tch::no_grad(|| self.net.forward_t(&images, false)))
    }
}

/// Images (B, 3, H, W) of at least one pixel, of a float kind when `float` (what torchvision's ResNet-50
/// accepts).
fn check_images(images: &Tensor, float: bool) -> Result<(), ResnetError> {
    let float_kind = matches!(images.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16);
    match images.size()[..] {
        [_, 3, h, w] if h > 0 && w > 0 && (float_kind || !float) => Ok(()),
        _ => {
            let expected = if float { "(B, 3, H, W) float, H, W > 0" } else { "(B, 3, H, W), H, W > 0" };
            Err(crate::input::InputError::tensor("ResNet-50 input images", expected, images).into())
        }
    }
}
