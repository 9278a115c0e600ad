//! Training views from pseudo-labels (spec §1.9; reference `scripts/datasets/conversion_scripts/convert_*.py`
//! and the MOVi-E training transforms), as pure functions on pixels.
//!
//! * **KITTI** ([`ViewPreset::Kitti`]): the frame (1240×376, or whatever size it has) is resized to 1260×378
//!   — the image with PIL's BILINEAR, the instance ids with PIL's NEAREST — and cut into four 378×378 windows
//!   at x = 0, 294, 588, 882 (overlapping); a window without any instance pixel is skipped.
//! * **TRI-PD** ([`ViewPreset::TriPd`]): resized the same way to 980×490 and cut into the halves x = 0 and
//!   490; a half whose ids take at most one distinct value (no instance, or one instance covering it all) is
//!   skipped, as the reference's `len(np.unique(label)) <= 1` test does.
//! * **MOVi-E** ([`movi_e_training_view`]): shorter side to 266 (the image bicubic without antialias and
//!   clamped to [0, 1], libtorch's `upsample_bicubic2d` as torchvision 0.15 does on tensors; the ids with
//!   `nearest-exact`), then the centre 266×266 crop (offsets rounded as Python's `round`, half to even).
//!
//! Resampling rules reproduced: PIL NEAREST takes source index ⌊x_o⌋ with x_o starting at s/2 and advanced by
//! s = in/out per output pixel in float64 (Pillow's `ImagingScaleAffine` accumulation). This is neither torch's
//! legacy `nearest` (⌊dst·s⌋) nor `nearest-exact` (⌊(dst + 0.5)·s⌋ in float32): at 376 → 378 or 480 → 490 those
//! pick different rows. PIL BILINEAR is Pillow's two-pass separable resample (`Resample.c`): a triangle filter
//! widened by max(1, s), coefficients normalised per output pixel, converted to 22-bit fixed point (rounded
//! half away from zero), one pass per axis into uint8 (horizontal first, except that Pillow 13 starts with the
//! vertical pass when the height shrinks and the width grows), each output rounded by adding 2^21 and clipped
//! to 0..255. Both are checked against Pillow in `tests/refine_parity.rs`.
//!
//! Instance ids stay `u32`: the reference stores KITTI window labels as uint8 (`convert("L")`), so ids above
//! 255 collide there; here they stay distinct (a documented departure). [`instance_masks`] turns a view into
//! the stage-1 input: one binary map per distinct non-zero id, ascending.

use tch::{Kind, Tensor};

use crate::patch_scale::PatchScale;

/// Errors of view building, naming the offending sizes.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{what}: {actual} values do not make a {height}x{width}x{channels} image")]
    Shape {
        what: &'static str,
        height: usize,
        width: usize,
        channels: usize,
        actual: usize,
    },
    #[error("cannot resize {height}x{width} to {out_height}x{out_width}: every side must be at least 1")]
    EmptyResize {
        height: usize,
        width: usize,
        out_height: usize,
        out_width: usize,
    },
    #[error("MOVi-E view: image {image:?} and ids {ids:?} must be (3, H, W) and (H, W)")]
    MoviEShape { image: Vec<i64>, ids: Vec<i64> },
    #[error("instance masks of view {index}: expected (C, H, W), got {actual:?}")]
    MaskShape { index: usize, actual: Vec<i64> },
    #[error("MOVi-E view: {0}")]
    Torch(#[from] tch::TchError),
}

/// Pillow's NEAREST source index for every output index of a `input_len` → `output_len` resize.
pub fn pil_nearest_indices(input_len: usize, output_len: usize) -> Vec<usize> {
    let scale = input_len as f64 / output_len as f64;
    let mut position = scale * 0.5;
    (0..output_len)
        .map(|_| {
            let index = (position as usize).min(input_len.saturating_sub(1));
            position += scale;
            index
        })
        .collect()
}

fn check(what: &'static str, len: usize, height: usize, width: usize, channels: usize) -> Result<(), ViewError> {
    if len != height * width * channels {
        return Err(ViewError::Shape {
            what,
            height,
            width,
            channels,
            actual: len,
        });
    }
    Ok(())
}

fn check_resize(height: usize, width: usize, out_height: usize, out_width: usize) -> Result<(), ViewError> {
    if [height, width, out_height, out_width].contains(&0) {
        return Err(ViewError::EmptyResize {
            height,
            width,
            out_height,
            out_width,
        });
    }
    Ok(())
}

/// Pillow NEAREST resize of a row-major (height, width) map.
pub fn pil_resize_nearest<T: Copy>(
    values: &[T],
    height: usize,
    width: usize,
    out_height: usize,
    out_width: usize,
) -> Result<Vec<T>, ViewError> {
    check("label map", values.len(), height, width, 1)?;
    check_resize(height, width, out_height, out_width)?;
    let rows = pil_nearest_indices(height, out_height);
    let cols = pil_nearest_indices(width, out_width);
    Ok(rows
        .iter()
        .flat_map(|&r| cols.iter().map(move |&c| values[r * width + c]))
        .collect())
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's per-output-pixel window (first source index, count) and fixed-point coefficients.
fn pil_bilinear_coefficients(input_len: usize, output_len: usize) -> (Vec<(usize, usize)>, Vec<Vec<i32>>) {
    let scale = input_len as f64 / output_len as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // bilinear support 1.0, widened
    let inverse_scale = 1.0 / filter_scale;
    let mut bounds = Vec::with_capacity(output_len);
    let mut coefficients = Vec::with_capacity(output_len);
    for out in 0..output_len {
        let center = (out as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(input_len as i64) as usize;
        let count = xmax.saturating_sub(xmin);
        let weights: Vec<f64> = (0..count)
            .map(|x| {
                let t = ((x + xmin) as f64 - center + 0.5) * inverse_scale;
                let t = t.abs();
                if t < 1.0 {
                    1.0 - t
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = weights.iter().sum();
        let fixed = weights
            .iter()
            .map(|&w| {
                let w = if total != 0.0 { w / total } else { w };
                let scaled = w * f64::from(1u32 << PRECISION_BITS);
                if scaled < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                }
            })
            .collect();
        bounds.push((xmin, count));
        coefficients.push(fixed);
    }
    (bounds, coefficients)
}

fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One Pillow pass along the rows (`horizontal`) or the columns of an interleaved uint8 image.
fn pil_bilinear_pass(
    pixels: &[u8],
    (height, width, channels): (usize, usize, usize),
    out_len: usize,
    horizontal: bool,
) -> Vec<u8> {
    let (in_len, out_height, out_width) = if horizontal {
        (width, height, out_len)
    } else {
        (height, out_len, width)
    };
    let (bounds, coefficients) = pil_bilinear_coefficients(in_len, out_len);
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; out_height * out_width * channels];
    for y in 0..out_height {
        for x in 0..out_width {
            let (o, fixed) = if horizontal { (x, y) } else { (y, x) };
            let (start, count) = bounds[o];
            for c in 0..channels {
                let mut sum = half;
                for (t, &w) in coefficients[o].iter().enumerate().take(count) {
                    let (sy, sx) = if horizontal {
                        (fixed, start + t)
                    } else {
                        (start + t, fixed)
                    };
                    sum += i64::from(pixels[(sy * width + sx) * channels + c]) * i64::from(w);
                }
                out[(y * out_width + x) * channels + c] = clip8(sum);
            }
        }
    }
    out
}

/// Pillow BILINEAR resize of a row-major interleaved uint8 image (height, width, channels). Pillow 13 runs
/// the vertical pass first when the height shrinks while the width grows, and the horizontal pass first
/// otherwise (found by comparing both orders with Pillow on such shapes; the training views grow both sides,
/// where the order has always been horizontal first).
pub fn pil_resize_bilinear_u8(
    pixels: &[u8],
    height: usize,
    width: usize,
    channels: usize,
    out_height: usize,
    out_width: usize,
) -> Result<Vec<u8>, ViewError> {
    check("image", pixels.len(), height, width, channels)?;
    check_resize(height, width, out_height, out_width)?;
    let horizontal = |p: &[u8], h: usize| pil_bilinear_pass(p, (h, width, channels), out_width, true);
    let vertical = |p: &[u8], w: usize| pil_bilinear_pass(p, (height, w, channels), out_height, false);
    Ok(match (height != out_height, width != out_width) {
        (false, false) => pixels.to_vec(),
        (false, true) => horizontal(pixels, height),
        (true, false) => vertical(pixels, width),
        (true, true) if out_height < height && out_width > width => {
            let rows_done = vertical(pixels, width);
            pil_bilinear_pass(&rows_done, (out_height, width, channels), out_width, true)
        }
        (true, true) => {
            let columns_done = horizontal(pixels, height);
            pil_bilinear_pass(&columns_done, (height, out_width, channels), out_height, false)
        }
    })
}

/// The window layouts of the pseudo-label training views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewPreset {
    /// 1260×378, windows of 378 at x = 0, 294, 588, 882; skipped without instance pixels.
    Kitti,
    /// 980×490, windows of 490 at x = 0, 490; skipped with ≤ 1 distinct id.
    TriPd,
}

impl ViewPreset {
    /// (height, width) of the resized frame.
    pub fn canvas(self) -> (usize, usize) {
        match self {
            ViewPreset::Kitti => (378, 1260),
            ViewPreset::TriPd => (490, 980),
        }
    }

    /// Window side in pixels.
    pub fn window_px(self) -> usize {
        match self {
            ViewPreset::Kitti => 378,
            ViewPreset::TriPd => 490,
        }
    }

    /// Left edges of the windows in the resized frame.
    pub fn window_x_px(self) -> &'static [usize] {
        match self {
            ViewPreset::Kitti => &[0, 294, 588, 882],
            ViewPreset::TriPd => &[0, 490],
        }
    }

    fn keeps(self, ids: &[u32]) -> bool {
        match self {
            ViewPreset::Kitti => ids.iter().any(|&id| id != 0),
            ViewPreset::TriPd => ids.iter().any(|&id| id != ids[0]),
        }
    }
}

/// A preset's training windows at a backbone's patch: the preset's pixels through [`PatchScale::px`] (the
/// identity at patch 14; patch 16 gives KITTI 432 px windows at x = 0, 336, 672, 1008 of a 1440×432 frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViewWindows {
    pub preset: ViewPreset,
    pub scale: PatchScale,
}

impl From<ViewPreset> for ViewWindows {
    /// The preset's own pixels (patch 14).
    fn from(preset: ViewPreset) -> Self {
        Self {
            preset,
            scale: PatchScale::IDENTITY,
        }
    }
}

impl ViewWindows {
    /// The preset's windows for a backbone of `patch_px` ([`PatchScale::for_window`]).
    pub fn for_patch(preset: ViewPreset, patch_px: i64) -> Self {
        Self {
            preset,
            scale: PatchScale::for_window(preset.window_px() as i64, patch_px),
        }
    }

    /// (height, width) of the resized frame.
    pub fn canvas(self) -> (usize, usize) {
        let (h, w) = self.preset.canvas();
        (self.scale.px_usize(h), self.scale.px_usize(w))
    }

    /// Window side in pixels.
    pub fn window_px(self) -> usize {
        self.scale.px_usize(self.preset.window_px())
    }

    /// Left edges of the windows in the resized frame.
    pub fn window_x_px(self) -> Vec<usize> {
        self.preset
            .window_x_px()
            .iter()
            .map(|&x| self.scale.px_usize(x))
            .collect()
    }
}

/// One training window: uint8 RGB (interleaved, window_px × window_px × 3) and its instance ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingView {
    /// Left edge of the window in the resized frame.
    pub x_px: usize,
    pub size_px: usize,
    pub image: Vec<u8>,
    pub ids: Vec<u32>,
}

/// The windows a frame's `ids` (height, width) give, without the image: (left edge, window ids) of every
/// window [`training_views`] keeps, in the same order.
pub fn training_view_ids(
    preset: impl Into<ViewWindows>,
    ids: &[u32],
    height: usize,
    width: usize,
) -> Result<Vec<(usize, Vec<u32>)>, ViewError> {
    let preset: ViewWindows = preset.into();
    check("instance ids", ids.len(), height, width, 1)?;
    let (canvas_height, canvas_width) = preset.canvas();
    let resized_ids = pil_resize_nearest(ids, height, width, canvas_height, canvas_width)?;
    let size = preset.window_px();
    Ok(preset
        .window_x_px()
        .iter()
        .filter_map(|&x0| {
            let window_ids: Vec<u32> = (0..size)
                .flat_map(|y| {
                    resized_ids[y * canvas_width + x0..y * canvas_width + x0 + size]
                        .iter()
                        .copied()
                })
                .collect();
            preset.preset.keeps(&window_ids).then_some((x0, window_ids))
        })
        .collect())
}

/// The training views of one frame: `image` interleaved RGB (height, width, 3), `ids` (height, width).
pub fn training_views(
    preset: impl Into<ViewWindows>,
    image: &[u8],
    ids: &[u32],
    height: usize,
    width: usize,
) -> Result<Vec<TrainingView>, ViewError> {
    let preset: ViewWindows = preset.into();
    check("image", image.len(), height, width, 3)?;
    let windows = training_view_ids(preset, ids, height, width)?;
    if windows.is_empty() {
        return Ok(Vec::new());
    }
    let (canvas_height, canvas_width) = preset.canvas();
    let resized_image = pil_resize_bilinear_u8(image, height, width, 3, canvas_height, canvas_width)?;
    let size = preset.window_px();
    Ok(windows
        .into_iter()
        .map(|(x0, window_ids)| TrainingView {
            x_px: x0,
            size_px: size,
            image: (0..size)
                .flat_map(|y| {
                    let start = (y * canvas_width + x0) * 3;
                    resized_image[start..start + size * 3].iter().copied()
                })
                .collect(),
            ids: window_ids,
        })
        .collect())
}

/// The distinct non-zero ids of a map (ascending) and one binary float32 map per id, (C, height, width).
pub fn instance_masks(ids: &[u32], height: usize, width: usize) -> Result<(Vec<u32>, Tensor), ViewError> {
    check("instance ids", ids.len(), height, width, 1)?;
    let mut distinct: Vec<u32> = ids.iter().copied().filter(|&id| id != 0).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut data = vec![0f32; distinct.len() * ids.len()];
    for (p, id) in ids.iter().enumerate() {
        if let Ok(channel) = distinct.binary_search(id) {
            data[channel * ids.len() + p] = 1.0;
        }
    }
    let masks = Tensor::f_from_slice(&data)?.f_reshape([distinct.len() as i64, height as i64, width as i64])?;
    Ok((distinct, masks))
}

/// Stacks per-view instance masks (C_b, H, W) into (B, max C_b, H, W), zero-padded (the reference's
/// autopadding); all views must share H and W.
pub fn batch_instance_masks(masks: &[Tensor]) -> Result<Tensor, ViewError> {
    let counts: Vec<i64> = masks
        .iter()
        .enumerate()
        .map(|(index, m)| match m.size()[..] {
            [c, _, _] => Ok(c),
            ref actual => Err(ViewError::MaskShape {
                index,
                actual: actual.to_vec(),
            }),
        })
        .collect::<Result<_, _>>()?;
    let channels = counts.iter().copied().max().unwrap_or(0);
    let padded: Vec<Tensor> = masks
        .iter()
        .zip(&counts)
        .map(|(m, c)| m.f_constant_pad_nd([0, 0, 0, 0, 0, channels - c]))
        .collect::<Result<_, _>>()?;
    Ok(Tensor::f_stack(&padded, 0)?)
}

/// Side of the MOVi-E training views.
pub const MOVI_E_VIEW_PX: i64 = 266;

/// The MOVi-E training view of a float image (3, H, W) in [0, 1] and its ids (H, W) (any integer kind):
/// shorter side to 266 (image bicubic, no antialias, clamped; ids `nearest-exact`), then the centre crop.
pub fn movi_e_training_view(image: &Tensor, ids: &Tensor) -> Result<(Tensor, Tensor), ViewError> {
    movi_e_training_view_px(image, ids, MOVI_E_VIEW_PX)
}

/// [`movi_e_training_view`] with a view of `view_px` (the MOVi-E window at a backbone's patch,
/// [`crate::patch_scale::PatchScale`]: 304 px at patch 16).
pub fn movi_e_training_view_px(image: &Tensor, ids: &Tensor, view_px: i64) -> Result<(Tensor, Tensor), ViewError> {
    let size = image.size();
    if size.len() != 3 || ids.size() != size[1..] {
        return Err(ViewError::MoviEShape {
            image: size,
            ids: ids.size(),
        });
    }
    let (h, w) = (size[1], size[2]);
    if h == 0 || w == 0 {
        return Err(ViewError::EmptyResize {
            height: h as usize,
            width: w as usize,
            out_height: view_px as usize,
            out_width: view_px as usize,
        });
    }
    // torchvision: the shorter side becomes 266, the longer int(266 · long / short).
    let (new_h, new_w) = if w <= h {
        (((view_px as f64) * h as f64 / w as f64) as i64, view_px)
    } else {
        (view_px, ((view_px as f64) * w as f64 / h as f64) as i64)
    };
    let (resized_image, resized_ids) = if (new_h, new_w) == (h, w) {
        (image.shallow_clone(), ids.shallow_clone())
    } else {
        let img = image
            .f_to_kind(Kind::Float)?
            .f_unsqueeze(0)?
            .f_upsample_bicubic2d([new_h, new_w], false, None, None)?
            .f_squeeze_dim(0)?
            .f_clamp(0.0, 1.0)?;
        let id = ids
            .f_to_kind(Kind::Double)?
            .f_unsqueeze(0)?
            .f_unsqueeze(0)?
            .f_internal_upsample_nearest_exact2d([new_h, new_w], None, None)?
            .f_squeeze_dim(0)?
            .f_squeeze_dim(0)?
            .f_round()?
            .f_to_kind(ids.kind())?;
        (img, id)
    };
    // torchvision CenterCrop: int(round((size − crop) / 2)).
    let offset = |len: i64| ((len - view_px) as f64 / 2.0).round_ties_even() as i64;
    let (top, left) = (offset(new_h), offset(new_w));
    let crop = |t: &Tensor| {
        let dims = t.dim() as i64;
        t.f_narrow(dims - 2, top, view_px)?.f_narrow(dims - 1, left, view_px)
    };
    Ok((crop(&resized_image)?, crop(&resized_ids)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pil_nearest_differs_from_torch_rules_where_documented() {
        let pil = pil_nearest_indices(376, 378);
        let legacy: Vec<usize> = (0..378).map(|d| d * 376 / 378).collect();
        assert_ne!(pil, legacy);
        assert_eq!(pil_nearest_indices(5, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(pil_nearest_indices(2, 4), vec![0, 0, 1, 1]);
    }

    #[test]
    fn kitti_windows_skip_empty_ones_and_keep_large_ids() {
        let (h, w) = (376, 1240);
        let image = vec![7u8; h * w * 3];
        let mut ids = vec![0u32; h * w];
        // One instance near the right border only: windows at 588 and 882 see it (882 + 378 = 1260).
        for y in 100..120 {
            for x in 1200..1230 {
                ids[y * w + x] = 300;
            }
        }
        let views = training_views(ViewPreset::Kitti, &image, &ids, h, w).expect("views");
        assert_eq!(views.iter().map(|v| v.x_px).collect::<Vec<_>>(), vec![882]);
        assert!(views[0].ids.contains(&300));
        assert_eq!(views[0].image.len(), 378 * 378 * 3);
        assert!(views[0].image.iter().all(|&p| p == 7));
    }

    #[test]
    fn tri_pd_halves_with_one_value_are_skipped() {
        let (h, w) = (480, 968);
        let image = vec![0u8; h * w * 3];
        // Left half entirely instance 4 (one distinct value): skipped; right half has 0 and 5.
        let mut ids: Vec<u32> = (0..h * w).map(|p| if p % w < 484 { 4 } else { 0 }).collect();
        ids[10 * w + 900] = 5;
        ids[11 * w + 900] = 5;
        let views = training_views(ViewPreset::TriPd, &image, &ids, h, w).expect("views");
        assert_eq!(views.iter().map(|v| v.x_px).collect::<Vec<_>>(), vec![490]);
    }

    #[test]
    fn instance_masks_are_ascending_and_padded() {
        let (ids, masks) = instance_masks(&[0, 9, 3, 3, 0, 9], 2, 3).expect("masks");
        assert_eq!(ids, vec![3, 9]);
        assert_eq!(
            Vec::<f32>::try_from(masks.flatten(0, -1)).expect("values"),
            vec![0., 0., 1., 1., 0., 0., 0., 1., 0., 0., 0., 1.]
        );
        let (_, one) = instance_masks(&[0, 1, 0, 0, 0, 0], 2, 3).expect("masks");
        let batch = batch_instance_masks(&[masks, one]).expect("batch");
        assert_eq!(batch.size(), vec![2, 2, 2, 3]);
        assert_eq!(batch.get(1).get(1).sum(Kind::Float).double_value(&[]), 0.0);
        assert!(instance_masks(&[0, 1], 2, 3).is_err());
    }

    #[test]
    fn movi_e_view_is_a_centre_crop_of_the_short_side_resize() {
        // 4×6 ids upsampled: short side 266, long 399; crop offset round(66.5) = 66 (half to even).
        let ids = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).repeat([4]).reshape([4, 6]);
        let image = Tensor::rand([3, 4, 6], (Kind::Float, tch::Device::Cpu));
        let (img, id) = movi_e_training_view(&image, &ids).expect("view");
        assert_eq!(img.size(), vec![3, 266, 266]);
        assert_eq!(id.size(), vec![266, 266]);
        let full = ids
            .to_kind(Kind::Double)
            .view([1, 1, 4, 6])
            .internal_upsample_nearest_exact2d([266, 399], None, None)
            .view([266, 399])
            .to_kind(Kind::Int64);
        assert!(id.equal(&full.narrow(1, 66, 266)));
        assert!(img.min().double_value(&[]) >= 0.0 && img.max().double_value(&[]) <= 1.0);
    }
}
