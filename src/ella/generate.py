"""`ella generate`: the main job, from the command line."""

from __future__ import annotations

import copy
import logging
import os
import sys

import torch

from .images import check_image_path, label_columns, make_grid, open_image, save_atomic, upscale

logger = logging.getLogger(__name__)

# Far beyond any text encoder's context (T5: 128 tokens as published): surely a wrong argument.
MAX_PROMPT_CHARS = 10_000
COMPARE = ("clip", "ella")  # --compare: the base model's own text encoder, then ELLA
COMPARE_NAMES = {"clip": "base", "ella": "ella"}


def warn(message: str) -> None:
    print(f"ella: warning: {message}", file=sys.stderr)


def load_for_cli(args):
    """(pipeline, defaults, the default model or None) for the model and sampler the flags name;
    the default model (a plugin's: ShapesWorld) if none."""
    from .samplers import scheduler_class

    sampler = None if args.scheduler is None else scheduler_class(args.scheduler)  # a typo fails before loading
    pipe, defaults, shipped = _load_model(args)
    if sampler is not None:
        pipe.scheduler = sampler.from_config(pipe.scheduler.config)
    return pipe, defaults, shipped


def _defaults(call: dict) -> dict:
    """`ella generate`'s defaults from a pipeline's published call defaults."""
    return dict(steps=call["num_inference_steps"], guidance=call["guidance_scale"],
                size=(call["height"], call["width"]), view_size=None)


def _load_model(args):
    if getattr(args, "preset", None):
        from .pipelines.loading import load_preset

        if args.model or args.ella or args.llm:
            raise ValueError(f"--preset {args.preset} names the model, the connector and the LLM: drop --model, --ella"
                             " and --llm (or drop --preset)")
        pipe, call = load_preset(args.preset, args.device, args.dtype, args.llm_precision)
        return pipe, _defaults(call), None
    if args.model is None:
        from .plugins import default_model

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
        return (shipped.load(connector, device=args.device, dtype=args.dtype, llm_precision=args.llm_precision),
                shipped.defaults, shipped)
    from .pipelines.loading import call_defaults, load_pipeline

    pipe = load_pipeline(args.model, args.ella, args.llm, args.device, args.dtype, llm_precision=args.llm_precision)
    return pipe, {**_defaults(call_defaults(pipe)), "size": (None, None)}, None  # size: the model's own


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted"
                         " (text encoders read far less: longer prompts are truncated, with a warning)")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:  # bytes that were not UTF-8 on the command line
        raise ValueError(f"the prompt is not valid UTF-8 (byte {err.start} of it)") from None


def check_settings(args, pipe, steps: int, shipped) -> None:
    """Refuse what cannot work; warn once, in one line, about what works badly."""
    train_steps = pipe.scheduler.config.num_train_timesteps
    if steps > train_steps:
        raise ValueError(f"--steps {steps}: the model has {train_steps} noise levels, so at most {train_steps} steps")
    if pipe.unet.dtype == torch.float16 and pipe.device.type == "cpu":
        warn("fp16 on the CPU is slow and loses precision; --dtype fp32 (the CPU default) or bf16")
    if shipped is not None:
        for message in shipped.check_prompt(args.prompt, pipe) + shipped.check_settings(args.size, type(pipe.scheduler).__name__):
            warn(message)


def init_image_args(args) -> dict:
    """The pipeline's init_image / mask_image / strength from --init-image, --mask, --strength."""
    if args.init_image is None:
        if args.mask is not None or args.strength is not None:
            raise ValueError("--mask and --strength go with --init-image (the image to start from)")
        return {}
    image = open_image(args.init_image, "--init-image").convert("RGB")
    mask = None if args.mask is None else open_image(args.mask, "--mask")
    if mask is not None and mask.size != image.size:
        raise ValueError(f"--mask is {mask.width}x{mask.height} pixels but --init-image is {image.width}x{image.height}:"
                         " they must be the same size")
    strength = args.strength if args.strength is not None else (1.0 if mask is not None else 0.8)
    return dict(init_image=image, mask_image=mask, strength=strength)


def generate_cli(args) -> list[str]:
    check_prompt(args.prompt)
    check_image_path(args.out)
    options = init_image_args(args)  # a bad image fails before the model loads
    if args.prompt_weighting:
        from .prompt_weighting import parse_prompt_weights

        for text in (args.prompt, args.negative or ""):  # a syntax error fails before the model loads
            parse_prompt_weights(text)
        options["prompt_weighting"] = args.prompt_weighting
    layout = None
    if args.regions is not None:  # planned (or read) before the model loads: a bad layout costs nothing
        layout = plan_for_cli(args.prompt, args.regions, args.planner, args.device)
        options.update(regions=layout, base_ratio=args.base_ratio)
    elif args.planner is not None or args.base_ratio is not None:
        raise ValueError("--planner and --base-ratio go with --regions (auto, or a layout file)")
    pipe, defaults, shipped = load_for_cli(args)
    steps = args.steps or defaults["steps"]
    check_settings(args, pipe, steps, shipped)
    guidance = defaults["guidance"] if args.guidance is None else args.guidance
    height, width = args.size or defaults["size"]
    if args.compare and pipe.clip_text_encoder is None:
        raise ValueError("--compare needs a model with a base (CLIP) text encoder, such as the ShapesWorld default")
    pipe.set_progress_bar_config(disable=args.quiet or not sys.stderr.isatty(), leave=False)
    rows = render(pipe, args.prompt, COMPARE if args.compare else ("ella",), args.seed, args.num_images, steps,
                  guidance, args.negative, height, width, **options)
    written = write_outputs(args.out, rows, defaults.get("view_size"))
    if layout is not None:  # the plan beside the image: its planner's prompt, raw output and the layout drawn
        path = f"{os.path.splitext(args.out)[0]}.layout.json"
        layout.save(path)
        written.append(path)
    return written


def plan_for_cli(prompt: str, regions: str, planner: str | None, device: str | None = None):
    """The layout `--regions auto` (planned by `planner`, the default model's own planner when
    None) or `--regions FILE` names; LayoutError in one line otherwise."""
    from .planning import plan_regions
    from .plugins import default_model
    from .regions import LayoutError, load_layout

    check_prompt(prompt)
    if regions != "auto":
        if planner is not None:
            raise LayoutError("--planner goes with --regions auto; --regions FILE is a layout already planned")
        layout = load_layout(regions)
        layout.prompt = layout.prompt or prompt
        return layout
    if planner is None:
        shipped = default_model()
        planner = getattr(shipped, "planner", None) if shipped is not None else None
        if planner is None:
            raise LayoutError("--regions auto needs --planner (llm:MODEL, openai:URL#MODEL, or a plugin's)")
    return plan_regions(prompt, planner, device)


def render(pipe, prompt: str, conditionings, seed: int, num_images: int, steps: int, guidance: float,
           negative: str | None = None, height: int | None = None, width: int | None = None,
           **pipe_kwargs) -> dict[str, list]:
    """{conditioning: images}: what `ella generate` draws (and `ella demo`, through the same
    function). One generator per image, seeded seed + i: image i is the same whatever the count.
    `pipe_kwargs`: more pipeline arguments (init_image, mask_image, strength, prompt_weighting).
    On the CPU, several conditionings (--compare) are drawn at the same time (`_concurrently`)."""

    def draw(side_pipe, conditioning):
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num_images)]
        return side_pipe(
            prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
            negative_prompt=negative, num_images_per_prompt=num_images, generator=generators, conditioning=conditioning,
            **pipe_kwargs,
        ).images

    # The execution device, not `pipe.device`: with model offload the modules sit on the CPU
    # between calls, and offload hooks are not for two threads at once.
    # Not with regions: they set the shared UNet's attention processors for the call, one set at a time.
    if len(conditionings) > 1 and pipe._execution_device.type == "cpu" and pipe_kwargs.get("regions") is None:
        return _concurrently(pipe, conditionings, draw)
    return {conditioning: draw(pipe, conditioning) for conditioning in conditionings}


def _concurrently(pipe, conditionings, draw) -> dict[str, list]:
    """Each conditioning on its own Python thread, torch's CPU threads shared out between them.
    Why: a small model's ops are too short for torch's threads to share one well (on the 2-core
    development CPU the two sides of the main prompt take 4.30 s one after the other on two
    threads, 2.73 s at once on one thread each, medians in
    benchmarks/results/compare_sides_cpu.json), and a side on its own thread does not stall when
    another process takes a core. The images are those drawn one after the other at the same
    thread count: each side has its own generators, and its own pipeline object and scheduler
    (the scheduler keeps the step in progress); the modules are shared, read-only. Each thread
    runs in a copy of the caller's context, so what the caller set in contextvars (a web app's
    progress tracker) holds in the threads too."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    sides = []
    for position, conditioning in enumerate(conditionings):
        side = copy.copy(pipe)
        side.scheduler = copy.deepcopy(pipe.scheduler)
        side._progress_bar_config = {**getattr(pipe, "_progress_bar_config", {}),
                                     "desc": COMPARE_NAMES.get(conditioning, conditioning), "position": position}
        sides.append(side)
    torch.set_num_threads(max(1, threads // len(conditionings)))  # global: set before the threads start
    try:
        with ThreadPoolExecutor(len(conditionings), thread_name_prefix="ella-render") as pool:
            futures = {c: pool.submit(contextvars.copy_context().run, draw, side, c)
                       for side, c in zip(sides, conditionings)}
            return {c: future.result() for c, future in futures.items()}
    finally:
        torch.set_num_threads(threads)


def write_outputs(out: str, rows: dict[str, list], view_size: int | None) -> list[str]:
    """One image, or a grid: one image per seed in a row; with --compare one row per seed, the
    base model left and ELLA right, each also on its own (OUT.base.png, OUT.ella.png). A view
    copy upscaled for looking at, labelled when compared."""
    root, ext = os.path.splitext(out)
    written = []
    if len(rows) == 1:
        images = next(iter(rows.values()))
        grid = make_grid(images, cols=len(images)) if len(images) > 1 else images[0]
    else:
        columns = [make_grid(images, cols=1) for images in rows.values()]
        grid = make_grid(columns, cols=len(columns))
        for conditioning, column in zip(rows, columns):
            path = f"{root}.{COMPARE_NAMES[conditioning]}{ext}"
            save_atomic(column, path)
            written.append(path)
    save_atomic(grid, out)
    written.insert(0, out)
    if view_size:
        view = upscale(grid, view_size)
        if len(rows) > 1:
            view = label_columns(view, [COMPARE_NAMES[c] for c in rows])
        save_atomic(view, f"{root}.view{ext}")
        written.append(f"{root}.view{ext}")
    return written
