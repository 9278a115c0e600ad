//! Parity of `mrdino_stages::hdbscan` with the Python `hdbscan` library on realistic component features.
//! Needs the project's Python environment (`MRDINO_PYTHON`, default `$HOME/.cache/mrdino/venv/bin/python`);
//! without it the test fails rather than silently passing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

#[allow(dead_code)] // each test crate uses a part of the shared helpers
mod hdbscan_support;

use hdbscan_support::{adjusted_rand_index, component_points, python_labels, PythonOptions};
use mrdino_stages::hdbscan::{cluster, HdbscanParams};

const PARAMS: HdbscanParams = HdbscanParams {
    min_cluster_size: 30,
    min_samples: 30,
};

fn check(target_pixels: usize, objects: usize, seed: u64) {
    let points = component_points(target_pixels, objects, seed);
    let ours = cluster(&points, &PARAMS);
    let run = |approx_min_span_tree| {
        let options = PythonOptions {
            approx_min_span_tree,
            core_dist_n_jobs: 1,
            repeats: 1,
        };
        python_labels(&points, options)
            .unwrap_or_else(|e| panic!("Python reference failed: {e}"))
            .0
    };
    let exact = run(false);
    let default = run(true);
    let clusters = |labels: &[i32]| labels.iter().copied().max().unwrap_or(-1) + 1;
    let ari_exact = adjusted_rand_index(&ours, &exact);
    let ari_default = adjusted_rand_index(&ours, &default);
    println!(
        "{} points, {objects} objects: clusters ours {} / python exact {} / python default {}; \
         ARI vs python exact MST {ari_exact:.5}, vs python default {ari_default:.5}; labels identical to exact: {}",
        points.len(),
        clusters(&ours),
        clusters(&exact),
        clusters(&default),
        ours == exact
    );
    assert!(
        ari_exact >= 0.99,
        "ARI {ari_exact} against Python with approx_min_span_tree=False"
    );
}

#[test]
fn matches_python_on_two_objects_2k() {
    check(2_000, 2, 1);
}

#[test]
fn matches_python_on_three_objects_2k() {
    check(2_000, 3, 2);
}

#[test]
fn matches_python_on_three_objects_10k() {
    check(10_000, 3, 3);
}
