//! Seconds per frame pair of `mrdino_stages::flow::raft` at the KITTI processing size 376×1240, 12 iterations,
//! random weights (speed does not depend on their values), batch of 1, warm-up run excluded.
//!
//! Run: `CARGO_TARGET_DIR=$HOME/.cache/mrdino/target cargo bench -p mrdino-stages --bench raft`
//! (`RAFT_BENCH_RUNS=n` sets the timed runs per row, default 3). CPU rows use `tch::set_num_threads(2)`;
//! CUDA rows are added when `tch::Cuda::is_available()`.
//!
//! Measured on the 2-core development machine (AMD EPYC) while other engineers' builds kept the load average
//! between 3 and 4, so libtorch's OpenMP threads were contended; CPU float32, 2 threads, 3 runs. The
//! torchvision column is the same model in Python (torch 2.13, `torch.set_num_threads(2)`, all 12 upsamplings),
//! run right after the Rust bench:
//!
//! | model | device | s / pair (Rust) | s / pair (torchvision) |
//! |---|---|---|---|
//! | raft-small | cpu f32 | 8.93 | 8.66 |
//! | raft-large | cpu f32 | 14.46 | 15.22 |
//!
//! An earlier run under similar load gave 6.20 / 18.10 s: on this shared machine the figures move by 2×
//! between runs, and models.md §7 measured 3.2 s for raft-large on an idle machine. No GPU was available, so
//! no CUDA figures were measured.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::time::Instant;

use mrdino_datasets::RgbImage;
use mrdino_stages::flow::raft::{Arch, Architecture, Norm, RaftFlow};
use mrdino_stages::flow::FlowEstimator;
use tch::{Device, Kind, Tensor};

const HEIGHT: usize = 376;
const WIDTH: usize = 1240;
const ITERATIONS: usize = 12;

/// Writes random weights with the key set of `arch` to `path`.
fn random_weights(arch: Arch, path: &std::path::Path) -> Result<(), tch::TchError> {
    let norm = match arch {
        Arch::Large => Norm::Batch,
        Arch::Small => Norm::None,
    };
    let tensors: Vec<(String, Tensor)> = Architecture::new(arch, norm)
        .expected_keys()
        .into_iter()
        .map(|(key, shape)| {
            let t = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 0.05;
            let t = if key.ends_with("running_var") { t.abs() + 1.0 } else { t };
            (key, t)
        })
        .collect();
    Tensor::write_safetensors(&tensors, path)
}

fn textured_frame(seed: u64) -> RgbImage {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let data = (0..HEIGHT * WIDTH * 3)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect();
    RgbImage::new(HEIGHT, WIDTH, data)
}

fn seconds_per_pair(raft: &mut RaftFlow, runs: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let (a, b) = (textured_frame(1), textured_frame(2));
    let pair = [(&a, &b)];
    raft.estimate(&pair)?;
    let start = Instant::now();
    for _ in 0..runs {
        raft.estimate(&pair)?;
    }
    Ok(start.elapsed().as_secs_f64() / runs as f64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::var("RAFT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    tch::set_num_threads(2);
    let dir = tempfile::tempdir()?;
    let mut devices = vec![(Device::Cpu, Kind::Float)];
    if tch::Cuda::is_available() {
        devices.push((Device::Cuda(0), Kind::Float));
        devices.push((Device::Cuda(0), Kind::Half));
    }
    println!("RAFT {HEIGHT}x{WIDTH}, {ITERATIONS} iterations, batch 1, {runs} runs\n");
    println!("| model | device | s / pair |");
    println!("|---|---|---|");
    for arch in [Arch::Small, Arch::Large] {
        let path = dir.path().join(format!("raft_{}.safetensors", arch.as_str()));
        random_weights(arch, &path)?;
        for &(device, kind) in &devices {
            let mut raft = RaftFlow::load_with_kind(&path, device, kind)?.with_iterations(ITERATIONS)?;
            let secs = seconds_per_pair(&mut raft, runs)?;
            let device_name = match device {
                Device::Cuda(n) => format!("cuda:{n}"),
                _ => "cpu".to_string(),
            };
            let kind_name = if kind == Kind::Half { "f16" } else { "f32" };
            println!("| raft-{} | {device_name} {kind_name} | {secs:.3} |", arch.as_str());
        }
    }
    Ok(())
}
