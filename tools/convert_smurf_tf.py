#!/usr/bin/env python3
"""Convert Google's TF SMURF checkpoint (e.g. `gs://gresearch/smurf/kitti`, prefix `smurf-kitti-smurf-ckpt-31`)
straight to the safetensors layout read by `mrdino_stages::flow::raft`, without the intermediate `.pt`.

Needs TensorFlow (CPU wheel) and numpy; nothing else of TF SMURF. Pass the checkpoint *prefix*, not the
`.data-00000-of-00001` file. The name table (`smurf_tf_names`) and the finishing step (convcorr1 y-major →
x-major transpose, metadata, write) are shared with `convert_raft.py`, so a TF checkpoint and the port's
`smurf_kitti.pt` give identical files apart from the `source*` metadata.

Kernels are stored HWIO in TF and permuted to OIHW here. UNTESTED in this repository: the development
machine has neither TensorFlow nor a SMURF checkpoint. The 94 names follow the SMURF port's converter table;
any checkpoint variable of the feature/flow model left unmapped, or any table entry absent from the checkpoint,
is reported as an error rather than skipped.

Usage: convert_smurf_tf.py CHECKPOINT_PREFIX OUTPUT.safetensors [--iterations N]
"""

import argparse
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_raft import TF_SUFFIX, finish, smurf_tf_names  # noqa: E402


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


def convert(prefix: str, output: Path, iterations: int) -> dict:
    from tensorflow.python.training import py_checkpoint_reader

    reader = py_checkpoint_reader.NewCheckpointReader(prefix)
    variables = reader.get_variable_to_shape_map()
    table = smurf_tf_names()
    state = {}
    for tf_name, pt_name in table.items():
        full = tf_name + TF_SUFFIX
        if full not in variables:
            raise ValueError(f"{prefix}: variable `{full}` (for `{pt_name}`) not in the checkpoint")
        value = torch.from_numpy(reader.get_tensor(full))
        if tf_name.endswith("/kernel"):
            if value.dim() != 4:
                raise ValueError(f"{prefix}: `{full}` has shape {tuple(value.shape)}, expected an HWIO kernel")
            value = value.permute(3, 2, 0, 1)
        state[pt_name] = value.contiguous()
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
    return finish(state, "smurf", iterations, Path(prefix), checkpoint_sha256(prefix), output)


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
