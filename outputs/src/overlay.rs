//! PNG overlays: a frame with its instances coloured, their boxes, ids and (when named) names.

use std::path::Path;

use opencv::core::{Mat, Point, Rect, Scalar, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};

use crate::atomic::{write_atomic, OutputError};
use crate::rle::CocoRle;

/// A distinct, deterministic colour (R, G, B) per instance id (golden-ratio hue steps).
pub fn instance_colour(id: u32) -> [u8; 3] {
    let hue = (f64::from(id) * 0.618_033_988_749_895).fract() * 6.0;
    let (s, v) = (0.85, 1.0);
    let c = v * s;
    let x = c * (1.0 - ((hue % 2.0) - 1.0).abs());
    let (r, g, b) = match hue as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [
        ((r + m) * 255.0) as u8,
        ((g + m) * 255.0) as u8,
        ((b + m) * 255.0) as u8,
    ]
}

/// One instance to draw.
pub struct OverlayInstance<'a> {
    pub id: u32,
    pub mask: &'a CocoRle,
    pub bbox_xywh: [f32; 4],
    /// A name drawn after the id (the open-vocabulary name of `mrdino name`).
    pub name: Option<&'a str>,
}

impl<'a> OverlayInstance<'a> {
    /// The instance of an `instances` row.
    pub fn of_row(row: &'a crate::InstanceRow) -> Self {
        OverlayInstance {
            id: row.instance_id,
            mask: &row.mask,
            bbox_xywh: row.bbox_xywh,
            name: None,
        }
    }
}

/// Blends each instance's colour over an RGB frame (row-major, 3 channels), draws its box and id, and writes
/// the PNG atomically.
pub fn write_overlay(
    path: &Path,
    rgb: &[u8],
    height: usize,
    width: usize,
    instances: &[OverlayInstance<'_>],
) -> Result<(), OutputError> {
    let cv = |e: opencv::Error| OutputError::format(path, e);
    if rgb.len() != height * width * 3 {
        return Err(OutputError::format(
            path,
            format!("frame buffer holds {} bytes, not {width}x{height}x3", rgb.len()),
        ));
    }
    let mut pixels = rgb.to_vec();
    for inst in instances {
        if (inst.mask.height as usize, inst.mask.width as usize) != (height, width) {
            return Err(OutputError::format(
                path,
                format!(
                    "mask of instance {} is {}x{} but its frame is {width}x{height} (WxH)",
                    inst.id, inst.mask.width, inst.mask.height
                ),
            ));
        }
        let colour = instance_colour(inst.id);
        let decoded = inst.mask.to_pixels().map_err(|e| OutputError::format(path, e))?;
        for p in decoded {
            let i = p as usize * 3;
            for (ch, &c) in colour.iter().enumerate() {
                pixels[i + ch] = ((u16::from(pixels[i + ch]) * 2 + u16::from(c) * 3) / 5) as u8;
            }
        }
    }
    // OpenCV draws and encodes BGR.
    for px in pixels.chunks_exact_mut(3) {
        px.swap(0, 2);
    }
    let mut mat = Mat::new_rows_cols_with_data(height as i32, (width * 3) as i32, &pixels)
        .map_err(cv)?
        .reshape(3, height as i32)
        .map_err(cv)?
        .try_clone()
        .map_err(cv)?;
    for inst in instances {
        let [r, g, b] = instance_colour(inst.id);
        let colour = Scalar::new(f64::from(b), f64::from(g), f64::from(r), 0.0);
        let [x, y, w, h] = inst.bbox_xywh.map(|v| v as i32);
        imgproc::rectangle(&mut mat, Rect::new(x, y, w, h), colour, 2, imgproc::LINE_8, 0).map_err(cv)?;
        let label = match inst.name {
            Some(name) => format!("{} {name}", inst.id),
            None => format!("{}", inst.id),
        };
        let origin = Point::new(x + 2, (y - 4).max(12));
        // A dark outline under the coloured id keeps it readable on any background.
        for (ink, thickness) in [(Scalar::all(0.0), 3), (colour, 1)] {
            imgproc::put_text(
                &mut mat,
                &label,
                origin,
                imgproc::FONT_HERSHEY_SIMPLEX,
                0.5,
                ink,
                thickness,
                imgproc::LINE_AA,
                false,
            )
            .map_err(cv)?;
        }
    }
    let mut buf = Vector::<u8>::new();
    imgcodecs::imencode_def(".png", &mat, &mut buf).map_err(cv)?;
    write_atomic(path, buf.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_larger_than_its_frame_is_an_error_naming_both_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.png");
        let mask = CocoRle::from_pixels(&[0, 1, 200], 20, 12);
        let items = [OverlayInstance {
            id: 1,
            mask: &mask,
            bbox_xywh: [0.0, 0.0, 2.0, 2.0],
            name: None,
        }];
        let err = write_overlay(&path, &[0; 8 * 6 * 3], 6, 8, &items)
            .unwrap_err()
            .to_string();
        assert!(err.contains("12x20") && err.contains("8x6"), "{err}");
        assert!(!path.exists());
        let fits = CocoRle::from_pixels(&[0, 1, 40], 6, 8);
        let items = [OverlayInstance {
            id: 1,
            mask: &fits,
            bbox_xywh: [0.0, 0.0, 2.0, 2.0],
            name: None,
        }];
        write_overlay(&path, &[0; 8 * 6 * 3], 6, 8, &items).unwrap();
        assert!(path.exists());
        assert!(write_overlay(&path, &[0; 10], 6, 8, &items).is_err());
    }
}
