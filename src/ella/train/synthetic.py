"""`train_data: synthetic:N`: N procedurally drawn image-caption pairs, made on the fly (no files).

A coloured square somewhere on a coloured background, captioned with the tiny tokenizer's words.
For smoke tests and the tiny CPU config; ShapesWorld (`ella.shapes`) is the real miniature.
"""

from __future__ import annotations

import torch

COLORS = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1),
          "white": (1, 1, 1), "black": (-1, -1, -1)}
PLACES = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}


class SyntheticDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, resolution: int, seed: int = 0):
        self.n, self.resolution, self.seed = n, resolution, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.seed * 7919 + index)
        names, places = list(COLORS), list(PLACES)
        fg, bg = torch.randperm(len(names), generator=g)[:2].tolist()
        place = places[int(torch.randint(len(places), (1,), generator=g))]
        r = self.resolution
        image = torch.tensor(COLORS[names[bg]], dtype=torch.float32).view(3, 1, 1).repeat(1, r, r)
        row, col = PLACES[place]
        half = r // 2
        image[:, row * half : (row + 1) * half, col * half : (col + 1) * half] = torch.tensor(COLORS[names[fg]]).view(3, 1, 1)
        caption = f"a {names[fg]} square at the {place} on a {names[bg]} background"
        return {"key": f"synthetic-{index}", "pixel_values": image, "caption": caption}
