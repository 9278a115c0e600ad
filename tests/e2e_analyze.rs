//! End-to-end test of `mrdino analyze`: synth labels → two random-weight ViTs and a random-weight ResNet-50 →
//! the JSON holds every pair of variants per backbone and representation and every pair of backbones per
//! variant, and the HTML report renders in headless Chromium (DOM dumped and a screenshot taken).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use common::{labels_of_synth, mrdino, run_ok};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mrdino_model::vit::{write_random_weights, VitConfig};
use serde_json::Value;

fn chromium(args: &[&str], profile: &Path) -> Output {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("headless Chromium is needed for this test (`make setup` installs Debian's chromium)");
    Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium")
}

fn random_resnet(path: &Path) {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    tch::manual_seed(3);
    let _net = tch::vision::resnet::resnet50_no_final_layer(&vs.root());
    vs.save(path).expect("write random ResNet-50 weights");
}

#[test]
fn analysis_report_has_every_pair_and_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let labels = dir.join("labels");
    run_ok(
        mrdino()
            .arg("synth")
            .arg("--out")
            .arg(&data)
            .args(["--sequences", "2", "--frames", "16"]),
    );
    run_ok(&mut labels_of_synth(&data, &labels));
    let small = "custom:family=dinov2,depth=2,dim=32,heads=2,patch=14,pos_grid=4";
    let clip = "custom:family=clip,depth=1,dim=32,heads=2,patch=16,pos_grid=4";
    let (w1, w2, w3): (PathBuf, PathBuf, PathBuf) = (
        dir.join("dinov2.safetensors"),
        dir.join("clip.safetensors"),
        dir.join("rn50.safetensors"),
    );
    write_random_weights(&w1, &VitConfig::by_name(small).unwrap(), 1).unwrap();
    write_random_weights(&w2, &VitConfig::by_name(clip).unwrap(), 2).unwrap();
    random_resnet(&w3);
    let out = dir.join("report");
    run_ok(
        mrdino()
            .arg("analyze")
            .arg("--labels")
            .arg(&labels)
            .args(["--backbone", small, "--backbone-weights"])
            .arg(&w1)
            .args(["--backbone", clip, "--backbone-weights"])
            .arg(&w2)
            .args(["--backbone", "swav-rn50", "--backbone-weights"])
            .arg(&w3)
            .args([
                "--frames",
                "12",
                "--size",
                "64",
                "--bootstrap",
                "20",
                "--k",
                "3",
                "--device",
                "cpu",
                // Many tiny products and SVDs: on a shared 2-core machine a second libtorch thread made this
                // step ≈ 6× slower (5 s against 30–45 s).
                "--torch-threads",
                "1",
            ])
            .arg("--out")
            .arg(&out),
    );
    let json: Value = serde_json::from_slice(&std::fs::read(out.join("analysis.json")).unwrap()).unwrap();
    let frames = json["frames"].as_u64().unwrap();
    assert!(frames >= 4, "{frames} frames analysed");
    let variants = json["variants"].as_array().unwrap().len();
    assert_eq!(variants, 5);
    let within = json["within_backbone"].as_array().unwrap();
    // Two ViTs with cls and mean, the ResNet with mean only: 5 representations × C(5, 2) pairs.
    assert_eq!(within.len(), 5 * 10);
    let between = json["between_backbones"].as_array().unwrap();
    // cls: one ViT pair; mean: three backbone pairs; per variant.
    assert_eq!(between.len(), 5 * (1 + 3));
    for pair in within.iter().chain(between) {
        for stat in ["cka", "cka_debiased", "svcca", "pwcca"] {
            let v = &pair[stat];
            let (value, lo, hi) = (v["value"].as_f64(), v["ci_low"].as_f64(), v["ci_high"].as_f64());
            assert!(value.is_some_and(f64::is_finite), "{stat} of {pair}");
            assert!(lo.unwrap() <= hi.unwrap(), "{stat} interval of {pair}");
        }
        assert!(pair["cka"]["value"].as_f64().unwrap() <= 1.0 + 1e-9);
    }
    let purity = json["purity"].as_array().unwrap();
    assert_eq!(purity.len(), 5);
    assert!(purity
        .iter()
        .all(|p| (0.0..=1.0).contains(&p["overall"]["value"].as_f64().unwrap())));
    assert_eq!(json["projections"].as_array().unwrap().len(), 5);
    let examples = json["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 3);
    for e in examples {
        for image in e["images"].as_array().unwrap() {
            assert!(out.join(image[1].as_str().unwrap()).is_file());
        }
    }

    // One headless Chromium run both serialises the rendered DOM and takes a screenshot.
    let page = format!("file://{}", out.join("index.html").display());
    let shot = dir.join("shot.png");
    let render = chromium(
        &[
            "--dump-dom",
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,2000",
            &page,
        ],
        &dir.join("profile"),
    );
    assert!(
        render.status.success(),
        "chromium --dump-dom --screenshot failed: {}",
        String::from_utf8_lossy(&render.stderr)
    );
    let dom = String::from_utf8_lossy(&render.stdout);
    assert!(dom.contains("Representation robustness"));
    // Heat maps: 4 statistics × 5 (backbone, representation) + 4 × 5 variants × (cls, mean); purity and projections.
    assert_eq!(
        dom.matches("<svg").count(),
        4 * 5 + 4 * 5 * 2 + 5 + 5,
        "rendered SVG figures"
    );
    assert!(
        std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false),
        "a non-trivial screenshot"
    );
}

/// `analyze` with a DINOv3 backbone (16 px patches, RoPE, storage tokens) next to a DINOv2 one: every statistic of
/// every pair is computed and finite.
#[test]
fn analysis_accepts_a_dinov3_backbone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let labels = dir.join("labels");
    run_ok(mrdino().arg("synth").arg("--out").arg(&data).args(["--sequences", "2", "--frames", "8"]));
    run_ok(&mut labels_of_synth(&data, &labels));
    let v2 = "custom:family=dinov2,depth=1,dim=32,heads=2,patch=14,pos_grid=4";
    let v3 = "custom:family=dinov3,depth=2,dim=32,heads=2,patch=16";
    let (w2, w3) = (dir.join("dinov2.safetensors"), dir.join("dinov3.safetensors"));
    write_random_weights(&w2, &VitConfig::by_name(v2).unwrap(), 1).unwrap();
    write_random_weights(&w3, &VitConfig::by_name(v3).unwrap(), 2).unwrap();
    let out = dir.join("report");
    run_ok(
        mrdino()
            .arg("analyze")
            .arg("--labels")
            .arg(&labels)
            .args(["--backbone", v2, "--backbone-weights"])
            .arg(&w2)
            .args(["--backbone", v3, "--backbone-weights"])
            .arg(&w3)
            .args(["--frames", "6", "--size", "64", "--bootstrap", "10", "--k", "3"])
            .args(["--device", "cpu", "--torch-threads", "1"])
            .arg("--out")
            .arg(&out),
    );
    let json: Value = serde_json::from_slice(&std::fs::read(out.join("analysis.json")).unwrap()).unwrap();
    assert!(json.to_string().contains("family=dinov3"), "the DINOv3 backbone is not named");
    let within = json["within_backbone"].as_array().unwrap();
    // Two ViTs with cls and mean: 4 representations × C(5, 2) variant pairs.
    assert_eq!(within.len(), 4 * 10);
    let between = json["between_backbones"].as_array().unwrap();
    // cls and mean: one backbone pair each, per variant.
    assert_eq!(between.len(), 5 * 2);
    for pair in within.iter().chain(between) {
        for stat in ["cka", "cka_debiased", "svcca", "pwcca"] {
            let value = pair[stat]["value"].as_f64();
            assert!(value.is_some_and(f64::is_finite), "{stat} of {pair}");
        }
    }
}

/// An all-background 16-bit id PNG of `height`×`width` at `path`.
fn write_empty_ids_png(path: &Path, height: usize, width: usize) {
    use opencv::core::{Mat, Vector};
    use opencv::prelude::*;
    let ids = vec![0u16; height * width];
    let mat = Mat::new_rows_cols_with_data(height as i32, width as i32, &ids)
        .expect("mat")
        .try_clone()
        .expect("clone");
    let mut buf = Vector::<u8>::new();
    opencv::imgcodecs::imencode_def(".png", &mat, &mut buf).expect("encode");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, buf.as_slice()).expect("write png");
}

#[test]
fn statistics_of_masks_without_objects_are_not_computable_with_the_reason_and_a_stop_exits_4() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, labels) = (dir.join("data"), dir.join("labels"));
    run_ok(
        mrdino()
            .args([
                "synth",
                "--sequences",
                "1",
                "--frames",
                "10",
                "--size",
                "96x64",
                "--out",
            ])
            .arg(&data),
    );
    run_ok(&mut labels_of_synth(&data, &labels));
    // Ground truth without any object: the foreground variant is the same grey image for every frame.
    let gt = dir.join("gt");
    for frame in std::fs::read_dir(data.join("frames/seq000")).unwrap().flatten() {
        let name = frame.path().with_extension("png");
        write_empty_ids_png(&gt.join("seq000").join(name.file_name().unwrap()), 64, 96);
    }
    let weights = dir.join("rn50.safetensors");
    random_resnet(&weights);
    let out = dir.join("analysis");
    let analyze = |extra: &[&str]| {
        let mut cmd = mrdino();
        cmd.args(["analyze", "--labels"])
            .arg(&labels)
            .arg("--gt")
            .arg(&gt)
            .args(["--gt-format", "ids", "--backbone", "swav-rn50", "--backbone-weights"])
            .arg(&weights)
            .args([
                "--frames",
                "6",
                "--size",
                "64",
                "--bootstrap",
                "10",
                "--k",
                "3",
                "--device",
                "cpu",
            ])
            .args(["--torch-threads", "1", "--out"])
            .arg(&out)
            .args(extra);
        cmd
    };
    // A spent time budget stops before the first frame: exit 4, no report.
    let stopped = analyze(&["--time-budget", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("start over"), "{stderr}");
    assert!(!out.join("analysis.json").exists());

    run_ok(&mut analyze(&[]));
    let text = std::fs::read_to_string(out.join("analysis.json")).unwrap();
    assert!(!text.contains("NaN") && !text.contains("null"), "{text}");
    let json: Value = serde_json::from_str(&text).unwrap();
    let within = json["within_backbone"].as_array().unwrap();
    for pair in within {
        let involves_foreground = pair["a"] == "foreground" || pair["b"] == "foreground";
        for stat in ["cka", "cka_debiased", "svcca", "pwcca"] {
            let reason = pair[stat]["not_computable"].as_str();
            if involves_foreground {
                let reason = reason.unwrap_or_else(|| panic!("{stat} of {pair} should not be computable"));
                assert!(
                    reason.contains("foreground") && reason.contains("no variance"),
                    "{reason}"
                );
            } else {
                assert!(
                    pair[stat]["value"].as_f64().is_some_and(f64::is_finite),
                    "{stat} of {pair}"
                );
            }
        }
    }
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(!html.contains("NaN"));
    assert!(html.contains("<h2>Not computable</h2>") && html.contains("no variance"));
}
