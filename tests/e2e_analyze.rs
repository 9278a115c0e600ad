//! End-to-end test of `mrdino analyze`: synth labels → two random-weight ViTs and a random-weight ResNet-50 →
//! the JSON holds every pair of variants per backbone and representation and every pair of backbones per
//! variant, and the HTML report renders in headless Chromium (DOM dumped and a screenshot taken).

mod common;

use common::{mrdino, run_ok};

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
    run_ok(
        mrdino()
            .args(["labels", "--dataset", "frames", "--root"])
            .arg(data.join("frames"))
            .arg("--out")
            .arg(&labels)
            .args(["--flow", "import", "--flow-dir"])
            .arg(data.join("flow"))
            .arg("--quiet"),
    );
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
