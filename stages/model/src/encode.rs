//! Views through a frozen backbone in batches: what a feature cache stores for one unit.
//!
//! [`resized_view`] is the `--views resize` view of a frame: the frame resized to the view size (bicubic,
//! `align_corners=False`, no antialias, clamped to [0, 1] — what the reference's tensor `Resize` does under
//! torchvision 0.15). [`FeatureEncoder`] collects views, runs them through the backbone `batch` at a time (the
//! patch tokens of the chosen block after the final norm) and returns the unit's features (N, P, C) in the storage
//! kind (f16 or bf16) on the CPU, with the views' keys in order. Features do not depend on the batch size.

use mrdino_outputs::feature_cache::ViewKey;
use tch::{Device, Kind, Tensor};

use crate::backbone::{BackboneError, LoadedBackbone};
use crate::refine_views::float_image;

/// Why views cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("view {0:?}: its image is not (3, H, W) like the others")]
    Shape(ViewKey),
}

/// A frame (interleaved RGB, `height × width`) resized to `size` = (height, width), as a (3, H, W) float tensor
/// in [0, 1].
pub fn resized_view(data: &[u8], height: usize, width: usize, size: (i64, i64)) -> Result<Tensor, tch::TchError> {
    float_image(data, height, width)?
        .f_unsqueeze(0)?
        .f_upsample_bicubic2d([size.0, size.1], false, None, None)?
        .f_clamp(0.0, 1.0)?
        .f_squeeze_dim(0)
}

/// Encodes views in batches; see the module docs.
pub struct FeatureEncoder<'a> {
    backbone: &'a LoadedBackbone,
    layer: Option<usize>,
    kind: Kind,
    batch: usize,
    pending: Vec<(ViewKey, Tensor)>,
    keys: Vec<ViewKey>,
    features: Vec<Tensor>,
}

impl<'a> FeatureEncoder<'a> {
    /// Block `layer` (default the last) of `backbone`, stored as `kind`, `batch` views per forward (at least 1).
    pub fn new(backbone: &'a LoadedBackbone, layer: Option<usize>, kind: Kind, batch: usize) -> Self {
        Self {
            backbone,
            layer,
            kind,
            batch: batch.max(1),
            pending: Vec::new(),
            keys: Vec::new(),
            features: Vec::new(),
        }
    }

    /// Adds a view (3, H, W) in [0, 1]; a full batch goes through the backbone.
    pub fn push(&mut self, key: ViewKey, image: Tensor) -> Result<(), EncodeError> {
        self.pending.push((key, image));
        if self.pending.len() >= self.batch {
            self.flush()?;
        }
        Ok(())
    }

    /// Runs the views waiting for a full batch.
    pub fn flush(&mut self) -> Result<(), EncodeError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let images: Vec<Tensor> = self.pending.iter().map(|(_, t)| t.shallow_clone()).collect();
        let images = Tensor::f_stack(&images, 0).map_err(|_| EncodeError::Shape(self.pending[0].0.clone()))?;
        let features = self.backbone.encode(&images, self.layer)?;
        self.features
            .push(features.f_to_device(Device::Cpu)?.f_to_kind(self.kind)?);
        self.keys.extend(self.pending.drain(..).map(|(k, _)| k));
        Ok(())
    }

    /// The keys and the features (N, P, C) of every view pushed; `patches` and the backbone's width give the
    /// shape of a unit without views.
    pub fn finish(mut self, patches: i64) -> Result<(Vec<ViewKey>, Tensor), EncodeError> {
        self.flush()?;
        let features = if self.features.is_empty() {
            let width = self.backbone.backbone().feature_dim();
            Tensor::f_zeros([0, patches, width], (self.kind, Device::Cpu))?
        } else {
            Tensor::f_cat(&self.features, 0)?
        };
        Ok((self.keys, features))
    }
}
