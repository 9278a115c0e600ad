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
  hub resize (MR-DINOSAUR's setting).

`io.safetensors` holds per model `<model>.images.<H>x<W>` ([0,1] RGB, B×3×H×W) and the references
`<model>.<mode>.<H>x<W>.{patches,cls,registers}` (patches after the final LayerNorm, CLS and registers
dropped), `<model>.<mode>.<H>x<W>.layer0` (block 0, normed), position embeddings
`<model>.pos.<mode>.<h0>x<w0>` and `dinov2_reg.attn_logits.<H>x<W>`. The script also checks that the
converter refuses a missing key, an unknown key and a wrong shape, naming the key and the shapes.
"""

import contextlib
from io import StringIO
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
    """(patches of the last block, CLS, registers, patches of block 0), all after `final_norm`."""
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
    return last[:, skip:], last[:, 0], last[:, 1:skip], first[:, skip:]


def record(io, prefix, refs):
    patches, cls, registers, layer0 = refs
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

    save_file(io, str(out / "io.safetensors"))
    for stale in ["dinov2_hub.pth", "dino_checkpoint.pth", "mae_pretrain.pth", "ViT-tiny.pt"]:
        (out / stale).unlink()
    for d in ["dinov2_hf", "dinov2_reg_hf", "dino_hf", "mae_hf", "clip_hf", "vitb14_hf"]:
        for f in (out / d).iterdir():
            f.unlink()
        (out / d).rmdir()
    print(f"vit fixtures written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
