//! `mrdino_model::talk2dino::{segment, pamr, resize_square, keep_ratio_resize}` against a PyTorch statement of
//! Talk2DINO's two inference paths and of its PAMR (`tools/reference/talk2dino_views_fixtures.py`: a random
//! DINOv2-with-registers backbone with re-randomised norms, biases and tokens, random class embeddings, three images
//! of 150×230, 200×120 and 40×300 px):
//! - the square resize keeps fractional values and equals torchvision's float resize;
//! - the keep-ratio resize equals OpenCV's (cv2) uint8 bilinear resize;
//! - PAMR alone on a random image and random soft masks (refined masks within 1e-5, argmax identical);
//! - square view with background cleaning, square view with PAMR, sliding view, and sliding view with background
//!   cleaning and PAMR: labels identical on ≥ 99.99 % of the pixels of every case, scores close.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mrdino_model::talk2dino::{
    keep_ratio_resize, pamr, resize_square, segment, PamrConfig, SegmentOptions, SlidingWindow, View, INPUT_PX,
};
use mrdino_model::vit::{Vit, VitConfig};
use tch::{Device, Kind, Tensor};

const VIT_SPEC: &str = "custom:family=dinov2,depth=2,dim=64,heads=2,patch=14,registers=4,pos_grid=37";
const MIN_AGREEMENT: f64 = 0.9999;

fn python() -> PathBuf {
    std::env::var_os("MRDINO_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/mrdino/venv/bin/python")
    })
}

/// Generates the fixtures once per test binary.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("talk2dino_views");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/reference/talk2dino_views_fixtures.py");
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
        dir
    })
}

struct Fixtures {
    io: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

impl Fixtures {
    fn get() -> Self {
        let dir = fixtures();
        Self {
            io: Tensor::read_safetensors(dir.join("io.safetensors"))
                .unwrap()
                .into_iter()
                .collect(),
            meta: serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap(),
        }
    }

    fn t(&self, key: &str) -> &Tensor {
        self.io.get(key).unwrap_or_else(|| panic!("fixture has no `{key}`"))
    }

    fn threshold(&self, key: &str) -> f64 {
        self.meta[format!("threshold.{key}")]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no threshold for {key}"))
    }
}

fn vit() -> Vit {
    tch::set_num_threads(2);
    let config = VitConfig::by_name(VIT_SPEC).unwrap();
    Vit::load(&fixtures().join("backbone.safetensors"), Some(config), Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn agreement(a: &Tensor, b: &Tensor) -> f64 {
    a.eq_tensor(b)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[])
}

#[test]
fn square_resize_keeps_fractions_and_equals_torchvision() {
    let f = Fixtures::get();
    for name in ["A", "B", "C"] {
        let image = f.t(&format!("{name}.image"));
        let ours = resize_square(image, INPUT_PX, true).unwrap();
        let reference = f.t(&format!("{name}.square01"));
        // In 0..255 units: float32 rounding of the resize, nothing like the ±0.5 of a rounded result.
        let diff = max_diff(&ours, reference) * 255.0;
        assert!(
            diff <= 1e-3,
            "{name}: the square resize differs from torchvision's by {diff} (0..255 units)"
        );
        let scaled = &ours * 255.0;
        let fraction = (&scaled - scaled.round()).abs();
        let fractional_share = fraction
            .gt(0.01)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(
            fractional_share > 0.5,
            "{name}: only {fractional_share} of the resized values are off the integers; the resize was rounded"
        );
        assert!(fraction.max().double_value(&[]) > 0.45, "{name}: no value near a half");
        assert_eq!(ours.kind(), Kind::Float);
    }
    // An image already 448×448 passes through unchanged (torchvision returns it as is).
    let square = (Tensor::rand([1, 3, INPUT_PX, INPUT_PX], (Kind::Float, Device::Cpu)) * 255.0).round();
    assert_eq!(
        max_diff(&resize_square(&square, INPUT_PX, true).unwrap(), &(&square / 255.0)),
        0.0
    );
}

#[test]
fn keep_ratio_resize_equals_opencv() {
    let f = Fixtures::get();
    for name in ["A", "B", "C"] {
        let ours = keep_ratio_resize(f.t(&format!("{name}.image")), &SlidingWindow::TALK2DINO).unwrap();
        let reference = f.t(&format!("{name}.keep_ratio")).to_kind(Kind::Float);
        assert_eq!(ours.size(), reference.size(), "{name}");
        let same = agreement(&ours, &reference);
        assert_eq!(same, 1.0, "{name}: {same} of the resized uint8 values equal cv2's");
    }
}

#[test]
fn pamr_matches_talk2dino() {
    let f = Fixtures::get();
    let (image, masks) = (f.t("pamr.image"), f.t("pamr.masks"));
    let one = PamrConfig {
        iterations: 1,
        dilations_px: vec![1],
    };
    let refined_1 = pamr(image, masks, &one).unwrap();
    assert!(
        max_diff(&refined_1, f.t("pamr.refined_1")) <= 1e-6,
        "one iteration, dilation 1: {}",
        max_diff(&refined_1, f.t("pamr.refined_1"))
    );
    let refined = pamr(image, masks, &PamrConfig::talk2dino()).unwrap();
    let diff = max_diff(&refined, f.t("pamr.refined"));
    assert!(diff <= 1e-5, "Talk2DINO's PAMR: refined masks differ by {diff}");
    assert!(
        max_diff(&refined, masks) > 0.05,
        "PAMR must change the masks for the test to mean anything"
    );
    let same = agreement(&refined.argmax(1, false), &f.t("pamr.refined").argmax(1, false));
    assert_eq!(same, 1.0, "argmax of the refined masks agrees on {same}");
}

/// Runs one case of the fixture on its images and checks labels (≥ 99.99 %, mismatches only at small reference
/// margins) and scores.
fn check_case(case: &str, images: &[&str], options: impl Fn(f64) -> SegmentOptions, score_tolerance: f64) {
    let f = Fixtures::get();
    let vit = vit();
    let classes = f.t("classes");
    let (mut same, mut total) = (0.0, 0.0);
    for name in images {
        let key = format!("{name}.{case}");
        let options = options(f.threshold(&key));
        let out = segment(&vit, f.t(&format!("{name}.image")), classes, &options).unwrap();
        let labels = out.labels.squeeze_dim(0);
        let reference = f.t(&format!("{key}.labels"));
        assert_eq!(labels.size(), reference.size(), "{key}");
        let equal = labels.eq_tensor(reference);
        let n = reference.numel() as f64;
        let agree = equal.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
        let margins = f.t(&format!("{key}.margin"));
        let mismatched = margins.masked_select(&equal.logical_not());
        let worst_margin = Tensor::cat(&[mismatched, Tensor::zeros([1], (Kind::Float, Device::Cpu))], 0)
            .max()
            .double_value(&[]);
        assert!(
            worst_margin < 1e-3,
            "{key}: a pixel with reference top-2 margin {worst_margin} is labelled differently"
        );
        let diff = max_diff(&out.scores.squeeze_dim(0), f.t(&format!("{key}.scores")));
        assert!(diff <= score_tolerance, "{key}: scores differ by {diff}");
        let seen = reference.internal_unique(true, false).0.size()[0];
        assert!(seen >= 3, "{key}: the reference uses only {seen} labels");
        eprintln!("{key}: {agree}/{n} pixels agree, scores within {diff:.2e}");
        same += agree;
        total += n;
    }
    assert!(same / total >= MIN_AGREEMENT, "{case}: {same}/{total} pixels agree");
}

#[test]
fn square_view_with_background_cleaning_matches() {
    check_case(
        "square_clean",
        &["A", "B"],
        |bg_threshold| SegmentOptions {
            view: View::default(),
            background_clean: true,
            pamr: None,
            bg_threshold,
        },
        1e-5,
    );
}

#[test]
fn square_view_with_pamr_matches() {
    check_case(
        "square_pamr",
        &["A", "B"],
        |bg_threshold| SegmentOptions {
            view: View::default(),
            background_clean: false,
            pamr: Some(PamrConfig::talk2dino()),
            bg_threshold,
        },
        1e-4,
    );
}

#[test]
fn sliding_view_matches() {
    check_case(
        "sliding",
        &["A", "B", "C"],
        |bg_threshold| SegmentOptions {
            view: View::Sliding(SlidingWindow::TALK2DINO),
            background_clean: false,
            pamr: None,
            bg_threshold,
        },
        1e-5,
    );
}

#[test]
fn sliding_view_with_background_cleaning_and_pamr_matches() {
    check_case(
        "sliding_clean_pamr",
        &["A"],
        |bg_threshold| SegmentOptions {
            view: View::Sliding(SlidingWindow::TALK2DINO),
            background_clean: true,
            pamr: Some(PamrConfig::talk2dino()),
            bg_threshold,
        },
        1e-4,
    );
}

#[test]
fn segment_refuses_bad_input() {
    let f = Fixtures::get();
    let vit = vit();
    let options = SegmentOptions {
        view: View::default(),
        background_clean: false,
        pamr: None,
        bg_threshold: 0.5,
    };
    let image = f.t("A.image");
    let classes = f.t("classes");
    assert!(segment(&vit, &image.to_kind(Kind::Float), classes, &options).is_err());
    assert!(segment(&vit, &image.narrow(1, 0, 2), classes, &options).is_err());
    assert!(segment(&vit, image, &classes.narrow(1, 0, 10), &options).is_err());
    let odd = SegmentOptions {
        view: View::Square { input_px: 450 },
        ..options.clone()
    };
    assert!(segment(&vit, image, classes, &odd).is_err());
    let nan = SegmentOptions {
        bg_threshold: f64::NAN,
        ..options
    };
    assert!(segment(&vit, image, classes, &nan).is_err());
}
