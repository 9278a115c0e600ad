//! Representation-similarity statistics for the backbone-robustness analysis: linear CKA (biased and debiased),
//! SVCCA, PWCCA, k-NN neighbourhood purity and percentile bootstrap intervals.
//!
//! Every statistic takes representations as rows = examples (frames), columns = features, and works in float64
//! (inputs of any float kind are converted), on whatever device the tensors live. Definitions:
//!
//! - **Linear CKA** (Kornblith et al. 2019): with column-centred X (n×p) and Y (n×q),
//!   `CKA = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)`. Equals 1 for X against itself and is invariant to orthogonal
//!   transforms and isotropic scaling of either side. The three norms come from the feature-space products
//!   (p×q, p×p, q×q) or, when that is cheaper (few frames, wide features: 2048-D ResNet pools), from the Gram
//!   matrices K = XXᵀ, L = YYᵀ (n×n) as ⟨K, L⟩_F, ⟨K, K⟩_F, ⟨L, L⟩_F; the two agree up to rounding.
//! - **Debiased CKA**: the same ratio with each HSIC replaced by its unbiased estimator (Song et al. 2012) in the
//!   feature-space form: `h(a, b) = ⟨a, b⟩ − n/(n−2)·(r_x·r_y) + s_x s_y/((n−1)(n−2))` with r the per-row squared
//!   norms, s their sums; `dCKA = h(XY) / sqrt(h(XX) h(YY))`. Needs n ≥ 4.
//! - **CCA**: each side is whitened by its thin SVD (directions with singular value ≤ `1e-10`·max dropped, so
//!   rank-deficient inputs are handled), the canonical correlations are the singular values of `Q_xᵀ Q_y`
//!   (clamped to [0, 1]), the canonical variates of X are `Q_x A`.
//! - **SVCCA** (Raghu et al. 2017): each side reduced to its top singular directions that keep `keep_variance`
//!   (default 0.99) of the variance (Σσ²), optionally capped at a number of dimensions, projected as `U_k Σ_k`,
//!   then CCA; the statistic is the mean canonical correlation.
//! - **PWCCA** (Morcos et al. 2018): CCA on the full representations; canonical correlations weighted by how much of
//!   the side with fewer dimensions each canonical variate accounts for, `w_i = Σ_j |h_iᵀ x_j|` over that side's
//!   centred feature columns x_j (h_i orthonormal); `PWCCA = Σ w_i ρ_i / Σ w_i`. (The published implementation
//!   adds the means back before weighting; here the weights use centred activations, so a constant feature column
//!   carries no weight.)
//! - **k-NN purity**: pooled points, each labelled by its group (the variant); for every point the share of its k
//!   nearest other points (Euclidean, ties by index) with the same label; reported per label and overall.
//!
//! The bootstrap resamples frames (rows) with replacement from a seeded splitmix64 stream and reports the 2.5 and
//! 97.5 percentiles with linear interpolation between order statistics (NumPy's default), so intervals are
//! reproducible from the seed.
//!
//! # Statistics that cannot be computed
//!
//! The analysis' estimates ([`pair_estimates`], [`purity_estimates`]) never report NaN. A statistic is
//! *undefined* on a set of frames when one side has the same representation for every frame (no variance:
//! every comparison is 0/0 — e.g. the foreground variant of frames without any object, or the border variant
//! when the centre disc covers the frame), when its value is not a finite number (the debiased HSIC estimates
//! of a side can be ≤ 0), or, for purity, when there are not more points than neighbours. An undefined point
//! value makes the estimate an error naming the reason ([`SimilarityError::NoVariance`], `NotFinite`, `BadK`);
//! bootstrap resamples where the statistic is undefined are left out of the interval and counted
//! ([`Estimate::undefined_resamples`]), and when no resample is left the estimate is `NoResample`. A side has
//! no variance when the root-mean-square distance of its rows from their mean is at most [`NO_VARIANCE_RMS`]
//! times the root-mean-square norm of its rows (float32 representations of one image computed in different
//! batches differ by about 1e-7 relative).

use std::collections::BTreeSet;

use tch::{Kind, Tensor};

pub use crate::train::SplitMix64;

/// Errors of the statistics: shapes that do not describe the same examples, or too few examples.
#[derive(Clone, Debug, thiserror::Error, PartialEq)]
pub enum SimilarityError {
    #[error("representations must be 2-D (examples × features), got shapes {x:?} and {y:?}")]
    NotMatrices { x: Vec<i64>, y: Vec<i64> },
    #[error("representations describe different numbers of examples: {x} vs {y}")]
    RowMismatch { x: i64, y: i64 },
    #[error("{statistic} needs at least {needed} examples, got {got}")]
    TooFewExamples {
        statistic: &'static str,
        needed: i64,
        got: i64,
    },
    #[error("k-NN purity: {labels} labels for {points} points")]
    LabelCount { labels: usize, points: i64 },
    #[error("k-NN purity: k = {k} must be in 1..{points}")]
    BadK { k: usize, points: i64 },
    #[error("the {side} representations are the same for every frame (no variance), so {statistic} is 0/0")]
    NoVariance { statistic: &'static str, side: String },
    #[error("{statistic} is not a finite number on these frames")]
    NotFinite { statistic: &'static str },
    #[error("{statistic} is defined on none of the {resamples} bootstrap resamples")]
    NoResample { statistic: &'static str, resamples: usize },
    /// A tensor operation or the copy of its result failed (libtorch's message).
    #[error("tensor operation failed: {0}")]
    Torch(String),
}

impl From<tch::TchError> for SimilarityError {
    fn from(e: tch::TchError) -> Self {
        Self::Torch(e.to_string())
    }
}

impl SimilarityError {
    /// Whether the statistic is undefined on these particular frames (rather than called on inputs that do not
    /// fit it): a bootstrap resample with such an error is left out.
    pub fn is_undefined(&self) -> bool {
        matches!(
            self,
            Self::NoVariance { .. } | Self::NotFinite { .. } | Self::BadK { .. } | Self::NoResample { .. }
        )
    }
}

/// Relative spread below which a side counts as constant (see the module docs).
pub const NO_VARIANCE_RMS: f64 = 1e-6;

/// Whether the rows of X (n×p) differ: the RMS distance of the rows from their mean exceeds [`NO_VARIANCE_RMS`]
/// times the RMS norm of the rows.
pub fn has_variance(x: &Tensor) -> Result<bool, SimilarityError> {
    let x = x.f_to_kind(Kind::Double)?;
    let spread = scalar(&centred(&x)?.f_square()?.f_sum(Kind::Double)?)?;
    let size = scalar(&x.f_square()?.f_sum(Kind::Double)?)?;
    Ok(spread.is_finite() && spread > NO_VARIANCE_RMS * NO_VARIANCE_RMS * size)
}

fn check_pair(x: &Tensor, y: &Tensor, statistic: &'static str, min_rows: i64) -> Result<(), SimilarityError> {
    let (xs, ys) = (x.size(), y.size());
    if xs.len() != 2 || ys.len() != 2 {
        return Err(SimilarityError::NotMatrices { x: xs, y: ys });
    }
    if xs[0] != ys[0] {
        return Err(SimilarityError::RowMismatch { x: xs[0], y: ys[0] });
    }
    if xs[0] < min_rows {
        return Err(SimilarityError::TooFewExamples {
            statistic,
            needed: min_rows,
            got: xs[0],
        });
    }
    Ok(())
}

fn centred(x: &Tensor) -> Result<Tensor, SimilarityError> {
    let x = x.f_to_kind(Kind::Double)?;
    Ok(x.f_sub(&x.f_mean_dim(0, true, Kind::Double)?)?)
}

fn scalar(t: &Tensor) -> Result<f64, SimilarityError> {
    Ok(t.f_double_value(&[])?)
}

/// ‖YᵀX‖²_F, ‖XᵀX‖²_F and ‖YᵀY‖²_F of centred X (n×p) and Y (n×q), in the cheaper of the two forms.
fn cka_norms(x: &Tensor, y: &Tensor) -> Result<(f64, f64, f64), SimilarityError> {
    let (n, p, q) = (x.size()[0], x.size()[1], y.size()[1]);
    // Multiply-adds: n²(p + q) for the Gram matrices against n(pq + p² + q²) for the feature products.
    cka_norms_in(x, y, n * (p + q) < p * q + p * p + q * q)
}

/// `cka_norms` from the Gram matrices (`gram`) or from the feature-space products.
fn cka_norms_in(x: &Tensor, y: &Tensor, gram: bool) -> Result<(f64, f64, f64), SimilarityError> {
    if gram {
        let inner = |a: &Tensor, b: &Tensor| scalar(&a.f_mul(b)?.f_sum(Kind::Double)?);
        let (k, l) = (x.f_matmul(&x.f_tr()?)?, y.f_matmul(&y.f_tr()?)?);
        Ok((inner(&k, &l)?, inner(&k, &k)?, inner(&l, &l)?))
    } else {
        let norm = |a: &Tensor, b: &Tensor| scalar(&a.f_tr()?.f_matmul(b)?.f_square()?.f_sum(Kind::Double)?);
        Ok((norm(x, y)?, norm(x, x)?, norm(y, y)?))
    }
}

/// Linear CKA between X (n×p) and Y (n×q).
pub fn linear_cka(x: &Tensor, y: &Tensor) -> Result<f64, SimilarityError> {
    check_pair(x, y, "CKA", 2)?;
    let (cross, xx, yy) = cka_norms(&centred(x)?, &centred(y)?)?;
    Ok(cross / (xx.sqrt() * yy.sqrt()))
}

/// Debiased linear CKA between X (n×p) and Y (n×q), n ≥ 4.
pub fn linear_cka_debiased(x: &Tensor, y: &Tensor) -> Result<f64, SimilarityError> {
    check_pair(x, y, "debiased CKA", 4)?;
    let (x, y) = (centred(x)?, centred(y)?);
    let n = x.size()[0] as f64;
    let rows_x = x.f_square()?.f_sum_dim_intlist(1, false, Kind::Double)?;
    let rows_y = y.f_square()?.f_sum_dim_intlist(1, false, Kind::Double)?;
    let (sum_x, sum_y) = (scalar(&rows_x.f_sum(Kind::Double)?)?, scalar(&rows_y.f_sum(Kind::Double)?)?);
    let unbiased = |dot: f64, ra: &Tensor, rb: &Tensor, sa: f64, sb: f64| -> Result<f64, SimilarityError> {
        Ok(dot - n / (n - 2.0) * scalar(&ra.f_dot(rb)?)? + sa * sb / ((n - 1.0) * (n - 2.0)))
    };
    let (cross, norm_x, norm_y) = cka_norms(&x, &y)?;
    let xy = unbiased(cross, &rows_x, &rows_y, sum_x, sum_y)?;
    let xx = unbiased(norm_x, &rows_x, &rows_x, sum_x, sum_x)?;
    let yy = unbiased(norm_y, &rows_y, &rows_y, sum_y, sum_y)?;
    Ok(xy / (xx * yy).sqrt())
}

/// Orthonormal basis of the column space of a centred matrix, from its thin SVD (tiny directions dropped).
fn whiten(x: &Tensor) -> Result<Tensor, SimilarityError> {
    let (u, s, _) = x.f_svd(true, true)?;
    let s: Vec<f64> = Vec::<f64>::try_from(&s)?;
    let max = s.first().copied().unwrap_or(0.0);
    let rank = s.iter().take_while(|&&v| v > 1e-10 * max && v > 0.0).count() as i64;
    Ok(u.f_narrow(1, 0, rank.max(1))?)
}

/// Canonical correlations (descending) and X's canonical variates (n×m, orthonormal columns).
pub struct Cca {
    pub correlations: Vec<f64>,
    pub variates_x: Tensor,
    pub variates_y: Tensor,
}

/// CCA between centred X and Y (whitening by SVD).
fn cca_centred(x: &Tensor, y: &Tensor) -> Result<Cca, SimilarityError> {
    let (qx, qy) = (whiten(x)?, whiten(y)?);
    let (a, s, b) = qx.f_tr()?.f_matmul(&qy)?.f_svd(true, true)?;
    let m = s.size1()?;
    let correlations = Vec::<f64>::try_from(&s.f_clamp(0.0, 1.0)?)?;
    Ok(Cca {
        correlations,
        variates_x: qx.f_matmul(&a.f_narrow(1, 0, m)?)?,
        variates_y: qy.f_matmul(&b.f_narrow(1, 0, m)?)?,
    })
}

/// Canonical correlation analysis between X (n×p) and Y (n×q).
pub fn cca(x: &Tensor, y: &Tensor) -> Result<Cca, SimilarityError> {
    check_pair(x, y, "CCA", 2)?;
    cca_centred(&centred(x)?, &centred(y)?)
}

/// Top singular directions of a centred matrix keeping `keep_variance` of Σσ² (at most `max_dims`), as `U_k Σ_k`.
fn reduce(x: &Tensor, keep_variance: f64, max_dims: Option<usize>) -> Result<Tensor, SimilarityError> {
    let (u, s, _) = x.f_svd(true, true)?;
    let var: Vec<f64> = Vec::<f64>::try_from(&s.f_square()?)?;
    let total: f64 = var.iter().sum();
    let mut acc = 0.0;
    let mut k = 0;
    for v in &var {
        acc += v;
        k += 1;
        if acc >= keep_variance * total {
            break;
        }
    }
    let k = (k.min(max_dims.unwrap_or(usize::MAX)) as i64).max(1);
    Ok(u.f_narrow(1, 0, k)?.f_mul(&s.f_narrow(0, 0, k)?.f_unsqueeze(0)?)?)
}

/// Each side reduced to its top singular directions keeping `keep_variance` of the variance, at most `max_dims`
/// (CCA needs clearly more examples than dimensions: with n ≤ dims every canonical correlation is 1).
pub fn svd_reduce(x: &Tensor, keep_variance: f64, max_dims: Option<usize>) -> Result<Tensor, SimilarityError> {
    reduce(&centred(x)?, keep_variance, max_dims)
}

/// SVCCA: mean canonical correlation after reducing each side to the directions keeping `keep_variance`
/// (at most `max_dims` of them).
pub fn svcca(x: &Tensor, y: &Tensor, keep_variance: f64, max_dims: Option<usize>) -> Result<f64, SimilarityError> {
    check_pair(x, y, "SVCCA", 2)?;
    let (x, y) = (svd_reduce(x, keep_variance, max_dims)?, svd_reduce(y, keep_variance, max_dims)?);
    let rho = cca_centred(&x, &y)?.correlations;
    Ok(rho.iter().sum::<f64>() / rho.len().max(1) as f64)
}

/// PWCCA: canonical correlations weighted by the share of the smaller side each canonical variate accounts for.
pub fn pwcca(x: &Tensor, y: &Tensor) -> Result<f64, SimilarityError> {
    check_pair(x, y, "PWCCA", 2)?;
    let (xc, yc) = (centred(x)?, centred(y)?);
    let result = cca_centred(&xc, &yc)?;
    let (variates, acts) = if xc.size()[1] <= yc.size()[1] {
        (&result.variates_x, &xc)
    } else {
        (&result.variates_y, &yc)
    };
    let weights = variates
        .f_tr()?
        .f_matmul(acts)?
        .f_abs()?
        .f_sum_dim_intlist(1, false, Kind::Double)?;
    let weights = Vec::<f64>::try_from(&weights)?;
    let total: f64 = weights.iter().sum();
    let weighted: f64 = weights.iter().zip(&result.correlations).map(|(w, r)| w * r).sum();
    Ok(weighted / total)
}

/// k-NN purity of pooled points: per label (index = label) and overall.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Purity {
    pub per_label: Vec<f64>,
    pub overall: f64,
}

/// Share of each point's k nearest other points (Euclidean; ties by lower index) that carry its label.
/// Distances are computed in row blocks so memory stays O(block × n).
pub fn knn_purity(points: &Tensor, labels: &[usize], k: usize) -> Result<Purity, SimilarityError> {
    let size = points.size();
    if size.len() != 2 {
        return Err(SimilarityError::NotMatrices {
            x: size.clone(),
            y: size,
        });
    }
    let n = size[0];
    if labels.len() as i64 != n {
        return Err(SimilarityError::LabelCount {
            labels: labels.len(),
            points: n,
        });
    }
    if k == 0 || k as i64 >= n {
        return Err(SimilarityError::BadK { k, points: n });
    }
    let x = points.f_to_kind(Kind::Double)?;
    let sq = x.f_square()?.f_sum_dim_intlist(1, false, Kind::Double)?;
    let xt = x.f_tr()?;
    let infinity = Tensor::f_from_slice(&[f64::INFINITY])?.f_to_device(x.device())?;
    let n_labels = labels.iter().max().map_or(0, |m| m + 1);
    let mut sum = vec![0.0f64; n_labels];
    let mut count = vec![0usize; n_labels];
    const BLOCK: i64 = 512;
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        let block = x.f_narrow(0, start, len)?;
        let d = sq
            .f_narrow(0, start, len)?
            .f_unsqueeze(1)?
            .f_add(&sq.f_unsqueeze(0)?)?
            .f_sub(&block.f_matmul(&xt)?.f_mul_scalar(2.0)?)?;
        let d = d.f_clamp_min(0.0)?;
        // Exclude the point itself.
        let rows = Tensor::f_arange_start(start, start + len, (Kind::Int64, x.device()))?;
        let d = d.f_index_put(
            &[Some(Tensor::f_arange(len, (Kind::Int64, x.device()))?), Some(rows)],
            &infinity,
            false,
        )?;
        // Stable sort: equal distances keep index order.
        let (_, order) = d.f_sort_stable(true, 1, false)?;
        let nearest = Vec::<i64>::try_from(&order.f_narrow(1, 0, k as i64)?.f_flatten(0, -1)?)?;
        for i in 0..len as usize {
            let own = labels[start as usize + i];
            let same = nearest[i * k..(i + 1) * k]
                .iter()
                .filter(|&&j| labels[j as usize] == own)
                .count();
            sum[own] += same as f64 / k as f64;
            count[own] += 1;
        }
        start += len;
    }
    let per_label: Vec<f64> = sum
        .iter()
        .zip(&count)
        .map(|(s, &c)| if c == 0 { f64::NAN } else { s / c as f64 })
        .collect();
    let overall = sum.iter().sum::<f64>() / n as f64;
    Ok(Purity { per_label, overall })
}

/// Percentile (0..=100) with linear interpolation between order statistics, as `numpy.percentile`'s default.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// A statistic with its percentile bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Resamples on which the statistic is undefined, left out of the interval ([`bootstrap_defined`]).
    pub undefined_resamples: usize,
}

/// Evaluates `statistic` on all `n` rows and on `resamples` bootstrap resamples of the rows (indices drawn with
/// replacement from `seed`); the interval is the 2.5–97.5 percentile range of the resampled values.
pub fn bootstrap<F>(n: usize, resamples: usize, seed: u64, statistic: F) -> Result<Estimate, SimilarityError>
where
    F: Fn(&Tensor) -> Result<f64, SimilarityError>,
{
    let all = Tensor::f_arange(n as i64, (Kind::Int64, tch::Device::Cpu))?;
    let value = statistic(&all)?;
    let mut rng = SplitMix64::new(seed);
    let mut values = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let idx: Vec<i64> = (0..n).map(|_| rng.below(n as u64) as i64).collect();
        values.push(statistic(&Tensor::f_from_slice(&idx)?)?);
    }
    Ok(Estimate {
        value,
        ci_low: percentile(&values, 2.5),
        ci_high: percentile(&values, 97.5),
        undefined_resamples: 0,
    })
}

/// [`bootstrap`] for a statistic that can be undefined on some frames (see the module docs): an undefined point
/// value is the error; undefined resamples are left out of the interval and counted; none left is `NoResample`.
pub fn bootstrap_defined<F>(
    n: usize,
    resamples: usize,
    seed: u64,
    name: &'static str,
    statistic: F,
) -> Result<Estimate, SimilarityError>
where
    F: Fn(&Tensor) -> Result<f64, SimilarityError>,
{
    let all = Tensor::f_arange(n as i64, (Kind::Int64, tch::Device::Cpu))?;
    let value = statistic(&all)?;
    let mut rng = SplitMix64::new(seed);
    let mut values = Vec::with_capacity(resamples);
    let mut undefined_resamples = 0;
    for _ in 0..resamples {
        let idx: Vec<i64> = (0..n).map(|_| rng.below(n as u64) as i64).collect();
        match statistic(&Tensor::f_from_slice(&idx)?) {
            Ok(v) => values.push(v),
            Err(e) if e.is_undefined() => undefined_resamples += 1,
            Err(e) => return Err(e),
        }
    }
    if values.is_empty() {
        return Err(SimilarityError::NoResample {
            statistic: name,
            resamples,
        });
    }
    Ok(Estimate {
        value,
        ci_low: percentile(&values, 2.5),
        ci_high: percentile(&values, 97.5),
        undefined_resamples,
    })
}

/// `value` of `statistic`, or `NotFinite`.
fn finite(statistic: &'static str, value: f64) -> Result<f64, SimilarityError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(SimilarityError::NotFinite { statistic })
    }
}

/// The four statistics comparing two representations of the same frames, each with its bootstrap interval or
/// why it is undefined.
#[derive(Debug)]
pub struct PairEstimates {
    pub cka: Result<Estimate, SimilarityError>,
    pub cka_debiased: Result<Estimate, SimilarityError>,
    pub svcca: Result<Estimate, SimilarityError>,
    pub pwcca: Result<Estimate, SimilarityError>,
}

/// How the intervals are drawn: resamples and the seed of their stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootstrapSettings {
    pub resamples: usize,
    pub seed: u64,
}

/// CKA, debiased CKA, SVCCA and PWCCA between X (n×p) and Y (n×q), rows = the same frames, named `sides` in
/// the reasons. SVCCA and PWCCA run on each side's top singular directions keeping 99 % of the variance, at
/// most `max_dims`, reduced once on all frames; each statistic is bootstrapped over frames with the same
/// resamples ([`bootstrap_defined`]).
pub fn pair_estimates(
    x: &Tensor,
    y: &Tensor,
    sides: [&str; 2],
    settings: BootstrapSettings,
    max_dims: usize,
) -> PairEstimates {
    let n = x.size().first().copied().unwrap_or(0) as usize;
    let reduced = svd_reduce(x, 0.99, Some(max_dims)).and_then(|rx| Ok((rx, svd_reduce(y, 0.99, Some(max_dims))?)));
    let estimate = |name: &'static str, a: &Tensor, b: &Tensor, f: &dyn Fn(&Tensor, &Tensor) -> Result<f64, SimilarityError>| {
        bootstrap_defined(n, settings.resamples, settings.seed, name, |idx| {
            let (a, b) = (a.f_index_select(0, idx)?, b.f_index_select(0, idx)?);
            for (side, m) in sides.iter().zip([&a, &b]) {
                if !has_variance(m)? {
                    return Err(SimilarityError::NoVariance {
                        statistic: name,
                        side: (*side).to_string(),
                    });
                }
            }
            finite(name, f(&a, &b)?)
        })
    };
    PairEstimates {
        cka: estimate("CKA", x, y, &linear_cka),
        cka_debiased: estimate("debiased CKA", x, y, &linear_cka_debiased),
        svcca: match &reduced {
            Ok((rx, ry)) => estimate("SVCCA", rx, ry, &|a, b| svcca(a, b, 1.0, None)),
            Err(e) => Err(e.clone()),
        },
        pwcca: match &reduced {
            Ok((rx, ry)) => estimate("PWCCA", rx, ry, &pwcca),
            Err(e) => Err(e.clone()),
        },
    }
}

/// k-NN purity of pooled variants with bootstrap intervals: per variant and overall.
#[derive(Clone, Debug, PartialEq)]
pub struct PurityEstimates {
    pub per_label: Vec<Estimate>,
    pub overall: Estimate,
}

/// k-NN purity of the pooled representations of `per_label` groups (each n×p, rows = the same frames), with a
/// bootstrap over frames in which each drawn frame counts once (a duplicated point would be its own nearest
/// neighbour). Undefined when k is not below the number of points; a resample with too few distinct frames for
/// k is left out of the intervals and counted.
pub fn purity_estimates(
    per_label: &[Tensor],
    k: usize,
    settings: BootstrapSettings,
) -> Result<PurityEstimates, SimilarityError> {
    let n = per_label
        .first()
        .and_then(|m| m.size().first().copied())
        .unwrap_or(0) as usize;
    let compute = |frames: &[i64]| -> Result<Purity, SimilarityError> {
        let idx = Tensor::f_from_slice(frames)?;
        let selected = per_label
            .iter()
            .map(|m| m.f_index_select(0, &idx))
            .collect::<Result<Vec<_>, _>>()?;
        let points = Tensor::f_cat(&selected, 0)?;
        let labels: Vec<usize> = (0..per_label.len())
            .flat_map(|v| std::iter::repeat_n(v, frames.len()))
            .collect();
        knn_purity(&points, &labels, k)
    };
    let all: Vec<i64> = (0..n as i64).collect();
    let point = compute(&all)?;
    let mut rng = SplitMix64::new(settings.seed);
    let mut samples: Vec<Purity> = Vec::new();
    let mut undefined_resamples = 0;
    for _ in 0..settings.resamples {
        let drawn: BTreeSet<i64> = (0..n).map(|_| rng.below(n as u64) as i64).collect();
        let drawn: Vec<i64> = drawn.into_iter().collect();
        match compute(&drawn) {
            Ok(p) => samples.push(p),
            Err(e) if e.is_undefined() => undefined_resamples += 1,
            Err(e) => return Err(e),
        }
    }
    if samples.is_empty() {
        return Err(SimilarityError::NoResample {
            statistic: "k-NN purity",
            resamples: settings.resamples,
        });
    }
    let ci = |value: f64, pick: &dyn Fn(&Purity) -> f64| -> Result<Estimate, SimilarityError> {
        let v: Vec<f64> = samples.iter().map(pick).collect();
        Ok(Estimate {
            value: finite("k-NN purity", value)?,
            ci_low: percentile(&v, 2.5),
            ci_high: percentile(&v, 97.5),
            undefined_resamples,
        })
    };
    let per_label = point
        .per_label
        .iter()
        .enumerate()
        .map(|(i, &v)| ci(v, &|s: &Purity| s.per_label[i]))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PurityEstimates {
        per_label,
        overall: ci(point.overall, &|s: &Purity| s.overall)?,
    })
}

/// The first two principal-component scores of the rows of X (n×p), from the SVD of the centred matrix; each
/// component's sign is fixed so that its largest-magnitude loading is positive (deterministic across runs).
pub fn pca_2d(x: &Tensor) -> Result<Vec<(f64, f64)>, SimilarityError> {
    let size = x.size();
    if size.len() != 2 {
        return Err(SimilarityError::NotMatrices {
            x: size.clone(),
            y: size,
        });
    }
    let xc = centred(x)?;
    let (u, s, v) = xc.f_svd(true, true)?;
    let k = s.size1()?.min(2);
    let mut columns: Vec<Vec<f64>> = Vec::new();
    for c in 0..k {
        let loading = v.f_select(1, c)?;
        let pivot = loading.f_abs()?.f_argmax(None, false)?.f_int64_value(&[])?;
        let sign = if loading.f_double_value(&[pivot])? < 0.0 {
            -1.0
        } else {
            1.0
        };
        let scores = u
            .f_select(1, c)?
            .f_mul_scalar(s.f_double_value(&[c])?)?
            .f_mul_scalar(sign)?;
        columns.push(Vec::<f64>::try_from(&scores)?);
    }
    let n = size[0] as usize;
    Ok((0..n)
        .map(|i| {
            (
                columns.first().map_or(0.0, |c| c[i]),
                columns.get(1).map_or(0.0, |c| c[i]),
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: i64, p: i64, seed: i64) -> Tensor {
        let x = crate::dinosaur::seeded(seed, || Tensor::randn([n, p], (Kind::Double, tch::Device::Cpu)));
        centred(&x).unwrap()
    }

    #[test]
    fn gram_and_feature_forms_of_the_cka_norms_agree() {
        for (n, p, q) in [(12, 300, 200), (80, 6, 9), (30, 30, 30)] {
            let (x, y) = (random(n, p, 1), random(n, q, 2));
            let gram = cka_norms_in(&x, &y, true).unwrap();
            let feature = cka_norms_in(&x, &y, false).unwrap();
            for (g, f) in [(gram.0, feature.0), (gram.1, feature.1), (gram.2, feature.2)] {
                assert!((g - f).abs() <= 1e-12 * f.abs(), "n {n}, p {p}, q {q}: {g} vs {f}");
            }
        }
    }

    #[test]
    fn cka_norms_take_the_gram_form_for_wide_representations() {
        // 12 frames of 2048-D features: n²(p + q) ≈ 0.6 M multiply-adds against n(pq + p² + q²) ≈ 150 M.
        let (x, y) = (random(12, 2048, 3), random(12, 2048, 4));
        assert_eq!(cka_norms(&x, &y).unwrap(), cka_norms_in(&x, &y, true).unwrap());
        let (x, y) = (random(200, 8, 3), random(200, 8, 4));
        assert_eq!(cka_norms(&x, &y).unwrap(), cka_norms_in(&x, &y, false).unwrap());
    }

    #[test]
    fn projections_of_what_is_not_a_matrix_are_an_error() {
        let v = Tensor::from_slice(&[1.0f64, 2.0, 3.0]);
        assert_eq!(
            pca_2d(&v),
            Err(SimilarityError::NotMatrices {
                x: vec![3],
                y: vec![3]
            })
        );
        let points = pca_2d(&random(5, 3, 7)).unwrap();
        assert_eq!(points.len(), 5);
        assert!(points.iter().all(|(x, y)| x.is_finite() && y.is_finite()));
    }
}
