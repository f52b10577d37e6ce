"""The shipped ShapesWorld models, by name: the one list the CLI help, the benchmark, the scripts
and the tests read. No torch here (`ella --help` reads it).

    unet/  base_text_encoder/  base_tokenizer/  scheduler/   the base model (plays SD1.5 + CLIP)
    ella-<connector>/                                        one folder per connector below
"""

from __future__ import annotations

import os
from typing import NamedTuple

from ..offline_llms import MINILM, SMOLLM2

# `ella generate` defaults for ShapesWorld: 25 steps with CFG, 32x32, and a 256 px view copy.
SHAPES_DEFAULTS = dict(steps=25, guidance=5.0, size=(32, 32), view_size=256)
MAIN_PROMPT = "a large red circle at the top left, a small blue square below it"  # the README's main job
ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "shapes")


class ShippedConnector(NamedTuple):
    """How a shipped connector reads its prompts (the frozen LLM, an alias of
    `offline_llms.OFFLINE_LLMS`, and whether it reads each prompt twice). A connector has one name
    everywhere: the CLI's `--ella NAME`, the row of `ella bench shapes`, the asset folder
    `ella-NAME/`, the recipe `configs/shapes/ella-NAME.yaml` and its run `runs/shapes/ella-NAME-seed0`."""

    llm: str
    summary: str
    echo: bool = False


DEFAULT_CONNECTOR = "tsc"
CONNECTORS = {
    "tsc": ShippedConnector(MINILM, "the default: dense, brief, relative and varied captions"),
    "tsc-relative": ShippedConnector(MINILM, "the default before varied phrasings: dense, brief and relative captions"),
    "tsc-dense": ShippedConnector(MINILM, "the ablation's TSC: dense captions only"),
    "resampler": ShippedConnector(MINILM, "ablation: resampler without timestep"),
    "mlp": ShippedConnector(MINILM, "ablation: an MLP"),
    "tsc-noise": ShippedConnector(MINILM, "the default fine-tuned with strong text-feature noise: more held-out words,"
                                          " worse on every other style (docs/shapesworld.md)"),
    "tsc-feedback": ShippedConnector(MINILM, "the default after one round of `ella feedback` with DPO on feedback-lexicon"
                                     " prompts (better on those words, not on every style: docs/shapesworld.md)"),
    "tsc-smollm2": ShippedConnector(SMOLLM2, "the TSC on SmolLM2-135M (optional package)"),
    "tsc-smollm2-echo": ShippedConnector(SMOLLM2, "the same LLM reading each prompt twice", echo=True),
}


def run_name(connector: str) -> str:
    """The training run (and recipe) a shipped connector is exported from: `ella-<connector>`."""
    return f"ella-{connector}"


# Samplers that do not work with the shipped models' cosine schedule (first sigma about 20,000),
# checked with `ella generate`'s prompt.
POOR_SAMPLERS = {
    "HeunDiscreteScheduler": "draws noise here: its second-order correction over the first, huge step blows up",
    "DDIMScheduler": "ignores the prompt and leaves noise here (seen on 4 seeds; cause not measured)",
}
BASE_MODEL = "base"  # the bench row of the base model alone (its own CLIP-style text encoder)
BENCH_MODELS = {BASE_MODEL: None, **{name: name for name in CONNECTORS}}  # bench row -> connector


def shipped_model_dir() -> str | None:
    return ASSETS if os.path.isfile(os.path.join(ASSETS, "unet", "config.json")) else None
