//! Whole-image segmentation with Talk2DINO, along either of the two paths its code runs.
//!
//! - [`View::Square`] (the default): `DINOText.generate_masks` on the whole image, as the demo (`demo.py`) and
//!   the Hugging Face model run it: the float image resized to S×S (S = 448, bilinear, antialiased: torchvision ≥
//!   0.17, which the unpinned inference environment gets), /255, ImageNet normalisation, the backbone, soft masks
//!   (sigmoid of the cosine, optional background cleaning), bilinear upsampling with `align_corners=True` to the
//!   image, optional PAMR, a constant background channel, argmax.
//! - [`View::Sliding`]: the benchmark path (`segmentation/configs/_base_/datasets/*.py`: `img_scale=(2048, 448)`,
//!   `Resize(keep_ratio=True)`, `FloatImage`; `test_cfg = dict(mode="slide", stride=(224, 224),
//!   crop_size=(448, 448))`; mmsegmentation 0.30's `EncoderDecoder.slide_inference` over Talk2DINO's
//!   `DINOTextSegInference.encode_decode`). The uint8 image is resized keeping its aspect ratio by the factor
//!   min(2048 / long side, 448 / short side), each side rounded as `int(side·factor + 0.5)` (mmcv
//!   `rescale_size`), with OpenCV's bilinear `INTER_LINEAR` on the uint8 pixels (mmcv `imresize`, cv2 backend:
//!   this resize *does* round, as the benchmark does); crops of min(448, side) px start every 224 px, the last
//!   one flush with the far edge; each crop goes through `generate_masks` as a float image (the square resize is
//!   the identity for a 448×448 crop; a smaller crop is resized without antialiasing, torchvision 0.16's tensor
//!   default in the pinned benchmark environment), its masks are upsampled to the crop, optionally refined by PAMR
//!   on the crop, and the background channel is put in front; the crop scores are summed into the resized image
//!   in row-major crop order and divided by the number of crops covering each pixel; the averaged scores are
//!   resized to the original image (bilinear, `align_corners=False`), softmax over the channels, argmax.
//!
//! Invariants: labels are (B, H, W) int64 on the input's grid, 0 = background, k = class k − 1; the scores behind
//! them are returned too ([`Segmentation`]). Talk2DINO segments one image at a time; the background cleaning's
//! min/max are per image (square view) or per crop (sliding view) here as there.

use opencv::core::{Mat, Size};
use opencv::imgproc;
use opencv::prelude::*;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::input::InputError;
use super::{check_images, pamr, resize_square, soft_masks, PamrConfig, Talk2DinoError, INPUT_PX};
use crate::vit::Vit;

/// The benchmark's sliding window (mmseg `test_cfg` and `img_scale` of Talk2DINO's dataset configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingWindow {
    /// Target short side of the keep-ratio resize, px (`img_scale` = (2048, 448): its smaller number).
    pub short_side_px: i64,
    /// Largest long side of the keep-ratio resize, px (`img_scale`'s larger number).
    pub long_side_max_px: i64,
    /// Square crop side, px (`crop_size`).
    pub crop_px: i64,
    /// Distance between crop origins, px (`stride`).
    pub stride_px: i64,
}

impl SlidingWindow {
    /// Talk2DINO's benchmark setting, the same in every dataset config and for DINOv2 and DINOv3.
    pub const TALK2DINO: Self = Self {
        short_side_px: 448,
        long_side_max_px: 2048,
        crop_px: 448,
        stride_px: 224,
    };

    fn check(&self) -> Result<(), Talk2DinoError> {
        if self.short_side_px <= 0 || self.long_side_max_px <= 0 || self.crop_px <= 0 || self.stride_px <= 0 {
            return Err(Talk2DinoError::BadWindow { window: *self });
        }
        Ok(())
    }

    /// (height, width) of the keep-ratio resize of an (h, w) image (mmcv `rescale_size` with a (long, short)
    /// scale tuple): factor = min(long_max / max(h, w), short / min(h, w)), side = int(side·factor + 0.5).
    pub fn resized_size(&self, height: i64, width: i64) -> (i64, i64) {
        let long_max = self.long_side_max_px.max(self.short_side_px) as f64;
        let short = self.short_side_px.min(self.long_side_max_px) as f64;
        let factor = (long_max / height.max(width) as f64).min(short / height.min(width) as f64);
        let scale = |side: i64| (side as f64 * factor + 0.5) as i64;
        (scale(height), scale(width))
    }

    /// The crops of an (h, w) image as (top, left, height, width), row-major (mmseg `slide_inference`).
    pub fn crops(&self, height: i64, width: i64) -> Vec<(i64, i64, i64, i64)> {
        let grids = |side: i64| (side - self.crop_px + self.stride_px - 1).max(0) / self.stride_px + 1;
        let mut out = Vec::new();
        for row in 0..grids(height) {
            for col in 0..grids(width) {
                let (y2, x2) = (
                    (row * self.stride_px + self.crop_px).min(height),
                    (col * self.stride_px + self.crop_px).min(width),
                );
                let (y1, x1) = ((y2 - self.crop_px).max(0), (x2 - self.crop_px).max(0));
                out.push((y1, x1, y2 - y1, x2 - x1));
            }
        }
        out
    }
}

/// How an image reaches the backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "view", rename_all = "snake_case")]
pub enum View {
    /// The whole image resized to `input_px`² (demo / Hugging Face path).
    Square { input_px: i64 },
    /// Keep-ratio resize, then overlapping square crops whose scores are averaged (benchmark path).
    Sliding(SlidingWindow),
}

impl Default for View {
    fn default() -> Self {
        Self::Square { input_px: INPUT_PX }
    }
}

impl View {
    /// The accepted names of [`View::by_name`].
    pub const NAMES: [&'static str; 2] = ["square", "sliding"];

    /// `square` → `Square { input_px }`, `sliding` → Talk2DINO's benchmark window with crops of `input_px`.
    pub fn by_name(name: &str, input_px: i64) -> Result<Self, Talk2DinoError> {
        match name {
            "square" => Ok(Self::Square { input_px }),
            "sliding" => Ok(Self::Sliding(SlidingWindow {
                crop_px: input_px,
                ..SlidingWindow::TALK2DINO
            })),
            other => Err(Talk2DinoError::UnknownView { name: other.to_string() }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Square { .. } => "square",
            Self::Sliding(_) => "sliding",
        }
    }
}

/// The choices of one segmentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SegmentOptions {
    pub view: View,
    /// Talk2DINO's background cleaning (λ = [`super::LAMBDA_BG`]) from the last block's CLS attention.
    pub background_clean: bool,
    /// PAMR after the upsampling (off by default, as in Talk2DINO's benchmark configs; its demo turns it on).
    pub pamr: Option<PamrConfig>,
    /// The constant background score in front of the class scores (a pixel whose best class scores below it is
    /// background).
    pub bg_threshold: f64,
}

/// What [`segment`] returns.
#[derive(Debug)]
pub struct Segmentation {
    /// (B, 1 + N, H, W) float32: channel 0 the background threshold, then the N class scores — the soft masks
    /// (after PAMR when on) for the square view; the overlap-averaged crop scores resized to the image, before
    /// the softmax, for the sliding view.
    pub scores: Tensor,
    /// (B, H, W) int64: 0 = background, k = class k − 1.
    pub labels: Tensor,
}

/// Segments `frames` (B, 3, H, W) uint8 RGB with the class embeddings (N, C) along `options.view`; see the
/// module docs for the exact steps of each view.
pub fn segment(
    vit: &Vit,
    frames: &Tensor,
    classes: &Tensor,
    options: &SegmentOptions,
) -> Result<Segmentation, Talk2DinoError> {
    let (b, h, w) = check_images(frames, "frames to segment")?;
    if frames.kind() != Kind::Uint8 {
        return Err(InputError::tensor("frames to segment", "(B, 3, H, W) uint8 RGB", frames).into());
    }
    match classes.size().as_slice() {
        &[n, c] if n > 0 && c == vit.embed_dim() => {}
        _ => {
            let expected = format!("(N > 0, {}), the backbone's width", vit.embed_dim());
            return Err(InputError::tensor("class embeddings", expected, classes).into());
        }
    }
    if !options.bg_threshold.is_finite() {
        return Err(Talk2DinoError::Threshold { value: options.bg_threshold });
    }
    let _guard = tch::no_grad_guard();
    match options.view {
        View::Square { input_px } => {
            if input_px <= 0 || input_px % vit.patch_size() != 0 {
                return Err(Talk2DinoError::ViewPatch {
                    view: "square view",
                    px: input_px,
                    patch_px: vit.patch_size(),
                });
            }
            let frames255 = frames.f_to_kind(Kind::Float)?;
            let images01 = resize_square(&frames255, input_px, true)?;
            let soft = soft_masks(vit, &images01, classes, options.background_clean)?;
            let scores = with_background(
                &refined_masks(&soft, &frames255, (h, w), options.pamr.as_ref())?,
                options.bg_threshold,
            )?;
            let labels = scores.f_argmax(1, false)?;
            Ok(Segmentation { scores, labels })
        }
        View::Sliding(window) => {
            window.check()?;
            if window.crop_px % vit.patch_size() != 0 {
                return Err(Talk2DinoError::ViewPatch {
                    view: "sliding view's crop",
                    px: window.crop_px,
                    patch_px: vit.patch_size(),
                });
            }
            let mut scores = Vec::with_capacity(b as usize);
            for i in 0..b {
                scores.push(sliding_scores(
                    vit,
                    &frames.f_narrow(0, i, 1)?,
                    classes,
                    options,
                    &window,
                )?);
            }
            let scores = Tensor::f_cat(&scores, 0)?;
            let labels = scores.f_softmax(1, Kind::Float)?.f_argmax(1, false)?;
            Ok(Segmentation { scores, labels })
        }
    }
}

/// Soft masks (B, N, h, w) upsampled to `size` (bilinear, `align_corners=True`), then PAMR with the image
/// (B, 3, H, W) in 0..255 when asked.
fn refined_masks(
    soft: &Tensor,
    images255: &Tensor,
    size: (i64, i64),
    pamr_config: Option<&PamrConfig>,
) -> Result<Tensor, Talk2DinoError> {
    let up = soft.f_upsample_bilinear2d([size.0, size.1], true, None, None)?;
    match pamr_config {
        Some(config) => pamr(images255, &up, config),
        None => Ok(up),
    }
}

/// A constant `threshold` channel in front of (B, N, H, W) scores.
fn with_background(scores: &Tensor, threshold: f64) -> Result<Tensor, Talk2DinoError> {
    let (b, _, h, w) = scores.size4()?;
    let bg = Tensor::f_full([b, 1, h, w], threshold, (Kind::Float, scores.device()))?;
    Ok(Tensor::f_cat(&[bg, scores.shallow_clone()], 1)?)
}

/// Averaged sliding-window scores (1, 1 + N, H, W) of one uint8 frame (1, 3, H, W).
fn sliding_scores(
    vit: &Vit,
    frame: &Tensor,
    classes: &Tensor,
    options: &SegmentOptions,
    window: &SlidingWindow,
) -> Result<Tensor, Talk2DinoError> {
    let (_, _, h, w) = frame.size4()?;
    let resized = keep_ratio_resize(frame, window)?.f_to_device(vit.device())?;
    let (_, _, rh, rw) = resized.size4()?;
    let crops = window.crops(rh, rw);
    let pieces: Vec<Tensor> = crops
        .iter()
        .map(|&(top, left, ch, cw)| resized.f_narrow(2, top, ch)?.f_narrow(3, left, cw))
        .collect::<Result<_, tch::TchError>>()?;
    let crops255 = Tensor::f_cat(&pieces, 0)?;
    let (_, _, ch, cw) = crops255.size4()?;
    let images01 = resize_square(&crops255, window.crop_px, false)?;
    let soft = soft_masks(vit, &images01, classes, options.background_clean)?;
    let crop_scores = with_background(
        &refined_masks(&soft, &crops255, (ch, cw), options.pamr.as_ref())?,
        options.bg_threshold,
    )?;
    let channels = crop_scores.size()[1];
    let device = crop_scores.device();
    let sums = Tensor::f_zeros([1, channels, rh, rw], (Kind::Float, device))?;
    let counts = Tensor::f_zeros([1, 1, rh, rw], (Kind::Float, device))?;
    for (k, &(top, left, ch, cw)) in crops.iter().enumerate() {
        let mut area = sums.f_narrow(2, top, ch)?.f_narrow(3, left, cw)?;
        let _ = area.f_add_(&crop_scores.f_narrow(0, k as i64, 1)?)?;
        let mut covered = counts.f_narrow(2, top, ch)?.f_narrow(3, left, cw)?;
        let _ = covered.f_add_scalar_(1.0)?;
    }
    let averaged = sums.f_div(&counts)?;
    Ok(averaged.f_upsample_bilinear2d([h, w], false, None, None)?)
}

/// The benchmark's keep-ratio resize of one uint8 RGB frame (1, 3, H, W) ([`SlidingWindow::resized_size`]) with
/// OpenCV's `INTER_LINEAR` on the uint8 pixels, as mmcv's `imrescale` does; returns (1, 3, H', W') float32 with
/// the (integer) 0..255 values, on the CPU. A frame already at the target size is returned unchanged (OpenCV
/// copies it too).
pub fn keep_ratio_resize(frame: &Tensor, window: &SlidingWindow) -> Result<Tensor, Talk2DinoError> {
    window.check()?;
    let (_, h, w) = check_images(frame, "frame to resize")?;
    if frame.size()[0] != 1 || frame.kind() != Kind::Uint8 {
        return Err(InputError::tensor("frame to resize", "one uint8 frame (1, 3, H, W)", frame).into());
    }
    let (nh, nw) = window.resized_size(h, w);
    let resize_error = |message: String| Talk2DinoError::Resize {
        height: h,
        width: w,
        new_height: nh,
        new_width: nw,
        message,
    };
    if nh <= 0 || nw <= 0 || nh > i32::MAX as i64 || nw > i32::MAX as i64 {
        return Err(resize_error("the resized image would be empty or too large".into()));
    }
    let cpu = frame.f_to_device(tch::Device::Cpu)?;
    if (nh, nw) == (h, w) {
        return Ok(cpu.f_to_kind(Kind::Float)?);
    }
    let hwc = cpu.f_squeeze_dim(0)?.f_permute([1, 2, 0])?.f_contiguous()?;
    let data = Vec::<u8>::try_from(&hwc.f_view([-1])?)?;
    let cv = |e: opencv::Error| resize_error(e.to_string());
    let src = Mat::new_rows_cols_with_data(h as i32, (w * 3) as i32, &data)
        .map_err(cv)?
        .reshape(3, h as i32)
        .map_err(cv)?
        .try_clone()
        .map_err(cv)?;
    let mut dst = Mat::default();
    imgproc::resize(
        &src,
        &mut dst,
        Size::new(nw as i32, nh as i32),
        0.0,
        0.0,
        imgproc::INTER_LINEAR,
    )
    .map_err(cv)?;
    let bytes = dst.data_bytes().map_err(cv)?;
    if bytes.len() as i64 != nh * nw * 3 {
        return Err(resize_error(format!("OpenCV returned {} bytes", bytes.len())));
    }
    Ok(Tensor::f_from_slice(bytes)?
        .f_view([nh, nw, 3])?
        .f_permute([2, 0, 1])?
        .f_unsqueeze(0)?
        .f_to_kind(Kind::Float)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmark_window_matches_mmseg_arithmetic() {
        let w = SlidingWindow::TALK2DINO;
        // KITTI-sized frame: short side to 448 (factor 448/375), 6 crops along the width, the last flush right.
        assert_eq!(w.resized_size(375, 1242), (448, 1484));
        let crops = w.crops(448, 1484);
        assert_eq!(crops.len(), 6);
        assert_eq!(crops[0], (0, 0, 448, 448));
        assert_eq!(crops[4], (0, 896, 448, 448));
        assert_eq!(crops[5], (0, 1036, 448, 448));
        // Cityscapes: 1024×2048 → 448×896, 3 crops.
        assert_eq!(w.resized_size(1024, 2048), (448, 896));
        assert_eq!(w.crops(448, 896).len(), 3);
        // Very wide: the long side caps the factor (2048 / 300), the short side ends below 448 and so do the crops.
        assert_eq!(w.resized_size(40, 300), (273, 2048));
        let wide = w.crops(273, 2048);
        assert_eq!(wide.len(), 9);
        assert!(wide.iter().all(|&(top, _, h, w)| top == 0 && h == 273 && w == 448));
        assert_eq!(wide[8], (0, 1600, 273, 448));
        // An image already at the target size gives one crop of itself.
        assert_eq!(w.crops(448, 448), vec![(0, 0, 448, 448)]);
    }

    #[test]
    fn views_parse_by_name() {
        assert_eq!(View::by_name("square", 448).unwrap(), View::default());
        assert_eq!(
            View::by_name("sliding", 448).unwrap(),
            View::Sliding(SlidingWindow::TALK2DINO)
        );
        assert!(View::by_name("whole", 448).is_err());
        assert_eq!(View::Sliding(SlidingWindow::TALK2DINO).name(), "sliding");
    }

    #[test]
    fn keep_ratio_resize_is_opencv_bilinear_on_uint8() {
        // A 2×2 image scaled to 448×448: the exact bilinear value at a non-grid point rounds to an integer.
        let frame = Tensor::from_slice(&[0u8, 255, 0, 255, 10, 10, 10, 10, 7, 7, 7, 7]).view([1, 3, 2, 2]);
        let out = keep_ratio_resize(&frame, &SlidingWindow::TALK2DINO).unwrap();
        assert_eq!(out.size(), vec![1, 3, 448, 448]);
        assert_eq!(out.kind(), Kind::Float);
        assert_eq!((&out - out.round()).abs().max().double_value(&[]), 0.0);
        assert_eq!(out.double_value(&[0, 0, 0, 0]), 0.0);
        assert_eq!(out.double_value(&[0, 0, 0, 447]), 255.0);
        assert_eq!(out.double_value(&[0, 1, 200, 17]), 10.0);
        assert!(keep_ratio_resize(&frame.to_kind(Kind::Float), &SlidingWindow::TALK2DINO).is_err());
    }
}
