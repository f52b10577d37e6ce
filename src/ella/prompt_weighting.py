"""Prompt weighting for the LLM prompt, in the syntax A1111 and ComfyUI users know.

    (words:1.3)   words weighted 1.3
    (words)       x 1.1            ((words)) = 1.21: groups nest and multiply
    [words]       x 1/1.1
    \\( \\) \\[ \\]  literal brackets; \\\\ a literal backslash

The brackets and weights are removed from the text the LLM reads, so a prompt without weights,
or with weight 1.0 everywhere, encodes exactly as before. Each character keeps its weight; a
token takes the weight of its first non-space character, found through the tokenizer's offsets.
The weights then act on
those tokens, in one of three ways (`apply_weights`):

- "attention" (the default): the token's attention in the connector is multiplied by w (log w
  added to its logits in every perceiver block), as if it were written w times. Carried as a
  soft text attention mask (1 = plain token, w = weighted, 0 = padding).
- "anchor": the token's features move away from the empty prompt's mean feature by w, as compel
  does for CLIP (feature = empty + w * (feature - empty)).
- "scale": the token's features are multiplied by w.

The connector layer-normalises each text token before attending to it (`ln_2`), which undoes
"scale" almost entirely and most of "anchor": measured on ShapesWorld (docs/pipeline.md), only
"attention" changes what is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PAREN, BRACKET = 1.1, 1 / 1.1
MODES = ("attention", "anchor", "scale")
DEFAULT_MODE = "attention"


@dataclass
class WeightedPrompt:
    text: str  # what the LLM reads: the prompt without brackets and weights
    weights: list[float]  # one per character of `text`

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for w in self.weights)


def parse_prompt_weights(prompt: str) -> WeightedPrompt:
    """Parse weighting syntax; ValueError for an unbalanced bracket or a weight that is not a
    positive number."""
    out: list[str] = []
    weights: list[float] = []
    stack: list[dict] = []  # open groups: kind, where their text starts, their last ':' (parentheses)
    i = 0
    while i < len(prompt):
        ch = prompt[i]
        if ch == "\\" and i + 1 < len(prompt):
            out.append(prompt[i + 1])
            weights.append(1.0)
            i += 2
            continue
        if ch in "([":
            stack.append({"kind": ch, "start": len(out), "colon": None, "at": i})
        elif ch in ")]":
            opener = "(" if ch == ")" else "["
            if not stack or stack[-1]["kind"] != opener:
                raise ValueError(f"unbalanced {ch!r} at character {i + 1} of the prompt (write \\{ch} for a literal one)")
            group = stack.pop()
            weight = BRACKET if ch == "]" else PAREN
            if group["colon"] is not None:
                weight = _weight("".join(out[group["colon"] + 1:]), i)
                del out[group["colon"]:], weights[group["colon"]:]
            weights[group["start"]:] = [w * weight for w in weights[group["start"]:]]
        else:
            if ch == ":" and stack and stack[-1]["kind"] == "(":
                stack[-1]["colon"] = len(out)
            out.append(ch)
            weights.append(1.0)
        i += 1
    if stack:
        group = stack[-1]
        raise ValueError(f"unbalanced {group['kind']!r} at character {group['at'] + 1} of the prompt: it is never closed"
                         f" (write \\{group['kind']} for a literal one)")
    return WeightedPrompt("".join(out), weights)


def _weight(text: str, position: int) -> float:
    try:
        weight = float(text.strip())
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"the weight {text.strip()!r} before character {position + 1} of the prompt is not a positive"
                         " number: write (words:1.3)")
    return weight


def token_weights(tokenizer, prompts: list[WeightedPrompt], max_length: int, length: int) -> torch.Tensor:
    """(B, length) weights of the tokens the encoder reads (truncated to `max_length` as it does,
    padded with 1.0), from the tokenizer's character offsets."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("prompt weighting maps words to tokens with character offsets, which needs a fast tokenizer")
    offsets = tokenizer([p.text for p in prompts], truncation=True, max_length=max_length,
                        return_offsets_mapping=True)["offset_mapping"]
    out = torch.ones(len(prompts), length)
    for row, (prompt, spans) in enumerate(zip(prompts, offsets)):
        for col, (start, end) in enumerate(spans[:length]):
            if end > start:  # special tokens have empty spans
                first = next((j for j in range(start, end) if not prompt.text[j].isspace()), start)
                out[row, col] = prompt.weights[first]
    return out


def apply_weights(features, weights: torch.Tensor, mode: str = DEFAULT_MODE, empty: torch.Tensor | None = None):
    """`features` (TextFeatures) with the (B, L) token `weights` applied: only tokens of weight
    != 1 change. "anchor" needs `empty`, the empty prompt's mean feature (D,)."""
    if mode not in MODES:
        raise ValueError(f"prompt weighting mode must be one of {MODES}, got {mode!r}")
    hidden = features.hidden_states
    w = weights.to(hidden.device, torch.float32)
    if mode == "attention":
        mask = features.attention_mask
        mask = torch.ones_like(w) if mask is None else mask.to(w.device, torch.float32)
        return type(features)(hidden, mask * w)
    w = w.to(hidden.dtype)[..., None]  # (B, L, 1)
    if mode == "scale":
        weighted = hidden * w
    else:
        anchor = empty.to(hidden.device, hidden.dtype)
        weighted = anchor + w * (hidden - anchor)
    return type(features)(torch.where(w != 1, weighted, hidden), features.attention_mask)
