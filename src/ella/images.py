"""Small image helpers shared by the CLI, DPG-Bench and ShapesWorld."""

from __future__ import annotations

import logging
import math
import os

from PIL import Image

from .fileio import atomic_path
from .paths import require_path

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


def check_image_path(path: str) -> str:
    """The PIL format for `path` (from its extension), once its folder exists and `path` is not a
    folder. Called before long work, so that a bad output path never costs the images."""
    ext = os.path.splitext(path)[1].lower()
    Image.preinit()  # the common formats (PNG, JPEG, ...); every plugin only for a rarer extension
    image_format = Image.EXTENSION.get(ext) or Image.registered_extensions().get(ext)
    if image_format is None or os.path.isdir(path):
        raise ValueError(f"{path!r} is not an image file name: name a file such as out/ella.png")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create the folder {folder} for {path}: {err.strerror}") from err
    if not os.access(folder, os.W_OK):
        raise ValueError(f"cannot write {path}: {folder} is not writable")
    return image_format


def open_image(path: str, what: str = "image") -> Image.Image:
    """An image file read whole, or a one-line ValueError saying why not (missing, unreadable, corrupt)."""
    require_path(path, what)
    return read_image(path, path, what)


class ImageReadError(ValueError):
    """An image that cannot be read; `reason` says why in a few words."""

    def __init__(self, what: str, name: str, reason: str):
        super().__init__(f"{what} {name!r}: {reason}")
        self.reason = reason


def read_image(source, name: str, what: str = "image") -> Image.Image:
    """An image read whole from a path or a file object, or an ImageReadError naming `name`:
    unreadable, corrupt, or over PIL's decompression-bomb limit (a header claiming 20,000 x 20,000
    pixels is refused, never decoded)."""
    try:
        with Image.open(source) as image:
            image.load()
            return image.copy()
    except Image.DecompressionBombError as err:
        raise ImageReadError(what, name, f"too large to decode ({err})") from None
    except PermissionError:
        raise ImageReadError(what, name, "cannot be read: permission denied") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL: UnidentifiedImageError, truncated files
        raise ImageReadError(what, name, f"not a readable image ({type(err).__name__}: {err})") from None


def save_atomic(image: Image.Image, path: str) -> None:
    """Write to a temporary file beside `path`, then rename: a killed run leaves no half image."""
    image_format = check_image_path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=image_format)


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


def label_columns(image: Image.Image, labels: list[str], height: int = 20) -> Image.Image:
    """The image with a header strip naming its equal-width columns."""
    from PIL import ImageDraw

    out = Image.new("RGB", (image.width, image.height + height), "white")
    out.paste(image, (0, height))
    draw = ImageDraw.Draw(out)
    width = image.width // len(labels)
    for i, label in enumerate(labels):
        draw.text((i * width + 6, 4), label, fill="black")
    return out
