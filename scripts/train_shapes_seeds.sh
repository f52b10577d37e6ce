#!/usr/bin/env bash
# The ShapesWorld connector recipe (configs/shapes/ella-TYPE.yaml) for several connector types and
# seeds, all runs in parallel: stage 1 as the config says, then stage 2 resumed to STEPS with
# timesteps drawn towards noise (--timestep_power 2), as the shipped connectors were trained.
#
#   scripts/train_shapes_seeds.sh ROOT STEPS "tsc resampler" "0 1 2" [--key value ...]
#
# STEPS is the total step count at the end of stage 2, or fit:SECONDS for the longest stage 2
# that ends within SECONDS from now (a multiple of 600 steps, at most 12000 in all: what the
# 100-minute stage budget allows on the 2-core CPU), timed on the slowest stage-1 run. A stage 2
# that still runs past its time is stopped with SIGTERM, which saves and exports (the log says so).
# Extra `--key value` pairs go to both stages. Runs land in ROOT/ella-TYPE-seedN (export/ inside).
set -u
root=$1; steps=$2; types=$3; seeds=$4; shift 4
start=$(date +%s)

runner=()  # stage 2 in fit mode: timeout --signal=TERM SECONDS

train_all() {  # stage-name, then arguments for every run after the per-run ones
  local stage=$1; shift
  local pids=()
  for t in $types; do
    for s in $seeds; do
      local dir="$root/ella-$t-seed$s"
      mkdir -p "$dir"
      "${runner[@]}" ella train "configs/shapes/ella-$t.yaml" --output_dir "$dir" --seed "$s" --validate_every 0 "$@" \
        > "$dir/$stage.log" 2>&1 &
      pids+=($!)
    done
  done
  local failed=0 stopped=0 rc
  for pid in "${pids[@]}"; do
    wait "$pid"; rc=$?
    if [[ $rc == 124 ]]; then stopped=$((stopped + 1)); elif [[ $rc != 0 ]]; then failed=$((failed + 1)); fi
  done
  echo "$stage: ${#pids[@]} runs, $failed failed, $stopped stopped at the time limit (saved and exported)," \
    "$(( $(date +%s) - start )) s since start"
}

train_all stage1 "$@"

if [[ $steps == fit:* ]]; then
  budget=$(( ${steps#fit:} - ($(date +%s) - start) - 30 ))  # 30 s: stage-2 start-up and export
  # steps/s of the slowest run, from its closing line "...; X samples/s; exported to ..."
  sps=$(grep -h "^trained" "$root"/ella-*-seed*/stage1.log | grep -o "[0-9.]* samples/s" | sort -n | head -1 | cut -d' ' -f1)
  batch=$(grep -h "^batch_size:" configs/shapes/ella-"${types%% *}".yaml | awk '{print $2}')
  first=$(grep -h "^max_steps:" configs/shapes/ella-"${types%% *}".yaml | awk '{print $2}')
  steps=$(python -c "print(min(12000, $first + max(0, int(${sps:-0} / $batch * $budget / 600)) * 600))")
  runner=(timeout --signal=TERM $(( budget + 20 )))
  echo "stage 2 to $steps steps (slowest stage 1: ${sps:-?} samples/s, $budget s left)"
fi
train_all stage2 "$@" --resume true --max_steps "$steps" --timestep_power 2 --checkpoint_every 600
