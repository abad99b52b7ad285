#!/usr/bin/env bash
# Re-measure the committed CPU results with OpenBLAS's native kernel, and with the kernel
# pinned to Haswell, back to back: forward and backward workloads, 2 threads.
#
#   bash benchmarks/remeasure.sh [DATE] [--one-core]
#
# Run it on an otherwise idle machine (the runs flag themselves when it is not: read the
# "flags" column and the notes). The two settings alternate, so a change of load hits both.
# Only the benchmark commands get the changed environment: never set these variables in
# tests or CI.
#   native: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE  (OpenBLAS picks the CPU's kernel)
#   pinned: OPENBLAS_CORETYPE=Haswell, OPENBLAS_L2_SIZE unset
# Writes benchmarks/results/cpu-DATE-{native,haswell}.{json,md,png} and
# cpu-backward-DATE-{native,haswell}.*; with --one-core also the *-1thread-* variants
# (--threads 1 --clock thread). Ends with benchmarks/compare_runs.py on each pair.
# About 10 minutes on 2 idle cores (20 with --one-core), plus waits for a quiet load.
set -euo pipefail
cd "$(dirname "$0")/.."
DATE=${1:-$(date -u +%Y-%m-%d)}
ONE_CORE=${2:-}
OUT=benchmarks/results
BACKWARD=conv2d_resnet_backward,conv2d_stem_backward,conv1d_backward,conv3d_backward,conv_transpose2d_backward,depthwise_backward,deform_conv2d_backward

wait_quiet() {  # until the 1-minute load average is under the benchmark's limit (<= 5 min)
  local limit waited=0
  limit=$(python -c "import os; from gpuconv import bench; print(bench.LOADAVG_LIMIT * os.cpu_count())")
  while python -c "import os, sys; sys.exit(os.getloadavg()[0] <= $limit)" && [ $waited -lt 300 ]; do
    sleep 10
    waited=$((waited + 10))
  done
}

run() {  # run SETTING NAME [bench args...]
  local setting=$1 name=$2
  shift 2
  local prefix
  if [ "$setting" = native ]; then
    prefix=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
  else
    prefix=(env -u OPENBLAS_L2_SIZE OPENBLAS_CORETYPE=Haswell)
  fi
  wait_quiet
  echo "== $name ($setting): $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"
  "${prefix[@]}" python -m gpuconv bench --no-progress "$@" \
    --json "$OUT/$name.json" --markdown "$OUT/$name.md" --plot "$OUT/$name.png"
}

for setting in native haswell; do
  run "$setting" "cpu-$DATE-$setting"
done
for setting in native haswell; do
  run "$setting" "cpu-backward-$DATE-$setting" --ops "$BACKWARD"
done
if [ "$ONE_CORE" = --one-core ]; then
  for setting in native haswell; do
    run "$setting" "cpu-$DATE-1thread-$setting" --threads 1 --clock thread
    run "$setting" "cpu-backward-$DATE-1thread-$setting" --ops "$BACKWARD" --threads 1 \
      --clock thread
  done
fi
echo "== native vs OPENBLAS_CORETYPE=Haswell"
python benchmarks/compare_runs.py "$OUT/cpu-$DATE-native.json" "$OUT/cpu-$DATE-haswell.json"
python benchmarks/compare_runs.py "$OUT/cpu-backward-$DATE-native.json" \
  "$OUT/cpu-backward-$DATE-haswell.json"

