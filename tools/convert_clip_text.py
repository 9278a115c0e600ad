#!/usr/bin/env python3
"""Convert a CLIP text tower to the safetensors layout read by `mrdino_model::clip_text`.

Usage: convert_clip_text.py IN OUT.safetensors [--heads H] [--allow-pickle]

Accepted inputs (layout detected from the key names):
- OpenAI CLIP `.pt` (`ViT-B-16.pt`: a TorchScript archive with fp16 weights, read with
  `torch.jit.load(..., map_location="cpu").state_dict()`; a plain pickled state dict works too):
  `token_embedding.weight`, `positional_embedding`, `transformer.resblocks.{i}.{ln_1, attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection` (width, embed),
  stored (in, out). The image tower (`visual.*`), `logit_scale` and the integer entries `input_resolution`,
  `context_length`, `vocab_size` are dropped;
- transformers `model.safetensors` / `pytorch_model.bin` of CLIPModel or CLIPTextModelWithProjection:
  `text_model.embeddings.{token_embedding.weight, position_embedding.weight}`,
  `text_model.encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}`,
  `text_model.final_layer_norm`, `text_projection.weight` (embed, width) = OpenAI's `text_projection`
  transposed. q, k, v are concatenated on dim 0 (OpenAI's `in_proj` order). `vision_model.*`,
  `visual_projection.weight`, `logit_scale` and `position_ids` are dropped. A `config.json` beside the file
  gives the number of heads and is checked for `hidden_act: quick_gelu`.

Canonical names written: `token_embedding.weight` (V, W), `positional_embedding` (C, W),
`blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias}`, `norm.{weight, bias}`
(`ln_final`), `text_projection` (W, E) stored (in, out) as OpenAI stores it. The architecture is read off the
shapes (heads from `--heads`, `config.json`, or width/64 as in every OpenAI model; an OpenAI file does not
record them) and named `clip-vitb16-text` when it is ViT-B/16's, else
`custom:width=…,layers=…,heads=…,mlp=…,embed=…,context=…,vocab=…`; an unknown or missing key stops the
conversion with the key named. The output holds contiguous float32 tensors and string metadata
`mrdino.clip_text_config` (the JSON the Rust loader reads), `mrdino.source_format` (`openai` or `hf`),
`mrdino.source` and `mrdino.source_sha256`.
"""

import argparse
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

VITB16_TEXT = "clip-vitb16-text"
# (width, layers, heads, mlp, embed, context, vocab) of ViT-B/16's text tower, as ClipTextConfig::by_name.
VITB16 = (512, 12, 8, 2048, 512, 77, 49408)

OPENAI_DROPPED = {"logit_scale", "input_resolution", "context_length", "vocab_size"}
HF_DROPPED = {"logit_scale", "visual_projection.weight"}


class ConversionError(Exception):
    pass


def read_input(path: Path, allow_pickle: bool) -> dict:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if zipfile.is_zipfile(path):
        try:  # a TorchScript archive (OpenAI CLIP)
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except RuntimeError:
            pass
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - the message says how to proceed
        raise ConversionError(f"cannot read ({str(e).splitlines()[0]}); if the file comes from a source you trust, "
                              "pass --allow-pickle") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConversionError(f"expected a state dict, got {type(obj).__name__}")
    return obj


OPENAI_BLOCK = {
    "ln_1.": "norm1.",
    "ln_2.": "norm2.",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.": "attn.proj.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}
HF_BLOCK = {
    "layer_norm1.": "norm1.",
    "layer_norm2.": "norm2.",
    "self_attn.out_proj.": "attn.proj.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}


def rename_openai(state: dict):
    out, dropped = {}, []
    for key, value in state.items():
        if key.startswith("visual.") or key in OPENAI_DROPPED:
            dropped.append(key)
            continue
        if key in ("token_embedding.weight", "positional_embedding", "text_projection"):
            out[key] = value
        elif key.startswith("ln_final."):
            out["norm." + key[len("ln_final."):]] = value
        elif m := re.match(r"^transformer\.resblocks\.(\d+)\.(.*)$", key):
            rest = m.group(2)
            new = next((n + rest[len(o):] for o, n in OPENAI_BLOCK.items() if rest.startswith(o)), None)
            if new is None:
                raise ConversionError(f"unknown key: {key} with shape {list(value.shape)}")
            out[f"blocks.{m.group(1)}.{new}"] = value
        else:
            raise ConversionError(f"unknown key: {key} with shape {list(value.shape)}")
    return out, dropped


def rename_hf(state: dict):
    out, dropped, qkv = {}, [], {}
    for key, value in state.items():
        if key.startswith("vision_model.") or key in HF_DROPPED or key.endswith("position_ids"):
            dropped.append(key)
            continue
        k = key[len("text_model."):] if key.startswith("text_model.") else key
        if k == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif k == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif k.startswith("final_layer_norm."):
            out["norm." + k[len("final_layer_norm."):]] = value
        elif k == "text_projection.weight":
            out["text_projection"] = value.t()
        elif m := re.match(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k):
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        elif m := re.match(r"^encoder\.layers\.(\d+)\.(.*)$", k):
            rest = m.group(2)
            new = next((n + rest[len(o):] for o, n in HF_BLOCK.items() if rest.startswith(o)), None)
            if new is None:
                raise ConversionError(f"unknown key: {key} with shape {list(value.shape)}")
            out[f"blocks.{m.group(1)}.{new}"] = value
        else:
            raise ConversionError(f"unknown key: {key} with shape {list(value.shape)}")
    for (layer, kind), parts in sorted(qkv.items()):
        for p in "qkv":
            if p not in parts:
                raise ConversionError(f"missing key: text_model.encoder.layers.{layer}.self_attn.{p}_proj.{kind}")
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, dropped


def hf_config(path: Path) -> dict:
    config = path.parent / "config.json"
    if config.is_file():
        with open(config) as f:
            data = json.load(f)
        return data.get("text_config") or data
    return {}


def make_config(width, layers, heads, mlp, embed, context, vocab) -> dict:
    """The JSON object `ClipTextConfig` deserialises."""
    if (width, layers, heads, mlp, embed, context, vocab) == VITB16:
        name = VITB16_TEXT
    else:
        name = (f"custom:width={width},layers={layers},heads={heads},mlp={mlp},embed={embed},context={context},"
                f"vocab={vocab}")
    return {"name": name, "vocab_size": vocab, "context_length": context, "width": width, "heads": heads,
            "layers": layers, "mlp_dim": mlp, "embed_dim": embed, "ln_eps": 1e-5, "activation": "quick_gelu"}


def expected_keys(config: dict) -> dict:
    w, m = config["width"], config["mlp_dim"]
    keys = {"token_embedding.weight": (config["vocab_size"], w), "positional_embedding": (config["context_length"], w)}
    for i in range(config["layers"]):
        b = f"blocks.{i}."
        keys |= {b + "norm1.weight": (w,), b + "norm1.bias": (w,), b + "attn.qkv.weight": (3 * w, w),
                 b + "attn.qkv.bias": (3 * w,), b + "attn.proj.weight": (w, w), b + "attn.proj.bias": (w,),
                 b + "norm2.weight": (w,), b + "norm2.bias": (w,), b + "mlp.fc1.weight": (m, w),
                 b + "mlp.fc1.bias": (m,), b + "mlp.fc2.weight": (w, m), b + "mlp.fc2.bias": (w,)}
    keys |= {"norm.weight": (w,), "norm.bias": (w,), "text_projection": (w, config["embed_dim"])}
    return keys


def infer_config(state: dict, heads) -> dict:
    def shape(key):
        if key not in state:
            raise ConversionError(f"missing key: {key}")
        return tuple(state[key].shape)

    vocab, width = shape("token_embedding.weight")
    context = shape("positional_embedding")[0]
    layers = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))), default=-1)
    if layers == 0:
        raise ConversionError("no transformer blocks found")
    mlp = shape("blocks.0.mlp.fc1.weight")[0]
    embed = shape("text_projection")[1]
    heads = heads or max(1, width // 64)
    if width % heads:
        raise ConversionError(f"width {width} is not a multiple of {heads} heads")
    return make_config(width, layers, heads, mlp, embed, context, vocab)


def source_name(key: str, source_format: str) -> str:
    """The input's name for canonical `key` (what a missing-key message names)."""
    if source_format == "openai":
        simple, block, prefix = {"norm.": "ln_final."}, OPENAI_BLOCK, "transformer.resblocks."
    else:
        simple = {"token_embedding.weight": "text_model.embeddings.token_embedding.weight",
                  "positional_embedding": "text_model.embeddings.position_embedding.weight",
                  "text_projection": "text_projection.weight", "norm.": "text_model.final_layer_norm."}
        block = HF_BLOCK | {"self_attn.q_proj.weight": "attn.qkv.weight", "self_attn.q_proj.bias": "attn.qkv.bias"}
        prefix = "text_model.encoder.layers."
    for new, old in simple.items():
        if key.startswith(new):
            return old + key[len(new):]
    if m := re.match(r"^blocks\.(\d+)\.(.*)$", key):
        for old, new in block.items():
            if m.group(2).startswith(new):
                return f"{prefix}{m.group(1)}.{old}{m.group(2)[len(new):]}"
    return key


def check_keys(state: dict, config: dict, source_format: str) -> None:
    expected = expected_keys(config)
    for key, want in expected.items():
        if key not in state:
            raise ConversionError(f"missing key: {source_name(key, source_format)} (canonical {key}, expected shape "
                                  f"{list(want)}) for `{config['name']}`")
        got = tuple(state[key].shape)
        if got != want:
            raise ConversionError(f"key {key} has shape {list(got)}, expected {list(want)} for `{config['name']}`")
    for key in sorted(state):
        if key not in expected:
            raise ConversionError(f"unknown key: {key} with shape {list(state[key].shape)} for `{config['name']}`")


def convert(src: Path, dst: Path, heads=None, allow_pickle=False):
    state = {k: v for k, v in read_input(src, allow_pickle).items()}
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ConversionError(f"entry {not_tensors[0]} is not a tensor")
    if "token_embedding.weight" in state:
        source_format = "openai"
        canonical, dropped = rename_openai(state)
    elif any(k.startswith("text_model.") for k in state):
        source_format = "hf"
        meta = hf_config(src)
        act = meta.get("hidden_act", "quick_gelu")
        if act != "quick_gelu":
            raise ConversionError(f"config.json: hidden_act `{act}`, but CLIP's text tower uses quick_gelu")
        heads = heads or meta.get("num_attention_heads")
        canonical, dropped = rename_hf(state)
    else:
        raise ConversionError("neither an OpenAI CLIP (token_embedding.weight) nor a transformers CLIP "
                              f"(text_model.*) state dict; first keys: {sorted(state)[:5]}")
    config = infer_config(canonical, heads)
    check_keys(canonical, config, source_format)
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in sorted(canonical.items())}
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    metadata = {"mrdino.clip_text_config": json.dumps(config), "mrdino.source_format": source_format,
                "mrdino.source": src.name, "mrdino.source_sha256": digest.hexdigest()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(dst)
    return config, source_format, dropped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--heads", type=int, help="attention heads (default: config.json, else width/64)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickles that hold more than tensors; runs their code")
    args = parser.parse_args(argv)
    try:
        config, source_format, dropped = convert(args.input, args.output, args.heads, args.allow_pickle)
    except ConversionError as e:
        print(f"convert_clip_text.py: {args.input}: {e}", file=sys.stderr)
        return 1
    print(f"{args.input} ({source_format}) -> {args.output}: {config['name']}; {len(dropped)} keys of the image "
          "tower and the logit scale dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
