//! The computational core of MR-DINOSAUR's two refinement stages (spec §4, §5), on plain tensors.
//!
//! Inputs are what the DINOSAUR model produces, already upsampled to pixels: decoder alphas `alpha`
//! (B, K, H, W) (softmax over slots, bilinear upsampling), slots (B, K, D), and the pseudo instance masks of a
//! batch `masks` (B, C, H, W), one binary map per instance id in ascending id order, zero-padded across the batch.
//!
//! * **Matching** ([`match_masks_to_slots`]): per batch element the masks with at least one pixel are kept (in
//!   their order) and matched to slots by [`linear_sum_assignment`] on cost[i, j] = mean over pixels of
//!   PyTorch's `binary_cross_entropy(alpha_j, mask_i)` (each log clamped at −100). All costs of the batch come
//!   from one batched product on the tensors' device (no per-pair host round trip), computed in float64 and
//!   rounded to float32 before the solver, as the reference's `.item()` → `torch.tensor` round trip rounds them.
//!   The reference's float32 means themselves carry about one ulp of reduction-order noise that depends on
//!   device and thread count (on a 378×378 window even PyTorch's batched mean differs from its per-pair mean in
//!   ~40% of the entries), so their last bit is not reproducible; the float64 mean rounded once is
//!   deterministic everywhere and within 1.8e-7 relative of PyTorch's per-pair CPU values (measured in
//!   `tests/refine_parity.rs`, where the assignments agree exactly).
//! * **Stage 1** ([`stage1_loss`]): Σ over matched pairs of mean[−(2 − r)·m·log W − (1 − m)·log(1 − W)], W the
//!   slot's alpha clamped to [1e-6, 1 − 1e-6], r the mask's pixel fraction; summed over the batch and divided by
//!   max(1, #elements with at least one non-empty mask). Differentiable w.r.t. `alpha`.
//! * **Stage 2** ([`SlotDeactivation`], [`stage2_loss`]): the slot-deactivation MLP and the NLL loss with the
//!   background weight α and the 0.99 similarity threshold. Reference quirks are the defaults
//!   ([`Stage2Options`]): with #masks ≥ K the *first* K − 1 masks in id order are kept (`keep_largest_masks`
//!   keeps the K − 1 largest), and an unmatched slot is compared with the matched slots of the *whole batch*
//!   (`per_image_similarity` compares with its own image's). Cosines use `F.normalize` (eps 1e-12 on the norm).
//!   Two cases the reference leaves undefined are given values: a window that is all foreground has no
//!   background pixel, and its term2 is 0 (the reference computes 0/0 = NaN); an unmatched slot with no matched
//!   slot to compare with (no mask anywhere in its comparison set; the reference fails on an empty `amax`) is
//!   droppable.
//! * **Stage-2 masks**: in training ([`weighted_masks`]) the soft w gives w·α, fg = Σ w·α and
//!   [1 − fg, w·α…]; at inference ([`deactivated_masks`]) w > 0.5 is binarised, masks = [1 − Σ w·α, w_1·α_1,
//!   …, w_K·α_K].

use tch::nn;
use tch::{Kind, Tensor};

use crate::matching::{linear_sum_assignment_f32, AssignmentError};

/// The lower bound PyTorch's `binary_cross_entropy` puts on each log.
pub const BCE_LOG_CLAMP: f64 = -100.0;
/// Clamp of the slot alpha in the stage-1 weighted BCE.
pub const WBCE_EPSILON: f64 = 1e-6;
/// Added to the foreground probability inside the stage-2 log.
pub const NLL_EPSILON: f64 = 1e-6;
/// `F.normalize`'s lower bound on the norm.
pub const NORMALIZE_EPSILON: f64 = 1e-12;
/// Stage-2 similarity threshold of every preset.
pub const SIMILARITY_THRESHOLD: f64 = 0.99;
/// Inference threshold on the deactivation weight.
pub const DEACTIVATION_THRESHOLD: f64 = 0.5;

/// Errors of the refinement computations, naming the offending input.
#[derive(Debug, thiserror::Error)]
pub enum RefineError {
    #[error("{what}: expected shape {expected}, got {actual:?}")]
    Shape {
        what: &'static str,
        expected: String,
        actual: Vec<i64>,
    },
    #[error("matching batch element {element}: {source}")]
    Assignment {
        element: usize,
        #[source]
        source: AssignmentError,
    },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

fn shape_error(what: &'static str, expected: impl Into<String>, tensor: &Tensor) -> RefineError {
    RefineError::Shape {
        what,
        expected: expected.into(),
        actual: tensor.size(),
    }
}

/// Checks `alpha` (B, K, H, W) against `masks` (B, C, H, W); returns (B, K, C, H·W).
fn check_alpha_and_masks(alpha: &Tensor, masks: &Tensor) -> Result<(i64, i64, i64, i64), RefineError> {
    let a = alpha.size();
    let m = masks.size();
    if a.len() != 4 {
        return Err(shape_error("alpha", "(B, K, H, W)", alpha));
    }
    if m.len() != 4 || m[0] != a[0] || m[2] != a[2] || m[3] != a[3] {
        return Err(shape_error(
            "masks",
            format!("({}, C, {}, {})", a[0], a[2], a[3]),
            masks,
        ));
    }
    Ok((a[0], a[1], m[1], a[2] * a[3]))
}

/// The masks of one batch element that took part in matching, and their slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementMatch {
    /// Indices into the element's mask channels of the masks handed to the solver (non-empty, ascending
    /// unless a selection reordered them).
    pub candidates: Vec<usize>,
    /// (mask channel, slot) pairs in ascending mask-channel order.
    pub pairs: Vec<(usize, usize)>,
}

impl ElementMatch {
    /// Slots without a mask, ascending.
    pub fn unmatched_slots(&self, slots: usize) -> Vec<usize> {
        (0..slots)
            .filter(|s| !self.pairs.iter().any(|&(_, p)| p == *s))
            .collect()
    }
}

/// All (mask, slot) BCE costs of a batch as one (B, C, K) float32 tensor on the host:
/// cost[b, i, j] = −mean_p[m·max(log a, −100) + (1 − m)·max(log(1 − a), −100)].
///
/// Computed in float64 as one batched product, using Σ_p [m·L₁ + (1 − m)·L₀] = Σ_p m·(L₁ − L₀) + Σ_p L₀ (exact
/// for any mask values), then rounded to float32 as the reference's costs are.
pub fn bce_cost_matrices(alpha: &Tensor, masks: &Tensor) -> Result<Tensor, RefineError> {
    let (b, k, c, pixels) = check_alpha_and_masks(alpha, masks)?;
    let _guard = tch::no_grad_guard();
    let (log_a, log_not_a) = {
        let a = alpha.f_detach()?.f_to_kind(Kind::Double)?.f_reshape([b, k, pixels])?;
        (
            a.f_log()?.f_clamp_min(BCE_LOG_CLAMP)?,
            a.f_neg()?.f_add_scalar(1.0)?.f_log()?.f_clamp_min(BCE_LOG_CLAMP)?,
        )
    };
    let background_sum = log_not_a.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Double)?;
    let difference = log_a.f_sub(&log_not_a)?;
    drop(log_not_a);
    let m = masks.f_to_kind(Kind::Double)?.f_reshape([b, c, pixels])?;
    let total = m
        .f_bmm(&difference.f_transpose(1, 2)?)?
        .f_add(&background_sum.f_unsqueeze(1)?)?;
    Ok(total
        .f_div_scalar(-(pixels as f64))?
        .f_to_kind(Kind::Float)?
        .f_to_device(tch::Device::Cpu)?)
}

/// How the masks handed to the solver are chosen from an element's non-empty masks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskSelection {
    /// Every non-empty mask (stage 1).
    All,
    /// At most `slots − 1` masks when there are at least `slots`: the first in id order (stage 2 default,
    /// the reference's `topk` on the already sorted sizes).
    FirstBelowSlots,
    /// At most `slots − 1` masks when there are at least `slots`: the largest (ties to the lower id), kept in
    /// id order (`--keep-largest-masks`).
    LargestBelowSlots,
}

/// Hungarian matching of every batch element's masks to its slots (see the module docs).
pub fn match_masks_to_slots(
    alpha: &Tensor,
    masks: &Tensor,
    selection: MaskSelection,
) -> Result<Vec<ElementMatch>, RefineError> {
    let (b, k, c, _) = check_alpha_and_masks(alpha, masks)?;
    let costs = bce_cost_matrices(alpha, masks)?;
    let costs = Vec::<f32>::try_from(costs.f_flatten(0, -1)?)?;
    let sizes = {
        let _guard = tch::no_grad_guard();
        masks
            .f_to_kind(Kind::Double)?
            .f_sum_dim_intlist([2, 3].as_slice(), false, Kind::Double)?
            .f_to_device(tch::Device::Cpu)?
    };
    let sizes = Vec::<f64>::try_from(sizes.f_flatten(0, -1)?)?;
    let (k, c) = (k as usize, c as usize);
    (0..b as usize)
        .map(|element| {
            let element_sizes = &sizes[element * c..(element + 1) * c];
            let mut candidates: Vec<usize> = (0..c).filter(|&i| element_sizes[i] > 0.0).collect();
            if candidates.len() >= k && selection != MaskSelection::All {
                let keep = k.saturating_sub(1);
                if selection == MaskSelection::LargestBelowSlots {
                    let mut by_size = candidates.clone();
                    by_size.sort_by(|&x, &y| element_sizes[y].total_cmp(&element_sizes[x]).then(x.cmp(&y)));
                    by_size.truncate(keep);
                    by_size.sort_unstable();
                    candidates = by_size;
                } else {
                    candidates.truncate(keep);
                }
            }
            let element_costs = &costs[element * c * k..(element + 1) * c * k];
            let sub: Vec<f32> = candidates
                .iter()
                .flat_map(|&i| element_costs[i * k..(i + 1) * k].iter().copied())
                .collect();
            let pairs = linear_sum_assignment_f32(&sub, candidates.len(), k)
                .map_err(|source| RefineError::Assignment { element, source })?
                .into_iter()
                .map(|(row, slot)| (candidates[row], slot))
                .collect();
            Ok(ElementMatch { candidates, pairs })
        })
        .collect()
}

/// A loss with the matching that produced it.
#[derive(Debug)]
pub struct RefineLoss {
    /// Scalar, differentiable.
    pub loss: Tensor,
    pub matches: Vec<ElementMatch>,
}

/// Stage-1 loss (spec §4) of `alpha` (B, K, H, W) against `masks` (B, C, H, W).
pub fn stage1_loss(alpha: &Tensor, masks: &Tensor) -> Result<RefineLoss, RefineError> {
    let (_, _, _, pixels) = check_alpha_and_masks(alpha, masks)?;
    let matches = match_masks_to_slots(alpha, masks, MaskSelection::All)?;
    let (mut elements, mut mask_index, mut slot_index) = (Vec::new(), Vec::new(), Vec::new());
    for (element, m) in matches.iter().enumerate() {
        for &(mask, slot) in &m.pairs {
            elements.push(element as i64);
            mask_index.push(mask as i64);
            slot_index.push(slot as i64);
        }
    }
    let valid = matches.iter().filter(|m| !m.candidates.is_empty()).count().max(1);
    let device = alpha.device();
    if elements.is_empty() {
        return Ok(RefineLoss {
            loss: alpha.f_sum(alpha.kind())?.f_mul_scalar(0.0)?.f_to_kind(alpha.kind())?,
            matches,
        });
    }
    let index = |v: &[i64]| Tensor::f_from_slice(v)?.f_to_device(device);
    let (e, mi, si) = (index(&elements)?, index(&mask_index)?, index(&slot_index)?);
    let kind = alpha.kind();
    let m = masks
        .f_to_kind(kind)?
        .f_index(&[Some(&e), Some(&mi)])?
        .f_reshape([-1, pixels])?;
    let w = alpha
        .f_index(&[Some(&e), Some(&si)])?
        .f_reshape([-1, pixels])?
        .f_clamp(WBCE_EPSILON, 1.0 - WBCE_EPSILON)?;
    let r = m.f_mean_dim(-1, true, kind)?;
    // −(2 − r)·m·log W − (1 − m)·log(1 − W), operation by operation as the operator form evaluates it.
    let foreground_term = r.f_neg()?.f_add_scalar(2.0)?.f_neg()?.f_mul(&m)?.f_mul(&w.f_log()?)?;
    let background_term = m
        .f_neg()?
        .f_add_scalar(1.0)?
        .f_mul(&w.f_neg()?.f_add_scalar(1.0)?.f_log()?)?;
    let per_pixel = foreground_term.f_sub(&background_term)?;
    let loss = per_pixel
        .f_mean_dim(-1, false, kind)?
        .f_sum(kind)?
        .f_div_scalar(valid as f64)?;
    Ok(RefineLoss { loss, matches })
}

/// The slot-deactivation MLP of stage 2 (`object_decoder.slot_decoder`): Linear(D, h) → ReLU → Linear(h, h) →
/// ReLU → Linear(h, h) → ReLU → Linear(h, 1), then a sigmoid. Its layers sit at `path / "0"`, `"2"`, `"4"`,
/// `"6"` as in the reference's `nn.Sequential`; weights start from PyTorch's default `nn.Linear` init
/// (U(±1/√fan_in)) and biases at zero, as the reference's stage 2 starts.
#[derive(Debug)]
pub struct SlotDeactivation {
    slot_dim: i64,
    layers: [nn::Linear; 4],
}

impl SlotDeactivation {
    /// `path` is the MLP's own path, e.g. `root / "object_decoder" / "slot_decoder"`. The layers are made as
    /// `nn::linear` makes them (bias, then weight), with the fallible variable constructor.
    pub fn new(path: &nn::Path, slot_dim: i64, hidden: i64) -> Result<Self, RefineError> {
        let layer = |name: &str, fan_in: i64, fan_out: i64| -> Result<nn::Linear, tch::TchError> {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let layer_path = path / name;
            let bs = layer_path.f_var("bias", &[fan_out], nn::Init::Const(0.0))?;
            let ws = layer_path.f_var("weight", &[fan_out, fan_in], nn::Init::Uniform { lo: -bound, up: bound })?;
            Ok(nn::Linear { ws, bs: Some(bs) })
        };
        Ok(Self {
            slot_dim,
            layers: [
                layer("0", slot_dim, hidden)?,
                layer("2", hidden, hidden)?,
                layer("4", hidden, hidden)?,
                layer("6", hidden, 1)?,
            ],
        })
    }

    /// Deactivation weights w ∈ (0, 1) of slots (B, K, D), shape (B, K).
    pub fn weights(&self, slots: &Tensor) -> Result<Tensor, RefineError> {
        let size = slots.size();
        if size.len() != 3 || size[2] != self.slot_dim {
            return Err(shape_error("slots", format!("(B, K, {})", self.slot_dim), slots));
        }
        // `nn::Linear::forward` without its panic: the same `linear` call, fallible.
        let linear = |layer: &nn::Linear, x: &Tensor| x.f_linear(&layer.ws, layer.bs.as_ref());
        let mut x = linear(&self.layers[0], slots)?.f_relu()?;
        x = linear(&self.layers[1], &x)?.f_relu()?;
        x = linear(&self.layers[2], &x)?.f_relu()?;
        Ok(linear(&self.layers[3], &x)?.f_sigmoid()?.f_squeeze_dim(-1)?)
    }
}

/// Inference masks of stage 2 (spec §5): w binarised at > 0.5, then [1 − Σ_k w_k α_k, w_1 α_1, …, w_K α_K]
/// along dim 1. `alpha` is (B, K, …) (patches or pixels), `weights` (B, K); the result is (B, K + 1, …).
pub fn deactivated_masks(alpha: &Tensor, weights: &Tensor) -> Result<Tensor, RefineError> {
    let a = alpha.size();
    let w = weights.size();
    if a.len() < 2 || w != a[..2] {
        return Err(shape_error("weights", format!("({:?})", &a[..a.len().min(2)]), weights));
    }
    let mut view = w.clone();
    view.extend(std::iter::repeat_n(1, a.len() - 2));
    let binary = weights
        .f_gt(DEACTIVATION_THRESHOLD)?
        .f_to_kind(alpha.kind())?
        .f_reshape(view)?;
    let changed = alpha.f_mul(&binary)?;
    let background = changed
        .f_sum_dim_intlist([1].as_slice(), true, alpha.kind())?
        .f_neg()?
        .f_add_scalar(1.0)?;
    Ok(Tensor::f_cat(&[background, changed], 1)?)
}

/// The soft (training-mode) outputs of the slot-deactivation head, at whatever resolution `alpha` has.
#[derive(Debug)]
pub struct WeightedMasks {
    /// w·α (B, K, …).
    pub weighted_alpha: Tensor,
    /// Σ_k w_k α_k (B, 1, …).
    pub foreground: Tensor,
    /// [1 − Σ_k w_k α_k, w_1 α_1, …, w_K α_K] (B, K + 1, …).
    pub masks: Tensor,
}

/// Training-mode outputs of stage 2 (spec §5) from `alpha` (B, K, …) and soft weights (B, K). The reference
/// computes them on patches and upsamples each of them to pixels separately; callers reproduce that by
/// upsampling these tensors, not by recomputing them from upsampled alphas.
pub fn weighted_masks(alpha: &Tensor, weights: &Tensor) -> Result<WeightedMasks, RefineError> {
    let a = alpha.size();
    if a.len() < 2 || weights.size() != a[..2] {
        return Err(shape_error("weights", format!("({:?})", &a[..a.len().min(2)]), weights));
    }
    let mut view = a[..2].to_vec();
    view.extend(std::iter::repeat_n(1, a.len() - 2));
    let weighted_alpha = alpha.f_mul(&weights.f_reshape(view)?)?;
    let foreground = weighted_alpha.f_sum_dim_intlist([1].as_slice(), true, alpha.kind())?;
    let background = foreground.f_neg()?.f_add_scalar(1.0)?;
    let masks = Tensor::f_cat(&[background, weighted_alpha.shallow_clone()], 1)?;
    Ok(WeightedMasks {
        weighted_alpha,
        foreground,
        masks,
    })
}

/// The two reference quirks of the stage-2 loss, each with its fix, and its weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage2Options {
    /// α of term2: 0.4 KITTI, 0.2 TRI-PD and MOVi-E.
    pub background_weight: f64,
    /// Unmatched slots whose best cosine similarity to a matched slot is below this are droppable.
    pub similarity_threshold: f64,
    /// Keep the K − 1 largest masks instead of the first K − 1 in id order when #masks ≥ K.
    pub keep_largest_masks: bool,
    /// Compare unmatched slots with matched slots of the same image instead of the whole batch.
    pub per_image_similarity: bool,
}

impl Stage2Options {
    /// The reference behaviour with background weight `alpha`.
    pub fn reference(background_weight: f64) -> Self {
        Self {
            background_weight,
            similarity_threshold: SIMILARITY_THRESHOLD,
            keep_largest_masks: false,
            per_image_similarity: false,
        }
    }

    pub fn kitti() -> Self {
        Self::reference(0.4)
    }

    pub fn tri_pd() -> Self {
        Self::reference(0.2)
    }

    pub fn movi_e() -> Self {
        Self::reference(0.2)
    }
}

/// What the stage-2 loss reads, all at pixel resolution (H, W) and upsampled as the reference does it.
#[derive(Debug)]
pub struct Stage2Inputs<'a> {
    /// Slots after slot attention (B, K, D).
    pub slots: &'a Tensor,
    /// Decoder alphas α (B, K, H, W), used for matching.
    pub alpha: &'a Tensor,
    /// Deactivation-weighted alphas w·α (B, K, H, W).
    pub weighted_alpha: &'a Tensor,
    /// Foreground probability Σ_k w_k α_k (B, 1, H, W) or (B, H, W).
    pub foreground: &'a Tensor,
    /// Pseudo instance masks (B, C, H, W); their union is the binary pseudo foreground m_fg.
    pub masks: &'a Tensor,
}

/// Stage-2 loss with the matching it used and which unmatched slots were droppable.
#[derive(Debug)]
pub struct Stage2Loss {
    pub loss: Tensor,
    pub matches: Vec<ElementMatch>,
    /// Per element, the unmatched slots (ascending) whose similarity to the matched slots is below the
    /// threshold.
    pub droppable: Vec<Vec<usize>>,
}

/// Cosine similarities (rows of `a` vs rows of `b`) after `F.normalize`.
fn normalized(x: &Tensor) -> Result<Tensor, tch::TchError> {
    let norm = x
        .f_norm_scalaropt_dim(2, [1].as_slice(), true)?
        .f_clamp_min(NORMALIZE_EPSILON)?;
    x.f_div(&norm)
}

/// The droppable unmatched slots of every element (see [`Stage2Options`]).
fn droppable_slots(
    slots: &Tensor,
    matches: &[ElementMatch],
    options: &Stage2Options,
) -> Result<Vec<Vec<usize>>, RefineError> {
    let _guard = tch::no_grad_guard();
    let k = slots.size().get(1).copied().unwrap_or(0) as usize;
    let device = slots.device();
    let gather = |element: usize, indices: &[usize]| -> Result<Tensor, tch::TchError> {
        let idx: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        slots
            .f_get(element as i64)?
            .f_index_select(0, &Tensor::f_from_slice(&idx)?.f_to_device(device)?)
    };
    let matched: Vec<Tensor> = matches
        .iter()
        .enumerate()
        .map(|(e, m)| gather(e, &m.pairs.iter().map(|&(_, s)| s).collect::<Vec<_>>()))
        .collect::<Result<_, _>>()?;
    let all_matched = normalized(&Tensor::f_cat(&matched, 0)?)?;
    matches
        .iter()
        .enumerate()
        .map(|(e, m)| {
            let unmatched = m.unmatched_slots(k);
            let reference = if options.per_image_similarity {
                normalized(&matched[e])?
            } else {
                all_matched.shallow_clone()
            };
            if unmatched.is_empty() {
                return Ok(Vec::new());
            }
            if reference.size()[0] == 0 {
                return Ok(unmatched);
            }
            let similarity = reference.f_mm(&normalized(&gather(e, &unmatched)?)?.f_transpose(0, 1)?)?;
            let best = Vec::<f32>::try_from(
                similarity
                    .f_amax([0].as_slice(), false)?
                    .f_to_device(tch::Device::Cpu)?,
            )?;
            Ok(unmatched
                .into_iter()
                .zip(best)
                .filter(|&(_, sim)| f64::from(sim) < options.similarity_threshold)
                .map(|(slot, _)| slot)
                .collect())
        })
        .collect()
}

/// Stage-2 loss (spec §5): mean over the batch of
/// −(1/N) Σ m_fg·log(fg + 1e-6) + α/N_bg · Σ W_drop·[m_fg = 0], W_drop the sum of the droppable slots' w·α.
pub fn stage2_loss(inputs: &Stage2Inputs<'_>, options: &Stage2Options) -> Result<Stage2Loss, RefineError> {
    let (b, k, _, pixels) = check_alpha_and_masks(inputs.alpha, inputs.masks)?;
    let slot_shape = inputs.slots.size();
    if slot_shape.len() != 3 || slot_shape[0] != b || slot_shape[1] != k {
        return Err(shape_error("slots", format!("({b}, {k}, D)"), inputs.slots));
    }
    if inputs.weighted_alpha.size() != inputs.alpha.size() {
        return Err(shape_error(
            "weighted alpha",
            format!("{:?}", inputs.alpha.size()),
            inputs.weighted_alpha,
        ));
    }
    if inputs.foreground.numel() as i64 != b * pixels {
        return Err(shape_error(
            "foreground",
            format!("({b}, 1, H, W) with H·W = {pixels}"),
            inputs.foreground,
        ));
    }
    let selection = if options.keep_largest_masks {
        MaskSelection::LargestBelowSlots
    } else {
        MaskSelection::FirstBelowSlots
    };
    let matches = match_masks_to_slots(inputs.alpha, inputs.masks, selection)?;
    let droppable = droppable_slots(inputs.slots, &matches, options)?;

    let kind = inputs.foreground.kind();
    let device = inputs.foreground.device();
    let mut drop_selector = vec![0f32; (b * k) as usize];
    for (e, slots) in droppable.iter().enumerate() {
        for &s in slots {
            drop_selector[e * k as usize + s] = 1.0;
        }
    }
    let selector = Tensor::f_from_slice(&drop_selector)?
        .f_to_device(device)?
        .f_to_kind(kind)?
        .f_reshape([b, k, 1])?;
    let dropped = inputs
        .weighted_alpha
        .f_reshape([b, k, pixels])?
        .f_mul(&selector)?
        .f_sum_dim_intlist([1].as_slice(), false, kind)?;
    let foreground_mask = inputs
        .masks
        .f_reshape([b, -1, pixels])?
        .f_ne(0)?
        .f_any_dim(1, false)?
        .f_to_kind(kind)?;
    let background_mask = foreground_mask.f_neg()?.f_add_scalar(1.0)?;
    let fg = inputs.foreground.f_reshape([b, pixels])?;
    let term1 = foreground_mask
        .f_mul(&fg.f_add_scalar(NLL_EPSILON)?.f_log()?)?
        .f_sum_dim_intlist([1].as_slice(), false, kind)?
        .f_neg()?
        .f_div_scalar(pixels as f64)?;
    let background_px = background_mask.f_sum_dim_intlist([1].as_slice(), false, kind)?;
    let background_sum = dropped
        .f_mul(&background_mask)?
        .f_sum_dim_intlist([1].as_slice(), false, kind)?;
    // An all-foreground window has no background pixel: its term2 is 0 (the reference divides 0 by 0).
    let has_background = background_px.f_gt(0.0)?;
    let term2 = background_sum
        .f_mul_scalar(options.background_weight)?
        .f_div(&background_px.f_clamp_min(1.0)?)?
        .f_mul(&has_background.f_to_kind(kind)?)?;
    let loss = term1.f_add(&term2)?.f_mean(kind)?;
    Ok(Stage2Loss {
        loss,
        matches,
        droppable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn tensor(values: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(values).reshape(shape)
    }

    #[test]
    fn inference_masks_binarise_the_weights() {
        // One image, 2 slots, 3 patches; slot 0 kept (w 0.7), slot 1 deactivated (w 0.5 is not > 0.5).
        let alpha = tensor(&[0.6, 0.2, 0.5, 0.4, 0.8, 0.5], &[1, 2, 3]);
        let weights = tensor(&[0.7, 0.5], &[1, 2]);
        let masks = deactivated_masks(&alpha, &weights).expect("masks");
        assert_eq!(masks.size(), vec![1, 3, 3]);
        let values = Vec::<f32>::try_from(masks.flatten(0, -1)).expect("values");
        let expected = [0.4, 0.8, 0.5, 0.6, 0.2, 0.5, 0.0, 0.0, 0.0];
        assert!(
            values.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6),
            "{values:?}"
        );
        assert!(deactivated_masks(&alpha, &tensor(&[0.7], &[1, 1])).is_err());
    }

    #[test]
    fn training_masks_keep_the_soft_weights() {
        let alpha = tensor(&[0.6, 0.2, 0.5, 0.4, 0.8, 0.5], &[1, 2, 3]);
        let weights = tensor(&[0.7, 0.5], &[1, 2]);
        let out = weighted_masks(&alpha, &weights).expect("masks");
        let fg = [0.6 * 0.7 + 0.4 * 0.5, 0.2 * 0.7 + 0.8 * 0.5, 0.5 * 0.7 + 0.5 * 0.5];
        let values = Vec::<f32>::try_from(out.masks.flatten(0, -1)).expect("values");
        let expected = [1.0 - fg[0], 1.0 - fg[1], 1.0 - fg[2], 0.42, 0.14, 0.35, 0.2, 0.4, 0.25];
        assert!(
            values.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6),
            "{values:?}"
        );
        assert_eq!(out.foreground.size(), vec![1, 1, 3]);
        assert!(weighted_masks(&alpha, &tensor(&[0.7], &[1, 1])).is_err());
    }

    #[test]
    fn bce_costs_clamp_the_log_and_average_over_pixels() {
        // alpha 0.5 everywhere: ln 2 for any mask. alpha 0 on a full mask: the clamped log gives 100.
        let alpha = tensor(&[0.5, 0.5, 0.0, 0.0], &[1, 2, 1, 2]);
        let masks = tensor(&[1.0, 1.0, 1.0, 0.0], &[1, 2, 1, 2]);
        let costs =
            Vec::<f32>::try_from(bce_cost_matrices(&alpha, &masks).expect("costs").flatten(0, -1)).expect("values");
        let ln2 = std::f32::consts::LN_2;
        assert!((costs[0] - ln2).abs() < 1e-7 && (costs[2] - ln2).abs() < 1e-7);
        assert!((costs[1] - 100.0).abs() < 1e-5, "{costs:?}");
        assert!((costs[3] - 50.0).abs() < 1e-5, "{costs:?}");
    }

    #[test]
    fn stage1_worked_example_and_empty_batches() {
        // 1 image of 2 pixels, 2 slots; one mask covering pixel 0 (r = 1/2). Slot 1 has alpha 0.9 there, so it
        // is matched: loss = mean[−1.5·log 0.9, −log(1 − 0.2)].
        let alpha = tensor(&[0.1, 0.8, 0.9, 0.2], &[1, 2, 1, 2]).set_requires_grad(true);
        let masks = tensor(&[1.0, 0.0], &[1, 1, 1, 2]);
        let result = stage1_loss(&alpha, &masks).expect("loss");
        assert_eq!(result.matches[0].pairs, vec![(0, 1)]);
        let expected = (-1.5 * 0.9f64.ln() - 0.8f64.ln()) / 2.0;
        assert!((result.loss.double_value(&[]) - expected).abs() < 1e-6);
        result.loss.backward();
        // d/dW of −1.5·log W / 2 at W = 0.9.
        assert!((alpha.grad().double_value(&[0, 1, 0, 0]) + 1.5 / 0.9 / 2.0).abs() < 1e-5);

        let empty = Tensor::zeros([2, 3, 1, 2], (Kind::Float, Device::Cpu));
        let alpha = Tensor::full([2, 2, 1, 2], 0.5, (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let result = stage1_loss(&alpha, &empty).expect("loss");
        assert_eq!(result.loss.double_value(&[]), 0.0);
        assert!(result.matches.iter().all(|m| m.pairs.is_empty()));
        result.loss.backward();
        assert!(stage1_loss(&alpha, &Tensor::zeros([2, 3, 2, 2], (Kind::Float, Device::Cpu))).is_err());
    }

    #[test]
    fn stage1_divides_by_elements_with_masks_and_matches_only_k_when_more_masks() {
        // 2 images; image 1 has no mask. Image 0: 3 masks on 3 pixels, 2 slots → only 2 pairs.
        let alpha = tensor(
            &[0.9, 0.05, 0.05, 0.1, 0.95, 0.95, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
            &[2, 2, 1, 3],
        );
        let masks = tensor(
            &[1., 0., 0., 0., 1., 0., 0., 0., 1., 0., 0., 0., 0., 0., 0., 0., 0., 0.],
            &[2, 3, 1, 3],
        );
        let result = stage1_loss(&alpha, &masks).expect("loss");
        assert_eq!(result.matches[0].pairs.len(), 2);
        assert_eq!(result.matches[0].pairs[0], (0, 0));
        assert!(result.matches[1].candidates.is_empty());
        // Dividing by 1 (one element with masks), not 2.
        let single = stage1_loss(&alpha.narrow(0, 0, 1), &masks.narrow(0, 0, 1)).expect("loss");
        assert!((result.loss.double_value(&[]) - single.loss.double_value(&[])).abs() < 1e-7);
    }

    #[test]
    fn stage2_selection_quirk_and_fix() {
        // 3 slots, 3 masks (≥ K): K − 1 = 2 kept. Sizes 1, 2, 3 px: the reference keeps masks 0 and 1, the fix
        // masks 1 and 2.
        let masks = tensor(
            &[1., 0., 0., 0., 0., 0., 0., 1., 1., 0., 0., 0., 0., 0., 0., 1., 1., 1.],
            &[1, 3, 1, 6],
        );
        let alpha = Tensor::full([1, 3, 1, 6], 1.0 / 3.0, (Kind::Float, Device::Cpu));
        let first = match_masks_to_slots(&alpha, &masks, MaskSelection::FirstBelowSlots).expect("match");
        assert_eq!(first[0].candidates, vec![0, 1]);
        let largest = match_masks_to_slots(&alpha, &masks, MaskSelection::LargestBelowSlots).expect("match");
        assert_eq!(largest[0].candidates, vec![1, 2]);
        assert_eq!(largest[0].unmatched_slots(3).len(), 1);
    }

    #[test]
    fn stage2_all_foreground_window_has_no_background_term() {
        // 1 image, 2 pixels, both foreground; the background term would be 0/0.
        let masks = tensor(&[1.0, 1.0], &[1, 1, 1, 2]);
        let alpha = tensor(&[0.7, 0.6, 0.3, 0.4], &[1, 2, 1, 2]);
        let weights = tensor(&[0.9, 0.2], &[1, 2, 1, 1]);
        let weighted = &alpha * &weights;
        let foreground = weighted.sum_dim_intlist([1].as_slice(), true, Kind::Float);
        let slots = tensor(&[1.0, 0.0, 0.0, 1.0], &[1, 2, 2]);
        let inputs = Stage2Inputs {
            slots: &slots,
            alpha: &alpha,
            weighted_alpha: &weighted,
            foreground: &foreground,
            masks: &masks,
        };
        let result = stage2_loss(&inputs, &Stage2Options::kitti()).expect("loss");
        assert_eq!(result.droppable, vec![vec![1]]);
        let fg: Vec<f64> = vec![0.9 * 0.7 + 0.2 * 0.3, 0.9 * 0.6 + 0.2 * 0.4];
        let expected = -(fg.iter().map(|f| (f + 1e-6).ln()).sum::<f64>()) / 2.0;
        assert!((result.loss.double_value(&[]) - expected).abs() < 1e-6);
    }
}
