"""`ella demo`: the paper's side-by-side demo in the browser (Gradio, `pip install -e ".[demo]"`).

The base model and ELLA draw the same prompt with the same seeds, side by side. The images come
from `ella.generate.render`, the function `ella generate` uses, so a result reproduces from the
terminal with the command line shown under it. With the shipped ShapesWorld model, each image
also shows what the exact judge sees in it.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import shlex
import socket
import tempfile
import threading
from dataclasses import dataclass

from .samplers import SCHEDULERS

logger = logging.getLogger(__name__)

LIMITS = dict(steps=(1, 100), images=(1, 8), guidance=(0.0, 30.0))


class DemoInputError(ValueError):
    """Bad input from the page: shown in the page, never as a stack trace."""


@dataclass
class DemoModel:
    """What the page serves: a pipeline, its defaults, and the default model's extras (connectors,
    examples, the judge) when it is the shipped one."""

    pipe: object
    defaults: dict
    shipped: object | None  # the default model provider (ShapesWorld), or None for --model
    connector: str | None
    cli_model_args: list[str]  # how `ella generate` names this model
    planner: str | None = None  # what plans regions (`ella.planning`): --planner, or the shipped model's own

    @property
    def samplers(self) -> list[str]:
        """`ella.samplers.SCHEDULERS` by short name, less those the shipped model cannot use."""
        poor = getattr(self.shipped, "poor_samplers", {}) if self.shipped is not None else {}
        return [name for name, cls in SCHEDULERS.items() if cls not in poor]

    @property
    def has_base(self) -> bool:
        return getattr(self.pipe, "clip_text_encoder", None) is not None


def check_request(prompt: str, steps, images, guidance) -> None:
    from .generate import MAX_PROMPT_CHARS

    if not prompt or not prompt.strip():
        raise DemoInputError("the prompt is empty: type what to draw")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DemoInputError(f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT_CHARS} are accepted")
    for name, value in (("steps", steps), ("images", images), ("guidance", guidance)):
        low, high = LIMITS[name]
        if value is None or not low <= value <= high:
            raise DemoInputError(f"{name} must be between {low} and {high}, got {value}")


def command_line(model: DemoModel, prompt: str, negative: str, seed: int, steps: int, guidance: float, sampler: str,
                 images: int, regions: bool = False) -> str:
    """The `ella generate` line that draws the same images."""
    args = ["ella", "generate", prompt, *model.cli_model_args, "--seed", str(seed), "--steps", str(steps),
            "--guidance", f"{guidance:g}", "--num-images", str(images), "--scheduler", sampler]
    if model.shipped is not None and model.connector != model.shipped.default_connector:
        args += ["--ella", model.connector]
    if negative:
        args += ["--negative", negative]
    if regions:
        args += ["--regions", "auto"]
        if model.shipped is None or model.planner != getattr(model.shipped, "planner", None):
            args += ["--planner", model.planner]
    if model.has_base:
        args.append("--compare")
    return shlex.join(args)


class StepCounter:
    """A `callback_on_step_end` that counts the steps of all sides (drawn at the same time, on
    threads) and reports `on_step(done, total)` after each. The total is the scheduler's own
    count: some samplers take more steps than asked (PNDM: 34 for 25)."""

    def __init__(self, sides: int, on_step):
        self.sides, self.on_step, self.done, self.lock = sides, on_step, 0, threading.Lock()

    def __call__(self, pipe, step, timestep, tensors: dict) -> dict:
        with self.lock:  # reported in order
            self.done += 1
            self.on_step(self.done, self.sides * len(pipe.scheduler.timesteps))
        return tensors


def generate(model: DemoModel, prompt: str, negative: str, seed: int, steps: int, guidance: float, sampler: str,
             images: int, out_dir: str, on_step=None, regions: bool = False) -> dict:
    """Both sides for one request: {"base"/"ella": [(view image, original PNG path, judge text)],
    "command": str}. The same code path as `ella generate --compare`; `on_step(done, total)`
    follows the denoising steps of both sides. With `regions`, the prompt is planned first
    (`ella generate --regions auto`), both sides draw the plan, and "plan" is (the plan drawn over
    the first ELLA image, its layout.json)."""
    from .generate import COMPARE, COMPARE_NAMES, render
    from .images import save_atomic, upscale
    from .planning import plan_regions
    from .samplers import scheduler_class

    check_request(prompt, steps, images, guidance)
    layout, options = None, {}
    if regions:
        if model.planner is None:
            raise DemoInputError("this model has no planner for regions: start the demo with --planner llm:MODEL")
        layout = plan_regions(prompt, loaded_planner(model.planner))
        options = {"regions": layout}
    steps, images, seed = int(steps), int(images), int(seed)
    model.pipe.scheduler = scheduler_class(sampler).from_config(model.pipe.scheduler.config)
    height, width = model.defaults["size"]
    sides = COMPARE if model.has_base else ("ella",)
    counter = None if on_step is None else StepCounter(len(sides), on_step)
    rows = render(model.pipe, prompt, sides, seed, images, steps, guidance, negative or None, height, width,
                  callback_on_step_end=counter, **options)
    result = {"command": command_line(model, prompt, negative, seed, steps, guidance, sampler, images, regions)}
    for conditioning, row in rows.items():
        side = []
        for i, image in enumerate(row):
            path = os.path.join(out_dir, f"{COMPARE_NAMES[conditioning]}-seed{seed + i}.png")
            save_atomic(image, path)
            seen = model.shipped.describe(image) if model.shipped is not None else ""
            side.append((upscale(image, model.defaults.get("view_size") or 256), path, seen))
        result[COMPARE_NAMES[conditioning]] = side
    if layout is not None:
        from .regions import draw_layout

        path = os.path.join(out_dir, f"layout-seed{seed}.json")
        layout.save(path)
        result["plan"] = (draw_layout(layout, rows["ella"][0], model.defaults.get("view_size") or 256), path)
    return result


@functools.cache
def loaded_planner(spec: str):
    """A planner loaded once per page (an LLM planner loads its model)."""
    from .planning import load_planner

    return load_planner(spec)


def load_demo_model(args) -> DemoModel:
    from .generate import load_for_cli

    pipe, defaults, shipped = load_for_cli(args)
    connector = (args.ella or shipped.default_connector) if shipped is not None else None
    cli_args = ["--preset", args.preset] if args.preset else [] if args.model is None else [
        "--model", args.model, "--ella", args.ella] + (["--llm", args.llm] if args.llm else [])
    planner = args.planner or (getattr(shipped, "planner", None) if shipped is not None else None)
    return DemoModel(pipe, defaults, shipped, connector, cli_args, planner)


def build_app(model: DemoModel, loader=None):
    """The Gradio page. `loader(connector) -> DemoModel` switches the shipped connector."""
    import gradio as gr

    out_dir = tempfile.mkdtemp(prefix="ella-demo-")
    state = {"model": model}
    default_steps, default_guidance = model.defaults["steps"], model.defaults["guidance"]

    def on_generate(prompt, negative, seed, random_seed, steps, guidance, sampler, images, connector, regions,
                    progress=gr.Progress()):  # noqa: B008 (Gradio's own idiom)
        try:
            if loader is not None and connector and connector != state["model"].connector:
                state["model"] = loader(connector)
            if random_seed:
                seed = random.randrange(2**31)
            state["model"].pipe.set_progress_bar_config(disable=True)  # the page has its own
            result = generate(state["model"], prompt, negative, seed, steps, guidance, sampler, images, out_dir,
                              on_step=lambda done, total: progress((done, total), desc="denoising", unit="steps"),
                              regions=bool(regions))
        except ValueError as err:  # DemoInputError and the library's own one-line errors (LayoutError too)
            return [], [], "", "", "", [], None, f"**Error:** {err}"
        base, ella = result.get("base", []), result["ella"]
        plan, layout_file = result.get("plan", (None, None))
        files = [path for _, path, _ in base + ella] + ([layout_file] if layout_file else [])
        judge = lambda side: "\n".join(f"- seed {int(seed) + i}: {seen}" for i, (_, _, seen) in enumerate(side))  # noqa: E731
        return ([(v, f"seed {int(seed) + i}") for i, (v, _, _) in enumerate(base)],
                [(v, f"seed {int(seed) + i}") for i, (v, _, _) in enumerate(ella)],
                judge(base), judge(ella), f"```\n{result['command']}\n```", files, plan, "Done.")

    with gr.Blocks(title="ELLA: base vs ELLA") as app:
        gr.Markdown("# ELLA: the same prompt and seeds, base model and ELLA side by side")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt")
            negative = gr.Textbox(label="Negative prompt", lines=3, elem_id="negative")
        with gr.Row():
            seed = gr.Number(label="Seed", value=1001, precision=0, elem_id="seed")
            random_seed = gr.Checkbox(label="Random seed", value=False)
            steps = gr.Slider(*LIMITS["steps"], value=default_steps, step=1, label="Steps")
            guidance = gr.Slider(*LIMITS["guidance"], value=default_guidance, step=0.5, label="Guidance")
            samplers = model.samplers
            sampler = gr.Dropdown(samplers, value=samplers[0], label="Sampler")
            images = gr.Slider(*LIMITS["images"], value=model.defaults.get("images", 4), step=1, label="Images")
            connectors = list(model.shipped.connectors) if model.shipped is not None else []
            connector = gr.Dropdown(connectors, value=model.connector, label="Connector", visible=bool(connectors))
            regions = gr.Checkbox(label=f"Regions (planned by {model.planner})", value=False, elem_id="regions",
                                  visible=model.planner is not None)
        button = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Base model (its own text encoder)")
                base_gallery = gr.Gallery(label="base", columns=4, elem_id="base-gallery")
                base_judge = gr.Markdown(elem_id="base-judge")
            with gr.Column():
                gr.Markdown("### ELLA")
                ella_gallery = gr.Gallery(label="ELLA", columns=4, elem_id="ella-gallery")
                ella_judge = gr.Markdown(elem_id="ella-judge")
            with gr.Column(scale=0, min_width=260):
                gr.Markdown("### The plan (with regions)")
                plan = gr.Image(label="plan", type="pil", elem_id="plan", interactive=False)
        command = gr.Markdown(elem_id="command")
        files = gr.File(label="Original PNGs", file_count="multiple")
        if model.shipped is not None:
            gr.Examples([[p] for p in model.shipped.example_prompts], inputs=[prompt])
        # The progress bar and timer on the status line only: Gradio's default animates a spinner
        # over every output, which cost the browser 8.2 CPU-seconds per click here, against
        # 3.6 on one line (benchmarks/demo_latency.py): CPU the generation needs when the page and
        # the model share a small machine.
        button.click(on_generate,
                     [prompt, negative, seed, random_seed, steps, guidance, sampler, images, connector, regions],
                     [base_gallery, ella_gallery, base_judge, ella_judge, command, files, plan, status],
                     show_progress_on=status)
    app.queue(default_concurrency_limit=1)  # one job at a time on the CPU: visitors wait in line
    return app


def leave_a_core_for_the_page(model: DemoModel) -> int:
    """On a CPU of a few cores, generate with one thread fewer than torch would take, so the
    server and a local browser do not pre-empt torch's threads in the middle of every parallel
    op (on the 2-core development CPU, click to both images took 7.95 s with two threads and 5.72 s
    with one; docs/benchmarks.md). Not with a base model: its two sides are drawn at the same time,
    each on its own thread (`ella.generate.render`), which the page does not stall. Returns the
    number of threads set (0: left as it was)."""
    import torch

    threads = torch.get_num_threads()
    if model.pipe.device.type != "cpu" or model.has_base or not 1 < threads <= 4:
        return 0
    torch.set_num_threads(threads - 1)
    logger.info("generating with %d of %d CPU threads: one is left for the page", threads - 1, threads)
    return threads - 1


def port_free(host: str, port: int) -> bool:
    """Whether a server can listen on (host, port) now. With SO_REUSEADDR, as servers bind
    (uvicorn's included): the connections of a server just stopped (TIME_WAIT) do not hold the
    port for a minute. A host that is no address of this machine is a ValueError, not "in use"."""
    import errno

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as err:
        raise ValueError(f"cannot serve on host {host!r}: {err}") from None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                raise ValueError(f"cannot serve on host {host}: it is no address of this machine") from None
            return False
    return True


def check_can_serve(command: str, host: str, port: int) -> None:
    """Before loading anything: Gradio is installed, the host is ours, and the port is free."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ValueError(f'{command} needs Gradio: pip install -e ".[demo]"') from None
    if not port_free(host, port):
        raise ValueError(f"port {port} on {host} is in use: pass --port N")


def run_demo(args) -> None:
    check_can_serve("ella demo", args.host, args.port)
    if args.planner is not None:
        loaded_planner(args.planner)  # an unknown planner fails before the model loads
    model = load_demo_model(args)
    loader = None
    if model.shipped is not None:
        def loader(connector):
            return DemoModel(model.shipped.load(connector, device=args.device, dtype=args.dtype,
                                                llm_precision=args.llm_precision), model.defaults,
                             model.shipped, connector, [], model.planner)
    leave_a_core_for_the_page(model)
    print(f"ella demo on http://{args.host}:{args.port} (Ctrl-C stops it)")
    build_app(model, loader).launch(server_name=args.host, server_port=args.port, share=args.share)
