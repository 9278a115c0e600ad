"""Reference HDBSCAN labels from the Python `hdbscan` library, for parity tests and benchmarks of
`mrdino_stages::hdbscan`.

Reads an (n, d) float64 `.npy`, clusters it with `hdbscan.HDBSCAN` (Euclidean, excess of mass, no single
cluster, like the instance stage) and writes the labels as int32 `.npy`. Prints one JSON line on stdout with the
fastest fit time in seconds over `--repeats` runs (library import and file I/O excluded).
"""

import argparse
import json
import time

import hdbscan
import numpy as np


def parse_bool(text):
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("input", help="points, (n, d) .npy")
    parser.add_argument("output", help="labels, (n,) int32 .npy")
    parser.add_argument("--min-cluster-size", type=int, default=30)
    parser.add_argument("--min-samples", type=int, default=None, help="default: min cluster size")
    parser.add_argument("--approx-min-span-tree", type=parse_bool, default=True,
                        help="library default true; false computes the exact MST")
    parser.add_argument("--core-dist-n-jobs", type=int, default=4, help="library default 4")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    points = np.load(args.input).astype(np.float64)
    best_seconds = float("inf")
    labels = None
    for _ in range(max(args.repeats, 1)):
        model = hdbscan.HDBSCAN(
            min_cluster_size=args.min_cluster_size,
            min_samples=args.min_samples,
            approx_min_span_tree=args.approx_min_span_tree,
            core_dist_n_jobs=args.core_dist_n_jobs,
            allow_single_cluster=False,
        )
        start = time.perf_counter()
        model.fit(points)
        best_seconds = min(best_seconds, time.perf_counter() - start)
        labels = model.labels_
    np.save(args.output, labels.astype(np.int32))
    print(json.dumps({"seconds": best_seconds, "points": int(points.shape[0]),
                      "clusters": int(labels.max()) + 1, "noise": int((labels < 0).sum())}))


if __name__ == "__main__":
    main()
