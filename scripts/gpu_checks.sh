#!/usr/bin/env bash
# The checks that need a GPU, as one short run (a lent GPU machine has minutes, not hours):
# the whole test suite on a machine where "auto" means CUDA, the GPU tests (half precision vs
# fp32 on the CPU), the connector benchmark in fp32 and fp16, `ella generate` on the GPU, and the
# published setting (benchmarks/published_setting.py).
#   scripts/gpu_checks.sh [OUT_DIR] [TEST PATHS...]   (default outputs/gpu_checks, all of tests/)
set -u
OUT=${1:-outputs/gpu_checks}
[ $# -gt 0 ] && shift
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python -m pytest -q -p no:cacheprovider -rfs --tb=short "${@:-tests}" > "$OUT/tests.txt" 2>&1
tail -3 "$OUT/tests.txt"
for dtype in float32 float16; do
  python benchmarks/connector_overhead.py --repeats 20 --dtype "$dtype"
done 2>&1 | grep -v "kept in float32" | tee "$OUT/connector_overhead.txt"
ella generate "A large red circle at the top left and a small blue square at the bottom right, on a gray background." \
  --out "$OUT/generate.png" 2>&1 | tail -3 | tee "$OUT/generate.txt"
# The published setting end to end (needs its weights in the Hugging Face cache, or the hub):
# time to first image, peak GPU memory, images/s at batch 1 and 8.
python benchmarks/published_setting.py --out "$OUT/published_setting.json" 2>&1 | tail -12 | tee "$OUT/published_setting.txt"
# The published setting with regions: a layout file (two boxes and a background prompt) through
# SD1.5 + FLAN-T5-XL + the official connector, beside the same seed without regions.
cat > "$OUT/layout.json" <<'JSON'
{"regions": [{"box": [0.0, 0.3, 0.5, 1.0], "prompt": "a red apple on a wooden table"},
             {"box": [0.5, 0.3, 1.0, 1.0], "prompt": "a blue book on a wooden table"}],
 "background_prompt": "a wooden table in a bright kitchen", "base_ratio": 0.3}
JSON
prompt="a red apple and a blue book on a wooden table, a cat sleeping beside them"
ella generate "$prompt" --preset sd1.5-t5xl --out "$OUT/published_plain.png" 2>&1 | tail -2 | tee "$OUT/published_regions.txt"
ella generate "$prompt" --preset sd1.5-t5xl --regions "$OUT/layout.json" --out "$OUT/published_regions.png" 2>&1 \
  | tail -3 | tee -a "$OUT/published_regions.txt"
