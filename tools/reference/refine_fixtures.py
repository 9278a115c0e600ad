"""Reference numbers for `stages/model/tests/refine_parity.rs`.

Writes into OUT_DIR (the only argument):

* `hungarian.safetensors`: cost matrices (float64) of many shapes and kinds (uniform, integer-valued with many
  ties, all equal, float32-rounded, more rows than columns and the reverse) with the pairs
  `scipy.optimize.linear_sum_assignment` returns for them.
* `stage1.safetensors`: random alphas and pseudo masks with the stage-1 loss of spec §4 and its gradient with
  respect to the alphas, stated here in PyTorch as a plain per-element, per-pair loop (float32 costs through
  `.item()`, as the reference rounds them).
* `stage2.safetensors`: random slots, alphas, weights and masks with the stage-2 loss of spec §5 and its
  gradient with respect to the weights, for the reference behaviour and each fix flag; and a random-weight
  slot-deactivation MLP (`object_decoder.slot_decoder.*`) with its output on random slots.
* `pil.safetensors`: PIL's NEAREST source indices for the training-view resizes and PIL BILINEAR resizes of
  random uint8 RGB images.

Only numbers leave this script; the Rust side never runs Python code other than this generator.
"""

import itertools
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from scipy.optimize import linear_sum_assignment

torch.use_deterministic_algorithms(True)


def hungarian_cases(rng):
    cases = []
    shapes = [(r, c) for r in range(1, 8) for c in range(1, 8)] + [(15, 30), (30, 15), (24, 24), (16, 15), (3, 15)]
    for r, c in shapes:
        cases.append(rng.uniform(0.0, 1.0, (r, c)))
        cases.append(rng.integers(0, 3, (r, c)).astype(np.float64))
        cases.append(rng.integers(0, 2, (r, c)).astype(np.float64))
        cases.append(np.full((r, c), 0.25))
        cases.append(rng.normal(0.0, 1.0, (r, c)).astype(np.float32).astype(np.float64))
    # Near-ties that only float32 rounding makes exact.
    base = rng.uniform(0.5, 0.6, (6, 9)).astype(np.float32)
    base[:, 3] = base[:, 5]
    cases.append(base.astype(np.float64))
    out = {}
    for i, cost in enumerate(cases):
        rows, cols = linear_sum_assignment(cost)
        out[f"cost_{i:04d}"] = torch.from_numpy(np.ascontiguousarray(cost))
        out[f"pairs_{i:04d}"] = torch.from_numpy(np.stack([rows, cols], axis=1).astype(np.int64))
    return out


def masks_from_labels(labels, channels):
    """One binary map per id 1..channels (id order), float32 (B, C, H, W)."""
    return torch.stack([(labels == i + 1).float() for i in range(channels)], dim=1)


def solve(masks_e, alpha_e):
    """Float32 per-pair BCE costs through .item() and SciPy, as the reference does."""
    costs = []
    for i in range(masks_e.shape[0]):
        for j in range(alpha_e.shape[0]):
            costs.append(F.binary_cross_entropy(alpha_e[j], masks_e[i], reduction="none").mean().item())
    cost = torch.tensor(costs).reshape(masks_e.shape[0], alpha_e.shape[0])
    return linear_sum_assignment(cost.numpy())


def stage1_loss(alpha, masks):
    total = torch.zeros((), dtype=alpha.dtype)
    valid = 0
    pairs = []
    for b in range(alpha.shape[0]):
        keep = [i for i in range(masks.shape[1]) if masks[b, i].sum() > 0]
        if not keep:
            continue
        valid += 1
        rows, cols = solve(masks[b, keep], alpha[b].detach())
        for r, c in zip(rows, cols):
            m = masks[b, keep[r]].flatten()
            w = alpha[b, c].flatten().clamp(1e-6, 1 - 1e-6)
            ratio = m.sum() / m.numel()
            total = total + (-(2 - ratio) * m * torch.log(w) - (1 - m) * torch.log(1 - w)).mean()
            pairs.append((b, keep[r], c))
    return total / max(valid, 1), pairs


def stage1_case(gen, out, name, batch, slots, channels, height, width, empty_element):
    logits = torch.randn(batch, slots, height, width, generator=gen)
    alpha = logits.softmax(dim=1).detach().requires_grad_(True)
    labels = torch.randint(0, channels + 1, (batch, height, width), generator=gen)
    labels[labels == 2] = 0  # one channel stays empty in every element
    if empty_element is not None:
        labels[empty_element] = 0
    masks = masks_from_labels(labels, channels)
    loss, pairs = stage1_loss(alpha, masks)
    loss.backward()
    out[f"{name}.alpha"] = alpha.detach()
    out[f"{name}.masks"] = masks
    out[f"{name}.loss"] = loss.detach().reshape(1)
    out[f"{name}.grad_alpha"] = alpha.grad
    out[f"{name}.pairs"] = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 3)
    costs = [
        F.binary_cross_entropy(alpha[b, j].detach(), masks[b, i], reduction="none").mean().item()
        for b in range(batch)
        for i in range(channels)
        for j in range(slots)
    ]
    out[f"{name}.costs"] = torch.tensor(costs).reshape(batch, channels, slots)


def stage2_loss(slots, alpha, weights, masks, background_weight, keep_largest, per_image):
    batch, k = slots.shape[:2]
    weighted = weights[:, :, None, None] * alpha
    fg = weighted.sum(dim=1)
    matched, unmatched = [], []
    for b in range(batch):
        keep = [i for i in range(masks.shape[1]) if masks[b, i].sum() > 0]
        if len(keep) >= k:
            if keep_largest:
                sizes = [masks[b, i].sum().item() for i in keep]
                order = sorted(range(len(keep)), key=lambda t: (-sizes[t], keep[t]))[: k - 1]
                keep = sorted(keep[t] for t in order)
            else:
                keep = keep[: k - 1]
        if keep:
            _, cols = solve(masks[b, keep], alpha[b].detach())
            cols = [int(c) for c in cols]
        else:
            cols = []
        matched.append(cols)
        unmatched.append([s for s in range(k) if s not in cols])
    everything = torch.cat([slots[b, matched[b]] for b in range(batch)], dim=0)
    droppable = []
    for b in range(batch):
        reference = slots[b, matched[b]] if per_image else everything
        drop = []
        for s in unmatched[b]:
            if reference.shape[0] == 0:
                drop.append(s)
                continue
            sims = F.normalize(reference, dim=1) @ F.normalize(slots[b, s][None], dim=1).T
            if sims.max().item() < 0.99:
                drop.append(s)
        droppable.append(drop)
    total = torch.zeros((), dtype=alpha.dtype)
    for b in range(batch):
        m_fg = (masks[b].sum(dim=0) > 0).float().flatten()
        n = m_fg.numel()
        term1 = -1.0 / n * torch.sum(m_fg * torch.log(fg[b].flatten() + 1e-6))
        w_drop = weighted[b, droppable[b]].sum(dim=0).flatten() if droppable[b] else torch.zeros(n)
        n_bg = torch.sum(m_fg == 0).float()
        if n_bg > 0:
            term2 = background_weight / n_bg * torch.sum(w_drop * (m_fg == 0).float())
        else:
            term2 = torch.zeros(())
        total = total + term1 + term2
    return total / batch, droppable


def stage2_cases(gen, out):
    batch, k, d, height, width, channels = 4, 5, 6, 8, 9, 6
    slots = torch.randn(batch, k, d, generator=gen)
    # Near-copies of other slots, in the same image and in the next one, so the 0.99 threshold bites.
    for b in (0, 2, 3):
        slots[b, k - 2] = slots[b, 0] * 1.01 + 1e-4
    for b in range(batch):
        slots[b, k - 1] = slots[(b + 1) % batch, 1] * 0.98
    logits = torch.randn(batch, k, height, width, generator=gen)
    # Element 1: slots 0-3 follow columns 0-3, slot 4 the columns 4-8, so which masks are kept decides
    # which slot stays unmatched.
    for j in range(4):
        logits[1, j, :, j] += 4.0
    logits[1, 4, :, 4:] += 4.0
    alpha = logits.softmax(dim=1)
    labels = torch.zeros(batch, height, width, dtype=torch.int64)
    # Element 0: three masks. Element 1: six masks growing with id (first 4 != largest 4).
    labels[0, 1:4, 1:4] = 1
    labels[0, 5:7, 0:8] = 2
    labels[0, 0, 6:9] = 3
    for i in range(6):
        labels[1, :, i] = i + 1
    labels[1, :4, 6:8] = 6
    labels[1, 4:, 6:8] = 5
    # Element 2: all foreground. Element 3: no mask.
    labels[2, :, :4] = 1
    labels[2, :, 4:] = 2
    masks = masks_from_labels(labels, channels)
    out["stage2.slots"] = slots
    out["stage2.alpha"] = alpha
    out["stage2.masks"] = masks
    raw = torch.randn(batch, k, generator=gen)
    out["stage2.weights"] = raw.sigmoid()
    for keep_largest, per_image in itertools.product([False, True], repeat=2):
        for background_weight in (0.4, 0.2):
            weights = raw.sigmoid().detach().requires_grad_(True)
            loss, droppable = stage2_loss(slots, alpha, weights, masks, background_weight, keep_largest, per_image)
            loss.backward()
            name = f"stage2.{int(keep_largest)}{int(per_image)}.{background_weight}"
            out[f"{name}.loss"] = loss.detach().reshape(1)
            out[f"{name}.grad_weights"] = weights.grad
            flat = [[b, s] for b in range(batch) for s in droppable[b]]
            out[f"{name}.droppable"] = torch.tensor(flat, dtype=torch.int64).reshape(-1, 2)


def mlp_case(gen):
    """The slot-deactivation MLP (Linear/ReLU x3, Linear to 1, sigmoid) with every weight and bias random."""
    d, hidden = 6, 16
    mlp = torch.nn.Sequential(
        torch.nn.Linear(d, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1),
    )
    with torch.no_grad():
        for param in mlp.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    slots = torch.randn(2, 5, d, generator=gen)
    out = {f"object_decoder.slot_decoder.{k}": v.detach().clone() for k, v in mlp.state_dict().items()}
    out["mlp.slots"] = slots
    out["mlp.weights"] = torch.sigmoid(mlp(slots)).squeeze(-1).detach()
    return out


def pil_cases(rng):
    out = {}
    sizes = [(1240, 1260), (376, 378), (1242, 1260), (375, 378), (968, 980), (480, 490), (1936, 968), (1216, 608),
             (23, 29), (29, 11)]
    for n_in, n_out in sizes:
        # Row of ids 0..n_in-1 resized along its length.
        row = np.arange(n_in, dtype=np.int32).reshape(1, n_in)
        resized = np.array(Image.fromarray(row, mode="I").resize((n_out, 1), Image.NEAREST))
        out[f"nearest_{n_in}_{n_out}"] = torch.from_numpy(resized.reshape(-1).astype(np.int64))
        col = np.arange(n_in, dtype=np.int32).reshape(n_in, 1)
        resized = np.array(Image.fromarray(col, mode="I").resize((1, n_out), Image.NEAREST))
        out[f"nearest_rows_{n_in}_{n_out}"] = torch.from_numpy(resized.reshape(-1).astype(np.int64))
    for (h, w), (oh, ow) in [((376, 1240), (378, 1260)), ((480, 968), (490, 980)), ((17, 23), (9, 40)),
                             ((31, 12), (40, 5)), ((40, 40), (13, 17)), ((20, 20), (25, 30)), ((20, 30), (20, 45)),
                             ((20, 30), (10, 30))]:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        resized = np.array(Image.fromarray(image, mode="RGB").resize((ow, oh), Image.BILINEAR))
        out[f"bilinear_{h}x{w}_to_{oh}x{ow}.in"] = torch.from_numpy(image.copy())
        out[f"bilinear_{h}x{w}_to_{oh}x{ow}.out"] = torch.from_numpy(resized.copy())
    return out


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20240611)
    save_file(hungarian_cases(rng), os.path.join(out_dir, "hungarian.safetensors"))
    gen = torch.Generator().manual_seed(7)
    stage1 = {}
    stage1_case(gen, stage1, "fewer_masks", 3, 5, 4, 12, 10, empty_element=1)
    stage1_case(gen, stage1, "more_masks", 2, 3, 6, 9, 11, empty_element=None)
    save_file(stage1, os.path.join(out_dir, "stage1.safetensors"))
    stage2 = {}
    stage2_cases(gen, stage2)
    stage2.update(mlp_case(gen))
    save_file(stage2, os.path.join(out_dir, "stage2.safetensors"))
    save_file(pil_cases(rng), os.path.join(out_dir, "pil.safetensors"))
    print(f"refine fixtures written to {out_dir}")


if __name__ == "__main__":
    main()
