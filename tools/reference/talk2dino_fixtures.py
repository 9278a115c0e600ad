"""Reference for mrdino_model::talk2dino: a PyTorch re-statement of Talk2DINO's inference (ψ, template-averaged
class embeddings, cosine similarity maps, sigmoid, background cleaning with λ = 0.2, bilinear upsampling with
align_corners=True, background threshold, argmax) on random tensors, with ψ saved in Talk2DINO's old `.pth`
layout (`linear_layer2`) and converted with tools/convert_talk2dino.py.

Also a random ψ in the layout of Talk2DINO's DINOv3 release `weights/dinov3_vitb_mlp_infonce.pth`: the state dict of
its `ProjectionLayer` (linear_layer 512→768, hidden_layers = ModuleList([Linear 768→768]), so an OrderedDict with
`_metadata`), `torch.save`d into an archive named `DINOv3_vitb_mlp_infonce_448/` holding only the records the release
holds (data.pkl, data/0..3, version); converted once under the release's file name and once under a neutral name
(the variant then comes from the archive name), with ψ of random text embeddings as the reference. The converter
must refuse a variant whose width is not the file's.

Usage: talk2dino_fixtures.py OUT_DIR
"""
import subprocess
import sys
import zipfile
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


class ProjectionLayer(torch.nn.Module):
    """The parameter layout of Talk2DINO's `src/model.py` ProjectionLayer with act tanh and one hidden layer."""

    def __init__(self, d):
        super().__init__()
        self.linear_layer = torch.nn.Linear(512, d)
        self.hidden_layers = torch.nn.ModuleList([torch.nn.Linear(d, d)])


def save_release_layout(state_dict, path: Path, archive: str) -> None:
    """`torch.save` under the archive name of the released file, keeping only the records the release has."""
    tmp = path.parent / f"{archive}.pth"
    torch.save(state_dict, tmp)
    with zipfile.ZipFile(tmp) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            record = info.filename.split("/", 1)[1]
            if record in ("data.pkl", "version") or record.startswith("data/"):
                dst.writestr(info, src.read(info))
    tmp.unlink()


def dinov3_release(out: Path, tool: Path, g) -> dict:
    d = 768
    layer = ProjectionLayer(d)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_((0.1 if name.endswith("bias") else 0.05) * torch.randn(*p.shape, generator=g))
    state = layer.state_dict()
    save_release_layout(state, out / "dinov3_vitb_mlp_infonce.pth", "DINOv3_vitb_mlp_infonce_448")
    (out / "release.pth").write_bytes((out / "dinov3_vitb_mlp_infonce.pth").read_bytes())
    with zipfile.ZipFile(out / "release.pth") as z:
        records = sorted(n.split("/", 1)[1] for n in z.namelist())
    if records != ["data.pkl", "data/0", "data/1", "data/2", "data/3", "version"]:
        raise SystemExit(f"release layout not reproduced: {records}")
    sys.path.insert(0, str(tool.parent))
    import convert_talk2dino  # in-process: a subprocess per conversion would import torch each time
    for src, dst in (("dinov3_vitb_mlp_infonce.pth", "psi_dinov3.safetensors"),
                     ("release.pth", "psi_dinov3_by_archive.safetensors")):
        convert_talk2dino.main([str(out / src), str(out / dst)])
    try:
        convert_talk2dino.main([str(out / "release.pth"), str(out / "refused.safetensors"),
                                "--variant", "dinov3_vitl_mlp_infonce"])
        refused = None
    except SystemExit as e:
        refused = str(e.code)
    if refused is None or "1024" not in refused:
        raise SystemExit(f"the converter accepted a ViT-L variant for a 768-wide ψ ({refused})")
    text = torch.randn(3, 7, 512, generator=g)
    with torch.no_grad():
        mapped = psi(text, state)
        classes = F.normalize(psi(text.mean(dim=1), state), dim=-1)
    # Files whose recorded variant is unknown, or does not fit the tensors, for the loader's refusals.
    small = {"linear_layer.weight": torch.zeros(48, 512), "linear_layer.bias": torch.zeros(48),
             "hidden_layers.0.weight": torch.zeros(48, 48), "hidden_layers.0.bias": torch.zeros(48)}
    save_file(small, str(out / "psi_unknown_variant.safetensors"), metadata={"talk2dino.proj_name": "vith_mlp_infonce"})
    save_file(small, str(out / "psi_wrong_width.safetensors"),
              metadata={"talk2dino.proj_name": "dinov3_vitb_mlp_infonce"})
    return {"dinov3_text": text, "dinov3_psi": mapped.contiguous(), "dinov3_classes": classes.contiguous()}


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
               "up_plain": labels["plain_up"].contiguous(), "up_clean": labels["clean_up"].contiguous(),
               **dinov3_release(out, tool, g)},
              str(out / "io.safetensors"))


if __name__ == "__main__":
    main()
