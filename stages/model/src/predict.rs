//! Windowed inference of a DINOSAUR / MR-DINOSAUR model on whole frames, as the reference's evaluation configs
//! run it (spec §3.6): each frame brought to the preset's canvas, cut into windows, the windows' features through
//! the frozen backbone, the slot model per window (seeded noise, see below), the windows' masks upsampled, joined
//! and merged (`crate::windows`), and the merged canvas split into predicted objects.
//!
//! * The canvas: TRI-PD frames first go through the benchmark's conversion ([`tri_pd_benchmark_view`]: Pillow
//!   bilinear to 968×608, the top 128 rows cropped); then the preset's resize ([`WindowGrid::resize_image`]).
//!   [`canvas_geometry`] is the provenance of the canvas in the original frame (the composite of both steps).
//! * Slot noise for frame i of a sequence is `torch.manual_seed(seed + i); torch.randn(n_windows, K, D)`, so
//!   predictions depend neither on batching, shards nor resumes.
//! * Objects ([`channel_objects`]): a non-empty merged channel is an object, except a stage-2 window's background
//!   channel; each carries its window, channel in the window, slot and (stage 2) deactivation weight.

use std::collections::BTreeMap;

use mrdino_datasets::{Frame, Geometry, RgbImage, TRI_PD_BENCHMARK_RESIZE, TRI_PD_BENCHMARK_TOP_CROP_PX};
use mrdino_outputs::tables::PredictionColumns;
use tch::{Device, Kind, Tensor};

use crate::backbone::Backbone;
use crate::dinosaur::slot_noise;
use crate::patch_scale::token_grid_text;
use crate::refine_views::float_image;
use crate::refined::{RefinedError, RefinedModel};
use crate::views::{pil_resize_bilinear_u8, ViewError};
use crate::windows::{join_windows, merge_windows, MergeOptions, MergedCanvas, WindowError, WindowGrid, WindowOffset};

/// Why a frame cannot be predicted.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(transparent)]
    Window(#[from] WindowError),
    #[error(transparent)]
    View(#[from] ViewError),
    #[error(transparent)]
    Model(#[from] RefinedError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("backbone: {0}")]
    Backbone(#[from] crate::backbone::FeatureError),
    #[error("{what}: {message}")]
    Config { what: &'static str, message: String },
}

/// One predicted object of a merged canvas: a non-empty merged channel that is not a stage-2 window's
/// background channel.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelObject {
    /// Merged canvas channel (window · channels per window + channel in the window).
    pub channel: u32,
    /// Row-major canvas pixels, ascending.
    pub pixels: Vec<u32>,
    pub columns: PredictionColumns,
}

/// The objects of a merged canvas in channel order (see the module docs). `weights` are the frame's
/// deactivation weights (windows · K, window-major) of a stage-2 model.
pub fn channel_objects(
    merged: &MergedCanvas,
    stage2: bool,
    n_slots: usize,
    weights: Option<&[f32]>,
) -> Vec<ChannelObject> {
    let mut pixels: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (p, &c) in merged.channel_of_pixel.iter().enumerate() {
        pixels.entry(c).or_default().push(p as u32);
    }
    pixels
        .into_iter()
        .filter_map(|(channel, pixels)| {
            let (window, window_channel) = merged.window_channel(channel as usize);
            if stage2 && window_channel == 0 {
                return None;
            }
            let slot = if stage2 { window_channel - 1 } else { window_channel };
            Some(ChannelObject {
                channel,
                pixels,
                columns: PredictionColumns {
                    window: window as u32,
                    window_channel: window_channel as u32,
                    slot: slot as u32,
                    deactivation_weight: weights.and_then(|w| w.get(window * n_slots + slot).copied()),
                    combination_num: stage2.then_some(merged.windows as u32),
                },
            })
        })
        .collect()
}

/// The TRI-PD benchmark's conversion of a decoded frame: Pillow bilinear to 968×608, top 128 rows cropped
/// (968×480), with the geometry of that step.
pub fn tri_pd_benchmark_view(frame: &Frame) -> Result<(RgbImage, Geometry), ViewError> {
    let (height, width) = TRI_PD_BENCHMARK_RESIZE;
    let image = &frame.image;
    let resized = pil_resize_bilinear_u8(&image.data, image.height, image.width, 3, height, width)?;
    let top = TRI_PD_BENCHMARK_TOP_CROP_PX;
    let cropped = resized.get(top * width * 3..).unwrap_or_default().to_vec();
    let geometry = Geometry {
        orig_height: frame.geometry.orig_height,
        orig_width: frame.geometry.orig_width,
        resized_height: height,
        resized_width: width,
        crop_top: top,
        crop_left: 0,
        height: height - top,
        width,
    };
    Ok((RgbImage::new(height - top, width, cropped), geometry))
}

/// The provenance of the canvas: the original frame resized to `resized` and cropped at `crop` (the composite of
/// the reader's processing `read` and the grid's resize, rounded for a cropped reader grid).
pub fn canvas_geometry(read: &Geometry, grid: &WindowGrid) -> Geometry {
    let (h, w) = (read.height as f64, read.width as f64);
    let (target_h, target_w) = grid.resize_target(read.height as i64, read.width as i64);
    let (sy, sx) = (target_h as f64 / h, target_w as f64 / w);
    let crop_top = ((target_h - grid.image_height_px) as f64 / 2.0).round_ties_even() as usize;
    let crop_left = ((target_w - grid.image_width_px) as f64 / 2.0).round_ties_even() as usize;
    Geometry {
        orig_height: read.orig_height,
        orig_width: read.orig_width,
        resized_height: (read.resized_height as f64 * sy).round() as usize,
        resized_width: (read.resized_width as f64 * sx).round() as usize,
        crop_top: (read.crop_top as f64 * sy).round() as usize + crop_top,
        crop_left: (read.crop_left as f64 * sx).round() as usize + crop_left,
        height: grid.image_height_px as usize,
        width: grid.image_width_px as usize,
    }
}

/// A frame on the prediction canvas, (3, H, W) in [0, 1], and the canvas's provenance. `tri_pd` applies the
/// TRI-PD benchmark conversion first.
pub fn frame_canvas(frame: &Frame, grid: &WindowGrid, tri_pd: bool) -> Result<(Tensor, Geometry), PredictError> {
    let (image, read) = if tri_pd {
        tri_pd_benchmark_view(frame)?
    } else {
        (frame.image.clone(), frame.geometry)
    };
    let canvas = grid.resize_image(&float_image(&image.data, image.height, image.width)?)?;
    Ok((canvas, canvas_geometry(&read, grid)))
}

/// The canvas of a frame as interleaved RGB bytes: what prediction masks are drawn on.
pub fn canvas_image(frame: &Frame, grid: &WindowGrid, tri_pd: bool) -> Result<RgbImage, PredictError> {
    let (canvas, _) = frame_canvas(frame, grid, tri_pd)?;
    let size = canvas.size();
    let (h, w) = (size.get(1).copied().unwrap_or(0), size.get(2).copied().unwrap_or(0));
    let bytes = Vec::<u8>::try_from(
        canvas
            .f_mul_scalar(255.0)?
            .f_round()?
            .f_clamp(0.0, 255.0)?
            .f_to_kind(Kind::Uint8)?
            .f_permute([1, 2, 0])?
            .f_contiguous()?
            .f_flatten(0, -1)?,
    )?;
    Ok(RgbImage::new(h as usize, w as usize, bytes))
}

/// The prediction of one frame.
pub struct FramePrediction {
    pub merged: MergedCanvas,
    pub objects: Vec<ChannelObject>,
}

/// A model, its backbone and the preset's windows: predicts frames (see the module docs).
pub struct WindowPredictor<'a> {
    pub model: &'a RefinedModel,
    pub backbone: &'a dyn Backbone,
    pub grid: WindowGrid,
    pub offsets: Vec<WindowOffset>,
    pub merge: MergeOptions,
    pub device: Device,
    pub seed: i64,
}

/// Refuses a backbone whose tokens on `grid`'s windows are not the model's token grid, naming both: the
/// model's patch count and grid (with `trained_on`, the backbone name its file records, that backbone's patch and
/// window side) and the backbone's grid, patch and the windows (e.g. a model of 729 patches, 27×27 with patch 14
/// at 378 px, against the MOVi-E preset's 304 px windows of a patch-16 backbone: 19×19).
pub fn check_token_grid(
    n_patches: i64,
    trained_on: Option<&str>,
    backbone: &dyn Backbone,
    grid: &WindowGrid,
) -> Result<(), PredictError> {
    let ps = backbone.patch_size();
    let (wh, ww) = (grid.window_height_px, grid.window_width_px);
    if ps <= 0 || wh % ps != 0 || ww % ps != 0 || (wh / ps) * (ww / ps) == n_patches {
        return Ok(()); // the patch check of `WindowPredictor::new` names a patch that does not tile the windows
    }
    let model_grid = token_grid_text(n_patches);
    let trained = trained_on
        .map(|name| match crate::backbone::patch_size_of(name) {
            Some(p) if model_grid.contains('×') => {
                let side = (n_patches as f64).sqrt().round() as i64;
                format!("; made with `{name}`: patch {p} at {} px", side * p)
            }
            _ => format!("; made with `{name}`"),
        })
        .unwrap_or_default();
    Err(PredictError::Config {
        what: "windows",
        message: format!(
            "the {ww}x{wh} windows give {} patches of {ps} px ({}×{}) with the backbone `{}`, but the model has {} \
             patches ({model_grid}{trained}); use the preset and the backbone the model was trained with",
            (wh / ps) * (ww / ps),
            wh / ps,
            ww / ps,
            backbone.name(),
            n_patches
        ),
    })
}

impl<'a> WindowPredictor<'a> {
    /// Checks that the grid's windows fit the backbone's patch and the model's patch count and width.
    pub fn new(
        model: &'a RefinedModel,
        backbone: &'a dyn Backbone,
        grid: WindowGrid,
        merge: MergeOptions,
        device: Device,
        seed: i64,
    ) -> Result<Self, PredictError> {
        let offsets = grid.offsets()?;
        let config = model.dinosaur.config();
        let ps = backbone.patch_size();
        let (wh, ww) = (grid.window_height_px, grid.window_width_px);
        let config_error = |message: String| PredictError::Config {
            what: "windows",
            message,
        };
        if wh % ps != 0 || ww % ps != 0 {
            return Err(config_error(format!(
                "the {ww}x{wh} windows are not a multiple of the backbone's {ps} px patch"
            )));
        }
        check_token_grid(config.n_patches, None, backbone, &grid)?;
        if backbone.feature_dim() != config.feature_dim {
            return Err(config_error(format!(
                "the backbone gives {}-channel features, the model expects {}",
                backbone.feature_dim(),
                config.feature_dim
            )));
        }
        Ok(Self {
            model,
            backbone,
            grid,
            offsets,
            merge,
            device,
            seed,
        })
    }

    /// Predicts frames given as canvases (3, H, W) with their indices in the sequence (which seed the noise).
    pub fn predict(&self, canvases: &[Tensor], frame_indices: &[i64]) -> Result<Vec<FramePrediction>, PredictError> {
        if canvases.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.offsets.len() as i64;
        let (wh, ww) = (self.grid.window_height_px, self.grid.window_width_px);
        let canvases = Tensor::f_stack(canvases, 0)?;
        let b = canvases.size().first().copied().unwrap_or(0);
        // (n, B, 3, h, w) → (B·n, 3, h, w): the windows of one frame are consecutive, in window order.
        let windows = self
            .grid
            .extract(&canvases)?
            .f_transpose(0, 1)?
            .f_reshape([b * n, 3, wh, ww])?
            .f_to_device(self.device)?;
        let features = self.backbone.features(&windows).map_err(PredictError::Backbone)?;
        let config = self.model.dinosaur.config();
        let noise = slot_noise(self.seed, frame_indices, n, config.n_slots, config.slot_dim, self.device)?;
        let predicted = self.model.window_masks(&features, &noise, wh, ww)?;
        let masks = predicted.masks.f_to_device(Device::Cpu)?;
        let slots = predicted.slots.f_to_device(Device::Cpu)?;
        let weights = match &predicted.weights {
            Some(w) => Some(Vec::<f32>::try_from(
                w.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_flatten(0, -1)?,
            )?),
            None => None,
        };
        let canvas = (self.grid.image_height_px, self.grid.image_width_px);
        let k = config.n_slots as usize;
        let mut out = Vec::with_capacity(frame_indices.len());
        for j in 0..b {
            let rows = j * n;
            let joined = join_windows(&masks.f_narrow(0, rows, n)?, &self.offsets, canvas)?;
            let merged = merge_windows(&joined, &slots.f_narrow(0, rows, n)?, &self.offsets, (wh, ww), &self.merge)?;
            let span = n as usize * k;
            let frame_weights = weights.as_ref().and_then(|w| w.get(j as usize * span..(j as usize + 1) * span));
            let objects = channel_objects(&merged, self.model.is_stage2(), k, frame_weights);
            out.push(FramePrediction { merged, objects });
        }
        Ok(out)
    }
}
