//! Times `mrdino_stages::hdbscan::cluster` (kd-tree) and `cluster_pixels` (pixel grid, what the instance stage
//! uses) against the Python `hdbscan` library on the same realistic component features (2k, 10k, 50k pixels,
//! three objects) and prints a markdown table. Run with
//! `cargo bench -p mrdino-stages --bench hdbscan` (needs the Python environment, see
//! `tests/hdbscan_support`). Ours is single-threaded. The library is timed with its defaults
//! (approximate MST, `core_dist_n_jobs=4`), with its defaults on one core (`core_dist_n_jobs=1`), and with the
//! exact MST on one core. Times are the minimum over the repeats; Python's exclude start-up and file I/O.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

#[path = "../tests/hdbscan_support/mod.rs"]
mod hdbscan_support;

use std::time::Instant;

use hdbscan_support::{adjusted_rand_index, component_points, python_labels, PythonOptions};
use mrdino_stages::hdbscan::{cluster, cluster_pixels, HdbscanParams};

const PARAMS: HdbscanParams = HdbscanParams {
    min_cluster_size: 30,
    min_samples: 30,
};

fn main() {
    println!(
        "| points | ours, pixel grid, 1 core (s) | ours, kd-tree, 1 core (s) | python default (s) | python default, 1 core (s) | python exact MST, 1 core (s) \
         | speed-up vs python 1 core | ARI vs python exact | ARI vs python default |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (target_pixels, repeats) in [(2_000, 10), (10_000, 5), (50_000, 3)] {
        let points = component_points(target_pixels, 3, target_pixels as u64);
        // The features' spatial columns are 60·row and 60·col exactly.
        let pixels: Vec<(u32, u32)> = points
            .iter()
            .map(|p| ((p[2] / 60.0) as u32, (p[3] / 60.0) as u32))
            .collect();
        let mut ours_seconds = f64::INFINITY;
        let mut kd_seconds = f64::INFINITY;
        let mut ours = Vec::new();
        for _ in 0..repeats {
            let start = Instant::now();
            ours = cluster_pixels(&points, &pixels, 60.0, &PARAMS);
            ours_seconds = ours_seconds.min(start.elapsed().as_secs_f64());
            let start = Instant::now();
            let kd = cluster(&points, &PARAMS);
            kd_seconds = kd_seconds.min(start.elapsed().as_secs_f64());
            assert_eq!(kd, ours, "the pixel grid and the kd-tree disagree");
        }
        let python = |approx_min_span_tree, core_dist_n_jobs| {
            let options = PythonOptions {
                approx_min_span_tree,
                core_dist_n_jobs,
                repeats,
            };
            python_labels(&points, options).unwrap_or_else(|e| panic!("Python reference failed: {e}"))
        };
        let (default_labels, default_seconds) = python(true, 4);
        let (_, default_one_core_seconds) = python(true, 1);
        let (exact_labels, exact_seconds) = python(false, 1);
        println!(
            "| {} | {ours_seconds:.4} | {kd_seconds:.4} | {default_seconds:.4} | {default_one_core_seconds:.4} | {exact_seconds:.4} \
             | {:.1}× | {:.5} | {:.5} |",
            points.len(),
            default_one_core_seconds / ours_seconds,
            adjusted_rand_index(&ours, &exact_labels),
            adjusted_rand_index(&ours, &default_labels),
        );
    }
}
