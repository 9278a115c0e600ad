//! Training steps per second of DINOSAUR at the KITTI configuration (F 768, D 32, K 15 slots, P 729 patches of a
//! 378×378 window, decoder hidden 2048), one step = forward + backward + clip + Adam, on CPU float32:
//! - **cached features**: random (B, 729, 768) features as the feature cache hands them, no backbone;
//! - **on-the-fly features**: the same step preceded by a DINOv2 ViT-B/14 forward (random weights) of the B
//!   windows at 378×378, what every step costs without the cache (decoding and augmentation excluded).
//!
//! Run: `cargo bench --workspace --bench dinosaur` (`DINOSAUR_BENCH_BATCH`, default 8 — the reference trains
//! KITTI with 64 on a GPU; `DINOSAUR_BENCH_STEPS`, default 3 timed steps after one warm-up;
//! `DINOSAUR_BENCH_THREADS`, default 2). Peak memory is the process's VmHWM after each configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::time::Instant;

use mrdino_model::dinosaur::{Dinosaur, DinosaurConfig};
use mrdino_model::optim::{Adam, AdamConfig};
use mrdino_model::train::train_step;
use mrdino_model::vit::{write_random_weights, Vit, VitConfig};
use tch::{Device, Kind, Tensor};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    let batch = env_or("DINOSAUR_BENCH_BATCH", 8) as i64;
    let steps = env_or("DINOSAUR_BENCH_STEPS", 3);
    tch::set_num_threads(env_or("DINOSAUR_BENCH_THREADS", 2) as i32);
    tch::manual_seed(0);
    let model = Dinosaur::new(DinosaurConfig::kitti(), Device::Cpu).expect("KITTI DINOSAUR");
    let mut adam = Adam::new(model.named_parameters(), AdamConfig::default());
    let dir = std::env::temp_dir().join(format!("mrdino-bench-dinosaur-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let weights = dir.join("vitb14.safetensors");
    write_random_weights(&weights, &VitConfig::by_name("dinov2-vitb14").expect("preset"), 0).expect("weights");
    let vit = Vit::load(&weights, None, Device::Cpu).expect("ViT-B/14");
    println!("DINOSAUR KITTI training step, batch {batch}, CPU f32, {} threads", tch::get_num_threads());
    for on_the_fly in [false, true] {
        let mut timed = Vec::new();
        for s in 0..=steps {
            let started = Instant::now();
            let features = if on_the_fly {
                let images = Tensor::rand([batch, 3, 378, 378], (Kind::Float, Device::Cpu));
                let normalised = vit.normalize(&images).expect("normalise");
                tch::no_grad(|| vit.features(&normalised, None)).expect("features")
            } else {
                Tensor::randn([batch, 729, 768], (Kind::Float, Device::Cpu))
            };
            let metrics = train_step(&model, &mut adam, &features, 0, s as u64 * batch as u64, 1e-4, 1.0).expect("step");
            assert!(metrics.loss.is_finite());
            if s > 0 {
                timed.push(started.elapsed().as_secs_f64());
            }
        }
        let mean = timed.iter().sum::<f64>() / timed.len().max(1) as f64;
        println!(
            "{:>24}: {:.2} s/step, {:.3} steps/s, {:.1} views/s, peak RSS {:.0} MiB",
            if on_the_fly { "on-the-fly ViT-B/14" } else { "cached features" },
            mean,
            1.0 / mean,
            batch as f64 / mean,
            peak_mib()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
