#!/usr/bin/env python3
"""Convert Talk2DINO's ψ (`weights/vitb_mlp_infonce.pth`, `vitl_mlp_infonce.pth`) into the safetensors file
`mrdino name` / `mrdino segment` load (`--psi FILE`).

    convert_talk2dino.py IN.pth OUT.safetensors

Keys written: linear_layer.{weight,bias} (D×512, D) and hidden_layers.0.{weight,bias} (D×D, D); files from older
Talk2DINO versions name the second layer `linear_layer2`, which is renamed. Anything else is refused by name.
"""
import argparse
import sys

import torch
from safetensors.torch import save_file


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args()
    state = torch.load(args.input, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    renamed = {}
    for k, v in state.items():
        k = k.replace("linear_layer2.", "hidden_layers.0.")
        renamed[k] = v
    expected = ["linear_layer.weight", "linear_layer.bias", "hidden_layers.0.weight", "hidden_layers.0.bias"]
    unknown = sorted(set(renamed) - set(expected))
    missing = [k for k in expected if k not in renamed]
    if unknown or missing:
        sys.exit(f"{args.input}: not a Talk2DINO ψ (missing {missing}, unexpected {unknown})")
    d = renamed["linear_layer.weight"].shape[0]
    shapes = {"linear_layer.weight": (d, 512), "linear_layer.bias": (d,), "hidden_layers.0.weight": (d, d),
              "hidden_layers.0.bias": (d,)}
    for k, s in shapes.items():
        if tuple(renamed[k].shape) != s:
            sys.exit(f"{args.input}: `{k}` has shape {tuple(renamed[k].shape)}, expected {s}")
    save_file({k: renamed[k].float().contiguous() for k in expected}, args.output,
              metadata={"mrdino.family": "talk2dino-psi", "mrdino.dim": str(d)})
    print(f"{args.output}: psi 512 -> {d}")


if __name__ == "__main__":
    main()
