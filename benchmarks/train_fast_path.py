"""Training's fast path (what `ella train` does by default) against the plain path, side by side.

Two parts, each side by side in one invocation:

- throughput: the ShapesWorld recipe's step (`configs/shapes/ella-tsc.yaml`: batch 32
  from the feature cache, one thread as the recipe's CPU-minutes are counted) through
  `loop.train_step`, plain (`mixed_precision: no`, fp32) and fast (`auto`: bf16 autocast where the
  CPU computes bf16 natively), in alternation (median of per-pair ratios); and the feature cache's
  text encoding, the LLM reading every caption to max_length (before) or to the batch's longest
  (now, in flexible mode).
- equal results (`--twin RUN`, instead): a finished fast run trained again on the plain path from the same
  config and seed, then both loss curves (means over `--window` steps) and both exports' bench
  scores (`ella bench shapes`, dense) side by side; with `--seed-twin`, another seed's loss
  curve as the measure of seed noise; with `--steps N`, copies of both runs continued to N
  steps first (a longer run is where the bench can tell: two seeds' scores differ less).

    ella cache configs/shapes/ella-tsc.yaml --model src/ella/assets/shapes \\
        --train_data shapes:2048:dense+brief+relative+varied+varied --cache_dir /tmp/shapes-cache
    python benchmarks/train_fast_path.py --cache /tmp/shapes-cache [--out benchmarks/results/train_fast_path_cpu.json]
    python benchmarks/train_fast_path.py --twin runs/recaption/recap/seed0 --seed-twin runs/recaption/recap/seed1 [--out ...]
    python benchmarks/train_fast_path.py --twin runs/recaption/recap/seed0 --steps 3000 \\
        --seed-twin runs/recaption-3000/recap/seed1 [--out ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_throughput(cache: str, pairs: int) -> dict:
    """samples/s of the recipe's step on the plain and the fast path, in alternation."""
    from train_step_profile import _median, _ratio, recipe_run

    from ella.train import loop

    def path(precision: str):
        _, run, batches, encoder, empty = recipe_run(cache, f"/tmp/ella-fast-path-{precision}", mixed_precision=precision)
        return run, lambda: loop.train_step(run, batches, encoder, empty, None)

    (plain_run, plain), (fast_run, fast) = path("no"), path("auto")
    plain_s = _median(plain, pairs)
    speedup = _ratio(plain, fast, pairs)
    return {"batch": plain_run.config.batch_size, "fast path precision": "bf16" if fast_run.cpu_bf16 else "fp32",
            "plain samples/s": plain_run.config.batch_size / plain_s,
            "fast samples/s": plain_run.config.batch_size / plain_s * speedup, "speed-up": speedup}


def encode_throughput(n: int, pairs: int) -> dict:
    """captions/s of the cache's text encoding (MiniLM, max_length 96) of short and dense
    ShapesWorld captions: every caption read to max_length (before) or to the batch's longest."""
    from train_step_profile import _median, _ratio

    from ella.shapes.data import ShapesSceneDataset
    from ella.text_encoders import LLMEncoder, load_text_encoder

    model, tokenizer = load_text_encoder("minilm")
    before, now = (LLMEncoder(model, tokenizer, max_length=96, mode=m) for m in ("fixed", "flexible"))
    result = {}
    for style in ("alt", "dense"):
        dataset = ShapesSceneDataset.from_spec(f"shapes:{n}:{style}")
        captions = [dataset.item(i)[1] for i in range(n)]
        batches = [captions[i:i + 32] for i in range(0, n, 32)]
        old, new = (functools.partial(_encode_all, encoder, batches) for encoder in (before, now))
        first = _median(old, pairs)
        speedup = _ratio(old, new, pairs)
        result[style] = {"before captions/s": n / first, "now captions/s": n / first * speedup, "speed-up": speedup}
    return result


def twin(run_dir: str, window: int, prompts: int, seed_twin: str | None, steps: int | None = None) -> dict:
    """The finished fast run at `run_dir` trained again on the plain path; loss windows and dense
    bench scores side by side, and the largest relative difference of two loss windows, against
    that of the run and `seed_twin` (the same config, another seed: the seed noise). With `steps`,
    copies of both runs are first continued to that length, each on its own path."""
    from ella.train.checkpoint import latest_checkpoint, load_training_state

    run_dir = run_dir.rstrip("/")
    config = os.path.join(run_dir, "export", "training_config.yaml")
    plain_dir = _trained(run_dir + "-plain", ["ella", "train", config, "--mixed-precision", "no"])
    if steps:
        run_dir, plain_dir = (_trained(f"{d}-{steps}", ["ella", "train", config, "--mixed-precision", precision,
                                                       "--max-steps", str(steps), "--checkpoint-every", str(steps)], d)
                              for d, precision in ((run_dir, "auto"), (plain_dir, "no")))
    curves = {}
    for name, d in (("plain", plain_dir), ("fast", run_dir), ("another seed", seed_twin)):
        if d:
            losses = [loss for _, loss in load_training_state(latest_checkpoint(d))["losses"].tolist()]
            curves[name] = [round(statistics.fmean(losses[i:i + window]), 5) for i in range(0, len(losses), window)]

    def apart(a: str, b: str) -> float:
        return round(max(abs(x - y) / y for x, y in zip(curves[a], curves[b])), 4)

    differences = {"plain vs fast": apart("plain", "fast")}
    if seed_twin:
        differences["another seed vs fast (the seed noise)"] = apart("another seed", "fast")
    exports = [os.path.join(d, "export") for d in (plain_dir, run_dir)]
    out = _run(["ella", "bench", "shapes", "--prompts", str(prompts), "--models", ",".join(exports), "--captions",
                "dense", "--out", plain_dir + "-bench", "--json"], plain_dir + "-bench.log")
    scores = json.loads(out)
    return {"run": run_dir, "plain twin": plain_dir, "seed twin": seed_twin, f"loss, means over {window} steps": curves,
            "largest relative difference of two loss windows": differences,
            f"dense bench, {prompts} prompts x 4": {name: {"overall": scores[e]["overall"], **scores[e]["l1"]}
                                                     for name, e in zip(("plain", "fast"), exports)}}


def _trained(out: str, train: list[str], continues: str | None = None) -> str:
    """`out` after `train` ran into it, resumed, unless its export is there; a continuation starts
    from a copy of the resume states of the run `continues` (the lr restarts on the longer cosine,
    as the recaptioning experiment continues its runs)."""
    if not os.path.isfile(os.path.join(out, "export", "config.json")):
        if continues and not os.path.isdir(out):
            shutil.copytree(os.path.join(continues, "checkpoints"), os.path.join(out, "checkpoints"))
        _run([*train, "--output-dir", out, "--resume", "true"], out + ".log")
    return out


def _encode_all(encoder, batches: list[list[str]]) -> None:
    for batch in batches:
        encoder.encode_padded(batch)


def _run(cmd: list[str], log: str) -> str:
    with open(log, "a") as f:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed (exit {out.returncode}); see {log}")
    return out.stdout


def main() -> None:
    from train_step_profile import step_arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    step_arguments(parser, cache_required=False)  # --cache (the throughput part), --threads, --pairs, --out, --load
    parser.add_argument("--captions", type=int, default=512, help="captions per style for the encoding timing")
    parser.add_argument("--twin", default=None, help="instead: a finished fast run to train again on the plain path")
    parser.add_argument("--seed-twin", default=None, help="with --twin: the same run with another seed (seed noise)")
    parser.add_argument("--steps", type=int, default=None,
                        help="with --twin: continue copies of the run and its plain twin to this many steps first")
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=50)
    args = parser.parse_args()
    if not (args.twin or args.cache):
        parser.error("give --cache (throughput) or --twin RUN (equal results)")
    torch.set_num_threads(args.threads)

    from startup import report

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.threads} torch thread(s); {args.load}",
              "command": "python " + " ".join(["benchmarks/train_fast_path.py", *sys.argv[1:]])}
    if args.twin:
        result["equal results"] = twin(args.twin, args.window, args.prompts, args.seed_twin, args.steps)
    else:
        result["recipe step (ella-tsc.yaml, from the cache)"] = step_throughput(args.cache, args.pairs)
        result["cache text encoding (MiniLM, max_length 96, batches of 32)"] = encode_throughput(args.captions, args.pairs)
    report(result, args.out)


if __name__ == "__main__":
    main()
