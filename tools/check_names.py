#!/usr/bin/env python3
"""Independent check of a `mrdino name` table with the tools other teams use.

Usage: check_names.py SOURCE_RUN NAMES_OUT

Reads SOURCE_RUN/instances and NAMES_OUT/names (hive partitions) with pyarrow and with duckdb, joins them on
(dataset, sequence_id, frame_index, instance_id) in both, and checks the join is one-to-one and covers every
instance; checks the file metadata names the classes, the templates and the three weights' SHA-256, that every
`name` is in the class list and that `score` is the largest of `scores`. Prints a JSON summary; exits non-zero
on the first mismatch.
"""
import json
import os
import sys

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq

KEYS = ["dataset", "sequence_id", "frame_index", "instance_id"]


def fail(message):
    print(f"check_names: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 3:
        fail(__doc__)
    source, names_out = sys.argv[1], sys.argv[2]
    inst = ds.dataset(os.path.join(source, "instances"), format="parquet", partitioning="hive").to_table()
    names_ds = ds.dataset(os.path.join(names_out, "names"), format="parquet", partitioning="hive")
    names = names_ds.to_table()
    joined = inst.select(KEYS).join(names.select(KEYS + ["name"]), keys=KEYS, join_type="inner")
    if not (joined.num_rows == inst.num_rows == names.num_rows):
        fail(f"pyarrow join: {joined.num_rows} rows from {inst.num_rows} instances and {names.num_rows} names")
    con = duckdb.connect()
    glob = lambda root, t: os.path.join(root, t, "**", "*.parquet")
    q = (f"select count(*), count(distinct (i.dataset, i.sequence_id, i.frame_index, i.instance_id)) "
         f"from read_parquet('{glob(source, 'instances')}', hive_partitioning=true) i "
         f"join read_parquet('{glob(names_out, 'names')}', hive_partitioning=true) n "
         f"using (dataset, sequence_id, frame_index, instance_id)")
    rows, distinct = con.execute(q).fetchone()
    if not (rows == distinct == inst.num_rows):
        fail(f"duckdb join: {rows} rows ({distinct} distinct keys) for {inst.num_rows} instances")
    classes = None
    for fragment in names_ds.get_fragments():
        meta = {k.decode(): v.decode() for k, v in (pq.read_metadata(fragment.path).metadata or {}).items()}
        for key in ("mrdino.classes", "mrdino.templates", "mrdino.backbone_sha256", "mrdino.text_sha256",
                    "mrdino.psi_sha256"):
            if key not in meta:
                fail(f"{fragment.path}: no `{key}` in the file metadata")
        for key in ("mrdino.backbone_sha256", "mrdino.text_sha256", "mrdino.psi_sha256"):
            digest = meta[key].removeprefix("tensors-sha256:")
            if not meta[key].startswith("tensors-sha256:") or len(digest) != 64:
                fail(f"{fragment.path}: `{key}` is not a weights identity (tensors-sha256:<64 hex>): {meta[key]}")
        if len(json.loads(meta["mrdino.templates"])) != 7:
            fail(f"{fragment.path}: expected Talk2DINO's 7 templates")
        classes = json.loads(meta["mrdino.classes"])
    for row in names.to_pylist():
        if row["name"] not in classes:
            fail(f"name `{row['name']}` is not in the class list {classes}")
        if len(row["scores"]) != len(classes) or abs(max(row["scores"]) - row["score"]) > 1e-6:
            fail(f"row {row}: score is not the largest of {len(classes)} scores")
        if classes[row["scores"].index(max(row["scores"]))] != row["name"]:
            fail(f"row {row}: the name is not the best-scoring class")
    print(json.dumps({"instances": inst.num_rows, "names": names.num_rows, "joined": joined.num_rows,
                      "duckdb_joined": rows, "classes": classes}))


if __name__ == "__main__":
    main()
