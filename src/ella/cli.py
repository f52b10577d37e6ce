"""The `ella` command. Each subcommand parses its flags and calls the library; errors a user can
fix are printed as one line with exit code 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from .cli_args import CLIError, add_model_args, add_model_source_args, port, positive_int, seed, strength, unit_float
from .errors import TrainingInterrupted

EXIT_USAGE = 2
def _add_config_command(sub, name: str, help_text: str, config_help: str, func) -> None:
    p = sub.add_parser(name, help=help_text)
    p.add_argument("config", help=config_help)
    p.add_argument("overrides", nargs="*", default=[], help="--key value overrides of config fields")
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    """The `ella` command line: each command registers its own parser (plugins' too)."""
    from .bench.cli import add_bench_parser
    from .plugins import registry, resolve
    from .study.cli import add_parser as add_study_parser

    parser = argparse.ArgumentParser(prog="ella", description="ELLA: LLM-conditioned diffusion.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_generate_parser, add_plan_parser, add_demo_parser, add_convert_parser, add_caption_parser,
                add_feedback_parser, add_study_parser, add_env_parser, add_train_parsers, add_bench_parser):
        add(sub)
    for target in registry().cli_commands.values():
        resolve(target)(sub)
    return parser


def add_env_parser(sub) -> None:
    sub.add_parser("env", help="versions and devices, for bug reports").set_defaults(func=cmd_env)


def add_train_parsers(sub) -> None:
    _add_config_command(sub, "train", "train a connector (see configs/)", "YAML config file", cmd_train)
    _add_config_command(sub, "cache", "precompute LLM features and VAE latents for training",
                        "YAML config file (its data and cache_dir are used)", cmd_train)


def add_generate_parser(sub) -> None:
    """`ella generate`: text to image (and img2img, inpainting, regions)."""
    g = sub.add_parser("generate", help="text to image")
    g.add_argument("prompt")
    g.add_argument("--out", default="ella.png", help="output image, e.g. ella.png (a grid for several images)")
    g.add_argument("--seed", type=seed, default=1001, help="seed of the first image; image i uses seed + i")
    g.add_argument("--num-images", type=positive_int, default=1)
    g.add_argument("--compare", action="store_true", help="base model (left column) and ELLA (right) side by side,"
                   " one row per seed; also writes OUT.base.png and OUT.ella.png")
    g.add_argument("--init-image", metavar="IMG", help="img2img: start from this image (resized to --size if given)")
    g.add_argument("--strength", type=strength, default=None, help="img2img/inpainting: how much of the schedule"
                   " repaints the init image, in (0, 1]; 1 = from pure noise (default: 0.8 img2img, 1.0 with --mask)")
    g.add_argument("--mask", metavar="MASK", help="inpainting: repaint where this image is white (same size as"
                   " --init-image)")
    g.add_argument("--prompt-weighting", nargs="?", const="attention", choices=("attention", "anchor", "scale"),
                   default=None, help="read (words:1.3), (words), [words] in the prompts; how a weight acts:"
                   " attention (the default), anchor or scale (docs/pipeline.md)")
    g.add_argument("--regions", metavar="auto|LAYOUT.json", default=None, help="draw each region from its own"
                   " prompt: auto plans the layout with --planner, or a layout file (`ella plan` writes one);"
                   " the layout is saved as OUT.layout.json")
    g.add_argument("--planner", default=None, help="with --regions auto: llm:MODEL (a chat LLM, e.g. llm:smollm2),"
                   " openai:URL#MODEL, or a plugin's (the shipped model's own by default)")
    g.add_argument("--base-ratio", type=unit_float, default=None, help="the global prompt's share inside regions"
                   " (default: the layout's, 0.3)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_model_args(g)
    g.set_defaults(func=cmd_generate)


def add_plan_parser(sub) -> None:
    """`ella plan`: a prompt's regions as a layout."""
    from .plugins import registry

    pl = sub.add_parser("plan", help="plan a prompt's regions: the layout as JSON (for generate --regions FILE)")
    pl.add_argument("prompt")
    pl.add_argument("--planner", default=None, help="llm:MODEL, openai:URL#MODEL, or a plugin's" +
                    "".join(f", {n}" for n in registry().planners) + " (default: the shipped model's)")
    pl.add_argument("--out", default=None, help="also write the layout here (.json)")
    pl.add_argument("--device", default=None, help="where an LLM planner runs (default: cuda if available)")
    pl.set_defaults(func=cmd_plan)


def add_demo_parser(sub) -> None:
    """`ella demo`: the browser page."""
    d = sub.add_parser("demo", help="base vs ELLA side by side in the browser (Gradio: pip install -e '.[demo]')")
    d.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    d.add_argument("--port", type=port, default=7860, help="port (default: 7860)")
    d.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    d.add_argument("--planner", default=None, help="what plans the page's regions switch: llm:MODEL, openai:URL#MODEL"
                   " (default: the shipped model's own planner)")
    add_model_source_args(d)
    d.set_defaults(func=cmd_demo)


def add_convert_parser(sub) -> None:
    """`ella convert`: connector files and folders."""
    c = sub.add_parser("convert", help="official single file <-> save_pretrained folder")
    c.add_argument("src", help="a .safetensors connector file or an ELLA folder")
    c.add_argument("dst", help="a .safetensors file (with the config in its metadata) or a folder")
    c.add_argument("--dtype", default=None, help="fp32, fp16 or bf16 for the output (default: as read)")
    c.add_argument("--heads", type=positive_int, default=None, help="attention heads of a file without config"
                   " (the weights cannot tell; default: the official release's 8)")
    c.set_defaults(func=cmd_convert)


def add_caption_parser(sub) -> None:
    """`ella caption`: dense recaptioning."""
    from .plugins import registry

    cap = sub.add_parser("caption", help="dense recaptioning: a caption set for training, beside the data")
    cap.add_argument("data", help="what `ella train` reads: an image folder, a .jsonl/.csv manifest, 'shards/*.tar',"
                     " or a plugin scheme (shapes:N)")
    cap.add_argument("--captioner", required=True, help="hf:MODEL or a model folder/hub id (image-text-to-text),"
                     " vllm:MODEL, or a plugin's" + "".join(f", {n}" for n in registry().captioners))
    cap.add_argument("--out", required=True, help="the caption set's folder (one per captioner; not inside the data)")
    cap.add_argument("--prompt", default=None, help="dense (image captioners' default: long, exhaustive), short,"
                     " rewrite (rewrite:LLM's default; the text holds {caption}), or the prompt text")
    cap.add_argument("--check", default=None, help="a plugin's caption check: captions untrue to their image are"
                     " recorded as rejected and never trained on" + "".join(f" ({n})" for n in registry().caption_checks))
    cap.add_argument("--max-new-tokens", type=positive_int, default=256)
    cap.add_argument("--batch-size", type=positive_int, default=8, help="images per model call")
    cap.add_argument("--chunk-size", type=positive_int, default=256, help="captions per atomic rewrite of a sidecar")
    cap.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda if available)")
    cap.add_argument("--dtype", default="auto", help="fp32, fp16 or bf16 (default: fp16 on GPU, fp32 on CPU)")
    cap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cap.set_defaults(func=cmd_caption)


def add_feedback_parser(sub) -> None:
    """`ella feedback`: rounds of generate, judge, keep, train."""
    fb = sub.add_parser("feedback", help="fine-tune a connector from image-understanding feedback (rounds of"
                        " generate, judge, keep, train)")
    fb.add_argument("config", help="YAML feedback config (configs/shapes/ella-tsc-feedback.yaml)")
    fb.add_argument("overrides", nargs="*", default=[], help="--key value overrides of config fields")
    fb.add_argument("--fresh", action="store_true", help="the output folder holds a run with other settings: move it"
                    " aside and start over")
    fb.set_defaults(func=cmd_feedback)


def cmd_env(args) -> None:
    import platform

    import diffusers
    import torch
    import transformers

    from . import __version__

    print(f"ella-diffusion {__version__}")
    print(f"python {platform.python_version()} ({platform.platform()})")
    for mod in (torch, diffusers, transformers):
        print(f"{mod.__name__} {mod.__version__}")
    try:
        import accelerate

        print(f"accelerate {accelerate.__version__}")
    except ImportError:
        print("accelerate not installed")
    from .text_encoders import OFFLINE_LLMS, resolve_model_path

    for alias in OFFLINE_LLMS:  # the pip-installed LLMs that --llm and the ShapesWorld connectors name
        try:
            print(f"llm {alias}: {resolve_model_path(alias)}")
        except ValueError as err:
            print(f"llm {alias}: not installed ({err})")
    print(f"cpu threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        print("cuda: not available (CPU only)")


def cmd_convert(args) -> None:
    """folder -> file, file -> folder, or file -> file (adding the config metadata, or a dtype)."""
    from .devices import torch_dtype
    from .pipelines.loading import load_connector

    to_file = args.dst.endswith(".safetensors")
    if os.path.isdir(args.src) and not os.path.isfile(os.path.join(args.src, "config.json")):
        raise CLIError(f"{args.src} is a folder without config.json: neither a connector folder (save_pretrained) nor"
                       " a .safetensors file")
    if os.path.isdir(args.src) and not to_file:
        raise CLIError("converting a folder writes a single file: DST must end in .safetensors")
    parent = os.path.dirname(os.path.abspath(args.dst))
    if not os.path.isdir(parent):
        raise CLIError(f"cannot write {args.dst}: folder {parent} does not exist")
    if to_file and os.path.isdir(args.dst):
        raise CLIError(f"{args.dst} is a folder: name a .safetensors file")
    dtype = torch_dtype(args.dtype) if args.dtype else None
    model = load_connector(args.src, dtype, heads=args.heads)
    if to_file:
        model.save_single_file(args.dst)  # with its config: converted back, it is the same model
    else:
        model.save_pretrained(args.dst)
    print(f"wrote {args.dst} ({model.config.connector_type}, {sum(p.numel() for p in model.parameters()):,} parameters)")


def launch_ranks() -> tuple[int, int]:
    """(this process's rank, the number of processes) under `accelerate launch` or torchrun (which
    set WORLD_SIZE), through accelerate; (0, 1) for a plain run, without importing accelerate
    (a second of imports a resumed caption run would otherwise spend)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState

    from .devices import accelerator_available

    state = PartialState(cpu=not accelerator_available())
    return state.process_index, state.num_processes


def cmd_caption(args) -> None:
    from .caption.captioners import load_captioner
    from .caption.run import caption_data, check_out, load_check
    from .caption.sources import shards

    check_out(args.data, args.out)  # bad input fails before any model loads or any file is written
    load_check(args.check)
    sources = shards(args.data)
    captioner = load_captioner(args.captioner, args.prompt, args.max_new_tokens, args.device, args.dtype)
    rank, world = launch_ranks()
    stats = caption_data(args.data, captioner, args.out, args.batch_size, args.chunk_size, rank, world,
                         progress=not args.quiet and sys.stderr.isatty(), all_shards=sources, check=args.check)
    kept = f"; the {args.check} check kept {stats.captioned - stats.rejected} of them" if args.check else ""
    failed = f", {stats.failed} the captioner could not describe" if stats.failed else ""
    print(f"captioned {stats.captioned} images into {args.out} ({stats.images_per_s:.2f} images/s){kept}; "
          f"{stats.skipped} already there, {stats.unreadable} unreadable{failed}")
    if not stats.captioned and not stats.skipped and (stats.unreadable or stats.failed):
        raise CLIError(f"none of the {stats.unreadable + stats.failed} images could be captioned (each is named, with"
                       f" why, in the sidecars of {args.out})")


def cmd_feedback(args) -> int:
    """Exit 0 when every round ran, 3 when a round kept nothing, 4 when a round fell below the best."""
    from .feedback import EXIT_NOTHING_PASSED, EXIT_WORSE, best_round, load_feedback_config, run_feedback
    from .train.config import parse_overrides

    config = load_feedback_config(args.config, parse_overrides(args.overrides)).validate()  # before any work
    summaries = run_feedback(config, fresh=args.fresh)
    for summary in summaries:
        bench = summary.get("bench", {}).get("overall")
        if summary["round"] == 0:
            print(f"round 0 (the starting connector): held-out score {bench:.2f}")
            continue
        kept = "pairs from" if config.method == "dpo" else "of"
        print(f"round {summary['round']}: kept {summary['kept']} {kept} {summary['candidates']} candidates"
              + (f"; held-out score {bench:.2f}" if bench is not None else "")
              + (f"; connector {summary['connector']}" if "connector" in summary else ""))
    best = best_round(summaries)
    stop = summaries[-1].get("stop_line")
    if stop:
        print(stop)
    score = f" (held-out {best['bench']['overall']:.2f})" if "bench" in best else " (unchecked: no bench_csv)"
    print(f"best: round {best['round']}{score}: {os.path.join(config.output_dir, 'best')}")
    return {"nothing passed": EXIT_NOTHING_PASSED, "worse": EXIT_WORSE}.get(summaries[-1].get("stopped"), 0)


def cmd_demo(args) -> None:
    from .demo import run_demo

    args.scheduler = None  # the page picks the sampler per request
    run_demo(args)


def cmd_train(args) -> None:
    from .train.cli import run_train_command

    run_train_command(args)


def cmd_plan(args) -> None:
    import json

    from .generate import plan_for_cli

    layout = plan_for_cli(args.prompt, "auto", args.planner, getattr(args, "device", None))
    if args.out:
        layout.save(args.out)
    print(json.dumps(layout.to_dict(), indent=1))


def cmd_generate(args) -> None:
    from .generate import generate_cli

    for path in generate_cli(args):
        print(f"wrote {path}")


def quiet_libraries() -> None:
    """Our own messages say what matters; the libraries' weight-loading bars and advice show only
    with -v. Environment variables for the libraries not yet imported (no import cost here), their
    switches for those already imported (a caller's process, the test suite)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # e.g. "using cached commit hash" at every offline load
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # its retry notices; our error names the id
    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")  # advice to library authors
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()


def _one_line(err: Exception) -> str:
    """An error as one line that names what it is about (the OS's own '[Errno 17] File exists: ...'
    says neither what was being done nor what to do)."""
    if isinstance(err, FileExistsError) and err.filename:
        return f"{err.filename} exists and is not a folder: name another output folder, or move the file away"
    if isinstance(err, NotADirectoryError) and err.filename:
        return f"{err.filename}: a part of this path is a file, not a folder"
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if hasattr(args, "overrides"):  # config commands (train, cache, ...): --key value config overrides
        args.overrides = args.overrides + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.verbose:
        quiet_libraries()
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = args.func(args)  # a command may end with its own exit code (`ella feedback` stopped early)
    except TrainingInterrupted as err:
        print(f"ella: interrupted: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("ella: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError) as err:  # OSError: a path that cannot be read or written
        message = _one_line(err)
        print(f"ella: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
