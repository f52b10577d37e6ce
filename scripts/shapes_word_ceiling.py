"""The lexicon probe's ceiling in score points: what the paraphrase benchmark would score if the
connector read every held-out word exactly as well as a linear probe on the frozen LLM's features
reads it, and every held-out form perfectly.

For each of the benchmark's 50 held-out scenes, every attribute word of its paraphrase prompt is
read the way the probe reads it (`shapes_lexicon_probe.py`: fitted on the training lexicon's words;
for each word a context drawn at random, so each word is read right as often as the probe reads it
right). The scene so read is written as a plain prompt in trained words ("a large red circle at the
top left, ... on a white background"), drawn by a connector, and judged against the *true* scene.
A second row writes the true scene the same way: the score of a perfect reading, the bar.

    python scripts/shapes_word_ceiling.py --llm minilm,smollm2 --connector tsc \
        --out docs/results/shapesworld-word-ceiling.json

The ratio of the two is the most of its plain-words score a connector reading these words through
that LLM can keep (for a linear reading; new forms for free). The connector only draws prompts in
trained words here, so one connector serves every LLM's row.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch
from shapes_lexicon_probe import WordFeatures, attribute_features, fit_probe, lexicon_words

from ella.fileio import write_text_atomic
from ella.shapes.bench import bench_prompts, write_heldout
from ella.shapes.models import load_shapes_pipeline
from ella.shapes.phrasing import PARAPHRASE
from ella.shapes.world import Obj, Scene, place_phrase


def probe_readings(llm: str) -> dict[str, dict[str, list]]:
    """{attribute: {held-out word: the class the probe reads, one per context}}."""
    out = {}
    for attribute, classes, feats, labels, train_keys in attribute_features(WordFeatures(llm)):
        predict = fit_probe(torch.cat([feats[k] for k in train_keys]),
                            torch.cat([torch.full((len(feats[k]),), labels[k]) for k in train_keys]), len(classes))
        out[attribute] = {w: [classes[i] for i in predict(f).tolist()] for (split, w), f in feats.items()
                          if split == "paraphrase"}
    return out


def read_scene(scene: Scene, readings: dict | None, rng: random.Random) -> Scene:
    """The scene as a reader of its paraphrase words sees it: each attribute's word drawn as the
    paraphrase prompt draws it, read in a random context (None: read right)."""
    words = lexicon_words(PARAPHRASE)

    def read(attribute: str, value):
        if readings is None:
            return value
        word = rng.choice(words[attribute][value])
        return rng.choice(readings[attribute][word])

    objects = tuple(Obj(read("shape", o.shape), read("color", o.color), read("size", o.size), read("place", o.cell))
                    for o in scene.objects)
    return Scene(objects, read("background", scene.background))


def plain_prompt(scene: Scene) -> str:
    return ", ".join(f"a {o.size} {o.color} {o.shape} {place_phrase(o.cell)}" for o in scene.objects) + \
        f" on a {scene.background} background"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", default="minilm,smollm2", help="the LLMs whose probes read the words, comma-separated")
    args, start, questions, scenes, pipe = start_bench(parser, "runs/word-ceiling", "docs/results/shapesworld-word-ceiling.json")
    result = {}
    rows = [("perfect reading", None, {})]
    rows += [(f"{llm} probe reading", probe_readings(llm), {"llm": llm}) for llm in args.llm.split(",")]
    for row, reader, llm in rows:
        rng = random.Random(0)
        prompts = {i: plain_prompt(read_scene(scene, reader, rng)) for i, scene in scenes.items()}
        summary = bench_prompts(pipe, prompts, questions, args.work_dir, f"{args.connector}-{row.replace(' ', '-')}",
                                dict(connector=args.connector, **llm, prompts=row))
        result[row] = {"overall": summary["overall"], **summary["l1"], "example_prompt": next(iter(prompts.values()))}
        print(f"{row:16s} {summary['overall']:6.2f}", flush=True)
    for row, _, _ in rows[1:]:
        result[row]["kept_percent"] = 100 * result[row]["overall"] / result["perfect reading"]["overall"]
        print(f"{row}: kept {result[row]['kept_percent']:.1f} % of the perfect reading's score")
    write_result("shapes_word_ceiling.py", args, result, start)


def start_bench(parser, work_dir: str, out: str):
    """Parse the bench arguments every such script takes; (args, CPU clock at start, the paraphrase
    bench's questions CSV, its scenes, the connector's pipeline)."""
    parser.add_argument("--connector", default="tsc", help="the shipped connector that draws the prompts")
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--work-dir", default=work_dir)
    parser.add_argument("--out", default=out)
    args = parser.parse_args()
    start = time.process_time()
    questions, _, scenes = write_heldout(args.prompts, args.work_dir, "paraphrase")
    return args, start, questions, scenes, load_shapes_pipeline(connector=args.connector)


def write_result(script: str, args, result: dict, start: float) -> None:
    """`result` and how it was made (the command, the bench, the CPU time since `start`) to --out."""
    result["_meta"] = {"command": f"python scripts/{script} " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "bench": f"{args.prompts} held-out scenes (the paraphrase bench's) x 4 images, seed 0, 25 steps, guidance 5",
        "cpu_minutes": (time.process_time() - start) / 60, "machine": "2-core development CPU"}
    write_text_atomic(args.out, json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
