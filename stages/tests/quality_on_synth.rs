//! Label quality on generated scenes with DIS flow: the opt-in rules score above the reference rules, the
//! instance score ranks true positives above false positives (a shuffled score lowers ranked AP50), and
//! track ids follow the objects. Real components only: `mrdino_datasets::synth` writes the scenes, OpenCV DIS
//! computes the forward and backward flow, the reference stages select frames and separate instances, and
//! `metrics` scores them against the generator's instance maps of moving objects.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::path::Path;

use mrdino_datasets::decode::read_processed;
use mrdino_datasets::synth::{generate, SynthParams};
use mrdino_datasets::{Processing, RgbImage};
use mrdino_stages::flow::{DisFlow, DisPreset, FlowEstimator, FlowField};
use mrdino_stages::instances::{separate_instances, Instance, InstanceParams};
use mrdino_stages::metrics::{
    match_prediction_ids, ranked_average_precision, tracking_counts, PredictionRule, ScoredPrediction,
    TrackingCounts, TrackingFrame,
};
use mrdino_stages::rules::{fb_consistent, grey, improved_instances, RuleInputs, RuleOptions};
use mrdino_stages::score::{frame_signals, instance_score};
use mrdino_stages::select::{corner_means, SelectParams};
use mrdino_stages::tracks::{assign_tracks, median_flow, warp_forward, TrackFrame, TrackParams, TrackedInstance};

struct Labelled {
    frame: usize,
    segment: u32,
    truth: Vec<u32>,
    instances: Vec<Instance>,
    fb: Vec<bool>,
    flow: FlowField,
}

/// Ground truth of moving objects (ids that move to the next frame) of one synth frame.
fn moving_truth(dir: &Path, seq: &str, frame: usize) -> Vec<u32> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta").join(format!("{seq}.json"))).unwrap()).unwrap();
    let moving: Vec<u32> = meta["frames"][frame]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["moving"].as_bool() == Some(true))
        .map(|o| o["id"].as_u64().unwrap() as u32)
        .collect();
    let png = dir.join("instances").join(seq).join(format!("{frame:06}.png"));
    let mat = mrdino_datasets::decode::read_unchanged(&png).unwrap();
    use opencv::prelude::*;
    mat.data_typed::<u16>()
        .unwrap()
        .iter()
        .map(|&v| if moving.contains(&u32::from(v)) { u32::from(v) } else { 0 })
        .collect()
}

/// Labels every sequence with the reference selection and the given rules.
fn label(dir: &Path, sequences: usize, frames: usize, options: &RuleOptions) -> Vec<(String, Vec<Labelled>)> {
    let params = InstanceParams::reference();
    let select = SelectParams::reference(1.7);
    let mut dis = DisFlow::new(DisPreset::Medium).unwrap();
    let mut out = Vec::new();
    for s in 0..sequences {
        let seq = format!("seq{s:03}");
        let images: Vec<RgbImage> = (0..frames)
            .map(|t| read_processed(&dir.join("frames").join(&seq).join(format!("{t:06}.png")), &Processing::Native).unwrap().0)
            .collect();
        let pairs: Vec<_> = images.windows(2).map(|p| (&p[0], &p[1])).collect();
        let reversed: Vec<_> = images.windows(2).map(|p| (&p[1], &p[0])).collect();
        let forward = dis.estimate(&pairs).unwrap();
        let backward = dis.estimate(&reversed).unwrap();
        let passes: Vec<bool> = forward.iter().map(|f| select.passes(&corner_means(f, select.corner_fraction))).collect();
        let segments = select.segments(&passes);
        let mut labelled = Vec::new();
        for (t, flow) in forward.into_iter().enumerate() {
            let Some(segment) = segments[t] else { continue };
            let (fg, count) = params.foreground_test().mask(&flow.magnitude());
            if !params.enough_foreground(count, flow.height, flow.width) {
                continue;
            }
            let instances = if options.any() {
                let (g0, g1) = (grey(&images[t]), grey(&images[t + 1]));
                let inputs = RuleInputs {
                    flow: &flow,
                    fg: &fg,
                    backward_next: Some(&backward[t]),
                    grey_t: Some(&g0),
                    grey_next: Some(&g1),
                };
                improved_instances(&inputs, &params, options).unwrap().0
            } else {
                separate_instances(&flow, &fg, &params)
            };
            let fb = fb_consistent(&flow, &backward[t]).unwrap();
            labelled.push(Labelled { frame: t, segment, truth: moving_truth(dir, &seq, t), instances, fb, flow });
        }
        out.push((seq, labelled));
    }
    out
}

struct Scores {
    f1: f64,
    precision: f64,
    recall: f64,
    ranked_ap: f64,
    shuffled_ap: f64,
    tracking: TrackingCounts,
}

fn evaluate(labels: &[(String, Vec<Labelled>)]) -> Scores {
    let (mut tp, mut predictions, mut ground_truth) = (0, 0, 0);
    let mut scored = Vec::new();
    let mut tracking = TrackingCounts::default();
    for (_, frames) in labels {
        let track_frames: Vec<TrackFrame> = frames
            .iter()
            .map(|l| TrackFrame {
                frame_index: l.frame as u32,
                segment: l.segment,
                height: l.flow.height,
                width: l.flow.width,
                instances: l
                    .instances
                    .iter()
                    .map(|i| TrackedInstance {
                        pixels: i.pixels.clone(),
                        warped: warp_forward(&i.pixels, &l.flow),
                        median_flow_px: median_flow(&i.pixels, &l.flow),
                    })
                    .collect(),
            })
            .collect();
        let tracks = assign_tracks(&track_frames, &TrackParams::default());
        let mut videos: std::collections::BTreeMap<u32, Vec<TrackingFrame>> = Default::default();
        for (l, t) in frames.iter().zip(&tracks) {
            let mut map = vec![0u32; l.truth.len()];
            for i in &l.instances {
                for &p in &i.pixels {
                    map[p as usize] = i.id;
                }
            }
            let m = match_prediction_ids(&map, &l.truth, PredictionRule::DiscardFirst).unwrap();
            ground_truth += m.ground_truth_ids.len();
            let mut tf = TrackingFrame { ground_truth_ids: m.ground_truth_ids.clone(), ..Default::default() };
            for pm in &m.predictions {
                let k = pm.prediction_id as usize - 1;
                predictions += 1;
                tp += usize::from(pm.ground_truth_id.is_some());
                let signals = frame_signals(&l.instances[k].pixels, &l.flow, Some(&l.fb));
                scored.push(ScoredPrediction {
                    score: f64::from(instance_score(&signals, t.persistence(k))),
                    true_positive: pm.ground_truth_id.is_some(),
                });
                tf.track_ids.push(t.track_ids[k]);
                if let Some(g) = pm.ground_truth_id {
                    tf.matches.push((g, t.track_ids[k]));
                }
            }
            videos.entry(l.segment).or_default().push(tf);
        }
        for v in videos.values() {
            tracking += tracking_counts(v);
        }
    }
    let precision = tp as f64 / predictions as f64;
    let recall = tp as f64 / ground_truth as f64;
    let ranked_ap = ranked_average_precision(&scored, ground_truth).ap50;
    // The same scores given to other predictions (a fixed stride permutation).
    let n = scored.len();
    let stride = (n / 2 + 1..n).find(|s| gcd(*s, n) == 1).unwrap_or(1);
    let shuffled: Vec<ScoredPrediction> = (0..n)
        .map(|i| ScoredPrediction { score: scored[(i * stride) % n].score, true_positive: scored[i].true_positive })
        .collect();
    Scores {
        f1: 2.0 * precision * recall / (precision + recall),
        precision,
        recall,
        ranked_ap,
        shuffled_ap: ranked_average_precision(&shuffled, ground_truth).ap50,
        tracking,
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[test]
fn improved_rules_score_and_tracks_on_generated_scenes_with_dis_flow() {
    let dir = tempfile::tempdir().unwrap();
    let synth = SynthParams { seed: 0, sequences: 3, frames: 24, ..SynthParams::default() };
    generate(&synth, dir.path()).unwrap();
    let reference = evaluate(&label(dir.path(), 3, 24, &RuleOptions::default()));
    let improved = evaluate(&label(dir.path(), 3, 24, &RuleOptions::improved()));
    eprintln!(
        "reference: F1 {:.3} P {:.3} R {:.3} ranked AP {:.3} (shuffled {:.3}); improved: F1 {:.3} P {:.3} R {:.3} ranked AP {:.3}",
        reference.f1, reference.precision, reference.recall, reference.ranked_ap, reference.shuffled_ap,
        improved.f1, improved.precision, improved.recall, improved.ranked_ap
    );
    // The opt-in rules: higher F1 with neither precision nor recall lower (measured in the pipeline on these
    // scenes: 0.684 → 0.787).
    assert!(improved.f1 > reference.f1 + 0.07, "{} vs {}", improved.f1, reference.f1);
    assert!(improved.precision >= reference.precision && improved.recall >= reference.recall);
    // The score ranks: AP50 by score above the fixed set's precision × recall, and above a shuffled score.
    for s in [&reference, &improved] {
        assert!(s.ranked_ap > s.precision * s.recall + 0.03, "{} vs {}", s.ranked_ap, s.precision * s.recall);
        assert!(s.ranked_ap > s.shuffled_ap, "{} vs shuffled {}", s.ranked_ap, s.shuffled_ap);
    }
    // Tracks: matched objects keep their track id between consecutive labelled frames.
    let t = improved.tracking.report();
    assert!(t.same_track_fraction >= 0.95, "{:?}", t);
}
