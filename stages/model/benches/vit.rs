//! Images per second of `mrdino_model::vit` for DINOv2 ViT-S/14 and ViT-B/14 at 378×378 (MR-DINOSAUR's KITTI
//! window, 27×27 patches, hub resize 37 → 27) and DINOv3 ViT-B/16 at 432×432 (the same 27×27 patches, RoPE),
//! random weights (speed does not depend on their values), batch of 1, one warm-up forward excluded, and the
//! peak resident memory of the forwards. `VIT_BENCH_MODELS=a,b` picks the rows (default all three).
//!
//! Run: `cargo bench --workspace --bench vit` (`VIT_BENCH_RUNS=n` timed runs per row, default 5;
//! `VIT_BENCH_THREADS=n` libtorch CPU threads, default 2). CUDA rows (f32 and f16 autocast) are added when
//! `tch::Cuda::is_available()`.
//!
//! Peak memory: the process's VmHWM from /proc/self/status after the forwards, with the high-water mark reset
//! (`/proc/self/clear_refs` ← 5) once the model is loaded, so the column is weights + activations of the
//! forward, not the transient copies of loading; `load peak` is the high-water mark while loading (file bytes
//! plus tensors). The baseline printed first is the resident size of the process with libtorch loaded and no
//! model (the shared libraries account for most of it). Each row is printed as it finishes.
//!
//! Measured on the 2-core development machine (AMD EPYC) while other engineers' builds kept the load average
//! between 6 and 9, CPU float32, 5 runs; baseline RSS 377 MiB. The PyTorch column is transformers'
//! Dinov2Model of the same size in the venv (torch 2.13, 1 thread), run right after under the same load:
//!
//! | model | threads | s / image (Rust) | images / s | peak RSS forward (MiB) | s / image (PyTorch) |
//! |---|---|---|---|---|---|
//! | ViT-S/14 | 1 | 2.07 | 0.48 | 564 | 2.34 |
//! | ViT-B/14 | 1 | 5.62 | 0.18 | 905 | 7.71 |
//! | ViT-S/14 | 2 | 4.29 | 0.23 | 566 | |
//! | ViT-B/14 | 2 | 9.09 | 0.11 | 847 | |
//!
//! With the cores contended, two OpenMP threads are slower than one; models.md §7 measured ViT-B/14 at 378²
//! in ≈ 0.8 s on the idle machine. No GPU was available, so no CUDA rows were measured.
//!
//! DINOv3 beside DINOv2, one run of `VIT_BENCH_THREADS=1 nice cargo bench -p mrdino-model --bench vit` (CPU
//! float32, 1 thread, 5 runs, load average 12 on the 2 cores from other builds, baseline RSS 387 MiB); both
//! B models see 27×27 patches (DINOv3 adds 4 storage tokens and RoPE, DINOv2 resizes its position embedding):
//!
//! | model | input | s / image | images / s | peak RSS forward (MiB) | load peak (MiB) |
//! |---|---|---|---|---|---|
//! | dinov2-vits14 | 378² | 1.443 | 0.69 | 573 | 559 |
//! | dinov2-vitb14 | 378² | 4.929 | 0.20 | 841 | 1080 |
//! | dinov3-vitb16 | 432² | 5.261 | 0.19 | 865 | 1122 |
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::time::Instant;

use mrdino_model::device::{device_name, Precision};
use mrdino_model::vit::{write_random_weights, Vit, VitConfig};
use tch::{Device, Kind, Tensor};

/// Patch grid side of every row: 27 × patch px (378 px for patch 14, 432 px for patch 16).
const GRID: i64 = 27;
const MODELS: &[&str] = &["dinov2-vits14", "dinov2-vitb14", "dinov3-vitb16"];

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.0}", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::var("VIT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let threads: i32 = std::env::var("VIT_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let dir = tempfile::tempdir()?;
    let mut rows = vec![(Device::Cpu, Precision::F32)];
    if tch::Cuda::is_available() {
        rows.push((Device::Cuda(0), Precision::F32));
        rows.push((Device::Cuda(0), Precision::F16));
    }
    let models: Vec<String> = match std::env::var("VIT_BENCH_MODELS") {
        Ok(list) => list.split(',').map(str::to_string).collect(),
        Err(_) => MODELS.iter().map(|m| m.to_string()).collect(),
    };
    let _ = Tensor::zeros([1], (Kind::Float, Device::Cpu)).sum(Kind::Float);
    println!(
        "ViT forward at {GRID}×{GRID} patches, batch 1, {runs} timed runs, {threads} CPU threads; baseline RSS {} MiB",
        mib(status_kib("VmRSS:"))
    );
    println!(
        "| model | input px | device | precision | s / image | images / s | peak RSS forward (MiB) | load peak (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for name in &models {
        let name = name.as_str();
        let config = VitConfig::by_name(name)?;
        let side_px = GRID * config.patch_size;
        let path = dir.path().join(format!("{name}.safetensors"));
        write_random_weights(&path, &config, 0)?;
        for &(device, precision) in &rows {
            reset_peak();
            let vit = Vit::load_with_precision(&path, None, device, precision)?;
            let load_peak = status_kib("VmHWM:");
            let can_reset = reset_peak();
            let images = Tensor::rand([1, 3, side_px, side_px], (Kind::Float, Device::Cpu));
            let x = vit.normalize(&images)?;
            let warm = vit.features(&x, None)?;
            assert_eq!(warm.size(), [1, GRID * GRID, config.embed_dim]);
            let start = Instant::now();
            for _ in 0..runs {
                let f = vit.features(&x, None)?;
                if let Device::Cuda(_) = device {
                    tch::Cuda::synchronize(0);
                }
                drop(f);
            }
            let seconds = start.elapsed().as_secs_f64() / runs as f64;
            let peak = if can_reset { status_kib("VmHWM:") } else { None };
            println!(
                "| {name} | {side_px} | {} | {} | {seconds:.3} | {:.2} | {} | {} |",
                device_name(device),
                precision.as_str(),
                1.0 / seconds,
                mib(peak),
                mib(load_peak)
            );
        }
        std::fs::remove_file(&path)?;
    }
    Ok(())
}
