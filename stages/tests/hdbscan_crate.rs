//! Parity of `mrdino_stages::hdbscan` with the `hdbscan` crate 0.12, which builds the exact MST by Prim's
//! algorithm on dense distances. Its `min_samples` counts the point itself, so it gets ours + 1.
//! (The crate does not expose its MST; the exactness of our MST weight is checked against a brute-force Prim in
//! the module's unit tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

#[allow(dead_code)] // each test crate uses a part of the shared helpers
mod hdbscan_support;

use hdbscan::{DistanceMetric, Hdbscan, HdbscanHyperParams};
use hdbscan_support::{adjusted_rand_index, component_points, Rng};
use mrdino_stages::hdbscan::{cluster, HdbscanParams};

fn crate_labels<const D: usize>(points: &[[f64; D]], params: &HdbscanParams) -> Vec<i32> {
    let rows: Vec<Vec<f64>> = points.iter().map(|p| p.to_vec()).collect();
    let hyper = HdbscanHyperParams::builder()
        .min_cluster_size(params.min_cluster_size)
        .min_samples(params.min_samples + 1)
        .dist_metric(DistanceMetric::Euclidean)
        .allow_single_cluster(false)
        .epsilon(0.0)
        .build();
    Hdbscan::new(&rows, hyper).cluster().expect("the hdbscan crate failed")
}

/// True if the labelings are the same partition (noise must be noise in both).
fn same_partition(a: &[i32], b: &[i32]) -> bool {
    let mut forward = std::collections::HashMap::new();
    let mut backward = std::collections::HashMap::new();
    a.iter().zip(b).all(|(&x, &y)| {
        (x == -1) == (y == -1) && *forward.entry(x).or_insert(y) == y && *backward.entry(y).or_insert(x) == x
    })
}

/// With `min_samples > 1` the mutual-reachability graph is full of equal weights even on continuous data (every
/// edge from a point to a neighbour with a smaller core distance weighs exactly the point's core distance), so
/// several MSTs exist and a few points at equal-height merges may land in a different cluster; `min_ari` allows
/// for that. With `min_samples = 1` and continuous coordinates all weights differ and the partition must be equal.
fn compare<const D: usize>(name: &str, points: &[[f64; D]], params: HdbscanParams, min_ari: f64) {
    let ours = cluster(points, &params);
    let theirs = crate_labels(points, &params);
    let ari = adjusted_rand_index(&ours, &theirs);
    let clusters = |labels: &[i32]| labels.iter().copied().max().unwrap_or(-1) + 1;
    println!(
        "{name}: {} points, clusters ours {} / crate {}, same partition: {}, ARI {ari:.5}",
        points.len(),
        clusters(&ours),
        clusters(&theirs),
        same_partition(&ours, &theirs)
    );
    assert!(clusters(&ours) >= 2, "{name}: the data should have clusters");
    if min_ari >= 1.0 {
        assert!(same_partition(&ours, &theirs), "{name}: partitions differ (ARI {ari})");
    }
    assert!(ari >= min_ari, "{name}: ARI {ari} against the hdbscan crate");
}

#[test]
fn matches_crate_on_gaussian_blobs_with_noise() {
    let mut rng = Rng::new(42);
    let mut points: Vec<[f64; 5]> = Vec::new();
    for blob in 0..6 {
        let centre: [f64; 5] = std::array::from_fn(|_| 20.0 * rng.uniform());
        let spread = 0.5 + 0.25 * blob as f64;
        for _ in 0..280 {
            points.push(std::array::from_fn(|d| centre[d] + spread * rng.normal()));
        }
    }
    while points.len() < 2_000 {
        points.push(std::array::from_fn(|_| 24.0 * rng.uniform() - 2.0));
    }
    for (min_cluster_size, min_samples, min_ari) in [(30, 1, 1.0), (30, 30, 0.998), (25, 10, 0.998)] {
        let params = HdbscanParams {
            min_cluster_size,
            min_samples,
        };
        compare(
            &format!("blobs mcs {min_cluster_size} ms {min_samples}"),
            &points,
            params,
            min_ari,
        );
    }
}

#[test]
fn matches_crate_on_component_features() {
    for (objects, seed) in [(2, 5), (3, 6)] {
        let points = component_points(2_000, objects, seed);
        for (min_samples, min_ari) in [(1, 1.0), (30, 0.998)] {
            let params = HdbscanParams {
                min_cluster_size: 30,
                min_samples,
            };
            compare(
                &format!("component, {objects} objects, ms {min_samples}"),
                &points,
                params,
                min_ari,
            );
        }
    }
}
