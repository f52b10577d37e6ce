"""The ShapesWorld planner (`--planner shapes`): its caption grammar parsed exactly
(`reader.read_text`), so its layout is right whenever the prompt is in ShapesWorld's words: the
oracle that bounds what any planner (an LLM's) can give.

Each object is a region: its grid cell, described by a one-object caption in its absolute place
("a small blue square on the left"; a relative place, "below it", is resolved). What no region
covers gets a background prompt: the first object's own caption. A ShapesWorld caption names
every object of its scene, so a one-object caption placed elsewhere says "nothing here", the
only way its grammar can (measured on the main prompt: docs/shapesworld.md "Regions").
"""

from __future__ import annotations

from ..regions import Layout, LayoutError, Region
from .reader import read_text
from .world import place_phrase

BASE_RATIO = 0.0  # measured best: every style, 50 held-out scenes (docs/results/shapesworld-regions-ratio0.json)


def cell_box(cell: int) -> tuple[float, float, float, float]:
    """A 3x3 grid cell (row-major) as (x0, y0, x1, y1) fractions of the image."""
    row, col = divmod(cell, 3)
    return col / 3, row / 3, (col + 1) / 3, (row + 1) / 3


def plan(prompt: str) -> Layout:
    """The layout of a ShapesWorld prompt; LayoutError when the prompt is not one scene in its words."""
    reading = read_text(prompt, background=False)
    if reading is None:
        raise LayoutError(f"the shapes planner cannot read {prompt!r} as one ShapesWorld scene (its words, each"
                          " object with a colour, size, shape and place)")
    background, cells = reading
    tail = f", {background} background" if background else ""
    regions = [Region(f"a {o.size} {o.color} {o.shape} {place_phrase(cell)}{tail}", cell_box(cell))
               for cell, o in enumerate(cells) if o is not None]
    return Layout(regions, prompt, BASE_RATIO, background_prompt=regions[0].prompt, planner={"name": "shapes"})


def layout_scene(layout: Layout) -> list[tuple[str, str, str] | None] | None:
    """What a layout asks for, as (colour, size, shape) per grid cell: each region's object read
    from its prompt (one object, in ShapesWorld's words), in the cell of its box's centre; None
    when a region's prompt is not one object or two regions share a cell. A planner's layout is
    exactly right when this equals the scene."""
    cells: list = [None] * 9
    for region in layout.regions:
        reading = read_text(region.prompt, background=False)
        objects = [] if reading is None or region.box is None else [o for o in reading[1] if o is not None]
        if len(objects) != 1:
            return None
        x0, y0, x1, y1 = region.box
        cell = min(2, int((y0 + y1) / 2 * 3)) * 3 + min(2, int((x0 + x1) / 2 * 3))
        if cells[cell] is not None:
            return None
        cells[cell] = (objects[0].color, objects[0].size, objects[0].shape)
    return cells
