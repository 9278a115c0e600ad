//! The refinement's training views of a pseudo-label run (spec §1.9): which windows a labelled frame gives,
//! their instance ids and, when asked, their pixels. One rule for `mrdino features --views windows` (which
//! caches the windows' features) and `mrdino refine` (which reads the same windows' masks, and their pixels
//! when it computes features on the fly), so a cached row and its masks always describe the same window.
//!
//! * KITTI and frame folders: the frame at the label grid → 1260×378 (image PIL bilinear, ids PIL nearest) →
//!   windows of 378 at x = 0, 294, 588, 882, those without instance pixels skipped.
//! * TRI-PD: → 980×490, halves at x = 0, 490, those with at most one distinct id skipped.
//! * MOVi-E: shorter side to 266 (image bicubic without antialias, clamped; ids nearest-exact), centre crop;
//!   one view per frame, skipped without instance pixels.
//!
//! A view is keyed by (sequence, frame, window offset): `[x, 0]` for the windows, `[left, top]` of the crop
//! in the resized frame for MOVi-E.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use mrdino_datasets::DatasetKind;
use mrdino_model::views::{movi_e_training_view, training_view_ids, training_views, ViewPreset, MOVI_E_VIEW_PX};
use mrdino_outputs::feature_cache::ViewKey;
use mrdino_outputs::{FrameRow, InstanceRow};
use mrdino_stages::metrics::LabelMap;
use tch::{Kind, Tensor};

use crate::cmd_eval::{prediction_map, LabelTables};

/// How a dataset's frames are cut into training views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowLayout {
    Windows(ViewPreset),
    MoviE,
}

impl WindowLayout {
    pub fn for_dataset(kind: DatasetKind) -> Self {
        match kind {
            DatasetKind::TriPd => WindowLayout::Windows(ViewPreset::TriPd),
            DatasetKind::MoviE => WindowLayout::MoviE,
            _ => WindowLayout::Windows(ViewPreset::Kitti),
        }
    }

    /// Side of a (square) view in pixels.
    pub fn view_px(self) -> usize {
        match self {
            WindowLayout::Windows(preset) => preset.window_px(),
            WindowLayout::MoviE => MOVI_E_VIEW_PX as usize,
        }
    }
}

/// One training view: its offset, its ids (view_px²) and, when asked for, its pixels (3, S, S) in [0, 1].
pub struct FrameView {
    pub window: [i64; 2],
    pub ids: Vec<u32>,
    pub image: Option<Tensor>,
}

fn float_image(data: &[u8], height: usize, width: usize) -> Tensor {
    Tensor::from_slice(data)
        .view([height as i64, width as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0
}

fn movi_e_views(image: Option<&[u8]>, ids: &LabelMap) -> Result<Vec<FrameView>> {
    let (h, w) = (ids.height as i64, ids.width as i64);
    let id_tensor = Tensor::from_slice(&ids.labels.iter().map(|&v| i64::from(v)).collect::<Vec<_>>()).view([h, w]);
    let pixels = match image {
        Some(data) => float_image(data, ids.height, ids.width),
        None => Tensor::zeros([3, h, w], (Kind::Float, tch::Device::Cpu)),
    };
    let (view_image, view_ids) = movi_e_training_view(&pixels, &id_tensor)?;
    let view_ids: Vec<u32> = Vec::<i64>::try_from(view_ids.flatten(0, -1))?
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
pub fn frame_views(layout: WindowLayout, image: Option<&[u8]>, ids: &LabelMap) -> Result<Vec<FrameView>> {
    if let Some(data) = image {
        if data.len() != ids.height * ids.width * 3 {
            bail!(
                "the frame has {} bytes, the label grid is {}x{}",
                data.len(),
                ids.width,
                ids.height
            );
        }
    }
    match layout {
        WindowLayout::MoviE => movi_e_views(image, ids),
        WindowLayout::Windows(preset) => Ok(match image {
            Some(data) => training_views(preset, data, &ids.labels, ids.height, ids.width)?
                .into_iter()
                .map(|v| FrameView {
                    window: [v.x_px as i64, 0],
                    image: Some(float_image(&v.image, v.size_px, v.size_px)),
                    ids: v.ids,
                })
                .collect(),
            None => training_view_ids(preset, &ids.labels, ids.height, ids.width)?
                .into_iter()
                .map(|(x, ids)| FrameView {
                    window: [x as i64, 0],
                    ids,
                    image: None,
                })
                .collect(),
        }),
    }
}

/// The labelled frames of a pseudo-label run, indexed by (sequence, frame).
pub struct LabelIndex {
    pub layout: WindowLayout,
    tables: LabelTables,
    frames: HashMap<(String, u64), (usize, Vec<usize>)>,
}

impl LabelIndex {
    /// Indexes the labelled frames with at least one instance.
    pub fn new(tables: LabelTables, layout: WindowLayout) -> Self {
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

    /// The frame row and instance rows of a labelled frame.
    pub fn frame(&self, sequence_id: &str, frame_index: u64) -> Option<(&FrameRow, Vec<&InstanceRow>)> {
        let (f, instances) = self.frames.get(&(sequence_id.to_string(), frame_index))?;
        Some((
            &self.tables.frames[*f],
            instances.iter().map(|&i| &self.tables.instances[i]).collect(),
        ))
    }

    /// The id map of a labelled frame at its label grid.
    pub fn id_map(&self, sequence_id: &str, frame_index: u64) -> Result<(&FrameRow, LabelMap)> {
        let (row, instances) = self
            .frame(sequence_id, frame_index)
            .with_context(|| format!("{sequence_id} frame {frame_index} is not a labelled frame of the labels run"))?;
        Ok((row, prediction_map(row, &instances)?))
    }

    /// Every view of the run in (sequence, frame, window) order, without pixels.
    pub fn all_views(&self) -> Result<Vec<ViewKey>> {
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
    pub fn view(&self, key: &ViewKey, image: Option<&[u8]>) -> Result<FrameView> {
        let (_, ids) = self.id_map(&key.sequence_id, key.frame_index)?;
        let window = key.window.with_context(|| {
            format!(
                "{} frame {}: the view is a whole frame, not a refinement window (a feature cache of --views \
                 resize?)",
                key.sequence_id, key.frame_index
            )
        })?;
        frame_views(self.layout, image, &ids)?
            .into_iter()
            .find(|v| v.window == window)
            .with_context(|| {
                format!(
                    "{} frame {}: the labels give no training window at offset {:?}",
                    key.sequence_id, key.frame_index, window
                )
            })
    }
}
