//! Post-processing time per frame (selection + instances + export, flow given) at KITTI resolution.
//!
//! A 376×1240 flow field with a static background (sub-pixel noise) and seven moving objects, two pairs of
//! which touch with different velocities so their components have interior flow edges and go through
//! HDBSCAN. Runs on one core (a one-thread rayon pool). Prints a markdown table.
//!
//! `cargo bench -p mrdino --bench postprocess` (or `make bench`).
//!
//! The per-frame work is timed stage by stage; the Parquet write happens once per unit (12 frames here), as in
//! `mrdino labels`, and is reported divided by the frames.
//!
//! Measured on the shared 2-core machine (load average about 1): 29.9–30.6 ms/frame in total, of which ~29 ms is
//! the instance stage (HDBSCAN on the two touching pairs about 22 ms, with `hdbscan::cluster_pixels`; the
//! kd-tree path it replaced gave 41–44 ms/frame in total).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::time::Instant;

use mrdino_outputs::tables::{instances_batch, write_parquet, InstanceOrigin};
use mrdino_outputs::{CocoRle, InstanceRow};
use mrdino_stages::flow::FlowField;
use mrdino_stages::instances::{separate_instances, InstanceParams};
use mrdino_stages::select::{corner_means_of_magnitude, SelectParams};

const H: usize = 376;
const W: usize = 1240;

fn noise(state: &mut u64) -> f32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    ((*state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

/// (top, left, height, width, u, v) of the moving objects: the layout of the reference measurement in
/// spec §8 — seven objects, two touching pairs of about 8k pixels each that need the HDBSCAN split.
const OBJECTS: [(usize, usize, usize, usize, f32, f32); 7] = [
    (180, 60, 90, 160, 6.0, 0.5),   // car
    (170, 420, 70, 60, 4.0, 0.0),   // touching pair (8050 px): slow ...
    (170, 480, 70, 55, -9.0, 0.3),  // ... and fast in the other direction
    (200, 700, 60, 25, 3.5, 1.0),   // pedestrian
    (150, 900, 65, 60, 8.0, -1.0),  // touching pair (7800 px): ...
    (150, 960, 65, 60, 2.8, 4.5),   // ... different direction
    (300, 1150, 50, 60, -5.0, 0.0), // small car near the border
];

fn frame(seed: u64) -> FlowField {
    let mut state = seed | 1;
    let mut f = FlowField::zeros(H, W);
    for r in 0..H {
        for c in 0..W {
            f.uv[2 * (r * W + c)] = 0.6 * noise(&mut state);
            f.uv[2 * (r * W + c) + 1] = 0.6 * noise(&mut state);
        }
    }
    for &(top, left, h, w, u, v) in &OBJECTS {
        for r in top..top + h {
            for c in left..left + w {
                // Slight perspective variation and per-pixel noise, as real flow has.
                let scale = 1.0 + 0.002 * (r as f32 - top as f32);
                f.uv[2 * (r * W + c)] = u * scale + 0.3 * noise(&mut state);
                f.uv[2 * (r * W + c) + 1] = v * scale + 0.3 * noise(&mut state);
            }
        }
    }
    f
}

fn reference_params() -> (SelectParams, InstanceParams) {
    (SelectParams::reference(1.7), InstanceParams::reference())
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let (select, params) = reference_params();
    let fg_test = params.foreground_test();
    // One unit of 12 frames: rows are RLE-encoded per frame, and written once per unit, as `mrdino labels` does.
    let frames: Vec<FlowField> = (0..12).map(|k| frame(0x9e37_79b9 + k)).collect();
    let dir = std::env::temp_dir().join(format!("mrdino-bench-{}", std::process::id()));
    let mut per_frame: Vec<[f64; 3]> = Vec::new();
    let mut rows: Vec<InstanceRow> = Vec::new();
    let mut stats = (0usize, 0usize);
    let mut write_s = 0.0;
    pool.install(|| {
        for (k, flow) in frames.iter().enumerate() {
            let t0 = Instant::now();
            let magnitude = flow.magnitude();
            let corners = corner_means_of_magnitude(&magnitude, H, W, select.corner_fraction);
            assert!(select.passes(&corners));
            let (fg, count) = fg_test.mask(&magnitude);
            assert!(params.enough_foreground(count, H, W));
            let t1 = Instant::now();
            let instances = separate_instances(flow, &fg, &params);
            let t2 = Instant::now();
            rows.extend(instances.iter().map(|i| InstanceRow {
                dataset: "kitti".into(),
                sequence_id: "bench".into(),
                frame_index: k as u32,
                frame_name: format!("{k:010}"),
                instance_id: i.id,
                mask: CocoRle::from_pixels(&i.pixels, H as u32, W as u32),
                bbox_xywh: i.bbox_xywh.map(|v| v as f32),
                area_px: i.pixels.len() as u32,
                origin: InstanceOrigin::parse(i.origin.name()).expect("stage and table name origins alike"),
                component_id: i.component,
                hdbscan_label: i.hdbscan_label,
                mean_flow_px: i.mean_flow_px,
            }));
            let t3 = Instant::now();
            per_frame.push([
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
            ]);
            stats = (
                instances.len(),
                instances.iter().filter(|i| i.hdbscan_label.is_some()).count(),
            );
        }
        let t = Instant::now();
        let batch = instances_batch(&rows).expect("batch");
        write_parquet(&dir.join("unit.parquet"), &batch, &[]).expect("parquet");
        write_s = t.elapsed().as_secs_f64();
    });
    let _ = std::fs::remove_dir_all(&dir);
    per_frame.remove(0); // warm-up
    let median = |i: usize| {
        let mut v: Vec<f64> = per_frame.iter().map(|t| t[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    let write_ms = write_s * 1e3 / frames.len() as f64;
    let (sel, inst, rle) = (median(0), median(1), median(2));
    println!("| frame | objects | instances (from HDBSCAN) | selection + fg | instances | RLE | Parquet (per frame) | total ms/frame, 1 core |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| 376×1240 | {} | {} ({}) | {sel:.1} | {inst:.1} | {rle:.1} | {write_ms:.1} | {:.1} |",
        OBJECTS.len(),
        stats.0,
        stats.1,
        sel + inst + rle + write_ms
    );
}
