//! Inference windows, and the join and merge of their masks (spec §3.6; reference `ocl/transforms.py`
//! `SpatialSlidingWindow`, `ocl/utils/windows.py` `JoinWindows`, `MergeWindows`).
//!
//! * **Resize** ([`WindowGrid::resize_image`]): bicubic without antialias and clamped, as torchvision 0.15
//!   resizes tensors (KITTI 378×1260, TRI-PD 490×980; MOVi-E shorter side 266 and the centre crop).
//! * **Windows** ([`WindowGrid`]): the resized image (KITTI 378×1260, TRI-PD 490×980, MOVi-E 266×266) is
//!   zero-padded (KITTI 126 px left and right) and cut into non-overlapping windows of the model's size,
//!   row-major, exactly as the reference's sliding window visits them. A window is identified by its offset in
//!   the unpadded image (KITTI −126, 252, 630, 1008); the reference encodes that offset in the sample key and
//!   so collides across images, here a window is keyed by (image, offset) ([`WindowKey`]).
//! * **Join** ([`join_windows`]): window w's C mask channels go to channels w·C … w·C + C − 1 of an
//!   (n·C, H, W) canvas at the window's offset, clipped to the image; outside its window a channel is 0.
//! * **Merge** ([`merge_windows`], similarity 0.2): one-hot of the argmax over all channels (ties to the lowest
//!   channel, so a pixel belongs to its covering window); windows are horizontal (vertical) neighbours when
//!   their y (x) offsets are equal and x (y) offsets differ by exactly the window width (height), visited as
//!   pairs (i < j) in window order; per window the channels other than its first that touch its clipped
//!   region's left/right/top/bottom edge are collected **once, before any merge**; for each neighbour pair,
//!   each edge channel ci of the left (upper) window against each facing channel cj of the other, both not yet
//!   merged away, the cosine similarity of their slot features (f / (‖f‖ + 1e-8), float32; the feature of
//!   channel c of window w is `slot_features[w, c − w·C − 1]`, i.e. channel 0 of every window is taken to be
//!   background) decides: if > the threshold, channel max(ci, cj) is added into min(ci, cj) and emptied, and
//!   cannot take part again. Channels are visited in ascending order; the reference iterates Python sets,
//!   whose order is not always ascending (a documented departure, see ocl-checkpoints.md "Behaviour details").
//!   Because edge sets are computed once and merged channels are skipped, an object spanning three windows
//!   keeps two channels: its middle-window channel was merged away before the second boundary is visited.
//!   `merge_chains` fixes that: a merged-away channel still stands for the channel that absorbed it, so the
//!   far part joins the same channel (compared with the merged-away channel's own slot feature, as it is the
//!   one touching that boundary).
//!
//! The pixels above are the presets' at patch 14; [`WindowGrid::scaled`] gives a backbone of another patch the
//! same token grid (`crate::patch_scale`; patch 16: KITTI 432×1440 padded 144 px, four 432 px windows; TRI-PD
//! 560×1120, two 560 px windows; MOVi-E one 304 px window).
//!
//! The merged canvas is kept as the channel id of every pixel ([`MergedCanvas`]), which is the one-hot
//! canvas in compact form: the reference's channel sums keep every pixel in exactly one channel.

use tch::{Kind, Tensor};

use crate::patch_scale::PatchScale;

/// `MergeWindows`' similarity threshold in every MR-DINOSAUR evaluation config.
pub const MERGE_SIMILARITY: f64 = 0.2;
/// Added to each slot feature's norm in the merge cosine.
pub const MERGE_COSINE_EPSILON: f32 = 1e-8;

/// Errors of windowing, naming the offending value.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    #[error("{what}: expected shape {expected}, got {actual:?}")]
    Shape {
        what: &'static str,
        expected: String,
        actual: Vec<i64>,
    },
    #[error("window {window_height}x{window_width} does not tile the padded {padded_height}x{padded_width} image")]
    Tiling {
        window_height: i64,
        window_width: i64,
        padded_height: i64,
        padded_width: i64,
    },
    #[error("{channels} mask channels cannot be split over {windows} windows")]
    Channels { channels: i64, windows: usize },
    #[error("window {window}: channel {channel} needs slot feature {index}, but there are {slots} slots")]
    SlotFeature {
        window: usize,
        channel: usize,
        index: usize,
        slots: i64,
    },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

fn shape_error(what: &'static str, expected: impl Into<String>, tensor: &Tensor) -> WindowError {
    WindowError::Shape {
        what,
        expected: expected.into(),
        actual: tensor.size(),
    }
}

/// Position of a window's top-left corner in the unpadded image, in pixels (may be negative).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WindowOffset {
    pub x_px: i64,
    pub y_px: i64,
}

/// A window of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WindowKey {
    pub image: usize,
    pub offset: WindowOffset,
}

/// Zero padding in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding {
    pub left_px: i64,
    pub top_px: i64,
    pub right_px: i64,
    pub bottom_px: i64,
}

/// How a frame is brought to the grid's image size before windowing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageResize {
    /// Straight to (image_height_px, image_width_px) (KITTI, TRI-PD).
    Exact,
    /// Shorter side to the image size, then the centre crop (MOVi-E's `Resize(266)` + `CenterCrop(266)`;
    /// requires a square image size).
    ShortSideThenCentreCrop,
}

/// The inference windows of a preset: the resized image, its padding and the window size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowGrid {
    /// The image after its resize (the prediction canvas).
    pub image_height_px: i64,
    pub image_width_px: i64,
    pub window_height_px: i64,
    pub window_width_px: i64,
    pub padding: Padding,
    pub resize: ImageResize,
}

impl WindowGrid {
    /// 378×1260, padded 126 px left and right, four 378×378 windows.
    pub fn kitti() -> Self {
        Self {
            image_height_px: 378,
            image_width_px: 1260,
            window_height_px: 378,
            window_width_px: 378,
            padding: Padding {
                left_px: 126,
                right_px: 126,
                ..Padding::default()
            },
            resize: ImageResize::Exact,
        }
    }

    /// 490×980, two 490×490 windows.
    pub fn tri_pd() -> Self {
        Self {
            image_height_px: 490,
            image_width_px: 980,
            window_height_px: 490,
            window_width_px: 490,
            padding: Padding::default(),
            resize: ImageResize::Exact,
        }
    }

    /// One 266×266 window.
    pub fn movi_e() -> Self {
        Self {
            image_height_px: 266,
            image_width_px: 266,
            window_height_px: 266,
            window_width_px: 266,
            padding: Padding::default(),
            resize: ImageResize::ShortSideThenCentreCrop,
        }
    }

    /// The grid at a backbone's patch ([`PatchScale::px`] on every pixel number): `WindowGrid::kitti()
    /// .scaled(PatchScale::for_window(378, 16))` is 432×1440 padded 144 px, four 432 px windows.
    pub fn scaled(self, scale: PatchScale) -> Self {
        let p = self.padding;
        Self {
            image_height_px: scale.px(self.image_height_px),
            image_width_px: scale.px(self.image_width_px),
            window_height_px: scale.px(self.window_height_px),
            window_width_px: scale.px(self.window_width_px),
            padding: Padding {
                left_px: scale.px(p.left_px),
                top_px: scale.px(p.top_px),
                right_px: scale.px(p.right_px),
                bottom_px: scale.px(p.bottom_px),
            },
            resize: self.resize,
        }
    }

    /// The canvas after padding, (height, width) in pixels.
    pub fn padded_size(&self) -> (i64, i64) {
        (
            self.image_height_px + self.padding.top_px + self.padding.bottom_px,
            self.image_width_px + self.padding.left_px + self.padding.right_px,
        )
    }

    /// Window offsets in the reference's visiting order (rows top to bottom, each left to right), stride =
    /// window size; an error if the windows do not tile the padded image.
    pub fn offsets(&self) -> Result<Vec<WindowOffset>, WindowError> {
        let (padded_height, padded_width) = self.padded_size();
        let (h, w) = (self.window_height_px, self.window_width_px);
        if h <= 0 || w <= 0 || padded_height % h != 0 || padded_width % w != 0 {
            return Err(WindowError::Tiling {
                window_height: h,
                window_width: w,
                padded_height,
                padded_width,
            });
        }
        Ok((0..padded_height / h)
            .flat_map(|row| {
                (0..padded_width / w).map(move |col| WindowOffset {
                    x_px: col * w - self.padding.left_px,
                    y_px: row * h - self.padding.top_px,
                })
            })
            .collect())
    }

    /// The size (height, width) an `h`×`w` image is resized to before the centre crop to the canvas.
    pub fn resize_target(&self, h: i64, w: i64) -> (i64, i64) {
        match self.resize {
            ImageResize::Exact => (self.image_height_px, self.image_width_px),
            ImageResize::ShortSideThenCentreCrop => {
                let side = self.image_height_px.min(self.image_width_px);
                if w <= h {
                    ((side as f64 * h as f64 / w as f64) as i64, side)
                } else {
                    (side, (side as f64 * w as f64 / h as f64) as i64)
                }
            }
        }
    }

    /// Resizes float images (…, 3, H, W) in [0, 1] to the grid's image size as the reference's inference
    /// transforms do under torchvision 0.15: bicubic, `align_corners = false`, no antialias, then clamped to
    /// [0, 1] (ocl-checkpoints.md item 7); for [`ImageResize::ShortSideThenCentreCrop`] the shorter side goes
    /// to the size (the longer to ⌊size · long / short⌋) and the centre is cropped (offsets rounded half to
    /// even, as Python's `round`).
    pub fn resize_image(&self, image: &Tensor) -> Result<Tensor, WindowError> {
        let size = image.size();
        let dims = size.len();
        if dims < 3 || size[..dims - 2].iter().product::<i64>() == 0 || size[dims - 2] == 0 || size[dims - 1] == 0 {
            return Err(shape_error("image", "(…, C, H, W), non-empty", image));
        }
        let (h, w) = (size[dims - 2], size[dims - 1]);
        let target = self.resize_target(h, w);
        let batch = image.f_reshape([-1, size[dims - 3], h, w])?.f_to_kind(Kind::Float)?;
        let resized = if (h, w) == target {
            batch
        } else {
            batch
                .f_upsample_bicubic2d([target.0, target.1], false, None, None)?
                .f_clamp(0.0, 1.0)?
        };
        let top = ((target.0 - self.image_height_px) as f64 / 2.0).round_ties_even() as i64;
        let left = ((target.1 - self.image_width_px) as f64 / 2.0).round_ties_even() as i64;
        let cropped = resized
            .f_narrow(2, top, self.image_height_px)?
            .f_narrow(3, left, self.image_width_px)?;
        let mut out_size = size[..dims - 2].to_vec();
        out_size.extend([self.image_height_px, self.image_width_px]);
        Ok(cropped.f_reshape(out_size)?)
    }

    /// Cuts an image (…, C, H, W) at the grid's image size into its windows (n, …, C, h, w), zero-padding
    /// first (the reference pads before normalising, so padded pixels are black).
    pub fn extract(&self, image: &Tensor) -> Result<Tensor, WindowError> {
        let size = image.size();
        let dims = size.len();
        if dims < 2 || size[dims - 2] != self.image_height_px || size[dims - 1] != self.image_width_px {
            return Err(shape_error(
                "image",
                format!("(…, {}, {})", self.image_height_px, self.image_width_px),
                image,
            ));
        }
        let p = self.padding;
        let padded = image.f_constant_pad_nd([p.left_px, p.right_px, p.top_px, p.bottom_px])?;
        let windows: Vec<Tensor> = self
            .offsets()?
            .iter()
            .map(|o| {
                padded
                    .f_narrow(dims as i64 - 2, o.y_px + p.top_px, self.window_height_px)?
                    .f_narrow(dims as i64 - 1, o.x_px + p.left_px, self.window_width_px)
            })
            .collect::<Result<_, _>>()?;
        Ok(Tensor::f_stack(&windows, 0)?)
    }
}

/// Clipped placement of a window in the image: rows/cols of the window and of the canvas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Placement {
    window_y: i64,
    window_x: i64,
    canvas_y: i64,
    canvas_x: i64,
    height: i64,
    width: i64,
}

fn placement(offset: WindowOffset, window: (i64, i64), canvas: (i64, i64)) -> Option<Placement> {
    let (wh, ww) = window;
    let (ch, cw) = canvas;
    let window_x = (-offset.x_px).max(0);
    let window_y = (-offset.y_px).max(0);
    let width = ww.min(cw - offset.x_px) - window_x;
    let height = wh.min(ch - offset.y_px) - window_y;
    let canvas_x = offset.x_px.max(0);
    let canvas_y = offset.y_px.max(0);
    (width > 0 && height > 0 && canvas_x < cw && canvas_y < ch).then_some(Placement {
        window_y,
        window_x,
        canvas_y,
        canvas_x,
        height,
        width,
    })
}

/// Joins per-window masks (n, C, h, w) into an (n·C, H, W) canvas (see the module docs); a window without
/// overlap with the canvas leaves its channels at 0.
pub fn join_windows(masks: &Tensor, offsets: &[WindowOffset], canvas: (i64, i64)) -> Result<Tensor, WindowError> {
    let size = masks.size();
    if size.len() != 4 || size[0] != offsets.len() as i64 {
        return Err(shape_error(
            "window masks",
            format!("({}, C, h, w)", offsets.len()),
            masks,
        ));
    }
    let (c, h, w) = (size[1], size[2], size[3]);
    let joined = Tensor::f_zeros([size[0] * c, canvas.0, canvas.1], (masks.kind(), masks.device()))?;
    for (index, &offset) in offsets.iter().enumerate() {
        if let Some(p) = placement(offset, (h, w), canvas) {
            let source = masks
                .f_get(index as i64)?
                .f_narrow(1, p.window_y, p.height)?
                .f_narrow(2, p.window_x, p.width)?;
            joined
                .f_narrow(0, index as i64 * c, c)?
                .f_narrow(1, p.canvas_y, p.height)?
                .f_narrow(2, p.canvas_x, p.width)?
                .f_copy_(&source)?;
        }
    }
    Ok(joined)
}

/// Options of [`merge_windows`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MergeOptions {
    /// Merge when the cosine similarity is strictly above this.
    pub similarity: f64,
    /// Let merged-away channels keep merging through the channel that absorbed them (fixes chains across
    /// three or more windows).
    pub merge_chains: bool,
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            similarity: MERGE_SIMILARITY,
            merge_chains: false,
        }
    }
}

/// One merge: `removed`'s pixels went to `kept`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChannelMerge {
    pub kept: usize,
    pub removed: usize,
    /// Cosine similarity of the two compared slot features.
    pub similarity: f32,
}

/// The merged canvas: the channel of every pixel (row-major H×W), with the channel layout.
#[derive(Clone, Debug, PartialEq)]
pub struct MergedCanvas {
    pub height: usize,
    pub width: usize,
    pub windows: usize,
    pub channels_per_window: usize,
    pub channel_of_pixel: Vec<u32>,
    /// In the order they happened.
    pub merges: Vec<ChannelMerge>,
}

impl MergedCanvas {
    /// (window, channel within the window) of a canvas channel.
    pub fn window_channel(&self, channel: usize) -> (usize, usize) {
        (channel / self.channels_per_window, channel % self.channels_per_window)
    }

    /// The one-hot canvas (n·C, H, W) as float32, as the reference's `MergeWindows` returns it.
    pub fn to_one_hot(&self) -> Result<Tensor, tch::TchError> {
        let ids: Vec<i64> = self.channel_of_pixel.iter().map(|&c| i64::from(c)).collect();
        let channels = (self.windows * self.channels_per_window) as i64;
        Tensor::f_from_slice(&ids)?
            .f_one_hot(channels)?
            .f_to_kind(Kind::Float)?
            .f_transpose(0, 1)?
            .f_reshape([channels, self.height as i64, self.width as i64])
    }
}

/// Edge channel sets of one window: left, right, top, bottom.
#[derive(Clone, Debug, Default)]
struct EdgeChannels {
    left: Vec<usize>,
    right: Vec<usize>,
    top: Vec<usize>,
    bottom: Vec<usize>,
}

fn edge_channels(
    ids: &[u32],
    canvas: (i64, i64),
    offset: WindowOffset,
    window: (i64, i64),
    channels: std::ops::Range<usize>,
) -> EdgeChannels {
    let Some(p) = placement(offset, window, canvas) else {
        return EdgeChannels::default();
    };
    let width = canvas.1 as usize;
    let collect = |pixels: &mut dyn Iterator<Item = (i64, i64)>| -> Vec<usize> {
        let mut found: Vec<usize> = pixels
            .map(|(y, x)| ids[y as usize * width + x as usize] as usize)
            .filter(|&c| c > channels.start && c < channels.end)
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    };
    let (y0, y1, x0, x1) = (
        p.canvas_y,
        p.canvas_y + p.height - 1,
        p.canvas_x,
        p.canvas_x + p.width - 1,
    );
    EdgeChannels {
        left: collect(&mut (y0..=y1).map(|y| (y, x0))),
        right: collect(&mut (y0..=y1).map(|y| (y, x1))),
        top: collect(&mut (x0..=x1).map(|x| (y0, x))),
        bottom: collect(&mut (x0..=x1).map(|x| (y1, x))),
    }
}

/// Horizontal and vertical neighbour pairs (first, second, horizontal?) in the reference's order.
fn adjacency(offsets: &[WindowOffset], window: (i64, i64)) -> Vec<(usize, usize, bool)> {
    let mut pairs = Vec::new();
    for i in 0..offsets.len() {
        for j in i + 1..offsets.len() {
            let (a, b) = (offsets[i], offsets[j]);
            if a.y_px == b.y_px && (a.x_px - b.x_px).abs() == window.1 {
                pairs.push(if a.x_px < b.x_px { (i, j, true) } else { (j, i, true) });
            }
            if a.x_px == b.x_px && (a.y_px - b.y_px).abs() == window.0 {
                pairs.push(if a.y_px < b.y_px { (i, j, false) } else { (j, i, false) });
            }
        }
    }
    pairs
}

/// Cosine with ‖f‖ + 1e-8 in float32, as `MergeWindows._cosine_similarity`.
fn merge_cosine(a: &[f32], b: &[f32]) -> f32 {
    let norm = |f: &[f32]| f.iter().map(|x| x * x).sum::<f32>().sqrt() + MERGE_COSINE_EPSILON;
    let (na, nb) = (norm(a), norm(b));
    a.iter().zip(b).map(|(x, y)| (x / na) * (y / nb)).sum()
}

/// `MergeWindows` (see the module docs): `joined` (n·C, H, W) or (1, n·C, H, W) from [`join_windows`],
/// `slot_features` (n, K, …) (trailing dimensions flattened into one feature vector, as the reference's
/// cosine sums over all of them), `offsets` of the n windows, `window` = (height, width).
pub fn merge_windows(
    joined: &Tensor,
    slot_features: &Tensor,
    offsets: &[WindowOffset],
    window: (i64, i64),
    options: &MergeOptions,
) -> Result<MergedCanvas, WindowError> {
    let joined = if joined.dim() == 4 && joined.size()[0] == 1 {
        joined.f_squeeze_dim(0)?
    } else {
        joined.shallow_clone()
    };
    let size = joined.size();
    if size.len() != 3 {
        return Err(shape_error("joined masks", "(n·C, H, W)", &joined));
    }
    let n = offsets.len();
    if n == 0 || size[0] % n as i64 != 0 {
        return Err(WindowError::Channels {
            channels: size[0],
            windows: n,
        });
    }
    let features_size = slot_features.size();
    if features_size.len() < 2 || features_size[0] != n as i64 {
        return Err(shape_error("slot features", format!("({n}, K, …)"), slot_features));
    }
    let slots = features_size[1];
    let per_window = (size[0] / n as i64) as usize;
    let (height, width) = (size[1], size[2]);
    let channel_of_pixel: Vec<u32> =
        Vec::<i64>::try_from(joined.f_argmax(0, false)?.f_flatten(0, -1)?.f_to_device(tch::Device::Cpu)?)?
            .into_iter()
            .map(|c| c as u32)
            .collect();
    let feature_len: i64 = features_size[2..].iter().product();
    let features = Vec::<f32>::try_from(
        slot_features
            .f_to_kind(Kind::Float)?
            .f_to_device(tch::Device::Cpu)?
            .f_reshape([n as i64 * slots * feature_len])?,
    )?;
    let feature_len = feature_len as usize;
    let feature = |channel: usize| -> Result<&[f32], WindowError> {
        let w = channel / per_window;
        let index = channel % per_window;
        if index == 0 || index > slots as usize {
            return Err(WindowError::SlotFeature {
                window: w,
                channel,
                index: index.wrapping_sub(1),
                slots,
            });
        }
        let start = (w * slots as usize + index - 1) * feature_len;
        Ok(&features[start..start + feature_len])
    };

    let edges: Vec<EdgeChannels> = offsets
        .iter()
        .enumerate()
        .map(|(w, &o)| {
            edge_channels(
                &channel_of_pixel,
                (height, width),
                o,
                window,
                w * per_window..(w + 1) * per_window,
            )
        })
        .collect();

    let total = n * per_window;
    // owner[c]: the channel now holding the pixels `c` started with.
    let mut owner: Vec<usize> = (0..total).collect();
    let mut merged = vec![false; total];
    let mut merges = Vec::new();
    for (wi, wj, horizontal) in adjacency(offsets, window) {
        let (from_i, from_j) = if horizontal {
            (&edges[wi].right, &edges[wj].left)
        } else {
            (&edges[wi].bottom, &edges[wj].top)
        };
        let usable = |c: &usize| options.merge_chains || !merged[*c];
        let side_i: Vec<usize> = from_i.iter().copied().filter(usable).collect();
        let side_j: Vec<usize> = from_j.iter().copied().filter(usable).collect();
        for &ci in &side_i {
            if !options.merge_chains && merged[ci] {
                continue;
            }
            for &cj in &side_j {
                if !options.merge_chains && merged[cj] {
                    continue;
                }
                let (a, b) = if options.merge_chains {
                    (owner[ci], owner[cj])
                } else {
                    (ci, cj)
                };
                if a == b {
                    continue;
                }
                let similarity = merge_cosine(feature(ci)?, feature(cj)?);
                if f64::from(similarity) > options.similarity {
                    let (kept, removed) = (a.min(b), a.max(b));
                    for o in owner.iter_mut() {
                        if *o == removed {
                            *o = kept;
                        }
                    }
                    merged[removed] = true;
                    merges.push(ChannelMerge {
                        kept,
                        removed,
                        similarity,
                    });
                }
            }
        }
    }
    let channel_of_pixel = channel_of_pixel.into_iter().map(|c| owner[c as usize] as u32).collect();
    Ok(MergedCanvas {
        height: height as usize,
        width: width as usize,
        windows: n,
        channels_per_window: per_window,
        channel_of_pixel,
        merges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn offsets_x(xs: &[i64]) -> Vec<WindowOffset> {
        xs.iter().map(|&x_px| WindowOffset { x_px, y_px: 0 }).collect()
    }

    /// Per-window masks (n, C, h, w) where `owner(window, y, x)` is the channel (within the window) set to 1.
    fn window_masks(n: i64, c: i64, h: i64, w: i64, owner: impl Fn(i64, i64, i64) -> i64) -> Tensor {
        let mut data = vec![0f32; (n * c * h * w) as usize];
        for win in 0..n {
            for y in 0..h {
                for x in 0..w {
                    let ch = owner(win, y, x);
                    data[(((win * c + ch) * h + y) * w + x) as usize] = 1.0;
                }
            }
        }
        Tensor::from_slice(&data).reshape([n, c, h, w])
    }

    fn features(rows: &[[f32; 2]], n: i64) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).reshape([n, -1, 2])
    }

    #[test]
    fn presets_have_the_reference_offsets() {
        let kitti = WindowGrid::kitti().offsets().expect("kitti");
        assert_eq!(kitti, offsets_x(&[-126, 252, 630, 1008]));
        assert_eq!(WindowGrid::tri_pd().offsets().expect("pd"), offsets_x(&[0, 490]));
        assert_eq!(WindowGrid::movi_e().offsets().expect("movi"), offsets_x(&[0]));
        let broken = WindowGrid {
            window_width_px: 500,
            ..WindowGrid::tri_pd()
        };
        assert!(matches!(broken.offsets(), Err(WindowError::Tiling { .. })));
    }

    #[test]
    fn patch_16_grids_keep_the_token_grid() {
        let kitti = WindowGrid::kitti().scaled(PatchScale::for_window(378, 16));
        assert_eq!((kitti.image_height_px, kitti.image_width_px, kitti.window_width_px), (432, 1440, 432));
        assert_eq!(kitti.offsets().expect("kitti"), offsets_x(&[-144, 288, 720, 1152]));
        let pd = WindowGrid::tri_pd().scaled(PatchScale::for_window(490, 16));
        assert_eq!(pd.offsets().expect("pd"), offsets_x(&[0, 560]));
        assert_eq!((pd.image_height_px, pd.image_width_px), (560, 1120));
        let movi = WindowGrid::movi_e().scaled(PatchScale::for_window(266, 16));
        assert_eq!((movi.image_height_px, movi.window_width_px), (304, 304));
        assert_eq!(WindowGrid::kitti().scaled(PatchScale::for_window(378, 14)), WindowGrid::kitti());
    }

    #[test]
    fn images_are_resized_bicubic_clamped_and_centre_cropped() {
        let image = Tensor::rand([3, 10, 31], (Kind::Float, Device::Cpu));
        let kitti = WindowGrid::kitti().resize_image(&image).expect("resize");
        let expected = image
            .unsqueeze(0)
            .upsample_bicubic2d([378, 1260], false, None, None)
            .clamp(0.0, 1.0)
            .squeeze_dim(0);
        assert!(kitti.equal(&expected));
        // MOVi-E: 10×31 → 266×824 (⌊266·31/10⌋), centre crop from column round(279) = 279.
        let movi = WindowGrid::movi_e().resize_image(&image.unsqueeze(0)).expect("resize");
        assert_eq!(movi.size(), vec![1, 3, 266, 266]);
        let full = image
            .unsqueeze(0)
            .upsample_bicubic2d([266, 824], false, None, None)
            .clamp(0.0, 1.0);
        assert!(movi.equal(&full.narrow(3, 279, 266)));
        assert!(WindowGrid::kitti()
            .resize_image(&Tensor::zeros([3, 0, 4], (Kind::Float, Device::Cpu)))
            .is_err());
    }

    #[test]
    fn extract_pads_with_zeros_and_cuts_in_order() {
        let grid = WindowGrid::kitti();
        let image = Tensor::ones([3, 378, 1260], (Kind::Float, Device::Cpu));
        let windows = grid.extract(&image).expect("windows");
        assert_eq!(windows.size(), vec![4, 3, 378, 378]);
        // Window 0 starts with 126 padded (zero) columns; the last window ends with 126 of them.
        let column_sums = windows.sum_dim_intlist([1, 2].as_slice(), false, Kind::Float);
        assert_eq!(column_sums.double_value(&[0, 125]), 0.0);
        assert_eq!(column_sums.double_value(&[0, 126]), 3.0 * 378.0);
        assert_eq!(column_sums.double_value(&[3, 251]), 3.0 * 378.0);
        assert_eq!(column_sums.double_value(&[3, 252]), 0.0);
        assert!(grid
            .extract(&Tensor::ones([3, 10, 10], (Kind::Float, Device::Cpu)))
            .is_err());
    }

    #[test]
    fn join_places_each_window_in_its_own_block_clipped_to_the_image() {
        // Image 2×8 padded by 2 left and right: windows of 4 at x = −2, 2, 6; window w's masks hold w + 1.
        let grid = WindowGrid {
            image_height_px: 2,
            image_width_px: 8,
            window_height_px: 2,
            window_width_px: 4,
            padding: Padding {
                left_px: 2,
                right_px: 2,
                ..Padding::default()
            },
            resize: ImageResize::Exact,
        };
        let offsets = grid.offsets().expect("offsets");
        assert_eq!(offsets, offsets_x(&[-2, 2, 6]));
        let masks = Tensor::arange_start(1, 4, (Kind::Float, Device::Cpu))
            .reshape([3, 1, 1, 1])
            .repeat([1, 2, 2, 4]);
        let joined = join_windows(&masks, &offsets, (2, 8)).expect("join");
        assert_eq!(joined.size(), vec![6, 2, 8]);
        let row = |channel: i64| Vec::<f32>::try_from(joined.get(channel).get(0)).expect("row");
        assert_eq!(row(0), vec![1., 1., 0., 0., 0., 0., 0., 0.]);
        assert_eq!(row(3), vec![0., 0., 2., 2., 2., 2., 0., 0.]);
        assert_eq!(row(5), vec![0., 0., 0., 0., 0., 0., 3., 3.]);
        assert!(join_windows(&masks, &offsets[..2], (2, 8)).is_err());
    }

    /// Three 4×4 windows side by side (image 4×12), 3 channels each (background + 2 slots). One object spans
    /// all three: window 0 channel 1 in columns 2-3, window 1 channel 4 in all its columns, window 2 channel 7
    /// in columns 8-9; the three share one slot feature, every other slot is orthogonal to it.
    fn chain_canvas() -> (Tensor, Tensor, Vec<WindowOffset>) {
        let masks = window_masks(3, 3, 4, 4, |win, _, x| match (win, x) {
            (0, 2..=3) | (1, _) | (2, 0..=1) => 1,
            _ => 0,
        });
        let offsets = offsets_x(&[0, 4, 8]);
        let joined = join_windows(&masks, &offsets, (4, 12)).expect("join");
        let feats = features(&[[1., 0.], [0., 1.], [1., 0.], [0., 1.], [1., 0.], [0., 1.]], 3);
        (joined, feats, offsets)
    }

    #[test]
    fn a_chain_across_three_windows_breaks_as_in_the_reference() {
        let (joined, feats, offsets) = chain_canvas();
        let merged = merge_windows(&joined, &feats, &offsets, (4, 4), &MergeOptions::default()).expect("merge");
        // (0, 1): channel 4 goes into 1. (1, 2): 4 is merged already, so channel 7 stays on its own.
        assert_eq!(
            merged.merges.iter().map(|m| (m.kept, m.removed)).collect::<Vec<_>>(),
            vec![(1, 4)]
        );
        let row: Vec<u32> = merged.channel_of_pixel[..12].to_vec();
        assert_eq!(row, vec![0, 0, 1, 1, 1, 1, 1, 1, 7, 7, 6, 6]);
        assert_eq!(merged.window_channel(7), (2, 1));
        let one_hot = merged.to_one_hot().unwrap();
        assert_eq!(one_hot.size(), vec![9, 4, 12]);
        assert_eq!(one_hot.sum(Kind::Float).double_value(&[]), 48.0);
        assert_eq!(one_hot.get(4).sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn merge_chains_joins_all_three_parts() {
        let (joined, feats, offsets) = chain_canvas();
        let options = MergeOptions {
            merge_chains: true,
            ..MergeOptions::default()
        };
        let merged = merge_windows(&joined, &feats, &offsets, (4, 4), &options).expect("merge");
        assert_eq!(
            merged.merges.iter().map(|m| (m.kept, m.removed)).collect::<Vec<_>>(),
            vec![(1, 4), (1, 7)]
        );
        assert_eq!(merged.channel_of_pixel[..12], [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 6, 6]);
    }

    #[test]
    fn kept_channels_absorb_several_and_dissimilar_ones_stay_apart() {
        // Two windows of 4×4, 4 channels each. Window 0: channel 1 in rows 0-1, channel 2 in rows 2-3 of its
        // right half; window 1: channels 5 and 6 likewise on its left half, except its pixel (0, 0), which is
        // channel 7.
        let masks = window_masks(2, 4, 4, 4, |win, y, x| match (win, y, x) {
            (0, 0..=1, 2..=3) => 1,
            (0, 2..=3, 2..=3) => 2,
            (1, 0, 0) => 3,
            (1, 0..=1, 0..=1) => 1,
            (1, 2..=3, 0..=1) => 2,
            _ => 0,
        });
        let offsets = offsets_x(&[0, 4]);
        let joined = join_windows(&masks, &offsets, (4, 8)).expect("join");
        // Slot features: window 0 slots (1, 2, 3) = a, b, c; window 1 = a', b', a''.
        let feats = features(&[[1., 0.], [0., 1.], [-1., 0.], [0.9, 0.1], [0.1, 0.9], [1., 0.01]], 2);
        let merged = merge_windows(&joined, &feats, &offsets, (4, 4), &MergeOptions::default()).expect("merge");
        // Channel 1 takes 5 and 7 (both similar to a), channel 2 takes 6; ascending visiting order.
        assert_eq!(
            merged.merges.iter().map(|m| (m.kept, m.removed)).collect::<Vec<_>>(),
            vec![(1, 5), (1, 7), (2, 6)]
        );
        let mut channels = merged.channel_of_pixel.clone();
        channels.sort_unstable();
        channels.dedup();
        assert_eq!(channels, vec![0, 1, 2, 4]);
        // The bar is strict and dissimilar features never merge.
        let strict = MergeOptions {
            similarity: 0.999,
            ..MergeOptions::default()
        };
        let merged = merge_windows(&joined, &feats, &offsets, (4, 4), &strict).expect("merge");
        assert_eq!(
            merged.merges.iter().map(|m| (m.kept, m.removed)).collect::<Vec<_>>(),
            vec![(1, 7)]
        );
    }

    #[test]
    fn vertical_neighbours_merge_and_argmax_ties_go_to_the_lowest_channel() {
        // Two windows stacked (image 8×4): window 0's channel 1 on its bottom row, window 1's channel 4 on
        // its top row, same feature.
        let masks = window_masks(2, 3, 4, 4, |win, y, _| match (win, y) {
            (0, 3) | (1, 0) => 1,
            _ => 0,
        });
        let offsets = vec![WindowOffset { x_px: 0, y_px: 0 }, WindowOffset { x_px: 0, y_px: 4 }];
        let joined = join_windows(&masks, &offsets, (8, 4)).expect("join");
        // A tie inside window 1 at (5, 0): channels 3 and 5 both 1 → channel 3.
        let _ = joined.get(5).get(5).get(0).fill_(1.0);
        let feats = features(&[[1., 0.], [0., 1.], [1., 0.], [0., 1.]], 2);
        let merged = merge_windows(&joined, &feats, &offsets, (4, 4), &MergeOptions::default()).expect("merge");
        assert_eq!(
            merged.merges.iter().map(|m| (m.kept, m.removed)).collect::<Vec<_>>(),
            vec![(1, 4)]
        );
        assert_eq!(merged.channel_of_pixel[4 * 4], 1);
        assert_eq!(merged.channel_of_pixel[5 * 4], 3);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (joined, feats, offsets) = chain_canvas();
        assert!(merge_windows(&joined, &feats, &offsets[..2], (4, 4), &MergeOptions::default()).is_err());
        let short = Tensor::zeros([3, 0, 2], (Kind::Float, Device::Cpu));
        assert!(matches!(
            merge_windows(&joined, &short, &offsets, (4, 4), &MergeOptions::default()),
            Err(WindowError::SlotFeature { .. })
        ));
    }
}
