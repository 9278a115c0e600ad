//! How good and how reproducible are the 2-D layouts of `umap-rs` 0.4.5, against PCA, on Gaussian clusters?
//!
//! For each case (clusters of points in p dimensions) and data seed: exact k-NN (each point first, at distance 0,
//! as umap-learn passes it), PCA as the initial layout, then
//! - `fit`: the crate's entry point `Umap::fit` (its Euclidean optimiser), in a one-thread rayon pool, twice;
//! - `generic`: the crate's generic-metric optimiser (`Optimizer` with `MetricType::Generic` and a Euclidean
//!   `Metric`), one epoch per `step_epochs` call.
//!
//! Measures: trustworthiness at k = 7 (Venna & Kaski, as scikit-learn's `manifold.trustworthiness`: 1 when
//! every 2-D neighbour is a true neighbour), the 2-D neighbourhood purity at k = 7 (share of a point's 7 nearest
//! 2-D neighbours in its own cluster; chance is (m − 1)/(n − 1) for clusters of m of n points), and whether two
//! runs on one thread give identical coordinates (else their largest coordinate difference over the layout's extent). `--dump DIR` writes the first case's data and layouts as CSV.

use std::fmt::Write as _;
use std::path::PathBuf;

use ndarray::{Array1, Array2, ArrayView1};
use umap_rs::{GraphParams, Metric, MetricType, OptimizationParams, Optimizer, Umap, UmapConfig};

const K_EVAL: usize = 7;
const EPOCHS: usize = 500;
const SEEDS: u64 = 5;

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

struct Case {
    name: &'static str,
    clusters: usize,
    per_cluster: usize,
    dims: usize,
    centre_sd: f64,
    noise_sd: f64,
    n_neighbors: usize,
}

const CASES: [Case; 4] = [
    Case {
        name: "5 clusters × 40 points, 64-D, well separated",
        clusters: 5,
        per_cluster: 40,
        dims: 64,
        centre_sd: 1.0,
        noise_sd: 0.3,
        n_neighbors: 15,
    },
    Case {
        name: "5 clusters × 40 points, 64-D, overlapping",
        clusters: 5,
        per_cluster: 40,
        dims: 64,
        centre_sd: 0.15,
        noise_sd: 0.3,
        n_neighbors: 15,
    },
    Case {
        name: "5 groups × 8 points, 384-D (5 variants × 8 frames)",
        clusters: 5,
        per_cluster: 8,
        dims: 384,
        centre_sd: 0.5,
        noise_sd: 0.4,
        n_neighbors: 10,
    },
    Case {
        name: "10 clusters × 30 points, 32-D",
        clusters: 10,
        per_cluster: 30,
        dims: 32,
        centre_sd: 0.6,
        noise_sd: 0.35,
        n_neighbors: 15,
    },
];

type Points = Vec<Vec<f64>>;

fn clusters(case: &Case, seed: u64) -> (Points, Vec<usize>) {
    let mut rng = SplitMix64(seed);
    let centres: Points = (0..case.clusters)
        .map(|_| (0..case.dims).map(|_| rng.normal() * case.centre_sd).collect())
        .collect();
    let mut points = Vec::new();
    let mut labels = Vec::new();
    for (c, centre) in centres.iter().enumerate() {
        for _ in 0..case.per_cluster {
            points.push(centre.iter().map(|m| m + rng.normal() * case.noise_sd).collect());
            labels.push(c);
        }
    }
    (points, labels)
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

/// Neighbour ranks: `ranks[i][j]` is j's rank among i's neighbours (1 = nearest; ties by index), 0 for i itself.
fn ranks(points: &Points) -> Vec<Vec<usize>> {
    let n = points.len();
    (0..n)
        .map(|i| {
            let mut order: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            order.sort_by(|&a, &b| {
                distance(&points[i], &points[a])
                    .total_cmp(&distance(&points[i], &points[b]))
                    .then(a.cmp(&b))
            });
            let mut rank = vec![0; n];
            for (r, &j) in order.iter().enumerate() {
                rank[j] = r + 1;
            }
            rank
        })
        .collect()
}

fn trustworthiness(high: &[Vec<usize>], low: &[Vec<usize>], k: usize) -> f64 {
    let n = high.len();
    let mut penalty = 0.0;
    for i in 0..n {
        for j in 0..n {
            if i != j && low[i][j] <= k && high[i][j] > k {
                penalty += (high[i][j] - k) as f64;
            }
        }
    }
    let (n, k) = (n as f64, k as f64);
    1.0 - 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0)) * penalty
}

fn purity(low: &[Vec<usize>], labels: &[usize], k: usize) -> f64 {
    let n = low.len();
    let mut same = 0;
    for i in 0..n {
        for j in 0..n {
            if i != j && low[i][j] <= k && labels[i] == labels[j] {
                same += 1;
            }
        }
    }
    same as f64 / (n * k) as f64
}

/// The first two principal-component scores (power iteration with deflation on the centred data).
fn pca_2d(points: &Points) -> Points {
    let (n, p) = (points.len(), points[0].len());
    let mean: Vec<f64> = (0..p)
        .map(|j| points.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let xc: Points = points
        .iter()
        .map(|r| r.iter().zip(&mean).map(|(a, m)| a - m).collect())
        .collect();
    let mut components: Points = Vec::new();
    for _ in 0..2 {
        let mut v: Vec<f64> = (0..p).map(|j| 1.0 + (j % 7) as f64).collect();
        for _ in 0..1000 {
            let xv: Vec<f64> = xc.iter().map(|r| r.iter().zip(&v).map(|(a, b)| a * b).sum()).collect();
            let mut w: Vec<f64> = (0..p)
                .map(|j| xc.iter().zip(&xv).map(|(r, s)| r[j] * s).sum())
                .collect();
            for c in &components {
                let dot: f64 = w.iter().zip(c).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = w.iter().map(|a| a * a).sum::<f64>().sqrt();
            v = w.iter().map(|a| a / norm).collect();
        }
        components.push(v);
    }
    xc.iter()
        .map(|r| {
            components
                .iter()
                .map(|c| r.iter().zip(c).map(|(a, b)| a * b).sum())
                .collect()
        })
        .collect()
}

/// Euclidean distance with its gradient, for the crate's generic-metric optimiser.
#[derive(Debug)]
struct GenericEuclidean;

impl Metric for GenericEuclidean {
    fn distance(&self, a: ArrayView1<f32>, b: ArrayView1<f32>) -> (f32, Array1<f32>) {
        let diff = &a - &b;
        let d = diff.dot(&diff).sqrt();
        (d, diff / (1e-6 + d))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Fit,
    Generic,
}

fn umap(points: &Points, init: &Points, n_neighbors: usize, path: Path) -> Points {
    let n = points.len();
    let knn: Vec<Vec<(usize, f64)>> = (0..n)
        .map(|i| {
            let mut d: Vec<(usize, f64)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (j, distance(&points[i], &points[j])))
                .collect();
            d.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            d.insert(0, (i, 0.0));
            d.truncate(n_neighbors);
            d
        })
        .collect();
    let indices = Array2::from_shape_fn((n, n_neighbors), |(i, j)| knn[i][j].0 as u32);
    let dists = Array2::from_shape_fn((n, n_neighbors), |(i, j)| knn[i][j].1 as f32);
    let init = Array2::from_shape_fn((n, 2), |(i, j)| init[i][j] as f32);
    let data = Array2::<f32>::zeros((n, 1)); // the crate reads only its row count
    let config = UmapConfig {
        graph: GraphParams {
            n_neighbors,
            ..Default::default()
        },
        optimization: OptimizationParams {
            n_epochs: Some(EPOCHS),
            ..Default::default()
        },
        ..Default::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let layout = pool.install(|| {
        let umap = Umap::new(config.clone());
        match path {
            Path::Fit => umap
                .fit(data.view(), indices.view(), dists.view(), init.view())
                .into_embedding(),
            Path::Generic => {
                let manifold = umap.learn_manifold(data.view(), indices.view(), dists.view());
                let mut opt = Optimizer::new(manifold, init, EPOCHS, &config, MetricType::Generic);
                while opt.remaining_epochs() > 0 {
                    opt.step_epochs(1, &GenericEuclidean);
                }
                opt.into_fitted(config.clone()).into_embedding()
            }
        }
    });
    (0..n)
        .map(|i| vec![f64::from(layout[(i, 0)]), f64::from(layout[(i, 1)])])
        .collect()
}

fn max_abs_difference(a: &Points, b: &Points) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn extent(a: &Points) -> f64 {
    let (lo, hi) = a
        .iter()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
    hi - lo
}

#[derive(Default)]
struct Summary(Vec<f64>);

impl Summary {
    fn show(&self) -> String {
        let mean = self.0.iter().sum::<f64>() / self.0.len() as f64;
        let (lo, hi) = self
            .0
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
        format!("{mean:.3} ({lo:.3}–{hi:.3})")
    }
}

fn write_csv(path: PathBuf, rows: &Points) {
    let mut text = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().map(|v| format!("{v:e}")).collect();
        writeln!(text, "{}", line.join(",")).unwrap();
    }
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dump = args.iter().position(|a| a == "--dump").map(|i| {
        PathBuf::from(args.get(i + 1).unwrap_or_else(|| {
            eprintln!("--dump needs a directory");
            std::process::exit(2)
        }))
    });
    {
        let umap = Umap::new(UmapConfig::default());
        let one = Array2::from_shape_fn((20, 15), |(_, j)| j as f32);
        let idx = Array2::from_shape_fn((20, 15), |(i, j)| ((i + j) % 20) as u32);
        let (a, b) = umap
            .learn_manifold(Array2::<f32>::zeros((20, 1)).view(), idx.view(), one.view())
            .curve_params();
        println!("curve parameters for min_dist 0.1, spread 1: a = {a:.4}, b = {b:.4} (scipy curve_fit, as umap-learn: a = 1.5769, b = 0.8951)");
    }
    println!(
        "{} data seeds per case, {EPOCHS} epochs, one rayon thread; mean (min–max) over seeds; k = {K_EVAL}\n",
        SEEDS
    );
    println!("| case | chance purity | PCA trust. | PCA purity | fit trust. | fit purity | generic trust. | generic purity | fit runs identical | fit max Δ / extent | generic runs identical | generic max Δ / extent |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (ci, case) in CASES.iter().enumerate() {
        let mut s: [Summary; 6] = Default::default();
        let (mut fit_same, mut generic_same) = (0, 0);
        let (mut delta, mut generic_delta) = (Summary::default(), Summary::default());
        let n = case.clusters * case.per_cluster;
        for seed in 1..=SEEDS {
            let (points, labels) = clusters(case, seed * 1000 + ci as u64);
            let high = ranks(&points);
            let pca = pca_2d(&points);
            let fit = umap(&points, &pca, case.n_neighbors, Path::Fit);
            let fit2 = umap(&points, &pca, case.n_neighbors, Path::Fit);
            let generic = umap(&points, &pca, case.n_neighbors, Path::Generic);
            let generic2 = umap(&points, &pca, case.n_neighbors, Path::Generic);
            for (m, layout) in [&pca, &fit, &generic].into_iter().enumerate() {
                let low = ranks(layout);
                s[2 * m].0.push(trustworthiness(&high, &low, K_EVAL));
                s[2 * m + 1].0.push(purity(&low, &labels, K_EVAL));
            }
            fit_same += usize::from(fit == fit2);
            generic_same += usize::from(generic == generic2);
            delta.0.push(max_abs_difference(&fit, &fit2) / extent(&fit));
            generic_delta
                .0
                .push(max_abs_difference(&generic, &generic2) / extent(&generic));
            if let (Some(dir), 0, 1) = (&dump, ci, seed) {
                std::fs::create_dir_all(dir).unwrap();
                write_csv(dir.join("points.csv"), &points);
                write_csv(dir.join("pca.csv"), &pca);
                write_csv(dir.join("fit.csv"), &fit);
                write_csv(dir.join("generic.csv"), &generic);
                let t: Vec<f64> = [&pca, &fit, &generic]
                    .iter()
                    .map(|l| trustworthiness(&high, &ranks(l), K_EVAL))
                    .collect();
                eprintln!(
                    "dumped to {}: trustworthiness of pca, fit, generic {t:?}",
                    dir.display()
                );
            }
        }
        let chance = (case.per_cluster - 1) as f64 / (n - 1) as f64;
        println!(
            "| {} | {chance:.3} | {} | {} | {} | {} | {} | {} | {fit_same}/{SEEDS} | {} | {generic_same}/{SEEDS} | {} |",
            case.name,
            s[0].show(),
            s[1].show(),
            s[2].show(),
            s[3].show(),
            s[4].show(),
            s[5].show(),
            delta.show(),
            generic_delta.show()
        );
    }
}
