//! `mrdino_model::similarity` against NumPy / scikit-learn re-statements (`tools/reference/similarity_fixtures.py`,
//! run with `MRDINO_PYTHON`), ≤ 1e-8 relative, and the invariances CKA must have.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mrdino_model::similarity::{
    bootstrap, cca, knn_purity, linear_cka, linear_cka_debiased, pca_2d, percentile, pwcca, svcca, SimilarityError,
};
use tch::{Kind, Tensor};

fn python() -> PathBuf {
    std::env::var_os("MRDINO_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/mrdino/venv/bin/python")
    })
}

fn fixtures() -> &'static HashMap<String, Tensor> {
    struct Fixtures(HashMap<String, Tensor>);
    // Tensors are only read.
    unsafe impl Sync for Fixtures {}
    unsafe impl Send for Fixtures {}
    static DATA: OnceLock<Fixtures> = OnceLock::new();
    &DATA
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("similarity");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/similarity_fixtures.py");
            let py = python();
            let out = Command::new(&py).arg(&script).arg(&dir).output().unwrap_or_else(|e| {
                panic!(
                    "cannot run {} with {} ({e}); `make venv` creates the venv",
                    script.display(),
                    py.display()
                )
            });
            assert!(
                out.status.success(),
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let tensors = Tensor::read_safetensors(dir.join("similarity.safetensors")).expect("fixture file");
            Fixtures(tensors.into_iter().collect())
        })
        .0
}

fn get(name: &str) -> &'static Tensor {
    fixtures().get(name).unwrap_or_else(|| panic!("fixture {name} missing"))
}

fn value(name: &str) -> f64 {
    get(name).double_value(&[0])
}

fn assert_rel(actual: f64, expected: f64, what: &str) {
    let rel = (actual - expected).abs() / expected.abs().max(1e-300);
    assert!(rel <= 1e-8, "{what}: {actual} vs {expected} (relative {rel:e})");
}

#[test]
fn cka_cca_family_matches_numpy() {
    for c in 0..3 {
        let (x, y) = (get(&format!("x{c}")), get(&format!("y{c}")));
        assert_rel(
            linear_cka(x, y).unwrap(),
            value(&format!("cka{c}")),
            &format!("CKA case {c}"),
        );
        assert_rel(
            linear_cka_debiased(x, y).unwrap(),
            value(&format!("dcka{c}")),
            &format!("debiased CKA case {c}"),
        );
        let rho = cca(x, y).unwrap().correlations;
        let expected = Vec::<f64>::try_from(get(&format!("rho{c}"))).unwrap();
        assert_eq!(rho.len(), expected.len(), "case {c}: number of canonical correlations");
        for (i, (a, e)) in rho.iter().zip(&expected).enumerate() {
            assert_rel(*a, *e, &format!("case {c} canonical correlation {i}"));
        }
        assert_rel(
            svcca(x, y, 0.99, None).unwrap(),
            value(&format!("svcca{c}")),
            &format!("SVCCA case {c}"),
        );
        assert_rel(
            pwcca(x, y).unwrap(),
            value(&format!("pwcca{c}")),
            &format!("PWCCA case {c}"),
        );
    }
}

#[test]
fn cka_with_fewer_examples_than_features_matches_numpy() {
    let (x, y) = (get("xw"), get("yw"));
    assert_rel(linear_cka(x, y).unwrap(), value("ckaw"), "CKA, 12 × 300 vs 12 × 200");
    assert_rel(
        linear_cka_debiased(x, y).unwrap(),
        value("dckaw"),
        "debiased CKA, 12 × 300 vs 12 × 200",
    );
}

#[test]
fn purity_matches_sklearn_neighbours() {
    let labels: Vec<usize> = Vec::<i64>::try_from(get("labels"))
        .unwrap()
        .into_iter()
        .map(|l| l as usize)
        .collect();
    let purity = knn_purity(get("points"), &labels, 7).unwrap();
    let expected = Vec::<f64>::try_from(get("purity_per_label")).unwrap();
    for (a, e) in purity.per_label.iter().zip(&expected) {
        assert_rel(*a, *e, "purity per label");
    }
    assert_rel(purity.overall, value("purity_overall"), "purity overall");
    assert!(matches!(
        knn_purity(get("points"), &labels, 0),
        Err(SimilarityError::BadK { .. })
    ));
    assert!(matches!(
        knn_purity(get("points"), &labels[1..], 3),
        Err(SimilarityError::LabelCount { .. })
    ));
}

#[test]
fn pca_matches_sklearn() {
    let scores = pca_2d(get("points")).unwrap();
    let expected = get("pca");
    for (i, (x, y)) in scores.iter().enumerate() {
        let (ex, ey) = (
            expected.double_value(&[i as i64, 0]),
            expected.double_value(&[i as i64, 1]),
        );
        assert!(
            (x - ex).abs() <= 1e-8 * ex.abs().max(1.0) && (y - ey).abs() <= 1e-8 * ey.abs().max(1.0),
            "row {i}: ({x}, {y}) vs ({ex}, {ey})"
        );
    }
}

#[test]
fn percentiles_match_numpy() {
    let v = Vec::<f64>::try_from(get("pvalues")).unwrap();
    let expected = Vec::<f64>::try_from(get("percentiles")).unwrap();
    for (q, e) in [0.0, 2.5, 50.0, 97.5, 100.0].iter().zip(&expected) {
        assert_rel(percentile(&v, *q), *e, &format!("percentile {q}"));
    }
}

#[test]
fn cka_invariances() {
    let (x, y, q) = mrdino_model::dinosaur::seeded(7, || {
        let draw = |shape: [i64; 2]| Tensor::randn(shape, (Kind::Double, tch::Device::Cpu));
        let x = draw([80, 10]);
        let y = x.matmul(&draw([10, 6])) + draw([80, 6]);
        let (q, _) = Tensor::linalg_qr(&draw([10, 10]), "reduced");
        (x, y, q)
    });
    for f in [linear_cka, linear_cka_debiased] {
        assert!((f(&x, &x).unwrap() - 1.0).abs() < 1e-12, "CKA(X, X) = 1");
        let base = f(&x, &y).unwrap();
        let rotated = f(&x.matmul(&q), &y).unwrap();
        let scaled = f(&(&x * 17.5), &(&y * 0.003)).unwrap();
        assert!(
            (rotated - base).abs() < 1e-12 * base.abs(),
            "orthogonal invariance: {rotated} vs {base}"
        );
        assert!(
            (scaled - base).abs() < 1e-12 * base.abs(),
            "isotropic scaling invariance: {scaled} vs {base}"
        );
    }
    assert!((svcca(&x, &x, 0.99, None).unwrap() - 1.0).abs() < 1e-10);
    assert!((pwcca(&x, &x).unwrap() - 1.0).abs() < 1e-10);
    assert!(matches!(
        linear_cka(&x, &y.narrow(0, 0, 10)),
        Err(SimilarityError::RowMismatch { x: 80, y: 10 })
    ));
}

#[test]
fn bootstrap_is_reproducible_and_brackets_the_value() {
    let (x, y) = (get("x0"), get("y0"));
    let stat = |idx: &Tensor| linear_cka(&x.index_select(0, idx), &y.index_select(0, idx));
    let a = bootstrap(x.size()[0] as usize, 200, 11, stat).unwrap();
    let b = bootstrap(x.size()[0] as usize, 200, 11, stat).unwrap();
    assert_eq!(a, b, "same seed, same interval");
    assert_rel(a.value, value("cka0"), "bootstrap point value");
    assert!(a.ci_low < a.value && a.value < a.ci_high, "{a:?}");
    assert!(a.ci_high - a.ci_low < 0.5, "{a:?}");
}
