//! Quasi-static frame selection, exactly as the reference (`utils/subset_selection_of.py`,
//! `smurf/prediction.py:calculate_corner_averages`).
//!
//! - Corners are squares of `int(H·corner_fraction)` rows by `int(W·corner_fraction)` columns in the four image
//!   corners (KITTI 1240×376: 56×186); the statistic is the arithmetic mean flow magnitude per corner.
//! - A frame *passes* iff at least `required_corners` of the four means are **strictly** below
//!   `corner_threshold_px`.
//! - Maximal runs of consecutive passing frames of length ≥ `min_run_frames` are kept; each is a *segment*,
//!   numbered 0, 1, … per sequence in frame order.
//!
//! The reference writes the means to JSON (float32 → Python float) and compares them with the threshold in
//! double precision; mrdino accumulates the means in f64 (the reference sums float32 pairwise), so a mean
//! can differ from the reference's in its last float32 bit, which matters only for a mean within about
//! 1e-7 px of the threshold.

use serde::{Deserialize, Serialize};

use crate::flow::FlowField;

/// Parameters of the selection (one part of the preset).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelectParams {
    /// Side of each corner square as a fraction of H (rows) and W (columns). Reference: 0.15.
    pub corner_fraction: f64,
    /// Corner-mean threshold in px (strict `<`). Reference: 1.7 KITTI / MOVi-E, 0.5 TRI-PD.
    pub corner_threshold_px: f64,
    /// Corners that must be below the threshold. Reference: 3 of 4.
    pub required_corners: usize,
    /// Minimum run of consecutive passing frames. Reference: 5.
    pub min_run_frames: usize,
}

/// Mean flow magnitude of the four corners: top-left, top-right, bottom-left, bottom-right.
pub type CornerMeans = [f32; 4];

/// Corner side lengths (rows, columns) for an image, `int(H·f)` and `int(W·f)` as the reference.
pub fn corner_size(height: usize, width: usize, corner_fraction: f64) -> (usize, usize) {
    let rows = (height as f64 * corner_fraction).floor() as usize;
    let cols = (width as f64 * corner_fraction).floor() as usize;
    (rows.max(1).min(height), cols.max(1).min(width))
}

/// Mean magnitude per corner of a flow field.
pub fn corner_means(flow: &FlowField, corner_fraction: f64) -> CornerMeans {
    corner_means_of_magnitude(&flow.magnitude(), flow.height, flow.width, corner_fraction)
}

/// Mean per corner of a precomputed magnitude image (row-major H×W).
pub fn corner_means_of_magnitude(magnitude: &[f32], height: usize, width: usize, corner_fraction: f64) -> CornerMeans {
    let (ch, cw) = corner_size(height, width, corner_fraction);
    let mean = |row0: usize, col0: usize| -> f32 {
        let mut sum = 0.0f64;
        for r in row0..row0 + ch {
            sum += magnitude[r * width + col0..r * width + col0 + cw]
                .iter()
                .map(|&m| f64::from(m))
                .sum::<f64>();
        }
        (sum / (ch * cw) as f64) as f32
    };
    [
        mean(0, 0),
        mean(0, width - cw),
        mean(height - ch, 0),
        mean(height - ch, width - cw),
    ]
}

impl SelectParams {
    /// The reference's values with a dataset's corner threshold (1.7 px KITTI / MOVi-E, 0.5 px TRI-PD).
    pub fn reference(corner_threshold_px: f64) -> Self {
        SelectParams {
            corner_fraction: 0.15,
            corner_threshold_px,
            required_corners: 3,
            min_run_frames: 5,
        }
    }

    /// Whether a frame passes the corner test.
    pub fn passes(&self, means: &CornerMeans) -> bool {
        means
            .iter()
            .filter(|&&m| f64::from(m) < self.corner_threshold_px)
            .count()
            >= self.required_corners
    }

    /// Segments of a sequence: for every frame, `Some(k)` if it belongs to the k-th run of at least
    /// `min_run_frames` consecutive passing frames, `None` otherwise.
    pub fn segments(&self, passes: &[bool]) -> Vec<Option<u32>> {
        let mut out = vec![None; passes.len()];
        let mut next_segment = 0u32;
        let mut start = 0;
        while start < passes.len() {
            if !passes[start] {
                start += 1;
                continue;
            }
            let end = start + passes[start..].iter().take_while(|&&p| p).count();
            if end - start >= self.min_run_frames.max(1) {
                out[start..end].iter_mut().for_each(|s| *s = Some(next_segment));
                next_segment += 1;
            }
            start = end;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kitti() -> SelectParams {
        SelectParams::reference(1.7)
    }

    #[test]
    fn corner_sizes_match_the_reference() {
        assert_eq!(corner_size(376, 1240, 0.15), (56, 186));
        assert_eq!(corner_size(480, 968, 0.15), (72, 145));
        assert_eq!(corner_size(128, 128, 0.15), (19, 19));
    }

    #[test]
    fn corner_means_pick_the_right_pixels() {
        let (h, w) = (20, 40);
        let mut mag = vec![0.0f32; h * w];
        // Corners are 3 rows by 6 columns. Put distinct values just inside each corner and just outside.
        mag[0] = 18.0; // TL
        mag[w - 1] = 36.0; // TR
        mag[(h - 1) * w] = 54.0; // BL
        mag[h * w - 1] = 72.0; // BR
        mag[3 * w] = 1000.0; // row 3: outside the top corners
        mag[6] = 1000.0; // column 6: outside the left corners
        let means = corner_means_of_magnitude(&mag, h, w, 0.15);
        assert_eq!(means, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn threshold_is_strict_and_needs_three_corners() {
        let p = kitti();
        let t = 1.7f32;
        let below = f32::from_bits(t.to_bits() - 1);
        // f32(1.7) is above 1.7 in double precision, as the reference's JSON round trip compares it.
        assert!(!p.passes(&[t, t, t, t]));
        assert!(p.passes(&[below, below, below, 100.0]));
        assert!(!p.passes(&[below, below, 100.0, 100.0]));
        assert!(p.passes(&[0.0, 0.0, 0.0, 0.0]));
    }

    #[test]
    fn runs_of_five_are_kept_and_of_four_are_not() {
        let p = kitti();
        let pattern = [1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1];
        let passes: Vec<bool> = pattern.iter().map(|&x| x == 1).collect();
        let segs = p.segments(&passes);
        let expect: Vec<Option<u32>> = [
            None,
            None,
            None,
            None,
            None,
            Some(0),
            Some(0),
            Some(0),
            Some(0),
            Some(0),
            None,
            None,
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            Some(1),
        ]
        .to_vec();
        assert_eq!(segs, expect);
    }
}
