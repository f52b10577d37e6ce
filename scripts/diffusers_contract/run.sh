#!/usr/bin/env bash
# Run diffusers' own PipelineTesterMixin on the four ELLA pipelines (docs/pipeline.md).
#   scripts/diffusers_contract/run.sh DIFFUSERS_CHECKOUT [OUT]
# DIFFUSERS_CHECKOUT: a clone of github.com/huggingface/diffusers (its tests/ folder is used; the
# installed diffusers package is what runs). Writes pytest's summary to OUT
# (default: docs/results/diffusers_contract.txt), with the diffusers commit and versions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
checkout="$(cd "${1:?usage: run.sh DIFFUSERS_CHECKOUT [OUT]}" && pwd)"
out="${2:-$here/../../docs/results/diffusers_contract.txt}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Only the tests: diffusers' conftest puts the checkout's src/ first on sys.path, and the
# contract is checked against the diffusers that users install.
cp -r "$checkout/tests" "$work/tests"
mkdir -p "$work/tests/pipelines/ella_contract"
touch "$work/tests/pipelines/ella_contract/__init__.py"
cp "$here/test_ella_pipelines.py" "$work/tests/pipelines/ella_contract/"
commit="${DIFFUSERS_COMMIT:-$(git -C "$checkout" rev-parse HEAD 2>/dev/null || echo unknown)}"  # or say it, for an exported tree
{
  echo "diffusers tests at commit $commit; run $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -m), $(nproc) cores, no GPU: $(python -c 'import torch; print(torch.cuda.is_available())')"
  python -c 'import diffusers, torch, transformers; print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")'
  (cd "$work" && HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider -n 0 -o addopts= \
     tests/pipelines/ella_contract/test_ella_pipelines.py -rs 2>&1 | tail -n 60) || true
} | tee "$out"
