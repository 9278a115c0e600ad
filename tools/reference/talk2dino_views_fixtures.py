"""Reference for `mrdino_model::talk2dino::{segment, pamr, resize_square, keep_ratio_resize}`: a PyTorch statement
of Talk2DINO's two inference paths and of its PAMR, on a random DINOv2-with-registers backbone
(transformers' Dinov2WithRegistersModel, width 64, 2 heads, 2 blocks, patch 14, 4 registers, every parameter
re-randomised by the ViT parity fixture's helper and converted by the repository's converter) and random class
embeddings.

What is stated (lorebianchi98/Talk2DINO, `models/dinotext/dinotext.py`, `masker.py`, `pamr.py`,
`segmentation/evaluation/dinotext_seg.py`, the dataset configs; mmsegmentation 0.30 `EncoderDecoder`; mmcv 1.7
`imrescale`):
- `generate_masks`: the float 0..255 image through `Resize((448, 448))` (bilinear; antialias as the environment's
  torchvision: on for the demo path, off — torchvision 0.16's tensor default — for the benchmark path), `/255`,
  ImageNet normalisation, the last block's normed patch tokens, cosine to every class, sigmoid, optional background
  cleaning (λ 0.2, q·k·0.125 of the last block, CLS and registers excluded), bilinear upsampling with
  align_corners=True to the image, optional PAMR (10 iterations, dilations 1, 2, 4, 8, 12, 24) with the image.
- PAMR (`pamr.py`): shifted copies by one-hot 3×3 convolutions with replicate padding per dilation; affinity
  −|x − x_nbr| / (1e-8 + 0.1·std over the 9 positions of every dilation), channel mean, softmax over neighbours;
  each iteration the affinity-weighted sum of the neighbours of the mask.
- Square view (demo): generate_masks on the whole image, background channel, argmax.
- Sliding view (benchmarks): cv2 INTER_LINEAR keep-ratio resize of the uint8 image to `img_scale` (2048, 448);
  448 crops every 224 px (mmseg `slide_inference`), each through generate_masks with the background channel in
  front (`DINOTextSegInference.encode_decode`), summed, divided by the coverage count, resized to the original
  size (bilinear, align_corners=False), softmax, argmax.

Usage: talk2dino_views_fixtures.py OUT_DIR
Writes OUT_DIR/backbone.safetensors and OUT_DIR/io.safetensors; every case's background threshold is in the
metadata (`threshold.<image>.<case>`), chosen so that about a third of the pixels are background.
"""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import transformers as T
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode, Resize

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import talk2dino_fixtures  # noqa: E402 - the background-cleaning statement
import vit_fixtures  # noqa: E402 - re-randomisation and the ViT converter

DIM, HEADS, REGISTERS, PATCH, SIDE = 64, 2, 4, 14, 448
N_CLASSES = 4
LAMBDA = 0.2
PAMR_ITERATIONS, PAMR_DILATIONS = 10, (1, 2, 4, 8, 12, 24)
IMG_SCALE, CROP, STRIDE = (2048, 448), 448, 224
# (name, height, width, rectangles); C is so wide that the long side caps the resize and the crops are 273×448.
IMAGES = (("A", 150, 230, ((20, 30, 40, 60, (230, 40, 40)), (90, 140, 45, 70, (30, 200, 60)))),
          ("B", 200, 120, ((30, 10, 50, 60, (20, 20, 220)), (120, 50, 60, 50, (240, 240, 30)))),
          ("C", 40, 300, ((5, 40, 25, 70, (200, 60, 200)), (10, 200, 20, 60, (60, 60, 60)))))
# case → (view, background cleaning, PAMR, images)
CASES = {"square_clean": ("square", True, False, "AB"),
         "square_pamr": ("square", False, True, "AB"),
         "sliding": ("sliding", False, False, "ABC"),
         "sliding_clean_pamr": ("sliding", True, True, "A")}


def picture(gen, h, w, rects):
    """A uint8 RGB image (1, 3, h, w): a smooth random field, pixel noise, a few flat rectangles."""
    x = F.interpolate(torch.rand(1, 3, 5, 7, generator=gen) * 255, (h, w), mode="bicubic", align_corners=False)
    x = x + 25 * torch.randn(1, 3, h, w, generator=gen)
    for top, left, rh, rw, colour in rects:
        x[0, :, top:top + rh, left:left + rw] = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1)
    return x.round().clamp(0, 255).to(torch.uint8)


# --- PAMR, as pamr.py builds it: one-hot 3×3 kernels applied by dilated convolutions on replicate padding ------

NEIGHBOURS = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]


def shift_kernels(positions):
    k = torch.zeros(len(positions), 1, 3, 3)
    for i, (ky, kx) in enumerate(positions):
        k[i, 0, ky, kx] = 1.0
    return k


COPY = shift_kernels(NEIGHBOURS)  # LocalAffinityCopy: the neighbour
DIFF = -COPY  # LocalAffinity: centre − neighbour
DIFF[:, 0, 1, 1] = 1.0
ALL9 = shift_kernels([(y, x) for y in range(3) for x in range(3)])  # LocalStDev: all 9 positions


def local(x, kernel, dilations):
    b, k, h, w = x.shape
    flat = x.reshape(b * k, 1, h, w)
    outs = [F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), kernel, dilation=d) for d in dilations]
    return torch.cat(outs, 1).reshape(b, k, -1, h, w)


def pamr(image, mask, iterations=PAMR_ITERATIONS, dilations=PAMR_DILATIONS):
    image = F.interpolate(image, mask.shape[-2:], mode="bilinear", align_corners=True)  # DINOText.apply_pamr
    mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)
    std = local(image, ALL9, dilations).std(2, keepdim=True)
    affinity = (-local(image, DIFF, dilations).abs() / (1e-8 + 0.1 * std)).mean(1, keepdim=True).softmax(2)
    for _ in range(iterations):
        mask = (local(mask, COPY, dilations) * affinity).sum(2)
    return mask


# --- generate_masks and the two views ------------------------------------------------------------------------

class Talk2Dino:
    def __init__(self, vit, classes):
        self.vit, self.classes = vit, classes

    def generate_masks(self, image, clean, refine, antialias):
        """image (1, 3, H, W) float 0..255 RGB → masks (1, N, H, W)."""
        h, w = image.shape[2:]
        x = Resize((SIDE, SIDE), interpolation=InterpolationMode.BILINEAR, antialias=antialias)(image) / 255.0
        x = vit_fixtures.normalise(x, *vit_fixtures.convert_vit.IMAGENET)
        result = self.vit(pixel_values=x, output_hidden_states=True)
        g = SIDE // PATCH
        feat = result.last_hidden_state[:, 1 + REGISTERS:].reshape(1, g, g, DIM).permute(0, 3, 1, 2)
        mask = torch.sigmoid(torch.einsum("bchw,nc->bnhw", F.normalize(feat, dim=1), self.classes))
        if clean:
            block = self.vit.encoder.layer[-1]
            normed = block.norm1(result.hidden_states[-2])
            q = block.attention.q_proj(normed).view(1, -1, HEADS, DIM // HEADS).transpose(1, 2)
            k = block.attention.k_proj(normed).view(1, -1, HEADS, DIM // HEADS).transpose(1, 2)
            attn = ((q[:, :, :1] * 0.125) @ k.transpose(-1, -2)).squeeze(2)[:, :, 1 + REGISTERS:]
            mask = talk2dino_fixtures.clean(mask, feat, attn, self.classes, LAMBDA)
        mask = F.interpolate(mask, (h, w), mode="bilinear", align_corners=True)
        if refine:
            mask = pamr(image, mask)
        return mask

    def square(self, img_u8, clean, refine):
        return self.generate_masks(img_u8.float(), clean, refine, antialias=True)

    def sliding_crops(self, img_u8, clean, refine):
        """mmseg slide inference up to the crop masks: the keep-ratio resized uint8 image and, per crop in mmseg's
        order, (y1, y2, x1, x2, masks). The background channel is added by `slide_average`."""
        hwc = img_u8[0].permute(1, 2, 0).numpy()  # RGB; mmseg resizes BGR, the same per-channel operation
        h, w = hwc.shape[:2]
        factor = min(max(IMG_SCALE) / max(h, w), min(IMG_SCALE) / min(h, w))  # mmcv rescale_size
        size = (int(w * float(factor) + 0.5), int(h * float(factor) + 0.5))
        resized = cv2.resize(hwc, size, interpolation=cv2.INTER_LINEAR)  # mmcv imresize, cv2 backend, on uint8
        resized = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)[None]
        img = resized.float()  # FloatImage
        h_img, w_img = img.shape[2:]
        h_grids = max(h_img - CROP + STRIDE - 1, 0) // STRIDE + 1
        w_grids = max(w_img - CROP + STRIDE - 1, 0) // STRIDE + 1
        crops = []
        for hi in range(h_grids):
            for wi in range(w_grids):
                y2, x2 = min(hi * STRIDE + CROP, h_img), min(wi * STRIDE + CROP, w_img)
                y1, x1 = max(y2 - CROP, 0), max(x2 - CROP, 0)
                crops.append((y1, y2, x1, x2, self.generate_masks(img[:, :, y1:y2, x1:x2], clean, refine, False)))
        return resized, crops


def slide_average(resized, crops, threshold, size):
    """encode_decode's background channel per crop, mmseg's sum / count, the resize to the original size."""
    h_img, w_img = resized.shape[2:]
    preds = torch.zeros((1, 1 + N_CLASSES, h_img, w_img))
    count = torch.zeros((1, 1, h_img, w_img))
    for y1, y2, x1, x2, masks in crops:
        bg = torch.full([1, 1, *masks.shape[2:]], threshold, dtype=torch.float)
        crop_logit = torch.cat([bg, masks], dim=1)
        preds += F.pad(crop_logit, (x1, preds.shape[3] - x2, y1, preds.shape[2] - y2))
        count[:, :, y1:y2, x1:x2] += 1
    assert (count == 0).sum() == 0
    preds = preds / count
    return F.interpolate(preds, size, mode="bilinear", align_corners=False)


def third_background(scores):
    """A threshold (4 decimals) below which about a third of the pixels' best class score lies."""
    return float(np.round(torch.quantile(scores.max(dim=1).values.flatten(), 1 / 3).item(), 4))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(41)
    vit = T.Dinov2WithRegistersModel(T.Dinov2WithRegistersConfig(
        hidden_size=DIM, num_hidden_layers=2, num_attention_heads=HEADS, patch_size=PATCH, image_size=518,
        num_register_tokens=REGISTERS, layer_norm_eps=1e-6)).eval()
    vit_fixtures.rerandomise(vit, gen)
    vit.save_pretrained(out / "vit_hf")
    vit_fixtures.convert(out / "vit_hf" / "model.safetensors", out / "backbone.safetensors")
    for f in (out / "vit_hf").iterdir():
        f.unlink()
    (out / "vit_hf").rmdir()
    classes = F.normalize(torch.randn(N_CLASSES, DIM, generator=gen), dim=-1)
    model = Talk2Dino(vit, classes)

    io, meta = {"classes": classes}, {}
    with torch.no_grad():
        images = {name: picture(gen, h, w, rects) for name, h, w, rects in IMAGES}
        for name, img in images.items():
            io[f"{name}.image"] = img.contiguous()
            io[f"{name}.square01"] = (Resize((SIDE, SIDE), interpolation=InterpolationMode.BILINEAR,
                                             antialias=True)(img.float()) / 255.0).contiguous()
        for case, (view, clean, refine, names) in CASES.items():
            for name in names:
                img = images[name]
                if view == "square":
                    masks = model.square(img, clean, refine)
                    threshold = third_background(masks)
                    bg = torch.full([1, 1, *masks.shape[2:]], threshold)
                    scores = torch.cat([bg, masks], dim=1)
                    ranked = scores
                else:
                    resized, crops = model.sliding_crops(img, clean, refine)
                    size = tuple(img.shape[2:])
                    threshold = third_background(slide_average(resized, crops, 0.0, size)[:, 1:])
                    scores = slide_average(resized, crops, threshold, size)
                    io[f"{name}.keep_ratio"] = resized.contiguous()
                    ranked = F.softmax(scores, dim=1)
                top2 = ranked.topk(2, dim=1).values
                key = f"{name}.{case}"
                io[f"{key}.scores"] = scores[0].contiguous()
                io[f"{key}.labels"] = ranked.argmax(dim=1)[0].contiguous()
                io[f"{key}.margin"] = (top2[0, 0] - top2[0, 1]).contiguous()
                meta[f"threshold.{key}"] = repr(threshold)

        # PAMR alone on a random image and random soft masks of its size.
        image = picture(gen, 64, 96, ((10, 10, 20, 30, (250, 250, 250)), (40, 50, 20, 40, (0, 0, 0)))).float()
        coarse = torch.sigmoid(3 * torch.randn(1, N_CLASSES, 8, 12, generator=gen))
        masks = F.interpolate(coarse, (64, 96), mode="bilinear", align_corners=True)
        io["pamr.image"], io["pamr.masks"] = image, masks.contiguous()
        io["pamr.refined"] = pamr(image, masks).contiguous()
        io["pamr.refined_1"] = pamr(image, masks, iterations=1, dilations=(1,)).contiguous()
    save_file(io, str(out / "io.safetensors"), metadata=meta)
    (out / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    print(f"talk2dino view fixtures written to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
