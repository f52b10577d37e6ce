"""What the exact judge sees when a ShapesWorld connector draws one prompt, seed by seed.

The prompt is read as the judge's text side reads a caption (`ella.shapes.reader.read_text`,
the background may be left unsaid); each image, drawn with `ella generate`'s settings (25 steps,
guidance 5, one generator per seed), is read by `ella.shapes.judge.analyse`. Per seed: what each
asked-for object's cell holds (**bold** where it is not the object asked for), the objects drawn
where none was asked, and whether the scene is exactly right. Then the counts: exactly right,
each object right, images with extras, images drawing an asked object's colour and shape twice.

    python scripts/shapes_prompt_table.py ["PROMPT"] [--seeds 1001-1008] [--ella tsc] [--regions PLANNER] [--out result.json]

`--regions shapes` (or llm:MODEL, a layout file: `ella plan`'s planners) draws with regions.

The README's main-prompt numbers come from `docs/results/shapesworld-main-prompt.json`, written
by this script with its defaults.
"""

from __future__ import annotations

import argparse
import json
import sys

from ella.generate import render
from ella.planning import plan_regions
from ella.shapes.catalog import DEFAULT_CONNECTOR, MAIN_PROMPT, SHAPES_DEFAULTS
from ella.shapes.judge import analyse
from ella.shapes.models import load_shapes_pipeline
from ella.shapes.reader import compare, read_text
from ella.shapes.world import cell_name


def describe(seen) -> str:
    return "-" if seen is None else f"{seen.color} {seen.size} {seen.shape}"


def seeds_arg(text: str) -> list[int]:
    first, _, last = text.partition("-")
    seeds = list(range(int(first), int(last or first) + 1))
    if not seeds:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}: FIRST-LAST, FIRST <= LAST")
    return seeds


def judge_prompt(pipe, prompt: str, seeds: list[int], **pipe_kwargs) -> dict:
    """Draw `prompt` with each seed (`ella generate`'s settings) and judge every image against the
    prompt's scene: {"seeds": [per-seed comparison], "counts": {...}}."""
    wanted = read_text(prompt, background=False)
    if wanted is None:
        raise ValueError(f"the ShapesWorld reader cannot read {prompt!r} as one scene in its words")
    images = []
    for seed in seeds:  # one call per seed, as `ella generate --seed S` draws it
        images += render(pipe, prompt, ("ella",), seed, 1, SHAPES_DEFAULTS["steps"], SHAPES_DEFAULTS["guidance"],
                         **pipe_kwargs)["ella"]
    rows = [dict(seed=seed, **compare(wanted, analyse(image))) for seed, image in zip(seeds, images)]
    n_objects = len(rows[0]["objects"])
    counts = {"images": len(rows), "exact": sum(r["exact"] for r in rows),
              **{f"object {k + 1} right": sum(r["objects"][k]["right"] for r in rows) for k in range(n_objects)},
              "with extras": sum(bool(r["extras"]) for r in rows),
              "an object drawn twice": sum(bool(r["drawn_twice"]) for r in rows)}
    return {"seeds": rows, "counts": counts}


def markdown(prompt: str, result: dict) -> str:
    """The per-seed table and the counts, as Markdown."""
    first = result["seeds"][0]["objects"]
    head = ["seed", *(f"{cell_name(o['cell'])}: {describe(o['wanted'])}" for o in first), "anything else", "exact"]
    lines = [f"`{prompt}`", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in result["seeds"]:
        cells = [describe(o["seen"]) if o["right"] else f"**{describe(o['seen'])}**" for o in r["objects"]]
        extras = ", ".join(f"{describe(e['seen'])} {cell_name(e['cell'])}" for e in r["extras"]) or "-"
        lines.append(f"| {r['seed']} | " + " | ".join(cells) + f" | {extras} | {'yes' if r['exact'] else 'no'} |")
    lines += ["", ", ".join(f"{k}: {v} of {result['counts']['images']}" for k, v in result["counts"].items()
                            if k != "images")]
    return "\n".join(lines)


def as_json(value):
    """Seen records as dicts, for the results file."""
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return vars(value) if hasattr(value, "shape") and hasattr(value, "color") else value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt", nargs="?", default=MAIN_PROMPT)
    parser.add_argument("--seeds", type=seeds_arg, default=seeds_arg("1001-1008"), help="FIRST-LAST (1001-1008)")
    parser.add_argument("--ella", default=DEFAULT_CONNECTOR, help="a shipped connector (default: the default)")
    parser.add_argument("--regions", default=None, metavar="PLANNER", help="draw with the regions this planner gives")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    args = parser.parse_args()
    if read_text(args.prompt, background=False) is None:
        print(f"shapes_prompt_table: the ShapesWorld reader cannot read {args.prompt!r} as one scene", file=sys.stderr)
        return 2
    pipe = load_shapes_pipeline(connector=args.ella)
    pipe.set_progress_bar_config(disable=True)
    options = {} if args.regions is None else {"regions": plan_regions(args.prompt, args.regions)}
    result = judge_prompt(pipe, args.prompt, args.seeds, **options)
    print(markdown(args.prompt, result))
    if args.out:
        record = {"prompt": args.prompt, "connector": args.ella, "regions": args.regions, "settings": "ella generate's: 25 DPM-Solver++ steps,"
                  " guidance 5, one call per seed", "machine": "2-core CPU",
                  "command": "python scripts/shapes_prompt_table.py " + " ".join(sys.argv[1:]), **as_json(result)}
        with open(args.out, "w") as f:
            json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
