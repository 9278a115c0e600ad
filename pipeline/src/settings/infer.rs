//! The parameters of a prediction run (`mrdino infer`); their hash names the run's partition.

use mrdino_datasets::{DatasetKind, Processing};
use mrdino_model::windows::WindowGrid;
use serde::{Deserialize, Serialize};

use super::presets::Preset;

/// `model_kind` of a model with the deactivation head.
pub const MODEL_STAGE2: &str = "stage2";
/// `model_kind` of a DINOSAUR model without it.
pub const MODEL_BASELINE: &str = "baseline";

/// The resolved parameters of a prediction run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InferParams {
    pub dataset: DatasetKind,
    pub cameras: Vec<String>,
    /// The window layout (`kitti`, `tri-pd`, `movi-e`).
    pub preset: Preset,
    /// How frames are read (TRI-PD then goes through its benchmark conversion) before the canvas resize.
    pub processing: Processing,
    /// The identity of the model's weights (`mrdino_outputs::weights_id`; the field keeps its name).
    pub model_sha256: String,
    /// `stage2` (deactivation head, K + 1 channels per window) or `baseline` (K channels).
    pub model_kind: String,
    pub n_slots: i64,
    pub channels_per_window: i64,
    pub windows: usize,
    /// (height, width) of the canvas.
    pub canvas: (i64, i64),
    pub backbone: String,
    /// The identity of the backbone's weights.
    pub backbone_sha256: String,
    pub seed: i64,
    pub merge_similarity: f64,
    pub merge_chains: bool,
}

impl InferParams {
    pub fn hash(&self) -> String {
        super::params_hash(self).unwrap_or_default()
    }

    /// The windows the run predicted with: the preset's grid at the patch whose canvas the run records (patch 14:
    /// the reference's; patch 16: KITTI 432×1440); an error when no patch gives the recorded canvas.
    pub fn window_grid(&self) -> anyhow::Result<WindowGrid> {
        self.preset.window_grid_of_canvas(self.canvas).ok_or_else(|| {
            anyhow::anyhow!(
                "the prediction run records a {}x{} canvas, which no patch size gives the {} preset",
                self.canvas.1,
                self.canvas.0,
                self.preset.name()
            )
        })
    }

    /// Whether frames go through the TRI-PD benchmark conversion before the canvas.
    pub fn tri_pd_view(&self) -> bool {
        self.dataset == DatasetKind::TriPd
    }
}
