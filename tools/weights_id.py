"""The identity of a set of weights, as mrdino defines it (outputs/src/weights_id.rs): a function of the tensors,
never of the file that holds them.

SHA-256 over the tensors sorted by name; for each: the name's UTF-8 bytes, a 0 byte, a class byte (b"f" for
floating point, b"i" for integer and boolean), the rank as u64 little-endian, each dimension as u64
little-endian, then the elements in row-major order (floating point as float32 little-endian, integers and
booleans as int64 little-endian). Written `tensors-sha256:<hex>`.

Usage as a tool: weights_id.py FILE.safetensors [--prefix backbone.] [--exclude mask_token ...]
prints the identity of the tensors of FILE whose names start with the prefix (prefix removed), minus the
excluded names. A ViT's identity leaves out DINOv2's unused `mask_token` (`--vit` does that).
"""

import argparse
import hashlib
import struct
import sys

import numpy as np
import torch

SCHEME = "tensors-sha256:"
# Tensors a ViT never reads; they are not part of its identity.
VIT_UNUSED = ("mask_token",)


def weights_id(tensors: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        floating = t.is_floating_point()
        digest.update(name.encode("utf-8"))
        digest.update(b"\x00" + (b"f" if floating else b"i"))
        digest.update(struct.pack("<Q", t.dim()))
        for d in t.shape:
            digest.update(struct.pack("<Q", d))
        if floating:
            data = t.to(torch.float32).numpy().astype("<f4")
        else:
            data = t.to(torch.int64).numpy().astype("<i8")
        digest.update(np.ascontiguousarray(data).tobytes())
    return SCHEME + digest.hexdigest()


def vit_weights_id(tensors: dict) -> str:
    """The identity of ViT weights under canonical names: what mrdino's ViT loader computes."""
    return weights_id({k: v for k, v in tensors.items() if k not in VIT_UNUSED})


def main():
    from safetensors.torch import load_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("file")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--exclude", nargs="*", default=[])
    ap.add_argument("--vit", action="store_true", help="leave out the tensors a ViT does not read")
    args = ap.parse_args()
    state = load_file(args.file)
    exclude = set(args.exclude) | (set(VIT_UNUSED) if args.vit else set())
    chosen = {k[len(args.prefix):]: v for k, v in state.items() if k.startswith(args.prefix)}
    chosen = {k: v for k, v in chosen.items() if k not in exclude}
    if not chosen:
        print(f"{args.file}: no tensors under prefix `{args.prefix}`", file=sys.stderr)
        sys.exit(1)
    print(weights_id(chosen))


if __name__ == "__main__":
    main()
