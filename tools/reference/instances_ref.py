#!/usr/bin/env python3
"""Test-time reference for mrdino's instance stage, written from the MR-DINOSAUR description
(spec/mr-dinosaur.md §1.4-1.6) with the same libraries the published scripts use (numpy, scipy.ndimage,
scikit-image, hdbscan).

Usage: instances_ref.py FLOW.npy OUT.npz
Reads a float32 (H, W, 2) flow and writes:
  fg          bool (H, W): round(|flow|, 3 decimals) > 2.5, via the same text round trip as the reference
  components  int32 (H, W): skimage 8-connected labels
  split       int8 (n_components,): 1 if the component's interior horizontal-Sobel edge exceeds 20
  clusters    int32 (H, W): HDBSCAN label + 1 inside split components (0 = noise or not split)
"""
import sys

import hdbscan
import numpy as np
from scipy import ndimage
from skimage import measure, morphology


def main():
    flow = np.load(sys.argv[1]).astype(np.float32)
    mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
    # The reference writes the magnitude with "%.3f" and parses it back before thresholding.
    text = "\n".join(",".join(f"{v:.3f}" for v in row) for row in mag)
    parsed = np.array([[float(x) for x in line.split(",")] for line in text.split("\n")])
    fg = parsed > 2.5
    components, n = measure.label(fg.astype(np.uint8), return_num=True)
    gx_u = ndimage.sobel(flow[..., 0])
    gx_v = ndimage.sobel(flow[..., 1])
    edge = np.sqrt(gx_u ** 2 + gx_v ** 2)
    angles = np.arctan2(flow[..., 1], flow[..., 0])
    angles = (angles + 2 * np.pi) % (2 * np.pi)
    bins = np.floor(angles / (2 * np.pi / 16)).astype(int)
    split = np.zeros(n, np.int8)
    clusters = np.zeros(fg.shape, np.int32)
    for k in range(1, n + 1):
        region = components == k
        interior = morphology.binary_erosion(region, morphology.disk(10))
        if np.any((edge * interior)[region] > 20):
            split[k - 1] = 1
            rows, cols = np.nonzero(region)
            feats = np.column_stack([flow[region], rows * 60, cols * 60, bins[region] * 100]).astype(np.float64)
            labels = hdbscan.HDBSCAN(min_cluster_size=30, allow_single_cluster=False, approx_min_span_tree=False).fit_predict(feats)
            clusters[rows, cols] = labels + 1
    np.savez(sys.argv[2], fg=fg, components=components.astype(np.int32), split=split, clusters=clusters)


if __name__ == "__main__":
    main()
