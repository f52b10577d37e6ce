"""Training on caption sets (`ella caption`): each sample's caption is drawn from the sets the
config names, by weight (`captions: {SET: 0.95, original: 0.05}`, DALL-E 3's mix), the choice
seeded by the sample's key, so every epoch, process and resumed run gives a sample the same
caption. A set without a caption for a sample leaves that sample to the other sets."""

from __future__ import annotations

import hashlib
import os

ORIGINAL = "original"  # the data's own caption


def check_mix(mix: dict) -> None:
    if not isinstance(mix, dict) or not mix:
        raise ValueError("captions must map caption set folders (and/or 'original') to weights")
    for name, weight in mix.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not 0 < weight:
            raise ValueError(f"captions: the weight of {name} must be a positive number, got {weight!r}")
        if name != ORIGINAL and not os.path.isdir(name):
            raise ValueError(f"captions: caption set not found: {name} (`ella caption` writes one)")


class CaptionMix:
    """{key: caption} choices over weighted caption sets; `choose(key, original)`."""

    def __init__(self, mix: dict, seed: int = 0):
        from ..caption.sidecar import CaptionIndex

        check_mix(mix)
        self.names = list(mix)
        self.weights = [float(mix[n]) for n in self.names]
        self.sets = {n: CaptionIndex(n) for n in self.names if n != ORIGINAL}  # on disk, read by key
        self.seed = seed

    def choose(self, key: str, original: str | None) -> str | None:
        options = [(n, w) for n, w in zip(self.names, self.weights)
                   if (original if n == ORIGINAL else self.sets[n].get(key))]
        if not options:
            return None
        digest = hashlib.sha256(f"{self.seed}:{key}".encode()).digest()
        u = int.from_bytes(digest[:8], "little") / 2**64 * sum(w for _, w in options)
        chosen = options[-1][0]  # u can reach the total by rounding
        for name, weight in options:
            u -= weight
            if u < 0:
                chosen = name
                break
        return original if chosen == ORIGINAL else self.sets[chosen][key]


def mix_fingerprint(mix: dict, seed: int) -> dict:
    """What a feature cache built on these captions depends on: the sets' contents (digests of their
    files, without loading them), their weights and the seed that draws each sample's choice."""
    from ..caption.sidecar import set_digest

    check_mix(mix)
    return {"captions": {n: [float(w), None if n == ORIGINAL else set_digest(n)] for n, w in mix.items()},
            "captions_seed": seed}


class MixedCaptions:
    """A map-style dataset whose samples take their captions from a `CaptionMix`."""

    def __init__(self, dataset, mix: CaptionMix):
        self.dataset, self.mix = dataset, mix

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset[index]
        return None if sample is None else with_caption(sample, self.mix)


def with_caption(sample: dict, mix: CaptionMix) -> dict | None:
    caption = mix.choose(sample["key"], sample.get("caption"))
    return None if not caption else {**sample, "caption": caption}
