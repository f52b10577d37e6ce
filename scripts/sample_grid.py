"""Models side by side on the same seeds: the first sample of the first N bench prompts, one row
per image folder of `ella bench shapes` (OUT/images/MODEL).

    python scripts/sample_grid.py docs/shapes_base_vs_ella.png 8 runs/shapes-bench/images/{ground-truth,base,ella}
"""

from __future__ import annotations

import os
import sys

from PIL import Image

from ella.images import make_grid, split_grid, upscale


def main(out: str, n: int, folders: list[str]) -> None:
    rows = [split_grid(Image.open(os.path.join(folder, f"heldout{i}.png")))[0] for folder in folders for i in range(n)]
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    upscale(make_grid(rows, cols=n), 8 * 32 * 3 // 2).save(out)
    names = ", ".join(os.path.basename(os.path.normpath(f)) for f in folders)
    print(f"wrote {out}: rows = {names}; columns = held-out prompts 0..{n - 1}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
