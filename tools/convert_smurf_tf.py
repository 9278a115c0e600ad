#!/usr/bin/env python3
"""Convert Google's TF SMURF checkpoint (e.g. `gs://gresearch/smurf/kitti`, prefix `smurf-kitti-smurf-ckpt-31`)
straight to the safetensors layout read by `mrdino_stages::flow::raft`, without the intermediate `.pt`.

Needs TensorFlow (CPU wheel), numpy and safetensors, and deliberately no torch: TensorFlow lives in its own
venv (`make venv-tf`, `tools/requirements-tf.txt`) because its protobuf/numpy pins clash with the torch venv.
Pass the checkpoint *prefix*, not the `.data-00000-of-00001` file.

Kernels are stored HWIO in TF and permuted to OIHW; SMURF's `convcorr1` input channels are y-major inside each
9×9 window and are transposed to x-major, the order the runtime's lookup uses. The output matches what
`convert_raft.py` writes for the PyTorch port's `smurf_kitti.pt` bit for bit, metadata included apart from
`source` and `source_sha256`; `stages/tests/smurf_tf_converter.rs` checks this on a random-weight checkpoint.
Any checkpoint variable of the feature/flow model left unmapped, or any table entry absent from the checkpoint,
is reported as an error rather than skipped.

Usage: convert_smurf_tf.py CHECKPOINT_PREFIX OUTPUT.safetensors [--iterations N]
"""

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

TF_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
CONVCORR1 = "update_block.motion_encoder.convcorr1.0.weight"
CORR_LEVELS = 4
# Same values convert_raft.py records for the `smurf` family; the converter test compares the two files' metadata.
METADATA = {
    "family": "smurf",
    "arch": "large",
    "context_norm": "instance",
    "corr_order": "xmajor",
    "input_range": "[-1,1]",
}


def smurf_tf_names() -> dict:
    """TF object path (without TF_SUFFIX) → torchvision key, 94 entries for SMURF's raft-large.

    Object paths mirror the Keras model (feature_model/{fnet,cnet}, flow_model/update_block/...); Sequential
    containers number their weighted children `layer_with_weights-N`. Same table as the SMURF port's
    `convert_weights_to_pt.py`."""
    table = {}

    def conv(tf: str, pt: str) -> None:
        table[f"{tf}/kernel"] = f"{pt}.weight"
        table[f"{tf}/bias"] = f"{pt}.bias"

    for tf_enc, pt_enc in (("fnet", "feature_encoder"), ("cnet", "context_encoder")):
        base = f"feature_model/{tf_enc}"
        conv(f"{base}/conv1", f"{pt_enc}.convnormrelu.0")
        conv(f"{base}/conv2", f"{pt_enc}.conv")
        for layer in (1, 2, 3):
            for block in (0, 1):
                tf_block = f"{base}/layer{layer}/layer_with_weights-{block}"
                pt_block = f"{pt_enc}.layer{layer}.{block}"
                conv(f"{tf_block}/conv1", f"{pt_block}.convnormrelu1.0")
                conv(f"{tf_block}/conv2", f"{pt_block}.convnormrelu2.0")
                if layer > 1 and block == 0:
                    conv(f"{tf_block}/downsample/layer_with_weights-0", f"{pt_block}.downsample.0")
    upd = "flow_model/update_block"
    for tf_name, pt_name in (("convc1", "convcorr1"), ("convc2", "convcorr2"), ("convf1", "convflow1"),
                             ("convf2", "convflow2"), ("conv", "conv")):
        conv(f"{upd}/encoder/{tf_name}", f"update_block.motion_encoder.{pt_name}.0")
    for step in (1, 2):
        for gate in "zrq":
            conv(f"{upd}/gru/conv{gate}{step}", f"update_block.recurrent_block.convgru{step}.conv{gate}")
    conv(f"{upd}/flow_head/conv1", "update_block.flow_head.conv1")
    conv(f"{upd}/flow_head/conv2", "update_block.flow_head.conv2")
    conv(f"{upd}/mask/layer_with_weights-0", "mask_predictor.convrelu.0")
    conv(f"{upd}/mask/layer_with_weights-1", "mask_predictor.conv")
    return table


def transpose_corr_blocks(weight: np.ndarray) -> np.ndarray:
    """OIHW convcorr1 weight: swap the two window axes inside each correlation level (y-major → x-major)."""
    out_c, in_c, kh, kw = weight.shape
    side = round((in_c // CORR_LEVELS) ** 0.5)
    if CORR_LEVELS * side * side != in_c:
        raise ValueError(f"{CONVCORR1}: {in_c} input channels are not {CORR_LEVELS} levels of a square window")
    w = weight.reshape(out_c, CORR_LEVELS, side, side, kh, kw).swapaxes(2, 3)
    return np.ascontiguousarray(w.reshape(out_c, in_c, kh, kw))


def checkpoint_sha256(prefix: str) -> str:
    """SHA-256 over the checkpoint's index and data shards, in name order."""
    parent = Path(prefix).parent
    name = Path(prefix).name
    h = hashlib.sha256()
    for part in sorted(parent.glob(name + ".*")):
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_checkpoint(prefix: str) -> dict:
    """torchvision key → OIHW / vector float32 array, read through TensorFlow's checkpoint reader."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up banner out of the tool's output
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
        raise ValueError(f"{prefix}: not a readable TF checkpoint prefix ({e})") from e
    variables = reader.get_variable_to_shape_map()
    table = smurf_tf_names()
    state = {}
    for tf_name, pt_name in table.items():
        full = tf_name + TF_SUFFIX
        if full not in variables:
            raise ValueError(f"{prefix}: variable `{full}` (for `{pt_name}`) not in the checkpoint")
        value = np.asarray(reader.get_tensor(full))
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{prefix}: `{full}` has dtype {value.dtype}, expected floating point")
        if tf_name.endswith("/kernel"):
            if value.ndim != 4:
                raise ValueError(f"{prefix}: `{full}` has shape {value.shape}, expected an HWIO kernel")
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim != 1:
            raise ValueError(f"{prefix}: `{full}` has shape {value.shape}, expected a bias vector")
        state[pt_name] = np.ascontiguousarray(value, dtype=np.float32)
    known = {t + TF_SUFFIX for t in table}
    unmapped = sorted(
        v for v in variables
        if v.startswith(("feature_model/", "flow_model/"))
        and v.endswith(TF_SUFFIX)
        and "/.OPTIMIZER_SLOT/" not in v
        and v not in known
    )
    if unmapped:
        raise ValueError(f"{prefix}: model variables without a mapping: {', '.join(unmapped[:5])}")
    return state


def convert(prefix: str, output: Path, iterations: int) -> dict:
    from safetensors.numpy import save_file

    state = read_checkpoint(prefix)
    state[CONVCORR1] = transpose_corr_blocks(state[CONVCORR1])
    metadata = dict(METADATA, iterations=str(iterations), source=Path(prefix).name,
                    source_sha256=checkpoint_sha256(prefix))
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(output), metadata=metadata)
    return metadata


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefix", help="TF checkpoint prefix, e.g. .../smurf-kitti-smurf-ckpt-31")
    parser.add_argument("output", type=Path, help="output .safetensors")
    parser.add_argument("--iterations", type=int, default=12, help="default iterations recorded in the metadata")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.prefix, args.output, args.iterations)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"convert_smurf_tf: {e}", file=sys.stderr)
        return 1
    print(f"{args.output}: " + ", ".join(f"{k}={v}" for k, v in meta.items() if k != "source_sha256"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
