"""`ella bench dpg {fetch,generate,score,compare}` (plugins add their own benchmarks beside it)."""

from __future__ import annotations

import os

from ..fileio import folder_lock
from ..paths import require_path
from .dpg import DPGDataError

# Pinned upstream data: the ELLA repository's dpg_bench/ folder at commit 3c228f1.
UPSTREAM = "https://raw.githubusercontent.com/TencentQQGYLab/ELLA/3c228f1dc6c4d3cad0a47493816151a419f14db3/dpg_bench"


def add_bench_parser(sub) -> None:
    """`ella bench`: DPG-Bench and the plugins' benches."""
    from ..plugins import registry, resolve

    bench = sub.add_parser("bench", help="benchmarks: DPG-Bench" + "".join(f", {n}" for n in registry().bench_commands))
    bsub = bench.add_subparsers(dest="bench", required=True)
    add_bench_parsers(bsub)
    for target in registry().bench_commands.values():
        resolve(target)(bsub)


def add_bench_parsers(sub) -> None:
    from ..cli_args import add_model_args, positive_int
    from ..plugins import registry

    dpg = sub.add_parser("dpg", help="DPG-Bench: fetch, generate, score, compare")
    dsub = dpg.add_subparsers(dest="dpg", required=True)
    f = dsub.add_parser("fetch", help="download the official CSV and prompts (pinned commit, blob id checked)")
    f.add_argument("--out", default="dpg_bench")
    f.set_defaults(func=lambda args: fetch(args.out))
    g = dsub.add_parser("generate", help="render N samples per prompt, tiled, one <item_id>.png each")
    g.add_argument("--out", required=True, help="image folder")
    g.add_argument("--prompts", help="prompt folder (prompts/<item_id>.txt)")
    g.add_argument("--csv", help="question CSV (its prompts are used)")
    g.add_argument("--samples", type=positive_int, default=4)
    g.add_argument("--seed", type=int, default=0, help="base seed; sample seeds derive from (seed, item, index)")
    g.add_argument("--batch-size", type=positive_int, default=8)
    g.add_argument("--conditioning", default="ella", help="ella, ella+clip or clip")
    g.add_argument("--limit", type=positive_int, default=None, help="only the first N prompts")
    add_model_args(g)
    g.set_defaults(func=dpg_generate)
    s = dsub.add_parser("score", help="judge the images with a VQA model and score them")
    s.add_argument("--images", required=True)
    s.add_argument("--csv", required=True)
    s.add_argument("--vqa", default="mplug", help="mplug, blip, hf:MODEL, replay:ANSWERS.jsonl"
                   + "".join(f", {name}" for name in registry().vqa_backends))
    s.add_argument("--out", required=True)
    s.add_argument("--mode", choices=("corrected", "reference"), default="corrected")
    s.add_argument("--skip-missing", action="store_true", help="leave failed images out instead of scoring 0")
    s.set_defaults(func=dpg_score)
    c = dsub.add_parser("compare", help="side-by-side table of score runs")
    c.add_argument("runs", nargs="+")
    c.set_defaults(func=dpg_compare)


def _load_items(csv_path: str):
    from .dpg import check_integrity, git_blob_id, load_csv

    items = load_csv(csv_path)
    problems = check_integrity(items)
    if problems:
        raise DPGDataError(f"{csv_path}: {len(problems)} integrity problem(s); first: {problems[0]}")
    return items, git_blob_id(csv_path)


def dpg_compare(args) -> None:
    from .runner import compare_runs

    print(compare_runs(args.runs))


def fetch(out: str) -> None:
    import urllib.error
    import urllib.request

    from .dpg import OFFICIAL_CSV_BLOB, git_blob_id, load_csv

    os.makedirs(os.path.join(out, "prompts"), exist_ok=True)
    csv_path = os.path.join(out, "dpg_bench.csv")
    try:
        urllib.request.urlretrieve(f"{UPSTREAM}/dpg_bench.csv", csv_path)
        if git_blob_id(csv_path) != OFFICIAL_CSV_BLOB:
            raise ValueError(f"{csv_path} does not match the official blob {OFFICIAL_CSV_BLOB}")
        items = load_csv(csv_path)
        for item_id in items:
            urllib.request.urlretrieve(f"{UPSTREAM}/prompts/{item_id}.txt", os.path.join(out, "prompts", f"{item_id}.txt"))
    except urllib.error.URLError as err:
        raise ValueError(f"cannot download DPG-Bench ({err.reason}); copy dpg_bench.csv and prompts/ from a"
                         " machine with network, then pass --csv FILE or --prompts FOLDER to `ella bench dpg"
                         " generate` and `score`") from err
    print(f"fetched {len(items)} items to {out} (CSV blob {OFFICIAL_CSV_BLOB} verified)")


def dpg_generate(args) -> None:
    import torch

    from ..devices import accelerator_available
    from ..generate import load_for_cli
    from ..plugins import default_model
    from ..published import preset
    from .dpg import load_prompt_folder
    from .runner import file_sha256, generate_images, write_manifest

    if args.csv:
        items, _ = _load_items(args.csv)
        prompts = {k: v.prompt for k, v in items.items()}
    elif args.prompts:
        prompts = load_prompt_folder(args.prompts)
    else:
        raise ValueError("pass --prompts FOLDER or --csv FILE")
    if args.limit:
        prompts = dict(sorted(prompts.items())[: args.limit])
    from accelerate import PartialState

    state = PartialState(cpu=not accelerator_available())
    pipe, defaults, _ = load_for_cli(args)
    height, width = args.size or defaults["size"]
    chosen = preset(args.preset) if args.preset else None
    settings = {
        "preset": args.preset, "model": args.model or (chosen.model if chosen else default_model().name),
        "ella": args.ella or (chosen.ella if chosen else None),
        "llm": pipe.text_encoder.config.name_or_path if pipe.text_encoder is not None else None,
        "ella_sha256": file_sha256(args.ella) if args.ella and os.path.isfile(args.ella) else None,
        "scheduler": type(pipe.scheduler).__name__, "steps": args.steps or defaults["steps"],
        "guidance": defaults["guidance"] if args.guidance is None else args.guidance,
        "height": height, "width": width, "dtype": str(pipe.unet.dtype), "seed": args.seed, "samples": args.samples,
        "seed_rule": "sha256(f'{seed}:{item_id}:{index}')[:8] little-endian mod 2**63",
        "conditioning": args.conditioning, "negative_prompt": args.negative, "torch": torch.__version__,
    }
    with folder_lock(args.out, enabled=state.num_processes == 1):
        if state.is_main_process:
            write_manifest(args.out, settings)  # first: refuses to add to images made otherwise
        state.wait_for_everyone()
        written = generate_images(
            pipe, prompts, args.out, samples=args.samples, seed=args.seed, batch_size=args.batch_size,
            rank=state.process_index, world=state.num_processes, num_inference_steps=settings["steps"],
            guidance_scale=settings["guidance"], height=height, width=width, negative_prompt=args.negative,
            conditioning=args.conditioning,
        )
    state.wait_for_everyone()
    print(f"wrote {len(written)} images to {args.out} ({len(prompts) - len(written)} already there or on other processes)")


def dpg_score(args) -> None:
    from accelerate import PartialState

    from ..devices import accelerator_available
    from .runner import score_run
    from .vqa import get_backend

    require_path(args.images, "image folder", "folder")
    items, blob = _load_items(args.csv)
    state = PartialState(cpu=not accelerator_available())
    with folder_lock(args.out, enabled=state.num_processes == 1):
        summary = score_run(
            items, args.images, get_backend(args.vqa), args.out, args.mode, args.skip_missing,
            settings={"csv": os.path.abspath(args.csv), "csv_blob": blob, "mode": args.mode},
            rank=state.process_index, world=state.num_processes, barrier=state.wait_for_everyone,
        )
    if summary is not None:
        print(f"overall {summary['overall']:.2f} on {summary['n_items']} items ({summary['n_failed']} failed:"
              f" {summary['failed_items']}); "
              f"L1 " + ", ".join(f"{k} {v:.2f}" for k, v in summary["l1"].items()) + f"; reports in {args.out}")
