"""The README's picture: `ella generate`'s main prompt, seeds 1001-1008, with `ella generate`'s
settings; one row per model: the base model, then each named connector (default: the default);
CONNECTOR+regions draws with the regions its planner gives (`ella generate --regions auto`).

    python scripts/main_prompt_figure.py docs/shapes_main_prompt.png [CONNECTOR[+regions] ...]
"""

from __future__ import annotations

import sys

from ella.generate import render
from ella.images import make_grid, upscale
from ella.shapes.catalog import DEFAULT_CONNECTOR, MAIN_PROMPT, SHAPES_DEFAULTS
from ella.shapes.models import load_shapes_pipeline
from ella.shapes.planner import plan


def main(out: str, connectors: list[str]) -> None:
    steps, guidance = SHAPES_DEFAULTS["steps"], SHAPES_DEFAULTS["guidance"]
    rows = []
    for i, name in enumerate(connectors):
        connector, _, regions = name.partition("+")
        pipe = load_shapes_pipeline(connector=connector)
        pipe.set_progress_bar_config(disable=True)
        sides = ("clip", "ella") if i == 0 else ("ella",)  # the base row once, from the first pipeline
        options = {"regions": plan(MAIN_PROMPT)} if regions else {}
        drawn = render(pipe, MAIN_PROMPT, sides, 1001, 8, steps, guidance, **options)
        rows += [drawn[side] for side in sides]
    grid = make_grid([image for row in rows for image in row], cols=8)
    upscale(grid, 8 * 32 * 3).save(out)
    print(f"wrote {out}: rows = base, {', '.join(connectors)}; columns = seeds 1001-1008")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:] or [DEFAULT_CONNECTOR])
