#!/usr/bin/env python3
"""Convert Talk2DINO's ψ (`weights/vitb_mlp_infonce.pth`, `vitl_mlp_infonce.pth`, `dinov3_vitb_mlp_infonce.pth`,
`dinov3_vitl_mlp_infonce.pth`) into the safetensors file `mrdino name` / `mrdino segment` load (`--psi-weights`).

    convert_talk2dino.py IN.pth OUT.safetensors [--variant PROJ_NAME]

Every released file is a `torch.save`d state dict of Talk2DINO's `ProjectionLayer` (act tanh, hidden_layer True):
linear_layer.{weight,bias} (D×512, D) and hidden_layers.0.{weight,bias} (D×D, D), D = 768 (ViT-B) or 1024
(ViT-L); the DINOv3 files have the same keys and shapes, only their backbone differs. Files from older Talk2DINO
versions name the second layer `linear_layer2`, which is renamed. Anything else is refused by name.

The variant (Talk2DINO's `proj_name`: which backbone ψ was trained on, hence its patch grid and input size) is
written to the metadata key `talk2dino.proj_name`. It is taken from --variant, else from the input's file name
(`dinov3_vitb_mlp_infonce.pth` → dinov3_vitb_mlp_infonce), else from the directory name inside the .pth archive
(`torch.save` names it after the file it saved to: `DINOv3_vitb_mlp_infonce_448/`, `vitb_mlp_infonce_fix/`).
When none names a released variant, no variant is recorded and mrdino treats the file as the DINOv2 default.
"""
import argparse
import re
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

# proj_name → ψ width (configs/*_mlp_infonce.yaml `dino_embed_dim`).
VARIANTS = {"vitb_mlp_infonce": 768, "vitl_mlp_infonce": 1024,
            "dinov3_vitb_mlp_infonce": 768, "dinov3_vitl_mlp_infonce": 1024}
KEYS = ["linear_layer.weight", "linear_layer.bias", "hidden_layers.0.weight", "hidden_layers.0.bias"]
VARIANT_KEY = "talk2dino.proj_name"


def variant_in(name: str):
    """The released variant a file or archive name spells (case-insensitive), or None."""
    match = re.search(r"(dinov3_)?vit([bl])_mlp_infonce", name.lower())
    return f"{match.group(1) or ''}vit{match.group(2)}_mlp_infonce" if match else None


def archive_root(path: str):
    """The top directory of a zip-format .pth archive, or None (legacy pickle files have none)."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as z:
        roots = {n.split("/", 1)[0] for n in z.namelist() if "/" in n}
    return roots.pop() if len(roots) == 1 else None


def infer_variant(path: str):
    return variant_in(Path(path).name) or variant_in(archive_root(path) or "")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help="Talk2DINO's proj_name of the file")
    args = parser.parse_args(argv)
    state = torch.load(args.input, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    renamed = {k.replace("linear_layer2.", "hidden_layers.0."): v for k, v in state.items()}
    unknown = sorted(set(renamed) - set(KEYS))
    missing = [k for k in KEYS if k not in renamed]
    if unknown or missing:
        sys.exit(f"{args.input}: not a Talk2DINO ψ (missing {missing}, unexpected {unknown})")
    d = renamed["linear_layer.weight"].shape[0]
    shapes = {"linear_layer.weight": (d, 512), "linear_layer.bias": (d,), "hidden_layers.0.weight": (d, d),
              "hidden_layers.0.bias": (d,)}
    for k, s in shapes.items():
        if tuple(renamed[k].shape) != s:
            sys.exit(f"{args.input}: `{k}` has shape {tuple(renamed[k].shape)}, expected {s}")
    variant = args.variant or infer_variant(args.input)
    metadata = {"mrdino.family": "talk2dino-psi", "mrdino.dim": str(d)}
    if variant is not None:
        if VARIANTS[variant] != d:
            sys.exit(f"{args.input}: variant {variant} maps to width {VARIANTS[variant]}, the file's ψ to {d}")
        metadata[VARIANT_KEY] = variant
    save_file({k: renamed[k].float().contiguous() for k in KEYS}, args.output, metadata=metadata)
    print(f"{args.output}: psi 512 -> {d}, variant {variant or 'not recorded'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
