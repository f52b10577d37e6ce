"""ShapesWorld datasets: scene i of a split is drawn from its own seed, so any subset is
reproducible and train / held-out splits never share a scene."""

from __future__ import annotations

import random

import numpy as np
import torch

from .styles import CAPTION_STYLES, HELDOUT_STYLES, make_item
from .world import PLACE_PROBABILITY, render, sample_scene, short_caption

# Split seeds: training scenes and held-out benchmark prompts come from disjoint streams.
TRAIN_SEED, HELDOUT_SEED, FEEDBACK_SEED = 0, 1_000_003, 2_000_029  # `ella feedback`'s prompts: a third stream
CAPTION_MIXES = {"mixed": "dense+brief"}


def scene_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 10_000_019 + index)


def to_tensor(image) -> torch.Tensor:
    """PIL (H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


class ShapesSceneDataset(torch.utils.data.Dataset):
    """`train_data: shapes:N[:seed][:captions]`: N rendered scenes, captioned for ELLA training.
    `captions`: "dense" (the default: every object, counts, relations, the background), "brief"
    (what a user types, `world.brief_caption`), "relative" (brief, placed relative to the object
    named before wherever it can be, `world.relative_caption`), "varied" (many phrasings,
    `phrasing.VARIED`), "alt" (web alt-text: one or two objects, some attributes missing,
    `world.short_caption`; what `ella caption` recaptions), or styles joined by "+", taken
    in turn by index: "dense+brief" (alias "mixed") captions even indices dense, odd brief. Scene
    i is the same in every style, and so is its caption wherever the style is the same."""

    def __init__(self, n: int, resolution: int = 32, seed: int = TRAIN_SEED, captions: str = "dense"):
        self.styles = tuple(CAPTION_MIXES.get(captions, captions).split("+"))
        if not set(self.styles) <= set(CAPTION_STYLES):
            raise ValueError(f"ShapesWorld captions must be {', '.join(CAPTION_STYLES)}, several joined by '+' "
                             f"or mixed, got {captions!r}")
        held_out = set(self.styles) & set(HELDOUT_STYLES)
        if held_out and seed != HELDOUT_SEED:  # never trained on, by construction
            raise ValueError(f"caption style {', '.join(sorted(held_out))} is held out for `ella bench shapes`; "
                             "train on 'varied' captions instead")
        self.n, self.resolution, self.seed = n, resolution, seed

    @classmethod
    def from_spec(cls, spec: str, resolution: int = 32) -> "ShapesSceneDataset":
        """From `shapes:N[:seed][:captions]`, e.g. shapes:10000, shapes:20000:dense+brief+relative."""
        n, *rest = spec.split(":")[1:]
        seeds = [int(x) for x in rest if x.isdigit()]
        styles = [x for x in rest if not x.isdigit()]
        if not n.isdigit() or len(seeds) > 1 or len(styles) > 1:
            raise ValueError(f"ShapesWorld data is shapes:N[:seed][:captions], got {spec!r}")
        return cls(int(n), resolution, *seeds or [TRAIN_SEED], *styles)

    def __len__(self) -> int:
        return self.n

    def style(self, index: int) -> str:
        return self.styles[index % len(self.styles)]

    def item(self, index: int):
        rng = scene_rng(self.seed, index)
        scene = sample_scene(rng)
        text, rows = make_item(scene, rng, f"shapes{index}", self.style(index))
        return scene, text, rows

    def __getitem__(self, index: int) -> dict:
        scene, text, _ = self.item(index)
        return {"key": f"shapes{index}", "pixel_values": to_tensor(render(scene, self.resolution)), "caption": text}


def render_short_caption_set(n: int, captions_per_scene: int, resolution: int = 32, seed: int = TRAIN_SEED,
                             place_probability: float = PLACE_PROBABILITY):
    """(images uint8 (n, H, W, 3), captions [n][k]): the base model's training set."""
    images = np.empty((n, resolution, resolution, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        rng = scene_rng(seed, i)
        scene = sample_scene(rng)
        images[i] = np.asarray(render(scene, resolution))
        captions.append([short_caption(scene, rng, place_probability=place_probability)
                         for _ in range(captions_per_scene)])
    return images, captions
