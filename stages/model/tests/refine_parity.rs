//! Parity of the refinement core (`mrdino_model::{matching, refine, views}`) with SciPy, PyTorch and Pillow.
//!
//! `tools/reference/refine_fixtures.py` (run with `MRDINO_PYTHON`, default `$HOME/.cache/mrdino/venv/bin/python`)
//! writes cost matrices with SciPy's assignments, a PyTorch statement of the stage-1 and stage-2 losses of the
//! spec on random tensors (loss and gradient, for the reference behaviour and each fix flag), a random-weight
//! slot-deactivation MLP, and Pillow NEAREST/BILINEAR resizes. Losses and gradients must agree to 1e-6, and
//! assignments, droppable slots and resized pixels exactly. The Hungarian solver is also checked against brute
//! force on random matrices.
//!
//! Two small committed files under `tests/data/` hold numbers made once by running the reference's own modules
//! (visinf/mr-dinosaur `ocl/losses.py` `wbce` / `NLLloss_batch`, `ocl/utils/windows.py` `JoinWindows` /
//! `MergeWindows`; scripts `tools/reference/{losses_reference_fixture,merge_windows_fixture}.py`): the
//! default losses must match them to 1e-6 and the merged canvases exactly.
//!
//! `MRDINO_REFINE_FIXTURES=<dir>` reuses fixtures the script wrote to `<dir>` earlier instead of regenerating.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mrdino_model::matching::linear_sum_assignment;
use mrdino_model::refine::{
    bce_cost_matrices, stage1_loss, stage2_loss, SlotDeactivation, Stage2Inputs, Stage2Options,
};
use mrdino_model::views::{pil_nearest_indices, pil_resize_bilinear_u8};
use mrdino_model::windows::{join_windows, merge_windows, MergeOptions, WindowOffset};
use tch::{nn, Kind, Tensor};

const TOLERANCE: f64 = 1e-6;

fn python() -> PathBuf {
    match std::env::var_os("MRDINO_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/mrdino/venv/bin/python")
        }
    }
}

/// Generates the fixtures once per test binary, under cargo's per-target temporary directory.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        tch::set_num_threads(1);
        if let Some(dir) = std::env::var_os("MRDINO_REFINE_FIXTURES") {
            return PathBuf::from(dir);
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("refine_parity");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/refine_fixtures.py");
        let py = python();
        let output = Command::new(&py).arg(&script).arg(&dir).output().unwrap_or_else(|e| {
            panic!(
                "cannot run the refinement fixture generator with {} ({e}); set MRDINO_PYTHON to a python with \
                 torch 2.13, scipy, pillow, safetensors and numpy (`make venv` creates one)",
                py.display()
            )
        });
        assert!(
            output.status.success(),
            "{} {} failed ({}):\n{}\n{}",
            py.display(),
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        dir
    })
}

fn load(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(name);
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn get<'a>(tensors: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    tensors
        .get(name)
        .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn rows_of(t: &Tensor) -> Vec<Vec<i64>> {
    let cols = t.size()[1];
    let flat = Vec::<i64>::try_from(t.flatten(0, -1)).expect("int64 tensor");
    flat.chunks(cols as usize).map(<[i64]>::to_vec).collect()
}

#[test]
fn hungarian_matches_scipy_on_every_fixture() {
    let cases = load("hungarian.safetensors");
    let mut names: Vec<&String> = cases.keys().filter(|k| k.starts_with("cost_")).collect();
    names.sort();
    assert!(names.len() > 200, "{} cases", names.len());
    let (mut tall, mut wide) = (0, 0);
    for name in names {
        let cost = &cases[name];
        let (rows, cols) = (cost.size()[0] as usize, cost.size()[1] as usize);
        tall += usize::from(rows > cols);
        wide += usize::from(rows < cols);
        let values = Vec::<f64>::try_from(cost.flatten(0, -1)).expect("f64");
        let expected: Vec<(usize, usize)> = rows_of(get(&cases, &name.replace("cost_", "pairs_")))
            .into_iter()
            .map(|p| (p[0] as usize, p[1] as usize))
            .collect();
        let actual = linear_sum_assignment(&values, rows, cols).expect("solve");
        assert_eq!(actual, expected, "{name} ({rows}x{cols}): {values:?}");
    }
    assert!(tall > 50 && wide > 50);
}

/// A small deterministic generator (SplitMix64) for the brute-force matrices.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Minimal total cost over all injective maps of the smaller side into the larger.
fn brute_force_min(cost: &[f64], rows: usize, cols: usize) -> f64 {
    fn search(cost: &[f64], rows: usize, cols: usize, row: usize, used: &mut Vec<bool>, acc: f64, best: &mut f64) {
        if row == rows {
            *best = best.min(acc);
            return;
        }
        for c in 0..cols {
            if !used[c] {
                used[c] = true;
                search(cost, rows, cols, row + 1, used, acc + cost[row * cols + c], best);
                used[c] = false;
            }
        }
    }
    let (r, c, m): (usize, usize, Vec<f64>) = if rows <= cols {
        (rows, cols, cost.to_vec())
    } else {
        (
            cols,
            rows,
            (0..cols)
                .flat_map(|j| (0..rows).map(move |i| cost[i * cols + j]))
                .collect(),
        )
    };
    let mut best = f64::INFINITY;
    search(&m, r, c, 0, &mut vec![false; c], 0.0, &mut best);
    best
}

#[test]
fn hungarian_is_optimal_against_brute_force() {
    let mut rng = SplitMix(17);
    let mut checked = 0;
    for rows in 1..=6 {
        for cols in 1..=6 {
            for kind in 0..6 {
                let cost: Vec<f64> = (0..rows * cols)
                    .map(|_| {
                        let u = rng.next();
                        if kind % 2 == 0 {
                            (u % 3) as f64
                        } else {
                            (u >> 11) as f64 / (1u64 << 53) as f64
                        }
                    })
                    .collect();
                let pairs = linear_sum_assignment(&cost, rows, cols).expect("solve");
                assert_eq!(pairs.len(), rows.min(cols));
                let mut seen_rows: Vec<usize> = pairs.iter().map(|p| p.0).collect();
                let mut seen_cols: Vec<usize> = pairs.iter().map(|p| p.1).collect();
                assert!(seen_rows.windows(2).all(|w| w[0] < w[1]), "rows ascending");
                seen_cols.sort_unstable();
                seen_cols.dedup();
                seen_rows.dedup();
                assert_eq!(seen_cols.len(), pairs.len(), "distinct columns");
                let total: f64 = pairs.iter().map(|&(r, c)| cost[r * cols + c]).sum();
                let best = brute_force_min(&cost, rows, cols);
                assert!((total - best).abs() < 1e-12, "{rows}x{cols}: {total} vs {best}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 216);
}

#[test]
fn stage1_loss_matches_the_pytorch_statement() {
    let fx = load("stage1.safetensors");
    for case in ["fewer_masks", "more_masks"] {
        let alpha = get(&fx, &format!("{case}.alpha")).detach().set_requires_grad(true);
        let masks = get(&fx, &format!("{case}.masks"));
        // The batched float64 costs, rounded to float32, against PyTorch's per-pair float32 means.
        let costs = bce_cost_matrices(&alpha, masks).expect("costs");
        let expected_costs = get(&fx, &format!("{case}.costs"));
        let relative = ((&costs - expected_costs).abs() / expected_costs.abs().clamp_min(1e-12))
            .max()
            .double_value(&[]);
        let exact = costs
            .eq_tensor(expected_costs)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        eprintln!(
            "stage 1 {case} costs: max relative |Δ| = {relative:.3e}, {:.1}% bit-identical",
            100.0 * exact
        );
        assert!(relative <= 4.0 * f64::from(f32::EPSILON), "{case}");
        let result = stage1_loss(&alpha, masks).expect("stage 1 loss");
        result.loss.backward();
        let loss_diff = max_abs_diff(&result.loss.reshape([1]), get(&fx, &format!("{case}.loss")));
        let grad_diff = max_abs_diff(&alpha.grad(), get(&fx, &format!("{case}.grad_alpha")));
        eprintln!("stage 1 {case}: |Δloss| = {loss_diff:.3e}, max |Δgrad| = {grad_diff:.3e}");
        assert!(loss_diff <= TOLERANCE && grad_diff <= TOLERANCE, "{case}");
        let pairs: Vec<Vec<i64>> = result
            .matches
            .iter()
            .enumerate()
            .flat_map(|(e, m)| m.pairs.iter().map(move |&(i, s)| vec![e as i64, i as i64, s as i64]))
            .collect();
        assert_eq!(pairs, rows_of(get(&fx, &format!("{case}.pairs"))), "{case}");
    }
}

#[test]
fn stage2_loss_matches_for_every_flag() {
    let fx = load("stage2.safetensors");
    let (slots, alpha, masks) = (
        get(&fx, "stage2.slots"),
        get(&fx, "stage2.alpha"),
        get(&fx, "stage2.masks"),
    );
    let mut losses = Vec::new();
    for keep_largest_masks in [false, true] {
        for per_image_similarity in [false, true] {
            for background_weight in [0.4, 0.2] {
                let name = format!(
                    "stage2.{}{}.{background_weight}",
                    u8::from(keep_largest_masks),
                    u8::from(per_image_similarity)
                );
                let weights = get(&fx, "stage2.weights").detach().set_requires_grad(true);
                let weighted_alpha = alpha * weights.unsqueeze(-1).unsqueeze(-1);
                let foreground = weighted_alpha.sum_dim_intlist([1].as_slice(), true, Kind::Float);
                let options = Stage2Options {
                    keep_largest_masks,
                    per_image_similarity,
                    ..Stage2Options::reference(background_weight)
                };
                let inputs = Stage2Inputs {
                    slots,
                    alpha,
                    weighted_alpha: &weighted_alpha,
                    foreground: &foreground,
                    masks,
                };
                let result = stage2_loss(&inputs, &options).expect("stage 2 loss");
                result.loss.backward();
                let loss_diff = max_abs_diff(&result.loss.reshape([1]), get(&fx, &format!("{name}.loss")));
                let grad_diff = max_abs_diff(&weights.grad(), get(&fx, &format!("{name}.grad_weights")));
                eprintln!("{name}: |Δloss| = {loss_diff:.3e}, max |Δgrad| = {grad_diff:.3e}");
                assert!(loss_diff <= TOLERANCE && grad_diff <= TOLERANCE, "{name}");
                let droppable: Vec<Vec<i64>> = result
                    .droppable
                    .iter()
                    .enumerate()
                    .flat_map(|(e, d)| d.iter().map(move |&s| vec![e as i64, s as i64]))
                    .collect();
                assert_eq!(droppable, rows_of(get(&fx, &format!("{name}.droppable"))), "{name}");
                assert!(result.loss.double_value(&[]).is_finite());
                losses.push(result.loss.double_value(&[]));
            }
        }
    }
    // Every flag changes the loss on this batch, so none of them can be silently ignored.
    for (i, a) in losses.iter().enumerate() {
        for b in &losses[i + 1..] {
            assert!((a - b).abs() > 1e-4, "{losses:?}");
        }
    }
}

#[test]
fn slot_deactivation_mlp_matches_pytorch() {
    let fx = load("stage2.safetensors");
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let mlp = SlotDeactivation::new(&(vs.root() / "object_decoder" / "slot_decoder"), 6, 16).unwrap();
    let mut names: Vec<String> = vs.variables().into_keys().collect();
    names.sort();
    let mut expected: Vec<String> = fx
        .keys()
        .filter(|k| k.starts_with("object_decoder."))
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    for (name, var) in vs.variables() {
        let fan_in = if name.ends_with(".0.weight") { 6.0 } else { 16.0f64 };
        if name.ends_with("bias") {
            assert_eq!(var.abs().max().double_value(&[]), 0.0, "{name} starts at zero");
        } else {
            assert!(
                var.abs().max().double_value(&[]) <= 1.0 / fan_in.sqrt(),
                "{name} within U(±1/√fan_in)"
            );
        }
    }
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            var.copy_(get(&fx, &name));
        }
    });
    let weights = tch::no_grad(|| mlp.weights(get(&fx, "mlp.slots"))).expect("weights");
    assert!(mlp
        .weights(&Tensor::zeros([2, 5, 7], (Kind::Float, tch::Device::Cpu)))
        .is_err());
    let diff = max_abs_diff(&weights, get(&fx, "mlp.weights"));
    eprintln!("slot-deactivation MLP: max |Δw| = {diff:.3e}");
    assert!(diff <= TOLERANCE);
}

#[test]
fn pil_resizes_match_pillow() {
    let fx = load("pil.safetensors");
    let mut nearest = 0;
    let mut bilinear = 0;
    let mut failures = Vec::new();
    let mut names: Vec<&String> = fx.keys().collect();
    names.sort();
    for name in names {
        let parts: Vec<&str> = name.split('_').collect();
        if name.starts_with("nearest_") {
            let (n_in, n_out): (usize, usize) = (
                parts[parts.len() - 2].parse().expect("size"),
                parts[parts.len() - 1].parse().expect("size"),
            );
            let expected: Vec<usize> = Vec::<i64>::try_from(&fx[name])
                .expect("ints")
                .into_iter()
                .map(|v| v as usize)
                .collect();
            assert_eq!(pil_nearest_indices(n_in, n_out), expected, "{name}");
            nearest += 1;
        } else if name.ends_with(".in") {
            let input = &fx[name];
            let output = get(&fx, &name.replace(".in", ".out"));
            let (h, w) = (input.size()[0] as usize, input.size()[1] as usize);
            let (oh, ow) = (output.size()[0] as usize, output.size()[1] as usize);
            let pixels = Vec::<u8>::try_from(input.flatten(0, -1)).expect("u8");
            let expected = Vec::<u8>::try_from(output.flatten(0, -1)).expect("u8");
            let actual = pil_resize_bilinear_u8(&pixels, h, w, 3, oh, ow).expect("resize");
            let differing = actual.iter().zip(&expected).filter(|(a, b)| a != b).count();
            if differing > 0 {
                failures.push(format!("{name}: {differing} of {} values differ", expected.len()));
            }
            bilinear += 1;
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!((nearest, bilinear), (20, 8));
}

/// `stages/model/tests/data/merge_windows_reference.safetensors` holds what the reference's own `JoinWindows`
/// and `MergeWindows` returned on 40 random 4-window canvases (made once by
/// `tools/reference/merge_windows_fixture.py` from visinf/mr-dinosaur's `ocl/utils/windows.py`).
#[test]
fn merge_matches_the_reference_modules_on_random_canvases() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/merge_windows_reference.safetensors");
    let fx: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect();
    let offsets: Vec<WindowOffset> = Vec::<i64>::try_from(get(&fx, "offsets"))
        .expect("offsets")
        .into_iter()
        .map(|x_px| WindowOffset { x_px, y_px: 0 })
        .collect();
    let (mut cases, mut merges) = (0, 0);
    while let Some(masks) = fx.get(&format!("{cases:03}.masks")) {
        let features = get(&fx, &format!("{cases:03}.features"));
        let joined = join_windows(masks, &offsets, (6, 18)).expect("join");
        let merged = merge_windows(&joined, features, &offsets, (6, 6), &MergeOptions::default()).expect("merge");
        let expected: Vec<u32> = Vec::<i64>::try_from(get(&fx, &format!("{cases:03}.merged")).flatten(0, -1))
            .expect("ids")
            .into_iter()
            .map(|c| c as u32)
            .collect();
        assert_eq!(
            merged.channel_of_pixel, expected,
            "case {cases}: merges {:?}",
            merged.merges
        );
        merges += merged.merges.len();
        cases += 1;
    }
    eprintln!("MergeWindows: {cases} reference canvases identical, {merges} merges among them");
    assert_eq!(cases, 40);
    assert!(merges >= 20, "{merges} merges");
}

/// `stages/model/tests/data/losses_reference.safetensors` holds what the reference's own `wbce` and
/// `NLLloss_batch` (`ocl/losses.py`) returned on random tensors (made once by
/// `tools/reference/losses_reference_fixture.py`); the defaults (no fix flag) must agree to 1e-6.
#[test]
fn losses_match_the_reference_modules() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/losses_reference.safetensors");
    let fx: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect();
    let alpha = get(&fx, "stage1.alpha").detach().set_requires_grad(true);
    let result = stage1_loss(&alpha, get(&fx, "stage1.masks")).expect("stage 1");
    result.loss.backward();
    let loss_diff = max_abs_diff(&result.loss.reshape([1]), get(&fx, "stage1.loss"));
    let grad_diff = max_abs_diff(&alpha.grad(), get(&fx, "stage1.grad_alpha"));
    eprintln!("reference wbce: |Δloss| = {loss_diff:.3e}, max |Δgrad| = {grad_diff:.3e}");
    assert!(loss_diff <= TOLERANCE && grad_diff <= TOLERANCE);

    let (slots, alpha, masks) = (
        get(&fx, "stage2.features"),
        get(&fx, "stage2.alpha"),
        get(&fx, "stage2.masks"),
    );
    for background_weight in [0.4, 0.2] {
        let weights = get(&fx, "stage2.weights").detach().set_requires_grad(true);
        let weighted_alpha = alpha * weights.unsqueeze(-1).unsqueeze(-1);
        let foreground = weighted_alpha.sum_dim_intlist([1].as_slice(), true, Kind::Float);
        let inputs = Stage2Inputs {
            slots,
            alpha,
            weighted_alpha: &weighted_alpha,
            foreground: &foreground,
            masks,
        };
        let result = stage2_loss(&inputs, &Stage2Options::reference(background_weight)).expect("stage 2");
        result.loss.backward();
        let name = format!("stage2.{background_weight}");
        let loss_diff = max_abs_diff(&result.loss.reshape([1]), get(&fx, &format!("{name}.loss")));
        let grad_diff = max_abs_diff(&weights.grad(), get(&fx, &format!("{name}.grad_weights")));
        eprintln!(
            "reference NLLloss_batch α = {background_weight}: |Δloss| = {loss_diff:.3e}, max |Δgrad| = {grad_diff:.3e}"
        );
        assert!(loss_diff <= TOLERANCE && grad_diff <= TOLERANCE, "{name}");
    }
}
