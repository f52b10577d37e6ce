"""ShapesWorld's commands, plugged into the `ella` CLI: `ella shapes train-base` and `ella bench shapes`."""

from __future__ import annotations

import json

from ..cli_args import finite_float, positive_int
from ..devices import LLM_PRECISIONS
from .catalog import BENCH_MODELS, DEFAULT_CONNECTOR, SHAPES_DEFAULTS

CAPTION_HELP = ("prompt style: dense (the benchmark), brief (what users type), relative (brief, placed relative to"
                " the object named before wherever it can be), varied (many phrasings, as trained) or paraphrase"
                " (words and forms no training caption uses); same scenes and questions")


def add_parser(sub) -> None:
    s = sub.add_parser("shapes", help="ShapesWorld: train the base model")
    ssub = s.add_subparsers(dest="shapes", required=True)
    tb = ssub.add_parser("train-base", help="train the base UNet + text encoder on short captions")
    tb.add_argument("config", help="YAML config (configs/shapes/base-attention.yaml)")
    tb.add_argument("overrides", nargs="*", default=[], help="--key value overrides of config fields")
    tb.set_defaults(func=run_train_base)


def add_bench_parser(sub) -> None:
    from .styles import CAPTION_STYLES

    sh = sub.add_parser("shapes", help="ShapesWorld: base vs ELLA on held-out prompts, exact judge (4 images per"
                        " prompt; measured 1.26 s per image on a 2-core CPU, so the default 200 prompts take about"
                        " 17 min per model there; --prompts 50 about 4 min)")
    sh.add_argument("--prompts", type=positive_int, default=200)
    sh.add_argument("--models", default=f"base,{DEFAULT_CONNECTOR}",
                    help="comma-separated: " + ", ".join(BENCH_MODELS) + ", or the export folder of a connector"
                    " trained with `ella train` on the ShapesWorld base")
    sh.add_argument("--out", default="runs/shapes-bench")
    sh.add_argument("--model-dir", default=None, help="a ShapesWorld model folder (default: the shipped one)")
    sh.add_argument("--steps", type=positive_int, default=SHAPES_DEFAULTS["steps"])
    sh.add_argument("--guidance", type=finite_float, default=SHAPES_DEFAULTS["guidance"])
    sh.add_argument("--captions", choices=CAPTION_STYLES, default="dense", help=CAPTION_HELP)
    sh.add_argument("--llm-precision", choices=LLM_PRECISIONS, default=None,
                    help="the ELLA rows' LLM in this precision (default fp32)")
    sh.add_argument("--json", action="store_true", help="print the summaries as JSON")
    sh.set_defaults(func=run_bench)


def run_train_base(args) -> None:
    from ..train.config import load_config, parse_overrides
    from .base import BaseConfig, train_base

    print(f"wrote {train_base(load_config(args.config, parse_overrides(args.overrides), BaseConfig))}")


def run_bench(args) -> None:
    from ..bench.runner import markdown_table
    from .bench import run_shapes_bench

    models = [m for m in args.models.split(",") if m]
    if not models:
        raise ValueError("--models names no model (e.g. --models base,ella)")
    summaries = run_shapes_bench(args.prompts, models, args.out, args.model_dir, args.steps, args.guidance,
                                 captions=args.captions, llm_precision=args.llm_precision)
    print(json.dumps(summaries, indent=2) if args.json else markdown_table(summaries))
