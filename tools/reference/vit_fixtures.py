#!/usr/bin/env python3
"""Reference fixtures for `stages/model/tests/vit_parity.rs`: random ViT weights, images and expected features.

Usage: vit_fixtures.py OUTDIR

Every model is a `transformers` reference built from a config (nothing downloaded) with EVERY parameter
re-randomised — LayerNorm weights 1 + N(0, 0.1) and biases N(0, 0.1), every other bias N(0, 0.1), LayerScale
U(0.5, 1.5), CLS / register / mask tokens and position embeddings N(0, 0.5), matrices N(0, σ) with
σ = min(0.05, fan_in^-½) — so a mapping error cannot hide behind a default init. Each model is saved in its
native layout and converted with `tools/convert_vit.py`; where a family has several native layouts the
script converts each and requires the converted tensors to be bit-identical. Models:

- `dinov2`: Dinov2Model, D 64, 2 heads, depth 2, patch 14, 518 px (37×37 position grid). Saved with
  `save_pretrained` (transformers-4 on-disk names), as its transformers-5 in-memory state dict
  (`q_proj`, …) and as a hub `.pth` (canonical names). References: HF's own forward (size-based resize) and
  the same network with the hub DINOv2 resize re-stated (bicubic, scale_factor (h0+0.1)/37, no antialias,
  applied whenever npatch ≠ 37² or H ≠ W);
- `dinov2_reg`: Dinov2WithRegistersModel, 4 registers (HF = hub `_reg`: antialiased, size-based), also
  re-run with the hub `_reg` rule re-stated; saves the last block's CLS→patch attention logits;
- `dino`: ViTModel with the DINOv1 settings (qkv_bias, LayerNorm eps 1e-6, patch 16, 224 px; saved with
  `save_pretrained` and as its transformers-5 state dict),
  `interpolate_pos_encoding=True`, and with DINOv1's hub resize re-stated (offset 0.1, scale factor); also
  written as a DINOv1 training checkpoint (`teacher` → `module.backbone.*` plus a `head.*` DINO head);
- `mae`: ViTMAEModel with mask_ratio 0 and `noise = arange(P)`, so `random_masking` keeps every patch in
  grid order and the encoder is the MAE encoder without masking (ViTModel would need the same weights and
  is the same network; ViTMAEModel is the class MAE checkpoints load into). Saved as the official MAE `.pth`
  (`{"model": state}`, with a decoder entry and MAE's decoder mask_token to drop), with `save_pretrained`
  (model_type vit_mae) and as its transformers-5 state dict;
- `clip`: CLIPVisionModel (no conv bias, pre_layrnorm, QuickGELU, LN eps 1e-5) plus an output projection;
  weights rounded to float16 first so that the OpenAI layout (a TorchScript `.pt` with fp16 tensors and the
  text tower) and the HF CLIPModel layout (`vision_model.*`, `visual_projection.weight` = proj^T, text keys)
  hold the same values. Features = post_layernorm(block output) on all tokens; the CLS reference is HF's
  `pooler_output` and the projection `pooler_output @ proj`;
- `vitb14`: Dinov2Model with the real ViT-B/14 widths (768, 12 heads, MLP 3072), depth 2, one 224×224 image,
  hub resize (MR-DINOSAUR's setting);
- `dinov3_s`, `dinov3_splus`, `dinov3_b`, `dinov3_l`: transformers DINOv3ViTModel with the widths of
  `dinov3-vits16`, `-vits16plus` (SwiGLU 1536), `-vitb16` and `-vitl16` (dim, heads, MLP, 4 storage tokens,
  LN eps 1e-5, RoPE base 100) at depth 2, references at 224×224, 160×320 and 432×432 (the 27×27 refinement
  window). Saved with `save_pretrained` and converted; for S and S+ also as the transformers-5 in-memory
  state dict and as an official facebookresearch/dinov3 `.pth` (fused qkv with a random K bias and its
  `bias_mask`, `storage_tokens`, `rope_embed.periods`, `ls*.gamma`, `mlp.fc*` / `mlp.w1..w3`, `mask_token`
  (1, D)) built from the same weights, and all conversions must be bit-identical. The official code is not
  pip-installable, so transformers is the reference; the official forward is re-stated here from
  `dinov3/models/vision_transformer.py`, `dinov3/layers/{attention,block,ffn_layers,rope_position_encoding}.py`
  on the official-layout state dict and must agree with transformers (1e-5), which checks the official key
  layout this script builds. `dinov3_s.interleaved.<H>x<W>.patches` are the references with a deliberately
  wrong RoPE (interleaved pairs instead of rotate-half) and `dinov3.rope.{cos,sin}.<h0>x<w0>` transformers'
  RoPE tables for head_dim 64.

`presets.json` holds the converter's configuration JSON for every preset and a few custom specs, which the
Rust test compares with `VitConfig::by_name`.

`io.safetensors` holds per model `<model>.images.<H>x<W>` ([0,1] RGB, B×3×H×W) and the references
`<model>.<mode>.<H>x<W>.{patches,cls,registers}` (patches after the final LayerNorm, CLS and registers
dropped), `<model>.<mode>.<H>x<W>.layer0` (block 0, normed), `….prenorm` (last block, no final norm),
position embeddings
`<model>.pos.<mode>.<h0>x<w0>` and `dinov2_reg.attn_logits.<H>x<W>`. The script also checks that the
converter refuses a missing key, an unknown key and a wrong shape, naming the key and the shapes.
"""

import contextlib
from io import StringIO
import json
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

TOOLS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOOLS))
import convert_vit  # noqa: E402

import transformers as T  # noqa: E402

TOKEN_NAMES = ("cls_token", "mask_token", "register_tokens", "position_embeddings", "class_embedding",
               "position_embedding")


def rerandomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    with torch.no_grad():
        for name, p in model.named_parameters():
            def draw(*shape):
                return torch.randn(*shape, generator=gen)
            if id(p) in norms and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * draw(*p.shape))
            elif name.endswith("bias"):
                p.copy_(0.1 * draw(*p.shape))
            elif "lambda1" in name:
                p.copy_(0.5 + torch.rand(*p.shape, generator=gen))
            elif any(t in name for t in TOKEN_NAMES):
                p.copy_(0.5 * draw(*p.shape))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.numel()
                p.copy_(min(0.05, fan_in ** -0.5) * draw(*p.shape))


def hub_interpolate(pos_embed, height, width, patch, offset, antialias):
    """facebookresearch/dinov2 (and dino, offset 0.1) `interpolate_pos_encoding`, re-stated."""
    n = pos_embed.shape[1] - 1
    h0, w0 = height // patch, width // patch
    if h0 * w0 == n and height == width:
        return pos_embed
    pos = pos_embed.float()
    cls, patches = pos[:, :1], pos[:, 1:]
    dim = pos.shape[-1]
    m = int(math.sqrt(n))
    kwargs = {"scale_factor": ((h0 + offset) / m, (w0 + offset) / m)} if offset else {"size": (h0, w0)}
    out = F.interpolate(patches.reshape(1, m, m, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias,
                        **kwargs)
    assert tuple(out.shape[-2:]) == (h0, w0), (out.shape, h0, w0)
    out = out.permute(0, 2, 3, 1).reshape(1, h0 * w0, dim)
    return torch.cat((cls, out), dim=1).to(pos_embed.dtype)


def use_hub_resize(model, patch, offset, antialias):
    emb = model.embeddings
    emb.interpolate_pos_encoding = types.MethodType(
        lambda self, embeddings, height, width: hub_interpolate(self.position_embeddings, height, width, patch,
                                                                offset, antialias), emb)


def size_resize(pos_embed, h0, w0, antialias):
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    if h0 * w0 == n and h0 == w0:
        return pos_embed
    out = F.interpolate(pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2), size=(h0, w0), mode="bicubic",
                        align_corners=False, antialias=antialias)
    return torch.cat((pos_embed[:, :1], out.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)), dim=1)


def convert(src: Path, dst: Path, *extra: str) -> dict:
    if convert_vit.main([str(src), str(dst), *extra]) != 0:
        raise SystemExit(f"convert_vit.py {src} failed")
    return load_file(str(dst))


def require_same(name: str, a: dict, b: dict) -> None:
    if set(a) != set(b):
        raise SystemExit(f"{name}: converted key sets differ: {sorted(set(a) ^ set(b))[:5]}")
    for k in a:
        if not torch.equal(a[k], b[k]):
            raise SystemExit(f"{name}: converted tensor {k} differs between layouts")


def hub_state(canonical: dict) -> dict:
    return {k: v.clone() for k, v in canonical.items()}


def images(gen, batch, h, w):
    return torch.rand(batch, 3, h, w, generator=gen)


def normalise(x, mean, std):
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def features(model, pixel_values, final_norm, skip, **kwargs):
    """(patches of the last block, CLS, registers, patches of block 0) after `final_norm`, and the last block's
    patches without it."""
    with torch.no_grad():
        out = model(pixel_values=pixel_values, output_hidden_states=True, **kwargs)
        hidden = out.hidden_states
        if len(hidden) != model.config.num_hidden_layers + 1:
            raise SystemExit(f"{type(model).__name__}: {len(hidden)} hidden states")
        last = final_norm(hidden[-1])
        # HF applies the final norm to last_hidden_state, except CLIP (post_layernorm only on the pooled CLS).
        want = out.last_hidden_state if final_norm is not getattr(model, "post_layernorm", None) else final_norm(
            out.last_hidden_state)
        if not torch.allclose(last, want, atol=1e-6):
            raise SystemExit(f"{type(model).__name__}: hidden_states[-1] is not the last block's output")
        first = final_norm(hidden[1])
    return last[:, skip:], last[:, 0], last[:, 1:skip], first[:, skip:], hidden[-1][:, skip:]


def record(io, prefix, refs):
    patches, cls, registers, layer0, prenorm = refs
    io[f"{prefix}.prenorm"] = prenorm.contiguous()
    io[f"{prefix}.patches"] = patches.contiguous()
    io[f"{prefix}.cls"] = cls.contiguous()
    io[f"{prefix}.registers"] = registers.contiguous()
    io[f"{prefix}.layer0"] = layer0.contiguous()


def check_refusals(out: Path, good: Path) -> None:
    """The converter must refuse a missing key and a wrong shape, naming the key and both shapes."""
    state = load_file(str(good))
    broken = dict(state)
    broken["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 64)
    torch.save(broken, out / "broken_shape.pth")
    missing = {k: v for k, v in state.items() if k != "blocks.0.attn.proj.bias"}
    torch.save(missing, out / "broken_missing.pth")
    extra = dict(state)
    extra["blocks.0.attn.rel_pos"] = torch.zeros(3, 5)
    torch.save(extra, out / "broken_extra.pth")
    for path, needles in ((out / "broken_shape.pth", ["blocks.1.mlp.fc1.weight", "[100, 64]", "[256, 64]"]),
                          (out / "broken_missing.pth", ["blocks.0.attn.proj.bias", "[64]"]),
                          (out / "broken_extra.pth", ["unknown key: blocks.0.attn.rel_pos", "[3, 5]"])):
        stderr = StringIO()
        with contextlib.redirect_stderr(stderr):
            status = convert_vit.main([str(path), str(out / "x.safetensors"), "--name",
                                       "custom:family=dinov2,depth=2,dim=64,heads=2,patch=14,pos_grid=37"])
        if status == 0 or not all(n in stderr.getvalue() for n in needles):
            raise SystemExit(f"convert_vit.py accepted {path.name} or did not name {needles}: {stderr.getvalue()}")
        path.unlink()


DINOV3 = {  # fixture: (preset, dim, heads, MLP width, gated, batch, layouts)
    "dinov3_s": ("dinov3-vits16", 384, 6, 1536, False, 2, True),
    "dinov3_splus": ("dinov3-vits16plus", 384, 6, 1536, True, 2, True),
    "dinov3_b": ("dinov3-vitb16", 768, 12, 3072, False, 1, False),
    "dinov3_l": ("dinov3-vitl16", 1024, 16, 4096, False, 1, False),
}


def official_dinov3_state(hf: dict, depth: int, dim: int, heads: int, gated: bool, gen) -> dict:
    """The facebookresearch/dinov3 `DinoVisionTransformer` state dict of the network `hf` (transformers-5
    in-memory names) holds, in the official key layout (`vision_transformer.py`, `layers/attention.py`,
    `layers/ffn_layers.py`, `layers/rope_position_encoding.py`): the K third of the fused qkv bias is random and
    `bias_mask` zeroes it, as `LinearKMaskedBias` does."""
    head_dim = dim // heads
    st = {
        "cls_token": hf["embeddings.cls_token"],
        "storage_tokens": hf["embeddings.register_tokens"],
        "mask_token": hf["embeddings.mask_token"].reshape(1, dim),
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.bias"],
        "rope_embed.periods": 100 ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)),
        "norm.weight": hf["norm.weight"],
        "norm.bias": hf["norm.bias"],
    }
    mlp = {"w1": "gate_proj", "w2": "up_proj", "w3": "down_proj"} if gated else {"fc1": "up_proj", "fc2": "down_proj"}
    for i in range(depth):
        s, d = f"model.layer.{i}.", f"blocks.{i}."
        for n in ("norm1", "norm2"):
            st[d + n + ".weight"], st[d + n + ".bias"] = hf[s + n + ".weight"], hf[s + n + ".bias"]
        att = s + "attention."
        st[d + "attn.qkv.weight"] = torch.cat([hf[att + f"{p}_proj.weight"] for p in "qkv"])
        st[d + "attn.qkv.bias"] = torch.cat([hf[att + "q_proj.bias"], 0.1 * torch.randn(dim, generator=gen),
                                             hf[att + "v_proj.bias"]])
        mask = torch.ones(3 * dim)
        mask[dim:2 * dim] = 0
        st[d + "attn.qkv.bias_mask"] = mask
        st[d + "attn.proj.weight"], st[d + "attn.proj.bias"] = hf[att + "o_proj.weight"], hf[att + "o_proj.bias"]
        st[d + "ls1.gamma"], st[d + "ls2.gamma"] = hf[s + "layer_scale1.lambda1"], hf[s + "layer_scale2.lambda1"]
        for ours, theirs in mlp.items():
            st[f"{d}mlp.{ours}.weight"] = hf[f"{s}mlp.{theirs}.weight"]
            st[f"{d}mlp.{ours}.bias"] = hf[f"{s}mlp.{theirs}.bias"]
    return {k: v.detach().clone().contiguous() for k, v in st.items()}


def official_dinov3_forward(st: dict, pixel_values, depth: int, heads: int, gated: bool):
    """The official DINOv3 forward at inference (`get_intermediate_layers(x, n=[depth-1], norm=True)` patches),
    re-stated from the official-layout state dict: tokens [CLS, storage, patches] without a position
    embedding; per block x += ls1·proj(attn(norm1 x)) with the qkv bias multiplied by `bias_mask` and RoPE
    (periods buffer, coordinates (i+0.5)/H·2−1 per axis, angles 2π·c/period tiled twice, x·cos +
    rotate_half(x)·sin on the patch tokens only), x += ls2·mlp(norm2 x) with fc2(GELU(fc1)) or
    w3(SiLU(w1)·w2); LayerNorm eps 1e-5."""
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], st[n + ".weight"], st[n + ".bias"], 1e-5)  # noqa: E731
    x = F.conv2d(pixel_values, st["patch_embed.proj.weight"], st["patch_embed.proj.bias"], stride=16)
    b, dim, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([st["cls_token"].expand(b, -1, -1), st["storage_tokens"].expand(b, -1, -1), x], dim=1)
    ch = torch.arange(0.5, h, dtype=torch.float32) / h
    cw = torch.arange(0.5, w, dtype=torch.float32) / w
    coords = 2.0 * torch.stack(torch.meshgrid(ch, cw, indexing="ij"), dim=-1).flatten(0, 1) - 1.0
    angles = (2 * math.pi * coords[:, :, None] / st["rope_embed.periods"][None, None, :]).flatten(1, 2).tile(2)
    sin, cos = torch.sin(angles), torch.cos(angles)

    def rope(t):
        prefix = t.shape[-2] - sin.shape[-2]
        half = t[:, :, prefix:].chunk(2, dim=-1)
        rotated = torch.cat([-half[1], half[0]], dim=-1)
        return torch.cat([t[:, :, :prefix], t[:, :, prefix:] * cos + rotated * sin], dim=-2)

    for i in range(depth):
        p = f"blocks.{i}."
        y = ln(x, p + "norm1")
        qkv = F.linear(y, st[p + "attn.qkv.weight"], st[p + "attn.qkv.bias"] * st[p + "attn.qkv.bias_mask"])
        q, k, v = qkv.reshape(b, -1, 3, heads, dim // heads).unbind(2)
        q, k, v = [t.transpose(1, 2) for t in (q, k, v)]
        a = F.scaled_dot_product_attention(rope(q), rope(k), v).transpose(1, 2).reshape(b, -1, dim)
        x = x + st[p + "ls1.gamma"] * F.linear(a, st[p + "attn.proj.weight"], st[p + "attn.proj.bias"])
        y = ln(x, p + "norm2")
        lin = lambda n, t: F.linear(t, st[f"{p}mlp.{n}.weight"], st[f"{p}mlp.{n}.bias"])  # noqa: E731
        m = lin("w3", F.silu(lin("w1", y)) * lin("w2", y)) if gated else lin("fc2", F.gelu(lin("fc1", y)))
        x = x + st[p + "ls2.gamma"] * m
    return ln(x, "norm")[:, 5:]


def interleaved_rope(q, k, cos, sin, **kwargs):
    """A deliberately wrong RoPE: adjacent pairs (2i, 2i+1) rotated by angle i instead of the halves."""
    n = sin.shape[-2]
    half = cos.shape[-1] // 2
    cos_i = cos[..., :half].repeat_interleave(2, dim=-1)
    sin_i = sin[..., :half].repeat_interleave(2, dim=-1)

    def rot(t):
        pairs = t.unflatten(-1, (-1, 2))
        return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)

    def apply(t):
        prefix, patches = t.split((t.shape[-2] - n, n), dim=-2)
        return torch.cat([prefix, patches * cos_i + rot(patches) * sin_i], dim=-2)

    return apply(q), apply(k)


def check_dinov3_refusals(out: Path, official: dict, hf_dir: Path) -> None:
    """The converter must refuse a K mask that is not DINOv3's, RoPE periods of another base, a training-only
    key (the satellite models' `local_cls_norm`) and a transformers config with another LayerNorm eps."""
    cases = []
    ones = dict(official)
    ones["blocks.1.attn.qkv.bias_mask"] = torch.ones_like(official["blocks.1.attn.qkv.bias_mask"])
    cases.append(("mask", ones, ["blocks.1.attn.qkv.bias_mask", "K third"]))
    periods = dict(official)
    periods["rope_embed.periods"] = official["rope_embed.periods"] ** 1.5
    cases.append(("periods", periods, ["rope_embed.periods", "base-100"]))
    sat = dict(official)
    sat["local_cls_norm.weight"] = torch.ones(official["cls_token"].shape[-1])
    cases.append(("sat", sat, ["unknown key: local_cls_norm.weight"]))
    for tag, state, needles in cases:
        path = out / f"broken_dinov3_{tag}.pth"
        torch.save(state, path)
        stderr = StringIO()
        with contextlib.redirect_stderr(stderr):
            status = convert_vit.main([str(path), str(out / "x.safetensors")])
        if status == 0 or not all(n in stderr.getvalue() for n in needles):
            raise SystemExit(f"convert_vit.py accepted {path.name} or did not name {needles}: {stderr.getvalue()}")
        path.unlink()
    config_path = hf_dir / "config.json"
    good = config_path.read_text()
    config_path.write_text(good.replace('"layer_norm_eps": 1e-05', '"layer_norm_eps": 1e-06'))
    stderr = StringIO()
    with contextlib.redirect_stderr(stderr):
        status = convert_vit.main([str(hf_dir / "model.safetensors"), str(out / "x.safetensors")])
    config_path.write_text(good)
    if status == 0 or "layer_norm_eps" not in stderr.getvalue():
        raise SystemExit(f"convert_vit.py accepted a DINOv3 config with LayerNorm eps 1e-6: {stderr.getvalue()}")


def dinov3_fixtures(out: Path, io: dict, gen) -> list:
    """Writes the DINOv3 models and references; returns the directories to remove."""
    from transformers.models.dinov3_vit import modeling_dinov3_vit as hf_dinov3

    sizes = [(224, 224), (160, 320), (432, 432)]
    dirs = []
    for model_name, (preset, dim, heads, mlp, gated, batch, layouts) in DINOV3.items():
        config = T.DINOv3ViTConfig(hidden_size=dim, num_hidden_layers=2, num_attention_heads=heads,
                                   intermediate_size=mlp, patch_size=16, num_register_tokens=4, use_gated_mlp=gated,
                                   hidden_act="silu" if gated else "gelu", layer_norm_eps=1e-5, rope_theta=100.0)
        model = T.DINOv3ViTModel(config).eval()
        rerandomise(model, gen)
        hf_dir = out / f"{model_name}_hf"
        hf_dir.mkdir(exist_ok=True)
        dirs.append(hf_dir)
        model.save_pretrained(hf_dir)
        hf = convert(hf_dir / "model.safetensors", out / f"{model_name}.safetensors")
        state = model.state_dict()
        if layouts:
            torch.save(state, hf_dir / "pytorch_model.bin")
            require_same(f"{model_name} on-disk vs in-memory names", hf,
                         convert(hf_dir / "pytorch_model.bin", out / f"{model_name}_v5.safetensors"))
            official = official_dinov3_state(state, 2, dim, heads, gated, gen)
            torch.save(official, hf_dir / "official.pth")
            require_same(f"{model_name} official vs HF layout", hf,
                         convert(hf_dir / "official.pth", out / f"{model_name}_official.safetensors"))
            if model_name == "dinov3_s":
                check_dinov3_refusals(out, official, hf_dir)
        for h, w in sizes:
            x = images(gen, batch, h, w)
            io[f"{model_name}.images.{h}x{w}"] = x
            pixel_values = normalise(x, *convert_vit.IMAGENET)
            refs = features(model, pixel_values, model.norm, 5)
            record(io, f"{model_name}.hf.{h}x{w}", refs)
            if layouts and (h, w) == (160, 320):
                with torch.no_grad():
                    restated = official_dinov3_forward(official, pixel_values, 2, heads, gated)
                gap = (restated - refs[0]).abs().max().item()
                if gap > 1e-5:
                    raise SystemExit(f"{model_name}: official forward re-stated vs transformers differ by {gap:.2e}")
                print(f"{model_name}: official forward re-stated vs transformers at 160x320: {gap:.2e}")
        if model_name == "dinov3_s":
            original = hf_dinov3.apply_rotary_pos_emb
            hf_dinov3.apply_rotary_pos_emb = interleaved_rope
            try:
                for h, w in sizes:
                    pixel_values = normalise(io[f"{model_name}.images.{h}x{w}"], *convert_vit.IMAGENET)
                    io[f"{model_name}.interleaved.{h}x{w}.patches"] = features(model, pixel_values, model.norm,
                                                                               5)[0].contiguous()
            finally:
                hf_dinov3.apply_rotary_pos_emb = original
    rope = T.DINOv3ViTModel(T.DINOv3ViTConfig(hidden_size=128, num_attention_heads=2, num_hidden_layers=1,
                                              intermediate_size=32)).eval().rope_embeddings
    for h0, w0 in [(10, 20), (27, 27)]:  # eval mode: the training-time coordinate rescale is off
        with torch.no_grad():
            cos, sin = rope(torch.zeros(1, 3, 16 * h0, 16 * w0))
        io[f"dinov3.rope.cos.{h0}x{w0}"] = cos.contiguous()
        io[f"dinov3.rope.sin.{h0}x{w0}"] = sin.contiguous()
    return dirs


def presets_json(out: Path) -> None:
    """The converter's configurations, for the Rust side to compare with `VitConfig::by_name`."""
    names = list(convert_vit.PRESETS) + [
        "custom:family=dinov2,depth=2,dim=64,heads=2,patch=14,registers=4,pos_grid=37",
        "custom:family=clip,depth=2,dim=64,heads=2,patch=16,proj=32",
        "custom:family=dino,depth=1,dim=32,heads=1,patch=8,mlp=100,interp=size",
        "custom:family=dinov3,depth=2,dim=64,heads=2,patch=16",
        "custom:family=dinov3,depth=2,dim=64,heads=2,patch=16,registers=0,ffn=swiglu,mlp=96",
    ]
    (out / "presets.json").write_text(json.dumps({n: convert_vit.config_by_name(n) for n in names}, indent=1))


def module_tree(state: dict) -> torch.nn.Module:
    """A scriptable module whose state dict is `state` (to write an OpenAI-style TorchScript archive)."""

    class Root(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    root = Root()
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, torch.nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
    return root


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(1)
    io = {}
    imagenet = convert_vit.IMAGENET

    # ---------------------------------------------------------------- DINOv2 (HF layouts, hub layout, hub resize)
    sizes14 = [(224, 224), (378, 378), (224, 378)]
    model = T.Dinov2Model(T.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14,
                                         image_size=518, layer_norm_eps=1e-6)).eval()
    rerandomise(model, gen)
    (out / "dinov2_hf").mkdir(exist_ok=True)
    model.save_pretrained(out / "dinov2_hf")
    on_disk = convert(out / "dinov2_hf" / "model.safetensors", out / "dinov2.safetensors")
    torch.save(model.state_dict(), out / "dinov2_hf" / "pytorch_model.bin")
    in_memory = convert(out / "dinov2_hf" / "pytorch_model.bin", out / "dinov2_v5.safetensors")
    require_same("dinov2 4.x vs 5.x names", on_disk, in_memory)
    torch.save(hub_state(on_disk), out / "dinov2_hub.pth")
    require_same("dinov2 hub vs HF", on_disk, convert(out / "dinov2_hub.pth", out / "dinov2_hub.safetensors"))
    check_refusals(out, out / "dinov2.safetensors")
    pos = model.embeddings.position_embeddings.detach()
    for h0, w0 in [(16, 16), (27, 27), (16, 27), (37, 20), (37, 37), (4, 40)]:
        io[f"dinov2.pos.hub-offset.{h0}x{w0}"] = hub_interpolate(pos, h0 * 14, w0 * 14, 14, 0.1, False).clone()
        io[f"dinov2.pos.size.{h0}x{w0}"] = size_resize(pos, h0, w0, False).clone()
        io[f"dinov2.pos.size-antialias.{h0}x{w0}"] = size_resize(pos, h0, w0, True).clone()
    for h, w in sizes14:
        x = images(gen, 2, h, w)
        io[f"dinov2.images.{h}x{w}"] = x
        record(io, f"dinov2.size.{h}x{w}", features(model, normalise(x, *imagenet), model.layernorm, 1))
    use_hub_resize(model, 14, 0.1, False)
    for h, w in sizes14:
        x = io[f"dinov2.images.{h}x{w}"]
        record(io, f"dinov2.hub-offset.{h}x{w}", features(model, normalise(x, *imagenet), model.layernorm, 1))

    # ---------------------------------------------------------------- DINOv2 with registers
    model = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=518,
        num_register_tokens=4, layer_norm_eps=1e-6)).eval()
    rerandomise(model, gen)
    (out / "dinov2_reg_hf").mkdir(exist_ok=True)
    model.save_pretrained(out / "dinov2_reg_hf")
    convert(out / "dinov2_reg_hf" / "model.safetensors", out / "dinov2_reg.safetensors")
    for h, w in sizes14:
        x = images(gen, 2, h, w)
        io[f"dinov2_reg.images.{h}x{w}"] = x
        pixel_values = normalise(x, *imagenet)
        record(io, f"dinov2_reg.size-antialias.{h}x{w}", features(model, pixel_values, model.layernorm, 5))
        with torch.no_grad():  # last block's CLS→patch pre-softmax logits, from its own q and k
            hidden = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
            block = model.encoder.layer[-1]
            normed = block.norm1(hidden[-2])
            b, n, d = normed.shape
            q = block.attention.q_proj(normed).view(b, n, 2, d // 2).transpose(1, 2)
            k = block.attention.k_proj(normed).view(b, n, 2, d // 2).transpose(1, 2)
            io[f"dinov2_reg.attn_logits.{h}x{w}"] = ((q[:, :, :1] @ k[:, :, 5:].transpose(-1, -2))
                                                    * (d // 2) ** -0.5).squeeze(2).contiguous()
    use_hub_resize(model, 14, 0.0, True)
    for h, w in sizes14:
        x = io[f"dinov2_reg.images.{h}x{w}"]
        record(io, f"dinov2_reg.hub.{h}x{w}", features(model, normalise(x, *imagenet), model.layernorm, 5))

    # ---------------------------------------------------------------- DINOv1
    sizes16 = [(224, 224), (384, 384), (160, 320)]
    model = T.ViTModel(T.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                   patch_size=16, image_size=224, qkv_bias=True, layer_norm_eps=1e-6),
                       add_pooling_layer=False).eval()
    rerandomise(model, gen)
    (out / "dino_hf").mkdir(exist_ok=True)
    model.save_pretrained(out / "dino_hf")
    hf = convert(out / "dino_hf" / "model.safetensors", out / "dino.safetensors")
    torch.save(model.state_dict(), out / "dino_hf" / "pytorch_model.bin")
    require_same("dino 4.x vs 5.x names", hf, convert(out / "dino_hf" / "pytorch_model.bin", out / "dino_v5.safetensors"))
    heads = {"module.head.mlp.0.weight": torch.randn(32, 64), "module.head.last_layer.weight_g": torch.ones(1, 8)}
    ckpt = {"teacher": {"module.backbone." + k: v for k, v in hf.items()} | heads, "student": {}, "epoch": 3}
    torch.save(ckpt, out / "dino_checkpoint.pth")
    require_same("dino teacher checkpoint vs HF", hf, convert(out / "dino_checkpoint.pth", out / "dino_ckpt.safetensors"))
    for h, w in sizes16:
        x = images(gen, 2, h, w)
        io[f"dino.images.{h}x{w}"] = x
        record(io, f"dino.size.{h}x{w}", features(model, normalise(x, *imagenet), model.layernorm, 1,
                                                  interpolate_pos_encoding=True))
    use_hub_resize(model, 16, 0.1, False)
    for h, w in sizes16:
        x = io[f"dino.images.{h}x{w}"]
        record(io, f"dino.hub-offset.{h}x{w}", features(model, normalise(x, *imagenet), model.layernorm, 1,
                                                        interpolate_pos_encoding=True))

    # ---------------------------------------------------------------- MAE
    model = T.ViTMAEModel(T.ViTMAEConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=256, patch_size=16, image_size=224, qkv_bias=True,
                                         layer_norm_eps=1e-6, mask_ratio=0.0)).eval()
    rerandomise(model, gen)
    (out / "mae_hf").mkdir(exist_ok=True)
    model.save_pretrained(out / "mae_hf")
    hf = convert(out / "mae_hf" / "model.safetensors", out / "mae.safetensors")
    torch.save(model.state_dict(), out / "mae_hf" / "pytorch_model.bin")
    require_same("MAE 4.x vs 5.x names", hf, convert(out / "mae_hf" / "pytorch_model.bin", out / "mae_v5.safetensors"))
    official = {k: v for k, v in hf.items()}
    official["decoder_embed.weight"] = torch.randn(32, 64)
    official["mask_token"] = torch.randn(1, 1, 32)
    torch.save({"model": official, "epoch": 799}, out / "mae_pretrain.pth")
    require_same("MAE .pth vs HF", hf, convert(out / "mae_pretrain.pth", out / "mae_pth.safetensors"))
    for h, w in sizes16:
        x = images(gen, 2, h, w)
        io[f"mae.images.{h}x{w}"] = x
        noise = torch.arange((h // 16) * (w // 16), dtype=torch.float32).expand(2, -1)
        refs = features(model, normalise(x, *imagenet), model.layernorm, 1, noise=noise,
                        interpolate_pos_encoding=True)
        record(io, f"mae.size.{h}x{w}", refs)

    # ---------------------------------------------------------------- CLIP
    model = T.CLIPVisionModel(T.CLIPVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=256, patch_size=16, image_size=224)).eval()
    rerandomise(model, gen)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    proj = (0.1 * torch.randn(64, 32, generator=gen)).half().float()
    vision = model.state_dict()
    hf_dir = out / "clip_hf"
    hf_dir.mkdir(exist_ok=True)
    clip_model = {"vision_model." + k: v.contiguous() for k, v in vision.items()}
    clip_model |= {"visual_projection.weight": proj.t().contiguous(), "logit_scale": torch.tensor(4.6),
                   "text_projection.weight": torch.randn(32, 48), "text_model.final_layer_norm.weight": torch.ones(48)}
    save_file(clip_model, str(hf_dir / "model.safetensors"))
    (hf_dir / "config.json").write_text('{"model_type": "clip", "vision_config": {"num_attention_heads": 2}}')
    hf = convert(hf_dir / "model.safetensors", out / "clip.safetensors")
    openai = {"visual.class_embedding": vision["embeddings.class_embedding"],
              "visual.positional_embedding": vision["embeddings.position_embedding.weight"],
              "visual.conv1.weight": vision["embeddings.patch_embedding.weight"],
              "visual.ln_pre.weight": vision["pre_layrnorm.weight"], "visual.ln_pre.bias": vision["pre_layrnorm.bias"],
              "visual.ln_post.weight": vision["post_layernorm.weight"],
              "visual.ln_post.bias": vision["post_layernorm.bias"], "visual.proj": proj,
              "positional_embedding": torch.randn(77, 48), "logit_scale": torch.tensor(4.6)}
    for i in range(2):
        src, dst = f"encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        openai[dst + "attn.in_proj_weight"] = torch.cat([vision[src + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        openai[dst + "attn.in_proj_bias"] = torch.cat([vision[src + f"self_attn.{p}_proj.bias"] for p in "qkv"])
        for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            openai[f"{dst}{a}.weight"] = vision[f"{src}{b}.weight"]
            openai[f"{dst}{a}.bias"] = vision[f"{src}{b}.bias"]
    torch.jit.script(module_tree({k: v.half() for k, v in openai.items()})).save(str(out / "ViT-tiny.pt"))
    require_same("CLIP OpenAI vs HF", hf, convert(
        out / "ViT-tiny.pt", out / "clip_openai.safetensors", "--name",
        "custom:family=clip,depth=2,dim=64,heads=2,patch=16,proj=32"))
    for h, w in sizes16:
        x = images(gen, 2, h, w)
        io[f"clip.images.{h}x{w}"] = x
        pixel_values = normalise(x, *convert_vit.CLIP_STATS)
        refs = features(model, pixel_values, model.post_layernorm, 1, interpolate_pos_encoding=True)
        record(io, f"clip.size.{h}x{w}", refs)
        with torch.no_grad():
            pooled = model(pixel_values=pixel_values, interpolate_pos_encoding=True).pooler_output
        io[f"clip.size.{h}x{w}.pooled"] = pooled.contiguous()
        io[f"clip.size.{h}x{w}.projected"] = (pooled @ proj).contiguous()

    # ---------------------------------------------------------------- ViT-B/14 widths
    model = T.Dinov2Model(T.Dinov2Config(hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                                         patch_size=14, image_size=518, layer_norm_eps=1e-6)).eval()
    rerandomise(model, gen)
    (out / "vitb14_hf").mkdir(exist_ok=True)
    model.save_pretrained(out / "vitb14_hf")
    convert(out / "vitb14_hf" / "model.safetensors", out / "vitb14.safetensors")
    use_hub_resize(model, 14, 0.1, False)
    x = images(gen, 1, 224, 224)
    io["vitb14.images.224x224"] = x
    record(io, "vitb14.hub-offset.224x224", features(model, normalise(x, *imagenet), model.layernorm, 1))

    # ---------------------------------------------------------------- DINOv3
    dinov3_dirs = dinov3_fixtures(out, io, gen)
    presets_json(out)

    save_file(io, str(out / "io.safetensors"))
    for stale in ["dinov2_hub.pth", "dino_checkpoint.pth", "mae_pretrain.pth", "ViT-tiny.pt"]:
        (out / stale).unlink()
    for d in [out / n for n in ["dinov2_hf", "dinov2_reg_hf", "dino_hf", "mae_hf", "clip_hf", "vitb14_hf"]] + dinov3_dirs:
        for f in d.iterdir():
            f.unlink()
        d.rmdir()
    print(f"vit fixtures written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
