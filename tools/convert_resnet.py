#!/usr/bin/env python3
"""Convert a ResNet-50 checkpoint (SwaV's official `swav_800ep_pretrain.pth.tar`, or any torchvision-layout
ResNet-50 state dict) into the safetensors file `mrdino analyze --backbone swav-rn50` loads.

    convert_resnet.py IN.pth[.tar] OUT.safetensors

Accepted inputs: a plain state dict, or one nested under `state_dict` / `model`; a `module.` prefix
(DistributedDataParallel) is stripped. SwaV's projection head (`projection_head.*`) and prototypes
(`prototypes.*`) and torchvision's classifier (`fc.*`) are not part of the backbone and are dropped; any other
key that is not a torchvision ResNet-50 tensor, a missing tensor or a wrong shape is refused with its name.
"""
import argparse
import sys

import torch
from safetensors.torch import save_file

DROPPED_PREFIXES = ("projection_head.", "prototypes.", "fc.")


def expected_shapes():
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    return {
        k: tuple(v.shape)
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked") and not k.startswith(DROPPED_PREFIXES)
    }


def load_state_dict(path):
    obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        sys.exit(f"{path}: not a state dict (found {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def convert(src, dst):
    state = load_state_dict(src)
    shapes = expected_shapes()
    tensors, errors = {}, []
    for k, v in state.items():
        if k.startswith(DROPPED_PREFIXES) or k.endswith("num_batches_tracked"):
            continue
        if k not in shapes:
            errors.append(f"unexpected key `{k}` with shape {tuple(v.shape)}")
        elif tuple(v.shape) != shapes[k]:
            errors.append(f"key `{k}`: shape {tuple(v.shape)}, expected {shapes[k]}")
        else:
            tensors[k] = v.detach().to(torch.float32).contiguous().clone()
    errors += [f"missing key `{k}` (expected shape {s})" for k, s in shapes.items() if k not in state]
    if errors:
        sys.exit(f"{src}: not a ResNet-50 checkpoint:\n  " + "\n  ".join(errors))
    save_file(tensors, dst, metadata={"mrdino.family": "resnet50", "mrdino.source": str(src)})
    print(f"{dst}: {len(tensors)} tensors")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args()
    convert(args.input, args.output)


if __name__ == "__main__":
    main()
