"""Regional prompts: each region of the image drawn from its own description, read by the LLM and
the connector exactly as a whole prompt is.

A layout is the global prompt plus regions, each a box (x0, y0, x1, y1 in [0, 1], from the top
left) or a mask, with its own prompt (and optional negative). In the UNet's cross-attention every
pixel attends to the global prompt's tokens and, separately, to the tokens of each region that
covers it; the outputs are blended per pixel (RPG's "complementary regional diffusion", Yang et
al. 2024, at the attention output instead of the latents):

    out(x) = w_0(x) * attn(x, global) + sum_r w_r(x) * attn(x, region r)
    w_r(x) = (1 - base_ratio) * m_r(x) / max(1, sum_r m_r(x)),   w_0(x) = 1 - sum_r w_r(x)

m_r is region r's coverage of the pixel at that layer's resolution (its area average), so a
pixel outside every region sees the global prompt alone, and a region's tokens get no weight from
pixels outside it. The weights sum to 1 at every pixel, so a region whose prompt is the global
prompt changes nothing. The blend wraps whatever processor each cross-attention layer has (one
batched call over the segments), set for the call through diffusers' public `attn_processors` /
`set_attn_processor` and restored after it.

No torch at import (`ella plan` and the layout checks need none).
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

MAX_REGIONS = 8  # each region is one more connector row and one more attention call per cross-attention layer
DEFAULT_BASE_RATIO = 0.3  # RPG's default share of the global prompt inside a region


class LayoutError(ValueError):
    """A layout that cannot be drawn: one line saying what is wrong."""


@dataclass
class Region:
    """One region: `prompt` drawn inside `box` (x0, y0, x1, y1, fractions of the width and height
    from the top left) or `mask` (an image or array, white/1 = inside, any size: it is resized)."""

    prompt: str
    box: tuple[float, float, float, float] | None = None
    mask: object = None
    negative_prompt: str | None = None


@dataclass
class Layout:
    """The global prompt (RPG's base prompt; None: the call's own prompt) and its regions."""

    regions: list[Region]
    prompt: str | None = None
    base_ratio: float = DEFAULT_BASE_RATIO
    background_prompt: str | None = None  # drawn where no region is (LMD's background prompt); None: the global prompt
    planner: dict = field(default_factory=dict)  # who planned it: name, prompt, raw output, seed

    def segments(self) -> list[tuple[str, str | None]]:
        """(prompt, negative prompt or None) of each region, then of the background when it has its own."""
        drawn = [(r.prompt, r.negative_prompt) for r in self.regions]
        return drawn + ([(self.background_prompt, None)] if self.background_prompt else [])

    def to_dict(self) -> dict:
        regions = [{k: v for k, v in asdict(r).items() if v is not None and k != "mask"} for r in self.regions]
        if any(r.mask is not None for r in self.regions):
            raise LayoutError("a layout with mask regions cannot be written as JSON: give boxes")
        return {"prompt": self.prompt, "base_ratio": self.base_ratio, "regions": regions,
                **({"background_prompt": self.background_prompt} if self.background_prompt else {}),
                **({"planner": self.planner} if self.planner else {})}

    @classmethod
    def from_dict(cls, data, where: str = "the layout") -> Layout:
        """A layout from its JSON form, checked (`check_layout`); LayoutError names what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("regions"), list):
            raise LayoutError(f"{where} is not a layout: a JSON object with a list of \"regions\"")
        unknown = set(data) - {"prompt", "base_ratio", "regions", "background_prompt", "planner"}
        if unknown:
            raise LayoutError(f"{where} has unknown fields: {', '.join(sorted(unknown))}")
        regions = []
        for i, r in enumerate(data["regions"]):
            if not isinstance(r, dict) or set(r) - {"prompt", "box", "negative_prompt"} or "prompt" not in r:
                raise LayoutError(f"{where}: region {i + 1} must be an object with \"prompt\", \"box\" and optionally"
                                  " \"negative_prompt\"")
            box = r.get("box")
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_is_number(v) for v in box):
                raise LayoutError(f"{where}: region {i + 1}'s box must be four numbers [x0, y0, x1, y1], got {box!r}")
            regions.append(Region(r["prompt"], tuple(float(v) for v in box), None, r.get("negative_prompt")))
        base_ratio = data.get("base_ratio", DEFAULT_BASE_RATIO)
        planner = data.get("planner") or {}
        layout = cls(regions, data.get("prompt"), base_ratio, data.get("background_prompt"),
                     planner if isinstance(planner, dict) else {})
        check_layout(layout, where)
        return layout

    def save(self, path: str) -> None:
        from .fileio import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_layout(path: str) -> Layout:
    """A layout from a JSON file (`ella generate --regions layout.json`)."""
    if not os.path.isfile(path):
        raise LayoutError(f"layout file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LayoutError(f"layout file {path} is not JSON: {err}") from None
    return Layout.from_dict(data, f"layout file {path}")


def check_layout(layout: Layout, where: str = "the layout", max_regions: int = MAX_REGIONS) -> None:
    """Refuse what cannot be drawn, one line each: boxes outside [0, 1] or empty, empty prompts, too
    many regions, a base ratio outside [0, 1]."""
    if not layout.regions:
        raise LayoutError(f"{where} has no regions")
    if len(layout.regions) > max_regions:
        raise LayoutError(f"{where} has {len(layout.regions)} regions; at most {max_regions} are drawn")
    if not _is_number(layout.base_ratio) or not 0 <= layout.base_ratio <= 1:
        raise LayoutError(f"{where}: base_ratio must be a number in [0, 1], got {layout.base_ratio!r}")
    for name in ("prompt", "background_prompt"):
        value = getattr(layout, name)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise LayoutError(f"{where}: the {'global' if name == 'prompt' else 'background'} prompt is empty")
    for i, r in enumerate(layout.regions, 1):
        if not isinstance(r.prompt, str) or not r.prompt.strip():
            raise LayoutError(f"{where}: region {i}'s prompt is empty")
        if r.negative_prompt is not None and not isinstance(r.negative_prompt, str):
            raise LayoutError(f"{where}: region {i}'s negative_prompt must be a string")
        if (r.box is None) == (r.mask is None):
            raise LayoutError(f"{where}: region {i} needs a box or a mask (one of them)")
        if r.box is not None:
            if len(r.box) != 4 or not all(_is_number(v) for v in r.box):
                raise LayoutError(f"{where}: region {i}'s box must be four numbers (x0, y0, x1, y1), got {r.box!r}")
            x0, y0, x1, y1 = r.box
            if not all(0 <= v <= 1 for v in r.box):
                raise LayoutError(f"{where}: region {i}'s box {list(r.box)} is outside [0, 1]")
            if x0 >= x1 or y0 >= y1:
                raise LayoutError(f"{where}: region {i}'s box {list(r.box)} is empty (x0 < x1 and y0 < y1 are needed)")


def as_layout(regions, prompt_count: int) -> list[Layout]:
    """The pipeline's `regions` argument as one checked Layout per prompt: a Layout, a list of
    Region (or dicts of Region's fields) for every prompt, or a list of those, one per prompt."""
    if isinstance(regions, Layout):
        layouts = [regions] * prompt_count
    elif isinstance(regions, (list, tuple)) and regions and all(isinstance(r, (Layout, list, tuple)) for r in regions):
        if len(regions) != prompt_count:
            raise LayoutError(f"got {len(regions)} layouts for {prompt_count} prompts: pass one, or one per prompt")
        layouts = [r if isinstance(r, Layout) else Layout(_regions(r)) for r in regions]
    elif isinstance(regions, (list, tuple)):
        layouts = [Layout(_regions(regions))] * prompt_count
    else:
        raise LayoutError(f"regions must be a Layout or a list of Region, got {type(regions).__name__}")
    for layout in layouts:
        check_layout(layout)
    return layouts


def _regions(items) -> list[Region]:
    out = []
    for r in items:
        if isinstance(r, dict):
            try:
                r = Region(**r)
            except TypeError as err:
                raise LayoutError(f"a region as a dict takes Region's fields (prompt, box, mask, negative_prompt): {err}")\
                    from None
        if not isinstance(r, Region):
            raise LayoutError(f"a region must be a Region or a dict, got {type(r).__name__}")
        out.append(r)
    return out


def draw_layout(layout: Layout, image, min_side: int = 256):
    """The plan over an image (a PIL image, upscaled to `min_side`): each region's box outlined in
    its own colour, numbered, with its prompt in a legend below (the demo shows it beside the
    images). Mask regions are outlined by their bounding box."""
    from PIL import ImageDraw

    from .images import upscale

    view = upscale(image.convert("RGB"), min_side)
    width, height = view.size
    colours = ["#ff3b30", "#34c759", "#007aff", "#ffcc00", "#af52de", "#ff9500", "#5ac8fa", "#ffffff"]
    legend = [f"global: {layout.prompt or '(the prompt)'}"] + [
        f"{k}: {r.prompt}" for k, r in enumerate(layout.regions, 1)]
    line = 12
    canvas = view.crop((0, 0, width, height + line * len(legend) + 4))  # the crop pads with black
    draw = ImageDraw.Draw(canvas)
    for k, r in enumerate(layout.regions, 1):
        colour = colours[(k - 1) % len(colours)]
        x0, y0, x1, y1 = r.box if r.box is not None else _mask_box(r.mask)
        draw.rectangle((x0 * width, y0 * height, x1 * width - 1, y1 * height - 1), outline=colour, width=2)
        draw.text((x0 * width + 3, y0 * height + 2), str(k), fill=colour)
    for n, text in enumerate(legend):
        colour = "#dddddd" if n == 0 else colours[(n - 1) % len(colours)]
        draw.text((3, height + 2 + n * line), text[: max(8, width // 6)], fill=colour)
    return canvas


def _mask_box(mask) -> tuple[float, float, float, float]:
    import numpy as np

    array = np.asarray(mask.convert("L") if hasattr(mask, "convert") else mask, dtype=np.float32)
    ys, xs = np.nonzero(array > array.max() / 2) if array.max() > 0 else (np.array([0]), np.array([0]))
    h, w = array.shape[-2:]
    return xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h


# ---- the attention side (torch from here on) ---------------------------------------------------


def coverage(layouts: list[Layout], height: int, width: int, device=None):
    """(prompts, K, height, width) in [0, 1]: each region's coverage of each latent pixel (a box's
    area share of the pixel, so box edges between pixels are exact), then the background's (what
    no region covers) when the layout has a background prompt; K the most of any prompt (the others
    padded with empty regions)."""
    import numpy as np
    import torch

    count = max(len(layout.segments()) for layout in layouts)
    out = torch.zeros(len(layouts), count, height, width)
    for i, layout in enumerate(layouts):
        for k, r in enumerate(layout.regions):
            if r.box is not None:
                x0, y0, x1, y1 = r.box
                xs = torch.arange(width, dtype=torch.float64)
                ys = torch.arange(height, dtype=torch.float64)
                cover_x = (torch.minimum(xs + 1, torch.tensor(x1 * width)) - torch.maximum(xs, torch.tensor(x0 * width)))
                cover_y = (torch.minimum(ys + 1, torch.tensor(y1 * height)) - torch.maximum(ys, torch.tensor(y0 * height)))
                out[i, k] = (cover_y.clamp(0, 1)[:, None] * cover_x.clamp(0, 1)[None, :]).float()
            else:
                mask = r.mask
                if hasattr(mask, "convert"):  # a PIL image
                    mask = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
                mask = torch.as_tensor(np.asarray(mask, dtype=np.float32) if not torch.is_tensor(mask) else mask).float()
                if mask.ndim != 2:
                    raise LayoutError(f"a region mask must be one channel (H, W), got shape {tuple(mask.shape)}")
                out[i, k] = torch.nn.functional.interpolate(mask[None, None].clamp(0, 1), (height, width),
                                                            mode="area")[0, 0]
        if layout.background_prompt:
            out[i, len(layout.regions)] = 1 - out[i].sum(0).clamp(max=1)
    return out.to(device)


def blend_weights(cover, base_ratio: float):
    """(rows, 1 + K, h, w) per-pixel weights of the global prompt and each region (module docstring)."""
    import torch

    regional = (1 - base_ratio) * cover / cover.sum(1, keepdim=True).clamp(min=1)
    return torch.cat([1 - regional.sum(1, keepdim=True), regional], dim=1)


class RegionalAttnProcessor:
    """Wraps a cross-attention layer's processor: the encoder states hold 1 + K segments of equal
    length (the global prompt, then each region's); the wrapped processor attends to each segment
    separately (one batched call), and the outputs are blended with per-pixel weights.

    `weights`: (rows, 1 + K, h, w) at the latent resolution; a layer of another resolution reads
    their area average. Rows are the call's CFG rows; when a step runs the positive rows only (CFG
    turned off by a callback), the last rows are used."""

    def __init__(self, processor, weights):
        self.processor = processor
        self.weights = weights
        self._by_size: dict[tuple[int, int], object] = {}
        self._plans: dict[tuple, tuple] = {}  # (pixels, rows, dtype) -> the gather plan (`_plan`)

    def _weights_for(self, tokens: int, rows: int):
        """(rows, S, h, w) for a layer of `tokens` pixels: the latent size halved (rounding up, as
        stride-2 convolutions do) until it has that many."""
        import torch.nn.functional as F

        h, w = self.weights.shape[-2:]
        while h * w > tokens:
            h, w = -(-h // 2), -(-w // 2)
        if h * w != tokens:
            raise ValueError(f"regions: a cross-attention layer of {tokens} pixels is no downsampling of the"
                             f" {tuple(self.weights.shape[-2:])} latents")
        if (h, w) not in self._by_size:
            self._by_size[(h, w)] = F.adaptive_avg_pool2d(self.weights, (h, w))
        return self._by_size[(h, w)][-rows:]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):

        if encoder_hidden_states is None:  # not cross-attention: nothing regional
            return self.processor(attn, hidden_states, None, attention_mask, temb, *args, **kwargs)
        rows, segments = hidden_states.shape[0], self.weights.shape[1]
        length = encoder_hidden_states.shape[1] // segments
        context = encoder_hidden_states.unflatten(1, (segments, length))  # (rows, S, L, C)
        if attention_mask is not None:  # diffusers' bias (rows, 1, S * L) -> (rows, S, 1, L)
            attention_mask = attention_mask.unflatten(-1, (segments, length)).movedim(-2, 1)
        # (rows, C, h, w) inputs, or a layer that normalises over its pixels (a group or spatial
        # norm: a subset of pixels would change its statistics): every segment over every pixel
        if hidden_states.ndim != 3 or any(getattr(attn, n, None) is not None for n in ("group_norm", "spatial_norm")):
            return self._dense(attn, hidden_states, context, attention_mask, temb, *args, **kwargs)
        # The global prompt everywhere; each region only over the pixels it covers, gathered (the
        # rest have weight 0): cross-attention is per pixel, so the gathered pixels' outputs are
        # theirs, and K regions of 1/9 of the image cost 4/9 of one more call, not K calls.
        glob, where, share = self._plan(hidden_states.shape[1], rows, hidden_states.dtype)
        out = self.processor(attn, hidden_states, context[:, 0], _segment(attention_mask, 0), temb, *args, **kwargs)
        out = out * glob
        if where is None:  # no region covers any pixel at this resolution
            return out
        regions = segments - 1
        gathered = hidden_states[:, None].expand(-1, regions, -1, -1).gather(
            2, where[..., None].expand(-1, -1, -1, hidden_states.shape[-1])).flatten(0, 1)  # (rows * K, n, C)
        mask = None if attention_mask is None else attention_mask[:, 1:].flatten(0, 1)
        temb = temb.repeat_interleave(regions, dim=0) if temb is not None else None
        seen = self.processor(attn, gathered, context[:, 1:].flatten(0, 1), mask, temb, *args, **kwargs)
        seen = (seen.unflatten(0, (rows, regions)) * share).flatten(1, 2)  # (rows, K * n, C)
        return out.scatter_add(1, where.flatten(1)[..., None].expand(-1, -1, seen.shape[-1]), seen)

    def _plan(self, tokens: int, rows: int, dtype):
        """For a layer of `tokens` pixels: the global prompt's weights (rows, N, 1); the pixels each
        region covers, first in its row of `where` (rows, K, n), and their weights (rows, K, n, 1),
        0 past a region's own count. Made once per resolution and row count: the weights are fixed
        for the call, and working them out at every layer and step synced the device each time."""
        import torch

        key = (tokens, rows, dtype)
        if key not in self._plans:
            weights = self._weights_for(tokens, rows).flatten(2).to(dtype)  # (rows, S, N)
            inside = weights[:, 1:] > 0  # (rows, K, N)
            counts = inside.sum(-1)
            n = int(counts.max())
            where = share = None
            if n:
                where = torch.argsort((~inside).to(torch.uint8), dim=-1, stable=True)[..., :n]  # inside first
                share = weights[:, 1:].gather(2, where) * (torch.arange(n, device=counts.device) < counts[..., None])
                share = share[..., None]
            self._plans[key] = (weights[:, 0, :, None], where, share)
        return self._plans[key]

    def _dense(self, attn, hidden_states, context, attention_mask, temb, *args, **kwargs):
        """Every segment attended from every pixel (one batched call), then blended."""
        rows, segments = context.shape[:2]

        def repeat(x):  # each row once per segment
            return x if x is None or not hasattr(x, "repeat_interleave") else x.repeat_interleave(segments, dim=0)

        mask = None if attention_mask is None else attention_mask.flatten(0, 1)
        out = self.processor(attn, repeat(hidden_states), context.flatten(0, 1), mask, repeat(temb), *args, **kwargs)
        out = out.unflatten(0, (rows, segments))  # (rows, S, N, C), or (rows, S, C, h, w) for 4-D inputs
        if out.ndim == 4:
            weights = self._weights_for(out.shape[2], rows).flatten(2)[..., None]  # (rows, S, N, 1)
        else:
            weights = self._weights_for(out.shape[-2] * out.shape[-1], rows)[:, :, None]  # (rows, S, 1, h, w)
        return (out * weights.to(out.dtype)).sum(1)


def _segment(attention_mask, k: int):
    return None if attention_mask is None else attention_mask[:, k]


def cross_attention_names(model) -> list[str]:
    """The `attn_processors` keys of a model's cross-attention layers."""
    return [f"{name}.processor" for name, module in model.named_modules()
            if hasattr(module, "set_processor") and getattr(module, "is_cross_attention", False)]


@contextmanager
def regional_attention(models, weights):
    """Set RegionalAttnProcessor on every cross-attention layer of `models` (the UNet, a
    ControlNet) for the block, and restore each model's processors after it, whatever happens."""
    saved = []
    try:
        for model in models:
            if model is None:
                continue
            processors = dict(model.attn_processors)
            saved.append((model, processors))
            cross = set(cross_attention_names(model))
            model.set_attn_processor({name: RegionalAttnProcessor(p, weights) if name in cross else p
                                      for name, p in processors.items()})
        yield
    finally:
        for model, processors in saved:
            model.set_attn_processor(processors)


class RegionalConditioning:
    """One call's regions, as the denoising loop carries them: the regions' LLM features and CLIP
    tokens (rows (CFG, prompt, image, region), K regions per row; `text` padded to the global
    features' length, so that both go through the connector in one call), the blend weights
    (rows, 1 + K, h, w), and the connector's outputs for every step when precomputed."""

    def __init__(self, text, clip_embeds, weights, precomputed=None):
        self.text, self.clip_embeds, self.weights, self.precomputed = text, clip_embeds, weights, precomputed

    @property
    def count(self) -> int:
        return self.weights.shape[1] - 1

    def positive(self, rows: int) -> RegionalConditioning:
        """The positive rows only, for `rows` images (CFG turned off for a step: diffusers' order
        puts the negatives first)."""
        from .text_encoders import TextFeatures

        k = self.count

        def last(x, dim=0):
            return None if x is None else x.narrow(dim, x.shape[dim] - rows * k, rows * k)

        text = None if self.text is None else TextFeatures(last(self.text.hidden_states), last(self.text.attention_mask))
        precomputed = None if self.precomputed is None else last(self.precomputed, 1)
        return RegionalConditioning(text, last(self.clip_embeds), self.weights[-rows:], precomputed)

    def conditioning(self, pipe, t, step: int, text, clip_embeds, step_output):
        """This step's encoder states (rows, (1 + K) * L, C) and mask: the global prompt's, then
        each region's, row by row; the connector runs once on the global and regional features
        together (or both were precomputed)."""
        import torch

        from .text_encoders import TextFeatures

        rows = self.weights.shape[0]
        if text is not None and step_output is None:  # one connector call for all segments
            joint = TextFeatures(torch.cat([text.hidden_states, self.text.hidden_states]),
                                 None if text.attention_mask is None
                                 else torch.cat([text.attention_mask, self.text.attention_mask]))
            clip = None if clip_embeds is None else torch.cat([clip_embeds, self.clip_embeds])
            cond, mask = pipe.conditioning_at(t, joint, clip)
        else:
            regional_output = None if self.precomputed is None else self.precomputed[step]
            parts = [pipe.conditioning_at(t, text, clip_embeds, step_output),
                     pipe.conditioning_at(t, self.text, self.clip_embeds, regional_output)]
            cond = torch.cat([p[0] for p in parts])
            mask = None if parts[0][1] is None else torch.cat([p[1] for p in parts])
        glob, regional = cond[:rows], cond[rows:].unflatten(0, (rows, self.count))  # (R, L, C), (R, K, L, C)
        cond = torch.cat([glob[:, None], regional], dim=1).flatten(1, 2)  # (R, (1 + K) * L, C)
        if mask is not None:
            mask = torch.cat([mask[:rows, None], mask[rows:].unflatten(0, (rows, self.count))], dim=1).flatten(1)
        return cond, mask
