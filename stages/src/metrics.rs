//! The paper's evaluation metrics, computed exactly as the reference evaluation code computes them
//! (`ocl/metrics/masks.py`, `ocl/metrics/utils.py` of MR-DINOSAUR; spec §6), on instance-id maps.
//!
//! The reference works on one-hot channel tensors; here an image is a [`LabelMap`] of instance ids
//! (0 = background). For disjoint masks the two are equivalent, and the reference's GT masks are disjoint
//! (it asserts so). What is reproduced:
//!
//! * **Resolution.** Label maps are brought to the evaluation resolution with PyTorch's legacy `nearest`
//!   interpolation: source index = min(⌊dst · (in / out)⌋, in − 1) with the scale and the product in
//!   float32, identity when the sizes are equal and `dst >> 1` when out = 2·in, as `F.interpolate` does on
//!   CPU ([`legacy_nearest_indices`]). For KITTI the ground truth first goes through `nearest-exact` to the
//!   378×1260 prediction canvas, as the reference's data pipeline does ([`EvalPreset::Kitti`]).
//! * **F1@50 / "AP50" / "AR50"** ([`match_predictions`]). Per image, predictions are the non-empty ids; the
//!   first of them in id order is discarded as background (that is id 0 whenever any pixel is background; if
//!   none is, the reference drops its first real prediction and so does this). Ground-truth objects are the
//!   non-zero ids with at least one pixel at the evaluation resolution. Each prediction takes the GT of its
//!   image with the highest IoU; it is a true positive iff that IoU is > 0.5 (strict) and that GT is not yet
//!   claimed. Counts are micro-averaged over the dataset: "AP50" = precision = TP / #predictions (0 without
//!   predictions), "AR50" = recall = TP / #GT (0 without GT, where the reference would divide by zero),
//!   F1 = 2PR / (P + R) (0 if both are 0). No PR-curve integration happens in the reference either.
//! * **fg-ARI / all-ARI** ([`adjusted_rand_index`]). Contingency table n_ij over the counted pixels (fg-ARI:
//!   pixels of GT objects only, predicted background being one more cluster; all-ARI: every pixel, GT
//!   background being one more cluster); with a_i, b_j the marginals and n the pixel count:
//!   RI = Σ n_ij(n_ij − 1), A = Σ a_i(a_i − 1), B = Σ b_j(b_j − 1), E = A·B / max(n(n − 1), 1),
//!   ARI = (RI − E) / ((A + B)/2 − E + 1e-12), and 1 when that denominator is ≤ 0; float64 throughout, in
//!   the reference's order of operations. An image counts only if its ground truth has at least 2 objects
//!   (the reference's `K > 2` channels test, made on the GT as loaded, before resizing); the value is the
//!   mean over counted images. Note that on an image where both sides are a single cluster this gives 0,
//!   where scikit-learn's `adjusted_rand_score` returns 1.
//! * **Quasi-static retrieval** ([`quasi_static_retrieval`]): the frames a run selected as quasi-static
//!   against the ground-truth static camera (the synthetic generator's metadata); positive = quasi-static.
//!
//! * **Model predictions** ([`prediction_ids`], [`PredictionRule`]). A merged prediction canvas is the
//!   argmax channel of every pixel. For an MR-DINOSAUR (stage-2) model the reference sets `combination_num` =
//!   the number of windows: every channel whose index is a multiple of channels / windows (each window's
//!   background channel) becomes id 0, and the first remaining non-empty id is discarded as background
//!   ([`PredictionRule::DiscardFirst`], the rule above). Without `combination_num` (the baseline DINOSAUR) every
//!   non-empty channel is a prediction ([`PredictionRule::KeepAll`]). ARI is invariant to relabelling, so
//!   only the background mapping matters for it.
//! * **TRI-PD ground truth** ([`tri_pd_ground_truth`]): the evaluation label PNG is resized to 968×608 with
//!   PIL's NEAREST (source index ⌊x_o⌋, x_o starting at s/2 and advanced by s = in/out in float64, Pillow's
//!   accumulation; the same rule as `mrdino_model::views`), its top 128 rows are cropped (968×480), values
//!   with fewer than 500 pixels become 0 and the others are renumbered 0, 1, 2, … in ascending value order —
//!   so the background value 0 stays background only if it has ≥ 500 pixels, and otherwise the smallest
//!   large value becomes background, as in the reference. The reference then stores uint8, wrapping ids above
//!   255; here they stay distinct (only possible with more than 255 objects of ≥ 500 px).
//!
//! Also here: the decoder of KITTI instance-benchmark PNG values ([`decode_kitti_instances`]).

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;

use serde::Serialize;

/// IoU a prediction must exceed (strictly) to be a true positive.
pub const IOU_THRESHOLD: f64 = 0.5;

/// The reference's guard added to the ARI denominator.
const ARI_EPSILON: f64 = 1e-12;

/// KITTI instance PNGs: value = class · 256 + instance; these classes are instances (Cityscapes person …
/// bicycle).
pub const KITTI_INSTANCE_CLASSES: std::ops::RangeInclusive<u16> = 24..=33;

/// Errors of the metric computations, naming the offending input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsError {
    #[error("{what}: {actual} labels do not make a {height}x{width} map")]
    Shape {
        what: &'static str,
        height: usize,
        width: usize,
        actual: usize,
    },
    #[error("{what}: {left} vs {right} pixels; the maps must have the same resolution")]
    LengthMismatch {
        what: &'static str,
        left: usize,
        right: usize,
    },
    #[error("{what}: cannot resize a {height}x{width} map (every side must be at least 1)")]
    EmptyResize {
        what: &'static str,
        height: usize,
        width: usize,
    },
    #[error("unknown evaluation preset {0:?}; expected kitti, tri-pd or native")]
    UnknownPreset(String),
    #[error("{channels} prediction channels cannot be split over {windows} windows")]
    Channels { channels: usize, windows: usize },
    #[error("predicted channel {channel} is outside the {channels} channels of the canvas")]
    ChannelOutOfRange { channel: u32, channels: usize },
}

/// An instance-id map, row-major, 0 = background.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelMap {
    pub height: usize,
    pub width: usize,
    pub labels: Vec<u32>,
}

impl LabelMap {
    pub fn new(height: usize, width: usize, labels: Vec<u32>) -> Result<Self, MetricsError> {
        if labels.len() != height * width {
            return Err(MetricsError::Shape {
                what: "label map",
                height,
                width,
                actual: labels.len(),
            });
        }
        Ok(Self { height, width, labels })
    }

    /// Resized with PyTorch's legacy `nearest` rule (see [`legacy_nearest_indices`]).
    pub fn resize_legacy_nearest(&self, height: usize, width: usize) -> Result<Self, MetricsError> {
        self.resize_with(height, width, legacy_nearest_indices)
    }

    /// Resized with PyTorch's `nearest-exact` rule (see [`nearest_exact_indices`]).
    pub fn resize_nearest_exact(&self, height: usize, width: usize) -> Result<Self, MetricsError> {
        self.resize_with(height, width, nearest_exact_indices)
    }

    fn resize_with(
        &self,
        height: usize,
        width: usize,
        indices: fn(usize, usize) -> Vec<usize>,
    ) -> Result<Self, MetricsError> {
        if [self.height, self.width, height, width].contains(&0) {
            let (height, width) = if self.height * self.width == 0 {
                (self.height, self.width)
            } else {
                (height, width)
            };
            return Err(MetricsError::EmptyResize {
                what: "label map",
                height,
                width,
            });
        }
        let rows = indices(self.height, height);
        let cols = indices(self.width, width);
        let labels = rows
            .iter()
            .flat_map(|&r| cols.iter().map(move |&c| self.labels[r * self.width + c]))
            .collect();
        Ok(Self { height, width, labels })
    }

    /// Number of distinct non-zero ids.
    pub fn object_count(&self) -> usize {
        self.labels.iter().filter(|&&l| l != 0).collect::<BTreeSet<_>>().len()
    }
}

/// The instance-id map of a frame of a labels or prediction run: its instances' masks at the frame's label grid.
pub fn instance_map(
    frame: &mrdino_outputs::FrameRow,
    instances: &[&mrdino_outputs::InstanceRow],
) -> Result<LabelMap, mrdino_outputs::runs::RunError> {
    let labels = mrdino_outputs::runs::instance_ids(frame, instances)?;
    Ok(LabelMap {
        height: frame.height as usize,
        width: frame.width as usize,
        labels,
    })
}

/// Source index of every destination index for PyTorch's legacy `nearest` (`F.interpolate(mode="nearest")`,
/// `nearest_idx` in ATen's `UpSample.h`): identity when the sizes are equal, `dst >> 1` when doubling,
/// otherwise min(floorf(dst · (in / out)), in − 1) with the scale and the product in float32.
pub fn legacy_nearest_indices(input_len: usize, output_len: usize) -> Vec<usize> {
    if output_len == input_len {
        return (0..output_len).collect();
    }
    if output_len == 2 * input_len {
        return (0..output_len).map(|dst| dst >> 1).collect();
    }
    let scale = input_len as f32 / output_len as f32;
    (0..output_len)
        .map(|dst| ((dst as f32 * scale).floor() as usize).min(input_len - 1))
        .collect()
}

/// Source index of every destination index for PyTorch's `nearest-exact`:
/// min(floorf((dst + 0.5) · (in / out)), in − 1), float32.
pub fn nearest_exact_indices(input_len: usize, output_len: usize) -> Vec<usize> {
    let scale = input_len as f32 / output_len as f32;
    (0..output_len)
        .map(|dst| (((dst as f32 + 0.5) * scale).floor() as usize).min(input_len - 1))
        .collect()
}

/// Where predictions and ground truth are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalPreset {
    /// 95×315; the GT first goes to the 378×1260 prediction canvas with `nearest-exact`.
    Kitti,
    /// 123×245, GT and prediction resized directly with legacy nearest.
    TriPd,
    /// The ground truth's own resolution; predictions are resized to it with legacy nearest.
    Native,
}

impl EvalPreset {
    /// Evaluation resolution (height, width); `None` for [`EvalPreset::Native`].
    pub fn resolution(self) -> Option<(usize, usize)> {
        match self {
            EvalPreset::Kitti => Some((95, 315)),
            EvalPreset::TriPd => Some((123, 245)),
            EvalPreset::Native => None,
        }
    }

    /// Intermediate canvas the ground truth is resized to (`nearest-exact`) before the evaluation resize.
    pub fn ground_truth_canvas(self) -> Option<(usize, usize)> {
        match self {
            EvalPreset::Kitti => Some((378, 1260)),
            EvalPreset::TriPd | EvalPreset::Native => None,
        }
    }

    /// Brings a prediction and its ground truth (each at its own resolution) to the evaluation resolution.
    pub fn to_eval_resolution(
        self,
        prediction: &LabelMap,
        ground_truth: &LabelMap,
    ) -> Result<(LabelMap, LabelMap), MetricsError> {
        let (height, width) = self.resolution().unwrap_or((ground_truth.height, ground_truth.width));
        let ground_truth = match self.ground_truth_canvas() {
            Some((h, w)) => ground_truth
                .resize_nearest_exact(h, w)?
                .resize_legacy_nearest(height, width)?,
            None => ground_truth.resize_legacy_nearest(height, width)?,
        };
        Ok((prediction.resize_legacy_nearest(height, width)?, ground_truth))
    }
}

impl FromStr for EvalPreset {
    type Err = MetricsError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.to_ascii_lowercase().as_str() {
            "kitti" => Ok(EvalPreset::Kitti),
            "tri-pd" | "tri_pd" | "tripd" | "pd" => Ok(EvalPreset::TriPd),
            "native" => Ok(EvalPreset::Native),
            _ => Err(MetricsError::UnknownPreset(name.to_string())),
        }
    }
}

/// Per-image matching counts of F1@50 (spec §6.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MatchCounts {
    pub true_positives: usize,
    pub predictions: usize,
    pub ground_truth: usize,
}

impl std::ops::AddAssign for MatchCounts {
    fn add_assign(&mut self, other: Self) {
        self.true_positives += other.true_positives;
        self.predictions += other.predictions;
        self.ground_truth += other.ground_truth;
    }
}

/// Dense contingency table between two label maps over the pixels `keep` accepts.
struct Contingency {
    /// Distinct ground-truth ids, ascending.
    gt_ids: Vec<u32>,
    /// Distinct predicted ids, ascending.
    pred_ids: Vec<u32>,
    /// counts[g * pred_ids.len() + p]
    counts: Vec<u64>,
}

impl Contingency {
    fn new(prediction: &[u32], ground_truth: &[u32], keep: impl Fn(u32) -> bool) -> Self {
        let kept = || prediction.iter().zip(ground_truth).filter(|(_, &g)| keep(g));
        let gt_ids: Vec<u32> = kept().map(|(_, &g)| g).collect::<BTreeSet<_>>().into_iter().collect();
        let pred_ids: Vec<u32> = kept().map(|(&p, _)| p).collect::<BTreeSet<_>>().into_iter().collect();
        let index = |ids: &[u32]| -> HashMap<u32, usize> { ids.iter().enumerate().map(|(i, &id)| (id, i)).collect() };
        let (gt_index, pred_index) = (index(&gt_ids), index(&pred_ids));
        let mut counts = vec![0u64; gt_ids.len() * pred_ids.len()];
        for (p, g) in kept() {
            counts[gt_index[g] * pred_ids.len() + pred_index[p]] += 1;
        }
        Self {
            gt_ids,
            pred_ids,
            counts,
        }
    }

    fn count(&self, g: usize, p: usize) -> u64 {
        self.counts[g * self.pred_ids.len() + p]
    }

    fn gt_sums(&self) -> Vec<u64> {
        (0..self.gt_ids.len())
            .map(|g| (0..self.pred_ids.len()).map(|p| self.count(g, p)).sum())
            .collect()
    }

    fn pred_sums(&self) -> Vec<u64> {
        (0..self.pred_ids.len())
            .map(|p| (0..self.gt_ids.len()).map(|g| self.count(g, p)).sum())
            .collect()
    }
}

fn check_same_length(what: &'static str, prediction: &[u32], ground_truth: &[u32]) -> Result<(), MetricsError> {
    if prediction.len() != ground_truth.len() {
        return Err(MetricsError::LengthMismatch {
            what,
            left: prediction.len(),
            right: ground_truth.len(),
        });
    }
    Ok(())
}

/// Which non-empty predicted ids count as predictions for F1@50 / AP50 / AR50.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PredictionRule {
    /// The first non-empty id in id order is background and dropped (pseudo-labels; models evaluated with
    /// `combination_num`).
    #[default]
    DiscardFirst,
    /// Every non-empty id is a prediction (models evaluated without `combination_num`: the baseline).
    KeepAll,
}

/// Predicted ids of a merged canvas: `channel_of_pixel` holds the argmax channel (0..`channels`) of every
/// pixel; with `windows` = Some(n) (the reference's `combination_num`), channels that are multiples of
/// `channels / n` (each window's first, background channel) become 0, other ids are the channel index.
pub fn prediction_ids(
    channel_of_pixel: &[u32],
    channels: usize,
    windows: Option<usize>,
) -> Result<Vec<u32>, MetricsError> {
    let per_window = match windows {
        Some(n) if n == 0 || channels / n == 0 => return Err(MetricsError::Channels { channels, windows: n }),
        Some(n) => Some((channels / n) as u32),
        None => None,
    };
    if let Some(&channel) = channel_of_pixel.iter().find(|&&c| c as usize >= channels) {
        return Err(MetricsError::ChannelOutOfRange { channel, channels });
    }
    Ok(channel_of_pixel
        .iter()
        .map(|&c| match per_window {
            Some(block) if c % block == 0 => 0,
            _ => c,
        })
        .collect())
}

/// Matches the predictions of one image (already at the evaluation resolution) against its ground truth;
/// see the module docs for the rule.
pub fn match_predictions(prediction: &[u32], ground_truth: &[u32]) -> Result<MatchCounts, MetricsError> {
    match_predictions_with(prediction, ground_truth, PredictionRule::DiscardFirst)
}

/// [`match_predictions`] with an explicit rule for the first non-empty predicted id.
pub fn match_predictions_with(
    prediction: &[u32],
    ground_truth: &[u32],
    rule: PredictionRule,
) -> Result<MatchCounts, MetricsError> {
    let matches = match_prediction_ids(prediction, ground_truth, rule)?;
    Ok(MatchCounts {
        true_positives: matches.predictions.iter().filter(|m| m.ground_truth_id.is_some()).count(),
        predictions: matches.predictions.len(),
        ground_truth: matches.ground_truth_ids.len(),
    })
}

/// One counted prediction of an image and the ground-truth object it is a true positive for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PredictionMatch {
    /// The predicted id in the map.
    pub prediction_id: u32,
    /// `Some(gt id)` iff the prediction is a true positive (IoU > 0.5 with that object, which it claimed).
    pub ground_truth_id: Option<u32>,
}

/// Every counted prediction of an image (ascending id) with its match, and the counted ground-truth ids.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageMatches {
    pub predictions: Vec<PredictionMatch>,
    /// Non-zero ground-truth ids present in the map, ascending.
    pub ground_truth_ids: Vec<u32>,
}

/// The matching of [`match_predictions_with`], per prediction: the same rule (best IoU, first maximum, strictly
/// above 0.5, a ground-truth object claimed once), reported for every counted predicted id. For disjoint masks a
/// prediction can exceed IoU 0.5 with at most one object and an object with at most one prediction, so the
/// result does not depend on the order predictions are visited in — which is what lets [`RankedAp`] re-rank
/// the same matches by a score.
pub fn match_prediction_ids(
    prediction: &[u32],
    ground_truth: &[u32],
    rule: PredictionRule,
) -> Result<ImageMatches, MetricsError> {
    check_same_length("prediction vs ground truth", prediction, ground_truth)?;
    let table = Contingency::new(prediction, ground_truth, |_| true);
    let pred_areas = table.pred_sums();
    let gt_areas = table.gt_sums();
    // Ground-truth objects: non-zero ids present at this resolution.
    let gt_objects: Vec<usize> = (0..table.gt_ids.len()).filter(|&g| table.gt_ids[g] != 0).collect();
    let mut claimed = vec![false; table.gt_ids.len()];
    let mut out = ImageMatches {
        predictions: Vec::new(),
        ground_truth_ids: gt_objects.iter().map(|&g| table.gt_ids[g]).collect(),
    };
    // Under `DiscardFirst` the first non-empty prediction (in id order) is taken as background and dropped.
    let first = usize::from(rule == PredictionRule::DiscardFirst);
    for (p, &pred_area) in pred_areas.iter().enumerate().skip(first) {
        let mut best: Option<(usize, u64, u64)> = None;
        for &g in &gt_objects {
            let intersection = table.count(g, p);
            let union = pred_area + gt_areas[g] - intersection;
            // Compare intersection/union fractions exactly; the first maximum wins, as `np.argmax`.
            let better = match best {
                None => true,
                Some((_, best_i, best_u)) => {
                    (intersection as u128) * (best_u as u128) > (best_i as u128) * (union as u128)
                }
            };
            if better {
                best = Some((g, intersection, union));
            }
        }
        let mut matched = None;
        if let Some((g, intersection, union)) = best {
            if intersection as f64 / union as f64 > IOU_THRESHOLD && !claimed[g] {
                claimed[g] = true;
                matched = Some(table.gt_ids[g]);
            }
        }
        out.predictions.push(PredictionMatch {
            prediction_id: table.pred_ids[p],
            ground_truth_id: matched,
        });
    }
    Ok(out)
}

/// Adjusted Rand index of one image as the reference computes it; `foreground_only` selects fg-ARI (pixels
/// of GT objects only) over all-ARI (every pixel, GT background as one more cluster).
pub fn adjusted_rand_index(
    prediction: &[u32],
    ground_truth: &[u32],
    foreground_only: bool,
) -> Result<f64, MetricsError> {
    check_same_length("prediction vs ground truth", prediction, ground_truth)?;
    let table = Contingency::new(prediction, ground_truth, |g| !foreground_only || g != 0);
    let pairs = |n: u64| (n * n.saturating_sub(1)) as f64;
    let rindex: f64 = table.counts.iter().map(|&n| pairs(n)).sum();
    let gt_sums = table.gt_sums();
    let aindex: f64 = gt_sums.iter().map(|&a| pairs(a)).sum();
    let bindex: f64 = table.pred_sums().iter().map(|&b| pairs(b)).sum();
    let points = gt_sums.iter().sum::<u64>();
    let expected_rindex = aindex * bindex / pairs(points).max(1.0);
    let max_rindex = (aindex + bindex) / 2.0;
    let denominator = max_rindex - expected_rindex + ARI_EPSILON;
    Ok(if denominator > 0.0 {
        (rindex - expected_rindex) / denominator
    } else {
        1.0
    })
}

/// Scores of one image, as added to an [`Evaluator`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ImageScores {
    pub counts: MatchCounts,
    /// `None` when the image is skipped (ground truth with fewer than 2 objects).
    pub fg_ari: Option<f64>,
    pub all_ari: Option<f64>,
}

/// Dataset-level metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricsReport {
    pub preset: EvalPreset,
    pub images: usize,
    pub true_positives: usize,
    pub predictions: usize,
    pub ground_truth_objects: usize,
    /// Precision at IoU > 0.5 (the reference's "AP50").
    pub ap50: f64,
    /// Recall at IoU > 0.5 (the reference's "AR50").
    pub ar50: f64,
    pub f1_50: f64,
    /// Mean over images whose ground truth has ≥ 2 objects; `None` if there is none.
    pub fg_ari: Option<f64>,
    pub all_ari: Option<f64>,
    pub ari_images: usize,
}

/// Accumulates images and reports the dataset-level metrics.
#[derive(Clone, Debug)]
pub struct Evaluator {
    preset: EvalPreset,
    rule: PredictionRule,
    images: usize,
    counts: MatchCounts,
    fg_ari_sum: f64,
    all_ari_sum: f64,
    ari_images: usize,
}

impl Evaluator {
    pub fn new(preset: EvalPreset) -> Self {
        Self {
            preset,
            rule: PredictionRule::DiscardFirst,
            images: 0,
            counts: MatchCounts::default(),
            fg_ari_sum: 0.0,
            all_ari_sum: 0.0,
            ari_images: 0,
        }
    }

    /// The same evaluator with another rule for the first predicted id (default
    /// [`PredictionRule::DiscardFirst`]).
    pub fn with_rule(mut self, rule: PredictionRule) -> Self {
        self.rule = rule;
        self
    }

    /// Adds one image: `prediction` and `ground_truth` at their own resolutions (the ground truth as loaded,
    /// e.g. by [`decode_kitti_instances`]); both are brought to the preset's evaluation resolution.
    pub fn add_image(&mut self, prediction: &LabelMap, ground_truth: &LabelMap) -> Result<ImageScores, MetricsError> {
        let (prediction_eval, ground_truth_eval) = self.preset.to_eval_resolution(prediction, ground_truth)?;
        let counts = match_predictions_with(&prediction_eval.labels, &ground_truth_eval.labels, self.rule)?;
        let (fg_ari, all_ari) = if ground_truth.object_count() >= 2 {
            let fg = adjusted_rand_index(&prediction_eval.labels, &ground_truth_eval.labels, true)?;
            let all = adjusted_rand_index(&prediction_eval.labels, &ground_truth_eval.labels, false)?;
            self.fg_ari_sum += fg;
            self.all_ari_sum += all;
            self.ari_images += 1;
            (Some(fg), Some(all))
        } else {
            (None, None)
        };
        self.images += 1;
        self.counts += counts;
        Ok(ImageScores {
            counts,
            fg_ari,
            all_ari,
        })
    }

    pub fn report(&self) -> MetricsReport {
        let MatchCounts {
            true_positives,
            predictions,
            ground_truth,
        } = self.counts;
        let ratio = |num: usize, den: usize| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        let (precision, recall) = (ratio(true_positives, predictions), ratio(true_positives, ground_truth));
        let mean = |sum: f64| (self.ari_images > 0).then(|| sum / self.ari_images as f64);
        MetricsReport {
            preset: self.preset,
            images: self.images,
            true_positives,
            predictions,
            ground_truth_objects: ground_truth,
            ap50: precision,
            ar50: recall,
            f1_50: f1(precision, recall),
            fg_ari: mean(self.fg_ari_sum),
            all_ari: mean(self.all_ari_sum),
            ari_images: self.ari_images,
        }
    }
}

/// 2PR / (P + R), 0 when both are 0 (the reference's `compute_f1`).
pub fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

/// Quasi-static frame retrieval against the ground-truth camera; positive = quasi-static.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RetrievalScores {
    pub frames: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub true_negatives: usize,
    pub accuracy: f64,
    /// 0 when nothing was selected.
    pub precision: f64,
    /// 0 when no frame is truly static.
    pub recall: f64,
}

/// Compares per-frame selections (`selected[i]`: frame i was kept as quasi-static) with the truth
/// (`camera_static[i]`: the camera does not move from frame i to i+1).
pub fn quasi_static_retrieval(selected: &[bool], camera_static: &[bool]) -> Result<RetrievalScores, MetricsError> {
    if selected.len() != camera_static.len() {
        return Err(MetricsError::LengthMismatch {
            what: "selected vs static-camera frames",
            left: selected.len(),
            right: camera_static.len(),
        });
    }
    let count = |s: bool, t: bool| {
        selected
            .iter()
            .zip(camera_static)
            .filter(|&(&a, &b)| a == s && b == t)
            .count()
    };
    let (tp, fp, fn_, tn) = (
        count(true, true),
        count(true, false),
        count(false, true),
        count(false, false),
    );
    let ratio = |num: usize, den: usize| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    Ok(RetrievalScores {
        frames: selected.len(),
        true_positives: tp,
        false_positives: fp,
        false_negatives: fn_,
        true_negatives: tn,
        accuracy: ratio(tp + tn, selected.len()),
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
    })
}

/// Resize and crop of the TRI-PD evaluation ground truth: the benchmark's conversion (see the module docs).
pub use mrdino_datasets::{TRI_PD_BENCHMARK_RESIZE as TRI_PD_GT_RESIZE, TRI_PD_BENCHMARK_TOP_CROP_PX as TRI_PD_GT_TOP_CROP_PX};
/// Size filter of the TRI-PD evaluation ground truth.
pub const TRI_PD_GT_MIN_PX: usize = 500;

/// Pillow's NEAREST source index for every output index (float64 accumulation from s/2 in steps of s).
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

/// The TRI-PD evaluation ground truth (968×480 ids) of a label PNG's values (see the module docs).
pub fn tri_pd_ground_truth(labels: &LabelMap) -> Result<LabelMap, MetricsError> {
    let (height, width) = TRI_PD_GT_RESIZE;
    if labels.height == 0 || labels.width == 0 {
        return Err(MetricsError::EmptyResize {
            what: "TRI-PD ground truth",
            height: labels.height,
            width: labels.width,
        });
    }
    let rows = pil_nearest_indices(labels.height, height);
    let cols = pil_nearest_indices(labels.width, width);
    let cropped: Vec<u32> = rows[TRI_PD_GT_TOP_CROP_PX..]
        .iter()
        .flat_map(|&r| cols.iter().map(move |&c| labels.labels[r * labels.width + c]))
        .collect();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    for &v in &cropped {
        *counts.entry(v).or_default() += 1;
    }
    let mut values: Vec<u32> = counts.keys().copied().collect();
    values.sort_unstable();
    let mut next = 0u32;
    let mapping: HashMap<u32, u32> = values
        .into_iter()
        .map(|v| {
            if counts[&v] >= TRI_PD_GT_MIN_PX {
                next += 1;
                (v, next - 1)
            } else {
                (v, 0)
            }
        })
        .collect();
    LabelMap::new(
        height - TRI_PD_GT_TOP_CROP_PX,
        width,
        cropped.iter().map(|v| mapping[v]).collect(),
    )
}

/// Decodes the values of a KITTI instance-benchmark PNG (uint16, class · 256 + instance) into an instance-id
/// map: every distinct value whose class is in [`KITTI_INSTANCE_CLASSES`] becomes one instance (instance
/// number 0 "group" regions included), numbered 1, 2, … in ascending order of the raw value, as the
/// reference's `np.unique`-ordered masks; everything else (void, stuff) is background 0.
pub fn decode_kitti_instances(values: &[u16]) -> Vec<u32> {
    let instances: Vec<u16> = values
        .iter()
        .copied()
        .filter(|v| KITTI_INSTANCE_CLASSES.contains(&(v / 256)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ids: HashMap<u16, u32> = instances.iter().enumerate().map(|(i, &v)| (v, i as u32 + 1)).collect();
    values.iter().map(|v| ids.get(v).copied().unwrap_or(0)).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Ranked AP50: the predictions of a run ordered by a confidence score

/// One counted prediction with its confidence and whether it is a true positive at IoU > 0.5.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ScoredPrediction {
    pub score: f64,
    pub true_positive: bool,
}

/// One point of the precision–recall curve: the predictions scoring at least `score` are kept.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PrPoint {
    pub score: f64,
    pub recall: f64,
    pub precision: f64,
}

/// AP50 of a ranked set of predictions (VOC 2010+ / COCO-style all-point interpolation), next to the fixed
/// set's precision and recall.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RankedAp {
    /// Area under the interpolated precision–recall curve: Σ (rₖ − rₖ₋₁) · max_{j ≥ k} pⱼ.
    pub ap50: f64,
    pub predictions: usize,
    pub true_positives: usize,
    pub ground_truth: usize,
    /// Precision and recall of the whole set (the reference's "AP50" and "AR50"); their product is what
    /// an uninformative ranking scores in expectation.
    pub precision_at_full: f64,
    pub recall_at_full: f64,
    /// One point per distinct score, highest score first.
    pub curve: Vec<PrPoint>,
}

/// Ranks `predictions` by descending score and integrates the interpolated precision–recall curve
/// (all-point interpolation, as VOC 2010+ and COCO do, without COCO's 101-point sampling). Predictions with
/// equal scores form one step (the curve gets one point after all of them), so the result does not depend
/// on the order of tied predictions; NaN scores rank last. `ground_truth` is the number of objects.
pub fn ranked_average_precision(predictions: &[ScoredPrediction], ground_truth: usize) -> RankedAp {
    let key = |s: f64| if s.is_nan() { f64::NEG_INFINITY } else { s };
    let mut order: Vec<&ScoredPrediction> = predictions.iter().collect();
    order.sort_by(|a, b| key(b.score).total_cmp(&key(a.score)));
    let ratio = |n: usize, d: usize| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let mut curve = Vec::new();
    let (mut kept, mut tp) = (0usize, 0usize);
    let mut i = 0;
    while i < order.len() {
        let score = key(order[i].score);
        while i < order.len() && key(order[i].score) == score {
            kept += 1;
            tp += usize::from(order[i].true_positive);
            i += 1;
        }
        curve.push(PrPoint {
            score,
            recall: ratio(tp, ground_truth),
            precision: ratio(tp, kept),
        });
    }
    // Interpolated precision: the best precision at this recall or beyond.
    let mut envelope = 0.0f64;
    let mut interpolated = vec![0.0; curve.len()];
    for (k, point) in curve.iter().enumerate().rev() {
        envelope = envelope.max(point.precision);
        interpolated[k] = envelope;
    }
    let mut ap50 = 0.0;
    let mut previous_recall = 0.0;
    for (point, &p) in curve.iter().zip(&interpolated) {
        ap50 += (point.recall - previous_recall) * p;
        previous_recall = point.recall;
    }
    RankedAp {
        ap50,
        predictions: predictions.len(),
        true_positives: tp,
        ground_truth,
        precision_at_full: ratio(tp, predictions.len()),
        recall_at_full: ratio(tp, ground_truth),
        curve,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tracking: CLEAR MOT on masks (MOTSA), IDF1, identity switches, fragmentations

/// One frame of a tracked video as the evaluation sees it: the ground-truth ids present, the track ids of
/// the counted predictions, and the true-positive pairs (ground-truth id, track id) of the IoU > 0.5
/// matching ([`match_prediction_ids`]; unique in both ids).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrackingFrame {
    pub ground_truth_ids: Vec<u32>,
    pub track_ids: Vec<u32>,
    pub matches: Vec<(u32, u32)>,
}

/// Additive tracking counts (sum them over videos, then read the figures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackingCounts {
    /// Ground-truth detections (object × frame) and predicted detections.
    pub ground_truth_detections: usize,
    pub predicted_detections: usize,
    pub true_positives: usize,
    /// A ground-truth object matched to another track than at its previous match (CLEAR MOT IDSW).
    pub id_switches: usize,
    /// Σ over objects of (maximal runs of matched frames − 1): a tracked object lost and found again.
    pub fragmentations: usize,
    /// Detections on the identity-optimal assignment of whole ground-truth tracks to predicted tracks.
    pub id_true_positives: usize,
    /// Pairs of consecutive frames of a video in which one ground-truth object is matched in both.
    pub consecutive_pairs: usize,
    /// Those of them whose two matched predictions carry the same track id.
    pub consecutive_pairs_same_track: usize,
}

impl std::ops::AddAssign for TrackingCounts {
    fn add_assign(&mut self, o: Self) {
        self.ground_truth_detections += o.ground_truth_detections;
        self.predicted_detections += o.predicted_detections;
        self.true_positives += o.true_positives;
        self.id_switches += o.id_switches;
        self.fragmentations += o.fragmentations;
        self.id_true_positives += o.id_true_positives;
        self.consecutive_pairs += o.consecutive_pairs;
        self.consecutive_pairs_same_track += o.consecutive_pairs_same_track;
    }
}

/// The tracking figures of [`TrackingCounts`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TrackingReport {
    pub counts: TrackingCounts,
    /// MOTSA (Voigtlaender et al., MOTS, CVPR 2019) = CLEAR MOT's MOTA with mask IoU > 0.5 matching:
    /// (TP − FP − IDSW) / GT detections.
    pub motsa: f64,
    /// IDF1 (Ristani et al., 2016) = 2·IDTP / (GT detections + predicted detections).
    pub idf1: f64,
    /// consecutive_pairs_same_track / consecutive_pairs.
    pub same_track_fraction: f64,
}

impl TrackingCounts {
    pub fn report(&self) -> TrackingReport {
        let ratio = |n: f64, d: usize| if d == 0 { 0.0 } else { n / d as f64 };
        let false_positives = self.predicted_detections - self.true_positives;
        TrackingReport {
            counts: *self,
            motsa: ratio(
                self.true_positives as f64 - false_positives as f64 - self.id_switches as f64,
                self.ground_truth_detections,
            ),
            idf1: ratio(
                2.0 * self.id_true_positives as f64,
                self.ground_truth_detections + self.predicted_detections,
            ),
            same_track_fraction: ratio(self.consecutive_pairs_same_track as f64, self.consecutive_pairs),
        }
    }
}

/// Tracking counts of one video (frames in time order; for pseudo-labels, the labelled frames of one
/// segment). Identity switches follow CLEAR MOT: an object's last matched track is remembered across frames
/// where it is unmatched. IDTP is the optimum of the assignment of ground-truth ids to track ids weighted by
/// the frames they are matched in (exact, by the Hungarian method).
pub fn tracking_counts(frames: &[TrackingFrame]) -> TrackingCounts {
    let mut counts = TrackingCounts::default();
    let mut last_track: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
    let mut matched_runs: std::collections::BTreeMap<u32, (bool, usize)> = std::collections::BTreeMap::new();
    let mut co_matched: std::collections::BTreeMap<(u32, u32), usize> = std::collections::BTreeMap::new();
    let mut previous: Option<std::collections::BTreeMap<u32, u32>> = None;
    let all_gt: BTreeSet<u32> = frames.iter().flat_map(|f| f.ground_truth_ids.iter().copied()).collect();
    for frame in frames {
        counts.ground_truth_detections += frame.ground_truth_ids.len();
        counts.predicted_detections += frame.track_ids.len();
        counts.true_positives += frame.matches.len();
        let now: std::collections::BTreeMap<u32, u32> = frame.matches.iter().copied().collect();
        for (&gt, &track) in &now {
            if let Some(old) = last_track.insert(gt, track) {
                counts.id_switches += usize::from(old != track);
            }
            *co_matched.entry((gt, track)).or_default() += 1;
        }
        for &gt in &all_gt {
            let entry = matched_runs.entry(gt).or_insert((false, 0));
            let matched = now.contains_key(&gt);
            if matched && !entry.0 {
                entry.1 += 1;
            }
            entry.0 = matched;
        }
        if let Some(prev) = &previous {
            for (gt, track) in &now {
                if let Some(prev_track) = prev.get(gt) {
                    counts.consecutive_pairs += 1;
                    counts.consecutive_pairs_same_track += usize::from(prev_track == track);
                }
            }
        }
        previous = Some(now);
    }
    counts.fragmentations = matched_runs.values().map(|&(_, runs)| runs.saturating_sub(1)).sum();
    let gts: Vec<u32> = co_matched.keys().map(|k| k.0).collect::<BTreeSet<_>>().into_iter().collect();
    let tracks: Vec<u32> = co_matched.keys().map(|k| k.1).collect::<BTreeSet<_>>().into_iter().collect();
    let weights: Vec<Vec<i64>> = gts
        .iter()
        .map(|g| {
            tracks
                .iter()
                .map(|t| co_matched.get(&(*g, *t)).copied().unwrap_or(0) as i64)
                .collect()
        })
        .collect();
    counts.id_true_positives = max_weight_assignment(&weights) as usize;
    counts
}

/// The largest total weight of a one-to-one assignment of rows to columns (non-negative integer weights;
/// rows or columns may stay unassigned). Hungarian method with potentials on the square matrix padded with
/// zeros, O(n³) for n = max(rows, columns) — the videos' track counts are small.
pub fn max_weight_assignment(weights: &[Vec<i64>]) -> i64 {
    let rows = weights.len();
    let cols = weights.iter().map(Vec::len).max().unwrap_or(0);
    let n = rows.max(cols);
    if n == 0 {
        return 0;
    }
    let max_w = weights.iter().flatten().copied().max().unwrap_or(0);
    // Minimise cost = max_w − weight (padding has weight 0).
    let cost = |i: usize, j: usize| -> i64 { max_w - weights.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0) };
    let inf = i64::MAX / 4;
    let (mut u, mut v) = (vec![0i64; n + 1], vec![0i64; n + 1]);
    let (mut p, mut way) = (vec![0usize; n + 1], vec![0usize; n + 1]);
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0usize;
        let mut minv = vec![inf; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let (mut delta, mut j1) = (inf, 0usize);
            for j in 1..=n {
                if !used[j] {
                    let cur = cost(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    (1..=n)
        .filter(|&j| p[j] != 0)
        .map(|j| weights.get(p[j] - 1).and_then(|r| r.get(j - 1)).copied().unwrap_or(0))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4×6 ground truth: object 1 (left block, 8 px), object 2 (right block, 8 px), background elsewhere.
    fn two_objects() -> Vec<u32> {
        [1, 1, 0, 0, 2, 2].repeat(4)
    }

    fn map(height: usize, width: usize, labels: Vec<u32>) -> LabelMap {
        LabelMap::new(height, width, labels).expect("shape")
    }

    #[test]
    fn perfect_prediction_scores_one() {
        let gt = two_objects();
        // Relabelled ids do not matter.
        let prediction: Vec<u32> = gt.iter().map(|&g| [7, 3, 9][g as usize]).collect();
        let mut evaluator = Evaluator::new(EvalPreset::Native);
        evaluator
            .add_image(&map(4, 6, prediction), &map(4, 6, gt))
            .expect("add");
        let report = evaluator.report();
        // Background got id 7, objects 3 and 9: the first id in order (3) is dropped as "background".
        assert_eq!(
            (report.true_positives, report.predictions, report.ground_truth_objects),
            (1, 2, 2)
        );

        let gt = two_objects();
        let mut evaluator = Evaluator::new(EvalPreset::Native);
        let scores = evaluator
            .add_image(&map(4, 6, gt.clone()), &map(4, 6, gt))
            .expect("add");
        assert_eq!(
            scores.counts,
            MatchCounts {
                true_positives: 2,
                predictions: 2,
                ground_truth: 2
            }
        );
        let report = evaluator.report();
        assert_eq!((report.ap50, report.ar50, report.f1_50), (1.0, 1.0, 1.0));
        assert!((report.fg_ari.expect("counted") - 1.0).abs() < 1e-9);
        assert!((report.all_ari.expect("counted") - 1.0).abs() < 1e-9);
    }

    #[test]
    fn one_object_split_in_two() {
        let gt = two_objects();
        let mut prediction = gt.clone();
        // Object 2 (columns 4-5) split by column: column 5 becomes id 5 (4 px each half, IoU 0.5 each).
        for row in 0..4 {
            if prediction[row * 6 + 5] == 2 {
                prediction[row * 6 + 5] = 5;
            }
        }
        let counts = match_predictions(&prediction, &gt).expect("match");
        assert_eq!(
            counts,
            MatchCounts {
                true_positives: 1,
                predictions: 3,
                ground_truth: 2
            }
        );
        // fg pixels: object 1 (8 px) → {1: 8}; object 2 (8 px) → {2: 4, 5: 4}.
        // RI = 8·7 + 4·3 + 4·3 = 80, A = 56 + 56 = 112, B = 56 + 12 + 12 = 80, n = 16, E = 112·80/240.
        let expected_e = 112.0 * 80.0 / 240.0;
        let expected = (80.0 - expected_e) / ((112.0 + 80.0) / 2.0 - expected_e + 1e-12);
        let ari = adjusted_rand_index(&prediction, &gt, true).expect("ari");
        assert!((ari - expected).abs() < 1e-12, "{ari} vs {expected}");
    }

    #[test]
    fn two_objects_merged() {
        let gt = two_objects();
        let prediction: Vec<u32> = gt.iter().map(|&g| u32::from(g != 0)).collect();
        let counts = match_predictions(&prediction, &gt).expect("match");
        // The merged mask has IoU 8/16 = 0.5 with each object: not a match.
        assert_eq!(
            counts,
            MatchCounts {
                true_positives: 0,
                predictions: 1,
                ground_truth: 2
            }
        );
        // fg-ARI of one predicted cluster against two GT clusters: RI = 112, A = 112, B = 240, E = 112.
        let ari = adjusted_rand_index(&prediction, &gt, true).expect("ari");
        assert!(ari.abs() < 1e-12, "{ari}");
    }

    #[test]
    fn iou_of_exactly_one_half_is_not_a_match_but_just_above_is() {
        // GT object of 4 px, prediction covering it plus 4 background px: IoU = 4/8 = 0.5.
        let gt = vec![1, 1, 1, 1, 0, 0, 0, 0, 0];
        let half = vec![1, 1, 1, 1, 1, 1, 1, 1, 0];
        assert_eq!(match_predictions(&half, &gt).expect("match").true_positives, 0);
        let above = vec![1, 1, 1, 1, 1, 1, 1, 0, 0];
        assert_eq!(match_predictions(&above, &gt).expect("match").true_positives, 1);
    }

    #[test]
    fn empty_prediction_has_zero_precision_recall_and_f1() {
        let gt = two_objects();
        let mut evaluator = Evaluator::new(EvalPreset::Native);
        let scores = evaluator
            .add_image(&map(4, 6, vec![0; 24]), &map(4, 6, gt))
            .expect("add");
        assert_eq!(
            scores.counts,
            MatchCounts {
                true_positives: 0,
                predictions: 0,
                ground_truth: 2
            }
        );
        // fg-ARI: one predicted cluster over two GT objects → 0; all-ARI likewise.
        assert!(scores.fg_ari.expect("counted").abs() < 1e-12);
        let report = evaluator.report();
        assert_eq!((report.ap50, report.ar50, report.f1_50), (0.0, 0.0, 0.0));
    }

    #[test]
    fn without_background_pixels_the_lowest_prediction_id_is_dropped() {
        // No background pixel in the prediction: its lowest id (1) is dropped, as in the reference.
        let gt = vec![1, 1, 0, 0];
        let prediction = vec![4, 4, 6, 6];
        let counts = match_predictions(&prediction, &gt).expect("match");
        assert_eq!(
            counts,
            MatchCounts {
                true_positives: 0,
                predictions: 1,
                ground_truth: 1
            }
        );
    }

    #[test]
    fn images_with_fewer_than_two_objects_are_skipped_for_ari() {
        let mut evaluator = Evaluator::new(EvalPreset::Native);
        let one_object = vec![0, 1, 1, 0];
        let scores = evaluator
            .add_image(&map(2, 2, one_object.clone()), &map(2, 2, one_object))
            .expect("add");
        assert_eq!((scores.fg_ari, scores.all_ari), (None, None));
        assert_eq!(scores.counts.true_positives, 1);
        let report = evaluator.report();
        assert_eq!((report.fg_ari, report.all_ari, report.ari_images), (None, None, 0));
        assert_eq!(report.f1_50, 1.0);

        let gt = two_objects();
        evaluator
            .add_image(&map(4, 6, gt.clone()), &map(4, 6, gt))
            .expect("add");
        assert_eq!(evaluator.report().ari_images, 1);
    }

    #[test]
    fn single_cluster_on_both_sides_gives_zero_as_the_reference() {
        let gt = vec![1, 1, 2, 2];
        let prediction = vec![3, 3, 3, 3];
        // all-ARI over 4 px, GT {1,2}; fine. fg restricted to object 1 only: both sides single cluster.
        let only_object_one = vec![1, 1, 0, 0];
        assert_eq!(
            adjusted_rand_index(&prediction, &only_object_one, true).expect("ari"),
            0.0
        );
        assert!(adjusted_rand_index(&prediction, &gt, false).expect("ari").abs() < 1e-12);
    }

    #[test]
    fn legacy_nearest_indices_are_floor_of_dst_times_scale() {
        assert_eq!(legacy_nearest_indices(10, 4), vec![0, 2, 5, 7]);
        assert_eq!(legacy_nearest_indices(3, 6), vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(legacy_nearest_indices(4, 3), vec![0, 1, 2]);
        assert_eq!(legacy_nearest_indices(5, 5), vec![0, 1, 2, 3, 4]);
        assert_eq!(nearest_exact_indices(10, 4), vec![1, 3, 6, 8]);
        // The float32 rule agrees with exact integer arithmetic on the presets' sizes.
        for (input, output) in [(378, 95), (1260, 315), (375, 95), (1242, 315), (480, 123), (968, 245)] {
            let exact: Vec<usize> = (0..output).map(|d| d * input / output).collect();
            assert_eq!(legacy_nearest_indices(input, output), exact, "{input} -> {output}");
        }
        let gt = map(2, 4, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(gt.resize_legacy_nearest(1, 2).expect("resize").labels, vec![1, 3]);
    }

    #[test]
    fn objects_vanishing_at_the_evaluation_resolution_are_not_counted() {
        // Object 2 is a single pixel at column 1, skipped by a 4 → 2 column resize (columns 0 and 2 kept).
        let gt = map(1, 4, vec![1, 2, 3, 3]);
        let prediction = map(1, 4, vec![0, 0, 5, 5]);
        let (p, g) = EvalPreset::Native.to_eval_resolution(&prediction, &gt).expect("resize");
        assert_eq!(
            (p.labels.as_slice(), g.labels.as_slice()),
            (prediction.labels.as_slice(), gt.labels.as_slice())
        );
        let small_gt = gt.resize_legacy_nearest(1, 2).expect("resize");
        assert_eq!(small_gt.labels, vec![1, 3]);
        let counts = match_predictions(
            &prediction.resize_legacy_nearest(1, 2).expect("resize").labels,
            &small_gt.labels,
        )
        .expect("match");
        assert_eq!(
            counts,
            MatchCounts {
                true_positives: 1,
                predictions: 1,
                ground_truth: 2
            }
        );
    }

    #[test]
    fn kitti_preset_resizes_to_95_by_315() {
        let gt = map(375, 1242, vec![0; 375 * 1242]);
        let prediction = map(378, 1260, vec![0; 378 * 1260]);
        let (p, g) = EvalPreset::Kitti.to_eval_resolution(&prediction, &gt).expect("resize");
        assert_eq!((p.height, p.width, g.height, g.width), (95, 315, 95, 315));
        assert_eq!("tri-pd".parse::<EvalPreset>(), Ok(EvalPreset::TriPd));
        assert!("coco".parse::<EvalPreset>().is_err());
    }

    #[test]
    fn shape_errors_are_reported() {
        assert!(LabelMap::new(2, 2, vec![0; 3]).is_err());
        assert!(match_predictions(&[0, 1], &[0]).is_err());
        assert!(quasi_static_retrieval(&[true], &[]).is_err());
    }

    #[test]
    fn kitti_instances_are_decoded_in_value_order() {
        // class 26 (car) instances 1 and 0 ("group"), class 7 (road), class 24 (person) instance 3, void 0.
        let values = [
            26 * 256 + 1,
            7 * 256,
            24 * 256 + 3,
            26 * 256,
            0,
            26 * 256 + 1,
            34 * 256 + 1,
            23 * 256 + 2,
        ];
        assert_eq!(decode_kitti_instances(&values), vec![3, 0, 1, 2, 0, 3, 0, 0]);
    }

    #[test]
    fn window_background_channels_become_background_with_combination_num() {
        // Two windows of 3 channels: channels 0 and 3 are the windows' background channels.
        assert_eq!(
            prediction_ids(&[0, 1, 2, 3, 4, 5], 6, Some(2)).expect("ids"),
            vec![0, 1, 2, 0, 4, 5]
        );
        assert_eq!(
            prediction_ids(&[0, 1, 2, 3, 4, 5], 6, None).expect("ids"),
            vec![0, 1, 2, 3, 4, 5]
        );
        assert!(prediction_ids(&[6], 6, Some(2)).is_err());
        assert!(prediction_ids(&[0], 6, Some(0)).is_err());
        assert!(prediction_ids(&[0], 2, Some(3)).is_err());
    }

    #[test]
    fn stage2_and_baseline_prediction_rules_on_one_canvas() {
        // GT: object 1 in columns 0-1, object 2 in columns 4-5, background in columns 2-3 (2 rows).
        let gt = map(2, 6, [1, 1, 0, 0, 2, 2].repeat(2));
        // Canvas channels: window 0 slot channel 1, its background 0, window 1 background 3, slot channel 4.
        let canvas = [1, 1, 0, 3, 4, 4].repeat(2);

        // Stage 2 (combination_num = 2): ids [1, 1, 0, 0, 4, 4]; id 0 dropped; both objects found.
        let ids = prediction_ids(&canvas, 6, Some(2)).expect("ids");
        let mut stage2 = Evaluator::new(EvalPreset::Native);
        let scores = stage2.add_image(&map(2, 6, ids), &gt).expect("add");
        assert_eq!(
            scores.counts,
            MatchCounts {
                true_positives: 2,
                predictions: 2,
                ground_truth: 2
            }
        );
        assert_eq!(stage2.report().f1_50, 1.0);

        // Baseline (no combination_num, keep all): channels 0 and 3 are two more predictions, both false.
        let ids = prediction_ids(&canvas, 6, None).expect("ids");
        let mut baseline = Evaluator::new(EvalPreset::Native).with_rule(PredictionRule::KeepAll);
        baseline.add_image(&map(2, 6, ids.clone()), &gt).expect("add");
        let report = baseline.report();
        assert_eq!((report.true_positives, report.predictions), (2, 4));
        assert_eq!((report.ap50, report.ar50), (0.5, 1.0));
        assert!((report.f1_50 - 2.0 / 3.0).abs() < 1e-15);

        // The same ids under DiscardFirst: only channel 0 is dropped.
        let counts = match_predictions_with(&ids, &gt.labels, PredictionRule::DiscardFirst).expect("match");
        assert_eq!((counts.true_positives, counts.predictions), (2, 3));
    }

    #[test]
    fn combination_num_joins_window_backgrounds_into_one_ari_cluster() {
        // GT objects 1 (columns 0-3) and 2 (columns 4-7); half of each predicted as a window's background.
        let gt = [1, 1, 1, 1, 2, 2, 2, 2];
        let canvas = [1, 1, 0, 0, 4, 4, 3, 3];
        let mapped = prediction_ids(&canvas, 6, Some(2)).expect("ids");
        assert_eq!(mapped, vec![1, 1, 0, 0, 4, 4, 0, 0]);
        // Mapped: RI = 8, A = 24, B = 2 + 12 + 2 = 16, E = 24·16/56, ARI = (8/7)/(92/7) = 2/23.
        let ari = adjusted_rand_index(&mapped, &gt, true).expect("ari");
        assert!((ari - 2.0 / 23.0).abs() < 1e-12, "{ari}");
        // Unmapped: B = 8, E = 24·8/56, ARI = (32/7)/(88/7) = 4/11.
        let unmapped = prediction_ids(&canvas, 6, None).expect("ids");
        let ari = adjusted_rand_index(&unmapped, &gt, true).expect("ari");
        assert!((ari - 4.0 / 11.0).abs() < 1e-12, "{ari}");
    }

    #[test]
    fn tri_pd_ground_truth_drops_small_ids_after_the_crop_and_renumbers() {
        let (h, w) = TRI_PD_GT_RESIZE;
        let mut labels = vec![0u32; h * w];
        let mut fill = |value: u32, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
            for r in rows {
                for c in cols.clone() {
                    labels[r * w + c] = value;
                }
            }
        };
        fill(3, 100..150, 0..20); // 1000 px, only rows 128..150 (440 px) survive the crop: removed
        fill(7, 200..220, 0..30); // 600 px: id 1
        fill(9, 300..301, 0..499); // 499 px: removed
        fill(12, 400..410, 0..70); // 700 px: id 2
        let gt = tri_pd_ground_truth(&map(h, w, labels.clone())).expect("gt");
        assert_eq!((gt.height, gt.width), (480, 968));
        let at = |m: &LabelMap, r: usize, c: usize| m.labels[(r - TRI_PD_GT_TOP_CROP_PX) * m.width + c];
        assert_eq!(
            (at(&gt, 140, 5), at(&gt, 210, 5), at(&gt, 300, 5), at(&gt, 405, 5)),
            (0, 1, 0, 2)
        );
        assert_eq!(gt.object_count(), 2);

        // Background with fewer than 500 px: the smallest large value becomes id 0.
        let mut labels = vec![5u32; h * w];
        labels[(h - 1) * w] = 0;
        labels[(h - 1) * w + 1] = 0;
        let gt = tri_pd_ground_truth(&map(h, w, labels)).expect("gt");
        assert!(gt.labels.iter().all(|&l| l == 0));

        // From the native 1216×1936: PIL NEAREST halves to source index 2k + 1.
        assert_eq!(pil_nearest_indices(1936, 968)[..3], [1, 3, 5]);
        // Source columns 3 and 5 land on output columns 1 and 2: 960 px, kept.
        let native: Vec<u32> = (0..1216 * 1936)
            .map(|p| u32::from([3, 4, 5].contains(&(p % 1936))) * 4)
            .collect();
        let gt = tri_pd_ground_truth(&map(1216, 1936, native)).expect("gt");
        assert_eq!(gt.labels[..4], [0, 1, 1, 0]);
        assert_eq!(gt.labels.iter().filter(|&&l| l == 1).count(), 960);
    }

    #[test]
    fn quasi_static_retrieval_counts() {
        let selected = [true, true, false, false, true];
        let truth = [true, false, true, false, true];
        let scores = quasi_static_retrieval(&selected, &truth).expect("same length");
        assert_eq!(
            (
                scores.true_positives,
                scores.false_positives,
                scores.false_negatives,
                scores.true_negatives
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(
            (scores.accuracy, scores.precision, scores.recall),
            (0.6, 2.0 / 3.0, 2.0 / 3.0)
        );
    }

    #[test]
    fn per_prediction_matches_agree_with_the_counts() {
        let gt = two_objects();
        let mut prediction = gt.clone();
        for row in 0..4 {
            if prediction[row * 6 + 5] == 2 {
                prediction[row * 6 + 5] = 5;
            }
        }
        let m = match_prediction_ids(&prediction, &gt, PredictionRule::DiscardFirst).expect("match");
        assert_eq!(m.ground_truth_ids, vec![1, 2]);
        assert_eq!(
            m.predictions,
            vec![
                PredictionMatch { prediction_id: 1, ground_truth_id: Some(1) },
                PredictionMatch { prediction_id: 2, ground_truth_id: None },
                PredictionMatch { prediction_id: 5, ground_truth_id: None },
            ]
        );
    }

    fn scored(pairs: &[(f64, bool)]) -> Vec<ScoredPrediction> {
        pairs.iter().map(|&(score, true_positive)| ScoredPrediction { score, true_positive }).collect()
    }

    #[test]
    fn ranked_ap_is_the_area_under_the_interpolated_curve() {
        // 5 GT; ranked TP, FP, TP, FP, TP: points (r, p) = (.2, 1), (.2, .5), (.4, 2/3), (.4, .5), (.6, .6).
        // Interpolated: 1 up to r = .2, 2/3 up to .4, .6 up to .6 → AP = .2 + .2·2/3 + .2·.6.
        let r = ranked_average_precision(&scored(&[(0.9, true), (0.8, false), (0.7, true), (0.6, false), (0.5, true)]), 5);
        assert!((r.ap50 - (0.2 + 0.2 * 2.0 / 3.0 + 0.2 * 0.6)).abs() < 1e-12, "{}", r.ap50);
        assert_eq!((r.true_positives, r.predictions), (3, 5));
        assert!((r.precision_at_full - 0.6).abs() < 1e-12 && (r.recall_at_full - 0.6).abs() < 1e-12);
        assert_eq!(r.curve.len(), 5);
        // Perfect ranking: every TP first → AP = recall at full (precision 1 along the way).
        let best = ranked_average_precision(&scored(&[(0.9, true), (0.8, true), (0.7, true), (0.2, false), (0.1, false)]), 5);
        assert!((best.ap50 - 0.6).abs() < 1e-12);
        // Worst ranking: FPs first.
        let worst = ranked_average_precision(&scored(&[(0.9, false), (0.8, false), (0.7, true), (0.6, true), (0.5, true)]), 5);
        assert!(worst.ap50 < r.ap50 && r.ap50 < best.ap50);
        // One tied score = no ranking: AP = precision × recall of the whole set.
        let tied = ranked_average_precision(&scored(&[(0.5, false), (0.5, true), (0.5, true), (0.5, false), (0.5, true)]), 5);
        assert!((tied.ap50 - 0.36).abs() < 1e-12);
        assert_eq!(tied.curve.len(), 1);
        // Empty inputs.
        assert_eq!(ranked_average_precision(&[], 3).ap50, 0.0);
        assert_eq!(ranked_average_precision(&scored(&[(1.0, false)]), 0).ap50, 0.0);
    }

    #[test]
    fn a_shuffled_score_lowers_ranked_ap() {
        // 40 predictions whose score orders true positives first, then the same scores permuted.
        let truth: Vec<bool> = (0..40).map(|i| i % 3 != 0).collect();
        let informative: Vec<ScoredPrediction> = truth
            .iter()
            .enumerate()
            .map(|(i, &tp)| ScoredPrediction { score: if tp { 2.0 } else { 1.0 } - i as f64 * 1e-3, true_positive: tp })
            .collect();
        let good = ranked_average_precision(&informative, 50).ap50;
        // A fixed permutation of the scores (multiplicative stride, coprime with 40).
        let shuffled: Vec<ScoredPrediction> = (0..40)
            .map(|i| ScoredPrediction { score: informative[(i * 17) % 40].score, true_positive: truth[i] })
            .collect();
        let bad = ranked_average_precision(&shuffled, 50).ap50;
        assert!(good > bad + 0.05, "{good} vs {bad}");
    }

    #[test]
    fn hungarian_finds_the_best_assignment() {
        assert_eq!(max_weight_assignment(&[vec![3, 2], vec![3, 0]]), 5);
        assert_eq!(max_weight_assignment(&[vec![1, 5, 0]]), 5);
        assert_eq!(max_weight_assignment(&[vec![4], vec![6], vec![1]]), 6);
        assert_eq!(max_weight_assignment(&[]), 0);
        // Brute force over 3×3 permutations.
        let w = vec![vec![7, 2, 9], vec![8, 6, 1], vec![3, 9, 4]];
        let perms = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
        let best = perms.iter().map(|p| (0..3).map(|i| w[i][p[i]]).sum::<i64>()).max().unwrap();
        assert_eq!(max_weight_assignment(&w), best);
    }

    #[test]
    fn tracking_counts_switches_fragmentations_and_idf1() {
        let frame = |gt: &[u32], tr: &[u32], m: &[(u32, u32)]| TrackingFrame {
            ground_truth_ids: gt.to_vec(),
            track_ids: tr.to_vec(),
            matches: m.to_vec(),
        };
        // Object 1: tracks 10, 10, (missed), 11 → one switch, one fragmentation.
        // Object 2: track 20 in every frame; one false positive track 30 in frame 1.
        let frames = vec![
            frame(&[1, 2], &[10, 20], &[(1, 10), (2, 20)]),
            frame(&[1, 2], &[10, 20, 30], &[(1, 10), (2, 20)]),
            frame(&[1, 2], &[20], &[(2, 20)]),
            frame(&[1, 2], &[11, 20], &[(1, 11), (2, 20)]),
        ];
        let c = tracking_counts(&frames);
        assert_eq!((c.ground_truth_detections, c.predicted_detections, c.true_positives), (8, 8, 7));
        assert_eq!((c.id_switches, c.fragmentations), (1, 1));
        // IDTP: 1↔10 (2 frames) + 2↔20 (4 frames) = 6.
        assert_eq!(c.id_true_positives, 6);
        // Consecutive matched pairs: object 1 (f0,f1) same; object 2 three pairs same → 4 of 4.
        assert_eq!((c.consecutive_pairs, c.consecutive_pairs_same_track), (4, 4));
        let r = c.report();
        assert!((r.motsa - (7.0 - 1.0 - 1.0) / 8.0).abs() < 1e-12);
        assert!((r.idf1 - 12.0 / 16.0).abs() < 1e-12);
        // A switch between consecutive frames lowers the same-track fraction.
        let c = tracking_counts(&[frame(&[1], &[5], &[(1, 5)]), frame(&[1], &[6], &[(1, 6)])]);
        assert_eq!((c.consecutive_pairs, c.consecutive_pairs_same_track, c.id_switches), (1, 0, 1));
    }
}
