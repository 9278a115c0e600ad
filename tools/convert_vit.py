#!/usr/bin/env python3
"""Convert ViT backbone weights to the safetensors layout read by `mrdino_model::vit`.

Usage: convert_vit.py IN OUT.safetensors [--family dinov2|dino|clip|mae|dinov3] [--name NAME] [--pos-interp MODE]
                      [--part teacher|student] [--allow-pickle]

Accepted inputs (layout detected from the key names):
- hub DINOv2 `.pth` (`dinov2_vitb14_pretrain.pth`, `*_reg4_pretrain.pth`): a state dict already in the
  canonical names (`cls_token`, `pos_embed`, `register_tokens`, `mask_token`, `patch_embed.proj.*`,
  `blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*`, `norm.*`);
- DINOv1 `.pth` (`dino_deitsmall16_pretrain.pth`, ...): the same names without LayerScale; full training
  checkpoints are unwrapped from `teacher` (default) or `student` with `module.` / `backbone.` stripped and the
  DINO projection head (`head.*`) dropped;
- MAE `.pth` (`mae_pretrain_vit_base.pth`): the encoder under the `model` key; a pretraining checkpoint's
  decoder (`decoder_*`, its `mask_token`) is dropped;
- transformers `model.safetensors` / `pytorch_model.bin` of Dinov2Model, Dinov2WithRegistersModel, ViTModel
  (DINOv1 `facebook/dino-*`), ViTMAEModel / ViTMAEForPreTraining (`vit.` prefix, `decoder.*` dropped) and
  CLIPVisionModel / CLIPModel (`vision_model.` prefix; the text tower, `text_projection` and `logit_scale`
  dropped). Both the on-disk 4.x names (`encoder.layer.i.attention.attention.query`, `layernorm_before`,
  `intermediate.dense`, ...) and the transformers-5 in-memory names (`attention.q_proj`, `layers.i`,
  `mlp.fc1`, ...) are read; separate q, k, v are concatenated on dim 0. A `config.json` beside the file is
  read for `model_type` and `num_attention_heads`;
- official DINOv3 `.pth` (`dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth`, ...; facebookresearch/dinov3
  `DinoVisionTransformer`): `cls_token`, `storage_tokens` (written as `register_tokens`), `mask_token`
  (dropped), `patch_embed.proj.*`, `rope_embed.periods` (checked against base 100 and dropped: the RoPE is
  recomputed from the configuration), `blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,ls2.gamma}.*`,
  `blocks.{i}.attn.qkv.bias_mask` (checked to mask exactly the K third, then applied: the K third of
  `attn.qkv.bias` is written as zeros and the mask dropped), `blocks.{i}.mlp.fc1/fc2.*` (S, B, L) or
  `blocks.{i}.mlp.w1/w2/w3.*` (SwiGLU, S+), `norm.*`. Training-only keys such as the satellite models'
  `local_cls_norm.*` are refused as unknown (those weights also need other image statistics);
- transformers `DINOv3ViTModel` (`model.safetensors` on disk: `embeddings.{cls_token,register_tokens,
  mask_token,patch_embeddings.*}`, `layer.{i}.{norm1,norm2}`, `layer.{i}.attention.{q,k,v,o}_proj` with no
  `k_proj.bias` (`key_bias=False`; written as zeros), `layer.{i}.layer_scale{1,2}.lambda1`,
  `layer.{i}.mlp.{up,down}_proj` (→ `mlp.fc1/fc2`) or `layer.{i}.mlp.{gate,up,down}_proj` (→ `mlp.w1/w2/w3`),
  `norm.*`; a transformers-5 in-memory state dict has `model.layer.{i}` instead). A `config.json` beside the
  file must agree (`layer_norm_eps` 1e-5, `rope_theta` 100, `hidden_act` gelu / silu for the gated MLP). Both
  DINOv3 layouts give bit-identical files; the family is detected from the keys (`storage_tokens`,
  `rope_embed.periods`, `bias_mask`, `embeddings.patch_embeddings.weight`, or no `pos_embed`);
- an mrdino ViT safetensors file (re-written with its stored configuration unless `--name` is given);
- OpenAI CLIP `.pt` (`ViT-B-16.pt`, a TorchScript archive with fp16 weights; a pickled state dict works
  too): the `visual.*` keys, cast to float32, the text tower dropped. `visual.proj` is stored (in, out) like
  OpenAI; HF's `visual_projection.weight` is its transpose.

The architecture is read off the shapes (depth, width, patch, position grid, registers, MLP width and kind;
heads from `config.json`, from DINOv3's `rope_embed.periods` (head_dim/4 entries), `--name`, or width/64 as in
every official model), matched against the presets of
`VitConfig::by_name`, and the full expected key list is checked: an unknown, missing or mis-shaped key stops
the conversion with the key and both shapes named. `--name` fixes the architecture instead (a preset or
`custom:...`, see `stages/model/src/vit/config.rs`), and the shapes must match it. The output holds
contiguous float32 tensors and string metadata `mrdino.vit_config` (the JSON configuration the Rust loader
reads, so the file loads without a name), `mrdino.source_format`, `mrdino.source` and `mrdino.source_sha256`.
"""

import argparse
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP_STATS = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
FAMILIES = ("dinov2", "dino", "clip", "mae", "dinov3")
NATIVE_PX = {"dinov2": 518, "dino": 224, "clip": 224, "mae": 224, "dinov3": 224}
INTERPS = ("hub-offset", "size", "size-antialias", "none")
ROPE_BASE = 100.0  # DINOv3 `pos_embed_rope_base`, transformers `rope_theta`
DINOV3_LN_EPS = 1e-5  # DINOv3 `norm_layer="layernormbf16"`

# name: (family, depth, dim, heads, patch, registers, pos_grid, proj, ffn) — the same table as
# VitConfig::by_name. Every preset's MLP (or SwiGLU) width is 4·dim; pos_grid 0 = no learned position embedding.
PRESETS = {
    "dinov2-vits14": ("dinov2", 12, 384, 6, 14, 0, 37, None, "mlp"),
    "dinov2-vitb14": ("dinov2", 12, 768, 12, 14, 0, 37, None, "mlp"),
    "dinov2-vitl14": ("dinov2", 24, 1024, 16, 14, 0, 37, None, "mlp"),
    "dinov2-vits14-reg": ("dinov2", 12, 384, 6, 14, 4, 37, None, "mlp"),
    "dinov2-vitb14-reg": ("dinov2", 12, 768, 12, 14, 4, 37, None, "mlp"),
    "dinov2-vitl14-reg": ("dinov2", 24, 1024, 16, 14, 4, 37, None, "mlp"),
    "dino-vits16": ("dino", 12, 384, 6, 16, 0, 14, None, "mlp"),
    "dino-vits8": ("dino", 12, 384, 6, 8, 0, 28, None, "mlp"),
    "dino-vitb16": ("dino", 12, 768, 12, 16, 0, 14, None, "mlp"),
    "dino-vitb8": ("dino", 12, 768, 12, 8, 0, 28, None, "mlp"),
    "clip-vitb16": ("clip", 12, 768, 12, 16, 0, 14, 512, "mlp"),
    "mae-vitb16": ("mae", 12, 768, 12, 16, 0, 14, None, "mlp"),
    "dinov3-vits16": ("dinov3", 12, 384, 6, 16, 4, 0, None, "mlp"),
    "dinov3-vits16plus": ("dinov3", 12, 384, 6, 16, 4, 0, None, "swiglu"),
    "dinov3-vitb16": ("dinov3", 12, 768, 12, 16, 4, 0, None, "mlp"),
    "dinov3-vitl16": ("dinov3", 24, 1024, 16, 16, 4, 0, None, "mlp"),
}


class ConversionError(Exception):
    pass


def default_interp(family: str, registers: int) -> str:
    if family == "dinov2":
        return "hub-offset" if registers == 0 else "size-antialias"
    if family == "dinov3":
        return "none"
    return "hub-offset" if family == "dino" else "size"


def make_config(name, family, depth, dim, heads, patch, registers, pos_grid, mlp=None, proj=None, interp=None,
                ffn="mlp"):
    """The JSON object `VitConfig` deserialises (field names and enum spellings as in config.rs). The DINOv3
    switches (`gated_mlp`, `rope_base`, `k_bias`) are written only for DINOv3, so the other families' metadata
    keeps the bytes it always had."""
    if family == "dinov3":
        gated = ffn == "swiglu"
        config = {
            "name": name,
            "family": family,
            "depth": depth,
            "embed_dim": dim,
            "heads": heads,
            "mlp_dim": mlp if mlp is not None else 4 * dim,
            "patch_size": patch,
            "pos_grid": 0,
            "registers": registers,
            "layer_scale": True,
            "patch_bias": True,
            "ln_pre": False,
            "ln_eps": DINOV3_LN_EPS,
            "activation": "silu" if gated else "gelu",
            "rope_base": ROPE_BASE,
            "k_bias": False,
            "proj_dim": None,
            "pos_interp": "none",
            "mean": IMAGENET[0],
            "std": IMAGENET[1],
        }
        if gated:
            config["gated_mlp"] = True
        return config
    clip = family == "clip"
    mean, std = CLIP_STATS if clip else IMAGENET
    return {
        "name": name,
        "family": family,
        "depth": depth,
        "embed_dim": dim,
        "heads": heads,
        "mlp_dim": mlp if mlp is not None else 4 * dim,
        "patch_size": patch,
        "pos_grid": pos_grid,
        "registers": registers,
        "layer_scale": family == "dinov2",
        "patch_bias": not clip,
        "ln_pre": clip,
        "ln_eps": 1e-5 if clip else 1e-6,
        "activation": "quick_gelu" if clip else "gelu",
        "proj_dim": proj,
        "pos_interp": interp if interp is not None else default_interp(family, registers),
        "mean": mean,
        "std": std,
    }


def preset_config(name: str) -> dict:
    family, depth, dim, heads, patch, registers, pos_grid, proj, ffn = PRESETS[name]
    return make_config(name, family, depth, dim, heads, patch, registers, pos_grid, proj=proj, ffn=ffn)


def custom_name(family, depth, dim, heads, patch, registers, pos_grid, mlp, proj, interp, ffn="mlp"):
    """The canonical `custom:` spec, spelled exactly as `VitConfig::by_name` spells it."""
    name = f"custom:family={family},depth={depth},dim={dim},heads={heads},patch={patch},registers={registers}"
    if family != "dinov3":
        name += f",pos_grid={pos_grid}"
    if ffn == "swiglu":
        name += ",ffn=swiglu"
    if mlp is not None:
        name += f",mlp={mlp}"
    if proj is not None:
        name += f",proj={proj}"
    if interp is not None:
        name += f",interp={interp}"
    return name


def config_by_name(name: str) -> dict:
    if name in PRESETS:
        return preset_config(name)
    if not name.startswith("custom:"):
        raise ConversionError(f"unknown backbone `{name}` (expected one of {', '.join(PRESETS)}, or custom:...)")
    fields = dict(item.split("=", 1) for item in name[len("custom:"):].split(",") if item)
    try:
        family = fields["family"]
        ints = {k: int(fields[k]) for k in ("depth", "dim", "heads", "patch")}
    except (KeyError, ValueError) as e:
        raise ConversionError(f"bad backbone spec `{name}`: {e}") from None
    if family not in FAMILIES:
        raise ConversionError(f"bad backbone spec `{name}`: unknown family `{family}`")
    registers = int(fields.get("registers", 4 if family == "dinov3" else 0))
    ffn = fields.get("ffn", "mlp")
    if ffn not in ("mlp", "swiglu") or (ffn == "swiglu" and family != "dinov3"):
        raise ConversionError(f"bad backbone spec `{name}`: ffn `{ffn}` (mlp, or swiglu in the dinov3 family)")
    if family == "dinov3" and ("pos_grid" in fields or "interp" in fields):
        raise ConversionError(f"bad backbone spec `{name}`: dinov3 has no learned position embedding")
    pos_grid = int(fields.get("pos_grid", NATIVE_PX[family] // ints["patch"])) if family != "dinov3" else 0
    mlp = int(fields["mlp"]) if "mlp" in fields else None
    proj = int(fields["proj"]) if "proj" in fields else None
    interp = fields.get("interp")
    canonical = custom_name(family, ints["depth"], ints["dim"], ints["heads"], ints["patch"], registers, pos_grid,
                            mlp, proj, interp, ffn)
    return make_config(canonical, family, ints["depth"], ints["dim"], ints["heads"], ints["patch"], registers,
                       pos_grid, mlp, proj, interp, ffn)


def expected_keys(config: dict) -> dict:
    """Canonical key → shape, as `VitConfig::expected_keys` (plus the optional DINOv2 mask_token)."""
    d, mlp = config["embed_dim"], config["mlp_dim"]
    keys = {"cls_token": (1, 1, d)}
    if config["pos_grid"]:
        keys["pos_embed"] = (1, 1 + config["pos_grid"] ** 2, d)
    if config["registers"]:
        keys["register_tokens"] = (1, config["registers"], d)
    if config["family"] == "dinov2":
        keys["mask_token"] = (1, d)
    p = config["patch_size"]
    keys["patch_embed.proj.weight"] = (d, 3, p, p)
    if config["patch_bias"]:
        keys["patch_embed.proj.bias"] = (d,)
    if config["ln_pre"]:
        keys["ln_pre.weight"] = keys["ln_pre.bias"] = (d,)
    for i in range(config["depth"]):
        b = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            keys[b + norm + ".weight"] = keys[b + norm + ".bias"] = (d,)
        keys[b + "attn.qkv.weight"], keys[b + "attn.qkv.bias"] = (3 * d, d), (3 * d,)
        keys[b + "attn.proj.weight"], keys[b + "attn.proj.bias"] = (d, d), (d,)
        if config.get("gated_mlp", False):
            keys[b + "mlp.w1.weight"], keys[b + "mlp.w1.bias"] = (mlp, d), (mlp,)
            keys[b + "mlp.w2.weight"], keys[b + "mlp.w2.bias"] = (mlp, d), (mlp,)
            keys[b + "mlp.w3.weight"], keys[b + "mlp.w3.bias"] = (d, mlp), (d,)
        else:
            keys[b + "mlp.fc1.weight"], keys[b + "mlp.fc1.bias"] = (mlp, d), (mlp,)
            keys[b + "mlp.fc2.weight"], keys[b + "mlp.fc2.bias"] = (d, mlp), (d,)
        if config["layer_scale"]:
            keys[b + "ls1.gamma"] = keys[b + "ls2.gamma"] = (d,)
    keys["norm.weight"] = keys["norm.bias"] = (d,)
    if config["proj_dim"] is not None:
        keys["proj"] = (d, config["proj_dim"])
    return keys


OPTIONAL = {"mask_token", "proj"}


# ---------------------------------------------------------------------------------------------------------------
# Reading


def read_input(path: Path, allow_pickle: bool):
    """State dict (name → tensor) of `path` plus a hint about the wrapper it came in."""
    if path.suffix == ".safetensors":
        return load_file(str(path)), "safetensors"
    if zipfile.is_zipfile(path):
        try:  # a TorchScript archive (OpenAI CLIP)
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), "torchscript"
        except RuntimeError:
            pass
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - the message says how to proceed
        if allow_pickle:
            raise ConversionError(f"{path}: cannot read ({e})") from None
        raise ConversionError(f"{path}: cannot read with weights_only=True ({str(e).splitlines()[0]}); if the "
                              "file comes from a source you trust, pass --allow-pickle") from None
    return obj, None


def unwrap(obj, part: str):
    """Finds the state dict inside training-checkpoint wrappers; returns (state, wrapper)."""
    if not isinstance(obj, dict):
        raise ConversionError(f"expected a state dict, got {type(obj).__name__}")
    for key in (part, "model", "state_dict", "module"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key], key
    return obj, None


def strip_prefixes(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value
    return out


def detect_layout(keys) -> str:
    if any(k.startswith("visual.") for k in keys):
        return "openai-clip"
    if any(re.search(r"(^|\.)embeddings\.class_embedding$", k) for k in keys):
        return "hf-clip"
    if any(re.search(r"(^|\.)embeddings\.patch_embeddings\.projection\.weight$", k) for k in keys):
        return "hf-dinov2" if any("layer_scale1" in k for k in keys) else "hf-vit"
    if any(re.search(r"(^|\.)embeddings\.patch_embeddings\.weight$", k) for k in keys):
        return "hf-dinov3"
    if "cls_token" in keys or "backbone.cls_token" in keys:
        return "hub"
    raise ConversionError("cannot tell the layout from the keys (no cls_token, embeddings.* or visual.* entries); "
                          f"first keys: {sorted(keys)[:5]}")


def hf_config(path: Path) -> dict:
    config = path.parent / "config.json"
    if config.is_file():
        with open(config) as f:
            data = json.load(f)
        return data.get("vision_config", data) | {"model_type": data.get("model_type")}
    return {}


# ---------------------------------------------------------------------------------------------------------------
# Renaming onto canonical names. Each function returns (canonical state, dropped keys).

HF_BLOCK_RULES = [
    # transformers 4.x on-disk names
    (r"attention\.attention\.(query|key|value)\.", r"attn.\1."),
    (r"attention\.output\.dense\.", "attn.proj."),
    (r"layernorm_before\.", "norm1."),
    (r"layernorm_after\.", "norm2."),
    (r"intermediate\.dense\.", "mlp.fc1."),
    (r"output\.dense\.", "mlp.fc2."),
    (r"layer_scale1\.lambda1$", "ls1.gamma"),
    (r"layer_scale2\.lambda1$", "ls2.gamma"),
    # transformers 5 in-memory names
    (r"attention\.([qkv])_proj\.", r"attn.\1."),
    (r"attention\.o_proj\.", "attn.proj."),
    # CLIP
    (r"self_attn\.([qkv])_proj\.", r"attn.\1."),
    (r"self_attn\.out_proj\.", "attn.proj."),
    (r"layer_norm1\.", "norm1."),
    (r"layer_norm2\.", "norm2."),
]
QKV_NAMES = {"query": "q", "key": "k", "value": "v", "q": "q", "k": "k", "v": "v"}


def fuse_qkv(state: dict) -> dict:
    """Concatenates `blocks.i.attn.{q,k,v}.*` into `blocks.i.attn.qkv.*` (dim 0, order q, k, v)."""
    out, parts = {}, {}
    for key, value in state.items():
        m = re.match(r"^(blocks\.\d+\.attn\.)(query|key|value|q|k|v)\.(weight|bias)$", key)
        if m:
            parts.setdefault((m.group(1), m.group(3)), {})[QKV_NAMES[m.group(2)]] = value
        else:
            out[key] = value
    for (prefix, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(qkv))
            raise ConversionError(f"missing key: {prefix}{missing[0]}.{kind} (q, k and v are needed to build "
                                  f"{prefix}qkv.{kind})")
        shapes = {n: tuple(t.shape) for n, t in qkv.items()}
        if len(set(shapes.values())) != 1:
            raise ConversionError(f"{prefix}q/k/v.{kind} have different shapes {shapes}")
        out[f"{prefix}qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def rename_hf(state: dict, layout: str):
    out, dropped = {}, []
    for key, value in state.items():
        k = re.sub(r"^(vision_model|dinov2|vit|vit_mae)\.", "", key)
        if (k.startswith(("text_model.", "decoder.", "pooler.")) or k in ("text_projection.weight", "logit_scale")
                or k.endswith("position_ids")):
            dropped.append(key)
            continue
        if k == "visual_projection.weight":
            out["proj"] = value.t()
            continue
        simple = {
            "embeddings.cls_token": "cls_token",
            "embeddings.mask_token": "mask_token",
            "embeddings.register_tokens": "register_tokens",
            "embeddings.position_embeddings": "pos_embed",
            "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
            "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
            "layernorm.weight": "norm.weight",
            "layernorm.bias": "norm.bias",
            "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
            "pre_layrnorm.weight": "ln_pre.weight",
            "pre_layrnorm.bias": "ln_pre.bias",
            "post_layernorm.weight": "norm.weight",
            "post_layernorm.bias": "norm.bias",
        }
        if k in simple:
            out[simple[k]] = value
            continue
        if k == "embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
            continue
        if k == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
            continue
        m = re.match(r"^(?:encoder\.layers?|layers)\.(\d+)\.(.*)$", k)
        if m:
            rest = m.group(2)
            for pattern, replacement in HF_BLOCK_RULES:
                new = re.sub("^" + pattern, replacement, rest)
                if new != rest:
                    rest = new
                    break
            out[f"blocks.{m.group(1)}.{rest}"] = value
            continue
        out[key] = value  # unknown: reported by the key check
    return fuse_qkv(out), dropped


OPENAI_BLOCK = {
    "ln_1.": "norm1.",
    "ln_2.": "norm2.",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.": "attn.proj.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}


def rename_openai(state: dict):
    out, dropped = {}, []
    for key, value in state.items():
        if not key.startswith("visual."):
            dropped.append(key)
            continue
        k = key[len("visual."):]
        if k == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif k == "positional_embedding":
            out["pos_embed"] = value.unsqueeze(0)
        elif k == "conv1.weight":
            out["patch_embed.proj.weight"] = value
        elif k.startswith(("ln_pre.", "proj")):
            out[k] = value
        elif k.startswith("ln_post."):
            out["norm." + k[len("ln_post."):]] = value
        elif m := re.match(r"^transformer\.resblocks\.(\d+)\.(.*)$", k):
            rest = m.group(2)
            for old, new in OPENAI_BLOCK.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[f"blocks.{m.group(1)}.{rest}"] = value
        else:
            out[key] = value
    return out, dropped


def rename_hub(state: dict, wrapper):
    out, dropped = {}, []
    teacher = wrapper in ("teacher", "student") or any(k.startswith("backbone.") for k in state)
    mae_decoder = any(k.startswith("decoder_") for k in state)
    for key, value in state.items():
        k = key
        if teacher:
            if k.startswith("head."):  # the DINO projection head, not part of the backbone
                dropped.append(key)
                continue
            k = k[len("backbone."):] if k.startswith("backbone.") else k
        if mae_decoder and (k.startswith("decoder_") or k == "mask_token"):
            dropped.append(key)
            continue
        out[k] = value
    return out, dropped


# ---------------------------------------------------------------------------------------------------------------
# DINOv3: both layouts end in the canonical names with the K bias zeroed and no buffers.


def rope_periods(head_dim: int) -> torch.Tensor:
    """DINOv3's `RopePositionEmbedding` periods for base 100: base^(2k / (head_dim/2)), k < head_dim/4, fp32."""
    k = torch.arange(head_dim // 4, dtype=torch.float32)
    return ROPE_BASE ** (2 * k / (head_dim // 2))


def zero_k_bias(state: dict) -> None:
    """Writes zeros over the K third of every `blocks.i.attn.qkv.bias` (DINOv3's masked K bias)."""
    for key in [k for k in state if re.match(r"^blocks\.\d+\.attn\.qkv\.bias$", k)]:
        bias = state[key].detach().clone()
        if bias.dim() != 1 or bias.shape[0] % 3:
            raise ConversionError(f"key {key} has shape {list(bias.shape)}, expected [3·dim]")
        d = bias.shape[0] // 3
        bias[d:2 * d] = 0.0
        state[key] = bias


def is_official_dinov3(state: dict) -> bool:
    return ("storage_tokens" in state or "rope_embed.periods" in state
            or any(k.endswith(".attn.qkv.bias_mask") for k in state))


def canonical_official_dinov3(state: dict):
    """facebookresearch/dinov3 names → canonical; returns (state, dropped keys, head_dim or None)."""
    out, dropped, masks = {}, [], {}
    head_dim = None
    for key, value in state.items():
        if key == "storage_tokens":
            out["register_tokens"] = value
        elif key == "mask_token":
            dropped.append(key)
        elif key == "rope_embed.periods":
            head_dim = 4 * value.numel()
            want = rope_periods(head_dim)
            if value.shape != want.shape or not torch.allclose(value.float(), want, rtol=1e-5, atol=0):
                raise ConversionError(f"rope_embed.periods {value.flatten()[:4].tolist()}… are not base-{ROPE_BASE:g} "
                                      f"periods {want[:4].tolist()}… (only DINOv3's base-100 RoPE is supported)")
            dropped.append(key)
        elif key.endswith(".attn.qkv.bias_mask"):
            masks[key[:-len("_mask")]] = value
            dropped.append(key)
        else:
            out[key] = value
    for bias_key, mask in masks.items():
        if bias_key not in out:
            raise ConversionError(f"missing key: {bias_key} (its bias_mask is present)")
        d = out[bias_key].shape[0] // 3
        want = torch.ones(3 * d)
        want[d:2 * d] = 0
        if mask.shape != want.shape or not torch.equal(mask.float(), want):
            raise ConversionError(f"{bias_key}_mask does not mask exactly the K third of {bias_key} "
                                  f"(shape {list(mask.shape)}); only DINOv3's mask_k_bias layout is supported")
    zero_k_bias(out)
    return out, dropped, head_dim


HF_DINOV3_BLOCK = [
    (r"attention\.([qkv])_proj\.", r"attn.\1."),
    (r"attention\.o_proj\.", "attn.proj."),
    (r"layer_scale([12])\.lambda1$", r"ls\1.gamma"),
]


def rename_hf_dinov3(state: dict, meta: dict):
    """transformers DINOv3ViTModel names (on disk `layer.i`, in memory `model.layer.i`) → canonical."""
    gated = any(re.search(r"(^|\.)mlp\.gate_proj\.", k) for k in state)
    mlp_names = {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"} if gated else {"up_proj": "fc1",
                                                                                        "down_proj": "fc2"}
    if meta:
        checks = [("layer_norm_eps", DINOV3_LN_EPS), ("rope_theta", ROPE_BASE),
                  ("hidden_act", "silu" if gated else "gelu"), ("use_gated_mlp", gated), ("key_bias", False),
                  ("query_bias", True), ("value_bias", True), ("proj_bias", True), ("mlp_bias", True)]
        for field, want in checks:
            got = meta.get(field, want)
            if got != want and not (isinstance(got, float) and abs(got - want) <= 1e-12 * abs(want)):
                raise ConversionError(f"config.json {field} = {got!r}, but DINOv3 "
                                      f"{'with' if gated else 'without'} a gated MLP has {want!r}")
    out, dropped = {}, []
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
        "norm.weight": "norm.weight",
        "norm.bias": "norm.bias",
    }
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
        elif key == "embeddings.mask_token":
            dropped.append(key)
        elif key == "rope_embeddings.inv_freq":
            want = 1.0 / rope_periods(4 * value.numel())
            if not torch.allclose(value.float(), want, rtol=1e-5, atol=0):
                raise ConversionError(f"rope_embeddings.inv_freq are not base-{ROPE_BASE:g} frequencies")
            dropped.append(key)
        elif m := re.match(r"^(?:model\.)?layer\.(\d+)\.(.*)$", key):
            rest = m.group(2)
            for pattern, replacement in HF_DINOV3_BLOCK:
                rest = re.sub("^" + pattern, replacement, rest)
            if mm := re.match(r"^mlp\.(\w+)\.(weight|bias)$", rest):
                rest = f"mlp.{mlp_names.get(mm.group(1), mm.group(1))}.{mm.group(2)}"
            out[f"blocks.{m.group(1)}.{rest}"] = value
        else:
            out[key] = value  # unknown: reported by the key check
    for key in [k for k in out if re.match(r"^blocks\.\d+\.attn\.k\.bias$", k)]:
        raise ConversionError(f"unexpected key {key.replace('attn.k.', 'attention.k_proj.')}: DINOv3 has no K bias "
                              "(transformers key_bias=False)")
    for key in [k for k in out if re.match(r"^blocks\.\d+\.attn\.q\.bias$", k)]:
        out[key.replace(".q.bias", ".k.bias")] = torch.zeros_like(out[key])
    out = fuse_qkv(out)
    zero_k_bias(out)
    return out, dropped


# ---------------------------------------------------------------------------------------------------------------
# Architecture


def infer_config(state: dict, family: str, heads) -> dict:
    def shape(key):
        if key not in state:
            raise ConversionError(f"missing key: {key}")
        return tuple(state[key].shape)

    dim = shape("cls_token")[-1]
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))), default=-1)
    if depth == 0:
        raise ConversionError("no blocks.{i}.* keys")
    patch = shape("patch_embed.proj.weight")[-1]
    if family == "dinov3":
        pos_grid = 0
    else:
        rows = shape("pos_embed")[1] - 1
        pos_grid = round(rows ** 0.5)
        if pos_grid * pos_grid != rows:
            raise ConversionError(f"pos_embed has {rows} patch rows, not a square grid (shape {shape('pos_embed')})")
    registers = shape("register_tokens")[1] if "register_tokens" in state else 0
    ffn = "swiglu" if "blocks.0.mlp.w1.weight" in state else "mlp"
    mlp = shape("blocks.0.mlp.w1.weight" if ffn == "swiglu" else "blocks.0.mlp.fc1.weight")[0]
    proj = shape("proj")[1] if "proj" in state else None
    heads = heads or max(1, dim // 64)
    for name, (fam, *arch) in PRESETS.items():
        if fam == family and arch == [depth, dim, heads, patch, registers, pos_grid, proj, ffn] and mlp == 4 * dim:
            return preset_config(name)
    return config_by_name(custom_name(family, depth, dim, heads, patch, registers, pos_grid,
                                      None if mlp == 4 * dim else mlp, proj, None, ffn))


def check_keys(state: dict, config: dict) -> None:
    expected = expected_keys(config)
    for key, want in expected.items():
        if key not in state:
            if key in OPTIONAL:
                continue
            raise ConversionError(f"missing key: {key} (expected shape {list(want)}) for `{config['name']}`")
        got = tuple(state[key].shape)
        if got != want:
            raise ConversionError(f"key {key} has shape {list(got)}, expected {list(want)} for `{config['name']}`")
    for key in sorted(state):
        if key not in expected:
            raise ConversionError(f"unknown key: {key} with shape {list(state[key].shape)} for `{config['name']}`")


def convert(src: Path, dst: Path, family=None, name=None, pos_interp=None, part="teacher", allow_pickle=False):
    """Converts `src` to `dst`; returns the configuration written."""
    obj, hint = read_input(src, allow_pickle)
    state, wrapper = unwrap(obj, part) if hint is None else (obj, hint)
    stored = None
    if hint == "safetensors":  # an mrdino file: its own configuration is the default
        with safe_open(str(src), "pt") as f:
            text = (f.metadata() or {}).get("mrdino.vit_config")
        stored = json.loads(text) if text else None
    state = strip_prefixes({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
    layout = detect_layout(state.keys())
    meta = hf_config(src) if layout.startswith("hf") else {}
    heads = meta.get("num_attention_heads")
    if layout == "openai-clip":
        canonical, dropped = rename_openai(state)
        detected = "clip"
    elif layout == "hf-dinov3":
        canonical, dropped = rename_hf_dinov3(state, meta)
        detected = "dinov3"
    elif layout.startswith("hf"):
        canonical, dropped = rename_hf(state, layout)
        model_type = meta.get("model_type") or ""
        if layout == "hf-clip" or "clip" in model_type:
            detected = "clip"
        elif layout == "hf-dinov2":
            detected = "dinov2"
        elif "mae" in model_type or any(k.startswith("decoder.") for k in state):
            detected = "mae"
        else:
            detected = "dino" if model_type in ("vit", "") else None
    else:
        canonical, dropped = rename_hub(state, wrapper)
        if is_official_dinov3(canonical):
            canonical, more, head_dim = canonical_official_dinov3(canonical)
            dropped += more
            detected = "dinov3"
            if head_dim and "cls_token" in canonical:
                heads = heads or max(1, canonical["cls_token"].shape[-1] // head_dim)
        elif "pos_embed" not in canonical and "cls_token" in canonical:
            detected = "dinov3"  # canonical names without a learned position embedding
        elif "register_tokens" in canonical or any(k.endswith("ls1.gamma") for k in canonical):
            detected = "dinov2"
        elif wrapper == "model" or any(k.startswith("decoder_") for k in state):
            detected = "mae"
        else:
            detected = "dino"
    if name is None and stored is not None and family in (None, stored["family"]):
        config = stored
    elif name is not None:
        config = config_by_name(name)
        if family is not None and family != config["family"]:
            raise ConversionError(f"--family {family} contradicts --name {name} (family {config['family']})")
    else:
        family = family or detected
        if family is None:
            raise ConversionError("cannot tell the family from the keys; pass --family or --name")
        config = infer_config(canonical, family, heads)
    if pos_interp is not None:  # the name keeps naming the architecture; the resize is its own field
        if config["family"] == "dinov3":
            raise ConversionError("--pos-interp: dinov3 has no learned position embedding to resize")
        config["pos_interp"] = pos_interp
    if not config.get("k_bias", True):
        zero_k_bias(canonical)  # idempotent; also covers canonical files written by other tools
    check_keys(canonical, config)
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in sorted(canonical.items())}
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if hint == "safetensors" and stored is not None:
        with safe_open(str(src), "pt") as f:
            source_format = (f.metadata() or {}).get("mrdino.source_format", "mrdino")
    elif layout == "hub":
        source_format = "mae" if config["family"] == "mae" else f"hub-{config['family']}"
    else:
        source_format = layout
    metadata = {
        "mrdino.vit_config": json.dumps(config),
        "mrdino.source_format": source_format,
        "mrdino.source": src.name,
        "mrdino.source_sha256": digest.hexdigest(),
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(dst)
    return config, source_format, dropped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--family", choices=FAMILIES)
    parser.add_argument("--name", help="preset (" + ", ".join(PRESETS) + ") or custom:... spec")
    parser.add_argument("--pos-interp", choices=INTERPS, help="store another default position-embedding resize")
    parser.add_argument("--part", choices=("teacher", "student"), default="teacher",
                        help="which network of a DINOv1 training checkpoint (default teacher)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickles that hold more than tensors (full training checkpoints); runs their code")
    args = parser.parse_args(argv)
    try:
        config, source_format, dropped = convert(args.input, args.output, args.family, args.name, args.pos_interp,
                                                 args.part, args.allow_pickle)
    except ConversionError as e:
        print(f"convert_vit.py: {args.input}: {e}", file=sys.stderr)
        return 1
    print(f"{args.input} ({source_format}) -> {args.output}: {config['name']}, depth {config['depth']}, "
          f"dim {config['embed_dim']}, patch {config['patch_size']}, registers {config['registers']}, "
          f"pos-interp {config['pos_interp']}; {len(dropped)} non-backbone keys dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
