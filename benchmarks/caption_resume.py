"""`ella caption` at scale on generated data: what a resumed run costs against the first one, and
peak memory against a tar shard's size.

N ShapesWorld renders in nested folders, captioned with the exact captioner (`--captioner
shapes`), then the same command again on the finished set (every key skipped without decoding).
Then tar shards of 1x and 4x the images, each captioned in a fresh process whose peak RSS is read
(streamed members: memory should not grow with the shard).

    python benchmarks/caption_resume.py [--images 5000] [--out benchmarks/results/caption_resume_cpu.json]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))


def write_images(root: str, n: int) -> None:
    """n renders in nested folders (100 per folder, two levels), as another program might lay them out."""
    from ella.shapes.world import render, sample_scene

    rng = random.Random(0)
    for i in range(n):
        folder = os.path.join(root, f"part-{i // 1000:02d}", f"batch {i // 100:03d}")
        os.makedirs(folder, exist_ok=True)
        _save(render(sample_scene(rng)), os.path.join(folder, f"img {i:05d}.png"))


def write_shard(path: str, n: int) -> None:
    from ella.shapes.world import render, sample_scene

    rng = random.Random(1)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buffer = io.BytesIO()
            _save(render(sample_scene(rng)), buffer)
            info = tarfile.TarInfo(f"{i:06d}.png")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)


def _save(image, target) -> None:
    import numpy as np
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray((np.asarray(image) * 255).round().astype("uint8"))
    image.save(target, format="PNG")


def caption(data: str, out: str) -> tuple[float, float, float]:
    """(seconds of the command's work, its modules imported before the clock starts; seconds with the
    interpreter's start and imports; peak RSS in MB) of `ella caption DATA --captioner shapes --out
    OUT` in its own process."""
    code = ("import resource, sys, time; from ella.cli import main; import ella.caption.run, ella.shapes.captioner; "
            "start = time.perf_counter(); "
            "code = main(sys.argv[1:]); print('WORK', time.perf_counter() - start); "
            "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "caption", data, "--captioner", "shapes", "--out", out, "-q"],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    value = {line.split()[0]: float(line.split()[1]) for line in done.stdout.splitlines()
             if line.split()[:1] in (["WORK"], ["RSS"])}
    return value["WORK"], wall, value["RSS"] / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--shard", type=int, default=1000, help="images in the small tar shard (the big one: 4x)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from startup import report

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        write_images(data, args.images)
        first, first_wall, first_rss = caption(data, os.path.join(tmp, "set"))
        again, again_wall, again_rss = caption(data, os.path.join(tmp, "set"))
        shards = {}
        for size in (args.shard, 4 * args.shard):
            path = os.path.join(tmp, f"shards-{size}", "shard.tar")
            os.makedirs(os.path.dirname(path))
            write_shard(path, size)
            seconds, _, rss = caption(path, os.path.join(tmp, f"set-{size}"))
            shards[f"{size} images ({os.path.getsize(path) / 1e6:.1f} MB)"] = {"seconds": seconds, "peak RSS MB": rss}
    report({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, beside other runs",
        "images": args.images,
        "first run (s: the command's work, with the interpreter's start)": [first, first_wall],
        "resume of the finished set (s: the same)": [again, again_wall],
        "resume / first (the work)": again / first,
        "peak RSS MB (first, resume)": [first_rss, again_rss],
        "one tar shard, captioned in its own process": shards,
    }, args.out)


if __name__ == "__main__":
    main()
