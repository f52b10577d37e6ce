"""Small image helpers shared by the CLI, DPG-Bench and ShapesWorld."""

from __future__ import annotations

import logging
import math
import os
import tempfile

from PIL import Image

logger = logging.getLogger(__name__)


def make_grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    """Tile equally sized images row by row (top-left, top-right, bottom-left, ...)."""
    if not images:
        raise ValueError("no images to tile")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def split_grid(image: Image.Image, tiles_per_side: int = 2) -> list[Image.Image]:
    """Inverse of make_grid for a square grid: crops in reading order."""
    w, h = image.size
    tw, th = w // tiles_per_side, h // tiles_per_side
    return [
        image.crop((c * tw, r * th, (c + 1) * tw, (r + 1) * th))
        for r in range(tiles_per_side)
        for c in range(tiles_per_side)
    ]


def upscale(image: Image.Image, min_side: int = 256) -> Image.Image:
    """Nearest-neighbour upscale of a tiny image so it can be looked at."""
    factor = max(1, math.ceil(min_side / min(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def save_atomic(image: Image.Image, path: str) -> None:
    """Write to a temporary file beside `path`, then rename: a killed run leaves no half image."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp.png")
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def pyplot(what: str):
    """matplotlib.pyplot on the headless Agg backend, or None (logged) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no %s (pip install ella-diffusion[plot])", what)
        return None
    return plt
