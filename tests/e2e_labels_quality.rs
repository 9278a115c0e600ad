//! Labels other teams can trust and use, on the real binary and generated scenes with exact ground truth:
//! * every instance of a labelled frame carries a confidence score in [0, 1] and a track id; with the
//!   generator's exact flow, instances of consecutive labelled frames that are the same ground-truth object keep
//!   their track id (≥ 95 %), and the ids do not depend on the thread count or on shards;
//! * `--label-rules improved` runs and is part of the parameters (another partition); `--fb-check` needs a flow
//!   method that computes flow and is refused with imported flow;
//! * `mrdino export` writes COCO and YouTube-VIS files that pycocotools reads, every mask equal to the Parquet
//!   mask at the original resolution (tools/check_exports.py);
//! * `mrdino eval` ranks the instances by score: with DIS flow, AP50 by score lies clearly above the fixed set's
//!   precision × recall, and the same run with its scores shuffled scores lower; it scores tracking against the
//!   generator's persistent ids (with exact flow ≥ 95 % of consecutive matched pairs keep their track); `report
//!   --eval` draws the precision–recall curve; `--label-rules improved` scores F1@50 at least 0.10 above the
//!   reference rules on the same DIS flow with neither precision nor recall lower (`make demo-synth` measures
//!   +0.10 on the same scenes).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use common::{mrdino, python, run_ok, synth};

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mrdino_outputs::bookkeeping::partitions;
use mrdino_outputs::layout::{Layout, LABELS_DATA_DIRS};
use mrdino_outputs::tables::{read_frames, read_instances_with_scores};

fn labels(frames: &Path, flow: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = mrdino();
    cmd.args(["labels", "--dataset", "frames", "--quiet", "--flow", "import", "--flow-dir"])
        .arg(flow)
        .arg("--root")
        .arg(frames)
        .arg("--out")
        .arg(out)
        .args(extra);
    cmd
}

/// (sequence, frame, instance) → (score, track id).
type Scored = BTreeMap<(String, u32, u32), (Option<f32>, Option<u32>)>;

/// (sequence, frame, instance) → (score, track id) of every instance of the only partition in `out`.
fn scored(out: &Path) -> Scored {
    let hashes = partitions(out, LABELS_DATA_DIRS);
    assert_eq!(hashes.len(), 1, "{hashes:?}");
    let layout = Layout::new(out, &hashes[0]);
    let mut rows = BTreeMap::new();
    for entry in std::fs::read_dir(layout.instances_dir()).unwrap() {
        let path = entry.unwrap().path();
        let (instances, scores) = read_instances_with_scores(&path).unwrap();
        for (i, s) in instances.iter().zip(scores) {
            rows.insert((i.sequence_id.clone(), i.frame_index, i.instance_id), (s.score, s.track_id));
        }
    }
    rows
}

/// The ground-truth id (the most frequent non-zero id under the mask) of every instance.
fn gt_ids(data: &Path, out: &Path) -> BTreeMap<(String, u32, u32), u16> {
    let hashes = partitions(out, LABELS_DATA_DIRS);
    let layout = Layout::new(out, &hashes[0]);
    let mut names = BTreeMap::new();
    for entry in std::fs::read_dir(layout.frames_dir()).unwrap() {
        for f in read_frames(&entry.unwrap().path()).unwrap() {
            names.insert((f.sequence_id.clone(), f.frame_index), f.frame_name.clone());
        }
    }
    let mut ids = BTreeMap::new();
    for entry in std::fs::read_dir(layout.instances_dir()).unwrap() {
        let (instances, _) = read_instances_with_scores(&entry.unwrap().path()).unwrap();
        for i in instances {
            let name = &names[&(i.sequence_id.clone(), i.frame_index)];
            let png = data.join("instances").join(&i.sequence_id).join(format!("{name}.png"));
            let (_, gt) = mrdino_datasets::decode::read_unchanged(&png)
                .map(|m| {
                    use opencv::prelude::*;
                    let values: Vec<u16> = match m.depth() {
                        opencv::core::CV_8U => m.data_typed::<u8>().unwrap().iter().map(|&v| u16::from(v)).collect(),
                        _ => m.data_typed::<u16>().unwrap().to_vec(),
                    };
                    (m.cols(), values)
                })
                .unwrap();
            let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
            for p in i.mask.to_pixels().unwrap() {
                let v = gt[p as usize];
                if v != 0 {
                    *counts.entry(v).or_default() += 1;
                }
            }
            if let Some((&id, _)) = counts.iter().max_by_key(|(_, &n)| n) {
                ids.insert((i.sequence_id.clone(), i.frame_index, i.instance_id), id);
            }
        }
    }
    ids
}

#[test]
fn scores_tracks_rules_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let frames = synth(&data, "160x96", 3, 12);
    let flow = data.join("flow");
    let out = dir.path().join("labels");
    run_ok(&mut labels(&frames, &flow, &out, &["--threads", "1"]));
    let rows = scored(&out);
    assert!(rows.len() >= 10, "enough instances to check: {}", rows.len());
    assert!(
        rows.values()
            .all(|(s, t)| s.is_some_and(|s| (0.0..=1.0).contains(&s)) && t.is_some()),
        "every instance has a score in [0, 1] and a track id"
    );

    // Consecutive labelled frames: instances of one ground-truth object keep their track id.
    let gt = gt_ids(&data, &out);
    let (mut pairs, mut kept) = (0, 0);
    for ((seq, frame, inst), id) in &gt {
        for ((seq2, frame2, inst2), id2) in &gt {
            if seq2 == seq && *frame2 == frame + 1 && id2 == id {
                pairs += 1;
                if rows[&(seq.clone(), *frame, *inst)].1 == rows[&(seq2.clone(), *frame2, *inst2)].1 {
                    kept += 1;
                }
            }
        }
    }
    assert!(pairs >= 5, "matched pairs of consecutive frames: {pairs}");
    assert!(
        kept as f64 >= 0.95 * pairs as f64,
        "{kept} of {pairs} matched pairs keep their track id"
    );

    // Ids do not depend on threads or shards.
    let two = dir.path().join("two-threads");
    run_ok(&mut labels(&frames, &flow, &two, &["--threads", "2"]));
    assert_eq!(scored(&two), rows);
    let sharded = dir.path().join("sharded");
    for i in 0..3 {
        run_ok(&mut labels(&frames, &flow, &sharded, &["--shard", &format!("{i}/3")]));
    }
    assert_eq!(scored(&sharded), rows);

    // The opt-in rules: their own partition; the backward flow cannot come from files.
    let improved = dir.path().join("improved");
    run_ok(&mut labels(&frames, &flow, &improved, &["--label-rules", "improved"]));
    let params = std::fs::read_dir(improved.join("_params")).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(params).unwrap();
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rules = &record["params"]["rules"];
    assert!(rules["photo_check"] == true && rules["flow_split"] == true, "{text}");
    let refused = labels(&frames, &flow, &dir.path().join("fb"), &["--fb-check"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        refused.status.code() == Some(1) && stderr.contains("--fb-check") && stderr.contains("import"),
        "{stderr}"
    );
    assert!(!dir.path().join("fb").exists());

    // Exports, read back by pycocotools.
    let coco = dir.path().join("labels.coco.json");
    let ytvis = dir.path().join("labels.ytvis.json");
    for (format, file) in [("coco", &coco), ("youtube-vis", &ytvis)] {
        run_ok(
            mrdino()
                .args(["export", "--format", format, "--labels"])
                .arg(&out)
                .arg("--out")
                .arg(file),
        );
    }
    let check = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/check_exports.py"))
        .arg(&out)
        .arg("--root")
        .arg(&frames)
        .arg("--coco")
        .arg(&coco)
        .arg("--ytvis")
        .arg(&ytvis)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check_exports.py:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(summary["instances"].as_u64(), Some(rows.len() as u64), "{summary}");
    assert!(summary["coco"]["annotations"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert!(summary["youtube_vis"]["masks"].as_u64().unwrap_or(0) > 0, "{summary}");
}

/// Runs `mrdino eval` on a labels run against the generated ground truth and returns its JSON.
fn eval_json(out: &Path, data: &Path, json: &Path) -> serde_json::Value {
    run_ok(mrdino().arg("eval").arg("--labels").arg(out).arg("--gt").arg(data).args(["--gt-format", "synth", "--json"]).arg(json));
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}

/// Rewrites every instances table of `out` with its `score` column permuted by one fixed permutation of the
/// run's scores, then lets the done markers vouch for the rewritten files.
fn shuffle_scores(out: &Path) {
    use arrow::array::{Array, ArrayRef, Float32Array, RecordBatch};
    let hashes = partitions(out, LABELS_DATA_DIRS);
    let layout = Layout::new(out, &hashes[0]);
    let mut files: Vec<_> = std::fs::read_dir(layout.instances_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let tables: Vec<_> = files.iter().map(|f| mrdino_outputs::tables::read_parquet(f).unwrap()).collect();
    let mut all: Vec<f32> = Vec::new();
    for (batches, _) in &tables {
        for b in batches {
            let column = b.column_by_name("score").unwrap();
            let scores = column.as_any().downcast_ref::<Float32Array>().unwrap();
            all.extend((0..scores.len()).map(|i| scores.value(i)));
        }
    }
    // A fixed pseudo-random permutation (Fisher–Yates with a linear congruential generator).
    let mut state = 12345u64;
    for i in (1..all.len()).rev() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        all.swap(i, (state >> 33) as usize % (i + 1));
    }
    let mut next = all.into_iter();
    for (file, (batches, metadata)) in files.iter().zip(tables) {
        let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let shuffled: Float32Array = (0..batch.num_rows()).map(|_| next.next()).collect();
        let index = batch.schema().index_of("score").unwrap();
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns[index] = std::sync::Arc::new(shuffled);
        let rewritten = RecordBatch::try_new(batch.schema(), columns).unwrap();
        mrdino_outputs::tables::write_parquet(file, &rewritten, &metadata).unwrap();
    }
    common::record_rewritten_outputs(out);
}

#[test]
fn eval_ranks_by_score_scores_tracks_and_the_report_draws_the_curve() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The scenes of `make demo-synth` (seed 0, 3 sequences of 24 frames at 320×128).
    let frames = synth(&data, "320x128", 3, 24);
    let out = dir.path().join("labels-dis");
    run_ok(
        mrdino()
            .args(["labels", "--dataset", "frames", "--quiet", "--flow", "dis", "--root"])
            .arg(&frames)
            .arg("--out")
            .arg(&out),
    );
    let result = eval_json(&out, &data, &dir.path().join("eval.json"));
    let ranked = &result["ranked"];
    let ap = ranked["ap50"].as_f64().unwrap();
    let chance = ranked["precision_at_full"].as_f64().unwrap() * ranked["recall_at_full"].as_f64().unwrap();
    eprintln!("DIS flow: AP50 by score {ap:.3}, fixed-set precision × recall {chance:.3}; {ranked}");
    assert!(ranked["predictions"].as_u64().unwrap() >= 20, "{ranked}");
    // An uninformative ranking scores precision × recall in expectation, a perfect one the recall: the score must
    // take a clear share of the room between them.
    let perfect = ranked["recall_at_full"].as_f64().unwrap();
    assert!(
        ap > chance + 0.25 * (perfect - chance),
        "AP50 by score {ap} is not clearly above precision × recall {chance} (perfect ranking: {perfect})"
    );
    assert!(!ranked["curve"].as_array().unwrap().is_empty());
    let tracking = &result["tracking"];
    for figure in ["motsa", "idf1", "same_track_fraction"] {
        assert!(tracking[figure].as_f64().is_some_and(|v| v <= 1.0), "{tracking}");
    }

    // The report draws the curve of this evaluation.
    let report = dir.path().join("report");
    run_ok(
        mrdino()
            .arg("report")
            .arg("--labels")
            .arg(&out)
            .arg("--eval")
            .arg(dir.path().join("eval.json"))
            .args(["--samples", "1", "--out"])
            .arg(&report),
    );
    let page = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(page.contains("Precision and recall by score") && page.contains(&format!("AP50 {ap:.3}")));

    // The opt-in rules score above the reference's on the same flow, neither precision nor recall lower.
    let improved = dir.path().join("labels-dis-improved");
    run_ok(
        mrdino()
            .args(["labels", "--dataset", "frames", "--quiet", "--flow", "dis", "--label-rules", "improved", "--root"])
            .arg(&frames)
            .arg("--out")
            .arg(&improved),
    );
    let better = eval_json(&improved, &data, &dir.path().join("improved.json"));
    let (m, b) = (&result["metrics"], &better["metrics"]);
    eprintln!("F1@50 reference rules {}, improved {}", m["f1_50"], b["f1_50"]);
    assert!(b["f1_50"].as_f64().unwrap() >= m["f1_50"].as_f64().unwrap() + 0.10, "{m}\n{b}");
    assert!(b["ap50"].as_f64().unwrap() >= m["ap50"].as_f64().unwrap(), "precision: {m}\n{b}");
    assert!(b["ar50"].as_f64().unwrap() >= m["ar50"].as_f64().unwrap(), "recall: {m}\n{b}");

    // The same instances with their scores shuffled rank worse.
    shuffle_scores(&out);
    let shuffled = eval_json(&out, &data, &dir.path().join("shuffled.json"));
    let shuffled_ap = shuffled["ranked"]["ap50"].as_f64().unwrap();
    eprintln!("shuffled scores: AP50 {shuffled_ap:.3}");
    assert_eq!(shuffled["metrics"], result["metrics"], "the fixed-set metrics do not depend on the score");
    assert!(shuffled_ap < ap, "shuffled scores: AP50 {shuffled_ap} not below {ap}");

    // With exact flow the tracks hold.
    let exact = dir.path().join("labels-exact");
    run_ok(&mut labels(&frames, &data.join("flow"), &exact, &[]));
    let result = eval_json(&exact, &data, &dir.path().join("exact.json"));
    let tracking = &result["tracking"];
    eprintln!("exact flow tracking: {tracking}");
    assert!(tracking["same_track_fraction"].as_f64().unwrap() >= 0.95, "{tracking}");
    assert!(tracking["counts"]["consecutive_pairs"].as_u64().unwrap() >= 5, "{tracking}");
}
