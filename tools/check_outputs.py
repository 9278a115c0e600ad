#!/usr/bin/env python3
"""Independent check of mrdino's Parquet outputs with the tools other teams use.

Reads OUT/frames and OUT/instances with pyarrow and with duckdb (hive partitions), checks both agree, decodes
every mask with pycocotools and checks it against the row (area, bbox) and, given the flow directory the run
imported, against the moving foreground recomputed here from the flow files: every instance lies inside the
foreground (|flow| rounded to 3 decimals > threshold), and an instance of origin `component` is exactly one
8-connected component of it. With --predictions (a run of `mrdino infer`) it checks the prediction columns
instead: every row has window / window_channel / slot, the masks of a frame are disjoint and on the frame's
canvas, a baseline's masks cover the whole canvas, and every stage-2 object is a kept slot (weight > 0.5)
that is not a window's background channel. Prints a JSON summary; exits non-zero on the first mismatch.
"""
import argparse
import json
import os
import sys

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pycocotools.mask as mask_utils
from scipy import ndimage


def fail(message):
    print(f"check_outputs: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--flow-dir")
    ap.add_argument("--fg-threshold", type=float, default=2.5)
    ap.add_argument("--predictions", action="store_true")
    args = ap.parse_args()

    frames = ds.dataset(os.path.join(args.out, "frames"), format="parquet", partitioning="hive").to_table()
    inst = ds.dataset(os.path.join(args.out, "instances"), format="parquet", partitioning="hive").to_table()
    con = duckdb.connect()
    glob = lambda t: os.path.join(args.out, t, "**", "*.parquet")
    n_frames = con.execute(f"select count(*) from read_parquet('{glob('frames')}', hive_partitioning=true)").fetchone()[0]
    n_inst = con.execute(f"select count(*) from read_parquet('{glob('instances')}', hive_partitioning=true)").fetchone()[0]
    if n_frames != frames.num_rows or n_inst != inst.num_rows:
        fail(f"duckdb sees {n_frames}/{n_inst} rows, pyarrow {frames.num_rows}/{inst.num_rows}")
    per_frame = con.execute(
        f"select sequence_id, frame_index, count(*) from read_parquet('{glob('instances')}') group by all"
    ).fetchall()
    counts = {(s, i): n for s, i, n in per_frame}
    for row in frames.to_pylist():
        if counts.get((row["sequence_id"], row["frame_index"]), 0) != row["num_instances"]:
            fail(f"num_instances of {row['sequence_id']}#{row['frame_index']} does not match the instances table")
        if row["labelled"] != (row["excluded_reason"] is None):
            fail(f"labelled and excluded_reason disagree for {row['sequence_id']}#{row['frame_index']}")

    checked = 0
    fg_cache = {}
    coverage = {}
    canvas = {(r["sequence_id"], r["frame_index"]): (r["height"], r["width"]) for r in frames.to_pylist()}
    for row in inst.to_pylist():
        m = row["mask"]
        rle = {"size": list(m["size"]), "counts": m["counts"].encode()}
        mask = mask_utils.decode(rle).astype(bool)
        if mask.sum() != row["area_px"] or int(mask_utils.area(rle)) != row["area_px"]:
            fail(f"area mismatch for {row['sequence_id']}#{row['frame_index']}/{row['instance_id']}")
        if [float(x) for x in mask_utils.toBbox(rle)] != [float(x) for x in row["bbox_xywh"]]:
            fail(f"bbox mismatch: {mask_utils.toBbox(rle)} vs {row['bbox_xywh']}")
        if args.predictions:
            key = (row["sequence_id"], row["frame_index"])
            if tuple(m["size"]) != canvas[key]:
                fail(f"mask of {key} is {m['size']}, the frame's canvas {canvas[key]}")
            if row["origin"] != "model" or any(row[c] is None for c in ("window", "window_channel", "slot")):
                fail(f"prediction row {key}/{row['instance_id']} lacks its origin or prediction columns")
            stage2 = row["combination_num"] is not None
            if stage2 and (row["window_channel"] == 0 or row["slot"] != row["window_channel"] - 1
                           or not row["deactivation_weight"] > 0.5):
                fail(f"stage-2 row {key}/{row['instance_id']} is a background channel or a deactivated slot")
            if not stage2 and (row["slot"] != row["window_channel"] or row["deactivation_weight"] is not None):
                fail(f"baseline row {key}/{row['instance_id']} has stage-2 columns")
            seen, full = coverage.get(key, (np.zeros(mask.shape, dtype=bool), not stage2))
            if (seen & mask).any():
                fail(f"masks of {key} overlap")
            coverage[key] = (seen | mask, full)
        if args.flow_dir:
            key = (row["sequence_id"], row["frame_name"])
            if key not in fg_cache:
                flow = np.load(os.path.join(args.flow_dir, row["sequence_id"], row["frame_name"] + ".npy"))
                mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).astype(np.float32)
                rounded = np.array([float(f"{v:.3f}") for v in mag.ravel()]).reshape(mag.shape)
                fg = rounded > args.fg_threshold
                labels, _ = ndimage.label(fg, structure=np.ones((3, 3)))
                fg_cache[key] = (fg, labels)
            fg, labels = fg_cache[key]
            if (mask & ~fg).any():
                fail(f"instance {row['sequence_id']}#{row['frame_index']}/{row['instance_id']} leaves the foreground")
            if row["origin"] == "component":
                comp = labels[mask]
                if len(np.unique(comp)) != 1 or not np.array_equal(labels == comp[0], mask):
                    fail(f"instance {row['sequence_id']}#{row['frame_index']}/{row['instance_id']} is not a whole component")
        checked += 1
    for key, (seen, full) in coverage.items():
        if full and not seen.all():
            fail(f"the baseline's masks of {key} leave {int((~seen).sum())} canvas pixels uncovered")
    print(json.dumps({"frames": frames.num_rows, "instances": inst.num_rows, "masks_checked": checked}))


if __name__ == "__main__":
    main()
