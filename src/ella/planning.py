"""Planners: a long prompt -> a layout of regions (`ella.regions.Layout`), each with its own
description, for `pipe(prompt, regions=layout)`.

    plan_regions(prompt, planner="llm:smollm2")     # any chat LLM through transformers (greedy)
    plan_regions(prompt, planner="openai:http://localhost:8000/v1#Qwen/Qwen2.5-7B-Instruct")  # an endpoint
    plan_regions(prompt, planner="shapes")          # a plugin's planner (ShapesWorld: its exact parser)
    plan_regions(prompt, planner="layout.json")     # the user's own layout

An LLM planner is instructed with the layout's JSON schema and a few worked examples (as LMD,
Lian et al. 2023, prompts its LLM); its answer is parsed, repaired where it is a near miss
(code fences, a trailing comma, boxes in percent or a hair outside the image) and checked; what
is not a layout is refused in one line. The layout records who planned it: the planner, its
prompt, its raw output and the repairs, so that a plan can be redone (greedy decoding).
"""

from __future__ import annotations

import json
import logging
import os
import re

from .regions import MAX_REGIONS, Layout, LayoutError, load_layout

logger = logging.getLogger(__name__)

# The image's 3x3 grid by name: a place a small LLM can name where it cannot write coordinates.
PLACES = {f"{row} {col}".strip() if (row, col) != ("", "") else "center": (c / 3, r / 3, (c + 1) / 3, (r + 1) / 3)
          for r, row in enumerate(("top", "", "bottom")) for c, col in enumerate(("left", "", "right"))}

INSTRUCTIONS = f"""You plan the layout of an image from its description. Split the description into the separate \
things it asks for, one region each, with a short description of that thing alone (its colour, size and other \
attributes) and its place: one of {", ".join(PLACES)}. "Below it", "to its right" and similar words place a thing \
next to the thing named before. (Instead of a place, a region may give a box [x0, y0, x1, y1]: fractions of the \
image's width and height from the top left corner.) At most {MAX_REGIONS} regions. background_prompt describes \
what is left around them. Answer with the JSON object only."""

EXAMPLES = [
    ("a red apple at the top left, a green pear below it",
     {"regions": [{"place": "top left", "prompt": "a red apple at the top left"},
                  {"place": "left", "prompt": "a green pear on the left"}],
      "background_prompt": "a plain background"}),
    ("a small brown dog in the center and a large oak tree on the right, on a sunny day",
     {"regions": [{"place": "center", "prompt": "a small brown dog in the center, sunny day"},
                  {"place": "right", "prompt": "a large oak tree on the right, sunny day"}],
      "background_prompt": "a sunny meadow"}),
]


def chat_messages(prompt: str) -> list[dict]:
    """The planner's conversation: instructions, the worked examples, then the prompt."""
    messages = [{"role": "system", "content": INSTRUCTIONS}]
    for text, layout in EXAMPLES:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": json.dumps(layout)}]
    return messages + [{"role": "user", "content": prompt}]


# ---- reading an LLM's answer ---------------------------------------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
BOX_SLACK = 0.05  # a box this far outside [0, 1] is clamped (a near miss); farther is refused


def _first_object(text: str) -> str | None:
    """The first balanced {...} in the text (strings respected), or None."""
    start = text.find("{")
    while start != -1:
        depth, in_string, escaped = 0, False, False
        for i in range(start, len(text)):
            ch = text[i]
            if in_string:
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"':
                    in_string = False
                continue
            if ch == '"':
                in_string = True
            elif ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[start : i + 1]
        start = text.find("{", start + 1)
    return None


def parse_layout(output: str, prompt: str) -> tuple[Layout, list[str]]:
    """(layout, the repairs made) from an LLM's answer; LayoutError in one line when it is not a layout."""
    repairs = []
    fenced = _FENCE.search(output)
    if fenced:
        output, _ = fenced.group(1), repairs.append("took the JSON out of a code fence")
    candidate = _first_object(output)
    if candidate is None:
        raise LayoutError(f"the planner's answer holds no JSON object: {_clip(output)!r}")
    try:
        data = json.loads(candidate)
    except json.JSONDecodeError:
        fixed = _TRAILING_COMMA.sub(r"\1", candidate)
        try:
            data = json.loads(fixed)
            repairs.append("removed a trailing comma")
        except json.JSONDecodeError as err:
            raise LayoutError(f"the planner's answer is not valid JSON ({err.msg} at character {err.pos}):"
                              f" {_clip(candidate)!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("regions"), list):
        raise LayoutError(f"the planner's answer is not a layout (no \"regions\" list): {_clip(candidate)!r}")
    data = {k: v for k, v in data.items() if k in ("regions", "background_prompt", "base_ratio")}
    if data.get("background_prompt") is not None and not str(data["background_prompt"]).strip():
        data.pop("background_prompt")
        repairs.append("dropped an empty background_prompt")
    regions = []
    for r in data["regions"]:
        if isinstance(r, dict):
            place = r.get("place")
            r = {k: v for k, v in r.items() if k in ("box", "prompt", "negative_prompt")}
            if "box" not in r and isinstance(place, str) and place.strip().lower() in PLACES:
                r["box"] = list(PLACES[place.strip().lower()])
            r["box"] = _repair_box(r.get("box"), repairs)
        regions.append(r)
    data["regions"] = regions
    return Layout.from_dict({**data, "prompt": prompt}, "the planner's layout"), repairs


def _repair_box(box, repairs: list[str]):
    if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        return box  # refused by the layout's own check, with its message
    if max(box) > 1 + BOX_SLACK and max(box) <= 100:
        box, _ = [v / 100 for v in box], repairs.append("read a box in percent")
    if all(-BOX_SLACK <= v <= 1 + BOX_SLACK for v in box) and not all(0 <= v <= 1 for v in box):
        box, _ = [min(1.0, max(0.0, v)) for v in box], repairs.append("clamped a box to the image")
    return box


def _clip(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ---- planners ------------------------------------------------------------------------------------


class ChatPlanner:
    """A chat LLM through transformers (a hub id, a folder, a `.gguf` file, or `smollm2`), greedy."""

    def __init__(self, model: str, device: str | None = None, max_new_tokens: int = 384):
        from .caption.captioners import load_causal_lm
        from .devices import resolve_device, resolve_dtype

        self.device = resolve_device(device)
        self.model, self.tokenizer, self.revision = load_causal_lm(model, resolve_dtype(None, self.device), "planner")
        self.model.to(self.device)
        self.name, self.max_new_tokens = model, max_new_tokens

    def text(self, prompt: str) -> str:
        messages = chat_messages(prompt)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def complete(self, prompt: str) -> tuple[str, str]:
        """(the text given to the LLM, its answer)."""
        import torch

        text = self.text(prompt)
        tokens = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.device)
        with torch.no_grad():
            ids = self.model.generate(**tokens, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return text, self.tokenizer.decode(ids[0, tokens["input_ids"].shape[1]:], skip_special_tokens=True)

    def describe(self) -> dict:
        return {"name": f"llm:{self.name}", "revision": self.revision, "decoding": "greedy",
                "max_new_tokens": self.max_new_tokens}


class EndpointPlanner:
    """An OpenAI-compatible chat endpoint (vLLM, a hosted model): `openai:BASE_URL#MODEL`, the key
    from OPENAI_API_KEY; temperature 0 and a fixed seed."""

    def __init__(self, spec: str, timeout: float = 120.0):
        base, _, model = spec.partition("#")
        if not base.startswith(("http://", "https://")) or not model:
            raise LayoutError(f"an endpoint planner is openai:BASE_URL#MODEL (http or https), got openai:{spec}")
        self.url, self.model, self.timeout = base.rstrip("/") + "/chat/completions", model, timeout

    def complete(self, prompt: str) -> tuple[str, str]:
        import urllib.error
        import urllib.request

        body = {"model": self.model, "messages": chat_messages(prompt), "temperature": 0, "seed": 0}
        request = urllib.request.Request(self.url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if os.environ.get("OPENAI_API_KEY"):
            request.add_header("Authorization", f"Bearer {os.environ['OPENAI_API_KEY']}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.load(response)["choices"][0]["message"]["content"]
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as err:
            raise LayoutError(f"the planner endpoint {self.url} did not answer with a chat completion: {err}") from None
        return json.dumps(body["messages"]), answer

    def describe(self) -> dict:
        return {"name": f"openai:{self.url}#{self.model}", "temperature": 0, "seed": 0}


def planner_names() -> list[str]:
    """What `--planner` takes, for messages and help."""
    from .plugins import registry

    return [*registry().planners, "llm:MODEL", "openai:URL#MODEL", "a layout .json file"]


def load_planner(spec: str, device: str | None = None):
    """A planner object with `plan(prompt) -> Layout` semantics, by its spec (module docstring)."""
    from .plugins import lookup

    if spec.startswith("llm:"):
        return ChatPlanner(spec[4:], device)
    if spec.startswith("openai:"):
        return EndpointPlanner(spec[7:])
    if spec.endswith(".json"):
        return spec
    plugin = lookup("planners", spec)
    if plugin is None:
        raise LayoutError(f"unknown planner {spec!r}: one of {', '.join(planner_names())}")
    return plugin


def plan_regions(prompt: str, planner="shapes", device: str | None = None) -> Layout:
    """The layout of `prompt`: `planner` is a spec (module docstring) or a loaded planner
    (`load_planner`), which a caller planning many prompts keeps."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise LayoutError("the prompt to plan is empty")
    planner = load_planner(planner, device) if isinstance(planner, str) else planner
    if isinstance(planner, str):  # a layout file
        layout = load_layout(planner)
        layout.prompt = layout.prompt or prompt
        layout.planner = {**layout.planner, "file": os.path.abspath(planner)}
        return layout
    if callable(planner):  # a plugin's: prompt -> Layout
        return planner(prompt)
    given, answer = planner.complete(prompt)
    record = {**planner.describe(), "input": given, "output": answer}
    try:
        layout, repairs = parse_layout(answer, prompt)
    except LayoutError as err:
        logger.info("planner output refused: %s", answer)
        raise LayoutError(f"{err} (planner {record['name']})") from None
    layout.planner = {**record, "repairs": repairs}
    return layout
