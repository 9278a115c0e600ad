#!/usr/bin/env python3
"""Fixture for `stages/tests/smurf_tf_converter.rs`: one set of random SMURF weights as a genuine TF object-based
checkpoint and as the PyTorch port's `.pt` state dict, so the two converters can be compared.

Usage:
  smurf_tf_fixture.py tf OUTDIR   (TensorFlow interpreter) writes the checkpoint `OUTDIR/smurf-fixture-ckpt-1`
                                  and `OUTDIR/smurf_port.npz`, the same tensors read back from the checkpoint
                                  under torchvision names, kernels permuted HWIO → OIHW;
  smurf_tf_fixture.py pt OUTDIR   (torch interpreter) turns `smurf_port.npz` into `OUTDIR/smurf_port.pt`, after
                                  checking its keys and shapes against torchvision's raft_large with the
                                  context-encoder BatchNorms removed (SMURF's key set).

Two steps because TensorFlow and torch live in separate venvs. The checkpoint is built from nested `tf.Module`s
whose attribute names are the checkpoint's object path, so `tf.train.Checkpoint` gives exactly SMURF's keys
(`feature_model/fnet/layer2/layer_with_weights-0/conv1/kernel/.ATTRIBUTES/VARIABLE_VALUE`, ...), plus one
optimizer variable outside the model that the converter must ignore. The layer list and the TF → torchvision
renaming below are written independently of `tools/convert_smurf_tf.py`, so a wrong entry in its table shows up
as a key or value mismatch instead of being reproduced here. Nothing in the `.pt` side goes through the
converter: the only change from the checkpoint is the kernel permutation.
"""

import os
import re
import sys
from pathlib import Path

import numpy as np

PREFIX_NAME = "smurf-fixture-ckpt-1"
NPZ_NAME = "smurf_port.npz"
PT_NAME = "smurf_port.pt"
TF_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"

# TF object path → torchvision module path, applied in order to "/"-separated paths; "/" becomes "." last.
RENAMES = [
    (r"^feature_model/fnet/", "feature_encoder/"),
    (r"^feature_model/cnet/", "context_encoder/"),
    (r"^(\w+_encoder)/conv1$", r"\1/convnormrelu/0"),
    (r"^(\w+_encoder)/conv2$", r"\1/conv"),
    (r"/layer(\d)/layer_with_weights-(\d)/conv(\d)$", r"/layer\1/\2/convnormrelu\3/0"),
    (r"/layer(\d)/layer_with_weights-(\d)/downsample/layer_with_weights-0$", r"/layer\1/\2/downsample/0"),
    (r"^flow_model/update_block/encoder/convc(\d)$", r"update_block/motion_encoder/convcorr\1/0"),
    (r"^flow_model/update_block/encoder/convf(\d)$", r"update_block/motion_encoder/convflow\1/0"),
    (r"^flow_model/update_block/encoder/conv$", "update_block/motion_encoder/conv/0"),
    (r"^flow_model/update_block/gru/conv([zrq])(\d)$", r"update_block/recurrent_block/convgru\2/conv\1"),
    (r"^flow_model/update_block/flow_head/", "update_block/flow_head/"),
    (r"^flow_model/update_block/mask/layer_with_weights-0$", "mask_predictor/convrelu/0"),
    (r"^flow_model/update_block/mask/layer_with_weights-1$", "mask_predictor/conv"),
]


def smurf_convs() -> list:
    """(TF object path, HWIO kernel shape) of SMURF's 47 convolutions (RAFT-large with separable ConvGRU)."""
    convs = []
    for encoder in ("fnet", "cnet"):
        base = f"feature_model/{encoder}"
        convs.append((f"{base}/conv1", (7, 7, 3, 64)))
        c_in = 64
        for layer, width in ((1, 64), (2, 96), (3, 128)):
            for block in (0, 1):
                path = f"{base}/layer{layer}/layer_with_weights-{block}"
                convs.append((f"{path}/conv1", (3, 3, c_in, width)))
                convs.append((f"{path}/conv2", (3, 3, width, width)))
                if c_in != width:  # strided first block of layers 2 and 3: 1×1 skip convolution
                    convs.append((f"{path}/downsample/layer_with_weights-0", (1, 1, c_in, width)))
                c_in = width
        convs.append((f"{base}/conv2", (1, 1, 128, 256)))
    update = "flow_model/update_block"
    convs += [
        (f"{update}/encoder/convc1", (1, 1, 4 * 81, 256)),
        (f"{update}/encoder/convc2", (3, 3, 256, 192)),
        (f"{update}/encoder/convf1", (7, 7, 2, 128)),
        (f"{update}/encoder/convf2", (3, 3, 128, 64)),
        (f"{update}/encoder/conv", (3, 3, 192 + 64, 126)),
    ]
    for step, (kh, kw) in ((1, (1, 5)), (2, (5, 1))):
        convs += [(f"{update}/gru/conv{gate}{step}", (kh, kw, 128 + 256, 128)) for gate in "zrq"]
    convs += [
        (f"{update}/flow_head/conv1", (3, 3, 128, 256)),
        (f"{update}/flow_head/conv2", (3, 3, 256, 2)),
        (f"{update}/mask/layer_with_weights-0", (3, 3, 128, 256)),
        (f"{update}/mask/layer_with_weights-1", (1, 1, 256, 576)),
    ]
    return convs


def torchvision_module(tf_path: str) -> str:
    path = tf_path
    for pattern, replacement in RENAMES:
        path = re.sub(pattern, replacement, path)
    if path.startswith(("feature_model/", "flow_model/")):
        raise SystemExit(f"fixture: no torchvision name for `{tf_path}`")
    return path.replace("/", ".")


def write_tf(out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    rng = np.random.default_rng(0)
    root = {}
    expected = {}
    for path, (kh, kw, c_in, c_out) in smurf_convs():
        # He-like scale keeps the random network's activations and flow finite over 12 iterations.
        kernel = rng.normal(0.0, (2.0 / (kh * kw * c_in)) ** 0.5, (kh, kw, c_in, c_out)).astype(np.float32)
        bias = rng.normal(0.0, 0.05, c_out).astype(np.float32)
        expected[f"{path}/kernel"] = kernel
        expected[f"{path}/bias"] = bias
        parts = path.split("/")
        if parts[0] not in root:
            root[parts[0]] = tf.Module()
        module = root[parts[0]]
        for name in parts[1:]:
            # setattr/getattr because Keras' Sequential names such as `layer_with_weights-0` are not identifiers.
            if not hasattr(module, name):
                setattr(module, name, tf.Module())
            module = getattr(module, name)
        module.kernel = tf.Variable(kernel)
        module.bias = tf.Variable(bias)
    optimizer = tf.Module()
    optimizer.iter = tf.Variable(np.int64(1000))
    out.mkdir(parents=True, exist_ok=True)
    prefix = tf.train.Checkpoint(optimizer=optimizer, **root).write(str(out / PREFIX_NAME))

    reader = tf.train.load_checkpoint(prefix)
    model_keys = {k for k in reader.get_variable_to_shape_map() if k.startswith(("feature_model/", "flow_model/"))}
    if model_keys != {k + TF_SUFFIX for k in expected} or len(model_keys) != 94:
        raise SystemExit(f"fixture: checkpoint holds {len(model_keys)} model keys, not SMURF's 94")
    port = {}
    for key, value in expected.items():
        stored = reader.get_tensor(key + TF_SUFFIX)
        if stored.dtype != np.float32 or not np.array_equal(stored, value):
            raise SystemExit(f"fixture: `{key}` does not read back from the checkpoint unchanged")
        module, kind = key.rsplit("/", 1)
        name = torchvision_module(module) + (".weight" if kind == "kernel" else ".bias")
        port[name] = np.ascontiguousarray(stored.transpose(3, 2, 0, 1)) if kind == "kernel" else stored
    if len(port) != len(expected):
        raise SystemExit("fixture: two TF variables map onto one torchvision key")
    np.savez(out / NPZ_NAME, **port)
    print(f"{prefix}: {len(model_keys)} model variables")


def write_pt(out: Path) -> None:
    import torch
    from torchvision.models.optical_flow import raft_large

    with np.load(out / NPZ_NAME) as npz:
        state = {k: torch.from_numpy(npz[k]) for k in npz.files}
    reference = {
        k: tuple(v.shape) for k, v in raft_large(weights=None).state_dict().items()
        if not re.fullmatch(r"context_encoder\..*\.1\.(weight|bias|running_mean|running_var)", k)
        and not k.endswith("num_batches_tracked")
    }
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != reference:
        diff = sorted(set(got.items()) ^ set(reference.items()))
        raise SystemExit(f"fixture: .pt keys/shapes differ from SMURF's torchvision key set: {diff[:6]}")
    torch.save(state, out / PT_NAME)
    print(f"{out / PT_NAME}: {len(state)} tensors")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("tf", "pt"):
        raise SystemExit(__doc__)
    (write_tf if sys.argv[1] == "tf" else write_pt)(Path(sys.argv[2]))
