"""Records what the reference's own stage-1 and stage-2 losses return on random tensors.

Usage: losses_reference_fixture.py REFERENCE_LOSSES_PY OUT.safetensors

REFERENCE_LOSSES_PY is `ocl/losses.py` of visinf/mr-dinosaur (it needs torch, numpy and scipy); it is loaded
by path and run, and only the numbers are kept. The committed file
`stages/model/tests/data/losses_reference.safetensors` was made with this script; `tests/refine_parity.rs`
checks `stage1_loss` and `stage2_loss` (reference behaviour, no fix flag) against it.

The batches avoid the two inputs the reference cannot handle (an all-foreground window, whose background term
is 0/0, and a batch without any mask, whose similarity `amax` is over an empty set).
"""

import importlib.util
import sys

import torch
from safetensors.torch import save_file


def load_reference(path):
    spec = importlib.util.spec_from_file_location("reference_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def masks_from_labels(labels, channels):
    return torch.stack([(labels == i + 1).float() for i in range(channels)], dim=1)


def main():
    reference = load_reference(sys.argv[1])
    gen = torch.Generator().manual_seed(11)
    out = {}

    # Stage 1: 4 windows, 6 slots, up to 8 masks (one window with more masks than slots, one without masks).
    batch, slots, channels, height, width = 4, 6, 8, 14, 12
    alpha = torch.randn(batch, slots, height, width, generator=gen).softmax(dim=1).requires_grad_(True)
    labels = torch.randint(0, 6, (batch, height, width), generator=gen)
    labels[1] = torch.randint(0, channels + 1, (height, width), generator=gen)
    labels[3] = 0
    masks = masks_from_labels(labels, channels)
    loss = reference.wbce(alpha, masks)
    loss.backward()
    out["stage1.alpha"] = alpha.detach()
    out["stage1.masks"] = masks
    out["stage1.loss"] = loss.detach().reshape(1)
    out["stage1.grad_alpha"] = alpha.grad

    # Stage 2: 3 windows, 5 slots; window 1 has 6 masks (>= K), slot copies make the 0.99 threshold bite.
    batch, slots, dim, channels, height, width = 3, 5, 4, 6, 8, 9
    features = torch.randn(batch, slots, dim, generator=gen)
    features[0, 4] = features[0, 1] * 1.02
    features[2, 3] = features[1, 0] * 0.97
    alpha = torch.randn(batch, slots, height, width, generator=gen).softmax(dim=1)
    labels = torch.zeros(batch, height, width, dtype=torch.int64)
    labels[0, 1:4, 1:5] = 1
    labels[0, 5:8, 2:9] = 2
    for i in range(6):
        labels[1, 1:7, i] = i + 1
    labels[2, 0:3, 0:3] = 1
    labels[2, 4:8, 5:9] = 3
    masks = masks_from_labels(labels, channels)
    weights = torch.randn(batch, slots, generator=gen).sigmoid().requires_grad_(True)
    binary = (labels > 0).float()[:, None]
    for background_weight in (0.4, 0.2):
        weights.grad = None
        weighted = weights[:, :, None, None] * alpha
        foreground = weighted.sum(dim=1, keepdim=True)
        criterion = reference.NLLloss_batch(alpha=background_weight, similarity_threshold=0.99)
        loss = criterion(binary, foreground, features, alpha, masks, weighted)
        loss.backward()
        out[f"stage2.{background_weight}.loss"] = loss.detach().reshape(1)
        out[f"stage2.{background_weight}.grad_weights"] = weights.grad.clone()
    out["stage2.features"] = features
    out["stage2.alpha"] = alpha
    out["stage2.masks"] = masks
    out["stage2.weights"] = weights.detach()
    save_file(out, sys.argv[2])
    print(f"reference losses written to {sys.argv[2]}")


if __name__ == "__main__":
    main()
