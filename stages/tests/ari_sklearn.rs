//! Our fg-ARI and all-ARI against scikit-learn's `adjusted_rand_score` on the same pixels, for random label
//! maps (blocky objects, split, merged, relabelled and noisy predictions). The reference script is
//! `tools/reference/ari_ref.py`, run with the project's Python environment (`MRDINO_PYTHON`, default
//! `$HOME/.cache/mrdino/venv/bin/python`, which has numpy and scikit-learn); without it the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use mrdino_stages::metrics::adjusted_rand_index;

const TOLERANCE: f64 = 1e-9;

/// SplitMix64, so the cases are the same on every run and platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Case {
    prediction: Vec<u32>,
    ground_truth: Vec<u32>,
}

/// A ground truth of 2–6 rectangles on background (at least 2 of them visible, as images with fewer objects
/// are not scored) and a prediction derived from it in one of several ways.
fn random_case(rng: &mut Rng, index: usize) -> Case {
    let (width, ground_truth) = loop {
        let (height, width) = (8 + rng.below(40), 8 + rng.below(60));
        let mut ground_truth = vec![0u32; height * width];
        for id in 1..=(2 + rng.below(5)) as u32 {
            let (h, w) = (1 + rng.below(height / 2), 1 + rng.below(width / 2));
            let (top, left) = (rng.below(height - h + 1), rng.below(width - w + 1));
            for r in top..top + h {
                for c in left..left + w {
                    ground_truth[r * width + c] = id;
                }
            }
        }
        let first = ground_truth.iter().copied().find(|&g| g != 0);
        if ground_truth.iter().any(|&g| g != 0 && Some(g) != first) {
            break (width, ground_truth);
        }
    };
    let prediction: Vec<u32> = match index % 4 {
        // Relabelled copy with a fraction of pixels flipped to random ids.
        0 => {
            let flip_per_mille = rng.below(400) as u64;
            ground_truth
                .iter()
                .map(|&g| {
                    if (rng.next() % 1000) < flip_per_mille {
                        rng.below(8) as u32
                    } else {
                        g * 3 + 1
                    }
                })
                .collect()
        }
        // Objects merged pairwise, background split into halves.
        1 => (0..ground_truth.len())
            .map(|p| match ground_truth[p] {
                0 => 100 + u32::from(p % width < width / 2),
                g => g / 2,
            })
            .collect(),
        // Each object split by rows.
        2 => (0..ground_truth.len())
            .map(|p| ground_truth[p] * 10 + u32::from((p / width) % 3 == 0))
            .collect(),
        // Unrelated random blocks.
        _ => (0..ground_truth.len())
            .map(|p| ((p / width) / 4 * 7 + (p % width) / 5) as u32 % 5)
            .collect(),
    };
    Case {
        prediction,
        ground_truth,
    }
}

fn python() -> PathBuf {
    match std::env::var_os("MRDINO_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set, and MRDINO_PYTHON neither");
            PathBuf::from(home).join(".cache/mrdino/venv/bin/python")
        }
    }
}

fn sklearn_scores(cases: &[Case]) -> Vec<(f64, f64)> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tools/reference/ari_ref.py");
    let interpreter = python();
    let mut input = format!("{}\n", cases.len());
    let join = |labels: &[u32]| labels.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    for case in cases {
        input += &format!("{}\n{}\n", join(&case.prediction), join(&case.ground_truth));
    }
    let mut child = Command::new(&interpreter)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the ARI reference {} with {} ({e}); set MRDINO_PYTHON to a Python with numpy and \
                 scikit-learn (`make venv` creates one)",
                script.display(),
                interpreter.display()
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write cases to the reference script");
    let output = child.wait_with_output().expect("wait for the reference script");
    assert!(
        output.status.success(),
        "the ARI reference {} failed under {}: {}",
        script.display(),
        interpreter.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|line| {
            let mut values = line.split_whitespace().map(|v| v.parse::<f64>().expect("a float"));
            (values.next().expect("fg"), values.next().expect("all"))
        })
        .collect()
}

#[test]
fn fg_and_all_ari_agree_with_scikit_learn() {
    let mut rng = Rng(2024);
    let cases: Vec<Case> = (0..60).map(|i| random_case(&mut rng, i)).collect();
    let reference = sklearn_scores(&cases);
    assert_eq!(reference.len(), cases.len(), "one reference line per case");
    let mut worst = 0.0f64;
    for (i, (case, &(fg_ref, all_ref))) in cases.iter().zip(&reference).enumerate() {
        let fg = adjusted_rand_index(&case.prediction, &case.ground_truth, true).expect("same length");
        let all = adjusted_rand_index(&case.prediction, &case.ground_truth, false).expect("same length");
        assert!(
            (fg - fg_ref).abs() < TOLERANCE,
            "case {i}: fg-ARI {fg} vs scikit-learn {fg_ref}"
        );
        worst = worst.max((fg - fg_ref).abs());
        assert!(
            (all - all_ref).abs() < TOLERANCE,
            "case {i}: all-ARI {all} vs scikit-learn {all_ref}"
        );
        worst = worst.max((all - all_ref).abs());
    }
    let spread = |pick: fn(&(f64, f64)) -> f64| {
        reference
            .iter()
            .map(pick)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    println!(
        "{} cases, worst |ours - sklearn| = {worst:.2e}; sklearn fg-ARI range {:?}, all-ARI range {:?}",
        cases.len(),
        spread(|r| r.0),
        spread(|r| r.1)
    );
}
