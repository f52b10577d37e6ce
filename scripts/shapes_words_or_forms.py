"""Is it the words or the forms? The paraphrase benchmark changes both at once: every attribute
word (`PARAPHRASE`'s colours, sizes, shapes, places, backgrounds) and every form around them ("{p}
rests a {n}", "set against {bg} surroundings"). Here the two are crossed on the same 50 held-out
scenes: trained words in trained forms, new words in trained forms, trained words in new forms,
new words in new forms (no typos in any), each drawn by one connector and judged.

    python scripts/shapes_words_or_forms.py --connector tsc --out docs/results/shapesworld-words-or-forms.json
"""

from __future__ import annotations

import argparse
import dataclasses
import random

from shapes_word_ceiling import start_bench, write_result

from ella.shapes.bench import bench_prompts
from ella.shapes.phrasing import PARAPHRASE, VARIED, Lexicon, phrased_caption

WORDS = ("sizes", "colors", "shapes", "backgrounds", "places")  # the Lexicon fields that are attribute words


def crossed(words: Lexicon, forms: Lexicon) -> Lexicon:
    """`forms`' sentence forms around `words`' attribute words, without typos."""
    return dataclasses.replace(forms, **{f: getattr(words, f) for f in WORDS}, typo_rate=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args, start, questions, scenes, pipe = start_bench(parser, "runs/words-or-forms",
                                                       "docs/results/shapesworld-words-or-forms.json")
    result = {}
    for words_name, words in (("trained", VARIED), ("new", PARAPHRASE)):
        for forms_name, forms in (("trained", VARIED), ("new", PARAPHRASE)):
            row = f"{words_name} words, {forms_name} forms"
            lexicon = crossed(words, forms)
            prompts = {i: phrased_caption(scene, random.Random(f"{i}"), lexicon) for i, scene in scenes.items()}
            summary = bench_prompts(pipe, prompts, questions, args.work_dir,
                                    f"{args.connector}-{words_name}-words-{forms_name}-forms",
                                    dict(connector=args.connector, prompts=row))
            result[row] = {"overall": summary["overall"], **summary["l1"], "example_prompt": next(iter(prompts.values()))}
            print(f"{row:28s} {summary['overall']:6.2f}", flush=True)
    write_result("shapes_words_or_forms.py", args, result, start)


if __name__ == "__main__":
    main()
