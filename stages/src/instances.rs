//! Moving foreground → instances, exactly as the reference (`utils/data.py:215-340`,
//! `utils/binary_map2_instances.py:assign_instance_ids`), quirks included.
//!
//! 1. **Foreground**: the reference writes the flow magnitude as text with `%.3f` and thresholds the parsed
//!    value, so a pixel is foreground iff `round3(|flow|) > 2.5` (strict), i.e. |flow| ≥ 2.5005. mrdino finds
//!    once per parameter set the smallest float32 magnitude whose rounding passes ([`ForegroundTest`]) and
//!    compares against it: the same decision for every float32, without formatting text.
//! 2. Frames with fewer than `min_fg_fraction·H·W` foreground pixels (strict) carry no label; segments left
//!    with fewer than `min_segment_frames` labelled frames are dropped (decided by the pipeline, which sees the
//!    whole segment).
//! 3. **Components**: 8-connected, numbered in raster order of their first pixel (skimage `measure.label`).
//! 4. **Edge test**: the horizontal-only Sobel (`scipy.ndimage.sobel`, axis −1: [−1 0 1] along x, [1 2 1] along
//!    y, `reflect` border) of u and of v, edge = sqrt(gx_u² + gx_v²) in float32; a component is split iff some
//!    *interior* pixel has edge > 20 (strict), interior meaning the radius-10 disk around it lies inside the
//!    component, with pixels outside the image counting as inside (erosion with `border_value=True`). The
//!    vertical derivative is never used, so flow discontinuities across horizontal boundaries do not split.
//!    Performance: the reference recomputes two full-image Sobel filters and a full-image 21×21 erosion for
//!    every component; here the Sobel is evaluated only at the component's pixels and the disk is checked only
//!    around pixels whose edge exceeds the threshold, stopping at the first interior one — the same decision.
//! 5. **Split**: HDBSCAN (min_cluster_size 30, min_samples 30 in the Python library's counting, EOM, no single
//!    cluster) on float64 features `[u, v, 60·row, 60·col, 100·bin]`, bin = floor(((atan2(v,u) + 2π) mod 2π) /
//!    (2π/16)) in float32; each cluster in ascending label order becomes an instance; noise becomes background.
//! 6. Instances under 100 px are removed. Remaining instances are numbered 1..N in the reference's visiting
//!    order (the reference leaves gaps where it removed small ones; the order is the same).

use serde::{Deserialize, Serialize};

use crate::flow::FlowField;
use crate::hdbscan::{cluster_pixels, HdbscanParams};

/// Parameters of foreground thresholding and instance separation (one part of the preset).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceParams {
    /// Foreground threshold on the flow magnitude in px (strict `>`). Reference: 2.5.
    pub fg_threshold_px: f64,
    /// Decimals the magnitude is rounded to before the threshold test (the reference's `%.3f` CSV round trip):
    /// `Some(3)`. `None` compares the raw magnitude (an opt-in departure from the reference).
    pub fg_round_decimals: Option<u32>,
    /// Frames with fewer foreground pixels than this fraction of H·W (strict) carry no label. Reference: 0.0005.
    pub min_fg_fraction: f64,
    /// Segments with fewer labelled frames than this are dropped. Reference: 3.
    pub min_segment_frames: usize,
    /// Interior edge threshold (strict `>`). Reference: 20.
    pub edge_threshold: f32,
    /// Radius of the erosion disk that defines a component's interior. Reference: 10.
    pub erosion_radius_px: usize,
    /// Weight of (row, col) in the HDBSCAN features. Reference: 60.
    pub spatial_weight: f64,
    /// Weight of the direction bin in the HDBSCAN features. Reference: 100.
    pub direction_weight: f64,
    /// Number of flow-direction bins. Reference: 16.
    pub direction_bins: usize,
    /// HDBSCAN min_cluster_size. Reference: 30.
    pub min_cluster_size: usize,
    /// HDBSCAN min_samples, Python `hdbscan` counting (self excluded). Reference: 30 (the library default).
    pub min_samples: usize,
    /// Instances with fewer pixels are removed (strict). Reference: 100.
    pub min_instance_px: usize,
}

/// How an instance was formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A whole connected component (no interior flow edge).
    Component,
    /// One HDBSCAN cluster of a component with an interior flow edge.
    Hdbscan,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Component => "component",
            Origin::Hdbscan => "hdbscan",
        }
    }
}

/// One instance of a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// 1..N within the frame.
    pub id: u32,
    /// 1-based label of the connected component it comes from (raster order of first pixel).
    pub component: u32,
    /// The HDBSCAN cluster label within the component, for `Origin::Hdbscan`.
    pub hdbscan_label: Option<i32>,
    pub origin: Origin,
    /// Row-major pixel indices (row·W + col), ascending.
    pub pixels: Vec<u32>,
    /// COCO box [x, y, w, h] in pixels.
    pub bbox_xywh: [u32; 4],
    /// Mean flow magnitude over the instance's pixels.
    pub mean_flow_px: f32,
}

/// The foreground decision `round(|flow|, decimals) > threshold`, as one float32 comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForegroundTest {
    /// Smallest float32 magnitude that is foreground.
    pub min_magnitude: f32,
}

impl ForegroundTest {
    pub fn new(threshold_px: f64, round_decimals: Option<u32>) -> Self {
        let passes = |m: f32| -> bool {
            match round_decimals {
                Some(d) => {
                    let text = format!("{:.*}", d as usize, f64::from(m));
                    text.parse::<f64>().map(|r| r > threshold_px).unwrap_or(false)
                }
                None => f64::from(m) > threshold_px,
            }
        };
        if threshold_px < 0.0 {
            return Self { min_magnitude: 0.0 };
        }
        // Non-negative float32s are ordered like their bit patterns, and the test is monotone in m.
        let (mut lo, mut hi) = (0u32, f32::MAX.to_bits());
        if !passes(f32::from_bits(hi)) {
            return Self {
                min_magnitude: f32::INFINITY,
            };
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if passes(f32::from_bits(mid)) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Self {
            min_magnitude: f32::from_bits(lo),
        }
    }

    #[inline]
    pub fn is_foreground(&self, magnitude: f32) -> bool {
        magnitude >= self.min_magnitude
    }

    /// Foreground mask (row-major) and its pixel count.
    pub fn mask(&self, magnitude: &[f32]) -> (Vec<bool>, usize) {
        let mask: Vec<bool> = magnitude.iter().map(|&m| self.is_foreground(m)).collect();
        let count = mask.iter().filter(|&&x| x).count();
        (mask, count)
    }
}

impl InstanceParams {
    /// The reference's values (`utils/data.py`, `utils/binary_map2_instances.py`); the same for every dataset.
    pub fn reference() -> Self {
        InstanceParams {
            fg_threshold_px: 2.5,
            fg_round_decimals: Some(3),
            min_fg_fraction: 0.0005,
            min_segment_frames: 3,
            edge_threshold: 20.0,
            erosion_radius_px: 10,
            spatial_weight: 60.0,
            direction_weight: 100.0,
            direction_bins: 16,
            min_cluster_size: 30,
            min_samples: 30,
            min_instance_px: 100,
        }
    }

    pub fn foreground_test(&self) -> ForegroundTest {
        ForegroundTest::new(self.fg_threshold_px, self.fg_round_decimals)
    }

    /// Whether a frame has enough foreground to carry a label (`count < fraction·H·W` drops it).
    pub fn enough_foreground(&self, fg_count: usize, height: usize, width: usize) -> bool {
        (fg_count as f64) >= self.min_fg_fraction * (height * width) as f64
    }
}

/// 8-connected components of a mask, labelled 1.. in raster order of their first pixel; 0 = background.
/// Returns the label image and, per component, its pixels in raster order.
pub fn connected_components(mask: &[bool], height: usize, width: usize) -> (Vec<u32>, Vec<Vec<u32>>) {
    let mut provisional = vec![0u32; height * width];
    let mut parent: Vec<u32> = vec![0];
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            parent[x as usize] = parent[parent[x as usize] as usize];
            x = parent[x as usize];
        }
        x
    }
    // Foreground pixels in raster order; the second pass visits only these.
    let mut foreground: Vec<u32> = Vec::new();
    for r in 0..height {
        let row = &mask[r * width..(r + 1) * width];
        let mut c = 0;
        while c < width {
            // Skip background runs quickly: most of a frame is background.
            match row[c..].iter().position(|&m| m) {
                Some(offset) => c += offset,
                None => break,
            }
            let i = r * width + c;
            let mut label = 0u32;
            let mut neighbours = [0u32; 4];
            if c > 0 {
                neighbours[0] = provisional[i - 1];
            }
            if r > 0 {
                let up = i - width;
                neighbours[1] = provisional[up];
                if c > 0 {
                    neighbours[2] = provisional[up - 1];
                }
                if c + 1 < width {
                    neighbours[3] = provisional[up + 1];
                }
            }
            for &n in &neighbours {
                if n == 0 {
                    continue;
                }
                if label == 0 {
                    label = find(&mut parent, n);
                } else {
                    let (a, b) = (find(&mut parent, label), find(&mut parent, n));
                    if a != b {
                        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                        parent[hi as usize] = lo;
                        label = lo;
                    }
                }
            }
            if label == 0 {
                label = parent.len() as u32;
                parent.push(label);
            }
            provisional[i] = label;
            foreground.push(i as u32);
            c += 1;
        }
    }
    let mut final_of_root = vec![0u32; parent.len()];
    let mut pixels: Vec<Vec<u32>> = Vec::new();
    for &i in &foreground {
        let p = &mut provisional[i as usize];
        let root = find(&mut parent, *p) as usize;
        if final_of_root[root] == 0 {
            pixels.push(Vec::new());
            final_of_root[root] = pixels.len() as u32;
        }
        *p = final_of_root[root];
        pixels[*p as usize - 1].push(i);
    }
    (provisional, pixels)
}

/// Horizontal Sobel edge strength sqrt(gx_u² + gx_v²) at one pixel, as `scipy.ndimage.sobel(axis=-1)` with
/// `reflect` borders computes it in float32 (each 1-D pass in double, stored as float32).
#[inline]
pub fn sobel_x_edge(flow: &FlowField, row: usize, col: usize) -> f32 {
    let (h, w) = (flow.height, flow.width);
    let left = col.saturating_sub(1);
    let right = if col + 1 < w { col + 1 } else { w - 1 };
    let up = row.saturating_sub(1);
    let down = if row + 1 < h { row + 1 } else { h - 1 };
    let channel = |k: usize| -> f32 {
        let diff = |r: usize| -> f32 {
            let base = 2 * r * w + k;
            (f64::from(flow.uv[base + 2 * right]) - f64::from(flow.uv[base + 2 * left])) as f32
        };
        (f64::from(diff(up)) + 2.0 * f64::from(diff(row)) + f64::from(diff(down))) as f32
    };
    let (gu, gv) = (channel(0), channel(1));
    (gu * gu + gv * gv).sqrt()
}

/// Offsets (drow, dcol) of a disk of the given radius: dx² + dy² ≤ r² (skimage `disk`).
pub fn disk_offsets(radius: usize) -> Vec<(i32, i32)> {
    let r = radius as i32;
    let mut out = Vec::new();
    for dy in -r..=r {
        for dx in -r..=r {
            if dx * dx + dy * dy <= r * r {
                out.push((dy, dx));
            }
        }
    }
    out
}

/// Whether the disk around (row, col) lies in component `label` (pixels outside the image count as inside).
fn is_interior(
    labels: &[u32],
    height: usize,
    width: usize,
    row: usize,
    col: usize,
    label: u32,
    disk: &[(i32, i32)],
) -> bool {
    disk.iter().all(|&(dy, dx)| {
        let (r, c) = (row as i32 + dy, col as i32 + dx);
        r < 0 || c < 0 || r >= height as i32 || c >= width as i32 || labels[r as usize * width + c as usize] == label
    })
}

/// Flow-direction bin of one pixel, computed in float32 as the reference's numpy code does.
#[inline]
pub fn direction_bin(u: f32, v: f32, bins: usize) -> u32 {
    let tau = std::f32::consts::TAU;
    let angle = (v.atan2(u) + tau) % tau;
    let bin_size = (std::f64::consts::TAU / bins as f64) as f32;
    (angle / bin_size).floor() as u32
}

/// Whether a component has an interior pixel with a horizontal flow edge above the threshold.
pub fn has_interior_edge(
    flow: &FlowField,
    labels: &[u32],
    label: u32,
    pixels: &[u32],
    params: &InstanceParams,
    disk: &[(i32, i32)],
) -> bool {
    let (h, w) = (flow.height, flow.width);
    pixels.iter().any(|&p| {
        let (row, col) = (p as usize / w, p as usize % w);
        sobel_x_edge(flow, row, col) > params.edge_threshold && is_interior(labels, h, w, row, col, label, disk)
    })
}

/// Splits the foreground of one frame into instances.
pub fn separate_instances(flow: &FlowField, fg: &[bool], params: &InstanceParams) -> Vec<Instance> {
    let (labels, components) = connected_components(fg, flow.height, flow.width);
    separate_groups(flow, &labels, components, params)
}

/// Steps 4–6 on given groups of pixels: `labels` is the label image (group k has label k + 1) and `groups`
/// their pixels in raster order — the 8-connected components for the reference, or the groups of an opt-in
/// rule ([`crate::rules`]). Each group with an interior flow edge is split by HDBSCAN; instances under the
/// size minimum are dropped and the rest numbered 1..N.
pub fn separate_groups(flow: &FlowField, labels: &[u32], components: Vec<Vec<u32>>, params: &InstanceParams) -> Vec<Instance> {
    let w = flow.width;
    let disk = disk_offsets(params.erosion_radius_px);
    let hdbscan_params = HdbscanParams {
        min_cluster_size: params.min_cluster_size,
        min_samples: params.min_samples,
    };
    let mut groups: Vec<(u32, Option<i32>, Vec<u32>)> = Vec::new();
    for (k, pixels) in components.into_iter().enumerate() {
        let label = k as u32 + 1;
        if !has_interior_edge(flow, labels, label, &pixels, params, &disk) {
            groups.push((label, None, pixels));
            continue;
        }
        let features: Vec<[f64; 5]> = pixels
            .iter()
            .map(|&p| {
                let (row, col) = (p as usize / w, p as usize % w);
                let (u, v) = (flow.u(row, col), flow.v(row, col));
                [
                    f64::from(u),
                    f64::from(v),
                    params.spatial_weight * row as f64,
                    params.spatial_weight * col as f64,
                    params.direction_weight * f64::from(direction_bin(u, v, params.direction_bins)),
                ]
            })
            .collect();
        let grid_pixels: Vec<(u32, u32)> = pixels.iter().map(|&p| (p / w as u32, p % w as u32)).collect();
        let cluster_labels = cluster_pixels(&features, &grid_pixels, params.spatial_weight, &hdbscan_params);
        let max_label = cluster_labels.iter().copied().max().unwrap_or(-1);
        for cl in 0..=max_label {
            let members: Vec<u32> = pixels
                .iter()
                .zip(&cluster_labels)
                .filter(|(_, &l)| l == cl)
                .map(|(&p, _)| p)
                .collect();
            if !members.is_empty() {
                groups.push((label, Some(cl), members));
            }
        }
    }
    let mut out = Vec::new();
    for (component, hdbscan_label, pixels) in groups {
        if pixels.len() < params.min_instance_px {
            continue;
        }
        out.push(make_instance(
            flow,
            out.len() as u32 + 1,
            component,
            hdbscan_label,
            pixels,
        ));
    }
    out
}

fn make_instance(flow: &FlowField, id: u32, component: u32, hdbscan_label: Option<i32>, pixels: Vec<u32>) -> Instance {
    let w = flow.width as u32;
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    let mut sum = 0.0f64;
    for &p in &pixels {
        let (r, c) = (p / w, p % w);
        x0 = x0.min(c);
        x1 = x1.max(c);
        y0 = y0.min(r);
        y1 = y1.max(r);
        let (u, v) = (flow.uv[2 * p as usize], flow.uv[2 * p as usize + 1]);
        sum += f64::from((u * u + v * v).sqrt());
    }
    Instance {
        id,
        component,
        hdbscan_label,
        origin: if hdbscan_label.is_some() {
            Origin::Hdbscan
        } else {
            Origin::Component
        },
        bbox_xywh: [x0, y0, x1 - x0 + 1, y1 - y0 + 1],
        mean_flow_px: (sum / pixels.len() as f64) as f32,
        pixels,
    }
}

/// The instance-id image (row-major, 0 = background) of a frame's instances.
pub fn instance_map(instances: &[Instance], height: usize, width: usize) -> Vec<u32> {
    let mut map = vec![0u32; height * width];
    for inst in instances {
        for &p in &inst.pixels {
            map[p as usize] = inst.id;
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow_with(height: usize, width: usize, f: impl Fn(usize, usize) -> (f32, f32)) -> FlowField {
        let mut uv = Vec::with_capacity(height * width * 2);
        for r in 0..height {
            for c in 0..width {
                let (u, v) = f(r, c);
                uv.extend([u, v]);
            }
        }
        FlowField::new(height, width, uv)
    }

    #[test]
    fn foreground_rounds_to_three_decimals_first() {
        let t = ForegroundTest::new(2.5, Some(3));
        assert!(!t.is_foreground(2.5004));
        assert!(t.is_foreground(2.5006));
        assert!(!t.is_foreground(2.5));
        // The float32 nearest to 2.5005 is 2.50049996…, which the reference writes as "2.500".
        assert!(!t.is_foreground(2.5005));
        assert!(t.is_foreground(2.50051));
        // The boundary is the first float32 above 2.5005.
        let below = f32::from_bits(t.min_magnitude.to_bits() - 1);
        assert!(f64::from(t.min_magnitude) > 2.5005 && f64::from(below) < 2.5005);
        // Without rounding, 2.5004 is foreground.
        assert!(ForegroundTest::new(2.5, None).is_foreground(2.5004));
        assert!(!ForegroundTest::new(2.5, None).is_foreground(2.5));
    }

    #[test]
    fn small_foreground_threshold_is_strict() {
        let p = InstanceParams::reference();
        // KITTI: 0.0005·376·1240 = 233.12 → 233 pixels drop the frame, 234 keep it.
        assert!(!p.enough_foreground(233, 376, 1240));
        assert!(p.enough_foreground(234, 376, 1240));
        // 0.0005·200·100 = 10 exactly: 10 is not fewer than 10.
        assert!(p.enough_foreground(10, 200, 100));
        assert!(!p.enough_foreground(9, 200, 100));
    }

    #[test]
    fn components_are_8_connected_in_raster_order() {
        #[rustfmt::skip]
        let m = [
            0, 0, 0, 1, 0,
            1, 0, 1, 0, 0,
            1, 0, 0, 0, 1,
            0, 0, 1, 1, 1,
        ];
        let mask: Vec<bool> = m.iter().map(|&x| x == 1).collect();
        let (labels, pixels) = connected_components(&mask, 4, 5);
        // (0,3) and (1,2) touch diagonally; (2,4) joins the bottom run.
        assert_eq!(pixels.len(), 3);
        assert_eq!(labels[3], 1);
        assert_eq!(labels[7], 1);
        assert_eq!(labels[5], 2);
        assert_eq!(labels[10], 2);
        assert_eq!(labels[14], 3);
        assert_eq!(pixels[2], vec![14, 17, 18, 19]);
    }

    #[test]
    fn u_shape_merging_keeps_first_pixel_order() {
        #[rustfmt::skip]
        let m = [
            1, 0, 1, 0, 1,
            1, 0, 1, 0, 1,
            1, 1, 1, 0, 1,
        ];
        let mask: Vec<bool> = m.iter().map(|&x| x == 1).collect();
        let (labels, pixels) = connected_components(&mask, 3, 5);
        assert_eq!(pixels.len(), 2);
        assert_eq!(labels[2], 1);
        assert_eq!(labels[4], 2);
    }

    #[test]
    fn disk_of_radius_ten_has_317_pixels() {
        assert_eq!(disk_offsets(10).len(), 317);
    }

    #[test]
    fn sobel_is_horizontal_only_with_reflect_borders() {
        // u steps by 6 px across a vertical line: response 4·6 = 24 next to it.
        let vertical = flow_with(9, 9, |_, c| (if c >= 4 { 6.0 } else { 0.0 }, 0.0));
        assert_eq!(sobel_x_edge(&vertical, 4, 3), 24.0);
        assert_eq!(sobel_x_edge(&vertical, 4, 4), 24.0);
        assert_eq!(sobel_x_edge(&vertical, 4, 1), 0.0);
        // The same step across a horizontal line is invisible.
        let horizontal = flow_with(9, 9, |r, _| (if r >= 4 { 6.0 } else { 0.0 }, 0.0));
        for r in 0..9 {
            for c in 0..9 {
                assert_eq!(sobel_x_edge(&horizontal, r, c), 0.0);
            }
        }
        // At the border, reflect repeats the edge pixel: a ramp u = c gives 2·(1+2+1)=8 inside, 4 at the border.
        let ramp = flow_with(5, 5, |_, c| (c as f32, 0.0));
        assert_eq!(sobel_x_edge(&ramp, 2, 2), 8.0);
        assert_eq!(sobel_x_edge(&ramp, 2, 0), 4.0);
        assert_eq!(sobel_x_edge(&ramp, 0, 4), 4.0);
        // v contributes through the root sum of squares.
        let both = flow_with(5, 5, |_, c| (0.75 * c as f32, c as f32));
        assert_eq!(sobel_x_edge(&both, 2, 2), 10.0);
    }

    #[test]
    fn direction_bins_follow_the_reference() {
        assert_eq!(direction_bin(1.0, 0.0, 16), 0);
        assert_eq!(direction_bin(0.0, 1.0, 16), 4);
        // float32 π is below π: numpy puts (-1, 0) in bin 7, and so does mrdino.
        assert_eq!(direction_bin(-1.0, 0.0, 16), 7);
        assert_eq!(direction_bin(0.0, -1.0, 16), 12);
        assert_eq!(direction_bin(1.0, -1e-4, 16), 15);
    }

    /// A block of foreground split by a vertical flow step, placed so the step is `margin` columns from the
    /// right image border.
    fn step_block(width: usize, margin: usize) -> (FlowField, Vec<bool>) {
        let (h, top, left) = (40, 5, 2);
        let (bottom, right) = (h - 5, width - margin);
        let step_col = right - margin.max(3);
        let flow = flow_with(h, width, |r, c| {
            if r >= top && r < bottom && c >= left && c < right {
                if c >= step_col {
                    (9.0, 0.0)
                } else {
                    (3.0, 0.0)
                }
            } else {
                (0.0, 0.0)
            }
        });
        let fg = flow.magnitude().iter().map(|&m| m > 2.5).collect();
        (flow, fg)
    }

    #[test]
    fn interior_requires_the_whole_disk_but_image_borders_count_as_inside() {
        let p = InstanceParams::reference();
        let disk = disk_offsets(10);
        // Block touching the right border: the step 3 columns from the border is interior because the disk
        // leaves the image there (border counts as foreground), provided rows are deep enough.
        let (flow, fg) = step_block(60, 0);
        let (labels, comps) = connected_components(&fg, flow.height, flow.width);
        assert_eq!(comps.len(), 1);
        assert!(has_interior_edge(&flow, &labels, 1, &comps[0], &p, &disk));
        // The same block 1 px away from the border: the disk now reaches background on the right.
        let (flow, fg) = step_block(60, 1);
        let (labels, comps) = connected_components(&fg, flow.height, flow.width);
        assert!(!has_interior_edge(&flow, &labels, 1, &comps[0], &p, &disk));
    }

    #[test]
    fn small_instances_are_dropped_and_ids_are_dense() {
        let p = InstanceParams::reference();
        // Three blobs of 99, 100 and 150 pixels, uniform flow (no split).
        let flow = flow_with(30, 60, |r, c| {
            let inside = (r < 9 && c < 11)
                || ((12..22).contains(&r) && (20..30).contains(&c))
                || (r < 15 && (45..55).contains(&c));
            if inside {
                (4.0, 0.0)
            } else {
                (0.0, 0.0)
            }
        });
        let mut fg: Vec<bool> = flow.magnitude().iter().map(|&m| m > 2.5).collect();
        fg[0] = false; // 9·11 = 99 → 98 pixels after removing one
        let instances = separate_instances(&flow, &fg, &p);
        let sizes: Vec<usize> = instances.iter().map(|i| i.pixels.len()).collect();
        assert_eq!(sizes, vec![150, 100]);
        assert_eq!(instances.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(instances.iter().map(|i| i.component).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(instances[0].bbox_xywh, [45, 0, 10, 15]);
        assert!(instances
            .iter()
            .all(|i| i.origin == Origin::Component && (i.mean_flow_px - 4.0).abs() < 1e-6));
    }

    #[test]
    fn an_interior_flow_step_sends_the_component_to_hdbscan() {
        let p = InstanceParams::reference();
        // Two touching cars moving at 3 px and 12 px: one component with a vertical flow step inside it.
        let flow = flow_with(60, 120, |r, c| {
            if (10..50).contains(&r) && (10..110).contains(&c) {
                if c < 60 {
                    (3.0, 0.0)
                } else {
                    (12.0, 0.0)
                }
            } else {
                (0.0, 0.0)
            }
        });
        let fg: Vec<bool> = flow.magnitude().iter().map(|&m| m > 2.5).collect();
        let instances = separate_instances(&flow, &fg, &p);
        // The features are dominated by 60·(row, col), so on this perfectly regular grid the clustering is
        // decided by distance ties: the Python library itself returns different partitions for different
        // row orders of these points. What is fixed is that the component goes through HDBSCAN and that its
        // noise points become background.
        assert!(!instances.is_empty());
        assert!(instances
            .iter()
            .all(|i| i.origin == Origin::Hdbscan && i.component == 1 && i.hdbscan_label.is_some()));
        let covered: usize = instances.iter().map(|i| i.pixels.len()).sum();
        assert!(covered < 40 * 100, "noise points must become background");
    }

    #[test]
    fn the_edge_threshold_is_strict() {
        let p = InstanceParams::reference();
        let disk = disk_offsets(10);
        // A u step of Δ across a vertical line gives a Sobel response of 4Δ: 5 px → exactly 20 (no split),
        // 5.25 px → 21 (split).
        for (step, expected) in [(5.0f32, false), (5.25, true)] {
            let flow = flow_with(60, 120, |r, c| {
                if (10..50).contains(&r) && (10..110).contains(&c) {
                    (if c < 60 { 3.0 } else { 3.0 + step }, 0.0)
                } else {
                    (0.0, 0.0)
                }
            });
            let fg: Vec<bool> = flow.magnitude().iter().map(|&m| m > 2.5).collect();
            let (labels, comps) = connected_components(&fg, 60, 120);
            assert_eq!(sobel_x_edge(&flow, 30, 59), 4.0 * step);
            assert_eq!(
                has_interior_edge(&flow, &labels, 1, &comps[0], &p, &disk),
                expected,
                "step {step}"
            );
        }
    }

    #[test]
    fn a_horizontal_flow_step_does_not_split() {
        let p = InstanceParams::reference();
        let flow = flow_with(60, 120, |r, c| {
            if (10..50).contains(&r) && (10..110).contains(&c) {
                if r < 30 {
                    (3.0, 0.0)
                } else {
                    (12.0, 0.0)
                }
            } else {
                (0.0, 0.0)
            }
        });
        let fg: Vec<bool> = flow.magnitude().iter().map(|&m| m > 2.5).collect();
        let instances = separate_instances(&flow, &fg, &p);
        assert_eq!(instances.len(), 1);
        assert_eq!(instances[0].origin, Origin::Component);
        assert_eq!(instances[0].pixels.len(), 40 * 100);
    }
}
