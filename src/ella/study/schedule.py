"""Which pair a rater sees next: the model pair with the fewest votes so far, on a prompt this
rater has not seen with those two models, the prompt least shown for that pair; sides at random.
So every model pair gets votes, spread over all the prompts, and no rater sees a pair twice."""

from __future__ import annotations

import itertools
import random

from .runs import Study


class NoPairLeft(Exception):
    """This rater has seen every pair: the study is done for them."""


class Scheduler:
    def __init__(self, study: Study, store, seed: int | None = None):
        self.study, self.store = study, store
        self.pairs = [frozenset(p) for p in itertools.combinations(study.models, 2)]
        self.rng = random.Random(seed)
        self.shown_items: dict[tuple[frozenset, str], int] = {}  # in this server: spreads prompts evenly

    def next_pair(self, rater: str) -> tuple[str, str, str]:
        """(item_id, left model, right model) for `rater`, or NoPairLeft."""
        seen, votes = self.store.seen(rater), self.store.counts()
        order = sorted(self.pairs, key=lambda p: (votes.get(p, 0), self.rng.random()))
        for pair in order:
            items = [i for i in self.study.prompts if (i, pair) not in seen]
            if items:
                item = min(items, key=lambda i: (self.shown_items.get((pair, i), 0), self.rng.random()))
                self.shown_items[(pair, item)] = self.shown_items.get((pair, item), 0) + 1
                left, right = self.rng.sample(sorted(pair), 2)
                return item, left, right
        raise NoPairLeft(f"rater {rater} has seen every pair of this study")
