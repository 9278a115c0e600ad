"""Reference for mrdino_model::talk2dino: a PyTorch re-statement of Talk2DINO's inference (ψ, template-averaged
class embeddings, cosine similarity maps, sigmoid, background cleaning with λ = 0.2, bilinear upsampling with
align_corners=True, background threshold, argmax) on random tensors, with ψ saved in Talk2DINO's old `.pth`
layout (`linear_layer2`) and converted with tools/convert_talk2dino.py.

Usage: talk2dino_fixtures.py OUT_DIR
"""
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


def psi(t, sd):
    return F.linear(torch.tanh(F.linear(t, sd["linear_layer.weight"], sd["linear_layer.bias"])),
                    sd["hidden_layers.0.weight"], sd["hidden_layers.0.bias"])


def clean(mask, feat, attn, text, lam):
    # mask (1, N, h, w); feat (1, C, h, w) raw patch tokens; attn (1, M, P) logits; text (N, C)
    bs, c, h, w = feat.shape
    _, n, _, _ = mask.shape
    m = attn.shape[1]
    feat = feat.reshape(bs, c, h * w)
    head = (attn.unsqueeze(2) * feat.unsqueeze(1)).mean(dim=-1)
    head = head / head.norm(dim=-1, keepdim=True)
    sim = (text.unsqueeze(0) @ head.permute(0, 2, 1)).softmax(dim=-1)  # (1, N, M)
    total = sim.sum(dim=-1)
    per_class = (attn.unsqueeze(1).repeat(1, n, 1, 1) * sim.unsqueeze(-1).repeat(1, 1, 1, h * w)).sum(dim=2)
    per_class = (per_class / total.unsqueeze(-1).repeat(1, 1, h * w)).softmax(dim=-1)
    lo, hi = per_class.min().item(), per_class.max().item()
    hi = max(hi, hi - lo)
    per_class = (per_class - lo) / hi * (mask.max() - mask.min()) + mask.min()
    return (mask.reshape(n, h * w) + lam * per_class).reshape(bs, n, h, w) / (1 + lam)


def main():
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(11)
    d, n_cls, templates, h, w, heads = 48, 4, 7, 9, 7, 4
    sd = {"linear_layer.weight": 0.05 * torch.randn(d, 512, generator=g),
          "linear_layer.bias": 0.1 * torch.randn(d, generator=g),
          "linear_layer2.weight": 0.2 * torch.randn(d, d, generator=g),
          "linear_layer2.bias": 0.1 * torch.randn(d, generator=g)}
    torch.save(sd, out / "psi_old.pth")
    tool = Path(__file__).resolve().parents[1] / "convert_talk2dino.py"
    subprocess.run([sys.executable, str(tool), str(out / "psi_old.pth"), str(out / "psi.safetensors")], check=True)
    sd = {k.replace("linear_layer2", "hidden_layers.0"): v for k, v in sd.items()}
    clip_text = torch.randn(n_cls, templates, 512, generator=g)
    classes = F.normalize(psi(clip_text.mean(dim=1), sd), dim=-1)
    patches = torch.randn(1, h * w, d, generator=g) * 2.0
    attn = torch.randn(1, heads, h * w, generator=g) * 3.0
    feat = patches.reshape(1, h, w, d).permute(0, 3, 1, 2)
    simmap = torch.einsum("bchw,nc->bnhw", F.normalize(feat, dim=1), classes)
    soft = torch.sigmoid(simmap)
    cleaned = clean(soft, feat, attn, classes, 0.2)
    size = (37, 29)
    labels = {}
    for name, m in (("plain", soft), ("clean", cleaned)):
        up = F.interpolate(m, size, mode="bilinear", align_corners=True)
        bg = torch.full((1, 1, *size), 0.55)
        labels[name] = torch.cat([bg, up], dim=1).argmax(dim=1)
        labels[name + "_up"] = up
    save_file({"clip_text": clip_text, "classes": classes.contiguous(), "patches": patches, "attn": attn,
               "simmap": simmap.contiguous(), "soft": soft.contiguous(), "cleaned": cleaned.contiguous(),
               "labels_plain": labels["plain"], "labels_clean": labels["clean"],
               "up_plain": labels["plain_up"].contiguous(), "up_clean": labels["clean_up"].contiguous()},
              str(out / "io.safetensors"))


if __name__ == "__main__":
    main()
