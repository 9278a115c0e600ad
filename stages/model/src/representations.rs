//! The representations the robustness analysis compares: frozen backbones (a ViT of any family, or SwaV's
//! ResNet-50) applied to the image variants of frames (`crate::variants`), pooled per image.
//!
//! Every variant batch (B, 3, H, W) in [0, 1] is resized to the backbone's square input (bilinear, no
//! antialias; the side is `size` rounded down to a multiple of the backbone's patch) and put through the
//! backbone on its device. Representations: the CLS token and the mean of the patch tokens, both after the final
//! norm (for the ResNet, which has no CLS token, the global average pool as `mean`). Only the pooled rows are
//! kept (on the CPU), so memory grows with frames × channels, not with pixels.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::resnet::{Resnet50, ResnetError};
use crate::variants::{variant_batch, Variant, VariantParams};
use crate::vit::{ForwardOptions, Vit, VitConfig, VitError};

/// The name of SwaV's ResNet-50 among the backbones of the analysis.
pub const SWAV_RESNET50: &str = "swav-rn50";

/// The representations of a frame, in report order.
pub const REPRESENTATIONS: [&str; 2] = ["cls", "mean"];

/// The patch of the ResNet-50 as the input side is rounded: its total stride.
const RESNET_STRIDE_PX: i64 = 32;

/// Errors of loading a backbone or computing representations, naming the backbone.
#[derive(Debug, thiserror::Error)]
pub enum RepresentationError {
    #[error(transparent)]
    Vit(#[from] VitError),
    #[error(transparent)]
    Resnet(#[from] ResnetError),
    #[error("backbone `{backbone}`: {source}")]
    Torch { backbone: String, source: tch::TchError },
    #[error("backbone `{backbone}` gave non-finite representations (NaN or infinite values); are its weights intact?")]
    NotFinite { backbone: String },
}

/// A frozen backbone of the analysis.
pub enum AnalysisBackbone {
    Vit(Box<Vit>),
    Resnet(Box<Resnet50>),
}

impl AnalysisBackbone {
    /// `swav-rn50` (a torchvision-layout ResNet-50) or a ViT by name (`VitConfig::by_name`), from `weights`.
    pub fn load(name: &str, weights: &Path, device: Device) -> Result<Self, RepresentationError> {
        Ok(if name == SWAV_RESNET50 {
            Self::Resnet(Box::new(Resnet50::load(weights, device)?))
        } else {
            let config = VitConfig::by_name(name)?;
            Self::Vit(Box::new(Vit::load(weights, Some(config), device)?))
        })
    }

    /// The patch (ViT) or total stride (ResNet) the input side is a multiple of, px.
    pub fn patch_px(&self) -> i64 {
        match self {
            Self::Vit(v) => v.patch_size(),
            Self::Resnet(_) => RESNET_STRIDE_PX,
        }
    }

    /// The square input side for a requested `size_px`: rounded down to a multiple of the patch, at least one
    /// patch.
    pub fn input_side_px(&self, size_px: i64) -> i64 {
        (size_px / self.patch_px()).max(1) * self.patch_px()
    }

    /// (CLS, mean-pooled) representations of images (B, 3, S, S) in [0, 1]; ResNet: (None, pooled).
    pub fn represent(&self, images01: &Tensor) -> Result<(Option<Tensor>, Tensor), RepresentationError> {
        Ok(match self {
            Self::Vit(v) => {
                let tokens = tch::no_grad(|| v.forward(&v.normalize(images01)?, ForwardOptions::default()))?;
                let mean = tokens.patches.f_mean_dim(1, false, Kind::Float).map_err(|source| {
                    RepresentationError::Torch {
                        backbone: "ViT".to_string(),
                        source,
                    }
                })?;
                (Some(tokens.cls), mean)
            }
            Self::Resnet(r) => (None, r.pooled(&r.normalize(images01)?)?),
        })
    }
}

/// The pooled representations of the frames analysed so far: for every (backbone, variant, representation) the
/// rows of the frames in the order they were added.
#[derive(Default)]
pub struct Representations {
    rows: BTreeMap<(usize, Variant, &'static str), Vec<Tensor>>,
}

impl Representations {
    /// Adds one batch of frames ((image (3, H, W), foreground (H, W)) of one size): every variant through every
    /// backbone (`names` name them in errors), resized to `size_px` (see the module docs).
    pub fn add_batch(
        &mut self,
        frames: &[(Tensor, Tensor)],
        backbones: &[AnalysisBackbone],
        names: &[String],
        params: &VariantParams,
        size_px: i64,
    ) -> Result<(), RepresentationError> {
        if frames.is_empty() {
            return Ok(());
        }
        for variant in Variant::ALL {
            let batch = variant_batch(frames, variant, params).map_err(|source| RepresentationError::Torch {
                backbone: names.join(", "),
                source,
            })?;
            for (b, (backbone, name)) in backbones.iter().zip(names).enumerate() {
                for (representation, rows) in represent(backbone, name, &batch, size_px)? {
                    self.rows.entry((b, variant, representation)).or_default().push(rows);
                }
            }
        }
        Ok(())
    }

    /// The representation of every frame added (n × C, float64, on the CPU); `None` when the backbone has no
    /// such representation (the ResNet's `cls`).
    pub fn matrix(
        &self,
        backbone: usize,
        variant: Variant,
        representation: &'static str,
    ) -> Option<Result<Tensor, tch::TchError>> {
        self.rows
            .get(&(backbone, variant, representation))
            .map(|rows| Tensor::f_cat(rows, 0)?.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu))
    }
}

/// The representations of one variant batch through one backbone, on the CPU, refused when not finite.
fn represent(
    backbone: &AnalysisBackbone,
    name: &str,
    batch: &Tensor,
    size_px: i64,
) -> Result<Vec<(&'static str, Tensor)>, RepresentationError> {
    let torch = |source| RepresentationError::Torch {
        backbone: name.to_string(),
        source,
    };
    let side = backbone.input_side_px(size_px);
    let device = match backbone {
        AnalysisBackbone::Vit(v) => v.device(),
        AnalysisBackbone::Resnet(r) => r.device(),
    };
    let input = batch
        .f_upsample_bilinear2d([side, side], false, None, None)
        .and_then(|t| t.f_to_device(device))
        .map_err(torch)?;
    let (cls, mean) = backbone.represent(&input)?;
    let mut out = Vec::with_capacity(2);
    for (representation, rows) in [("cls", cls), ("mean", Some(mean))] {
        let Some(rows) = rows else { continue };
        let rows = rows.f_to_device(Device::Cpu).map_err(torch)?;
        let finite = rows.f_isfinite().and_then(|f| f.f_all()).map_err(torch)?;
        if !bool::try_from(finite).map_err(torch)? {
            return Err(RepresentationError::NotFinite {
                backbone: name.to_string(),
            });
        }
        out.push((representation, rows));
    }
    Ok(out)
}
