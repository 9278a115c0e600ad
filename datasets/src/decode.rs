//! Decoding images and video frames with OpenCV, and the in-memory processing geometry.
//!
//! The reference pipeline resizes its inputs *in place* before computing flow (KITTI to 1240×376 with
//! `cv2.INTER_LINEAR`; TRI-PD halved with ceil and the top 128 rows dropped). mrdino applies the same
//! operations with the same OpenCV calls in memory, so the files stay untouched and every frame records the
//! mapping back to its original pixels.

use std::path::Path;

use opencv::core::{Mat, Rect, Size};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};

use crate::{DatasetError, Geometry, RgbImage};

/// How a decoded frame becomes the processing grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Processing {
    /// Keep the decoded resolution.
    Native,
    /// Resize the whole frame to `width`×`height` with bilinear interpolation (`cv2.INTER_LINEAR`).
    Resize { width: usize, height: usize },
    /// Halve both sides (rounding up, bilinear), then drop the top `crop_top` rows (the TRI-PD reference).
    HalveCropTop { crop_top: usize },
}

impl Processing {
    /// The geometry this processing gives a frame of `orig_height`×`orig_width`.
    pub fn geometry(&self, orig_height: usize, orig_width: usize) -> Result<Geometry, String> {
        let native = Geometry::native(orig_height, orig_width);
        match *self {
            Processing::Native => Ok(native),
            Processing::Resize { width, height } => Ok(Geometry {
                resized_height: height,
                resized_width: width,
                height,
                width,
                ..native
            }),
            Processing::HalveCropTop { crop_top } => {
                let resized_height = orig_height.div_ceil(2);
                let resized_width = orig_width.div_ceil(2);
                if resized_height <= crop_top {
                    return Err(format!(
                        "frame of {orig_width}x{orig_height} is too small to halve and crop {crop_top} rows"
                    ));
                }
                Ok(Geometry {
                    resized_height,
                    resized_width,
                    crop_top,
                    height: resized_height - crop_top,
                    width: resized_width,
                    ..native
                })
            }
        }
    }

    /// Applies the processing to a BGR 8-bit frame and returns it as RGB with its geometry.
    pub fn apply(&self, bgr: &Mat) -> Result<(RgbImage, Geometry), String> {
        let orig_height = bgr.rows() as usize;
        let orig_width = bgr.cols() as usize;
        let geometry = self.geometry(orig_height, orig_width)?;
        let cv = |e: opencv::Error| e.to_string();
        let resized = if geometry.resized_height == orig_height && geometry.resized_width == orig_width {
            bgr.clone()
        } else {
            let mut out = Mat::default();
            let size = Size::new(geometry.resized_width as i32, geometry.resized_height as i32);
            imgproc::resize(bgr, &mut out, size, 0.0, 0.0, imgproc::INTER_LINEAR).map_err(cv)?;
            out
        };
        let cropped = if geometry.height == geometry.resized_height && geometry.width == geometry.resized_width {
            resized
        } else {
            let rect = Rect::new(
                geometry.crop_left as i32,
                geometry.crop_top as i32,
                geometry.width as i32,
                geometry.height as i32,
            );
            Mat::roi(&resized, rect).map_err(cv)?.try_clone().map_err(cv)?
        };
        let mut rgb = Mat::default();
        imgproc::cvt_color_def(&cropped, &mut rgb, imgproc::COLOR_BGR2RGB).map_err(cv)?;
        let data = rgb.data_bytes().map_err(cv)?.to_vec();
        Ok((RgbImage::new(geometry.height, geometry.width, data), geometry))
    }
}

/// `imgcodecs::imread` with `flags`, turning a missing, unreadable or undecodable file into an error naming it.
fn read_image(path: &Path, flags: i32) -> Result<Mat, DatasetError> {
    let decode = |message: String| DatasetError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let name = path.to_str().ok_or_else(|| decode("path is not valid UTF-8".into()))?;
    if !path.is_file() {
        return Err(DatasetError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let mat = imgcodecs::imread(name, flags).map_err(|e| decode(e.to_string()))?;
    if mat.empty() {
        return Err(decode("not a readable image (corrupt or unsupported format)".into()));
    }
    Ok(mat)
}

/// Reads an 8-bit colour image (PNG, JPEG, …) as BGR. Grey images are expanded to three channels.
pub fn read_bgr(path: &Path) -> Result<Mat, DatasetError> {
    read_image(path, imgcodecs::IMREAD_COLOR)
}

/// Reads an image file and applies `processing`.
pub fn read_processed(path: &Path, processing: &Processing) -> Result<(RgbImage, Geometry), DatasetError> {
    let bgr = read_bgr(path)?;
    processing.apply(&bgr).map_err(|message| DatasetError::Decode {
        path: path.to_path_buf(),
        message,
    })
}

/// Reads an image keeping its bit depth and channels (16-bit instance maps, KITTI flow PNGs).
pub fn read_unchanged(path: &Path) -> Result<Mat, DatasetError> {
    read_image(path, imgcodecs::IMREAD_UNCHANGED)
}
