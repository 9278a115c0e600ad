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
//! A view is keyed by (sequence, frame, window offset): `[x, 0]` for the windows, `[left, top]` of the crop in the
//! resized frame for MOVi-E.

use std::collections::HashMap;

use mrdino_outputs::feature_cache::ViewKey;
use mrdino_outputs::runs::{instance_ids, RunError, RunTables};
use mrdino_outputs::{FrameRow, InstanceRow};
use tch::{Kind, Tensor};

use crate::views::{movi_e_training_view, training_view_ids, training_views, ViewError, ViewPreset, MOVI_E_VIEW_PX};

/// How a dataset's labelled frames are cut into training views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowLayout {
    /// Windows of a resized frame (KITTI, TRI-PD).
    Windows(ViewPreset),
    /// MOVi-E: shorter side to 266, the centre crop.
    MoviE,
}

impl WindowLayout {
    /// Side of a (square) view in pixels.
    pub fn view_px(self) -> usize {
        match self {
            WindowLayout::Windows(preset) => preset.window_px(),
            WindowLayout::MoviE => MOVI_E_VIEW_PX as usize,
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

fn movi_e_views(image: Option<&[u8]>, ids: &Ids) -> Result<Vec<FrameView>, RefineViewError> {
    let (h, w) = (ids.height as i64, ids.width as i64);
    let id_tensor =
        Tensor::f_from_slice(&ids.labels.iter().map(|&v| i64::from(v)).collect::<Vec<_>>())?.f_view([h, w])?;
    let pixels = match image {
        Some(data) => float_image(data, ids.height, ids.width)?,
        None => Tensor::f_zeros([3, h, w], (Kind::Float, tch::Device::Cpu))?,
    };
    let (view_image, view_ids) = movi_e_training_view(&pixels, &id_tensor)?;
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
        ((MOVI_E_VIEW_PX as f64 * h as f64 / short) as i64, MOVI_E_VIEW_PX)
    } else {
        (MOVI_E_VIEW_PX, (MOVI_E_VIEW_PX as f64 * w as f64 / short) as i64)
    };
    let offset = |len: i64| ((len - MOVI_E_VIEW_PX) as f64 / 2.0).round_ties_even() as i64;
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
        WindowLayout::MoviE => movi_e_views(image, ids),
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
