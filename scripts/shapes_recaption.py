"""Recaptioning on ShapesWorld (docs/shapesworld.md, "Recaptioning"): what dense recaptions buy
over alt-text, and what a captioner's mistakes cost.

A training set whose own captions are alt-text-like (`shapes:10000:alt`: one or two objects,
attributes missing) is recaptioned by `ella caption --captioner shapes:P` (the exact parser writes a
dense caption of what is there; with error rate P each object is left out or mislabelled). The
same connector (`configs/shapes/recaption.yaml`) is trained from scratch on each arm's caption mix,
every arm with every seed, then `ella bench shapes` scores each export on held-out prompts in each
style. One thread per process, `--jobs` processes side by side; an arm's feature cache is built
once, by the first of its runs. Finished captions, caches, runs and bench rows are not redone, so
an interrupted invocation picks up where it stopped.

A longer experiment continues a shorter one (`--continue-from ROOT`): its runs start from the
shorter runs' last resume state, and its captions and caches are the shorter one's, so the extra
steps are all it costs. The lr restarts on the longer cosine, as between the recipe's stages.
Invocations of one experiment that train some arms or seeds at a time merge their rows into one
results file (`--out`).

    python scripts/shapes_recaption.py runs/recaption --steps 1000 --seeds 0,1 --prompts 50 \\
        --out docs/results/shapesworld-recaption.json
    python scripts/shapes_recaption.py runs/recaption-3000 --steps 3000 --continue-from runs/recaption \\
        --arms alt,recap --out docs/results/shapesworld-recaption-3000.json
    python scripts/shapes_recaption_report.py docs/results/shapesworld-recaption.json    # table + figure
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from shapes_recipe_ablation import run  # `cmd` on one thread, stderr to a log; its stdout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "shapes", "recaption.yaml")
DATA = "shapes:10000:alt"
ERROR_RATES = ("0", "0.1", "0.3")


def arms(captions: str) -> dict[str, str]:
    """Each arm's caption mix (`ella train --captions`), the recaptioned sets under `captions`."""
    p = {rate: os.path.join(captions, f"shapes-p{rate}") for rate in ERROR_RATES}
    return {
        "alt": "{original: 1.0}",
        "recap": f"{{{p['0']}: 1.0}}",
        "mix": f"{{{p['0']}: 0.95, original: 0.05}}",  # DALL-E 3's mix
        "recap-p0.1": f"{{{p['0.1']}: 1.0}}",
        "recap-p0.3": f"{{{p['0.3']}: 1.0}}",
    }


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(arm: str, seed: int, args, mix: str, cache_locks: dict) -> str:
    """The arm's cache (built under its lock, once), then the run; the run's folder."""
    cache = os.path.join(args.root, arm, "cache")
    common = ["--model", os.path.join(REPO, "src", "ella", "assets", "shapes"), "--train-data", DATA,
              "--captions", mix, "--captions-seed", "0", "--cache-dir", cache]  # every seed: the same captions, one cache
    with cache_locks[arm]:
        if not os.path.isfile(os.path.join(cache, "index.json")):
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            run(["ella", "cache", CONFIG, *common], os.path.join(args.root, arm, "cache.log"))
    out = os.path.join(args.root, arm, f"seed{seed}")
    if not os.path.isdir(os.path.join(out, "checkpoints", f"step-{args.steps:08d}")):
        if args.continue_from and not os.path.isdir(out):
            shutil.copytree(os.path.join(args.continue_from, arm, f"seed{seed}", "checkpoints"),
                            os.path.join(out, "checkpoints"))
        os.makedirs(out, exist_ok=True)
        run(["ella", "train", CONFIG, *common, "--output-dir", out, "--seed", str(seed), "--max-steps", str(args.steps),
             "--checkpoint-every", str(args.steps), "--resume", "true"], os.path.join(out, "train.log"))
    say(f"trained {arm} seed {seed}: {last_log_line(out)}")
    return out


def last_log_line(run_dir: str) -> str:
    with open(os.path.join(run_dir, "train.log")) as f:  # the log lines, wherever the progress bar left them
        lines = re.findall(r"step \d+ loss [^\r\n]*", f.read())
    return lines[-1] if lines else ""


def bench(style: str, arm: str, seed: int, export: str, args) -> dict:
    """The summary of `ella bench shapes` in `style` for one run (kept beside the runs, read back
    if there, so each run's rows are independent of which others finished)."""
    name = f"bench-{style}-{arm}-seed{seed}"
    path = os.path.join(args.root, f"{name}.json")
    if not os.path.isfile(path):
        out = run(["ella", "bench", "shapes", "--prompts", str(args.prompts), "--models", export,
                   "--captions", style, "--out", os.path.join(args.root, name), "--json"],
                  os.path.join(args.root, f"{name}.log"))
        with open(path + ".tmp", "w") as f:
            f.write(out)
        os.replace(path + ".tmp", path)
    say(f"benched {style}: {arm} seed {seed}")
    with open(path) as f:
        return json.load(f)[export]


def merged(path: str, result: dict) -> dict:
    """`result` merged into the results file at `path` when that holds the same experiment (data,
    config, steps, prompts, continuation): its other arms, seeds and styles kept, every invocation's
    command listed. So the invocations of one experiment (some seeds or arms at a time) write one file."""
    if not os.path.isfile(path):
        return result
    with open(path) as f:
        earlier = json.load(f)
    keys = ("data", "config", "steps", "prompts", "continued_from")
    if any(earlier.get(k) != result[k] for k in keys):
        raise SystemExit(f"{path} holds another experiment ({', '.join(f'{k} {earlier.get(k)}' for k in keys)}); "
                         "give another --out")
    commands = earlier["command"] if isinstance(earlier["command"], list) else [earlier["command"]]
    for arm, info in result["arms"].items():
        seeds = earlier["arms"].setdefault(arm, {"captions": info["captions"], "seeds": {}})["seeds"]
        for seed, row in info["seeds"].items():
            seeds.setdefault(seed, {}).update(row)
    return {**earlier, "machine": result["machine"], "command": commands + [result["command"]] * (result["command"] not in commands)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="where captions, caches, runs and bench outputs go")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1", help="comma-separated")
    parser.add_argument("--prompts", type=int, default=50, help="held-out scenes per bench style (x 4 images)")
    parser.add_argument("--styles", default="dense,brief,relative", help="bench prompt styles, comma-separated")
    parser.add_argument("--arms", default=None, help="comma-separated subset of: alt, recap, mix, recap-p0.1, recap-p0.3")
    parser.add_argument("--jobs", type=int, default=2, help="processes side by side, one thread each")
    parser.add_argument("--continue-from", default=None, help="a shorter experiment's root whose runs this one continues")
    parser.add_argument("--out", required=True, help="the results JSON")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    # A continued experiment's captions are named as the first experiment of the chain named them (the
    # shorter one's captions may be a link to its own predecessor's): the caches are keyed by that name.
    captions = os.path.realpath(os.path.join(args.continue_from or args.root, "captions"))
    home = os.path.dirname(captions)  # "ROOT" in the results file
    mixes = arms(captions)
    names = args.arms.split(",") if args.arms else list(mixes)
    unknown = sorted(set(names) - set(mixes))
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(mixes)}")
    os.makedirs(args.root, exist_ok=True)
    if args.continue_from:  # the shorter experiment's captions and caches, not redone
        for name in ["captions", *(os.path.join(arm, "cache") for arm in names)]:
            source, target = os.path.join(args.continue_from, name), os.path.join(args.root, name)
            if not os.path.exists(target):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.symlink(os.path.abspath(source), target)

    for rate in ERROR_RATES:
        run(["ella", "caption", DATA, "--captioner", f"shapes:{rate}", "--out",
             os.path.join(args.root, "captions", f"shapes-p{rate}"), "-q"], os.path.join(args.root, "caption.log"))
    say("captions written")
    locks = {arm: threading.Lock() for arm in names}
    jobs = [(arm, seed) for seed in seeds for arm in names]  # every arm's first seed first: it builds the cache
    with ThreadPoolExecutor(args.jobs) as pool:
        dirs = dict(zip(jobs, pool.map(lambda job: train(*job, args, mixes[job[0]], locks), jobs)))
    benches = [(style, arm, seed) for style in args.styles.split(",") for arm, seed in jobs]
    with ThreadPoolExecutor(args.jobs) as pool:
        scores = list(pool.map(lambda b: (b, bench(*b, os.path.join(dirs[b[1:]], "export"), args)), benches))

    result = {"data": DATA, "config": os.path.relpath(CONFIG, REPO), "steps": args.steps, "prompts": args.prompts,
              "machine": f"{os.cpu_count()}-core development CPU, one thread per process, {args.jobs} side by side",
              "command": "python " + " ".join(["scripts/shapes_recaption.py", *sys.argv[1:]]),
              "continued_from": args.continue_from,
              "arms": {arm: {"captions": mixes[arm].replace(home, "ROOT"), "seeds": {}} for arm in names}}
    for (arm, seed), run_dir in dirs.items():
        result["arms"][arm]["seeds"][str(seed)] = {"train": last_log_line(run_dir)}  # its cpu_min: what it cost
    for (style, arm, seed), summary in scores:
        result["arms"][arm]["seeds"][str(seed)][style] = {"overall": summary["overall"], **summary["l1"]}
    result = merged(args.out, result)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(args.out + ".tmp", args.out)
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
