"""The shipped ShapesWorld models (`catalog` lists them): loading one as an ELLA pipeline, and
`SHIPPED`, the default model `ella generate` runs (registered by `ella.shapes.plugin`). Torch is
imported where a model loads, so `ella --help` can read `SHIPPED`."""

from __future__ import annotations

import os

from ..offline_llms import MINILM
from ..samplers import SCHEDULERS
from .catalog import (
    CONNECTORS,
    DEFAULT_CONNECTOR,
    MAIN_PROMPT,
    POOR_SAMPLERS,
    SHAPES_DEFAULTS,
    shipped_model_dir,
)


def load_shapes_pipeline(model_dir: str | None = None, connector: str | None = DEFAULT_CONNECTOR, device=None, dtype=None,
                         llm_precision: str | None = None):
    """The ShapesWorld pipeline: base UNet + base text encoder (conditioning="clip") and the
    frozen LLM of the connector + the connector (conditioning="ella"), sharing one UNet.
    `connector` is a shipped connector's name (`catalog.CONNECTORS`) or the path of one's own
    (`ella train`'s export, `load_own_connector`); None loads the base model alone (with MiniLM).
    `llm_precision` (fp32, bf16, fp16, int8): the LLM's alone (default: the pipeline's dtype)."""
    from diffusers import DPMSolverMultistepScheduler
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

    from ..devices import resolve_device, resolve_dtype
    from ..models import ELLA
    from ..offline_llms import MINILM
    from ..pipelines import ELLAStableDiffusionPipeline
    from ..pipelines.loading import load_unet
    from ..text_encoders import llm_precision_args, load_text_encoder

    model_dir = model_dir or shipped_model_dir()
    if model_dir is None or not os.path.isdir(os.path.join(model_dir, "unet")):
        raise ValueError(f"not a ShapesWorld model folder: {model_dir}")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev) if dtype not in (None, "auto") else resolve_dtype("fp32", dev)
    ella, reads = None, CONNECTORS.get(connector) if connector is not None else None
    if connector is not None and reads is not None:
        connector_dir = os.path.join(model_dir, f"ella-{connector}")
        if not os.path.isdir(connector_dir):
            raise ValueError(f"no connector {connector!r} in {model_dir}")
        ella = ELLA.from_pretrained(connector_dir, torch_dtype=torch_dtype)
    elif connector is not None:  # a connector of one's own: `ella train`'s export folder or a single file
        ella, reads = load_own_connector(connector, torch_dtype)
    text_encoder, tokenizer = load_text_encoder(reads.llm if reads else MINILM, dev,
                                                *llm_precision_args(llm_precision, torch_dtype))
    if ella is not None and ella.config.input_dim != text_encoder.config.hidden_size:
        raise ValueError(f"connector {connector} reads {ella.config.input_dim}-wide LLM features, but its LLM"
                         f" {reads.llm if reads else MINILM} gives {text_encoder.config.hidden_size}")
    pipe = ELLAStableDiffusionPipeline(
        unet=load_unet(model_dir, "unet", torch_dtype),
        scheduler=DPMSolverMultistepScheduler.from_pretrained(model_dir, subfolder="scheduler"),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        ella=ella,
        clip_text_encoder=CLIPTextModel.from_pretrained(os.path.join(model_dir, "base_text_encoder"), dtype=torch_dtype),
        clip_tokenizer=PreTrainedTokenizerFast.from_pretrained(os.path.join(model_dir, "base_tokenizer")),
        text_max_length=128,
        text_mode="flexible",
        text_echo=bool(reads and reads.echo),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def load_own_connector(path: str, torch_dtype=None):
    """(connector, how it reads prompts) for a connector trained with `ella train` on the
    ShapesWorld base: its export folder (or a single file), and the LLM and echo setting of the
    `training_config.yaml` beside it (MiniLM when there is none)."""
    import yaml

    from ..pipelines.loading import load_connector
    from .catalog import ShippedConnector

    if not os.path.exists(path):
        raise ValueError(f"--ella {path}: neither a shipped connector ({', '.join(CONNECTORS)}) nor a file or folder")
    ella = load_connector(path, torch_dtype)
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config_path = os.path.join(folder, "training_config.yaml")
    config = {}
    if os.path.isfile(config_path):
        with open(config_path) as f:
            config = yaml.safe_load(f) or {}
    reads = ShippedConnector(config.get("llm") or MINILM, f"own: {os.path.basename(os.path.normpath(path))}",
                             echo=bool(config.get("text_echo")))
    return ella, reads


MAX_NEAREST = 8  # unknown words of one prompt given their nearest trained phrase (one LLM batch each)


class ShippedModel:
    """What `ella generate` runs without --model (registered by `ella.shapes.plugin`)."""

    name = "the shipped ShapesWorld model"
    connectors = CONNECTORS
    default_connector = DEFAULT_CONNECTOR
    planner = "shapes"  # `--regions auto` plans with its exact parser (ella.shapes.planner)
    defaults = SHAPES_DEFAULTS
    poor_samplers = POOR_SAMPLERS

    @staticmethod
    def available() -> bool:
        return shipped_model_dir() is not None

    @staticmethod
    def check_prompt(prompt: str, pipe=None) -> list[str]:
        """Warnings about a prompt: the words no training caption used. Not "cannot draw": the
        frozen LLM may carry a new word to one the connector learned. With the pipeline, each word
        comes with the trained phrase its LLM reads it most like in this prompt
        (`vocabulary.nearest_trained_words`): what the model will most likely draw for it."""
        from .vocabulary import nearest_trained_words, unknown_words

        unknown = unknown_words(prompt)
        if not unknown:
            return []
        nearest = {}
        if pipe is not None and getattr(pipe, "ella", None) is not None:
            nearest = nearest_trained_words(prompt, unknown[:MAX_NEAREST], pipe.text_encoder, pipe.tokenizer,
                                            pipe._execution_device)
        named = ", ".join(f"{w} (read most like '{nearest[w]}')" if w in nearest else w for w in unknown)
        return [f"no ShapesWorld training caption uses these words: {named}. The model may still follow them"
                " through its frozen LLM, which knows most new words for sizes, many for shapes and few for colours"
                " (docs/shapesworld.md, \"Words no caption taught\"); it draws only circles, squares and triangles,"
                " red, green, blue, yellow or purple, large or small, on black, gray or white"]

    @staticmethod
    def check_settings(size: tuple | None, scheduler: str) -> list[str]:
        """Warnings about settings this model cannot use well."""
        warnings = []
        if size is not None and tuple(size) != SHAPES_DEFAULTS["size"]:
            warnings.append(f"ShapesWorld's models were trained at 32x32; at {size[0]}x{size[1]} they draw blobs")
        if scheduler in POOR_SAMPLERS:
            good = [name for name, cls in SCHEDULERS.items() if cls not in POOR_SAMPLERS]
            warnings.append(f"{scheduler} {POOR_SAMPLERS[scheduler]}; {good[0]} (the default), {', '.join(good[1:])}"
                            " work")
        return warnings

    example_prompts = (
        MAIN_PROMPT,
        "a small green triangle in the center, a large yellow square to its right on a white background",
        "draw a big purple square in the lower right and a tiny yellow dot top left, black background",
        "An image with three objects on a gray background. It shows a large blue triangle at the top, a small red"
        " square in the center and a large green circle at the bottom right. The blue triangle is above the red square.",
    )

    @staticmethod
    def describe(image) -> str:
        """What the exact judge sees in an image: the background and the object in each grid cell."""
        from .judge import analyse
        from .world import cell_name

        background, cells = analyse(image)
        found = [f"{cell_name(i)}: {seen.size} {seen.color} {seen.shape}" for i, seen in enumerate(cells) if seen]
        return f"background {background}; " + ("; ".join(found) if found else "no object")

    @staticmethod
    def accepts(connector: str) -> bool:
        """A shipped connector's name, or the path of a connector trained on this base."""
        return connector in CONNECTORS or os.path.exists(connector)

    @staticmethod
    def load(connector: str | None, device=None, dtype=None, llm_precision=None):
        return load_shapes_pipeline(connector=connector or DEFAULT_CONNECTOR, device=device, dtype=dtype,
                                    llm_precision=llm_precision)


SHIPPED = ShippedModel()
