//! The one table of per-dataset recipes (the reference's per-dataset scripts and configs, spec §1.1, §1.9, §3.5,
//! §3.6, §4, §5): every command reads its dataset defaults here, so a dataset's recipe is changed in one place.
//!
//! | preset | labels corner threshold | labels frames | feature views | DINOSAUR | windows (refine, infer) |
//! |---|---|---|---|---|---|
//! | `kitti` | 1.7 px | 1240×376 bilinear | 224×224 | K 15, D 32, 100k steps, batch 64, LR 4e-4, 378 crops of 378×1260, flip | 1260×378, 4 × 378² |
//! | `tri-pd` | 0.5 px | halved, top 128 rows cropped | 224×224 | K 30, D 32, 500k, 16, 1e-4, 490 crops of 490×980, flip | 980×490, 2 × 490² |
//! | `movi-e` | 1.7 px | native | 266×266 | K 24, D 128, 500k, 64, 4e-4, 266×266 | 266², one window |
//! | `custom` (frames, videos) | the KITTI values, native resolution | | | the KITTI recipe | the KITTI windows |
//!
//! The pixel numbers are those of patch 14 (DINOv2). A backbone whose patch does not tile the preset's window
//! gets every pixel number scaled to the same token grid by the one rule of `mrdino_model::patch_scale`
//! ([`Preset::patch_scale`]); patch 16 (DINOv3):
//!
//! | preset | window, patch 14 → 16 | canvas (infer) | training views (refine) | DINOSAUR resize, crop | feature view | tokens per window |
//! |---|---|---|---|---|---|---|
//! | `kitti`, `custom` | 378 → 432 px | 1260×378 → 1440×432, padding 126 → 144 | x = 0, 294, 588, 882 → 0, 336, 672, 1008 | 378×1260, 378 → 432×1440, 432 | 224 → 256 | 27×27 |
//! | `tri-pd` | 490 → 560 px | 980×490 → 1120×560 | x = 0, 490 → 0, 560 | 490×980, 490 → 560×1120, 560 | 224 → 256 | 35×35 |
//! | `movi-e` | 266 → 304 px | 266² → 304² | 266 → 304 | 266² → 304² | 266 → 304 | 19×19 |
//!
//! The geometry and model presets themselves are data of the library crates (`WindowGrid::kitti()`,
//! `DinosaurConfig::kitti()`, `ViewPreset::Kitti`, `DatasetKind::reference_processing`); this table is where each
//! dataset is given its row.

use mrdino_datasets::DatasetKind;
use mrdino_model::dinosaur::DinosaurConfig;
use mrdino_model::patch_scale::PatchScale;
use mrdino_model::refine_views::WindowLayout;
use mrdino_model::views::ViewPreset;
use mrdino_model::windows::WindowGrid;
use mrdino_stages::instances::InstanceParams;
use mrdino_stages::select::SelectParams;
use serde::{Deserialize, Serialize};

/// The dataset presets of the reference scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// `preprocess_kitti_smurf.py` and the KITTI configs.
    Kitti,
    /// `preprocess_pd_smurf.py` and the TRI-PD configs.
    TriPd,
    /// `preprocess_movie_smurf.py` and the MOVi-E configs.
    MoviE,
    /// For frames and videos: the KITTI values.
    Custom,
}

/// A DINOSAUR baseline recipe (spec §3.5): steps, batch size, learning rate and image preparation.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainRecipe {
    pub model: DinosaurConfig,
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    /// (height, width) of the resize, then of the random crop; whether to flip at random.
    pub resize: (i64, i64),
    pub crop: (i64, i64),
    pub random_flip: bool,
}

/// A refinement stage's recipe (spec §4, §5).
#[derive(Clone, Debug, PartialEq)]
pub struct RefineRecipe {
    pub epochs: f64,
    pub max_steps: Option<u64>,
    pub lr: f64,
    /// Stage 2: the background weight of the NLL and the deactivation MLP's hidden width.
    pub stage2: Option<(f64, i64)>,
}

impl Preset {
    pub fn for_dataset(kind: DatasetKind) -> Self {
        match kind {
            DatasetKind::Kitti => Preset::Kitti,
            DatasetKind::TriPd => Preset::TriPd,
            DatasetKind::MoviE => Preset::MoviE,
            DatasetKind::Frames | DatasetKind::Video => Preset::Custom,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Kitti => "kitti",
            Preset::TriPd => "tri-pd",
            Preset::MoviE => "movi-e",
            Preset::Custom => "custom",
        }
    }

    /// `kitti`, `tri-pd`, `movi-e` (the model recipes have no `custom`).
    pub fn parse_model(name: &str) -> Option<Self> {
        match name {
            "kitti" => Some(Preset::Kitti),
            "tri-pd" => Some(Preset::TriPd),
            "movi-e" => Some(Preset::MoviE),
            _ => None,
        }
    }

    /// The preset whose model recipe applies: `custom` uses KITTI's.
    pub fn model(self) -> Self {
        match self {
            Preset::Custom => Preset::Kitti,
            other => other,
        }
    }

    /// Quasi-static selection: the corner threshold differs per script (TRI-PD 0.5 px, else 1.7 px).
    pub fn select(self) -> SelectParams {
        SelectParams::reference(if self == Preset::TriPd { 0.5 } else { 1.7 })
    }

    /// Foreground and instance parameters: the same in every reference script.
    pub fn instances(self) -> InstanceParams {
        InstanceParams::reference()
    }

    /// How this preset's pixel numbers (patch 14) map to a backbone of `patch_px`: decided on the preset's
    /// window, applied to every pixel number of the preset (the module table).
    pub fn patch_scale(self, patch_px: i64) -> PatchScale {
        PatchScale::for_window(self.reference_grid().window_width_px, patch_px)
    }

    /// The default view size (W, H) of `features --views resize`: DINOSAUR's input size (224 px at patch 14).
    pub fn feature_view(self, patch_px: i64) -> (usize, usize) {
        let side = match self {
            Preset::MoviE => 266,
            _ => 224,
        };
        let side = self.patch_scale(patch_px).px_usize(side);
        (side, side)
    }

    /// The refinement's training views for a backbone of `patch_px`.
    pub fn window_layout(self, patch_px: i64) -> WindowLayout {
        match self {
            Preset::TriPd => WindowLayout::windows(ViewPreset::TriPd, patch_px),
            Preset::MoviE => WindowLayout::movi_e(patch_px),
            Preset::Kitti | Preset::Custom => WindowLayout::windows(ViewPreset::Kitti, patch_px),
        }
    }

    /// The inference windows at patch 14 (the evaluation configs' sliding windows).
    fn reference_grid(self) -> WindowGrid {
        match self {
            Preset::TriPd => WindowGrid::tri_pd(),
            Preset::MoviE => WindowGrid::movi_e(),
            Preset::Kitti | Preset::Custom => WindowGrid::kitti(),
        }
    }

    /// The inference windows for a backbone of `patch_px`.
    pub fn window_grid(self, patch_px: i64) -> WindowGrid {
        self.reference_grid().scaled(self.patch_scale(patch_px))
    }

    /// The grid whose canvas is `canvas` (height, width), as a prediction run records it: the patch-14 grid or
    /// the one of the patch that scales it to that canvas; `None` if no patch does.
    pub fn window_grid_of_canvas(self, canvas: (i64, i64)) -> Option<WindowGrid> {
        let reference = self.reference_grid();
        let patch_px = canvas.0 * mrdino_model::patch_scale::PRESET_PATCH_PX / reference.image_height_px.max(1);
        [self.window_grid(mrdino_model::patch_scale::PRESET_PATCH_PX), self.window_grid(patch_px)]
            .into_iter()
            .find(|grid| (grid.image_height_px, grid.image_width_px) == canvas)
    }

    /// The DINOSAUR baseline recipe for a backbone of `patch_px` (resize and crop scaled as the windows are).
    pub fn train(self, patch_px: i64) -> TrainRecipe {
        let recipe = self.reference_train();
        let scale = self.model().patch_scale(patch_px);
        TrainRecipe {
            resize: (scale.px(recipe.resize.0), scale.px(recipe.resize.1)),
            crop: (scale.px(recipe.crop.0), scale.px(recipe.crop.1)),
            ..recipe
        }
    }

    /// The DINOSAUR baseline recipe at patch 14.
    fn reference_train(self) -> TrainRecipe {
        match self.model() {
            Preset::TriPd => TrainRecipe {
                model: DinosaurConfig::tri_pd(),
                steps: 500_000,
                batch_size: 16,
                lr: 1e-4,
                resize: (490, 980),
                crop: (490, 490),
                random_flip: true,
            },
            Preset::MoviE => TrainRecipe {
                model: DinosaurConfig::movi_e(),
                steps: 500_000,
                batch_size: 64,
                lr: 4e-4,
                resize: (266, 266),
                crop: (266, 266),
                random_flip: false,
            },
            Preset::Kitti | Preset::Custom => TrainRecipe {
                model: DinosaurConfig::kitti(),
                steps: 100_000,
                batch_size: 64,
                lr: 4e-4,
                resize: (378, 1260),
                crop: (378, 378),
                random_flip: true,
            },
        }
    }

    /// The recipe of refinement stage 1 or 2.
    pub fn refine(self, stage2: bool) -> RefineRecipe {
        let preset = self.model();
        if !stage2 {
            return RefineRecipe {
                epochs: 15.0,
                max_steps: None,
                lr: 4e-6,
                stage2: None,
            };
        }
        RefineRecipe {
            epochs: 1.0,
            max_steps: (preset != Preset::MoviE).then_some(2000),
            lr: 4e-5,
            stage2: Some((
                if preset == Preset::Kitti { 0.4 } else { 0.2 },
                if preset == Preset::MoviE { 1024 } else { 2048 },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_carry_the_reference_values() {
        assert_eq!(Preset::Kitti.select().corner_threshold_px, 1.7);
        assert_eq!(Preset::MoviE.select().corner_threshold_px, 1.7);
        assert_eq!(Preset::TriPd.select().corner_threshold_px, 0.5);
        assert_eq!(Preset::Custom.select(), Preset::Kitti.select());
        assert_eq!(Preset::Custom.train(14), Preset::Kitti.train(14));
        assert_eq!(Preset::TriPd.train(14).batch_size, 16);
        assert_eq!(Preset::MoviE.refine(true).stage2, Some((0.2, 1024)));
        assert_eq!(Preset::Kitti.refine(true).max_steps, Some(2000));
        assert_eq!(Preset::MoviE.window_layout(14).view_px(), 266);
        assert_eq!(Preset::for_dataset(DatasetKind::Frames), Preset::Custom);
    }

    #[test]
    fn patch_16_presets_keep_the_patch_14_token_grids() {
        let kitti = Preset::Kitti.train(16);
        assert_eq!((kitti.resize, kitti.crop), ((432, 1440), (432, 432)));
        assert_eq!(Preset::Kitti.window_grid(16).window_width_px, 432);
        assert_eq!(Preset::Kitti.window_layout(16).view_px(), 432);
        assert_eq!(Preset::TriPd.window_layout(16).view_px(), 560);
        assert_eq!(Preset::TriPd.train(16).resize, (560, 1120));
        assert_eq!(Preset::MoviE.window_layout(16).view_px(), 304);
        assert_eq!(Preset::MoviE.window_grid(16).image_height_px, 304);
        assert_eq!(Preset::Kitti.feature_view(16), (256, 256));
        assert_eq!(Preset::MoviE.feature_view(16), (304, 304));
        // Patch 14, and a patch that tiles the window, keep the reference's pixels.
        for patch in [14, 42] {
            assert_eq!(Preset::Kitti.window_grid(patch), WindowGrid::kitti());
            assert_eq!(Preset::Kitti.train(patch), Preset::Kitti.reference_train());
            assert_eq!(Preset::Kitti.feature_view(patch), (224, 224));
        }
        for preset in [Preset::Kitti, Preset::TriPd, Preset::MoviE] {
            for patch in [14, 16] {
                let grid = preset.window_grid(patch);
                let canvas = (grid.image_height_px, grid.image_width_px);
                assert_eq!(preset.window_grid_of_canvas(canvas), Some(grid));
            }
        }
        assert_eq!(Preset::Kitti.window_grid_of_canvas((100, 100)), None);
    }
}
