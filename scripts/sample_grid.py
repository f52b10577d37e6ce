"""Base vs ELLA on the same seeds: the first sample of held-out prompts, side by side.

    python scripts/sample_grid.py runs/shapes-bench docs/shapes_base_vs_ella.png 8
"""

from __future__ import annotations

import os
import sys

from PIL import Image

from ella.images import make_grid, split_grid, upscale


def main(bench_dir: str, out: str, n: int = 8) -> None:
    rows = []
    for model in ("ground-truth", "base", "ella"):
        for i in range(n):
            rows.append(split_grid(Image.open(os.path.join(bench_dir, "images", model, f"heldout{i}.png")))[0])
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    upscale(make_grid(rows, cols=n), 8 * 32 * 3 // 2).save(out)
    print(f"wrote {out}: rows = ground truth, base, ELLA; columns = held-out prompts 0..{n - 1}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 8)
