"""Parity fixture for mrdino_model::resnet: torchvision resnet50 with re-randomised weights and BatchNorm
statistics, saved in SwaV's checkpoint layout (`module.` prefix, projection head, prototypes), converted with
tools/convert_resnet.py, and its pooled features for random images.

Usage: resnet_fixtures.py OUT_DIR
"""
import subprocess
import sys
from pathlib import Path

import torch
import torchvision
from safetensors.torch import save_file


def main():
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(5)
    model = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bn" in name or "downsample.1" in name:
                p.copy_((1.0 + 0.2 * torch.randn_like(p)) if name.endswith("weight") else 0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    model.eval()
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.randn(2048, 2048)
    state["module.prototypes.weight"] = torch.randn(3000, 128)
    torch.save(state, out / "swav.pth.tar")
    tool = Path(__file__).resolve().parents[1] / "convert_resnet.py"
    subprocess.run([sys.executable, str(tool), str(out / "swav.pth.tar"), str(out / "resnet50.safetensors")], check=True)
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(images))))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
        pooled = torch.flatten(model.avgpool(x), 1)
    save_file({"images": images.contiguous(), "pooled": pooled.contiguous()}, str(out / "io.safetensors"))


if __name__ == "__main__":
    main()
