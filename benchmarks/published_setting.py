"""The published setting end to end on a CUDA machine that has it in its Hugging Face cache (or can
download it): `load_preset("sd1.5-t5xl")`, then time to first image (load included), peak GPU
memory, and images/s at batch 1 and 8 (the web demo's 25 steps, guidance 10, 512x512).

    python benchmarks/published_setting.py [--out benchmarks/results/published_setting_gpu.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ella import load_preset

PROMPT = ("a red apple and a blue book on a wooden table, a cat sleeping beside them, warm light from a window"
          " on the left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/published_setting_gpu.json")
    parser.add_argument("--preset", default="sd1.5-t5xl")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pipe, defaults = load_preset(args.preset)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter() - start
    pipe(PROMPT, **defaults, generator=torch.Generator().manual_seed(1001))
    torch.cuda.synchronize()
    result = {"preset": args.preset, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "load_s": round(loaded, 2), "time_to_first_image_s": round(time.perf_counter() - start, 2),
              "defaults": defaults}
    for batch in (1, 8):
        pipe([PROMPT] * batch, **defaults)  # warm-up at this shape
        torch.cuda.synchronize()
        began = time.perf_counter()
        pipe([PROMPT] * batch, **defaults, generator=torch.Generator().manual_seed(0))
        torch.cuda.synchronize()
        result[f"images_per_s_batch{batch}"] = round(batch / (time.perf_counter() - began), 3)
    result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
