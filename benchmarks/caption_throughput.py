"""`ella caption` throughput: images per second of a captioner over a folder of synthetic images,
through the real entry point (`caption_data`: reading, batching, sidecar writes included).

    python benchmarks/caption_throughput.py                      # the tiny random BLIP, on this machine
    python benchmarks/caption_throughput.py --captioner llava-hf/llava-1.5-7b-hf --device cuda --images 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile

import numpy as np
from PIL import Image

from ella.caption.captioners import load_captioner
from ella.caption.run import caption_data
from ella.fileio import write_text_atomic
from ella.testing import tiny_captioner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captioner", default=None, help="default: a tiny random BLIP built here")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=None, help="a JSON results file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "images")
        os.makedirs(data)
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(os.path.join(data, f"{i}.png"))
        spec = args.captioner or tiny_captioner(os.path.join(tmp, "tiny-blip"))
        captioner = load_captioner(spec, "dense", args.max_new_tokens, args.device)
        caption_data(data, captioner, os.path.join(tmp, "warmup"), args.batch_size, progress=False)  # loads, caches
        stats = caption_data(data, captioner, os.path.join(tmp, "captions"), args.batch_size, progress=False)
    result = {"captioner": args.captioner or "tiny random BLIP (ella.testing.tiny_captioner)", "images": args.images,
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "images_per_s": round(stats.images_per_s, 2), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "device": str(getattr(captioner, "device", "cpu"))}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
