"""Reference for `mrdino segment`: a PyTorch re-statement of Talk2DINO's whole inference on one fixed image, with
a random DINOv2-with-registers backbone (transformers' Dinov2WithRegistersModel = hub `_reg`, width 64, 2 heads,
2 blocks, patch 14, 4 registers), a random CLIP text tower (CLIPTextModelWithProjection, width 64, 2 layers,
output 512) and a random ψ (Linear 512→64, tanh, Linear 64→64), every parameter re-randomised by the ViT and CLIP
parity fixtures' own helpers and converted by the repository's converters.

Pipeline re-stated (Talk2DINO `demo.py` / `models/dinotext`): class embeddings = the 7 templates tokenised by
open_clip (= `clip.tokenize`), encoded, averaged over the templates, ψ, L2-normalised; the image as a float
tensor of 0..255 values through torchvision `Resize((448, 448))` (bilinear, antialias; not rounded), /255,
ImageNet normalisation; the last block's patch
tokens after the final LayerNorm (registers and CLS dropped); cosine to every class; sigmoid; optionally the
background cleaning (λ = 0.2) from the last block's pre-softmax CLS→patch logits (q·k·0.125 recomputed from the
block's own projections); bilinear upsampling with align_corners=True to the image size; a constant background
channel; argmax.

Usage: talk2dino_segment_fixtures.py OUT_DIR
Writes OUT_DIR/frames/scene/000000.png (the image, as a `frames` dataset), OUT_DIR/{backbone,text,psi}.safetensors
and OUT_DIR/io.safetensors (labels_plain, labels_clean as (H, W) int64, the top-2 margins, the soft masks) with the
thresholds and prompts in its metadata and in OUT_DIR/meta.json.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers as T
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode, Resize

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import clip_text_fixtures  # noqa: E402 - their re-randomisation and the CLIP converter, in-process
import talk2dino_fixtures  # noqa: E402 - the background-cleaning re-statement
import vit_fixtures  # noqa: E402 - their re-randomisation and the ViT converter

from open_clip.tokenizer import tokenize  # noqa: E402

PROMPTS = ["car", "person", "tree", "road"]
HEIGHT, WIDTH = 150, 230
REGISTERS = 4


def image(gen):
    """A fixed image with structure at several scales: a smooth random field plus a few flat rectangles."""
    coarse = torch.rand(1, 3, 6, 9, generator=gen) * 255
    x = F.interpolate(coarse, (HEIGHT, WIDTH), mode="bicubic", align_corners=False)
    x = x + 25 * torch.randn(1, 3, HEIGHT, WIDTH, generator=gen)
    for top, left, h, w, colour in ((20, 30, 40, 60, (230, 40, 40)), (90, 140, 45, 70, (30, 200, 60)),
                                   (10, 170, 30, 40, (20, 20, 220))):
        x[0, :, top:top + h, left:left + w] = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1)
    return x.round().clamp(0, 255).to(torch.uint8)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(29)

    vit = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=518,
        num_register_tokens=REGISTERS, layer_norm_eps=1e-6)).eval()
    vit_fixtures.rerandomise(vit, gen)
    vit.save_pretrained(out / "vit_hf")
    vit_fixtures.convert(out / "vit_hf" / "model.safetensors", out / "backbone.safetensors")

    text = T.CLIPTextModelWithProjection(T.CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=256, projection_dim=512, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1)).eval()
    clip_text_fixtures.rerandomise(text, gen)
    text.save_pretrained(out / "text_hf")
    clip_text_fixtures.convert(out / "text_hf" / "model.safetensors", out / "text.safetensors")

    d = 64
    psi = {"linear_layer.weight": 0.05 * torch.randn(d, 512, generator=gen),
           "linear_layer.bias": 0.1 * torch.randn(d, generator=gen),
           "hidden_layers.0.weight": 0.2 * torch.randn(d, d, generator=gen),
           "hidden_layers.0.bias": 0.1 * torch.randn(d, generator=gen)}
    save_file(psi, str(out / "psi.safetensors"))

    templates = clip_text_fixtures.TEMPLATES
    with torch.no_grad():
        ids = tokenize([t.format(p) for p in PROMPTS for t in templates], context_length=77)
        per_template = text(input_ids=ids).text_embeds.reshape(len(PROMPTS), len(templates), 512)
        classes = F.normalize(talk2dino_fixtures.psi(per_template.mean(dim=1), psi), dim=-1)

        img = image(gen)
        frames = out / "frames" / "scene"
        frames.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].permute(1, 2, 0).numpy()).save(frames / "000000.png")
        # generate_masks resizes the float image (`read_image(...).float()`) and never rounds the result.
        resized = Resize((448, 448), interpolation=InterpolationMode.BILINEAR, antialias=True)(img.float())
        pixel_values = vit_fixtures.normalise(resized / 255.0, *vit_fixtures.convert_vit.IMAGENET)
        result = vit(pixel_values=pixel_values, output_hidden_states=True)
        tokens = result.last_hidden_state
        g = 448 // 14
        patches = tokens[:, 1 + REGISTERS:]
        feat = patches.reshape(1, g, g, d).permute(0, 3, 1, 2)
        soft = torch.sigmoid(torch.einsum("bchw,nc->bnhw", F.normalize(feat, dim=1), classes))

        block = vit.encoder.layer[-1]
        normed = block.norm1(result.hidden_states[-2])
        heads = 2
        q = block.attention.q_proj(normed).view(1, -1, heads, d // heads).transpose(1, 2)
        k = block.attention.k_proj(normed).view(1, -1, heads, d // heads).transpose(1, 2)
        attn = ((q[:, :, :1] @ k[:, :, 1 + REGISTERS:].transpose(-1, -2)) * 0.125).squeeze(2)
        cleaned = talk2dino_fixtures.clean(soft, feat, attn, classes, 0.2)

        io, meta = {}, {"prompts": json.dumps(PROMPTS)}
        for name, masks in (("plain", soft), ("clean", cleaned)):
            up = F.interpolate(masks, (HEIGHT, WIDTH), mode="bilinear", align_corners=True)
            # A threshold that leaves roughly a third of the pixels to the background, so the test sees both.
            threshold = float(np.round(torch.quantile(up.max(dim=1).values.flatten(), 1 / 3).item(), 4))
            bg = torch.full((1, 1, HEIGHT, WIDTH), threshold)
            top2 = torch.cat([bg, up], dim=1).topk(2, dim=1).values
            io[f"labels_{name}"] = torch.cat([bg, up], dim=1).argmax(dim=1)[0].contiguous()
            io[f"margin_{name}"] = (top2[0, 0] - top2[0, 1]).contiguous()
            io[f"soft_{name}"] = masks.contiguous()
            meta[f"threshold_{name}"] = repr(threshold)
        io["classes"] = classes.contiguous()
        io["image"] = img.contiguous()
    save_file(io, str(out / "io.safetensors"), metadata=meta)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    for d_ in ("vit_hf", "text_hf"):
        for f in (out / d_).iterdir():
            f.unlink()
        (out / d_).rmdir()
    print(f"talk2dino segment fixtures written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
