"""Reference for mrdino_model::clip_text: transformers CLIPTextModelWithProjection with every parameter
re-randomised (LayerNorm weights and biases, every bias, both embeddings, the projection), on real token ids
from open_clip's SimpleTokenizer (= `clip.tokenize`), on CPU in float32.

Models: `tiny` (width 64, 2 layers, 2 heads, MLP 256, output 512) and `base2` (ViT-B/16's real widths 512 / MLP
2048 / 8 heads / output 512, 2 layers); both with 77 positions, 49,408 ids and `eos_token_id=49407`, so HF pools
at the first 49407, which is OpenAI's argmax rule. Each is saved with `save_pretrained` and converted with
tools/convert_clip_text.py. The tiny one's weights are also written in OpenAI's layout (in_proj = cat(q, k, v),
text_projection transposed, plus `visual.*`, `logit_scale` and the integer entries the real archive has) as a
TorchScript archive, as a plain state dict and as an fp16 TorchScript archive (as OpenAI ships it), all
converted; and loaded strictly into open_clip's TextTransformer with QuickGELU (OpenAI's architecture,
additive −inf causal mask) for a second reference.

The class-embedding chain: 3 classes × the 7 Talk2DINO templates, tokenised, encoded by `tiny`, averaged over
the templates, ψ (Linear 512→48, tanh, Linear 48→48, random) and L2-normalised.

Usage: clip_text_fixtures.py OUT_DIR
Writes OUT_DIR/{tiny,tiny_openai_ts,tiny_openai_plain,tiny_openai_fp16,base2,psi}.safetensors,
OUT_DIR/io.safetensors and OUT_DIR/refusals.json.
"""
import contextlib
import io
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from open_clip.tokenizer import tokenize
from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer

TOOL = Path(__file__).resolve().parents[1] / "convert_clip_text.py"
TEMPLATES = ["itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
             "a {} in a video game.", "art of the {}.", "a photo of the small {}."]
CLASSES = ["car", "traffic light", "person riding a bicycle"]
# Three sequences: 3 ids, 10 ids, and one truncated to the full 77.
TEXTS = ["car", "a photo of a car, parked.", " ".join(["pedestrians crossing the street at night"] * 20)]
SIZES = {"tiny": (64, 256, 2, 2), "base2": (512, 2048, 2, 8)}  # width, mlp, layers, heads


def rerandomise(model, g):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embedding" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[1] ** -0.5)


def openai_layout(sd, layers):
    """OpenAI CLIP's key names for the HF text tower's tensors."""
    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"],
           "text_projection": sd["text_projection.weight"].t()}
    for i in range(layers):
        h, o = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[o + "attn.in_proj_" + kind] = torch.cat([sd[h + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[o + "attn.out_proj." + kind] = sd[h + "self_attn.out_proj." + kind]
            out[o + "ln_1." + kind] = sd[h + "layer_norm1." + kind]
            out[o + "ln_2." + kind] = sd[h + "layer_norm2." + kind]
            out[o + "mlp.c_fc." + kind] = sd[h + "mlp.fc1." + kind]
            out[o + "mlp.c_proj." + kind] = sd[h + "mlp.fc2." + kind]
    return {k: v.contiguous().clone() for k, v in out.items()}


def torchscript_archive(state, path):
    """A TorchScript archive whose state_dict() is `state` (nested modules named after the dotted keys)."""
    root = nn.Module()
    for key, value in state.items():
        *mods, leaf = key.split(".")
        m = root
        for name in mods:
            if name not in m._modules:
                m.add_module(name, nn.Module())
            m = m._modules[name]
        if value.is_floating_point():
            m.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            m.register_buffer(leaf, value.clone())
    torch.jit.script(root).save(str(path))


sys.path.insert(0, str(TOOL.parent))
import convert_clip_text  # noqa: E402 - the tool under test, run in-process (one torch import, not five)


def convert(src, dst, *args):
    """tools/convert_clip_text.py's command line, in this interpreter."""
    with contextlib.redirect_stdout(io.StringIO()):
        status = convert_clip_text.main([str(src), str(dst), *args])
    if status != 0:
        raise SystemExit(f"convert_clip_text.py {src} {dst} {' '.join(args)} failed")


def refusals(out, openai, hf):
    """The converter's messages for state dicts with an unknown or a missing key, in both layouts."""
    cases = {
        "openai_unknown": openai | {"transformer.resblocks.1.attn.extra": torch.zeros(3)},
        "openai_missing": {k: v for k, v in openai.items() if k != "ln_final.bias"},
        "hf_unknown": hf | {"text_model.encoder.layers.0.self_attn.rotary.weight": torch.zeros(3)},
        "hf_missing": {k: v for k, v in hf.items() if k != "text_model.encoder.layers.1.self_attn.k_proj.weight"},
    }
    messages = {}
    for name, state in cases.items():
        src = out / "bad" / f"{name}.safetensors"
        src.parent.mkdir(exist_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(src))
        try:
            convert_clip_text.convert(src, out / "bad" / f"{name}.out.safetensors", heads=2)
            messages[name] = ""
        except convert_clip_text.ConversionError as e:
            messages[name] = str(e)
    (out / "refusals.json").write_text(json.dumps(messages, indent=1, sort_keys=True))


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(23)
    ids = tokenize(TEXTS, context_length=77)
    lengths = [int((row != 0).sum()) for row in ids]
    assert lengths == [3, 10, 77], lengths
    fixtures = {"ids": ids}
    models = {}
    for name, (width, mlp, layers, heads) in SIZES.items():
        config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=mlp, projection_dim=512,
                                num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                                hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=49406,
                                eos_token_id=49407, pad_token_id=1)
        model = CLIPTextModelWithProjection(config).eval()
        rerandomise(model, g)
        models[name] = model
        with torch.no_grad():
            fixtures[f"{name}.text_embeds"] = model(input_ids=ids).text_embeds.contiguous()
        hf_dir = out / f"hf_{name}"
        model.save_pretrained(str(hf_dir))
        convert(hf_dir / "model.safetensors", out / f"{name}.safetensors")
        if name == "base2":  # 100 MB; the converted copy is what the test reads
            (hf_dir / "model.safetensors").unlink()

    # The tiny model in OpenAI's layout, and open_clip's OpenAI-architecture text tower on it.
    sd = {k: v.detach() for k, v in models["tiny"].state_dict().items()}
    openai = openai_layout(sd, SIZES["tiny"][2])
    text = TextTransformer(context_length=77, vocab_size=49408, width=64, heads=2, layers=2, output_dim=512,
                           act_layer=QuickGELU, norm_layer=LayerNorm).eval()
    text.load_state_dict(openai, strict=True)
    with torch.no_grad():
        fixtures["tiny.open_clip"] = text(ids).contiguous()
    full = dict(openai)
    full |= {"visual.conv1.weight": torch.randn(8, 3, 4, 4, generator=g), "visual.proj": torch.randn(8, 4, generator=g),
             "logit_scale": torch.tensor(4.6052), "input_resolution": torch.tensor(224),
             "context_length": torch.tensor(77), "vocab_size": torch.tensor(49408)}
    torchscript_archive(full, out / "openai_tiny.pt")
    torch.save(full, out / "openai_tiny_plain.pt")
    # OpenAI files do not record the heads (every OpenAI tower has width/64); the tiny one needs --heads.
    convert(out / "openai_tiny.pt", out / "tiny_openai_ts.safetensors", "--heads", "2")
    convert(out / "openai_tiny_plain.pt", out / "tiny_openai_plain.safetensors", "--heads", "2")
    # The real archive holds fp16 weights: the converter must widen them to float32 unchanged.
    torchscript_archive({k: v.half() if v.is_floating_point() else v for k, v in full.items()},
                        out / "openai_tiny_fp16.pt")
    convert(out / "openai_tiny_fp16.pt", out / "tiny_openai_fp16.safetensors", "--heads", "2")
    refusals(out, full, {k: v.contiguous() for k, v in sd.items()})

    # Class embeddings: templates → tokenizer → text tower → mean over templates → ψ → normalise.
    d = 48
    psi = {"linear_layer.weight": 0.05 * torch.randn(d, 512, generator=g),
           "linear_layer.bias": 0.1 * torch.randn(d, generator=g),
           "hidden_layers.0.weight": 0.2 * torch.randn(d, d, generator=g),
           "hidden_layers.0.bias": 0.1 * torch.randn(d, generator=g)}
    save_file(psi, str(out / "psi.safetensors"))
    prompts = [t.format(c) for c in CLASSES for t in TEMPLATES]
    chain_ids = tokenize(prompts, context_length=77)
    with torch.no_grad():
        per_template = models["tiny"](input_ids=chain_ids).text_embeds.reshape(len(CLASSES), len(TEMPLATES), 512)
        mean = per_template.mean(dim=1)
        mapped = F.linear(torch.tanh(F.linear(mean, psi["linear_layer.weight"], psi["linear_layer.bias"])),
                          psi["hidden_layers.0.weight"], psi["hidden_layers.0.bias"])
        classes = F.normalize(mapped, dim=-1)
    fixtures |= {"chain.ids": chain_ids, "chain.per_template": per_template.contiguous(), "chain.mean": mean,
           "chain.classes": classes.contiguous()}
    save_file(fixtures, str(out / "io.safetensors"),
              metadata={"texts": json.dumps(TEXTS), "classes": json.dumps(CLASSES), "templates": json.dumps(TEMPLATES)})


if __name__ == "__main__":
    main()
