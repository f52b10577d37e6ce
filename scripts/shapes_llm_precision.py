"""Does the LLM's precision change the images? ShapesWorld's LLMs (MiniLM, SmolLM2) in fp32, bf16,
fp16 and int8 (weight-only, `Int8Linear`): for each, the largest and mean change of the LLM features
against fp32 over held-out dense prompts (real tokens only), the weights' size, the peak resident
memory of a process that imports the libraries, loads the LLM and encodes those prompts, and the bench score of the
shipped connector that reads it (`ella bench shapes --llm-precision`, into --bench-dir).

    python scripts/shapes_llm_precision.py --bench-dir runs/shapes-bench50 --bench-prompts 50 \
        --out docs/results/shapesworld-llm-precision.json
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time

import torch

from ella.shapes.catalog import CONNECTORS
from ella.shapes.data import HELDOUT_SEED, ShapesSceneDataset
from ella.text_encoders import LLM_PRECISIONS, LLMEncoder, convert_llm, load_text_encoder

LLMS = {"minilm": "tsc", "smollm2": "tsc-smollm2"}  # LLM -> the shipped connector that reads it


def prompts(n: int) -> list[str]:
    data = ShapesSceneDataset(n, seed=HELDOUT_SEED, captions="dense")
    return [data.item(i)[1] for i in range(n)]


def encode(llm: str, precision: str, texts: list[str]):
    model, tokenizer = load_text_encoder(llm)
    convert_llm(model, precision)
    echo = CONNECTORS[LLMS[llm]].echo
    features = LLMEncoder(model, tokenizer, 128, "flexible", echo)(texts)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return features, buffer.tell()


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def child(llm: str, precision: str, n: int) -> None:
    """Run in its own process: its peak resident memory (libraries, the LLM at this precision,
    encoding the prompts) and the LLM's weights' size."""
    _, weight_bytes = encode(llm, precision, prompts(n))
    print(json.dumps({"process peak rss_mb": round(_status_mb("VmHWM"), 1), "weights_mb": round(weight_bytes / 2**20, 2)}))


def bench(connector: str, precision: str, n: int, bench_dir: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "ella.cli", "bench", "shapes", "--prompts", str(n), "--models",
         connector, "--out", bench_dir, "--llm-precision", precision, "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)[connector]["overall"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=200, help="held-out dense prompts for the feature changes")
    p.add_argument("--bench-prompts", type=int, default=50)
    p.add_argument("--bench-dir", default="runs/shapes-bench50")
    p.add_argument("--llms", default="minilm,smollm2")
    p.add_argument("--precisions", default=",".join(LLM_PRECISIONS))
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--out")
    p.add_argument("--child", nargs=2, metavar=("LLM", "PRECISION"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child, args.prompts)
    t0, texts, rows = time.time(), prompts(args.prompts), []
    for llm in args.llms.split(","):
        reference, _ = encode(llm, "fp32", texts)
        real = reference.attention_mask.bool()
        for precision in args.precisions.split(","):
            features, _ = encode(llm, precision, texts)
            diff = (features.hidden_states.float() - reference.hidden_states)[real].abs()
            memory = json.loads(subprocess.run(
                [sys.executable, __file__, "--child", llm, precision, "--prompts", str(args.prompts)],
                check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            row = {"llm": llm, "precision": precision, "feature max abs change": round(diff.max().item(), 4),
                   "feature mean abs change": round(diff.mean().item(), 5),
                   "feature mean abs value": round(reference.hidden_states[real].abs().mean().item(), 4), **memory}
            if not args.no_bench:
                row[f"bench dense overall ({args.bench_prompts} prompts)"] = bench(
                    LLMS[llm], precision, args.bench_prompts, args.bench_dir)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"rows": rows, "prompts for the feature changes": args.prompts,
              "machine": "2-core CPU (the development machine), torch " + torch.__version__,
              "command": " ".join(["python", "scripts/shapes_llm_precision.py", *sys.argv[1:]]),
              "seconds": round(time.time() - t0, 1)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
