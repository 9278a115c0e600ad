"""Records what the reference's own `JoinWindows` and `MergeWindows` return on random window canvases.

Usage: merge_windows_fixture.py REFERENCE_WINDOWS_PY OUT.safetensors

REFERENCE_WINDOWS_PY is `ocl/utils/windows.py` of visinf/mr-dinosaur (it only needs torch); it is loaded by path
and run, and only the numbers are kept: per case the per-window masks, slot features, window offsets and the
merged one-hot canvas. The committed file `stages/model/tests/data/merge_windows_reference.safetensors` was made
with this script; `tests/refine_parity.rs` checks `join_windows` + `merge_windows` against it.

Four windows of 6x6 in a 6x18 image padded by 3 px left and right (offsets -3, 3, 9, 15, the KITTI layout in
small), 4 channels per window (background + 3 slots). With at most 16 channels, every edge set the reference
builds holds channels of one window that do not straddle a multiple of 8, so CPython iterates them in
ascending order and the reference's result is the one mrdino's ascending order gives.
"""

import importlib.util
import sys

import torch
from safetensors.torch import save_file


def load_reference(path):
    spec = importlib.util.spec_from_file_location("reference_windows", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    reference = load_reference(sys.argv[1])
    gen = torch.Generator().manual_seed(3)
    n_windows, channels, size, dim = 4, 4, 6, 3
    offsets = [-3, 3, 9, 15]
    keys = [f"image_{x}_0" for x in offsets]
    join = reference.JoinWindows(n_windows, (size, 18))
    merge = reference.MergeWindows(n_windows, (size, size), similarity=0.2)
    out = {"offsets": torch.tensor(offsets, dtype=torch.int64)}
    cases = 40
    for case in range(cases):
        # Smooth-ish masks so objects touch the window edges in runs; features in 3-D so that cosines above
        # and below 0.2 both occur often.
        logits = torch.randn(n_windows, channels, 3, 3, generator=gen) * 3.0
        masks = torch.nn.functional.interpolate(logits, size=(size, size), mode="bilinear").softmax(dim=1)
        features = torch.randn(n_windows, channels - 1, dim, generator=gen)
        joined = join(masks, keys)
        merged = merge(joined.clone(), features.clone(), keys)
        out[f"{case:03d}.masks"] = masks
        out[f"{case:03d}.features"] = features
        assert torch.all(merged.sum(dim=1) == 1), "every pixel in exactly one channel"
        out[f"{case:03d}.merged"] = merged.squeeze(0).argmax(dim=0)
    save_file(out, sys.argv[2])
    print(f"{cases} cases written to {sys.argv[2]}")


if __name__ == "__main__":
    main()
