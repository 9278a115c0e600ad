"""Convert a reference (visinf/mr-dinosaur, `ocl`) PyTorch-Lightning checkpoint to an mrdino model file.

Usage: convert_ocl_checkpoint.py IN.ckpt OUT.safetensors [--n-slots K] [--stage baseline|stage1|stage2]

Reads `checkpoint["state_dict"]` (mapped to CPU; no folder name inside the zip is assumed) of a DINOSAUR
baseline, stage-1 (slot attention refined) or stage-2 (slot deactivation) checkpoint and writes one
safetensors file that mrdino loads as a complete model:
  models.conditioning.*, models.perceptual_grouping.*, models.object_decoder.*  ->  the same keys without
      `models.` (the stage-2 `object_decoder.slot_decoder.*` included);
  models.feature_extractor.model.*  ->  backbone.* (DINOv2 hub names: backbone.blocks.0.attn.qkv.weight, ...).
The slot-model configuration is inferred from shapes and stored as JSON metadata (`mrdino.model_config`):
D from conditioning.slots_mu, F from the input LayerNorm, h from object_decoder.decoder.0, P from
object_decoder.pos_embed, K from P with the reference table (729 -> 15 KITTI, 1225 -> 30 TRI-PD, 361 -> 24
MOVi-E) unless --n-slots is given. The stage is stage2 when slot_decoder tensors are present; baseline and
stage-1 checkpoints have identical keys, so --stage names them (default: baseline). `mrdino.backbone_sha256`
is the weights identity of the converted backbone (tools/weights_id.py: a digest of the tensors the ViT reads,
equal to that of the same weights converted by convert_vit.py), so the file runs with its embedded backbone or
with a separately converted file of the same weights.

Every key that is not in the reference's key table is reported by name, as is every missing key; either makes
the conversion fail (exit code 1) without writing OUT.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from weights_id import vit_weights_id

PREFIX = "models."
BACKBONE_IN = "models.feature_extractor.model."
BACKBONE_OUT = "backbone."

SLOT_KEYS = [
    "conditioning.slots_mu",
    "conditioning.slots_logsigma",
    "perceptual_grouping.slot_attention.to_q.weight",
    "perceptual_grouping.slot_attention.to_k.weight",
    "perceptual_grouping.slot_attention.to_v.weight",
    "perceptual_grouping.slot_attention.gru.weight_ih",
    "perceptual_grouping.slot_attention.gru.weight_hh",
    "perceptual_grouping.slot_attention.gru.bias_ih",
    "perceptual_grouping.slot_attention.gru.bias_hh",
    "perceptual_grouping.slot_attention.norm_input.weight",
    "perceptual_grouping.slot_attention.norm_input.bias",
    "perceptual_grouping.slot_attention.norm_slots.weight",
    "perceptual_grouping.slot_attention.norm_slots.bias",
    "perceptual_grouping.slot_attention.ff_mlp.module.0.weight",
    "perceptual_grouping.slot_attention.ff_mlp.module.0.bias",
    "perceptual_grouping.slot_attention.ff_mlp.module.1.weight",
    "perceptual_grouping.slot_attention.ff_mlp.module.1.bias",
    "perceptual_grouping.slot_attention.ff_mlp.module.3.weight",
    "perceptual_grouping.slot_attention.ff_mlp.module.3.bias",
    "perceptual_grouping.positional_embedding.layers.1.0.weight",
    "perceptual_grouping.positional_embedding.layers.1.0.bias",
    "perceptual_grouping.positional_embedding.layers.1.1.weight",
    "perceptual_grouping.positional_embedding.layers.1.1.bias",
    "perceptual_grouping.positional_embedding.layers.1.3.weight",
    "perceptual_grouping.positional_embedding.layers.1.3.bias",
    "object_decoder.pos_embed",
] + [f"object_decoder.decoder.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")]
SLOT_DECODER_KEYS = [f"object_decoder.slot_decoder.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")]

BACKBONE_GLOBAL = ["cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
                   "norm.weight", "norm.bias"]
BACKBONE_OPTIONAL = ["register_tokens"]
BLOCK_PARTS = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
               "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
               "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma"]
BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
REFERENCE_SLOTS = {729: 15, 1225: 30, 361: 24}


def load_state_dict(path):
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # Lightning checkpoints may pickle callback state that the safe loader refuses.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise SystemExit(f"{path}: not a Lightning checkpoint (no `state_dict` entry)")
    return ckpt["state_dict"], ckpt.get("global_step")


def convert(state, n_slots=None, stage=None):
    """Returns (tensors, metadata, errors)."""
    errors = []
    out = {}
    backbone = {}
    for key, value in state.items():
        if key.startswith(BACKBONE_IN):
            name = key[len(BACKBONE_IN):]
            m = BLOCK_RE.match(name)
            known = name in BACKBONE_GLOBAL or name in BACKBONE_OPTIONAL or (m and m.group(2) in BLOCK_PARTS)
            if not known:
                errors.append(f"unknown key `{key}`")
                continue
            backbone[name] = value
        elif key.startswith(PREFIX) and key[len(PREFIX):] in SLOT_KEYS + SLOT_DECODER_KEYS:
            out[key[len(PREFIX):]] = value
        else:
            errors.append(f"unknown key `{key}`")
    for k in SLOT_KEYS:
        if k not in out:
            errors.append(f"missing key `{PREFIX}{k}`")
    present = [k for k in SLOT_DECODER_KEYS if k in out]
    if present and len(present) != len(SLOT_DECODER_KEYS):
        errors += [f"missing key `{PREFIX}{k}`" for k in SLOT_DECODER_KEYS if k not in out]
    if backbone:
        blocks = sorted({int(BLOCK_RE.match(n).group(1)) for n in backbone if BLOCK_RE.match(n)})
        expected = BACKBONE_GLOBAL + [f"blocks.{i}.{p}" for i in range(len(blocks)) for p in BLOCK_PARTS]
        errors += [f"missing key `{BACKBONE_IN}{k}`" for k in expected if k not in backbone]
        if blocks and blocks != list(range(len(blocks))):
            errors.append(f"backbone block indices are not 0..{len(blocks) - 1}: {blocks}")
    if errors:
        return None, None, errors

    out = {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}
    d = out["conditioning.slots_mu"].shape[-1]
    f = out["perceptual_grouping.positional_embedding.layers.1.0.weight"].shape[0]
    h = out["object_decoder.decoder.0.weight"].shape[0]
    p = out["object_decoder.pos_embed"].shape[1]
    ff = out["perceptual_grouping.slot_attention.ff_mlp.module.1.weight"].shape[0]
    k = n_slots if n_slots is not None else REFERENCE_SLOTS.get(p)
    if k is None:
        return None, None, [f"{p} patches match no reference dataset; give --n-slots"]
    config = dict(
        n_slots=k, slot_dim=d, feature_dim=f, decoder_hidden=h, n_patches=p, iterations=3, attention_eps=1e-8,
        layer_norm_eps=1e-5, ff_mlp_ratio=ff // d, input_projection="two-layer", mask_temperature=1.0,
        channel_normalised_loss=False, target_projection=False,
    )
    if stage is None:
        stage = "stage2" if present else "baseline"
    meta = {
        "mrdino.format": "mrdino-model-v1",
        "mrdino.model_config": json.dumps(config),
        "mrdino.stage": stage,
    }
    if backbone:
        converted = {name: t.detach().to(torch.float32).contiguous() for name, t in backbone.items()}
        for name, t in converted.items():
            out[BACKBONE_OUT + name] = t
        meta["mrdino.backbone"] = "dinov2-vitb14-reg" if "register_tokens" in backbone else "dinov2-vitb14"
        meta["mrdino.backbone_sha256"] = vit_weights_id(converted)
    return out, meta, []


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--n-slots", type=int, default=None, help="slots per image (default: from the patch count)")
    ap.add_argument("--stage", choices=["baseline", "stage1", "stage2"], default=None)
    args = ap.parse_args()
    state, global_step = load_state_dict(args.input)
    tensors, meta, errors = convert(state, args.n_slots, args.stage)
    if errors:
        for e in errors:
            print(f"{args.input}: {e}", file=sys.stderr)
        sys.exit(1)
    meta["mrdino.source"] = json.dumps({"file": args.input.name, "global_step": global_step})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(args.output)
    n_backbone = sum(1 for k in tensors if k.startswith(BACKBONE_OUT))
    print(f"{args.output}: {len(tensors) - n_backbone} slot-model tensors, {n_backbone} backbone tensors, "
          f"stage {meta['mrdino.stage']}, config {meta['mrdino.model_config']}")


if __name__ == "__main__":
    main()
