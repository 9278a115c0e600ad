#!/usr/bin/env python3
"""Convert RAFT weights to the safetensors layout read by `mrdino_stages::flow::raft`.

Accepted inputs (a pickled state dict, optionally wrapped in {"state_dict": ...} or {"model": ...}):
- torchvision `raft_large` / `raft_small` `.pth`: keys already in the target layout;
- princeton-vl RAFT `.pth` (`raft-things.pth`, `raft-kitti.pth`, ...): `module.` stripped, keys renamed to
  torchvision names, the duplicated `norm3` (large) / `norm4` (small) downsample norms dropped;
- the SMURF PyTorch port `.pt` (`smurf_kitti.pt`): torchvision raft_large names without context-encoder
  BatchNorm. Its correlation features are y-major inside each 9×9 level, so `convcorr1`'s input channels are
  transposed here and the runtime keeps one x-major lookup. Google's TF checkpoint goes through
  `convert_smurf_tf.py` instead, which writes the same tensors and metadata (tested).

`num_batches_tracked` counters are dropped. The output carries string metadata: `family`, `arch`,
`context_norm`, `corr_order` ("xmajor"), `input_range`, `iterations`, `source` and `source_sha256`.

Input range: every family's network computes on 2·(x/255) − 1. torchvision and SMURF expect the caller to
apply it; princeton's `RAFT.forward` takes 0..255 and applies it internally, but that line is not part of the
weights, so converted princeton files need `[-1,1]` from the caller as well.

Usage: convert_raft.py INPUT OUTPUT.safetensors [--family torchvision|princeton|smurf] [--iterations N]
"""

import argparse
import hashlib
import pickle
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

INPUT_RANGE = "[-1,1]"
DEFAULT_ITERATIONS = {"torchvision": 12, "smurf": 12, "princeton": 20}
TARGET_PREFIXES = ("feature_encoder.", "context_encoder.", "update_block.", "mask_predictor.")
CONVCORR1 = "update_block.motion_encoder.convcorr1.0.weight"

# Princeton RAFT → torchvision, applied in order to a key with `module.` stripped. Each entry is
# (pattern, replacement); patterns are anchored at the start of the key.
PRINCETON_RULES = [
    (r"fnet\.", "feature_encoder."),
    (r"cnet\.", "context_encoder."),
    (r"(feature|context)_encoder\.conv1\.", r"\1_encoder.convnormrelu.0."),
    (r"(feature|context)_encoder\.norm1\.", r"\1_encoder.convnormrelu.1."),
    (r"(feature|context)_encoder\.conv2\.", r"\1_encoder.conv."),
    (r"((?:feature|context)_encoder\.layer\d\.\d\.)conv(\d)\.", r"\1convnormrelu\2.0."),
    (r"((?:feature|context)_encoder\.layer\d\.\d\.)norm(\d)\.", r"\1convnormrelu\2.1."),
    (r"update_block\.encoder\.convc(\d)\.", r"update_block.motion_encoder.convcorr\1.0."),
    (r"update_block\.encoder\.convf(\d)\.", r"update_block.motion_encoder.convflow\1.0."),
    (r"update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"update_block\.gru\.conv([zrq])(\d)\.", r"update_block.recurrent_block.convgru\2.conv\1."),
    (r"update_block\.gru\.conv([zrq])\.", r"update_block.recurrent_block.convgru1.conv\1."),
    (r"update_block\.mask\.0\.", "mask_predictor.convrelu.0."),
    (r"update_block\.mask\.2\.", "mask_predictor.conv."),
]

def princeton_key(key: str, keys: set):
    """torchvision name of a princeton key, or None for the duplicated downsample norm."""
    m = re.match(r"[fc]net\.layer\d\.\d\.norm(\d)\.", key)
    if m:
        block = key[: m.end() - len(f"norm{m.group(1)}.")]
        bottleneck = f"{block}conv3.weight" in keys
        # norm3 of a residual block and norm4 of a bottleneck block alias downsample.1.
        if (m.group(1) == "3" and not bottleneck) or m.group(1) == "4":
            return None
    for pattern, replacement in PRINCETON_RULES:
        key = re.sub("^" + pattern, replacement, key)
    return key


def transpose_corr_blocks(weight: torch.Tensor) -> torch.Tensor:
    """Swap the two 9-axes (or (2r+1)-axes) inside each level of convcorr1's input channels: y-major → x-major."""
    out_c, in_c, kh, kw = weight.shape
    levels = 4
    side = round((in_c // levels) ** 0.5)
    if levels * side * side != in_c:
        raise ValueError(f"{CONVCORR1}: {in_c} input channels are not {levels} levels of a square window")
    w = weight.reshape(out_c, levels, side, side, kh, kw).transpose(2, 3)
    return w.reshape(out_c, in_c, kh, kw).contiguous()


def load_state_dict(path: Path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def detect_family(state: dict) -> str:
    if any(k.startswith(("fnet.", "cnet.")) for k in state):
        return "princeton"
    large = "mask_predictor.conv.weight" in state
    if large and "context_encoder.convnormrelu.1.running_mean" not in state:
        return "smurf"
    return "torchvision"


def context_norm_of(state: dict, family: str) -> str:
    if "context_encoder.convnormrelu.1.running_mean" in state:
        return "batch"
    return "instance" if family == "smurf" else "none"


def finish(state: dict, family: str, iterations: int, source: Path, source_sha256: str, output: Path) -> dict:
    """Validate names, drop counters, make contiguous, transpose SMURF's convcorr1, write with metadata."""
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if not key.startswith(TARGET_PREFIXES):
            raise ValueError(f"{source}: key `{key}` has no torchvision RAFT name")
        if not value.is_floating_point():
            raise ValueError(f"{source}: key `{key}` has dtype {value.dtype}, expected floating point")
        out[key] = value.detach().to(torch.float32).contiguous().clone()
    if CONVCORR1 not in out:
        raise ValueError(f"{source}: missing `{CONVCORR1}`")
    if family == "smurf":
        out[CONVCORR1] = transpose_corr_blocks(out[CONVCORR1])
    arch = "large" if "mask_predictor.conv.weight" in out else "small"
    metadata = {
        "family": family,
        "arch": arch,
        "context_norm": context_norm_of(out, family),
        "corr_order": "xmajor",
        "input_range": INPUT_RANGE,
        "iterations": str(iterations),
        "source": source.name,
        "source_sha256": source_sha256,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(output), metadata=metadata)
    return metadata


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(source: Path, output: Path, family=None, iterations=None) -> dict:
    state = load_state_dict(source)
    family = family or detect_family(state)
    if family == "princeton":
        keys = set(state)
        renamed = {}
        for key, value in state.items():
            new = princeton_key(key, keys)
            if new is None:
                continue
            if new in renamed:
                raise ValueError(f"{source}: `{key}` maps onto `{new}` twice")
            renamed[new] = value
        state = renamed
    iterations = iterations or DEFAULT_ITERATIONS[family]
    return finish(state, family, iterations, source, sha256_of(source), output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="torchvision / princeton .pth or SMURF port .pt")
    parser.add_argument("output", type=Path, help="output .safetensors")
    parser.add_argument("--family", choices=sorted(DEFAULT_ITERATIONS), help="override the detected family")
    parser.add_argument("--iterations", type=int, help="default iterations recorded in the metadata")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.input, args.output, args.family, args.iterations)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        print(f"convert_raft: {e}", file=sys.stderr)
        return 1
    print(f"{args.output}: " + ", ".join(f"{k}={v}" for k, v in meta.items() if k != "source_sha256"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
