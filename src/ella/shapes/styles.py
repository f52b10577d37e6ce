"""ShapesWorld's caption styles by name, one home for the list: the dense training and benchmark
captions and the brief, relative and alt-text ones (`world`), and the varied and paraphrased
phrasings (`phrasing`), each with a scene's questions."""

from __future__ import annotations

import random

from .phrasing import lexicon_caption, paraphrase_caption, varied_caption
from .world import Scene, brief_caption, dense_caption, pick_relations, questions, relative_caption, short_caption

CAPTION_STYLES = ("dense", "brief", "relative", "varied", "paraphrase", "alt", "lexicon", "lexicon-heldout")
# benchmark only: their words are never trained on (lexicon-heldout: nor fed to `ella feedback`)
HELDOUT_STYLES = ("paraphrase", "lexicon-heldout")
_CAPTIONERS = {"brief": brief_caption, "relative": relative_caption, "varied": varied_caption,
               "paraphrase": paraphrase_caption, "alt": short_caption}  # alt: web alt-text, short and partial


def make_item(scene: Scene, rng: random.Random, item_id: str, style: str = "dense") -> tuple[str, list[dict]]:
    """A prompt in `style` (dense, brief, relative, varied or paraphrase) and its question rows. The relations asked
    about are drawn first, so a scene's questions are the same in every style: only the prompt
    differs."""
    if style not in CAPTION_STYLES:
        raise ValueError(f"caption style must be one of {CAPTION_STYLES}, got {style!r}")
    relations = pick_relations(scene, rng)
    if style in ("dense", "lexicon", "lexicon-heldout"):  # lexicon: the dense caption in the feedback lexicon
        text = dense_caption(scene, rng, relations)
        text = text if style == "dense" else lexicon_caption(text, held_out=style == "lexicon-heldout")
    else:
        text = _CAPTIONERS[style](scene, rng)
    return text, questions(scene, item_id, text, relations)


