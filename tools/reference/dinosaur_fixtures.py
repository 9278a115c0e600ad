"""Reference fixtures for `stages/model/tests/dinosaur_parity.rs`.

A PyTorch re-statement of the DINOSAUR slot model as specified (conditioning, input MLP, slot attention,
MLP broadcast decoder, MSE loss; spec mr-dinosaur.md section 3), with module names chosen so that the
state_dict keys are mrdino's model-file keys. Every parameter is re-randomised (LayerNorm weights and biases,
every bias, mu / log sigma, pos_embed included) so a mapping error cannot hide. The slot noise of image i is
`torch.manual_seed(S + i); torch.randn(n_views, K, D)`. Training parity uses the real `torch.optim.Adam`,
`torch.nn.utils.clip_grad_norm_` and `LambdaLR` with the warm-up / decay factor of the reference schedule.

Usage: dinosaur_fixtures.py OUT_DIR
Writes OUT_DIR/{small,options,kitti}.safetensors (weights; small and options with their mrdino config in the
metadata, kitti without, so the loader infers it) and OUT_DIR/io.safetensors (inputs and expected outputs).
"""

import json
import math
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

SEED = 1234


class Residual(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return x + self.module(x)


class Conditioning(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.slots_mu = nn.Parameter(torch.zeros(1, 1, d))
        self.slots_logsigma = nn.Parameter(torch.zeros(1, 1, d))

    def forward(self, noise):
        return self.slots_mu + self.slots_logsigma.exp() * noise


class SlotAttention(nn.Module):
    def __init__(self, d, iters, eps, ff_ratio):
        super().__init__()
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_k = nn.Linear(d, d, bias=False)
        self.to_v = nn.Linear(d, d, bias=False)
        self.gru = nn.GRUCell(d, d)
        self.norm_input = nn.LayerNorm(d)
        self.norm_slots = nn.LayerNorm(d)
        self.ff_mlp = Residual(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, ff_ratio * d), nn.ReLU(), nn.Linear(ff_ratio * d, d))
        )
        self.iters, self.eps, self.d = iters, eps, d

    def forward(self, x, slots):
        b, k, d = slots.shape
        x = self.norm_input(x)
        keys, values = self.to_k(x), self.to_v(x)
        for _ in range(self.iters):
            prev = slots
            q = self.to_q(self.norm_slots(slots))
            logits = torch.einsum("bkd,bpd->bkp", q, keys) * d**-0.5
            attn = logits.softmax(dim=1)  # over slots
            w = attn + self.eps
            w = w / w.sum(dim=-1, keepdim=True)  # weighted mean over inputs
            updates = torch.einsum("bkp,bpd->bkd", w, values)
            slots = self.gru(updates.reshape(-1, d), prev.reshape(-1, d)).reshape(b, k, d)
            slots = self.ff_mlp(slots)
        return slots, attn


class Grouping(nn.Module):
    def __init__(self, f, d, iters, eps, single_linear):
        super().__init__()
        self.slot_attention = SlotAttention(d, iters, eps, 4)
        if single_linear:
            mlp = nn.Sequential(nn.LayerNorm(f), nn.Linear(f, d))
        else:
            mlp = nn.Sequential(nn.LayerNorm(f), nn.Linear(f, f), nn.ReLU(), nn.Linear(f, d))
        self.positional_embedding = nn.Module()
        self.positional_embedding.layers = nn.ModuleList([nn.Identity(), mlp])

    def forward(self, features, slots):
        x = self.positional_embedding.layers[1](features)
        return self.slot_attention(x, slots)


class Decoder(nn.Module):
    def __init__(self, d, h, f, p, temperature):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, p, d))
        self.decoder = nn.Sequential(
            nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, f + 1)
        )
        self.f, self.p, self.temperature = f, p, temperature

    def forward(self, slots):
        b, k, d = slots.shape
        x = slots.reshape(b * k, 1, d).expand(-1, self.p, -1) + self.pos_embed
        out = self.decoder(x).reshape(b, k, self.p, self.f + 1)
        decoded, logits = out[..., : self.f], out[..., self.f :]
        alpha = (logits / self.temperature).softmax(dim=1)
        return alpha.squeeze(-1), (decoded * alpha).sum(dim=1)


class Dinosaur(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        f, d, h, p = cfg["feature_dim"], cfg["slot_dim"], cfg["decoder_hidden"], cfg["n_patches"]
        self.cfg = cfg
        self.conditioning = Conditioning(d)
        self.perceptual_grouping = Grouping(
            f, d, cfg["iterations"], cfg["attention_eps"], cfg["input_projection"] == "single-linear"
        )
        self.object_decoder = Decoder(d, h, f, p, cfg["mask_temperature"])
        if cfg["target_projection"]:
            self.target_projection = nn.Linear(f, f)

    def forward(self, features, noise):
        slots, attn = self.perceptual_grouping(features, self.conditioning(noise))
        masks, recon = self.object_decoder(slots)
        target = self.target_projection(features.detach()) if self.cfg["target_projection"] else features
        if self.cfg["channel_normalised_loss"]:
            f = self.cfg["feature_dim"]
            loss = nn.functional.mse_loss(
                nn.functional.layer_norm(recon, (f,)), nn.functional.layer_norm(target, (f,))
            )
        else:
            loss = nn.functional.mse_loss(recon, target)
        return slots, masks, recon, attn, loss


def config(k, d, f, h, p, **options):
    cfg = dict(
        n_slots=k, slot_dim=d, feature_dim=f, decoder_hidden=h, n_patches=p, iterations=3, attention_eps=1e-8,
        layer_norm_eps=1e-5, ff_mlp_ratio=4, input_projection="two-layer", mask_temperature=1.0,
        channel_normalised_loss=False, target_projection=False,
    )
    cfg.update(options)
    return cfg


def rerandomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm_input.weight") or name.endswith("norm_slots.weight") or (
                p.ndim == 1 and "weight" in name
            ):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=gen))  # LayerNorm weights
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))  # every bias
            elif name.startswith("conditioning"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            elif name.endswith("pos_embed"):
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[1]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / math.sqrt(fan_in)))


def slot_noise(seed, indices, n_views, k, d):
    draws = []
    for i in indices:
        torch.manual_seed(seed + i)
        draws.append(torch.randn(n_views, k, d))
    return torch.cat(draws, 0)


def masks_as_image(masks, h, w):
    b, k, p = masks.shape
    grid_w = int(round(math.sqrt(p / (h / w))))
    grid_h = p // grid_w
    return nn.functional.interpolate(masks.reshape(b, k, grid_h, grid_w), size=(h, w), mode="bilinear")


def mask_similarity(masks):
    b, k, p = masks.shape
    u = masks / masks.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    cos = u @ u.transpose(1, 2)
    off = (cos.sum(dim=(1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(-1)) / (k * (k - 1))
    return off.mean()


def slot_entropy(weights):
    """Mean over tokens of the entropy over the slot axis (dim 1) of (B, K, P) weights, divided by ln K."""
    return torch.special.entr(weights).sum(dim=1).mean() / math.log(weights.shape[1])


def schedule_factor(step, warmup, decay_rate, decay_steps):
    factor = min(1.0, step / warmup) if warmup else 1.0
    if step < warmup:
        return factor
    return factor * decay_rate ** ((step - warmup) / decay_steps)


def save_model(model, path, with_config):
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"mrdino.model_config": json.dumps(model.cfg)} if with_config else None
    save_file(state, str(path), metadata=meta)


def tiny_dinov2_state(gen, dim=8, blocks=2, patch=2):
    """A random DINOv2-hub-layout state dict (names as `facebookresearch/dinov2`), tiny sizes."""
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 5, dim), "mask_token": (1, dim),
              "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,),
              "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(blocks):
        for name, shape in [("norm1.weight", (dim,)), ("norm1.bias", (dim,)), ("attn.qkv.weight", (3 * dim, dim)),
                            ("attn.qkv.bias", (3 * dim,)), ("attn.proj.weight", (dim, dim)),
                            ("attn.proj.bias", (dim,)), ("ls1.gamma", (dim,)), ("norm2.weight", (dim,)),
                            ("norm2.bias", (dim,)), ("mlp.fc1.weight", (4 * dim, dim)), ("mlp.fc1.bias", (4 * dim,)),
                            ("mlp.fc2.weight", (dim, 4 * dim)), ("mlp.fc2.bias", (dim,)), ("ls2.gamma", (dim,))]:
            shapes[f"blocks.{i}.{name}"] = shape
    return {k: torch.randn(v, generator=gen) for k, v in shapes.items()}


def save_lightning(model, gen, path, extra_key=None):
    """The reference's Lightning layout: DINOv2 first, then the slot model, stage-2 slot_decoder included."""
    state = {"models.feature_extractor.model." + k: v for k, v in tiny_dinov2_state(gen).items()}
    h, d = model.cfg["decoder_hidden"], model.cfg["slot_dim"]
    for k, v in model.state_dict().items():
        state["models." + k] = v.detach().clone()
        if k == "object_decoder.pos_embed":
            for i, (o, n) in enumerate([(h, d), (h, h), (h, h), (1, h)]):
                state[f"models.object_decoder.slot_decoder.{2 * i}.weight"] = torch.randn(o, n, generator=gen)
                state[f"models.object_decoder.slot_decoder.{2 * i}.bias"] = torch.randn(o, generator=gen)
    if extra_key:
        state[extra_key] = torch.zeros(1)
    torch.save({"state_dict": state, "global_step": 1234, "epoch": 3, "pytorch-lightning_version": "2.3.3"}, path)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(7)
    io = {}

    # Reproducible noise.
    io["noise.seed1234.idx0_1_5.views2"] = slot_noise(SEED, [0, 1, 5], 2, 4, 16)

    # Small model: forward, masks, then two clipped Adam steps on the reference schedule.
    cfg = config(4, 16, 64, 64, 16)
    model = Dinosaur(cfg)
    rerandomise(model, gen)
    save_model(model, out / "small.safetensors", True)
    save_lightning(model, gen, out / "lightning.ckpt")
    save_lightning(model, gen, out / "lightning_bad.ckpt", extra_key="models.object_decoder.extra.weight")
    features = torch.randn(2, 16, 64, generator=gen) * 2.0
    noise = slot_noise(SEED, [0, 1], 1, 4, 16)
    io["small.features"] = features
    io["small.noise"] = noise
    slots, masks, recon, attn, loss = model(features, noise)
    io["small.slots"], io["small.masks"], io["small.reconstruction"] = slots, masks, recon
    io["small.attention"], io["small.loss"] = attn, loss.reshape(1)
    io["small.masks_image_12x12"] = masks_as_image(masks, 12, 12)
    io["small.masks_image_6x24"] = masks_as_image(masks, 6, 24)
    io["small.mask_similarity"] = mask_similarity(masks).reshape(1)
    io["small.attention_entropy"] = slot_entropy(attn).reshape(1)
    io["small.mask_entropy"] = slot_entropy(masks).reshape(1)

    base_lr, warmup, decay_rate, decay_steps, first_step = 1e-3, 10, 0.5, 100, 3
    opt = torch.optim.Adam(model.parameters(), lr=base_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: schedule_factor(s, warmup, decay_rate, decay_steps)
    )
    warnings.filterwarnings("ignore", message="Detected call of")
    for _ in range(first_step):  # bring the scheduler to step 3 without updates
        sched.step()
    names = [n for n, _ in model.named_parameters()]
    for update in (1, 2):
        opt.zero_grad()
        _, _, _, _, loss = model(features, noise)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        io[f"step{update}.grad_norm"] = norm.reshape(1)
        io[f"step{update}.lr"] = torch.tensor([opt.param_groups[0]["lr"]], dtype=torch.float64)
        io[f"step{update}.loss"] = loss.detach().reshape(1)
        opt.step()
        sched.step()
        for n, p in zip(names, model.parameters()):
            io[f"step{update}.param.{n}"] = p.detach().clone()
    for n, p in zip(names, model.parameters()):
        io[f"step2.exp_avg.{n}"] = opt.state[p]["exp_avg"].clone()
        io[f"step2.exp_avg_sq.{n}"] = opt.state[p]["exp_avg_sq"].clone()

    # Every option of the backbone study at once.
    ocfg = config(
        4, 16, 64, 64, 16, input_projection="single-linear", mask_temperature=0.7,
        channel_normalised_loss=True, target_projection=True,
    )
    omodel = Dinosaur(ocfg)
    rerandomise(omodel, gen)
    save_model(omodel, out / "options.safetensors", True)
    slots, masks, recon, attn, loss = omodel(features, noise)
    io["options.slots"], io["options.masks"], io["options.reconstruction"] = slots, masks, recon
    io["options.loss"] = loss.reshape(1)

    # One forward at the real KITTI sizes, batch 1 (configuration inferred from shapes by the loader).
    kcfg = config(15, 32, 768, 2048, 729)
    kmodel = Dinosaur(kcfg)
    rerandomise(kmodel, gen)
    save_model(kmodel, out / "kitti.safetensors", False)
    kfeatures = torch.randn(1, 729, 768, generator=gen)
    knoise = slot_noise(SEED, [3], 1, 15, 32)
    with torch.no_grad():
        slots, masks, recon, attn, loss = kmodel(kfeatures, knoise)
    io["kitti.features"], io["kitti.noise"] = kfeatures, knoise
    io["kitti.slots"], io["kitti.masks"], io["kitti.reconstruction"] = slots, masks, recon
    io["kitti.loss"] = loss.reshape(1)
    io["kitti.attention_entropy"] = slot_entropy(attn).reshape(1)
    io["kitti.mask_similarity"] = mask_similarity(masks).reshape(1)

    save_file({k: v.detach().contiguous() for k, v in io.items()}, str(out / "io.safetensors"))
    print(f"dinosaur fixtures in {out} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
