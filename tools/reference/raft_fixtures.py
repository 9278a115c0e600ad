#!/usr/bin/env python3
"""Reference fixtures for `stages/tests/raft_parity.rs`: random RAFT weights, frame pairs and expected flows.

Usage: raft_fixtures.py OUTDIR

Writes into OUTDIR (all generated, nothing downloaded):
- `raft_small.safetensors`, `raft_large.safetensors`: torchvision `raft_small` / `raft_large` built with
  `weights=None`, every parameter and buffer re-randomised (conv weights jittered, biases and BatchNorm
  affine/statistics drawn away from their 0/1 defaults) so a mapping bug cannot hide, saved as `.pth` and
  converted by `tools/convert_raft.py`;
- `princeton.safetensors`: another raft_large whose state dict is written in princeton-vl layout (inverse of
  the rename table, `module.` prefix, duplicated `norm3` entries, `num_batches_tracked`), converted back; the
  script checks the conversion restores every tensor bit-exactly (and does the same round trip for the
  raft_small weights in princeton's small layout, `princeton_small.safetensors`);
- `smurf.safetensors`: a SMURF-layout model, i.e. raft_large whose context encoder uses InstanceNorm2d
  without affine and whose correlation lookup orders each level's window y-major (Δy outer), as TF SMURF and
  its PyTorch port do; saved as a `.pt` with SMURF's key set and converted (convcorr1 transposed to x-major);
- `io.safetensors`: uint8 RGB pairs `a.img1`/`a.img2` (3×128×160×3) and `b.img1`/`b.img2` (2×131×165×3), and
  per model `<model>.a.flow` / `<model>.b.flow` (B×2×H×W float32), the last-iteration flow of the reference
  at the file's default iterations. Inputs are mapped to 2·(x/255) − 1; the 131×165 pair is padded like
  princeton's InputPadder (replicate, odd pixel bottom/right) and the reference output cropped back.
"""

import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.models.optical_flow import raft_large, raft_small
from torchvision.models.optical_flow._utils import grid_sample
from torchvision.models.optical_flow.raft import CorrBlock, FeatureEncoder, ResidualBlock

TOOLS = Path(__file__).resolve().parent.parent
ITERATIONS = {"raft_small": 12, "raft_large": 12, "princeton": 20, "smurf": 12}


class YMajorCorrBlock(CorrBlock):
    """CorrBlock whose window is enumerated with Δy as the outer index, like TF SMURF (`tf.meshgrid` 'xy')."""

    def index_pyramid(self, centroids_coords):
        side = 2 * self.radius + 1
        d = torch.linspace(-self.radius, self.radius, side)
        outer, inner = torch.meshgrid(d, d, indexing="ij")
        # (x, y) = (inner, outer): the outer index moves y.
        delta = torch.stack([inner, outer], dim=-1).view(1, side, side, 2)
        b, _, h, w = centroids_coords.shape
        centre = centroids_coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        features = []
        for volume in self.corr_pyramid:
            sampled = grid_sample(volume, centre + delta, align_corners=True, mode="bilinear")
            features.append(sampled.view(b, h, w, -1))
            centre = centre / 2
        return torch.cat(features, dim=-1).permute(0, 3, 1, 2).contiguous()


def rerandomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.05)
            elif p.dim() == 1:  # BatchNorm weight
                p.uniform_(0.5, 1.5)
            else:
                p.mul_(torch.empty_like(p).uniform_(0.8, 1.2))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(1234)


def princeton_layout(state: dict, small: bool = False) -> dict:
    """Inverse of the princeton → torchvision rename, with the artefacts of the real checkpoints.

    Princeton's small model has a single ConvGRU whose convs carry no step digit (`gru.convz`)."""
    gru = r"update_block.gru.conv\2." if small else r"update_block.gru.conv\2\1."
    rules = [
        (r"^(feature|context)_encoder\.convnormrelu\.0\.", r"\1_encoder.conv1."),
        (r"^(feature|context)_encoder\.convnormrelu\.1\.", r"\1_encoder.norm1."),
        (r"^(feature|context)_encoder\.conv\.", r"\1_encoder.conv2."),
        (r"^((?:feature|context)_encoder\.layer\d\.\d\.)convnormrelu(\d)\.0\.", r"\1conv\2."),
        (r"^((?:feature|context)_encoder\.layer\d\.\d\.)convnormrelu(\d)\.1\.", r"\1norm\2."),
        (r"^feature_encoder\.", "fnet."),
        (r"^context_encoder\.", "cnet."),
        (r"^update_block\.motion_encoder\.convcorr(\d)\.0\.", r"update_block.encoder.convc\1."),
        (r"^update_block\.motion_encoder\.convflow(\d)\.0\.", r"update_block.encoder.convf\1."),
        (r"^update_block\.motion_encoder\.conv\.0\.", "update_block.encoder.conv."),
        (r"^update_block\.recurrent_block\.convgru(\d)\.conv([zrq])\.", gru),
        (r"^mask_predictor\.convrelu\.0\.", "update_block.mask.0."),
        (r"^mask_predictor\.conv\.", "update_block.mask.2."),
    ]
    out = {}
    for key, value in state.items():
        new = key
        for pattern, replacement in rules:
            new = re.sub(pattern, replacement, new)
        out["module." + new] = value
        m = re.match(r"^(cnet\.layer\d\.0\.)downsample\.1\.(.*)$", new)
        if m:  # princeton registers the downsample norm a second time as norm3
            out[f"module.{m.group(1)}norm3.{m.group(2)}"] = value
    return out


def check_princeton_roundtrip(model: torch.nn.Module, out: Path, name: str, small: bool) -> None:
    """Writes `model` in princeton layout, converts it back and requires every tensor to be restored exactly."""
    torch.save(princeton_layout(model.state_dict(), small), out / f"{name}.pth")
    convert(out / f"{name}.pth", out / f"{name}.safetensors")
    back = load_file(str(out / f"{name}.safetensors"))
    want = comparable(model.state_dict())
    if set(back) != set(want) or any(not torch.equal(back[k], want[k]) for k in want):
        raise SystemExit(f"{name}: princeton → torchvision conversion does not restore the original tensors")
    (out / f"{name}.pth").unlink()


def convert(src: Path, dst: Path) -> None:
    subprocess.run([sys.executable, str(TOOLS / "convert_raft.py"), str(src), str(dst)], check=True,
                   stdout=subprocess.DEVNULL)


def comparable(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def make_pairs(batch: int, h: int, w: int, gen: torch.Generator):
    """Smooth random textures; frame 2 is frame 1 shifted by a few pixels, plus noise, as uint8 (B, H, W, 3)."""
    base = torch.rand(batch, 3, h // 6 + 4, w // 6 + 4, generator=gen)
    big = F.interpolate(base, size=(h + 16, w + 16), mode="bicubic", align_corners=False)
    big = (big - big.amin()) / (big.amax() - big.amin()) * 255.0
    img1 = big[:, :, 8:8 + h, 8:8 + w]
    img2 = big[:, :, 5:5 + h, 10:10 + w] + torch.randn(batch, 3, h, w, generator=gen) * 4.0
    as_u8 = lambda x: x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return as_u8(img1), as_u8(img2)


def reference_flow(model, img1_u8, img2_u8, iterations):
    """Last-iteration flow with princeton InputPadder padding and cropping."""
    to_input = lambda x: 2.0 * (x.permute(0, 3, 1, 2).float() / 255.0) - 1.0
    a, b = to_input(img1_u8), to_input(img2_u8)
    h, w = a.shape[-2:]
    pad_h, pad_w = (8 - h % 8) % 8, (8 - w % 8) % 8
    pad = [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2]
    a, b = F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate")
    with torch.no_grad():
        flow = model(a, b, num_flow_updates=iterations)[-1]
    return flow[:, :, pad[2]:pad[2] + h, pad[0]:pad[0] + w].contiguous()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(2)

    models = {}
    small = raft_small(weights=None).eval()
    rerandomise(small)
    torch.save(small.state_dict(), out / "raft_small.pth")
    convert(out / "raft_small.pth", out / "raft_small.safetensors")
    models["raft_small"] = small

    large = raft_large(weights=None).eval()
    rerandomise(large)
    torch.save(large.state_dict(), out / "raft_large.pth")
    convert(out / "raft_large.pth", out / "raft_large.safetensors")
    models["raft_large"] = large

    princeton = raft_large(weights=None).eval()
    rerandomise(princeton)
    check_princeton_roundtrip(princeton, out, "princeton", small=False)
    models["princeton"] = princeton
    check_princeton_roundtrip(small, out, "princeton_small", small=True)

    context = FeatureEncoder(block=ResidualBlock, layers=(64, 64, 96, 128, 256), norm_layer=torch.nn.InstanceNorm2d)
    smurf = raft_large(weights=None, context_encoder=context, corr_block=YMajorCorrBlock(num_levels=4, radius=4))
    smurf.eval()
    rerandomise(smurf)
    smurf_state = smurf.state_dict()
    if any(k.startswith("context_encoder") and not k.endswith(("weight", "bias")) for k in smurf_state):
        raise SystemExit("SMURF fixture unexpectedly has context-encoder buffers")
    torch.save(smurf_state, out / "smurf.pt")
    convert(out / "smurf.pt", out / "smurf.safetensors")
    models["smurf"] = smurf

    gen = torch.Generator().manual_seed(1)
    io = {}
    io["a.img1"], io["a.img2"] = make_pairs(3, 128, 160, gen)
    io["b.img1"], io["b.img2"] = make_pairs(2, 131, 165, gen)
    for name, model in models.items():
        for case in ("a", "b"):
            io[f"{name}.{case}.flow"] = reference_flow(model, io[f"{case}.img1"], io[f"{case}.img2"], ITERATIONS[name])
        flow = io[f"{name}.a.flow"]
        print(f"{name}: mean |flow| {flow.norm(dim=1).mean():.3f} px, max {flow.abs().max():.3f} px")
    save_file(io, str(out / "io.safetensors"))
    for tmp in ("raft_small.pth", "raft_large.pth", "smurf.pt"):
        (out / tmp).unlink()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
