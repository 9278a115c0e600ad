//! Collapse of a slot model: when every slot takes the same share of every token, the K slots converge to one
//! vector and the decoder redraws the whole view from it. The reconstruction loss still falls (it is the figure
//! trained), so it does not show collapse; two figures of the training step do (see [`crate::train::StepMetrics`]):
//!
//! * Mask Similarity ([`crate::dinosaur::mask_similarity`]): mean pairwise cosine of the K decoder masks of a
//!   view, 1 when every slot has the same mask;
//! * attention entropy ([`crate::dinosaur::slot_entropy`] of the last slot-attention iteration): mean over tokens
//!   of the entropy of the attention over slots divided by ln K, 1 when every token attends to all slots alike.
//!
//! A run is assessed at its check steps ([`check_steps`]) on the mean of the figures logged in the window of
//! [`WINDOW_STEPS`] steps that ends at the check (one step's batch is noisy). It is collapsed when both means are
//! at or above their thresholds ([`MASK_SIMILARITY_COLLAPSED`], [`ATTENTION_ENTROPY_COLLAPSED`]); the numbers and
//! the measurements behind them are in the constants' docs. A fresh model starts collapsed by this rule (its masks
//! are nearly uniform), so verdicts before [`FIRST_CHECK_STEP`] say nothing: splitting, when it happens, happens in
//! the first few hundred steps.
//!
//! Choosing among restarts without ground truth ([`choose`]): the candidate that is not collapsed and has the
//! lowest mean Mask Similarity in the window at its last check; ties go to the lower seed. Everything here is a
//! pure function of the figures, so a resumed run reaches the same verdicts and the same choice.

use serde::{Deserialize, Serialize};

/// Mean Mask Similarity at or above which (with the entropy) a run is collapsed.
pub const MASK_SIMILARITY_COLLAPSED: f64 = 0.99;

/// Mean normalised attention entropy at or above which (with the mask similarity) a run is collapsed.
pub const ATTENTION_ENTROPY_COLLAPSED: f64 = 0.98;

/// The first step at which a verdict means something.
pub const FIRST_CHECK_STEP: u64 = 500;

/// Checks after the first one come every this many steps (and at the last step).
pub const CHECK_EVERY_STEPS: u64 = 1000;

/// A verdict averages the figures logged in (check − WINDOW_STEPS, check].
pub const WINDOW_STEPS: u64 = 100;

/// The collapse figures of one logged step.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub step: u64,
    pub mask_similarity: f64,
    pub attention_entropy: f64,
}

/// What [`assess`] says of a run at one check step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The check step.
    pub step: u64,
    pub collapsed: bool,
    /// Mean Mask Similarity over the window.
    pub mask_similarity: f64,
    /// Mean normalised attention entropy over the window.
    pub attention_entropy: f64,
    /// Logged rows averaged.
    pub rows: usize,
    /// One sentence: the figures against the thresholds.
    pub reason: String,
}

/// The steps of a `total_steps` run at which it is assessed: [`FIRST_CHECK_STEP`], then every
/// [`CHECK_EVERY_STEPS`], and the last step; ascending, without repeats. A run shorter than the first check is
/// assessed at its last step only.
pub fn check_steps(total_steps: u64) -> Vec<u64> {
    let mut steps = Vec::new();
    let mut s = FIRST_CHECK_STEP;
    while s < total_steps {
        steps.push(s);
        s += CHECK_EVERY_STEPS;
    }
    if total_steps > 0 {
        steps.push(total_steps);
    }
    steps
}

/// Whether `step` is one of the fixed check steps of a run of any length: [`FIRST_CHECK_STEP`], then every
/// [`CHECK_EVERY_STEPS`] ([`check_steps`] adds a run's last step to these).
pub fn is_check_step(step: u64) -> bool {
    step >= FIRST_CHECK_STEP && (step - FIRST_CHECK_STEP).is_multiple_of(CHECK_EVERY_STEPS)
}

/// The verdict at `check_step` from the logged `figures` (any order; rows outside the window are ignored) of a
/// model with `n_slots` slots; `None` when no row lies in the window. One slot cannot collapse; figures that are
/// not finite count as collapsed.
pub fn assess(figures: &[Figures], n_slots: i64, check_step: u64) -> Option<Verdict> {
    let start = check_step.saturating_sub(WINDOW_STEPS);
    let window: Vec<&Figures> = figures
        .iter()
        .filter(|f| f.step > start && f.step <= check_step)
        .collect();
    if window.is_empty() {
        return None;
    }
    let n = window.len() as f64;
    let mask_similarity = window.iter().map(|f| f.mask_similarity).sum::<f64>() / n;
    let attention_entropy = window.iter().map(|f| f.attention_entropy).sum::<f64>() / n;
    let (collapsed, reason) = if n_slots < 2 {
        (false, "one slot cannot collapse".to_string())
    } else if !(mask_similarity.is_finite() && attention_entropy.is_finite()) {
        (true, "the collapse figures are not finite".to_string())
    } else {
        let similar = mask_similarity >= MASK_SIMILARITY_COLLAPSED;
        let uniform = attention_entropy >= ATTENTION_ENTROPY_COLLAPSED;
        let collapsed = similar && uniform;
        let reason = format!(
            "mask similarity {mask_similarity:.3} {} {MASK_SIMILARITY_COLLAPSED}, attention entropy \
             {attention_entropy:.3} {} {ATTENTION_ENTROPY_COLLAPSED} (steps {}–{check_step}): {}",
            if similar { "≥" } else { "<" },
            if uniform { "≥" } else { "<" },
            start + 1,
            if collapsed {
                "collapsed, the slots share one mask"
            } else {
                "the slots split"
            }
        );
        (collapsed, reason)
    };
    Some(Verdict {
        step: check_step,
        collapsed,
        mask_similarity,
        attention_entropy,
        rows: window.len(),
        reason,
    })
}

/// The verdicts of a run of `total_steps` at every check step its `figures` reach, ascending.
pub fn verdicts(figures: &[Figures], n_slots: i64, total_steps: u64) -> Vec<Verdict> {
    check_steps(total_steps)
        .into_iter()
        .filter_map(|s| assess(figures, n_slots, s))
        .collect()
}

/// One restart's verdict at the end of its candidate steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub seed: i64,
    pub verdict: Verdict,
}

/// The index of the candidate to continue: not collapsed, lowest mean Mask Similarity, then lowest seed; when
/// all are collapsed, the same order among all. `None` for no candidates. NaN figures rank last.
pub fn choose(candidates: &[Candidate]) -> Option<usize> {
    let key = |c: &Candidate| {
        let s = c.verdict.mask_similarity;
        (c.verdict.collapsed, if s.is_nan() { f64::INFINITY } else { s }, c.seed)
    };
    (0..candidates.len()).min_by(|&a, &b| {
        let (ka, kb) = (key(&candidates[a]), key(&candidates[b]));
        ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(ka.2.cmp(&kb.2))
    })
}

/// The record of a choice among restarts (`RUN/candidates/choice.json` of `train dinosaur --candidates`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// N, S and the first seed, as given.
    pub candidates: usize,
    pub candidate_steps: u64,
    pub first_seed: i64,
    /// Each candidate's seed and its verdict at `candidate_steps`.
    pub assessed: Vec<Candidate>,
    /// The seed continued.
    pub chosen_seed: i64,
    /// Why, in one sentence.
    pub reason: String,
}

impl Choice {
    /// The choice among `assessed` ([`choose`]) of `candidates` restarts from `first_seed`, each assessed at
    /// `candidate_steps`, with the reason in words. `None` for no candidates.
    pub fn decide(candidates: usize, candidate_steps: u64, first_seed: i64, assessed: Vec<Candidate>) -> Option<Self> {
        let index = choose(&assessed)?;
        let chosen = &assessed[index];
        let split = assessed.iter().filter(|c| !c.verdict.collapsed).count();
        let reason = format!(
            "{split} of {candidates} candidates not collapsed at step {candidate_steps}; seed {} has the lowest mask \
             similarity ({:.3}){}",
            chosen.seed,
            chosen.verdict.mask_similarity,
            if split == 0 { " (all collapsed: train longer or change the recipe)" } else { "" }
        );
        Some(Self {
            candidates,
            candidate_steps,
            first_seed,
            chosen_seed: chosen.seed,
            assessed,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::dinosaur::{mask_similarity, slot_entropy};

    /// Figures of `rows` logged steps ending at `last`, every 10 steps, all with the same values.
    fn logged(last: u64, rows: u64, mask_similarity: f64, attention_entropy: f64) -> Vec<Figures> {
        (0..rows)
            .map(|i| Figures {
                step: last - 10 * i,
                mask_similarity,
                attention_entropy,
            })
            .collect()
    }

    /// (1, K, P) weights: token p gives `major` to slot p mod K and the rest evenly to the others.
    fn partition(k: i64, p: i64, major: f64) -> Tensor {
        let minor = (1.0 - major) / (k - 1) as f64;
        let owner = Tensor::arange(p, (Kind::Int64, Device::Cpu)).remainder(k);
        let one_hot = owner.one_hot(k).transpose(0, 1).to_kind(Kind::Float);
        (one_hot * (major - minor) + minor).unsqueeze(0)
    }

    #[test]
    fn uniform_attention_and_masks_are_collapsed() {
        let uniform = Tensor::full([2, 4, 81], 0.25, (Kind::Float, Device::Cpu));
        let (similarity, entropy) = (mask_similarity(&uniform).unwrap(), slot_entropy(&uniform).unwrap());
        assert!((similarity - 1.0).abs() < 1e-6, "{similarity}");
        assert!((entropy - 1.0).abs() < 1e-6, "{entropy}");
        let v = assess(&logged(500, 10, similarity, entropy), 4, 500).unwrap();
        assert!(v.collapsed, "{}", v.reason);
        assert_eq!((v.step, v.rows), (500, 10));
        assert!(v.reason.contains("collapsed"), "{}", v.reason);
    }

    #[test]
    fn one_hot_partition_is_not_collapsed() {
        let masks = partition(4, 8, 1.0);
        let (similarity, entropy) = (mask_similarity(&masks).unwrap(), slot_entropy(&masks).unwrap());
        assert_eq!(similarity, 0.0);
        assert_eq!(entropy, 0.0);
        let v = assess(&logged(500, 10, similarity, entropy), 4, 500).unwrap();
        assert!(!v.collapsed, "{}", v.reason);
        assert!(v.reason.contains("split"), "{}", v.reason);
    }

    #[test]
    fn soft_partition_figures_are_the_hand_computed_ones() {
        // K 4, P 8: each slot has 0.7 on its two tokens and 0.1 on the six others.
        let masks = partition(4, 8, 0.7);
        // cos = (2·0.07 + 2·0.07 + 4·0.01) / (2·0.49 + 6·0.01) = 0.32 / 1.04.
        assert!((mask_similarity(&masks).unwrap() - 0.32 / 1.04).abs() < 1e-6);
        let h = -(0.7f64 * 0.7f64.ln() + 3.0 * 0.1 * 0.1f64.ln()) / 4f64.ln();
        assert!((slot_entropy(&masks).unwrap() - h).abs() < 1e-6, "{:?} vs {h}", slot_entropy(&masks));
    }

    #[test]
    fn both_figures_must_be_high_for_a_collapse() {
        let high_similarity_only = assess(&logged(500, 10, 0.999, 0.5), 4, 500).unwrap();
        assert!(!high_similarity_only.collapsed);
        let high_entropy_only = assess(&logged(500, 10, 0.5, 0.999), 4, 500).unwrap();
        assert!(!high_entropy_only.collapsed);
        let at_thresholds = assess(
            &logged(500, 10, MASK_SIMILARITY_COLLAPSED, ATTENTION_ENTROPY_COLLAPSED),
            4,
            500,
        )
        .unwrap();
        assert!(at_thresholds.collapsed);
    }

    #[test]
    fn the_window_averages_only_its_rows() {
        let mut figures = logged(500, 10, 1.0, 1.0);
        figures.extend(logged(400, 10, 0.0, 0.0));
        figures.extend(logged(600, 10, 0.0, 0.0));
        let v = assess(&figures, 4, 500).unwrap();
        assert_eq!((v.rows, v.mask_similarity, v.attention_entropy), (10, 1.0, 1.0));
        assert!(assess(&figures, 4, 1000).is_none(), "no rows in 901..=1000");
        let half = assess(&logged(500, 20, 0.5, 0.5), 4, 500).unwrap();
        assert_eq!(half.rows, 10, "rows 410..=500");
    }

    #[test]
    fn one_slot_never_collapses_and_nan_always_does() {
        assert!(!assess(&logged(500, 10, 1.0, 1.0), 1, 500).unwrap().collapsed);
        assert!(assess(&logged(500, 10, f64::NAN, 0.0), 4, 500).unwrap().collapsed);
        let single = Tensor::ones([1, 1, 9], (Kind::Float, Device::Cpu));
        assert_eq!((mask_similarity(&single).unwrap(), slot_entropy(&single).unwrap()), (0.0, 0.0));
    }

    #[test]
    fn check_steps_follow_the_rule() {
        assert_eq!(check_steps(5000), [500, 1500, 2500, 3500, 4500, 5000]);
        assert_eq!(check_steps(1500), [500, 1500]);
        assert_eq!(check_steps(300), [300]);
        assert!(check_steps(0).is_empty());
        let fixed: Vec<u64> = (0..=5000).filter(|&s| is_check_step(s)).collect();
        assert_eq!(fixed, check_steps(5000)[..5], "the fixed checks are check_steps without the last step");
        let figures = logged(1500, 150, 0.5, 0.5);
        let all: Vec<u64> = verdicts(&figures, 4, 1500).iter().map(|v| v.step).collect();
        assert_eq!(all, [500, 1500]);
    }

    fn candidate(seed: i64, mask_similarity: f64, collapsed: bool) -> Candidate {
        Candidate {
            seed,
            verdict: Verdict {
                step: 500,
                collapsed,
                mask_similarity,
                attention_entropy: 0.5,
                rows: 10,
                reason: String::new(),
            },
        }
    }

    #[test]
    fn choice_prefers_split_then_low_similarity_then_low_seed() {
        assert_eq!(choose(&[]), None);
        let c = [
            candidate(0, 0.995, true),
            candidate(1, 0.90, false),
            candidate(2, 0.80, false),
            candidate(3, 0.50, true),
        ];
        assert_eq!(choose(&c), Some(2));
        let tie = [candidate(5, 0.8, false), candidate(4, 0.8, false)];
        assert_eq!(choose(&tie), Some(1));
        let all_collapsed = [candidate(0, f64::NAN, true), candidate(1, 0.999, true)];
        assert_eq!(choose(&all_collapsed), Some(1));
    }

    #[test]
    fn a_choice_records_the_flags_every_candidate_and_the_reason() {
        assert_eq!(Choice::decide(4, 500, 0, Vec::new()), None);
        let assessed = vec![candidate(7, 0.999, true), candidate(8, 0.92, false)];
        let choice = Choice::decide(2, 500, 7, assessed.clone()).unwrap();
        assert_eq!((choice.candidates, choice.candidate_steps, choice.first_seed), (2, 500, 7));
        assert_eq!((choice.chosen_seed, &choice.assessed), (8, &assessed));
        assert_eq!(
            choice.reason,
            "1 of 2 candidates not collapsed at step 500; seed 8 has the lowest mask similarity (0.920)"
        );
        let json = serde_json::to_vec(&choice).unwrap();
        assert_eq!(serde_json::from_slice::<Choice>(&json).unwrap(), choice);
        let none_split = Choice::decide(1, 500, 7, vec![candidate(7, 0.999, true)]).unwrap();
        let reason = none_split.reason;
        assert!(reason.ends_with("(all collapsed: train longer or change the recipe)"), "{reason}");
    }
}
