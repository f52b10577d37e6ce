"""What a caption set costs a training process: loading it whole ({key: caption}, as training did)
against the on-disk index (`ella.caption.sidecar.CaptionIndex`, what training reads now), each in
its own process: start-up seconds and peak memory, then 10,000 lookups.

A generated set of N long captions (about 650 bytes each, as a dense recaption) in sidecars of
1,000 records:

    python benchmarks/caption_set_memory.py [--captions 1000000] [--out benchmarks/results/caption_set_memory_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))

WORDS = ("red", "circle", "large", "at", "the", "top", "left", "a", "small", "blue", "square", "below", "it", "on",
         "gray", "background", "and", "with", "green", "triangle", "next", "to", "purple", "yellow")

MEASURE = """
import random, resource, sys, time
start = time.perf_counter()
if sys.argv[1] == "dict":
    from ella.caption.sidecar import load_caption_set
    captions = load_caption_set(sys.argv[2])
else:
    from ella.caption.sidecar import CaptionIndex
    captions = CaptionIndex(sys.argv[2])
ready = time.perf_counter() - start
rng = random.Random(0)
keys = [f"k{rng.randrange(int(sys.argv[3])):07d}" for _ in range(10_000)]
start = time.perf_counter()
found = sum(captions.get(k) is not None for k in keys)
lookups = time.perf_counter() - start
print(ready, lookups, found, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def write_set(folder: str, n: int) -> None:
    from ella.caption.sidecar import write_set_file, write_sidecar

    os.makedirs(folder)
    write_set_file(folder, {"captioner": "benchmark", "revision": "1", "prompt": "", "settings": {}, "data": "generated"})
    rng = random.Random(0)
    for start in range(0, n, 1000):
        records = [{"key": f"k{i:07d}", "caption": " ".join(rng.choice(WORDS) for _ in range(130)),
                    "original": None} for i in range(start, min(n, start + 1000))]
        write_sidecar(os.path.join(folder, f"items-{start // 1000:05d}.jsonl"), {"shard": start}, records)


def measure(kind: str, folder: str, n: int) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, kind, folder, str(n)], capture_output=True, text=True,
                          check=True)
    ready, lookups, found, rss = done.stdout.split()
    return {"start-up s": float(ready), "10,000 lookups s": float(lookups), "found": int(found),
            "peak RSS MB": float(rss)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from startup import report

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "set")
        write_set(folder, args.captions)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
        result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, beside other runs",
                  "captions": args.captions, "sidecars MB": size / 1e6,
                  "loaded whole (as before)": measure("dict", folder, args.captions),
                  "index, first open (built)": measure("index", folder, args.captions),
                  "index, later opens": measure("index", folder, args.captions)}
    print(json.dumps(result, indent=1))
    report(result, args.out)


if __name__ == "__main__":
    main()
