//! The pipeline's frames and tables as Talk2DINO's tensors, and its results as rows' ingredients: what `mrdino
//! name` and `mrdino segment` compute around [`super::instance_scores`] and [`super::segment`].
//!
//! - [`frame_tensor`]: a decoded frame as the (1, 3, H, W) uint8 RGB tensor [`super::segment`] takes;
//! - [`label_axes`], [`instance_masks`], [`frame_instance_scores`]: an instance's mask lives on its frame's
//!   label grid; the provenance columns of `frames` (the frame was resized to `resized_height`×`resized_width`,
//!   then cropped at (`crop_top`, `crop_left`) to `height`×`width`) place every label cell in the original image,
//!   so the mask can be downsampled to the patch grid of the original frame by exact area;
//! - [`segment_frames`]: [`super::segment`] over a list of frames (consecutive frames of one size share a
//!   forward), each frame's label map returned as [`FrameRegions`]: the pixels each class wins, row-major, with
//!   their bounding box.

use std::collections::BTreeMap;

use mrdino_datasets::Frame;
use mrdino_outputs::{FrameRow, InstanceRow};
use tch::{Device, Tensor};

use super::{instance_scores, segment, AxisMap, InstanceNames, SegmentOptions, Talk2DinoError};
use crate::vit::Vit;

/// A decoded frame (H, W, 3) uint8 → (1, 3, H, W) uint8 RGB on the CPU.
pub fn frame_tensor(frame: &Frame) -> Result<Tensor, Talk2DinoError> {
    let image = &frame.image;
    if image.data.len() != image.height * image.width * 3 {
        return Err(Talk2DinoError::FrameBytes {
            frame: frame.name.clone(),
            bytes: image.data.len(),
            height: image.height,
            width: image.width,
        });
    }
    Ok(Tensor::f_from_slice(&image.data)?
        .f_view([image.height as i64, image.width as i64, 3])?
        .f_permute([2, 0, 1])?
        .f_unsqueeze(0)?)
}

fn frame_error(row: &FrameRow, message: String) -> Talk2DinoError {
    Talk2DinoError::Frame {
        sequence: row.sequence_id.clone(),
        frame: row.frame_name.clone(),
        message,
    }
}

/// Where the label grid of `row` lies in its original frame, per axis (rows, columns).
pub fn label_axes(row: &FrameRow) -> Result<(AxisMap, AxisMap), Talk2DinoError> {
    if row.resized_height == 0 || row.resized_width == 0 || row.orig_height == 0 || row.orig_width == 0 {
        return Err(frame_error(
            row,
            format!(
                "the frames table gives no resize geometry (resized {}x{}, original {}x{})",
                row.resized_width, row.resized_height, row.orig_width, row.orig_height
            ),
        ));
    }
    if row.crop_top + row.height > row.resized_height || row.crop_left + row.width > row.resized_width {
        return Err(frame_error(
            row,
            format!(
                "a {}x{} label grid at ({}, {}) does not fit the resized {}x{} frame",
                row.width, row.height, row.crop_left, row.crop_top, row.resized_width, row.resized_height
            ),
        ));
    }
    let axis = |cells: u32, crop: u32, resized: u32, orig: u32| {
        let step_px = f64::from(orig) / f64::from(resized);
        AxisMap {
            cells: cells as usize,
            offset_px: f64::from(crop) * step_px,
            step_px,
            extent_px: f64::from(orig),
        }
    };
    Ok((
        axis(row.height, row.crop_top, row.resized_height, row.orig_height),
        axis(row.width, row.crop_left, row.resized_width, row.orig_width),
    ))
}

/// (K, h, w) 0/1 uint8 masks of a frame's instances on its label grid, in the given order.
pub fn instance_masks(row: &FrameRow, instances: &[&InstanceRow]) -> Result<Tensor, Talk2DinoError> {
    let (h, w) = (row.height as usize, row.width as usize);
    let mut data = vec![0u8; instances.len() * h * w];
    for (k, inst) in instances.iter().enumerate() {
        if (inst.mask.height, inst.mask.width) != (row.height, row.width) {
            return Err(frame_error(
                row,
                format!(
                    "instance {} has a {}x{} mask on a {}x{} label grid",
                    inst.instance_id, inst.mask.width, inst.mask.height, row.width, row.height
                ),
            ));
        }
        let pixels = inst
            .mask
            .to_pixels()
            .map_err(|e| frame_error(row, format!("instance {}: {e}", inst.instance_id)))?;
        for p in pixels {
            if let Some(cell) = data.get_mut(k * h * w + p as usize) {
                *cell = 1;
            }
        }
    }
    Ok(Tensor::f_from_slice(&data)?.f_view([instances.len() as i64, h as i64, w as i64])?)
}

/// Open-vocabulary scores of a frame's instances (see [`instance_scores`]) from the frame's patch tokens
/// (P = gh·gw, C), computed on the original frame, and the class embeddings (N, C).
pub fn frame_instance_scores(
    row: &FrameRow,
    instances: &[&InstanceRow],
    patches: &Tensor,
    grid: (i64, i64),
    classes: &Tensor,
) -> Result<InstanceNames, Talk2DinoError> {
    let (rows, cols) = label_axes(row)?;
    let masks = instance_masks(row, instances)?;
    Ok(instance_scores(&masks, &rows, &cols, patches, grid, classes)?)
}

/// The pixels one class wins in a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptRegion {
    /// The class (prompt) index, 0-based.
    pub class: usize,
    /// Row-major pixel indices (y·W + x), increasing.
    pub pixels: Vec<u32>,
    /// [x, y, width, height] of the pixels' bounding box, px.
    pub bbox_xywh: [f32; 4],
}

/// A frame's label map as regions.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameRegions {
    pub height: usize,
    pub width: usize,
    /// Pixels that are not background.
    pub foreground_px: usize,
    /// One region per class that wins a pixel, by class.
    pub regions: Vec<PromptRegion>,
}

/// Segments `frames` (each (1, 3, H, W) uint8 RGB, see [`frame_tensor`]) with [`segment`] on `vit`'s device;
/// consecutive frames of one size share a forward. Returns each frame's regions, in order.
pub fn segment_frames(
    vit: &Vit,
    frames: &[Tensor],
    classes: &Tensor,
    options: &SegmentOptions,
) -> Result<Vec<FrameRegions>, Talk2DinoError> {
    let (n_classes, _) = classes.size2()?;
    let mut out = Vec::with_capacity(frames.len());
    let mut start = 0;
    while let Some(first) = frames.get(start) {
        let size = first.size();
        let end = frames[start..]
            .iter()
            .position(|f| f.size() != size)
            .map_or(frames.len(), |n| start + n);
        let batch = Tensor::f_cat(&frames[start..end], 0)?.f_to_device(vit.device())?;
        let labels = segment(vit, &batch, classes, options)?
            .labels
            .f_to_device(Device::Cpu)?;
        for b in 0..(end - start) as i64 {
            out.push(regions(&labels.f_get(b)?, n_classes as usize)?);
        }
        start = end;
    }
    Ok(out)
}

/// The regions of a label map (H, W) int64 (0 = background, k = class k − 1); labels above `classes` count as
/// foreground but form no region.
pub fn regions(labels: &Tensor, classes: usize) -> Result<FrameRegions, Talk2DinoError> {
    let (h, w) = labels.size2()?;
    let flat = Vec::<i64>::try_from(&labels.f_contiguous()?.f_view([-1])?)?;
    let mut pixels: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for (p, &label) in flat.iter().enumerate() {
        if label > 0 {
            pixels.entry(label as usize).or_default().push(p as u32);
        }
    }
    let (height, width) = (h as usize, w as usize);
    let foreground_px = pixels.values().map(Vec::len).sum();
    let regions = pixels
        .into_iter()
        .filter(|(label, _)| *label <= classes)
        .map(|(label, pixels)| {
            let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
            for &p in &pixels {
                let (y, x) = (p as usize / width, p as usize % width);
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
            PromptRegion {
                class: label - 1,
                pixels,
                bbox_xywh: [x0 as f32, y0 as f32, (x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32],
            }
        })
        .collect();
    Ok(FrameRegions {
        height,
        width,
        foreground_px,
        regions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_grid_maps_through_resize_and_crop() {
        // TRI-PD: 1936×1216 halved to 968×608, top 128 rows cropped: 968×480 labels.
        let row = FrameRow {
            dataset: "tri-pd".into(),
            sequence_id: "s".into(),
            frame_index: 0,
            frame_name: "f".into(),
            source_path: "f.png".into(),
            height: 480,
            width: 968,
            orig_height: 1216,
            orig_width: 1936,
            resized_height: 608,
            resized_width: 968,
            crop_top: 128,
            crop_left: 0,
            quasi_static: true,
            corner_flow_px: None,
            fg_fraction: None,
            labelled: true,
            excluded_reason: None,
            segment: None,
            num_instances: 1,
        };
        let (rows, cols) = label_axes(&row).unwrap();
        assert_eq!(
            (rows.cells, rows.offset_px, rows.step_px, rows.extent_px),
            (480, 256.0, 2.0, 1216.0)
        );
        assert_eq!(
            (cols.cells, cols.offset_px, cols.step_px, cols.extent_px),
            (968, 0.0, 2.0, 1936.0)
        );
        let bad = FrameRow { crop_top: 200, ..row };
        assert!(label_axes(&bad).unwrap_err().to_string().contains("does not fit"));
    }

    #[test]
    fn regions_group_pixels_by_class_with_their_box() {
        // 3×4 map: class 0 (label 1) at (0,1) and (2,2); class 1 (label 2) at (1,3); label 9 is foreground only.
        let labels = Tensor::from_slice(&[0i64, 1, 0, 0, 0, 0, 0, 2, 9, 0, 1, 0]).view([3, 4]);
        let got = regions(&labels, 2).unwrap();
        assert_eq!((got.height, got.width, got.foreground_px), (3, 4, 4));
        assert_eq!(
            got.regions,
            vec![
                PromptRegion {
                    class: 0,
                    pixels: vec![1, 10],
                    bbox_xywh: [1.0, 0.0, 2.0, 3.0]
                },
                PromptRegion {
                    class: 1,
                    pixels: vec![7],
                    bbox_xywh: [3.0, 1.0, 1.0, 1.0]
                },
            ]
        );
    }
}
