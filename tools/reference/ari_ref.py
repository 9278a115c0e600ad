"""Reference ARI values for stages/tests/ari_sklearn.rs, from scikit-learn's adjusted_rand_score.

Input on stdin: the number of cases, then two lines per case: predicted labels, ground-truth labels
(space-separated integers, same length, 0 = GT background). Output: one line per case, "fg all" where
fg = ARI over the pixels whose GT label is non-zero and all = ARI over every pixel, printed with repr()
so they round-trip exactly.
"""
import sys

import numpy as np
from sklearn.metrics import adjusted_rand_score


def main() -> None:
    lines = sys.stdin.read().splitlines()
    cases = int(lines[0])
    out = []
    for k in range(cases):
        pred = np.array(lines[1 + 2 * k].split(), dtype=np.int64)
        gt = np.array(lines[2 + 2 * k].split(), dtype=np.int64)
        if pred.shape != gt.shape:
            sys.exit(f"case {k}: {pred.size} predicted vs {gt.size} ground-truth labels")
        fg = gt != 0
        out.append(f"{adjusted_rand_score(gt[fg], pred[fg])!r} {adjusted_rand_score(gt, pred)!r}")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
