//! End-to-end tests of `mrdino features`: a feature cache of `mrdino synth` frames with a random-weight ViT,
//! read back by the cache reader; the same job as two shards equals one run; `status` / `finalize` on the cache;
//! a rerun skips done units; a stop by time budget exits 4 and resumes; another backbone is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

mod common;

use common::{features_of, mrdino};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mrdino_datasets::decode::read_processed;
use mrdino_datasets::Processing;
use mrdino_model::vit::{write_random_weights, Vit, VitConfig};
use mrdino_outputs::feature_cache::FeatureCache;
use tch::{Device, Kind, Tensor};

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run mrdino")
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "command failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const SPEC: &str = "custom:family=dinov2,depth=2,dim=32,heads=2,patch=14,pos_grid=4";

fn features(frames: &Path, weights: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = features_of(frames, out, SPEC);
    cmd.arg("--backbone-weights").arg(weights).args(["--size", "56x42", "--batch", "5"]).args(extra);
    cmd
}

fn read_all(cache: &FeatureCache) -> Vec<Vec<u8>> {
    (0..cache.n_views())
        .map(|v| {
            let mut bytes = Vec::new();
            cache.read_view(v, &mut bytes).unwrap();
            bytes
        })
        .collect()
}

#[test]
fn feature_cache_is_resumable_shardable_and_matches_the_backbone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    run_ok(
        mrdino()
            .arg("synth")
            .arg("--out")
            .arg(&data)
            .args(["--sequences", "3", "--frames", "6"]),
    );
    let frames = data.join("frames");
    let weights: PathBuf = dir.join("vit.safetensors");
    write_random_weights(&weights, &VitConfig::by_name(SPEC).unwrap(), 7).unwrap();

    let whole = dir.join("whole");
    run_ok(&mut features(&frames, &weights, &whole, &[]));
    let cache = FeatureCache::open(&whole).expect("the cache opens");
    assert_eq!(cache.n_views(), 18, "3 sequences × 6 frames");
    assert_eq!(cache.n_patches(), 3 * 4, "42x56 at patch 14");
    assert_eq!(cache.channels, 32);
    let meta = cache.meta();
    assert_eq!((meta.image_height, meta.image_width, meta.layer), (42, 56, 1));
    assert_eq!(
        meta.backbone_sha256,
        Vit::load(&weights, None, Device::Cpu).unwrap().identity().id,
        "the cache records the tensor identity of the backbone weights"
    );

    // The cached rows are the backbone's features of the resized frame (f16-rounded).
    let key = cache.view_key(7).unwrap().clone();
    let vit = Vit::load(&weights, None, Device::Cpu).unwrap();
    let seq_dir = frames.join(&key.sequence_id);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&seq_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (rgb, _) = read_processed(&files[key.frame_index as usize], &Processing::Native).unwrap();
    let image = Tensor::from_slice(&rgb.data)
        .view([rgb.height as i64, rgb.width as i64, 3])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0;
    let image = image
        .unsqueeze(0)
        .upsample_bicubic2d([42, 56], false, None, None)
        .clamp(0.0, 1.0);
    let expected = vit.features(&vit.normalize(&image).unwrap(), None).unwrap();
    let mut bytes = Vec::new();
    cache.read_view(7, &mut bytes).unwrap();
    let cached = Tensor::from_data_size(&bytes, &[1, 12, 32], Kind::Half).to_kind(Kind::Float);
    let diff = (&cached - &expected).abs().max().double_value(&[]);
    assert!(diff < 2e-2, "cached vs recomputed features differ by {diff}");

    // Two shards into one directory equal the single run.
    let sharded = dir.join("sharded");
    for shard in ["0/2", "1/2"] {
        run_ok(&mut features(&frames, &weights, &sharded, &["--shard", shard]));
    }
    assert_eq!(read_all(&FeatureCache::open(&sharded).unwrap()), read_all(&cache));
    run_ok(mrdino().arg("status").arg("--out").arg(&sharded));
    let fin = run_ok(mrdino().arg("finalize").arg("--out").arg(&sharded));
    assert!(String::from_utf8_lossy(&fin.stdout).contains("finalized"));

    // A rerun skips every unit.
    let again = run_ok(&mut features(&frames, &weights, &whole, &[]));
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 units done (0 views), 3 already done"));

    // A spent time budget stops with exit code 4; the same command then completes the cache.
    let stopped = dir.join("stopped");
    let out = run(&mut features(&frames, &weights, &stopped, &["--time-budget", "0"]));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let status = run(mrdino().arg("status").arg("--out").arg(&stopped));
    assert_eq!(status.status.code(), Some(3), "an incomplete cache is not complete");
    run_ok(&mut features(&frames, &weights, &stopped, &[]));
    assert_eq!(read_all(&FeatureCache::open(&stopped).unwrap()), read_all(&cache));

    // Another backbone into the same cache is refused before any work.
    let other: PathBuf = dir.join("other.safetensors");
    write_random_weights(&other, &VitConfig::by_name(SPEC).unwrap(), 8).unwrap();
    let refused = run(&mut features(&frames, &other, &whole, &[]));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("holds features made with other parameters"));
}
