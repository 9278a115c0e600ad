#!/usr/bin/env bash
# The whole `labels` run with imported flow, at 1 thread and at all threads, on a generated KITTI-sized
# dataset (`mrdino synth`, exact flow). Prints wall-clock seconds, frames per second and the speed-up, and
# checks that both runs wrote identical rows (DuckDB over the two Parquet partitions).
#
# Usage: tools/bench/labels_threads.sh MRDINO PYTHON [WORK_DIR]
set -euo pipefail
mrdino=$1
python=$2
work=${3:-$(mktemp -d)}
sequences=${BENCH_SEQUENCES:-8}
frames=${BENCH_FRAMES:-40}
threads=$(nproc)

data=$work/data
[ -d "$data/frames" ] || "$mrdino" synth --out "$data" --sequences "$sequences" --frames "$frames" --size 1240x376 >/dev/null

run() {
  local out=$work/labels-$1
  rm -rf "$out"
  local start end
  start=$(date +%s.%N)
  "$mrdino" labels --dataset frames --root "$data/frames" --out "$out" --flow import --flow-dir "$data/flow" \
    --threads "$1" --quiet 2>/dev/null
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

one=$(run 1)
all=$(run "$threads")
rows=$(( sequences * (frames - 1) ))
"$python" - "$work/labels-1" "$work/labels-$threads" <<'PY'
import sys, duckdb
a, b = sys.argv[1], sys.argv[2]
for table, key in (("frames", "sequence_id, frame_index"), ("instances", "sequence_id, frame_index, instance_id")):
    q = "select * exclude (params) from read_parquet('{}/{}/*/*.parquet', hive_partitioning=true) order by " + key
    x = duckdb.sql(q.format(a, table)).fetchall()
    y = duckdb.sql(q.format(b, table)).fetchall()
    assert x == y, f"{table}: rows differ between thread counts"
PY
printf 'labels, imported flow, %d sequences x %d frames of 1240x376 (%d rows): 1 thread %.2f s (%.1f frames/s), %d threads %.2f s (%.1f frames/s), speed-up %.2fx; rows identical\n' \
  "$sequences" "$frames" "$rows" "$one" "$(echo "$rows / $one" | bc -l)" "$threads" "$all" "$(echo "$rows / $all" | bc -l)" \
  "$(echo "$one / $all" | bc -l)"
