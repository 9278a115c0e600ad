"""Random-weight stand-ins for the published MR-DINOSAUR checkpoints, in their exact layout (tests/e2e_official.rs).

Writes OUT_DIR/dinov2_vitb14_pretrain.pth: a hub `dinov2_vitb14` state dict (the names and shapes of
`facebookresearch/dinov2`'s ViT-B/14 at 518 px: pos_embed (1, 1370, 768), mask_token, 12 blocks with LayerScale),
every weight, norm, bias and LayerScale drawn at random; and the three reference Lightning checkpoints
(`{"state_dict": …, "global_step", "epoch", "pytorch-lightning_version"}`) with that very backbone under
`models.feature_extractor.model.` and a random slot model of the published dimensions
(spec ocl-checkpoints.md "Dimensions per dataset"):
  kitti_stage2.ckpt   K 15, D 32, decoder 2048, 729 patches, with the stage-2 slot_decoder (2048)
  tri-pd_stage2.ckpt  K 30, D 32, decoder 2048, 1225 patches, with the stage-2 slot_decoder (2048)
  movi-e_baseline.ckpt K 24, D 128, decoder 1024, 361 patches, no slot_decoder

Usage: official_checkpoints.py OUT_DIR
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dinosaur_fixtures import Dinosaur, config, rerandomise  # noqa: E402

DIM, DEPTH, PATCH, GRID = 768, 12, 14, 37


def hub_dinov2_vitb14(gen):
    shapes = {
        "cls_token": (1, 1, DIM),
        "pos_embed": (1, 1 + GRID * GRID, DIM),
        "mask_token": (1, DIM),
        "patch_embed.proj.weight": (DIM, 3, PATCH, PATCH),
        "patch_embed.proj.bias": (DIM,),
        "norm.weight": (DIM,),
        "norm.bias": (DIM,),
    }
    for i in range(DEPTH):
        for name, shape in [
            ("norm1.weight", (DIM,)), ("norm1.bias", (DIM,)), ("attn.qkv.weight", (3 * DIM, DIM)),
            ("attn.qkv.bias", (3 * DIM,)), ("attn.proj.weight", (DIM, DIM)), ("attn.proj.bias", (DIM,)),
            ("ls1.gamma", (DIM,)), ("norm2.weight", (DIM,)), ("norm2.bias", (DIM,)),
            ("mlp.fc1.weight", (4 * DIM, DIM)), ("mlp.fc1.bias", (4 * DIM,)), ("mlp.fc2.weight", (DIM, 4 * DIM)),
            ("mlp.fc2.bias", (DIM,)), ("ls2.gamma", (DIM,)),
        ]:
            shapes[f"blocks.{i}.{name}"] = shape
    state = {}
    for name, shape in shapes.items():
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name.endswith("gamma"):
            t = 0.5 + torch.rand(shape, generator=gen)
        elif name.endswith("bias"):
            t = 0.1 * torch.randn(shape, generator=gen)
        else:
            t = 0.02 * torch.randn(shape, generator=gen)
        state[name] = t
    return state


def lightning(backbone, model, gen, stage2, path):
    state = {"models.feature_extractor.model." + k: v.clone() for k, v in backbone.items()}
    h, d = model.cfg["decoder_hidden"], model.cfg["slot_dim"]
    for k, v in model.state_dict().items():
        state["models." + k] = v.detach().clone()
    if stage2:
        for i, (o, n) in enumerate([(h, d), (h, h), (h, h), (1, h)]):
            state[f"models.object_decoder.slot_decoder.{2 * i}.weight"] = torch.randn(o, n, generator=gen) / n ** 0.5
            state[f"models.object_decoder.slot_decoder.{2 * i}.bias"] = 0.2 * torch.randn(o, generator=gen)
    torch.save({"state_dict": state, "global_step": 2000, "epoch": 1, "pytorch-lightning_version": "2.3.3"}, path)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(2024)
    backbone = hub_dinov2_vitb14(gen)
    torch.save(backbone, out / "dinov2_vitb14_pretrain.pth")
    for name, (k, d, h, p), stage2 in [
        ("kitti_stage2", (15, 32, 2048, 729), True),
        ("tri-pd_stage2", (30, 32, 2048, 1225), True),
        ("movi-e_baseline", (24, 128, 1024, 361), False),
    ]:
        model = Dinosaur(config(k, d, DIM, h, p))
        rerandomise(model, gen)
        lightning(backbone, model, gen, stage2, out / f"{name}.ckpt")


if __name__ == "__main__":
    main()
