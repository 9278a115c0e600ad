"""Reference values for mrdino_model::similarity, computed with NumPy / SciPy / scikit-learn.

Usage: similarity_fixtures.py OUT_DIR. Writes OUT_DIR/similarity.safetensors with the input matrices (float64)
and the expected statistics. The CCA family is computed by a different route than the Rust code (covariance
whitening with eigh instead of SVD bases) so that agreement is evidence, not a copy.
"""
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors


def centre(x):
    return x - x.mean(0, keepdims=True)


def cka(x, y):
    x, y = centre(x), centre(y)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def cka_debiased(x, y):
    # Unbiased HSIC on Gram matrices (Song et al. 2012), kernel form.
    x, y = centre(x), centre(y)
    n = x.shape[0]

    def hsic(k, l):
        k = k.copy(); l = l.copy()
        np.fill_diagonal(k, 0); np.fill_diagonal(l, 0)
        one = np.ones(n)
        return (np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * (one @ k @ l @ one)) / (n * (n - 3))

    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def inv_sqrt(c):
    w, v = np.linalg.eigh(c)
    return v @ np.diag(1.0 / np.sqrt(w)) @ v.T


def cca(x, y):
    x, y = centre(x), centre(y)
    wx, wy = inv_sqrt(x.T @ x), inv_sqrt(y.T @ y)
    a, s, bt = np.linalg.svd(wx @ x.T @ y @ wy, full_matrices=False)
    m = len(s)
    hx = x @ wx @ a[:, :m]
    hy = y @ wy @ bt.T[:, :m]
    return np.clip(s, 0, 1), hx, hy


def svcca(x, y, keep=0.99):
    def reduce(z):
        z = centre(z)
        u, s, _ = np.linalg.svd(z, full_matrices=False)
        frac = np.cumsum(s ** 2) / np.sum(s ** 2)
        k = int(np.searchsorted(frac, keep) + 1)
        return u[:, :k] * s[:k]

    rho, _, _ = cca(reduce(x), reduce(y))
    return rho.mean()


def pwcca(x, y):
    rho, hx, hy = cca(x, y)
    xc, yc = centre(x), centre(y)
    h, acts = (hx, xc) if x.shape[1] <= y.shape[1] else (hy, yc)
    w = np.abs(h.T @ acts).sum(1)
    return (w * rho).sum() / w.sum()


def purity(points, labels, k):
    nn = NearestNeighbors(n_neighbors=k + 1).fit(points)
    _, idx = nn.kneighbors(points)
    per_point = []
    for i, row in enumerate(idx):
        row = [j for j in row if j != i][:k]
        per_point.append(np.mean(labels[row] == labels[i]))
    per_point = np.array(per_point)
    per_label = np.array([per_point[labels == c].mean() for c in range(labels.max() + 1)])
    return per_label, per_point.mean()


def main():
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261201)
    t = {}
    cases = [(60, 8, 12), (40, 20, 5), (100, 30, 30)]
    for c, (n, p, q) in enumerate(cases):
        x = rng.standard_normal((n, p))
        # Y shares structure with X so the statistics are far from 0 and 1.
        mix = rng.standard_normal((p, q))
        y = x @ mix + 0.8 * rng.standard_normal((n, q)) + 3.0
        t[f"x{c}"], t[f"y{c}"] = x, y
        t[f"cka{c}"] = np.array([cka(x, y)])
        t[f"dcka{c}"] = np.array([cka_debiased(x, y)])
        t[f"rho{c}"] = cca(x, y)[0]
        t[f"svcca{c}"] = np.array([svcca(x, y)])
        t[f"pwcca{c}"] = np.array([pwcca(x, y)])
    # Purity: three groups of points with shifted means.
    groups = [rng.standard_normal((50, 6)) + shift for shift in (0.0, 1.0, 3.0)]
    points = np.concatenate(groups)
    labels = np.repeat(np.arange(3), 50)
    per_label, overall = purity(points, labels, 7)
    t["points"], t["labels"] = points, labels.astype(np.int64)
    t["purity_per_label"], t["purity_overall"] = per_label, np.array([overall])
    pca = PCA(n_components=2, svd_solver="full").fit(points)
    scores = pca.transform(points)
    for c in range(2):
        comp = pca.components_[c]
        if comp[np.argmax(np.abs(comp))] < 0:
            scores[:, c] = -scores[:, c]
    t["pca"] = scores
    v = rng.standard_normal(37)
    t["pvalues"] = v
    t["percentiles"] = np.percentile(v, [0.0, 2.5, 50.0, 97.5, 100.0])
    # CKA with fewer examples than features (the analysis of a few frames of 2048-D ResNet pools).
    wide = np.random.default_rng(20261202)
    xw = wide.standard_normal((12, 300))
    yw = xw @ wide.standard_normal((300, 200)) + 0.8 * wide.standard_normal((12, 200)) + 3.0
    t["xw"], t["yw"] = xw, yw
    t["ckaw"], t["dckaw"] = np.array([cka(xw, yw)]), np.array([cka_debiased(xw, yw)])
    save_file({k: np.ascontiguousarray(a) for k, a in t.items()}, str(out / "similarity.safetensors"))
    print(f"wrote {out / 'similarity.safetensors'}")


if __name__ == "__main__":
    main()
