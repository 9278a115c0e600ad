//! Tracks: one id per object across the consecutive labelled frames of a segment.
//!
//! The reference labels every frame on its own; an object seen in frames 10–14 is five unrelated instances.
//! Here each instance of a labelled frame is carried to the next frame by its own forward flow (every pixel
//! moved by its flow vector, rounded to the nearest pixel, then a 3×3 closing fills the one-pixel holes that
//! splatting leaves when an object grows) and compared with the instances of the next labelled frame of the
//! same segment by mask IoU. Pairs are linked greedily in descending IoU (ties: lower instance index first on
//! both sides) while IoU ≥ `min_iou`; a linked instance continues the track, an unlinked one starts a new
//! track, so a track ends (splits) when its object is lost. When the next labelled frame is k > 1 frames
//! ahead (a frame with too little foreground in between), the warped mask is shifted by (k − 1) times the
//! instance's median flow (constant velocity).
//!
//! Invariants: track ids are 1, 2, … within a sequence in order of first appearance (frames ascending,
//! instances in id order); tracks never cross segments; the result depends only on the masks, flows and
//! frame indices given, never on threads, shards or the order work was done in (the unit of work is the
//! sequence, and everything here is a sorted, sequential computation).

use crate::flow::FlowField;

/// Parameters of the linking rule.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrackParams {
    /// Smallest IoU between a warped mask and a next-frame mask that links them.
    pub min_iou: f64,
}

impl Default for TrackParams {
    fn default() -> Self {
        Self { min_iou: 0.3 }
    }
}

/// What linking needs of one instance of a labelled frame.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackedInstance {
    /// Row-major pixel indices, ascending.
    pub pixels: Vec<u32>,
    /// The mask carried to the next frame by its forward flow ([`warp_forward`]), ascending.
    pub warped: Vec<u32>,
    /// Component-wise median flow (u, v) over the instance, px per frame.
    pub median_flow_px: (f32, f32),
}

/// One labelled frame of a sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackFrame {
    pub frame_index: u32,
    pub segment: u32,
    pub height: usize,
    pub width: usize,
    pub instances: Vec<TrackedInstance>,
}

/// Per instance of a frame: its track id and its best IoU with the previous and next labelled frame of the
/// segment (0 when there is no such frame).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrameTracks {
    pub track_ids: Vec<u32>,
    /// Best IoU of this instance's warped mask with an instance of the next labelled frame.
    pub next_iou: Vec<f64>,
    /// Best IoU of a previous-frame instance's warped mask with this instance.
    pub previous_iou: Vec<f64>,
}

impl FrameTracks {
    /// Persistence of instance `k`: the mean of its IoUs with the previous and the next frame.
    pub fn persistence(&self, k: usize) -> f64 {
        0.5 * (self.next_iou.get(k).copied().unwrap_or(0.0) + self.previous_iou.get(k).copied().unwrap_or(0.0))
    }
}

/// Component-wise median of a set of values (mean of the two middle ones for an even count); 0 when empty.
pub fn median(values: &mut [f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f32::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        0.5 * (values[n / 2 - 1] + values[n / 2])
    }
}

/// Median flow (u, v) over an instance's pixels.
pub fn median_flow(pixels: &[u32], flow: &FlowField) -> (f32, f32) {
    let mut u: Vec<f32> = pixels.iter().map(|&p| flow.uv[2 * p as usize]).collect();
    let mut v: Vec<f32> = pixels.iter().map(|&p| flow.uv[2 * p as usize + 1]).collect();
    (median(&mut u), median(&mut v))
}

/// The pixels of a mask moved by `(du, dv)` px (rounded), clipped to the image, ascending.
fn shift(pixels: &[u32], height: usize, width: usize, du: f32, dv: f32) -> Vec<u32> {
    let (dc, dr) = (du.round() as i64, dv.round() as i64);
    let mut out: Vec<u32> = pixels
        .iter()
        .filter_map(|&p| {
            let (r, c) = ((p as usize / width) as i64 + dr, (p as usize % width) as i64 + dc);
            (r >= 0 && c >= 0 && r < height as i64 && c < width as i64).then(|| (r as usize * width + c as usize) as u32)
        })
        .collect();
    out.sort_unstable();
    out
}

/// A mask carried to the next frame by its forward flow: every pixel moved by its own flow vector (rounded to
/// the nearest pixel; pixels leaving the image are dropped), then closed with a 3×3 square (dilation then
/// erosion) so that splatting holes of one pixel are filled. Ascending pixel indices.
pub fn warp_forward(pixels: &[u32], flow: &FlowField) -> Vec<u32> {
    let (h, w) = (flow.height as i64, flow.width as i64);
    let mut moved: Vec<(i64, i64)> = pixels
        .iter()
        .map(|&p| {
            let (r, c) = ((p as usize / flow.width) as i64, (p as usize % flow.width) as i64);
            let (u, v) = (flow.uv[2 * p as usize], flow.uv[2 * p as usize + 1]);
            (r + v.round() as i64, c + u.round() as i64)
        })
        .filter(|&(r, c)| r >= 0 && c >= 0 && r < h && c < w)
        .collect();
    if moved.is_empty() {
        return Vec::new();
    }
    moved.sort_unstable();
    moved.dedup();
    // A local grid around the moved pixels with a margin of 2 for the closing.
    let (r0, r1) = (moved.iter().map(|m| m.0).min().unwrap_or(0) - 2, moved.iter().map(|m| m.0).max().unwrap_or(0) + 2);
    let (c0, c1) = (moved.iter().map(|m| m.1).min().unwrap_or(0) - 2, moved.iter().map(|m| m.1).max().unwrap_or(0) + 2);
    let (gh, gw) = ((r1 - r0 + 1) as usize, (c1 - c0 + 1) as usize);
    let mut grid = vec![false; gh * gw];
    for &(r, c) in &moved {
        grid[(r - r0) as usize * gw + (c - c0) as usize] = true;
    }
    let morph = |src: &[bool], dilate: bool| -> Vec<bool> {
        // The grid's outer ring stays empty: the margin of 2 keeps every real pixel off it.
        let mut out = vec![false; gh * gw];
        for r in 1..gh - 1 {
            for c in 1..gw - 1 {
                let mut any = false;
                let mut all = true;
                for dr in 0..3 {
                    for dc in 0..3 {
                        let x = src[(r + dr - 1) * gw + c + dc - 1];
                        any |= x;
                        all &= x;
                    }
                }
                out[r * gw + c] = if dilate { any } else { all };
            }
        }
        out
    };
    let closed = morph(&morph(&grid, true), false);
    let mut out = Vec::new();
    for r in 0..gh {
        for c in 0..gw {
            let (ir, ic) = (r as i64 + r0, c as i64 + c0);
            if closed[r * gw + c] && ir >= 0 && ic >= 0 && ir < h && ic < w {
                out.push((ir * w + ic) as u32);
            }
        }
    }
    out
}

/// IoU of two masks given as ascending pixel indices; 0 when both are empty.
pub fn mask_iou(a: &[u32], b: &[u32]) -> f64 {
    let (mut i, mut j, mut inter) = (0, 0, 0usize);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                inter += 1;
                i += 1;
                j += 1;
            }
        }
    }
    let union = a.len() + b.len() - inter;
    if union == 0 {
        0.0
    } else {
        inter as f64 / union as f64
    }
}

/// Track ids and neighbour IoUs of every instance of a sequence's labelled frames (see the module docs).
/// `frames` must be sorted by frame index (it is sorted here if not).
pub fn assign_tracks(frames: &[TrackFrame], params: &TrackParams) -> Vec<FrameTracks> {
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.sort_by_key(|&k| frames[k].frame_index);
    let mut out: Vec<FrameTracks> = frames
        .iter()
        .map(|f| FrameTracks {
            track_ids: vec![0; f.instances.len()],
            next_iou: vec![0.0; f.instances.len()],
            previous_iou: vec![0.0; f.instances.len()],
        })
        .collect();
    let mut next_track = 1u32;
    for (pos, &k) in order.iter().enumerate() {
        // Links from the previous labelled frame of the same segment were made when it was visited.
        for id in out[k].track_ids.iter_mut() {
            if *id == 0 {
                *id = next_track;
                next_track += 1;
            }
        }
        let Some(&n) = order.get(pos + 1) else { continue };
        let (a, b) = (&frames[k], &frames[n]);
        if a.segment != b.segment || b.frame_index <= a.frame_index || (a.height, a.width) != (b.height, b.width) {
            continue;
        }
        let extra = (b.frame_index - a.frame_index - 1) as f32;
        let carried: Vec<Vec<u32>> = a
            .instances
            .iter()
            .map(|inst| {
                if extra == 0.0 {
                    inst.warped.clone()
                } else {
                    let (u, v) = inst.median_flow_px;
                    shift(&inst.warped, a.height, a.width, extra * u, extra * v)
                }
            })
            .collect();
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (i, warped) in carried.iter().enumerate() {
            for (j, target) in b.instances.iter().enumerate() {
                let iou = mask_iou(warped, &target.pixels);
                out[k].next_iou[i] = out[k].next_iou[i].max(iou);
                out[n].previous_iou[j] = out[n].previous_iou[j].max(iou);
                if iou >= params.min_iou && iou > 0.0 {
                    pairs.push((iou, i, j));
                }
            }
        }
        pairs.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        let (mut used_a, mut used_b) = (vec![false; a.instances.len()], vec![false; b.instances.len()]);
        for (_, i, j) in pairs {
            if !used_a[i] && !used_b[j] {
                used_a[i] = true;
                used_b[j] = true;
                out[n].track_ids[j] = out[k].track_ids[i];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_flow(h: usize, w: usize, u: f32, v: f32) -> FlowField {
        FlowField::new(h, w, [u, v].repeat(h * w))
    }

    fn block(w: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Vec<u32> {
        rows.flat_map(|r| cols.clone().map(move |c| (r * w + c) as u32)).collect()
    }

    fn instance(pixels: Vec<u32>, flow: &FlowField) -> TrackedInstance {
        TrackedInstance {
            warped: warp_forward(&pixels, flow),
            median_flow_px: median_flow(&pixels, flow),
            pixels,
        }
    }

    #[test]
    fn warping_moves_a_block_and_fills_splat_holes() {
        let flow = uniform_flow(20, 30, 3.0, -2.0);
        let a = block(30, 5..10, 4..9);
        assert_eq!(warp_forward(&a, &flow), block(30, 3..8, 7..12));
        // A zoom-like flow (u = (c − 10)/2) spreads pixels apart (columns 10..16 land on 10, 12, 13, 15, 16, 18);
        // the closing fills the single gaps.
        let mut uv = Vec::new();
        for _r in 0..20 {
            for c in 0..30 {
                uv.extend([0.5 * (c as f32 - 10.0), 0.0]);
            }
        }
        let zoom = FlowField::new(20, 30, uv);
        let warped = warp_forward(&block(30, 5..10, 10..16), &zoom);
        assert_eq!(warped, block(30, 5..10, 10..19));
        assert!(warp_forward(&a, &uniform_flow(20, 30, 100.0, 0.0)).is_empty());
        assert_eq!(mask_iou(&block(30, 0..2, 0..2), &block(30, 0..2, 1..3)), 2.0 / 6.0);
    }

    #[test]
    fn tracks_follow_moving_objects_and_split_when_lost() {
        let (h, w) = (30, 60);
        let flow = uniform_flow(h, w, 4.0, 0.0);
        // Frames 0..3 of segment 0: object A moves 4 px right per frame; object B appears in frame 1;
        // A is missing in frame 2 (lost) and reappears in frame 3 → a new track.
        let a = |t: usize| block(w, 2..10, 4 * t + 2..4 * t + 12);
        let b = |t: usize| block(w, 15..25, 40 - 4 * t..48 - 4 * t);
        let frames = vec![
            TrackFrame { frame_index: 0, segment: 0, height: h, width: w, instances: vec![instance(a(0), &flow)] },
            TrackFrame { frame_index: 1, segment: 0, height: h, width: w, instances: vec![instance(a(1), &flow), instance(b(1), &uniform_flow(h, w, -4.0, 0.0))] },
            TrackFrame { frame_index: 2, segment: 0, height: h, width: w, instances: vec![instance(b(2), &uniform_flow(h, w, -4.0, 0.0))] },
            TrackFrame { frame_index: 3, segment: 0, height: h, width: w, instances: vec![instance(a(3), &flow)] },
            // Another segment: the same mask does not continue the track.
            TrackFrame { frame_index: 4, segment: 1, height: h, width: w, instances: vec![instance(a(4), &flow)] },
        ];
        let tracks = assign_tracks(&frames, &TrackParams::default());
        let ids: Vec<Vec<u32>> = tracks.iter().map(|t| t.track_ids.clone()).collect();
        assert_eq!(ids, vec![vec![1], vec![1, 2], vec![2], vec![3], vec![4]]);
        assert_eq!(tracks[0].next_iou, vec![1.0]);
        assert_eq!(tracks[1].previous_iou, vec![1.0, 0.0]);
        assert_eq!(tracks[0].persistence(0), 0.5);
        // Input order does not matter.
        let mut reversed = frames.clone();
        reversed.reverse();
        let again: Vec<Vec<u32>> = assign_tracks(&reversed, &TrackParams::default()).into_iter().rev().map(|t| t.track_ids).collect();
        assert_eq!(again, ids);
    }

    #[test]
    fn a_gap_in_the_labelled_frames_is_bridged_at_constant_velocity() {
        let (h, w) = (20, 60);
        let flow = uniform_flow(h, w, 5.0, 0.0);
        let a = |t: usize| block(w, 2..10, 5 * t + 2..5 * t + 12);
        let frames = vec![
            TrackFrame { frame_index: 0, segment: 0, height: h, width: w, instances: vec![instance(a(0), &flow)] },
            TrackFrame { frame_index: 3, segment: 0, height: h, width: w, instances: vec![instance(a(3), &flow)] },
        ];
        let tracks = assign_tracks(&frames, &TrackParams::default());
        assert_eq!((tracks[0].track_ids[0], tracks[1].track_ids[0]), (1, 1));
        assert_eq!(tracks[0].next_iou[0], 1.0);
    }
}
