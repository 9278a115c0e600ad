#!/usr/bin/env python3
"""Independent check of `mrdino export` files against the run's Parquet tables.

Reads the done units of a labels or prediction run (the markers under OUT/_done/params=<hash>/ whose listed
outputs all exist) with pyarrow, maps every instance mask from the label grid to the original frame with
PyTorch's `nearest-exact` interpolation of the mask placed back into the resized frame (the provenance rule
of the module docs of outputs/src/provenance.rs, computed here by torch, not by mrdino's formula), and checks:

COCO (--coco FILE), loaded with pycocotools' COCO():
  * images = the labelled frames of the done units in (sequence_id, frame_index) order, ids 1..N, original
    width/height, file_name = source_path (video frames `v.avi#12` -> `v/<frame_name>.png`), and the file
    (or, for video frames, the video) exists under --root;
  * for every annotation: annToMask equals the mapped Parquet mask, the segmentation is exactly what
    pycocotools.mask.encode writes for that mask (compressed string counts, size [h, w]), area and bbox equal
    pycocotools' area / toBbox and the mask's tight box, iscrowd 0, the one category, score / track_id as in
    the table (absent when null); every instance of a labelled frame is there once unless its mapped mask is
    empty;
  * loadRes of the annotations (score 1 where absent) evaluated against the file itself gives segm and bbox
    AP = 1.

YouTube-VIS (--ytvis FILE): pycocotools.ytvos (youtubevos/cocoapi) is not on PyPI, so the file is checked
against the fields that loader and VideoMask2Former's `load_ytvis_json` read (videos: id, width, height,
length, file_names; annotations: id, video_id, category_id, segmentations / areas / bboxes with one entry per
frame, iscrowd, height, width), walked frame by frame as that loader walks it, and every non-null
segmentation decoded by pycocotools.mask equals the mapped Parquet mask; tracks group the instances with one
track_id per sequence, an instance without one is its own track.

Prints a JSON summary; exits non-zero on the first mismatch.
"""
import argparse
import contextlib
import glob
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def fail(message):
    print(f"check_exports: {message}", file=sys.stderr)
    sys.exit(1)


def done_tables(out, params):
    """frames and instances rows of the done units, keyed (sequence_id, frame_index)."""
    if params is None:
        found = sorted(os.path.basename(p)[len("params="):] for p in glob.glob(os.path.join(out, "_done", "params=*")))
        if len(found) != 1:
            fail(f"{out} holds {len(found)} partitions; pass --params")
        params = found[0]
    frames, instances = {}, []
    for marker_path in sorted(glob.glob(os.path.join(out, "_done", f"params={params}", "*.json"))):
        marker = json.load(open(marker_path))
        outputs = [os.path.join(out, o) for o in marker["outputs"]]
        if not all(os.path.isfile(o) for o in outputs):
            continue
        for path in outputs:
            table = pq.read_table(path).to_pylist()
            if os.path.basename(os.path.dirname(os.path.dirname(path))) == "frames":
                for row in table:
                    frames[(row["sequence_id"], row["frame_index"])] = row
            else:
                instances.extend(table)
    return params, frames, instances


def to_original(frame, grid_mask):
    """The mask at the original frame size: back into the resized frame, then nearest-exact to the original."""
    rh, rw, top, left = frame["resized_height"], frame["resized_width"], frame["crop_top"], frame["crop_left"]
    canvas = np.zeros((rh, rw), dtype=np.float32)
    h = max(0, min(grid_mask.shape[0], rh - top))
    w = max(0, min(grid_mask.shape[1], rw - left))
    canvas[top:top + h, left:left + w] = grid_mask[:h, :w]
    out = torch.nn.functional.interpolate(
        torch.from_numpy(canvas)[None, None], size=(frame["orig_height"], frame["orig_width"]), mode="nearest-exact"
    )
    return out[0, 0].numpy().astype(np.uint8)


def tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def expected_file_name(frame):
    path = frame["source_path"]
    video, sep, index = path.rpartition("#")
    if sep and index == str(frame["frame_index"]):
        stem, dot, ext = video.rpartition(".")
        if not dot or "/" in ext or not stem or stem.endswith("/"):
            stem = video
        return f"{stem}/{frame['frame_name']}.png", video
    return path, path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", help="the run's output directory")
    ap.add_argument("--params")
    ap.add_argument("--root", required=True, help="the dataset root the run was made from")
    ap.add_argument("--coco")
    ap.add_argument("--ytvis")
    args = ap.parse_args()
    params, frames, instances = done_tables(args.out, args.params)

    labelled = sorted(k for k, f in frames.items() if f["labelled"])
    reference = {}  # (sequence_id, frame_index, instance_id) -> mask at the original size, empty ones left out
    rows = {}
    for inst in instances:
        key = (inst["sequence_id"], inst["frame_index"])
        if key not in frames or not frames[key]["labelled"]:
            fail(f"instance {inst['instance_id']} of {key} has no labelled frame")
        size = list(inst["mask"]["size"])
        grid = mask_utils.decode({"size": size, "counts": inst["mask"]["counts"].encode()})
        mapped = to_original(frames[key], grid)
        ikey = key + (inst["instance_id"],)
        rows[ikey] = inst
        if mapped.any():
            reference[ikey] = mapped
    summary = {"params": params, "labelled_frames": len(labelled), "instances": len(rows),
               "empty_at_original": len(rows) - len(reference)}

    # pycocotools reports its progress on stdout; stdout carries only the summary.
    with contextlib.redirect_stdout(sys.stderr):
        if args.coco:
            summary["coco"] = check_coco(args.coco, args.root, frames, labelled, rows, reference)
        if args.ytvis:
            summary["youtube_vis"] = check_ytvis(args.ytvis, args.root, frames, labelled, rows, reference)
    print(json.dumps(summary))


def check_optional(ann, row, where):
    for key in ("score", "track_id"):
        value = row.get(key)
        if value is None:
            if key in ann:
                fail(f"{where}: {key} {ann[key]} written but null in the table")
        elif key not in ann or abs(ann[key] - value) > 1e-6:
            fail(f"{where}: {key} {ann.get(key)} but {value} in the table")


def check_coco(path, root, frames, labelled, rows, reference):
    coco = COCO(path)
    images = coco.dataset["images"]
    if [(im["sequence_id"], im["frame_index"]) for im in images] != labelled:
        fail("COCO images are not the labelled frames in (sequence_id, frame_index) order")
    if [im["id"] for im in images] != list(range(1, len(images) + 1)):
        fail("COCO image ids are not 1..N")
    if coco.dataset["categories"] != [{"id": 1, "name": "object", "supercategory": "object"}]:
        fail(f"COCO categories {coco.dataset['categories']}")
    info = coco.dataset["info"]
    for key in ("params_hash", "params", "kind", "code_versions", "flow", "dataset_root"):
        if key not in info:
            fail(f"COCO info lacks {key}")
    image_key = {}
    for im in images:
        frame = frames[(im["sequence_id"], im["frame_index"])]
        name, source = expected_file_name(frame)
        if im["file_name"] != name or im["source_path"] != frame["source_path"]:
            fail(f"image {im['id']}: file_name {im['file_name']}, expected {name}")
        if not os.path.exists(os.path.join(root, source)):
            fail(f"image {im['id']}: {source} does not exist under {root}")
        if (im["height"], im["width"]) != (frame["orig_height"], frame["orig_width"]):
            fail(f"image {im['id']}: {im['width']}x{im['height']} is not the original frame size")
        image_key[im["id"]] = (im["sequence_id"], im["frame_index"])
    seen = []
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    if ann_ids != list(range(1, len(ann_ids) + 1)):
        fail("COCO annotation ids are not 1..N")
    for ann in coco.dataset["annotations"]:
        ikey = image_key[ann["image_id"]] + (ann["instance_id"],)
        where = f"COCO annotation {ann['id']} {ikey}"
        if ikey not in reference:
            fail(f"{where}: no such instance, or its mask is empty at the original size")
        want = reference[ikey]
        seg = ann["segmentation"]
        if not isinstance(seg["counts"], str) or seg["size"] != list(want.shape):
            fail(f"{where}: segmentation is not compressed RLE of size {list(want.shape)}")
        if not np.array_equal(coco.annToMask(ann), want):
            fail(f"{where}: annToMask differs from the Parquet mask mapped to the original frame")
        if mask_utils.encode(np.asfortranarray(want))["counts"].decode() != seg["counts"]:
            fail(f"{where}: counts are not what pycocotools.mask.encode writes")
        area = int(want.sum())
        if ann["area"] != area or int(mask_utils.area(seg)) != area:
            fail(f"{where}: area {ann['area']}, mask has {area}")
        if ann["bbox"] != tight_box(want) or list(mask_utils.toBbox(seg)) != ann["bbox"]:
            fail(f"{where}: bbox {ann['bbox']}, mask box {tight_box(want)}")
        if ann["iscrowd"] != 0 or ann["category_id"] != 1:
            fail(f"{where}: iscrowd {ann['iscrowd']}, category {ann['category_id']}")
        check_optional(ann, rows[ikey], where)
        seen.append(ikey)
    if seen != sorted(reference):
        fail(f"COCO annotations cover {len(seen)} instances in this order, expected {len(reference)} sorted")

    results = [dict(a, score=a.get("score", 1.0)) for a in coco.dataset["annotations"]]
    aps = {}
    for iou_type in ("segm", "bbox"):
        evaluation = COCOeval(coco, coco.loadRes([dict(r) for r in results]), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        aps[iou_type] = float(evaluation.stats[0])
        if results and abs(aps[iou_type] - 1.0) > 1e-9:
            fail(f"COCO {iou_type} AP of the file against itself is {aps[iou_type]}")
    return {"images": len(images), "annotations": len(seen), "self_ap": aps}


def check_ytvis(path, root, frames, labelled, rows, reference):
    data = json.load(open(path))
    for key in ("info", "videos", "annotations", "categories"):
        if key not in data:
            fail(f"YouTube-VIS file lacks `{key}`")
    sequences = sorted({k[0] for k in labelled})
    videos = data["videos"]
    if [v["sequence_id"] for v in videos] != sequences or [v["id"] for v in videos] != list(range(1, len(videos) + 1)):
        fail("YouTube-VIS videos are not the sequences with labelled frames, ids 1..N in order")
    vid_frames = {}
    for v in videos:
        keys = [k for k in labelled if k[0] == v["sequence_id"]]
        first = frames[keys[0]]
        names = [expected_file_name(frames[k])[0] for k in keys]
        if v["length"] != len(keys) or v["file_names"] != names or v["frame_indices"] != [k[1] for k in keys]:
            fail(f"video {v['id']}: frames {v['file_names']}, expected {names}")
        if (v["height"], v["width"]) != (first["orig_height"], first["orig_width"]):
            fail(f"video {v['id']}: size {v['width']}x{v['height']}")
        vid_frames[v["id"]] = keys

    # The index of pycocotools.ytvos (YTVOS.createIndex) and the frame walk of load_ytvis_json.
    anns_by_video = {}
    for ann in data["annotations"]:
        anns_by_video.setdefault(ann["video_id"], []).append(ann)
    if [a["id"] for a in data["annotations"]] != list(range(1, len(data["annotations"]) + 1)):
        fail("YouTube-VIS annotation ids are not 1..N")
    covered = []
    tracks = {}
    for v in videos:
        length = v["length"]
        for ann in anns_by_video.get(v["id"], []):
            where = f"YouTube-VIS annotation {ann['id']}"
            for key in ("segmentations", "areas", "bboxes", "instance_ids"):
                if len(ann[key]) != length:
                    fail(f"{where}: {len(ann[key])} {key} for a video of {length} frames")
            if (ann["length"], ann["height"], ann["width"], ann["iscrowd"], ann["category_id"]) != (
                length, v["height"], v["width"], 0, 1):
                fail(f"{where}: length/height/width/iscrowd/category are wrong")
            members = []
            for frame_idx in range(length):
                bbox, segm = ann["bboxes"][frame_idx], ann["segmentations"][frame_idx]
                if not (bbox and segm):
                    if bbox or segm or ann["areas"][frame_idx] is not None or ann["instance_ids"][frame_idx] is not None:
                        fail(f"{where}: frame {frame_idx} is half null")
                    continue
                ikey = vid_frames[v["id"]][frame_idx] + (ann["instance_ids"][frame_idx],)
                if ikey not in reference:
                    fail(f"{where}: frame {frame_idx} is {ikey}, not a non-empty instance")
                want = reference[ikey]
                if not isinstance(segm["counts"], str) or segm["size"] != list(want.shape):
                    fail(f"{where}: frame {frame_idx} is not compressed RLE of size {list(want.shape)}")
                if not np.array_equal(mask_utils.decode(segm), want):
                    fail(f"{where}: frame {frame_idx} differs from the Parquet mask mapped to the original frame")
                if ann["areas"][frame_idx] != int(want.sum()) or bbox != tight_box(want) or \
                        list(mask_utils.toBbox(segm)) != bbox:
                    fail(f"{where}: frame {frame_idx} area/bbox do not match its mask")
                members.append(ikey)
            if not members:
                fail(f"{where}: no frame")
            track_ids = {rows[k].get("track_id") for k in members}
            if len(track_ids) != 1 or (None in track_ids and len(members) != 1):
                fail(f"{where}: mixes instances of tracks {track_ids}")
            track_id = track_ids.pop()
            if track_id is not None:
                tracks[(v["sequence_id"], track_id)] = members
            if track_id != ann.get("track_id"):
                fail(f"{where}: track_id {ann.get('track_id')}, table says {track_id}")
            scores = [rows[k]["score"] for k in members if rows[k].get("score") is not None]
            if scores and abs(ann["score"] - sum(scores) / len(scores)) > 1e-6 or (not scores and "score" in ann):
                fail(f"{where}: score {ann.get('score')}, table scores {scores}")
            covered.extend(members)
    if sorted(covered) != sorted(reference) or len(covered) != len(set(covered)):
        fail("YouTube-VIS annotations do not cover every non-empty instance exactly once")
    for k in reference:
        track_id = rows[k].get("track_id")
        if track_id is not None and k not in tracks[(k[0], track_id)]:
            fail(f"instance {k} of track {track_id} is not in its track's annotation")
    return {"videos": len(videos), "annotations": len(data["annotations"]), "masks": len(covered)}


if __name__ == "__main__":
    main()
