#!/usr/bin/env bash
# The ShapesWorld connector recipe (configs/shapes/ella-TYPE.yaml) for several connector types and
# seeds, every run in parallel: stage 1 as the config says, then each later stage resumed to the
# next step count in STAGES, with timesteps drawn towards noise (--timestep-power 2). A resume with
# a larger max_steps restarts the lr on the longer cosine (the schedule's shape comes from the
# config, its position from the checkpoint), so each stage is a warm restart.
#
#   scripts/train_shapes_connectors.sh ROOT STAGES "TYPES" "SEEDS" [--key value ...]
#   scripts/train_shapes_connectors.sh runs/shapes 4200,6600 "tsc-dense resampler" "0 1 2"
#
# STAGES: comma-separated step counts: 4200,6600 is the shipped connectors' recipe (stage 2 to
# 4200, stage 3 to 6600). Extra `--key value` pairs go to every stage (a stage's own flags come
# after them and win). Runs land in ROOT/ella-TYPE-seedN, with export/ inside (the slim export of
# the last stage) and one log per stage. On a CPU, set OMP_NUM_THREADS=1 when several runs share
# a few cores (they spin-wait on each other's threads).
set -euo pipefail
root=$1; stages=$2; types=$3; seeds=$4; shift 4

train_all() {  # STAGE-NAME ARGS...: one `ella train` per type and seed, all in parallel
  local name=$1; shift
  local pids=() failed=0
  for t in $types; do
    for s in $seeds; do
      local dir="$root/ella-$t-seed$s"
      mkdir -p "$dir"
      ella train "configs/shapes/ella-$t.yaml" --output-dir "$dir" --seed "$s" "$@" > "$dir/$name.log" 2>&1 &
      pids+=($!)
    done
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  echo "[$(date +%H:%M:%S)] $name: ${#pids[@]} runs, $failed failed (logs: $root/ella-*-seed*/$name.log)"
  [ "$failed" = 0 ]
}

train_all stage1 "$@"
n=2
for steps in ${stages//,/ }; do
  train_all "stage$n" "$@" --resume true --max-steps "$steps" --timestep-power 2 --checkpoint-every 600
  n=$((n + 1))
done
