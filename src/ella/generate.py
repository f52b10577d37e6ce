"""`ella generate`: the main job, from the command line."""

from __future__ import annotations

import logging
import os

import torch

from .images import check_image_path, make_grid, save_atomic, upscale

logger = logging.getLogger(__name__)

# Far beyond any text encoder's context (T5: 128 tokens as published): surely a wrong argument.
MAX_PROMPT_CHARS = 10_000


def load_for_cli(args):
    """(pipeline, defaults) for the model and sampler the flags name; the shipped ShapesWorld model
    if none."""
    from .pipelines.loading import scheduler_class

    sampler = None if args.scheduler is None else scheduler_class(args.scheduler)  # a typo fails before loading
    pipe, defaults = _load_model(args)
    if sampler is not None:
        pipe.scheduler = sampler.from_config(pipe.scheduler.config)
    return pipe, defaults


def _load_model(args):
    if args.model is None:
        from .cli import default_model

        shipped = default_model()
        if shipped is None or not shipped.available():
            raise ValueError(
                "no default model is installed: pass --model (an ELLA pipeline folder, or a Stable Diffusion"
                " folder/hub id with --ella CONNECTOR and --llm LLM)"
            )
        if args.llm is not None:
            raise ValueError(f"the connectors of {shipped.name} each come with their LLM: --llm goes with --model"
                             " and --ella")
        connector = args.ella or shipped.default_connector
        if not shipped.accepts(connector):
            raise ValueError(f"with {shipped.name}, --ella is one of {', '.join(shipped.connectors)} or the export"
                             f" folder of a connector trained on it; got {connector!r}")
        return shipped.load(connector, device=args.device, dtype=args.dtype), shipped.defaults
    from .pipelines.loading import load_pipeline

    pipe = load_pipeline(args.model, args.ella, args.llm, args.device, args.dtype)
    # Published ELLA-SD1.5 defaults of the web demo (reference doc, Sec. 3).
    return pipe, dict(steps=25, guidance=10.0, size=(None, None), view_size=None)  # size: the UNet's own


def generate_cli(args) -> list[str]:
    if not args.prompt.strip():
        raise ValueError("the prompt is empty")
    if len(args.prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(args.prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted"
                         " (text encoders read far less: longer prompts are truncated, with a warning)")
    check_image_path(args.out)
    pipe, defaults = load_for_cli(args)
    steps = args.steps or defaults["steps"]
    guidance = defaults["guidance"] if args.guidance is None else args.guidance
    height, width = args.size or defaults["size"]
    conditionings = ["clip", "ella"] if args.compare else ["ella"]
    if args.compare and pipe.clip_text_encoder is None:
        raise ValueError("--compare needs a model with a base (CLIP) text encoder, such as the ShapesWorld default")
    rows = []
    for conditioning in conditionings:
        # One generator per image, seeded from --seed: image i is the same whatever --num-images is.
        generators = [torch.Generator("cpu").manual_seed(args.seed + i) for i in range(args.num_images)]
        images = pipe(
            args.prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
            negative_prompt=args.negative, num_images_per_prompt=args.num_images, generator=generators,
            conditioning=conditioning,
        ).images
        rows.append(images)
    images = [im for row in rows for im in row]
    out = make_grid(images, cols=args.num_images) if len(images) > 1 else images[0]
    save_atomic(out, args.out)
    written = [args.out]
    if defaults.get("view_size"):
        root, ext = os.path.splitext(args.out)
        view_path = f"{root}.view{ext}"
        save_atomic(upscale(out, defaults["view_size"]), view_path)
        written.append(view_path)
    return written

