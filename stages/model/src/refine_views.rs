//! The refinement's training views of a pseudo-label run (spec §1.9): which windows a labelled frame gives, their
//! instance ids and, when asked, their pixels. One rule for `mrdino features --views windows` (which caches the
//! windows' features) and `mrdino refine` (which reads the same windows' masks, and their pixels when it computes
//! features on the fly), so a cached row and its masks always describe the same window.
//!
//! * KITTI and frame folders: the frame at the label grid → 1260×378 (image PIL bilinear, ids PIL nearest) →
//!   windows of 378 at x = 0, 294, 588, 882, those without instance pixels skipped.
//! * TRI-PD: → 980×490, halves at x = 0, 490, those with at most one distinct id skipped.
//! * MOVi-E: shorter side to 266 (image bicubic without antialias, clamped; ids nearest-exact), centre crop;
//!   one view per frame, skipped without instance pixels.
//!
//! These are the pixels at patch 14; a backbone whose patch does not tile the window gets every pixel number
//! scaled to the same token grid (`crate::patch_scale`; patch 16: KITTI 1440×432, windows of 432 at x = 0, 336,
//! 672, 1008; TRI-PD 1120×560; MOVi-E 304).
//!
//! A view is keyed by (sequence, frame, window offset): `[x, 0]` for the windows, `[left, top]` of the crop in the
//! resized frame for MOVi-E.
//!
//! The refinement's batches ([`ViewSource`]): features (B, P, C) of the views the [`Sampler`] draws and their
//! instance masks (B, C_max, S, S) — the view's distinct non-zero ids in ascending order, one binary map each,
//! zero-padded to the batch's largest count ([`batch_masks`]; ids above 255 stay distinct, the reference's uint8
//! window labels merge them). The features come from a feature cache of the windows ([`CachedViews`], read as
//! `train dinosaur` reads a cache) or from the frames through the backbone ([`ImageViews`], the pixels of each
//! window cut by the same rule from the frame the labels recorded, [`window_image`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mrdino_datasets::decode::read_processed;
use mrdino_datasets::{DatasetError, DatasetKind};
use mrdino_outputs::feature_cache::{FeatureCache, ViewKey};
use mrdino_outputs::runs::{instance_ids, RunError, RunTables};
use mrdino_outputs::weights_id::Identity;
use mrdino_outputs::{FrameRow, InstanceRow};
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::backbone::Backbone;
use crate::train::{CacheSource, FeatureSource, Sampler, TrainError};
use crate::views::{
    batch_instance_masks, instance_masks, movi_e_training_view_px, training_view_ids, training_views, ViewError,
    ViewPreset, ViewWindows, MOVI_E_VIEW_PX,
};
use crate::patch_scale::PatchScale;

/// How a dataset's labelled frames are cut into training views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowLayout {
    /// Windows of a resized frame (KITTI, TRI-PD), at a backbone's patch.
    Windows(ViewWindows),
    /// MOVi-E: shorter side to `view_px` (266 at patch 14), the centre crop.
    MoviE { view_px: i64 },
}

impl WindowLayout {
    /// The layout of `preset`'s windows for a backbone of `patch_px` ([`crate::patch_scale`]).
    pub fn windows(preset: ViewPreset, patch_px: i64) -> Self {
        WindowLayout::Windows(ViewWindows::for_patch(preset, patch_px))
    }

    /// The MOVi-E layout for a backbone of `patch_px`: 266 px at patch 14, 304 px at patch 16.
    pub fn movi_e(patch_px: i64) -> Self {
        WindowLayout::MoviE {
            view_px: PatchScale::for_window(MOVI_E_VIEW_PX, patch_px).px(MOVI_E_VIEW_PX),
        }
    }

    /// Side of a (square) view in pixels.
    pub fn view_px(self) -> usize {
        match self {
            WindowLayout::Windows(windows) => windows.window_px(),
            WindowLayout::MoviE { view_px } => view_px.max(0) as usize,
        }
    }
}

/// Why a view cannot be made; each names the frame.
#[derive(Debug, thiserror::Error)]
pub enum RefineViewError {
    #[error(transparent)]
    View(#[from] ViewError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("the frame has {bytes} bytes, the label grid is {width}x{height}")]
    FrameSize { bytes: usize, height: usize, width: usize },
    #[error("{sequence} frame {frame} is not a labelled frame of the labels run")]
    NotLabelled { sequence: String, frame: u64 },
    #[error(
        "{sequence} frame {frame}: the view is a whole frame, not a refinement window (a feature cache of --views \
         resize?)"
    )]
    WholeFrame { sequence: String, frame: u64 },
    #[error("{sequence} frame {frame}: the labels give no training window at offset {window:?}")]
    NoWindow {
        sequence: String,
        frame: u64,
        window: [i64; 2],
    },
}

/// An id map at a frame's label grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ids {
    pub height: usize,
    pub width: usize,
    pub labels: Vec<u32>,
}

/// One training view: its offset, its ids (view_px²) and, when asked for, its pixels (3, S, S) in [0, 1].
pub struct FrameView {
    pub window: [i64; 2],
    pub ids: Vec<u32>,
    pub image: Option<Tensor>,
}

/// Interleaved RGB bytes (H, W, 3) → (3, H, W) float in [0, 1].
pub fn float_image(data: &[u8], height: usize, width: usize) -> Result<Tensor, tch::TchError> {
    Tensor::f_from_slice(data)?
        .f_view([height as i64, width as i64, 3])?
        .f_permute([2, 0, 1])?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(255.0)
}

fn movi_e_views(image: Option<&[u8]>, ids: &Ids, view_px: i64) -> Result<Vec<FrameView>, RefineViewError> {
    let (h, w) = (ids.height as i64, ids.width as i64);
    let id_tensor =
        Tensor::f_from_slice(&ids.labels.iter().map(|&v| i64::from(v)).collect::<Vec<_>>())?.f_view([h, w])?;
    let pixels = match image {
        Some(data) => float_image(data, ids.height, ids.width)?,
        None => Tensor::f_zeros([3, h, w], (Kind::Float, tch::Device::Cpu))?,
    };
    let (view_image, view_ids) = movi_e_training_view_px(&pixels, &id_tensor, view_px)?;
    let view_ids: Vec<u32> = Vec::<i64>::try_from(view_ids.f_flatten(0, -1)?)?
        .into_iter()
        .map(|v| v as u32)
        .collect();
    if view_ids.iter().all(|&v| v == 0) {
        return Ok(Vec::new());
    }
    // The crop's offset in the resized frame (torchvision's centre-crop rounding).
    let short = h.min(w) as f64;
    let (rh, rw) = if w <= h {
        ((view_px as f64 * h as f64 / short) as i64, view_px)
    } else {
        (view_px, (view_px as f64 * w as f64 / short) as i64)
    };
    let offset = |len: i64| ((len - view_px) as f64 / 2.0).round_ties_even() as i64;
    Ok(vec![FrameView {
        window: [offset(rw), offset(rh)],
        ids: view_ids,
        image: image.map(|_| view_image),
    }])
}

/// The views of one frame from its ids at the label grid and, optionally, its pixels at the same grid
/// (interleaved RGB).
pub fn frame_views(layout: WindowLayout, image: Option<&[u8]>, ids: &Ids) -> Result<Vec<FrameView>, RefineViewError> {
    if let Some(data) = image {
        if data.len() != ids.height * ids.width * 3 {
            return Err(RefineViewError::FrameSize {
                bytes: data.len(),
                height: ids.height,
                width: ids.width,
            });
        }
    }
    match layout {
        WindowLayout::MoviE { view_px } => movi_e_views(image, ids, view_px),
        WindowLayout::Windows(preset) => match image {
            Some(data) => training_views(preset, data, &ids.labels, ids.height, ids.width)?
                .into_iter()
                .map(|v| {
                    Ok(FrameView {
                        window: [v.x_px as i64, 0],
                        image: Some(float_image(&v.image, v.size_px, v.size_px)?),
                        ids: v.ids,
                    })
                })
                .collect(),
            None => Ok(training_view_ids(preset, &ids.labels, ids.height, ids.width)?
                .into_iter()
                .map(|(x, ids)| FrameView {
                    window: [x as i64, 0],
                    ids,
                    image: None,
                })
                .collect()),
        },
    }
}

/// The labelled frames of a pseudo-label run, indexed by (sequence, frame).
pub struct LabelIndex {
    pub layout: WindowLayout,
    tables: RunTables,
    frames: HashMap<(String, u64), (usize, Vec<usize>)>,
}

impl LabelIndex {
    /// Indexes the labelled frames with at least one instance.
    pub fn new(tables: RunTables, layout: WindowLayout) -> Self {
        let mut frames: HashMap<(String, u64), (usize, Vec<usize>)> = HashMap::new();
        for (i, f) in tables.frames.iter().enumerate() {
            if f.labelled && f.num_instances > 0 {
                frames.insert((f.sequence_id.clone(), u64::from(f.frame_index)), (i, Vec::new()));
            }
        }
        for (i, inst) in tables.instances.iter().enumerate() {
            if let Some(entry) = frames.get_mut(&(inst.sequence_id.clone(), u64::from(inst.frame_index))) {
                entry.1.push(i);
            }
        }
        Self { layout, tables, frames }
    }

    /// The most instances of a labelled frame: a bound on the masks of any of its views.
    pub fn max_instances(&self) -> u32 {
        self.frames
            .values()
            .filter_map(|(f, _)| self.tables.frames.get(*f))
            .map(|row| row.num_instances)
            .max()
            .unwrap_or(0)
    }

    /// The run's tables.
    pub fn tables(&self) -> &RunTables {
        &self.tables
    }

    /// The frame row and instance rows of a labelled frame.
    pub fn frame(&self, sequence_id: &str, frame_index: u64) -> Option<(&FrameRow, Vec<&InstanceRow>)> {
        let (f, instances) = self.frames.get(&(sequence_id.to_string(), frame_index))?;
        Some((
            self.tables.frames.get(*f)?,
            instances.iter().filter_map(|&i| self.tables.instances.get(i)).collect(),
        ))
    }

    /// The id map of a labelled frame at its label grid.
    pub fn id_map(&self, sequence_id: &str, frame_index: u64) -> Result<(&FrameRow, Ids), RefineViewError> {
        let (row, instances) = self
            .frame(sequence_id, frame_index)
            .ok_or_else(|| RefineViewError::NotLabelled {
                sequence: sequence_id.to_string(),
                frame: frame_index,
            })?;
        let labels = instance_ids(row, &instances)?;
        Ok((
            row,
            Ids {
                height: row.height as usize,
                width: row.width as usize,
                labels,
            },
        ))
    }

    /// Every view of the run in (sequence, frame, window) order, without pixels.
    pub fn all_views(&self) -> Result<Vec<ViewKey>, RefineViewError> {
        let mut keys: Vec<(String, u64)> = self.frames.keys().cloned().collect();
        keys.sort();
        let mut views = Vec::new();
        for (sequence_id, frame_index) in keys {
            let (_, ids) = self.id_map(&sequence_id, frame_index)?;
            for v in frame_views(self.layout, None, &ids)? {
                views.push(ViewKey {
                    sequence_id: sequence_id.clone(),
                    frame_index,
                    window: Some(v.window),
                });
            }
        }
        Ok(views)
    }

    /// The ids of one view (view_px², row-major), and its pixels when `image` (the frame at the label grid) is
    /// given.
    pub fn view(&self, key: &ViewKey, image: Option<&[u8]>) -> Result<FrameView, RefineViewError> {
        let (_, ids) = self.id_map(&key.sequence_id, key.frame_index)?;
        let window = key.window.ok_or_else(|| RefineViewError::WholeFrame {
            sequence: key.sequence_id.clone(),
            frame: key.frame_index,
        })?;
        frame_views(self.layout, image, &ids)?
            .into_iter()
            .find(|v| v.window == window)
            .ok_or_else(|| RefineViewError::NoWindow {
                sequence: key.sequence_id.clone(),
                frame: key.frame_index,
                window,
            })
    }
}

/// Why a refinement batch cannot be made; each names the view, file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ViewSourceError {
    #[error(transparent)]
    View(#[from] RefineViewError),
    #[error(transparent)]
    Masks(#[from] ViewError),
    #[error(transparent)]
    Features(#[from] TrainError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(
        "the feature cache holds {width}x{height} views, the refinement windows of this dataset are \
         {view_px}x{view_px} (make the cache with `mrdino features --views windows --labels …`)"
    )]
    CacheViewSize { height: i64, width: i64, view_px: i64 },
    #[error("the feature cache has no key for its view {view}")]
    NoKey { view: usize },
    #[error(
        "the feature cache does not match the labels run: view {sequence} frame {frame} ({window:?}) is not a \
         training window of a labelled frame"
    )]
    NotAWindow {
        sequence: String,
        frame: u64,
        window: Option<[i64; 2]>,
    },
    #[error("{view_px} px windows are not a multiple of the backbone's patch {patch_px}")]
    Patch { view_px: i64, patch_px: i64 },
    #[error("{sequence}: unknown dataset `{dataset}` in the labels")]
    Dataset { sequence: String, dataset: String },
    #[error(
        "{sequence} frame {frame}: cannot read {path} as an image (video input needs a feature cache: `mrdino \
         features --views windows`): {source}"
    )]
    Read {
        sequence: String,
        frame: String,
        path: PathBuf,
        source: Box<DatasetError>,
    },
    #[error("{path}: reads as {width}x{height}, the labels' grid is {grid_width}x{grid_height}")]
    Grid {
        path: PathBuf,
        height: usize,
        width: usize,
        grid_height: u32,
        grid_width: u32,
    },
    #[error("{sequence} frame {frame}: a view without pixels")]
    NoPixels { sequence: String, frame: u64 },
    #[error("backbone: {0}")]
    Backbone(#[from] crate::backbone::FeatureError),
}

/// Where a refinement batch comes from: features (B, P, C) and instance masks (B, C_max, S, S).
pub trait ViewSource {
    /// N, views in one epoch.
    fn n_views(&self) -> usize;
    /// P, patches per view.
    fn n_patches(&self) -> i64;
    /// C, feature channels.
    fn channels(&self) -> i64;
    /// Name of the backbone and the identity of its weights, as recorded.
    fn backbone(&self) -> (String, String);
    /// The identity of the backbone's weights when they are at hand (not for cached features).
    fn backbone_identity(&self) -> Option<&Identity>;
    /// The batch of the samples `first_sample .. first_sample + batch_size`, on `device`.
    fn batch(
        &mut self,
        first_sample: u64,
        batch_size: usize,
        device: Device,
    ) -> Result<(Tensor, Tensor), ViewSourceError>;
}

/// The masks of a batch of views, zero-padded to the largest instance count (B, C_max, S, S).
pub fn batch_masks(labels: &LabelIndex, keys: &[&ViewKey]) -> Result<Tensor, ViewSourceError> {
    let px = labels.layout.view_px();
    let masks: Vec<Tensor> = keys
        .par_iter()
        .map(|key| -> Result<Tensor, ViewSourceError> {
            let view = labels.view(key, None)?;
            Ok(instance_masks(&view.ids, px, px)?.1)
        })
        .collect::<Result<_, _>>()?;
    Ok(batch_instance_masks(&masks)?)
}

/// Features of the windows from a feature cache (read as `train dinosaur` reads it; the masks of the same
/// views from the labels).
pub struct CachedViews {
    source: CacheSource,
    sampler: Sampler,
    labels: LabelIndex,
}

impl CachedViews {
    /// Checks that every cached view is a training window of a labelled frame of `labels` (by lookup; the
    /// window's masks are computed when a batch draws it).
    pub fn new(cache: FeatureCache, labels: LabelIndex, seed: i64) -> Result<Self, ViewSourceError> {
        let px = labels.layout.view_px() as i64;
        let meta = cache.meta();
        if (meta.image_height, meta.image_width) != (px, px) {
            return Err(ViewSourceError::CacheViewSize {
                height: meta.image_height,
                width: meta.image_width,
                view_px: px,
            });
        }
        for v in 0..cache.n_views() {
            let key = cache.view_key(v).ok_or(ViewSourceError::NoKey { view: v })?;
            if key.window.is_none() || labels.frame(&key.sequence_id, key.frame_index).is_none() {
                return Err(ViewSourceError::NotAWindow {
                    sequence: key.sequence_id.clone(),
                    frame: key.frame_index,
                    window: key.window,
                });
            }
        }
        Ok(Self {
            sampler: Sampler::new(seed, cache.n_views()),
            source: CacheSource::new(cache, seed),
            labels,
        })
    }
}

impl ViewSource for CachedViews {
    fn n_views(&self) -> usize {
        self.source.n_views()
    }

    fn n_patches(&self) -> i64 {
        self.source.n_patches()
    }

    fn channels(&self) -> i64 {
        self.source.channels()
    }

    fn backbone(&self) -> (String, String) {
        (self.source.backbone_name(), self.source.backbone_id())
    }

    fn backbone_identity(&self) -> Option<&Identity> {
        None
    }

    fn batch(
        &mut self,
        first_sample: u64,
        batch_size: usize,
        device: Device,
    ) -> Result<(Tensor, Tensor), ViewSourceError> {
        let features = self.source.batch(first_sample, batch_size, device)?;
        let cache = self.source.cache();
        let keys = (0..batch_size as u64)
            .map(|b| {
                let view = self.sampler.view(first_sample + b);
                cache.view_key(view).ok_or(ViewSourceError::NoKey { view })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let masks = batch_masks(&self.labels, &keys)?.f_to_device(device)?;
        Ok((features, masks))
    }
}

/// Features of the windows computed from the frames through the backbone.
pub struct ImageViews {
    backbone: Box<dyn Backbone>,
    /// The dataset root the labels' `source_path`s are relative to.
    root: PathBuf,
    keys: Vec<ViewKey>,
    sampler: Sampler,
    labels: LabelIndex,
}

impl ImageViews {
    /// Every view of `labels`, read from the frames under `root` through `backbone`.
    pub fn new(
        backbone: Box<dyn Backbone>,
        root: &Path,
        labels: LabelIndex,
        seed: i64,
    ) -> Result<Self, ViewSourceError> {
        let px = labels.layout.view_px() as i64;
        if px % backbone.patch_size() != 0 {
            return Err(ViewSourceError::Patch {
                view_px: px,
                patch_px: backbone.patch_size(),
            });
        }
        let keys = labels.all_views()?;
        Ok(Self {
            sampler: Sampler::new(seed, keys.len()),
            backbone,
            root: root.to_path_buf(),
            keys,
            labels,
        })
    }
}

/// The pixels of one window (3, S, S) in [0, 1], read from the frame the labels recorded (under `root`).
pub fn window_image(labels: &LabelIndex, root: &Path, key: &ViewKey) -> Result<Tensor, ViewSourceError> {
    let (row, _) = labels.id_map(&key.sequence_id, key.frame_index)?;
    let kind = DatasetKind::parse(&row.dataset).ok_or_else(|| ViewSourceError::Dataset {
        sequence: row.sequence_id.clone(),
        dataset: row.dataset.clone(),
    })?;
    let path = root.join(&row.source_path);
    let (rgb, _) = read_processed(&path, &kind.reference_processing()).map_err(|source| ViewSourceError::Read {
        sequence: row.sequence_id.clone(),
        frame: row.frame_name.clone(),
        path: path.clone(),
        source: Box::new(source),
    })?;
    if (rgb.height, rgb.width) != (row.height as usize, row.width as usize) {
        return Err(ViewSourceError::Grid {
            path,
            height: rgb.height,
            width: rgb.width,
            grid_height: row.height,
            grid_width: row.width,
        });
    }
    labels
        .view(key, Some(&rgb.data))?
        .image
        .ok_or_else(|| ViewSourceError::NoPixels {
            sequence: key.sequence_id.clone(),
            frame: key.frame_index,
        })
}

impl ViewSource for ImageViews {
    fn n_views(&self) -> usize {
        self.keys.len()
    }

    fn n_patches(&self) -> i64 {
        let g = self.labels.layout.view_px() as i64 / self.backbone.patch_size();
        g * g
    }

    fn channels(&self) -> i64 {
        self.backbone.feature_dim()
    }

    fn backbone(&self) -> (String, String) {
        (self.backbone.name().to_string(), self.backbone.identity().id.clone())
    }

    fn backbone_identity(&self) -> Option<&Identity> {
        Some(self.backbone.identity())
    }

    fn batch(
        &mut self,
        first_sample: u64,
        batch_size: usize,
        device: Device,
    ) -> Result<(Tensor, Tensor), ViewSourceError> {
        let keys: Vec<&ViewKey> = (0..batch_size as u64)
            .map(|b| &self.keys[self.sampler.view(first_sample + b)])
            .collect();
        let images: Vec<Tensor> = keys
            .par_iter()
            .map(|k| window_image(&self.labels, &self.root, k))
            .collect::<Result<_, _>>()?;
        let features = self
            .backbone
            .features(&Tensor::f_stack(&images, 0)?)
            .map_err(ViewSourceError::Backbone)?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?;
        let masks = batch_masks(&self.labels, &keys)?.f_to_device(device)?;
        Ok((features, masks))
    }
}
