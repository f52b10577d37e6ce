#!/usr/bin/env bash
# Recaptioning on ShapesWorld (docs/shapesworld.md, "Recaptioning"): a training set whose own
# captions are alt-text-like (shapes:N:alt: one or two objects, attributes missing), recaptioned
# by `ella caption --captioner shapes[:P]`; the same connector and budget trained on
#   alt        the original captions
#   recap      the recaptioned ones (P = 0)
#   mix        recaptioned 95% / original 5% (DALL-E 3's mix)
#   recap-p0.1, recap-p0.3   an imperfect captioner (each object left out or mislabelled with P)
# then `ella bench shapes` dense and brief on the same held-out prompts; summaries into OUT.json.
#   scripts/shapes_recaption.sh ROOT STEPS PROMPTS OUT.json    (e.g. runs/recaption 600 30 docs/results/shapesworld-recaption.json)
set -euo pipefail
root=$1; steps=$2; prompts=$3; out=$4
here="$(cd "$(dirname "$0")/.." && pwd)"
data=shapes:10000:alt
model="$here/src/ella/assets/shapes"
mkdir -p "$root"
for p in 0 0.1 0.3; do
  ella caption "$data" --captioner "shapes:$p" --out "$root/captions/shapes-p$p" -q
done
declare -A mix=(
  [alt]="{original: 1.0}"
  [recap]="{$root/captions/shapes-p0: 1.0}"
  [mix]="{$root/captions/shapes-p0: 0.95, original: 0.05}"
  [recap-p0.1]="{$root/captions/shapes-p0.1: 1.0}"
  [recap-p0.3]="{$root/captions/shapes-p0.3: 1.0}"
)
train() {  # NAME: cache, then train one connector (one thread: two runs share the 2 cores)
  local name=$1 dir="$root/$1"
  local args=(--model "$model" --train-data "$data" --captions "${mix[$name]}" --cache-dir "$dir/cache")
  mkdir -p "$dir"
  OMP_NUM_THREADS=1 ella cache "$here/configs/shapes/ella-tsc-dense.yaml" "${args[@]}" > "$dir/cache.log" 2>&1
  OMP_NUM_THREADS=1 ella train "$here/configs/shapes/ella-tsc-dense.yaml" "${args[@]}" --output-dir "$dir" \
    --max-steps "$steps" --validate-every 0 --checkpoint-every "$steps" --log-every 100 > "$dir/train.log" 2>&1
  echo "[$(date +%H:%M:%S)] $name: $(tail -1 "$dir/train.log")"
}
names=(alt recap mix recap-p0.1 recap-p0.3)
for ((i = 0; i < ${#names[@]}; i += 2)); do
  train "${names[i]}" &
  [ $((i + 1)) -lt ${#names[@]} ] && train "${names[i + 1]}" &
  wait
done
models="base$(for n in "${names[@]}"; do printf ',%s' "$root/$n/export"; done)"
for style in dense brief; do
  OMP_NUM_THREADS=1 ella bench shapes --prompts "$prompts" --models "$models" --captions "$style" \
    --out "$root/bench-$style" --json > "$root/bench-$style.json" 2> "$root/bench-$style.log" &
done
wait
python - "$root" "$out" "$steps" "$prompts" "${names[@]}" <<'PY'
import json, sys
root, out, steps, prompts, *names = sys.argv[1:]
result = {"steps": int(steps), "prompts": int(prompts), "data": "shapes:10000:alt", "machine": "2-core development CPU",
          "command": f"scripts/shapes_recaption.sh {root} {steps} {prompts} {out}", "runs": {}}
for style in ("dense", "brief"):
    with open(f"{root}/bench-{style}.json") as f:
        summaries = json.load(f)  # {model: summary}
    for model, summary in summaries.items():
        name = next((n for n in names if model.rstrip("/").endswith(f"/{n}/export")), model)
        result["runs"].setdefault(name, {})[style] = {"overall": summary["overall"], **summary["l1"]}
for n in names:
    with open(f"{root}/{n}/train.log") as f:
        result["runs"].setdefault(n, {})["train_log_last_line"] = f.read().strip().splitlines()[-1]
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps(result, indent=2))
PY
