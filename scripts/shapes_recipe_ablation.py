"""The ShapesWorld recipe ablation (docs/shapesworld.md, "The recipe"): bench score against
CPU-minutes for what the paper leaves open and practitioners use.

Every variant is stage 1 of the shipped connector's recipe (`configs/shapes/ella-tsc-dense.yaml`: a TSC
from scratch on dense captions, the frozen base, MiniLM, the same cached features) with one thing
changed, trained for `--steps` optimizer steps (warm-up scaled with them) and benched at
`--evals` evenly spaced checkpoints on `--prompts` held-out dense prompts x 4 images. The x axis
is the training process's own CPU time (`TrainResult.cpu_seconds`, summed over its threads), so
runs sharing the machine are compared by what they cost, not by when they ran. Each run uses one
thread (OMP_NUM_THREADS=1); `--workers` runs go side by side.

    ella cache configs/shapes/ella-tsc-dense.yaml --model src/ella/assets/shapes --cache-dir runs/recipe/cache
    python scripts/shapes_recipe_ablation.py --root runs/recipe --cache-dir runs/recipe/cache
    python scripts/shapes_recipe_ablation.py ... --variants power2 --seed 1     # a second seed

Writes ROOT/summary.json (what it held when the invocation started, plus this invocation's runs:
run invocations one after another; a finished run is not trained again, only re-scored) and,
with --plot, a figure of the curves.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(REPO, "configs", "shapes", "ella-tsc-dense.yaml")
SHIPPED = os.path.join(REPO, "src", "ella", "assets", "shapes")

# One change each from the stage-1 recipe (uniform timesteps, lr 1e-3, batch 32, no EMA).
# batch64 sees as many samples as the others in half the steps.
VARIANTS = {
    "uniform": ({}, "the recipe's stage 1: uniform timesteps, lr 1e-3, batch 32, no EMA"),
    "power2": ({"timestep_power": "2"}, "timesteps t = T u^(1/2): density rising towards noise"),
    "logit-normal": ({"timestep_logit_normal": "[0.0, 1.0]"}, "timesteps T sigmoid(N(0, 1)) (SD3)"),
    "min-snr5": ({"snr_gamma": "5"}, "min-SNR-gamma loss weighting, gamma 5 (v-prediction aware)"),
    "lr3e-3": ({"lr": "3e-3"}, "learning rate 3e-3"),
    "batch64": ({"batch_size": "64"}, "batch 64, half the steps (the same samples)"),
    "ema0.99": ({"ema_decay": "0.99"}, "EMA of the weights, decay 0.99, exported instead of the weights"),
}


def run(cmd: list[str], log: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "a") as f:
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {out.returncode}); see {log}")
    return out.stdout


def train(name: str, seed: int, args) -> str:
    changes, _ = VARIANTS[name]
    steps = args.steps // 2 if name == "batch64" else args.steps
    out = os.path.join(args.root, f"{name}-seed{seed}")
    os.makedirs(out, exist_ok=True)
    overrides = {"model": SHIPPED, "cache_dir": args.cache_dir, "output_dir": out, "seed": str(seed),
                 "max_steps": str(steps), "warmup_steps": str(max(1, steps // 12)),  # 100 of 1200
                 "checkpoint_every": str(steps // args.evals), "keep_checkpoints": "0", "validate_every": "0",
                 "log_every": str(max(1, steps // 8)), **changes}
    cmd = ["ella", "train", BASE_CONFIG] + [a for k, v in overrides.items() for a in (f"--{k.replace('_', '-')}", v)]
    if not os.path.isdir(os.path.join(out, "export")):
        run(cmd + ["--resume", "true"], os.path.join(out, "train.log"))
    return out


def bench_checkpoint(run_dir: str, ckpt: str, args) -> dict:
    """The checkpoint's connector (its EMA when the run kept one), saved as an export folder beside
    it, benched with `ella bench shapes --models FOLDER`."""
    import torch
    import yaml

    from ella.models import ELLA

    state = torch.load(os.path.join(ckpt, "state.pt"), map_location="cpu", weights_only=False)
    export = os.path.join(ckpt, "export")
    ella = ELLA.from_pretrained(os.path.join(run_dir, "export"))
    ella.load_state_dict(state["ema"] or state["ella"])
    ella.save_pretrained(export)
    shutil.copyfile(os.path.join(ckpt, "config.yaml"), os.path.join(export, "training_config.yaml"))  # its LLM
    out = run(["ella", "bench", "shapes", "--models", export, "--prompts", str(args.prompts),
               "--out", os.path.join(ckpt, "bench"), "--json"], os.path.join(run_dir, "bench.log"))
    summary = json.loads(out)[export]
    with open(os.path.join(ckpt, "config.yaml")) as f:
        batch_size = yaml.safe_load(f)["batch_size"]
    return {"step": int(state["step"]), "cpu_minutes": round(state["cpu_seconds"] / 60, 2),
            "samples": int(state["step"]) * batch_size, "overall": summary["overall"], **summary["l1"]}


def variant(name: str, seed: int, args, results: dict, lock: threading.Lock) -> None:
    run_dir = train(name, seed, args)
    root = os.path.join(run_dir, "checkpoints")
    points = [bench_checkpoint(run_dir, os.path.join(root, c), args) for c in sorted(os.listdir(root))
              if c.startswith("step-")]
    with lock:
        results.setdefault(name, {"what": VARIANTS[name][1]})[f"seed{seed}"] = points
        save(results, args)
    print(f"{name} seed {seed}: " + ", ".join(f"{p['cpu_minutes']} min -> {p['overall']}" for p in points), flush=True)


def save(results: dict, args) -> None:
    summary = {"what": f"stage 1 of configs/shapes/ella-tsc-dense.yaml with one change each, {args.steps} steps (batch64:"
                       f" {args.steps // 2}), warm-up steps/12; `ella bench shapes --prompts {args.prompts}` (dense,"
                       " 4 images, 25 steps, guidance 5) at each checkpoint; cpu_minutes: the training process's"
                       " CPU time in training steps, one thread",
               "command": "python " + " ".join(["scripts/shapes_recipe_ablation.py"] + sys.argv[1:]),
               "variants": results}
    path = os.path.join(args.root, "summary.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(path + ".tmp", path)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, runs in results.items():
        for key, points in runs.items():
            if key.startswith("seed"):
                ax.plot([p["cpu_minutes"] for p in points], [p["overall"] for p in points], marker="o",
                        label=f"{name} ({key})", linestyle="-" if key == "seed0" else "--")
    ax.set_xlabel("CPU-minutes of training (one thread)")
    ax.set_ylabel("ella bench shapes, dense, overall")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/recipe")
    parser.add_argument("--cache-dir", default="runs/recipe/cache")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--evals", type=int, default=2, help="checkpoints benched per run, evenly spaced")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    args = parser.parse_args()
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    path = os.path.join(args.root, "summary.json")
    results = json.load(open(path))["variants"] if os.path.isfile(path) else {}
    lock = threading.Lock()
    with ThreadPoolExecutor(args.workers) as pool:
        for job in [pool.submit(variant, n, args.seed, args, results, lock) for n in names]:
            job.result()
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
