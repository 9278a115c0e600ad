//! The parameters of a feature cache (`mrdino features`); their hash names the cache's partition.

use anyhow::{bail, Result};
use mrdino_datasets::DatasetKind;
use mrdino_model::backbone::{LoadedBackbone, DEFAULT_BACKBONE};
use serde::{Deserialize, Serialize};

use super::presets::Preset;
use crate::cli::features::{FeaturesArgs, ViewsKind};

/// The resolved parameters of a feature cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeaturesParams {
    pub dataset: DatasetKind,
    pub cameras: Vec<String>,
    pub backbone: String,
    /// The identity of the backbone's weights (`mrdino_outputs::weights_id`; the field keeps its name).
    pub backbone_sha256: String,
    pub layer: i64,
    pub views: ViewsKind,
    /// (height, width) of one view.
    pub view_size: (i64, i64),
    /// The labels partition the windows come from (`--views windows`).
    pub labels_params: Option<String>,
    pub normalisation: String,
    pub dtype: String,
}

impl FeaturesParams {
    /// The parameters of `args` with `backbone` and, for `--views windows`, the labels partition.
    pub fn resolve(args: &FeaturesArgs, backbone: &LoadedBackbone, labels_params: Option<String>) -> Result<Self> {
        let dataset = args.input.dataset;
        let patch = backbone.backbone().patch_size();
        let preset = Preset::for_dataset(dataset);
        let view_size = match args.views {
            ViewsKind::Resize => {
                let (w, h) = args.size.unwrap_or(preset.feature_view(patch));
                (h as i64, w as i64)
            }
            ViewsKind::Windows => {
                if args.size.is_some() {
                    bail!("--size applies to --views resize; the windows have the preset's size");
                }
                if labels_params.is_none() {
                    bail!("--views windows needs --labels RUN (the pseudo-label run)");
                }
                let px = preset.window_layout(patch).view_px();
                (px as i64, px as i64)
            }
        };
        if view_size.0 % patch != 0 || view_size.1 % patch != 0 {
            bail!(
                "view size {}x{} is not a multiple of the backbone's patch {patch}",
                view_size.1,
                view_size.0
            );
        }
        let depth = backbone.depth();
        let name = args.backbone.backbone.as_deref().unwrap_or(DEFAULT_BACKBONE);
        if let Some(layer) = args.layer {
            match depth {
                Some(depth) if layer >= depth => bail!("--layer {layer}: the backbone has blocks 0..{}", depth - 1),
                None => bail!("--layer: backbone `{name}` has no blocks to choose from"),
                _ => {}
            }
        }
        Ok(Self {
            dataset,
            cameras: args.input.cameras(),
            backbone: name.to_string(),
            backbone_sha256: backbone.backbone().identity().id.clone(),
            layer: args.layer.map_or(depth.map_or(0, |d| d as i64 - 1), |l| l as i64),
            views: args.views,
            view_size,
            labels_params,
            normalisation: backbone.normalisation(),
            dtype: args.dtype.clone(),
        })
    }

    pub fn hash(&self) -> String {
        super::params_hash(self).unwrap_or_default()
    }
}
